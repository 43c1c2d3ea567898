//! What the `bot db` integration tests share: a temporary folder, the real `bot` binary run on a
//! database, and its output shown when an assertion fails.
#![allow(dead_code)]

pub mod sandbox;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rusqlite::Connection;

/// The newest revision, as the migration catalog the bot is built with has it.
pub fn head() -> u64 {
    migrations::head().into()
}

/// A temporary folder of one test, removed when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    /// A new, empty folder named after the test.
    pub fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("bot-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// The database file inside.
    pub fn db(&self) -> PathBuf {
        self.0.join("bot_database.db")
    }

    /// A path inside.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A folder inside, created.
    pub fn folder(&self, name: &str) -> PathBuf {
        let folder = self.0.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        folder
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `bot <args>` on `db`, without a token and without standard input.
pub fn bot(db: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bot"));
    command
        .args(args)
        .env("DATABASE_PATH", db)
        .env_remove("BOT_TOKEN")
        .stdin(Stdio::null());
    command
}

/// Runs `bot <args>` on `db` to the end.
pub fn run(db: &Path, args: &[&str]) -> Output {
    bot(db, args).output().unwrap()
}

/// An output as a failed assertion shows it.
pub fn show(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `args` with `--json`, expects success, returns the object.
pub fn ok(db: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = run(db, &all);
    assert!(output.status.success(), "{args:?}: {}", show(&output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", show(&output)))
}

/// Runs SQL on `db` directly.
pub fn sql(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

/// A database at revision `head - 1` with 500 users, in WAL mode (as the bot leaves it) or in
/// rollback-journal mode (as `bot db` alone leaves it): what a deploy's migration finds.
pub fn behind_with_users(db: &Path, wal: bool) {
    ok(db, &["db", "upgrade"]);
    sql(
        db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         INSERT INTO users (telegram_id, first_name) SELECT i, 'user' || i FROM n;",
    );
    let head = migrations::head();
    ok(db, &["db", "downgrade", "--to", &(head - 1).to_string()]);
    if wal {
        sql(db, "PRAGMA journal_mode = WAL;");
    }
}

/// How a `bot` command that was acted on halfway ended.
pub struct Ended {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bot <args>` on `db`; once it has printed a line containing `line`, runs `act`; then
/// waits for it to end. Fails when it ends before printing the line.
pub fn acted_on_at(db: &Path, args: &[&str], line: &str, act: impl FnOnce()) -> Ended {
    use std::io::{BufRead, BufReader, Read};
    let mut child = bot(db, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut said = String::new();
    while !said.contains(line) {
        said.clear();
        assert!(
            stdout.read_line(&mut said).unwrap() > 0,
            "`bot {}` ended before it said {line:?}",
            args.join(" ")
        );
    }
    act();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Ended {
        status,
        stdout: rest,
        stderr,
    }
}
