//! The runbook's own first deploy, end to end: the old app runs under Compose as the project's
//! `bot` service with its create-all database on a bind mount or in a volume, and
//! `cargo xtask first-deploy` finds that database, brings it over, and keeps the old container
//! until the new bot is healthy; refusals leave the old app serving and its data untouched.
//!
//! These tests need a running Docker daemon and fail, saying so, when there is none.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Project, SERIAL, docker, env_file, old_app_database, report, root, run, steps, text};
use rusqlite::Connection;
use serde_json::Value;

/// The old app's Compose stack in the test's project, removed with everything it left.
struct OldApp<'a> {
    project: &'a Project,
    image: String,
    mount: String,
}

impl<'a> OldApp<'a> {
    /// Starts the old app with `mount` (a Compose volume line) as its one mount.
    fn start(project: &'a Project, mount: &str) -> OldApp<'a> {
        let image = format!("tgbot-e2e-old-app:{}", project.name);
        build_old_app_image(project, &image);
        let old = OldApp {
            project,
            image,
            mount: mount.to_owned(),
        };
        let up = old.compose(&["up", "-d"]);
        assert!(
            up.status.success(),
            "the old app did not start: {}",
            text(&up)
        );
        old
    }

    fn compose(&self, args: &[&str]) -> std::process::Output {
        let file = root().join("xtask/tests/fixtures/old-app.yml");
        let mut last = None;
        for program in [vec!["docker-compose"], vec!["docker", "compose"]] {
            let mut all: Vec<&str> = program[1..].to_vec();
            all.extend(["-f", file.to_str().unwrap(), "-p", &self.project.name]);
            all.extend_from_slice(args);
            let output = Command::new(program[0])
                .args(&all)
                .env("OLD_APP_IMAGE", &self.image)
                .env("OLD_APP_MOUNT", &self.mount)
                .stdin(Stdio::null())
                .output();
            match output {
                Ok(o) if o.status.success() => return o,
                Ok(o) => last = Some(o),
                Err(_) => continue,
            }
        }
        last.expect("neither docker-compose nor docker compose runs")
    }

    /// The project's `bot` container as Docker shows it.
    fn container(&self) -> Value {
        self.project.bot_container()
    }

    /// The stopped copy the deploy keeps, if any.
    fn kept(&self) -> Option<Value> {
        let id = docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=org.tgbot.kept-for={}", self.project.name),
        ]);
        (!id.is_empty()).then(|| {
            serde_json::from_str::<Value>(&docker(&["inspect", id.lines().next().unwrap()]))
                .unwrap()[0]
                .clone()
        })
    }
}

impl Drop for OldApp<'_> {
    fn drop(&mut self) {
        let ids = docker(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=org.tgbot.kept-for={}", self.project.name),
        ]);
        for id in ids.lines() {
            let _ = run("docker", &["rm", "-f", id]);
        }
        let _ = self.compose(&["down", "-v", "--remove-orphans"]);
        let _ = run(
            "docker",
            &[
                "rmi",
                "-f",
                &self.image,
                &format!("tgbot-old-app:{}", self.project.name),
            ],
        );
    }
}

/// Builds the old app's image from the stand-in's static binary (built as the deploy builds it).
fn build_old_app_image(project: &Project, image: &str) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-linux-gnu",
            "-p",
            "bot",
            "-p",
            "telegram-standin",
        ])
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .env("TGBOT_SCHEMA_HEAD", "")
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text(&built));
    let context = project.dir.join("old-app-context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(
        root().join("target/x86_64-unknown-linux-gnu/release/telegram-standin"),
        context.join("telegram-standin"),
    )
    .unwrap();
    let dockerfile = root().join("xtask/tests/fixtures/old-app.Dockerfile");
    docker(&[
        "build",
        "--quiet",
        "-f",
        dockerfile.to_str().unwrap(),
        "-t",
        image,
        context.to_str().unwrap(),
    ]);
}

/// Every user row, in order, from a database file.
fn users_of(path: &Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT telegram_id, username, first_name, last_name, is_admin, created_at FROM users ORDER BY telegram_id")
        .unwrap();
    statement
        .query_map([], |row| {
            Ok(format!(
                "{}|{:?}|{:?}|{:?}|{}|{}",
                row.get::<_, i64>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, String>(5)?
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn volume_exists(project: &Project) -> bool {
    run("docker", &["volume", "inspect", &project.volume()])
        .status
        .success()
}

/// The new bot serves the old users: our container, healthy, at head, every row as before.
fn assert_imported(project: &Project, old_users: &[String]) {
    let container = project.bot_container();
    assert_eq!(container["State"]["Health"]["Status"], "healthy");
    assert!(
        container["Config"]["Labels"]["org.tgbot.image"].is_string(),
        "our bot runs: {}",
        container["Config"]["Image"]
    );
    let status = project.db_status();
    assert_eq!(status["state"], "current", "{status}");
    let copy = project.copy_database("imported");
    assert_eq!(users_of(&copy), old_users, "every old user, exactly");
}

#[test]
fn the_runbooks_old_app_with_a_bind_mounted_database_is_imported() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("oldbind");
    let file = project.dir.join("bot_database.db");
    old_app_database(&file, 50);
    let old_users = users_of(&file);
    let before = bytes(&file);
    let old = OldApp::start(
        &project,
        &format!("{}:/app/bot_database.db", file.display()),
    );
    let old_container = old.container();
    let old_name = old_container["Name"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_owned();

    let dry = project.xtask("first-deploy", &["--yes", "--json", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    let plan = report(&dry)["plan"].to_string();
    for line in [
        "look for the old app",
        "stop old app: docker stop",
        "import database",
    ] {
        assert!(plan.contains(line), "{line} in {plan}");
    }
    assert_eq!(old.container()["Id"], old_container["Id"]);
    assert_eq!(
        old.container()["State"]["Running"],
        true,
        "a dry run changes nothing"
    );
    assert!(!volume_exists(&project), "a dry run creates nothing");

    let deploy = project.xtask("first-deploy", &["--yes", "--json"]);
    assert!(deploy.status.success(), "{}", text(&deploy));
    let outcome = report(&deploy);
    assert_eq!(
        outcome["imported_from"],
        format!("imported from {old_name}:/app/bot_database.db, 50 users, matched revision 1"),
        "{outcome}"
    );
    assert_eq!(outcome["state_before"], "unstamped");
    assert_eq!(outcome["revision_before"], 1);
    let names = steps(&outcome);
    let order = [
        "look for the old app",
        "stop old app",
        "import database",
        "migrate database",
        "save backup",
        "keep old app's container",
        "start bot",
        "wait until healthy",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|s| {
            names
                .iter()
                .position(|n| n == s)
                .unwrap_or_else(|| panic!("no step {s}: {names:?}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    assert!(
        outcome["backup"]
            .as_str()
            .is_some_and(|b| Path::new(b).exists()),
        "a backup of the imported database before its migration: {outcome}"
    );

    assert_imported(&project, &old_users);
    assert_eq!(bytes(&file), before, "the old app's file was only read");
    let kept = old.kept().expect("the old container is kept");
    assert_eq!(kept["State"]["Running"], false, "kept stopped");
    assert_eq!(
        kept["Mounts"][0]["Destination"], "/app/bot_database.db",
        "with its mounts"
    );
    assert!(
        outcome["old_app"]
            .as_str()
            .is_some_and(|t| t.contains(&old_name)),
        "the report says what became of the old app: {outcome}"
    );

    let history = project.xtask("history", &["--json"]);
    let deploys: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(
        deploys["deploys"].as_array().unwrap().last().unwrap()["imported_from"],
        outcome["imported_from"]
    );
    let status = project.xtask("status", &["--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        status["imported_from"]
            .as_str()
            .is_some_and(|t| t.starts_with(outcome["imported_from"].as_str().unwrap())),
        "{status}"
    );

    let again = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        report(&again)["changed"],
        false,
        "a second run changes nothing"
    );
}

#[test]
fn an_old_app_with_its_database_under_another_name_in_a_volume_is_imported() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("oldvol");
    let file = project.dir.join("legacy.sqlite");
    old_app_database(&file, 30);
    let old_users = users_of(&file);
    let old = OldApp::start(&project, "appdata:/srv/state");
    let id = old.container()["Id"].as_str().unwrap().to_owned();
    docker(&[
        "cp",
        file.to_str().unwrap(),
        &format!("{id}:/srv/state/legacy.sqlite"),
    ]);
    let name = old.container()["Name"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_owned();

    let deploy = project.xtask("first-deploy", &["--yes", "--json"]);
    assert!(deploy.status.success(), "{}", text(&deploy));
    assert_eq!(
        report(&deploy)["imported_from"],
        format!("imported from {name}:/srv/state/legacy.sqlite, 30 users, matched revision 1")
    );
    assert_imported(&project, &old_users);
}

#[test]
fn two_candidate_databases_are_refused_until_one_is_named() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("oldtwo");
    let app = project.dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    old_app_database(&app.join("bot_database.db"), 20);
    old_app_database(&app.join("bot_database.backup.db"), 5);
    std::fs::write(app.join("notes.txt"), "not a database").unwrap();
    let old_users = users_of(&app.join("bot_database.db"));
    let before = (
        bytes(&app.join("bot_database.db")),
        bytes(&app.join("bot_database.backup.db")),
    );
    let old = OldApp::start(&project, &format!("{}:/app", app.display()));
    let old_id = old.container()["Id"].clone();
    let name = old.container()["Name"]
        .as_str()
        .unwrap()
        .trim_start_matches('/')
        .to_owned();

    let refused = project.xtask("first-deploy", &["--yes", "--json"]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let error = report(&refused)["error"].as_str().unwrap().to_owned();
    for expected in [
        format!("{name}:/app/bot_database.db"),
        format!("{name}:/app/bot_database.backup.db"),
        "--import".to_owned(),
        "--fresh".to_owned(),
    ] {
        assert!(error.contains(&expected), "{expected} in {error}");
    }
    assert!(!error.contains("notes.txt"), "{error}");
    let container = old.container();
    assert_eq!(container["Id"], old_id, "the same old container");
    assert_eq!(container["State"]["Running"], true, "still serving");
    assert!(!volume_exists(&project), "nothing was created");
    assert_eq!(
        (
            bytes(&app.join("bot_database.db")),
            bytes(&app.join("bot_database.backup.db"))
        ),
        before
    );

    let import = format!("{name}:/app/bot_database.db");
    let deploy = project.xtask("first-deploy", &["--yes", "--json", "--import", &import]);
    assert!(deploy.status.success(), "{}", text(&deploy));
    assert_eq!(
        report(&deploy)["imported_from"],
        format!("imported from {import}, 20 users, matched revision 1")
    );
    assert_imported(&project, &old_users);
}

#[test]
fn an_old_database_matching_no_revision_is_refused_and_the_old_app_keeps_serving() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("oldodd");
    let file = project.dir.join("bot_database.db");
    let conn = Connection::open(&file).unwrap();
    conn.execute_batch(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, telegram_id BIGINT NOT NULL UNIQUE, username VARCHAR(255), first_name VARCHAR(255), is_admin BOOLEAN NOT NULL DEFAULT 0, created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP);
         INSERT INTO users (telegram_id, username) VALUES (1, 'a'), (2, 'b'), (3, 'c');",
    )
    .unwrap();
    drop(conn);
    let before = bytes(&file);
    let old = OldApp::start(
        &project,
        &format!("{}:/app/bot_database.db", file.display()),
    );
    let old_id = old.container()["Id"].clone();

    let refused = project.xtask("first-deploy", &["--yes", "--json"]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let error = report(&refused)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("last_name"),
        "the difference is named: {error}"
    );
    let container = old.container();
    assert_eq!(
        (
            container["Id"].clone(),
            container["State"]["Running"].clone()
        ),
        (old_id, Value::Bool(true))
    );
    assert!(!volume_exists(&project), "nothing was created");
    assert_eq!(bytes(&file), before);
    let count: i64 = Connection::open(&file)
        .unwrap()
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 3);
}

#[test]
fn a_failed_import_puts_the_old_app_back_running_and_a_later_import_of_a_file_works() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("oldfail");
    let file = project.dir.join("bot_database.db");
    old_app_database(&file, 40);
    let old_users = users_of(&file);
    let before = bytes(&file);
    let old = OldApp::start(
        &project,
        &format!("{}:/app/bot_database.db", file.display()),
    );
    let original = old.container();
    let wrong = env_file(&project.dir, "wrong.env", "999999:WRONG-e2e-token");

    let deploy = project.xtask(
        "first-deploy",
        &["--yes", "--json", "--env-file", wrong.to_str().unwrap()],
    );
    assert_eq!(deploy.status.code(), Some(1), "{}", text(&deploy));
    let outcome = report(&deploy);
    assert_eq!(outcome["rolled_back"], true, "{outcome}");
    assert_eq!(outcome["failed_step"], "wait until healthy", "{outcome}");
    let names = steps(&outcome);
    for step in [
        "rollback: remove new bot",
        "rollback: discard imported database",
        "rollback: start old app",
    ] {
        assert!(names.contains(&step.to_owned()), "{step}: {names:?}");
    }
    let back = old.container();
    assert_eq!(back["State"]["Running"], true, "the old app runs again");
    assert_eq!(back["Name"], original["Name"], "under its own name");
    assert_eq!(
        back["Config"]["Labels"], original["Config"]["Labels"],
        "with its labels, so its Compose manages it"
    );
    assert_eq!(back["Mounts"][0]["Destination"], "/app/bot_database.db");
    for setting in ["RestartPolicy", "PortBindings", "Init"] {
        assert_eq!(
            back["HostConfig"][setting], original["HostConfig"][setting],
            "its {setting}"
        );
    }
    assert!(old.kept().is_none(), "no copy left behind");
    assert!(!volume_exists(&project), "the imported copy is gone");
    assert_eq!(bytes(&file), before, "the old app's file was only read");

    // The same server again, naming a file on this machine: the old app is replaced for good.
    let copy: PathBuf = project.dir.join("handed-over.db");
    std::fs::copy(&file, &copy).unwrap();
    let deploy = project.xtask(
        "first-deploy",
        &["--yes", "--json", "--import", copy.to_str().unwrap()],
    );
    assert!(deploy.status.success(), "{}", text(&deploy));
    assert_eq!(
        report(&deploy)["imported_from"],
        format!(
            "imported from {}, 40 users, matched revision 1",
            copy.display()
        )
    );
    assert_imported(&project, &old_users);
}

#[test]
fn a_scaled_old_app_is_refused_before_anything_changes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("oldscaled");
    let file = project.dir.join("bot_database.db");
    old_app_database(&file, 10);
    let before = bytes(&file);
    let old = OldApp::start(
        &project,
        &format!("{}:/app/bot_database.db", file.display()),
    );
    let scaled = old.compose(&["up", "-d", "--scale", "bot=2"]);
    assert!(scaled.status.success(), "{}", text(&scaled));

    let refused = project.xtask("first-deploy", &["--yes", "--json"]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let error = report(&refused)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("2 containers") && error.contains("--scale bot=1"),
        "{error}"
    );
    let running = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={}", project.name),
        "--filter",
        "label=com.docker.compose.service=bot",
    ]);
    assert_eq!(running.lines().count(), 2, "both old containers still run");
    assert!(!volume_exists(&project), "nothing was created");
    assert_eq!(bytes(&file), before);
    for task in ["down", "restart"] {
        let refused = project.xtask(task, &["--yes"]);
        assert_eq!(refused.status.code(), Some(3), "{task}: {}", text(&refused));
    }
}
