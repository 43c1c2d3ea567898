//! Docker Compose, v1 (`docker-compose`) or v2 and later (`docker compose`), found at run time,
//! and the project's stack as the deploy sees it.

use std::path::PathBuf;

use anyhow::Context;
use xshell::{Cmd, Shell, cmd};

use crate::docker::{self, ContainerState};
use crate::exit;
use crate::process;
use crate::project;

/// Which Compose this machine has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavour {
    /// The Python `docker-compose` 1.x.
    V1(String),
    /// The `docker compose` plugin, 2.x or later.
    Plugin(String),
}

impl Flavour {
    /// Finds Compose: the plugin first, then `docker-compose`.
    pub fn detect(sh: &Shell) -> anyhow::Result<Flavour> {
        if let Ok(out) = cmd!(sh, "docker compose version --short")
            .quiet()
            .ignore_status()
            .output()
            && out.status.success()
        {
            return Ok(Flavour::Plugin(
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            ));
        }
        if let Ok(out) = cmd!(sh, "docker-compose version --short")
            .quiet()
            .ignore_status()
            .output()
            && out.status.success()
        {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            // docker-compose 2.x installed as a standalone binary is the plugin's code.
            return Ok(if version.starts_with("1.") {
                Flavour::V1(version)
            } else {
                Flavour::Plugin(version)
            });
        }
        Err(exit::not_ready(
            "Docker Compose is missing: neither `docker compose` nor `docker-compose` runs; install the compose plugin (https://docs.docker.com/compose/install/)",
        ))
    }

    /// For reports: "docker-compose 1.29.2" or "docker compose 2.27.0".
    pub fn describe(&self) -> String {
        match self {
            Flavour::V1(v) => format!("docker-compose {v}"),
            Flavour::Plugin(v) => format!("docker compose {v}"),
        }
    }
}

/// The bot's stack for one Compose project.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The Compose in use.
    pub flavour: Flavour,
    /// The project name.
    pub project: String,
    /// Whether the stand-in runs instead of Telegram.
    pub demo: bool,
    /// The bot's image tag.
    pub bot_image: String,
    /// The stand-in's image tag.
    pub standin_image: String,
    /// The env file the bot reads: `.env`, or `docker/demo.env` in demo runs.
    pub env_file: PathBuf,
    compose_file: PathBuf,
}

impl Stack {
    /// Finds Compose and names everything for `project`.
    pub fn new(sh: &Shell, project: &str, demo: bool) -> anyhow::Result<Stack> {
        let root = project::root();
        Ok(Stack {
            flavour: Flavour::detect(sh)?,
            project: project.to_owned(),
            demo,
            bot_image: format!("tgbot-bot:{project}"),
            standin_image: format!("tgbot-standin:{project}"),
            env_file: if demo {
                root.join("docker/demo.env")
            } else {
                root.join(".env")
            },
            compose_file: root.join("docker/docker-compose.prod.yml"),
        })
    }

    /// The named volume holding the database.
    pub fn volume(&self) -> String {
        format!("{}_bot-data", self.project)
    }

    /// A compose command with the project, file, profile and image variables set.
    pub fn cmd<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        let file = &self.compose_file;
        let project = &self.project;
        let base = match self.flavour {
            Flavour::V1(_) => cmd!(sh, "docker-compose"),
            Flavour::Plugin(_) => cmd!(sh, "docker compose"),
        };
        let mut c = base.args(["-f"]).arg(file).args(["-p", project]);
        if self.demo {
            c = c.args(["--profile", "demo"]);
        }
        c.env("BOT_IMAGE", &self.bot_image)
            .env("STANDIN_IMAGE", &self.standin_image)
            .env("BOT_ENV_FILE", &self.env_file)
    }

    /// The bot service's container (running or not), if there is one.
    pub fn bot_container(&self, sh: &Shell) -> anyhow::Result<Option<ContainerState>> {
        let project_label = format!("label=com.docker.compose.project={}", self.project);
        let out = process::run(
            cmd!(
                sh,
                "docker ps -a -q --no-trunc --filter {project_label} --filter label=com.docker.compose.service=bot --filter label=com.docker.compose.oneoff=False"
            ),
            "listing the bot's container",
        )?;
        match out.stdout.lines().next() {
            Some(id) => docker::inspect(sh, id.trim()).map(Some),
            None => Ok(None),
        }
    }

    /// Creates or updates and starts the services (the stand-in too in demo runs).
    pub fn up(&self, sh: &Shell) -> anyhow::Result<()> {
        process::run(self.up_cmd(sh), "starting the stack").map(drop)
    }

    /// The `up -d` command for the bot (and the stand-in in demo runs).
    pub fn up_cmd<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        let mut services = vec!["bot"];
        if self.demo {
            services.push("telegram-standin");
        }
        self.cmd(sh).args(["up", "-d"]).args(services)
    }

    /// The services' logs (`-f` follows), straight to this terminal.
    pub fn logs(&self, sh: &Shell, follow: bool, tail: usize) -> anyhow::Result<()> {
        let tail = tail.to_string();
        let mut c = self.cmd(sh).args(["logs", "--tail", &tail]);
        if follow {
            c = c.arg("-f");
        }
        c.arg("bot").run().map_err(Into::into)
    }

    /// Stops and removes the containers and network; the volume is never removed.
    pub fn down(&self, sh: &Shell) -> anyhow::Result<()> {
        process::run(
            self.cmd(sh).args(["down", "--remove-orphans"]),
            "stopping the stack",
        )
        .map(drop)
    }

    /// Sends `text` as a user through the stand-in and returns the bot's answers.
    pub fn chat(&self, sh: &Shell, text: &str, user: i64, wait_ms: u64) -> anyhow::Result<String> {
        let user = user.to_string();
        let wait = wait_ms.to_string();
        let out = process::run(
            self.cmd(sh).args([
                "exec",
                "-T",
                "telegram-standin",
                "/telegram-standin",
                "chat",
                "--user",
                &user,
                "--wait-ms",
                &wait,
                text,
            ]),
            "talking to the bot through the stand-in",
        )
        .context("is the demo stack up? (`cargo xtask first-deploy --demo`)")?;
        Ok(out.stdout)
    }
}
