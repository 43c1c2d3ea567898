//! The engine against real database files.

mod common;

use std::path::Path;

use common::*;
use migrations::{Database, Error, HISTORY_TABLE, MIGRATIONS, State, head};
use rusqlite::Connection;

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
        // Applied by the engine, 1..=k, then the history dropped: as the old create-all left it.
        let path = dir.file(&format!("r{k}.db"));
        let upgrade = Database::open(&path)
            .unwrap()
            .upgrade_to(k, |_| {})
            .unwrap();
        assert_eq!(upgrade.applied, (1..=k).collect::<Vec<_>>());
        sql(&path, &format!("DROP TABLE {HISTORY_TABLE}"));
        let status = status(&path);
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
    let how = hows(&db);
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
    let how = hows(&db);
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
    let done = restored.restore_from(&copy, false).unwrap();
    assert!(done.replaced.is_none() && done.rows.is_none(), "{done:?}");
    let n: i64 = restored
        .connection()
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 50);

    // Restored over newer data: what was set aside is kept, and counted table by table.
    restored
        .connection()
        .execute_batch(
            "INSERT INTO users (telegram_id, username) VALUES (900001, 'new1'), (900002, 'new2');",
        )
        .unwrap();
    let again = restored.restore_from(&copy, false).unwrap();
    let rows = again.rows.expect("something was replaced");
    assert_eq!(rows.replaced["users"], 52);
    assert_eq!(rows.restored["users"], 50);
    let kept = again.replaced.unwrap();
    let kept_users: i64 = Connection::open(&kept)
        .unwrap()
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept_users, 52);
}

#[test]
fn checking_a_copy_in_wal_mode_leaves_it_one_file() {
    let dir = TempDir::new("inspect-wal");
    let path = dir.file("bot.db");
    old_app_database(&path, 5);
    sql(
        &path,
        "PRAGMA journal_mode = WAL; PRAGMA wal_checkpoint(TRUNCATE);",
    );
    let copy = dir.file("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    migrations::inspect_copy(&copy).unwrap();
    for suffix in ["-wal", "-shm"] {
        let sidecar = dir.file(&format!("copy.db{suffix}"));
        assert!(!sidecar.exists(), "{} left behind", sidecar.display());
    }
}

fn at_revision(path: &Path, k: u32) {
    let mut db = Database::open(path).unwrap();
    db.upgrade(|_| {}).unwrap();
    db.downgrade(k, |_| {}).unwrap();
}

#[test]
fn another_tools_history_is_foreign_matched_and_left_alone() {
    let dir = TempDir::new("foreign");
    let path = dir.file("bot.db");
    unstamped_at(&path, 2);
    sql(
        &path,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY); INSERT INTO alembic_version VALUES ('4bcff00da989');",
    );
    let mut db = Database::open(&path).unwrap();
    let status = db.status().unwrap();
    assert_eq!((status.state, status.matches), (State::Foreign, Some(2)));
    let foreign = status.foreign.unwrap();
    assert_eq!(
        (foreign.tool.as_ref(), foreign.revision.as_deref()),
        ("alembic", Some("4bcff00da989"))
    );
    let error = db.upgrade(|_| {}).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("alembic history in table alembic_version at 4bcff00da989"),
        "{error}"
    );
    assert_eq!(db.adopt().unwrap(), 2);
    db.upgrade(|_| {}).unwrap();
    assert_eq!(db.status().unwrap().state, State::Current);
    let kept: String = db
        .connection()
        .query_row("SELECT version_num FROM alembic_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        kept, "4bcff00da989",
        "the other tool's table is left as it is"
    );
}

#[test]
fn a_schema_changed_by_hand_after_stamping_is_drifted_and_refused() {
    let dir = TempDir::new("drift");
    let path = dir.file("bot.db");
    at_revision(&path, 2);
    sql(&path, "ALTER TABLE users DROP COLUMN last_seen_at");
    let mut db = Database::open(&path).unwrap();
    let status = db.status().unwrap();
    assert_eq!((status.state, status.version), (State::Drifted, Some(2)));
    assert_eq!(
        status.difference,
        vec!["table users: column last_seen_at missing (revision 2 adds it)"]
    );
    let error = db.upgrade(|_| {}).unwrap_err();
    assert!(
        matches!(error, Error::Drifted { version: 2, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("column last_seen_at missing"));
}

#[test]
fn downgrade_runs_down_files_in_order_and_stops_before_a_step_without_one() {
    let dir = TempDir::new("down");
    let path = dir.file("bot.db");
    let mut db = Database::open(&path).unwrap();
    db.upgrade(|_| {}).unwrap();
    let plan = db.plan_downgrade(1).unwrap();
    let files: Vec<&str> = plan.steps.iter().map(|s| s.file.as_ref()).collect();
    let down_files = [
        "0006_unsent_answers_bot_identity.down.sql",
        "0005_handled_updates_stats.down.sql",
        "0004_users_rebuild.down.sql",
        "0003_command_log.down.sql",
        "0002_user_activity.down.sql",
    ];
    assert_eq!(files, down_files[6 - head() as usize..]);
    let mut undone = Vec::new();
    db.downgrade(1, |m| undone.push(m.version)).unwrap();
    assert_eq!(undone, (2..=head()).rev().collect::<Vec<_>>());
    let status = db.status().unwrap();
    assert_eq!((status.state, status.version), (State::Behind, Some(1)));
    let before = std::fs::read(&path).unwrap();
    let error = db.downgrade(0, |_| panic!("nothing may run")).unwrap_err();
    assert!(matches!(error, Error::NoDown { version: 1, .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("revision 1 (0001_initial.up.sql) has no .down.sql"),
        "{error}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(matches!(
        db.downgrade(3, |_| {}),
        Err(Error::WrongDirection { at: 1, to: 3 })
    ));
}

#[test]
fn the_users_rebuild_keeps_every_row_and_reference() {
    let dir = TempDir::new("rebuild");
    let path = dir.file("bot.db");
    at_revision(&path, 3);
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for i in 0..2000i64 {
            tx.execute(
                "INSERT INTO users (telegram_id, username, first_name, is_admin, language_code) VALUES (?1, ?2, 'F', ?3, 'de')",
                rusqlite::params![i + 10, format!("u{i}"), i % 7 == 0],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO command_log (user_id, command) VALUES (last_insert_rowid(), '/start')",
                [],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let fingerprint = |conn: &Connection| -> (i64, i64, String) {
        conn.query_row(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM command_log c JOIN users u ON u.id = c.user_id),
                    (SELECT group_concat(id || ':' || telegram_id || ':' || username || ':' || is_admin || ':' || language_code, ',') FROM users)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    let before = fingerprint(&Connection::open(&path).unwrap());
    let mut db = Database::open(&path).unwrap();
    assert_eq!(
        db.upgrade(|_| {}).unwrap().applied,
        (4..=head()).collect::<Vec<_>>()
    );
    let conn = db.connection();
    assert_eq!(fingerprint(conn), before);
    assert_eq!((before.0, before.1), (2000, 2000));
    let violations: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(violations, 0);
    let foreign_keys: i64 = conn
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(foreign_keys, 1, "foreign keys are back on");
    // The reference still works: deleting a user cascades to its log rows.
    conn.execute("DELETE FROM users WHERE telegram_id = 10", [])
        .unwrap();
    let left: i64 = conn
        .query_row("SELECT count(*) FROM command_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 1999);
}

#[test]
fn rows_whose_parent_is_gone_stop_the_rebuild_and_are_named() {
    // SQLAlchemy leaves SQLite's foreign keys off, so an old app can delete a user and keep
    // their log rows: the rebuild must refuse, roll back whole and say which table.
    let dir = TempDir::new("orphans");
    let path = dir.file("bot.db");
    at_revision(&path, 3);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF;
         INSERT INTO users (id, telegram_id) VALUES (1, 10), (2, 20);
         INSERT INTO command_log (user_id, command) VALUES (1, '/start'), (2, '/start'), (2, '/help'), (3, '/x');
         DELETE FROM users WHERE id = 2;",
    )
    .unwrap();
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let mut db = Database::open(&path).unwrap();
    let err = db.upgrade(|_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::ForeignKeys { count: 3, table, at: 3, .. } if table == "command_log"),
        "{err:?}"
    );
    let message = chain(&err);
    assert!(message.contains("3 rows of table command_log"), "{message}");
    assert!(message.contains("PRAGMA foreign_key_check"), "{message}");
    drop(db);
    assert_eq!(state(&path), (State::Behind, Some(3)));
    assert_unchanged(&path, &before);
}

#[test]
fn what_writing_the_history_row_does_is_checked_too() {
    // A history table someone gave a column whose default refers to no user: the row the
    // engine writes for revision 4 would break a foreign key, so the step is refused whole.
    let dir = TempDir::new("history-fk");
    let path = dir.file("bot.db");
    at_revision(&path, 3);
    let conn = Connection::open(&path).unwrap();
    // Rebuilt so that the rows already there hold NULL (ADD COLUMN would give them 999).
    conn.execute_batch(&format!(
        "PRAGMA foreign_keys = OFF;
         CREATE TABLE new_history (version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,
             applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
             how TEXT NOT NULL CHECK (how IN ('applied', 'stamped', 'forced')),
             by_user INTEGER DEFAULT 999 REFERENCES users (id));
         INSERT INTO new_history SELECT version, name, checksum, applied_at, how, NULL FROM {HISTORY_TABLE};
         DROP TABLE {HISTORY_TABLE};
         ALTER TABLE new_history RENAME TO {HISTORY_TABLE};"
    ))
    .unwrap();
    assert_eq!(state(&path), (State::Behind, Some(3)));
    drop(conn);
    let before = std::fs::read(&path).unwrap();
    let mut db = Database::open(&path).unwrap();
    let err = db.upgrade(|_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::ForeignKeys { table, at: 3, .. } if table == HISTORY_TABLE),
        "{err:?}"
    );
    drop(db);
    assert_unchanged(&path, &before);
}

#[test]
fn a_failing_migration_is_rolled_back_whole() {
    let dir = TempDir::new("failing");
    let path = dir.file("bot.db");
    at_revision(&path, 3);
    // The rebuild's CHECK refuses an is_admin the old BOOLEAN column allowed.
    sql(
        &path,
        "INSERT INTO users (telegram_id, first_name, is_admin) VALUES (1, 'A', 0), (2, 'B', 2);",
    );
    let mut db = Database::open(&path).unwrap();
    let error = db.upgrade(|_| {}).unwrap_err();
    assert!(
        matches!(
            error,
            Error::MigrationFailed {
                file: "0004_users_rebuild.up.sql",
                at: 3,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        chain(&error).contains("CHECK constraint failed"),
        "{}",
        chain(&error)
    );
    let status = db.status().unwrap();
    assert_eq!(
        (status.state, status.version),
        (State::Behind, Some(3)),
        "{:?}",
        status.difference
    );
    let tables: i64 = db
        .connection()
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'new_users'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "nothing of the failed step stays");
}

#[test]
fn dry_run_plans_change_nothing() {
    let dir = TempDir::new("dryrun");
    let path = dir.file("bot.db");
    unstamped_at(&path, 1);
    let before = std::fs::read(&path).unwrap();
    let db = Database::open_read_only(&path).unwrap().unwrap();
    assert_eq!(db.plan_adopt().unwrap(), 1);
    assert!(db.check_stamp(1, false).unwrap().is_empty());
    assert!(matches!(db.plan_upgrade(), Err(Error::Unstamped { .. })));
    drop(db);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let mut db = Database::open(&path).unwrap();
    db.adopt().unwrap();
    let plan = db.plan_upgrade().unwrap();
    assert_eq!(
        plan.steps.iter().map(|s| s.version).collect::<Vec<_>>(),
        (2..=head()).collect::<Vec<_>>()
    );
    assert!(
        plan.steps[0]
            .sql
            .contains("ALTER TABLE users ADD COLUMN language_code")
    );
    assert_eq!(
        db.status().unwrap().version,
        Some(1),
        "planning applied nothing"
    );
}

#[test]
fn two_upgrades_started_together_apply_each_migration_once() {
    let dir = TempDir::new("race");
    let path = dir.file("bot.db");
    old_app_database(&path, 5000);
    Database::open(&path).unwrap().adopt().unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut db = Database::open(&path).unwrap();
                barrier.wait();
                db.upgrade(|_| {}).unwrap().applied
            })
        })
        .collect();
    let mut applied: Vec<u32> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    applied.sort();
    assert_eq!(
        applied,
        (2..=head()).collect::<Vec<_>>(),
        "each migration applied exactly once"
    );
    let db = Database::open(&path).unwrap();
    assert_eq!(db.status().unwrap().state, State::Current);
    assert_eq!(db.history().unwrap().unwrap().len() as u32, head());
}

#[test]
fn a_damaged_file_is_refused_without_being_written() {
    let dir = TempDir::new("damaged");
    let path = dir.file("bot.db");
    old_app_database(&path, 3000);
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    let cut = std::fs::read(&path).unwrap();
    let error = Database::open(&path)
        .err()
        .expect("a file cut short is refused");
    assert!(
        matches!(
            error,
            Error::Truncated {
                expected: Some(_),
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("cut short"), "{error}");
    assert!(error.is_bad_file());
    assert_eq!(std::fs::read(&path).unwrap(), cut);

    // Garbage over the middle pages, with an intact header.
    let mut scribbled = full.clone();
    for byte in &mut scribbled[8192..full.len() - 4096] {
        *byte = 0x5a;
    }
    std::fs::write(&path, &scribbled).unwrap();
    let error = Database::open(&path)
        .err()
        .expect("a damaged file is refused");
    assert!(error.is_bad_file(), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), scribbled);
}

#[test]
fn backups_are_checked_and_name_their_revision_and_bad_copies_are_not_restored() {
    let dir = TempDir::new("checked");
    let path = dir.file("bot.db");
    at_revision(&path, 2);
    let info = Database::open(&path)
        .unwrap()
        .backup_to(&dir.file("copies/b.db"))
        .unwrap();
    assert_eq!((info.revision, info.state), (Some(2), State::Behind));
    assert!(info.bytes > 0);
    let bad = dir.file("bad.db");
    std::fs::write(&bad, b"SQLite format 3\0 but nothing after").unwrap();
    let before = std::fs::read(&path).unwrap();
    let error = Database::open(&path)
        .unwrap()
        .restore_from(&bad, false)
        .unwrap_err();
    assert!(error.is_bad_file(), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_copy_is_quick_checked_and_names_its_revision() {
    let dir = TempDir::new("quick");
    let path = dir.file("bot.db");
    old_app_database(&path, 3000);
    let copy = dir.file("copy.db");
    let bytes = Database::open(&path).unwrap().snapshot_to(&copy).unwrap();
    let info = migrations::quick_inspect_copy(&copy).unwrap();
    assert_eq!(
        (info.state, info.revision, info.bytes),
        (State::Unstamped, Some(1), bytes)
    );
    // Garbage over the table's pages, the schema page intact: found by reading every page.
    let mut scribbled = std::fs::read(&copy).unwrap();
    let len = scribbled.len();
    for byte in &mut scribbled[2 * 4096..len - 4096] {
        *byte = 0x5a;
    }
    std::fs::write(&copy, &scribbled).unwrap();
    let error = migrations::quick_inspect_copy(&copy).unwrap_err();
    assert!(error.is_bad_file(), "{error}");
    std::fs::write(&copy, &scribbled[..len / 2]).unwrap();
    let error = migrations::quick_inspect_copy(&copy).unwrap_err();
    assert!(matches!(error, Error::Truncated { .. }), "{error}");
}

/// The SQL that records revision `version` in the history, as the engine does.
fn history_row(version: u32, how: &str) -> String {
    let m = &MIGRATIONS[version as usize - 1];
    format!(
        "INSERT INTO {HISTORY_TABLE} (version, name, checksum, how) VALUES ({}, '{}', '{}', '{how}');",
        m.version,
        m.name,
        m.checksum()
    )
}

/// What another process does while `work` waits: a connection of its own takes the write lock,
/// `work` starts in a thread (opening and checking the database, reading its state), and once
/// `work` waits for the lock, the other connection runs `meanwhile` and commits. Returns what
/// `work` returned: a decision taken before the lock cannot know of `meanwhile`.
fn while_another_process_writes<T: Send + 'static>(
    path: &Path,
    meanwhile: &str,
    work: impl FnOnce(&mut Database) -> T + Send + 'static,
) -> T {
    let holder = Connection::open(path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (ready, opened) = std::sync::mpsc::channel();
    let path = path.to_owned();
    let worker = std::thread::spawn(move || {
        let mut db = Database::open(&path).unwrap();
        ready.send(()).unwrap();
        work(&mut db)
    });
    opened.recv().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!worker.is_finished(), "the work waits for the write lock");
    holder.execute_batch(meanwhile).unwrap();
    holder.execute_batch("COMMIT").unwrap();
    worker.join().unwrap()
}

#[test]
fn adopt_decides_under_the_lock() {
    let dir = TempDir::new("adopt-lock");
    let path = dir.file("bot.db");
    old_app_database(&path, 10);
    let adopted = while_another_process_writes(
        &path,
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT)",
        |db| db.adopt(),
    );
    match adopted {
        Err(Error::NoMatch { extra_tables, .. }) => assert_eq!(extra_tables, ["settings"]),
        other => panic!("{other:?}"),
    }
    assert!(versions(&path).is_empty(), "nothing was recorded");
}

#[test]
fn stamp_decides_under_the_lock() {
    let dir = TempDir::new("stamp-lock");
    let path = dir.file("bot.db");
    at_revision(&path, 1);
    let upgrade_to_2 = format!("{}{}", MIGRATIONS[1].up, history_row(2, "applied"));
    let stamped = while_another_process_writes(&path, &upgrade_to_2, |db| db.stamp(1, false));
    assert!(
        matches!(stamped, Err(Error::StampMismatch { version: 1, .. })),
        "{stamped:?}"
    );
    assert_eq!(state(&path), (State::Behind, Some(2)));
    assert_eq!(versions(&path), [1, 2]);
}

#[test]
fn an_upgrade_applies_what_follows_the_revision_found_under_the_lock() {
    let dir = TempDir::new("upgrade-lock");
    let path = dir.file("bot.db");
    at_revision(&path, 2);
    let upgrade_to_3 = format!("{}{}", MIGRATIONS[2].up, history_row(3, "applied"));
    let upgrade =
        while_another_process_writes(&path, &upgrade_to_3, |db| db.upgrade(|_| {}).unwrap());
    assert_eq!(
        (upgrade.from, upgrade.to, upgrade.applied),
        (Some(3), head(), (4..=head()).collect())
    );
    assert_eq!(state(&path), (State::Current, Some(head())));
    assert_eq!(versions(&path), (1..=head()).collect::<Vec<_>>());
}

#[test]
fn a_downgrade_stops_when_another_process_moved_the_database() {
    let dir = TempDir::new("downgrade-lock");
    let path = dir.file("bot.db");
    at_revision(&path, 3);
    let upgrade_to_4 = format!("{}{}", MIGRATIONS[3].up, history_row(4, "applied"));
    let downgrade = while_another_process_writes(&path, &upgrade_to_4, |db| {
        db.downgrade(2, |_| panic!("nothing may be undone"))
    });
    match downgrade {
        Err(error @ Error::Moved { .. }) => {
            assert!(error.is_refusal());
            assert!(
                error
                    .to_string()
                    .contains("at revision 4, not 3 as planned: another process changed it meanwhile; nothing was undone"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    let at_4 = if head() == 4 {
        State::Current
    } else {
        State::Behind
    };
    assert_eq!(state(&path), (at_4, Some(4)));
}

#[test]
fn adopting_upgrades_in_two_threads_held_at_the_lock_adopt_once() {
    let dir = TempDir::new("adopt-race");
    let path = dir.file("bot.db");
    old_app_database(&path, 2000);
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut db = Database::open(&path).unwrap();
                let adopted = db.adopt_if_unstamped().unwrap();
                (adopted, db.upgrade(|_| {}).unwrap())
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(workers.iter().all(|w| !w.is_finished()));
    holder.execute_batch("COMMIT").unwrap();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let adopted: Vec<u32> = results.iter().filter_map(|(a, _)| *a).collect();
    let mut applied: Vec<u32> = results
        .iter()
        .flat_map(|(_, u)| u.applied.clone())
        .collect();
    applied.sort();
    assert_eq!(adopted, [1]);
    assert_eq!(applied, (2..=head()).collect::<Vec<_>>());
    assert_eq!(state(&path), (State::Current, Some(head())));
    assert_eq!(versions(&path), (1..=head()).collect::<Vec<_>>());
}

#[test]
fn restore_decides_under_the_lock() {
    for wal in [false, true] {
        let dir = TempDir::new(&format!("restore-lock-{wal}"));
        let path = dir.file("bot.db");
        let conn = Connection::open(&path).unwrap();
        if wal {
            conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        }
        drop(conn);
        let empty = dir.file("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let source = empty.clone();
        let restored = while_another_process_writes(
            &path,
            "CREATE TABLE users (id INTEGER PRIMARY KEY); INSERT INTO users VALUES (1);",
            move |db| db.restore_from(&source, false),
        );
        match restored {
            Err(Error::EmptySource {
                zero_bytes: true,
                live_tables: 1,
                ..
            }) => {}
            other => panic!("wal {wal}: {other:?}"),
        }
        let users: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(users, 1, "wal {wal}");
        // Forced, the empty file replaces it, and what it replaced is kept.
        let forced = Database::open(&path)
            .unwrap()
            .restore_from(&empty, true)
            .unwrap();
        assert_eq!(state(&path).0, State::Empty, "wal {wal}");
        let kept: i64 = Connection::open(forced.replaced.unwrap())
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1, "wal {wal}");
    }
}

/// The files a writer killed mid-transaction leaves: `crashed` and its hot journal, copied
/// while a writer with a tiny cache has spilled uncommitted pages into the database file.
fn hot_journal_left_at(dir: &TempDir, crashed: &Path) {
    let live = dir.file("live.db");
    old_app_database(&live, 50);
    let conn = Connection::open(&live).unwrap();
    conn.execute_batch("PRAGMA cache_size = 8; BEGIN").unwrap();
    for i in 0..20_000 {
        conn.execute(
            "INSERT INTO users (telegram_id, first_name) VALUES (?1, 'never committed')",
            [10_000_000 + i],
        )
        .unwrap();
    }
    for suffix in ["", "-journal"] {
        std::fs::copy(
            format!("{}{suffix}", live.display()),
            format!("{}{suffix}", crashed.display()),
        )
        .unwrap();
    }
}

#[test]
fn a_hot_journal_is_named_by_a_read_only_open_and_rolled_back_by_recover() {
    let dir = TempDir::new("hot");
    let crashed = dir.file("crashed.db");
    hot_journal_left_at(&dir, &crashed);
    let journal = dir.file("crashed.db-journal");
    let error = Database::open_read_only(&crashed).err().unwrap();
    assert!(
        matches!(
            error,
            Error::NeedsRecovery {
                kind: migrations::Recovery::Journal,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        chain(&error).contains(&format!(
            "a hot journal {} lies beside it",
            journal.display()
        )),
        "{}",
        chain(&error)
    );
    assert!(!chain(&error).contains("readonly"));
    assert_eq!(
        Database::recover(&crashed).unwrap(),
        Some(migrations::Recovery::Journal)
    );
    assert!(std::fs::metadata(&journal).map_or(true, |m| m.len() == 0));
    assert_eq!(Database::recover(&crashed).unwrap(), None, "once");
    let db = Database::open_read_only(&crashed).unwrap().unwrap();
    db.quick_check().unwrap();
    let users: i64 = db
        .connection()
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(users, 50, "the committed rows only");
}

#[test]
fn open_recovers_a_hot_journal_before_it_checks_the_file() {
    let dir = TempDir::new("hot-open");
    let crashed = dir.file("crashed.db");
    hot_journal_left_at(&dir, &crashed);
    let mut db = Database::open(&crashed).unwrap();
    assert_eq!(db.recovered(), Some(migrations::Recovery::Journal));
    assert_eq!(db.adopt().unwrap(), 1);
}

#[test]
fn a_wal_no_process_has_open_is_folded_into_the_file() {
    let dir = TempDir::new("wal-left");
    let live = dir.file("live.db");
    let crashed = dir.file("crashed.db");
    let conn = Connection::open(&live).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    conn.execute_batch(MIGRATIONS[0].up).unwrap();
    conn.execute_batch("INSERT INTO users (telegram_id, first_name) VALUES (1, 'in the WAL only')")
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        std::fs::copy(
            format!("{}{suffix}", live.display()),
            format!("{}{suffix}", crashed.display()),
        )
        .unwrap();
    }
    drop(conn);
    let wal = dir.file("crashed.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    assert_eq!(
        Database::recover(&crashed).unwrap(),
        Some(migrations::Recovery::Wal)
    );
    assert!(!wal.exists());
    let status = status(&crashed);
    assert_eq!((status.state, status.matches), (State::Unstamped, Some(1)));
    // A WAL another connection has open (the bot running) is left to it.
    let open = Connection::open(&crashed).unwrap();
    open.execute_batch("INSERT INTO users (telegram_id, first_name) VALUES (2, 'b')")
        .unwrap();
    assert!(wal.exists());
    assert_eq!(Database::recover(&crashed).unwrap(), None);
    assert!(wal.exists());
}

#[test]
fn restore_refuses_an_empty_source_over_tables_and_keeps_what_it_replaces() {
    let dir = TempDir::new("restore-keep");
    let path = dir.file("bot.db");
    old_app_database(&path, 30);
    let zero = dir.file("zero.db");
    std::fs::write(&zero, b"").unwrap();
    let no_tables = dir.file("no-tables.db");
    sql(&no_tables, "PRAGMA user_version = 7");
    let before = std::fs::read(&path).unwrap();
    for (source, zero_bytes) in [(&zero, true), (&no_tables, false)] {
        let error = Database::open(&path)
            .unwrap()
            .restore_from(source, false)
            .unwrap_err();
        assert!(
            matches!(error, Error::EmptySource { zero_bytes: z, live_tables: 1, .. } if z == zero_bytes),
            "{error}"
        );
        assert!(error.is_refusal());
        assert_eq!(std::fs::read(&path).unwrap(), before, "unchanged");
    }
    let names = |dir: &TempDir| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&dir),
        ["bot.db", "no-tables.db", "zero.db"],
        "nothing kept"
    );

    let backup = dir.file("backup.db");
    old_app_database(&backup, 5);
    let mut db = Database::open(&path).unwrap();
    let restored = db.restore_from(&backup, false).unwrap();
    let kept = restored
        .replaced
        .clone()
        .expect("the replaced database is kept");
    let name = kept.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("bot.db.replaced-"), "{name}");
    let count = |path: &Path| -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(
        db.connection()
            .query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        5
    );
    drop(db);
    assert_eq!((count(&path), count(&kept)), (5, 30));

    // --force restores an empty file over tables, and keeps them too.
    let forced = Database::open(&path)
        .unwrap()
        .restore_from(&zero, true)
        .unwrap();
    let kept_again = forced.replaced.unwrap();
    assert_ne!(kept_again, kept);
    assert_eq!(count(&kept_again), 5);
    assert_eq!(forced.info.state, State::Empty);
    assert_eq!(state(&path).0, State::Empty);
}

#[test]
fn restore_into_a_wal_database_keeps_what_it_replaces() {
    let dir = TempDir::new("restore-wal");
    let path = dir.file("bot.db");
    old_app_database(&path, 30);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    let backup = dir.file("backup.db");
    old_app_database(&backup, 5);
    let restored = Database::open(&path)
        .unwrap()
        .restore_from(&backup, false)
        .unwrap();
    let count = |path: &Path| -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!((count(&path), count(&restored.replaced.unwrap())), (5, 30));
}

#[test]
fn a_folder_a_missing_folder_and_a_short_file_are_named() {
    let dir = TempDir::new("places");
    let error = Database::open_read_only(&dir.0).err().unwrap();
    assert!(
        matches!(error, Error::Folder { .. }) && error.is_bad_file(),
        "{error}"
    );
    let missing = dir.file("no/such/folder/bot.db");
    for error in [
        Database::open_read_only(&missing).err().unwrap(),
        Database::open(&missing).err().unwrap(),
    ] {
        assert!(matches!(error, Error::MissingFolder { .. }), "{error}");
        assert!(
            error.to_string().contains(&format!(
                "the folder {} does not exist",
                dir.file("no/such/folder").display()
            )),
            "{error}"
        );
    }
    assert!(!dir.file("no").exists(), "nothing was created");
    let short = dir.file("short.db");
    std::fs::write(&short, b"SQLite format 3\0\x10\x00").unwrap();
    let error = Database::open(&short).err().unwrap();
    assert!(
        matches!(
            error,
            Error::Truncated {
                len: 18,
                expected: None,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("it is 18 bytes, shorter than the 100-byte header"),
        "{error}"
    );
    assert_eq!(std::fs::read(&short).unwrap(), b"SQLite format 3\0\x10\x00");
}

#[test]
fn a_forced_stamp_is_named_when_the_schema_differs() {
    let dir = TempDir::new("forced");
    let path = dir.file("bot.db");
    unstamped_at(&path, 1);
    sql(
        &path,
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT)",
    );
    let mut db = Database::open(&path).unwrap();
    let difference = db.stamp(1, true).unwrap();
    assert_eq!(difference.len(), 1, "{difference:?}");
    let status = db.status().unwrap();
    assert_eq!(
        (status.state, status.forced, status.extra_tables.clone()),
        (State::Drifted, Some(1), vec!["settings".to_string()])
    );
    let error = db.upgrade(|_| {}).unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("Revision 1 was stamped with --force over a schema that differed"),
        "{text}"
    );
    assert!(
        !text.contains("Someone changed the schema by hand"),
        "{text}"
    );
}

/// In WAL mode the main file's header may name more pages than the file has (a checkpoint
/// writes page 1 before the file grows, or fails on a full disk): the WAL holds them, and
/// SQLite reads it fine. That is not damage.
#[test]
fn a_wal_database_whose_header_names_pages_the_file_has_not_yet_is_not_damaged() {
    let dir = TempDir::new("wal-header");
    let path = dir.file("wal.db");
    let writer = Connection::open(&path).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t (x); INSERT INTO t VALUES (1); PRAGMA wal_checkpoint(TRUNCATE);
             CREATE TABLE u (y); INSERT INTO u SELECT randomblob(500) FROM t;",
        )
        .unwrap();
    // The main file's header now says 10 pages more than it has.
    let mut bytes = std::fs::read(&path).unwrap();
    let pages = u32::from_be_bytes(bytes[28..32].try_into().unwrap()) + 10;
    bytes[28..32].copy_from_slice(&pages.to_be_bytes());
    let counter: [u8; 4] = bytes[24..28].try_into().unwrap();
    bytes[92..96].copy_from_slice(&counter);
    std::fs::write(&path, &bytes).unwrap();
    let db = Database::open_read_only(&path)
        .unwrap_or_else(|e| panic!("{}", chain(&e)))
        .unwrap();
    assert_eq!(db.status().unwrap().state, State::Unstamped);
    drop(writer);
}

/// SQLITE_FULL (a checkpoint or a recovery on a full disk) says the disk is full.
#[test]
fn a_full_disk_is_named() {
    let error = Error::from_sqlite(
        Path::new("/data/bot.db"),
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(13), None),
    );
    let text = chain(&error);
    assert!(text.contains("the disk holding /data is full"), "{text}");
}
