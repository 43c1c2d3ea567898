//! The deploy on a server where the old app runs (or whose database comes from `--import`), and
//! its rollback, which brings the old app back whatever else failed.

use std::time::Instant;

use xshell::cmd;

use crate::compose::Stack;
use crate::database::{self, DbStatus};
use crate::docker::ContainerState;
use crate::journal;
use crate::old_app::{self, OldApp};
use crate::process;

use super::{Changes, Deploy, shared::*};

impl Deploy<'_> {
    /// The deploy on a server where the old app's container is the project's bot (or whose
    /// database comes from `--import`): the old app stops, its database is copied into the
    /// volume with the backup API, adopted and migrated; its container is kept out of
    /// Compose's sight; then the new bot starts and is waited for.
    pub(super) fn replace_old_app(
        &self,
        stack: &Stack,
        status: &DbStatus,
        old: &OldApp,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let (sh, run) = (self.sh, self.run);
        if let Some(container) = old.container.as_ref().filter(|c| c.is_running()) {
            run.step("stop old app", || stop_container(&container.id))?;
            changes.stopped_at = Some(Instant::now());
        }
        if !database::volume_exists(sh, stack) {
            database::create_volume(sh, stack)?;
        }
        let mut status = status.clone();
        if let Some(planned) = &old.import {
            changes.imported = true;
            journal::volume(format!(
                "was empty; the old app's database {} is being copied into it",
                planned.source
            ));
            let imported = run.step("import database", || {
                old_app::import(sh, stack, &stack.bot_image, &planned.source)
            })?;
            let text = planned.describe(&imported);
            run.detail(text.clone());
            run.edit().imported_from = Some(text);
            database::refuse_unsafe(&imported.status)?;
            status = imported.status;
        }
        if database::needs_migration(&status) {
            let migration = self.prepare_migration(stack, &status, false)?;
            let migration = changes.migration.insert(migration);
            changes.migrated = true;
            let outcome = run.step("migrate database", || migration.run())?;
            self.record_migration(stack, &status, &outcome, changes)?;
        }
        if let Some(container) = &old.container {
            let kept = run.step("keep old app's container", || {
                old_app::keep(sh, stack, container)
            })?;
            run.detail(format!(
                "stopped, kept as {} until the new bot is healthy",
                kept.copy_name
            ));
            changes.kept = Some(kept);
        }
        changes.stopped_at.get_or_insert_with(Instant::now);
        run.step("start bot", || stack.up(sh))?;
        self.wait_until_serving(stack, changes)?;
        if let (Some(kept), Some(container)) = (&changes.kept, &old.container) {
            run.edit().old_app = Some(format!(
                "{} is stopped; a copy is kept as {} (image {}). Once you no longer need it: docker rm {} && docker rmi {}",
                container.name, kept.copy_name, kept.image, kept.copy_name, kept.image
            ));
        }
        if let Some(migration) = changes.migration.take() {
            migration.remove(sh);
        }
        Ok(())
    }

    /// Undoes [`Deploy::replace_old_app`]: removes the new bot, discards the imported copy (or
    /// restores the migrated database), and starts the old app again. Every part is tried even
    /// when one before it failed: the old app must come back whatever else went wrong.
    pub(super) fn roll_back_old_app(
        &self,
        stack: &Stack,
        old: &OldApp,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let (sh, run) = (self.sh, self.run);
        let mut failures = Vec::new();
        let ours = stack
            .bot_containers(sh)
            .unwrap_or_default()
            .into_iter()
            .filter(ContainerState::is_ours);
        for container in ours {
            if let Err(e) = run.step("rollback: remove new bot", || {
                process::run(force_remove_argv(&container.id), "removing the new bot").map(drop)
            }) {
                failures.push(format!("{e:#}"));
            }
        }
        if changes.migration.is_some()
            && !changes.imported
            && changes.migrated
            && let Err(e) = self.restore_pre_deploy_database(stack, changes)
        {
            failures.push(format!("{e:#}"));
        }
        if let Some(migration) = changes.migration.take() {
            migration.remove(sh);
        }
        if changes.imported {
            // The volume was empty before the import (checked), so nothing of value goes.
            let volume = stack.volume();
            if let Err(e) = run.step("rollback: discard imported database", || {
                process::run(
                    cmd!(sh, "docker volume rm -f {volume}"),
                    "removing the volume with the imported copy",
                )
                .map(drop)
            }) {
                failures.push(format!(
                    "{e:#}\n(the imported copy stays in volume {volume}; remove it with `docker volume rm {volume}` once no container uses it)"
                ));
            }
        }
        run.edit().revision_after = None;
        if let Some(container) = &old.container {
            match run.step("rollback: start old app", || {
                old_app::bring_back(
                    sh,
                    &container.id,
                    changes.kept.as_ref(),
                    container.is_running(),
                )
            }) {
                Ok(name) => run.detail(format!("the old app runs again as {name}")),
                Err(e) => failures.push(format!(
                    "{e:#}\nThe old app is NOT running. {}",
                    match &changes.kept {
                        Some(kept) => format!(
                            "Its stopped copy is {} (image {}): `docker start {}` runs it.",
                            kept.copy_name, kept.image, kept.copy_name
                        ),
                        None => format!("Start it with `docker start {}`.", container.name),
                    }
                )),
            }
        }
        anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    }
}
