//! Copies of the live file with SQLite's online backup API: the whole file now
//! ([`Database::snapshot_to`], checked by [`inspect_copy`]), or the state pinned by a read
//! transaction of its own ([`Database::pin`]), copied while another connection migrates. In WAL
//! mode a reader does not hold a writer back, so a migration need not wait for its backup to be
//! written; only its COMMIT waits for the backup's verdict (the commit gate).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, MAIN_DB};

use serde::{Deserialize, Serialize};

use super::{Database, Error, LockHolder, State, busy_timeout, file};

/// A checked copy: its path, the revision its history records, its state, its size in bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupInfo {
    pub path: PathBuf,
    pub revision: Option<u32>,
    pub state: State,
    pub bytes: u64,
}

/// The state a database had when [`Database::pin`] was called, held by a read transaction on
/// a connection of its own until [`Pinned::copy_to`] has copied it. Whether anything committed
/// after it is for the migrating connection to tell ([`Database::data_version`] before the
/// pin, and again under the write lock: [`crate::Commit::data_version`]).
pub struct Pinned {
    conn: Connection,
    path: PathBuf,
    /// The database is in WAL mode.
    wal: bool,
}

impl Database {
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
        copy_whole(&self.conn, &self.path, dest)
    }

    /// Pins the state last committed, to be copied by [`Pinned::copy_to`]. In WAL mode the copy may
    /// run beside a migration ([`Pinned::copies_beside_a_writer`]); in rollback-journal mode
    /// the reader would hold the migration's COMMIT back: copy first.
    pub fn pin(&self) -> Result<Pinned, Error> {
        let err = |e| self.err(e);
        let mode: String = self.query_one("PRAGMA journal_mode")?;
        let conn = file::connect(&self.path, false)?;
        // The first read in the transaction takes its snapshot (in WAL mode; a shared lock in
        // rollback-journal mode): from here on it sees this state.
        conn.execute_batch("BEGIN")
            .and_then(|()| file::read_schema_table(&conn))
            .map_err(err)?;
        Ok(Pinned {
            conn,
            path: self.path.clone(),
            wal: mode.eq_ignore_ascii_case("wal"),
        })
    }
}

impl Pinned {
    /// Whether the copy may run beside a migration (WAL mode: the reader does not hold the
    /// writer back).
    pub fn copies_beside_a_writer(&self) -> bool {
        self.wal
    }

    /// Copies the pinned state to `dest` (a partial copy is removed, as by
    /// [`Database::snapshot_to`]), then ends the read transaction. Returns the copy's size.
    pub fn copy_to(&mut self, dest: &Path) -> Result<u64, Error> {
        let copied = copy_whole(&self.conn, &self.path, dest);
        let ended = self
            .conn
            .execute_batch("COMMIT")
            .map_err(|e| Error::from_sqlite(&self.path, e));
        let bytes = copied?;
        ended.map(|()| bytes)
    }
}

/// Copies the database open on `source` (at `path`) to `dest` in one step, under one read
/// transaction (the source's own, if one is open); a partial copy that was not there before
/// is removed. Returns the copy's size.
pub(super) fn copy_whole(source: &Connection, path: &Path, dest: &Path) -> Result<u64, Error> {
    // A symbolic link is followed, even to a file not there yet: a failed copy removes what it
    // made at the link's target, never the link.
    let resolved = resolve_link(dest);
    let dest = resolved.as_path();
    let existed = dest.exists();
    let copied = copy_pages(source, path, dest);
    if copied.is_err() && !existed {
        // A partial copy (a full disk) is not a backup: nothing is left behind.
        file::remove_with_sidecars(dest);
    }
    copied
}

/// `path`, or the path its last component links to (relative links from the link's folder).
fn resolve_link(path: &Path) -> PathBuf {
    let mut path = path.to_owned();
    for _ in 0..40 {
        let Ok(target) = std::fs::read_link(&path) else {
            break;
        };
        path = match path.parent() {
            Some(folder) if target.is_relative() => folder.join(target),
            _ => target,
        };
    }
    path
}

fn copy_pages(source: &Connection, path: &Path, dest: &Path) -> Result<u64, Error> {
    if let Some(folder) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder).map_err(Error::io(folder))?;
    }
    // One step copies every page under one read transaction: a source that another
    // process keeps writing would restart a stepwise copy for ever (seen with an old app
    // committing every 20 ms). In WAL mode the read does not block the writer.
    let err = |e| Error::from_sqlite(dest, e);
    let mut copy = Connection::open(dest).map_err(err)?;
    {
        use rusqlite::backup::{Backup, StepResult};
        let backup = Backup::new_with_names(source, MAIN_DB, &mut copy, MAIN_DB).map_err(err)?;
        let deadline = std::time::Instant::now() + busy_timeout();
        loop {
            match backup.step(-1).map_err(err)? {
                StepResult::Done => break,
                // Another process holds a lock for a moment: wait as a busy timeout would.
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return Err(Error::busy(path, LockHolder::Writer)),
            }
        }
    }
    drop(copy);
    std::fs::metadata(dest)
        .map(|m| m.len())
        .map_err(Error::io(dest))
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
    // Opens the copy read-only, checks it with `pragma` and reads its revision.
    let inspected = Database::open_read_only(path).and_then(|db| {
        let db = db.ok_or_else(|| Error::io(path)(std::io::ErrorKind::NotFound.into()))?;
        db.check_with(pragma, |path, detail| Error::IntegrityCheck {
            path,
            detail,
        })?;
        let status = db.status()?;
        Ok(BackupInfo {
            path: path.to_owned(),
            revision: status.effective_version(),
            state: status.state,
            bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        })
    });
    for sidecar in sidecars {
        let empty_wal = !sidecar.to_string_lossy().ends_with("-wal")
            || std::fs::metadata(&sidecar).is_ok_and(|m| m.len() == 0);
        if empty_wal {
            let _ = std::fs::remove_file(&sidecar);
        }
    }
    inspected
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder `engine-<name>-<pid>` with `bot.db` at head and two users, in WAL mode
    /// when `wal`.
    fn database(name: &str, wal: bool) -> (PathBuf, Database) {
        let dir = std::env::temp_dir().join(format!("engine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut db = Database::open(&dir.join("bot.db")).unwrap();
        if wal {
            db.run("PRAGMA journal_mode = WAL").unwrap();
        }
        db.upgrade(|_| {}).unwrap();
        let users = "INSERT INTO users (telegram_id, first_name) VALUES (1, 'one'), (2, 'two');";
        db.run(users).unwrap();
        (dir, db)
    }

    fn users(path: &Path) -> i64 {
        let conn = Connection::open(path).unwrap();
        file::query_one(&conn, "SELECT count(*) FROM users").unwrap()
    }

    /// Another process's write, on a connection of its own.
    fn other_writes(path: &Path, id: i64) {
        let sql = "INSERT INTO users (telegram_id, first_name) VALUES (?1, 'other')";
        Connection::open(path).unwrap().execute(sql, [id]).unwrap();
    }

    /// The copy is the state at the pin, and a later commit shows in the migrating
    /// connection's data version. In WAL mode another connection writes and commits while the
    /// pin is held; in rollback-journal mode the copy is taken first (a reader would hold the
    /// migration's COMMIT back), and the commit follows.
    #[test]
    fn a_pinned_copy_is_the_state_at_the_pin_and_a_later_commit_shows() {
        for (name, wal) in [("pin", true), ("pin-delete", false)] {
            let (dir, db) = database(name, wal);
            let live = dir.join("bot.db");
            let version = db.data_version().unwrap();
            let mut pinned = db.pin().unwrap();
            assert_eq!(pinned.copies_beside_a_writer(), wal, "WAL mode");
            assert_eq!(db.data_version().unwrap(), version, "nothing committed yet");
            if wal {
                // A write while pinned does not wait for the reader, and is not in the copy.
                other_writes(&live, 3);
            }
            let copy = dir.join("copy.db");
            let bytes = pinned.copy_to(&copy).unwrap();
            assert_eq!(bytes, std::fs::metadata(&copy).unwrap().len());
            assert_eq!(users(&copy), 2, "the copy is the pinned state");
            if !wal {
                assert_eq!(db.data_version().unwrap(), version);
                other_writes(&live, 3);
            }
            assert_eq!(users(&live), 3);
            assert_ne!(db.data_version().unwrap(), version, "the commit is seen");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    /// The migrating connection's own writes are no change in its data version.
    #[test]
    fn its_own_writes_are_no_change() {
        let (dir, db) = database("pin-open", true);
        let version = db.data_version().unwrap();
        let mut pinned = db.pin().unwrap();
        db.connection().execute_batch("BEGIN IMMEDIATE").unwrap();
        db.connection().execute("DELETE FROM users", []).unwrap();
        pinned.copy_to(&dir.join("copy.db")).unwrap();
        assert_eq!(db.data_version().unwrap(), version);
        assert_eq!(users(&dir.join("copy.db")), 2);
        db.connection().execute_batch("COMMIT").unwrap();
        assert_eq!(db.data_version().unwrap(), version);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A copy into a folder that cannot take it leaves nothing behind and ends the pin.
    #[test]
    fn a_failed_pinned_copy_leaves_no_file() {
        let (dir, db) = database("pin-fail", true);
        let mut pinned = db.pin().unwrap();
        // The destination's folder is a file: the copy cannot be made.
        std::fs::write(dir.join("not-a-folder"), b"x").unwrap();
        let dest = dir.join("not-a-folder").join("copy.db");
        assert!(pinned.copy_to(&dest).is_err());
        assert!(!dest.exists());
        // The read transaction ended: a checkpoint can reset the WAL past the pin.
        other_writes(&dir.join("bot.db"), 4);
        let busy: i64 = db.query_one("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        assert_eq!(busy, 0, "no reader holds the WAL");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
