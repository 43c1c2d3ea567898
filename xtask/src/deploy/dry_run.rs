//! `--dry-run`: the steps a deploy would take, with their Docker commands, and the migrations
//! with their SQL; nothing is changed.

use anyhow::Context;
use migrations::State;
use migrations::json::PlanReport;
use xshell::cmd;

use crate::backups;
use crate::compose::Stack;
use crate::database::{self, BackupPlace, MigrationContainer, MigrationLabels};
use crate::docker::{self, ContainerState, Throwaway};
use crate::images;
use crate::old_app;
use crate::process;

use super::shared::{remove_argv, stop_argv};
use super::{Deploy, Mode, describe};

impl Deploy<'_> {
    /// Prints what the deploy would do and changes nothing: no image, container, volume or
    /// backup is touched. The plan of migrations comes from this build's engine; each Docker
    /// and Compose command is made by the same function the deploy runs it from (ids not known
    /// before the deploy shown as `<...>`).
    pub(super) fn dry_run(
        &self,
        stack: &Stack,
        before: Option<&ContainerState>,
    ) -> anyhow::Result<()> {
        let (sh, run) = (self.sh, self.run);
        let mut plan = Vec::new();
        let shown = |command: process::Argv| command.shown();
        // Held while the plan runs the built binary: another build must not replace it.
        let bot = match self.mode {
            Mode::Migrate | Mode::Recover => None,
            _ => Some(run.step("build binaries", || {
                images::build_binaries(sh, self.args.schema_head)
            })?),
        };
        if bot.is_some() {
            for (build, _) in images::image_builds(sh, stack) {
                plan.push(format!("build images: {}", shown(build.into())));
            }
        }
        let (mut migrations, from, to) =
            run.step("plan migrations", || self.plan_migrations(stack))?;
        run.edit().revision_before = from;
        run.edit().revision_after = to;
        let image = docker::image_id(sh, &stack.bot_image)?;
        // Read only: the size and revision the migration container's labels carry.
        let mut status = match &image {
            Some(_) => Some(database::status(sh, stack, &stack.bot_image)?),
            None => None,
        };
        let old_app_present = before.is_some_and(|c| !c.is_ours());
        let from_old_app = old_app_present || self.import.import.is_some();
        if from_old_app {
            let name = before.map_or_else(|| "(none)".to_owned(), |c| c.name.clone());
            let importing = !self.import.fresh;
            if image.is_some() && importing {
                // Reading only: the same search and check the deploy makes first.
                let old = run.step("look for the old app", || {
                    old_app::look(sh, &stack.bot_image, before, self.import)
                })?;
                if let Some(planned) = &old.import {
                    let matched = planned.checked.status.effective_version();
                    plan.push(format!(
                        "look for the old app: found {} ({})",
                        planned.source,
                        describe(&planned.checked.status)
                    ));
                    // The imported copy is adopted at the revision it matches: only the
                    // migrations after it run.
                    migrations.retain(|(file, _)| {
                        file.split('_')
                            .next()
                            .and_then(|n| n.parse::<u32>().ok())
                            .is_some_and(|n| Some(n) > matched)
                    });
                    run.edit().revision_before = matched;
                    run.edit().state_before = Some(planned.checked.status.state.to_string());
                    status = Some(planned.checked.status.clone());
                }
            } else if importing {
                plan.push(format!(
                    "look for the old app: {name} is not ours; after the build its mounts are searched for its database (bot db find-databases) and the one found is checked on a copy (a dry run before the first build cannot search; the migrations below assume an empty volume)"
                ));
            }
            if let Some(c) = before.filter(|c| old_app_present && c.is_running()) {
                plan.push(format!("stop old app: {}", shown(stop_argv(&c.id))));
            }
            if importing {
                plan.push(format!(
                    "import database: # bot db import <its database> into {}:/data (the backup API); it is adopted at the revision it matches",
                    stack.volume()
                ));
            }
        }
        // The deploy's own choice of path (`Deploy::change`): the fast one for a new image
        // with pending migrations while the bot serves and owns its files.
        let running = before.filter(|c| c.is_ours() && c.status == "running");
        let pending = !migrations.is_empty();
        let image_changes =
            self.mode.builds() || running.is_none_or(|c| Some(&c.image_id) != image.as_ref());
        let fix_owner = match (&image, from_old_app) {
            (Some(_), false) => {
                !database::fix_ownership(sh, stack, &stack.bot_image, true)?.is_empty()
            }
            _ => false,
        };
        let fast = running.filter(|_| pending && image_changes && !fix_owner && !from_old_app);
        let place = match self.mode.builds() {
            true => BackupPlace::in_volume("pre-deploy.db"),
            false => BackupPlace::for_image(sh, &stack.bot_image, "pre-deploy.db"),
        };
        let version = status.as_ref().and_then(|s| s.effective_version());
        let backup_name = backups::name(&stack.project, &self.time, version, None);
        let labels = MigrationLabels {
            deploy: &self.time,
            backup_name: &backup_name,
            bytes: status.as_ref().map_or(0, |s| s.copy_bytes()),
        };
        let migration = "<migration>";
        if pending {
            let create = MigrationContainer::create_cmd(
                sh,
                stack,
                &stack.bot_image,
                &labels,
                &place,
                fast.is_some(),
            );
            plan.push(format!("prepare migration: {}", shown(create.into())));
        }
        if let Some(old) = fast {
            plan.push(format!(
                "start migration, waiting: {}",
                shown(MigrationContainer::start_argv(migration, true))
            ));
            plan.push(format!(
                "start new bot: {}",
                shown(stack.beside_cmd(sh).into())
            ));
            plan.push(format!(
                "migrate database: {} # `go` to the waiting migration the moment it has exited",
                shown(stop_argv(&old.id))
            ));
            plan.push(format!("migrate database: {}", shown(remove_argv(&old.id))));
        } else {
            if let Some(c) = running {
                plan.push(format!("stop bot: {}", shown(stop_argv(&c.id))));
            }
            if fix_owner {
                plan.push(format!(
                    "fix volume ownership: # bot db fix-ownership --owner {} in a container on {}",
                    database::BOT_OWNER,
                    stack.volume()
                ));
            }
            if pending {
                plan.push(format!(
                    "migrate database: {}",
                    shown(MigrationContainer::start_argv(migration, false))
                ));
            }
        }
        // The engine takes no backup of an empty database (nothing to lose).
        if pending && status.as_ref().is_some_and(|s| s.state != State::Empty) {
            let copy = database::copy_out_cmd(
                sh,
                &format!("{migration}:{}", place.path),
                &database::partial_name(&self.state_dir.join(&backup_name)),
            );
            plan.push(format!("save backup: {}", shown(copy.into())));
        }
        if old_app_present {
            plan.push(format!(
                "keep old app's container: # docker commit {} and a stopped copy out of Compose's sight",
                before.map_or("", |c| c.name.as_str())
            ));
        }
        if fast.is_none() {
            plan.push(format!("start bot: {}", shown(stack.up_cmd(sh).into())));
        }
        plan.push("wait until healthy: docker container inspect <bot-container> # until it reports healthy".into());
        run.info("dry run: nothing was changed. The deploy would:");
        for line in &plan {
            run.info(&format!("  {line}"));
        }
        for (file, sql) in &migrations {
            run.info(&format!("\n-- {file}\n{}", sql.trim_end()));
        }
        run.edit().plan = plan;
        run.edit().migrations = migrations.iter().map(|(file, _)| file.clone()).collect();
        Ok(())
    }

    /// The migrations this build would apply to the live database, with their SQL.
    pub(super) fn plan_migrations(&self, stack: &Stack) -> anyhow::Result<MigrationPlan> {
        let sh = self.sh;
        let image = match self.mode {
            Mode::Migrate | Mode::Recover => stack.bot_image.clone(),
            _ => docker::image_id(sh, &stack.bot_image)?.unwrap_or_default(),
        };
        let host_bot = images::release_dir(self.args.schema_head).join("bot"); // kept by the build lock the dry run holds
        let plan_json = if !database::volume_exists(sh, stack)
            || image.is_empty() && self.mode.builds()
        {
            // No database yet: the plan is every migration of this build. The engine wants the
            // folder of a database that does not exist yet to exist.
            let folder = database::TempFile::new("plan");
            std::fs::create_dir_all(&folder.0)?;
            let out = process::run(
                cmd!(sh, "{host_bot} db upgrade --dry-run --json")
                    .env("DATABASE_PATH", folder.0.join("bot_database.db")),
                "planning the migrations",
            );
            let _ = std::fs::remove_dir_all(&folder.0);
            let out = out?;
            serde_json::from_str::<PlanReport>(out.stdout.trim())?
        } else {
            // Copy the binary that will run into a created container on the volume and ask it.
            let mount = format!("{}:/data", stack.volume());
            let entry = if !self.mode.builds() {
                "/bot"
            } else {
                "/tmp/bot-new"
            };
            let owner = database::BOT_OWNER;
            let helper = Throwaway::create(
                sh,
                cmd!(
                    sh,
                    "docker create --user {owner} -v {mount} --entrypoint {entry} {image} db upgrade --adopt --dry-run --json"
                ),
                "preparing the plan",
            )?;
            if self.mode.builds() {
                helper.copy_in(
                    &host_bot,
                    "/tmp/bot-new",
                    "copying the new binary for the plan",
                    process::DEFAULT_TIMEOUT,
                )?;
            }
            let out = helper.run("planning the migrations", process::DEFAULT_TIMEOUT)?;
            let line = out
                .stdout
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .context("the plan printed no JSON")?;
            serde_json::from_str(line)?
        };
        let plan = plan_json.plan;
        let steps = plan
            .steps
            .into_iter()
            .map(|s| (s.file.into_owned(), s.sql.into_owned()))
            .collect();
        Ok((steps, plan.from, Some(plan.to)))
    }
}
/// The migrations a dry run found (file and SQL), and the revisions before and after.
type MigrationPlan = (Vec<(String, String)>, Option<u32>, Option<u32>);
