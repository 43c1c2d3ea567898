//! `cargo xtask db ARGS`: `bot db ARGS` against the project's volume, in a throw-away container
//! of the project's image, so that no one needs the compose file's variables by hand. Commands
//! that only read run at once; those that write (`upgrade`, `downgrade`, `stamp`, `adopt`) ask
//! first, hold the deploy lock and take a checked backup before they run. The others have a
//! task of their own, and the error names it.

use xshell::{Shell, cmd};

use crate::compose::Stack;
use crate::database::BOT_OWNER;
use crate::deploy;
use crate::docker;
use crate::exit::{self, ExitCode};
use crate::output::Run;
use crate::process;
use crate::project::{self, BackupOptions};

/// Arguments of `db`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub options: BackupOptions,
    /// What to pass to `bot db`, e.g. `status`, `history --json`, `diff --to 3`, `stamp 2`
    /// (this tool's own options go before it).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// What a `bot db` command does to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only reads it.
    Reads,
    /// Writes it.
    Writes,
}

impl Args {
    /// What the command does, or why it is not run here (a usage error naming the task to use).
    pub fn kind(&self) -> anyhow::Result<Kind> {
        let command = self.command[0].as_str();
        match command {
            "status" | "history" | "check" | "schema" | "diff" | "help" | "--help" | "-h" => {
                Ok(Kind::Reads)
            }
            "upgrade" | "downgrade" | "stamp" | "adopt" => Ok(Kind::Writes),
            "backup" => Err(instead(command, "`cargo xtask backup`")),
            "restore" => Err(instead(command, "`cargo xtask restore FILE`")),
            "import" => Err(instead(command, "`cargo xtask first-deploy --import FILE`")),
            "fix-ownership" => Err(instead(
                command,
                "a deploy (it gives the files to the bot's user)",
            )),
            "find-databases" | "baseline" => Err(exit::usage(format!(
                "`bot db {command}` reads files on this machine, not the volume: run it from a build, `cargo run -p bot -- db {command} ...`"
            ))),
            other => Err(exit::usage(format!(
                "`bot db {other}` is not a database command; `cargo xtask db help` lists them"
            ))),
        }
    }
}

fn instead(command: &str, task: &str) -> anyhow::Error {
    exit::usage(format!(
        "`bot db {command}` is done here by {task}, which keeps the backups and the history"
    ))
}

/// Runs a command that only reads: no question, no lock.
pub fn read(sh: &Shell, args: &Args) -> anyhow::Result<()> {
    docker::check_daemon(sh)?;
    let stack = project::stack(sh, &args.options.stack())?;
    require_image(sh, &stack)?;
    if args.options.dry_run.dry_run {
        let command = run_cmd(sh, &stack, &args.command);
        eprintln!("dry run: would run `{command}`");
        return Ok(());
    }
    run_db(sh, &stack, &args.command, process::DEFAULT_TIMEOUT)
}

/// Runs a command that writes: asks, holds the deploy lock, backs the database up first.
pub fn write(sh: &Shell, args: &Args, run: &Run) -> anyhow::Result<()> {
    let stack_args = &args.options.stack();
    deploy::locked_and_recorded(sh, stack_args, "db", run, |state_dir, time| {
        let stack = deploy::check_machine(sh, stack_args, false, run)?;
        require_image(sh, &stack)?;
        let shown = format!("bot db {}", args.command.join(" "));
        if stack_args.dry_run {
            let command = run_cmd(sh, &stack, &args.command);
            let plan = format!("dry run: would back up the database, then run `{command}`");
            return run.dry_run(&plan);
        }
        let project = &stack.project;
        let question = format!(
            "This will back up the database of project {project}, then run `{shown}` on it while the bot keeps running. Go ahead?"
        );
        deploy::confirm(stack_args.yes, &question)?;
        run.edit().changed = true;
        super::backup::take(sh, &stack, stack_args, state_dir, time, run)?;
        run.step(&format!("run {shown}"), || {
            run_db(
                sh,
                &stack,
                &args.command,
                process::migration_limit(process::UNKNOWN_SIZE),
            )
        })
    })
}

fn require_image(sh: &Shell, stack: &Stack) -> anyhow::Result<()> {
    let image = &stack.bot_image;
    if docker::image_id(sh, image)?.is_none() {
        let message =
            format!("there is no image {image}; deploy first (`cargo xtask first-deploy`)");
        return Err(exit::not_ready(message));
    }
    Ok(())
}

/// `bot db ARGS` in a throw-away container of the project's image, on its volume, as the bot's
/// user and hardened as the bot is.
fn run_cmd<'a>(sh: &'a Shell, stack: &Stack, command: &[String]) -> xshell::Cmd<'a> {
    let mount = format!("{}:/data", stack.volume());
    let image = &stack.bot_image;
    cmd!(
        sh,
        "docker run --rm --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges --user {BOT_OWNER} -v {mount} {image} db"
    )
    .args(command)
}

/// Runs it, passing on what it printed and its verdict: the exit code `bot db` gave, as this
/// tool's (2 usage, 3 refused, 4 a damaged file: refused too, 5 busy: locked).
fn run_db(
    sh: &Shell,
    stack: &Stack,
    command: &[String],
    limit: std::time::Duration,
) -> anyhow::Result<()> {
    let shown = command.join(" ");
    let what = format!("running `bot db {shown}`");
    let (status, finished) = process::run_to_end(run_cmd(sh, stack, command), &what, limit)?;
    print!("{}", crate::secrets::scrub(&finished.stdout));
    eprint!("{}", crate::secrets::scrub(&finished.stderr));
    let code = match status.code() {
        Some(0) => return Ok(()),
        Some(2) => ExitCode::Usage,
        Some(3 | 4) => ExitCode::Refused,
        Some(5) => ExitCode::Locked,
        _ => ExitCode::Failed,
    };
    let ended = status
        .code()
        .map_or("by a signal".into(), |c| c.to_string());
    let message = format!("`bot db {shown}` ended with exit {ended} (its own message is above)");
    Err(exit::with_code(code, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn kind(line: &[&str]) -> anyhow::Result<Kind> {
        let cli = Cli::try_parse_from(std::iter::once("db").chain(line.iter().copied())).unwrap();
        cli.args.kind()
    }

    #[test]
    fn commands_are_told_by_what_they_do_and_the_bots_options_are_its_own() {
        assert_eq!(kind(&["status", "--json"]).unwrap(), Kind::Reads);
        assert_eq!(kind(&["--yes", "stamp", "2"]).unwrap(), Kind::Writes);
        assert_eq!(kind(&["diff", "--to", "3"]).unwrap(), Kind::Reads);
        let cli = Cli::try_parse_from(["db", "-p", "proj", "history", "--json"]).unwrap();
        assert_eq!(cli.args.command, ["history", "--json"]);
        assert!(
            !cli.args.options.json.json,
            "--json after the command is bot db's"
        );
        for (command, names) in [
            ("backup", "cargo xtask backup"),
            ("restore", "cargo xtask restore"),
            ("import", "--import"),
            ("find-databases", "cargo run -p bot"),
            ("nonsense", "cargo xtask db help"),
        ] {
            let error = kind(&[command]).unwrap_err();
            assert_eq!(exit::code_of(&error), ExitCode::Usage, "{command}");
            assert!(error.to_string().contains(names), "{command}: {error}");
        }
    }
}
