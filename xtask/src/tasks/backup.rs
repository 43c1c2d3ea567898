//! `cargo xtask backup`: a checked copy of the live database on this machine, while the bot
//! keeps running (the online backup API).

use migrations::State;
use std::path::Path;

use xshell::Shell;

use crate::backups;
use crate::compose::Stack;
use crate::database;
use crate::deploy;
use crate::exit;
use crate::journal;
use crate::output::Printer;
use crate::project::StackArgs;
use crate::report::Report;

/// Takes a backup into the backup folder and prunes old ones (never the one a rollback needs:
/// see `backups::plan`).
pub fn run(
    sh: &Shell,
    args: &StackArgs,
    printer: &Printer,
    report: &mut Report,
) -> anyhow::Result<()> {
    deploy::locked_and_recorded(sh, args, "backup", report, |state_dir, time, report| {
        let stack = deploy::check_machine(sh, args, false, printer, report)?;
        if crate::docker::image_id(sh, &stack.bot_image)?.is_none() {
            return Err(exit::not_ready(format!(
                "there is no image {}; deploy first",
                stack.bot_image
            )));
        }
        if !args.dry_run {
            // A killed backup changed nothing (its copy was a `.partial` file): this one
            // closes its line once it ends well. Killed deploys are left to a deploy or
            // `recover`, which finish them.
            let killed_backups: Vec<_> = deploy::unfinished_runs(state_dir, time)?
                .into_iter()
                .filter(|run| run.task == "backup")
                .collect();
            for run in &killed_backups {
                let line = format!(
                    "{}; a backup changes nothing, and this one closes it",
                    deploy::describe_unfinished(run)
                );
                printer.info(&line);
                report.finished_earlier.push(line);
                // Its copy out of Docker, cut short: never a backup.
                if let Some(file) = &run.backup {
                    let _ = std::fs::remove_file(database::partial_name(file));
                }
            }
            journal::take_over(killed_backups);
            // A deploy that could not copy its pre-deploy backup out (a full disk), or was
            // killed, left it in its migration container: saved first, under its own name.
            deploy::save_leftover_backups(sh, &stack, state_dir, printer)?;
        }
        take(sh, &stack, args, state_dir, time, printer, report)
    })
}

/// Takes a checked backup of the live database of `stack` into `state_dir` (named for `time`)
/// and prunes old ones; with `--dry-run`, says what it would do. Inside the deploy lock.
pub fn take(
    sh: &Shell,
    stack: &Stack,
    args: &StackArgs,
    state_dir: &Path,
    time: &str,
    printer: &Printer,
    report: &mut Report,
) -> anyhow::Result<()> {
    let live = printer.step(report, "read database", || {
        database::status(sh, stack, &stack.bot_image)
    })?;
    report.revision_before = live.effective_version();
    report.revision_after = live.effective_version();
    if live.state == State::Empty {
        printer.info("the database is empty: nothing to back up");
        return Ok(());
    }
    let name = backups::name(&stack.project, time, live.effective_version(), None);
    let host_file = state_dir.join(&name);
    if args.dry_run {
        printer.info(&format!(
            "dry run: would back up {} ({} bytes) to {}",
            stack.volume(),
            live.copy_bytes(),
            host_file.display()
        ));
        report.dry_run = true;
        return Ok(());
    }
    printer.step(report, "check room for the backup", || {
        backups::require_room(sh, state_dir, live.copy_bytes())
    })?;
    // Named before the copy starts: a killed copy's `.partial` is found by the next run.
    journal::update(|r| r.backup = Some(host_file.clone()));
    let info = printer.step(report, "back up database", || {
        database::back_up_to_host(sh, stack, &stack.bot_image, &host_file, live.copy_bytes())?;
        backups::seal(&host_file)
    })?;
    printer.detail(
        report,
        format!(
            "{} ({} bytes, integrity ok, revision {:?})",
            host_file.display(),
            info.bytes,
            info.revision
        ),
    );
    report.backup = Some(host_file.display().to_string());
    backups::prune_and_tell(printer, state_dir, &stack.project, args.keep)?;
    Ok(())
}
