//! The deploy, as its steps. Everything that can be done while the old bot runs is done first,
//! then the bot is replaced, and every failure after the first change is rolled back. Each step
//! has one name, the same in the progress lines, the report, the history and the tests:
//!
//! | step | where |
//! | --- | --- |
//! | check machine | [`shared::check_machine`] |
//! | (finish an unfinished run, remove a bot container it left, save leftover backups) | [`cleanup`] |
//! | build images | [`Deploy::run`], [`crate::images`] |
//! | look for the old app | [`Deploy::run`], [`crate::old_app`] |
//! | read database, check volume ownership, check room for the backup | [`Deploy::run`] |
//! | prepare migration, start migration, waiting, start new bot, stop bot, migrate database, save backup, start bot, wait until healthy | [`change`] |
//! | stop old app, import database, keep old app's container | [`from_old_app`] |
//! | rollback: ... | [`rollback`], [`from_old_app`] |
//! | (prune old backups and release tags) | [`cleanup`] |
//!
//! A dry run prints the same steps with their commands ([`dry_run`]). What every task that
//! changes the stack shares (the lock, the history line, the question, the health wait) is in
//! [`shared`].

mod change;
mod cleanup;
mod dry_run;
mod from_old_app;
mod rollback;
mod shared;

pub use cleanup::save_leftover_backups;
pub use shared::{
    check_machine, confirm, describe, describe_unfinished, locked_and_recorded,
    refuse_a_second_running_bot, short, stop_argv, stop_container, unfinished_runs,
    wait_until_healthy, wait_until_healthy_step,
};

use migrations::State;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use xshell::{Shell, cmd};

use crate::backups;
use crate::compose::Stack;
use crate::database::{self, DbStatus, MigrationContainer};
use crate::docker::{self, ContainerState};
use crate::exit;
use crate::history;
use crate::images;
use crate::journal;
use crate::old_app::{self, ImportArgs, OldApp};
use crate::output::Run;
use crate::process;
use crate::project::StackArgs;
use crate::signals;

use rollback::Previous;
use shared::sha256_file;

/// Which deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new server, with or without an existing database.
    FirstDeploy,
    /// The database part alone, with the image already there.
    Migrate,
    /// Build, then migrate and start the new image.
    FullUpdate,
    /// Finish a killed deploy forward: as `Migrate`, under its own name.
    Recover,
}

impl Mode {
    /// The task's name.
    pub fn task(self) -> &'static str {
        match self {
            Mode::FirstDeploy => "first-deploy",
            Mode::Migrate => "prod-migrate",
            Mode::FullUpdate => "prod-full-update",
            Mode::Recover => "recover",
        }
    }

    /// Whether it builds the images (else it deploys the image the project's tag names).
    pub fn builds(self) -> bool {
        matches!(self, Mode::FirstDeploy | Mode::FullUpdate)
    }
}

/// ` --host H -p P` as far as they are not the defaults: the commands a message names reach
/// the same engine and project when typed as shown.
pub(super) fn where_flags(args: &StackArgs) -> String {
    let mut flags = String::new();
    if let Some(host) = crate::host::Engine::current().remote() {
        flags += &format!(" --host {host}");
    }
    if let Some(project) = &args.project_name {
        flags += &format!(" -p {project}");
    }
    flags
}

/// Runs a deploy of the given mode: takes the lock, deploys, records the deploy.
pub fn run(
    sh: &Shell,
    args: &StackArgs,
    import: &ImportArgs,
    mode: Mode,
    run: &Run,
) -> anyhow::Result<()> {
    locked_and_recorded(sh, args, mode.task(), run, |state_dir, time| {
        Deploy {
            sh,
            args,
            import,
            mode,
            run,
            state_dir: state_dir.to_owned(),
            time: time.to_owned(),
        }
        .run()
    })?;
    if !args.dry_run {
        // The by-hand path (`docker-compose -f docker/docker-compose.prod.yml -p P run --rm bot
        // db status`) finds what this deploy used; a failure to write it changes no deploy.
        if let Err(e) = crate::project::stack(sh, args).and_then(|stack| stack.write_compose_env())
        {
            run.edit().warnings.push(format!("{e:#}"));
        }
    }
    Ok(())
}

struct Deploy<'a> {
    sh: &'a Shell,
    args: &'a StackArgs,
    import: &'a ImportArgs,
    mode: Mode,
    run: &'a Run,
    state_dir: PathBuf,
    time: String,
}

/// What the deploy found before changing anything.
#[derive(Clone, Copy)]
struct Found<'a> {
    /// The bot's container before the deploy.
    before: Option<&'a ContainerState>,
    /// Database files in the volume belong to someone else.
    fix_owner: bool,
    /// The bot's image differs from the one running.
    image_changes: bool,
}

/// Which way a deploy goes: one rule, [`Found::route`], for the deploy and its dry run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The bot runs this image and environment, healthy, on a current database it owns.
    NothingToDo,
    /// The old app's container is the bot, or `--import` brings its database ([`from_old_app`]).
    FromOldApp,
    /// A new image with changes to the database while the bot serves: the migration waits,
    /// ready, and the new bot starts beside the old one ([`change`]).
    Fast,
    /// Stop, fix ownership, migrate, start ([`change`]).
    Slow,
}

impl Found<'_> {
    /// The route for the database in `status` and what the old app left (`old`); `env_changes`:
    /// the environment file differs from the last deploy's.
    fn route(&self, status: &DbStatus, old: &OldApp, env_changes: bool) -> Route {
        let running = self.before.is_some_and(|c| c.status == "running");
        // A bot that runs but is not healthy (a killed deploy left it so) is no reason for
        // "nothing to do": it is started again with this environment and waited for.
        let healthy = self
            .before
            .is_some_and(|c| c.health.as_deref().is_none_or(|h| h == "healthy"));
        let migrates = database::needs_migration(status);
        if !self.image_changes
            && !migrates
            && !env_changes
            && running
            && healthy
            && !self.fix_owner
            && old.container.is_none()
        {
            Route::NothingToDo
        } else if old.container.is_some() || old.import.is_some() {
            Route::FromOldApp
        } else if running && migrates && self.image_changes && !self.fix_owner {
            Route::Fast
        } else {
            Route::Slow
        }
    }
}

/// What the deploy changed so far, for the rollback.
#[derive(Default)]
struct Changes {
    stopped_at: Option<Instant>,
    migration: Option<MigrationContainer>,
    migrated: bool,
    backup_on_host: Option<PathBuf>,
    serving_at: Option<Instant>,
    /// The old app's database was copied into the volume.
    imported: bool,
    /// The old app's container, kept out of Compose's sight.
    kept: Option<old_app::Kept>,
    /// The pre-deploy backup could not be copied out: its container stays for a later run.
    backup_pending: bool,
}

impl Deploy<'_> {
    fn run(&self) -> anyhow::Result<()> {
        let (sh, args, run) = (self.sh, self.args, self.run);
        run.edit().dry_run = args.dry_run;
        let stack = check_machine(sh, args, true, run)?;
        let mut all_containers = stack.bot_containers(sh)?;
        old_app::refuse_a_scaled_old_app(&all_containers)?;
        // The project's last deploy that changed the stack, and the hash of the environment
        // file this one deploys (the two tell whether the environment changes).
        let last = history::last_change(&history::read(&self.state_dir)?).cloned();
        let env_hash = sha256_file(&stack.env_file)?;
        let env_changes =
            last.as_ref().and_then(|r| r.env_sha256.as_deref()) != Some(env_hash.as_str());
        if args.dry_run {
            return self.dry_run(&stack, all_containers, env_changes);
        }
        all_containers = self.remove_extra_bot_containers(all_containers);
        let found_container = all_containers.into_iter().next();
        // The old app's container is no previous bot of ours: it is handled by `old_app`.
        let before = found_container.clone().filter(ContainerState::is_ours);
        let running = before.as_ref().is_some_and(|c| c.status == "running");
        let env_before = last.as_ref().and_then(|r| r.env_after.clone());
        journal::update(|r| {
            r.image_before = before.as_ref().map(|c| c.image_id.clone());
            r.env_before = env_before.clone();
            r.env_sha256 = Some(env_hash.clone());
        });

        self.finish_unfinished_runs()?;
        save_leftover_backups(sh, &stack, &self.state_dir, run)?;

        self.build_images(&stack)?;
        let image_id = docker::image_id(sh, &stack.bot_image)?.context("the bot image vanished")?;
        journal::update(|r| r.image_after = Some(image_id.clone()));
        run.edit().image = Some(format!("{} ({})", stack.bot_image, short(&image_id)));

        let old = self.look_for_old_app(&stack, found_container.as_ref())?;
        let status = self.read_database(&stack, &old)?;

        let fix_owner = self.check_volume_ownership(&stack, &old)?;
        let found = Found {
            before: before.as_ref(),
            fix_owner,
            image_changes: before.as_ref().is_none_or(|c| c.image_id != image_id),
        };
        let route = found.route(&status, &old, env_changes);
        if route == Route::NothingToDo {
            run.info("nothing to do: the bot runs this image and environment, and the database is current");
            if args.demo {
                stack.up(sh)?; // the stand-in may be missing; the running bot is left alone
            }
            run.edit().revision_after = status.version;
            return Ok(());
        }

        if database::needs_migration(&status) && status.state != State::Empty {
            run.step("check room for the backup", || {
                backups::require_room(sh, &self.state_dir, status.copy_bytes())
            })?;
        }
        if something_to_lose(running, &status, &old) {
            confirm(args.yes, &question(running, &status, &old))?;
        }
        run.edit().changed = true;
        // From the first change until the bot serves again (or the rollback ends), a signal is
        // held: stopping halfway would leave the bot down.
        let _critical = signals::Critical::enter();
        let previous = self.keep_previous_image(&stack, found, env_before, running)?;

        let mut changes = Changes::default();
        let result = match route {
            Route::FromOldApp => self.replace_old_app(&stack, &status, &old, &mut changes),
            _ => self.change(&stack, &status, found, route, &mut changes),
        };
        if let Some(stopped) = changes
            .stopped_at
            .filter(|_| running || old.container.is_some())
        {
            let serving = changes.serving_at.unwrap_or_else(Instant::now);
            run.edit().downtime_seconds =
                Some(serving.saturating_duration_since(stopped).as_secs_f64());
        }
        if let Err(error) = result {
            return Err(self.roll_back_after(error, &stack, &old, &previous, &mut changes));
        }
        if let Some(migration) = changes.migration.take().filter(|_| !changes.backup_pending) {
            migration.remove(sh);
        }
        backups::prune_and_tell(run, &self.state_dir, &stack.project, args.keep)?;
        self.prune_release_tags(&stack, &previous.previous_tag.0);
        Ok(())
    }

    /// Keeps the image this deploy replaces, by a name the rollback can start. `-previous`
    /// moves only here, when a different image is about to replace the running one: a no-op, a
    /// refused deploy or a failed build leave it naming the release before the last change.
    /// What `-previous` named before is kept too: an automatic rollback puts it back, so that
    /// `rollback` still returns from the last good deploy.
    fn keep_previous_image(
        &self,
        stack: &Stack,
        found: Found<'_>,
        env_before: Option<PathBuf>,
        was_running: bool,
    ) -> anyhow::Result<Previous> {
        let sh = self.sh;
        let previous_tag = format!("{}-previous", stack.bot_image);
        let previous_tag_before = docker::image_id(sh, &previous_tag)?;
        // A bot that a killed deploy left may run the image it brought (stopped after a
        // failure, or its new bot still waiting beside a stopped old one): the way back stays
        // the one that deploy recorded (taken over when this run ends well). Only the old bot
        // itself, still serving, is replaced as usual.
        let left_by_a_killed_replacement = journal::replaced_image().is_some_and(|replaced| {
            !was_running || found.before.is_none_or(|c| c.image_id != replaced)
        });
        let image = match found.before {
            Some(_) if left_by_a_killed_replacement => None,
            Some(container) if found.image_changes => {
                let image = &container.image_id;
                process::run(
                    cmd!(sh, "docker tag {image} {previous_tag}"),
                    "keeping the previous image",
                )?;
                Some(previous_tag.clone())
            }
            // Same image (a new environment, or ownership to fix): the project's tag names it.
            Some(_) => Some(stack.bot_image.clone()),
            None => None,
        };
        journal::update(|r| {
            r.image_before_tag = image.clone();
            // The path, never a copy: no file this tool writes holds a secret.
            r.env_after = Some(stack.env_file.clone());
            r.profile = stack.demo.then(|| "demo".to_owned());
        });
        Ok(Previous {
            image,
            image_id: found.before.map(|c| c.image_id.clone()),
            previous_tag: (previous_tag, previous_tag_before),
            env_file: env_before.filter(|p| p.exists()),
            was_running,
        })
    }

    /// After a failed step: rolls back what the deploy changed (nothing, when it failed before
    /// the first change) and returns the error to end with, which names what the rollback
    /// set aside or why it failed too. The migration container goes, unless its backup is the
    /// only copy left.
    fn roll_back_after(
        &self,
        error: anyhow::Error,
        stack: &Stack,
        old: &OldApp,
        previous: &Previous,
        changes: &mut Changes,
    ) -> anyhow::Error {
        let (sh, run) = (self.sh, self.run);
        let failed_step = run.report().last_failed_step();
        run.edit().failed_step = failed_step;
        let from_old_app = old.container.is_some() || old.import.is_some();
        let rolls_back = from_old_app || changes.stopped_at.is_some() || changes.migrated;
        let outcome = if rolls_back {
            run.info(&format!("a step failed: {error:#}\nrolling back"));
            signals::rolling_back();
            if from_old_app {
                self.roll_back_old_app(stack, old, changes).map(|()| None)
            } else {
                self.roll_back(stack, changes, previous)
            }
        } else {
            // Nothing ran yet, but `-previous` may have moved: it names again what it named.
            previous.put_back_tag(sh).map(|()| None)
        };
        let error = match outcome {
            Ok(set_aside) => {
                run.edit().rolled_back = rolls_back;
                match set_aside {
                    Some(set_aside) => error.context(set_aside),
                    None => error,
                }
            }
            Err(rollback_error) => {
                let backup = match (changes.backup_on_host.as_ref(), changes.migration.take()) {
                    (Some(file), _) => format!("the pre-deploy backup is {}", file.display()),
                    (None, Some(migration)) => format!(
                        "the pre-deploy backup stays in container {} (the next `cargo xtask backup` saves it)",
                        short(&migration.id)
                    ),
                    (None, None) => "no pre-deploy backup was taken".into(),
                };
                let at = where_flags(self.args);
                error.context(format!(
                    "and the rollback failed too: {rollback_error:#}. The bot may be down, or the new bot may run beside the old one: `cargo xtask status{at}` shows what runs and the database's state; `cargo xtask recover{at}` brings the database to this image's head and one bot up, or `cargo xtask restore{at} FILE` puts a backup back; {backup}"
                ))
            }
        };
        if let Some(migration) = changes.migration.take() {
            migration.remove(sh);
        }
        error
    }

    /// Step "build images" (or, for a deploy that builds nothing, a check that the project's
    /// image is there), with the release tag `<project tag>-<git>-<time>`.
    fn build_images(&self, stack: &Stack) -> anyhow::Result<()> {
        let (sh, args, run) = (self.sh, self.args, self.run);
        if !self.mode.builds() {
            if docker::image_id(sh, &stack.bot_image)?.is_none() {
                return Err(exit::not_ready(format!(
                    "there is no image {} to migrate with; run `cargo xtask first-deploy` first",
                    stack.bot_image
                )));
            }
        } else {
            let built = run.step("build images", || {
                images::build(sh, stack, args.schema_head)
            })?;
            let release_tag = format!(
                "{}-{}-{}",
                stack.bot_image,
                journal::read(|r| r.git_revision.clone())
                    .flatten()
                    .as_deref()
                    .unwrap_or("nogit"),
                self.time.to_ascii_lowercase()
            );
            let built_id = &built.bot;
            process::run(
                cmd!(sh, "docker tag {built_id} {release_tag}"),
                "tagging the release",
            )?;
            run.detail(format!(
                "{} = {} (also {release_tag})",
                stack.bot_image,
                short(&built.bot)
            ));
        }
        Ok(())
    }

    /// Step "look for the old app", when the bot's container is not ours or `--import` names
    /// a database.
    fn look_for_old_app(
        &self,
        stack: &Stack,
        found_container: Option<&ContainerState>,
    ) -> anyhow::Result<OldApp> {
        let (sh, run) = (self.sh, self.run);
        if found_container.is_none_or(ContainerState::is_ours) && self.import.import.is_none() {
            return Ok(OldApp::default());
        }
        let old = run.step("look for the old app", || {
            old_app::look(sh, &stack.bot_image, found_container, self.import)
        })?;
        if let Some(c) = &old.container {
            run.detail(format!(
                "the bot container {} is not ours (image {}): the old app",
                c.name, c.config_image
            ));
        }
        if let Some(planned) = &old.import {
            let users = planned.checked.users.map(|u| format!(", {u} users"));
            run.detail(format!(
                "its database: {} ({}{})",
                planned.source,
                describe(&planned.checked.status),
                users.unwrap_or_default()
            ));
        }
        Ok(old)
    }

    /// Step "read database": the state of the volume's database (or of the one to import),
    /// refused when only a person can sort it out.
    fn read_database(&self, stack: &Stack, old: &OldApp) -> anyhow::Result<DbStatus> {
        let (sh, run) = (self.sh, self.run);
        let mut status = run.step("read database", || {
            database::status(sh, stack, &stack.bot_image)
        })?;
        if let Some(planned) = &old.import {
            refuse_import_over_a_database(stack, &status, old)?;
            status = planned.checked.status.clone();
        }
        run.edit().state_before = Some(status.state.to_string());
        run.edit().revision_before = status.effective_version();
        run.edit().revision_after = status.effective_version();
        run.detail(describe(&status));
        database::refuse_unsafe(&status)?;
        Ok(status)
    }

    /// Step "check volume ownership": whether database files in the volume belong to someone
    /// other than the bot's user (the old app's root-owned file), to give to it.
    fn check_volume_ownership(&self, stack: &Stack, old: &OldApp) -> anyhow::Result<bool> {
        let (sh, run) = (self.sh, self.run);
        if old.import.is_some() {
            return Ok(false); // the import gives the copy to the bot
        }
        let wrong_owner = run.step("check volume ownership", || {
            database::fix_ownership(sh, stack, &stack.bot_image, true)
        })?;
        if !wrong_owner.is_empty() {
            run.detail(format!(
                "owned by someone else, to give to the bot: {}",
                wrong_owner.join(", ")
            ));
        }
        Ok(!wrong_owner.is_empty())
    }
}

/// Refuses an import (`old.import`) into a volume that holds a database already (`status`):
/// the deploy and its dry run both stop here, having changed nothing.
fn refuse_import_over_a_database(
    stack: &Stack,
    status: &DbStatus,
    old: &OldApp,
) -> anyhow::Result<()> {
    let Some(planned) = old.import.as_ref().filter(|_| status.state != State::Empty) else {
        return Ok(());
    };
    let interrupted = match old.container.as_ref().filter(|c| !c.is_running()) {
        Some(c) => format!(
            " The old app's container {0} is stopped, as an interrupted deploy leaves it: to go on with the database in the volume, run this deploy again with --fresh; to go back to the old app, `docker start {0}`.",
            c.name
        ),
        None => String::new(),
    };
    let volume = stack.volume();
    Err(exit::refused(format!(
        "the volume {volume} already holds a database ({}); importing {} would replace it, so this deploy changed nothing.{interrupted} To import anyway, move that database away first (`docker volume rm {volume}` once no container uses it); to deploy with what the volume holds, pass --fresh.",
        describe(status),
        planned.source,
    )))
}

/// Whether the deploy can cost something (a bot that serves stops, data is migrated or brought
/// over from the old app), and so asks first: on an empty volume with no bot serving there is
/// nothing to lose, and nothing to ask.
fn something_to_lose(running: bool, status: &DbStatus, old: &OldApp) -> bool {
    running
        || old.container.is_some()
        || old.import.is_some()
        || (database::needs_migration(status) && status.state != State::Empty)
}

fn question(running: bool, status: &DbStatus, old: &OldApp) -> String {
    let mut question = String::from("This will");
    if running {
        question.push_str(" stop the bot,");
    }
    if let Some(c) = old.container.as_ref().filter(|c| c.is_running()) {
        question.push_str(&format!(" stop the old app ({}),", c.name));
    }
    if let Some(planned) = &old.import {
        question.push_str(&format!(
            " copy its database {} into the volume,",
            planned.source
        ));
    }
    if database::needs_migration(status) {
        question.push_str(&format!(
            " back up and migrate the database ({} -> revision {}),",
            status.state, status.head
        ));
    }
    question.push_str(" and start the bot. Go ahead?");
    question
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_says_what_will_happen() {
        let mut status = DbStatus::empty(4);
        status.state = State::Behind;
        let q = question(true, &status, &OldApp::default());
        assert!(
            q.contains("stop the bot") && q.contains("migrate the database (behind -> revision 4)"),
            "{q}"
        );
        status.state = State::Current;
        assert!(!question(false, &status, &OldApp::default()).contains("migrate"));
    }

    fn bot(status: &str, health: &str) -> ContainerState {
        ContainerState {
            id: "abc".into(),
            image_id: "sha256:old".into(),
            status: status.into(),
            health: Some(health.into()),
            name: "p-bot-1".into(),
            config_image: "tgbot-bot:p".into(),
            labels: [(crate::docker::OUR_LABEL.to_owned(), "bot".to_owned())].into(),
            ..ContainerState::default()
        }
    }

    #[test]
    fn one_rule_chooses_the_route_of_the_deploy_and_of_its_dry_run() {
        let (serving, unhealthy) = (bot("running", "healthy"), bot("running", "unhealthy"));
        let none = OldApp::default();
        let (mut current, mut behind) = (DbStatus::empty(4), DbStatus::empty(4));
        current.state = State::Current;
        behind.state = State::Behind;
        let found = |before, image_changes, fix_owner| Found {
            before,
            fix_owner,
            image_changes,
        };
        let (s, u) = (Some(&serving), Some(&unhealthy));
        // (the bot before, image changes, ownership to fix, database, env changes, route)
        let cases = [
            (s, false, false, &current, false, Route::NothingToDo),
            (s, false, false, &current, true, Route::Slow),
            (u, false, false, &current, false, Route::Slow),
            (s, true, false, &behind, false, Route::Fast),
            (s, false, false, &behind, false, Route::Slow),
            (s, true, true, &behind, false, Route::Slow),
            (None, true, false, &behind, false, Route::Slow),
        ];
        for (before, image_changes, fix_owner, status, env_changes, route) in cases {
            let found = found(before, image_changes, fix_owner);
            assert_eq!(
                found.route(status, &none, env_changes),
                route,
                "{:?}",
                status.state
            );
        }
        let old_app = OldApp {
            container: Some(bot("running", "healthy")),
            ..OldApp::default()
        };
        let found = found(None, true, false);
        assert_eq!(found.route(&behind, &old_app, false), Route::FromOldApp);
    }

    #[test]
    fn only_a_deploy_that_can_cost_something_asks() {
        let none = OldApp::default();
        let mut status = DbStatus::empty(4);
        assert_eq!(status.state, State::Empty);
        assert!(!something_to_lose(false, &status, &none), "a fresh volume");
        assert!(
            something_to_lose(true, &status, &none),
            "a serving bot stops"
        );
        status.state = State::Current;
        assert!(
            !something_to_lose(false, &status, &none),
            "a stopped bot starts"
        );
        status.state = State::Behind;
        assert!(something_to_lose(false, &status, &none), "data is migrated");
    }
}
