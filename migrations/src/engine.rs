//! The engine: reads a database's state, applies pending migrations under the write lock, stamps,
//! adopts, backs up and restores.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::NO_PROGRESS;
use rusqlite::{Connection, ErrorCode, MAIN_DB, OpenFlags, TransactionBehavior};
use serde::Serialize;

use crate::catalog::{MIGRATIONS, head, migration, schema_at};
use crate::schema::{self, Schema};

/// The engine's own history table.
pub const HISTORY_TABLE: &str = "schema_history";

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How long a statement waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the engine can tell about a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No tables (or no file yet).
    Empty,
    /// Tables, but no history: made by something else (the old app's create-all).
    Unstamped,
    /// The history names an older revision than head.
    Behind,
    /// The history names head.
    Current,
    /// The history names a revision this build does not know.
    Ahead,
    /// An applied migration's file changed since it was applied.
    Modified,
}

impl State {
    /// The state's name as scripts see it.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "empty",
            State::Unstamped => "unstamped",
            State::Behind => "behind",
            State::Current => "current",
            State::Ahead => "ahead",
            State::Modified => "modified",
        }
    }
}

/// A database's state, as `bot db status --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The state.
    pub state: State,
    /// The revision the history records, if any.
    pub version: Option<u32>,
    /// The newest revision this build knows.
    pub head: u32,
    /// Revisions `upgrade` would apply, in order (for `unstamped`: those after the match).
    pub pending: Vec<u32>,
    /// For `unstamped`: the revision the live schema matches, or null.
    pub matches: Option<u32>,
    /// For `unstamped` with no match: the closest revision.
    pub closest: Option<u32>,
    /// Why the state is not clean: the schema difference to `closest`, or the edited files.
    pub difference: Vec<String>,
}

/// One row of the history table.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    /// The revision.
    pub version: u32,
    /// The migration's name.
    pub name: String,
    /// SHA-256 of the `.up.sql` file when it was recorded.
    pub checksum: String,
    /// When (UTC, ISO 8601).
    pub applied_at: String,
    /// `applied` or `stamped`.
    pub how: String,
}

/// What `upgrade` did.
#[derive(Debug, Clone, Serialize)]
pub struct Upgrade {
    /// The revision before.
    pub from: Option<u32>,
    /// The revision after.
    pub to: u32,
    /// Revisions this process applied (another process may have applied some meanwhile).
    pub applied: Vec<u32>,
}

/// Everything that can go wrong, each saying what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not a SQLite database.
    #[error(
        "{path}: not a SQLite database (its first bytes are not \"SQLite format 3\"); point DATABASE_PATH at the right file or restore a backup"
    )]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// SQLite found the file damaged.
    #[error("{path}: the database file is damaged ({detail}); restore it from a backup")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// Another process holds the lock for longer than the busy timeout.
    #[error(
        "{path}: the database stayed locked by another process for {0:?}; stop the other writer (is the bot still running?) and retry",
        BUSY_TIMEOUT
    )]
    Busy {
        /// The file.
        path: PathBuf,
    },
    /// Any other SQLite error.
    #[error("{path}: {cause}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The error.
        cause: rusqlite::Error,
    },
    /// Could not read the file.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        cause: std::io::Error,
    },
    /// The database has tables but no history, and the caller needs one.
    #[error(
        "the database has tables but no migration history (made by the old app's create-all?); run `bot db adopt` (or `cargo xtask prod-migrate`) to record the revision it matches"
    )]
    Unstamped,
    /// An unstamped schema matches no revision.
    #[error(
        "the database's schema matches no revision of this build (closest: revision {closest}); nothing was changed. Differences:\n  {}\nFix the schema by hand or restore a backup, then retry",
        .difference.join("\n  ")
    )]
    NoMatch {
        /// The closest revision.
        closest: u32,
        /// The differences to it.
        difference: Vec<String>,
    },
    /// The database is at a revision this build does not know.
    #[error(
        "the database is at revision {version}, newer than this build knows (head is {head}); deploy the newer build or restore a backup taken before it"
    )]
    Ahead {
        /// The recorded revision.
        version: u32,
        /// This build's head.
        head: u32,
    },
    /// An applied migration's file was edited.
    #[error(
        "applied migrations were edited since they ran:\n  {}\nput the files back as they were (git checkout migrations/sql) and add a new migration instead",
        .difference.join("\n  ")
    )]
    Modified {
        /// One line per edited file.
        difference: Vec<String>,
    },
    /// A migration's SQL failed; its transaction was rolled back.
    #[error(
        "migration {file} failed: {source}; it was rolled back, the database is still at revision {at}"
    )]
    MigrationFailed {
        /// The file.
        file: &'static str,
        /// The revision the database stays at.
        at: u32,
        /// The error.
        source: rusqlite::Error,
    },
    /// A migration left rows that break foreign keys; rolled back.
    #[error(
        "migration {file} left {count} rows that break foreign keys (first: table {table}); it was rolled back, the database is still at revision {at}"
    )]
    ForeignKeys {
        /// The file.
        file: &'static str,
        /// Violations found.
        count: usize,
        /// The first table with one.
        table: String,
        /// The revision the database stays at.
        at: u32,
    },
    /// No such revision.
    #[error("revision {version} does not exist; this build knows revisions 1 to {head}")]
    UnknownRevision {
        /// The revision asked for.
        version: u32,
        /// This build's head.
        head: u32,
    },
    /// `stamp` asked for a revision the live schema is not.
    #[error(
        "the live schema is not revision {version}; nothing was changed. Differences:\n  {}\nstamp the revision it matches (`bot db adopt`), or pass --force if you are sure",
        .difference.join("\n  ")
    )]
    StampMismatch {
        /// The revision asked for.
        version: u32,
        /// How the live schema differs from it.
        difference: Vec<String>,
    },
    /// `adopt` on a database that already has a history.
    #[error("the database already has a migration history (state {}); nothing to adopt", .state.name())]
    AlreadyStamped {
        /// Its state.
        state: State,
    },
    /// A backup copy failed its integrity check.
    #[error("{path}: integrity check failed: {detail}; the copy cannot be trusted")]
    IntegrityCheck {
        /// The copy.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
}

/// An open database file.
pub struct Database {
    conn: Connection,
    path: PathBuf,
}

fn check_header(path: &Path) -> Result<(), Error> {
    let io = |cause| Error::Io {
        path: path.to_owned(),
        cause,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(()); // SQLite treats an empty file as an empty database.
    }
    let mut header = [0u8; 16];
    if len < 16 || file.read_exact(&mut header).is_err() || &header != SQLITE_HEADER {
        return Err(Error::NotADatabase {
            path: path.to_owned(),
        });
    }
    Ok(())
}

impl Database {
    /// Opens an existing database for reading only; `Ok(None)` when there is no file.
    pub fn open_read_only(path: &Path) -> Result<Option<Database>, Error> {
        if !path.exists() {
            return Ok(None);
        }
        check_header(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        );
        Self::finish_open(path, conn).map(Some)
    }

    /// Opens a database for writing, creating the file when there is none.
    pub fn open(path: &Path) -> Result<Database, Error> {
        if path.exists() {
            check_header(path)?;
        }
        Self::finish_open(path, Connection::open(path))
    }

    fn finish_open(path: &Path, conn: rusqlite::Result<Connection>) -> Result<Database, Error> {
        let conn = conn.map_err(|e| sqlite_error(path, e))?;
        let db = Database {
            conn,
            path: path.to_owned(),
        };
        db.conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| db.err(e))?;
        // Reading the schema table notices a damaged or foreign file before anything else.
        db.conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |row| {
                row.get::<_, i64>(0)
            })
            .map_err(|e| db.err(e))?;
        Ok(db)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying connection (the bot runs its queries on it).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        sqlite_error(&self.path, e)
    }

    fn has_history_table(&self) -> Result<bool, Error> {
        self.conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [HISTORY_TABLE],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// The history, oldest first; `None` when there is no history table.
    pub fn history(&self) -> Result<Option<Vec<HistoryRow>>, Error> {
        if !self.has_history_table()? {
            return Ok(None);
        }
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT version, name, checksum, applied_at, how FROM {HISTORY_TABLE} ORDER BY version"
            ))
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(HistoryRow {
                    version: row.get(0)?,
                    name: row.get(1)?,
                    checksum: row.get(2)?,
                    applied_at: row.get(3)?,
                    how: row.get(4)?,
                })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(Some(rows))
    }

    /// The normalized schema of the live database, without the history table.
    pub fn schema(&self) -> Result<Schema, Error> {
        schema::read(&self.conn, &[HISTORY_TABLE]).map_err(|e| self.err(e))
    }

    /// Tells the database's state.
    pub fn status(&self) -> Result<Status, Error> {
        let history = self.history()?.unwrap_or_default();
        let mut status = Status {
            state: State::Empty,
            version: None,
            head: head(),
            pending: Vec::new(),
            matches: None,
            closest: None,
            difference: Vec::new(),
        };
        let Some(version) = history.iter().map(|row| row.version).max() else {
            let live = self.schema()?;
            if live.tables.is_empty() {
                status.pending = (1..=head()).collect();
                return Ok(status);
            }
            status.state = State::Unstamped;
            match find_match(&live) {
                Ok(matched) => {
                    status.matches = Some(matched);
                    status.pending = (matched + 1..=head()).collect();
                }
                Err((closest, difference)) => {
                    status.closest = Some(closest);
                    status.difference = difference;
                }
            }
            return Ok(status);
        };
        status.version = Some(version);
        if version > head() {
            status.state = State::Ahead;
            return Ok(status);
        }
        status.difference = edited_files(&history);
        if !status.difference.is_empty() {
            status.state = State::Modified;
            return Ok(status);
        }
        status.pending = (version + 1..=head()).collect();
        status.state = if status.pending.is_empty() {
            State::Current
        } else {
            State::Behind
        };
        Ok(status)
    }

    fn refuse_unsafe_states(status: &Status) -> Result<(), Error> {
        match status.state {
            State::Ahead => Err(Error::Ahead {
                version: status.version.unwrap_or_default(),
                head: status.head,
            }),
            State::Modified => Err(Error::Modified {
                difference: status.difference.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn ensure_history_table(&self) -> Result<(), Error> {
        self.conn
            .execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
                    version INTEGER PRIMARY KEY,
                    name TEXT NOT NULL,
                    checksum TEXT NOT NULL,
                    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                    how TEXT NOT NULL CHECK (how IN ('applied', 'stamped', 'forced'))
                )"
            ))
            .map_err(|e| self.err(e))
    }

    /// Applies every pending migration, each with its history row in one transaction taken with
    /// the write lock first; the history is read again under the lock, so two processes started
    /// together apply each migration once.
    pub fn upgrade(
        &mut self,
        mut on_apply: impl FnMut(&crate::Migration),
    ) -> Result<Upgrade, Error> {
        let status = self.status()?;
        Self::refuse_unsafe_states(&status)?;
        if status.state == State::Unstamped {
            return Err(Error::Unstamped);
        }
        self.ensure_history_table()?;
        let mut applied = Vec::new();
        for &version in &status.pending {
            let m = migration(version).expect("pending revisions are known");
            if self.apply(m, &mut on_apply)? {
                applied.push(version);
            }
        }
        Ok(Upgrade {
            from: status.version,
            to: head(),
            applied,
        })
    }

    /// Applies one migration unless another process did first; true when this one did.
    fn apply(
        &mut self,
        m: &'static crate::Migration,
        on_apply: &mut impl FnMut(&crate::Migration),
    ) -> Result<bool, Error> {
        let path = self.path.clone();
        let err = |e| sqlite_error(&path, e);
        // Ignored inside a transaction, so it is switched off before BEGIN.
        self.conn
            .execute_batch("PRAGMA foreign_keys = OFF")
            .map_err(err)?;
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let at: u32 = tx
                .query_row(
                    &format!("SELECT coalesce(max(version), 0) FROM {HISTORY_TABLE}"),
                    [],
                    |row| row.get(0),
                )
                .map_err(err)?;
            if at >= m.version {
                return Ok(false);
            }
            on_apply(m);
            tx.execute_batch(m.up)
                .map_err(|source| Error::MigrationFailed {
                    file: m.file,
                    at,
                    source,
                })?;
            let violations: Vec<String> = {
                let mut check = tx.prepare("PRAGMA foreign_key_check").map_err(err)?;
                check
                    .query_map([], |row| row.get::<_, String>(0))
                    .and_then(|rows| rows.collect())
                    .map_err(err)?
            };
            if let Some(table) = violations.first() {
                return Err(Error::ForeignKeys {
                    file: m.file,
                    count: violations.len(),
                    table: table.clone(),
                    at,
                });
            }
            tx.execute(
                &format!("INSERT INTO {HISTORY_TABLE} (version, name, checksum, how) VALUES (?1, ?2, ?3, 'applied')"),
                rusqlite::params![m.version, m.name, m.checksum()],
            )
            .map_err(err)?;
            tx.commit().map_err(err)?;
            Ok(true)
        })();
        self.conn
            .execute_batch("PRAGMA foreign_keys = ON")
            .map_err(err)?;
        result
    }

    /// Records `version` as the database's revision without running anything. Refuses unless the
    /// live schema is that revision's, or `force` is set (then the history says `forced`).
    pub fn stamp(&mut self, version: u32, force: bool) -> Result<(), Error> {
        if version == 0 || version > head() {
            return Err(Error::UnknownRevision {
                version,
                head: head(),
            });
        }
        let status = self.status()?;
        Self::refuse_unsafe_states(&status)?;
        let difference: Vec<String> = schema::diff(schema_at(version), &self.schema()?)
            .iter()
            .map(ToString::to_string)
            .collect();
        if !difference.is_empty() && !force {
            return Err(Error::StampMismatch {
                version,
                difference,
            });
        }
        self.ensure_history_table()?;
        let path = self.path.clone();
        let err = |e| sqlite_error(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        tx.execute(&format!("DELETE FROM {HISTORY_TABLE}"), [])
            .map_err(err)?;
        let how = if force && !difference.is_empty() {
            "forced"
        } else {
            "stamped"
        };
        for m in &MIGRATIONS[..version as usize] {
            tx.execute(
                &format!("INSERT INTO {HISTORY_TABLE} (version, name, checksum, how) VALUES (?1, ?2, ?3, ?4)"),
                rusqlite::params![m.version, m.name, m.checksum(), how],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Stamps an unstamped database at the revision its live schema matches; refuses, naming
    /// the difference to the closest revision, when none does.
    pub fn adopt(&mut self) -> Result<u32, Error> {
        let status = self.status()?;
        if status.state != State::Unstamped {
            return Err(Error::AlreadyStamped {
                state: status.state,
            });
        }
        match status.matches {
            Some(version) => self.stamp(version, false).map(|()| version),
            None => Err(Error::NoMatch {
                closest: status.closest.unwrap_or(0),
                difference: status.difference,
            }),
        }
    }

    /// Copies the live database to `dest` with the online backup API, then checks the copy.
    pub fn backup_to(&self, dest: &Path) -> Result<(), Error> {
        if let Some(folder) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|cause| Error::Io {
                path: folder.to_owned(),
                cause,
            })?;
        }
        self.conn
            .backup(MAIN_DB, dest, NO_PROGRESS)
            .map_err(|e| sqlite_error(dest, e))?;
        check_integrity(dest)
    }

    /// Replaces the live database's content with the database at `source`, after checking it.
    pub fn restore_from(&mut self, source: &Path) -> Result<(), Error> {
        check_integrity(source)?;
        self.conn
            .restore(MAIN_DB, source, NO_PROGRESS)
            .map_err(|e| sqlite_error(source, e))
    }
}

/// Runs `PRAGMA integrity_check` on a database file opened read-only.
pub fn check_integrity(path: &Path) -> Result<(), Error> {
    let db = Database::open_read_only(path)?.ok_or_else(|| Error::Io {
        path: path.to_owned(),
        cause: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let detail: String = db
        .conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|e| db.err(e))?;
    if detail != "ok" {
        return Err(Error::IntegrityCheck {
            path: path.to_owned(),
            detail,
        });
    }
    Ok(())
}

fn sqlite_error(path: &Path, e: rusqlite::Error) -> Error {
    let path = path.to_owned();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt) => Error::Corrupt {
            path,
            detail: e.to_string(),
        },
        Some(ErrorCode::NotADatabase) => Error::NotADatabase { path },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::Busy { path },
        _ => Error::Sqlite { path, cause: e },
    }
}

/// The revision whose schema is `live`, or the closest one and the difference to it.
fn find_match(live: &Schema) -> Result<u32, (u32, Vec<String>)> {
    let mut closest: Option<(u32, Vec<String>)> = None;
    for version in 1..=head() {
        let difference = schema::diff(schema_at(version), live);
        if difference.is_empty() {
            return Ok(version);
        }
        if closest
            .as_ref()
            .is_none_or(|(_, best)| difference.len() <= best.len())
        {
            closest = Some((
                version,
                difference.iter().map(ToString::to_string).collect(),
            ));
        }
    }
    Err(closest.expect("there is at least one revision"))
}

fn edited_files(history: &[HistoryRow]) -> Vec<String> {
    history
        .iter()
        .filter_map(|row| {
            let m = migration(row.version)?;
            let current = m.checksum();
            (current != row.checksum).then(|| {
                format!(
                    "{} changed since it was applied: recorded checksum {}, file now {}",
                    m.file, row.checksum, current
                )
            })
        })
        .collect()
}
