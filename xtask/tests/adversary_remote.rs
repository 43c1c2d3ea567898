//! Adversarial tests of the remote-engine promises (README "A server that needs only Docker"
//! and "By hand"): which engine a task drives, where its state lives, doctor over ssh, the
//! deploy lock across ssh and the local socket, `docker/.env`, and secrets.
//!
//! Each test that fails names the promise it found broken. The slow ones (deploys) take
//! `common::SERIAL`: they share the release build, the engine and `docker/.env`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::ssh::SshServer;
use common::{Project, SERIAL, report, root, text};
use serde_json::Value;

const SECRET: &str = "AdvTwelveSecretTokenValue";
const TOKEN: &str = "777012:AdvTwelveSecretTokenValue";

/// Prints how long a slow test took (with --nocapture), to keep the file within its budget.
struct Timer(&'static str, Instant);
impl Drop for Timer {
    fn drop(&mut self) {
        eprintln!("{} took {:?}", self.0, self.1.elapsed());
    }
}

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn all_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Removes folders (state of engines under backups/, a test's docker/.env) when dropped.
struct Remove(Vec<PathBuf>);
impl Drop for Remove {
    fn drop(&mut self) {
        for path in &self.0 {
            if path.is_dir() {
                let _ = std::fs::remove_dir_all(path);
            } else {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The folder of backups/ that holds an ssh server's projects.
fn engine_state(server: &SshServer) -> PathBuf {
    root()
        .join("backups")
        .join(format!("ssh-{}@127.0.0.1_3a{}", server.user, server.port))
}

/// Removes the project's release tags (`tgbot-bot:<project>-<git>-<time>`), which
/// `common::Project` leaves behind, when dropped.
struct ReleaseTags(String);
impl Drop for ReleaseTags {
    fn drop(&mut self) {
        let listed = common::run(
            "docker",
            &["image", "ls", "tgbot-bot", "--format", "{{.Tag}}"],
        );
        for tag in String::from_utf8_lossy(&listed.stdout).lines() {
            if tag.starts_with(&format!("{}-", self.0)) {
                let _ = common::run("docker", &["rmi", &format!("tgbot-bot:{tag}")]);
            }
        }
    }
}

/// A child process killed when dropped.
struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(addr: (&str, u16)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_sshd(config: &Path, log: &Path) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Daemon(
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sshd starts"),
    )
}

/// `cargo xtask TASK --demo -p NAME ARGS` with ENV, running in the background.
struct Running {
    child: Child,
    lines: Receiver<String>,
    progress: Arc<Mutex<String>>,
    stdout: std::thread::JoinHandle<Vec<u8>>,
}

fn spawn_xtask(project: &Project, task: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["xtask", task, "--demo", "--project-name", &project.name])
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err = child.stderr.take().unwrap();
    let (tx, lines) = channel();
    let progress = Arc::new(Mutex::new(String::new()));
    let p = progress.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            p.lock().unwrap().push_str(&format!("{line}\n"));
            let _ = tx.send(line);
        }
    });
    Running {
        child,
        lines,
        progress,
        stdout,
    }
}

impl Running {
    /// Waits for a progress line starting with `prefix`; false when the task ended first.
    fn wait_for(&self, prefix: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().unwrap();
                let progress = self.progress.lock().unwrap().clone();
                panic!("the task did not end within {timeout:?} (killed: {status}): {progress}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(200));
        let stdout = self.stdout.join().unwrap();
        let stderr = self.progress.lock().unwrap().clone().into_bytes();
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

/// The pids of the ssh server started with `config`, and of every process below it (its
/// sessions): what a dropped connection or a rebooted server ends.
fn sshd_tree(config: &Path) -> Vec<u32> {
    let mut parents = Vec::new();
    let mut roots = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // sshd rewrites its title: "sshd: /usr/sbin/sshd -D -e -f CONFIG [listener] ...".
        if cmdline.contains("/usr/sbin/sshd") && cmdline.contains(&config.display().to_string()) {
            roots.push(pid);
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..])
            && let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok())
        {
            parents.push((pid, ppid));
        }
    }
    let mut tree = roots.clone();
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid) in &parents {
            if tree.contains(ppid) && !tree.contains(pid) {
                tree.push(*pid);
                grew = true;
            }
        }
    }
    tree
}

fn kill_pids(pids: &[u32]) {
    for pid in pids {
        let _ = common::run("kill", &["-KILL", &pid.to_string()]);
    }
}

/// Soft checks: every broken promise of one scenario, reported together.
#[derive(Default)]
struct Breaks(Vec<String>);
impl Breaks {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }
    fn assert_none(&self) {
        assert!(
            self.0.is_empty(),
            "BROKEN PROMISES:\n- {}",
            self.0.join("\n- ")
        );
    }
}

/// A Docker config folder with a context store of its own: `sshctx` (an ssh engine) and
/// `tlsctx` (a tcp engine with TLS certificates).
fn context_store(dir: &Path, ssh_host: &str) -> PathBuf {
    let config = dir.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=adv12", "-keyout"])
        .arg(tls.join("key.pem"))
        .arg("-out")
        .arg(tls.join("cert.pem"))
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{}", text(&made));
    std::fs::copy(tls.join("cert.pem"), tls.join("ca.pem")).unwrap();
    let t = tls.display();
    for (name, endpoint) in [
        (
            "tlsctx",
            format!("host=tcp://10.255.255.1:2376,ca={t}/ca.pem,cert={t}/cert.pem,key={t}/key.pem"),
        ),
        ("sshctx", format!("host={ssh_host}")),
    ] {
        let made = Command::new("docker")
            .args(["context", "create", name, "--docker", &endpoint])
            .env("DOCKER_CONFIG", &config)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", text(&made));
    }
    config
}

// ---------------------------------------------------------------------------------------------
// Promise 2: an unknown context, a context with TLS certificates, a bad --host value.
// ---------------------------------------------------------------------------------------------

/// Promise 2: "an unknown context is a usage error (exit 2) naming the fix; a context with TLS
/// certificates is refused naming the way round" - also when it is the current context
/// (DOCKER_CONTEXT, or `docker context use`), which promise 1 puts in the precedence.
#[test]
fn the_current_context_unknown_or_with_tls_is_refused_not_replaced_by_the_local_engine() {
    let project = Project::new("adv-curctx");
    let config = context_store(&project.dir, "ssh://nobody@127.0.0.1:1");
    let config_str = config.display().to_string();
    // `docker context use tlsctx`, as a config folder holds it.
    let used = project.dir.join("docker-config-used");
    std::fs::create_dir_all(&used).unwrap();
    let _ = common::run(
        "cp",
        &[
            "-a",
            &format!("{}/.", config.display()),
            used.to_str().unwrap(),
        ],
    );
    std::fs::write(used.join("config.json"), r#"{"currentContext":"tlsctx"}"#).unwrap();
    let used_str = used.display().to_string();

    let mut breaks = Breaks::default();
    // The explicit options are refused, as promised (guards).
    for (context, wanted) in [
        ("no-such-context", "docker context ls"),
        ("tlsctx", "DOCKER_TLS_VERIFY"),
    ] {
        let out = project.xtask_with_env(
            "status",
            &["--context", context],
            &[("DOCKER_CONFIG", &config_str)],
        );
        breaks.check(
            out.status.code() == Some(2) && all_text(&out).contains(wanted),
            || {
                format!(
                    "promise 2: `--context {context}` should exit 2 naming {wanted:?}: {}",
                    text(&out)
                )
            },
        );
    }
    for (label, env) in [
        (
            "DOCKER_CONTEXT=no-such-context",
            vec![
                ("DOCKER_CONFIG", config_str.as_str()),
                ("DOCKER_CONTEXT", "no-such-context"),
            ],
        ),
        (
            "DOCKER_CONTEXT=tlsctx (a context with TLS certificates)",
            vec![
                ("DOCKER_CONFIG", config_str.as_str()),
                ("DOCKER_CONTEXT", "tlsctx"),
            ],
        ),
        (
            "`docker context use tlsctx` (currentContext in config.json)",
            vec![("DOCKER_CONFIG", used_str.as_str())],
        ),
    ] {
        let out = project.xtask_with_env("status", &["--json"], &env);
        let engine = serde_json::from_slice::<Value>(&out.stdout)
            .map(|s| s["engine"].to_string())
            .unwrap_or_default();
        breaks.check(out.status.code() == Some(2), || {
            format!(
                "promise 1/2: with {label} and no --host/--context, `status` must be a usage error (exit 2) naming the context and the fix; instead it went on (engine reported: {engine}; the Docker CLI follows the current context while Compose 1.x takes the local socket): {}",
                text(&out)
            )
        });
    }
    breaks.assert_none();
}

/// Promise 2: "a bad --host value ... is a usage error (exit 2) naming the fix".
#[test]
fn a_bad_host_value_is_a_usage_error() {
    let project = Project::new("adv-badhost");
    let mut breaks = Breaks::default();
    for bad in [
        "ssh://deploy@",                // no server
        "ssh://deploy@server:notaport", // a port that is no number
        "ssh://deploy@server:99999",    // a port out of range
        "ssh://dep loy@server",         // a space in the login
    ] {
        let out = project.xtask("status", &["--host", bad]);
        breaks.check(
            out.status.code() == Some(2) && all_text(&out).contains("ssh://user@server"),
            || {
                format!(
                    "promise 2: `--host {bad:?}` should be a usage error (exit 2) naming the form to write; got exit {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default()
                )
            },
        );
        // `history` reads only this machine's files, yet it too should refuse the address.
        let out = project.xtask("history", &["--host", bad]);
        breaks.check(out.status.code() == Some(2), || {
            format!(
                "promise 2: `history --host {bad:?}` should be a usage error (exit 2); got exit {:?}: {}",
                out.status.code(),
                all_text(&out).trim()
            )
        });
    }
    breaks.assert_none();
}

/// Promise 2: "two different engines with the same project name never share history/backups".
/// `ssh://deploy@server:2222` and `ssh://deploy@server_2222` (a host name, e.g. an alias of
/// ~/.ssh/config) are two engines; `history` says which folder each one's history is in.
#[test]
fn two_engines_never_share_a_history_folder() {
    let project = Project::new("adv-collide");
    let folder = |host: &str| {
        let out = project.xtask("history", &["--host", host]);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        stdout
            .rsplit_once(" in ")
            .map(|(_, path)| path.to_owned())
            .unwrap_or_else(|| panic!("no folder named: {stdout}"))
    };
    let mut breaks = Breaks::default();
    for (a, b) in [
        ("ssh://deploy@server:2222", "ssh://deploy@server_2222"),
        (
            "unix:///run/user/1000/docker.sock",
            "unix:///run/user_1000/docker.sock",
        ),
        ("tcp://10.0.0.5:2376", "tcp://10.0.0.5_2376"),
    ] {
        let (fa, fb) = (folder(a), folder(b));
        breaks.check(fa != fb, || {
            format!("promise 2: the engines {a} and {b} share one history and backup folder: {fa}")
        });
    }
    breaks.assert_none();
}

/// Beyond the listed promises, same family as promise 2: one engine written two ways that
/// ssh and Docker take as the same (a host name's case, a trailing slash Docker refuses
/// anyway) should find the same history, or `rollback` finds no deploy to undo.
#[test]
fn one_engine_spelled_two_ways_finds_one_history() {
    let project = Project::new("adv-spelling");
    let folder = |host: &str| {
        let out = project.xtask("history", &["--host", host]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let lower = folder("ssh://deploy@server.example.com:2222");
    let upper = folder("ssh://deploy@Server.Example.COM:2222");
    assert_eq!(
        lower, upper,
        "beyond promise 2: host names are case-insensitive, yet the same server in another case gets another history and backup folder (rollback/status would find no deploy)"
    );
}

// ---------------------------------------------------------------------------------------------
// Promise 1: precedence, checked on a live ssh engine (no deploy).
// ---------------------------------------------------------------------------------------------

/// Promise 1: "Precedence: --host > --context > DOCKER_HOST > current context".
#[test]
fn precedence_host_then_context_then_docker_host_then_current_context() {
    let project = Project::new("adv-precedence");
    let server = SshServer::start(&project.dir.join("ssh"));
    let host = server.host();
    let config = context_store(&project.dir, &host);
    let config = config.display().to_string();
    let path = server.path();
    let engine_of = |extra: &[&str], env: &[(&str, &str)]| -> (Option<i32>, String, String) {
        let mut all = vec![("PATH", path.as_str()), ("DOCKER_CONFIG", config.as_str())];
        all.extend_from_slice(env);
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = project.xtask_with_env("status", &args, &all);
        let engine = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["engine"].as_str().map(str::to_owned))
            .unwrap_or_default();
        (out.status.code(), engine, text(&out))
    };
    let mut breaks = Breaks::default();
    let dead = "tcp://127.0.0.1:9";
    for (label, extra, env) in [
        (
            "--host over DOCKER_HOST and a missing DOCKER_CONTEXT",
            vec!["--host", host.as_str()],
            vec![("DOCKER_HOST", dead), ("DOCKER_CONTEXT", "no-such-context")],
        ),
        (
            "--context over DOCKER_HOST",
            vec!["--context", "sshctx"],
            vec![("DOCKER_HOST", dead)],
        ),
        (
            "--context over a missing DOCKER_CONTEXT",
            vec!["--context", "sshctx"],
            vec![("DOCKER_CONTEXT", "no-such-context")],
        ),
        (
            "DOCKER_CONTEXT=sshctx (the current context)",
            vec![],
            vec![("DOCKER_CONTEXT", "sshctx")],
        ),
    ] {
        let (code, engine, all) = engine_of(&extra, &env);
        breaks.check(code == Some(0) && engine == host, || {
            format!("promise 1: {label}: expected engine {host}, got exit {code:?} engine {engine:?}: {all}")
        });
    }
    // DOCKER_HOST over the current context.
    let (code, engine, all) =
        engine_of(&[], &[("DOCKER_HOST", &host), ("DOCKER_CONTEXT", "tlsctx")]);
    breaks.check(code == Some(0) && engine == host, || {
        format!(
            "promise 1: DOCKER_HOST over DOCKER_CONTEXT: exit {code:?} engine {engine:?}: {all}"
        )
    });
    // --host and --context together: a usage error.
    let out = project.xtask_with_env(
        "status",
        &["--host", &host, "--context", "sshctx"],
        &[("PATH", &path), ("DOCKER_CONFIG", &config)],
    );
    breaks.check(out.status.code() == Some(2), || {
        format!(
            "promise 1: --host with --context should be a usage error: {}",
            text(&out)
        )
    });
    let _ = std::fs::remove_dir_all(engine_state(&server));
    breaks.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Promise 3: doctor over ssh.
// ---------------------------------------------------------------------------------------------

fn doctor_check(report: &Value, name: &str) -> Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["check"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// Promise 3: doctor names a changed host key and the fix (known_hosts), exits 4, and prints
/// no secret of the environment file.
#[test]
fn doctor_names_a_changed_host_key_and_prints_no_secret() {
    let project = Project::new("adv-hostkey");
    let server = SshServer::start(&project.dir.join("ssh"));
    let _state = Remove(vec![engine_state(&server)]);
    // The server "was reinstalled": known_hosts holds another key for it.
    let other = server.dir.join("other_host_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(made.status.success());
    let key = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let key: Vec<&str> = key.split_whitespace().take(2).collect();
    std::fs::write(
        server.dir.join("known_hosts"),
        format!("[127.0.0.1]:{} {} {}\n", server.port, key[0], key[1]),
    )
    .unwrap();
    let env = common::env_file(&project.dir, "prod.env", TOKEN);
    let out = server.xtask(
        &project,
        "doctor",
        &["--json", "--env-file", env.to_str().unwrap()],
    );
    let all = all_text(&out);
    let mut breaks = Breaks::default();
    breaks.check(out.status.code() == Some(4), || {
        format!(
            "promise 3: doctor with a changed host key should exit 4: {}",
            text(&out)
        )
    });
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let login = doctor_check(&report, "ssh login to the server");
    breaks.check(
        login["ok"] == false
            && login["detail"].as_str().is_some_and(|d| {
                d.contains("Host key verification failed")
                    || d.contains("IDENTIFICATION HAS CHANGED")
            })
            && login["fix"]
                .as_str()
                .is_some_and(|f| f.contains("known_hosts")),
        || {
            format!(
                "promise 3: the ssh check should name the changed host key and known_hosts: {login}"
            )
        },
    );
    breaks.check(!all.contains(SECRET), || {
        format!("promise 3/6: doctor printed the token: {all}")
    });
    breaks.assert_none();
}

/// Promise 3: doctor "names paramiko when that is what's missing" - and only then: paramiko
/// is installed here, and for an IPv6 address (`ssh://user@[::1]:port`, the form the unit
/// tests accept) docker-compose 1.x fails for another reason.
#[test]
fn doctor_blames_paramiko_only_when_it_is_missing() {
    // The Python docker-compose runs with (its #! line).
    let have_paramiko = Command::new("/usr/bin/python3")
        .args(["-c", "import paramiko"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(have_paramiko, "this test needs python3-paramiko installed");
    let project = Project::new("adv-ipv6");
    let server = SshServer::start(&project.dir.join("ssh"));
    // A second server of the same keys on ::1.
    let port = std::net::TcpListener::bind(("::1", 0))
        .expect("IPv6 loopback")
        .local_addr()
        .unwrap()
        .port();
    let config = std::fs::read_to_string(server.dir.join("sshd_config"))
        .unwrap()
        .replace(&format!("Port {}", server.port), &format!("Port {port}"))
        .replace("ListenAddress 127.0.0.1", "ListenAddress ::1")
        .replace("sshd.pid", "sshd6.pid");
    let config_path = server.dir.join("sshd6_config");
    std::fs::write(&config_path, config).unwrap();
    let _daemon = spawn_sshd(&config_path, &server.dir.join("sshd6.log"));
    wait_port(("::1", port));
    let host = format!("ssh://{}@[::1]:{port}", server.user);
    let _state = Remove(vec![
        root()
            .join("backups")
            .join(format!("ssh-{}@___1__{port}", server.user)),
    ]);
    let out = project.xtask_with_env(
        "doctor",
        &["--json", "--host", &host],
        &[("PATH", &server.path())],
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let login = doctor_check(&report, "ssh login to the server");
    assert_eq!(
        login["ok"],
        true,
        "the ssh login over IPv6 works: {}",
        text(&out)
    );
    let compose = doctor_check(&report, "Compose reaches the engine");
    if compose["ok"] == false {
        let fix = compose["fix"].as_str().unwrap_or_default();
        assert!(
            !fix.contains("install paramiko"),
            "promise 3: Compose fails to reach {host} although paramiko is installed, and doctor's fix says to install paramiko (wrong fix). detail tail: {:?}; fix: {fix}",
            compose["detail"]
                .as_str()
                .map(|d| &d[d.len().saturating_sub(200)..])
        );
    }
}

/// Promise 2/3: a trailing slash (`ssh://user@server:port/`) is taken by xtask (the history
/// folder is the one without it) and then refused by Docker and Compose: it should be either
/// accepted as the same engine or a usage error naming the fix, not "start Docker" (exit 4).
#[test]
fn a_trailing_slash_in_the_host_is_taken_or_refused_as_usage() {
    let project = Project::new("adv-slash");
    let server = SshServer::start(&project.dir.join("ssh"));
    let _state = Remove(vec![engine_state(&server)]);
    let host = format!("{}/", server.host());
    let out = project.xtask_with_env("doctor", &["--host", &host], &[("PATH", &server.path())]);
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(2),
        "promise 2: `--host {host}` is accepted as {} (same history folder) but every docker command fails; expected it to work (exit 0) or be a usage error (exit 2), got: {}",
        server.host(),
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Promises 1, 4, 5, 6 with a deploy through ssh.
// ---------------------------------------------------------------------------------------------

/// Promise 1 (every task, every docker and Compose command to the ssh engine, --context and
/// the current context too), promise 4 (the lock across ssh and the local socket), promise 5
/// (the by-hand command after a deploy reaches the deployed engine), promise 6 (no token).
#[test]
fn every_task_through_ssh_reaches_only_that_engine_shares_the_lock_and_leaks_nothing() {
    let _serial = serial();
    let _timer = Timer("every_task", Instant::now());
    let project = Project::new("adv-everytask");
    let _tags = ReleaseTags(project.name.clone());
    let server = SshServer::start(&project.dir.join("ssh"));
    let host = server.host();
    let _state = Remove(vec![engine_state(&server)]);
    let (logbin, log) = common::logging_bin(&project.dir);
    let path = format!("{}:{}", logbin.display(), server.path());
    let env_file = common::env_file(&project.dir, "prod.env", TOKEN);
    let env_arg = env_file.display().to_string();
    let config = context_store(&project.dir, &host).display().to_string();
    let env: Vec<(&str, &str)> = vec![("PATH", &path), ("STANDIN_TOKEN", TOKEN)];
    let mut breaks = Breaks::default();
    let mut outputs = String::new();

    // The deploy through ssh; while it holds the lock, a deploy of the same project on the
    // same engine through the local socket.
    let deploy = spawn_xtask(
        &project,
        "first-deploy",
        &["--host", &host, "--yes", "--json", "--env-file", &env_arg],
        &env,
    );
    let building = deploy.wait_for("==> build images", Duration::from_secs(300));
    let local = if building {
        Some(project.xtask_with_env(
            "first-deploy",
            &["--yes", "--json"],
            &[("STANDIN_TOKEN", TOKEN)],
        ))
    } else {
        None
    };
    let deployed = deploy.finish(Duration::from_secs(400));
    outputs.push_str(&all_text(&deployed));
    assert!(
        deployed.status.success(),
        "first-deploy through ssh: {}",
        text(&deployed)
    );
    assert!(building, "no build step seen: {}", text(&deployed));
    let local = local.unwrap();
    outputs.push_str(&all_text(&local));
    breaks.check(local.status.code() == Some(5), || {
        format!(
            "promise 4: a deploy through the local socket while one through --host ssh:// runs (same engine, same project) should exit 5; got: {}",
            text(&local)
        )
    });

    // Promise 5: the by-hand command, nothing exported, reaches the engine deployed to.
    let dial_before = server.commands().matches("dial-stdio").count();
    let compose = root().join("docker/docker-compose.prod.yml");
    let by_hand = Command::new("docker-compose")
        .args(["-f", compose.to_str().unwrap(), "-p", &project.name])
        .args(["run", "--rm", "bot", "db", "status"])
        .current_dir(root())
        .env("PATH", server.path())
        .env_remove("DOCKER_HOST")
        .env_remove("BOT_IMAGE")
        .env_remove("BOT_ENV_FILE")
        .env_remove("STANDIN_IMAGE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let dial_after = server.commands().matches("dial-stdio").count();
    let compose_env = std::fs::read_to_string(root().join("docker/.env")).unwrap_or_default();
    breaks.check(by_hand.status.success() && dial_after > dial_before, || {
        format!(
            "promise 5: after a deploy with --host {host}, `docker-compose -f docker/docker-compose.prod.yml -p {} run --rm bot db status` with nothing exported does not reach that engine (no ssh connection made: it ran against this machine's local socket; docker/.env names no DOCKER_HOST):\n{compose_env}\n{}",
            project.name,
            text(&by_hand)
        )
    });
    breaks.check(!compose_env.contains(SECRET), || {
        format!("promise 6: docker/.env holds the token: {compose_env}")
    });

    // Every other task, through --host, --context and the current context.
    let with_host = |task: &str, extra: &[&str]| {
        let mut args = vec!["--host", host.as_str()];
        args.extend_from_slice(extra);
        project.xtask_with_env(task, &args, &env)
    };
    let mut run = |label: &str, out: Output, breaks: &mut Breaks| -> Output {
        outputs.push_str(&all_text(&out));
        breaks.check(out.status.success(), || {
            format!("promise 1: `{label}` through ssh failed: {}", text(&out))
        });
        out
    };
    run("status", with_host("status", &["--json"]), &mut breaks);
    let backup = run(
        "backup",
        with_host("backup", &["--yes", "--json"]),
        &mut breaks,
    );
    run("db status", with_host("db", &["status"]), &mut breaks);
    run("logs", with_host("logs", &["--tail", "20"]), &mut breaks);
    run("history", with_host("history", &[]), &mut breaks);
    run(
        "doctor",
        with_host("doctor", &["--env-file", &env_arg]),
        &mut breaks,
    );
    // (--demo without --env-file means docker/demo.env: the same file again, so nothing to do.)
    run(
        "prod-migrate",
        with_host("prod-migrate", &["--yes", "--json", "--env-file", &env_arg]),
        &mut breaks,
    );
    run(
        "restart",
        with_host("restart", &["--yes", "--json"]),
        &mut breaks,
    );
    if let Some(file) = serde_json::from_str::<Value>(
        String::from_utf8_lossy(&backup.stdout)
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("{}"),
    )
    .ok()
    .and_then(|r| r["backup"].as_str().map(str::to_owned))
    {
        run(
            "restore",
            with_host("restore", &[&file, "--yes", "--json"]),
            &mut breaks,
        );
    }
    let ctx_env: Vec<(&str, &str)> = vec![("PATH", &path), ("DOCKER_CONFIG", &config)];
    let by_context = project.xtask_with_env("status", &["--json", "--context", "sshctx"], &ctx_env);
    let by_context = run("status --context", by_context, &mut breaks);
    let current_env: Vec<(&str, &str)> = vec![
        ("PATH", &path),
        ("DOCKER_CONFIG", &config),
        ("DOCKER_CONTEXT", "sshctx"),
    ];
    let by_current = project.xtask_with_env("status", &["--json"], &current_env);
    let by_current = run("status (DOCKER_CONTEXT)", by_current, &mut breaks);
    for (label, out) in [
        ("--context sshctx", &by_context),
        ("DOCKER_CONTEXT=sshctx", &by_current),
    ] {
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        breaks.check(
            status["engine"] == host.as_str() && status["last_deploy"]["task"].is_string(),
            || format!("promise 1/2: `status` with {label} should show {host} and its history: {status}"),
        );
    }
    run("down", with_host("down", &["--yes", "--json"]), &mut breaks);

    // Every docker and Compose command the tasks ran had the ssh engine.
    let commands = std::fs::read_to_string(&log).unwrap_or_default();
    let local_commands: Vec<&str> = commands
        .lines()
        .filter(|l| !l.starts_with(&format!("DOCKER_HOST={host} ")))
        // The context look-ups run before an engine is chosen, against no engine.
        .filter(|l| !l.contains(":: docker context inspect"))
        .collect();
    let total = commands.lines().count();
    breaks.check(total > 20 && local_commands.is_empty(), || {
        format!(
            "promise 1: {} of {total} docker/Compose commands did not go to {host}:\n{}",
            local_commands.len(),
            local_commands
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    // Promise 6: no token anywhere the tool wrote or printed.
    let history = std::fs::read_to_string(
        engine_state(&server)
            .join(&project.name)
            .join("deploys.jsonl"),
    )
    .unwrap_or_default();
    breaks.check(!history.is_empty(), || {
        "promise 2: no history kept on this machine".into()
    });
    for (what, text) in [("an output", &outputs), ("deploys.jsonl", &history)] {
        breaks.check(!text.contains(SECRET), || {
            format!("promise 6: {what} holds the token")
        });
    }
    breaks.check(!commands.contains(SECRET), || {
        "beyond promise 6: a docker/Compose command line (visible in `ps`) holds the token".into()
    });
    breaks.assert_none();
}

/// The ssh server goes away mid-deploy (after the build, as the migration goes): the deploy
/// fails with a clear error and leaves things recoverable (README "How a deploy keeps your
/// data"); once ssh is back, `status` tells the state and a deploy finishes healthy.
#[test]
fn ssh_dropped_mid_deploy_fails_clearly_and_leaves_it_recoverable() {
    let _serial = serial();
    let _timer = Timer("ssh_dropped", Instant::now());
    let project = Project::new("adv-sshdrop");
    let _tags = ReleaseTags(project.name.clone());
    let server = SshServer::start(&project.dir.join("ssh"));
    let host = server.host();
    let _state = Remove(vec![engine_state(&server)]);
    let ssh_path = server.path();
    let env: Vec<(&str, &str)> = vec![("PATH", &ssh_path)];
    let first = server.xtask(
        &project,
        "first-deploy",
        &["--yes", "--json", "--schema-head", "3"],
    );
    assert!(first.status.success(), "{}", text(&first));

    let config = server.dir.join("sshd_config");
    let update = spawn_xtask(
        &project,
        "prod-full-update",
        &["--host", &host, "--yes", "--json"],
        &env,
    );
    // The fast path: the new bot waits beside the old one; at this line the old one is being
    // stopped and the migration told to go.
    let reached = update.wait_for("==> migrate database", Duration::from_secs(400));
    if reached {
        let tree = sshd_tree(&config);
        assert!(
            !tree.is_empty(),
            "the ssh server's processes were not found"
        );
        kill_pids(&tree);
    }
    let started = Instant::now();
    let failed = update.finish(Duration::from_secs(600));
    assert!(
        reached,
        "the update never reached \"migrate database\": {}",
        text(&failed)
    );
    let mut breaks = Breaks::default();
    eprintln!(
        "ssh dropped at \"migrate database\": exit {:?}",
        failed.status.code()
    );
    let error = String::from_utf8_lossy(&failed.stderr)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{error}");
    breaks.check(failed.status.code() == Some(1), || {
        format!(
            "a deploy whose engine went away should exit 1 (a step failed) after {:?}; got: {}",
            started.elapsed(),
            text(&failed)
        )
    });
    breaks.check(
        ["ssh", "connect", "Connection refused", "reach"]
            .iter()
            .any(|w| error.contains(w)),
        || format!("the error should say the engine ({host}) could not be reached: {error}"),
    );
    // The way out it names must reach the same engine: `cargo xtask status` without --host
    // looks at this machine's engine.
    if error.contains("cargo xtask status") || error.contains("cargo xtask recover") {
        breaks.check(error.contains("--host"), || {
            format!("the commands the error names for the way out (`cargo xtask status`/`recover`) carry no --host {host}, so typed as shown they look at the local engine: {error}")
        });
    }

    // What the failed deploy left on the engine (this machine's engine is the server's).
    let left = |filter: &str| -> Vec<String> {
        common::docker(&[
            "ps",
            "-a",
            "--filter",
            filter,
            "--format",
            "{{.Names}} {{.Status}}",
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    };
    let bots = project.bot_containers();
    let migrations = left(&format!("label=org.tgbot.project={}", project.name));
    eprintln!("left after the cut: bot containers {bots:?}; labelled containers {migrations:?}");
    // (The old bot's id is in the error already, in the failed stop's URL.)
    let unnamed: Vec<&String> = bots
        .iter()
        .filter(|b| !error.contains(b.as_str()))
        .collect();
    breaks.check(bots.len() == 1 || error.contains("beside") || unnamed.is_empty(), || {
        format!(
            "README \"if anything before the migration fails ... the previous image starts\" (rolled back): the failed deploy left {} bot containers of the project ({:?}: the new bot started beside the old one, both with the token), and its error does not say so: {error}",
            bots.len(),
            left(&format!("label=com.docker.compose.project={}", project.name))
        )
    });

    // ssh comes back (same keys, same port).
    let _back = spawn_sshd(&config, &server.dir.join("sshd-again.log"));
    wait_port(("127.0.0.1", server.port));
    let status = server.xtask(&project, "status", &["--json"]);
    breaks.check(status.status.success(), || {
        format!("`status` after ssh came back failed: {}", text(&status))
    });
    let status_json: Value = serde_json::from_slice(&status.stdout).unwrap_or(Value::Null);
    breaks.check(
        status_json["unfinished"]
            .as_array()
            .is_some_and(|u| !u.is_empty())
            || status_json["last_deploy"]["result"]
                .as_str()
                .is_some_and(|r| r != "ok"),
        || format!("`status` should name the deploy cut off by the lost engine: {status_json}"),
    );
    let again = server.xtask(&project, "prod-full-update", &["--yes", "--json"]);
    breaks.check(again.status.success(), || {
        format!(
            "the next deploy after ssh came back should finish the job: {}",
            text(&again)
        )
    });
    if again.status.success() {
        let healthy = project.bot_container()["State"]["Health"]["Status"].clone();
        let db = project.db_status();
        breaks.check(
            healthy == "healthy" && db["version"].as_u64() == Some(common::head()),
            || format!("after recovery the bot should be healthy at head: {healthy} {db}"),
        );
        breaks.check(project.bot_containers().len() == 1, || {
            format!(
                "one bot container after recovery: {:?}",
                project.bot_containers()
            )
        });
    }
    breaks.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Promise 5: docker/.env (local engine).
// ---------------------------------------------------------------------------------------------

fn by_hand_db_status(project: &Project) -> Output {
    let compose = root().join("docker/docker-compose.prod.yml");
    Command::new("docker-compose")
        .args(["-f", compose.to_str().unwrap(), "-p", &project.name])
        .args(["run", "--rm", "bot", "db", "status"])
        .current_dir(root())
        .env_remove("BOT_IMAGE")
        .env_remove("BOT_ENV_FILE")
        .env_remove("STANDIN_IMAGE")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn strays_in_docker() -> Vec<String> {
    std::fs::read_dir(root().join("docker"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".env.") && n.ends_with(".new"))
        .collect()
}

/// Promise 5: a dry run does not write docker/.env; a failure to write it does not fail the
/// deploy (exit 6, a warning naming it) and leaves nothing half-written; after a deploy the
/// by-hand command works with nothing exported, also with an environment file whose path holds
/// " #" (the checkout or the file in a folder like "bot #2").
#[test]
fn docker_env_dry_run_write_failure_and_by_hand() {
    let _serial = serial();
    let _timer = Timer("docker_env", Instant::now());
    let project = Project::new("adv-composeenv");
    let _tags = ReleaseTags(project.name.clone());
    let dot_env = root().join("docker/.env");
    let _cleanup = Remove(vec![dot_env.clone()]);
    if dot_env.is_dir() {
        std::fs::remove_dir_all(&dot_env).unwrap();
    } else {
        let _ = std::fs::remove_file(&dot_env);
    }
    let mut breaks = Breaks::default();

    let dry = project.xtask("first-deploy", &["--yes", "--json", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    breaks.check(!dot_env.exists(), || {
        "promise 5: a --dry-run wrote docker/.env".into()
    });

    // docker/.env cannot be written: a directory stands in its place (root writes anywhere
    // else). Compose ignores a .env that is no file, so only the write fails.
    std::fs::create_dir_all(dot_env.join("blocker")).unwrap();
    let deploy = project.xtask("first-deploy", &["--yes", "--json"]);
    let deployed = report(&deploy);
    breaks.check(
        deploy.status.code() == Some(6)
            && deployed["warnings"].to_string().contains("docker/.env"),
        || format!("promise 5: a deploy that cannot write docker/.env should succeed with a warning naming it (exit 6): {}", text(&deploy)),
    );
    breaks.check(strays_in_docker().is_empty(), || {
        format!("promise 5 (written whole, atomically): the failed write left its temporary file(s) in docker/: {:?}", strays_in_docker())
    });
    assert!(
        deploy.status.code() == Some(6) || deploy.status.success(),
        "the deploy itself failed: {}",
        text(&deploy)
    );
    std::fs::remove_dir_all(&dot_env).unwrap();
    for stray in strays_in_docker() {
        let _ = std::fs::remove_file(root().join("docker").join(stray));
    }

    // A deploy that changes nothing still writes it; by hand then works.
    let again = project.xtask("prod-migrate", &["--yes", "--json"]);
    assert!(again.status.success(), "{}", text(&again));
    let by_hand = by_hand_db_status(&project);
    breaks.check(by_hand.status.success(), || {
        format!(
            "promise 5: by hand after a deploy: {}\n{}",
            std::fs::read_to_string(&dot_env).unwrap_or_default(),
            text(&by_hand)
        )
    });

    // An environment file in a folder whose name holds " #".
    let folder = project.dir.join("bot #2");
    std::fs::create_dir_all(&folder).unwrap();
    let hashed = folder.join("demo.env");
    std::fs::copy(root().join("docker/demo.env"), &hashed).unwrap();
    let moved = project.xtask(
        "prod-migrate",
        &["--yes", "--json", "--env-file", hashed.to_str().unwrap()],
    );
    assert!(moved.status.success(), "{}", text(&moved));
    let by_hand = by_hand_db_status(&project);
    breaks.check(by_hand.status.success(), || {
        format!(
            "promise 5: after a deploy with --env-file {:?}, the by-hand command fails: Compose reads docker/.env's unquoted BOT_ENV_FILE up to \" #\":\n{}\n{}",
            hashed.display(),
            std::fs::read_to_string(&dot_env).unwrap_or_default(),
            text(&by_hand)
        )
    });
    breaks.assert_none();
}
