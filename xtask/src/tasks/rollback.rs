//! `cargo xtask rollback`: back to the image (and environment) the last deploy replaced and,
//! when that deploy moved the schema, to the backup taken before it.

use migrations::State;
use xshell::Shell;

use crate::backups;
use crate::database;
use crate::deploy;
use crate::docker;
use crate::exit;
use crate::history;
use crate::output::Run;
use crate::project::StackArgs;

/// Rolls the last deploy back.
pub fn run(sh: &Shell, args: &StackArgs, run: &Run) -> anyhow::Result<()> {
    deploy::locked_and_recorded(sh, args, "rollback", run, |state_dir, time| {
        let records = history::read(state_dir)?;
        if let Some(run) = history::unfinished(&records)
            .into_iter()
            .find(|r| r.time != time && history::is_deploy(&r.task))
        {
            return Err(exit::refused(format!(
                "{}; nothing was changed. Finish it first with `cargo xtask recover` (its record then carries that deploy's way back), then run `cargo xtask rollback` to go back to where it started",
                deploy::describe_unfinished(run)
            )));
        }
        let Some(last) = history::last_change(&records).cloned() else {
            let file = history::file(state_dir);
            let message = format!("there is no deploy to roll back in {}", file.display());
            return Err(exit::refused(message));
        };
        let (from, to) = (last.revision_before, last.revision_after);
        let (Some(tag), Some(image_before)) = (&last.image_before_tag, &last.image_before) else {
            return Err(exit::refused(format!(
                "the last deploy ({}, {}) started the first bot of this project; there is nothing before it to go back to",
                last.task, last.time
            )));
        };
        let mut stack = deploy::check_machine(sh, args, false, run)?;
        crate::old_app::refuse_if_old_app(sh, &stack, "rollback")?;
        if !args.dry_run {
            // A deploy whose backup copy failed left it in its migration container.
            deploy::save_leftover_backups(sh, &stack, state_dir, run)?;
        }
        if docker::image_id(sh, tag)?.as_deref() != Some(image_before.as_str()) {
            return Err(exit::refused(format!(
                "the image the last deploy replaced ({}) is no longer tagged {tag}; it was removed or replaced, so there is nothing to roll back to",
                deploy::short(image_before)
            )));
        }
        let schema_moved = from != to;
        let backup = last.backup.clone().filter(|_| schema_moved);
        if schema_moved && backup.as_ref().is_none_or(|b| !b.exists()) {
            return Err(exit::refused(format!(
                "the last deploy moved the schema ({from:?} -> {to:?}) but its backup {} is gone; restore a backup by hand with `cargo xtask restore`",
                backup.map_or("(none)".into(), |b| b.display().to_string())
            )));
        }
        if let Some(backup) = &backup {
            // Checked before anything stops: a backup that cannot be restored is no way back.
            let shown = backup.display();
            let info = migrations::inspect_copy(backup).map_err(|e| {
                exit::refused(format!(
                    "the backup the rollback would restore, {shown}, is not sound ({e}); nothing was changed. Restore another backup by hand with `cargo xtask restore FILE`"
                ))
            })?;
            if info.revision != from {
                return Err(exit::refused(format!(
                    "the backup {shown} is at revision {:?}, not {from:?} as the deploy it undoes recorded; nothing was changed. Restore the right backup by hand with `cargo xtask restore FILE`",
                    info.revision
                )));
            }
        }
        run.edit().revision_before = to;
        let (when, image) = (&last.time, deploy::short(image_before));
        let mut question = format!("Roll back the deploy of {when} to image {image}");
        if let Some(backup) = &backup {
            question.push_str(&format!(
                " and the database to the backup taken before it ({}, revision {from:?})? What the bot wrote since then is lost (the current database is backed up first).",
                backup.display()
            ));
        } else {
            question.push('?');
        }
        if args.dry_run {
            return run.dry_run(&format!("dry run: nothing was changed. {question}"));
        }
        // Read and checked while the bot still runs: a rollback that cannot keep the current
        // database first never stops the bot.
        let live = backup
            .as_ref()
            .map(|_| database::status(sh, &stack, &stack.bot_image))
            .transpose()?;
        if let Some(live) = live.as_ref().filter(|l| l.state != State::Empty) {
            run.step("check room for the backup", || {
                backups::require_room(sh, state_dir, live.copy_bytes())
            })?;
        }
        deploy::refuse_a_second_running_bot(sh, &stack)?;
        deploy::confirm(args.yes, &question)?;
        run.edit().changed = true;
        let _critical = crate::signals::Critical::enter();
        crate::signals::hold_all(
            "the rollback runs to its end (stopping halfway would leave the bot down)",
        );
        let was_running = stack.running_bot(sh)?;
        if let Some(container) = &was_running {
            run.step("stop bot", || deploy::stop_container(&container.id))?;
        }
        // Until the restore is done the database is the current one: a failure up to there
        // starts the bot that ran, as it was.
        let start_again = |error: anyhow::Error| -> anyhow::Error {
            if was_running.is_none() {
                return error;
            }
            crate::signals::rolling_back();
            let restarted = run
                .step("start the bot that ran", || stack.up(sh))
                .and_then(|()| deploy::wait_until_healthy_step(run, sh, &stack, args));
            match restarted {
                Ok(()) => error.context(
                    "the rollback stopped before the previous image started: the bot that ran before runs again (`cargo xtask status` shows its database)",
                ),
                Err(e) => error.context(format!(
                    "and the bot that ran could not be started again: {e:#}; `cargo xtask status` shows the state, `cargo xtask recover` starts it"
                )),
            }
        };
        if let Some(backup) = &backup {
            let live = live.as_ref().expect("read above");
            if live.state != State::Empty {
                let revision = live.effective_version();
                let name = backups::name(&stack.project, time, revision, Some("before-rollback"));
                let keep = state_dir.join(name);
                if let Err(e) = backups::back_up(run, sh, &stack, &keep, live.copy_bytes()) {
                    let _ = std::fs::remove_file(&keep);
                    return Err(start_again(e));
                }
                run.edit().backup = Some(keep.clone());
            }
            let shown = backup.display();
            crate::journal::volume(format!(
                "being put back from {shown} by the rollback (the bot is stopped)"
            ));
            run.step("restore database", || {
                database::restore_from_host(sh, &stack, tag, backup, false).map(drop)
            })
            .map_err(&start_again)?;
            crate::journal::volume(format!(
                "put back from {shown} (revision {from:?}); the previous image starts next"
            ));
        }
        // The project's tag names the image that runs, so later tasks start this one too.
        let main_tag = &stack.bot_image;
        let tag_it = xshell::cmd!(sh, "docker tag {image_before} {main_tag}");
        crate::process::run(tag_it, "tagging the previous image")?;
        if let Some(env) = last.env_before.as_ref().filter(|e| e.exists()) {
            stack.env_file = env.clone();
        }
        crate::journal::update(|r| {
            r.image_after = Some(image_before.clone());
            r.env_after = last.env_before.clone();
        });
        run.step("start previous bot", || stack.up(sh))?;
        deploy::wait_until_healthy_step(run, sh, &stack, args)?;
        run.edit().revision_after = from;
        run.edit().image = Some(format!("{tag} ({image})"));
        Ok(())
    })
}
