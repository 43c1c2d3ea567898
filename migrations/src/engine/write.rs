//! Everything that writes the history: `stamp`, `adopt`, each step of `upgrade` and
//! `downgrade`. Each takes the write lock first (`BEGIN IMMEDIATE`, waiting up to the busy
//! timeout), reads the history and the schema again under it, decides there, and writes in
//! the same transaction: what another process did meanwhile is always seen. The commit gate,
//! when one is set, is asked last, just before COMMIT.

use rusqlite::Connection;

use super::foreign_keys;

use super::plan::{self, Upgrade};
use super::{Database, Error, HISTORY_TABLE, State, Status};
use crate::catalog::Migration;

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
pub(super) type Gate = Box<dyn FnMut(&Commit<'_>) -> Result<(), GateError> + Send>;

#[derive(Clone, Copy)]
enum Direction {
    Up,
    Down,
}

impl Database {
    /// Has `gate` asked before every COMMIT of the history this connection makes from now on
    /// (`stamp`, `adopt`, `adopt_if_unstamped`, each step of `upgrade` and `downgrade`), inside
    /// the transaction, its work done, under the write lock. An error from it rolls the
    /// transaction back: the step returns [`Error::HeldBack`] and nothing of it stays. Replaces
    /// the gate set before. The gate may wait (e.g. for a check running beside the step).
    pub fn set_commit_gate(
        &mut self,
        gate: impl FnMut(&Commit<'_>) -> Result<(), GateError> + Send + 'static,
    ) {
        *self.gate.get_mut() = Some(Box::new(gate) as Gate);
    }

    /// Removes the commit gate: commits go through unasked again.
    pub fn clear_commit_gate(&mut self) {
        *self.gate.get_mut() = None;
    }

    /// Asks the commit gate, if one is set, whether the transaction that began at `before`
    /// may commit and make the history name `after`.
    fn ask_gate(&self, before: &Status, after: u32) -> Result<(), Error> {
        match self.gate.borrow_mut().as_mut() {
            Some(gate) => gate(&Commit {
                before,
                after,
                data_version: self.data_version()?,
            })
            .map_err(|cause| Error::HeldBack {
                at: before.version,
                cause,
            }),
            None => Ok(()),
        }
    }

    /// Runs `work` in a transaction taken with the write lock first, and commits it when
    /// `work` succeeds (rolls it back otherwise): nothing `work` reads can change under it.
    fn write_locked<T>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.run("BEGIN IMMEDIATE")?;
        let result = work(self).and_then(|value| {
            let committed = self.conn.execute_batch("COMMIT");
            committed.map(|()| value).map_err(|e| self.write_err(e))
        });
        if result.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        result
    }

    /// An error met while writing inside a transaction: in rollback-journal mode a write waits
    /// only for readers (the write lock is ours already).
    fn write_err(&self, e: rusqlite::Error) -> Error {
        self.err(e).blocked_by_readers()
    }

    /// Records revisions 1 to `version` as `how`, replacing the history, then asks the gate
    /// (the transaction began at `before`).
    fn record_stamp(&self, before: &Status, version: u32, how: &str) -> Result<(), Error> {
        let err = |e| self.write_err(e);
        create_history_table(&self.conn).map_err(err)?;
        self.conn
            .execute(&format!("DELETE FROM {HISTORY_TABLE}"), [])
            .map_err(err)?;
        for m in &self.catalog.migrations()[..version as usize] {
            insert_history_row(&self.conn, m, how).map_err(err)?;
        }
        self.ask_gate(before, version)
    }

    /// Records `version` as the database's revision without running anything. Refuses unless the
    /// live schema is that revision's, or `force` is set (then the history says `forced`).
    /// Decided under the write lock. Returns the difference `--force` accepted (empty when
    /// the schema is the revision's). Another tool's history table is left as it is.
    pub fn stamp(&mut self, version: u32, force: bool) -> Result<Vec<String>, Error> {
        plan::known_revision(self.catalog, version)?;
        self.write_locked(|db| {
            let (before, live) = db.state()?;
            let difference = plan::stamp(db.catalog, &before, &live, version, force)?;
            let how = if difference.is_empty() {
                "stamped"
            } else {
                "forced"
            };
            db.record_stamp(&before, version, how)?;
            Ok(difference)
        })
    }

    /// Stamps an unstamped (or foreign) database at the revision its live schema matches,
    /// decided under the write lock: refused when it has a history (another process may just
    /// have adopted it) or matches no revision.
    pub fn adopt(&mut self) -> Result<u32, Error> {
        self.write_locked(|db| {
            let before = db.status()?;
            let version = plan::adopt(&before)?;
            db.record_stamp(&before, version, "stamped")?;
            Ok(version)
        })
    }

    /// For `upgrade --adopt`: adopts the database when, under the write lock, it is unstamped
    /// (or foreign); `None` when it has a history by then. Refused when it matches no revision.
    pub fn adopt_if_unstamped(&mut self) -> Result<Option<u32>, Error> {
        self.write_locked(|db| {
            let before = db.status()?;
            if !matches!(before.state, State::Unstamped | State::Foreign) {
                return Ok(None);
            }
            let version = plan::adopt(&before)?;
            db.record_stamp(&before, version, "stamped")?;
            Ok(Some(version))
        })
    }

    /// Applies every pending migration, each with its history row in one transaction taken with
    /// the write lock first, the state read again under the lock: two processes started
    /// together apply each migration once.
    pub fn upgrade(&mut self, on_apply: impl FnMut(&Migration)) -> Result<Upgrade, Error> {
        self.upgrade_to(self.catalog.head(), on_apply)
    }

    /// Applies the pending migrations up to revision `to` only. Each step reads the state
    /// under the lock and applies the revision after the one found there; `to` in the result
    /// is the revision the last step found or made.
    pub fn upgrade_to(
        &mut self,
        to: u32,
        mut on_apply: impl FnMut(&Migration),
    ) -> Result<Upgrade, Error> {
        if to > 0 {
            plan::known_revision(self.catalog, to)?;
        }
        let catalog = self.catalog;
        let mut from = None;
        let mut applied = Vec::new();
        loop {
            let first = from.is_none();
            let (status, ran) = self.step_locked(
                Direction::Up,
                |status| {
                    let at = status.version.unwrap_or(0);
                    if first && at > to {
                        return Err(Error::WrongDirection { at, to });
                    }
                    Ok((at < to).then(|| catalog.migration(at + 1).expect("below head")))
                },
                &mut on_apply,
            )?;
            from.get_or_insert(status.version);
            let Some(version) = ran else {
                return Ok(Upgrade {
                    from: from.flatten(),
                    to: status.version.unwrap_or(0),
                    applied,
                });
            };
            applied.push(version);
        }
    }

    /// Undoes migrations down to revision `to` with their `.down.sql` files, each in its own
    /// transaction with its history row removed. The plan (every step has a `.down.sql`) is
    /// checked before anything runs; each step then checks, under the lock, that the database
    /// is still where the plan expects, and stops ([`Error::Moved`]) when another process
    /// moved it.
    pub fn downgrade(
        &mut self,
        to: u32,
        mut on_undo: impl FnMut(&Migration),
    ) -> Result<Upgrade, Error> {
        let plan = self.plan_downgrade(to)?;
        let catalog = self.catalog;
        let mut undone = Vec::new();
        for step in &plan.steps {
            let (_, ran) = self.step_locked(
                Direction::Down,
                |status| {
                    let at = status.version.unwrap_or(0);
                    if at != step.version {
                        return Err(Error::Moved {
                            expected: step.version,
                            at,
                            undone: undone.clone(),
                        });
                    }
                    Ok(Some(
                        catalog.migration(at).expect("planned revisions are known"),
                    ))
                },
                &mut on_undo,
            )?;
            undone.extend(ran);
        }
        Ok(Upgrade {
            from: plan.from,
            to,
            applied: undone,
        })
    }

    /// One step under the write lock: reads the state there (refusing ahead, modified,
    /// drifted, unstamped), lets `decide` choose the migration to run in `direction`, runs it
    /// with its history row, and commits. Returns the state read under the lock and the revision run.
    /// Foreign keys are off around the transaction (SQLite ignores the pragma inside one) and
    /// checked before COMMIT.
    fn step_locked(
        &mut self,
        direction: Direction,
        decide: impl FnOnce(&Status) -> Result<Option<&'static Migration>, Error>,
        on_run: &mut impl FnMut(&Migration),
    ) -> Result<(Status, Option<u32>), Error> {
        self.run("PRAGMA foreign_keys = OFF")?;
        let result = self.write_locked(|db| {
            let status = plan::migratable(db.status()?)?;
            let Some(m) = decide(&status)? else {
                return Ok((status, None));
            };
            let at = status.version.unwrap_or(0);
            let (sql, file, after) = match direction {
                Direction::Up => (m.up, m.file, m.version),
                Direction::Down => (
                    m.down.expect("planned"),
                    m.down_file.expect("planned"),
                    m.version - 1,
                ),
            };
            on_run(m);
            db.conn
                .execute_batch(sql)
                .map_err(|cause| match db.write_err(cause) {
                    Error::Sqlite { source, .. } => Error::MigrationFailed { file, at, source },
                    other => other,
                })?;
            let err = |e| db.write_err(e);
            create_history_table(&db.conn).map_err(err)?;
            match direction {
                Direction::Up => insert_history_row(&db.conn, m, "applied"),
                Direction::Down => db.conn.execute(
                    &format!("DELETE FROM {HISTORY_TABLE} WHERE version = ?1"),
                    [m.version],
                ),
            }
            .map_err(err)?;
            // After the history row: whatever writing it does (a default, a trigger) is checked
            // too.
            if let Some((table, count)) = foreign_keys::first_violation(&db.conn).map_err(err)? {
                return Err(Error::ForeignKeys {
                    file,
                    count,
                    table,
                    at,
                });
            }
            // Last before COMMIT: a gate that waits for a check running beside the step costs
            // only what the check takes beyond the step.
            db.ask_gate(&status, after)?;
            Ok((status, Some(m.version)))
        });
        self.run("PRAGMA foreign_keys = ON")?;
        result
    }
}

/// Adds the history row of `m`, recorded as `how`.
fn insert_history_row(conn: &Connection, m: &Migration, how: &str) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "INSERT INTO {HISTORY_TABLE} (version, name, checksum, how) VALUES (?1, ?2, ?3, ?4)"
        ),
        rusqlite::params![m.version, m.name, m.checksum(), how],
    )
}

fn create_history_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            how TEXT NOT NULL CHECK (how IN ('applied', 'stamped', 'forced'))
        )"
    ))
}
