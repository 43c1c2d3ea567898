//! The real `bot` binary against the Bot API stand-in (in-process) and a real database file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use telegram_standin::{Config, IncomingMessage, Standin};

const TOKEN: &str = "123456:TEST-TOKEN-abc";

struct Sandbox {
    dir: PathBuf,
    standin: Standin,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("bot-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let standin = Standin::start(
            "127.0.0.1:0",
            Config {
                token: TOKEN.into(),
                ..Config::default()
            },
        )
        .unwrap();
        Sandbox { dir, standin }
    }

    fn database(&self) -> PathBuf {
        self.dir.join("bot_database.db")
    }

    fn heartbeat(&self) -> PathBuf {
        self.dir.join("heartbeat")
    }

    fn command(&self, args: &[&str], token: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bot"));
        command
            .args(args)
            .env("DATABASE_PATH", self.database())
            .env("HEARTBEAT_PATH", self.heartbeat())
            .env("BOT_TOKEN", token)
            .env("TELEGRAM_API_URL", self.standin.url())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args, TOKEN).output().unwrap()
    }

    fn upgrade(&self) {
        let output = self.run(&["db", "upgrade"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start_bot(&self) -> Running {
        let child = self
            .command(&[], TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let running = Running(child);
        wait_until(
            Duration::from_secs(10),
            || self.heartbeat().exists(),
            "the bot starts polling",
        );
        running
    }

    fn say(&self, user_id: i64, first_name: &str, text: &str) -> String {
        let mut message = IncomingMessage::new(user_id, text);
        message.first_name = Some(first_name.into());
        message.username = Some(format!("u{user_id}"));
        message.language_code = Some("en".into());
        let after = self.standin.post_message(&message);
        let sent = self
            .standin
            .wait_for_sent(after, Some(user_id), Duration::from_secs(10));
        assert_eq!(sent.len(), 1, "one answer to {text:?}: {sent:?}");
        sent[0].text.clone()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Running(Child);

impl Running {
    fn terminate(mut self) -> (std::process::ExitStatus, Duration, String) {
        let started = Instant::now();
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        let status = self.0.wait().unwrap();
        let took = started.elapsed();
        let mut log = String::new();
        use std::io::Read;
        self.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        (status, took, log)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn users(path: &Path) -> Vec<(i64, String, Option<String>, Option<String>)> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT telegram_id, first_name, language_code, last_seen_at FROM users ORDER BY telegram_id")
        .unwrap();
    statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn start_registers_then_refreshes_and_help_lists_the_commands() {
    let sandbox = Sandbox::new("start");
    sandbox.upgrade();
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
    assert!(help.contains("/start") && help.contains("/help"), "{help}");
    assert!(sandbox.say(7, "Bob", "/nope").contains("/help"));

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
    assert_eq!(commands[0]["command"], "start", "{commands}");

    let health = sandbox.run(&["healthcheck"]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let (status, _, log) = bot.terminate();
    assert!(status.success(), "{log}");
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

    std::fs::write(sandbox.heartbeat(), "alive").unwrap();
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
    let sandbox = Sandbox::new("token");
    sandbox.upgrade();
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
    assert_eq!(empty["pending"], serde_json::json!([1, 2]));
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
        (Some("current"), Some(2), Some(2))
    );
}
