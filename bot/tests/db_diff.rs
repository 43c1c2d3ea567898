//! `bot db diff --to N` and `bot db baseline FILE` as a person uses them: the script is printed,
//! the database is not touched, and the script, run with the `sqlite3` shell (`-bail`; rusqlite
//! where the shell is not installed) on a copy of a drifted database, leaves a schema that
//! `bot db status` says matches revision N, with every row kept.

mod common;

use common::{Dir, each_str, head, ok, run, show, sql};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rusqlite::Connection;
use serde_json::Value;

const REFUSED: i32 = 3;
const BAD_FILE: i32 = 4;

const REVISION_1: &str = include_str!("../../migrations/sql/0001_initial.up.sql");
const REVISION_2: &str = include_str!("../../migrations/sql/0002_user_activity.up.sql");
const REVISION_3: &str = include_str!("../../migrations/sql/0003_command_log.up.sql");

/// The database file and what lies beside it, byte for byte.
fn snapshot(db: &Path) -> Vec<Option<Vec<u8>>> {
    ["", "-journal", "-wal", "-shm"]
        .iter()
        .map(|suffix| std::fs::read(format!("{}{suffix}", db.display())).ok())
        .collect()
}

/// `bot db diff` with `args`: exit 0, the database untouched; the script it printed.
fn diff(db: &Path, args: &[&str]) -> String {
    let before = snapshot(db);
    let mut all = vec!["db", "diff"];
    all.extend_from_slice(args);
    let output = run(db, &all);
    assert_eq!(output.status.code(), Some(0), "{args:?}: {}", show(&output));
    assert!(
        snapshot(db) == before,
        "bot db diff changed {}",
        db.display()
    );
    String::from_utf8(output.stdout).unwrap()
}

fn sqlite3_shell() -> bool {
    Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a script on `db` as a person would: `sqlite3 -bail db < script`, or rusqlite's
/// `execute_batch` where the shell is not installed (it also stops at the first error, and
/// the open transaction is rolled back when the connection closes). Whether it succeeded.
fn apply(db: &Path, script: &str) -> Result<(), String> {
    if sqlite3_shell() {
        let mut child = Command::new("sqlite3")
            .arg("-bail")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        if output.status.success() {
            Ok(())
        } else {
            Err(show(&output))
        }
    } else {
        Connection::open(db)
            .unwrap()
            .execute_batch(script)
            .map_err(|e| e.to_string())
    }
}

/// A copy of `db` (no process has it open) with `script` applied; panics if it fails.
fn fixed_copy(dir: &Dir, db: &Path, script: &str) -> PathBuf {
    let copy = dir.path("copy.db");
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(db, &copy).unwrap();
    apply(&copy, script).unwrap_or_else(|e| panic!("{e}\n{script}"));
    copy
}

fn rows(db: &Path, query: &str) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let mut statement = conn.prepare(query).unwrap();
    statement
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

const USERS: &str = "SELECT id || ' ' || telegram_id || ' ' || coalesce(username, '-') || ' ' || is_admin FROM users ORDER BY id";

fn with_users(db: &Path) {
    sql(
        db,
        "INSERT INTO users (id, telegram_id, username, is_admin) VALUES (1, 100, 'ann', 1), (2, 200, NULL, 0), (7, 700, 'bob', 0);",
    );
}

/// A database made of `schema`, with three users.
fn drifted(dir: &Dir, schema: &str) -> PathBuf {
    sql(&dir.db(), schema);
    with_users(&dir.db());
    dir.db()
}

/// A JSON array of strings, as strings.
fn strings(array: &Value) -> Vec<&str> {
    array
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// [`drifted`] in a new folder named after the test: the folder and the database.
fn drifted_in(name: &str, schema: &str) -> (Dir, PathBuf) {
    let dir = Dir::new(name);
    let db = drifted(&dir, schema);
    (dir, db)
}

/// The common case: the script to `version` makes an unstamped copy match it, keeps every user,
/// and contains `expected`.
fn matches_after_diff(name: &str, schema: &str, version: u32, expected: &[&str]) -> String {
    let (dir, db) = drifted_in(name, schema);
    let before = ok(&db, &["db", "status"]);
    assert_eq!(before["state"], "unstamped", "{name}");
    assert!(before["matches"].is_null(), "{name}: {before}");
    let script = diff(&db, &["--to", &version.to_string()]);
    for needle in expected {
        assert!(
            script.contains(needle),
            "{name}: {needle:?} not in\n{script}"
        );
    }
    let copy = fixed_copy(&dir, &db, &script);
    let after = ok(&copy, &["db", "status"]);
    assert_eq!(after["state"], "unstamped", "{name}: {after}\n{script}");
    assert_eq!(after["matches"], version, "{name}: {after}\n{script}");
    assert_eq!(rows(&copy, USERS), rows(&db, USERS), "{name}");
    script
}

#[test]
fn a_missing_column_is_added() {
    matches_after_diff(
        "missing-column",
        &REVISION_1.replace("\tlast_name VARCHAR(128),\n", ""),
        1,
        &[
            "-- table users: column last_name missing (revision 1 adds it)\nALTER TABLE users ADD COLUMN last_name VARCHAR(128);",
            "after it, the schema matches revision 1",
        ],
    );
}

#[test]
fn a_missing_index_is_created() {
    let revision_3 = format!("{REVISION_1}{REVISION_2}{REVISION_3}").replace(
        "CREATE INDEX ix_command_log_used_at ON command_log (used_at);",
        "",
    );
    matches_after_diff(
        "missing-index",
        &revision_3,
        3,
        &[
            "-- table command_log: index ix_command_log_used_at missing (revision 3 adds it)\nCREATE INDEX ix_command_log_used_at ON command_log (used_at);",
        ],
    );
}

#[test]
fn an_extra_index_is_dropped_and_its_definition_shown() {
    matches_after_diff(
        "extra-index",
        &format!("{REVISION_1}\nCREATE UNIQUE INDEX ix_users_username ON users (username);"),
        1,
        &[
            "unexpected index ix_users_username UNIQUE (username)",
            "-- its definition: CREATE UNIQUE INDEX ix_users_username ON users (username)\nDROP INDEX ix_users_username;",
        ],
    );
}

#[test]
fn an_extra_view_is_dropped() {
    matches_after_diff(
        "extra-view",
        &format!("{REVISION_1}\nCREATE VIEW admins AS SELECT * FROM users WHERE is_admin = 1;"),
        1,
        &[
            "-- view admins: not in revision 1; revision 4 rebuilds users and would fail on it",
            "DROP VIEW admins;",
        ],
    );
}

#[test]
fn an_extra_trigger_is_dropped() {
    matches_after_diff(
        "extra-trigger",
        &format!(
            "{REVISION_1}\nCREATE TRIGGER keep_admins BEFORE DELETE ON users WHEN old.is_admin BEGIN SELECT RAISE(ABORT, 'admins stay'); END;"
        ),
        1,
        &[
            "-- trigger keep_admins on users: not in revision 1; revision 4 rebuilds users and would drop it",
            "DROP TRIGGER keep_admins;",
        ],
    );
}

#[test]
fn a_different_default_rebuilds_the_table_and_keeps_the_rows() {
    matches_after_diff(
        "default",
        &REVISION_1.replace("is_admin BOOLEAN DEFAULT 0", "is_admin BOOLEAN DEFAULT 1"),
        1,
        &[
            "-- table users: cannot be done with ALTER TABLE:\n--   column is_admin: default 0 expected, found 1",
            "sqlite.org/lang_altertable.html#otheralter",
            "CREATE TABLE new_users (",
            "DROP TABLE users;\nALTER TABLE new_users RENAME TO users;",
        ],
    );
}

#[test]
fn a_bigint_id_rebuilds_the_table_into_a_rowid_alias() {
    let dir = Dir::new("bigint-ok");
    let script = matches_after_diff(
        "bigint",
        &REVISION_1.replace("\tid INTEGER NOT NULL,", "\tid BIGINT NOT NULL,"),
        1,
        &[
            "--   column id: a rowid alias (INTEGER PRIMARY KEY) expected, found BIGINT PRIMARY KEY",
            "INSERT INTO new_users (id, telegram_id, username, first_name, last_name, is_admin, created_at)",
        ],
    );
    // After it, an insert without an id gets one, as on revision 1.
    let db = drifted(
        &dir,
        &REVISION_1.replace("\tid INTEGER NOT NULL,", "\tid BIGINT NOT NULL,"),
    );
    let copy = fixed_copy(&dir, &db, &script);
    sql(&copy, "INSERT INTO users (telegram_id) VALUES (800)");
    assert_eq!(
        rows(&copy, "SELECT '' || id FROM users WHERE telegram_id = 800"),
        ["8"]
    );
}

#[test]
fn an_extra_table_is_dropped_only_when_data_loss_is_allowed() {
    let (dir, db) = drifted_in(
        "extra-table",
        &format!(
            "{REVISION_1}\nCREATE TABLE settings (key VARCHAR(64) PRIMARY KEY, value TEXT);\nINSERT INTO settings VALUES ('mode', 'old');"
        ),
    );
    let script = diff(&db, &["--to", "1"]);
    assert!(
        script.contains("-- loses data; uncomment it (or pass --allow-data-loss) to run it:\n-- DROP TABLE settings;"),
        "{script}"
    );
    assert!(
        script.contains("--   table settings: unexpected table"),
        "{script}"
    );
    let copy = fixed_copy(&dir, &db, &script);
    let status = ok(&copy, &["db", "status"]);
    assert!(status["matches"].is_null(), "{status}");
    assert_eq!(status["extra_tables"], serde_json::json!(["settings"]));
    assert_eq!(rows(&copy, "SELECT value FROM settings"), ["old"]);

    let script = diff(&db, &["--to", "1", "--allow-data-loss"]);
    assert!(script.contains("\nDROP TABLE settings;\n"), "{script}");
    let copy = fixed_copy(&dir, &db, &script);
    assert_eq!(ok(&copy, &["db", "status"])["matches"], 1);
    assert_eq!(rows(&copy, USERS), rows(&db, USERS));
}

#[test]
fn an_extra_column_is_dropped_only_when_data_loss_is_allowed() {
    let (dir, db) = drifted_in(
        "extra-column",
        &format!("{REVISION_1}\nALTER TABLE users ADD COLUMN nickname TEXT;"),
    );
    let script = diff(&db, &["--to", "1"]);
    assert!(
        script.contains("-- ALTER TABLE users DROP COLUMN nickname;"),
        "{script}"
    );
    let script = diff(&db, &["--to", "1", "--allow-data-loss"]);
    assert!(
        script.contains("\nALTER TABLE users DROP COLUMN nickname;\n"),
        "{script}"
    );
    let copy = fixed_copy(&dir, &db, &script);
    assert_eq!(ok(&copy, &["db", "status"])["matches"], 1);
}

#[test]
fn a_drifted_database_stamped_with_force_is_behind_after_the_script_and_upgrades() {
    let (dir, db) = drifted_in(
        "forced",
        &REVISION_1.replace("is_admin BOOLEAN DEFAULT 0", "is_admin BOOLEAN DEFAULT 1"),
    );
    ok(&db, &["db", "stamp", "1", "--force"]);
    assert_eq!(ok(&db, &["db", "status"])["state"], "drifted");
    let script = diff(&db, &["--to", "1"]);
    assert!(
        script.contains(
            "-- The history records revision 1: after it the database is no longer drifted."
        ),
        "{script}"
    );
    assert!(!script.contains("schema_history"), "{script}");
    let copy = fixed_copy(&dir, &db, &script);
    let status = ok(&copy, &["db", "status"]);
    assert_eq!(status["state"], "behind", "{status}");
    assert_eq!(status["version"], 1);
    assert_eq!(status["forced"], 1);
    let upgraded = ok(&copy, &["db", "upgrade"]);
    assert_eq!(upgraded["to"], head(), "{upgraded}");
    assert_eq!(ok(&copy, &["db", "status"])["state"], "current");
    assert_eq!(rows(&copy, USERS), rows(&db, USERS));
}

#[test]
fn a_script_that_fails_on_the_rows_changes_nothing() {
    // Revision 1's telegram_id is NOT NULL without a default: the rebuild's copy cannot fill it.
    let dir = Dir::new("fails");
    let db = dir.db();
    sql(
        &db,
        &REVISION_1
            .replace("\ttelegram_id BIGINT NOT NULL,\n", "")
            .replace(",\n\tUNIQUE (telegram_id)", ""),
    );
    sql(&db, "INSERT INTO users (id, username) VALUES (1, 'ann')");
    let script = diff(&db, &["--to", "1"]);
    assert!(
        script.contains("column telegram_id is NOT NULL without a default and users has no such column: the copy fails on a table with rows"),
        "{script}"
    );
    let copy = dir.path("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    let before = snapshot(&copy);
    let failure = apply(&copy, &script).expect_err("the copy cannot fill telegram_id");
    assert!(failure.contains("NOT NULL constraint failed"), "{failure}");
    assert!(
        snapshot(&copy) == before,
        "a failed script changed the copy"
    );
}

#[test]
fn json_lists_each_statement_with_its_kind_and_the_differences() {
    let (dir, db) = drifted_in(
        "json",
        &format!(
            "{}\nCREATE VIEW admins AS SELECT * FROM users WHERE is_admin = 1;",
            REVISION_1.replace("\tlast_name VARCHAR(128),\n", "")
        ),
    );
    let object = ok(&db, &["db", "diff", "--to", "head"]);
    assert_eq!(object["to"], head());
    assert_eq!(object["recorded"], Value::Null);
    assert_eq!(object["remaining"], serde_json::json!([]));
    let kinds = each_str(&object["statements"], "kind");
    // Tables first, then indexes, then triggers: command_log, then revision 5's
    // handled_updates and two /stats summaries, then revision 6's unsent_answers,
    // pending_updates and bot_identity; command_log's two indexes and handled_updates' one; the
    // summaries' 7 triggers.
    assert_eq!(
        kinds,
        [
            ["drop_view", "rebuild_table"].as_slice(),
            &["create_table"; 7],
            &["create_index"; 3],
            &["create_trigger"; 7],
        ]
        .concat(),
        "{kinds:?}"
    );
    for statement in object["statements"].as_array().unwrap() {
        assert!(statement["sql"].as_str().unwrap().ends_with(';'));
        assert_eq!(statement["safe"], true, "{statement}");
        assert_eq!(statement["commented"], false);
        assert!(!statement["comment"].as_str().unwrap().is_empty());
    }
    let differences = strings(&object["differences"]);
    assert!(
        differences.contains(&"table users: column last_name missing (revision 1 adds it)"),
        "{differences:?}"
    );
    let copy = fixed_copy(&dir, &db, object["script"].as_str().unwrap());
    assert_eq!(ok(&copy, &["db", "status"])["matches"], head());
}

#[test]
fn exit_codes_are_those_of_the_other_commands() {
    let dir = Dir::new("codes");
    let db = dir.db();
    sql(&db, REVISION_1);
    let same = run(&db, &["db", "diff", "--to", "1", "--exit-code"]);
    assert_eq!(same.status.code(), Some(0), "{}", show(&same));
    assert!(String::from_utf8_lossy(&same.stdout).contains("nothing to do"));
    let differs = run(&db, &["db", "diff", "--to", "2", "--exit-code"]);
    assert_eq!(differs.status.code(), Some(1), "{}", show(&differs));
    assert!(String::from_utf8_lossy(&differs.stdout).contains("ALTER TABLE users ADD COLUMN"));
    let without = run(&db, &["db", "diff", "--to", "2"]);
    assert_eq!(without.status.code(), Some(0), "{}", show(&without));

    let unknown = run(&db, &["db", "diff", "--to", "99", "--json"]);
    assert_eq!(unknown.status.code(), Some(REFUSED), "{}", show(&unknown));
    let object: Value = serde_json::from_slice(&unknown.stdout).unwrap();
    assert_eq!(object["exit_code"], REFUSED);

    let not_sqlite = dir.path("notes.txt");
    std::fs::write(
        &not_sqlite,
        "not a database at all, but long enough to have a header ".repeat(4),
    )
    .unwrap();
    let bad = run(&not_sqlite, &["db", "diff", "--to", "1"]);
    assert_eq!(bad.status.code(), Some(BAD_FILE), "{}", show(&bad));
    let bad = run(
        Path::new("/"),
        &["db", "baseline", not_sqlite.to_str().unwrap()],
    );
    assert_eq!(bad.status.code(), Some(BAD_FILE), "{}", show(&bad));
}

fn corpus(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations/tests/corpus")
        .join(file)
}

#[test]
fn a_baseline_applied_to_an_empty_database_matches_the_file_it_came_from() {
    let dir = Dir::new("baseline");
    // DATABASE_PATH points nowhere: baseline reads FILE only.
    let nowhere = dir.path("missing/folder/bot_database.db");
    for (file, matches, history) in [
        ("sa20_create_all_r1.db", Some(1), None),
        (
            "alembic20_autogenerate_r1.db",
            Some(1),
            Some("alembic_version"),
        ),
        ("shell_r4.db", Some(4), None),
        ("shell_view_on_users.db", None, None),
        ("shell_without_rowid.db", None, None),
    ] {
        let source = dir.path(file);
        std::fs::copy(corpus(file), &source).unwrap();
        let before = snapshot(&source);
        let output = run(&nowhere, &["db", "baseline", source.to_str().unwrap()]);
        assert!(output.status.success(), "{file}: {}", show(&output));
        assert!(snapshot(&source) == before, "baseline changed {file}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(
            text.starts_with(&format!(
                "-- Revision 1 (baseline): the schema of {}",
                source.display()
            )),
            "{text}"
        );
        assert!(
            text.contains("migrations/sql/0001_baseline.up.sql"),
            "{text}"
        );
        if let Some(history) = history {
            assert!(text.contains(&format!("Left out: {history}")), "{text}");
            assert!(!text.contains(&format!("CREATE TABLE {history}")), "{text}");
        }
        let fresh = dir.path("fresh.db");
        let _ = std::fs::remove_file(&fresh);
        apply(&fresh, &text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let original = ok(&source, &["db", "schema"]);
        let rebuilt = ok(&fresh, &["db", "schema"]);
        assert_eq!(rebuilt["schema"], original["schema"], "{file}");
        let status = ok(&fresh, &["db", "status"]);
        assert_eq!(status["state"], "unstamped", "{file}: {status}");
        assert_eq!(
            status["matches"],
            serde_json::json!(matches),
            "{file}: {status}"
        );
    }
    assert!(!dir.path("missing").exists());
}

#[test]
fn a_baseline_of_a_stamped_database_leaves_the_history_out_and_output_never_overwrites() {
    let dir = Dir::new("baseline-output");
    let db = dir.db();
    ok(&db, &["db", "upgrade"]);
    let file = dir.path("0001_baseline.up.sql");
    let args = ["db", "baseline", db.to_str().unwrap()]
        .into_iter()
        .chain(["--output", file.to_str().unwrap()])
        .collect::<Vec<_>>();
    let object = ok(&db, &args);
    assert_eq!(object["output"], file.to_str().unwrap());
    assert_eq!(object["left_out"], serde_json::json!(["schema_history"]));
    let statements = strings(&object["statements"]);
    // Revisions 1 to 4: users, command_log and 3 indexes; revision 5: 4 tables and indexes, 7
    // triggers; revision 6: 3 tables.
    assert_eq!(statements.len(), 19, "{statements:?}");
    assert!(
        statements[0].starts_with("CREATE TABLE \"users\""),
        "{statements:?}"
    );
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written, object["sql"].as_str().unwrap());

    let again = run(&db, &args);
    assert_eq!(again.status.code(), Some(REFUSED), "{}", show(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already; nothing was written"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);

    let fresh = dir.path("fresh.db");
    apply(&fresh, &written).unwrap();
    let status = ok(&fresh, &["db", "status"]);
    assert_eq!(status["state"], "unstamped");
    assert_eq!(status["matches"], head());
}
