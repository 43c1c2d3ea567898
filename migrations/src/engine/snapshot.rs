//! Copies of the live file with SQLite's online backup API: the whole file now
//! ([`Database::snapshot_to`]), or the state pinned by a read transaction of its own
//! ([`Database::pin`]), copied while another connection migrates. In WAL mode a reader does not
//! hold a writer back, so a migration need not wait for its backup to be written; only its
//! COMMIT waits for the backup's verdict (the commit gate).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, MAIN_DB, OpenFlags};

use super::{Database, Error, LockHolder, busy_timeout, file, sqlite_error};

/// The state a database had when [`Database::pin`] was called, held by a read transaction on
/// a connection of its own until [`Pinned::copy_to`] has copied it.
pub struct Pinned {
    conn: Connection,
    path: PathBuf,
    /// `PRAGMA data_version` inside the pinned transaction: it moves when another connection
    /// commits.
    data_version: i64,
}

impl Database {
    /// Pins the state last committed, to be copied beside a migration by [`Pinned::copy_to`]:
    /// `None` unless the database is in WAL mode, where the reader does not hold the
    /// migration back (in rollback-journal mode it would hold its COMMIT until the copy ends:
    /// copy first with [`Database::snapshot_to`]).
    pub fn pin(&self) -> Result<Option<Pinned>, Error> {
        let err = |e| sqlite_error(&self.path, e);
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(busy_timeout()).map_err(err)?;
        // The first read in the transaction takes its snapshot: from here on it sees this
        // state, whatever other connections commit.
        conn.execute_batch("BEGIN").map_err(err)?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| {
            row.get::<_, i64>(0)
        })
        .map_err(err)?;
        let data_version = conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(err)?;
        Ok(Some(Pinned {
            conn,
            path: self.path.clone(),
            data_version,
        }))
    }
}

impl Pinned {
    /// Copies the pinned state to `dest` (a partial copy is removed, as by
    /// [`Database::snapshot_to`]), then ends the read transaction. Returns the copy's size.
    pub fn copy_to(&mut self, dest: &Path) -> Result<u64, Error> {
        let copied = copy_whole(&self.conn, &self.path, dest);
        let ended = self
            .conn
            .execute_batch("COMMIT")
            .map_err(|e| sqlite_error(&self.path, e));
        let bytes = copied?;
        ended?;
        Ok(bytes)
    }

    /// Whether another connection committed to the database since it was pinned. Asked while
    /// the migration holds the write lock and has committed nothing (its commit gate), `false`
    /// means the copy is exactly the state the migration started from.
    pub fn changed_since(&self) -> Result<bool, Error> {
        let now: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(|e| sqlite_error(&self.path, e))?;
        Ok(now != self.data_version)
    }
}

/// Copies the database open on `source` (at `path`) to `dest` in one step, under one read
/// transaction (the source's own, if one is open); a partial copy that was not there before
/// is removed. Returns the copy's size.
pub(super) fn copy_whole(source: &Connection, path: &Path, dest: &Path) -> Result<u64, Error> {
    let existed = dest.exists();
    let copied = copy_pages(source, path, dest);
    if copied.is_err() && !existed {
        // A partial copy (a full disk) is not a backup: nothing is left behind.
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let _ = std::fs::remove_file(file::beside(dest, suffix));
        }
    }
    copied
}

fn copy_pages(source: &Connection, path: &Path, dest: &Path) -> Result<u64, Error> {
    if let Some(folder) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(|cause| Error::Io {
            path: folder.to_owned(),
            cause,
        })?;
    }
    // One step copies every page under one read transaction: a source that another
    // process keeps writing would restart a stepwise copy for ever (seen with an old app
    // committing every 20 ms). In WAL mode the read does not block the writer.
    let mut copy = Connection::open(dest).map_err(|e| sqlite_error(dest, e))?;
    {
        use rusqlite::backup::{Backup, StepResult};
        let backup = Backup::new_with_names(source, MAIN_DB, &mut copy, MAIN_DB)
            .map_err(|e| sqlite_error(dest, e))?;
        let waited = busy_timeout();
        let deadline = std::time::Instant::now() + waited;
        loop {
            match backup.step(-1).map_err(|e| sqlite_error(dest, e))? {
                StepResult::Done => break,
                // Another process holds a lock for a moment: wait as a busy timeout would.
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    return Err(Error::Busy {
                        path: path.to_owned(),
                        holder: LockHolder::Writer,
                        waited,
                    });
                }
            }
        }
    }
    drop(copy);
    std::fs::metadata(dest)
        .map(|m| m.len())
        .map_err(|cause| Error::Io {
            path: dest.to_owned(),
            cause,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(dir: &Path) -> Database {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let mut db = Database::open(&dir.join("bot.db")).unwrap();
        db.connection()
            .execute_batch("PRAGMA journal_mode = WAL")
            .unwrap();
        db.upgrade(|_| {}).unwrap();
        db.connection()
            .execute_batch(
                "INSERT INTO users (telegram_id, first_name) VALUES (1, 'one'), (2, 'two');",
            )
            .unwrap();
        db
    }

    fn users(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |row| row.get(0))
            .unwrap()
    }

    /// The copy is the state at the pin, though another connection wrote and committed while
    /// the pin was held; the pin sees that commit as a change.
    #[test]
    fn a_pinned_copy_is_the_state_at_the_pin_and_notices_later_commits() {
        let dir = std::env::temp_dir().join(format!("engine-pin-{}", std::process::id()));
        let db = database(&dir);
        let mut pinned = db.pin().unwrap().expect("WAL mode pins");
        assert!(!pinned.changed_since().unwrap(), "nothing committed yet");
        // A write while pinned does not wait for the reader (WAL), and is not in the copy.
        db.connection()
            .execute(
                "INSERT INTO users (telegram_id, first_name) VALUES (3, 'three')",
                [],
            )
            .unwrap();
        let copy = dir.join("copy.db");
        let bytes = pinned.copy_to(&copy).unwrap();
        assert_eq!(bytes, std::fs::metadata(&copy).unwrap().len());
        assert_eq!(users(&copy), 2, "the copy is the pinned state");
        assert_eq!(users(&dir.join("bot.db")), 3);
        assert!(
            pinned.changed_since().unwrap(),
            "the commit after the pin is seen"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A transaction left open (the migration's, uncommitted) is no change; nor is a pin
    /// that saw no commit at all.
    #[test]
    fn an_uncommitted_write_is_no_change() {
        let dir = std::env::temp_dir().join(format!("engine-pin-open-{}", std::process::id()));
        let db = database(&dir);
        let mut pinned = db.pin().unwrap().unwrap();
        db.connection().execute_batch("BEGIN IMMEDIATE").unwrap();
        db.connection().execute("DELETE FROM users", []).unwrap();
        pinned.copy_to(&dir.join("copy.db")).unwrap();
        assert!(!pinned.changed_since().unwrap());
        assert_eq!(users(&dir.join("copy.db")), 2);
        db.connection().execute_batch("ROLLBACK").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Rollback-journal mode: no pin (a reader would hold the migration's COMMIT back).
    #[test]
    fn a_rollback_journal_database_is_not_pinned() {
        let dir = std::env::temp_dir().join(format!("engine-pin-delete-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut db = Database::open(&dir.join("bot.db")).unwrap();
        db.upgrade(|_| {}).unwrap();
        assert!(db.pin().unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A copy into a folder that cannot take it leaves nothing behind and ends the pin.
    #[test]
    fn a_failed_pinned_copy_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("engine-pin-fail-{}", std::process::id()));
        let db = database(&dir);
        let mut pinned = db.pin().unwrap().unwrap();
        // The destination's folder is a file: the copy cannot be made.
        std::fs::write(dir.join("not-a-folder"), b"x").unwrap();
        let dest = dir.join("not-a-folder").join("copy.db");
        assert!(pinned.copy_to(&dest).is_err());
        assert!(!dest.exists());
        // The read transaction ended: a checkpoint can reset the WAL past the pin.
        db.connection()
            .execute(
                "INSERT INTO users (telegram_id, first_name) VALUES (4, 'four')",
                [],
            )
            .unwrap();
        let busy: i64 = db
            .connection()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
            .unwrap();
        assert_eq!(busy, 0, "no reader holds the WAL");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
