//! The Docker engine: reachable or not, images, containers.

use anyhow::Context;
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::exit;
use crate::process;

/// Checks the daemon answers; the error says how to start it.
pub fn check_daemon(sh: &Shell) -> anyhow::Result<String> {
    let format = "{{.Server.Version}}";
    let output = cmd!(sh, "docker version --format {format}")
        .quiet()
        .ignore_status()
        .output();
    match output {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        Ok(out) => Err(exit::not_ready(format!(
            "the Docker daemon is not reachable: {}\nStart it (`sudo systemctl start docker`), or point DOCKER_HOST / `docker context use` at a running engine",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) => Err(exit::not_ready(format!(
            "the docker command is missing ({e}); install Docker Engine (https://docs.docker.com/engine/install/)"
        ))),
    }
}

/// The id of an image, or None when there is no such image.
pub fn image_id(sh: &Shell, image: &str) -> anyhow::Result<Option<String>> {
    let format = "{{.Id}}";
    let out = cmd!(sh, "docker image inspect --format {format} {image}")
        .quiet()
        .ignore_status()
        .output()?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// What a container is doing.
#[derive(Debug, Clone, PartialEq)]
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
}

/// Inspects one container.
pub fn inspect(sh: &Shell, id: &str) -> anyhow::Result<ContainerState> {
    let out = process::run(
        cmd!(sh, "docker container inspect {id}"),
        "inspecting the bot's container",
    )?;
    let all: Value = serde_json::from_str(&out.stdout).context("docker inspect printed no JSON")?;
    let c = &all[0];
    let health = &c["State"]["Health"];
    Ok(ContainerState {
        id: c["Id"].as_str().unwrap_or(id).to_owned(),
        image_id: c["Image"].as_str().unwrap_or_default().to_owned(),
        status: c["State"]["Status"].as_str().unwrap_or_default().to_owned(),
        health: health["Status"].as_str().map(str::to_owned),
        health_output: health["Log"]
            .as_array()
            .and_then(|log| log.last())
            .and_then(|last| last["Output"].as_str())
            .map(|s| s.trim().to_owned()),
        started_at: c["State"]["StartedAt"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        restart_count: c["RestartCount"].as_u64().unwrap_or(0),
        exit_code: c["State"]["ExitCode"].as_i64().unwrap_or(0),
    })
}

/// The last lines a container logged.
pub fn logs_tail(sh: &Shell, id: &str, lines: usize) -> String {
    let lines = lines.to_string();
    cmd!(sh, "docker logs --tail {lines} {id}")
        .quiet()
        .ignore_status()
        .output()
        .map(|out| {
            process::tail(
                &format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                usize::MAX,
            )
        })
        .unwrap_or_default()
}
