//! The deploy, step by step: check the machine, build, read the database, stop the bot, back up,
//! adopt, upgrade, start, wait until healthy; and the rollback when a step after the stop fails.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::compose::Stack;
use crate::database::{self, DbStatus};
use crate::docker::{self, ContainerState};
use crate::exit;
use crate::images;
use crate::output::Printer;
use crate::project::{self, StackArgs};
use crate::report::Report;

/// How long the bot gets to become healthy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(90);

/// Which deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new server, with or without an existing database.
    FirstDeploy,
    /// The database part alone, with the image already there.
    Migrate,
    /// Build, then migrate and start the new image.
    FullUpdate,
}

/// Checks the machine and names the stack: the first step of every task.
pub fn check_machine(
    sh: &Shell,
    args: &StackArgs,
    mode: Option<Mode>,
    printer: &Printer,
    report: &mut Report,
) -> anyhow::Result<Stack> {
    printer.step(report, "check machine", || {
        let engine = docker::check_daemon(sh)?;
        let stack = Stack::new(sh, &report_project(args)?, args.demo)?;
        if !args.demo && mode.is_some() && !project::env_file_has_token(&stack.env_file)? {
            return Err(exit::not_ready(format!(
                "no BOT_TOKEN in {}: copy .env.example to .env and put the token @BotFather gave you in it (or try it with --demo)",
                stack.env_file.display()
            )));
        }
        if mode == Some(Mode::Migrate) && docker::image_id(sh, &stack.bot_image)?.is_none() {
            return Err(exit::not_ready(format!(
                "there is no image {} to migrate with; run `cargo xtask first-deploy` first",
                stack.bot_image
            )));
        }
        eprintln!("     Docker {engine}, {}, project {}", stack.flavour.describe(), stack.project);
        Ok(stack)
    })
}

fn report_project(args: &StackArgs) -> anyhow::Result<String> {
    project::project_name(args.project_name.as_deref())
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

/// UTC time as `20261125T064430Z`, for file names.
pub fn timestamp() -> String {
    format_utc(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

fn format_utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Where backups go on this machine.
pub fn backup_dir(project: &str) -> PathBuf {
    project::root().join("backups").join(project)
}

/// What the deploy changed so far, for the rollback.
#[derive(Default)]
struct Changes {
    stopped_at: Option<Instant>,
    backup_name: Option<String>,
    database_touched: bool,
    previous_image: Option<String>,
}

/// Runs a deploy of the given mode.
pub fn run(
    sh: &Shell,
    args: &StackArgs,
    mode: Mode,
    printer: &Printer,
    report: &mut Report,
) -> anyhow::Result<()> {
    let stack = check_machine(sh, args, Some(mode), printer, report)?;
    let before = stack.bot_container(sh)?;
    if mode != Mode::Migrate {
        // Keep the running image reachable by name for the rollback, before the tag moves.
        if let Some(container) = &before {
            let previous = format!("{}-previous", stack.bot_image);
            let image = &container.image_id;
            crate::process::run(
                cmd!(sh, "docker tag {image} {previous}"),
                "keeping the previous image",
            )?;
        }
        let built = printer.step(report, "build images", || images::build(sh, &stack))?;
        printer.detail(
            report,
            format!("{} = {}", stack.bot_image, short(&built.bot)),
        );
    }
    let image_id = docker::image_id(sh, &stack.bot_image)?.context("the bot image vanished")?;
    report.image = Some(format!("{} ({})", stack.bot_image, short(&image_id)));

    let status = printer.step(report, "read database", || database::status(sh, &stack))?;
    report.state_before = Some(status.state.clone());
    report.revision_before = status.version;
    report.revision_after = status.version;
    printer.detail(report, describe(&status));
    database::refuse_unsafe(&status)?;

    let image_changes = before.as_ref().is_none_or(|c| c.image_id != image_id);
    let database_changes = status.state != "current";
    let running = before.as_ref().is_some_and(|c| c.status == "running");
    if !image_changes && !database_changes && running {
        printer.info("nothing to do: the bot runs this image and the database is current");
        if args.demo {
            stack.up(sh)?; // the stand-in may be missing; the bot is left alone
        }
        return Ok(());
    }

    let mut question = String::from("This will");
    if running {
        question.push_str(" stop the bot,");
    }
    if database_changes {
        question.push_str(&format!(
            " migrate the database ({} -> revision {}),",
            status.state, status.head
        ));
    }
    question.push_str(" and start the bot. Go ahead?");
    confirm(args.yes, &question)?;

    let mut changes = Changes {
        previous_image: before
            .as_ref()
            .map(|_| format!("{}-previous", stack.bot_image)),
        ..Changes::default()
    };
    report.changed = true;
    let result = change(sh, &stack, &status, running, printer, report, &mut changes);
    if let Some(stopped) = changes.stopped_at {
        report.downtime_seconds = Some(stopped.elapsed().as_secs_f64());
    }
    if let Err(error) = result {
        if changes.stopped_at.is_some() || changes.database_touched {
            printer.info(&format!("a step failed: {error:#}\nrolling back"));
            match roll_back(sh, &stack, &changes, before.as_ref(), printer, report) {
                Ok(()) => report.rolled_back = true,
                Err(rollback_error) => {
                    return Err(error.context(format!(
                        "and the rollback failed too: {rollback_error:#}; the backup is in {}",
                        backup_dir(&stack.project).display()
                    )));
                }
            }
        }
        return Err(error);
    }
    Ok(())
}

fn change(
    sh: &Shell,
    stack: &Stack,
    status: &DbStatus,
    running: bool,
    printer: &Printer,
    report: &mut Report,
    changes: &mut Changes,
) -> anyhow::Result<()> {
    if running {
        printer.step(report, "stop bot", || stack.stop_bot(sh))?;
        changes.stopped_at = Some(Instant::now());
    }
    let database_changes = status.state != "current";
    if database_changes && status.state != "empty" {
        let name = format!(
            "{}-{}-r{}.db",
            stack.project,
            timestamp(),
            status
                .effective_version()
                .map_or("none".into(), |v| v.to_string())
        );
        let file = printer.step(report, "back up database", || {
            database::back_up(sh, stack, &name, &backup_dir(&stack.project))
        })?;
        printer.detail(report, file.display().to_string());
        report.backup = Some(file.display().to_string());
        changes.backup_name = Some(name);
    }
    if status.state == "unstamped" {
        changes.database_touched = true;
        printer.step(report, "adopt database", || {
            stack
                .bot(sh, &["db", "adopt"], "adopting the database")
                .map(drop)
        })?;
        printer.detail(
            report,
            format!("recorded revision {}", status.matches.unwrap_or(0)),
        );
    }
    if database_changes {
        changes.database_touched = true;
        printer.step(report, "upgrade database", || {
            stack
                .bot(sh, &["db", "upgrade"], "upgrading the database")
                .map(drop)
        })?;
        report.revision_after = Some(status.head);
    }
    if changes.stopped_at.is_none() {
        changes.stopped_at = Some(Instant::now());
    }
    printer.step(report, "start bot", || stack.up(sh))?;
    printer.step(report, "wait until healthy", || {
        wait_until_healthy(sh, stack, HEALTH_TIMEOUT)
    })?;
    Ok(())
}

fn roll_back(
    sh: &Shell,
    stack: &Stack,
    changes: &Changes,
    before: Option<&ContainerState>,
    printer: &Printer,
    report: &mut Report,
) -> anyhow::Result<()> {
    let _ = stack.stop_bot(sh);
    if changes.database_touched {
        match &changes.backup_name {
            Some(name) => printer.step(report, "rollback: restore database", || {
                database::restore_backup(sh, stack, name)
            })?,
            None => bail!("the database changed but there was no backup to put back"),
        }
    }
    let Some(before) = before else {
        return Ok(()); // there was no bot before this deploy
    };
    let mut previous = stack.clone();
    if let Some(image) = &changes.previous_image {
        previous.bot_image = image.clone();
    }
    printer.step(report, "rollback: start previous bot", || previous.up(sh))?;
    if before.status == "running" {
        printer.step(report, "rollback: wait until healthy", || {
            wait_until_healthy(sh, &previous, HEALTH_TIMEOUT)
        })?;
    }
    report.revision_after = report.revision_before;
    Ok(())
}

/// Waits until the bot's container reports healthy; fails at once when it exits or restarts.
pub fn wait_until_healthy(sh: &Shell, stack: &Stack, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let state = stack
            .bot_container(sh)?
            .context("the bot's container is gone")?;
        if state.health.as_deref() == Some("healthy") {
            return Ok(());
        }
        if state.status == "exited"
            || state.status == "dead"
            || state.status == "restarting"
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
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A database state in words.
pub fn describe(status: &DbStatus) -> String {
    let revision = status.version.map_or("none".into(), |v| v.to_string());
    match status.state.as_str() {
        "unstamped" => match status.matches {
            Some(m) => format!(
                "unstamped: tables without history, matching revision {m} (head {})",
                status.head
            ),
            None => format!(
                "unstamped: tables without history, matching no revision (head {})",
                status.head
            ),
        },
        "empty" => format!("empty (head {})", status.head),
        state => format!("{state}: revision {revision} (head {})", status.head),
    }
}

fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(format_utc(0), "19700101T000000Z");
        assert_eq!(format_utc(1_795_588_876), "20261125T064116Z");
        assert_eq!(format_utc(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn short_ids() {
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn confirm_asks_unless_yes_and_refuses_without_a_terminal() {
        let mut nothing = std::io::Cursor::new(Vec::new());
        confirm_on(true, "go?", false, &mut nothing).unwrap();
        let error = confirm_on(false, "go?", false, &mut nothing).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::ExitCode::Usage);
        assert!(error.to_string().contains("--yes"));
        confirm_on(
            false,
            "go?",
            true,
            &mut std::io::Cursor::new(b"y\n".to_vec()),
        )
        .unwrap();
        let no = confirm_on(
            false,
            "go?",
            true,
            &mut std::io::Cursor::new(b"n\n".to_vec()),
        )
        .unwrap_err();
        assert!(no.to_string().contains("nothing was changed"));
    }
}
