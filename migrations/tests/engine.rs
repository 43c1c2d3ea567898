//! The engine against real database files.

use std::path::{Path, PathBuf};

use migrations::{Database, Error, HISTORY_TABLE, MIGRATIONS, State, head};
use rusqlite::Connection;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("migrations-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A database at revision `k` built by applying 1..=k by hand, with no history table.
fn unstamped_at(path: &Path, k: u32) {
    let conn = Connection::open(path).unwrap();
    for m in &MIGRATIONS[..k as usize] {
        conn.execute_batch(m.up).unwrap();
    }
}

fn old_app_database(path: &Path, users: u32) {
    unstamped_at(path, 1);
    let mut conn = Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..users {
        tx.execute(
            "INSERT INTO users (telegram_id, username, first_name, is_admin) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![1_000_000 + i64::from(i), format!("user{i}"), format!("First {i}"), i % 100 == 0],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn every_revision_without_history_is_unstamped_matching_it() {
    let dir = TempDir::new("match");
    for k in 1..=head() {
        let path = dir.file(&format!("r{k}.db"));
        unstamped_at(&path, k);
        let status = Database::open_read_only(&path)
            .unwrap()
            .unwrap()
            .status()
            .unwrap();
        assert_eq!(status.state, State::Unstamped, "revision {k}");
        assert_eq!(status.matches, Some(k), "revision {k}");
        assert_eq!(status.pending, (k + 1..=head()).collect::<Vec<_>>());
    }
}

#[test]
fn missing_file_is_empty_and_is_not_created() {
    let dir = TempDir::new("missing");
    let path = dir.file("none.db");
    assert!(Database::open_read_only(&path).unwrap().is_none());
    assert!(!path.exists());
    let status = Database::open(&path).unwrap().status().unwrap();
    assert_eq!(status.state, State::Empty);
    assert_eq!(status.pending, (1..=head()).collect::<Vec<_>>());
}

#[test]
fn upgrade_from_empty_reaches_head_and_twice_changes_nothing() {
    let dir = TempDir::new("empty");
    let path = dir.file("bot.db");
    let mut db = Database::open(&path).unwrap();
    let mut seen = Vec::new();
    let upgrade = db.upgrade(|m| seen.push(m.version)).unwrap();
    assert_eq!(upgrade.applied, (1..=head()).collect::<Vec<_>>());
    assert_eq!(seen, upgrade.applied);
    let status = db.status().unwrap();
    assert_eq!(
        (status.state, status.version),
        (State::Current, Some(head()))
    );
    assert!(db.upgrade(|_| {}).unwrap().applied.is_empty());
    let how: Vec<String> = db
        .history()
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| r.how)
        .collect();
    assert!(how.iter().all(|h| h == "applied"));
}

#[test]
fn the_seeds_database_is_adopted_then_upgraded_keeping_every_user() {
    let dir = TempDir::new("seed");
    let path = dir.file("bot_database.db");
    old_app_database(&path, 1000);
    let mut db = Database::open(&path).unwrap();
    assert!(matches!(db.upgrade(|_| {}), Err(Error::Unstamped { .. })));
    assert_eq!(db.adopt().unwrap(), 1);
    let status = db.status().unwrap();
    assert_eq!((status.state, status.version), (State::Behind, Some(1)));
    db.upgrade(|_| {}).unwrap();
    assert_eq!(db.status().unwrap().state, State::Current);
    let (count, admins): (i64, i64) = db
        .connection()
        .query_row("SELECT count(*), sum(is_admin) FROM users WHERE username = 'user' || (telegram_id - 1000000)", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((count, admins), (1000, 10));
    let how: Vec<String> = db
        .history()
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| r.how)
        .collect();
    assert_eq!(how[0], "stamped");
    assert_eq!(how[1], "applied");
}

#[test]
fn a_schema_with_a_column_missing_matches_nothing_and_adopt_refuses_unchanged() {
    let dir = TempDir::new("nomatch");
    let path = dir.file("bot.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE users (id INTEGER NOT NULL, telegram_id BIGINT NOT NULL, username VARCHAR(64),
             first_name VARCHAR(128), is_admin BOOLEAN DEFAULT 0 NOT NULL,
             created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, PRIMARY KEY (id), UNIQUE (telegram_id));",
        )
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut db = Database::open(&path).unwrap();
    let status = db.status().unwrap();
    assert_eq!(
        (status.state, status.matches, status.closest),
        (State::Unstamped, None, Some(1))
    );
    assert_eq!(
        status.difference,
        vec!["table users: column last_name missing (revision 1 adds it)"]
    );
    let error = db.adopt().unwrap_err();
    assert!(
        error
            .to_string()
            .contains("table users: column last_name missing"),
        "{error}"
    );
    drop(db);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn stamp_checks_the_live_schema_unless_forced() {
    let dir = TempDir::new("stamp");
    let path = dir.file("bot.db");
    unstamped_at(&path, 1);
    let mut db = Database::open(&path).unwrap();
    let error = db.stamp(2, false).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("table users: column language_code missing"),
        "{error}"
    );
    assert_eq!(db.status().unwrap().state, State::Unstamped);
    db.stamp(2, true).unwrap();
    let history = db.history().unwrap().unwrap();
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|r| r.how == "forced"));
    assert!(matches!(
        db.stamp(head() + 1, false),
        Err(Error::UnknownRevision { .. })
    ));
}

#[test]
fn ahead_and_modified_are_refused() {
    let dir = TempDir::new("ahead");
    let path = dir.file("bot.db");
    let mut db = Database::open(&path).unwrap();
    db.upgrade(|_| {}).unwrap();
    let conn = db.connection();
    conn.execute(
        &format!("INSERT INTO {HISTORY_TABLE} (version, name, checksum, how) VALUES (?1, 'future', 'x', 'applied')"),
        [head() + 1],
    )
    .unwrap();
    assert_eq!(db.status().unwrap().state, State::Ahead);
    assert!(matches!(db.upgrade(|_| {}), Err(Error::Ahead { .. })));
    db.connection()
        .execute_batch(&format!(
            "DELETE FROM {HISTORY_TABLE} WHERE version > {}; UPDATE {HISTORY_TABLE} SET checksum = 'abc' WHERE version = 1",
            head()
        ))
        .unwrap();
    let status = db.status().unwrap();
    assert_eq!(status.state, State::Modified);
    assert!(
        status.difference[0].contains("0001_initial.up.sql"),
        "{:?}",
        status.difference
    );
    assert!(status.difference[0].contains("recorded checksum abc"));
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_alone() {
    let dir = TempDir::new("garbage");
    let path = dir.file("bot.db");
    std::fs::write(&path, b"this is not a database at all, just text").unwrap();
    assert!(matches!(
        Database::open(&path),
        Err(Error::NotADatabase { .. })
    ));
    assert!(matches!(
        Database::open_read_only(&path),
        Err(Error::NotADatabase { .. })
    ));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"this is not a database at all, just text"
    );
}

#[test]
fn backup_and_restore_round_trip() {
    let dir = TempDir::new("backup");
    let path = dir.file("bot.db");
    old_app_database(&path, 50);
    let db = Database::open(&path).unwrap();
    let copy = dir.file("copy.db");
    db.backup_to(&copy).unwrap();
    drop(db);
    let target = dir.file("restored.db");
    let mut restored = Database::open(&target).unwrap();
    restored.restore_from(&copy).unwrap();
    let n: i64 = restored
        .connection()
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 50);
}
