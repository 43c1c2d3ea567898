//! What can go wrong, each error naming its cause. Remedies that name `bot db` commands are
//! added by the command line (`bot/src/db_cli.rs`), which knows them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::ErrorCode;

use super::file::{Recovery, beside, folder_of};
use super::{EditedFile, ForeignHistory, State};

/// SQLite's extended code for a read-only connection that met a hot journal.
const SQLITE_READONLY_ROLLBACK: i32 = 776;
/// Read-only connections that cannot use a WAL (no `-shm` they may create or lock).
const SQLITE_READONLY_RECOVERY: i32 = 264;
const SQLITE_READONLY_CANTINIT: i32 = 1288;
const SQLITE_READONLY_CANTLOCK: i32 = 520;

/// Who kept the database locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockHolder {
    /// Another connection holds the write lock (or is committing): a write cannot start, and
    /// in rollback-journal mode a read waits for its commit.
    Writer,
    /// Other connections hold read transactions: in rollback-journal mode a write cannot commit
    /// until every reader has finished.
    Readers,
}

/// Everything that can go wrong; each variant's message says what. `path` is the database file
/// (or the copy) concerned, `source` the error met; revisions are `version` (the recorded or
/// the asked-for one), `head` (this build's newest), `at` (where the database is, or stays) and
/// `to`; `difference` is how a live schema differs from a revision, and `extra_tables` the live
/// tables no revision has (e.g. the old app's own).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not a SQLite database.
    #[error(
        "{path}: not a SQLite database (its first bytes are not \"SQLite format 3\"); point DATABASE_PATH at the right file or restore a backup"
    )]
    NotADatabase { path: PathBuf },
    /// The path is a folder.
    #[error("{path} is a folder, not a SQLite database file; nothing was changed")]
    Folder { path: PathBuf },
    /// `restore` of the live database (`path`) onto itself (`file`, the file given to restore).
    #[error("{file} is the live database itself ({path}); nothing was changed")]
    SameFile { file: PathBuf, path: PathBuf },
    /// Neither a regular file nor a folder (a FIFO, a device, a socket): `kind` says which.
    #[error(
        "{path} is {kind}, not a SQLite database file; point DATABASE_PATH at the database file; nothing was changed"
    )]
    NotAFile { path: PathBuf, kind: &'static str },
    /// The disk (or the file size limit) is full: SQLite could not write.
    #[error(
        "{path}: the disk holding {} is full (or the file size limit was reached), so SQLite could not write; nothing was changed. Free some space and retry",
        folder_of(.path).display()
    )]
    DiskFull { path: PathBuf },
    /// A file like a SQLite database but shorter (`len`) than its header says (`expected`).
    #[error(
        "{path}: the database file is damaged: {}; nothing was written to it",
        match .expected {
            Some(expected) => format!("it is {len} bytes but its header says {expected}: it was cut short (an interrupted copy?)", len = .len),
            None => format!("it is {} bytes, shorter than the 100-byte header every SQLite database starts with (an interrupted copy?)", .len),
        }
    )]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: Option<u64>,
    },
    /// SQLite found the file damaged; `detail` is what it said.
    #[error(
        "{path}: the database file is damaged ({detail}); nothing was written to it. Restore it from a backup"
    )]
    Corrupt { path: PathBuf, detail: String },
    /// The database's folder does not exist.
    #[error(
        "{path}: the folder {} does not exist, so there is no database there; nothing was created",
        folder_of(.path).display()
    )]
    MissingFolder { path: PathBuf },
    /// This process (effective user `uid`) may not write `target`: the folder, or the file.
    #[error(
        "{path}: this user (uid {uid}) cannot write the {} {}; SQLite writes a -journal beside the database, so both the folder and the file must be writable; nothing was changed",
        if *.folder { "folder" } else { "file" },
        .target.display()
    )]
    ReadOnly {
        path: PathBuf,
        target: PathBuf,
        folder: bool,
        uid: u32,
        source: std::io::Error,
    },
    /// A writer killed mid-transaction left a hot journal (or a WAL: `kind`) that only a
    /// connection that may write can recover; `source` is why this process could not, if known.
    #[error(
        "{path}: {} lies beside it, left by a writer that was killed mid-transaction; SQLite must recover it before the database can be read, and only a connection that may write the database and its folder can; nothing was changed",
        match .kind {
            Recovery::Journal => format!("a hot journal {}", beside(.path, "-journal").display()),
            Recovery::Wal => format!("a write-ahead log {}", beside(.path, "-wal").display()),
        }
    )]
    NeedsRecovery {
        path: PathBuf,
        kind: Recovery,
        source: Option<Box<Error>>,
    },
    /// Another process (`holder`) kept the database locked for the busy timeout (`waited`).
    #[error(
        "{path}: {} for {}s; nothing was changed",
        match .holder {
            LockHolder::Writer => "another process is writing to the database (it holds the write lock)",
            LockHolder::Readers => "another process kept a read transaction open on the database, so this write could not commit",
        },
        .waited.as_secs_f64()
    )]
    Busy {
        path: PathBuf,
        holder: LockHolder,
        waited: Duration,
    },
    /// Any other SQLite error.
    #[error("SQLite failed on {path}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// Could not read or write a file or folder.
    #[error("cannot use {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Tables but no history of ours, and the caller needs one (`foreign`: another tool's).
    #[error(
        "the database has tables but no migration history of this engine{}",
        .foreign.as_ref().map(|f| format!(" ({} history in table {} at {}, left as it is)", f.tool, f.table, f.revision.as_deref().unwrap_or("no revision"))).unwrap_or_else(|| " (made by the old app's create-all?)".into())
    )]
    Unstamped { foreign: Option<ForeignHistory> },
    /// An unstamped schema matches no revision; `closest` is the closest one.
    #[error(
        "the database's schema matches no revision of this build (closest: revision {closest}); nothing was changed. Differences:\n  {}",
        .difference.join("\n  ")
    )]
    NoMatch {
        closest: u32,
        difference: Vec<String>,
        extra_tables: Vec<String>,
    },
    /// The database is at a revision newer than this build's head.
    #[error(
        "the database is at revision {version}, newer than this build knows (head is {head}); nothing was changed. Deploy the newer build or restore a backup taken before it"
    )]
    Ahead { version: u32, head: u32 },
    /// Migration files were edited after they were applied.
    #[error(
        "applied migrations were edited since they ran; nothing was changed:\n  {}\nPut the files back as they were (git checkout migrations/sql) and add a new migration instead",
        .edited.iter().map(EditedFile::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    Modified { edited: Vec<EditedFile> },
    /// The live schema is not the recorded revision's (`forced`: the newest stamped `--force`).
    #[error(
        "the history says revision {version}, but the live schema differs from it; nothing was changed. Differences:\n  {}\n{}",
        .difference.join("\n  "),
        match .forced {
            Some(forced) => format!("Revision {forced} was stamped with --force over a schema that differed: these differences were accepted then, and the migrations after it expect revision {forced}'s schema"),
            None => "Someone changed the schema by hand: undo that, or restore a backup".to_string(),
        }
    )]
    Drifted {
        version: u32,
        difference: Vec<String>,
        forced: Option<u32>,
        extra_tables: Vec<String>,
    },
    /// A migration failed and was rolled back.
    #[error("migration {file} failed and was rolled back; the database is still at revision {at}")]
    MigrationFailed {
        file: &'static str,
        at: u32,
        source: rusqlite::Error,
    },
    /// The commit gate held a transaction back; it was rolled back, so nothing of it stays.
    /// `at`: the revision the history named when the transaction began (none: no history).
    #[error(
        "{cause}; the transaction was rolled back before its COMMIT and the database was left as it was ({})",
        match .at {
            Some(at) => format!("at revision {at}"),
            None => "without a migration history of this engine".to_string(),
        }
    )]
    HeldBack {
        at: Option<u32>,
        /// Why the gate held it back; the message leads with it (`bot db` then prints it once).
        #[source]
        cause: super::GateError,
    },
    /// After a migration, `count` rows of `table` (the first such) refer to missing parents.
    #[error(
        "after migration {file}, {count} rows of table {table} refer to a row that does not exist (a foreign key SQLite was not enforcing, or the migration broke it); the migration was rolled back and the database is still at revision {at}; `PRAGMA foreign_key_check` in the sqlite3 shell lists the rows: delete or mend them, then run the upgrade again"
    )]
    ForeignKeys {
        file: &'static str,
        count: usize,
        table: String,
        at: u32,
    },
    /// A revision this build does not know.
    #[error("revision {version} does not exist; this build knows revisions 1 to {head}")]
    UnknownRevision { version: u32, head: u32 },
    /// `stamp` asked for a revision the live schema is not.
    #[error(
        "the live schema is not revision {version}; nothing was changed. Differences:\n  {}",
        .difference.join("\n  ")
    )]
    StampMismatch {
        version: u32,
        difference: Vec<String>,
    },
    /// `adopt` on a database that already has a history (or no tables), in `state`.
    #[error(
        "{}",
        if *.state == State::Empty {
            "the database has no tables; nothing to adopt (an upgrade builds the schema)".to_string()
        } else {
            format!("the database already has a migration history (state {}); nothing to adopt", .state.name())
        }
    )]
    AlreadyStamped { state: State },
    /// A downgrade would pass a revision that cannot be undone (`file`: its up file).
    #[error(
        "revision {version} ({file}) has no .down.sql, so the database cannot go below it; nothing was changed"
    )]
    NoDown { version: u32, file: &'static str },
    /// A downgrade target above the current revision, or an upgrade target below it.
    #[error("the database is at revision {at}; cannot go to {to} in that direction")]
    WrongDirection { at: u32, to: u32 },
    /// Another process moved the database (to `at`, not `expected`) while a downgrade ran,
    /// which stopped there, having undone `undone`.
    #[error(
        "the database is at revision {at}, not {expected} as planned: another process changed it meanwhile; {} Run the command again",
        if .undone.is_empty() { "nothing was undone.".to_string() } else { format!("this command undid {:?} before that.", .undone) }
    )]
    Moved {
        expected: u32,
        at: u32,
        undone: Vec<u32>,
    },
    /// A copy failed its integrity check.
    #[error("{path}: integrity check failed: {detail}; the copy cannot be trusted")]
    IntegrityCheck { path: PathBuf, detail: String },
    /// `restore` of a `file` of 0 bytes (`zero_bytes`) or no tables over one with tables.
    #[error(
        "{file}: {}, but the live database has {live_tables} tables; nothing was changed. A backup is never empty: is it the right file (a failed copy?)",
        if *.zero_bytes { "the file is 0 bytes" } else { "the file holds no tables" }
    )]
    EmptySource {
        file: PathBuf,
        zero_bytes: bool,
        live_tables: usize,
    },
}

impl Error {
    /// Whether the error is a refusal on the database's state (nothing was changed), as
    /// opposed to a failure while working.
    pub fn is_refusal(&self) -> bool {
        if let Error::Moved { undone, .. } = self {
            return undone.is_empty();
        }
        matches!(
            self,
            Error::Unstamped { .. }
                | Error::NoMatch { .. }
                | Error::Ahead { .. }
                | Error::Modified { .. }
                | Error::Drifted { .. }
                | Error::StampMismatch { .. }
                | Error::AlreadyStamped { .. }
                | Error::NoDown { .. }
                | Error::WrongDirection { .. }
                | Error::UnknownRevision { .. }
                | Error::EmptySource { .. }
                | Error::SameFile { .. }
                | Error::MissingFolder { .. }
                | Error::ReadOnly { .. }
                | Error::NeedsRecovery { .. }
        )
    }

    /// Whether the file itself is the problem (not SQLite, damaged, a folder, or a bad copy).
    pub fn is_bad_file(&self) -> bool {
        matches!(
            self,
            Error::NotADatabase { .. }
                | Error::Folder { .. }
                | Error::NotAFile { .. }
                | Error::Truncated { .. }
                | Error::Corrupt { .. }
                | Error::IntegrityCheck { .. }
        )
    }

    /// The engine's error for a SQLite error met on `path`: a damaged file, a file that is
    /// not SQLite, a lock held too long (by a writer: this is how reads and the start of a
    /// write are blocked), a hot journal a read-only connection cannot roll back.
    pub fn from_sqlite(path: &Path, e: rusqlite::Error) -> Error {
        let path = path.to_owned();
        let extended = e.sqlite_error().map(|e| e.extended_code);
        match (e.sqlite_error_code(), extended) {
            (Some(ErrorCode::DatabaseCorrupt), _) => Error::Corrupt {
                path,
                detail: e.to_string(),
            },
            (Some(ErrorCode::NotADatabase), _) => Error::NotADatabase { path },
            (Some(ErrorCode::DiskFull), _) => Error::DiskFull { path },
            // A `-wal` without its `-shm`, in a folder this user may not create one in: only a
            // connection that may write recovers it.
            (Some(ErrorCode::CannotOpen), _)
                if std::fs::metadata(beside(&path, "-wal")).is_ok_and(|m| m.len() > 0)
                    && !beside(&path, "-shm").exists() =>
            {
                Error::needs_recovery(&path, Recovery::Wal)
            }
            (Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked), _) => {
                Error::busy(&path, LockHolder::Writer)
            }
            (_, Some(SQLITE_READONLY_ROLLBACK)) => Error::needs_recovery(&path, Recovery::Journal),
            (
                _,
                Some(
                    SQLITE_READONLY_RECOVERY | SQLITE_READONLY_CANTINIT | SQLITE_READONLY_CANTLOCK,
                ),
            ) => Error::needs_recovery(&path, Recovery::Wal),
            _ => Error::Sqlite { path, source: e },
        }
    }

    /// [`Error::Io`] on `path`, for `map_err`.
    pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// [`Error::Busy`] on `path`, after waiting the busy timeout for `holder`.
    pub(super) fn busy(path: &Path, holder: LockHolder) -> Error {
        Error::Busy {
            path: path.to_owned(),
            holder,
            waited: super::busy_timeout(),
        }
    }

    /// [`Error::NeedsRecovery`] of `kind` on `path`, with no known cause.
    pub(super) fn needs_recovery(path: &Path, kind: Recovery) -> Error {
        Error::NeedsRecovery {
            path: path.to_owned(),
            kind,
            source: None,
        }
    }

    /// The same error, a lock held too long now blamed on readers: for the statements of a
    /// write transaction, which in rollback-journal mode wait for readers to finish before
    /// they may write the file (a cache spill, or COMMIT).
    pub(super) fn blocked_by_readers(mut self) -> Error {
        if let Error::Busy { holder, .. } = &mut self {
            *holder = LockHolder::Readers;
        }
        self
    }
}
