//! The real `bot` binary against the Bot API stand-in (in-process) and a real database file:
//! a test's sandbox, the running bot, and readers of what it stored.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use telegram_standin::{Config, Fault, IncomingMessage, SentMessage, Standin};

pub const TOKEN: &str = "123456:TEST-TOKEN-abc";
/// The token of another bot (`other_demo_bot`, id 654321).
pub const OTHER_TOKEN: &str = "654321:OTHER-token-xyz";
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

    /// A sandbox whose database is upgraded to the newest revision.
    pub fn upgraded(name: &str) -> Sandbox {
        let sandbox = Sandbox::new(name);
        sandbox.upgrade();
        sandbox
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

    /// Another process's connection to the database, holding its write lock.
    pub fn write_lock(&self) -> Connection {
        let lock = Connection::open(self.database()).unwrap();
        lock.execute_batch("BEGIN IMMEDIATE").unwrap();
        lock
    }

    /// [`Sandbox::write_lock`], taken with a 5 s busy timeout.
    pub fn write_lock_with_busy_timeout(&self) -> Connection {
        let lock = Connection::open(self.database()).unwrap();
        lock.busy_timeout(Duration::from_secs(5)).unwrap();
        lock.execute_batch("BEGIN IMMEDIATE").unwrap();
        lock
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

    /// `/start` from a user, who is welcomed.
    pub fn welcome(&self, user_id: i64, first_name: &str) {
        assert!(
            self.say(user_id, first_name, "/start")
                .starts_with("Welcome")
        );
    }

    /// Every answer a chat got so far.
    pub fn answers_to(&self, chat: i64) -> Vec<String> {
        self.standin
            .sent()
            .into_iter()
            .filter(|m| m.chat_id == chat)
            .map(|m| m.text)
            .collect()
    }

    /// How many sendMessage calls the stand-in got.
    pub fn send_calls(&self) -> u64 {
        self.standin
            .stats()
            .calls
            .get("sendmessage")
            .copied()
            .unwrap_or(0)
    }

    /// Has the next sendMessage told to wait `retry_after` seconds (a 429).
    pub fn too_many_requests(&self, retry_after: u32) {
        self.standin
            .inject(Fault::too_many_requests("sendMessage", retry_after));
    }

    /// Waits until an injected fault was applied; `what` names the moment.
    pub fn until_a_fault_applies(&self, what: &str) {
        wait_until(
            ANSWER_WITHIN,
            || !self.standin.stats().faults_applied.is_empty(),
            what,
        );
    }

    /// `/help` from `user_id` (`message`), answered with the list of commands.
    pub fn help(&self, user_id: i64) {
        let help = self.send(&message(user_id, "/help"));
        assert!(help.starts_with("Commands:"), "{help}");
    }

    /// Starts a bot, waits until it has sent `answers` answers after `after` (at most
    /// `within_secs`), lets it run `settle_secs` more and terminates it: its log.
    pub fn next_bot_answers(
        &self,
        after: u64,
        answers: usize,
        within_secs: u64,
        settle_secs: u64,
    ) -> String {
        let bot = self.start_bot();
        self.standin
            .wait_for_sent_count(after, answers, Duration::from_secs(within_secs));
        std::thread::sleep(Duration::from_secs(settle_secs));
        bot.terminate().2
    }

    /// [`Sandbox::next_bot_answers`] for one answer to each of `users`: the log, and of the
    /// users those answered more than once and those never answered.
    pub fn next_bot_answers_each(
        &self,
        after: u64,
        users: &[i64],
        within_secs: u64,
        settle_secs: u64,
    ) -> (String, Vec<i64>, Vec<i64>) {
        let log = self.next_bot_answers(after, users.len(), within_secs, settle_secs);
        let (twice, never) = self.twice_and_never(users);
        (log, twice, never)
    }

    /// Starts a bot, waits until it fetched every pending update (`what` names that), lets it
    /// run `settle` more and terminates it: its log.
    pub fn next_bot_fetches(&self, what: &str, settle: Duration) -> String {
        let bot = self.start_bot();
        wait_until(
            ANSWER_WITHIN,
            || self.standin.stats().pending_updates == 0,
            what,
        );
        std::thread::sleep(settle);
        bot.terminate().2
    }

    /// Of `users`, those answered more than once and those never answered, so far.
    pub fn twice_and_never(&self, users: &[i64]) -> (Vec<i64>, Vec<i64>) {
        let sent = self.standin.sent();
        let mut twice = Vec::new();
        let mut never = Vec::new();
        for user in users {
            match sent.iter().filter(|m| m.chat_id == *user).count() {
                1 => {}
                0 => never.push(*user),
                _ => twice.push(*user),
            }
        }
        (twice, never)
    }

    /// `bot healthcheck`: whether it passed, and what it said on standard error.
    pub fn healthcheck(&self) -> (bool, String) {
        let output = self.run(&["healthcheck"]);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
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

    /// Kills the bot (SIGKILL, as a crash) and waits for it.
    pub fn crash(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn terminate(self) -> (std::process::ExitStatus, Duration, String) {
        self.stop("TERM")
    }

    /// Terminates the bot, which must exit with success (its log shown otherwise): the time
    /// from the signal to the exit, and the log.
    pub fn terminate_ok(self) -> (Duration, String) {
        let (status, took, log) = self.terminate();
        assert!(status.success(), "{log}");
        (took, log)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Bot API stand-in for another bot: [`OTHER_TOKEN`]'s.
pub fn other_bots_standin() -> Standin {
    Standin::start(
        "127.0.0.1:0",
        Config {
            token: OTHER_TOKEN.into(),
            bot_id: 654321,
            bot_username: "other_demo_bot".into(),
            ..Config::default()
        },
    )
    .unwrap()
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

/// The rows of `table`.
pub fn count(path: &Path, table: &str) -> i64 {
    query(path, &format!("SELECT count(*) FROM {table}"))
}

/// A message of `user`, with a first name (`U<user>`) and English as the language.
pub fn message(user: i64, text: &str) -> IncomingMessage {
    let mut message = IncomingMessage::new(user, text);
    message.first_name = Some(format!("U{user}"));
    message.language_code = Some("en".into());
    message
}

/// The same `text` from each of `users` ([`message`]).
pub fn messages(users: impl IntoIterator<Item = i64>, text: &str) -> Vec<IncomingMessage> {
    users.into_iter().map(|u| message(u, text)).collect()
}

/// How many of `answers` answer `command` (they name it, followed by a full stop).
pub fn times_answered(answers: &[String], command: &str) -> usize {
    answers
        .iter()
        .filter(|a| a.contains(&format!("{command}.")))
        .count()
}

/// Log lines at WARN or ERROR.
pub fn complaints(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}
