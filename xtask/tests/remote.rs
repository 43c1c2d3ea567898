//! A server that needs only Docker: every task through `--host ssh://user@server`, against an
//! OpenSSH server on 127.0.0.1 (Debian's openssh-server, which `.ci/run` installs) with keys
//! made here. The engine behind it is this machine's, so what the tasks did is checked on it;
//! what proves they went through ssh is the server's log of logins and the ssh commands run.
//!
//! This needs a running Docker daemon, sshd, and docker-compose's ssh support (paramiko), and
//! fails, saying which is missing, without them.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Project, report, root, text};
use serde_json::Value;

/// An OpenSSH server on 127.0.0.1 that lets this user in with a key made for it, and a folder
/// whose `ssh` uses that key (first on the tasks' PATH, as a user's ~/.ssh/config would).
struct SshServer {
    dir: PathBuf,
    port: u16,
    user: String,
    daemon: Child,
}

impl SshServer {
    fn start(dir: &Path) -> SshServer {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "this test needs OpenSSH's server: install openssh-server (.ci/run does: apt-get install openssh-server python3-paramiko)"
        );
        let ssh = which("ssh").expect("this test needs the ssh client: install openssh-client");
        std::fs::create_dir_all(dir).unwrap();
        for key in ["host_key", "client_key"] {
            let made = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .output()
                .expect("ssh-keygen runs");
            assert!(made.status.success(), "{}", text(&made));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        // sshd refuses to run without its privilege-separation folder.
        std::fs::create_dir_all("/run/sshd").ok();
        let port = free_port();
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 StrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\nLogLevel VERBOSE\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("ssh_config"),
            format!(
                "Host *\n  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n\
                 StrictHostKeyChecking accept-new\n  BatchMode yes\n\
                 ControlMaster auto\n  ControlPath {d}/cm-%C\n  ControlPersist 30\n"
            ),
        )
        .unwrap();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // Each use is noted, then it is the real ssh with this test's key and known hosts.
        let wrapper = bin.join("ssh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$*\" >> {d}/ssh-commands.log\nexec {} -F {d}/ssh_config \"$@\"\n",
                ssh.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let daemon = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sshd starts");
        let server = SshServer {
            dir: dir.to_owned(),
            port,
            user,
            daemon,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on port {port} within 10 s: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The engine's address as a user writes it.
    fn host(&self) -> String {
        format!("ssh://{}@127.0.0.1:{}", self.user, self.port)
    }

    /// PATH with this server's `ssh` first.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    fn logins(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }

    fn commands(&self) -> String {
        std::fs::read_to_string(self.dir.join("ssh-commands.log")).unwrap_or_default()
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `cargo xtask <task> --demo -p <project> --host <ssh> <extra>` with the server's ssh on PATH.
fn remote(project: &Project, server: &SshServer, task: &str, extra: &[&str]) -> Output {
    let host = server.host();
    let mut all = vec!["--host", host.as_str()];
    all.extend_from_slice(extra);
    project.xtask_with_env(task, &all, &[("PATH", &server.path())])
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
        .join(format!("ssh-{}@127.0.0.1_{}", server.user, server.port))
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
