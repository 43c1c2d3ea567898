//! One deploy per project per Docker engine, whatever the backup folder, and a retention that
//! never deletes the backup `rollback` needs: end to end on the real Docker engine.
//!
//! These tests need a running Docker daemon and fail, saying so, when there is none.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Project, SERIAL, head, report, root, run, text};
use serde_json::Value;

/// `cargo xtask <task> --demo --project-name <name> <extra>`, started and left running, its
/// stderr piped.
fn spawn_xtask(project: &Project, task: &str, extra: &[&str]) -> Child {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["xtask", task, "--demo", "--project-name", &project.name])
        .args(extra)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The xtask process behind a `cargo xtask` child: `cargo run` execs the binary, so once it is
/// built it is the same process.
fn xtask_process(cargo: &Child) -> u32 {
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", cargo.id())).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "xtask",
        "cargo {} is not running xtask",
        cargo.id()
    );
    cargo.id()
}

fn signal(pid: u32, signal: &str) {
    let output = run("kill", &["-s", signal, &pid.to_string()]);
    assert!(output.status.success(), "{}", text(&output));
}

/// Kills a process when dropped, so a failed assertion never leaves a stopped holder behind.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = run("kill", &["-s", "KILL", &self.0.to_string()]);
    }
}

fn status_json(project: &Project, env: &[(&str, &str)]) -> Value {
    let output = project.xtask_with_env("status", &["--json"], env);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&output)))
}

#[test]
fn one_deploy_per_project_and_engine_whatever_the_backup_folder_and_a_killed_holder_frees_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("lockdir");
    let other = Project::new("lockfree");
    let elsewhere = project.dir.join("elsewhere");
    let cron_dir = project.dir.join("cron");
    let elsewhere_arg = elsewhere.to_str().unwrap().to_owned();

    // The holder: a first deploy with the default backup folder, frozen (SIGSTOP) once past its
    // build, so it holds the lock for as long as the test needs.
    let mut holder = spawn_xtask(&project, "first-deploy", &["--yes"]);
    let mut holder_log = Vec::new();
    let mut lines = BufReader::new(holder.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        holder_log.push(line.clone());
        if line.starts_with("ok   build images") {
            break;
        }
    }
    assert!(
        holder_log
            .iter()
            .any(|l| l.starts_with("ok   build images")),
        "the holder never got past its build: {}",
        holder_log.join("\n")
    );
    let holder_pid = xtask_process(&holder);
    let _kill_holder = KillOnDrop(holder_pid);
    signal(holder_pid, "STOP");

    // A second deploy of the same project, from another backup folder: refused at once.
    let second = project.xtask(
        "first-deploy",
        &["--yes", "--json", "--backup-dir", &elsewhere_arg],
    );
    assert_eq!(
        second.status.code(),
        Some(5),
        "locked, whatever the backup folder: {}",
        text(&second)
    );
    let error = report(&second)["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("another deploy of this project is running: first-deploy by"),
        "{error}"
    );
    assert!(error.contains(&format!("pid {holder_pid}")), "{error}");
    assert!(error.contains("since"), "{error}");
    assert!(
        !elsewhere.join(&project.name).join("deploys.jsonl").exists(),
        "nothing ran from the other folder"
    );

    // `status` (from yet another backup folder, through TGBOT_BACKUP_DIR) names the holder.
    let cron = cron_dir.to_str().unwrap();
    let status = status_json(&project, &[("TGBOT_BACKUP_DIR", cron)]);
    let lock = &status["lock"];
    assert_eq!(lock["task"], "first-deploy", "{status}");
    assert_eq!(
        lock["pid"].as_u64(),
        Some(u64::from(holder_pid)),
        "{status}"
    );
    assert_eq!(lock["alive"], true, "{status}");
    for field in ["operator", "host", "since"] {
        assert!(
            lock[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {status}"
        );
    }
    let shown = project.xtask_with_env("status", &[], &[("TGBOT_BACKUP_DIR", cron)]);
    let shown_text = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown_text.lines().any(|l| l.starts_with("lock:")
            && l.contains("first-deploy by")
            && l.contains(&format!("pid {holder_pid}"))),
        "{}",
        text(&shown)
    );

    // Another project on the same engine is not blocked: its backup gets past the lock (and
    // stops because it has no image yet).
    let unrelated = other.xtask("backup", &["--json"]);
    assert_eq!(
        unrelated.status.code(),
        Some(4),
        "past the lock, refused for want of an image: {}",
        text(&unrelated)
    );
    assert_eq!(status_json(&other, &[])["lock"], Value::Null);

    // The holder is killed (SIGKILL, as the OOM killer would): the lock is free again.
    signal(holder_pid, "KILL");
    holder.wait().unwrap();
    let freed = status_json(&project, &[]);
    assert_ne!(freed["lock"]["alive"], true, "{freed}");
    let next = project.xtask(
        "first-deploy",
        &["--yes", "--json", "--backup-dir", &elsewhere_arg],
    );
    assert!(
        next.status.success(),
        "the next deploy is not blocked by the dead holder: {}",
        text(&next)
    );
    assert_eq!(status_json(&project, &[])["lock"], Value::Null);
    assert_eq!(project.db_status()["state"], "current");
}

fn backups_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".db"))
        .collect();
    names.sort();
    names
}

#[test]
fn retention_keeps_the_backup_rollback_needs_after_a_schema_moving_deploy() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("retention");
    let old_image = project.deployed_at_revision_3(100, false, &[]);
    let update = project.xtask("prod-full-update", &["--yes", "--json"]);
    assert!(update.status.success(), "{}", text(&update));
    let deployed = report(&update);
    assert_eq!(deployed["revision_after"], head(), "{deployed}");
    let needed = PathBuf::from(
        deployed["backup"]
            .as_str()
            .expect("a backup before migrating"),
    );
    let needed_name = needed.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(needed_name.contains("-r3"), "{needed_name}");

    // More backups than --keep allows, each a second apart (the names carry the time).
    let mut last = None;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        let backup = project.xtask("backup", &["--yes", "--json", "--keep", "2"]);
        assert!(backup.status.success(), "{}", text(&backup));
        last = Some(backup);
    }
    let last = last.unwrap();
    let told = String::from_utf8_lossy(&last.stderr).into_owned();
    assert!(
        told.contains("pruned") && told.contains(&needed_name),
        "the prune message names the backup kept for the rollback: {}",
        text(&last)
    );
    assert!(
        needed.exists(),
        "the backup at revision 3 is kept: {:?}",
        backups_in(&project.state_dir())
    );
    let left = backups_in(&project.state_dir());
    let at_head = format!("-r{}", head());
    let at_head: Vec<&String> = left.iter().filter(|n| n.contains(&at_head)).collect();
    assert_eq!(
        at_head.len(),
        2,
        "the newest --keep backups are kept, older ones pruned: {left:?}"
    );
    assert_eq!(left.len(), 3, "{left:?}");

    let rollback = project.xtask("rollback", &["--yes", "--json"]);
    assert!(rollback.status.success(), "{}", text(&rollback));
    let outcome = report(&rollback);
    assert_eq!(outcome["revision_after"], 3, "{outcome}");
    assert_eq!(project.running_image(), old_image);
    assert!(needed.exists(), "the backup at revision 3 still exists");
}
