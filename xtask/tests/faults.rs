//! Deploys that cannot lose data, end to end on the real Docker engine: every fault ends with the
//! previous bot healthy on the exact pre-deploy data and a non-zero exit naming the cause; two
//! deploys at once; dry runs that change nothing; a token that appears nowhere.
//!
//! These tests need a running Docker daemon and fail, saying so, when there is none.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Project, SERIAL, docker, env_file, head, report, revision_3_database, root, run, steps, text,
};
use serde_json::Value;

/// Runs `prod-full-update --demo --yes --json <extra>`, calling `on_line` with each progress
/// line and the progress so far as they come; returns its output and all its progress.
fn deploy_acting_at(
    project: &Project,
    extra: &[&str],
    mut on_line: impl FnMut(&str, &str),
) -> (std::process::Output, String) {
    let mut deploy = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["xtask", "prod-full-update", "--demo", "--yes", "--json"])
        .args(["--project-name", &project.name])
        .args(extra)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut progress = String::new();
    for line in BufReader::new(deploy.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        progress.push_str(&line);
        progress.push('\n');
        on_line(&line, &progress);
    }
    (deploy.wait_with_output().unwrap(), progress)
}

/// The previous bot is back: same image, healthy, at revision 3, with exactly `data`.
fn assert_previous_bot_is_back(project: &Project, image: &str, data: &str) {
    let container = project.bot_container();
    assert_eq!(
        container["Image"].as_str(),
        Some(image),
        "the previous image runs"
    );
    assert_eq!(container["State"]["Health"]["Status"], "healthy");
    let status = project.db_status_with(image);
    assert_eq!(
        (status["state"].as_str(), status["version"].as_u64()),
        (Some("current"), Some(3)),
        "{status}"
    );
    assert_eq!(
        project.dump("after"),
        data,
        "the data is exactly as before the deploy"
    );
}

#[test]
fn a_migration_that_fails_halfway_brings_back_the_previous_bot_and_data() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("failmig");
    let old_image = project.deployed_at_revision_3(500, true, &[]);
    let data = project.dump("before");

    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert_eq!(update.status.code(), Some(1), "{}", text(&update));
    let outcome = report(&update);
    assert_eq!(outcome["result"], "failed");
    assert_eq!(outcome["rolled_back"], true, "{outcome}");
    assert_eq!(outcome["failed_step"], "migrate database");
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains("0004_users_rebuild.up.sql") && error.contains("CHECK constraint failed"),
        "{error}"
    );
    assert!(steps(&outcome).contains(&"rollback: wait until healthy".to_owned()));
    assert_previous_bot_is_back(&project, &old_image, &data);
    let status = project.xtask("status", &["--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["image_id"].as_str(),
        Some(old_image.as_str()),
        "after the rollback the project's tag names the image that runs, not the failed one"
    );
    let history = project.xtask("history", &["--json"]);
    let deploys: Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(
        deploys["deploys"].as_array().unwrap().last().unwrap()["result"],
        "rolled-back"
    );
}

#[test]
fn a_new_bot_that_never_gets_healthy_is_rolled_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("unhealthy");
    let old_image = project.deployed_at_revision_3(300, false, &[]);
    let data = project.dump("before");
    let wrong = env_file(&project.dir, "wrong.env", "999999:WRONG-e2e-token");

    let update = project.xtask(
        "prod-full-update",
        &["--yes", "--json", "--env-file", wrong.to_str().unwrap()],
    );
    assert_eq!(update.status.code(), Some(1), "{}", text(&update));
    let outcome = report(&update);
    assert_eq!(
        (
            outcome["rolled_back"].as_bool(),
            outcome["failed_step"].as_str()
        ),
        (Some(true), Some("wait until healthy")),
        "{outcome}"
    );
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains("rejected BOT_TOKEN"),
        "the cause is named: {error}"
    );
    assert!(
        !text(&update).contains("WRONG-e2e-token"),
        "the token is never shown"
    );
    assert!(
        steps(&outcome).contains(&"rollback: restore database".to_owned()),
        "the migrated database came back"
    );
    assert_previous_bot_is_back(&project, &old_image, &data);
}

#[test]
fn a_late_failure_sets_aside_what_the_new_bot_wrote_and_says_so() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("late");
    let old_image = project.deployed_at_revision_3(100, false, &[]);
    let data = project.dump("before");
    // A new bot that serves but never reports healthy: its heartbeat cannot be written.
    let env = project.dir.join("no-heartbeat.env");
    let demo = std::fs::read_to_string(root().join("docker/demo.env")).unwrap();
    std::fs::write(
        &env,
        format!("{demo}HEARTBEAT_PATH=/nonexistent/heartbeat\n"),
    )
    .unwrap();

    let (output, all) = deploy_acting_at(
        &project,
        &[
            "--health-timeout",
            "25",
            "--env-file",
            env.to_str().unwrap(),
        ],
        |line, progress| {
            if line.starts_with("ok   migrate database") {
                // The new bot serves as soon as the schema is current: three new users talk
                // to it.
                for user in ["7001", "7002", "7003"] {
                    let chat = project.xtask("chat", &["/start", "--user", user]);
                    assert!(chat.status.success(), "{progress}\n{}", text(&chat));
                }
            }
        },
    );
    assert_eq!(output.status.code(), Some(1), "{all}");
    let outcome: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(outcome["failed_step"], "wait until healthy", "{outcome}");
    assert_eq!(outcome["rolled_back"], true, "{outcome}");
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains("set aside") && error.contains("users +3"),
        "the error says what the rollback set aside: {error}"
    );
    let copy = std::fs::read_dir(project.state_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("set-aside-by-rollback.db"))
        .unwrap_or_else(|| panic!("no set-aside copy in {}", project.state_dir().display()));
    assert!(error.contains(copy.to_str().unwrap()), "{error}");
    let kept: i64 = rusqlite::Connection::open(&copy)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM users WHERE telegram_id IN (7001, 7002, 7003)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kept, 3, "the set-aside copy holds what the new bot wrote");
    assert_previous_bot_is_back(&project, &old_image, &data);
}

#[test]
fn a_build_that_fails_to_compile_never_stops_the_running_bot() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("badbuild");
    let old_image = project.deployed_at_revision_3(50, false, &[]);
    let data = project.dump("before");
    let container = project.bot_container();

    // A checkout of this repository whose bot does not compile.
    let copy = project.dir.join("checkout");
    let files = run("git", &["ls-files", "-co", "--exclude-standard"]);
    assert!(files.status.success(), "{}", text(&files));
    for file in String::from_utf8_lossy(&files.stdout).lines() {
        let target = copy.join(file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        if root().join(file).is_file() {
            std::fs::copy(root().join(file), &target).unwrap();
        }
    }
    // Its release build starts from the one the deploy above made (the dependencies are the
    // same): only the workspace's crates compile, and the bot's fails.
    let release_target = xtask::images::release_dir(Some(3));
    let built = release_target.ancestors().nth(2).unwrap().to_path_buf();
    xtask::images::seed_target_dir(&common::shell(), &copy.join("target"), &[built]);
    let seeded = copy
        .join("target")
        .join(xtask::images::TARGET)
        .join("release");
    assert!(seeded.is_dir(), "the copy's release folder was seeded");
    let main = copy.join("bot/src/main.rs");
    let mut source = std::fs::read_to_string(&main).unwrap();
    source.push_str("\ncompile_error!(\"injected by the broken-build test\");\n");
    std::fs::write(&main, source).unwrap();
    let backups = root().join("backups");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "xtask",
            "prod-full-update",
            "--demo",
            "--yes",
            "--json",
            "--project-name",
            &project.name,
        ])
        .arg("--backup-dir")
        .arg(&backups)
        .current_dir(&copy)
        .env("CARGO_TARGET_DIR", root().join("target"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let outcome = report(&output);
    assert_eq!(outcome["failed_step"], "build images", "{outcome}");
    assert!(
        outcome["error"]
            .as_str()
            .unwrap()
            .contains("injected by the broken-build test"),
        "{outcome}"
    );
    assert!(!steps(&outcome).contains(&"stop bot".to_owned()));
    let after = project.bot_container();
    assert_eq!(after["Id"], container["Id"]);
    assert_eq!(
        after["State"]["StartedAt"], container["State"]["StartedAt"],
        "the bot was never stopped"
    );
    assert_previous_bot_is_back(&project, &old_image, &data);
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let output = run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path.to_str().unwrap(),
            ],
        );
        assert!(
            output.status.success(),
            "this test mounts a small tmpfs as a full backup disk and needs root (CAP_SYS_ADMIN) for it: {}",
            text(&output)
        );
        SmallDisk(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run("umount", &[self.0.to_str().unwrap()]);
    }
}

#[test]
fn a_backup_folder_with_no_room_stops_the_deploy_before_anything_changes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("nospace");
    let disk = SmallDisk::mount(project.dir.join("small-disk"), "256k");
    let backup_dir = disk.0.to_str().unwrap().to_owned();
    let old_image = project.deployed_at_revision_3(3000, false, &["--backup-dir", &backup_dir]);
    let data = project.dump("before");
    let container = project.bot_container();

    let update = project.xtask(
        "prod-full-update",
        &["--yes", "--json", "--backup-dir", &backup_dir],
    );
    assert_eq!(update.status.code(), Some(4), "{}", text(&update));
    let outcome = report(&update);
    assert_eq!(
        outcome["failed_step"], "check room for the backup",
        "{outcome}"
    );
    assert!(
        outcome["error"]
            .as_str()
            .unwrap()
            .contains("no room for the backup"),
        "{outcome}"
    );
    assert!(!steps(&outcome).contains(&"stop bot".to_owned()));
    assert_eq!(
        project.bot_container()["State"]["StartedAt"],
        container["State"]["StartedAt"]
    );
    assert_previous_bot_is_back(&project, &old_image, &data);
}

#[test]
fn a_backup_copy_that_fails_after_the_migration_keeps_the_good_deploy_and_the_backup() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("savefail");
    let disk = SmallDisk::mount(project.dir.join("backup-disk"), "64m");
    let backup_dir = disk.0.to_str().unwrap().to_owned();
    project.deployed_at_revision_3(500, false, &["--backup-dir", &backup_dir]);
    let data = project.dump("before");

    let (output, all) = deploy_acting_at(&project, &["--backup-dir", &backup_dir], |line, _| {
        // The backup folder's disk fails once the migration has begun, for the copy of
        // the backup only.
        let remount = if line.starts_with("==> migrate database") {
            "remount,ro"
        } else if line.starts_with("warning: the pre-deploy backup could not be saved") {
            "remount,rw"
        } else {
            return;
        };
        let done = run("mount", &["-o", remount, &backup_dir]);
        assert!(done.status.success(), "{}", text(&done));
    });
    let rw = run("mount", &["-o", "remount,rw", &backup_dir]);
    assert!(rw.status.success(), "{}", text(&rw));
    assert_eq!(
        output.status.code(),
        Some(6),
        "a good deploy with a warning: {all}"
    );
    let outcome: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(outcome["rolled_back"], false, "{outcome}");
    assert_eq!(outcome["revision_after"], head(), "{outcome}");
    let warning = outcome["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("pre-deploy backup could not be saved"),
        "{outcome}"
    );
    let new_image = project.running_image();
    assert_eq!(
        project.bot_container()["State"]["Health"]["Status"],
        "healthy"
    );
    let status = project.db_status_with(&new_image);
    assert_eq!(status["version"], head(), "{status}");

    // The next backup saves the pre-deploy copy the migration container kept.
    let backup = project.xtask("backup", &["--json", "--backup-dir", &backup_dir]);
    assert!(backup.status.success(), "{}", text(&backup));
    let saved: Vec<PathBuf> = std::fs::read_dir(Path::new(&backup_dir).join(&project.name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-r3.db"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    let conn = rusqlite::Connection::open(&saved[0]).unwrap();
    let users: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(users, 500, "the pre-deploy backup holds every user");
    drop(conn);
    let left = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=org.tgbot.project={}", project.name),
        "--filter",
        "label=org.tgbot.role=migration",
    ]);
    assert_eq!(
        left.trim(),
        "",
        "the migration container is gone once saved"
    );
    // And the deploy's history line names it: `rollback` returns to it.
    let rollback = project.xtask(
        "rollback",
        &["--yes", "--json", "--backup-dir", &backup_dir],
    );
    assert!(rollback.status.success(), "{}", text(&rollback));
    assert_eq!(project.dump("after rollback"), data);
}

#[test]
fn a_running_but_unhealthy_bot_is_never_nothing_to_do() {
    // What a deploy killed during its health wait leaves: the bot runs, started by hand with
    // an environment it cannot serve with. The next deploy must not call that "nothing to do".
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("unhealthy-noop");
    let first = project.xtask("first-deploy", &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    let env = project.dir.join("no-heartbeat.env");
    let demo = std::fs::read_to_string(root().join("docker/demo.env")).unwrap();
    std::fs::write(
        &env,
        format!("{demo}HEARTBEAT_PATH=/nonexistent/heartbeat\n"),
    )
    .unwrap();
    let compose = root().join("docker/docker-compose.prod.yml");
    let up = Command::new("docker-compose")
        .args(["-f", compose.to_str().unwrap(), "-p", &project.name])
        .args(["--profile", "demo", "up", "-d", "--force-recreate", "bot"])
        .env("BOT_IMAGE", project.image())
        .env("BOT_ENV_FILE", &env)
        // Not the engine of the last deploy docker/.env names (maybe another test's).
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", text(&up));
    let deadline = Instant::now() + Duration::from_secs(60);
    while project.bot_container()["State"]["Health"]["Status"] != "unhealthy" {
        assert!(Instant::now() < deadline, "the bot never became unhealthy");
        std::thread::sleep(Duration::from_millis(500));
    }

    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(update.status.success(), "{}", text(&update));
    assert_eq!(report(&update)["changed"], true, "{}", text(&update));
    assert_eq!(
        project.bot_container()["State"]["Health"]["Status"],
        "healthy"
    );
}

#[test]
fn a_damaged_live_database_is_replaced_by_restore_and_kept() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("damaged");
    project.deployed_at_revision_3(20, false, &[]);
    let good = project.copy_database("good");
    let damaged = project.dir.join("damaged.db");
    revision_3_database(&damaged, 3000, false);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let len = bytes.len();
    for byte in &mut bytes[8192..len - 4096] {
        *byte = 0xa5;
    }
    std::fs::write(&damaged, &bytes).unwrap();
    // Put in place as a disk fault would leave it: copied raw, the bot stopped.
    let bot = project.bot_container()["Id"].as_str().unwrap().to_owned();
    docker(&["stop", &bot]);
    let mount = format!("{}:/data", project.volume());
    let holder = docker(&["create", "-v", &mount, &project.image(), "db", "status"]);
    docker(&[
        "cp",
        damaged.to_str().unwrap(),
        &format!("{}:/data/bot_database.db", holder.trim()),
    ]);
    docker(&["rm", "-f", holder.trim()]);

    // What the damage message recommends, and what a deploy on it refuses to do.
    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert_eq!(update.status.code(), Some(3), "{}", text(&update));
    assert!(
        text(&update).contains("cargo xtask restore"),
        "{}",
        text(&update)
    );
    let unasked = project.xtask("restore", &[good.to_str().unwrap()]);
    assert_eq!(unasked.status.code(), Some(2), "{}", text(&unasked));

    let restore = project.xtask("restore", &[good.to_str().unwrap(), "--yes", "--json"]);
    assert!(restore.status.success(), "{}", text(&restore));
    assert_eq!(report(&restore)["state_before"], "damaged");
    let kept = std::fs::read_dir(project.state_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .expect("the damaged file is kept beside the backups");
    assert_eq!(std::fs::read(&kept).unwrap(), bytes, "kept byte for byte");

    let migrate = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(migrate.status.success(), "{}", text(&migrate));
    let status = project.db_status();
    assert_eq!(status["state"], "current", "{status}");
    assert_eq!(
        project.bot_container()["State"]["Health"]["Status"],
        "healthy"
    );
}

#[test]
fn a_second_deploy_at_the_same_time_exits_at_once_naming_the_lock() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("lock");
    project.deployed_at_revision_3(20_000, false, &[]);

    let mut first = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "xtask",
            "prod-full-update",
            "--demo",
            "--yes",
            "--project-name",
            &project.name,
        ])
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first is past its build (cargo's own lock is free again), start the second.
    let mut first_log = Vec::new();
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        first_log.push(line.clone());
        if line.starts_with("ok   build images") {
            break;
        }
    }
    let started = Instant::now();
    let second = project.xtask("prod-full-update", &["--yes", "--json"]);
    let took = started.elapsed();
    first_log.extend(lines.map_while(Result::ok));
    let first_status = first.wait().unwrap();

    assert_eq!(second.status.code(), Some(5), "{}", text(&second));
    let error = report(&second)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("another deploy of this project is running: prod-full-update by"),
        "{error}"
    );
    assert!(error.contains("since"), "{error}");
    assert!(
        took < Duration::from_secs(1),
        "the second deploy waited {took:?}"
    );
    assert!(
        first_status.success(),
        "the first deploy went on: {}",
        first_log.join("\n")
    );
    assert_eq!(project.db_status()["state"], "current");
}

/// Everything a dry run must leave alone: containers, images, the volume's database, backups.
fn snapshot(project: &Project) -> String {
    let containers = docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.compose.project={}", project.name),
        "--format",
        "{{.ID}} {{.Image}} {{.State}}",
    ]);
    let mut containers: Vec<&str> = containers.lines().collect();
    containers.sort();
    let started: Vec<String> = containers
        .iter()
        .map(|c| {
            docker(&[
                "inspect",
                "--format",
                "{{.State.StartedAt}} {{.RestartCount}}",
                c.split(' ').next().unwrap(),
            ])
        })
        .collect();
    let images = docker(&[
        "images",
        "--no-trunc",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
    ]);
    let mut images: Vec<&str> = images
        .lines()
        .filter(|l| l.contains(&project.name))
        .collect();
    images.sort();
    let database = std::fs::read(project.copy_out("/data/bot_database.db", "snapshot")).unwrap();
    let mut backups: Vec<String> = std::fs::read_dir(project.state_dir())
        .map(|entries| {
            entries
                .map(|e| {
                    let path = e.unwrap().path();
                    format!(
                        "{} {}",
                        path.display(),
                        std::fs::read(&path).map(|b| b.len()).unwrap_or(0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    backups.sort();
    let volumes = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("name={}", project.volume()),
    ]);
    format!(
        "{}\n{}\n{}\n{}\nvolume {volumes} database {} bytes, sum {}",
        containers.join("\n"),
        started.join("\n"),
        images.join("\n"),
        backups.join("\n"),
        database.len(),
        database.iter().map(|b| u64::from(*b)).sum::<u64>()
    )
}

#[test]
fn dry_runs_change_no_container_image_volume_or_backup() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("dryrun");
    project.deployed_at_revision_3(100, false, &[]);
    let file = project.dir.join("other.db");
    revision_3_database(&file, 10, false);
    let before = snapshot(&project);

    let update = project.xtask("prod-full-update", &["--dry-run", "--json"]);
    assert!(update.status.success(), "{}", text(&update));
    let plan = report(&update);
    assert_eq!(plan["dry_run"], true);
    // Every revision after 3, by its file.
    let mut after_3: Vec<String> = std::fs::read_dir(root().join("migrations/sql"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".up.sql") && name.as_str() >= "0004")
        .collect();
    after_3.sort();
    assert_eq!(after_3.len() as u64, head() - 3);
    assert_eq!(plan["migrations"], serde_json::json!(after_3), "{plan}");
    assert!(
        plan["plan"].as_array().unwrap().iter().any(|s| s
            .as_str()
            .unwrap()
            .starts_with("migrate database: docker stop -t 10")),
        "a new image over a serving bot: the fast path, which stops the bot as the migration goes"
    );
    assert!(
        String::from_utf8_lossy(&update.stderr).contains("CREATE TABLE new_users"),
        "the SQL is shown"
    );
    for (task, extra) in [
        ("prod-migrate", vec![]),
        ("first-deploy", vec![]),
        ("backup", vec![]),
        ("restart", vec![]),
        ("down", vec![]),
        ("restore", vec![file.to_str().unwrap()]),
    ] {
        let mut args = vec!["--dry-run"];
        args.extend(extra);
        let output = project.xtask(task, &args);
        assert!(output.status.success(), "{task}: {}", text(&output));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("dry run"),
            "{task}: {}",
            text(&output)
        );
    }
    assert_eq!(snapshot(&project), before, "nothing changed");
}

#[test]
fn the_token_appears_in_no_output_and_no_file() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("secret");
    let token = "424242:e2e-SECRET-token-never-shown";
    let secret = env_file(&project.dir, "secret.env", token);
    let env = secret.to_str().unwrap();
    let mut outputs = Vec::new();
    // The stand-in accepts the secret token; the bot reads it from the environment file.
    let mut xtask = |task: &str, extra: &[&str]| {
        let mut args = vec!["--env-file", env];
        args.extend_from_slice(extra);
        let output = project.xtask_with_env(task, &args, &[("STANDIN_TOKEN", token)]);
        outputs.push(text(&output));
        output
    };
    assert!(
        xtask("first-deploy", &["--yes", "--schema-head", "3", "--json"])
            .status
            .success(),
        "{}",
        outputs.join("\n")
    );
    xtask("chat", &["/start"]);
    xtask("status", &[]);
    xtask("status", &["--json"]);
    xtask("doctor", &[]);
    xtask("backup", &["--yes"]);
    assert!(
        xtask("prod-full-update", &["--yes", "--json"])
            .status
            .success(),
        "{}",
        outputs.join("\n")
    );
    xtask("prod-full-update", &["--dry-run"]);
    xtask("history", &[]);
    xtask("history", &["--json"]);
    xtask("logs", &[]);
    xtask("restart", &["--yes"]);
    // A deploy that fails shows the bot's log lines: a wrong token of the same secrecy.
    let wrong = env_file(&project.dir, "wrong.env", "777777:e2e-OTHER-secret-token");
    let failed = project.xtask_with_env(
        "prod-migrate",
        &["--yes", "--json", "--env-file", wrong.to_str().unwrap()],
        &[("STANDIN_TOKEN", token)],
    );
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    outputs.push(text(&failed));
    let logs = run(
        "docker",
        &["logs", project.bot_container()["Id"].as_str().unwrap()],
    );
    outputs.push(text(&logs));

    for (index, output) in outputs.iter().enumerate() {
        assert!(
            !output.contains(token),
            "output {index} shows the token:\n{output}"
        );
        assert!(
            !output.contains("e2e-OTHER-secret-token"),
            "output {index} shows the token:\n{output}"
        );
    }
    let mut files = Vec::new();
    collect_files(&project.state_dir(), &mut files);
    collect_files(&root().join("target/docker-context"), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "jsonl")),
        "the history was searched: {files:?}"
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(token) && !text.contains("e2e-SECRET"),
            "{} holds the token",
            file.display()
        );
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn rollback_returns_to_the_previous_image_and_the_backup_taken_before_the_deploy() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("rollback");
    let old_image = project.deployed_at_revision_3(200, false, &[]);
    let data = project.dump("before");
    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(update.status.success(), "{}", text(&update));
    assert_eq!(report(&update)["revision_after"], head());
    let chat = project.xtask("chat", &["/start", "--user", "31337"]);
    assert!(chat.status.success(), "{}", text(&chat));
    let new_image = project.running_image();
    assert_ne!(new_image, old_image);

    // A later deploy of yet another image fails and is rolled back automatically: the way
    // back from the good deploy above must survive it.
    let context = project.dir.join("relabel");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        format!(
            "FROM {}\nLABEL org.tgbot.test=another-release\n",
            project.image()
        ),
    )
    .unwrap();
    docker(&[
        "build",
        "-q",
        "-t",
        &project.image(),
        context.to_str().unwrap(),
    ]);
    let wrong = env_file(&project.dir, "wrong.env", "999999:WRONG-e2e-token");
    let failed = project.xtask(
        "prod-migrate",
        &["--yes", "--json", "--env-file", wrong.to_str().unwrap()],
    );
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert_eq!(report(&failed)["rolled_back"], true);
    assert_eq!(project.running_image(), new_image);

    let unasked = project.xtask("rollback", &[]);
    assert_eq!(
        unasked.status.code(),
        Some(2),
        "a question needs --yes without a terminal: {}",
        text(&unasked)
    );
    let dry = project.xtask("rollback", &["--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert_eq!(
        project.running_image(),
        new_image,
        "neither changed anything"
    );

    let rollback = project.xtask("rollback", &["--yes", "--json"]);
    assert!(rollback.status.success(), "{}", text(&rollback));
    let outcome = report(&rollback);
    assert_eq!(
        (
            outcome["revision_before"].as_u64(),
            outcome["revision_after"].as_u64()
        ),
        (Some(head()), Some(3))
    );
    assert!(
        outcome["backup"]
            .as_str()
            .is_some_and(|b| b.contains("before-rollback")),
        "the data since was kept aside: {outcome}"
    );
    assert_previous_bot_is_back(&project, &old_image, &data);
    let status = project.xtask("status", &["--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["image_id"].as_str(),
        Some(old_image.as_str()),
        "the project's tag names the image that runs"
    );

    let again = project.xtask("rollback", &["--yes", "--json"]);
    assert_eq!(
        again.status.code(),
        Some(3),
        "nothing before the first deploy: {}",
        text(&again)
    );
    assert_eq!(project.running_image(), old_image);
}

#[test]
fn the_way_back_survives_no_op_re_runs_and_refused_deploys() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("wayback");
    let first = project.xtask("first-deploy", &["--yes", "--json", "--schema-head", "3"]);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(
        report(&first)["downtime_seconds"],
        Value::Null,
        "nothing served before the first deploy, so nothing was down"
    );
    let data = project.dir.join("revision-3.db");
    revision_3_database(&data, 40, false);
    project.overwrite_live_database(&data);
    let old_image = project.running_image();
    let before = project.dump("before");

    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(update.status.success(), "{}", text(&update));
    assert_eq!(report(&update)["revision_after"], head());
    let new_image = project.running_image();
    assert_ne!(new_image, old_image);

    // What the README recommends after a deploy, and what scripts do: run it again.
    for _ in 0..2 {
        let again = project.xtask("prod-full-update", &["--yes", "--json"]);
        assert!(again.status.success(), "{}", text(&again));
        assert_eq!(report(&again)["changed"], false);
    }
    // A deploy refused after the images were built: an import while the volume holds data.
    let other = project.dir.join("other.db");
    revision_3_database(&other, 3, false);
    let refused = project.xtask(
        "prod-full-update",
        &["--yes", "--json", "--import", other.to_str().unwrap()],
    );
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert_eq!(project.running_image(), new_image);

    let rollback = project.xtask("rollback", &["--yes", "--json"]);
    assert!(rollback.status.success(), "{}", text(&rollback));
    let outcome = report(&rollback);
    assert_eq!(
        (
            outcome["revision_before"].as_u64(),
            outcome["revision_after"].as_u64()
        ),
        (Some(head()), Some(3)),
        "{outcome}"
    );
    assert_previous_bot_is_back(&project, &old_image, &before);
}

#[test]
fn a_database_owned_by_root_is_found_and_given_to_the_bot() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("rootowned");
    let deploy = project.xtask("first-deploy", &["--yes"]);
    assert!(deploy.status.success(), "{}", text(&deploy));
    let mount = format!("{}:/data", project.volume());
    let image = project.image();
    let ownership = |owner: &str, check: bool| -> Value {
        let mut args = vec![
            "run",
            "--rm",
            "--user",
            "0:0",
            "-v",
            &mount,
            &image,
            "db",
            "fix-ownership",
            "--owner",
            owner,
            "--json",
        ];
        if check {
            args.push("--check");
        }
        let output = run("docker", &args);
        assert!(output.status.success(), "{}", text(&output));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    // As the old app left it: the data folder and the database owned by root.
    ownership("0:0", false);
    let wrong = ownership("10001:10001", true)["wrong"].clone();
    assert!(
        wrong
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["path"] == "/data/bot_database.db"),
        "{wrong}"
    );

    let doctor = project.xtask("doctor", &["--json"]);
    assert_eq!(doctor.status.code(), Some(4), "{}", text(&doctor));
    let checks: Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let ownership_check = checks["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "database files owned by the bot")
        .unwrap()
        .clone();
    assert_eq!(ownership_check["ok"], false, "{checks}");
    assert!(
        ownership_check["detail"]
            .as_str()
            .unwrap()
            .contains("/data/bot_database.db")
    );

    let migrate = project.xtask("prod-migrate", &["--yes", "--json"]);
    assert!(migrate.status.success(), "{}", text(&migrate));
    assert!(
        steps(&report(&migrate)).contains(&"fix volume ownership".to_owned()),
        "{}",
        text(&migrate)
    );
    assert_eq!(
        ownership("10001:10001", true)["wrong"],
        serde_json::json!([])
    );
    assert_eq!(
        project.bot_container()["State"]["Health"]["Status"],
        "healthy"
    );
    let doctor = project.xtask("doctor", &["--json"]);
    assert!(
        doctor.status.success(),
        "every check passes now: {}",
        text(&doctor)
    );
}
