//! The real `bot` binary against the Bot API stand-in (in-process) and a real database file.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::sandbox::*;
use rusqlite::Connection;
use telegram_standin::{Fault, FaultKind, IncomingMessage, SentMessage};

#[test]
fn start_registers_then_refreshes_and_help_lists_the_commands() {
    let sandbox = Sandbox::upgraded("start");
    let bot = sandbox.start_bot();

    assert_eq!(
        sandbox.say(42, "Ann", "/start"),
        "Welcome, Ann! You are registered. Send /help to see what I can do."
    );
    assert_eq!(
        sandbox.say(42, "Anna", "/start"),
        "Welcome back, Anna! Your details are up to date."
    );
    let help = sandbox.say(42, "Anna", "/help");
    for command in ["/start", "/help", "/me", "/stats"] {
        assert!(help.contains(command), "{command} in {help}");
    }
    assert_eq!(
        sandbox.say(7, "Bob", "/nope"),
        "I don't know /nope. Send /help for the list of commands."
    );

    let rows = users(&sandbox.database());
    assert_eq!(
        rows.len(),
        1,
        "/nope from an unknown user does not register: {rows:?}"
    );
    assert_eq!(
        (rows[0].0, rows[0].1.as_str(), rows[0].2.as_deref()),
        (42, "Anna", Some("en"))
    );
    assert!(rows[0].3.is_some(), "last_seen_at is kept");

    let commands = sandbox.standin.commands();
    let published: Vec<&str> = commands
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    assert_eq!(published, ["start", "help", "me", "stats"], "{commands}");

    let health = sandbox.run(&["healthcheck"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let (_, log) = bot.terminate_ok();
    assert!(
        !log.contains("TEST-TOKEN"),
        "the token never appears in the log:\n{log}"
    );
}

#[test]
fn the_bot_refuses_to_start_unless_the_database_is_current() {
    let sandbox = Sandbox::new("refuse");
    let missing = sandbox.run(&[]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no database"));
    assert!(
        !sandbox.database().exists(),
        "the bot does not create the database"
    );

    Connection::open(sandbox.database())
        .unwrap()
        .execute_batch(include_str!("../../migrations/sql/0001_initial.up.sql"))
        .unwrap();
    let unstamped = sandbox.run(&[]);
    assert!(!unstamped.status.success());
    let message = String::from_utf8_lossy(&unstamped.stderr);
    assert!(
        message.contains("unstamped") && message.contains("cargo xtask prod-migrate"),
        "{message}"
    );
    assert_eq!(
        sandbox.standin.stats().calls.get("getupdates"),
        None,
        "it never polled"
    );
}

#[test]
fn healthcheck_fails_without_a_live_polling_loop_or_a_current_database() {
    let sandbox = Sandbox::new("health");
    let no_heartbeat = sandbox.run(&["healthcheck"]);
    assert!(!no_heartbeat.status.success());
    assert!(String::from_utf8_lossy(&no_heartbeat.stderr).contains("heartbeat"));

    std::fs::write(sandbox.heartbeat(), r#"{"ready":true}"#).unwrap();
    Connection::open(sandbox.database())
        .unwrap()
        .execute_batch(include_str!("../../migrations/sql/0001_initial.up.sql"))
        .unwrap();
    let behind = sandbox.run(&["healthcheck"]);
    assert!(!behind.status.success());
    assert!(String::from_utf8_lossy(&behind.stderr).contains("unstamped"));
}

#[test]
fn a_rejected_token_stops_the_bot_with_a_message_that_does_not_show_it() {
    let sandbox = Sandbox::upgraded("token");
    let wrong = "999999:WRONG-secret-token";
    let output = sandbox.command(&[], wrong).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rejected BOT_TOKEN"), "{stderr}");
    assert!(!stderr.contains("WRONG-secret-token"), "{stderr}");
    assert_eq!(sandbox.standin.stats().unauthorized, 1);
}

#[test]
fn db_commands_report_state_as_json() {
    let sandbox = Sandbox::new("dbjson");
    let status = |s: &Sandbox| -> serde_json::Value {
        let output = s.run(&["db", "status", "--json"]);
        assert!(output.status.success());
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let empty = status(&sandbox);
    assert_eq!(empty["state"], "empty");
    assert_eq!(empty["version"], serde_json::Value::Null);
    let head = empty["head"].as_u64().unwrap();
    assert!(head >= 4, "{empty}");
    assert_eq!(
        empty["pending"],
        serde_json::json!((1..=head).collect::<Vec<_>>())
    );
    Connection::open(sandbox.database())
        .unwrap()
        .execute_batch(include_str!("../../migrations/sql/0001_initial.up.sql"))
        .unwrap();
    let unstamped = status(&sandbox);
    assert_eq!(
        (unstamped["state"].as_str(), unstamped["matches"].as_u64()),
        (Some("unstamped"), Some(1))
    );
    let adopt = sandbox.run(&["db", "adopt"]);
    assert!(adopt.status.success());
    assert_eq!(status(&sandbox)["state"], "behind");
    let stamp_wrong = sandbox.run(&["db", "stamp", "head"]);
    assert!(
        !stamp_wrong.status.success(),
        "stamping head on a revision-1 schema is refused"
    );
    assert!(String::from_utf8_lossy(&stamp_wrong.stderr).contains("column language_code missing"));
    sandbox.upgrade();
    let current = status(&sandbox);
    assert_eq!(
        (
            current["state"].as_str(),
            current["version"].as_u64(),
            current["head"].as_u64()
        ),
        (Some("current"), Some(head), Some(head))
    );
}

#[test]
fn me_shows_everything_stored_about_the_user() {
    let sandbox = Sandbox::upgraded("me");
    let bot = sandbox.start_bot();

    assert_eq!(
        sandbox.say(8, "Stranger", "/me"),
        "I don't know you yet, so I store nothing about you. Send /start to register."
    );
    let mut ann = IncomingMessage::new(42, "/start");
    ann.first_name = Some("Ann".into());
    ann.last_name = Some("Lee".into());
    ann.username = Some("ann_lee".into());
    ann.language_code = Some("pt-BR".into());
    sandbox.send(&ann);
    ann.text = "/me".into();
    let me = sandbox.send(&ann);
    let stored = |column: &str| -> String {
        query(
            &sandbox.database(),
            &format!("SELECT {column} FROM users WHERE telegram_id = 42"),
        )
    };
    assert_eq!(
        me,
        format!(
            "Here is what I store about you:\nTelegram id: 42\nUsername: @ann_lee\nFirst name: Ann\n\
             Last name: Lee\nLanguage: pt-BR\nRegistered: {} UTC\nLast seen: {} UTC\nAdmin: no",
            stored("created_at"),
            stored("last_seen_at")
        )
    );

    sandbox.sql("UPDATE users SET is_admin = 1 WHERE telegram_id = 42");
    assert!(sandbox.send(&ann).ends_with("\nAdmin: yes"));
    assert_eq!(users(&sandbox.database()).len(), 1, "/me does not register");
    bot.terminate_ok();
}

#[test]
fn stats_is_for_admins_listed_in_admin_ids_or_flagged_in_the_database() {
    let sandbox = Sandbox::upgraded("stats");
    // An old user seen three days ago, with a command from two days ago (neither is "today"),
    // and a flagged admin who registered two days ago and never wrote since.
    sandbox.sql(
        "INSERT INTO users (telegram_id, first_name, is_admin, created_at, last_seen_at)
            VALUES (100, 'Old', 0, datetime('now', '-30 days'), datetime('now', '-3 days'));
         INSERT INTO command_log (user_id, command, used_at)
            SELECT id, 'help', datetime('now', '-2 days') FROM users WHERE telegram_id = 100;
         INSERT INTO users (telegram_id, first_name, is_admin, created_at)
            VALUES (9, 'Flagged', 1, datetime('now', '-2 days'));",
    );
    let bot = sandbox.start_bot_with(&[("ADMIN_IDS", " 42, 4242 ")]);

    sandbox.say(42, "Ann", "/start");
    sandbox.say(7, "Bob", "/start");
    assert_eq!(
        sandbox.say(7, "Bob", "/stats"),
        "Sorry, /stats is only for the bot's admins. Send /help to see what you can use."
    );
    assert_eq!(
        without_hours(&sandbox.say(42, "Ann", "/stats")),
        "Users: 4\nNew: 3\nActive: 2\nCommands: 4 (/start 2, /stats 2)"
    );
    assert_eq!(
        without_hours(&sandbox.say(9, "Flagged", "/stats")),
        "Users: 4\nNew: 3\nActive: 3\nCommands: 5 (/stats 3, /start 2)",
        "is_admin = 1 is an admin too"
    );
    let (_, log) = bot.terminate_ok();
    assert!(log.contains("ADMIN_IDS names 2 admin(s)"), "{log}");
}

/// /stats with the hours its windows start at (which move with the clock) left out:
/// "New since 2026-11-19 17:00 UTC: 3" becomes "New: 3".
fn without_hours(text: &str) -> String {
    text.lines()
        .map(|line| match (line.find(" since "), line.find(" UTC: ")) {
            (Some(since), Some(utc)) => format!("{}{}", &line[..since], &line[utc + 4..]),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_malformed_admin_list_stops_the_bot_before_it_polls() {
    let sandbox = Sandbox::upgraded("admins");
    let output = sandbox
        .command(&[], TOKEN)
        .env("ADMIN_IDS", "42;7")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ADMIN_IDS: \"42;7\" is not a Telegram user id"),
        "{stderr}"
    );
    assert_eq!(sandbox.standin.stats().calls.get("getupdates"), None);
}

#[test]
fn every_message_of_a_known_user_updates_last_seen_language_and_the_command_log() {
    let sandbox = Sandbox::upgraded("seen");
    let bot = sandbox.start_bot();
    let database = sandbox.database();
    let language = || -> Option<String> {
        query(
            &database,
            "SELECT language_code FROM users WHERE telegram_id = 42",
        )
    };
    let seen_just_now = || -> bool {
        query(
            &database,
            "SELECT last_seen_at >= datetime('now', '-1 minute') FROM users WHERE telegram_id = 42",
        )
    };

    sandbox.say(42, "Ann", "/start");
    assert_eq!(language().as_deref(), Some("en"));
    sandbox.sql("UPDATE users SET last_seen_at = '2000-01-01 00:00:00' WHERE telegram_id = 42");

    // Plain text gets no answer, but is seen: the answer after it is the one to /help.
    let mut hello = IncomingMessage::new(42, "hello");
    hello.language_code = Some("de".into());
    sandbox.standin.post_message(&hello);
    let mut help = IncomingMessage::new(42, "/help");
    help.language_code = Some("de".into());
    assert!(sandbox.send(&help).starts_with("Commands:"));
    assert_eq!(language().as_deref(), Some("de"));
    assert!(seen_just_now());

    sandbox.sql("UPDATE users SET last_seen_at = '2000-01-01 00:00:00' WHERE telegram_id = 42");
    let silent = IncomingMessage::new(42, "/me");
    assert!(
        sandbox.send(&silent).contains("Language: de"),
        "no language sent: kept"
    );
    assert!(seen_just_now());

    sandbox.say(42, "Ann", "/nope");
    sandbox.say(42, "Ann", "/stats");
    assert!(
        sandbox
            .say(42, "Ann", "/привет")
            .starts_with("I don't know")
    );
    sandbox.say(77, "Eve", "/help");
    sandbox.say(77, "Eve", "/me");
    sandbox
        .standin
        .post_message(&IncomingMessage::new(77, "hello"));
    sandbox.say(42, "Ann", "/help@demo_bot");

    let logged: Vec<(i64, String)> = command_log(&database);
    let expected: Vec<(i64, String)> = ["start", "help", "me", "nope", "stats", "help"]
        .iter()
        .map(|c| (42, c.to_string()))
        .collect();
    assert_eq!(
        logged, expected,
        "known users' commands, not plain text, not text that is no command's name"
    );
    assert_eq!(
        users(&database).len(),
        1,
        "an unknown user's messages do not register them"
    );
    let (_, log) = bot.terminate_ok();
    assert!(complaints(&log).is_empty(), "{log}");
}

#[test]
fn a_thousand_users_start_at_once_then_again_with_new_names() {
    const USERS: i64 = 1000;
    let sandbox = Sandbox::upgraded("thousand");
    // The stand-in has no rate limits here, and the bot's own would take over a minute for
    // 2,000 answers; bot/tests/telegram.rs holds the bot to Telegram's limits.
    let bot = sandbox.start_bot_with(&[("BOT_RATE_LIMITS", "off")]);
    let database = sandbox.database();
    let round = |first_name: &str| -> Vec<IncomingMessage> {
        (1..=USERS)
            .map(|id| {
                let mut message = IncomingMessage::new(500_000 + id, "/start");
                message.first_name = Some(format!("{first_name} {id}"));
                message
            })
            .collect()
    };
    let answers_by_chat = |sent: Vec<SentMessage>| -> HashMap<i64, Vec<String>> {
        let mut by_chat: HashMap<i64, Vec<String>> = HashMap::new();
        for message in sent {
            by_chat
                .entry(message.chat_id)
                .or_default()
                .push(message.text);
        }
        by_chat
    };

    let first = answers_by_chat(sandbox.send_all(&round("First"), USERS as usize));
    assert_eq!(first.len(), USERS as usize, "every user got an answer");
    for id in 1..=USERS {
        assert_eq!(
            first[&(500_000 + id)],
            [format!(
                "Welcome, First {id}! You are registered. Send /help to see what I can do."
            )]
        );
    }
    let count = |sql: &str| -> i64 { query(&database, sql) };
    assert_eq!(count("SELECT count(*) FROM users"), USERS);
    assert_eq!(
        count("SELECT count(DISTINCT telegram_id) FROM users"),
        USERS
    );

    let second = answers_by_chat(sandbox.send_all(&round("Second"), USERS as usize));
    assert_eq!(second.len(), USERS as usize, "every user got an answer");
    for id in 1..=USERS {
        assert_eq!(
            second[&(500_000 + id)],
            [format!(
                "Welcome back, Second {id}! Your details are up to date."
            )]
        );
    }
    assert_eq!(count("SELECT count(*) FROM users"), USERS, "no duplicates");
    assert_eq!(
        count("SELECT count(*) FROM users WHERE first_name = 'Second ' || (telegram_id - 500000)"),
        USERS,
        "every name updated"
    );
    assert_eq!(
        count("SELECT count(*) FROM command_log WHERE command = 'start'"),
        2 * USERS
    );
    let (_, log) = bot.terminate_ok();
    assert!(complaints(&log).is_empty(), "no error: {log}");
}

#[test]
fn sigterm_or_sigint_during_a_long_poll_stops_the_bot_within_a_second() {
    for signal in ["TERM", "INT"] {
        // A stand-in each: one holds an abandoned poll for a while, which would count below.
        let sandbox = Sandbox::new(&format!("signal-{signal}"));
        sandbox.upgrade();
        let bot = sandbox.start_bot();
        sandbox.say(42, "Ann", "/start");
        let wal = PathBuf::from(format!("{}-wal", sandbox.database().display()));
        assert!(wal.exists(), "the bot's database is in WAL mode");
        // The poll that brought /start has returned: a poll in flight now is the next one.
        wait_until(
            ANSWER_WITHIN,
            || sandbox.standin.stats().polls_in_flight > 0,
            "the bot's long poll is held",
        );
        let (status, took, log) = bot.stop(signal);
        assert_eq!(status.code(), Some(0), "SIG{signal}: {log}");
        assert!(
            took < Duration::from_secs(1),
            "SIG{signal}: stopped in {took:?}"
        );
        assert!(
            log.contains(&format!("SIG{signal}: stopping")) && log.contains("database closed"),
            "{log}"
        );
        assert!(
            !wal.exists(),
            "SIG{signal}: the database was closed cleanly (WAL checkpointed and removed)"
        );
        assert_eq!(users(&sandbox.database()).len(), 1, "the data is kept");
    }
}

#[test]
fn a_429_is_waited_out_as_telegram_asks_and_the_message_is_delivered() {
    let sandbox = Sandbox::upgraded("429");
    sandbox
        .standin
        .inject(Fault::too_many_requests("getUpdates", 2));
    sandbox.too_many_requests(2);
    let bot = sandbox.start_bot();
    assert_eq!(
        sandbox.say(42, "Ann", "/start"),
        "Welcome, Ann! You are registered. Send /help to see what I can do."
    );

    let stats = sandbox.standin.stats();
    for method in ["getupdates", "sendmessage"] {
        let refused: Vec<u64> = stats
            .faults_applied
            .iter()
            .filter(|f| {
                f.method == method && f.kind == FaultKind::TooManyRequests { retry_after: 2 }
            })
            .map(|f| f.at_ms)
            .collect();
        assert_eq!(refused.len(), 1, "{method}: {stats:?}");
        let calls = &stats.calls_at_ms[method];
        let next = calls
            .iter()
            .find(|at| **at > refused[0])
            .unwrap_or_else(|| panic!("{method} was called again: {calls:?}"));
        assert!(
            next - refused[0] >= 2000,
            "{method}: the next call came {} ms after the 429",
            next - refused[0]
        );
    }
    let (_, log) = bot.terminate_ok();
    assert!(
        log.contains("getUpdates: Telegram asks to wait 2s (429 Too Many Requests)")
            && log.contains(
                "sendMessage to chat 42: Telegram asks to wait 2s (429 Too Many Requests); waiting, then attempt 2 of 5"
            ),
        "{log}"
    );
}

#[test]
fn network_errors_and_5xx_are_retried_while_the_bot_stays_healthy() {
    let sandbox = Sandbox::upgraded("outage");
    let bot = sandbox.start_bot();
    sandbox.welcome(42, "Ann");
    // The poll that brought /start has returned: a poll in flight now is the next one, past
    // the point where faults apply, so the /help below arrives at once.
    wait_until(
        ANSWER_WITHIN,
        || sandbox.standin.stats().polls_in_flight > 0,
        "the bot's long poll is held",
    );

    // Two answers that are not HTTP, then a 502 (teloxide pauses 10 s inside that request);
    // a 503 for the answer: Telegram says it did not send it, so it is sent again.
    sandbox
        .standin
        .inject(Fault::broken_response("getUpdates").times(Some(2)));
    sandbox
        .standin
        .inject(Fault::server_error("getUpdates", 502));
    sandbox
        .standin
        .inject(Fault::server_error("sendMessage", 503));
    // Ends the long poll in flight, so the next polls meet the faults.
    let after = sandbox
        .standin
        .post_message(&IncomingMessage::new(42, "/help"));
    assert_eq!(
        sandbox
            .standin
            .wait_for_sent(after, Some(42), Duration::from_secs(30))
            .len(),
        1,
        "answered after one failed sendMessage"
    );
    wait_until(
        ANSWER_WITHIN,
        || sandbox.standin.stats().faults_applied.len() >= 3,
        "the poll meets the faults",
    );
    let health = sandbox.run(&["healthcheck"]);
    assert!(
        health.status.success(),
        "healthy during the outage: {}",
        String::from_utf8_lossy(&health.stderr)
    );
    let mut me = IncomingMessage::new(42, "/me");
    me.first_name = Some("Ann".into());
    let after = sandbox.standin.post_message(&me);
    let answer = sandbox
        .standin
        .wait_for_sent(after, Some(42), Duration::from_secs(30));
    assert!(answer[0].text.contains("Telegram id: 42"), "{answer:?}");
    assert!(sandbox.standin.faults().is_empty(), "every fault was met");

    let (_, log) = bot.terminate_ok();
    for expected in [
        "getUpdates failed (1 in a row), retrying in 1.0s; the bot keeps running",
        "getUpdates failed (2 in a row), retrying in 2.0s; the bot keeps running",
        "getUpdates failed (3 in a row)",
        "getUpdates works again after 3 failed attempts",
        "sendMessage to chat 42 failed (attempt 1 of 5), retrying in",
        "sendMessage to chat 42 went through after 1 failed attempts",
    ] {
        assert!(log.contains(expected), "{expected:?} in:\n{log}");
    }
    assert!(
        !log.contains("TEST-TOKEN"),
        "the token never appears, not even in a URL:\n{log}"
    );
}

#[test]
fn a_bot_started_while_its_migration_runs_waits_for_it_then_serves() {
    let sandbox = Sandbox::new("schemawait");
    // Revision 1 only: what a deploy finds before its migration has run.
    let output = sandbox.run(&["db", "upgrade"]);
    assert!(output.status.success());
    let output = sandbox.run(&["db", "downgrade", "--to", "1"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log = sandbox.dir.join("bot.log");
    let child = sandbox
        .command(&[], TOKEN)
        .env("BOT_SCHEMA_WAIT_SECS", "30")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running { child, log };
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        running.child.try_wait().unwrap().is_none(),
        "it waits instead of refusing"
    );
    assert!(
        !sandbox.heartbeat().exists(),
        "it does not poll before the schema is current"
    );
    assert_eq!(sandbox.standin.stats().calls.get("getupdates"), None);
    sandbox.upgrade();
    polls_once_current(&sandbox, &mut running);
    assert!(sandbox.say(5, "Eve", "/start").starts_with("Welcome, Eve!"));
}

/// Waits until the bot polls (its heartbeat), now that the database is current; fails with
/// its log when it does not.
fn polls_once_current(sandbox: &Sandbox, bot: &mut Running) {
    let deadline = std::time::Instant::now() + ANSWER_WITHIN;
    while !sandbox.heartbeat().exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the bot does not poll once the database is current (exited: {:?}); its log:\n{}",
            bot.child.try_wait().unwrap(),
            bot.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bot_waiting_for_its_schema_still_refuses_when_the_wait_ends() {
    let sandbox = Sandbox::new("schemawaitend");
    let output = sandbox.run(&["db", "upgrade"]);
    assert!(output.status.success());
    assert!(
        sandbox
            .run(&["db", "downgrade", "--to", "2"])
            .status
            .success()
    );
    let started = Instant::now();
    let output = sandbox
        .command(&[], TOKEN)
        .env("BOT_SCHEMA_WAIT_SECS", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited first"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cargo xtask prod-migrate"), "{stderr}");
}

/// A database at revision 3 (one migration pending, the `users` rebuild) with the write lock
/// held by this process, and `bot db upgrade --backup-to` started on it: the migration runs
/// (announcing itself) until the lock is released.
struct LongMigration {
    holder: Option<Connection>,
    upgrade: Child,
}

impl LongMigration {
    fn start(sandbox: &Sandbox) -> LongMigration {
        sandbox.upgrade();
        let output = sandbox.run(&["db", "downgrade", "--to", "3"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let holder = sandbox.write_lock();
        let backup = sandbox.dir.join("pre-deploy.db");
        let upgrade = sandbox
            .command(
                &[
                    "db",
                    "upgrade",
                    "--backup-to",
                    backup.to_str().unwrap(),
                    "--json",
                ],
                TOKEN,
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(
            ANSWER_WITHIN,
            || announcement(sandbox).exists(),
            "the migration announces itself",
        );
        LongMigration {
            holder: Some(holder),
            upgrade,
        }
    }

    /// Lets the migration take the lock and finish; returns its report.
    fn finish(mut self) -> serde_json::Value {
        let holder = self.holder.take().unwrap();
        holder.execute_batch("ROLLBACK").unwrap();
        drop(holder);
        let output = self.output();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Waits for the migration to end; what it printed.
    fn output(&mut self) -> Output {
        use std::io::Read;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut out) = self.upgrade.stdout.take() {
            out.read_to_end(&mut stdout).unwrap();
        }
        if let Some(mut err) = self.upgrade.stderr.take() {
            err.read_to_end(&mut stderr).unwrap();
        }
        Output {
            status: self.upgrade.wait().unwrap(),
            stdout,
            stderr,
        }
    }
}

impl Drop for LongMigration {
    fn drop(&mut self) {
        let _ = self.upgrade.kill();
        let _ = self.upgrade.wait();
    }
}

/// The file a running migration keeps fresh beside the database.
fn announcement(sandbox: &Sandbox) -> PathBuf {
    PathBuf::from(format!("{}.migrating", sandbox.database().display()))
}

/// The bot's exit status, once it exits within `limit` (a bot that waits for ever fails the
/// test instead of hanging it).
fn exit_within(bot: &mut Running, limit: Duration) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(
        limit,
        || {
            status = bot.child.try_wait().unwrap();
            status.is_some()
        },
        "the bot exits",
    );
    status.unwrap()
}

/// Starts `bot run` waiting at most `BOT_SCHEMA_WAIT_SECS=1` for its schema; its log goes to a
/// file.
fn start_waiting_bot(sandbox: &Sandbox, name: &str) -> Running {
    let log = sandbox.dir.join(format!("{name}.log"));
    let child = sandbox
        .command(&[], TOKEN)
        .env("BOT_SCHEMA_WAIT_SECS", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Running { child, log }
}

#[test]
fn a_bot_waits_past_its_limit_while_the_migration_announces_itself_then_serves() {
    let sandbox = Sandbox::new("schemawaitlong");
    let migration = LongMigration::start(&sandbox);
    let mut bot = start_waiting_bot(&sandbox, "bot");
    // Four times its limit, while the migration waits for the lock.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        bot.child.try_wait().unwrap().is_none(),
        "it keeps waiting while the migration runs: {}",
        bot.log()
    );
    assert!(!sandbox.heartbeat().exists(), "it does not poll yet");
    let log = bot.log();
    assert_eq!(
        log.matches("its migration is running").count(),
        1,
        "said once: {log}"
    );
    let report = migration.finish();
    assert_eq!(
        report["applied"],
        serde_json::json!((4..=migrations::head()).collect::<Vec<_>>()),
        "{report}"
    );
    assert_eq!(report["backup"]["revision"], 3, "{report}");
    assert!(!announcement(&sandbox).exists(), "removed at the end");
    polls_once_current(&sandbox, &mut bot);
    assert!(sandbox.say(5, "Eve", "/start").starts_with("Welcome, Eve!"));
    bot.terminate_ok();
}

#[test]
fn a_bot_stops_waiting_once_the_migration_stops_announcing_itself() {
    let sandbox = Sandbox::new("schemawaitkilled");
    let mut migration = LongMigration::start(&sandbox);
    let mut bot = start_waiting_bot(&sandbox, "bot");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        bot.child.try_wait().unwrap().is_none(),
        "it waits while the migration runs: {}",
        bot.log()
    );
    migration.upgrade.kill().unwrap(); // SIGKILL: no chance to remove its announcement
    migration.upgrade.wait().unwrap();
    let killed = Instant::now();
    assert!(
        announcement(&sandbox).exists(),
        "a killed migration's leftover"
    );
    let status = exit_within(&mut bot, Duration::from_secs(20));
    let waited = killed.elapsed();
    assert!(!status.success());
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(9),
        "it stops once the announcement is 5 s old: {waited:?} after the kill"
    );
    let log = bot.log();
    assert!(
        log.contains("the migration stopped announcing itself")
            && log.contains("cargo xtask prod-migrate"),
        "{log}"
    );
}

#[test]
fn a_stale_announcement_does_not_keep_a_bot_waiting() {
    let sandbox = Sandbox::upgraded("schemawaitstale");
    let output = sandbox.run(&["db", "downgrade", "--to", "3"]);
    assert!(output.status.success());
    // Left by a migration killed a minute ago.
    let file = std::fs::File::create(announcement(&sandbox)).unwrap();
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    let started = Instant::now();
    let mut bot = start_waiting_bot(&sandbox, "bot");
    let status = exit_within(&mut bot, Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "it waited only its limit: {:?}",
        started.elapsed()
    );
    assert!(
        !bot.log().contains("its migration is running"),
        "{}",
        bot.log()
    );
}
