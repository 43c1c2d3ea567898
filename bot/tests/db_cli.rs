//! `bot db ...` as a process: every state's message and exit code, nothing changed by a
//! refusal, two upgrades at once, and SIGKILL in the middle of the `users` rebuild.

mod common;

use common::{
    Dir, Ended, WRITER_READY, assert_stderr_has, bot, count_users, each_str, helper_connection,
    helper_process, insert_users, kill_once_in_its_transaction, limit_file_size, ok, run,
    said_ready, show, sql, upgrade_backing_up_to, upgrade_overtaken_at,
    write_rows_that_never_commit,
};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

const REFUSED: i32 = 3;
const BAD_FILE: i32 = 4;

fn refused(db: &Path, args: &[&str], code: i32, needle: &str) {
    refused_by(db, args, code, &[needle], &|_| {});
}

/// What lies at the database path and beside it: a file's bytes, a folder's names, or nothing.
fn snapshot(db: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    ["", "-journal", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let path = PathBuf::from(format!("{}{suffix}", db.display()));
            let seen = if path.is_dir() {
                let mut names: Vec<String> = std::fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                Some(names.join("\n").into_bytes())
            } else {
                std::fs::read(&path).ok()
            };
            (path.display().to_string(), seen)
        })
        .collect()
}

/// Runs `args` (with the command adjusted by `setup`), expects exit `code` with every needle in
/// the message on stderr and in the JSON object with `--json`, no "readonly database" anywhere,
/// and the database path and its sidecars as before (bytes, or a folder's names, or absent).
fn refused_by(db: &Path, args: &[&str], code: i32, needles: &[&str], setup: &dyn Fn(&mut Command)) {
    let before = snapshot(db);
    let mut command = bot(db, args);
    setup(&mut command);
    let output = command.output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}: {}",
        show(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
    }
    assert!(!stderr.contains("readonly database"), "{stderr}");
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let mut command = bot(db, &with_json);
    setup(&mut command);
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(code));
    let object: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&output)));
    assert_eq!(object["exit_code"], code);
    for needle in needles {
        assert!(
            object["error"].as_str().unwrap().contains(needle),
            "{object}"
        );
    }
    assert!(
        snapshot(db) == before,
        "{args:?} changed {} or a file beside it",
        db.display()
    );
}

const REVISION_1: &str = include_str!("../../migrations/sql/0001_initial.up.sql");

#[test]
fn empty_behind_and_current_are_reported_and_upgraded() {
    let dir = Dir::new("clean");
    let empty = ok(&dir.db(), &["db", "status"]);
    assert_eq!(empty["state"], "empty");
    assert!(!dir.db().exists(), "status creates nothing");
    let head = empty["head"].as_u64().unwrap();
    let plan = ok(&dir.db(), &["db", "upgrade", "--dry-run"]);
    assert_eq!(plan["steps"].as_array().unwrap().len() as u64, head);
    assert!(!dir.db().exists(), "a dry run creates nothing");
    let upgraded = ok(&dir.db(), &["db", "upgrade"]);
    assert_eq!(upgraded["to"], head);
    ok(&dir.db(), &["db", "downgrade", "--to", "2"]);
    let behind = ok(&dir.db(), &["db", "status"]);
    assert_eq!(
        (behind["state"].as_str(), behind["version"].as_u64()),
        (Some("behind"), Some(2))
    );
    assert_eq!(
        behind["pending"],
        serde_json::json!((3..=head).collect::<Vec<_>>())
    );
    ok(&dir.db(), &["db", "upgrade"]);
    let current = ok(&dir.db(), &["db", "check"]);
    assert_eq!(
        (current["state"].as_str(), current["ok"].as_bool()),
        (Some("current"), Some(true))
    );
    let history = ok(&dir.db(), &["db", "history"]);
    let how = each_str(&history["history"], "how");
    assert_eq!(how.len() as u64, head);
    assert!(how.iter().all(|h| *h == "applied"));
    let schema = run(&dir.db(), &["db", "schema"]);
    assert!(
        String::from_utf8_lossy(&schema.stdout).contains("table users"),
        "{}",
        show(&schema)
    );
    let at_one = ok(&dir.db(), &["db", "schema", "--at", "1"]);
    assert!(at_one["schema"]["tables"]["users"]["columns"]["language_code"].is_null());
}

#[test]
fn unstamped_is_refused_by_upgrade_and_adopted_after_a_dry_run() {
    let dir = Dir::new("unstamped");
    sql(&dir.db(), REVISION_1);
    refused(
        &dir.db(),
        &["db", "upgrade"],
        REFUSED,
        "no migration history",
    );
    refused(
        &dir.db(),
        &["db", "stamp", "2"],
        REFUSED,
        "table users: column language_code missing (revision 2 adds it)",
    );
    let before = std::fs::read(dir.db()).unwrap();
    let plan = ok(&dir.db(), &["db", "adopt", "--dry-run"]);
    assert_eq!(plan["adopt"], 1);
    assert_eq!(
        std::fs::read(dir.db()).unwrap(),
        before,
        "the dry run changed nothing"
    );
    assert_eq!(ok(&dir.db(), &["db", "adopt"])["adopted"], 1);
    refused(
        &dir.db(),
        &["db", "adopt"],
        REFUSED,
        "already has a migration history",
    );
}

#[test]
fn a_schema_matching_nothing_is_refused_with_the_difference() {
    let dir = Dir::new("nomatch");
    sql(
        &dir.db(),
        &REVISION_1.replace("\tlast_name VARCHAR(128),\n", ""),
    );
    let status = ok(&dir.db(), &["db", "status"]);
    assert_eq!(
        (status["state"].as_str(), status["matches"].as_u64()),
        (Some("unstamped"), None)
    );
    refused(
        &dir.db(),
        &["db", "adopt"],
        REFUSED,
        "table users: column last_name missing (revision 1 adds it)",
    );
    refused(
        &dir.db(),
        &["db", "adopt", "--dry-run"],
        REFUSED,
        "column last_name missing",
    );
    refused(
        &dir.db(),
        &["db", "stamp", "1"],
        REFUSED,
        "the live schema is not revision 1",
    );
    let forced = ok(&dir.db(), &["db", "stamp", "1", "--force"]);
    assert_eq!(forced["forced"], true);
    let history = ok(&dir.db(), &["db", "history"]);
    assert_eq!(history["history"][0]["how"], "forced");
}

#[test]
fn foreign_history_is_reported_refused_by_upgrade_and_kept_by_adopt() {
    let dir = Dir::new("foreign");
    sql(&dir.db(), REVISION_1);
    sql(
        &dir.db(),
        "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL); INSERT INTO alembic_version VALUES ('4bcff00da989');",
    );
    let status = ok(&dir.db(), &["db", "status"]);
    assert_eq!(
        (status["state"].as_str(), status["matches"].as_u64()),
        (Some("foreign"), Some(1))
    );
    assert_eq!(status["foreign"]["revision"], "4bcff00da989");
    refused(
        &dir.db(),
        &["db", "upgrade"],
        REFUSED,
        "alembic history in table alembic_version",
    );
    ok(&dir.db(), &["db", "adopt"]);
    ok(&dir.db(), &["db", "upgrade"]);
    let kept: i64 = Connection::open(dir.db())
        .unwrap()
        .query_row("SELECT count(*) FROM alembic_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 1);
}

#[test]
fn ahead_modified_and_drifted_are_refused_and_fail_check() {
    let dir = Dir::new("refusals");
    ok(&dir.db(), &["db", "upgrade"]);
    sql(
        &dir.db(),
        "INSERT INTO schema_history (version, name, checksum, how) VALUES (99, 'future', 'abc', 'applied')",
    );
    refused(
        &dir.db(),
        &["db", "upgrade"],
        REFUSED,
        "revision 99, newer than this build knows",
    );
    refused(
        &dir.db(),
        &["db", "check"],
        REFUSED,
        "check failed: the database is ahead",
    );
    refused(&dir.db(), &["db", "stamp", "1"], REFUSED, "revision 99");

    sql(
        &dir.db(),
        "DELETE FROM schema_history WHERE version = 99; UPDATE schema_history SET checksum = 'feedface' WHERE version = 2",
    );
    let modified = ok(&dir.db(), &["db", "status"]);
    assert_eq!(modified["state"], "modified");
    assert_eq!(modified["edited"][0]["file"], "0002_user_activity.up.sql");
    assert_eq!(modified["edited"][0]["recorded"], "feedface");
    refused(
        &dir.db(),
        &["db", "upgrade"],
        REFUSED,
        "0002_user_activity.up.sql changed since it was applied: recorded checksum feedface, file now ",
    );
    refused(
        &dir.db(),
        &["db", "check"],
        REFUSED,
        "the database is modified",
    );

    let real: String = {
        let conn = Connection::open(dir.db()).unwrap();
        conn.query_row(
            "SELECT checksum FROM schema_history WHERE version = 1",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(real.len(), 64);
    let dir = Dir::new("drifted");
    ok(&dir.db(), &["db", "upgrade"]);
    sql(&dir.db(), "DROP INDEX ix_command_log_used_at");
    let drifted = ok(&dir.db(), &["db", "status"]);
    assert_eq!(drifted["state"], "drifted");
    refused(
        &dir.db(),
        &["db", "upgrade"],
        REFUSED,
        "table command_log: index ix_command_log_used_at missing (revision 3 adds it)",
    );
    refused(
        &dir.db(),
        &["db", "downgrade", "--to", "1"],
        REFUSED,
        "the live schema differs",
    );
    refused(
        &dir.db(),
        &["db", "check"],
        REFUSED,
        "the database is drifted",
    );
}

#[test]
fn files_that_are_not_sqlite_or_are_damaged_are_refused_untouched() {
    let dir = Dir::new("badfiles");
    std::fs::write(dir.db(), "BOT_TOKEN=not a database\n".repeat(20)).unwrap();
    refused(
        &dir.db(),
        &["db", "status"],
        BAD_FILE,
        "not a SQLite database",
    );
    refused(
        &dir.db(),
        &["db", "upgrade"],
        BAD_FILE,
        "not a SQLite database",
    );
    refused(
        &dir.db(),
        &["db", "adopt"],
        BAD_FILE,
        "not a SQLite database",
    );

    std::fs::remove_file(dir.db()).unwrap();
    sql(&dir.db(), REVISION_1);
    {
        let conn = Connection::open(dir.db()).unwrap();
        for i in 0..3000 {
            conn.execute("INSERT INTO users (telegram_id, first_name) VALUES (?1, 'someone with a long enough name')", [i]).unwrap();
        }
    }
    let mut bytes = std::fs::read(dir.db()).unwrap();
    let len = bytes.len();
    for byte in &mut bytes[4096..len - 4096] {
        *byte = 0xa5;
    }
    std::fs::write(dir.db(), &bytes).unwrap();
    refused(&dir.db(), &["db", "upgrade"], BAD_FILE, "damaged");
    let backup = dir.0.join("backup.db");
    ok(&backup, &["db", "upgrade"]);
    refused_by(
        &dir.db(),
        &["db", "restore", backup.to_str().unwrap()],
        BAD_FILE,
        &[
            "damaged",
            "Nothing writes into it.",
            "`bot db restore BACKUP --replace-damaged`",
        ],
        &|_| {},
    );

    // As the advice says: the damaged file is set aside whole, the backup takes its place.
    let damaged = std::fs::read(dir.db()).unwrap();
    let value = ok(
        &dir.db(),
        &[
            "db",
            "restore",
            backup.to_str().unwrap(),
            "--replace-damaged",
        ],
    );
    let aside = PathBuf::from(value["damaged"].as_str().unwrap());
    assert!(
        aside
            .display()
            .to_string()
            .starts_with(&format!("{}.damaged-", dir.db().display())),
        "{value}"
    );
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        damaged,
        "kept byte for byte"
    );
    assert_eq!(
        ok(&dir.db(), &["db", "status"])["state"],
        "current",
        "the backup is in place"
    );
    // A sound live database is never set aside.
    let value = ok(
        &dir.db(),
        &[
            "db",
            "restore",
            backup.to_str().unwrap(),
            "--replace-damaged",
        ],
    );
    assert_eq!(value["damaged"], serde_json::Value::Null, "{value}");
}

#[test]
fn two_upgrade_processes_started_together_both_succeed_and_apply_once() {
    let dir = Dir::new("race");
    sql(&dir.db(), REVISION_1);
    {
        let conn = Connection::open(dir.db()).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        insert_users(&conn, 0..50_000, "x");
        conn.execute_batch("COMMIT").unwrap();
    }
    ok(&dir.db(), &["db", "adopt"]);
    let children: Vec<_> = (0..2)
        .map(|_| {
            bot(&dir.db(), &["db", "upgrade", "--json"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", show(&output));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        applied.extend(
            report["applied"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap()),
        );
    }
    applied.sort();
    let head = ok(&dir.db(), &["db", "status"])["head"].as_u64().unwrap();
    assert_eq!(
        applied,
        (2..=head).collect::<Vec<_>>(),
        "each migration applied by exactly one process"
    );
    assert_eq!(ok(&dir.db(), &["db", "status"])["state"], "current");
}

/// A small pseudo-random sequence (xorshift), seeded from the clock and printed, so a failing
/// run can be repeated.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sigkill_during_the_users_rebuild_never_loses_a_row_or_leaves_a_half_revision() {
    const USERS: i64 = 200_000;
    const KILLS: usize = 30;
    let dir = Dir::new("crash");
    let template = dir.0.join("template.db");
    ok(&template, &["db", "upgrade"]);
    ok(&template, &["db", "downgrade", "--to", "3"]);
    {
        let conn = Connection::open(&template).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        let mut user = conn.prepare("INSERT INTO users (telegram_id, username, first_name, is_admin) VALUES (?1, ?2, 'Name', ?3)").unwrap();
        let mut log = conn
            .prepare("INSERT INTO command_log (user_id, command) VALUES (?1, '/start')")
            .unwrap();
        for i in 0..USERS {
            user.execute(rusqlite::params![
                1_000_000 + i,
                format!("user{i}"),
                i % 100 == 0
            ])
            .unwrap();
            if i % 4 == 0 {
                log.execute([conn.last_insert_rowid()]).unwrap();
            }
        }
        drop((user, log));
        conn.execute_batch("COMMIT").unwrap();
    }
    let wal_template = dir.0.join("template-wal.db");
    std::fs::copy(&template, &wal_template).unwrap();
    Connection::open(&wal_template)
        .unwrap()
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();

    // How long an undisturbed rebuild takes, to spread the kills over it.
    let timed = dir.0.join("timed.db");
    std::fs::copy(&template, &timed).unwrap();
    let started = Instant::now();
    ok(&timed, &["db", "upgrade"]);
    let full = started.elapsed();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}, undisturbed upgrade {full:?}");
    let mut random = Random(seed);
    let mut outcomes = [0usize; 2];
    for kill in 0..KILLS {
        let source = if kill % 2 == 0 {
            &template
        } else {
            &wal_template
        };
        let db = dir.0.join("victim.db");
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        std::fs::copy(source, &db).unwrap();
        let delay = Duration::from_micros(random.next() % (full.as_micros() as u64 * 12 / 10 + 1));
        let mut child = bot(&db, &["db", "upgrade"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let conn = Connection::open(&db).unwrap();
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok", "kill {kill} after {delay:?} (seed {seed})");
        let (users, logs, joined): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM command_log),
                        (SELECT count(*) FROM command_log c JOIN users u ON u.id = c.user_id)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (users, logs, joined),
            (USERS, USERS / 4, USERS / 4),
            "kill {kill} after {delay:?} (seed {seed})"
        );
        drop(conn);
        let status = ok(&db, &["db", "status"]);
        let state = status["state"].as_str().unwrap();
        assert!(
            state == "behind" || state == "current",
            "kill {kill}: the recorded revision is the schema's: {status}"
        );
        outcomes[usize::from(state == "current")] += 1;
    }
    println!(
        "killed {KILLS} times: {} before the rebuild committed, {} after",
        outcomes[0], outcomes[1]
    );
    assert!(
        outcomes[0] > 0,
        "some kills landed inside the rebuild (seed {seed})"
    );
}

/// Starts every command (with `--json`) while this process holds the write lock, checks that
/// each of them is still waiting, then releases the lock and collects what they reported:
/// every command reads the database before any of them may write.
fn started_while_the_lock_is_held(db: &Path, commands: &[&[&str]]) -> Vec<Output> {
    let holder = Connection::open(db).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut children: Vec<_> = commands
        .iter()
        .map(|args| {
            let mut all = args.to_vec();
            all.push("--json");
            bot(db, &all)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let waiting: Vec<bool> = children
        .iter_mut()
        .map(|child| child.try_wait().unwrap().is_none())
        .collect();
    holder.execute_batch("COMMIT").unwrap();
    drop(holder);
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    for ((args, waited), output) in commands.iter().zip(waiting).zip(&outputs) {
        assert!(
            waited,
            "{args:?} finished while another process held the write lock: it decided without it\n{}",
            show(output)
        );
    }
    outputs
}

fn report(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(output)))
}

fn numbers(value: &serde_json::Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// The state and the recorded revisions, checked to be each revision once, in order.
fn history_of(db: &Path) -> (String, Vec<u64>) {
    let status = ok(db, &["db", "status"]);
    let history = ok(db, &["db", "history"]);
    let versions: Vec<u64> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["version"].as_u64().unwrap())
        .collect();
    (status["state"].as_str().unwrap().to_string(), versions)
}

fn old_app_with_users(db: &Path, users: i64) {
    sql(db, REVISION_1);
    let conn = Connection::open(db).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..users {
        conn.execute(
            "INSERT INTO users (telegram_id, first_name) VALUES (?1, 'x')",
            [i],
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
}

#[test]
fn two_upgrade_adopts_held_at_the_lock_adopt_once_and_apply_each_revision_once() {
    let dir = Dir::new("race-adopt-upgrade");
    old_app_with_users(&dir.db(), 2000);
    let head = ok(&dir.db(), &["db", "status"])["head"].as_u64().unwrap();
    let outputs = started_while_the_lock_is_held(
        &dir.db(),
        &[&["db", "upgrade", "--adopt"], &["db", "upgrade", "--adopt"]],
    );
    let mut applied = Vec::new();
    let mut adopted = Vec::new();
    for output in &outputs {
        assert!(output.status.success(), "{}", show(output));
        let report = report(output);
        applied.extend(numbers(&report["applied"]));
        if !report["adopted"].is_null() {
            adopted.push(report["adopted"].as_u64().unwrap());
        }
        assert_eq!(report["to"], head, "{report}");
    }
    applied.sort();
    assert_eq!(adopted, [1], "adopted by exactly one process");
    assert_eq!(applied, (2..=head).collect::<Vec<_>>());
    assert_eq!(
        history_of(&dir.db()),
        ("current".to_string(), (1..=head).collect::<Vec<_>>())
    );
}

#[test]
fn two_adopts_held_at_the_lock_record_the_revision_once() {
    let dir = Dir::new("race-adopt");
    old_app_with_users(&dir.db(), 100);
    let outputs = started_while_the_lock_is_held(&dir.db(), &[&["db", "adopt"], &["db", "adopt"]]);
    let mut codes: Vec<Option<i32>> = outputs.iter().map(|o| o.status.code()).collect();
    codes.sort();
    assert_eq!(codes, [Some(0), Some(REFUSED)], "{outputs:?}");
    let refusal = outputs.iter().find(|o| !o.status.success()).unwrap();
    assert!(
        report(refusal)["error"]
            .as_str()
            .unwrap()
            .contains("already has a migration history (state behind)"),
        "{}",
        show(refusal)
    );
    assert_eq!(history_of(&dir.db()), ("behind".to_string(), vec![1]));
}

#[test]
fn stamp_and_upgrade_adopt_held_at_the_lock_leave_a_consistent_history() {
    let dir = Dir::new("race-stamp");
    old_app_with_users(&dir.db(), 2000);
    let head = ok(&dir.db(), &["db", "status"])["head"].as_u64().unwrap();
    let outputs = started_while_the_lock_is_held(
        &dir.db(),
        &[&["db", "stamp", "1"], &["db", "upgrade", "--adopt"]],
    );
    assert!(outputs[1].status.success(), "{}", show(&outputs[1]));
    // The stamp runs before the upgrade's first step (it succeeds), or after it (refused:
    // the live schema is no longer revision 1).
    match outputs[0].status.code() {
        Some(0) => {}
        Some(REFUSED) => assert!(
            report(&outputs[0])["error"]
                .as_str()
                .unwrap()
                .contains("the live schema is not revision 1"),
            "{}",
            show(&outputs[0])
        ),
        _ => panic!("{}", show(&outputs[0])),
    }
    assert_eq!(
        history_of(&dir.db()),
        ("current".to_string(), (1..=head).collect::<Vec<_>>())
    );
}

#[test]
fn downgrade_and_upgrade_held_at_the_lock_leave_a_consistent_history_and_true_reports() {
    let dir = Dir::new("race-down");
    ok(&dir.db(), &["db", "upgrade"]);
    ok(&dir.db(), &["db", "downgrade", "--to", "2"]);
    let head = ok(&dir.db(), &["db", "status"])["head"].as_u64().unwrap();
    let outputs = started_while_the_lock_is_held(
        &dir.db(),
        &[&["db", "downgrade", "--to", "1"], &["db", "upgrade"]],
    );
    let upgrade = report(&outputs[1]);
    assert!(outputs[1].status.success(), "{}", show(&outputs[1]));
    // Whichever ran first, the upgrade ends at head: after the downgrade it applies 2 again.
    assert_eq!(upgrade["to"], head, "{upgrade}");
    match outputs[0].status.code() {
        Some(0) => {
            assert_eq!(numbers(&report(&outputs[0])["applied"]), [2]);
            assert_eq!(numbers(&upgrade["applied"]), (2..=head).collect::<Vec<_>>());
        }
        Some(REFUSED) => {
            let error = report(&outputs[0])["error"].as_str().unwrap().to_string();
            assert!(
                error.contains("another process changed it meanwhile"),
                "{error}"
            );
            assert_eq!(numbers(&upgrade["applied"]), (3..=head).collect::<Vec<_>>());
        }
        _ => panic!("{}", show(&outputs[0])),
    }
    assert_eq!(
        history_of(&dir.db()),
        ("current".to_string(), (1..=head).collect::<Vec<_>>())
    );
}

#[test]
fn upgrades_started_together_on_a_new_file_warn_of_a_failed_copy_only_when_it_was_one() {
    // Both see the 0-byte file the first one's SQLite made; one builds the schema, the other
    // finds it built: that one is no failed copy and must not say so.
    let dir = Dir::new("race-zero");
    std::fs::write(dir.db(), b"").unwrap();
    let outputs =
        started_while_the_lock_is_held(&dir.db(), &[&["db", "upgrade"], &["db", "upgrade"]]);
    let reports: Vec<serde_json::Value> = outputs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", show(o));
            report(o)
        })
        .collect();
    let builders = reports
        .iter()
        .filter(|r| !r["applied"].as_array().unwrap().is_empty())
        .count();
    assert_eq!(builders, 1, "{reports:?}");
    for (output, report) in outputs.iter().zip(&reports) {
        let built = !report["applied"].as_array().unwrap().is_empty();
        assert_eq!(report["zero_bytes"], built, "{report}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr).contains("was a 0-byte file"),
            built,
            "{}",
            show(output)
        );
    }
}

#[test]
fn restore_and_upgrade_held_at_the_lock_leave_a_consistent_history() {
    let dir = Dir::new("race-restore");
    let backup = dir.0.join("at-2.db");
    ok(&backup, &["db", "upgrade"]);
    ok(&backup, &["db", "downgrade", "--to", "2"]);
    sql(
        &backup,
        "INSERT INTO users (telegram_id, first_name) VALUES (7, 'from the backup')",
    );
    ok(&dir.db(), &["db", "upgrade"]);
    let head = ok(&dir.db(), &["db", "status"])["head"].as_u64().unwrap();
    let outputs = started_while_the_lock_is_held(
        &dir.db(),
        &[
            &["db", "restore", backup.to_str().unwrap()],
            &["db", "upgrade"],
        ],
    );
    for output in &outputs {
        assert!(output.status.success(), "{}", show(output));
    }
    let upgrade = report(&outputs[1]);
    let (state, versions) = history_of(&dir.db());
    if numbers(&upgrade["applied"]).is_empty() {
        // The upgrade found nothing to do, then the restore put revision 2 in place.
        assert_eq!((state.as_str(), versions), ("behind", vec![1, 2]));
    } else {
        assert_eq!(numbers(&upgrade["applied"]), (3..=head).collect::<Vec<_>>());
        assert_eq!(
            (state.as_str(), versions),
            ("current", (1..=head).collect::<Vec<_>>())
        );
    }
    let users: i64 = Connection::open(dir.db())
        .unwrap()
        .query_row(
            "SELECT count(*) FROM users WHERE telegram_id = 7",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(users, 1, "the backup's rows are in place");
}

/// Set for the writer process `writer_killed_mid_transaction` runs as: the database it writes.
const WRITER_ENV: &str = "BOT_DB_CLI_TEST_WRITER";
/// Set (with WRITER_ENV) for a writer in WAL mode.
const WRITER_WAL_ENV: &str = "BOT_DB_CLI_TEST_WRITER_WAL";

/// Not a test on its own: the writer process that `kill_a_writer_mid_transaction` starts (this
/// test binary, run for this function alone) and SIGKILLs in the middle of a transaction.
#[test]
#[ignore = "the helper process of other tests; does nothing on its own"]
fn writer_killed_mid_transaction() {
    let Some(conn) = helper_connection(WRITER_ENV) else {
        return;
    };
    if std::env::var_os(WRITER_WAL_ENV).is_some() {
        // Committed rows stay in the WAL (no checkpoint), then a transaction never commits.
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0")
            .unwrap();
        conn.execute_batch("BEGIN").unwrap();
        insert_users(&conn, 500_000..500_100, "committed in the WAL");
        conn.execute_batch("COMMIT; PRAGMA cache_size = 8; BEGIN")
            .unwrap();
    } else {
        // A tiny cache makes SQLite spill changed pages into the database file before COMMIT,
        // after writing their old content to the journal.
        conn.execute_batch("PRAGMA journal_mode = DELETE; PRAGMA cache_size = 8; BEGIN")
            .unwrap();
    }
    write_rows_that_never_commit(&conn);
}

/// Set for the process `lock_holder` runs as: the database, then the SQL it runs and holds.
const HOLDER_ENV: &str = "BOT_DB_CLI_TEST_HOLDER";

/// Not a test on its own: the process `LockHolder` starts to hold a lock on a database.
#[test]
#[ignore = "the helper process of other tests; does nothing on its own"]
fn lock_holder() {
    let Some(setting) = std::env::var_os(HOLDER_ENV) else {
        return;
    };
    let setting = setting.to_string_lossy().into_owned();
    let (db, statements) = setting.split_once('\n').unwrap();
    let conn = Connection::open(db).unwrap();
    for statement in statements.split(';') {
        let mut statement = conn.prepare(statement).unwrap();
        let mut rows = statement.raw_query();
        while rows.next().unwrap().is_some() {}
    }
    println!("{WRITER_READY}");
    // Holds the lock until this process is killed.
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Another process holding a lock on a database (with the statements given) until dropped.
struct LockHolder(std::process::Child);

impl LockHolder {
    fn start(db: &Path, statements: &str) -> LockHolder {
        let mut child = helper_process("lock_holder")
            .env(HOLDER_ENV, format!("{}\n{statements}", db.display()))
            .spawn()
            .unwrap();
        let ready = said_ready(&mut child);
        assert!(ready, "the lock holder holds its lock");
        LockHolder(child)
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a writer on `db` (rollback-journal mode, or WAL), SIGKILLs it in the middle of its
/// transaction, and checks that it left a hot journal (or a WAL).
fn kill_a_writer_mid_transaction(db: &Path, wal: bool) {
    let mut command = helper_process("writer_killed_mid_transaction");
    command.env(WRITER_ENV, db);
    if wal {
        command.env(WRITER_WAL_ENV, "1");
    }
    kill_once_in_its_transaction(&mut command);
    let left = beside(db, if wal { "-wal" } else { "-journal" });
    assert!(
        std::fs::metadata(&left).unwrap().len() > 0,
        "{} left",
        left.display()
    );
}

fn beside(db: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", db.display()))
}

/// Whether the tests run as root (who may write anything): then a command runs as `nobody` to
/// meet a folder it may not write.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs the command as `nobody` when the tests run as root.
fn as_nobody(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    if running_as_root() {
        command.uid(65534).gid(65534);
    }
}

/// Makes `folder` one the command may not write: as root, `nobody` may not write a folder of
/// root's; otherwise the folder is made read-only (undone by the returned guard).
struct ReadOnlyFolder(PathBuf);

impl ReadOnlyFolder {
    fn new(folder: &Path) -> ReadOnlyFolder {
        use std::os::unix::fs::PermissionsExt;
        if !running_as_root() {
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        ReadOnlyFolder(folder.to_owned())
    }
}

impl Drop for ReadOnlyFolder {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn a_hot_journal_left_by_a_killed_writer_is_named_or_rolled_back_and_said() {
    let dir = Dir::new("hot-journal");
    old_app_with_users(&dir.db(), 50);
    let committed = std::fs::read(dir.db()).unwrap();
    kill_a_writer_mid_transaction(&dir.db(), false);
    assert_ne!(
        std::fs::read(dir.db()).unwrap(),
        committed,
        "uncommitted pages were spilled into the database file"
    );
    let journal = format!("{}-journal", dir.db().display());

    // A user who may not write the folder cannot roll it back: the journal is named, with the
    // command that recovers it, and nothing is touched.
    {
        let _read_only = ReadOnlyFolder::new(&dir.0);
        for args in [&["db", "status"][..], &["db", "upgrade", "--adopt"]] {
            refused_by(
                &dir.db(),
                args,
                REFUSED,
                &[
                    &format!(
                        "a hot journal {journal} lies beside it, left by a writer that was killed mid-transaction"
                    ),
                    "cannot write the folder",
                    "Run `bot db status` as a user who may write",
                ],
                &as_nobody,
            );
        }
    }

    let output = run(&dir.db(), &["db", "status", "--json"]);
    assert!(output.status.success(), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("rolled back the hot journal {journal}")),
        "{stderr}"
    );
    let status = report(&output);
    assert_eq!(
        (&status["recovered"], &status["state"], &status["matches"]),
        (
            &serde_json::json!("journal"),
            &serde_json::json!("unstamped"),
            &serde_json::json!(1)
        )
    );
    assert!(std::fs::metadata(&journal).map_or(true, |m| m.len() == 0));
    assert_eq!(count_users(&dir.db()), 50, "the committed rows only");
    let again = ok(&dir.db(), &["db", "status"]);
    assert!(again["recovered"].is_null(), "{again}");
}

#[test]
fn upgrade_adopt_recovers_a_hot_journal_before_it_checks_and_migrates() {
    let dir = Dir::new("hot-upgrade");
    old_app_with_users(&dir.db(), 50);
    kill_a_writer_mid_transaction(&dir.db(), false);
    let output = run(&dir.db(), &["db", "upgrade", "--adopt", "--json"]);
    assert!(output.status.success(), "{}", show(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("rolled back the hot journal"));
    let upgraded = report(&output);
    assert_eq!(
        (&upgraded["recovered"], &upgraded["adopted"]),
        (&serde_json::json!("journal"), &serde_json::json!(1))
    );
    assert_eq!(ok(&dir.db(), &["db", "check"])["state"], "current");
    assert_eq!(count_users(&dir.db()), 50);
}

#[test]
fn a_wal_left_by_a_killed_writer_is_folded_in_and_said() {
    let dir = Dir::new("hot-wal");
    old_app_with_users(&dir.db(), 50);
    kill_a_writer_mid_transaction(&dir.db(), true);
    let output = run(&dir.db(), &["db", "status", "--json"]);
    assert!(output.status.success(), "{}", show(&output));
    assert_stderr_has(&output, "folded the write-ahead log");
    assert_eq!(report(&output)["recovered"], "wal");
    // Folded in and removed; the read-only connection `status` then reads with creates an
    // empty one again, as any reader of a WAL-mode database does.
    assert_eq!(
        std::fs::metadata(beside(&dir.db(), "-wal")).map_or(0, |m| m.len()),
        0
    );
    assert_eq!(
        count_users(&dir.db()),
        150,
        "the committed rows, and only them"
    );
}

#[test]
fn damaged_table_pages_are_refused_by_every_write_and_by_check_untouched() {
    let dir = Dir::new("damaged-pages");
    old_app_with_users(&dir.db(), 3000);
    let mut bytes = std::fs::read(dir.db()).unwrap();
    let len = bytes.len();
    // Page 1 (the schema) stays intact; the table's and its indexes' pages do not.
    for byte in &mut bytes[2 * 4096..len - 4096] {
        *byte = 0x5a;
    }
    std::fs::write(dir.db(), &bytes).unwrap();
    // `status` stays fast: it reads the schema, not every page.
    assert_eq!(ok(&dir.db(), &["db", "status"])["state"], "unstamped");
    for args in [
        &["db", "adopt"][..],
        &["db", "stamp", "1"],
        &["db", "stamp", "1", "--force"],
        &["db", "upgrade", "--adopt"],
        &["db", "check"],
    ] {
        refused_by(
            &dir.db(),
            args,
            BAD_FILE,
            &["the database file is damaged", "Nothing writes into it"],
            &|_| {},
        );
    }
}

#[test]
fn restore_refuses_an_empty_file_over_users_and_keeps_what_it_replaces() {
    let dir = Dir::new("restore-empty");
    old_app_with_users(&dir.db(), 40);
    let zero = dir.0.join("zero.db");
    std::fs::write(&zero, b"").unwrap();
    let no_tables = dir.0.join("no-tables.db");
    sql(&no_tables, "PRAGMA user_version = 3");
    refused_by(
        &dir.db(),
        &["db", "restore", zero.to_str().unwrap()],
        REFUSED,
        &[
            "zero.db: the file is 0 bytes, but the live database has 1 tables; nothing was changed",
            "pass --force",
        ],
        &|_| {},
    );
    refused_by(
        &dir.db(),
        &["db", "restore", no_tables.to_str().unwrap()],
        REFUSED,
        &["no-tables.db: the file holds no tables, but the live database has 1 tables"],
        &|_| {},
    );

    let backup = dir.0.join("backup.db");
    old_app_with_users(&backup, 3);
    let output = run(&dir.db(), &["db", "restore", backup.to_str().unwrap()]);
    assert!(output.status.success(), "{}", show(&output));
    let said = String::from_utf8_lossy(&output.stdout);
    let kept = PathBuf::from(
        said.lines()
            .find_map(|line| line.strip_prefix("the database it replaced is kept as "))
            .unwrap_or_else(|| panic!("{said}")),
    );
    assert!(
        kept.display()
            .to_string()
            .starts_with(&format!("{}.replaced-", dir.db().display())),
        "{}",
        kept.display()
    );
    assert_eq!((count_users(&dir.db()), count_users(&kept)), (3, 40));

    let forced = ok(
        &dir.db(),
        &["db", "restore", zero.to_str().unwrap(), "--force"],
    );
    let kept_again = PathBuf::from(forced["replaced"].as_str().unwrap());
    assert_ne!(kept_again, kept);
    assert_eq!(count_users(&kept_again), 3);
    assert_eq!(ok(&dir.db(), &["db", "status"])["state"], "empty");
}

#[test]
fn a_zero_byte_file_is_reported_as_such_and_upgrade_says_it_builds_into_it() {
    let dir = Dir::new("zero");
    let missing = ok(&dir.db(), &["db", "status"]);
    assert_eq!(
        (
            &missing["state"],
            &missing["exists"],
            &missing["zero_bytes"]
        ),
        (
            &serde_json::json!("empty"),
            &serde_json::json!(false),
            &serde_json::json!(false)
        )
    );
    std::fs::write(dir.db(), b"").unwrap();
    let zero = ok(&dir.db(), &["db", "status"]);
    assert_eq!(
        (
            &zero["state"],
            &zero["exists"],
            &zero["zero_bytes"],
            &zero["bytes"]
        ),
        (
            &serde_json::json!("empty"),
            &serde_json::json!(true),
            &serde_json::json!(true),
            &serde_json::json!(0)
        )
    );
    let said = run(&dir.db(), &["db", "status"]);
    assert!(
        String::from_utf8_lossy(&said.stdout)
            .contains("0 bytes: an empty file, not a database SQLite wrote (a failed copy?)"),
        "{}",
        show(&said)
    );
    let output = run(&dir.db(), &["db", "upgrade", "--json"]);
    assert!(output.status.success(), "{}", show(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(
            "was a 0-byte file, not a database SQLite wrote: the schema was built into it"
        ),
        "{}",
        show(&output)
    );
    let upgraded = report(&output);
    assert_eq!(upgraded["zero_bytes"], true);
    assert_eq!(upgraded["to"], zero["head"]);
}

#[test]
fn a_folder_at_the_database_path_is_named() {
    let dir = Dir::new("folder");
    let folder = dir.0.join("bot_database.db");
    std::fs::create_dir_all(folder.join("inside")).unwrap();
    for args in [&["db", "status"][..], &["db", "upgrade"], &["db", "adopt"]] {
        refused_by(
            &folder,
            args,
            BAD_FILE,
            &[
                &format!(
                    "{} is a folder, not a SQLite database file; nothing was changed",
                    folder.display()
                ),
                &format!("`bot db find-databases {}`", folder.display()),
            ],
            &|_| {},
        );
    }
}

#[test]
fn a_file_cut_short_is_named_as_such() {
    let dir = Dir::new("short");
    let mut short = b"SQLite format 3\0".to_vec();
    short.extend_from_slice(&[0x10, 0, 1, 1, 0, 64, 32, 32]);
    short.resize(40, 0);
    std::fs::write(dir.db(), &short).unwrap();
    for args in [&["db", "status"][..], &["db", "upgrade"], &["db", "adopt"]] {
        refused_by(
            &dir.db(),
            args,
            BAD_FILE,
            &[
                "the database file is damaged: it is 40 bytes, shorter than the 100-byte header every SQLite database starts with",
                "--replace-damaged",
            ],
            &|_| {},
        );
    }
    std::fs::remove_file(dir.db()).unwrap();
    old_app_with_users(&dir.db(), 3000);
    let full = std::fs::read(dir.db()).unwrap();
    std::fs::write(dir.db(), &full[..full.len() / 2]).unwrap();
    refused_by(
        &dir.db(),
        &["db", "status"],
        BAD_FILE,
        &[&format!(
            "it is {} bytes but its header says {}: it was cut short",
            full.len() / 2,
            full.len()
        )],
        &|_| {},
    );
}

#[test]
fn a_missing_folder_is_named_and_nothing_is_created() {
    let dir = Dir::new("nofolder");
    let db = dir.0.join("volume/bot_database.db");
    for args in [&["db", "status"][..], &["db", "upgrade"], &["db", "adopt"]] {
        refused_by(
            &db,
            args,
            REFUSED,
            &[
                &format!(
                    "the folder {} does not exist",
                    dir.0.join("volume").display()
                ),
                "Check DATABASE_PATH: is the volume mounted",
            ],
            &|_| {},
        );
    }
    assert!(!dir.0.join("volume").exists());
}

#[test]
fn a_folder_this_user_may_not_write_is_named() {
    let dir = Dir::new("rofolder");
    old_app_with_users(&dir.db(), 10);
    if running_as_root() {
        // `nobody` may write the file, not the folder (where SQLite writes its journal).
        std::os::unix::fs::chown(dir.db(), Some(65534), Some(65534)).unwrap();
    }
    let _read_only = ReadOnlyFolder::new(&dir.0);
    for args in [
        &["db", "upgrade", "--adopt"][..],
        &["db", "adopt"],
        &["db", "stamp", "1"],
    ] {
        refused_by(
            &dir.db(),
            args,
            REFUSED,
            &[
                &format!("cannot write the folder {}", dir.0.display()),
                "SQLite writes a -journal beside the database",
                "`bot db fix-ownership --owner UID:GID` as root",
            ],
            &as_nobody,
        );
    }
    let elsewhere = dir.0.join("new.db");
    refused_by(
        &elsewhere,
        &["db", "upgrade"],
        REFUSED,
        &[&format!("cannot write the folder {}", dir.0.display())],
        &as_nobody,
    );
    assert!(!elsewhere.exists());
}

#[test]
fn a_writer_and_a_reader_holding_the_lock_are_told_apart() {
    let dir = Dir::new("busy");
    old_app_with_users(&dir.db(), 10);
    let short_wait = |command: &mut Command| {
        command.env("DATABASE_BUSY_TIMEOUT", "0.3");
    };
    // In another process: closing any descriptor of the file (as reading it to compare does)
    // would drop this process's own locks.
    let writer = LockHolder::start(&dir.db(), "BEGIN IMMEDIATE");
    refused_by(
        &dir.db(),
        &["db", "adopt"],
        5,
        &[
            "another process is writing to the database (it holds the write lock) for 0.3s",
            "Stop the other writer and retry: is the bot still running",
        ],
        &short_wait,
    );
    drop(writer);
    let reader = LockHolder::start(&dir.db(), "BEGIN; SELECT count(*) FROM users");
    refused_by(
        &dir.db(),
        &["db", "adopt"],
        5,
        &[
            "another process kept a read transaction open on the database, so this write could not commit",
            "Let the reader finish and retry",
        ],
        &short_wait,
    );
    drop(reader);
    assert_eq!(ok(&dir.db(), &["db", "adopt"])["adopted"], 1);
    refused_by(
        &dir.db(),
        &["db", "status"],
        2,
        &["DATABASE_BUSY_TIMEOUT=\"soon\" is not a number of seconds"],
        &|command| {
            command.env("DATABASE_BUSY_TIMEOUT", "soon");
        },
    );
}

#[test]
fn a_forced_stamp_is_blamed_on_the_stamp_not_on_a_hand_edit() {
    let dir = Dir::new("forced");
    sql(
        &dir.db(),
        &REVISION_1.replace("\tlast_name VARCHAR(128),\n", ""),
    );
    let stamped = ok(&dir.db(), &["db", "stamp", "1", "--force"]);
    assert_eq!(stamped["forced"], true);
    let status = run(&dir.db(), &["db", "status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(
            "forced:   revision 1 was stamped with --force over a schema that differed from it"
        ),
        "{}",
        show(&status)
    );
    assert_eq!(ok(&dir.db(), &["db", "status"])["forced"], 1);
    refused_by(
        &dir.db(),
        &["db", "upgrade"],
        REFUSED,
        &[
            "table users: column last_name missing",
            "Revision 1 was stamped with --force over a schema that differed",
            "`bot db diff --to 1` prints the differences as SQL",
        ],
        &|_| {},
    );
    let output = run(&dir.db(), &["db", "upgrade"]);
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("by hand"),
        "{}",
        show(&output)
    );
}

#[test]
fn an_extra_table_of_the_old_app_is_not_a_dead_end() {
    let dir = Dir::new("extra");
    sql(&dir.db(), REVISION_1);
    sql(
        &dir.db(),
        "CREATE TABLE settings (key VARCHAR(64) PRIMARY KEY, value TEXT)",
    );
    let status = ok(&dir.db(), &["db", "status"]);
    assert_eq!(status["extra_tables"], serde_json::json!(["settings"]));
    for args in [&["db", "adopt"][..], &["db", "upgrade", "--adopt"]] {
        refused_by(
            &dir.db(),
            args,
            REFUSED,
            &[
                "matches no revision of this build (closest: revision 1)",
                "No revision has the table settings: the old app's own?",
                "If the bot does not need it, drop it (after `bot db backup FILE`); to keep it, add it in a migration",
                "`bot db diff --to 1` prints every difference as SQL",
                "`bot db baseline FILE` prints this database's schema as a first migration",
            ],
            &|_| {},
        );
    }
}

/// A row changed in place so that the `users` table and its unique index disagree:
/// `quick_check` does not see it, `integrity_check` does.
#[test]
fn check_runs_integrity_check_and_fails_on_a_table_its_index_disagrees_with() {
    let dir = Dir::new("index-mismatch");
    sql(&dir.db(), REVISION_1);
    let conn = Connection::open(dir.db()).unwrap();
    for i in 0..100_i64 {
        conn.execute(
            "INSERT INTO users (telegram_id, username) VALUES (?1, ?2)",
            rusqlite::params![1_000_000 + i, format!("user{i}")],
        )
        .unwrap();
    }
    drop(conn);
    let mut bytes = std::fs::read(dir.db()).unwrap();
    // 1000050 as a 3-byte integer becomes 1000001: the table holds it twice, the index once.
    let at = bytes
        .windows(3)
        .position(|w| w == [0x0f, 0x42, 0x72])
        .unwrap();
    bytes[at..at + 3].copy_from_slice(&[0x0f, 0x42, 0x41]);
    std::fs::write(dir.db(), &bytes).unwrap();
    refused(
        &dir.db(),
        &["db", "check"],
        BAD_FILE,
        "the database file is damaged",
    );
}

/// A FIFO or a device at DATABASE_PATH is named, not read (a FIFO would block) or created.
#[test]
fn a_fifo_or_a_device_at_the_database_path_is_refused_and_named() {
    let dir = Dir::new("fifo");
    let fifo = dir.0.join("pipe.db");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for args in [&["db", "status"][..], &["db", "upgrade"], &["db", "check"]] {
        let output = bot(&fifo, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let output = output.wait_with_output().unwrap();
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(output.status.code(), Some(BAD_FILE), "{}", show(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("a named pipe (FIFO)"), "{stderr}");
        assert!(!stderr.contains("creating"), "{stderr}");
    }
    let null = Path::new("/dev/null");
    for args in [&["db", "status"][..], &["db", "upgrade"]] {
        let output = run(null, args);
        assert_eq!(output.status.code(), Some(BAD_FILE), "{}", show(&output));
        let text = show(&output);
        assert!(text.contains("/dev/null is a character device"), "{text}");
        assert!(!text.contains("creating"), "{text}");
    }
}

/// `bot db status | head -1`: a reader that goes away ends the command quietly, no panic.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = Dir::new("closed-stdout");
    old_app_with_users(&dir.db(), 1);
    let mut child = bot(&dir.db(), &["db", "status"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(101), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

/// An empty DATABASE_PATH is refused (not silently the default); a relative one is named with
/// the working directory.
#[test]
fn an_empty_database_path_is_refused_and_a_relative_one_is_named_in_full() {
    let dir = Dir::new("empty-path");
    let output = bot(Path::new(""), &["db", "status"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    assert_stderr_has(&output, "DATABASE_PATH is set but empty");
    let output = bot(Path::new("missing/bot.db"), &["db", "status"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(REFUSED), "{}", show(&output));
    let full = dir.0.join("missing/bot.db").display().to_string();
    assert_stderr_has(&output, &full);
}

/// Restoring the live file over itself (or a symlink to it) is refused at once; in
/// rollback-journal mode a reader that blocks the restore is named as a reader.
#[test]
fn restore_refuses_the_live_file_itself_and_names_a_reader_as_a_reader() {
    let dir = Dir::new("restore-self");
    old_app_with_users(&dir.db(), 10);
    let link = dir.0.join("link.db");
    std::os::unix::fs::symlink(dir.db(), &link).unwrap();
    for source in [dir.db(), link] {
        let started = Instant::now();
        refused(
            &dir.db(),
            &["db", "restore", source.to_str().unwrap()],
            REFUSED,
            "is the live database itself",
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let source = dir.0.join("source.db");
    old_app_with_users(&source, 5);
    let reader = LockHolder::start(&dir.db(), "BEGIN; SELECT count(*) FROM users");
    refused_by(
        &dir.db(),
        &["db", "restore", source.to_str().unwrap()],
        5,
        &["another process kept a read transaction open on the database"],
        &|command| {
            command.env("DATABASE_BUSY_TIMEOUT", "0.3");
        },
    );
    drop(reader);
}

/// A WAL without its `-shm` in a folder this user may not write: named, with the fix.
#[test]
fn a_wal_without_shm_in_a_read_only_folder_is_named() {
    let dir = Dir::new("wal-no-shm");
    old_app_with_users(&dir.db(), 50);
    kill_a_writer_mid_transaction(&dir.db(), true);
    std::fs::remove_file(beside(&dir.db(), "-shm")).unwrap();
    let _guard = ReadOnlyFolder::new(&dir.0);
    for args in [&["db", "status"][..], &["db", "history"], &["db", "check"]] {
        refused_by(
            &dir.db(),
            args,
            REFUSED,
            &[
                &format!("a write-ahead log {}-wal", dir.db().display()),
                "Run `bot db status` as a user who may write",
            ],
            &as_nobody,
        );
    }
}

/// A backup that fails while writing (here: the file size limit) leaves no partial copy.
#[test]
fn a_failed_backup_leaves_no_partial_copy() {
    let dir = Dir::new("backup-fails");
    old_app_with_users(&dir.db(), 5000);
    let dest = dir.0.join("copy.db");
    let mut command = bot(&dir.db(), &["db", "backup", dest.to_str().unwrap()]);
    limit_file_size(&mut command);
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(!dest.exists(), "{} left behind", dest.display());
    let backup_to = dir.0.join("before.db");
    let mut command = bot(
        &dir.db(),
        &[
            "db",
            "upgrade",
            "--adopt",
            "--backup-to",
            backup_to.to_str().unwrap(),
        ],
    );
    limit_file_size(&mut command);
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(!backup_to.exists(), "{} left behind", backup_to.display());
}

/// A rollback restores the backup `upgrade --backup-to` takes: when the backup is not the state
/// the migration starts from, the migration stops before its first commit. Here another process
/// (this test) takes the write lock before the upgrade, lets it take its backup at revision 2,
/// then undoes revision 2 and commits; the upgrade, under the lock at last, starts from
/// revision 1, and its backup would roll back to a revision 2 the database no longer had.
#[test]
fn a_backup_that_is_not_the_state_the_migration_starts_from_stops_it_before_its_first_commit() {
    use std::io::{BufRead, BufReader, Read};
    let dir = Dir::new("backup-not-before");
    let db = dir.db();
    ok(&db, &["db", "upgrade"]);
    sql(
        &db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         INSERT INTO users (telegram_id, first_name) SELECT i, 'user' || i FROM n;",
    );
    ok(&db, &["db", "downgrade", "--to", "2"]);
    let backup = dir.path("pre-deploy.db");
    let announcement = beside(&db, ".migrating");
    let holder = Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut upgrade = upgrade_backing_up_to(&db, &backup)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(upgrade.stdout.take().unwrap());
    let mut said = String::new();
    while !said.contains("backed up to") {
        said.clear();
        assert!(
            stdout.read_line(&mut said).unwrap() > 0,
            "the upgrade ended before its backup"
        );
    }
    // The upgrade waits for the lock, announcing all along that it runs.
    let modified = || {
        std::fs::metadata(&announcement)
            .unwrap()
            .modified()
            .unwrap()
    };
    let first = modified();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        modified() > first,
        "the announcement is rewritten while it waits"
    );
    assert!(
        upgrade.try_wait().unwrap().is_none(),
        "it waits for the lock"
    );
    holder
        .execute_batch(&format!(
            "{}DELETE FROM schema_history WHERE version = 2; COMMIT;",
            include_str!("../../migrations/sql/0002_user_activity.down.sql")
        ))
        .unwrap();
    drop(holder);
    // Nothing of the upgrade's is committed (it would be written at COMMIT only): these are
    // the bytes the other process left.
    let left = std::fs::read(&db).unwrap();
    let status = upgrade.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    upgrade
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "stdout: {rest}\nstderr: {stderr}");
    for needle in [
        &format!(
            "the backup {} taken before the migration is at revision 2 (behind), but the database was at revision 1 (behind) when the migration took the write lock",
            backup.display()
        ),
        "a rollback would restore it",
        "the transaction was rolled back before its COMMIT and the database was left as it was (at revision 1)",
        "Nothing needs undoing",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    // The gate's error is the error's source and leads its message: said once, not twice.
    assert_eq!(
        stderr.matches("a rollback would restore it").count(),
        1,
        "{stderr}"
    );
    assert!(!rest.contains("the database is at revision"), "{rest}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        left,
        "the database is as it was"
    );
    assert!(!beside(&db, "-journal").exists());
    assert_eq!(history_of(&db), ("behind".to_string(), vec![1]));
    assert_eq!(count_users(&db), 500);
    assert!(
        !announcement.exists(),
        "the announcement is removed on failure too"
    );
}

/// Without `--backup-to` nothing is gated; with it, a sound backup of the state the migration
/// starts from lets every step commit, and the report names the backup as before.
#[test]
fn a_sound_backup_lets_the_migration_commit_and_is_reported() {
    let dir = Dir::new("backup-sound");
    let db = dir.db();
    old_app_with_users(&db, 500);
    let backup = dir.path("pre-deploy.db");
    let report = ok(
        &db,
        &[
            "db",
            "upgrade",
            "--adopt",
            "--backup-to",
            backup.to_str().unwrap(),
        ],
    );
    let head = report["to"].as_u64().unwrap();
    assert_eq!(report["adopted"], 1, "{report}");
    assert_eq!(numbers(&report["applied"]), (2..=head).collect::<Vec<_>>());
    assert_eq!(
        (
            report["backup"]["path"].as_str(),
            report["backup"]["revision"].as_u64(),
            report["backup"]["state"].as_str()
        ),
        (backup.to_str(), Some(1), Some("unstamped")),
        "{report}"
    );
    assert!(report["backup"]["bytes"].as_u64().unwrap() > 0);
    assert!(!beside(&db, ".migrating").exists());
    assert!(!beside(&backup, "-shm").exists() && !beside(&backup, "-wal").exists());
    assert_eq!(count_users(&db), 500);
}

/// In WAL mode the backup is copied beside the migration, from the state pinned before the
/// migration takes the write lock. Another process that commits between the two (here one
/// user, the revision unchanged, which no check of the revision sees) makes the copy lack
/// that row: the migration stops before its first commit and says why.
#[test]
fn in_wal_mode_a_commit_between_the_backup_and_the_lock_stops_the_migration() {
    let (dir, db) = Dir::behind("backup-overtaken", true);
    let backup = dir.path("pre-deploy.db");
    let Ended {
        status,
        stdout: rest,
        stderr,
    } = upgrade_overtaken_at(&db, &backup, "beside the migration");
    assert_eq!(status.code(), Some(1), "stdout: {rest}\nstderr: {stderr}");
    for needle in [
        "lacks what another process committed to the database after the copy began",
        "the database was left as it was",
        "Nothing needs undoing",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    // The database is as the other process left it (in WAL mode its bytes move with each
    // checkpoint: its content is compared).
    let head = migrations::head() as u64;
    assert_eq!(
        history_of(&db),
        ("behind".to_string(), (1..head).collect::<Vec<_>>())
    );
    assert_eq!(count_users(&db), 501);
}

/// In WAL mode the copy is written beside the migration and checked before its first commit:
/// the report names it, at the revision the database had, with every user.
#[test]
fn in_wal_mode_the_backup_is_copied_beside_the_migration_and_reported() {
    let (dir, db) = Dir::behind("backup-wal-beside", true);
    let backup = dir.path("pre-deploy.db");
    let output = upgrade_backing_up_to(&db, &backup).output().unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", show(&output));
    assert!(said.contains("beside the migration"), "{said}");
    let head = migrations::head() as u64;
    let report = ok(&dir.db(), &["db", "status"]);
    assert_eq!(report["version"], head, "{report}");
    assert!(!beside(&backup, "-shm").exists() && !beside(&backup, "-wal").exists());
    let copy = Connection::open(&backup).unwrap();
    let (users, version): (i64, i64) = copy
        .query_row(
            "SELECT (SELECT count(*) FROM users), (SELECT max(version) FROM schema_history)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((users, version as u64), (500, head - 1));
}

/// In WAL mode a copy that cannot be written (its folder is a file) stops the migration
/// before its first commit; nothing is left half written.
#[test]
fn in_wal_mode_a_backup_that_cannot_be_written_stops_the_migration() {
    let (dir, db) = Dir::behind("backup-wal-unwritable", true);
    std::fs::write(dir.path("not-a-folder"), b"x").unwrap();
    let backup = dir.path("not-a-folder").join("pre-deploy.db");
    let left = count_users(&db);
    let output = upgrade_backing_up_to(&db, &backup).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(stderr.contains("could not be written"), "{stderr}");
    assert!(
        stderr.contains("the database was left as it was"),
        "{stderr}"
    );
    let head = migrations::head() as u64;
    assert_eq!(
        history_of(&db),
        ("behind".to_string(), (1..head).collect::<Vec<_>>())
    );
    assert_eq!(count_users(&db), left);
}
