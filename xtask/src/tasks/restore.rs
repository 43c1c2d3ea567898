//! `cargo xtask restore <file>`: put a database file (the old server's `bot_database.db`, or a
//! backup) into the volume, owned by the bot's user, after checking it and backing the live
//! database up. It does not migrate: `prod-migrate` does that.

use migrations::State;
use std::path::PathBuf;

use anyhow::Context;
use xshell::Shell;

use crate::backups;
use crate::database;
use crate::deploy;
use crate::docker;
use crate::exit;
use crate::images;
use crate::output::Run;
use crate::project::RestoreOptions;

/// The live database's path in the volume, as the bot's container sees it.
const DATABASE_IN_VOLUME: &str = "/data/bot_database.db";

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub options: RestoreOptions,
    /// The SQLite database file to put in place.
    file: PathBuf,
}

/// Replaces the live database with FILE, backing the live one up first.
pub fn run(sh: &Shell, args: Args, run: &Run) -> anyhow::Result<()> {
    let file = std::fs::canonicalize(&args.file)
        .map_err(|e| exit::usage(format!("{}: {e}", args.file.display())))?;
    let shown = file.display();
    let incoming = migrations::inspect_copy(&file)
        .map_err(|e| exit::refused(format!("{shown}: {e}; nothing was changed")))?;
    let state = incoming.state.name();
    let revision = incoming.revision.map_or("none".into(), |r| r.to_string());
    run.info(&format!(
        "{shown}: integrity ok, {state}, revision {revision}"
    ));
    let stack_args = args.options.stack();
    deploy::locked_and_recorded(sh, &stack_args, "restore", run, |state_dir, time| {
        let stack = deploy::check_machine(sh, &stack_args, false, run)?;
        if !stack_args.dry_run {
            // A killed run's restore or migration still at work must end first.
            deploy::save_leftover_backups(sh, &stack, state_dir, run)?;
        }
        crate::old_app::refuse_if_old_app(sh, &stack, "restore")?;
        if docker::image_id(sh, &stack.bot_image)?.is_none() {
            if stack_args.dry_run {
                run.info(&format!("would build {} first", stack.bot_image));
            } else {
                run.step("build images", || {
                    images::build(sh, &stack, stack_args.schema_head).map(drop)
                })?;
            }
        }
        let read = if docker::image_id(sh, &stack.bot_image)?.is_some() {
            run.step("read database", || {
                database::status_or_damaged(sh, &stack, &stack.bot_image)
            })?
        } else {
            Ok(database::DbStatus::empty(0))
        };
        // A damaged live database is what a restore is for: it is replaced (asking, or
        // --yes), its file kept beside the backups and, whole, in the volume.
        let (live, damage) = match read {
            Ok(live) => (live, None),
            Err(damage) => {
                run.detail(format!("the live database is damaged: {damage}"));
                (database::DbStatus::empty(0), Some(damage))
            }
        };
        // A damaged file has no state the engine can name.
        run.edit().state_before = Some(match damage {
            Some(_) => "damaged".to_owned(),
            None => live.state.to_string(),
        });
        run.edit().revision_before = live.effective_version();
        deploy::refuse_a_second_running_bot(sh, &stack)?;
        let container = stack.running_bot(sh)?;
        if stack_args.dry_run {
            run.info("dry run: nothing was changed. The restore would:");
            if let Some(c) = &container {
                run.info(&format!("  stop bot: {}", deploy::stop_argv(&c.id).shown()));
            }
            if damage.is_some() || live.state != State::Empty {
                run.info(&format!(
                    "  back up the live database ({}) to {}/",
                    match damage {
                        Some(_) => format!("damaged: revision none (head {})", live.head),
                        None => deploy::describe(&live),
                    },
                    state_dir.display()
                ));
            }
            return run.dry_run(&format!("  restore: docker cp {shown} <restore container> && bot db restore (as root, then owned by {})", database::BOT_OWNER));
        }
        let damaged_copy = state_dir.join(format!("damaged-{}-{time}.db", stack.project));
        let (volume, kept) = (stack.volume(), damaged_copy.display());
        let question = match &damage {
            Some(_) => format!(
                "The database in volume {volume} is damaged. Replace it with {shown}? The bot will be stopped; the damaged file is kept as {kept} and, in the volume, as bot_database.db.damaged-<time>."
            ),
            None => format!(
                "Replace the database in volume {volume} ({}) with {shown}? The bot will be stopped.",
                deploy::describe(&live)
            ),
        };
        deploy::confirm(stack_args.yes, &question)?;
        if live.state != State::Empty && damage.is_none() {
            run.step("check room for the backup", || {
                backups::require_room(sh, state_dir, live.copy_bytes())
            })?;
        }
        run.edit().changed = true;
        let _critical = crate::signals::Critical::enter();
        crate::signals::hold_all(
            "the restore runs to its end (stopping halfway would leave the bot down)",
        );
        if let Some(container) = container {
            run.step("stop bot", || deploy::stop_container(&container.id))?;
        }
        if !database::volume_exists(sh, &stack) {
            database::create_volume(sh, &stack)?;
        }
        if damage.is_some() {
            // Not a backup (it fails its checks): named so that retention and rollback
            // never take it for one.
            run.step("keep damaged database", || {
                std::fs::create_dir_all(state_dir)?;
                database::copy_from_volume(
                    sh,
                    &stack,
                    &stack.bot_image,
                    DATABASE_IN_VOLUME,
                    &damaged_copy,
                    // Its size is unknown: it cannot be read.
                    crate::process::UNKNOWN_SIZE,
                )
            })?;
            run.detail(format!("kept as {}", damaged_copy.display()));
        } else if live.state != State::Empty {
            let revision = live.effective_version();
            let name = backups::name(&stack.project, time, revision, Some("before-restore"));
            let host_file = state_dir.join(name);
            backups::back_up(run, sh, &stack, &host_file, live.copy_bytes())?;
            run.edit().backup = Some(host_file.clone());
            backups::prune_and_tell(run, state_dir, &stack.project, stack_args.keep)?;
        }
        crate::journal::volume(format!("being replaced by {shown} (the bot is stopped)"));
        run.step("restore database", || {
            database::restore_from_host(sh, &stack, &stack.bot_image, &file, damage.is_some())
                .map(drop)
        })?;
        let after = database::status(sh, &stack, &stack.bot_image)
            .context("reading the restored database")?;
        run.edit().revision_after = after.effective_version();
        let after = deploy::describe(&after);
        crate::journal::volume(format!(
            "restored from {shown}: {after}; the bot is stopped"
        ));
        run.info(&format!(
            "restored: the database is {after}. The bot stays stopped; next: `cargo xtask prod-migrate` (or prod-full-update) to bring it to head and start it"
        ));
        Ok(())
    })
}
