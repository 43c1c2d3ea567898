//! The engine: reads a database's state, applies and undoes migrations under the write lock,
//! stamps, adopts, backs up and restores, along the [`Catalog`](crate::Catalog) it is given.
//!
//! By concern: `status` (the state a database is in, decided from what was read, with no I/O),
//! `plan` (what a command would do in that state, or why it refuses), `database` (opening a
//! file and reading its history and schema), `error` (what goes wrong, by cause), `file` (the
//! file before SQLite reads it: where it is, its header, whether this user may write it, and
//! the recovery of what a killed writer left), `write` (every write of the history, decided
//! under the write lock, and the commit gate asked before each COMMIT), `snapshot` (copies of
//! the live file, checked, or one pinned beside a migration) and `restore`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod database;
mod error;
mod file;
mod foreign_keys;
mod plan;
mod restore;
mod snapshot;
mod status;
mod write;

pub use database::Database;
pub(crate) use database::history_tables;
pub use error::{Error, LockHolder};
pub use file::Recovery;
pub(crate) use plan::known_revision;
pub use plan::{Plan, PlannedStep, Upgrade};
pub use restore::{Restored, RowCounts};
pub use snapshot::{BackupInfo, Pinned, inspect_copy, quick_inspect_copy};
pub use status::{EditedFile, ForeignHistory, HistoryRow, State, Status, explain};
pub use write::{Commit, GateError};

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
