//! An OpenSSH server on 127.0.0.1 for the tests that reach the engine through `ssh://`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{Project, text};

/// An OpenSSH server on 127.0.0.1 that lets this user in with a key made for it, and a folder
/// whose `ssh` uses that key (first on the tasks' PATH, as a user's ~/.ssh/config would).
pub struct SshServer {
    pub dir: PathBuf,
    pub port: u16,
    pub user: String,
    daemon: Child,
}

impl SshServer {
    pub fn start(dir: &Path) -> SshServer {
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
    pub fn host(&self) -> String {
        format!("ssh://{}@127.0.0.1:{}", self.user, self.port)
    }

    /// PATH with this server's `ssh` first.
    pub fn path(&self) -> String {
        format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    pub fn logins(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }

    pub fn commands(&self) -> String {
        std::fs::read_to_string(self.dir.join("ssh-commands.log")).unwrap_or_default()
    }
}

impl SshServer {
    /// `cargo xtask <task> --demo -p <project> --host <this server> <extra>`, with this
    /// server's `ssh` first on PATH.
    pub fn xtask(&self, project: &Project, task: &str, extra: &[&str]) -> Output {
        let host = self.host();
        let mut all = vec!["--host", host.as_str()];
        all.extend_from_slice(extra);
        project.xtask_with_env(task, &all, &[("PATH", &self.path())])
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
