//! The commit gate: asked inside each transaction of the history just before its COMMIT, it
//! can hold the commit back, and then nothing of the transaction stays.

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use migrations::{Database, Error, GateError, MIGRATIONS, State, head};
use rusqlite::{Connection, ErrorCode};

/// A database at revision `k` (applied by the engine), with some users.
fn at_revision(path: &Path, k: u32) {
    let mut db = Database::open(path).unwrap();
    db.upgrade_to(k, |_| {}).unwrap();
    db.connection()
        .execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO users (telegram_id, first_name) SELECT i, 'user' || i FROM n;",
        )
        .unwrap();
}

/// Whether another connection is kept from taking the write lock: someone holds it.
fn write_lock_is_held(path: &Path) -> bool {
    let other = Connection::open(path).unwrap();
    other.busy_timeout(Duration::ZERO).unwrap();
    match other.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => {
            other.execute_batch("ROLLBACK").unwrap();
            false
        }
        Err(e) => e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy),
    }
}

fn unfit() -> GateError {
    "the copy is unfit".into()
}

#[test]
fn a_gate_error_leaves_the_database_at_its_revision_with_nothing_applied() {
    let dir = TempDir::new("refused");
    let path = dir.file("bot.db");
    at_revision(&path, 3);
    let bytes = std::fs::read(&path).unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut db = Database::open(&path).unwrap();
    let seen = Arc::clone(&asked);
    let gated = path.clone();
    db.set_commit_gate(move |commit| {
        // Revision 4's index, as another connection sees the file: not there before COMMIT.
        let index_seen = Connection::open(&gated)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'ix_users_last_seen_at'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap();
        seen.lock().unwrap().push((
            commit.before.state,
            commit.before.version,
            commit.after,
            write_lock_is_held(&gated),
            index_seen,
        ));
        Err(unfit())
    });
    let mut applying = Vec::new();
    let error = db.upgrade(|m| applying.push(m.version)).unwrap_err();
    assert!(
        matches!(error, Error::HeldBack { at: Some(3), .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the copy is unfit; the transaction was rolled back before its COMMIT and the database was left as it was (at revision 3)"
    );
    assert!(!error.is_refusal() && !error.is_bad_file());
    let cause = std::error::Error::source(&error).map(ToString::to_string);
    assert_eq!(
        cause.as_deref(),
        Some("the copy is unfit"),
        "the gate's error is the source"
    );
    assert_eq!(
        *asked.lock().unwrap(),
        // Asked once, under the write lock, before anything of the step is committed.
        [(State::Behind, Some(3), 4, true, 0)]
    );
    assert_eq!(applying, [4], "the step ran, then was rolled back");
    assert_eq!(state(&path), (State::Behind, Some(3)));
    assert_eq!(versions(&path), [1, 2, 3], "no history row for revision 4");
    drop(db);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the file is as it was, byte for byte"
    );
    assert!(!dir.file("bot.db-journal").exists());
}

#[test]
fn a_gate_that_passes_commits_every_step_as_before() {
    let dir = TempDir::new("passes");
    let gated_path = dir.file("gated.db");
    let plain_path = dir.file("plain.db");
    at_revision(&gated_path, 1);
    at_revision(&plain_path, 1);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut gated = Database::open(&gated_path).unwrap();
    let seen = Arc::clone(&asked);
    let locked = gated_path.clone();
    gated.set_commit_gate(move |commit| {
        seen.lock().unwrap().push((
            commit.before.version,
            commit.after,
            write_lock_is_held(&locked),
        ));
        Ok(())
    });
    let with_gate = gated.upgrade(|_| {}).unwrap();
    let without = Database::open(&plain_path)
        .unwrap()
        .upgrade(|_| {})
        .unwrap();
    assert_eq!(with_gate.applied, without.applied);
    assert_eq!((with_gate.from, with_gate.to), (Some(1), head()));
    let expected: Vec<(Option<u32>, u32, bool)> =
        (2..=head()).map(|v| (Some(v - 1), v, true)).collect();
    assert_eq!(*asked.lock().unwrap(), expected, "asked before each COMMIT");
    assert_eq!(state(&gated_path), (State::Current, Some(head())));
    let how = hows(&gated);
    assert_eq!(how, vec!["applied"; head() as usize]);
    assert_eq!(gated.schema().unwrap(), {
        Database::open_read_only(&plain_path)
            .unwrap()
            .unwrap()
            .schema()
            .unwrap()
    });

    // Cleared, the gate is asked no more.
    gated.clear_commit_gate();
    gated.downgrade(head() - 1, |_| {}).unwrap();
    assert_eq!(asked.lock().unwrap().len(), expected.len());
}

#[test]
fn with_two_pending_migrations_a_failure_stops_before_the_first_commit() {
    let dir = TempDir::new("two-pending");
    let path = dir.file("bot.db");
    at_revision(&path, 2);
    assert!(MIGRATIONS.len() as u32 - 2 >= 2, "two migrations pending");
    let bytes = std::fs::read(&path).unwrap();
    // The verdict comes from elsewhere, later: the gate waits for it, as for a check running
    // beside the migration.
    let (verdict, verdicts) = mpsc::channel::<Result<(), GateError>>();
    let (asked, asking) = mpsc::channel::<(Option<u32>, u32)>();
    let calls = Arc::new(Mutex::new(0));
    let counted = Arc::clone(&calls);
    let mut db = Database::open(&path).unwrap();
    db.set_commit_gate(move |commit| {
        *counted.lock().unwrap() += 1;
        asked.send((commit.before.version, commit.after)).unwrap();
        verdicts.recv().unwrap()
    });
    let upgrading = std::thread::spawn(move || {
        let result = db.upgrade(|_| {});
        drop(db);
        result
    });
    assert_eq!(
        asking.recv_timeout(Duration::from_secs(10)).unwrap(),
        (Some(2), 3),
        "asked before the first COMMIT"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(!upgrading.is_finished(), "the step waits for the verdict");
    assert_eq!(versions(&path), [1, 2], "nothing committed while it waits");
    verdict.send(Err(unfit())).unwrap();
    let error = upgrading.join().unwrap().unwrap_err();
    assert!(
        matches!(error, Error::HeldBack { at: Some(2), .. }),
        "{error:?}"
    );
    assert_eq!(*calls.lock().unwrap(), 1, "no step after the refused one");
    assert_eq!(state(&path), (State::Behind, Some(2)));
    assert_eq!(versions(&path), [1, 2]);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_gate_error_at_a_later_step_keeps_the_steps_committed_before_it() {
    let dir = TempDir::new("later");
    let path = dir.file("bot.db");
    at_revision(&path, 2);
    let mut db = Database::open(&path).unwrap();
    let mut calls = 0;
    db.set_commit_gate(move |_| {
        calls += 1;
        if calls == 1 { Ok(()) } else { Err(unfit()) }
    });
    let error = db.upgrade(|_| {}).unwrap_err();
    assert!(
        matches!(error, Error::HeldBack { at: Some(3), .. }),
        "{error:?}"
    );
    assert!(error.to_string().ends_with("(at revision 3)"), "{error}");
    assert_eq!(versions(&path), [1, 2, 3]);
}

#[test]
fn adopting_is_gated_too() {
    let dir = TempDir::new("adopt");
    let path = dir.file("bot.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(MIGRATIONS[0].up).unwrap();
    drop(conn);
    let bytes = std::fs::read(&path).unwrap();
    let mut db = Database::open(&path).unwrap();
    let before = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&before);
    db.set_commit_gate(move |commit| {
        *seen.lock().unwrap() = Some((commit.before.state, commit.before.matches, commit.after));
        Err(unfit())
    });
    let error = db.adopt_if_unstamped().unwrap_err();
    assert!(
        matches!(error, Error::HeldBack { at: None, .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .ends_with("left as it was (without a migration history of this engine)"),
        "{error}"
    );
    assert_eq!(
        *before.lock().unwrap(),
        Some((State::Unstamped, Some(1), 1))
    );
    assert_eq!(state(&path), (State::Unstamped, None));
    drop(db);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "no history table");
}
