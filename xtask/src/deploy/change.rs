//! The change itself: prepare the migration, stop the bot, migrate (backing up first), save the
//! backup, start the new bot and wait until it serves. Two paths: the slow one (stop, then
//! migrate, then start) and the fast one for a new image with pending migrations (the
//! migration waits, ready, and the new bot is started beside the old one, which still serves;
//! the old one is stopped, and the migration goes the moment it has exited).

use std::time::{Duration, Instant};

use anyhow::Context;
use migrations::json::UpgradeReport;

use crate::backups;
use crate::compose::Stack;
use crate::database::{self, DbStatus, MigrationContainer, MigrationLabels};
use crate::docker::ContainerState;
use crate::journal;
use crate::process;
use crate::signals;

use super::{Changes, Deploy, Found, Route, describe, shared::*, short};

impl Deploy<'_> {
    /// The name the pre-deploy backup of `status` gets in the backup folder.
    pub(super) fn backup_name(&self, stack: &Stack, status: &DbStatus) -> String {
        backups::name(&stack.project, &self.time, status.effective_version(), None)
    }

    pub(super) fn change(
        &self,
        stack: &Stack,
        status: &DbStatus,
        found: Found<'_>,
        route: Route,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let (sh, run) = (self.sh, self.run);
        let Found {
            before, fix_owner, ..
        } = found;
        if database::needs_migration(status) && !database::volume_exists(sh, stack) {
            database::create_volume(sh, stack)?;
        }
        if let Some(old) = before.filter(|_| route == Route::Fast) {
            return self.replace_and_migrate(stack, status, old, changes);
        }
        if database::needs_migration(status) {
            changes.migration = Some(self.prepare_migration(stack, status, false)?);
        }
        if let Some(container) = before.filter(|c| c.status == "running") {
            signals::checkpoint()?;
            run.step("stop bot", || stop_container(&container.id))?;
            changes.stopped_at = Some(Instant::now());
        }
        if fix_owner {
            run.step("fix volume ownership", || {
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
            let outcome = run.step("migrate database", || migration.run())?;
            self.record_migration(stack, status, &outcome, changes)?;
        }
        changes.stopped_at.get_or_insert_with(Instant::now);
        signals::checkpoint()?;
        run.step("start bot", || stack.up(sh))?;
        self.wait_until_serving(stack, changes)
    }

    /// Step "prepare migration": creates the labelled migration container (one that waits for
    /// "go" on the fast path) and notes in the history where its backup will be, before anything
    /// runs: a run killed after this point leaves a line that leads to it.
    pub(super) fn prepare_migration(
        &self,
        stack: &Stack,
        status: &DbStatus,
        waiting: bool,
    ) -> anyhow::Result<MigrationContainer> {
        let backup_name = self.backup_name(stack, status);
        let labels = MigrationLabels {
            deploy: &self.time,
            backup_name: &backup_name,
            bytes: status.copy_bytes(),
        };
        let migration = self.run.step("prepare migration", || {
            MigrationContainer::create(self.sh, stack, &labels, waiting)
        })?;
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
        Ok(migration)
    }

    /// Waits until the new bot is healthy, and notes when it began to serve.
    pub(super) fn wait_until_serving(
        &self,
        stack: &Stack,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        wait_until_healthy_step(self.run, self.sh, stack, self.args)?;
        changes.serving_at = Some(Instant::now());
        Ok(())
    }

    /// The fast path for a new image with pending migrations: the migration container is
    /// started and waits, ready, and the new bot is started beside the old one, which still
    /// serves; the new bot waits (only reading) until the database is current. Then the old
    /// bot is stopped, and the moment it has exited the migration goes. So the bot is down
    /// for about as long as the migration takes: neither the containers' start nor the
    /// backup's copy is part of it.
    pub(super) fn replace_and_migrate(
        &self,
        stack: &Stack,
        status: &DbStatus,
        old: &ContainerState,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let (sh, run) = (self.sh, self.run);
        let migration = self.prepare_migration(stack, status, true)?;
        let waiting = signals::checkpoint()
            .and_then(|()| run.step("start migration, waiting", || migration.start_waiting()));
        let migration_id = migration.id.clone();
        changes.migration = Some(migration);
        let waiting = waiting?;
        let new_bot = signals::checkpoint()
            .and_then(|()| run.step("start new bot", || stack.start_beside(sh, old)));
        let new_bot = match new_bot {
            Ok(new_bot) => new_bot,
            Err(e) => {
                waiting.cancel();
                remove_beside(sh, stack, old);
                return Err(e);
            }
        };
        if let Err(e) = signals::checkpoint() {
            waiting.cancel();
            remove_container(&new_bot.id);
            return Err(e);
        }
        journal::volume(format!(
            "being migrated from {} while the old bot stops; the pre-deploy backup is taken first, in container {}; the new bot ({}) waits for the schema",
            describe(status),
            short(&migration_id),
            short(&new_bot.id)
        ));
        let mut stopped_at = None;
        let outcome = run.step("migrate database", || {
            let (stopped, migration) = stop_then_go(&old.id, waiting);
            stopped_at = stopped;
            migration
        });
        changes.stopped_at = stopped_at;
        changes.migrated = stopped_at.is_some();
        if changes.migrated {
            // The old bot is stopped: its container goes, as Compose's own replacement would
            // remove it, so that the service has one container again.
            let removed = process::run(
                remove_argv(&old.id),
                "removing the old bot's stopped container",
            );
            if let Err(e) = removed {
                run.info(&format!(
                    "warning: the old bot's stopped container {} could not be removed ({e:#}); the next deploy removes it",
                    short(&old.id)
                ));
            }
        } else if let Err(e) = try_remove_container(&new_bot.id) {
            // Nothing was migrated and the old bot may still serve: the new one goes, and
            // when it cannot (the engine went away), the error says what runs.
            let at = super::where_flags(self.args);
            // One line: what `docker rm` said last (the engine's own words) is enough here.
            let error = format!("{e:#}");
            let said = error.lines().map(str::trim).rfind(|l| !l.is_empty());
            let said = said.unwrap_or_default();
            return Err(outcome.err().unwrap_or_else(|| anyhow::anyhow!("the deploy stopped")).context(format!(
                "the new bot's container {} may run beside the old one with the same token: it could not be removed ({said}); once the engine answers, `cargo xtask status{at}` shows it and the next deploy (or `cargo xtask recover{at}`) removes it",
                short(&new_bot.id)
            )));
        }
        let outcome = outcome?;
        run.detail("the new bot started beside the old one and waited for the schema");
        self.record_migration(stack, status, &outcome, changes)?;
        self.wait_until_serving(stack, changes)
    }

    /// Reports what the migration did and saves its backup on this machine.
    pub(super) fn record_migration(
        &self,
        stack: &Stack,
        status: &DbStatus,
        outcome: &UpgradeReport,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let (sh, run) = (self.sh, self.run);
        let migration = changes
            .migration
            .as_ref()
            .context("no migration container")?;
        let applied = outcome.upgrade.applied.len();
        run.detail(format!(
            "{}applied {applied} migrations, now at revision {}",
            outcome
                .adopted
                .map(|v| format!("adopted revision {v}, "))
                .unwrap_or_default(),
            outcome.upgrade.to
        ));
        run.edit().revision_after = Some(outcome.upgrade.to);
        journal::volume(format!(
            "migrated to revision {}; the pre-deploy backup is in container {}",
            outcome.upgrade.to,
            short(&migration.id)
        ));
        if outcome.backup.is_some() {
            let host_file = self.state_dir.join(self.backup_name(stack, status));
            let saved = run.step("save backup", || {
                migration.copy_backup(sh, &host_file)?;
                backups::seal(&host_file).map(drop)
            });
            // Saved or not: the name it has (or will have once saved, where `rollback` finds it).
            run.edit().backup = Some(host_file.clone());
            match saved {
                Ok(()) => {
                    journal::volume(format!(
                        "migrated to revision {}; the pre-deploy backup is saved as {}",
                        outcome.upgrade.to,
                        host_file.display()
                    ));
                    run.detail(host_file.display().to_string());
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
                    run.info(&format!("warning: {warning}"));
                    run.edit().warnings.push(warning);
                    changes.backup_pending = true;
                }
            }
        }
        Ok(())
    }
}
/// Stops the old bot (`docker stop`, its grace period as Compose's) and tells the waiting
/// migration to go the moment it has exited: `docker wait` printed its exit code, or the
/// engine says it no longer runs. Returns when the old bot exited, if it did (only then was the
/// migration told to go, so that the database may have changed), and what the migration said.
fn stop_then_go(
    old_id: &str,
    waiting: database::WaitingMigration,
) -> (Option<Instant>, anyhow::Result<UpgradeReport>) {
    let quiet =
        |argv: process::Argv| argv.start_with(|e| e.stdin_null().stdout_null().stderr_capture());
    let spawned = quiet(process::Argv::new("docker", ["wait", old_id]))
        .and_then(|wait| quiet(stop_argv(old_id)).map(|stop| (wait, stop)));
    let (old_exit, stop) = match spawned {
        Ok(both) => both,
        Err(e) => {
            waiting.cancel();
            let error = anyhow::anyhow!("cannot run docker to stop the old bot: {e}");
            return (None, Err(error));
        }
    };
    let deadline = Instant::now() + process::DEFAULT_TIMEOUT;
    let mut wait_failed = false;
    let stopped = loop {
        if wait_failed {
            stop.wait_briefly(Duration::from_millis(20));
        } else {
            // `docker wait` prints the exit code the moment the old bot stops.
            match old_exit.wait_briefly(Duration::from_millis(20)) {
                Some(out) if out.status.success() => break true,
                Some(_) => wait_failed = true,
                None => {}
            }
        }
        let given_up = stop.try_wait().is_some() || Instant::now() >= deadline;
        // `docker wait` failed (or `docker stop` is done): the engine says whether it stopped.
        if (wait_failed || given_up) && old_bot_stopped(old_id) {
            break true;
        }
        if given_up {
            break false;
        }
    };
    let stopped_at = stopped.then(Instant::now);
    let stopping = "stopping the old bot";
    let migration = if stopped {
        waiting.go()
    } else {
        waiting.cancel();
        let said = match stop.wait_within(stopping, STOP_ENDS) {
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(e) => format!("{e:#}"),
        };
        Err(anyhow::anyhow!(
            "the old bot did not stop, so nothing was migrated{}",
            if said.is_empty() {
                String::new()
            } else {
                format!(": {}", crate::secrets::scrub(&said))
            }
        ))
    };
    old_exit.stop();
    if let Err(e) = stop.wait_within(stopping, STOP_ENDS) {
        eprintln!("warning: {e:#}");
    }
    (stopped_at, migration)
}

/// How long `docker stop` may still take once the deploy is past waiting for it.
const STOP_ENDS: Duration = Duration::from_secs(30);

/// Whether the engine says the old bot's container no longer runs (stopped, or removed).
fn old_bot_stopped(old_id: &str) -> bool {
    let format = "{{.State.Running}}";
    let inspected = process::output(process::Argv::new(
        "docker",
        ["inspect", "--format", format, old_id],
    ));
    match inspected {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim() == "false",
        Ok(out) => String::from_utf8_lossy(&out.stderr).contains("No such"),
        Err(_) => false,
    }
}

/// Removes a container whatever its state (`docker rm -f`); a failure is only said.
fn remove_container(id: &str) {
    if let Err(e) = try_remove_container(id) {
        eprintln!("warning: {e:#}");
    }
}

/// Removes a container whatever its state (`docker rm -f`).
fn try_remove_container(id: &str) -> anyhow::Result<()> {
    process::run(force_remove_argv(id), "removing the new bot's container").map(drop)
}

/// Removes every container of the bot service but `old` (what a failed `start_beside` left).
fn remove_beside(sh: &xshell::Shell, stack: &Stack, old: &ContainerState) {
    if let Ok(containers) = stack.bot_containers(sh) {
        for container in containers.iter().filter(|c| c.id != old.id) {
            remove_container(&container.id);
        }
    }
}
