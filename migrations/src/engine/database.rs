//! An open database: opening and checking the file, and reading its history, its live schema
//! and another tool's history, from which its state is decided ([`super::status`]).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::plan::{self, Plan};
use super::status::{self, ForeignHistory, HistoryRow, Status};
use super::write::Gate;
use super::{Error, HISTORY_TABLE, Recovery, busy_timeout, file};
use crate::catalog::Catalog;
use crate::schema::{self, Schema};

/// Other migration tools' history tables: recognised, reported, left as they are. Each with
/// the column its revision is read from and what follows the table in that query.
const FOREIGN_TOOLS: &[(&str, &str, &str, &str)] = &[
    ("alembic", "alembic_version", "version_num", " LIMIT 1"),
    (
        "flyway",
        "flyway_schema_history",
        "version",
        " WHERE success ORDER BY installed_rank DESC LIMIT 1",
    ),
    ("golang-migrate or rails", "schema_migrations", NEWEST, ""),
    ("sqlx", "_sqlx_migrations", NEWEST, ""),
    ("refinery", "refinery_schema_history", NEWEST, ""),
    ("diesel", "__diesel_schema_migrations", NEWEST, ""),
];

/// The newest revision, for the tools whose history has a row per revision.
const NEWEST: &str = "max(version)";

/// The history tables of this engine and of the tools it recognises: never part of a schema.
pub(crate) fn history_tables() -> Vec<&'static str> {
    let tools = FOREIGN_TOOLS.iter().map(|(_, table, ..)| *table);
    std::iter::once(HISTORY_TABLE).chain(tools).collect()
}

/// An open database file.
pub struct Database {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    recovered: Option<Recovery>,
    /// The migrations its state is decided against and its upgrades apply.
    pub(super) catalog: &'static Catalog,
    /// Interior: the writes ask it from inside `write_locked`, which lends them `&Database`.
    pub(super) gate: RefCell<Option<Gate>>,
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
        Self::finish_open(path, file::open_read_only(path)).map(Some)
    }

    /// Recovers what a writer killed mid-transaction left beside the database (a hot journal
    /// is rolled back, a WAL no process has open is checkpointed), as SQLite does on a
    /// read-write open; `None` when there was nothing to recover. Refuses, naming the journal,
    /// when a hot journal needs recovering and this process may not write the file and its
    /// folder. The database's committed content is not changed.
    pub fn recover(path: &Path) -> Result<Option<Recovery>, Error> {
        file::locate(path)?.map_or(Ok(None), |_| file::recover(path))
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
        let err = |e| Error::from_sqlite(path, e);
        let conn = conn.map_err(err)?;
        conn.busy_timeout(busy_timeout()).map_err(err)?;
        // Reading the schema table notices a damaged or foreign file before anything else.
        file::read_schema_table(&conn).map_err(err)?;
        Ok(Database {
            conn,
            path: path.to_owned(),
            recovered: None,
            catalog: Catalog::released(),
            gate: RefCell::new(None),
        })
    }

    /// Runs `PRAGMA quick_check` (every page of every table and index is read): refuses a
    /// damaged file. It does not see an index that disagrees with its table (a row changed
    /// in place), nor a broken UNIQUE constraint: [`Database::integrity_check`] does.
    pub fn quick_check(&self) -> Result<(), Error> {
        self.check_with("PRAGMA quick_check(1)", corrupt)
    }

    /// Runs `PRAGMA integrity_check` (slower than [`Database::quick_check`]: it also checks
    /// that every index agrees with its table, row by row, and that UNIQUE and NOT NULL
    /// hold): refuses a damaged file.
    pub fn integrity_check(&self) -> Result<(), Error> {
        self.check_with("PRAGMA integrity_check(1)", corrupt)
    }

    /// Runs a checking pragma whose first row is `ok` on a sound file, else what is wrong,
    /// which `refuse` makes the error.
    pub(super) fn check_with(
        &self,
        pragma: &str,
        refuse: impl FnOnce(PathBuf, String) -> Error,
    ) -> Result<(), Error> {
        let detail: String = self.query_one(pragma)?;
        if detail != "ok" {
            return Err(refuse(self.path.clone(), detail));
        }
        Ok(())
    }

    /// Has this database decided and migrated along `catalog` rather than the released one.
    pub fn with_catalog(mut self, catalog: &'static Catalog) -> Database {
        self.catalog = catalog;
        self
    }

    /// The catalog its state is decided against.
    pub fn catalog(&self) -> &'static Catalog {
        self.catalog
    }

    /// What [`Database::open`] recovered before it checked the file, if anything.
    pub fn recovered(&self) -> Option<Recovery> {
        self.recovered
    }

    /// `PRAGMA data_version` of this connection: it moves when another connection commits.
    pub fn data_version(&self) -> Result<i64, Error> {
        self.query_one("PRAGMA data_version")
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying connection (the bot runs its queries on it).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(super) fn err(&self, e: rusqlite::Error) -> Error {
        Error::from_sqlite(&self.path, e)
    }

    /// The first column of the first row of `sql`.
    pub(super) fn query_one<T: rusqlite::types::FromSql>(&self, sql: &str) -> Result<T, Error> {
        file::query_one(&self.conn, sql).map_err(|e| self.err(e))
    }

    /// Runs `sql`, statements that return no rows.
    pub(super) fn run(&self, sql: &str) -> Result<(), Error> {
        self.conn.execute_batch(sql).map_err(|e| self.err(e))
    }

    fn table_exists(&self, name: &str) -> Result<bool, Error> {
        let sql = "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1";
        let count = self.conn.query_row(sql, [name], |row| row.get::<_, i64>(0));
        count.map(|n| n > 0).map_err(|e| self.err(e))
    }

    /// The history, oldest first; `None` when there is no history table.
    pub fn history(&self) -> Result<Option<Vec<HistoryRow>>, Error> {
        if !self.table_exists(HISTORY_TABLE)? {
            return Ok(None);
        }
        let sql = format!(
            "SELECT version, name, checksum, applied_at, how FROM {HISTORY_TABLE} ORDER BY version"
        );
        let read = |row: &rusqlite::Row<'_>| {
            Ok(HistoryRow {
                version: row.get(0)?,
                name: row.get(1)?,
                checksum: row.get(2)?,
                applied_at: row.get(3)?,
                how: row.get(4)?,
            })
        };
        let mut statement = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([], read)
            .and_then(|rows| rows.collect());
        rows.map(Some).map_err(|e| self.err(e))
    }

    /// Another tool's history table, if there is one.
    pub fn foreign_history(&self) -> Result<Option<ForeignHistory>, Error> {
        for (tool, table, column, rest) in FOREIGN_TOOLS {
            if self.table_exists(table)? {
                let query = format!("SELECT {column} FROM {table}{rest}");
                let revision = self
                    .conn
                    .query_row(&query, [], |row| row.get::<_, rusqlite::types::Value>(0))
                    .ok()
                    .and_then(|value| match value {
                        rusqlite::types::Value::Text(text) => Some(text),
                        rusqlite::types::Value::Integer(n) => Some(n.to_string()),
                        _ => None,
                    });
                return Ok(Some(ForeignHistory {
                    tool: (*tool).into(),
                    table: (*table).into(),
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
        self.state().map(|(status, _)| status)
    }

    /// The database's state and the live schema it was decided on, read in one snapshot.
    pub(super) fn state(&self) -> Result<(Status, Schema), Error> {
        // History and schema from one snapshot: read in two transactions, a migration
        // committing in between made a database half way between two revisions look modified.
        if !self.conn.is_autocommit() {
            return self.state_in_transaction();
        }
        self.run("BEGIN DEFERRED")?;
        let state = self.state_in_transaction();
        let _ = self.conn.execute_batch("COMMIT");
        state
    }

    /// [`Database::state`], inside a transaction the caller holds.
    fn state_in_transaction(&self) -> Result<(Status, Schema), Error> {
        let history = self.history()?.unwrap_or_default();
        let live = self.schema()?;
        // Another tool's history counts only where there is none of ours: not read otherwise.
        let foreign = history.is_empty().then(|| self.foreign_history());
        let foreign = foreign.transpose()?.flatten();
        let status = status::decide(&history, &live, foreign, self.catalog);
        Ok((status, live))
    }

    /// What `upgrade` would run.
    pub fn plan_upgrade(&self) -> Result<Plan, Error> {
        let status = plan::migratable(self.status()?)?;
        Ok(Plan::after(self.catalog, status.version))
    }

    /// What `downgrade --to` would run: every `.down.sql` from the current revision down to
    /// `to + 1`, checked to exist before anything runs.
    pub fn plan_downgrade(&self, to: u32) -> Result<Plan, Error> {
        plan::downgrade(self.catalog, self.status()?, to)
    }

    /// Checks that stamping `version` is right: the revision exists and the live schema is
    /// that revision's (unless `force`). Returns the difference found.
    pub fn check_stamp(&self, version: u32, force: bool) -> Result<Vec<String>, Error> {
        plan::known_revision(self.catalog, version)?;
        let (status, live) = self.state()?;
        plan::stamp(self.catalog, &status, &live, version, force)
    }

    /// The revision `adopt` would record: the one the live schema of an unstamped (or foreign)
    /// database matches; refuses, naming the difference to the closest revision, when none does.
    pub fn plan_adopt(&self) -> Result<u32, Error> {
        plan::adopt(&self.status()?)
    }
}

/// A damaged file: `detail` is what a checking pragma said of it.
fn corrupt(path: PathBuf, detail: String) -> Error {
    Error::Corrupt { path, detail }
}
