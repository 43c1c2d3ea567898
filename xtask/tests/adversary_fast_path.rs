//! Adversary's breaks of the fast path of `cargo xtask prod-full-update` (a new image with
//! pending migrations while the bot runs: the new bot's container starts beside the old one,
//! the old one is stopped, the migration goes once it has exited). Against the machine's Docker
//! daemon; each test has its own Compose project (`adv2-...`). Helpers copied from `killed.rs`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Act, Project, SERIAL, deploy_acted_on, docker, text};

const USERS: i64 = 40;

fn dangling_volumes() -> BTreeSet<String> {
    docker(&["volume", "ls", "-q", "-f", "dangling=true"])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn running(id: &str) -> bool {
    docker(&["inspect", "--format", "{{.State.Running}}", id]) == "true"
}

/// The bot serves at head with every user, in one container.
fn assert_one_bot_healthy_at_head_with_every_user(project: &Project, label: &str) {
    assert_eq!(
        project.bot_containers().len(),
        1,
        "exactly one bot container"
    );
    project.assert_healthy_at_head_with(USERS, label);
}

/// Kills the fast path while the old bot stops (step "migrate database", before the migration
/// was told to go), finishes it with `finish`, then rolls back.
fn killed_while_the_old_bot_stops_then_finished_and_rolled_back(name: &str, finish: &str) {
    let project = Project::new(name);
    let old_image = project.deployed_at_revision_3(USERS, false, &[]);
    let old = project.bot_container()["Id"].as_str().unwrap().to_owned();
    let dangling_before = dangling_volumes();

    let (killed, acted) = deploy_acted_on(
        &project,
        "prod-full-update",
        "==> migrate database",
        Act::Kill,
    );
    assert!(acted, "never reached the step: {}", text(&killed));
    // The `docker stop` the killed run spawned (a process group of its own) goes on; if the
    // kill came before it was spawned, do what it does.
    let deadline = Instant::now() + Duration::from_secs(15);
    while running(&old) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    if running(&old) {
        docker(&["stop", "-t", "10", &old]);
    }
    let status = project.status_json();
    assert_eq!(
        status["unfinished"][0]["step"], "migrate database",
        "{status}"
    );

    // Finished forward within the new bot's schema wait (it still runs, waiting).
    let finished = project.xtask(finish, &["--yes", "--json"]);
    assert!(finished.status.success(), "{}", text(&finished));
    assert_one_bot_healthy_at_head_with_every_user(&project, name);
    let leaked: Vec<String> = dangling_volumes()
        .difference(&dangling_before)
        .cloned()
        .collect();
    assert!(leaked.is_empty(), "dangling volumes left: {leaked:?}");

    // The way back of the killed deploy: the old image on the pre-deploy data.
    let rollback = project.xtask("rollback", &["--yes", "--json"]);
    assert!(
        rollback.status.success(),
        "rollback after the finished deploy failed: {}",
        text(&rollback)
    );
    assert_eq!(
        project.running_image(),
        old_image,
        "back on the image the killed deploy replaced"
    );
    assert_eq!(project.db_status()["version"].as_u64(), Some(3));
    assert_eq!(project.users("after-rollback"), USERS);
}

/// Broke P2/P3 (fixed: the finishing run keeps the killed run's way back unless the bot it finds is the old image) ("after a SIGKILL during `migrate database` ... the next `recover` ends ...;
/// `rollback` afterwards works"): killed while the old bot stops, before the migration goes,
/// the new bot's container stays running (waiting for the schema). `recover` keeps it as
/// "the bot", sees no image change and records the new image as its own way back, so the
/// killed deploy's way back (the old image, `-previous`) is not inherited: `rollback` then puts
/// the revision-3 backup under the NEW image, which cannot serve it.
#[test]
fn killed_while_the_old_bot_stops_then_recovered_and_rolled_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    killed_while_the_old_bot_stops_then_finished_and_rolled_back("adv2-stop-rec", "recover");
}

/// What a failed fast path must leave: the old bot serving in the one bot container, the
/// database untouched at revision 3 with every user, no migration container, no unfinished run.
fn assert_untouched(project: &Project, old: &str, label: &str) {
    let bots = project.bot_containers();
    assert_eq!(bots.len(), 1, "no second bot container is left: {bots:?}");
    assert!(
        old.starts_with(bots[0].as_str()),
        "the old bot's container: {bots:?}"
    );
    assert!(running(old), "the old bot keeps serving");
    let migrations = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=org.tgbot.project={}", project.name),
    ]);
    assert_eq!(migrations, "", "no migration or helper container is left");
    assert_eq!(
        project.db_status()["version"].as_u64(),
        Some(3),
        "nothing was migrated"
    );
    assert_eq!(project.users(label), USERS);
    assert_eq!(project.status_json()["unfinished"], serde_json::json!([]));
}

/// P2: "If starting the new container fails ... nothing is migrated, the old bot keeps
/// serving, and no second container is left." Compose cannot create the second container: a
/// container of someone else holds the name Compose v1 gives it (`<project>_bot_2`).
#[test]
fn a_new_bot_that_cannot_be_created_leaves_the_old_one_serving() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv2-squat");
    project.deployed_at_revision_3(USERS, false, &[]);
    let old = project.bot_container()["Id"].as_str().unwrap().to_owned();
    let dangling_before = dangling_volumes();
    let squatter = format!("{}_bot_2", project.name);
    docker(&[
        "create",
        "--name",
        &squatter,
        &format!("tgbot-standin:{}", project.name),
    ]);
    let failed = project.xtask("prod-full-update", &["--yes", "--json"]);
    let _ = common::run("docker", &["rm", "-f", &squatter]);
    eprintln!("{}", text(&failed));
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert_untouched(&project, &old, "squat");
    let leaked: Vec<String> = dangling_volumes()
        .difference(&dangling_before)
        .cloned()
        .collect();
    assert!(leaked.is_empty(), "dangling volumes left: {leaked:?}");
}

/// P2: "If ... the old one does not stop, nothing is migrated, the old bot keeps serving, and
/// no second container is left." `docker stop` is refused (as AppArmor does: "permission
/// denied"), through a `docker` first on the deploy's PATH.
#[test]
fn an_old_bot_that_does_not_stop_is_left_serving() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv2-nostop");
    project.deployed_at_revision_3(USERS, false, &[]);
    let old = project.bot_container()["Id"].as_str().unwrap().to_owned();
    let dangling_before = dangling_volumes();
    let shim = project.dir.join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let real = String::from_utf8(common::run("sh", &["-c", "command -v docker"]).stdout).unwrap();
    std::fs::write(
        shim.join("docker"),
        format!(
            "#!/bin/sh\nif [ \"$1\" = stop ]; then echo \"Error response from daemon: cannot stop container: $4: permission denied\" >&2; exit 1; fi\nexec {} \"$@\"\n",
            real.trim()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(shim.join("docker"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap());
    let failed =
        project.xtask_with_env("prod-full-update", &["--yes", "--json"], &[("PATH", &path)]);
    eprintln!("{}", text(&failed));
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(text(&failed).contains("did not stop"), "{}", text(&failed));
    assert_untouched(&project, &old, "nostop");
    let leaked: Vec<String> = dangling_volumes()
        .difference(&dangling_before)
        .cloned()
        .collect();
    assert!(leaked.is_empty(), "dangling volumes left: {leaked:?}");
}

/// P3: "`rollback`/`restore` refuse while two bot containers run" -- and restore's own promise
/// that the bot is stopped before its database is replaced. With the fast path's second
/// container present but not running (newest first in `docker ps`), `restore` takes the newest
/// container for "the bot", finds it not running, stops nothing, and replaces the database
/// under the old bot, which keeps running and writing.
#[test]
fn restore_with_a_second_bot_container_not_running_stops_the_one_that_runs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv2-restore2");
    project.deployed_at_revision_3(USERS, false, &[]);
    let old = project.bot_container()["Id"].as_str().unwrap().to_owned();
    let file = project.copy_database("restore-source");
    project.second_bot(false);
    assert_eq!(project.bot_containers().len(), 2);
    assert!(running(&old));

    let restore = project.xtask("restore", &[file.to_str().unwrap(), "--yes", "--json"]);
    eprintln!("{}", text(&restore));
    if restore.status.success() {
        assert!(
            !running(&old),
            "restore replaced the database while the old bot kept running: {}",
            text(&restore)
        );
    } else {
        assert_eq!(
            restore.status.code(),
            Some(3),
            "refused: {}",
            text(&restore)
        );
        assert!(running(&old));
    }
}

/// P3: as above for `rollback` after a good fast-path deploy: with the second container
/// created but not running, `rollback` stops nothing ("stop bot" is not among its steps) and
/// puts the revision-3 backup in place under the running head-revision bot.
#[test]
fn rollback_with_a_second_bot_container_not_running_stops_the_one_that_runs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv2-rollback2");
    project.deployed_at_revision_3(USERS, false, &[]);
    let deployed = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    let serving = project.bot_container()["Id"].as_str().unwrap().to_owned();
    project.second_bot(false);
    assert_eq!(project.bot_containers().len(), 2);

    let rollback = project.xtask("rollback", &["--yes", "--json"]);
    eprintln!("{}", text(&rollback));
    if rollback.status.success() {
        let steps = common::steps(&common::report(&rollback));
        assert!(
            steps.iter().any(|s| s == "stop bot"),
            "rollback restored the database without stopping the bot that ran ({}): {steps:?}",
            &serving[..12]
        );
    } else {
        assert_eq!(
            rollback.status.code(),
            Some(3),
            "refused: {}",
            text(&rollback)
        );
    }
}
