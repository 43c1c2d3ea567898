//! What the end-to-end tests share: a Compose project of their own, `cargo xtask` as a user
//! runs it, and ways to look into the volume.
#![allow(dead_code)]

pub mod plan;
pub mod ssh;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use rusqlite::Connection;
use serde_json::Value;
use xshell::Shell;
use xtask::compose::Stack;

/// A shell in the workspace, for xtask's own command builders.
pub fn shell() -> Shell {
    let sh = Shell::new().unwrap();
    sh.change_dir(root());
    // As xtask does: Compose would otherwise take the DOCKER_HOST a deploy wrote to
    // docker/.env (a remote test's ssh server, gone by now).
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    sh.set_var("DOCKER_HOST", host);
    sh
}

/// One deploy at a time: they share the CPU-heavy release build and the Docker engine.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// The newest revision, as the migration catalog the bot is built with has it.
pub fn head() -> u64 {
    migrations::head().into()
}

/// The workspace's folder.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the end-to-end tests need a running Docker daemon: `docker version` cannot reach one. Start it (sudo systemctl start docker) or set DOCKER_HOST."
    );
}

pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// `cargo xtask <args>`, as a user types it.
pub fn xtask(args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut all = vec!["xtask"];
    all.extend_from_slice(args);
    run(&cargo, &all)
}

pub fn docker(args: &[&str]) -> String {
    let output = run("docker", args);
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A Compose project of its own, removed with its volume and images when the test ends.
pub struct Project {
    pub name: String,
    pub dir: PathBuf,
}

impl Project {
    pub fn new(test: &str) -> Project {
        require_docker();
        let name = format!("tgbot-e2e-{test}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let project = Project { name, dir };
        project.remove_stack();
        project
    }

    pub fn xtask(&self, task: &str, extra: &[&str]) -> Output {
        self.xtask_with_env(task, extra, &[])
    }

    /// `cargo xtask <task> --demo --project-name <name> <extra>` with more environment.
    pub fn xtask_with_env(&self, task: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .args(["xtask", task, "--demo", "--project-name", &self.name])
            .args(extra)
            .current_dir(root())
            .stdin(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    }

    /// The project's stack as `cargo xtask --demo` names it.
    pub fn stack(&self) -> Stack {
        Stack::new(&shell(), &self.name, true).expect("Docker Compose is installed")
    }

    pub fn image(&self) -> String {
        self.stack().bot_image
    }

    pub fn volume(&self) -> String {
        self.stack().volume()
    }

    /// `bot <args>` in a throw-away container on the project's volume.
    pub fn bot(&self, args: &[&str]) -> Output {
        let mount = format!("{}:/data", self.volume());
        let image = self.image();
        let mut all = vec!["run", "--rm", "-v", &mount, &image];
        all.extend_from_slice(args);
        run("docker", &all)
    }

    pub fn db_status(&self) -> Value {
        let output = self.bot(&["db", "status", "--json"]);
        assert!(output.status.success(), "{}", text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// A consistent copy of the live database on this machine (the online backup API, so pages
    /// still in the WAL are included).
    pub fn copy_database(&self, label: &str) -> PathBuf {
        let in_volume = format!("/data/test-copy-{label}.db");
        let output = self.bot(&["db", "backup", &in_volume]);
        assert!(output.status.success(), "{}", text(&output));
        self.copy_out(&in_volume, label)
    }

    /// The raw file as it lies in the volume.
    pub fn copy_out(&self, path: &str, label: &str) -> PathBuf {
        let mount = format!("{}:/data", self.volume());
        let id = docker(&["create", "-v", &mount, &self.image()]);
        let host = self.dir.join(format!("{label}.db"));
        let _ = std::fs::remove_file(&host);
        docker(&["cp", &format!("{id}:{path}"), host.to_str().unwrap()]);
        docker(&["rm", "-f", &id]);
        host
    }

    /// Writes `file` into the live database with the engine's restore (the backup API), while
    /// the bot keeps running: how a bad schema gets under a running bot.
    pub fn overwrite_live_database(&self, file: &Path) {
        let mount = format!("{}:/data", self.volume());
        let id = docker(&[
            "create",
            "--user",
            "0:0",
            "-v",
            &mount,
            &self.image(),
            "db",
            "restore",
            "/tmp/source.db",
            "--owner",
            "10001:10001",
        ]);
        docker(&[
            "cp",
            file.to_str().unwrap(),
            &format!("{id}:/tmp/source.db"),
        ]);
        let output = run("docker", &["start", "-a", &id]);
        docker(&["rm", "-f", &id]);
        assert!(output.status.success(), "{}", text(&output));
    }

    /// A deployed bot at revision 3 (an older release) with `users` users, one of whom the
    /// revision-4 rebuild refuses when `bad_admin`; `extra` goes to `first-deploy`. Returns the
    /// running image's id.
    pub fn deployed_at_revision_3(&self, users: i64, bad_admin: bool, extra: &[&str]) -> String {
        let mut args = vec!["--yes", "--schema-head", "3"];
        args.extend_from_slice(extra);
        let deploy = self.xtask("first-deploy", &args);
        assert!(deploy.status.success(), "{}", text(&deploy));
        let data = self.dir.join("revision-3.db");
        revision_3_database(&data, users, bad_admin);
        self.overwrite_live_database(&data);
        let image = self.running_image();
        let status = self.db_status_with(&image);
        assert_eq!(
            (status["state"].as_str(), status["version"].as_u64()),
            (Some("current"), Some(3)),
            "{status}"
        );
        image
    }

    /// The bot is healthy, the database current at head with `users` users.
    pub fn assert_healthy_at_head_with(&self, users: i64, label: &str) {
        let container = self.bot_container();
        assert_eq!(
            container["State"]["Health"]["Status"].as_str(),
            Some("healthy"),
            "{container}"
        );
        let status = self.db_status();
        assert_eq!(
            (status["state"].as_str(), status["version"].as_u64()),
            (Some("current"), Some(head())),
            "{status}"
        );
        assert_eq!(self.users(label), users, "every user is still there");
    }

    /// The users in the live database (read from a copy).
    pub fn users(&self, label: &str) -> i64 {
        let copy = self.copy_database(label);
        let count = Connection::open(&copy)
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        let _ = std::fs::remove_file(copy);
        count
    }

    /// `cargo xtask status --json`.
    pub fn status_json(&self) -> Value {
        let status = self.xtask("status", &["--json"]);
        assert!(status.status.success(), "{}", text(&status));
        serde_json::from_slice(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&status)))
    }

    /// The bot service's containers: ids, newest first.
    pub fn bot_containers(&self) -> Vec<String> {
        let sh = shell();
        self.stack()
            .bot_containers(&sh)
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect()
    }

    /// A second container of the bot service beside the first, as `--scale bot=2` makes it;
    /// `started: false` leaves it created only (what a crash during "start new bot" leaves).
    pub fn second_bot(&self, started: bool) {
        let sh = shell();
        let start: &[&str] = if started { &["-d"] } else { &["--no-start"] };
        let made = self
            .stack()
            .cmd(&sh)
            .arg("up")
            .args(start)
            .args(["--no-deps", "--no-recreate", "--scale", "bot=2", "bot"])
            .quiet()
            .ignore_status()
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", text(&made));
    }

    pub fn bot_container(&self) -> Value {
        let id = docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
            "--filter",
            "label=com.docker.compose.service=bot",
            "--filter",
            "label=com.docker.compose.oneoff=False",
        ]);
        assert!(!id.is_empty(), "the project has no bot container");
        let inspect: Value = serde_json::from_str(&docker(&["inspect", &id])).unwrap();
        inspect[0].clone()
    }

    pub fn remove_stack(&self) {
        let sh = shell();
        let stack = self.stack();
        let _ = stack
            .cmd(&sh)
            .args(["down", "-v", "--remove-orphans"])
            .quiet()
            .ignore_status()
            .output();
        // Containers outside Compose's sight that a test made on the volume (a bot started by
        // hand, a kept migration) would keep it.
        let volume = self.volume();
        let users = run(
            "docker",
            &["ps", "-aq", "--filter", &format!("volume={volume}")],
        );
        for id in String::from_utf8_lossy(&users.stdout).split_whitespace() {
            let _ = run("docker", &["rm", "-f", id]);
        }
        let _ = run("docker", &["volume", "rm", "-f", &volume]);
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        self.remove_stack();
        for image in [
            self.image(),
            format!("{}-previous", self.image()),
            format!("tgbot-standin:{}", self.name),
        ] {
            let _ = run("docker", &["rmi", "-f", &image]);
        }
        let _ = std::fs::remove_dir_all(root().join("backups").join(&self.name));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The old app's database: its create-all schema (revision 1) and `users` users, no history.
pub fn old_app_database(path: &Path, users: i64) {
    let _ = std::fs::remove_file(path);
    let mut conn = Connection::open(path).unwrap();
    conn.execute_batch(include_str!("../../../migrations/sql/0001_initial.up.sql"))
        .unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..users {
        tx.execute(
            "INSERT INTO users (telegram_id, username, first_name, last_name, is_admin, created_at) VALUES (?1, ?2, ?3, ?4, ?5, '2024-01-02 03:04:05')",
            rusqlite::params![70_000_000 + i, format!("user{i}"), format!("First{i}"), format!("Last{i}"), i % 50 == 0],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

pub fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report: {}", text(output)));
    serde_json::from_str(line).unwrap()
}

impl Project {
    /// The image id the bot's container runs.
    pub fn running_image(&self) -> String {
        self.bot_container()["Image"].as_str().unwrap().to_owned()
    }

    /// `bot db status --json` with the engine of `image`.
    pub fn db_status_with(&self, image: &str) -> Value {
        let mount = format!("{}:/data", self.volume());
        let output = run(
            "docker",
            &["run", "--rm", "-v", &mount, image, "db", "status", "--json"],
        );
        assert!(output.status.success(), "{}", text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Every row of `users` and `command_log`, in order: to compare data exactly.
    pub fn dump(&self, label: &str) -> String {
        let copy = self.copy_database(label);
        let conn = Connection::open(&copy).unwrap();
        let mut out = String::new();
        for query in [
            "SELECT id, telegram_id, username, first_name, last_name, is_admin, created_at FROM users ORDER BY id",
            "SELECT id, user_id, command, used_at FROM command_log ORDER BY id",
        ] {
            let Ok(mut statement) = conn.prepare(query) else {
                continue;
            };
            let columns = statement.column_count();
            let mut rows = statement.query([]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                for i in 0..columns {
                    let value: rusqlite::types::Value = row.get(i).unwrap();
                    out.push_str(&format!("{value:?}|"));
                }
                out.push('\n');
            }
        }
        out
    }

    /// The default folder of backups, history and lock for this project.
    pub fn state_dir(&self) -> PathBuf {
        root().join("backups").join(&self.name)
    }
}

/// A database at revision 3 (stamped), with `users` users; `bad_admin` gives one of them an
/// `is_admin` of 2, which revision 4's CHECK refuses.
pub fn revision_3_database(path: &Path, users: i64, bad_admin: bool) {
    let _ = std::fs::remove_file(path);
    let mut db = migrations::Database::open(path).unwrap();
    db.upgrade(|_| {}).unwrap();
    db.downgrade(3, |_| {}).unwrap();
    drop(db);
    let mut conn = Connection::open(path).unwrap();
    let tx = conn.transaction().unwrap();
    for i in 0..users {
        let admin = if bad_admin && i == users / 2 {
            2
        } else {
            i64::from(i % 10 == 0)
        };
        tx.execute(
            "INSERT INTO users (telegram_id, username, first_name, last_name, is_admin) VALUES (?1, ?2, ?3, 'L', ?4)",
            rusqlite::params![80_000_000 + i, format!("user{i}"), format!("First{i} with some padding to make rows larger"), admin],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO command_log (user_id, command) VALUES (last_insert_rowid(), '/start')",
            [],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Writes `lines` to a new environment file for the demo stand-in.
pub fn env_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "BOT_TOKEN={token}\nTELEGRAM_API_URL=http://telegram-standin:8081\nRUST_LOG=info\n"
        ),
    )
    .unwrap();
    path
}

/// The names of the steps in a report, in order.
pub fn steps(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// What to do to the deploy when a progress line appears.
#[derive(Clone, Copy)]
pub enum Act {
    /// SIGKILL.
    Kill,
    /// One SIGTERM (or SIGINT with `Interrupt`).
    Term,
    /// One SIGINT.
    Interrupt,
    /// Two SIGINTs, as a second Ctrl-C.
    InterruptTwice,
}

/// Runs `cargo xtask <task>` on the project and acts on it once a progress line starts with
/// `at`; returns the output (stderr as progress) and whether the act happened.
pub fn deploy_acted_on(
    project: &Project,
    task: &str,
    at: &str,
    act: Act,
) -> (std::process::Output, bool) {
    let mut deploy = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["xtask", task, "--demo", "--yes", "--json"])
        .args(["--project-name", &project.name])
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `cargo xtask` execs the tool, so this pid is the tool's once it prints its steps.
    let pid = deploy.id().to_string();
    let mut progress = String::new();
    let mut acted = false;
    for line in BufReader::new(deploy.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        progress.push_str(&line);
        progress.push('\n');
        if !acted && line.starts_with(at) {
            acted = true;
            let signals: &[&str] = match act {
                Act::Kill => &["-KILL"],
                Act::Term => &["-TERM"],
                Act::Interrupt => &["-INT"],
                Act::InterruptTwice => &["-INT", "-INT"],
            };
            for signal in signals {
                let sent = run("kill", &[signal, &pid]);
                assert!(sent.status.success(), "{}", text(&sent));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
    let mut output = deploy.wait_with_output().unwrap();
    output.stderr = progress.into_bytes();
    (output, acted)
}

/// `docker` and `docker-compose` first on PATH (the folder returned first), each noting in the
/// log returned second the engine it was given (DOCKER_HOST, DOCKER_CONTEXT) and its arguments,
/// as `DOCKER_HOST=... DOCKER_CONTEXT=... :: docker ARGS`, before running the real one.
pub fn logging_bin(dir: &Path) -> (PathBuf, PathBuf) {
    let note = "DOCKER_HOST=${DOCKER_HOST-<unset>} DOCKER_CONTEXT=${DOCKER_CONTEXT-<unset>} :: ";
    wrappers(dir, note, "")
}

/// `docker` and `docker-compose` in a folder of their own (returned first), each writing
/// `{note}{program} ARGS` to the log (returned second), then running the real one; the
/// `docker` one runs the shell `docker_prelude` first (which may block a command).
pub fn wrappers(dir: &Path, note: &str, docker_prelude: &str) -> (PathBuf, PathBuf) {
    let bin = dir.join("logbin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("commands.log");
    for program in ["docker", "docker-compose"] {
        let real = std::env::var("PATH")
            .unwrap()
            .split(':')
            .map(|d| Path::new(d).join(program))
            .find(|p| p.is_file() && !p.starts_with(&bin))
            .unwrap_or_else(|| panic!("{program} is not on PATH"));
        let prelude = if program == "docker" {
            docker_prelude
        } else {
            ""
        };
        let script = bin.join(program);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"{note}{program} $*\" >> {log}\n{prelude}\nexec {real} \"$@\"\n",
                log = log.display(),
                real = real.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (bin, log)
}
