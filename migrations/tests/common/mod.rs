//! What the engine's integration tests share: a temporary folder, SQL run on a database file
//! by a connection of its own, and the history and state read back the same way.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use migrations::{Database, State, Status};
use rusqlite::Connection;

/// A temporary folder of one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty folder named after the test.
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("migrations-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A path inside.
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The error and its causes, as the command line prints them (joined with ": ").
pub fn chain(error: &dyn std::error::Error) -> String {
    std::iter::successors(Some(error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Runs `sql` on the database at `path` with a connection of its own.
pub fn sql(path: &Path, sql: &str) {
    Connection::open(path).unwrap().execute_batch(sql).unwrap();
}

/// The status, read by a read-only connection of its own.
pub fn status(path: &Path) -> Status {
    Database::open_read_only(path)
        .unwrap()
        .unwrap()
        .status()
        .unwrap()
}

/// The recorded revisions, read by a connection of its own.
pub fn versions(path: &Path) -> Vec<u32> {
    Database::open_read_only(path)
        .unwrap()
        .unwrap()
        .history()
        .unwrap()
        .unwrap_or_default()
        .iter()
        .map(|row| row.version)
        .collect()
}

/// The state and the recorded revision, read by a connection of its own.
pub fn state(path: &Path) -> (State, Option<u32>) {
    let status = status(path);
    (status.state, status.version)
}

/// How each recorded revision came to be ("applied", "stamped", "forced"), in order.
pub fn hows(db: &Database) -> Vec<String> {
    db.history()
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|row| row.how)
        .collect()
}

/// Asserts that the file at `path` holds `before`, byte for byte.
pub fn assert_unchanged(path: &Path, before: &[u8]) {
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file is unchanged"
    );
}
