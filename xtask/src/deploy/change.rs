//! The change itself: prepare the migration, stop the bot, migrate (backing up first), save the
//! backup, start the new bot and wait until it serves. Two paths: the slow one (stop, then
//! migrate, then start) and the fast one for a new image with pending migrations (the
//! migration waits, ready, while Compose replaces the bot, and goes the moment the old one
//! has stopped).

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::backups;
use crate::compose::Stack;
use crate::database::{self, DbStatus, MigrationContainer, MigrationLabels};
use crate::docker::ContainerState;
use crate::journal;
use crate::process;
use crate::report::Report;
use crate::signals;

use super::{Changes, Deploy, Found, describe, shared::*, short};

impl Deploy<'_> {
    /// The name the pre-deploy backup of `status` gets in the backup folder.
    pub(super) fn backup_name(&self, stack: &Stack, status: &DbStatus) -> String {
        backups::name(&stack.project, &self.time, status.effective_version(), None)
    }

    /// The labels of this deploy's migration container.
    pub(super) fn labels<'a>(
        &'a self,
        backup_name: &'a str,
        status: &DbStatus,
    ) -> MigrationLabels<'a> {
        MigrationLabels {
            deploy: &self.time,
            backup_name,
            bytes: status.copy_bytes(),
        }
    }

    pub(super) fn change(
        &self,
        stack: &Stack,
        status: &DbStatus,
        found: Found<'_>,
        report: &mut Report,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let (sh, printer) = (self.sh, self.printer);
        let Found {
            before,
            fix_owner,
            image_changes,
        } = found;
        if status.needs_migration() && !database::volume_exists(sh, stack) {
            database::create_volume(sh, stack)?;
        }
        let running = before.filter(|c| c.status == "running");
        if let Some(old) =
            running.filter(|_| status.needs_migration() && image_changes && !fix_owner)
        {
            return self.replace_and_migrate(stack, status, old, report, changes);
        }
        if status.needs_migration() {
            changes.migration = Some(self.prepare_migration(stack, status, false, report)?);
        }
        if let Some(container) = before.filter(|c| c.status == "running") {
            signals::checkpoint()?;
            printer.step(report, "stop bot", || stop_container(sh, &container.id))?;
            changes.stopped_at = Some(Instant::now());
        }
        if fix_owner {
            printer.step(report, "fix volume ownership", || {
                database::fix_ownership(sh, stack, &stack.bot_image, false).map(drop)
            })?;
        }
        if let Some(migration) = &changes.migration {
            signals::checkpoint()?;
            changes.migrated = true;
            journal::volume(format!(
                "being migrated from {} with the bot stopped; the pre-deploy backup is taken first, in container {}",
                describe(status),
                short(&migration.id)
            ));
            let outcome = printer.step(report, "migrate database", || migration.run(sh))?;
            self.record_migration(stack, status, &outcome, report, changes)?;
        }
        if changes.stopped_at.is_none() {
            changes.stopped_at = Some(Instant::now());
        }
        signals::checkpoint()?;
        printer.step(report, "start bot", || stack.up(sh))?;
        self.wait_until_serving(stack, report, changes)
    }

    /// Step "prepare migration": creates the labelled migration container (one that waits for
    /// "go" on the fast path) and notes in the history where its backup will be.
    pub(super) fn prepare_migration(
        &self,
        stack: &Stack,
        status: &DbStatus,
        waiting: bool,
        report: &mut Report,
    ) -> anyhow::Result<MigrationContainer> {
        let sh = self.sh;
        let backup_name = self.backup_name(stack, status);
        let labels = self.labels(&backup_name, status);
        let migration = self.printer.step(report, "prepare migration", || {
            if waiting {
                MigrationContainer::create_waiting(sh, stack, &stack.bot_image, &labels)
            } else {
                MigrationContainer::create(sh, stack, &stack.bot_image, &labels)
            }
        })?;
        self.note_migration_prepared(status, &migration, &backup_name);
        Ok(migration)
    }

    /// Notes in the history where this deploy's pre-deploy backup will be, before anything runs:
    /// a run killed after this point leaves a line that leads to it.
    pub(super) fn note_migration_prepared(
        &self,
        status: &DbStatus,
        migration: &MigrationContainer,
        backup_name: &str,
    ) {
        let file = self.state_dir.join(backup_name);
        journal::update(|r| {
            r.backup = Some(file.clone());
            r.volume = Some(format!(
                "{}, not changed yet; migration container {} is ready to back it up (to be saved as {}) and migrate it",
                describe(status),
                short(&migration.id),
                file.display()
            ));
        });
    }

    /// Waits until the new bot is healthy, and notes when it began to serve.
    pub(super) fn wait_until_serving(
        &self,
        stack: &Stack,
        report: &mut Report,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(self.args.health_timeout);
        self.printer.step(report, "wait until healthy", || {
            wait_until_healthy(self.sh, stack, timeout)
        })?;
        changes.serving_at = Some(Instant::now());
        Ok(())
    }

    /// The fast path for a new image with pending migrations: the migration container is
    /// started and waits, ready, while the old bot still serves; Compose then replaces the bot,
    /// and the moment the old one exits the migration goes. The new bot starts meanwhile and
    /// waits (only reading) until the database is current, so the bot is down for about as
    /// long as the migration takes, not for the sum of the Docker commands.
    pub(super) fn replace_and_migrate(
        &self,
        stack: &Stack,
        status: &DbStatus,
        old: &ContainerState,
        report: &mut Report,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let (sh, printer) = (self.sh, self.printer);
        let migration = self.prepare_migration(stack, status, true, report)?;
        let waiting = signals::checkpoint().and_then(|()| {
            printer.step(report, "start migration, waiting", || {
                migration.start_waiting()
            })
        });
        let migration_id = migration.id.clone();
        changes.migration = Some(migration);
        let waiting = waiting?;
        if let Err(e) = signals::checkpoint() {
            waiting.cancel();
            return Err(e);
        }
        journal::volume(format!(
            "being migrated from {} while Compose replaces the bot; the pre-deploy backup is taken first, in container {}",
            describe(status),
            short(&migration_id)
        ));
        let up: std::process::Command = stack.up_cmd(sh).into();
        let mut replaced = None;
        let outcome = printer.step(report, "migrate database", || {
            let r = replace_then_go(up, &old.id, waiting)?;
            replaced = Some((r.stopped_at, r.went));
            r.compose?;
            r.migration
        });
        let (stopped_at, went) = replaced.unwrap_or((None, false));
        changes.stopped_at = stopped_at;
        changes.migrated = went;
        let outcome = outcome?;
        printer.detail(
            report,
            "Compose replaced the bot meanwhile; the new one waited for the schema",
        );
        self.record_migration(stack, status, &outcome, report, changes)?;
        self.wait_until_serving(stack, report, changes)
    }

    /// Reports what the migration did and saves its backup on this machine.
    pub(super) fn record_migration(
        &self,
        stack: &Stack,
        status: &DbStatus,
        outcome: &serde_json::Value,
        report: &mut Report,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let (sh, printer) = (self.sh, self.printer);
        let migration = changes
            .migration
            .as_ref()
            .context("no migration container")?;
        {
            let applied = outcome["applied"].as_array().map_or(0, Vec::len);
            printer.detail(
                report,
                format!(
                    "{}applied {applied} migrations, now at revision {}",
                    outcome["adopted"]
                        .as_u64()
                        .map(|v| format!("adopted revision {v}, "))
                        .unwrap_or_default(),
                    outcome["to"]
                ),
            );
            report.revision_after = outcome["to"].as_u64().map(|v| v as u32);
            journal::volume(format!(
                "migrated to revision {}; the pre-deploy backup is in container {}",
                outcome["to"],
                short(&migration.id)
            ));
            if !outcome["backup"].is_null() {
                let host_file = self.state_dir.join(self.backup_name(stack, status));
                let saved = printer.step(report, "save backup", || {
                    migration.copy_backup(sh, &host_file)?;
                    backups::seal(&host_file).map(drop)
                });
                match saved {
                    Ok(()) => {
                        journal::volume(format!(
                            "migrated to revision {}; the pre-deploy backup is saved as {}",
                            outcome["to"],
                            host_file.display()
                        ));
                        printer.detail(report, host_file.display().to_string());
                        report.backup = Some(host_file.display().to_string());
                        changes.backup_on_host = Some(host_file);
                    }
                    // The migration is committed and the new bot may serve already: a copy
                    // this machine could not take is no reason to undo a good deploy. The
                    // backup stays in the labelled migration container, which the next
                    // `backup` or deploy saves.
                    Err(e) => {
                        let _ = std::fs::remove_file(&host_file);
                        let warning = format!(
                            "the pre-deploy backup could not be saved as {} ({e:#}); it is kept in container {}, and the next `cargo xtask backup` or deploy saves it once the folder has room",
                            host_file.display(),
                            short(&migration.id)
                        );
                        printer.info(&format!("warning: {warning}"));
                        report.warnings.push(warning);
                        // The name it will have once saved: `rollback` finds it there.
                        report.backup = Some(host_file.display().to_string());
                        changes.backup_pending = true;
                    }
                }
            }
        }
        Ok(())
    }
}
/// What happened while Compose replaced the bot.
struct Replaced {
    /// When the old bot exited, if it did.
    stopped_at: Option<Instant>,
    /// Whether the migration was told to go (so the database may have changed).
    went: bool,
    /// What the migration reported.
    migration: anyhow::Result<serde_json::Value>,
    /// Whether Compose succeeded.
    compose: anyhow::Result<()>,
}
/// Runs Compose's `up` (which stops the old bot and starts the new one) and tells the waiting
/// migration to go the moment the old bot has exited. Fails only when nothing could start.
fn replace_then_go(
    mut up: std::process::Command,
    old_id: &str,
    waiting: database::WaitingMigration,
) -> anyhow::Result<Replaced> {
    use std::process::{Command, Stdio};
    let mut old_exit = crate::signals::own_group(&mut Command::new("docker"))
        .args(["wait", old_id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run docker wait")?;
    let compose = std::thread::spawn(move || {
        crate::signals::own_group(&mut up)
            .stdin(Stdio::null())
            .output()
    });
    let deadline = Instant::now() + process::DEFAULT_TIMEOUT;
    let mut wait_failed = false;
    let stopped = loop {
        match old_exit.try_wait()? {
            // `docker wait` printed the exit code: the old bot stopped.
            Some(status) if status.success() && !wait_failed => break true,
            Some(_) => wait_failed = true,
            None => {}
        }
        let given_up = compose.is_finished() || Instant::now() >= deadline;
        if wait_failed || given_up {
            // `docker wait` failed (or Compose is done): the engine says whether it stopped.
            if old_bot_stopped(old_id) {
                break true;
            }
            if given_up {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stopped_at = stopped.then(Instant::now);
    let migration = if stopped {
        waiting.go()
    } else {
        waiting.cancel();
        let _ = old_exit.kill();
        Err(anyhow::anyhow!(
            "Compose did not stop the old bot, so nothing was migrated"
        ))
    };
    let _ = old_exit.wait();
    let compose = match compose.join() {
        Err(_) => Err(anyhow::anyhow!("the Compose thread panicked")),
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot run Compose: {e}")),
        Ok(Ok(output)) if !output.status.success() => Err(anyhow::anyhow!(
            "starting the stack: Compose exited with {}:\n{}",
            output
                .status
                .code()
                .map_or("a signal".into(), |c| c.to_string()),
            process::tail(&String::from_utf8_lossy(&output.stderr), 25)
        )),
        Ok(Ok(_)) => Ok(()),
    };
    Ok(Replaced {
        stopped_at,
        went: stopped,
        migration,
        compose,
    })
}
/// Whether the engine says the old bot's container no longer runs (stopped, or removed).
fn old_bot_stopped(old_id: &str) -> bool {
    use std::process::{Command, Stdio};
    let inspected = crate::signals::own_group(&mut Command::new("docker"))
        .args(["inspect", "--format", "{{.State.Running}}", old_id])
        .stdin(Stdio::null())
        .output();
    match inspected {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim() == "false",
        Ok(out) => String::from_utf8_lossy(&out.stderr).contains("No such"),
        Err(_) => false,
    }
}
