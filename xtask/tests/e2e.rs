//! End-to-end: the real `cargo xtask` commands against the real Docker engine, real images, real
//! SQLite files in real volumes, and the Bot API stand-in in its container.
//!
//! These tests need a running Docker daemon and fail, saying so, when there is none.

mod common;

use std::path::Path;

use common::{Project, SERIAL, old_app_database, report, steps, text, xtask};
use rusqlite::Connection;
use serde_json::Value;

#[test]
fn the_seeds_database_is_adopted_upgraded_and_served() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("seed");
    let old = project.dir.join("bot_database.db");
    old_app_database(&old, 1000);

    let restored = project.xtask("restore", &[old.to_str().unwrap(), "--yes"]);
    assert!(restored.status.success(), "{}", text(&restored));
    assert_eq!(project.db_status()["state"], "unstamped");
    assert_eq!(project.db_status()["matches"], 1);

    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(update.status.success(), "{}", text(&update));
    let first = report(&update);
    assert_eq!(first["result"], "ok");
    assert_eq!(first["state_before"], "unstamped");
    let head = project.db_status()["head"].clone();
    assert_eq!(first["revision_after"], head);
    assert!(
        first["backup"]
            .as_str()
            .is_some_and(|b| Path::new(b).exists()),
        "{first}"
    );
    let steps = steps(&first);
    assert!(
        steps.iter().any(|s| s == "migrate database") && steps.iter().any(|s| s == "save backup"),
        "{steps:?}"
    );

    let status = project.db_status();
    assert_eq!(status["state"], "current", "{status}");
    assert_eq!(status["version"], head);

    let chat = project.xtask("chat", &["/start", "--user", "424242"]);
    assert!(chat.status.success(), "{}", text(&chat));
    assert!(
        String::from_utf8_lossy(&chat.stdout).contains("Welcome, Demo!"),
        "{}",
        text(&chat)
    );

    let copy = project.copy_database("after-update");
    let conn = Connection::open(&copy).unwrap();
    let kept: i64 = conn
        .query_row(
            "SELECT count(*) FROM users WHERE telegram_id BETWEEN 70000000 AND 70000999
               AND username = 'user' || (telegram_id - 70000000) AND first_name = 'First' || (telegram_id - 70000000)
               AND last_name = 'Last' || (telegram_id - 70000000) AND is_admin = ((telegram_id - 70000000) % 50 = 0)
               AND created_at = '2024-01-02 03:04:05'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 1000, "every old user is there with their data");
    let demo_user: i64 = conn
        .query_row(
            "SELECT count(*) FROM users WHERE telegram_id = 424242",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        demo_user, 1,
        "/start through the stand-in registered the user"
    );

    let container = project.bot_container();
    let again = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(again.status.success(), "{}", text(&again));
    let second = report(&again);
    assert_eq!(second["changed"], false, "{second}");
    let after = project.bot_container();
    assert_eq!(
        after["Id"], container["Id"],
        "the container was not recreated"
    );
    assert_eq!(
        after["State"]["StartedAt"], container["State"]["StartedAt"],
        "the bot was not restarted"
    );
    assert_eq!(after["State"]["Status"], "running");
}

#[test]
fn first_deploy_on_a_fresh_volume_leaves_a_current_database_and_a_healthy_bot() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("fresh");
    // An empty volume and no bot: nothing to lose, so no question (no --yes, no terminal),
    // and no downtime, since nothing served before.
    let deploy = project.xtask("first-deploy", &["--json"]);
    assert!(deploy.status.success(), "{}", text(&deploy));
    let outcome = report(&deploy);
    assert_eq!(outcome["downtime_seconds"], Value::Null, "{outcome}");
    // A bot that serves now: stopping it asks, and without a terminal it needs --yes.
    let restart = project.xtask("restart", &[]);
    assert_eq!(restart.status.code(), Some(2), "{}", text(&restart));
    assert!(
        String::from_utf8_lossy(&restart.stderr).contains("pass --yes"),
        "{}",
        text(&restart)
    );
    let status = project.db_status();
    assert_eq!(status["state"], "current", "{status}");
    assert_eq!(status["version"], status["head"], "{status}");
    assert_eq!(
        project.bot_container()["State"]["Health"]["Status"],
        "healthy"
    );
    let help = project.xtask("chat", &["/help"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("/start"),
        "{}",
        text(&help)
    );
    // Plain text gets no answer from the bot: said so, not "is the demo stack up?".
    let plain = project.xtask("chat", &["hello", "--wait-ms", "1500"]);
    assert_eq!(plain.status.code(), Some(1), "{}", text(&plain));
    let said = String::from_utf8_lossy(&plain.stderr);
    assert!(
        said.contains("no answer in 2 s: the bot answers commands only")
            && !said.contains("is the demo stack up"),
        "{said}"
    );
    // Without --demo, tasks work on what the last deploy deployed (its profile and environment
    // file, from the history): no "Couldn't find env file", no "pass --demo".
    let name = project.name.as_str();
    let logs = xtask(&["logs", "--project-name", name]);
    assert!(logs.status.success(), "{}", text(&logs));
    let help = xtask(&["chat", "--project-name", name, "/help"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("/start"),
        "{}",
        text(&help)
    );

    // `cargo xtask db`: `bot db` on the project's volume. Reading runs at once.
    let read = xtask(&["db", "--project-name", name, "status", "--json"]);
    assert!(read.status.success(), "{}", text(&read));
    let state: Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(state["state"], "current", "{state}");
    // Writing asks (no terminal here: refused, nothing done), then backs up under the lock.
    let backups = || {
        std::fs::read_dir(project.state_dir())
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".db")
                })
                .count()
            })
            .unwrap_or(0)
    };
    let before = backups();
    let unasked = xtask(&["db", "--project-name", name, "downgrade", "--to", "4"]);
    assert_eq!(unasked.status.code(), Some(2), "{}", text(&unasked));
    assert_eq!(project.db_status()["version"], status["head"]);
    let down = xtask(&[
        "db",
        "--project-name",
        name,
        "--yes",
        "downgrade",
        "--to",
        "4",
    ]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(project.db_status()["version"], 4);
    assert_eq!(backups(), before + 1, "a backup before the write");
    let up = xtask(&["db", "--project-name", name, "--yes", "upgrade"]);
    assert!(up.status.success(), "{}", text(&up));
    assert_eq!(project.db_status()["version"], status["head"]);
    // Refused by the engine: its exit code is passed on (3), its message shown.
    let stamp = xtask(&["db", "--project-name", name, "--yes", "stamp", "2"]);
    assert_eq!(stamp.status.code(), Some(3), "{}", text(&stamp));
    // What another task does is named.
    let other = xtask(&["db", "--project-name", name, "backup", "/tmp/x.db"]);
    assert_eq!(other.status.code(), Some(2), "{}", text(&other));
    assert!(String::from_utf8_lossy(&other.stderr).contains("cargo xtask backup"));
    let history = xtask(&["history", "--project-name", name, "--json"]);
    let history: Value = serde_json::from_slice(&history.stdout).unwrap();
    let writes: Vec<&Value> = history["deploys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["task"] == "db" && r["result"] == "ok")
        .collect();
    assert_eq!(writes.len(), 2, "the downgrade and the upgrade: {history}");
}

#[test]
fn a_schema_matching_no_revision_is_refused_untouched_and_the_bot_keeps_running() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("nomatch");
    let deploy = project.xtask("first-deploy", &["--yes"]);
    assert!(deploy.status.success(), "{}", text(&deploy));

    // The old app's schema with `last_name` missing, put under the running bot.
    let bad = project.dir.join("bad.db");
    old_app_database(&bad, 20);
    let conn = Connection::open(&bad).unwrap();
    conn.execute_batch("ALTER TABLE users DROP COLUMN last_name")
        .unwrap();
    drop(conn);
    project.overwrite_live_database(&bad);
    let before = project.copy_out("/data/bot_database.db", "before");
    let container = project.bot_container();
    assert_eq!(container["State"]["Status"], "running");

    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert_eq!(update.status.code(), Some(3), "refused: {}", text(&update));
    let refused = report(&update);
    assert_eq!(refused["result"], "refused");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("table users: column last_name missing"),
        "{error}"
    );
    assert!(String::from_utf8_lossy(&update.stderr).contains("column last_name missing"));
    let steps = steps(&refused);
    assert!(
        !steps
            .iter()
            .any(|s| s == "stop bot" || s == "back up database"),
        "{steps:?}"
    );

    let after = project.bot_container();
    assert_eq!(after["Id"], container["Id"]);
    assert_eq!(
        after["State"]["StartedAt"], container["State"]["StartedAt"],
        "the bot was not restarted"
    );
    assert_eq!(after["State"]["Status"], "running", "the bot keeps running");
    assert_eq!(after["RestartCount"], container["RestartCount"]);
    let unchanged = project.copy_out("/data/bot_database.db", "after");
    assert_eq!(
        std::fs::read(&before).unwrap(),
        std::fs::read(&unchanged).unwrap(),
        "the database file is untouched"
    );
    assert_eq!(project.db_status()["state"], "unstamped");
}

#[test]
fn cargo_xtask_alone_lists_the_tasks() {
    let output = xtask(&[]);
    assert!(output.status.success(), "{}", text(&output));
    let help = String::from_utf8_lossy(&output.stdout);
    for task in [
        "first-deploy",
        "prod-migrate",
        "prod-full-update",
        "status",
        "restore",
        "chat",
    ] {
        assert!(help.contains(task), "{task} missing from:\n{help}");
    }
}

#[test]
fn the_compose_file_used_by_hand_asks_for_the_image_instead_of_pulling_one() {
    let compose = common::root().join("docker/docker-compose.prod.yml");
    let compose = compose.to_str().unwrap();
    // Before any deploy: no docker/.env (which a deploy writes for the by-hand commands).
    let dir = std::env::temp_dir().join(format!("tgbot-by-hand-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let no_deploy = dir.join("empty.env");
    std::fs::write(&no_deploy, "").unwrap();
    let output = common::run(
        "docker-compose",
        &[
            "--env-file",
            no_deploy.to_str().unwrap(),
            "-f",
            compose,
            "-p",
            "tgbot-by-hand",
            "config",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("set BOT_IMAGE=tgbot-bot:<project>"),
        "{}",
        text(&output)
    );
    // As the file's own comment says: with BOT_IMAGE set, it names that image.
    let named = std::process::Command::new("docker-compose")
        .args(["-f", compose, "-p", "tgbot-by-hand", "config"])
        .env("BOT_IMAGE", "tgbot-bot:tgbot-by-hand")
        .env("BOT_ENV_FILE", common::root().join("docker/demo.env"))
        .output()
        .unwrap();
    assert!(named.status.success(), "{}", text(&named));
    assert!(String::from_utf8_lossy(&named.stdout).contains("image: tgbot-bot:tgbot-by-hand"));
}
