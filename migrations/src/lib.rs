//! The bot's SQLite schema history (`migrations/sql/`, compiled in) and the engine that applies it.
//!
//! The engine records applied revisions in its own table, [`HISTORY_TABLE`], one row per revision:
//! version, name, checksum of the `.up.sql` file, when, and how (`applied` or `stamped`).
//!
//! A database is in one of the [`State`]s. `bot db status --json` prints a [`Status`]:
//!
//! ```json
//! {"state":"unstamped","version":null,"head":2,"pending":[1,2],"matches":1,"closest":1,"difference":[]}
//! ```

mod catalog;
mod engine;
pub mod schema;

pub use catalog::{MIGRATIONS, Migration, head, migration, schema_at};
pub use engine::{
    BUSY_TIMEOUT, BackupInfo, Database, EditedFile, Error, ForeignHistory, HISTORY_TABLE,
    HistoryRow, Plan, PlannedStep, State, Status, Upgrade, explain, inspect_copy,
};
