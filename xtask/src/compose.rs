//! Docker Compose, v1 (`docker-compose`) or v2 and later (`docker compose`), found at run time,
//! and the project's stack as the deploy sees it. The values of the environment file the stack
//! hands to Compose are registered to be scrubbed (see [`crate::secrets`]) before any command
//! of the stack runs.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};
use xshell::{Cmd, Shell, cmd};

use crate::docker::{self, ContainerState};
use crate::exit;
use crate::process;
use crate::project;
use crate::secrets;

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
        let version = |c: Cmd<'_>| {
            crate::process::output(c)
                .ok()
                .filter(|out| out.status.success())
                .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        Flavour::from_versions(
            version(cmd!(sh, "docker compose version --short")).as_deref(),
            version(cmd!(sh, "docker-compose version --short")).as_deref(),
        )
        .ok_or_else(|| {
            exit::not_ready(
                "Docker Compose is missing: neither `docker compose` nor `docker-compose` runs; install the compose plugin (https://docs.docker.com/compose/install/)",
            )
        })
    }

    /// The flavour from what `docker compose version --short` and `docker-compose version
    /// --short` printed (None where the command failed).
    fn from_versions(plugin: Option<&str>, standalone: Option<&str>) -> Option<Flavour> {
        let clean = |v: &str| v.trim().trim_start_matches('v').to_owned();
        if let Some(version) = plugin.filter(|v| !v.trim().is_empty()) {
            return Some(Flavour::Plugin(clean(version)));
        }
        let version = clean(standalone.filter(|v| !v.trim().is_empty())?);
        // docker-compose 2.x or later installed as a standalone binary is the plugin's code.
        Some(if version.starts_with("1.") {
            Flavour::V1(version)
        } else {
            Flavour::Plugin(version)
        })
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
        Ok(Stack::with_flavour(Flavour::detect(sh)?, project, demo))
    }

    /// Names everything for `project` with a known Compose.
    pub fn with_flavour(flavour: Flavour, project: &str, demo: bool) -> Stack {
        let root = project::root();
        Stack {
            flavour,
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
        }
    }

    /// The named volume holding the database.
    pub fn volume(&self) -> String {
        format!("{}_bot-data", self.project)
    }

    /// A compose command with the project, file, profile and image variables set.
    pub fn cmd<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        secrets::register_file(&self.env_file);
        let (file, project) = (&self.compose_file, &self.project);
        let profile = ["--profile", "demo"].into_iter().filter(|_| self.demo);
        let c = match self.flavour {
            Flavour::V1(_) => cmd!(sh, "docker-compose -f {file} -p {project} {profile...}"),
            Flavour::Plugin(_) => cmd!(sh, "docker compose -f {file} -p {project} {profile...}"),
        };
        self.compose_vars()
            .into_iter()
            .fold(c, |c, (name, value)| c.env(name, value))
    }

    /// The variables the compose file reads: the images and the environment file.
    fn compose_vars(&self) -> [(&'static str, OsString); 3] {
        [
            ("BOT_IMAGE", self.bot_image.clone().into()),
            ("STANDIN_IMAGE", self.standin_image.clone().into()),
            ("BOT_ENV_FILE", self.env_file.clone().into()),
        ]
    }

    /// The variables [`Stack::cmd`] gives Compose, as a shell would set them before the
    /// command (a dry run shows them so).
    pub fn env_shown(&self) -> String {
        self.compose_vars()
            .map(|(name, value)| format!("{name}={}", value.to_string_lossy()))
            .join(" ")
    }

    /// Writes `docker/.env`, the variables file Compose reads beside the compose file, with this
    /// stack's image tags and environment file: by hand, `docker-compose -f
    /// docker/docker-compose.prod.yml -p <project> run --rm bot db status` then needs no
    /// exported variable. It names the last deployed project's images; the file says so.
    pub fn write_compose_env(&self) -> anyhow::Result<()> {
        let file = self.compose_file.with_file_name(".env");
        let engine = crate::host::Engine::current();
        let env_file = self.env_file.display().to_string();
        // Single quotes keep a `#` or a `$` in a path as it is, for both Composes' parsers; a
        // quote or a backslash they would read differently, so such a path is not written.
        if env_file.contains(['\'', '\\', '\n']) {
            bail!(
                "{} was not written for Compose commands typed by hand: the environment file's path {env_file:?} has a quote or a backslash; by hand, set BOT_ENV_FILE yourself",
                file.display()
            );
        }
        let text = format!(
            "# Written by `cargo xtask` after each deploy, for Compose commands typed by hand:\n\
             # the last deploy was of project {project} on {engine}. For another project, set\n\
             # BOT_IMAGE=tgbot-bot:<that project> (and BOT_ENV_FILE, DOCKER_HOST) on the command line.\n\
             DOCKER_HOST='{host}'\nBOT_IMAGE='{bot}'\nSTANDIN_IMAGE='{standin}'\nBOT_ENV_FILE='{env_file}'\n",
            project = self.project,
            engine = engine.describe(),
            host = engine.address(),
            bot = self.bot_image,
            standin = self.standin_image,
        );
        // Written aside and renamed: a deploy of another project at the same moment leaves one
        // whole file, never a mix of both.
        let aside = file.with_file_name(format!(".env.{}.new", std::process::id()));
        let written = std::fs::write(&aside, text).and_then(|()| std::fs::rename(&aside, &file));
        if written.is_err() {
            let _ = std::fs::remove_file(&aside);
        }
        written.with_context(|| {
            format!(
                "could not write {} for Compose commands typed by hand",
                file.display()
            )
        })
    }

    /// The bot service's container (running or not), if there is one.
    pub fn bot_container(&self, sh: &Shell) -> anyhow::Result<Option<ContainerState>> {
        Ok(self.bot_containers(sh)?.into_iter().next())
    }

    /// The bot service's container that runs (or restarts), if one does: the one to stop
    /// before the database is replaced, whichever others exist.
    pub fn running_bot(&self, sh: &Shell) -> anyhow::Result<Option<ContainerState>> {
        Ok(self
            .bot_containers(sh)?
            .into_iter()
            .find(ContainerState::is_running))
    }

    /// Every container of the bot service (an old app may have been scaled to several).
    pub fn bot_containers(&self, sh: &Shell) -> anyhow::Result<Vec<ContainerState>> {
        secrets::register_file(&self.env_file);
        let filters = self.bot_container_filters();
        let out = process::run(
            cmd!(sh, "docker ps -a -q --no-trunc")
                .args(filters.iter().flat_map(|f| ["--filter", f.as_str()])),
            "listing the bot's container",
        )?;
        out.stdout
            .lines()
            .map(|id| docker::inspect(sh, id.trim()))
            .collect()
    }

    /// How the bot's container is found. Compose v1 names it `<project>_bot_1`, v2 and later
    /// `<project>-bot-1`; both set these labels, so names are never used. `oneoff=False` leaves
    /// out the containers of `run`.
    fn bot_container_filters(&self) -> Vec<String> {
        vec![
            format!("label=com.docker.compose.project={}", self.project),
            "label=com.docker.compose.service=bot".into(),
            "label=com.docker.compose.oneoff=False".into(),
        ]
    }

    /// Creates or updates and starts the services (the stand-in too in demo runs).
    pub fn up(&self, sh: &Shell) -> anyhow::Result<()> {
        process::run(self.up_cmd(sh), "starting the stack").map(drop)
    }

    /// Starts a second container of the bot service with the image the project's tag names,
    /// beside `running` (left as it is): Compose's `up --scale bot=2 --no-recreate`. The
    /// deploy's fast path starts the new bot this way while the old one serves, so that the
    /// container's start is not part of the downtime. Returns the new container.
    pub fn start_beside(
        &self,
        sh: &Shell,
        running: &ContainerState,
    ) -> anyhow::Result<ContainerState> {
        process::run(
            self.beside_cmd(sh),
            "starting the new bot beside the old one",
        )?;
        let mut others: Vec<ContainerState> = self
            .bot_containers(sh)?
            .into_iter()
            .filter(|c| c.id != running.id)
            .collect();
        match others.len() {
            1 => Ok(others.remove(0)),
            n => bail!(
                "Compose left {n} bot containers beside the old one instead of 1: {}",
                others
                    .iter()
                    .map(|c| c.id.get(..12).unwrap_or(&c.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The command of [`Stack::start_beside`].
    pub fn beside_cmd<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        let up = ["up", "-d", "--no-deps", "--no-recreate", "--scale"];
        self.cmd(sh).args(up).args(["bot=2", "bot"])
    }

    /// The `up -d` command for the bot (and the stand-in in demo runs).
    pub fn up_cmd<'a>(&self, sh: &'a Shell) -> Cmd<'a> {
        let standin = self.demo.then_some("telegram-standin");
        self.cmd(sh).args(["up", "-d", "bot"]).args(standin)
    }

    /// The services' logs (`-f` follows), line by line to this terminal, scrubbed.
    pub fn logs(&self, sh: &Shell, follow: bool, tail: usize) -> anyhow::Result<()> {
        let tail = tail.to_string();
        let mut c = self.cmd(sh).args(["logs", "--tail", &tail]);
        if follow {
            c = c.arg("-f");
        }
        process::stream(c.arg("bot"))
    }

    /// Stops and removes the containers and network; the volume is never removed.
    pub fn down(&self, sh: &Shell) -> anyhow::Result<()> {
        process::run(
            self.cmd(sh).args(["down", "--remove-orphans"]),
            "stopping the stack",
        )
        .map(drop)
    }

    /// Runs the stand-in's own client in its container: `telegram-standin <args>`.
    pub fn standin(
        &self,
        sh: &Shell,
        args: &[&str],
        what: &str,
    ) -> anyhow::Result<process::Finished> {
        process::run(
            self.cmd(sh)
                .args(["exec", "-T", "telegram-standin", "/telegram-standin"])
                .args(args),
            what,
        )
        .context("is the demo stack up? (`cargo xtask first-deploy --demo`)")
    }

    /// Sends `text` as a user through the stand-in and returns the bot's answers.
    pub fn chat(&self, sh: &Shell, text: &str, user: i64, wait_ms: u64) -> anyhow::Result<String> {
        let (user, wait) = (user.to_string(), wait_ms.to_string());
        let args = ["chat", "--user", &user, "--wait-ms", &wait, text];
        Ok(self
            .standin(sh, &args, "talking to the bot through the stand-in")?
            .stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flavour_is_told_from_the_version_commands() {
        let plugin = |v: &str| Some(Flavour::Plugin(v.into()));
        let cases = [
            (Some("2.27.0\n"), Some("1.29.2"), plugin("2.27.0")),
            (Some("v2.20.2"), None, plugin("2.20.2")),
            (None, Some("1.29.2\n"), Some(Flavour::V1("1.29.2".into()))),
            (None, Some("2.24.6"), plugin("2.24.6")), // a standalone v2
            (Some("5.0.1"), None, plugin("5.0.1")),   // and later
            (None, None, None),
            (Some(""), Some(""), None),
        ];
        for (plugin, standalone, flavour) in cases {
            let found = Flavour::from_versions(plugin, standalone);
            assert_eq!(found, flavour, "{plugin:?} {standalone:?}");
        }
    }

    #[test]
    fn each_flavour_gets_its_own_command_with_the_same_arguments() {
        let sh = Shell::new().unwrap();
        let v1 = Stack::with_flavour(Flavour::V1("1.29.2".into()), "proj", true);
        let v2 = Stack::with_flavour(Flavour::Plugin("2.27.0".into()), "proj", false);
        let file = project::root().join("docker/docker-compose.prod.yml");
        assert_eq!(
            v1.up_cmd(&sh).to_string(),
            format!(
                "docker-compose -f {} -p proj --profile demo up -d bot telegram-standin",
                file.display()
            )
        );
        assert_eq!(
            v2.up_cmd(&sh).to_string(),
            format!("docker compose -f {} -p proj up -d bot", file.display())
        );
        assert_eq!(
            v1.volume(),
            "proj_bot-data",
            "the same volume name under both"
        );
        assert_eq!(v2.volume(), "proj_bot-data");
    }

    #[test]
    fn the_bot_container_is_found_by_labels_both_flavours_set_not_by_name() {
        let stack = Stack::with_flavour(Flavour::Plugin("2.27.0".into()), "proj", false);
        let filters = stack.bot_container_filters();
        assert!(filters.contains(&"label=com.docker.compose.project=proj".to_owned()));
        assert!(filters.contains(&"label=com.docker.compose.oneoff=False".to_owned()));
        assert!(filters.iter().all(|f| !f.starts_with("name=")));
    }
}
