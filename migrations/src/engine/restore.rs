//! `restore`: replaces the live database's content with a checked copy, under one lock held
//! from the decision to the end of the copy, and keeps the content it replaced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::backup::{Backup, NO_PROGRESS, StepResult};
use rusqlite::{Connection, MAIN_DB};
use serde::{Deserialize, Serialize};

use super::file::{self, beside, remove_with_sidecars};
use super::{BackupInfo, Database, Error, LockHolder, inspect_copy};

/// What `restore` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    /// The restored file, checked.
    #[serde(flatten)]
    pub info: BackupInfo,
    /// Where the content it replaced was kept (`<name>.replaced-<UTC time>` beside the
    /// database); `None` when the live database had no tables.
    pub replaced: Option<PathBuf>,
    /// Rows per table of what was replaced and of what is live now, when something was
    /// replaced: a restore over newer data shows what it set aside.
    pub rows: Option<RowCounts>,
}

/// Rows per table (SQLite's own tables left out), before and after a restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowCounts {
    /// In the content that was replaced (now in the kept file).
    pub replaced: BTreeMap<String, u64>,
    /// In the restored content.
    pub restored: BTreeMap<String, u64>,
}

/// Rows per table of the database at `path` (read only), SQLite's own tables left out.
fn row_counts(path: &Path) -> Result<BTreeMap<String, u64>, Error> {
    let err = |e| Error::from_sqlite(path, e);
    let conn = file::open_read_only(path).map_err(err)?;
    let sql = "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name";
    let tables: Vec<String> = file::query_all(&conn, sql).map_err(err)?;
    tables
        .into_iter()
        .map(|table| {
            let quoted = format!("\"{}\"", table.replace('"', "\"\""));
            let rows =
                file::query_one::<i64>(&conn, &format!("SELECT count(*) FROM main.{quoted}"));
            rows.map(|n| (table, u64::try_from(n).unwrap_or(0)))
                .map_err(err)
        })
        .collect()
}

/// Tables other than SQLite's own.
fn count_tables(conn: &Connection) -> rusqlite::Result<usize> {
    let sql = "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'";
    file::query_one::<i64>(conn, sql).map(|n| usize::try_from(n).unwrap_or(0))
}

impl Database {
    /// Replaces the live database's content with the database at `source`, after checking
    /// `source` (`integrity_check`). Refuses a source that is 0 bytes or has no tables while the
    /// live database has tables, unless `force`.
    ///
    /// One connection in exclusive locking mode holds the lock from the moment it reads the
    /// live database to the end of the copy (SQLite keeps a lock between transactions in
    /// that mode): the decision, the copy of the replaced content (`<name>.replaced-<time>`,
    /// with the online backup API) and the restore (the backup API again, into the live file)
    /// see the same database, and no other process writes in between. The live file keeps its
    /// inode, owner and mode.
    pub fn restore_from(&mut self, source: &Path, force: bool) -> Result<Restored, Error> {
        if same_file(source, &self.path) {
            return Err(Error::SameFile {
                file: source.to_owned(),
                path: self.path.clone(),
            });
        }
        let info = inspect_copy(source)?;
        let source_tables = {
            let copy = Database::open_read_only(source)?.expect("checked above");
            count_tables(&copy.conn).map_err(|e| copy.err(e))?
        };
        // This database's own connection would hold a lock of its own in WAL mode: it is
        // closed while the restoring one works, and opened again afterwards.
        let path = self.path.clone();
        let err = |e| Error::from_sqlite(&path, e);
        let own = std::mem::replace(&mut self.conn, Connection::open_in_memory().map_err(err)?);
        own.close().map_err(|(_, e)| err(e))?;
        let restored = restore(&path, source, info, source_tables, force);
        self.conn = Connection::open(&path).map_err(err)?;
        self.conn.busy_timeout(super::busy_timeout()).map_err(err)?;
        let mut restored = restored?;
        if let Some(kept) = &restored.replaced {
            restored.rows = Some(RowCounts {
                replaced: row_counts(kept)?,
                restored: row_counts(&path)?,
            });
        }
        Ok(restored)
    }

    /// When the file at `path` fails the checks every write makes (not SQLite, cut short,
    /// `quick_check`), renames it, with its journal and WAL, to `<name>.damaged-<UTC time>`
    /// beside it and returns that name: a restore can then put a good database in its place
    /// and nothing of the damaged one is lost. `None` (nothing done) when the file is sound
    /// or absent; other errors (a folder, permissions, a lock) are returned as they are.
    pub fn set_aside_damaged(path: &Path) -> Result<Option<PathBuf>, Error> {
        let checked =
            Database::open_read_only(path).and_then(|db| db.map_or(Ok(()), |db| db.quick_check()));
        match checked {
            Ok(()) => Ok(None),
            Err(e) if e.is_bad_file() => {
                let aside = beside(path, &format!(".damaged-{}", utc_now()));
                for suffix in ["-journal", "-wal", "-shm", ""] {
                    let from = beside(path, suffix);
                    if from.exists() {
                        std::fs::rename(&from, beside(&aside, suffix)).map_err(Error::io(&from))?;
                    }
                }
                Ok(Some(aside))
            }
            Err(e) => Err(e),
        }
    }
}

fn restore(
    path: &Path,
    source: &Path,
    info: BackupInfo,
    source_tables: usize,
    force: bool,
) -> Result<Restored, Error> {
    let err = |e| Error::from_sqlite(path, e);
    let mut conn = file::connect(path, true)?;
    let mode: String = file::query_one(&conn, "PRAGMA journal_mode").map_err(err)?;
    let from = if info.bytes == 0 {
        // A source without a single page would finish the backup at its first step, before
        // the decision: an empty database of one page (of the live page size) stands in.
        let page_size: i64 = file::query_one(&conn, "PRAGMA page_size").map_err(err)?;
        let empty = Connection::open_in_memory().map_err(err)?;
        empty
            .pragma_update(None, "page_size", page_size)
            .and_then(|()| empty.pragma_update(None, "user_version", 0))
            .map_err(err)?;
        empty
    } else {
        file::open_read_only(source).map_err(|e| Error::from_sqlite(source, e))?
    };
    // Refuses (nothing changed) or keeps a copy of what is replaced, given the live tables
    // counted on `reader` while this process holds the write lock (outside any transaction
    // of `reader`: the backup API cannot read from a connection inside one).
    let decide = |reader: &Connection, live_tables: usize| -> Result<Option<PathBuf>, Error> {
        if live_tables > 0 && (info.bytes == 0 || source_tables == 0) && !force {
            return Err(Error::EmptySource {
                file: source.to_owned(),
                zero_bytes: info.bytes == 0,
                live_tables,
            });
        }
        (live_tables > 0).then(|| keep(reader, path)).transpose()
    };
    let (done, replaced) = if mode.eq_ignore_ascii_case("wal") {
        // In WAL mode the backup holds the write lock from its first step to its end, and
        // readers still see the last commit: a second connection decides and keeps the copy.
        let backup = Backup::new(&from, &mut conn).map_err(err)?;
        if matches!(
            backup.step(0).map_err(err)?,
            StepResult::Busy | StepResult::Locked
        ) {
            return Err(Error::busy(path, LockHolder::Writer));
        }
        let reader = file::connect(path, false)?;
        let live_tables = count_tables(&reader).map_err(err)?;
        let replaced = decide(&reader, live_tables)?;
        drop(reader);
        let done = backup.step(-1).map_err(err)?;
        (done, replaced)
    } else {
        // In rollback-journal mode the write lock is taken as usual, then kept between
        // transactions (exclusive locking mode), through the copy of what is replaced and the
        // restore, until the connection closes.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(err)?;
        // From here this connection holds the write lock: a lock that keeps it waiting is
        // another process's read transaction.
        let counted = conn
            .pragma_update(None, "locking_mode", "EXCLUSIVE")
            .and_then(|()| count_tables(&conn))
            .map_err(|e| err(e).blocked_by_readers());
        // Nothing was changed: the commit ends the transaction, and the lock is kept.
        conn.execute_batch("COMMIT")
            .map_err(|e| err(e).blocked_by_readers())?;
        let replaced = decide(&conn, counted?)?;
        let done = Backup::new(&from, &mut conn)
            .and_then(|backup| backup.step(-1))
            .map_err(|e| err(e).blocked_by_readers())?;
        (done, replaced)
    };
    if done != StepResult::Done {
        if let Some(kept) = replaced {
            remove_with_sidecars(&kept);
        }
        return Err(Error::busy(path, LockHolder::Readers));
    }
    drop(from);
    conn.close().map_err(|(_, e)| err(e))?;
    Ok(Restored {
        info,
        replaced,
        rows: None,
    })
}

/// Whether `a` and `b` are the same file (device and inode, symlinks followed).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Copies the live database (read on `conn`, which holds the lock) to a new file
/// `<name>.replaced-<UTC time>` beside it, with the live file's mode.
fn keep(conn: &Connection, path: &Path) -> Result<PathBuf, Error> {
    let stamp = utc_now();
    let mut attempt = 1;
    let kept = loop {
        let mut kept = beside(path, &format!(".replaced-{stamp}"));
        if attempt > 1 {
            kept = beside(&kept, &format!("-{attempt}"));
        }
        match std::fs::File::create_new(&kept) {
            Ok(_) => break kept,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => attempt += 1,
            Err(source) => return Err(Error::Io { path: kept, source }),
        }
    };
    let copied = conn
        .backup(MAIN_DB, &kept, NO_PROGRESS)
        .map_err(|e| Error::from_sqlite(&kept, e))
        .and_then(|()| {
            let mode = std::fs::metadata(path).map_err(Error::io(path))?;
            std::fs::set_permissions(&kept, mode.permissions()).map_err(Error::io(&kept))
        });
    if let Err(error) = copied {
        remove_with_sidecars(&kept);
        return Err(error);
    }
    Ok(kept)
}

/// [`utc_stamp`] of now.
fn utc_now() -> String {
    utc_stamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the Unix epoch (UTC).
fn utc_stamp(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc_stamp;

    #[test]
    fn stamps_are_utc() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_795_588_876), "20261125T064116Z");
    }
}
