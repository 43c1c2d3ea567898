//! `bot db find-databases` and `bot db import` as processes: what is found and skipped, what is
//! imported and refused, a hot journal of a writer SIGKILLed mid-transaction and a WAL without
//! its `-shm` recovered, and the old database never written.

mod common;

use common::{
    Dir, assert_stderr_has, bot, helper_connection, helper_process, insert_users,
    kill_once_in_its_transaction, ok, run, show, sql, write_rows_that_never_commit,
};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rusqlite::{Connection, OpenFlags};
use serde_json::json;

const FAILED: i32 = 1;
const REFUSED: i32 = 3;
const BAD_FILE: i32 = 4;

const REVISION_1: &str = include_str!("../../migrations/sql/0001_initial.up.sql");

/// Set for the writer process `writer_killed_mid_transaction` runs as: the database it writes.
const WRITER_ENV: &str = "BOT_IMPORT_TEST_WRITER";

fn fails(db: &Path, args: &[&str], code: i32, needles: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--json");
    let output = run(db, &all);
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}: {}",
        show(&output)
    );
    let object: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&output)));
    assert_eq!(object["exit_code"], code);
    assert_eq!(object["database"], db.display().to_string());
    let error = object["error"].as_str().unwrap().to_string();
    for needle in needles {
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
    assert!(
        !error.contains("attempt to write a readonly database"),
        "{error}"
    );
    error
}

/// The old app's database as its create-all left it, with `users` rows.
fn old_database(db: &Path, users: i64) {
    sql(db, REVISION_1);
    let conn = Connection::open(db).unwrap();
    for i in 0..users {
        conn.execute(
            "INSERT INTO users (telegram_id, first_name) VALUES (?1, 'someone')",
            [1000 + i],
        )
        .unwrap();
    }
}

fn count_users(db: &Path) -> i64 {
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap()
}

fn integrity(db: &Path) -> String {
    Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn with_suffix(db: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", db.display()))
}

type Fingerprint = Vec<(PathBuf, Option<(Vec<u8>, SystemTime)>)>;

/// The bytes and mtimes of a database and its -journal, -wal and -shm (None: absent).
fn fingerprint(db: &Path) -> Fingerprint {
    ["", "-journal", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let path = with_suffix(db, suffix);
            let seen = std::fs::read(&path)
                .ok()
                .map(|bytes| (bytes, std::fs::metadata(&path).unwrap().modified().unwrap()));
            (path, seen)
        })
        .collect()
}

fn assert_unchanged(before: &Fingerprint, db: &Path) {
    for ((path, was), (_, now)) in before.iter().zip(fingerprint(db)) {
        match (was, &now) {
            (None, None) => {}
            (Some((bytes, mtime)), Some((now_bytes, now_mtime))) => {
                assert!(bytes == now_bytes, "{} was written", path.display());
                assert_eq!(mtime, now_mtime, "{} was touched", path.display());
            }
            _ => panic!(
                "{} {}",
                path.display(),
                if now.is_some() {
                    "appeared"
                } else {
                    "disappeared"
                }
            ),
        }
    }
}

/// The names in a folder (to see that nothing, e.g. a staging folder, was left there).
fn names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn find_databases_goes_by_the_header_skips_sidecars_and_symlinks_and_lists_each_file_once() {
    let dir = Dir::new("find");
    let app = dir.folder("app");
    let main = app.join("bot_database.db");
    old_database(&main, 3);
    // Sidecars are skipped by name, even when they start like a database.
    let mut fake = b"SQLite format 3\0".to_vec();
    fake.extend_from_slice(&[7; 600]);
    std::fs::write(with_suffix(&main, "-journal"), &fake).unwrap();
    std::fs::write(app.join("settings.db"), "BOT_TOKEN=123\n".repeat(10)).unwrap();
    std::fs::write(app.join("notes.txt"), "SQLite format 2 is not it").unwrap();
    let nested = dir.folder("app/nested/deeper");
    sql(&nested.join("old.db"), "PRAGMA user_version = 7");
    std::fs::write(with_suffix(&nested.join("old.db"), "-wal"), &fake).unwrap();
    std::fs::write(with_suffix(&nested.join("old.db"), "-shm"), &fake).unwrap();
    // Level 6 (like `find -maxdepth 6`) is searched, level 7 is not.
    let level_5 = dir.folder("app/1/2/3/4/5");
    sql(&level_5.join("six.db"), REVISION_1);
    let level_6 = dir.folder("app/1/2/3/4/5/6");
    sql(&level_6.join("seven.db"), REVISION_1);
    // Symlinks inside a folder are not followed.
    let elsewhere = dir.folder("elsewhere");
    sql(&elsewhere.join("other.db"), REVISION_1);
    std::os::unix::fs::symlink(&elsewhere, app.join("link")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("other.db"), app.join("link.db")).unwrap();

    let missing = dir.0.join("missing");
    let found = ok(
        &dir.0.join("unused.db"),
        &[
            "db",
            "find-databases",
            app.to_str().unwrap(),
            missing.to_str().unwrap(),
            nested.to_str().unwrap(),
            main.to_str().unwrap(),
        ],
    );
    let bytes = |path: &Path| std::fs::metadata(path).unwrap().len();
    assert_eq!(
        found,
        json!({
            "databases": [
                {"path": level_5.join("six.db"), "bytes": bytes(&level_5.join("six.db")), "journal": false, "wal": false},
                {"path": main, "bytes": bytes(&main), "journal": true, "wal": false},
                {"path": nested.join("old.db"), "bytes": bytes(&nested.join("old.db")), "journal": false, "wal": true},
            ],
            "searched": [app, nested, main],
            "missing": [missing],
        })
    );
    assert!(!dir.0.join("unused.db").exists());

    // The plain output: one line per database; the missing path on stderr.
    let output = run(
        &dir.0.join("unused.db"),
        &[
            "db",
            "find-databases",
            elsewhere.to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", show(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with(&format!("{} (", elsewhere.join("other.db").display())),
        "{stdout}"
    );
    assert_stderr_has(&output, "no such file or folder");
}

#[test]
fn a_create_all_database_is_imported_and_left_unchanged() {
    let dir = Dir::new("import");
    let source = dir.folder("app").join("bot_database.db");
    old_database(&source, 50);
    let before = fingerprint(&source);
    let data = dir.folder("data");
    let target = data.join("bot_database.db");

    let imported = ok(&target, &["db", "import", source.to_str().unwrap()]);
    let bytes = std::fs::metadata(&target).unwrap().len();
    let status = ok(&target, &["db", "status"]);
    assert_eq!(
        imported,
        json!({
            "source": source,
            "bytes": bytes,
            "recovered": null,
            "users": 50,
            "tables": ["users"],
            "status": status,
            "target": target,
            "check_only": false,
        })
    );
    assert_eq!(
        (
            status["state"].as_str(),
            status["matches"].as_u64(),
            status["version"].as_u64()
        ),
        (Some("unstamped"), Some(1), None)
    );
    assert_eq!(count_users(&target), 50);
    assert_eq!(integrity(&target), "ok");
    assert_eq!(names(&data), ["bot_database.db"], "no staging folder left");
    assert_unchanged(&before, &source);

    // An empty file as the target is fine; the plain output is one sentence.
    let target = dir.folder("data2").join("bot_database.db");
    std::fs::write(&target, "").unwrap();
    let output = run(&target, &["db", "import", source.to_str().unwrap()]);
    assert!(output.status.success(), "{}", show(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "imported {}: 50 users, tables users, matches revision 1; now at {}\n",
            source.display(),
            target.display()
        )
    );
    assert_eq!(count_users(&target), 50);
    assert_unchanged(&before, &source);
}

#[test]
fn owner_is_given_the_imported_file_and_its_folder_or_the_copy_is_removed_again() {
    let dir = Dir::new("owner");
    let source = dir.folder("app").join("bot_database.db");
    old_database(&source, 5);
    let data = dir.folder("data");
    let target = data.join("bot_database.db");
    let args = [
        "db",
        "import",
        source.to_str().unwrap(),
        "--owner",
        "4321:4322",
    ];
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if root {
        assert_eq!(ok(&target, &args)["users"], 5);
        let (file, folder) = (
            std::fs::metadata(&target).unwrap(),
            std::fs::metadata(&data).unwrap(),
        );
        assert_eq!(
            (file.uid(), file.gid(), folder.uid(), folder.gid()),
            (4321, 4322, 4321, 4322)
        );
        assert_eq!(names(&data), ["bot_database.db"]);
    } else {
        fails(
            &target,
            &args,
            FAILED,
            &["cannot give", "4321:4322", "was removed again"],
        );
        assert!(names(&data).is_empty(), "the half-made target was removed");
    }
    fails(
        &dir.0.join("other.db"),
        &["db", "import", source.to_str().unwrap(), "--owner", "bot"],
        FAILED,
        &["--owner takes UID:GID"],
    );
    assert!(!dir.0.join("other.db").exists());
}

#[test]
fn check_only_copies_to_a_temporary_file_and_writes_no_target() {
    let dir = Dir::new("check");
    let source = dir.folder("app").join("bot_database.db");
    old_database(&source, 50);
    sql(
        &source,
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL); INSERT INTO alembic_version VALUES ('abc'); CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
    );
    let before = fingerprint(&source);
    let data = dir.folder("data");
    let target = data.join("bot_database.db");
    let tmp = dir.folder("tmp");

    let output = bot(
        &target,
        &[
            "db",
            "import",
            source.to_str().unwrap(),
            "--check-only",
            "--json",
        ],
    )
    .env("TMPDIR", &tmp)
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", show(&output));
    let checked: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(checked["check_only"], true);
    assert_eq!(checked["target"], json!(null));
    assert_eq!(checked["users"], 50);
    assert_eq!(checked["tables"], json!(["notes", "users"]));
    assert_eq!(checked["status"]["state"], "foreign");
    assert_eq!(checked["status"]["database"], json!(source));
    assert_eq!(checked["bytes"], checked["status"]["bytes"]);
    assert!(checked["bytes"].as_u64().unwrap() >= 8192, "{checked}");
    assert!(names(&data).is_empty(), "no target, no staging folder");
    assert!(names(&tmp).is_empty(), "the temporary copy is removed");
    assert_unchanged(&before, &source);

    let output = run(
        &target,
        &["db", "import", source.to_str().unwrap(), "--check-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "can import {}: 50 users, tables notes, users, matches no revision (closest 1); nothing was written (--check-only)\n",
            source.display()
        )
    );
    assert!(names(&data).is_empty());
}

#[test]
fn a_target_that_holds_tables_is_refused_and_both_files_stay_as_they_were() {
    let dir = Dir::new("occupied");
    let source = dir.folder("app").join("bot_database.db");
    old_database(&source, 50);
    let data = dir.folder("data");
    let target = data.join("bot_database.db");
    ok(&target, &["db", "upgrade"]);
    let (source_before, target_before) = (fingerprint(&source), fingerprint(&target));

    for args in [
        vec!["db", "import", source.to_str().unwrap()],
        vec!["db", "import", source.to_str().unwrap(), "--owner", "1:1"],
    ] {
        fails(
            &target,
            &args,
            REFUSED,
            &[
                &format!("the target {} already holds a database", target.display()),
                "nothing was changed",
            ],
        );
    }
    assert_unchanged(&source_before, &source);
    assert_unchanged(&target_before, &target);
    assert_eq!(names(&data), ["bot_database.db"]);

    // A database with no tables is as good as none.
    std::fs::remove_file(&target).unwrap();
    sql(&target, "PRAGMA user_version = 3");
    assert!(std::fs::metadata(&target).unwrap().len() > 0);
    assert_eq!(
        ok(&target, &["db", "import", source.to_str().unwrap()])["users"],
        50
    );
    assert_eq!(count_users(&target), 50);
}

#[test]
fn a_source_that_is_not_sqlite_or_is_damaged_is_refused_and_nothing_is_created() {
    let dir = Dir::new("bad");
    let app = dir.folder("app");
    let data = dir.folder("data");
    let target = data.join("bot_database.db");

    let text = app.join("bot_database.db");
    std::fs::write(&text, "BOT_TOKEN=not a database\n".repeat(20)).unwrap();
    let before = fingerprint(&text);
    for extra in [None, Some("--check-only")] {
        let mut args = vec!["db", "import", text.to_str().unwrap()];
        args.extend(extra);
        fails(
            &target,
            &args,
            BAD_FILE,
            &[&format!("{}: not a SQLite database", text.display())],
        );
    }
    assert_unchanged(&before, &text);

    let damaged = app.join("damaged.db");
    old_database(&damaged, 3000);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let len = bytes.len();
    for byte in &mut bytes[4096..len - 4096] {
        *byte = 0xa5;
    }
    std::fs::write(&damaged, &bytes).unwrap();
    let before = fingerprint(&damaged);
    fails(
        &target,
        &["db", "import", damaged.to_str().unwrap()],
        BAD_FILE,
        &[&format!(
            "{}: the database file is damaged",
            damaged.display()
        )],
    );
    assert_unchanged(&before, &damaged);

    fails(
        &target,
        &["db", "import", app.join("nothing.db").to_str().unwrap()],
        FAILED,
        &["nothing.db", "find-databases"],
    );
    assert!(names(&data).is_empty(), "no target, no staging folder");
}

#[test]
fn a_source_with_no_tables_is_refused_as_nothing_to_import() {
    let dir = Dir::new("notables");
    let app = dir.folder("app");
    let data = dir.folder("data");
    let target = data.join("bot_database.db");

    let zero = app.join("zero.db");
    std::fs::write(&zero, "").unwrap();
    let header_only = app.join("header_only.db");
    sql(&header_only, "PRAGMA user_version = 5");
    assert!(std::fs::metadata(&header_only).unwrap().len() > 0);
    for source in [&zero, &header_only] {
        let before = fingerprint(source);
        for extra in [None, Some("--check-only")] {
            let mut args = vec!["db", "import", source.to_str().unwrap()];
            args.extend(extra);
            fails(
                &target,
                &args,
                REFUSED,
                &[&format!(
                    "{} has no tables: nothing to import",
                    source.display()
                )],
            );
        }
        assert_unchanged(&before, source);
    }
    assert!(names(&data).is_empty(), "no target, no staging folder");
}

/// Not a test on its own: the writer process that
/// `a_hot_journal_left_by_a_killed_writer_is_rolled_back_in_a_staged_copy` starts (this test
/// binary, run for this function alone) and SIGKILLs in the middle of its transaction.
#[test]
#[ignore = "the helper process of another test; does nothing on its own"]
fn writer_killed_mid_transaction() {
    let Some(conn) = helper_connection(WRITER_ENV) else {
        return;
    };
    // A tiny cache makes SQLite spill changed pages into the database file before COMMIT,
    // after writing their old content to the journal.
    conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA cache_size = 8; BEGIN")
        .unwrap();
    write_rows_that_never_commit(&conn);
}

#[test]
fn a_hot_journal_left_by_a_killed_writer_is_rolled_back_in_a_staged_copy() {
    let dir = Dir::new("journal");
    let source = dir.folder("app").join("bot_database.db");
    old_database(&source, 50);
    let committed = std::fs::read(&source).unwrap();
    kill_once_in_its_transaction(
        helper_process("writer_killed_mid_transaction").env(WRITER_ENV, &source),
    );
    let journal = with_suffix(&source, "-journal");
    assert!(
        std::fs::metadata(&journal).unwrap().len() > 0,
        "a hot journal"
    );
    assert_ne!(
        std::fs::read(&source).unwrap(),
        committed,
        "uncommitted pages were spilled into the database file"
    );
    let read_only = Connection::open_with_flags(&source, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))
        .unwrap_err();
    assert_eq!(
        read_only.sqlite_error().map(|e| e.extended_code),
        Some(776),
        "a read-only open cannot read it (SQLITE_READONLY_ROLLBACK): {read_only}"
    );
    let before = fingerprint(&source);
    let data = dir.folder("data");
    let target = data.join("bot_database.db");

    let checked = ok(
        &target,
        &["db", "import", source.to_str().unwrap(), "--check-only"],
    );
    assert_eq!(
        (&checked["recovered"], &checked["users"], &checked["target"]),
        (&json!("journal"), &json!(50), &json!(null))
    );
    assert!(names(&data).is_empty());
    assert_unchanged(&before, &source);

    let imported = ok(&target, &["db", "import", source.to_str().unwrap()]);
    assert_eq!(
        (
            &imported["recovered"],
            &imported["users"],
            &imported["status"]["state"],
            &imported["status"]["matches"]
        ),
        (
            &json!("journal"),
            &json!(50),
            &json!("unstamped"),
            &json!(1)
        )
    );
    assert_eq!(count_users(&target), 50, "the pre-transaction rows only");
    assert_eq!(integrity(&target), "ok");
    assert_eq!(names(&data), ["bot_database.db"], "no staging folder left");
    assert_unchanged(&before, &source);
}

#[test]
fn a_wal_with_committed_frames_and_no_shm_is_read_from_a_staged_copy() {
    let dir = Dir::new("wal");
    let live = dir.folder("live").join("bot_database.db");
    let old = dir.folder("old").join("bot_database.db");
    {
        let conn = Connection::open(&live).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch(REVISION_1).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        insert_users(&conn, 0..50, "committed");
        conn.execute_batch("COMMIT").unwrap();
        // The three files while the writer still holds them open, as a killed writer leaves them.
        for suffix in ["", "-wal", "-shm"] {
            std::fs::copy(with_suffix(&live, suffix), with_suffix(&old, suffix)).unwrap();
        }
    }
    std::fs::remove_file(with_suffix(&old, "-shm")).unwrap();
    assert!(std::fs::metadata(with_suffix(&old, "-wal")).unwrap().len() > 0);
    // The database file alone does not even have the table: everything is in the WAL.
    let alone = dir.folder("alone").join("bot_database.db");
    std::fs::copy(&old, &alone).unwrap();
    let tables: i64 = Connection::open(&alone)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 0);
    let before = fingerprint(&old);
    let data = dir.folder("data");
    let target = data.join("bot_database.db");

    let checked = ok(
        &target,
        &["db", "import", old.to_str().unwrap(), "--check-only"],
    );
    assert_eq!(
        (&checked["recovered"], &checked["users"]),
        (&json!("wal"), &json!(50))
    );
    assert!(names(&data).is_empty());
    assert_unchanged(&before, &old);

    let imported = ok(&target, &["db", "import", old.to_str().unwrap()]);
    assert_eq!(
        (
            &imported["recovered"],
            &imported["users"],
            &imported["tables"],
            &imported["status"]["matches"]
        ),
        (&json!("wal"), &json!(50), &json!(["users"]), &json!(1))
    );
    assert_eq!(names(&data), ["bot_database.db"], "no staging folder left");
    assert_eq!(count_users(&target), 50);
    assert_eq!(integrity(&target), "ok");
    assert_unchanged(&before, &old);
}

#[test]
fn a_cleanly_closed_wal_database_is_imported_without_a_sidecar_appearing_beside_it() {
    let dir = Dir::new("walclosed");
    let source = dir.folder("app").join("bot_database.db");
    old_database(&source, 50);
    Connection::open(&source)
        .unwrap()
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    assert!(!with_suffix(&source, "-wal").exists());
    let before = fingerprint(&source);
    let target = dir.folder("data").join("bot_database.db");
    for args in [vec!["--check-only"], vec![]] {
        let mut all = vec!["db", "import", source.to_str().unwrap()];
        all.extend(args);
        let imported = ok(&target, &all);
        assert_eq!(
            (&imported["recovered"], &imported["users"]),
            (&json!(null), &json!(50))
        );
        assert_unchanged(&before, &source);
    }
    assert_eq!(count_users(&target), 50);
}
