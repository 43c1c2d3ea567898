//! Deploys killed halfway (SIGKILL, as the OOM killer or a lost machine does), signals sent to a
//! deploy, and the way back afterwards: each kill leaves a history line naming its step and the
//! volume's state, `status` names it, and one more deploy (or `cargo xtask recover`) ends healthy
//! at head with every user. Against the machine's Docker daemon; each test has its own Compose
//! project.

mod common;

use std::path::Path;

use common::{Act, Project, SERIAL, deploy_acted_on, docker, head, report, root, text};
use serde_json::Value;

const USERS: i64 = 40;

fn history(project: &Project) -> Vec<Value> {
    let file = project.state_dir().join("deploys.jsonl");
    std::fs::read_to_string(&file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A deploy killed at the step `step` leaves a line that `status` names with that step; the
/// next `task` finishes it, healthy at head with every user, and says it did.
fn killed_at_then_finished_by(name: &str, step: &str, task: &str) -> Project {
    let project = Project::new(name);
    project.deployed_at_revision_3(USERS, false, &[]);
    let (killed, acted) = deploy_acted_on(
        &project,
        "prod-full-update",
        &format!("==> {step}"),
        Act::Kill,
    );
    assert!(
        acted,
        "the deploy never reached step {step}: {}",
        text(&killed)
    );
    assert_eq!(
        killed.status.code(),
        None,
        "killed by a signal: {}",
        text(&killed)
    );

    let status = project.status_json();
    let unfinished = status["unfinished"].as_array().expect("a list");
    assert_eq!(unfinished.len(), 1, "{status}");
    assert_eq!(unfinished[0]["task"], "prod-full-update", "{status}");
    assert_eq!(unfinished[0]["step"], step, "{status}");
    let words = project.xtask("status", &[]);
    let words = String::from_utf8_lossy(&words.stdout).into_owned();
    assert!(
        words.contains("unfinished:")
            && words.contains(step)
            && words.contains("cargo xtask recover"),
        "{words}"
    );

    let finish = project.xtask(task, &["--yes", "--json"]);
    assert!(finish.status.success(), "{}", text(&finish));
    let outcome = report(&finish);
    assert_eq!(
        outcome["finished_earlier"].as_array().map(Vec::len),
        Some(1),
        "{outcome}"
    );
    project.assert_healthy_at_head_with(USERS, name);
    let status = project.status_json();
    assert_eq!(status["unfinished"], serde_json::json!([]), "{status}");
    let lines = history(&project);
    let killed_line = lines
        .iter()
        .find(|l| l["task"] == "prod-full-update" && l["step"] == step)
        .unwrap_or_else(|| panic!("no line for the killed deploy: {lines:?}"));
    assert_eq!(killed_line["result"], "interrupted", "{killed_line}");
    assert!(
        killed_line["finished_by"]
            .as_str()
            .is_some_and(|b| b.starts_with(task)),
        "{killed_line}"
    );
    assert!(
        !Path::new(&format!(
            "{}.partial",
            killed_line["backup"].as_str().unwrap_or("-")
        ))
        .exists(),
        "no half copy stays under a backup's name"
    );
    project
}

#[test]
fn killed_while_building_then_deployed_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = killed_at_then_finished_by("kill-build", "build images", "prod-full-update");
    drop(project);
}

#[test]
fn killed_with_the_migration_ready_and_waiting_then_deployed_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    killed_at_then_finished_by(
        "kill-waiting",
        "start migration, waiting",
        "prod-full-update",
    );
}

/// `rollback` and `restore` stop one bot before they replace the database: with a second bot
/// container running (scaled by hand) they refuse before changing anything, naming the way
/// out, and both bots still run on the database as it was.
#[test]
fn rollback_and_restore_refuse_while_two_bots_run() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("two-bots");
    project.deployed_at_revision_3(USERS, false, &[]);
    let deployed = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    let backup = report(&deployed)["backup"]
        .as_str()
        .expect("the deploy's backup")
        .to_owned();
    project.second_bot(true);
    for (task, extra) in [("rollback", vec![]), ("restore", vec![backup.as_str()])] {
        let mut args = extra.clone();
        args.extend(["--yes", "--json"]);
        let refused = project.xtask(task, &args);
        assert_eq!(refused.status.code(), Some(3), "{task}: {}", text(&refused));
        assert!(
            text(&refused).contains("bot containers run")
                && text(&refused).contains("docker rm -f"),
            "{task}: {}",
            text(&refused)
        );
    }
    let running = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={}", project.name),
        "--filter",
        "label=com.docker.compose.service=bot",
    ]);
    assert_eq!(running.lines().count(), 2, "nothing was stopped");
    let status = project.db_status();
    assert_eq!(status["version"].as_u64(), Some(head()), "{status}");
    assert_eq!(project.users("two-bots"), USERS);
}

/// Killed while the new bot's container starts beside the old one: the old one still serves,
/// and a second container (made here if the kill came before Compose made it) waits for a
/// migration that never comes. The next deploy removes it and ends with one bot, healthy at
/// head with every user.
#[test]
fn killed_while_starting_the_new_bot_then_deployed_again() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("kill-new-bot");
    project.deployed_at_revision_3(USERS, false, &[]);
    let old = project.bot_container()["Id"].as_str().unwrap().to_owned();
    let (killed, acted) =
        deploy_acted_on(&project, "prod-full-update", "==> start new bot", Act::Kill);
    assert!(
        acted,
        "the deploy never reached the step: {}",
        text(&killed)
    );
    // What Compose, left running by the kill, makes: the new image's container beside.
    project.second_bot(true);
    let both = project.bot_containers();
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(
        both.iter().any(|id| old.starts_with(id.as_str())),
        "the old bot is one of them: {both:?}"
    );
    let status = project.status_json();
    assert_eq!(status["unfinished"][0]["step"], "start new bot", "{status}");

    let again = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("that a killed deploy left beside the one kept"),
        "{}",
        text(&again)
    );
    assert_eq!(project.bot_containers().len(), 1);
    project.assert_healthy_at_head_with(USERS, "kill-new-bot");
}

/// A killed `backup` changed nothing: the next `backup` closes its line (`interrupted`, finished
/// by that backup), and no half copy stays under a backup's name.
#[test]
fn a_killed_backup_is_closed_by_the_next_backup() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("kill-backup");
    project.deployed_at_revision_3(USERS, false, &[]);
    let (killed, acted) = deploy_acted_on(&project, "backup", "==> back up database", Act::Kill);
    assert!(
        acted,
        "the backup never reached its copy: {}",
        text(&killed)
    );
    let status = project.status_json();
    assert_eq!(status["unfinished"][0]["task"], "backup", "{status}");

    let again = project.xtask("backup", &["--yes", "--json"]);
    assert!(again.status.success(), "{}", text(&again));
    let outcome = report(&again);
    assert_eq!(
        outcome["finished_earlier"].as_array().map(Vec::len),
        Some(1),
        "{outcome}"
    );
    let status = project.status_json();
    assert_eq!(status["unfinished"], serde_json::json!([]), "{status}");
    // The backup is the last task, not the last deploy: status shows the two apart.
    assert_eq!(status["last_other_task"]["task"], "backup", "{status}");
    assert!(
        matches!(
            status["last_other_task"]["result"].as_str(),
            Some("ok" | "nothing-to-do")
        ),
        "{status}"
    );
    assert!(
        matches!(
            status["last_deploy"]["task"].as_str(),
            Some("first-deploy" | "prod-full-update" | "prod-migrate" | "recover")
        ),
        "{status}"
    );
    let lines = history(&project);
    let backups: Vec<&Value> = lines.iter().filter(|l| l["task"] == "backup").collect();
    assert_eq!(backups.len(), 2, "{lines:?}");
    assert_eq!(backups[0]["result"], "interrupted", "{}", backups[0]);
    assert!(
        backups[0]["finished_by"]
            .as_str()
            .is_some_and(|b| b.starts_with("backup")),
        "{}",
        backups[0]
    );
    // A backup changes nothing in the stack: it ends as "nothing-to-do".
    assert_eq!(backups[1]["result"], "nothing-to-do", "{}", backups[1]);
    let partial = std::fs::read_dir(project.state_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .count();
    assert_eq!(partial, 0, "no half copy is left");
}

#[test]
fn killed_while_migrating_then_recovered() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    killed_at_then_finished_by("kill-migrate", "migrate database", "recover");
}

#[test]
fn killed_while_saving_the_backup_then_deployed_again_and_rolled_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = killed_at_then_finished_by("kill-save", "save backup", "prod-full-update");
    // The backup the killed run took is the way back.
    let rollback = project.xtask("rollback", &["--yes", "--json"]);
    assert!(rollback.status.success(), "{}", text(&rollback));
    assert_eq!(
        report(&rollback)["revision_after"],
        3,
        "{}",
        text(&rollback)
    );
    assert_eq!(project.users("after-rollback"), USERS);
}

#[test]
fn killed_while_waiting_for_health_then_recovered_and_rolled_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = killed_at_then_finished_by("kill-health", "wait until healthy", "recover");
    // The recover run carries the killed deploy's way back: image and backup.
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
    let container = project.bot_container();
    assert_eq!(
        container["State"]["Health"]["Status"], "healthy",
        "{container}"
    );
    assert_eq!(project.users("after-rollback"), USERS);
}

#[test]
fn a_signal_before_any_change_stops_the_deploy_and_says_so() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("sig-build");
    let image = project.deployed_at_revision_3(USERS, false, &[]);
    let (stopped, acted) =
        deploy_acted_on(&project, "prod-full-update", "==> build images", Act::Term);
    assert!(acted, "{}", text(&stopped));
    assert_eq!(stopped.status.code(), Some(128 + 15), "{}", text(&stopped));
    let progress = String::from_utf8_lossy(&stopped.stderr);
    assert!(
        progress.contains("stopped by SIGTERM during step \"build images\""),
        "{progress}"
    );
    let lines = history(&project);
    let last = lines.last().unwrap();
    assert_eq!(last["result"], "interrupted", "{last}");
    assert_eq!(project.status_json()["unfinished"], serde_json::json!([]));
    assert_eq!(project.running_image(), image, "nothing was changed");
    assert_eq!(project.db_status()["version"], 3);
}

#[test]
fn one_signal_in_the_critical_part_is_held_until_the_bot_serves() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("sig-held");
    project.deployed_at_revision_3(USERS, false, &[]);
    let (deploy, acted) = deploy_acted_on(
        &project,
        "prod-full-update",
        "==> migrate database",
        Act::Interrupt,
    );
    assert!(acted, "{}", text(&deploy));
    assert!(deploy.status.success(), "{}", text(&deploy));
    let progress = String::from_utf8_lossy(&deploy.stderr);
    assert!(progress.contains("SIGINT (Ctrl-C): held"), "{progress}");
    assert_eq!(report(&deploy)["revision_after"], head());
    project.assert_healthy_at_head_with(USERS, "sig-held");
}

#[test]
fn a_second_signal_in_the_critical_part_rolls_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("sig-twice");
    let image = project.deployed_at_revision_3(USERS, false, &[]);
    let (deploy, acted) = deploy_acted_on(
        &project,
        "prod-full-update",
        "==> migrate database",
        Act::InterruptTwice,
    );
    assert!(acted, "{}", text(&deploy));
    assert_eq!(deploy.status.code(), Some(1), "{}", text(&deploy));
    let outcome = report(&deploy);
    assert_eq!(outcome["rolled_back"], true, "{outcome}");
    assert!(
        outcome["error"]
            .as_str()
            .is_some_and(|e| e.contains("second SIGINT")),
        "{outcome}"
    );
    assert_eq!(project.running_image(), image);
    let container = project.bot_container();
    assert_eq!(
        container["State"]["Health"]["Status"], "healthy",
        "{container}"
    );
    assert_eq!(project.db_status()["version"], 3);
    assert_eq!(project.users("sig-twice"), USERS);
}

#[test]
fn a_rollback_whose_backup_is_damaged_refuses_before_stopping_the_bot() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("rb-damaged");
    project.deployed_at_revision_3(USERS, false, &[]);
    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(update.status.success(), "{}", text(&update));
    let backup = report(&update)["backup"].as_str().unwrap().to_owned();
    let running = project.bot_container()["Id"].clone();
    // Half of it: what a disk that filled up while copying leaves.
    let bytes = std::fs::read(&backup).unwrap();
    std::fs::write(&backup, &bytes[..bytes.len() / 2]).unwrap();

    let rollback = project.xtask("rollback", &["--yes", "--json"]);
    assert_eq!(rollback.status.code(), Some(3), "{}", text(&rollback));
    let error = report(&rollback)["error"].as_str().unwrap_or("").to_owned();
    assert!(
        error.contains("is not sound") && error.contains("nothing was changed"),
        "{error}"
    );
    let container = project.bot_container();
    assert_eq!(container["Id"], running, "the bot was never stopped");
    project.assert_healthy_at_head_with(USERS, "rb-damaged");
}

#[test]
fn a_recovery_that_changes_nothing_keeps_the_unfinished_run_and_its_way_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("kill-keep");
    let old_image = project.deployed_at_revision_3(USERS, false, &[]);
    let (killed, acted) = deploy_acted_on(
        &project,
        "prod-full-update",
        "==> start migration, waiting",
        Act::Kill,
    );
    assert!(acted, "{}", text(&killed));
    // Without --yes and without a terminal, the recovery asks and stops: it finished nothing.
    let asked = project.xtask("recover", &["--json"]);
    assert_eq!(asked.status.code(), Some(2), "{}", text(&asked));
    let status = project.status_json();
    assert_eq!(
        status["unfinished"].as_array().map(Vec::len),
        Some(1),
        "the killed run is still named: {status}"
    );
    let recover = project.xtask("recover", &["--yes", "--json"]);
    assert!(recover.status.success(), "{}", text(&recover));
    project.assert_healthy_at_head_with(USERS, "kill-keep");
    let rollback = project.xtask("rollback", &["--yes", "--json"]);
    assert!(rollback.status.success(), "{}", text(&rollback));
    assert_eq!(project.running_image(), old_image);
    assert_eq!(project.db_status()["version"], 3);
}

#[test]
fn a_second_signal_before_the_first_change_leaves_previous_where_it_was() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("sig-prev");
    let image = project.deployed_at_revision_3(USERS, false, &[]);
    let (deploy, acted) = deploy_acted_on(
        &project,
        "prod-full-update",
        "ok   prepare migration",
        Act::InterruptTwice,
    );
    assert!(acted, "{}", text(&deploy));
    assert_eq!(deploy.status.code(), Some(1), "{}", text(&deploy));
    assert_eq!(project.running_image(), image);
    let previous = common::run(
        "docker",
        &["image", "inspect", &format!("{}-previous", project.image())],
    );
    assert!(
        !previous.status.success(),
        "nothing was replaced, so -previous (none before) names nothing: {}",
        text(&previous)
    );
    assert_eq!(project.db_status()["version"], 3);
}

#[test]
fn a_rollback_whose_own_health_wait_fails_still_names_what_it_set_aside() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("rb-unnamed");
    project.deployed_at_revision_3(USERS, false, &[]);
    // The new bot never gets healthy (Telegram rejects its token): with a limit of 0 alone, a
    // new bot that started beside the old one may already be healthy when the wait begins.
    let wrong = common::env_file(&project.dir, "wrong.env", "999999:WRONG-e2e-token");
    let update = project.xtask(
        "prod-full-update",
        &[
            "--yes",
            "--json",
            "--health-timeout",
            "0",
            "--env-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert_eq!(update.status.code(), Some(1), "{}", text(&update));
    let outcome = report(&update);
    let error = outcome["error"].as_str().unwrap_or("");
    assert!(
        error.contains("set aside") && error.contains("set-aside-by-rollback.db"),
        "{error}"
    );
    let last = history(&project).pop().unwrap();
    assert_eq!(
        last["revision_after"], 3,
        "the volume holds revision 3 again: {last}"
    );
}

#[test]
fn two_signals_during_rollback_are_held_and_it_ends() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("rb-sig");
    let image = project.deployed_at_revision_3(USERS, false, &[]);
    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(update.status.success(), "{}", text(&update));
    let (rollback, acted) = deploy_acted_on(
        &project,
        "rollback",
        "==> wait until healthy",
        Act::InterruptTwice,
    );
    assert!(acted, "{}", text(&rollback));
    assert!(rollback.status.success(), "{}", text(&rollback));
    assert_eq!(report(&rollback)["result"], "ok");
    assert_eq!(project.running_image(), image);
    assert_eq!(project.db_status()["version"], 3);
    assert_eq!(project.users("rb-sig"), USERS);
}

/// The project's release tags, `tgbot-bot:<project>-<git>-<time>`.
fn release_tags(project: &Project) -> Vec<String> {
    let listed = common::docker(&["image", "ls", "--format", "{{.Tag}}", "tgbot-bot"]);
    let prefix = format!("{}-", project.name);
    let mut tags: Vec<String> = listed
        .lines()
        .filter(|t| t.starts_with(&prefix) && *t != format!("{}previous", prefix))
        .map(str::to_owned)
        .collect();
    tags.sort();
    tags
}

#[test]
fn release_tags_are_pruned_to_keep_but_never_the_way_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("tags");
    let old_image = project.deployed_at_revision_3(USERS, false, &[]);
    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(update.status.success(), "{}", text(&update));
    for _ in 0..2 {
        let again = project.xtask("prod-full-update", &["--yes", "--json"]);
        assert!(again.status.success(), "{}", text(&again));
    }
    assert_eq!(release_tags(&project).len(), 4, "one per build so far");
    // A deploy that changes something (the environment) prunes, keeping 1.
    let demo = std::fs::read_to_string(root().join("docker/demo.env")).unwrap();
    let changed = project.dir.join("changed.env");
    std::fs::write(&changed, format!("{demo}\nEXTRA_SETTING=1\n")).unwrap();
    let env_change = project.xtask(
        "prod-full-update",
        &[
            "--yes",
            "--json",
            "--keep",
            "1",
            "--env-file",
            changed.to_str().unwrap(),
        ],
    );
    assert!(env_change.status.success(), "{}", text(&env_change));
    let tags = release_tags(&project);
    assert_eq!(
        tags.len(),
        2,
        "the newest, and the newest of the image -previous names: {tags:?}"
    );
    let id = |tag: &str| {
        common::docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("tgbot-bot:{tag}"),
        ])
    };
    let images: Vec<String> = tags.iter().map(|t| id(t)).collect();
    assert!(
        images.contains(&old_image),
        "the way back keeps its tag: {tags:?}"
    );
    assert!(images.contains(&project.running_image()), "{tags:?}");
    // The way back still works.
    let rollback = project.xtask("rollback", &["--yes", "--json"]);
    assert!(rollback.status.success(), "{}", text(&rollback));
}
