//! `--dry-run`: the steps a deploy would take, with their Docker commands, and the migrations
//! with their SQL; nothing is changed.

use anyhow::Context;
use migrations::json::PlanReport;
use xshell::cmd;

use crate::compose::Stack;
use crate::database;
use crate::docker::{self, ContainerState};
use crate::images;
use crate::old_app;
use crate::process;
use crate::report::Report;

use super::{Deploy, Mode, describe};

impl Deploy<'_> {
    /// Prints what the deploy would do and changes nothing: no image, container, volume or
    /// backup is touched. The plan of migrations comes from this build's engine.
    pub(super) fn dry_run(
        &self,
        stack: &Stack,
        before: Option<&ContainerState>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let (sh, printer) = (self.sh, self.printer);
        let mut plan = Vec::new();
        // Held while the plan runs the built binary: another build must not replace it.
        let bot = match self.mode {
            Mode::Migrate | Mode::Recover => None,
            _ => Some(printer.step(report, "build binaries", || {
                images::build_binaries(sh, self.args.schema_head)
            })?),
        };
        if bot.is_some() {
            plan.push(format!(
                "build images: docker build -f docker/Dockerfile -t {} target/docker-context",
                stack.bot_image
            ));
        }
        let (mut migrations, from, to) =
            printer.step(report, "plan migrations", || self.plan_migrations(stack))?;
        report.revision_before = from;
        report.revision_after = to;
        let old_app_present = before.is_some_and(|c| !c.is_ours());
        if old_app_present || self.import.import.is_some() {
            let name = before.map_or_else(|| "(none)".to_owned(), |c| c.name.clone());
            let importing = !self.import.fresh;
            if docker::image_id(sh, &stack.bot_image)?.is_some() && importing {
                // Reading only: the same search and check the deploy makes first.
                let old = printer.step(report, "look for the old app", || {
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
                    report.revision_before = matched;
                    report.state_before = Some(planned.checked.status.state.to_string());
                }
            } else if importing {
                plan.push(format!(
                    "look for the old app: {name} is not ours; after the build its mounts are searched for its database (bot db find-databases) and the one found is checked on a copy (a dry run before the first build cannot search; the migrations below assume an empty volume)"
                ));
            }
            if old_app_present {
                plan.push(format!("stop old app: docker stop {name}"));
            }
            if importing {
                plan.push(format!(
                    "import database: bot db import <its database> into {}:/data (the backup API); it is adopted at the revision it matches",
                    stack.volume()
                ));
            }
            if old_app_present {
                plan.push(format!(
                    "keep old app's container: docker commit {name} and a stopped copy out of Compose's sight"
                ));
            }
        }
        match before {
            Some(c) if !c.is_ours() => {}
            Some(c) if c.status == "running" => {
                plan.push("stop bot: docker stop <bot container>".into());
            }
            _ => {}
        }
        if !migrations.is_empty() {
            plan.push(format!(
                "migrate database: docker run --user {} -v {}:/data -v {} {} db upgrade --adopt --backup-to {}/pre-deploy.db",
                database::BOT_OWNER,
                stack.volume(),
                database::BACKUP_VOLUME,
                stack.bot_image,
                database::BACKUP_VOLUME
            ));
            plan.push(format!(
                "save backup: docker cp <migration>:{}/pre-deploy.db {}/",
                database::BACKUP_VOLUME,
                self.state_dir.display()
            ));
        }
        plan.push(format!(
            "start bot: {} -p {} up -d bot{}",
            match stack.flavour {
                crate::compose::Flavour::V1(_) =>
                    "docker-compose -f docker/docker-compose.prod.yml",
                crate::compose::Flavour::Plugin(_) =>
                    "docker compose -f docker/docker-compose.prod.yml",
            },
            stack.project,
            if stack.demo { " telegram-standin" } else { "" }
        ));
        plan.push("wait until healthy: docker inspect <bot container> (health)".into());
        printer.info("dry run: nothing was changed. The deploy would:");
        for line in &plan {
            printer.info(&format!("  {line}"));
        }
        for (file, sql) in &migrations {
            printer.info(&format!("\n-- {file}\n{}", sql.trim_end()));
        }
        report.plan = plan;
        report.migrations = migrations.iter().map(|(file, _)| file.clone()).collect();
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
            let id = process::run(
                cmd!(sh, "docker create --user {owner} -v {mount} --entrypoint {entry} {image} db upgrade --adopt --dry-run --json"),
                "preparing the plan",
            )?
            .stdout
            .trim()
            .to_owned();
            let result = (|| {
                if self.mode.builds() {
                    let target = format!("{id}:/tmp/bot-new");
                    process::run(
                        cmd!(sh, "docker cp {host_bot} {target}"),
                        "copying the new binary for the plan",
                    )?;
                }
                process::run(cmd!(sh, "docker start -a {id}"), "planning the migrations")
            })();
            let _ = crate::process::output(cmd!(sh, "docker rm -f {id}"));
            let out = result?;
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
