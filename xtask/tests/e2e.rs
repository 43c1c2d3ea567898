//! End-to-end: the real `cargo xtask` commands against the real Docker engine, real images, real
//! SQLite files in real volumes, and the Bot API stand-in in its container.
//!
//! These tests need a running Docker daemon and fail, saying so, when there is none.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use rusqlite::Connection;
use serde_json::Value;

/// One deploy at a time: they share the CPU-heavy release build and the Docker engine.
static SERIAL: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn require_docker() {
    let ok = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the end-to-end tests need a running Docker daemon: `docker version` cannot reach one. Start it (sudo systemctl start docker) or set DOCKER_HOST."
    );
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// `cargo xtask <args>`, as a user types it.
fn xtask(args: &[&str]) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut all = vec!["xtask"];
    all.extend_from_slice(args);
    run(&cargo, &all)
}

fn docker(args: &[&str]) -> String {
    let output = run("docker", args);
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A Compose project of its own, removed with its volume and images when the test ends.
struct Project {
    name: String,
    dir: PathBuf,
}

impl Project {
    fn new(test: &str) -> Project {
        require_docker();
        let name = format!("tgbot-e2e-{test}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let project = Project { name, dir };
        project.remove_stack();
        project
    }

    fn xtask(&self, task: &str, extra: &[&str]) -> Output {
        let mut args = vec![task, "--demo", "--project-name", &self.name];
        args.extend_from_slice(extra);
        xtask(&args)
    }

    fn image(&self) -> String {
        format!("tgbot-bot:{}", self.name)
    }

    fn volume(&self) -> String {
        format!("{}_bot-data", self.name)
    }

    /// `bot <args>` in a throw-away container on the project's volume.
    fn bot(&self, args: &[&str]) -> Output {
        let mount = format!("{}:/data", self.volume());
        let image = self.image();
        let mut all = vec!["run", "--rm", "-v", &mount, &image];
        all.extend_from_slice(args);
        run("docker", &all)
    }

    fn db_status(&self) -> Value {
        let output = self.bot(&["db", "status", "--json"]);
        assert!(output.status.success(), "{}", text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// A consistent copy of the live database on this machine (the online backup API, so pages
    /// still in the WAL are included).
    fn copy_database(&self, label: &str) -> PathBuf {
        let in_volume = format!("/data/test-copy-{label}.db");
        let output = self.bot(&["db", "backup", &in_volume]);
        assert!(output.status.success(), "{}", text(&output));
        self.copy_out(&in_volume, label)
    }

    /// The raw file as it lies in the volume.
    fn copy_out(&self, path: &str, label: &str) -> PathBuf {
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
    fn overwrite_live_database(&self, file: &Path) {
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

    fn bot_container(&self) -> Value {
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

    fn remove_stack(&self) {
        let compose = root().join("docker/docker-compose.prod.yml");
        for program in [vec!["docker-compose"], vec!["docker", "compose"]] {
            let mut args: Vec<&str> = program[1..].to_vec();
            args.extend([
                "-f",
                compose.to_str().unwrap(),
                "-p",
                &self.name,
                "--profile",
                "demo",
                "down",
                "-v",
                "--remove-orphans",
            ]);
            let done = Command::new(program[0])
                .args(&args)
                .env("BOT_ENV_FILE", root().join("docker/demo.env"))
                .env("BOT_IMAGE", self.image())
                .env("STANDIN_IMAGE", format!("tgbot-standin:{}", self.name))
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if done {
                break;
            }
        }
        let _ = run("docker", &["volume", "rm", "-f", &self.volume()]);
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
fn old_app_database(path: &Path, users: i64) {
    let _ = std::fs::remove_file(path);
    let mut conn = Connection::open(path).unwrap();
    conn.execute_batch(include_str!("../../migrations/sql/0001_initial.up.sql"))
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

fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report: {}", text(output)));
    serde_json::from_str(line).unwrap()
}

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
    let steps: Vec<&str> = first["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"migrate database") && steps.contains(&"save backup"),
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
    let deploy = project.xtask("first-deploy", &["--yes"]);
    assert!(deploy.status.success(), "{}", text(&deploy));
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
    let steps: Vec<&str> = refused["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        !steps.contains(&"stop bot") && !steps.contains(&"back up database"),
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
