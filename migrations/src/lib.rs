//! The bot's SQLite schema history (`migrations/sql/`, compiled in) and the engine that applies it.
//!
//! # The history
//!
//! `sql/NNNN_<name>.up.sql` brings the database to revision NNNN; `sql/NNNN_<name>.down.sql`, where
//! a step can be undone, takes it back. Revision 1 is exactly the schema the old app's create-all
//! made. The engine records applied revisions in its own table, [`HISTORY_TABLE`], one row per
//! revision: version, name, SHA-256 of the `.up.sql` file, when, and how (`applied`, `stamped`, or
//! `forced` when stamped over a schema that differed).
//!
//! # What the engine promises
//!
//! - Every state is named ([`State`]): `empty`, `unstamped` (tables, no history: the revision the
//!   live schema matches, or none), `foreign` (another tool's history such as `alembic_version`,
//!   reported and left alone), `behind`, `current`, `ahead`, `modified` (an applied file was
//!   edited: both checksums), `drifted` (the live schema is not the recorded revision's).
//! - Matching compares structure, not SQL text ([`schema`]): tables, columns (name, type affinity,
//!   NOT NULL, default, primary key), UNIQUE constraints, indexes, foreign keys.
//! - Each migration and its history row run in one transaction taken with the write lock first
//!   (`BEGIN IMMEDIATE`, busy timeout [`BUSY_TIMEOUT`]), the history read again under the lock:
//!   two processes started together apply each migration once. Foreign keys are switched off
//!   around the transaction and `foreign_key_check` runs before COMMIT. A database is always
//!   before or after a migration, never in between.
//! - A file that is not SQLite, or is damaged, is refused before it is ever opened for writing.
//!
//! # JSON
//!
//! `bot db <command> --json` prints one object on stdout. On failure every command prints
//! `{"error": "...", "exit_code": N, "database": "..."}` (exit codes: 1 failed and rolled back,
//! 2 usage, 3 refused because of the database's state, 4 not a SQLite database or damaged,
//! 5 locked by another process). On success:
//!
//! | command | object |
//! | --- | --- |
//! | `status`, `check` | a [`Status`]: `{"state","version","head","pending","matches","closest","difference","foreign","edited","database","bytes"}` (`check` adds `"ok": true`) |
//! | `upgrade` | an [`Upgrade`] `{"from","to","applied"}` plus `"state_before"`, `"adopted"` (with `--adopt`) and `"backup"` (a [`BackupInfo`], with `--backup-to`) |
//! | `upgrade --dry-run`, `downgrade --dry-run` | a [`Plan`] `{"from","to","steps":[{"version","file","sql"}]}` plus `"dry_run": true` |
//! | `downgrade` | an [`Upgrade`]; `applied` lists the revisions undone |
//! | `stamp` | `{"stamped": N, "forced": bool}`; with `--dry-run`: `{"dry_run": true, "stamp": N, "how", "difference"}` |
//! | `adopt` | `{"adopted": N}`; with `--dry-run`: `{"dry_run": true, "adopt": N}` |
//! | `history` | `{"database", "history": [`[`HistoryRow`]`]}` |
//! | `schema` | `{"at": N or null, "schema": `[`schema::Schema`]`}` |
//! | `backup`, `restore` | a [`BackupInfo`] `{"path","revision","state","bytes"}` |
//! | `fix-ownership` | `{"owner","check","wrong":[{"path","uid","gid"}],"fixed"}` |
//!
//! For example, the old app's database, before `adopt`:
//!
//! ```json
//! {"state":"unstamped","version":null,"head":4,"pending":[2,3,4],"matches":1,"closest":null,"difference":[],"foreign":null,"edited":[]}
//! ```

mod catalog;
mod engine;
pub mod schema;

pub use catalog::{MIGRATIONS, Migration, head, migration, schema_at};
pub use engine::{
    BUSY_TIMEOUT, BackupInfo, Database, EditedFile, Error, ForeignHistory, HISTORY_TABLE,
    HistoryRow, Plan, PlannedStep, State, Status, Upgrade, explain, inspect_copy,
};
