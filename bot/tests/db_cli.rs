//! `bot db ...` as a process: every state's message and exit code, nothing changed by a
//! refusal, two upgrades at once, and SIGKILL in the middle of the `users` rebuild.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

const REFUSED: i32 = 3;
const BAD_FILE: i32 = 4;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("bot-db-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("bot_database.db")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bot(db: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bot"));
    command
        .args(args)
        .env("DATABASE_PATH", db)
        .env_remove("BOT_TOKEN")
        .stdin(Stdio::null());
    command
}

fn run(db: &Path, args: &[&str]) -> Output {
    bot(db, args).output().unwrap()
}

fn show(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok(db: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = run(db, &all);
    assert!(output.status.success(), "{args:?}: {}", show(&output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", show(&output)))
}

/// Runs `args`, expects exit `code` with `needle` in the message (on stderr, and in the JSON
/// object with `--json`), and the database file byte-for-byte as before.
fn refused(db: &Path, args: &[&str], code: i32, needle: &str) {
    let before = std::fs::read(db).unwrap();
    let output = run(db, args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}: {}",
        show(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(needle),
        "{args:?}: {needle:?} not in {stderr}"
    );
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let output = run(db, &with_json);
    assert_eq!(output.status.code(), Some(code));
    let object: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&output)));
    assert_eq!(object["exit_code"], code);
    assert!(
        object["error"].as_str().unwrap().contains(needle),
        "{object}"
    );
    assert_eq!(
        std::fs::read(db).unwrap(),
        before,
        "{args:?} changed the file"
    );
}

fn sql(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
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
    let how: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["how"].as_str().unwrap())
        .collect();
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
    refused(
        &dir.db(),
        &["db", "restore", "/nonexistent.db"],
        BAD_FILE,
        "damaged",
    );
}

#[test]
fn two_upgrade_processes_started_together_both_succeed_and_apply_once() {
    let dir = Dir::new("race");
    sql(&dir.db(), REVISION_1);
    {
        let conn = Connection::open(dir.db()).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..50_000 {
            conn.execute(
                "INSERT INTO users (telegram_id, first_name) VALUES (?1, 'x')",
                [i],
            )
            .unwrap();
        }
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
