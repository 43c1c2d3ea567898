//! The real `bot` binary against the Bot API stand-in (in-process) and a real database file:
//! a test's sandbox, the running bot, and readers of what it stored.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use telegram_standin::{Config, IncomingMessage, SentMessage, Standin};

pub const TOKEN: &str = "123456:TEST-TOKEN-abc";
/// How long a test waits for an answer the bot should give at once.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

pub struct Sandbox {
    /// The test's folder.
    pub dir: PathBuf,
    /// The Bot API stand-in the bot talks to.
    pub standin: Standin,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
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

    pub fn database(&self) -> PathBuf {
        self.dir.join("bot_database.db")
    }

    pub fn heartbeat(&self) -> PathBuf {
        self.dir.join("heartbeat")
    }

    pub fn command(&self, args: &[&str], token: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_bot"));
        command
            .args(args)
            .env("DATABASE_PATH", self.database())
            .env("HEARTBEAT_PATH", self.heartbeat())
            .env("BOT_TOKEN", token)
            .env("TELEGRAM_API_URL", self.standin.url())
            .env("RUST_LOG", "info")
            .env_remove("ADMIN_IDS")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args, TOKEN).output().unwrap()
    }

    pub fn upgrade(&self) {
        let output = self.run(&["db", "upgrade"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs SQL on the database, as another process would (the bot may be running).
    pub fn sql(&self, sql: &str) {
        let conn = Connection::open(self.database()).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch(sql).unwrap();
    }

    pub fn start_bot(&self) -> Running {
        self.start_bot_with(&[])
    }

    /// Starts `bot run` with extra environment; returns once it polls. Its log goes to a file:
    /// a pipe nobody reads would stall a chatty bot.
    pub fn start_bot_with(&self, env: &[(&str, &str)]) -> Running {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = self.dir.join(format!(
            "bot-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let child = self
            .command(&[], TOKEN)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let running = Running { child, log };
        wait_until(
            ANSWER_WITHIN,
            || self.heartbeat().exists(),
            "the bot starts polling",
        );
        running
    }

    pub fn say(&self, user_id: i64, first_name: &str, text: &str) -> String {
        let mut message = IncomingMessage::new(user_id, text);
        message.first_name = Some(first_name.into());
        message.username = Some(format!("u{user_id}"));
        message.language_code = Some("en".into());
        self.send(&message)
    }

    /// Posts the message and returns the one answer to it.
    pub fn send(&self, message: &IncomingMessage) -> String {
        let after = self.standin.post_message(message);
        let sent = self
            .standin
            .wait_for_sent(after, Some(message.user_id), ANSWER_WITHIN);
        assert_eq!(sent.len(), 1, "one answer to {:?}: {sent:?}", message.text);
        sent[0].text.clone()
    }

    /// Posts every message at once and waits for `answers` answers.
    pub fn send_all(&self, messages: &[IncomingMessage], answers: usize) -> Vec<SentMessage> {
        let after = self.standin.post_messages(messages);
        let sent = self
            .standin
            .wait_for_sent_count(after, answers, Duration::from_secs(120));
        assert_eq!(sent.len(), answers, "every answer arrives");
        sent
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Running {
    /// The bot process.
    pub child: Child,
    /// Where its log goes.
    pub log: PathBuf,
}

impl Running {
    /// What the bot logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Sends `signal` (`TERM`, `INT`) and waits for the exit: the status, the time from the
    /// signal to the exit, and the whole log.
    pub fn stop(mut self, signal: &str) -> (std::process::ExitStatus, Duration, String) {
        let started = Instant::now();
        let kill = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = self.child.wait().unwrap();
        let took = started.elapsed();
        (status, took, self.log())
    }

    pub fn terminate(self) -> (std::process::ExitStatus, Duration, String) {
        self.stop("TERM")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn users(path: &Path) -> Vec<(i64, String, Option<String>, Option<String>)> {
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

/// `command_log` as (telegram id, command), in the order written.
pub fn command_log(path: &Path) -> Vec<(i64, String)> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT users.telegram_id, command_log.command FROM command_log
             JOIN users ON users.id = command_log.user_id ORDER BY command_log.id",
        )
        .unwrap();
    statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A single value from the database.
pub fn query<T: rusqlite::types::FromSql>(path: &Path, sql: &str) -> T {
    Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// Log lines at WARN or ERROR.
pub fn complaints(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}
