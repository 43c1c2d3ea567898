//! A server that needs only Docker: every task through `--host ssh://user@server`, against an
//! OpenSSH server on 127.0.0.1 (Debian's openssh-server, which `.ci/run` installs) with keys
//! made here. The engine behind it is this machine's, so what the tasks did is checked on it;
//! what proves they went through ssh is the server's log of logins and the ssh commands run.
//!
//! This needs a running Docker daemon, sshd, and docker-compose's ssh support (paramiko), and
//! fails, saying which is missing, without them.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::ssh::SshServer;
use common::{Project, report, root, text};
use serde_json::Value;

/// `cargo xtask <task> --demo -p <project> --host <ssh> <extra>` with the server's ssh on PATH.
fn remote(project: &Project, server: &SshServer, task: &str, extra: &[&str]) -> Output {
    server.xtask(project, task, extra)
}

fn ok_report(output: &Output, task: &str) -> Value {
    assert!(output.status.success(), "{task}: {}", text(output));
    let report = report(output);
    assert_eq!(report["result"], "ok", "{task}: {report}");
    report
}

#[test]
fn every_task_works_through_ssh_with_backups_and_history_kept_here() {
    let project = Project::new("remote");
    let server = SshServer::start(&project.dir.join("ssh"));
    let state = root()
        .join("backups")
        .join(format!("ssh-{}@127.0.0.1_3a{}", server.user, server.port))
        .join(&project.name);
    struct RemoveState(PathBuf);
    impl Drop for RemoveState {
        fn drop(&mut self) {
            if let Some(engine) = self.0.parent() {
                let _ = std::fs::remove_dir_all(engine);
            }
        }
    }
    let _remove_state = RemoveState(state.clone());

    let doctor = remote(&project, &server, "doctor", &[]);
    assert!(doctor.status.success(), "{}", text(&doctor));
    let checks = String::from_utf8_lossy(&doctor.stdout);
    for check in [
        "ok   ssh login to the server",
        "ok   Docker daemon reachable",
        "ok   Compose reaches the engine",
    ] {
        assert!(checks.contains(check), "{check}: {}", text(&doctor));
    }

    // An older release first, so that the update migrates, backs up, and has a way back.
    let first = remote(
        &project,
        &server,
        "first-deploy",
        &["--yes", "--json", "--schema-head", "3"],
    );
    ok_report(&first, "first-deploy");
    let commands_after_first = server.commands().lines().count();
    assert!(
        server.logins() > 0,
        "first-deploy reached the engine without ssh: {}",
        server.log()
    );
    assert!(
        server.commands().contains("docker system dial-stdio"),
        "the Docker CLI and Compose reach the engine through ssh: {}",
        server.commands()
    );
    let image_at_3 = project.running_image();
    assert_eq!(project.db_status_with(&image_at_3)["version"], 3);

    let update = remote(&project, &server, "prod-full-update", &["--yes", "--json"]);
    let updated = ok_report(&update, "prod-full-update");
    assert_eq!(
        (
            updated["revision_before"].as_u64(),
            updated["revision_after"].as_u64()
        ),
        (Some(3), Some(common::head())),
        "{updated}"
    );
    let backup = updated["backup"].as_str().map(PathBuf::from);
    assert!(
        backup
            .as_ref()
            .is_some_and(|b| b.starts_with(&state) && b.exists()),
        "the deploy's backup is on this machine, in the engine's folder {}: {updated}",
        state.display()
    );

    let status = remote(&project, &server, "status", &["--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["database"]["state"], "current", "{status}");
    assert_eq!(status["engine"], server.host().as_str(), "{status}");
    assert_eq!(
        status["last_deploy"]["task"], "prod-full-update",
        "{status}"
    );

    let backup = remote(&project, &server, "backup", &["--json"]);
    let backed_up = report(&backup);
    assert!(backup.status.success(), "{}", text(&backup));
    let file = backed_up["backup"].as_str().map(PathBuf::from);
    assert!(
        file.as_ref().is_some_and(|f| f.starts_with(&state)),
        "{backed_up}"
    );

    let rollback = remote(&project, &server, "rollback", &["--yes", "--json"]);
    ok_report(&rollback, "rollback");
    assert_eq!(
        project.running_image(),
        image_at_3,
        "the previous image runs again"
    );
    assert_eq!(
        project.db_status_with(&image_at_3)["version"],
        3,
        "the pre-deploy backup is back"
    );
    assert!(
        server.commands().lines().count() > commands_after_first,
        "the later tasks went through ssh too"
    );

    let history = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(
        history.iter().any(|f| f == "deploys.jsonl"),
        "the history is kept on this machine: {history:?}"
    );
    assert!(
        !root().join("backups").join(&project.name).exists(),
        "nothing of the remote engine's project went to the local engine's folder"
    );
}

#[test]
fn doctor_names_an_ssh_login_that_fails_and_its_fix() {
    let project = Project::new("remote-refused");
    let server = SshServer::start(&project.dir.join("ssh"));
    // A key the server does not know.
    std::fs::write(server.dir.join("authorized_keys"), "").unwrap();
    let doctor = remote(&project, &server, "doctor", &["--json"]);
    assert_eq!(doctor.status.code(), Some(4), "{}", text(&doctor));
    let report: Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let login = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "ssh login to the server")
        .unwrap_or_else(|| panic!("{report}"))
        .clone();
    assert_eq!(login["ok"], false, "{login}");
    assert!(
        login["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Permission denied")),
        "{login}"
    );
    assert!(
        login["fix"]
            .as_str()
            .is_some_and(|f| f.contains("ssh-agent")),
        "{login}"
    );
}
