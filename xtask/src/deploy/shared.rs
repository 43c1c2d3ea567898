//! What every task that changes the stack shares: the machine check, the question, the lock and
//! the history line, and the health wait.

use migrations::State;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::compose::Stack;
use crate::database::DbStatus;
use crate::docker::{self, ContainerState};
use crate::exit;
use crate::history::{self, Record};
use crate::journal;
use crate::lock::{self, DeployLock};
use crate::output::Run;
use crate::process;
use crate::project::{self, StackArgs};
use crate::signals;

/// Checks the machine and names the stack (see [`project::stack`]): the first step of every
/// task. `needs_token`: the bot is (re)started with the environment file, which must then hold
/// a token, unless the stack is the demo's.
pub fn check_machine(
    sh: &Shell,
    args: &StackArgs,
    needs_token: bool,
    run: &Run,
) -> anyhow::Result<Stack> {
    run.step("check machine", || {
        let engine = docker::check_daemon(sh)?;
        let stack = project::stack(sh, args)?;
        let needs_token = needs_token && !stack.demo;
        // Parsed whatever the task: a malformed file is refused by its line number before
        // Compose could print its content, and its values are scrubbed from then on.
        if stack.env_file.exists() {
            crate::secrets::load(&stack.env_file)?;
        }
        if needs_token && !project::env_file_has_token(&stack.env_file)? {
            return Err(exit::not_ready(format!(
                "no BOT_TOKEN in {}: copy .env.example to .env and put the token @BotFather gave you in it (or try it with --demo)",
                stack.env_file.display()
            )));
        }
        eprintln!("     Docker {engine}, {}, project {}", stack.flavour.describe(), stack.project);
        Ok(stack)
    })
}

/// Asks before a change, unless `--yes`; without a terminal to ask on, refuses.
pub fn confirm(yes: bool, question: &str) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    confirm_on(yes, question, stdin.is_terminal(), &mut stdin.lock())
}

fn confirm_on(
    yes: bool,
    question: &str,
    terminal: bool,
    input: &mut impl BufRead,
) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !terminal {
        return Err(exit::usage(format!(
            "{question}\nThere is no terminal to answer on; pass --yes to go ahead in a script"
        )));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
        Ok(())
    } else {
        Err(exit::usage("stopped: you answered no; nothing was changed"))
    }
}

/// The repository's git revision, if it is a git checkout.
pub fn git_revision(sh: &Shell) -> Option<String> {
    crate::process::output(cmd!(sh, "git rev-parse --short=12 HEAD"))
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Runs a task that changes the stack: under the project's deploy lock (not for a dry run),
/// with one line in the deploy history for it, written before it starts and kept current as it
/// goes (see [`journal`]).
pub fn locked_and_recorded(
    sh: &Shell,
    args: &StackArgs,
    task: &str,
    run: &Run,
    work: impl FnOnce(&Path, &str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = crate::clock::timestamp();
    let project = run.project();
    let state_dir = args.state_dir(&project);
    if args.dry_run {
        return work(&state_dir, &started);
    }
    let _lock = DeployLock::acquire(sh, &project, &state_dir, task, &started)?;
    journal::begin(
        &state_dir,
        Record {
            time: started.clone(),
            task: task.into(),
            operator: lock::operator(),
            git_revision: git_revision(sh),
            ..Record::default()
        },
    )?;
    let result = work(&state_dir, &started);
    journal::finish(&run.report(), &result);
    result
}

/// Names the runs of this project that started and never ended (killed: the lock is ours, so
/// none of them runs), and returns them.
pub fn unfinished_runs(state_dir: &Path, this_run: &str) -> anyhow::Result<Vec<Record>> {
    Ok(history::unfinished(&history::read(state_dir)?)
        .into_iter()
        .filter(|r| r.time != this_run)
        .cloned()
        .collect())
}

/// Describes an unfinished run: when, which step, what the volume held.
pub fn describe_unfinished(record: &Record) -> String {
    format!(
        "{} started {} by {} did not finish: it stopped during step \"{}\"{}",
        record.task,
        record.time,
        record.operator,
        record.step.as_deref().unwrap_or("(before its first step)"),
        record
            .volume
            .as_deref()
            .map(|v| format!("; the volume: {v}"))
            .unwrap_or_else(|| "; the volume was not touched yet".into())
    )
}

/// Refuses a task that replaces the live database (`rollback`, `restore`) while more than one
/// bot container runs (scaled by hand, or left by a killed deploy): it stops one bot, and
/// another would keep writing into the database being replaced.
pub fn refuse_a_second_running_bot(sh: &Shell, stack: &Stack) -> anyhow::Result<()> {
    let names: Vec<String> = stack
        .bot_containers(sh)?
        .into_iter()
        .filter(ContainerState::is_running)
        .map(|c| c.name)
        .collect();
    if names.len() > 1 {
        return Err(exit::refused(format!(
            "{} bot containers run ({}): this task stops one bot before it replaces the database, and another would keep writing into it. Nothing was changed. Leave one: `cargo xtask prod-full-update` removes a container a killed deploy left, or remove the extra one (`docker rm -f {}`), then run this again",
            names.len(),
            names.join(", "),
            names[1..].join(" ")
        )));
    }
    Ok(())
}

/// Stops a container (SIGTERM; the bot exits within a second).
pub fn stop_container(id: &str) -> anyhow::Result<()> {
    process::run(stop_argv(id), "stopping the bot").map(drop)
}

/// `docker rm -f` for a container `id` whatever its state.
pub fn force_remove_argv(id: &str) -> process::Argv {
    process::Argv::new("docker", ["rm", "-f", id])
}

/// Of the bot service's containers (newest first, as `docker ps` lists them), the one a deploy
/// keeps when a killed deploy left several: the one that has run longest of those running (the
/// old bot, when it still serves; else the new one), or the newest when none runs. None when
/// nothing is to be removed (one container, or some not ours: the old app's).
pub fn kept_bot_container(containers: &[ContainerState]) -> Option<usize> {
    let several_ours = containers.len() > 1 && containers.iter().all(ContainerState::is_ours);
    several_ours.then(|| {
        let running = containers.iter().rposition(ContainerState::is_running);
        running.unwrap_or(0)
    })
}

/// `docker rm` for the old bot's container `id` once stopped (the fast path's last command).
pub fn remove_argv(id: &str) -> process::Argv {
    process::Argv::new("docker", ["rm", id])
}

/// `docker stop` for the bot's container `id`, with the grace period Compose gives it.
pub fn stop_argv(id: &str) -> process::Argv {
    process::Argv::new("docker", ["stop", "-t", "10", id])
}

/// Step "wait until healthy": [`wait_until_healthy`] within `--health-timeout`.
pub fn wait_until_healthy_step(
    run: &Run,
    sh: &Shell,
    stack: &Stack,
    args: &StackArgs,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.health_timeout);
    run.step("wait until healthy", || {
        wait_until_healthy(sh, stack, timeout)
    })
}

/// Waits until the bot's container reports healthy; fails at once when it exits or restarts.
pub fn wait_until_healthy(sh: &Shell, stack: &Stack, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        signals::checkpoint()?;
        let state = stack
            .bot_container(sh)?
            .context("the bot's container is gone")?;
        if state.health.as_deref() == Some("healthy") {
            return Ok(());
        }
        if matches!(state.status.as_str(), "exited" | "dead" | "restarting")
            || state.restart_count > 0
        {
            bail!(
                "the bot stopped (status {}, exit code {}) instead of becoming healthy; its last log lines:\n{}",
                state.status,
                state.exit_code,
                docker::logs_tail(sh, &state.id, 15)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the bot did not become healthy within {}s (health: {}; last check said: {}); its last log lines:\n{}",
                timeout.as_secs(),
                state.health.as_deref().unwrap_or("none"),
                state.health_output.as_deref().unwrap_or("nothing"),
                docker::logs_tail(sh, &state.id, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A database state in words.
pub fn describe(status: &DbStatus) -> String {
    let revision = status.version.map_or("none".into(), |v| v.to_string());
    match status.state {
        State::Unstamped | State::Foreign => format!(
            "{}: tables without our history, matching {} (head {})",
            status.state,
            status
                .matches
                .map_or("no revision".into(), |m| format!("revision {m}")),
            status.head
        ),
        State::Empty => format!("empty (head {})", status.head),
        state => format!("{state}: revision {revision} (head {})", status.head),
    }
}

/// An image id's first 12 hex digits.
pub fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids() {
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn confirm_asks_unless_yes_and_refuses_without_a_terminal() {
        confirm_on(true, "go?", false, &mut &b""[..]).unwrap();
        let error = confirm_on(false, "go?", false, &mut &b""[..]).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::ExitCode::Usage);
        assert!(error.to_string().contains("--yes"));
        confirm_on(false, "go?", true, &mut &b"y\n"[..]).unwrap();
        let no = confirm_on(false, "go?", true, &mut &b"n\n"[..]).unwrap_err();
        assert!(no.to_string().contains("nothing was changed"));
    }
}
