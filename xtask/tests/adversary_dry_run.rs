//! The adversary's tests of the dry run and the throw-away containers (issue 13, item 6): a dry
//! run's plan is the deploy's commands on the deploy's own route (promise 1: nothing to do, a
//! rebuild of the same image, bot containers a killed deploy left, an import before the first
//! build or over a database, an unstamped database at head, Compose's environment), a dry run
//! changes nothing (promise 2), and the throw-away containers are removed whatever happens, or
//! left labelled for the next task when a run is killed (promise 3). The plan is compared with
//! a real deploy through tests/common/plan.rs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::plan::*;
use common::*;
use serde_json::Value;

/// Every container (running or not) that has the project's volume mounted and is not one of
/// Compose's: what a killed run left on it.
fn containers_on_volume_outside_compose(project: &Project) -> Vec<Value> {
    let ids = docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("volume={}", project.volume()),
    ]);
    ids.split_whitespace()
        .map(|id| {
            let inspect: Value = serde_json::from_str(&docker(&["inspect", id])).unwrap();
            inspect[0].clone()
        })
        .filter(|c| c["Config"]["Labels"]["com.docker.compose.project"].is_null())
        .collect()
}

/// Runs `cargo xtask <task> --demo -p NAME <args>` with a `docker` wrapper that blocks (never
/// runs) `docker start -a ...`, the start of a throw-away container; once it is blocked,
/// sends `signal` to the tool (and waits for its end), then SIGKILLs the blocked wrapper.
/// Returns whether the block was reached.
fn killed_at_throwaway_start(project: &Project, task: &str, args: &[&str]) -> bool {
    signalled_at_throwaway_start(project, task, args, libc::SIGKILL)
}

fn signalled_at_throwaway_start(project: &Project, task: &str, args: &[&str], signal: i32) -> bool {
    let marker = project.dir.join("blocked.pid");
    let _ = std::fs::remove_file(&marker);
    let prelude = format!(
        "case \"$*\" in \"start -a \"*) echo $$ > {m}.tmp; mv {m}.tmp {m}; exec sleep 600;; esac",
        m = marker.display()
    );
    let (path, _log) = wrapped_path(&project.dir, &prelude);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut tool = Command::new(cargo)
        .args(["xtask", task, "--demo", "--project-name", &project.name])
        .args(args)
        .current_dir(root())
        .env("PATH", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut blocked = None;
    while Instant::now() < deadline {
        if let Ok(pid) = std::fs::read_to_string(&marker) {
            blocked = Some(pid.trim().to_owned());
            break;
        }
        if tool.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // `cargo xtask` execs the tool, so this pid is the tool's.
    if blocked.is_some() {
        send(tool.id() as i32, signal);
        let deadline = Instant::now() + Duration::from_secs(60);
        while tool.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = tool.kill();
    let _ = tool.wait();
    if let Some(pid) = &blocked {
        // The wrapper leads a process group of its own (the tool runs its programs so). Not
        // with procps' kill: `kill -KILL -12345` signals -1 (every process) there.
        let pid: i32 = pid.parse().expect("a pid");
        send(-pid, libc::SIGKILL);
        send(pid, libc::SIGKILL);
    }
    blocked.is_some()
}

/// kill(2) of one process (`pid` > 1) or one process group (`pid` < -1), never of all.
fn send(pid: i32, signal: i32) {
    assert!(!(-1..=1).contains(&pid), "refusing to signal {pid}");
    // SAFETY: kill(2) on a checked pid or process group; no memory is shared.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Whether a container is labelled as a helper of `project`.
fn labelled_helper_of(container: &Value, project: &str) -> bool {
    let labels = &container["Config"]["Labels"];
    labels["org.tgbot.role"] == "helper" && labels["org.tgbot.project"] == project
}

#[test]
fn promise_1_same_image_nothing_to_do_plans_no_stop_and_start() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-noop");
    let first = project.xtask("first-deploy", &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    // The bot serves this image at head with this environment: the deploy has nothing to do.
    let (planned, real) = plan_matches_deploy(&project, "prod-migrate", &[]);
    assert!(
        !steps(&real).iter().any(|s| s == "stop bot"),
        "the deploy itself does nothing: {real}"
    );
    assert!(
        !planned.iter().any(|(s, _)| s == "stop bot"),
        "the plan shows no stop: {planned:?}"
    );
}

#[test]
fn promise_1_rebuilt_same_image_with_pending_migrations_plans_the_slow_path() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-sameimg");
    let first = project.xtask("first-deploy", &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    let image = project.running_image();
    // The database falls behind the running image (a restore of an older backup, say); the
    // next full update builds this same image again (the build is reproducible).
    let data = project.dir.join("revision-3.db");
    revision_3_database(&data, 20, false);
    project.overwrite_live_database(&data);
    assert_eq!(project.bot_container()["State"]["Status"], "running");
    let (planned, real) = plan_matches_deploy(&project, "prod-full-update", &[]);
    assert_eq!(
        project.running_image(),
        image,
        "the same image was deployed again"
    );
    let real_steps = steps(&real);
    let plan_steps: Vec<&str> = planned.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        plan_steps.contains(&"start new bot"),
        real_steps.iter().any(|s| s == "start new bot"),
        "the plan's path ({plan_steps:?}) is the deploy's ({real_steps:?})"
    );
}

#[test]
fn promise_1_two_bot_containers_left_by_a_killed_deploy_plan_stops_the_one_the_deploy_stops() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-twobots");
    let first = project.xtask("first-deploy", &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    // What a deploy killed after "start new bot" leaves: two running bot containers.
    project.second_bot(true);
    assert_eq!(project.bot_containers().len(), 2);
    // A new environment: the bot is stopped and started again.
    let env = env_file(&project.dir, "other.env", "123456:DEMO-TOKEN");
    let (planned, _) = plan_matches_deploy(
        &project,
        "prod-migrate",
        &["--env-file", env.to_str().unwrap()],
    );
    assert!(planned.iter().any(|(s, _)| s == "stop bot"), "{planned:?}");
}

#[test]
fn promise_1_import_file_before_the_first_build_plans_the_deploys_commands() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-import");
    let file = project.dir.join("old.db");
    old_app_database(&file, 30);
    // A new server: no image of the project yet, and the old app's database as a file.
    let (planned, real) = plan_matches_deploy(
        &project,
        "first-deploy",
        &["--import", file.to_str().unwrap()],
    );
    let real_steps = steps(&real);
    {
        let step = "save backup";
        assert_eq!(
            planned.iter().any(|(s, _)| s == step),
            real_steps.iter().any(|s| s == step),
            "{step}: plan {planned:?}, deploy {real_steps:?}"
        );
    }
}

#[test]
fn promise_3_a_dry_run_killed_while_planning_leaves_its_helper_labelled_and_the_next_task_removes_it()
 {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-killdry");
    let first = project.xtask("first-deploy", &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        killed_at_throwaway_start(&project, "prod-migrate", &["--dry-run"]),
        "the dry run started its plan's helper"
    );
    let left = containers_on_volume_outside_compose(&project);
    assert!(!left.is_empty(), "the killed dry run left its helper");
    let mut breaks = Vec::new();
    for c in &left {
        if !labelled_helper_of(c, &project.name) {
            breaks.push(format!(
                "container {} ({:?}) is left unlabelled: labels {}",
                c["Id"], c["Config"]["Cmd"], c["Config"]["Labels"]
            ));
        }
    }
    let backup = project.xtask("backup", &["--yes"]);
    assert!(backup.status.success(), "{}", text(&backup));
    let still = containers_on_volume_outside_compose(&project);
    if !still.is_empty() {
        breaks.push(format!(
            "the next task (backup) left them: {:?}",
            still.iter().map(|c| c["Id"].clone()).collect::<Vec<_>>()
        ));
    }
    assert!(breaks.is_empty(), "{}", breaks.join("\n"));
}

#[test]
fn promise_3_a_backup_killed_meanwhile_leaves_its_helper_labelled_and_the_next_task_removes_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-killbackup");
    let first = project.xtask("first-deploy", &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        killed_at_throwaway_start(&project, "backup", &["--yes"]),
        "the backup started its helper"
    );
    let left = containers_on_volume_outside_compose(&project);
    assert!(!left.is_empty(), "the killed backup left its helper");
    for c in &left {
        assert!(
            labelled_helper_of(c, &project.name),
            "labelled: {}",
            c["Config"]["Labels"]
        );
    }
    // The next task on the project: a restart.
    let restart = project.xtask("restart", &["--yes"]);
    assert!(restart.status.success(), "{}", text(&restart));
    let still = containers_on_volume_outside_compose(&project);
    assert!(
        still.is_empty(),
        "the next task (restart) removes the helpers a killed run left: {:?}",
        still
            .iter()
            .map(|c| (c["Id"].clone(), c["Config"]["Labels"].clone()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn promise_1_import_over_a_volume_with_a_database_plans_what_the_deploy_refuses() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-importover");
    let first = project.xtask("first-deploy", &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    let file = project.dir.join("old.db");
    old_app_database(&file, 30);
    let import = ["--import", file.to_str().unwrap()];
    let mut dry_args = import.to_vec();
    dry_args.extend(["--dry-run", "--json"]);
    let dry = project.xtask("first-deploy", &dry_args);
    let mut real_args = import.to_vec();
    real_args.extend(["--yes", "--json"]);
    let real = project.xtask("first-deploy", &real_args);
    // The plan is what the deploy then does: both refuse, or both go ahead.
    assert_eq!(
        dry.status.success(),
        real.status.success(),
        "the dry run:\n{}\nthe deploy:\n{}",
        text(&dry),
        text(&real)
    );
}

#[test]
fn promise_1_the_planned_compose_command_is_the_one_the_deploy_runs_with_its_environment() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-envshown");
    let env = env_file(&project.dir, "other.env", "123456:DEMO-TOKEN");
    let plan_of = |extra: &[&str]| -> Vec<(String, String)> {
        let mut args = extra.to_vec();
        args.extend(["--dry-run", "--json"]);
        let dry = project.xtask("first-deploy", &args);
        assert!(dry.status.success(), "{}", text(&dry));
        planned_commands(&report(&dry))
    };
    let with_demo_env = plan_of(&[]);
    let with_other_env = plan_of(&["--env-file", env.to_str().unwrap()]);
    let start = |plan: &[(String, String)]| {
        plan.iter()
            .find(|(s, _)| s == "start bot")
            .cloned()
            .expect("a start bot step")
            .1
    };
    // The deploy runs Compose with BOT_ENV_FILE (and BOT_IMAGE) in its environment, so these
    // two deploys run different commands; typed as shown, Compose takes docker/.env's values
    // (the last deployed project's) instead.
    assert_ne!(
        start(&with_demo_env),
        start(&with_other_env),
        "the shown `start bot` command says which environment file the bot gets"
    );
}

#[test]
fn promise_3_a_dry_run_stopped_by_ctrl_c_while_planning_leaves_no_helper() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-intdry");
    let first = project.xtask("first-deploy", &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        signalled_at_throwaway_start(&project, "prod-migrate", &["--dry-run"], libc::SIGINT),
        "the dry run started its plan's helper"
    );
    // Stopped by Ctrl-C, the tool says "nothing was changed": its helper is gone, or at least
    // labelled so that the next task removes it.
    let left = containers_on_volume_outside_compose(&project);
    assert!(
        left.iter().all(|c| labelled_helper_of(c, &project.name)),
        "left on the volume, unlabelled: {:?}",
        left.iter()
            .map(|c| (
                c["Id"].clone(),
                c["Config"]["Cmd"].clone(),
                c["Config"]["Labels"].clone()
            ))
            .collect::<Vec<_>>()
    );
}

#[test]
fn promise_1_an_unstamped_database_at_head_plans_the_migration_container_that_adopts_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-unstamped");
    let first = project.xtask("first-deploy", &["--yes"]);
    assert!(first.status.success(), "{}", text(&first));
    // The schema at head, with no migration history (written by hand, or by a tool that keeps
    // none): the deploy adopts it, in its migration container, with a backup first.
    let data = project.dir.join("unstamped.db");
    let _ = std::fs::remove_file(&data);
    let mut db = migrations::Database::open(&data).unwrap();
    db.upgrade(|_| {}).unwrap();
    drop(db);
    let conn = rusqlite::Connection::open(&data).unwrap();
    conn.execute_batch("DROP TABLE schema_history;").unwrap();
    drop(conn);
    project.overwrite_live_database(&data);
    assert_eq!(
        project.db_status()["state"],
        "unstamped",
        "{}",
        project.db_status()
    );

    let (planned, real) = plan_matches_deploy(&project, "prod-migrate", &[]);
    let real_steps = steps(&real);
    let plan_steps: Vec<&str> = planned.iter().map(|(s, _)| s.as_str()).collect();
    for step in ["prepare migration", "migrate database", "save backup"] {
        if real_steps.iter().any(|s| s == step) {
            assert!(
                plan_steps.contains(&step),
                "the deploy ran step \"{step}\" (its Docker commands), the plan shows none: plan {plan_steps:?}, deploy {real_steps:?}"
            );
        }
    }
}

/// The containers labelled with `project` (helpers, migrations), whatever their state.
fn labelled_containers_of(project: &Project) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=org.tgbot.project={}", project.name),
    ])
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

#[test]
fn promise_3_import_helpers_are_removed_after_a_failing_program_and_a_failed_copy_in() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-failimport");
    // Not SQLite: `bot db import --check-only` in the helper exits non-zero.
    let garbage = project.dir.join("garbage.db");
    std::fs::write(&garbage, vec![0x5a_u8; 64 * 1024]).unwrap();
    let failed = project.xtask(
        "first-deploy",
        &["--yes", "--json", "--import", garbage.to_str().unwrap()],
    );
    assert!(!failed.status.success(), "{}", text(&failed));
    assert_eq!(
        labelled_containers_of(&project),
        Vec::<String>::new(),
        "{}",
        text(&failed)
    );
    // A sound file, but every `docker cp` fails: the copy into the helper.
    let file = project.dir.join("old.db");
    old_app_database(&file, 10);
    let (path, _) = wrapped_path(
        &project.dir,
        "case \"$1\" in cp) echo 'simulated copy failure' >&2; exit 1;; esac",
    );
    let failed = project.xtask_with_env(
        "first-deploy",
        &["--yes", "--json", "--import", file.to_str().unwrap()],
        &[("PATH", &path)],
    );
    assert!(!failed.status.success(), "{}", text(&failed));
    assert!(
        String::from_utf8_lossy(&failed.stdout).contains("simulated copy failure")
            || String::from_utf8_lossy(&failed.stderr).contains("simulated copy failure"),
        "{}",
        text(&failed)
    );
    assert_eq!(
        labelled_containers_of(&project),
        Vec::<String>::new(),
        "{}",
        text(&failed)
    );
}

/// The project's image tags with their ids.
fn project_images(project: &Project) -> Vec<String> {
    docker(&[
        "image",
        "ls",
        "--no-trunc",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
    ])
    .lines()
    .filter(|l| l.contains(&project.name))
    .map(str::to_owned)
    .collect()
}

#[test]
fn promise_2_a_dry_run_of_an_import_over_a_built_image_leaves_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("adv6-dryimport");
    // The image is built (a first deploy refused before any change), the volume absent.
    let garbage = project.dir.join("garbage.db");
    std::fs::write(&garbage, b"not a database").unwrap();
    let refused = project.xtask(
        "first-deploy",
        &["--yes", "--import", garbage.to_str().unwrap()],
    );
    assert!(!refused.status.success(), "{}", text(&refused));
    let images_before = project_images(&project);
    let history = project.state_dir().join("deploys.jsonl");
    let history_before = std::fs::read_to_string(&history).unwrap_or_default();
    let file = project.dir.join("old.db");
    old_app_database(&file, 10);
    let dry = project.xtask(
        "first-deploy",
        &["--json", "--dry-run", "--import", file.to_str().unwrap()],
    );
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        report(&dry)["plan"].to_string().contains("found"),
        "{}",
        text(&dry)
    );
    assert_eq!(labelled_containers_of(&project), Vec::<String>::new());
    let volume = run("docker", &["volume", "inspect", &project.volume()]);
    assert!(!volume.status.success(), "no volume was created");
    assert_eq!(project_images(&project), images_before);
    assert_eq!(
        std::fs::read_to_string(&history).unwrap_or_default(),
        history_before
    );
    let backups: Vec<_> = std::fs::read_dir(project.state_dir())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().ends_with(".db"))
                .collect()
        })
        .unwrap_or_default();
    assert!(backups.is_empty(), "{backups:?}");
}
