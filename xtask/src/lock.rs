//! The deploy lock: one deploy per project per Docker engine, whatever the backup folder, the
//! checkout or the machine it runs from.
//!
//! What a deploy must not share is the engine's state (the volume `<project>_bot-data`, the tag
//! `tgbot-bot:<project>`, the containers), so the lock is keyed by the engine and the project,
//! never by the backup folder (a cron job with `TGBOT_BACKUP_DIR`, a second checkout). It has two
//! layers, taken in this order and released in the reverse one:
//!
//! 1. **An operating-system file lock** (`File::try_lock`) on
//!    `$HOME/.local/state/tgbot/locks/<engine id>/<project>.lock` (the engine id is
//!    `docker info --format {{.ID}}`). The kernel drops it when its holder dies, even by SIGKILL,
//!    so on one machine a dead holder never blocks. `$HOME` rather than `$XDG_RUNTIME_DIR` or
//!    `$XDG_STATE_HOME`: cron and CI jobs have `HOME` (root's is `/root`) but seldom the XDG
//!    variables of a login session, and the same user must find the same file from both. Without
//!    a usable `HOME` the folder is `<temp dir>/tgbot-locks-<uid>` (private, checked to be ours).
//!    Keying by the engine id lets one project name deploy to two engines at once.
//! 2. **A marker on the engine**: a container named `<project>-deploy-lock`, created and never
//!    started, its label holding the [`Holder`]. The engine refuses a second container of the same
//!    name atomically, so this layer excludes every other deploy on that engine: another user on
//!    this machine (whose `HOME` differs), a CI job in a container, a laptop reaching the server
//!    through `DOCKER_HOST`. A marker outlives a killed holder, so before refusing, the deploy
//!    decides whether its holder is alive ([`Holder::liveness`]): on the same machine and process
//!    table (same boot id and pid namespace) the process is looked up by pid and start time, so a
//!    killed holder's marker is removed (by container id, never by name, so a marker another deploy
//!    just made is never removed) and the lock taken. A holder elsewhere cannot be checked from
//!    here; its marker is honoured for [`MAX_HOLD`], longer than any deploy the timeouts allow, and
//!    the refusal says how to remove it by hand before that.
//!
//! The marker's image (`tgbot-deploy-lock:marker`) is an empty one made with `docker import`
//! the first time it is needed: nothing is pulled, and no program ever runs from it.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use xshell::{Shell, cmd};

use crate::exit;
use crate::process;

/// How long a marker whose holder cannot be checked (another machine or container) is honoured.
/// A deploy is bounded by its timeouts (the build's is an hour); this is well beyond.
pub const MAX_HOLD: Duration = Duration::from_secs(6 * 3600);

/// The image the marker containers are created from.
const MARKER_IMAGE: &str = "tgbot-deploy-lock:marker";

/// The label holding the holder, as JSON.
const HOLDER_LABEL: &str = "tgbot.deploy-lock.holder";

/// How long one Docker command of the lock may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// Who holds the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The task, e.g. "prod-full-update".
    pub task: String,
    /// Who ran it.
    pub operator: String,
    /// Its process id.
    pub pid: u32,
    /// The machine's host name (a container's is its id).
    #[serde(default)]
    pub host: String,
    /// Since when (UTC).
    pub since: String,
    /// The checkout it runs from.
    #[serde(default)]
    pub checkout: String,
    /// Since when, in seconds since the epoch (for [`MAX_HOLD`]).
    #[serde(default)]
    pub since_unix: u64,
    /// The kernel's boot id: with `pid_namespace`, whether `pid` means the same process here.
    #[serde(default)]
    pub boot_id: String,
    /// The pid namespace (`/proc/self/ns/pid`).
    #[serde(default)]
    pub pid_namespace: String,
    /// When the process started (clock ticks after boot), so a reused pid is not taken for it.
    #[serde(default)]
    pub process_start: Option<u64>,
}

/// Whether a holder still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// It runs (checked on this machine).
    Alive,
    /// It is gone, for the reason given; its lock is free.
    Dead(String),
    /// It runs elsewhere (another machine or container) and cannot be checked from here.
    Elsewhere,
}

/// A lock found on the engine, for `status`.
#[derive(Debug, Clone)]
pub struct Held {
    /// Who took it.
    pub holder: Holder,
    /// Whether it still runs.
    pub liveness: Liveness,
    /// The marker container's name.
    pub marker: String,
}

/// This process's place: what a holder is compared with.
#[derive(Debug, Clone)]
pub struct Here {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// `/proc/self/ns/pid`.
    pub pid_namespace: String,
    /// Seconds since the epoch.
    pub now_unix: u64,
}

impl Here {
    /// Where this process runs.
    pub fn now() -> Here {
        Here {
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid_namespace: std::fs::read_link("/proc/self/ns/pid")
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            now_unix: crate::clock::unix_ms() / 1000,
        }
    }
}

/// A held deploy lock; released when dropped (or when the process dies).
pub struct DeployLock {
    /// The marker container's id, removed on drop.
    marker: String,
    _file: File,
}

/// Who is running this, for the history and the lock's holder: git's `user.name` in this
/// checkout (who commits is who deploys, also in CI), else `$USER` or `$LOGNAME`, else the
/// user id.
pub fn operator() -> String {
    static OPERATOR: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        git_user_name()
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
            .or_else(|| std::env::var("LOGNAME").ok().filter(|u| !u.is_empty()))
            // SAFETY: getuid has no preconditions and touches no memory of ours.
            .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }))
    });
    OPERATOR.clone()
}

/// `git config user.name` in the project's checkout, when git runs and one is set.
fn git_user_name() -> Option<String> {
    let out = process::output(
        process::Argv::new("git", ["config", "--get", "user.name"]).dir(&crate::project::root()),
    )
    .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !name.is_empty()).then_some(name)
}

impl Holder {
    /// This process, running `task` since `since`.
    pub fn me(task: &str, since: &str) -> Holder {
        let (pid, here) = (std::process::id(), Here::now());
        Holder {
            task: task.to_owned(),
            operator: operator(),
            pid,
            host: host_name(),
            since: since.to_owned(),
            checkout: crate::project::root().display().to_string(),
            since_unix: here.now_unix,
            boot_id: here.boot_id,
            pid_namespace: here.pid_namespace,
            process_start: process_start(pid).ok().flatten(),
        }
    }

    /// `prod-full-update by alice (pid 42 on host web1, checkout /srv/tgbot) since 2026...Z`.
    pub fn describe(&self) -> String {
        let mut at = format!("pid {}", self.pid);
        if !self.host.is_empty() {
            at.push_str(&format!(" on host {}", self.host));
        }
        if !self.checkout.is_empty() {
            at.push_str(&format!(", checkout {}", self.checkout));
        }
        let (task, operator) = (&self.task, &self.operator);
        format!("{task} by {operator} ({at}) since {}", self.since)
    }

    /// Whether the holder still runs, seen from `here`. Only a process in the same process table
    /// (same boot, same pid namespace) can be looked up; its pid and start time must both match,
    /// so a pid the kernel gave to another program since counts as gone. A holder elsewhere is
    /// taken as running until [`MAX_HOLD`] after it started.
    pub fn liveness(&self, here: &Here) -> Liveness {
        let same_table = !self.boot_id.is_empty()
            && !self.pid_namespace.is_empty()
            && self.boot_id == here.boot_id
            && self.pid_namespace == here.pid_namespace;
        if same_table {
            return match process_start(self.pid) {
                Ok(None) => Liveness::Dead(format!("process {} is gone", self.pid)),
                Ok(Some(start)) if self.process_start.is_some_and(|s| s != start) => {
                    Liveness::Dead(format!(
                        "process {} is gone (its pid belongs to another program now)",
                        self.pid
                    ))
                }
                // Running, or unreadable (another user's, with /proc hidden): taken as running.
                Ok(Some(_)) | Err(()) => Liveness::Alive,
            };
        }
        if self.since_unix > 0 && here.now_unix.saturating_sub(self.since_unix) > MAX_HOLD.as_secs()
        {
            return Liveness::Dead(format!(
                "it was taken more than {} hours ago on another machine or container, longer than any deploy takes",
                MAX_HOLD.as_secs() / 3600
            ));
        }
        Liveness::Elsewhere
    }
}

impl DeployLock {
    /// Takes the lock of `project` on the Docker engine `sh` reaches, for `task`, or fails at
    /// once (exit 5) naming the holder. `_dir` (the project's backup folder) plays no part: see
    /// the module's documentation.
    pub fn acquire(
        sh: &Shell,
        project: &str,
        _dir: &Path,
        task: &str,
        since: &str,
    ) -> anyhow::Result<DeployLock> {
        let engine = engine_id(sh)?;
        let holder = Holder::me(task, since);
        let _file = lock_file(&lock_dir()?, &engine, project, &holder)?;
        let marker = take_marker(sh, project, &holder, &Here::now())?;
        Ok(DeployLock { marker, _file })
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        // The marker goes first (by id: it is ours), then the file lock with the file.
        remove_container(&self.marker);
    }
}

/// The lock of `project` on the engine `sh` reaches, if any (for `status`).
pub fn held(sh: &Shell, project: &str) -> anyhow::Result<Option<Held>> {
    let name = marker_name(project);
    Ok(inspect_marker(sh, &name)?.map(|(_, holder)| Held {
        liveness: holder.liveness(&Here::now()),
        holder,
        marker: name,
    }))
}

/// The refusal: who holds the lock and what to do.
fn refusal(holder: &Holder, liveness: &Liveness, marker: &str) -> anyhow::Error {
    let who = holder.describe();
    let mut message = format!("another deploy of this project is running: {who}");
    if *liveness == Liveness::Elsewhere {
        message.push_str(&format!(
            ", on another machine or in another container (this one cannot check whether it still runs); wait for it to finish, then retry. If it is gone for good, remove its lock with `docker rm -f {marker}`; a lock older than {} hours is taken over by the next deploy",
            MAX_HOLD.as_secs() / 3600
        ));
    } else {
        message.push_str("; wait for it to finish (`cargo xtask status` shows it), then retry");
    }
    exit::locked(message)
}

// ---- the file lock ----

/// The folder of the file locks: `$HOME/.local/state/tgbot/locks`, else a private folder in the
/// temporary directory.
fn lock_dir() -> anyhow::Result<PathBuf> {
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    let home = std::env::var_os("HOME");
    let preferred = lock_dir_for(home.as_deref().map(Path::new), uid);
    if std::fs::create_dir_all(&preferred).is_ok() {
        return Ok(preferred);
    }
    let fallback = lock_dir_for(None, uid);
    private_dir(&fallback, uid)?;
    Ok(fallback)
}

/// Where the file locks are for a given `HOME` and user id.
fn lock_dir_for(home: Option<&Path>, uid: u32) -> PathBuf {
    match home.filter(|h| h.is_absolute()) {
        Some(home) => home.join(".local/state/tgbot/locks"),
        None => std::env::temp_dir().join(format!("tgbot-locks-{uid}")),
    }
}

/// Creates `dir` readable by its owner only and checks it is a folder of ours (not a link
/// someone else put in a shared temporary directory).
fn private_dir(dir: &Path, uid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot create the lock folder {}", dir.display()))?;
    anyhow::ensure!(
        meta.is_dir() && meta.uid() == uid,
        "the lock folder {} is not a folder of this user's; remove it",
        dir.display()
    );
    Ok(())
}

/// A file name for the engine's id (`ABCD:EFGH:...` or a UUID).
fn engine_key(engine: &str) -> String {
    let key: String = engine
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if key.is_empty() { "engine".into() } else { key }
}

/// Takes the file lock `<dir>/<engine>/<project>.lock` and writes `holder` into it, or fails
/// naming the holder the file names.
fn lock_file(dir: &Path, engine: &str, project: &str, holder: &Holder) -> anyhow::Result<File> {
    let dir = dir.join(engine_key(engine));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{project}.lock"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the deploy lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(match serde_json::from_str::<Holder>(&text) {
                Ok(other) => refusal(&other, &Liveness::Alive, &marker_name(project)),
                Err(_) => exit::locked(format!(
                    "another deploy of this project is running (it holds {}); wait for it to finish, then retry",
                    path.display()
                )),
            });
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.write_all_at(serde_json::to_string(holder)?.as_bytes(), 0)?;
    Ok(file)
}

// ---- the marker on the engine ----

/// The marker container's name: unique on the engine, apart from Compose's `<project>_bot_1`
/// and `<project>-bot-1`.
fn marker_name(project: &str) -> String {
    format!("{project}-deploy-lock")
}

/// The engine's id; when the engine cannot be reached, the error says how to start it (exit 4).
fn engine_id(sh: &Shell) -> anyhow::Result<String> {
    let format = "{{.ID}}";
    let read = cmd!(sh, "docker info --format {format}");
    process::run_within(read, "reading the Docker engine's id", DOCKER_TIMEOUT)
        .map(|out| out.stdout.trim().to_owned())
        .or_else(|e| {
            crate::docker::check_daemon(sh)?;
            Err(e)
        })
}

/// Creates the marker for `holder`, removing a dead holder's; returns its container id.
fn take_marker(sh: &Shell, project: &str, holder: &Holder, here: &Here) -> anyhow::Result<String> {
    let name = marker_name(project);
    let label = format!("{HOLDER_LABEL}={}", serde_json::to_string(holder)?);
    let project_label = format!("tgbot.deploy-lock.project={project}");
    let mut imported = false;
    for _ in 0..4 {
        let create = cmd!(
            sh,
            "docker create --name {name} --label {label} --label {project_label} {MARKER_IMAGE} deploy-lock"
        );
        let what = "creating the deploy lock on the Docker engine";
        let error = match process::run_within(create, what, DOCKER_TIMEOUT) {
            Ok(out) => return Ok(out.stdout.trim().to_owned()),
            Err(e) => e,
        };
        match inspect_marker(sh, &name)? {
            Some((id, other)) => match other.liveness(here) {
                Liveness::Dead(why) => {
                    eprintln!(
                        "the deploy lock {name} was left by {}: {why}; taking it over",
                        other.describe()
                    );
                    remove_container(&id);
                }
                liveness => return Err(refusal(&other, &liveness, &name)),
            },
            // No marker, so the image was missing: make it once, then try again.
            None if !imported => {
                import_marker_image(sh)?;
                imported = true;
            }
            None => return Err(error),
        }
    }
    let message = format!("the deploy lock {name} keeps changing hands; retry in a moment");
    Err(exit::locked(message))
}

/// The marker's container id and holder, or None when there is no container of that name.
fn inspect_marker(sh: &Shell, name: &str) -> anyhow::Result<Option<(String, Holder)>> {
    let inspect = cmd!(sh, "docker container inspect {name}");
    let what = "reading the deploy lock on the Docker engine";
    let out = match process::run_within(inspect, what, DOCKER_TIMEOUT) {
        Ok(out) => out,
        Err(e) if format!("{e:#}").contains("No such") => return Ok(None),
        Err(e) => return Err(e),
    };
    let value: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("docker container inspect {name} printed no JSON"))?;
    let id = value[0]["Id"].as_str().unwrap_or_default().to_owned();
    match value[0]["Config"]["Labels"][HOLDER_LABEL]
        .as_str()
        .and_then(|text| serde_json::from_str::<Holder>(text).ok())
    {
        Some(holder) => Ok(Some((id, holder))),
        None => Err(exit::locked(format!(
            "a container named {name} exists and is not a deploy lock of this tool, so no deploy of this project can take the lock; rename or remove it (`docker rm -f {name}`)"
        ))),
    }
}

/// Makes the marker's empty image from an empty tar archive (nothing is pulled).
fn import_marker_image(sh: &Shell) -> anyhow::Result<()> {
    let tar = std::env::temp_dir().join(format!("tgbot-lock-{}.tar", std::process::id()));
    std::fs::write(&tar, [0u8; 1024]).with_context(|| format!("cannot write {}", tar.display()))?;
    let import = cmd!(sh, "docker import {tar} {MARKER_IMAGE}");
    let what = "making the deploy lock's empty image";
    let result = process::run_within(import, what, DOCKER_TIMEOUT);
    let _ = std::fs::remove_file(&tar);
    result.map(drop)
}

/// Removes a container by id, within [`DOCKER_TIMEOUT`]; a failure is only reported.
fn remove_container(id: &str) {
    let Ok(removing) = process::Argv::new("docker", ["rm", "-f", id]).start() else {
        eprintln!("warning: could not remove the deploy lock {id}");
        return;
    };
    let removed = removing.wait_within("removing the deploy lock", DOCKER_TIMEOUT);
    if removed.is_err() {
        eprintln!("warning: the deploy lock {id} was not removed; the next deploy removes it");
    }
}

// ---- this process ----

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn host_name() -> String {
    Some(read_trimmed("/proc/sys/kernel/hostname"))
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into()))
}

/// When process `pid` started (field 22 of `/proc/<pid>/stat`): `Ok(None)` when there is no such
/// process, `Err(())` when it cannot be told.
fn process_start(pid: u32) -> Result<Option<u64>, ()> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => Ok(parse_start(&stat)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    }
}

/// The start time in a `/proc/<pid>/stat` line; the command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
fn parse_start(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_dir;

    /// The history names who deployed: git's user in this checkout, or the login, never
    /// "unknown".
    #[test]
    fn the_operator_is_named() {
        let operator = operator();
        assert!(
            !operator.is_empty() && operator != "unknown",
            "{operator:?}"
        );
        match git_user_name() {
            Some(name) => assert_eq!(operator, name),
            None => assert!(
                operator.starts_with("uid ")
                    || std::env::var("USER").is_ok()
                    || std::env::var("LOGNAME").is_ok()
            ),
        }
    }

    #[test]
    fn the_lock_file_depends_on_the_engine_and_the_project_not_the_backup_folder() {
        assert_eq!(
            lock_dir_for(Some(Path::new("/root")), 0),
            Path::new("/root/.local/state/tgbot/locks")
        );
        let fallback = std::env::temp_dir().join("tgbot-locks-7");
        assert_eq!(lock_dir_for(Some(Path::new("relative")), 7), fallback);
        assert_eq!(lock_dir_for(None, 7), fallback);
        assert_eq!(engine_key("DF3D:TJJZ:RW3C:6X6I"), "DF3D-TJJZ-RW3C-6X6I");
        assert_eq!(engine_key("../x"), "---x");
        assert_eq!(engine_key(""), "engine");
        assert_eq!(marker_name("docker"), "docker-deploy-lock");
    }

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_a_released_lock_is_free() {
        let dir = temp_dir("lock-file");
        let first = Holder::me("prod-full-update", "20261125T070000Z");
        let held = lock_file(&dir, "E:1", "p", &first).unwrap();
        let second = Holder::me("prod-migrate", "T");
        let error = lock_file(&dir, "E:1", "p", &second).err().unwrap();
        assert_eq!(exit::code_of(&error), exit::ExitCode::Locked);
        let message = error.to_string();
        for part in [
            "another deploy of this project is running: prod-full-update by",
            &format!("(pid {} on host ", std::process::id()),
            "since 20261125T070000Z",
        ] {
            assert!(message.contains(part), "{message}");
        }
        // Another engine or another project is another lock.
        drop(lock_file(&dir, "E:2", "p", &first).unwrap());
        drop(lock_file(&dir, "E:1", "q", &first).unwrap());
        drop(held);
        lock_file(&dir, "E:1", "p", &first).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_lock_whose_holder_died_is_free() {
        let dir = temp_dir("lock-dead");
        std::fs::create_dir_all(dir.join("E")).unwrap();
        let file = dir.join("E").join("p.lock");
        // Another process takes the same operating-system lock, then is killed with SIGKILL.
        let mut holder = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\ntime.sleep(60)",
            ])
            .arg(&file)
            .spawn()
            .expect("python3 runs");
        let me = Holder::me("prod-migrate", "T");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let error = loop {
            match lock_file(&dir, "E", "p", &me) {
                Err(e) => break e,
                Ok(lock) => drop(lock),
            }
            let waiting = std::time::Instant::now() < deadline;
            assert!(waiting, "the other process never took the lock");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(exit::code_of(&error), exit::ExitCode::Locked);
        holder.kill().unwrap();
        holder.wait().unwrap();
        lock_file(&dir, "E", "p", &me).expect("the dead holder's lock is free");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_holder_on_this_machine_is_alive_only_while_its_process_runs() {
        let here = Here::now();
        let me = Holder::me("prod-full-update", "T");
        assert!(me.process_start.is_some(), "{me:?}");
        assert_eq!(me.liveness(&here), Liveness::Alive);

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let started = process_start(pid).unwrap();
        child.wait().unwrap();
        let mut gone = me.clone();
        (gone.pid, gone.process_start) = (pid, started);
        assert!(
            matches!(gone.liveness(&here), Liveness::Dead(ref why) if why.contains("is gone")),
            "{:?}",
            gone.liveness(&here)
        );

        let mut reused = me.clone();
        reused.process_start = me.process_start.map(|s| s + 1);
        assert!(matches!(reused.liveness(&here), Liveness::Dead(_)));
    }

    #[test]
    fn a_holder_elsewhere_is_honoured_until_max_hold() {
        let here = Here::now();
        let mut elsewhere = Holder::me("prod-full-update", "T");
        let mut other_container = elsewhere.clone();
        (elsewhere.boot_id, elsewhere.pid) = ("another-machine".into(), 1);
        assert_eq!(elsewhere.liveness(&here), Liveness::Elsewhere);
        other_container.pid_namespace = "pid:[1]".into();
        assert_eq!(other_container.liveness(&here), Liveness::Elsewhere);
        let mut old = elsewhere.clone();
        old.since_unix = here.now_unix - MAX_HOLD.as_secs() - 1;
        assert!(matches!(old.liveness(&here), Liveness::Dead(_)));
        let message = refusal(&elsewhere, &Liveness::Elsewhere, "p-deploy-lock").to_string();
        assert!(
            message.contains("another deploy of this project is running: prod-full-update by"),
            "{message}"
        );
        assert!(message.contains("docker rm -f p-deploy-lock"), "{message}");
    }

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start(stat), Some(987_654));
        assert_eq!(parse_start("garbage"), None);
    }
}
