//! The engine: reads a database's state, applies and undoes migrations under the write lock,
//! stamps, adopts, backs up and restores.
//!
//! By concern: `error` (what goes wrong, by cause), `file` (the file before SQLite reads it:
//! where it is, its header, whether this user may write it, and the recovery of what a killed
//! writer left), `write` (every write of the history, decided under the write lock, and the
//! commit gate asked before each COMMIT), `snapshot` (copies of the live file, one pinned beside a
//! migration) and `restore`; this file opens databases and reads
//! their state.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

mod error;
mod file;
mod foreign_keys;
mod restore;
mod snapshot;
mod write;

pub use error::{Error, LockHolder};
pub use file::Recovery;
pub use restore::{Restored, RowCounts};
pub use snapshot::Pinned;

use crate::catalog::{MIGRATIONS, Migration, head, migration, schema_at};
use crate::schema::{self, Change, Difference, Object, Schema, Subject};

/// The engine's own history table.
pub const HISTORY_TABLE: &str = "schema_history";

/// How long a statement waits for another process's lock before failing, unless
/// [`set_busy_timeout`] said otherwise.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

static BUSY_TIMEOUT_MS: AtomicU64 = AtomicU64::new(BUSY_TIMEOUT.as_millis() as u64);

/// Sets how long the engine's connections in this process wait for another process's lock
/// (the command line's `DATABASE_BUSY_TIMEOUT`).
pub fn set_busy_timeout(timeout: Duration) {
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    BUSY_TIMEOUT_MS.store(millis, Ordering::Relaxed);
}

/// How long the engine's connections wait for another process's lock.
pub fn busy_timeout() -> Duration {
    Duration::from_millis(BUSY_TIMEOUT_MS.load(Ordering::Relaxed))
}

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

/// The history tables of this engine and of the tools it recognises: never part of a schema.
pub(crate) fn history_tables() -> Vec<&'static str> {
    let mut tables = vec![HISTORY_TABLE];
    tables.extend(FOREIGN_TOOLS.iter().map(|(_, table, _)| *table));
    tables
}

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
    /// The newest revision the history says was stamped with `--force` (over a schema that
    /// differed then), if any.
    pub forced: Option<u32>,
    /// For `unstamped` and `foreign` with no match, and `drifted`: live tables that no
    /// revision has (e.g. the old app's own).
    pub extra_tables: Vec<String>,
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

/// A transaction of the history about to commit, as a commit gate sees it
/// ([`Database::set_commit_gate`]).
#[derive(Debug)]
pub struct Commit<'a> {
    /// The database's state when the transaction took the write lock, before it changed
    /// anything.
    pub before: &'a Status,
    /// The revision the history names once the transaction commits.
    pub after: u32,
    /// `PRAGMA data_version` of the migrating connection, read under the write lock: it
    /// differs from a reading taken earlier on that connection ([`Database::data_version`])
    /// when another connection committed in between.
    pub data_version: i64,
}

/// Why a commit gate held a commit back: the caller's own error, of any type.
pub type GateError = Box<dyn std::error::Error + Send + Sync>;

/// A commit gate: asked before each COMMIT of the history; an error holds the commit back.
type Gate = Box<dyn FnMut(&Commit<'_>) -> Result<(), GateError> + Send>;

/// An open database file.
pub struct Database {
    conn: Connection,
    path: PathBuf,
    recovered: Option<Recovery>,
    /// Interior: the writes ask it from inside `write_locked`, which lends them `&Database`.
    gate: RefCell<Option<Gate>>,
}

impl Database {
    /// Opens an existing database for reading only; `Ok(None)` when there is no file (in a
    /// folder that exists). Refuses a folder, a missing folder, a file that is not SQLite or is
    /// shorter than its header says, and a hot journal beside it ([`Database::recover`]
    /// recovers that). Never writes.
    pub fn open_read_only(path: &Path) -> Result<Option<Database>, Error> {
        let Some(len) = file::locate(path)? else {
            return Ok(None);
        };
        file::check_header(path, len)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        );
        Self::finish_open(path, conn).map(Some)
    }

    /// Recovers what a writer killed mid-transaction left beside the database (a hot journal
    /// is rolled back, a WAL no process has open is checkpointed), as SQLite does on a
    /// read-write open; `None` when there was nothing to recover. Refuses, naming the journal,
    /// when a hot journal needs recovering and this process may not write the file and its
    /// folder. The database's committed content is not changed.
    pub fn recover(path: &Path) -> Result<Option<Recovery>, Error> {
        match file::locate(path)? {
            Some(_) => file::recover(path),
            None => Ok(None),
        }
    }

    /// Opens a database for writing, creating the file when there is none (its folder must
    /// exist). In this order: refuses a folder, a missing folder, and a folder or file this
    /// process may not write; recovers what a killed writer left ([`Database::recover`]);
    /// checks the file (header, size, `quick_check`) on a read-only connection. So nothing is
    /// ever written into a file that is not SQLite or is damaged, except SQLite's own rollback
    /// of a hot journal, which puts back the pages a killed writer overwrote.
    pub fn open(path: &Path) -> Result<Database, Error> {
        let exists = file::locate(path)?.is_some();
        file::check_writable(path, exists)?;
        let recovered = if exists { file::recover(path)? } else { None };
        if let Some(db) = Self::open_read_only(path)? {
            db.quick_check()?;
        }
        let mut db = Self::finish_open(path, Connection::open(path))?;
        db.recovered = recovered;
        Ok(db)
    }

    fn finish_open(path: &Path, conn: rusqlite::Result<Connection>) -> Result<Database, Error> {
        let conn = conn.map_err(|e| sqlite_error(path, e))?;
        let db = Database {
            conn,
            path: path.to_owned(),
            recovered: None,
            gate: RefCell::new(None),
        };
        db.conn
            .busy_timeout(busy_timeout())
            .map_err(|e| db.err(e))?;
        // Reading the schema table notices a damaged or foreign file before anything else.
        db.conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |row| {
                row.get::<_, i64>(0)
            })
            .map_err(|e| db.err(e))?;
        Ok(db)
    }

    /// Runs `PRAGMA quick_check` (every page of every table and index is read): refuses a
    /// damaged file. It does not see an index that disagrees with its table (a row changed
    /// in place), nor a broken UNIQUE constraint: [`Database::integrity_check`] does.
    pub fn quick_check(&self) -> Result<(), Error> {
        self.check_with("PRAGMA quick_check(1)")
    }

    /// Runs `PRAGMA integrity_check` (slower than [`Database::quick_check`]: it also checks
    /// that every index agrees with its table, row by row, and that UNIQUE and NOT NULL
    /// hold): refuses a damaged file.
    pub fn integrity_check(&self) -> Result<(), Error> {
        self.check_with("PRAGMA integrity_check(1)")
    }

    /// Runs a checking pragma whose first row is `ok` on a sound file, else what is wrong.
    fn check_with(&self, pragma: &str) -> Result<(), Error> {
        let detail: String = self
            .conn
            .query_row(pragma, [], |row| row.get(0))
            .map_err(|e| self.err(e))?;
        if detail != "ok" {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                detail,
            });
        }
        Ok(())
    }

    /// What [`Database::open`] recovered before it checked the file, if anything.
    pub fn recovered(&self) -> Option<Recovery> {
        self.recovered
    }

    /// `PRAGMA data_version` of this connection: it moves when another connection commits.
    pub fn data_version(&self) -> Result<i64, Error> {
        self.conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(|e| self.err(e))
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
        schema::read(&self.conn, &history_tables()).map_err(|e| self.err(e))
    }

    /// Tells the database's state.
    pub fn status(&self) -> Result<Status, Error> {
        // History and schema from one snapshot: read in two transactions, a migration
        // committing in between made a database half way between two revisions look modified.
        if !self.conn.is_autocommit() {
            return self.status_in_transaction();
        }
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .map_err(|e| self.err(e))?;
        let status = self.status_in_transaction();
        let _ = self.conn.execute_batch("COMMIT");
        status
    }

    /// [`Database::status`], inside a transaction the caller holds.
    fn status_in_transaction(&self) -> Result<Status, Error> {
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
            forced: history
                .iter()
                .filter(|row| row.how == "forced")
                .map(|row| row.version)
                .max(),
            extra_tables: Vec::new(),
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
                    status.extra_tables = extra_tables(&live);
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
            status.extra_tables = extra_tables(&live);
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
                forced: status.forced,
                extra_tables: status.extra_tables,
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

    /// Checks that stamping `version` is right: the revision exists and the live schema is
    /// that revision's (unless `force`). Returns the difference found.
    pub fn check_stamp(&self, version: u32, force: bool) -> Result<Vec<String>, Error> {
        if version == 0 || version > head() {
            return Err(Error::UnknownRevision {
                version,
                head: head(),
            });
        }
        self.check_stamp_at(&self.status()?, version, force)
    }

    /// [`Database::check_stamp`] of a known revision, on the state `status` already read.
    fn check_stamp_at(
        &self,
        status: &Status,
        version: u32,
        force: bool,
    ) -> Result<Vec<String>, Error> {
        match status.state {
            State::Ahead => {
                return Err(Error::Ahead {
                    version: status.version.unwrap_or_default(),
                    head: status.head,
                });
            }
            State::Modified => {
                return Err(Error::Modified {
                    edited: status.edited.clone(),
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

    /// The revision `adopt` would record: the one the live schema of an unstamped (or foreign)
    /// database matches; refuses, naming the difference to the closest revision, when none does.
    pub fn plan_adopt(&self) -> Result<u32, Error> {
        adopt_target(&self.status()?)
    }

    /// Copies the live database to `dest` with the online backup API, then checks the copy and
    /// reads its revision.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupInfo, Error> {
        self.snapshot_to(dest)?;
        inspect_copy(dest)
    }

    /// Copies the live database to `dest` with the online backup API, without checking the
    /// copy: for a caller that checks it off its critical path (e.g. with
    /// [`quick_inspect_copy`] while a migration runs). Returns the copy's size.
    pub fn snapshot_to(&self, dest: &Path) -> Result<u64, Error> {
        snapshot::copy_whole(&self.conn, &self.path, dest)
    }
}

/// What `adopt` records on a database in `status`: see [`Database::plan_adopt`].
fn adopt_target(status: &Status) -> Result<u32, Error> {
    if !matches!(status.state, State::Unstamped | State::Foreign) {
        return Err(Error::AlreadyStamped {
            state: status.state,
        });
    }
    status.matches.ok_or_else(|| Error::NoMatch {
        closest: status.closest.unwrap_or(0),
        difference: status.difference.clone(),
        extra_tables: status.extra_tables.clone(),
    })
}

/// Checks a copy (`integrity_check`) and reads its revision. A read-only connection to a
/// copy in WAL mode leaves an empty `-wal` and a `-shm` beside it: those it made are removed,
/// so that a checked backup is one file.
pub fn inspect_copy(path: &Path) -> Result<BackupInfo, Error> {
    inspect_copy_with(path, "PRAGMA integrity_check(1)")
}

/// Checks a copy with `quick_check` (every page read, as [`Database::quick_check`]: several
/// times faster than [`inspect_copy`]'s `integrity_check`, which also matches every index to
/// its table) and reads its revision; leaves the copy one file, as [`inspect_copy`] does.
pub fn quick_inspect_copy(path: &Path) -> Result<BackupInfo, Error> {
    inspect_copy_with(path, "PRAGMA quick_check(1)")
}

/// Checks a copy with a checking pragma whose first row is `ok` on a sound file.
fn inspect_copy_with(path: &Path, pragma: &str) -> Result<BackupInfo, Error> {
    let sidecars: Vec<PathBuf> = ["-wal", "-shm"]
        .iter()
        .map(|suffix| file::beside(path, suffix))
        .filter(|sidecar| !sidecar.exists())
        .collect();
    let inspected = inspect_copy_open(path, pragma);
    for sidecar in sidecars {
        let empty_wal = !sidecar.to_string_lossy().ends_with("-wal")
            || std::fs::metadata(&sidecar).is_ok_and(|m| m.len() == 0);
        if empty_wal {
            let _ = std::fs::remove_file(&sidecar);
        }
    }
    inspected
}

fn inspect_copy_open(path: &Path, pragma: &str) -> Result<BackupInfo, Error> {
    let db = Database::open_read_only(path)?.ok_or_else(|| Error::Io {
        path: path.to_owned(),
        cause: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let detail: String = db
        .conn
        .query_row(pragma, [], |row| row.get(0))
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
    Error::from_sqlite(path, e)
}

/// The live tables that no revision has.
fn extra_tables(live: &Schema) -> Vec<String> {
    live.tables
        .keys()
        .filter(|table| !(1..=head()).any(|r| schema_at(r).tables.contains_key(*table)))
        .cloned()
        .collect()
}

/// The differences to `version` as review comments: what is missing or extra, which revision
/// adds or changes it, and what a later migration would do to an object it does not expect
/// (a rebuild drops a table's triggers, indexes and unknown columns, and fails on a view or
/// another table's trigger that reads the table).
pub fn explain(differences: &[Difference], version: u32) -> Vec<String> {
    // Each later migration's rebuilt (dropped, then created again) and dropped tables.
    let later: Vec<(u32, String, bool)> = MIGRATIONS[version as usize..]
        .iter()
        .flat_map(|m| {
            schema::dropped_tables(m.up).into_iter().map(move |table| {
                let rebuilt = schema_at(m.version).tables.contains_key(&table);
                (m.version, table, rebuilt)
            })
        })
        .collect();
    let consequence = |d: &Difference| -> Option<String> {
        let (object_table, fails) = match &d.object {
            Object::Table(table) => (Some(table.as_str()), false),
            Object::Trigger { table, .. } => (Some(table.as_str()), true),
            Object::View(_) => (None, true),
        };
        later.iter().find_map(|(r, table, rebuilt)| {
            let verb = if *rebuilt { "rebuilds" } else { "drops" };
            if object_table == Some(table.as_str()) {
                let what = match d.subject {
                    Subject::Column(_) => "it and its data",
                    _ => "it",
                };
                Some(format!(
                    "; revision {r} {verb} {table} and would drop {what}"
                ))
            } else if fails && *rebuilt && d.reads.contains(table) {
                Some(format!(
                    "; revision {r} rebuilds {table} and would fail on it"
                ))
            } else {
                None
            }
        })
    };
    differences
        .iter()
        .map(|d| {
            let first_with = |like: Option<&Schema>| {
                (1..=head()).find(|&r| schema_at(r).has(&d.object, &d.subject, like))
            };
            let line = match (&d.object, d.change) {
                (Object::View(_) | Object::Trigger { .. }, Change::Unexpected) => {
                    format!("{}: not in revision {version}", d.object)
                }
                _ => d.to_string(),
            };
            let note = match d.change {
                Change::Missing => first_with(Some(schema_at(version)))
                    .filter(|&r| r <= version)
                    .map(|r| format!(" (revision {r} adds it)")),
                Change::Unexpected => first_with(None)
                    .filter(|&r| r > version)
                    .map(|r| format!(" (revision {r} adds it)"))
                    .or_else(|| consequence(d))
                    .or_else(|| match (&d.object, &d.subject) {
                        (Object::Table(table), Subject::Whole) => Some(format!(
                            " (no revision has it: if the bot does not need it, save its rows elsewhere and DROP TABLE {table}; or add a migration that creates it)"
                        )),
                        _ => None,
                    }),
                Change::Differs => (1..=version)
                    .rev()
                    .take_while(|&r| {
                        schema_at(r).has(&d.object, &d.subject, Some(schema_at(version)))
                    })
                    .last()
                    .filter(|&r| r > 1 && schema_at(r - 1).has(&d.object, &d.subject, None))
                    .map(|r| format!(" (revision {r} changes it)")),
            };
            format!("{line}{}", note.unwrap_or_default())
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
