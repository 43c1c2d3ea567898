//! `--dry-run`: the steps a deploy would take, with their Docker commands, and the migrations
//! with their SQL; nothing is changed.

use anyhow::Context;
use migrations::State;
use migrations::json::PlanReport;
use xshell::cmd;

use crate::compose::Stack;
use crate::database::{self, BackupPlace, DbStatus, MigrationContainer, MigrationLabels};
use crate::docker::{self, ContainerState, Throwaway};
use crate::images;
use crate::old_app::{self, OldApp};
use crate::process;

use super::shared::{force_remove_argv, kept_bot_container, remove_argv, stop_argv};
use super::{Deploy, Found, Mode, Route, describe, refuse_import_over_a_database};

impl Deploy<'_> {
    /// Prints what the deploy would do and changes nothing: no image, container, volume or
    /// backup is touched. It reads what the deploy reads, takes the deploy's route
    /// ([`Found::route`]) and shows each Docker and Compose command as the function the deploy
    /// runs it from makes it (ids the deploy learns as it goes shown as `<...>`); the plan of
    /// migrations comes from this build's engine.
    pub(super) fn dry_run(
        &self,
        stack: &Stack,
        containers: Vec<ContainerState>,
        env_changes: bool,
    ) -> anyhow::Result<()> {
        let (sh, run) = (self.sh, self.run);
        let mut plan = Vec::new();
        let shown = |command: process::Argv| command.shown();
        let compose =
            |command: xshell::Cmd<'_>| format!("{} {}", stack.env_shown(), shown(command.into()));
        // Held while the plan runs the built binary: another build must not replace it.
        let binaries = match self.mode.builds() {
            true => Some(run.step("build binaries", || {
                images::build_binaries(sh, self.args.schema_head)
            })?),
            false => None,
        };
        // The bot containers a killed deploy left beside the one the deploy keeps.
        let kept = kept_bot_container(&containers);
        for (i, extra) in containers.iter().enumerate() {
            if kept.is_some_and(|keep| keep != i) {
                plan.push(format!(
                    "check machine: {} # a bot container a killed deploy left",
                    shown(force_remove_argv(&extra.id))
                ));
            }
        }
        let found_container = containers.get(kept.unwrap_or(0));
        let before = found_container.filter(|c| c.is_ours());
        if binaries.is_some() {
            for (build, _) in images::image_builds(sh, stack) {
                plan.push(format!("build images: {}", shown(build.into())));
            }
        }
        let (mut migrations, from, to) =
            run.step("plan migrations", || self.plan_migrations(stack))?;
        run.edit().revision_before = from;
        run.edit().revision_after = to;
        let image = docker::image_id(sh, &stack.bot_image)?;
        let labels = database::helper_labels(&stack.project);
        // The deploy's comparison of image ids, made before the build: a build of the very
        // binary the project's image holds gives that image again.
        let image_changes = match (before, &image, &binaries) {
            (None, _, _) => true,
            (Some(c), Some(tag), Some(built)) => {
                c.image_id != *tag || !images::holds_binary(sh, tag, &built.bot(), &labels)?
            }
            (Some(c), tag, _) => Some(&c.image_id) != tag.as_ref(),
        };
        // What the deploy reads: the database (None: not known before the first build), the
        // old app, the volume's ownership.
        let mut status = match &image {
            Some(_) => Some(database::status(sh, stack, &stack.bot_image)?),
            None if !database::volume_exists(sh, stack) => {
                Some(DbStatus::empty(to.unwrap_or_default()))
            }
            None => None,
        };
        let old_app_present = found_container.is_some_and(|c| !c.is_ours());
        let importing = (old_app_present || self.import.import.is_some()) && !self.import.fresh;
        let mut old = OldApp::default();
        if old_app_present || self.import.import.is_some() {
            if image.is_some() && importing {
                // Reading only: the same search and check the deploy makes first.
                old = run.step("look for the old app", || {
                    old_app::look(sh, &stack.bot_image, found_container, self.import)
                })?;
            } else {
                old.container = found_container.filter(|_| old_app_present).cloned();
            }
        }
        if let Some(planned) = &old.import {
            if let Some(volume) = &status {
                refuse_import_over_a_database(stack, volume, &old)?;
            }
            let matched = planned.checked.status.effective_version();
            plan.push(format!(
                "look for the old app: found {} ({})",
                planned.source,
                describe(&planned.checked.status)
            ));
            // The imported copy is adopted at the revision it matches: only the migrations
            // after it run.
            migrations.retain(|(file, _)| {
                file.split('_')
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| Some(n) > matched)
            });
            run.edit().revision_before = matched;
            run.edit().state_before = Some(planned.checked.status.state.to_string());
            status = Some(planned.checked.status.clone());
        } else if importing {
            status = None;
            plan.push(format!(
                "look for the old app: # {} is not ours or --import names a database; after the build its database is found (bot db find-databases) and checked on a copy (a dry run before the first build cannot search)",
                found_container.map_or("(none)", |c| c.name.as_str())
            ));
        }
        match status.as_mut() {
            // The project's image is older than this build, whose engine the deploy reads the
            // database with: this build's plan (made above, which refuses what it cannot
            // migrate) says whether there is anything to do.
            Some(status)
                if binaries.is_some()
                    && old.import.is_none()
                    && (status.state == State::Ahead || !database::needs_migration(status)) =>
            {
                status.state = match migrations.is_empty() {
                    true => State::Current,
                    false => State::Behind,
                };
            }
            Some(_) if binaries.is_some() && old.import.is_none() => {}
            Some(status) => database::refuse_unsafe(status)?,
            None => {}
        }
        let fix_owner = image.is_some()
            && old.import.is_none()
            && !importing
            && !database::fix_ownership(sh, stack, &stack.bot_image, true)?.is_empty();
        let found = Found {
            before,
            fix_owner,
            image_changes,
        };
        // Unknown before the first build (an import not yet searched): as the import brings it.
        let migrates = status.as_ref().is_none_or(database::needs_migration);
        let route = match &status {
            Some(status) => found.route(status, &old, env_changes),
            None if importing => Route::FromOldApp,
            None => Route::Slow,
        };
        if route == Route::NothingToDo {
            run.info("dry run: nothing was changed; the deploy would have nothing to do");
            if stack.demo {
                plan.push(format!(
                    "nothing to do: {} # the stand-in may be missing",
                    compose(stack.up_cmd(sh))
                ));
            }
        }
        let running = before.filter(|c| c.status == "running");
        let place = match binaries.is_some() {
            true => BackupPlace::in_volume("pre-deploy.db"),
            false => BackupPlace::for_image(sh, &stack.bot_image, "pre-deploy.db"),
        };
        let backup_name = match &status {
            Some(status) => self.backup_name(stack, status),
            None => format!("{}-{}-r<revision>.db", stack.project, self.time),
        };
        let labels = MigrationLabels {
            deploy: &self.time,
            backup_name: &backup_name,
            bytes: status.as_ref().map_or(0, |s| s.copy_bytes()),
        };
        let migration = "<migration>";
        let prepare_migration = |waiting: bool| {
            let create = MigrationContainer::create_cmd(sh, stack, &labels, &place, waiting);
            let create = shown(create.into());
            // The size of a database not found yet.
            let create = match status {
                None => create.replace("org.tgbot.bytes=0", "org.tgbot.bytes=<size>"),
                Some(_) => create,
            };
            format!("prepare migration: {create}")
        };
        let migrate = format!(
            "migrate database: {}",
            shown(docker::start_argv(migration, false))
        );
        match route {
            Route::NothingToDo => {}
            Route::FromOldApp => {
                if let Some(c) = old.container.as_ref().filter(|c| c.is_running()) {
                    plan.push(format!("stop old app: {}", shown(stop_argv(&c.id))));
                }
                if importing {
                    plan.push(format!(
                        "import database: # bot db import <its database> into {}:/data (the backup API); it is adopted at the revision it matches",
                        stack.volume()
                    ));
                }
                if migrates {
                    plan.extend([prepare_migration(false), migrate]);
                }
            }
            Route::Fast => {
                let old_bot = running.expect("the fast path replaces a running bot");
                plan.extend([
                    prepare_migration(true),
                    format!(
                        "start migration, waiting: {}",
                        shown(docker::start_argv(migration, true))
                    ),
                    format!("start new bot: {}", compose(stack.beside_cmd(sh))),
                    format!(
                        "migrate database: {} # `go` to the waiting migration the moment it has exited",
                        shown(stop_argv(&old_bot.id))
                    ),
                    format!("migrate database: {}", shown(remove_argv(&old_bot.id))),
                ]);
            }
            Route::Slow => {
                if migrates {
                    plan.push(prepare_migration(false));
                }
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
                if migrates {
                    plan.push(migrate);
                }
            }
        }
        // The engine takes no backup of an empty database (nothing to lose).
        if route != Route::NothingToDo
            && migrates
            && status.as_ref().is_none_or(|s| s.state != State::Empty)
        {
            let copy = database::copy_out_cmd(
                sh,
                &format!("{migration}:{}", place.path),
                &database::partial_name(&self.state_dir.join(&backup_name)),
            );
            plan.push(format!("save backup: {}", shown(copy.into())));
        }
        if let Some(c) = old
            .container
            .as_ref()
            .filter(|_| route == Route::FromOldApp)
        {
            plan.push(format!(
                "keep old app's container: # docker commit {} and a stopped copy out of Compose's sight",
                c.name
            ));
        }
        if matches!(route, Route::Slow | Route::FromOldApp) {
            plan.push(format!("start bot: {}", compose(stack.up_cmd(sh))));
        }
        if route != Route::NothingToDo {
            plan.push("wait until healthy: docker container inspect <bot-container> # until it reports healthy".into());
            run.info("dry run: nothing was changed. The deploy would:");
        }
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
            // Labelled as a helper: a dry run killed meanwhile leaves it to the next task.
            let labels = database::helper_labels(&stack.project);
            let helper = Throwaway::create(
                sh,
                cmd!(
                    sh,
                    "docker create {labels...} --user {owner} -v {mount} --entrypoint {entry} {image} db upgrade --adopt --dry-run --json"
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
