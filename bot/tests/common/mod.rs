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

    /// A new folder named after the test, holding a database behind by one revision
    /// ([`behind_with_users`]): the folder and the database.
    pub fn behind(name: &str, wal: bool) -> (Dir, PathBuf) {
        let dir = Dir::new(name);
        let db = dir.db();
        behind_with_users(&db, wal);
        (dir, db)
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

/// Asserts that `output`'s standard error contains `needle` (the output shown otherwise).
pub fn assert_stderr_has(output: &Output, needle: &str) {
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(needle),
        "{}",
        show(output)
    );
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

/// Each element's `key` of a JSON array, as strings.
pub fn each_str<'a>(array: &'a serde_json::Value, key: &str) -> Vec<&'a str> {
    array
        .as_array()
        .unwrap()
        .iter()
        .map(|element| element[key].as_str().unwrap())
        .collect()
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

/// The users in `db`.
pub fn count_users(db: &Path) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap()
}

/// Has `command` run with a 64 KiB limit on the size of a file it writes (`RLIMIT_FSIZE`, the
/// signal ignored): a full disk, as a write sees it.
pub fn limit_file_size(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            Ok(())
        });
    }
}

/// `bot db upgrade --backup-to <backup>` on `db`.
pub fn upgrade_backing_up_to(db: &Path, backup: &Path) -> Command {
    bot(
        db,
        &["db", "upgrade", "--backup-to", backup.to_str().unwrap()],
    )
}

/// [`upgrade_backing_up_to`] while another connection holds the write lock; once the command
/// says `line`, that connection adds a user (telegram id 100000) and commits.
pub fn upgrade_overtaken_at(db: &Path, backup: &Path, line: &str) -> Ended {
    let holder = Connection::open(db).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    acted_on_at(
        db,
        &["db", "upgrade", "--backup-to", backup.to_str().unwrap()],
        line,
        || {
            holder
                .execute_batch(
                    "INSERT INTO users (telegram_id, first_name) VALUES (100000, 'late'); COMMIT;",
                )
                .unwrap()
        },
    )
}

/// What a helper process (a writer, a lock holder) prints once it is where it was sent.
pub const WRITER_READY: &str = "writer: in the transaction";

/// This test binary, run for its ignored test `name` alone: a helper process, its standard
/// output piped.
pub fn helper_process(name: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

/// Reads `child`'s standard output until a line ends with [`WRITER_READY`]: whether one did.
pub fn said_ready(child: &mut std::process::Child) -> bool {
    use std::io::{BufRead, BufReader};
    BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|line| line.ends_with(WRITER_READY))
}

/// Starts the writer `command` and SIGKILLs it once it is in its transaction (failing when it
/// never got there).
pub fn kill_once_in_its_transaction(command: &mut Command) {
    let mut writer = command.spawn().unwrap();
    let ready = said_ready(&mut writer);
    writer.kill().unwrap(); // SIGKILL
    writer.wait().unwrap();
    assert!(ready, "the writer got into its transaction");
}

/// In a helper process: a connection to the database named by the environment variable
/// `env`, or none when it is not set (the helper run as a test of its own).
pub fn helper_connection(env: &str) -> Option<Connection> {
    std::env::var_os(env).map(|db| Connection::open(db).unwrap())
}

/// Inserts a user of each telegram id, all named `first_name`.
pub fn insert_users(conn: &Connection, ids: impl IntoIterator<Item = i64>, first_name: &str) {
    for id in ids {
        conn.execute(
            "INSERT INTO users (telegram_id, first_name) VALUES (?1, ?2)",
            rusqlite::params![id, first_name],
        )
        .unwrap();
    }
}

/// What a writer killed in the middle of its transaction does in it: 20 000 rows that never
/// commit; then it says [`WRITER_READY`] and waits to be killed.
pub fn write_rows_that_never_commit(conn: &Connection) -> ! {
    insert_users(conn, 1_000_000..1_020_000, "a row that never commits");
    // libtest may print "test writer_killed_mid_transaction ... " before it on the same line.
    println!("{WRITER_READY}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
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
