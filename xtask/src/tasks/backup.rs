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
use crate::output::Run;
use crate::project::StackArgs;

/// Takes a backup into the backup folder and prunes old ones (never the one a rollback needs:
/// see `backups::plan`).
pub fn run(sh: &Shell, args: &StackArgs, run: &Run) -> anyhow::Result<()> {
    deploy::locked_and_recorded(sh, args, "backup", run, |state_dir, time| {
        let stack = deploy::check_machine(sh, args, false, run)?;
        let image = &stack.bot_image;
        if crate::docker::image_id(sh, image)?.is_none() {
            let message = format!("there is no image {image}; deploy first");
            return Err(exit::not_ready(message));
        }
        if !args.dry_run {
            // A killed backup changed nothing (its copy was a `.partial` file): this one
            // closes its line once it ends well. Killed deploys are left to a deploy or
            // `recover`, which finish them.
            let mut killed_backups = deploy::unfinished_runs(state_dir, time)?;
            killed_backups.retain(|earlier| earlier.task == "backup");
            for earlier in &killed_backups {
                let killed = deploy::describe_unfinished(earlier);
                let line = format!("{killed}; a backup changes nothing, and this one closes it");
                run.info(&line);
                run.edit().finished_earlier.push(line);
                // Its copy out of Docker, cut short: never a backup.
                if let Some(file) = &earlier.backup {
                    let _ = std::fs::remove_file(database::partial_name(file));
                }
            }
            journal::take_over(killed_backups);
            // A deploy that could not copy its pre-deploy backup out (a full disk), or was
            // killed, left it in its migration container: saved first, under its own name.
            deploy::save_leftover_backups(sh, &stack, state_dir, run)?;
        }
        take(sh, &stack, args, state_dir, time, run)
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
    run: &Run,
) -> anyhow::Result<()> {
    let live = run.step("read database", || {
        database::status(sh, stack, &stack.bot_image)
    })?;
    run.edit().revision_before = live.effective_version();
    run.edit().revision_after = live.effective_version();
    if live.state == State::Empty {
        run.info("the database is empty: nothing to back up");
        return Ok(());
    }
    let name = backups::name(&stack.project, time, live.effective_version(), None);
    let host_file = state_dir.join(&name);
    if args.dry_run {
        let (volume, bytes, file) = (stack.volume(), live.copy_bytes(), host_file.display());
        let plan = format!("dry run: would back up {volume} ({bytes} bytes) to {file}");
        return run.dry_run(&plan);
    }
    run.step("check room for the backup", || {
        backups::require_room(sh, state_dir, live.copy_bytes())
    })?;
    // Named before the copy starts: a killed copy's `.partial` is found by the next run.
    journal::update(|r| r.backup = Some(host_file.clone()));
    let info = backups::back_up(run, sh, stack, &host_file, live.copy_bytes())?;
    let (shown, bytes, revision) = (host_file.display(), info.bytes, info.revision);
    let detail = format!("{shown} ({bytes} bytes, integrity ok, revision {revision:?})");
    run.detail(detail);
    run.edit().backup = Some(host_file.clone());
    backups::prune_and_tell(run, state_dir, &stack.project, args.keep)?;
    Ok(())
}
