//! The database file before SQLite reads it: where it is, what its header says, whether this
//! process may write it, and the recovery of what a writer killed mid-transaction left beside it.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rusqlite::types::FromSql;
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use super::Error;

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// What a writer killed mid-transaction left, and SQLite recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recovery {
    /// A hot `-journal`: rolled back, so the database is as its last commit left it.
    Journal,
    /// A `-wal` no process had open: its committed transactions were folded into the
    /// database file (checkpointed) and it was removed, as SQLite does when the last
    /// connection closes.
    Wal,
}

impl std::fmt::Display for Recovery {
    /// Its name as scripts see it: `journal`, `wal`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Recovery::Journal => "journal",
            Recovery::Wal => "wal",
        })
    }
}

/// `path` with `suffix` appended to its file name (`x.db` and `-wal` give `x.db-wal`).
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The folder a path's file is in (`.` for a bare file name).
pub fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn non_empty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// Removes the file at `path` with its journal, WAL and shared-memory file, if there.
pub(super) fn remove_with_sidecars(path: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let _ = std::fs::remove_file(beside(path, suffix));
    }
}

/// Reads the schema table, as the first read on a connection: SQLite opens the file then (and
/// rolls back a hot journal, or notices a damaged or foreign file).
pub(super) fn read_schema_table(conn: &Connection) -> rusqlite::Result<()> {
    query_one::<i64>(conn, "SELECT count(*) FROM sqlite_schema").map(drop)
}

/// The first column of every row of `sql`.
pub(super) fn query_all<T: FromSql>(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<T>> {
    conn.prepare(sql)?
        .query_map([], |row| row.get(0))?
        .collect()
}

/// The first column of the first row of `sql`.
pub(super) fn query_one<T: FromSql>(conn: &Connection, sql: &str) -> rusqlite::Result<T> {
    conn.query_row(sql, [], |row| row.get(0))
}

/// The size of the file at `path`, or `None` when there is none in an existing folder.
/// Refuses a folder, anything else that is not a regular file (a FIFO, a device, a socket:
/// symlinks followed), and a path whose folder does not exist.
pub(super) fn locate(path: &Path) -> Result<Option<u64>, Error> {
    let missing = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
        )
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(Error::Folder {
            path: path.to_owned(),
        }),
        Ok(meta) if !meta.is_file() => Err(Error::NotAFile {
            path: path.to_owned(),
            kind: file_kind(&meta),
        }),
        Ok(meta) => Ok(Some(meta.len())),
        Err(e) if missing(&e) => match std::fs::metadata(folder_of(path)) {
            Ok(folder) if folder.is_dir() => Ok(None),
            Err(cause) if !missing(&cause) => Err(Error::io(folder_of(path))(cause)),
            _ => Err(Error::MissingFolder {
                path: path.to_owned(),
            }),
        },
        Err(cause) => Err(Error::io(path)(cause)),
    }
}

/// What a path that is neither a regular file nor a folder is, in words.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    [
        (kind.is_fifo(), "a named pipe (FIFO)"),
        (kind.is_char_device(), "a character device"),
        (kind.is_block_device(), "a block device"),
        (kind.is_socket(), "a socket"),
    ]
    .into_iter()
    .find_map(|(is, words)| is.then_some(words))
    .unwrap_or("not a regular file")
}

/// Checks that the file of `len` bytes at `path` looks like a SQLite database whose header
/// agrees with its size, without opening it through SQLite. A 0-byte file passes: SQLite
/// reads it as a database with no tables.
pub(super) fn check_header(path: &Path, len: u64) -> Result<(), Error> {
    if len == 0 {
        return Ok(());
    }
    let mut header = Vec::with_capacity(100);
    File::open(path)
        .and_then(|file| file.take(100).read_to_end(&mut header))
        .map_err(Error::io(path))?;
    let read = header.len();
    header.resize(100, 0);
    let magic = read.min(SQLITE_HEADER.len());
    if header[..magic] != SQLITE_HEADER[..magic] {
        return Err(Error::NotADatabase {
            path: path.to_owned(),
        });
    }
    let truncated = |expected| Error::Truncated {
        path: path.to_owned(),
        len,
        expected,
    };
    if read < 100 {
        return Err(truncated(None));
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
    let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let (change_counter, pages, valid_for) = (be32(24), be32(28), be32(92));
    // In WAL mode the pages a checkpoint has not yet written (or could not write, on a full
    // disk) are in the `-wal`, and page 1 may already name them: the size says nothing then.
    let wal = (header[18] == 2 && header[19] == 2) || beside(path, "-wal").exists();
    if !wal && pages > 0 && valid_for == change_counter && u64::from(pages) * page_size > len {
        return Err(truncated(Some(u64::from(pages) * page_size)));
    }
    Ok(())
}

/// The effective user id of this process.
pub(super) fn uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Whether this process may write `target` (as the kernel would decide for its effective
/// user: permissions, and a read-only mount).
fn may_write(target: &Path) -> std::io::Result<()> {
    let name = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let result =
        unsafe { libc::faccessat(libc::AT_FDCWD, name.as_ptr(), libc::W_OK, libc::AT_EACCESS) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Refuses unless this process may write the database's folder and, when it exists, the file:
/// SQLite creates a `-journal` (or `-wal`) beside the database for every write.
pub(super) fn check_writable(path: &Path, exists: bool) -> Result<(), Error> {
    let folder = folder_of(path);
    let targets = [(folder, true), (path, false)];
    for (target, is_folder) in targets.into_iter().take(if exists { 2 } else { 1 }) {
        may_write(target).map_err(|source| Error::ReadOnly {
            path: path.to_owned(),
            target: target.to_owned(),
            folder: is_folder,
            uid: uid(),
            source,
        })?;
    }
    Ok(())
}

/// [`Database::recover`](super::Database::recover), before anything else reads the file. A
/// journal is hot when SQLite itself says so on a read-only open (`SQLITE_READONLY_ROLLBACK`;
/// a live writer's journal is not hot); a `-wal` that a process has open (the running bot's)
/// is left alone. Nothing else is written.
pub(super) fn recover(path: &Path) -> Result<Option<Recovery>, Error> {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    if non_empty(&beside(path, "-journal")) && journal_is_hot(path)? {
        check_writable(path, true).map_err(|cause| Error::NeedsRecovery {
            path: path.to_owned(),
            kind: Recovery::Journal,
            source: Some(Box::new(cause)),
        })?;
        open_read_write_and_close(path)?;
        if journal_is_hot(path)? {
            return Err(Error::needs_recovery(path, Recovery::Journal));
        }
        return Ok(Some(Recovery::Journal));
    }
    let wal = beside(path, "-wal");
    if non_empty(&wal) && check_writable(path, true).is_ok() {
        open_read_write_and_close(path)?;
        if !wal.exists() {
            return Ok(Some(Recovery::Wal));
        }
    }
    Ok(None)
}

/// A read-only connection to `path` that does not wait for another process's lock.
pub(super) fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// A connection to `path`, read-write or read-only, that waits up to the busy timeout for
/// another process's lock.
pub(super) fn connect(path: &Path, write: bool) -> Result<Connection, Error> {
    let err = |e| Error::from_sqlite(path, e);
    let access = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn =
        Connection::open_with_flags(path, access | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(err)?;
    conn.busy_timeout(super::busy_timeout()).map_err(err)?;
    Ok(conn)
}

/// Whether SQLite finds a hot journal beside the database: a read-only connection then
/// refuses to read (it may not roll it back).
fn journal_is_hot(path: &Path) -> Result<bool, Error> {
    match read_schema_table(&connect(path, false)?) {
        Ok(_) => Ok(false),
        Err(e) => match Error::from_sqlite(path, e) {
            Error::NeedsRecovery {
                kind: Recovery::Journal,
                ..
            } => Ok(true),
            busy @ Error::Busy { .. } => Err(busy),
            // A damaged or foreign file: the checks that follow name it.
            _ => Ok(false),
        },
    }
}

/// Opens the database read-write and reads it (SQLite rolls back a hot journal, or reads a
/// WAL), then closes it (the last connection checkpoints a WAL and removes it).
fn open_read_write_and_close(path: &Path) -> Result<(), Error> {
    let err = |e| Error::from_sqlite(path, e);
    let conn = connect(path, true)?;
    read_schema_table(&conn).map_err(err)?;
    conn.close().map_err(|(_, e)| err(e))
}
