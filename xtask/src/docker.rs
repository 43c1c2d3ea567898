//! The Docker engine: reachable or not, images, containers.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use xshell::{Cmd, Shell, cmd};

use crate::exit;
use crate::process;

/// Checks the daemon answers; the error says how to start it.
pub fn check_daemon(sh: &Shell) -> anyhow::Result<String> {
    let format = "{{.Server.Version}}";
    match process::output(cmd!(sh, "docker version --format {format}")) {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        Ok(out) => Err(exit::not_ready(format!(
            "the Docker daemon is not reachable: {}\nStart it (`sudo systemctl start docker`), or point DOCKER_HOST / `docker context use` at a running engine",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(exit::not_ready(format!(
            "the Docker daemon does not answer: {e}\nCheck that it runs (`sudo systemctl status docker`), and for an ssh:// engine that the server is reachable"
        ))),
        Err(e) => Err(exit::not_ready(format!(
            "the docker command is missing ({e}); install Docker Engine (https://docs.docker.com/engine/install/)"
        ))),
    }
}

/// The id of an image, or None when there is no such image.
pub fn image_id(sh: &Shell, image: &str) -> anyhow::Result<Option<String>> {
    image_inspect(sh, image, "{{.Id}}")
}

/// What `docker image inspect --format <format>` prints for an image, or None when there is no
/// such image.
pub fn image_inspect(sh: &Shell, image: &str, format: &str) -> anyhow::Result<Option<String>> {
    let out = process::output(cmd!(sh, "docker image inspect --format {format} {image}"))?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// What a container is doing.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(test, derive(Default))]
pub struct ContainerState {
    /// Its id.
    pub id: String,
    /// The image id it runs.
    pub image_id: String,
    /// running, exited, restarting, created...
    pub status: String,
    /// healthy, unhealthy, starting (None without a health check).
    pub health: Option<String>,
    /// The last health check's output.
    pub health_output: Option<String>,
    /// When it last started.
    pub started_at: String,
    /// Times Docker restarted it.
    pub restart_count: u64,
    /// Its last exit code.
    pub exit_code: i64,
    /// Its name, without the leading `/`.
    pub name: String,
    /// The image as the container was created from it (a tag or an id).
    pub config_image: String,
    /// Its labels (the image's and its own).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its bind mounts and volumes (tmpfs left out).
    pub mounts: Vec<Mount>,
}

/// A bind mount or volume of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it appears inside the container.
    pub destination: String,
    /// What `--mount` needs for it: `type=bind,src=/host/path` or `type=volume,src=name`.
    pub source: MountSource,
}

/// Where a mount's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A path on the engine's machine.
    Bind(String),
    /// A named (or anonymous) volume.
    Volume(String),
}

impl Mount {
    /// The `--mount` value that shows the same files at `destination`, read-only. Docker reads
    /// the value as CSV, so a field with a comma or a quote is quoted.
    pub fn read_only_at(&self, destination: &str) -> String {
        let (kind, source) = match &self.source {
            MountSource::Bind(path) => ("bind", path),
            MountSource::Volume(name) => ("volume", name),
        };
        let (src, dst) = (format!("src={source}"), format!("dst={destination}"));
        format!(
            "type={kind},{},{},readonly",
            csv_field(&src),
            csv_field(&dst)
        )
    }
}

/// One CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

impl ContainerState {
    /// Whether this container is one of ours: its image carries our label, or (made before the
    /// label existed) it runs a `tgbot-bot:` image with our volume at `/data`. A tag alone is
    /// not enough: anyone can name an image `tgbot-bot:...`.
    pub fn is_ours(&self) -> bool {
        self.labels.contains_key(OUR_LABEL)
            || (self.config_image.starts_with("tgbot-bot:")
                && self.mounts.iter().any(|m| {
                    m.destination == "/data"
                        && matches!(&m.source, MountSource::Volume(v) if v.ends_with("_bot-data"))
                }))
    }

    /// Whether it is running (or restarting).
    pub fn is_running(&self) -> bool {
        self.status == "running" || self.status == "restarting"
    }
}

/// The label our bot image carries (set in `docker/Dockerfile`).
pub const OUR_LABEL: &str = "org.tgbot.image";

/// Inspects one container.
pub fn inspect(sh: &Shell, id: &str) -> anyhow::Result<ContainerState> {
    let out = process::run(
        cmd!(sh, "docker container inspect {id}"),
        "inspecting the bot's container",
    )?;
    let all: Value = serde_json::from_str(&out.stdout).context("docker inspect printed no JSON")?;
    let c = &all[0];
    let health = &c["State"]["Health"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Ok(ContainerState {
        id: c["Id"].as_str().unwrap_or(id).to_owned(),
        image_id: text(&c["Image"]),
        status: text(&c["State"]["Status"]),
        health: health["Status"].as_str().map(str::to_owned),
        health_output: health["Log"]
            .as_array()
            .and_then(|log| log.last())
            .and_then(|last| last["Output"].as_str())
            .map(|s| s.trim().to_owned()),
        started_at: text(&c["State"]["StartedAt"]),
        restart_count: c["RestartCount"].as_u64().unwrap_or(0),
        exit_code: c["State"]["ExitCode"].as_i64().unwrap_or(0),
        name: text(&c["Name"]).trim_start_matches('/').to_owned(),
        config_image: text(&c["Config"]["Image"]),
        labels: c["Config"]["Labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect(),
        mounts: c["Mounts"]
            .as_array()
            .map(|mounts| mounts.iter().filter_map(mount).collect())
            .unwrap_or_default(),
    })
}

fn mount(m: &Value) -> Option<Mount> {
    let destination = m["Destination"].as_str()?.to_owned();
    let source = match m["Type"].as_str()? {
        "bind" => MountSource::Bind(m["Source"].as_str()?.to_owned()),
        "volume" => MountSource::Volume(m["Name"].as_str()?.to_owned()),
        _ => return None,
    };
    Some(Mount {
        destination,
        source,
    })
}

/// The last lines a container logged.
pub fn logs_tail(sh: &Shell, id: &str, lines: usize) -> String {
    let lines = lines.to_string();
    let Ok(out) = process::output(cmd!(sh, "docker logs --tail {lines} {id}")) else {
        return String::new();
    };
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    process::tail(&format!("{stdout}{stderr}"), usize::MAX)
}

/// A created container that tasks use once and throw away: files copied in, started to the
/// end, files copied out. It is removed, with its anonymous volumes, when dropped, whatever
/// the work in between returned. (A run killed meanwhile leaves it; its labels let the next
/// run find it.)
pub struct Throwaway<'a> {
    sh: &'a Shell,
    /// Its id.
    pub id: String,
}

impl<'a> Throwaway<'a> {
    /// Creates it with `create` (a `docker create` command); `what` names it in errors.
    pub fn create(sh: &'a Shell, create: Cmd<'_>, what: &str) -> anyhow::Result<Throwaway<'a>> {
        let id = process::run(create, what)?.stdout.trim().to_owned();
        Ok(Throwaway { sh, id })
    }

    /// Copies `from` on this machine to `to` inside it, within `limit`.
    pub fn copy_in(
        &self,
        from: &Path,
        to: &str,
        what: &str,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let (sh, target) = (self.sh, format!("{}:{to}", self.id));
        process::run_within(cmd!(sh, "docker cp {from} {target}"), what, limit).map(drop)
    }

    /// Starts it and waits for its end within `limit`: what it printed.
    pub fn run(&self, what: &str, limit: Duration) -> anyhow::Result<process::Finished> {
        process::run_within(start_argv(&self.id, false), what, limit)
    }
}

/// `docker start` for a created container `id`, attached, and with its stdin when `stdin`
/// (a migration container that waits for `go`): what the tasks run, and what a dry run shows.
pub fn start_argv(id: &str, stdin: bool) -> process::Argv {
    let attach = if stdin { "-ai" } else { "-a" };
    process::Argv::new("docker", ["start", attach, id])
}

impl Drop for Throwaway<'_> {
    fn drop(&mut self) {
        let (sh, id) = (self.sh, &self.id);
        let _ = process::output(cmd!(sh, "docker rm -f -v {id}"));
    }
}
