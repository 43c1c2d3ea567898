//! The engine: reads a database's state, applies and undoes migrations under the write lock,
//! stamps, adopts, backs up and restores.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::NO_PROGRESS;
use rusqlite::{Connection, ErrorCode, MAIN_DB, OpenFlags, Transaction, TransactionBehavior};
use serde::Serialize;

use crate::catalog::{MIGRATIONS, Migration, head, migration, schema_at};
use crate::schema::{self, Change, Difference, Schema};

/// The engine's own history table.
pub const HISTORY_TABLE: &str = "schema_history";

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How long a statement waits for another process's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Other migration tools' history tables: recognised, reported, left as they are.
const FOREIGN_TOOLS: &[(&str, &str, &str)] = &[
    (
        "alembic",
        "alembic_version",
        "SELECT version_num FROM alembic_version LIMIT 1",
    ),
    (
        "flyway",
        "flyway_schema_history",
        "SELECT version FROM flyway_schema_history WHERE success ORDER BY installed_rank DESC LIMIT 1",
    ),
    (
        "golang-migrate or rails",
        "schema_migrations",
        "SELECT max(version) FROM schema_migrations",
    ),
    (
        "sqlx",
        "_sqlx_migrations",
        "SELECT max(version) FROM _sqlx_migrations",
    ),
    (
        "refinery",
        "refinery_schema_history",
        "SELECT max(version) FROM refinery_schema_history",
    ),
    (
        "diesel",
        "__diesel_schema_migrations",
        "SELECT max(version) FROM __diesel_schema_migrations",
    ),
];

/// What the engine can tell about a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No tables (or no file yet).
    Empty,
    /// Tables, but no history: made by something else (the old app's create-all).
    Unstamped,
    /// Another tool's history (e.g. `alembic_version`) and none of ours.
    Foreign,
    /// The history names an older revision than head.
    Behind,
    /// The history names head.
    Current,
    /// The history names a revision this build does not know.
    Ahead,
    /// An applied migration's file changed since it was applied.
    Modified,
    /// The history names a revision, but the live schema is not that revision's.
    Drifted,
}

impl State {
    /// The state's name as scripts see it.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "empty",
            State::Unstamped => "unstamped",
            State::Foreign => "foreign",
            State::Behind => "behind",
            State::Current => "current",
            State::Ahead => "ahead",
            State::Modified => "modified",
            State::Drifted => "drifted",
        }
    }
}

/// Another tool's history found in the database.
#[derive(Debug, Clone, Serialize)]
pub struct ForeignHistory {
    /// The tool, e.g. "alembic".
    pub tool: &'static str,
    /// Its table.
    pub table: &'static str,
    /// The revision it records, as text.
    pub revision: Option<String>,
}

/// An applied migration whose file changed since.
#[derive(Debug, Clone, Serialize)]
pub struct EditedFile {
    /// The `.up.sql` file.
    pub file: &'static str,
    /// The checksum the history recorded.
    pub recorded: String,
    /// The file's checksum now.
    pub current: String,
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
    /// For `unstamped` and `foreign`: the revision the live schema matches, or null.
    pub matches: Option<u32>,
    /// For `unstamped` and `foreign` with no match: the closest revision.
    pub closest: Option<u32>,
    /// Why the state is not clean: the schema difference (to `closest`, or for `drifted` to the
    /// recorded revision), or the edited files.
    pub difference: Vec<String>,
    /// For `foreign`: the other tool's history.
    pub foreign: Option<ForeignHistory>,
    /// For `modified`: the edited files with both checksums.
    pub edited: Vec<EditedFile>,
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
    /// `applied`, `stamped` or `forced` (stamped though the schema differed).
    pub how: String,
}

/// What `upgrade` or `downgrade` did.
#[derive(Debug, Clone, Serialize)]
pub struct Upgrade {
    /// The revision before.
    pub from: Option<u32>,
    /// The revision after.
    pub to: u32,
    /// Revisions this process applied (or undid), in order; another process may have done
    /// some meanwhile.
    pub applied: Vec<u32>,
}

/// One step a plan would run.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    /// The revision concerned.
    pub version: u32,
    /// The SQL file.
    pub file: &'static str,
    /// The SQL, as it would run.
    pub sql: &'static str,
}

/// What `upgrade` or `downgrade` would do, for `--dry-run`.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The revision now.
    pub from: Option<u32>,
    /// The revision after.
    pub to: u32,
    /// The steps, in order.
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    /// Every migration after revision `from` (none: from the start) up to head.
    pub fn after(from: Option<u32>) -> Plan {
        Plan {
            from,
            to: head(),
            steps: MIGRATIONS[from.unwrap_or(0) as usize..]
                .iter()
                .map(|m| PlannedStep {
                    version: m.version,
                    file: m.file,
                    sql: m.up,
                })
                .collect(),
        }
    }
}

/// A checked copy.
#[derive(Debug, Clone, Serialize)]
pub struct BackupInfo {
    /// The copy.
    pub path: PathBuf,
    /// The revision its history records.
    pub revision: Option<u32>,
    /// Its state.
    pub state: State,
    /// Its size in bytes.
    pub bytes: u64,
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
    #[error(
        "{path}: the database file is damaged ({detail}); nothing was written to it. Restore it from a backup"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// Another process holds the lock for longer than the busy timeout.
    #[error(
        "{path}: the database stayed locked by another process for {}s; stop the other writer (is the bot still running?) and retry",
        BUSY_TIMEOUT.as_secs()
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
    /// The database has tables but no history of ours, and the caller needs one.
    #[error(
        "the database has tables but no migration history of this engine{}; run `bot db adopt` (or `cargo xtask prod-migrate`) to record the revision its schema matches",
        .foreign.as_ref().map(|f| format!(" ({} history in table {} at {}, left as it is)", f.tool, f.table, f.revision.as_deref().unwrap_or("no revision"))).unwrap_or_else(|| " (made by the old app's create-all?)".into())
    )]
    Unstamped {
        /// Another tool's history, if present.
        foreign: Option<ForeignHistory>,
    },
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
        "the database is at revision {version}, newer than this build knows (head is {head}); nothing was changed. Deploy the newer build or restore a backup taken before it"
    )]
    Ahead {
        /// The recorded revision.
        version: u32,
        /// This build's head.
        head: u32,
    },
    /// An applied migration's file was edited.
    #[error(
        "applied migrations were edited since they ran; nothing was changed:\n  {}\nPut the files back as they were (git checkout migrations/sql) and add a new migration instead",
        .edited.iter().map(|e| format!("{} changed since it was applied: recorded checksum {}, file now {}", e.file, e.recorded, e.current)).collect::<Vec<_>>().join("\n  ")
    )]
    Modified {
        /// The edited files.
        edited: Vec<EditedFile>,
    },
    /// The live schema is not the recorded revision's.
    #[error(
        "the history says revision {version}, but the live schema differs from it; nothing was changed. Differences:\n  {}\nSomeone changed the schema by hand: undo that, or restore a backup",
        .difference.join("\n  ")
    )]
    Drifted {
        /// The recorded revision.
        version: u32,
        /// How the live schema differs from it.
        difference: Vec<String>,
    },
    /// A migration's SQL failed; its transaction was rolled back.
    #[error(
        "migration {file} failed: {cause}; it was rolled back, the database is still at revision {at}"
    )]
    MigrationFailed {
        /// The file.
        file: &'static str,
        /// The revision the database stays at.
        at: u32,
        /// The error.
        cause: rusqlite::Error,
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
        "the live schema is not revision {version}; nothing was changed. Differences:\n  {}\nStamp the revision it matches (`bot db adopt`), or pass --force if you are sure",
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
    /// A downgrade would pass a revision that cannot be undone.
    #[error(
        "revision {version} ({file}) has no .down.sql, so the database cannot go below it; nothing was changed"
    )]
    NoDown {
        /// The revision.
        version: u32,
        /// Its up file.
        file: &'static str,
    },
    /// A downgrade target above the current revision, or an upgrade target below it.
    #[error("the database is at revision {at}; cannot go to {to} in that direction")]
    WrongDirection {
        /// The revision now.
        at: u32,
        /// The revision asked for.
        to: u32,
    },
    /// A copy failed its integrity check.
    #[error("{path}: integrity check failed: {detail}; the copy cannot be trusted")]
    IntegrityCheck {
        /// The copy.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
}

impl Error {
    /// Whether the error is a refusal on the database's state (nothing was changed), as
    /// opposed to a failure while working.
    pub fn is_refusal(&self) -> bool {
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
        )
    }

    /// Whether the file itself is the problem (not SQLite, damaged, or a bad copy).
    pub fn is_bad_file(&self) -> bool {
        matches!(
            self,
            Error::NotADatabase { .. } | Error::Corrupt { .. } | Error::IntegrityCheck { .. }
        )
    }
}

/// An open database file.
pub struct Database {
    conn: Connection,
    path: PathBuf,
}

/// Checks that `path` looks like a SQLite database whose header agrees with its size, without
/// opening it through SQLite.
fn check_file(path: &Path) -> Result<(), Error> {
    let io = |cause| Error::Io {
        path: path.to_owned(),
        cause,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(()); // SQLite treats an empty file as an empty database.
    }
    let mut header = [0u8; 100];
    if len < 100 || file.read_exact(&mut header).is_err() || &header[..16] != SQLITE_HEADER {
        return Err(Error::NotADatabase {
            path: path.to_owned(),
        });
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        size => u64::from(size),
    };
    if page_size < 512 || !page_size.is_power_of_two() {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: format!("the header names an impossible page size {page_size}"),
        });
    }
    // The in-header page count is valid when its "version valid for" matches the change counter.
    let change_counter = u32::from_be_bytes(header[24..28].try_into().expect("4 bytes"));
    let pages = u32::from_be_bytes(header[28..32].try_into().expect("4 bytes"));
    let valid_for = u32::from_be_bytes(header[92..96].try_into().expect("4 bytes"));
    if pages > 0 && valid_for == change_counter && u64::from(pages) * page_size > len {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "the file is {len} bytes but its header says {} ({pages} pages): it was cut short",
                u64::from(pages) * page_size
            ),
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
        check_file(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        );
        Self::finish_open(path, conn).map(Some)
    }

    /// Opens a database for writing, creating the file when there is none. An existing file
    /// is first checked (header, size, `quick_check`) on a read-only connection, so a file
    /// that is not SQLite or is damaged is never opened for writing.
    pub fn open(path: &Path) -> Result<Database, Error> {
        if let Some(db) = Self::open_read_only(path)? {
            db.quick_check()?;
        }
        Self::finish_open(path, Connection::open(path))
    }

    /// Opens for writing after the cheap checks only (header, size, schema readable): for
    /// commands that only write the history table, so that they stay fast on large files.
    pub fn open_for_history(path: &Path) -> Result<Database, Error> {
        drop(Self::open_read_only(path)?);
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

    fn quick_check(&self) -> Result<(), Error> {
        let detail: String = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |row| row.get(0))
            .map_err(|e| self.err(e))?;
        if detail != "ok" {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                detail,
            });
        }
        Ok(())
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

    fn table_exists(&self, name: &str) -> Result<bool, Error> {
        self.conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                [name],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    /// The history, oldest first; `None` when there is no history table.
    pub fn history(&self) -> Result<Option<Vec<HistoryRow>>, Error> {
        if !self.table_exists(HISTORY_TABLE)? {
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

    /// Another tool's history table, if there is one.
    pub fn foreign_history(&self) -> Result<Option<ForeignHistory>, Error> {
        for (tool, table, query) in FOREIGN_TOOLS {
            if self.table_exists(table)? {
                let revision = self
                    .conn
                    .query_row(query, [], |row| row.get::<_, rusqlite::types::Value>(0))
                    .ok()
                    .and_then(|value| match value {
                        rusqlite::types::Value::Text(text) => Some(text),
                        rusqlite::types::Value::Integer(n) => Some(n.to_string()),
                        _ => None,
                    });
                return Ok(Some(ForeignHistory {
                    tool,
                    table,
                    revision,
                }));
            }
        }
        Ok(None)
    }

    /// The normalized schema of the live database, without any tool's history table.
    pub fn schema(&self) -> Result<Schema, Error> {
        let mut skip = vec![HISTORY_TABLE];
        skip.extend(FOREIGN_TOOLS.iter().map(|(_, table, _)| *table));
        schema::read(&self.conn, &skip).map_err(|e| self.err(e))
    }

    /// Tells the database's state.
    pub fn status(&self) -> Result<Status, Error> {
        let history = self.history()?.unwrap_or_default();
        let live = self.schema()?;
        let mut status = Status {
            state: State::Empty,
            version: None,
            head: head(),
            pending: Vec::new(),
            matches: None,
            closest: None,
            difference: Vec::new(),
            foreign: None,
            edited: Vec::new(),
        };
        let Some(version) = history.iter().map(|row| row.version).max() else {
            status.foreign = self.foreign_history()?;
            if live.tables.is_empty() && status.foreign.is_none() {
                status.pending = (1..=head()).collect();
                return Ok(status);
            }
            status.state = if status.foreign.is_some() {
                State::Foreign
            } else {
                State::Unstamped
            };
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
        status.edited = edited_files(&history);
        if !status.edited.is_empty() {
            status.state = State::Modified;
            status.difference = status
                .edited
                .iter()
                .map(|e| {
                    format!(
                        "{} changed since it was applied: recorded checksum {}, file now {}",
                        e.file, e.recorded, e.current
                    )
                })
                .collect();
            return Ok(status);
        }
        let drift = explain(&schema::diff(schema_at(version), &live), version);
        if !drift.is_empty() {
            status.state = State::Drifted;
            status.difference = drift;
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

    /// The status, or the refusal for states where nothing may run.
    fn status_for_change(&self) -> Result<Status, Error> {
        let status = self.status()?;
        match status.state {
            State::Ahead => Err(Error::Ahead {
                version: status.version.unwrap_or_default(),
                head: status.head,
            }),
            State::Modified => Err(Error::Modified {
                edited: status.edited,
            }),
            State::Drifted => Err(Error::Drifted {
                version: status.version.unwrap_or_default(),
                difference: status.difference,
            }),
            _ => Ok(status),
        }
    }

    /// What `upgrade` would run.
    pub fn plan_upgrade(&self) -> Result<Plan, Error> {
        let status = self.status_for_change()?;
        if matches!(status.state, State::Unstamped | State::Foreign) {
            return Err(Error::Unstamped {
                foreign: status.foreign,
            });
        }
        Ok(Plan::after(status.version))
    }

    /// Applies every pending migration, each with its history row in one transaction taken with
    /// the write lock first; the history is read again under the lock, so two processes started
    /// together apply each migration once.
    pub fn upgrade(&mut self, on_apply: impl FnMut(&Migration)) -> Result<Upgrade, Error> {
        self.upgrade_to(head(), on_apply)
    }

    /// Applies the pending migrations up to revision `to` only.
    pub fn upgrade_to(
        &mut self,
        to: u32,
        mut on_apply: impl FnMut(&Migration),
    ) -> Result<Upgrade, Error> {
        if to > head() {
            return Err(Error::UnknownRevision {
                version: to,
                head: head(),
            });
        }
        let plan = self.plan_upgrade()?;
        if plan.from.unwrap_or(0) > to {
            return Err(Error::WrongDirection {
                at: plan.from.unwrap_or(0),
                to,
            });
        }
        let mut applied = Vec::new();
        for step in plan.steps.iter().filter(|s| s.version <= to) {
            let m = migration(step.version).expect("planned revisions are known");
            if self.run_step(m, Direction::Up, &mut on_apply)? {
                applied.push(step.version);
            }
        }
        Ok(Upgrade {
            from: plan.from,
            to,
            applied,
        })
    }

    /// What `downgrade --to` would run: every `.down.sql` from the current revision down to
    /// `to + 1`, checked to exist before anything runs.
    pub fn plan_downgrade(&self, to: u32) -> Result<Plan, Error> {
        let status = self.status_for_change()?;
        if matches!(status.state, State::Unstamped | State::Foreign) {
            return Err(Error::Unstamped {
                foreign: status.foreign,
            });
        }
        let at = status.version.unwrap_or(0);
        if to > at {
            return Err(Error::WrongDirection { at, to });
        }
        let mut steps = Vec::new();
        for version in (to + 1..=at).rev() {
            let m = migration(version).expect("recorded revisions are known");
            let (Some(file), Some(sql)) = (m.down_file, m.down) else {
                return Err(Error::NoDown {
                    version,
                    file: m.file,
                });
            };
            steps.push(PlannedStep { version, file, sql });
        }
        Ok(Plan {
            from: status.version,
            to,
            steps,
        })
    }

    /// Undoes migrations down to revision `to` with their `.down.sql` files, each in its own
    /// transaction with its history row removed.
    pub fn downgrade(
        &mut self,
        to: u32,
        mut on_undo: impl FnMut(&Migration),
    ) -> Result<Upgrade, Error> {
        let plan = self.plan_downgrade(to)?;
        let mut undone = Vec::new();
        for step in &plan.steps {
            let m = migration(step.version).expect("planned revisions are known");
            if self.run_step(m, Direction::Down, &mut on_undo)? {
                undone.push(step.version);
            }
        }
        Ok(Upgrade {
            from: plan.from,
            to,
            applied: undone,
        })
    }

    /// Runs one migration's up or down SQL unless another process did first; true when this
    /// one did. Foreign keys are off around the transaction (SQLite ignores the pragma inside
    /// one) and checked before COMMIT.
    fn run_step(
        &mut self,
        m: &'static Migration,
        direction: Direction,
        on_run: &mut impl FnMut(&Migration),
    ) -> Result<bool, Error> {
        let path = self.path.clone();
        let err = |e| sqlite_error(&path, e);
        self.conn
            .execute_batch("PRAGMA foreign_keys = OFF")
            .map_err(err)?;
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            create_history_table(&tx).map_err(err)?;
            let at: u32 = tx
                .query_row(
                    &format!("SELECT coalesce(max(version), 0) FROM {HISTORY_TABLE}"),
                    [],
                    |row| row.get(0),
                )
                .map_err(err)?;
            let (wanted_at, sql, file) = match direction {
                Direction::Up => (m.version - 1, m.up, m.file),
                Direction::Down => (
                    m.version,
                    m.down.expect("planned"),
                    m.down_file.expect("planned"),
                ),
            };
            if at != wanted_at {
                return Ok(false); // another process moved the database meanwhile
            }
            on_run(m);
            tx.execute_batch(sql)
                .map_err(|cause| match sqlite_error(&path, cause) {
                    Error::Sqlite { cause, .. } => Error::MigrationFailed { file, at, cause },
                    other => other,
                })?;
            check_foreign_keys(&tx, &path, file, at)?;
            match direction {
                Direction::Up => tx.execute(
                    &format!("INSERT INTO {HISTORY_TABLE} (version, name, checksum, how) VALUES (?1, ?2, ?3, 'applied')"),
                    rusqlite::params![m.version, m.name, m.checksum()],
                ),
                Direction::Down => tx.execute(&format!("DELETE FROM {HISTORY_TABLE} WHERE version = ?1"), [m.version]),
            }
            .map_err(err)?;
            tx.commit().map_err(err)?;
            Ok(true)
        })();
        self.conn
            .execute_batch("PRAGMA foreign_keys = ON")
            .map_err(err)?;
        result
    }

    /// Checks that stamping `version` is right: the revision exists and the live schema is
    /// that revision's (unless `force`). Returns the difference found.
    pub fn check_stamp(&self, version: u32, force: bool) -> Result<Vec<String>, Error> {
        if version == 0 || version > head() {
            return Err(Error::UnknownRevision {
                version,
                head: head(),
            });
        }
        let status = self.status()?;
        match status.state {
            State::Ahead => {
                return Err(Error::Ahead {
                    version: status.version.unwrap_or_default(),
                    head: status.head,
                });
            }
            State::Modified => {
                return Err(Error::Modified {
                    edited: status.edited,
                });
            }
            _ => {}
        }
        let difference = explain(&schema::diff(schema_at(version), &self.schema()?), version);
        if !difference.is_empty() && !force {
            return Err(Error::StampMismatch {
                version,
                difference,
            });
        }
        Ok(difference)
    }

    /// Records `version` as the database's revision without running anything. Refuses unless the
    /// live schema is that revision's, or `force` is set (then the history says `forced`).
    /// Another tool's history table is left as it is.
    pub fn stamp(&mut self, version: u32, force: bool) -> Result<(), Error> {
        let difference = self.check_stamp(version, force)?;
        let path = self.path.clone();
        let err = |e| sqlite_error(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        create_history_table(&tx).map_err(err)?;
        tx.execute(&format!("DELETE FROM {HISTORY_TABLE}"), [])
            .map_err(err)?;
        let how = if difference.is_empty() {
            "stamped"
        } else {
            "forced"
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

    /// The revision `adopt` would record: the one the live schema of an unstamped (or foreign)
    /// database matches; refuses, naming the difference to the closest revision, when none does.
    pub fn plan_adopt(&self) -> Result<u32, Error> {
        let status = self.status()?;
        if !matches!(status.state, State::Unstamped | State::Foreign) {
            return Err(Error::AlreadyStamped {
                state: status.state,
            });
        }
        status.matches.ok_or(Error::NoMatch {
            closest: status.closest.unwrap_or(0),
            difference: status.difference,
        })
    }

    /// Stamps an unstamped database at the revision its live schema matches.
    pub fn adopt(&mut self) -> Result<u32, Error> {
        let version = self.plan_adopt()?;
        self.stamp(version, false).map(|()| version)
    }

    /// Copies the live database to `dest` with the online backup API, then checks the copy and
    /// reads its revision.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupInfo, Error> {
        self.snapshot_to(dest)?;
        inspect_copy(dest)
    }

    /// Copies the live database to `dest` with the online backup API, without checking the
    /// copy: for a deploy's critical path, which checks the copy afterwards, off that path.
    /// Returns the copy's size.
    pub fn snapshot_to(&self, dest: &Path) -> Result<u64, Error> {
        if let Some(folder) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(|cause| Error::Io {
                path: folder.to_owned(),
                cause,
            })?;
        }
        self.conn
            .backup(MAIN_DB, dest, NO_PROGRESS)
            .map_err(|e| sqlite_error(dest, e))?;
        std::fs::metadata(dest)
            .map(|m| m.len())
            .map_err(|cause| Error::Io {
                path: dest.to_owned(),
                cause,
            })
    }

    /// Replaces the live database's content with the database at `source`, after checking it.
    pub fn restore_from(&mut self, source: &Path) -> Result<BackupInfo, Error> {
        let info = inspect_copy(source)?;
        self.conn
            .restore(MAIN_DB, source, NO_PROGRESS)
            .map_err(|e| sqlite_error(source, e))?;
        Ok(info)
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

fn create_history_table(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            how TEXT NOT NULL CHECK (how IN ('applied', 'stamped', 'forced'))
        )"
    ))
}

/// Fails when the transaction left rows that break a foreign key.
fn check_foreign_keys(
    tx: &Transaction<'_>,
    path: &Path,
    file: &'static str,
    at: u32,
) -> Result<(), Error> {
    let violations: Vec<String> = tx
        .prepare("PRAGMA foreign_key_check")
        .and_then(|mut check| {
            check
                .query_map([], |row| row.get::<_, String>(0))?
                .collect()
        })
        .map_err(|e| sqlite_error(path, e))?;
    match violations.first() {
        Some(table) => Err(Error::ForeignKeys {
            file,
            count: violations.len(),
            table: table.clone(),
            at,
        }),
        None => Ok(()),
    }
}

/// Checks a copy (`integrity_check`) and reads its revision.
pub fn inspect_copy(path: &Path) -> Result<BackupInfo, Error> {
    let db = Database::open_read_only(path)?.ok_or_else(|| Error::Io {
        path: path.to_owned(),
        cause: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let detail: String = db
        .conn
        .query_row("PRAGMA integrity_check(1)", [], |row| row.get(0))
        .map_err(|e| db.err(e))?;
    if detail != "ok" {
        return Err(Error::IntegrityCheck {
            path: path.to_owned(),
            detail,
        });
    }
    let status = db.status()?;
    Ok(BackupInfo {
        path: path.to_owned(),
        revision: status.version.or(status.matches),
        state: status.state,
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    })
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

/// The differences to `version` as review comments: what is missing or extra, and which
/// revision adds it.
pub fn explain(differences: &[Difference], version: u32) -> Vec<String> {
    differences
        .iter()
        .map(|d| {
            let first_with = |like: Option<&Schema>| {
                (1..=head()).find(|&r| schema_at(r).has(&d.table, &d.subject, like))
            };
            let note = match d.change {
                Change::Missing => first_with(Some(schema_at(version)))
                    .filter(|&r| r <= version)
                    .map(|r| format!(" (revision {r} adds it)")),
                Change::Unexpected => first_with(None)
                    .filter(|&r| r > version)
                    .map(|r| format!(" (revision {r} adds it)")),
                Change::Differs => (1..=version)
                    .rev()
                    .take_while(|&r| {
                        schema_at(r).has(&d.table, &d.subject, Some(schema_at(version)))
                    })
                    .last()
                    .filter(|&r| r > 1 && schema_at(r - 1).has(&d.table, &d.subject, None))
                    .map(|r| format!(" (revision {r} changes it)")),
            };
            format!("{d}{}", note.unwrap_or_default())
        })
        .collect()
}

/// The revision whose schema is `live`, or the closest one and the difference to it.
fn find_match(live: &Schema) -> Result<u32, (u32, Vec<String>)> {
    let mut closest: Option<(u32, Vec<Difference>)> = None;
    for version in 1..=head() {
        let difference = schema::diff(schema_at(version), live);
        if difference.is_empty() {
            return Ok(version);
        }
        if closest
            .as_ref()
            .is_none_or(|(_, best)| difference.len() <= best.len())
        {
            closest = Some((version, difference));
        }
    }
    let (version, difference) = closest.expect("there is at least one revision");
    Err((version, explain(&difference, version)))
}

fn edited_files(history: &[HistoryRow]) -> Vec<EditedFile> {
    history
        .iter()
        .filter_map(|row| {
            let m = migration(row.version)?;
            let current = m.checksum();
            (current != row.checksum).then(|| EditedFile {
                file: m.file,
                recorded: row.checksum.clone(),
                current,
            })
        })
        .collect()
}
