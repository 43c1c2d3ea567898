//! The deploy, step by step. Everything that can be done while the old bot runs is done first
//! (check the machine, build, read the database, check ownership and room for the backup,
//! prepare the migration); then the bot stops, one container backs the database up and
//! migrates it, the backup is copied to this machine, the new bot starts and is waited for.
//! When a step after the stop fails, the database comes back from the backup and the previous
//! image starts again.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use xshell::{Shell, cmd};

use crate::backups;
use crate::compose::Stack;
use crate::database::{self, DbStatus, MigrationContainer, MigrationLabels};
use crate::docker::{self, ContainerState};
use crate::exit;
use crate::history::{self, Record};
use crate::images;
use crate::journal;
use crate::lock::{self, DeployLock};
use crate::old_app::{self, ImportArgs, OldApp};
use crate::output::Printer;
use crate::process;
use crate::project::{self, StackArgs};
use crate::report::Report;
use crate::signals;

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

/// Checks the machine and names the stack: the first step of every task.
pub fn check_machine(
    sh: &Shell,
    args: &StackArgs,
    needs_token: bool,
    printer: &Printer,
    report: &mut Report,
) -> anyhow::Result<Stack> {
    printer.step(report, "check machine", || {
        let engine = docker::check_daemon(sh)?;
        let mut stack = Stack::new(sh, &project::project_name(args.project_name.as_deref())?, args.demo)?;
        if let Some(env_file) = &args.env_file {
            stack.env_file = std::fs::canonicalize(env_file)
                .map_err(|e| exit::not_ready(format!("the environment file {}: {e}", env_file.display())))?;
        }
        // Parsed whatever the task: a malformed file is refused by its line number before
        // Compose could print its content, and its values are scrubbed from then on.
        if stack.env_file.exists() {
            crate::secrets::load(&stack.env_file)?;
        }
        if needs_token && !project::env_file_has_token(&stack.env_file)? {
            return Err(exit::not_ready(format!(
                "no BOT_TOKEN in {}: copy .env.example to .env and put the token @BotFather gave you in it (or try it with --demo)",
                stack.env_file.display()
            )));
        }
        eprintln!("     Docker {engine}, {}, project {}", stack.flavour.describe(), stack.project);
        Ok(stack)
    })
}

/// Asks before a change, unless `--yes`; without a terminal to ask on, refuses.
pub fn confirm(yes: bool, question: &str) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    confirm_on(yes, question, stdin.is_terminal(), &mut stdin.lock())
}

fn confirm_on(
    yes: bool,
    question: &str,
    terminal: bool,
    input: &mut impl BufRead,
) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !terminal {
        return Err(exit::usage(format!(
            "{question}\nThere is no terminal to answer on; pass --yes to go ahead in a script"
        )));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes") {
        Ok(())
    } else {
        Err(exit::usage("stopped: you answered no; nothing was changed"))
    }
}

/// UTC time as `20261125T064430Z`, for file names and records.
pub fn timestamp() -> String {
    format_utc(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

fn format_utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The repository's git revision, if it is a git checkout.
pub fn git_revision(sh: &Shell) -> Option<String> {
    crate::process::output(cmd!(sh, "git rev-parse --short=12 HEAD"))
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Runs a deploy of the given mode: takes the lock, deploys, records the deploy.
pub fn run(
    sh: &Shell,
    args: &StackArgs,
    import: &ImportArgs,
    mode: Mode,
    printer: &Printer,
    report: &mut Report,
) -> anyhow::Result<()> {
    locked_and_recorded(sh, args, mode.task(), report, |state_dir, time, report| {
        Deploy {
            sh,
            args,
            import,
            mode,
            printer,
            state_dir: state_dir.to_owned(),
            time: time.to_owned(),
        }
        .run(report)
    })
}

/// Runs a task that changes the stack: under the project's deploy lock (not for a dry run),
/// with one line in the deploy history for it, written before it starts and kept current as it
/// goes (see [`journal`]).
pub fn locked_and_recorded(
    sh: &Shell,
    args: &StackArgs,
    task: &str,
    report: &mut Report,
    work: impl FnOnce(&Path, &str, &mut Report) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = timestamp();
    let project = project::project_name(args.project_name.as_deref())?;
    let state_dir = args.state_dir(&project);
    if args.dry_run {
        return work(&state_dir, &started, report);
    }
    let _lock = DeployLock::acquire(sh, &project, &state_dir, task, &started)?;
    journal::begin(
        &state_dir,
        Record {
            time: started.clone(),
            task: task.into(),
            operator: lock::operator(),
            git_revision: git_revision(sh),
            ..Record::default()
        },
    )?;
    let result = work(&state_dir, &started, report);
    journal::finish(report, &result);
    result
}

/// Names the runs of this project that started and never ended (killed: the lock is ours, so
/// none of them runs), and returns them.
pub fn unfinished_runs(state_dir: &Path, this_run: &str) -> anyhow::Result<Vec<Record>> {
    Ok(history::unfinished(&history::read(state_dir)?)
        .into_iter()
        .filter(|r| r.time != this_run)
        .cloned()
        .collect())
}

/// Describes an unfinished run: when, which step, what the volume held.
pub fn describe_unfinished(record: &Record) -> String {
    format!(
        "{} started {} by {} did not finish: it stopped during step \"{}\"{}",
        record.task,
        record.time,
        record.operator,
        record.step.as_deref().unwrap_or("(before its first step)"),
        record
            .volume
            .as_deref()
            .map(|v| format!("; the volume: {v}"))
            .unwrap_or_else(|| "; the volume was not touched yet".into())
    )
}

struct Deploy<'a> {
    sh: &'a Shell,
    args: &'a StackArgs,
    import: &'a ImportArgs,
    mode: Mode,
    printer: &'a Printer,
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
    fn run(&self, report: &mut Report) -> anyhow::Result<()> {
        let (sh, args, printer) = (self.sh, self.args, self.printer);
        report.dry_run = args.dry_run;
        let stack = check_machine(sh, args, !args.demo, printer, report)?;
        let all_containers = stack.bot_containers(sh)?;
        old_app::refuse_a_scaled_old_app(&all_containers)?;
        let found_container = all_containers.into_iter().next();
        // The old app's container is no previous bot of ours: it is handled by `old_app`.
        let before = found_container.clone().filter(ContainerState::is_ours);
        let running = before.as_ref().is_some_and(|c| c.status == "running");
        let last = history::last_change(&history::read(&self.state_dir)?).cloned();
        let env_hash = sha256_file(&stack.env_file)?;
        let env_before = last.as_ref().and_then(|r| r.env_after.clone());
        journal::update(|r| {
            r.image_before = before.as_ref().map(|c| c.image_id.clone());
            r.env_before = env_before.clone();
            r.env_sha256 = Some(env_hash.clone());
        });

        if args.dry_run {
            return self.dry_run(&stack, found_container.as_ref(), report);
        }
        self.finish_unfinished_runs(report)?;
        self.save_leftover_backups(&stack)?;

        let previous_tag = format!("{}-previous", stack.bot_image);
        if !self.mode.builds() {
            if docker::image_id(sh, &stack.bot_image)?.is_none() {
                return Err(exit::not_ready(format!(
                    "there is no image {} to migrate with; run `cargo xtask first-deploy` first",
                    stack.bot_image
                )));
            }
        } else {
            let built = printer.step(report, "build images", || {
                images::build(sh, &stack, args.schema_head)
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
            printer.detail(
                report,
                format!(
                    "{} = {} (also {release_tag})",
                    stack.bot_image,
                    short(&built.bot)
                ),
            );
        }
        let image_id = docker::image_id(sh, &stack.bot_image)?.context("the bot image vanished")?;
        journal::update(|r| r.image_after = Some(image_id.clone()));
        report.image = Some(format!("{} ({})", stack.bot_image, short(&image_id)));

        let old = if found_container.as_ref().is_some_and(|c| !c.is_ours())
            || self.import.import.is_some()
        {
            let old = printer.step(report, "look for the old app", || {
                old_app::look(sh, &stack.bot_image, found_container.as_ref(), self.import)
            })?;
            if let Some(c) = &old.container {
                printer.detail(
                    report,
                    format!(
                        "the bot container {} is not ours (image {}): the old app",
                        c.name, c.config_image
                    ),
                );
            }
            if let Some(planned) = &old.import {
                printer.detail(
                    report,
                    format!(
                        "its database: {} ({}{})",
                        planned.source,
                        describe(&planned.checked.status),
                        planned
                            .checked
                            .users
                            .map(|u| format!(", {u} users"))
                            .unwrap_or_default()
                    ),
                );
            }
            old
        } else {
            OldApp::default()
        };
        let mut status = printer.step(report, "read database", || {
            database::status(sh, &stack, &stack.bot_image)
        })?;
        if let Some(planned) = &old.import {
            if status.state != "empty" {
                let interrupted = old
                    .container
                    .as_ref()
                    .filter(|c| !c.is_running())
                    .map(|c| format!(
                        " The old app's container {} is stopped, as an interrupted deploy leaves it: to go on with the database in the volume, run this deploy again with --fresh; to go back to the old app, `docker start {}`.",
                        c.name, c.name
                    ))
                    .unwrap_or_default();
                return Err(exit::refused(format!(
                    "the volume {} already holds a database ({}); importing {} would replace it, so this deploy changed nothing.{interrupted} To import anyway, move that database away first (`docker volume rm {}` once no container uses it); to deploy with what the volume holds, pass --fresh.",
                    stack.volume(),
                    describe(&status),
                    planned.source,
                    stack.volume()
                )));
            }
            status = planned.checked.status.clone();
        }
        report.state_before = Some(status.state.clone());
        report.revision_before = status.effective_version();
        report.revision_after = status.effective_version();
        printer.detail(report, describe(&status));
        database::refuse_unsafe(&status)?;

        let wrong_owner = if old.import.is_some() {
            Vec::new() // the import gives the copy to the bot
        } else {
            printer.step(report, "check volume ownership", || {
                database::fix_ownership(sh, &stack, &stack.bot_image, true)
            })?
        };
        if !wrong_owner.is_empty() {
            printer.detail(
                report,
                format!(
                    "owned by someone else, to give to the bot: {}",
                    wrong_owner.join(", ")
                ),
            );
        }

        let image_changes = before.as_ref().is_none_or(|c| c.image_id != image_id);
        let env_changes =
            last.as_ref().and_then(|r| r.env_sha256.as_deref()) != Some(env_hash.as_str());
        let database_changes = status.needs_migration();
        // A bot that runs but is not healthy (a killed deploy left it so) is no reason for
        // "nothing to do": it is started again with this environment and waited for.
        let healthy = before
            .as_ref()
            .is_some_and(|c| c.health.as_deref().is_none_or(|h| h == "healthy"));
        if !image_changes
            && !database_changes
            && !env_changes
            && running
            && healthy
            && wrong_owner.is_empty()
            && old.container.is_none()
        {
            printer.info("nothing to do: the bot runs this image and environment, and the database is current");
            if args.demo {
                stack.up(sh)?; // the stand-in may be missing; the running bot is left alone
            }
            report.revision_after = status.version;
            return Ok(());
        }

        if database_changes && status.state != "empty" {
            printer.step(report, "check room for the backup", || {
                backups::require_room(sh, &self.state_dir, status.bytes)
            })?;
        }
        confirm(args.yes, &question(running, &status, &old))?;
        report.changed = true;
        // From the first change until the bot serves again (or the rollback ends), a signal is
        // held: stopping halfway would leave the bot down.
        let _critical = signals::Critical::enter();
        // The image this deploy replaces, by a name the rollback can start. `-previous` moves
        // only here, when a different image is about to replace the running one: a no-op, a
        // refused deploy or a failed build leave it naming the release before the last change.
        // What `-previous` named before this deploy: an automatic rollback puts it back, so
        // that `rollback` still returns from the last good deploy.
        let previous_tag_before = docker::image_id(sh, &previous_tag)?;
        let previous_image = match &before {
            Some(container) if image_changes => {
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
            r.image_before_tag = previous_image.clone();
            // The path, never a copy: no file this tool writes holds a secret.
            r.env_after = Some(stack.env_file.clone());
        });

        let mut changes = Changes::default();
        let found = Found {
            before: before.as_ref(),
            fix_owner: !wrong_owner.is_empty(),
            image_changes,
        };
        let result = if old.container.is_some() || old.import.is_some() {
            self.replace_old_app(&stack, &status, &old, report, &mut changes)
        } else {
            self.change(&stack, &status, found, report, &mut changes)
        };
        if let Some(stopped) = changes
            .stopped_at
            .filter(|_| running || old.container.is_some())
        {
            let serving = changes.serving_at.unwrap_or_else(Instant::now);
            report.downtime_seconds =
                Some(serving.saturating_duration_since(stopped).as_secs_f64());
        }
        if let Err(error) = result {
            report.failed_step = report.last_failed_step();
            if old.container.is_some() || old.import.is_some() {
                printer.info(&format!("a step failed: {error:#}\nrolling back"));
                signals::rolling_back();
                return match self.roll_back_old_app(&stack, &old, &mut changes, report) {
                    Ok(()) => {
                        report.rolled_back = true;
                        Err(error)
                    }
                    Err(rollback_error) => {
                        Err(error
                            .context(format!("and the rollback failed too: {rollback_error:#}")))
                    }
                };
            }
            if changes.stopped_at.is_some() || changes.migrated {
                printer.info(&format!("a step failed: {error:#}\nrolling back"));
                signals::rolling_back();
                let previous = Previous {
                    image: previous_image.clone(),
                    image_id: before.as_ref().map(|c| c.image_id.clone()),
                    previous_tag: (previous_tag.clone(), previous_tag_before.clone()),
                    env_file: env_before.clone().filter(|p| p.exists()),
                    was_running: running,
                };
                match self.roll_back(&stack, &changes, &previous, report) {
                    Ok(set_aside) => {
                        report.rolled_back = true;
                        if let Some(set_aside) = set_aside {
                            if let Some(migration) = changes.migration.take() {
                                migration.remove(sh);
                            }
                            return Err(error.context(set_aside));
                        }
                    }
                    Err(rollback_error) => {
                        if let Some(migration) = changes.migration.take() {
                            printer.info(&format!(
                                "the pre-deploy backup stays in container {}",
                                migration.id
                            ));
                        }
                        return Err(error
                            .context(format!("and the rollback failed too: {rollback_error:#}")));
                    }
                }
            }
            if let Some(migration) = changes.migration.take() {
                migration.remove(sh);
            }
            return Err(error);
        }
        if let Some(migration) = changes.migration.take().filter(|_| !changes.backup_pending) {
            migration.remove(sh);
        }
        backups::prune_and_tell(printer, &self.state_dir, &stack.project, args.keep)?;
        self.prune_release_tags(&stack, &previous_tag);
        Ok(())
    }

    /// Removes the project's release tags beyond the newest `--keep`, never the tag of an
    /// image that runs, that `-previous` or the project's tag names, or that the history's
    /// last change went from or to. A failure is only said: the deploy is done.
    fn prune_release_tags(&self, stack: &Stack, previous_tag: &str) {
        let sh = self.sh;
        let mut needed: Vec<String> = [stack.bot_image.as_str(), previous_tag]
            .iter()
            .filter_map(|tag| docker::image_id(sh, tag).ok().flatten())
            .collect();
        if let Ok(Some(running)) = stack.bot_container(sh) {
            needed.push(running.image_id);
        }
        if let Some(last) = history::read(&self.state_dir)
            .ok()
            .and_then(|records| history::last_change(&records).cloned())
        {
            needed.extend(last.image_before);
            needed.extend(last.image_after);
        }
        if let Some((before, after)) =
            journal::read(|r| (r.image_before.clone(), r.image_after.clone()))
        {
            needed.extend(before);
            needed.extend(after);
        }
        match images::prune_release_tags(sh, stack, self.args.keep, &needed) {
            Ok(removed) if !removed.is_empty() => self.printer.info(&format!(
                "removed {} old release tag{} (keeping the newest {})",
                removed.len(),
                if removed.len() == 1 { "" } else { "s" },
                self.args.keep.max(1)
            )),
            Ok(_) => {}
            Err(e) => self
                .printer
                .info(&format!("warning: old release tags were not pruned: {e:#}")),
        }
    }

    /// Names the runs that were killed before they ended and takes them over: this run finishes
    /// them forward (their migration containers are saved from and removed next), and its
    /// record carries their way back, so that `rollback` returns to where they started.
    fn finish_unfinished_runs(&self, report: &mut Report) -> anyhow::Result<()> {
        let unfinished = unfinished_runs(&self.state_dir, &self.time)?;
        for run in &unfinished {
            let line = format!("{}; this run finishes it", describe_unfinished(run));
            self.printer.info(&line);
            report.finished_earlier.push(line);
        }
        journal::take_over(unfinished);
        Ok(())
    }

    /// Saves the pre-deploy backups that migration containers of an earlier run still hold (a
    /// killed deploy, a copy that failed), and removes those containers; refuses while one
    /// of them still runs.
    fn save_leftover_backups(&self, stack: &Stack) -> anyhow::Result<()> {
        let (saved, running) = database::save_leftover_backups(self.sh, stack, &self.state_dir)?;
        for file in saved {
            self.printer.info(&format!(
                "saved the pre-deploy backup an earlier run left behind: {}",
                file.display()
            ));
        }
        if !running.is_empty() {
            let ids: Vec<&str> = running.iter().map(|id| short(id)).collect();
            return Err(exit::refused(format!(
                "a migration container of an earlier deploy of this project is still running ({}); nothing was changed. Wait for it to end (`docker wait {}`), then deploy again",
                ids.join(", "),
                ids.join(" ")
            )));
        }
        Ok(())
    }

    /// The name the pre-deploy backup of `status` gets in the backup folder.
    fn backup_name(&self, stack: &Stack, status: &DbStatus) -> String {
        backups::name(&stack.project, &self.time, status.effective_version(), None)
    }

    /// The labels of this deploy's migration container.
    fn labels<'a>(&'a self, backup_name: &'a str, status: &DbStatus) -> MigrationLabels<'a> {
        MigrationLabels {
            deploy: &self.time,
            backup_name,
            bytes: status.bytes,
        }
    }

    fn change(
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
        let backup_name = self.backup_name(stack, status);
        if status.needs_migration() {
            let migration = printer.step(report, "prepare migration", || {
                MigrationContainer::create(
                    sh,
                    stack,
                    &stack.bot_image,
                    &self.labels(&backup_name, status),
                )
            })?;
            self.note_migration_prepared(status, &migration, &backup_name);
            changes.migration = Some(migration);
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

    /// Notes in the history where this deploy's pre-deploy backup will be, before anything runs:
    /// a run killed after this point leaves a line that leads to it.
    fn note_migration_prepared(
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
    fn wait_until_serving(
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
    fn replace_and_migrate(
        &self,
        stack: &Stack,
        status: &DbStatus,
        old: &ContainerState,
        report: &mut Report,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let (sh, printer) = (self.sh, self.printer);
        let backup_name = self.backup_name(stack, status);
        let migration = printer.step(report, "prepare migration", || {
            MigrationContainer::create_waiting(
                sh,
                stack,
                &stack.bot_image,
                &self.labels(&backup_name, status),
            )
        })?;
        self.note_migration_prepared(status, &migration, &backup_name);
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
    fn record_migration(
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

    /// Stops the new bot, puts back the pre-deploy database and starts the previous bot.
    /// Returns what was set aside when the database put back replaced rows the new bot wrote
    /// (said in the error, so that it is never lost silently).
    fn roll_back(
        &self,
        stack: &Stack,
        changes: &Changes,
        previous: &Previous,
        report: &mut Report,
    ) -> anyhow::Result<Option<String>> {
        let (sh, printer) = (self.sh, self.printer);
        if let Some(container) = stack
            .bot_container(sh)?
            .filter(|c| c.status == "running" || c.status == "restarting")
        {
            stop_container(sh, &container.id)?;
        }
        let set_aside = if changes.migrated {
            self.restore_pre_deploy_database(stack, changes, report)?
        } else {
            None
        };
        let kept_on_host = set_aside.as_ref().and_then(|set_aside| {
            // A copy beside the backups, where the operator looks; the file in the volume stays.
            let name = backups::name(
                &stack.project,
                &self.time,
                report.revision_after,
                Some("set-aside-by-rollback"),
            );
            let host_file = self.state_dir.join(name);
            let copied = database::copy_from_volume(
                sh,
                stack,
                &stack.bot_image,
                &set_aside.file,
                &host_file,
            )
            .and_then(|()| backups::seal(&host_file).map(drop));
            match copied {
                Ok(()) => Some(host_file),
                Err(e) => {
                    printer.info(&format!(
                        "warning: the set-aside database stays in the volume only ({}): {e:#}",
                        set_aside.file
                    ));
                    None
                }
            }
        });
        let set_aside = set_aside.map(|s| {
            format!(
                "the database the new bot served was set aside before the pre-deploy backup was put back: {}{} ({}); the previous bot does not have them",
                s.file,
                kept_on_host
                    .map(|h| format!(", copied to {}", h.display()))
                    .unwrap_or_default(),
                s.rows
            )
        });
        let Some(image) = &previous.image else {
            report.revision_after = report.revision_before;
            return Ok(set_aside); // there was no bot before this deploy
        };
        // The project's tag names the image that runs, so later tasks (`restart`, `status`,
        // the next deploy's comparison) start and describe the previous bot, not the failed one.
        let main_tag = &stack.bot_image;
        if image != main_tag {
            process::run(
                cmd!(sh, "docker tag {image} {main_tag}"),
                "naming the previous image as the project's again",
            )?;
            // `-previous` names again what it named before this deploy: the way back from
            // the last good deploy stays.
            let (tag, before) = &previous.previous_tag;
            match before {
                Some(id) => process::run(
                    cmd!(sh, "docker tag {id} {tag}"),
                    "naming the image before the last deploy as -previous again",
                )
                .map(drop)?,
                None => {
                    let _ = crate::process::output(cmd!(sh, "docker rmi {tag}"));
                }
            }
        }
        if let Some(id) = &previous.image_id {
            report.image = Some(format!("{main_tag} ({})", short(id)));
        }
        let mut old = stack.clone();
        if let Some(env_file) = &previous.env_file {
            old.env_file = env_file.clone();
        }
        printer.step(report, "rollback: start previous bot", || old.up(sh))?;
        if previous.was_running {
            let timeout = Duration::from_secs(self.args.health_timeout);
            printer.step(report, "rollback: wait until healthy", || {
                wait_until_healthy(sh, &old, timeout)
            })?;
        }
        report.revision_after = report.revision_before;
        Ok(set_aside)
    }

    /// Puts back the database as it was before the migration, from the backup the migration
    /// took. Returns what it set aside when the live database had rows the backup has not
    /// (the new bot served meanwhile).
    fn restore_pre_deploy_database(
        &self,
        stack: &Stack,
        changes: &Changes,
        report: &mut Report,
    ) -> anyhow::Result<Option<SetAside>> {
        let sh = self.sh;
        journal::volume(
            "being put back from the pre-deploy backup by the rollback (the migrated database is kept beside it)",
        );
        let restored = self
            .printer
            .step(report, "rollback: restore database", || {
                let staged;
                let source = match &changes.backup_on_host {
                    Some(file) => file.as_path(),
                    None => {
                        let migration = changes
                            .migration
                            .as_ref()
                            .context("no migration container to take the backup from")?;
                        staged = database::TempFile::new("rollback");
                        migration
                            .copy_backup(sh, &staged.0)
                            .context("the database changed and its backup cannot be read back")?;
                        staged.0.as_path()
                    }
                };
                database::restore_from_host(sh, stack, &stack.bot_image, source, false)
            })?;
        let set_aside = SetAside::from_restore(&restored);
        journal::volume(format!(
            "put back from the pre-deploy backup (revision {})",
            report
                .revision_before
                .map_or("none".into(), |r| r.to_string())
        ));
        if let Some(s) = &set_aside {
            self.printer
                .detail(report, format!("set aside: {} ({})", s.file, s.rows));
        }
        Ok(set_aside)
    }

    /// The deploy on a server where the old app's container is the project's bot (or whose
    /// database comes from `--import`): the old app stops, its database is copied into the
    /// volume with the backup API, adopted and migrated; its container is kept out of
    /// Compose's sight; then the new bot starts and is waited for.
    fn replace_old_app(
        &self,
        stack: &Stack,
        status: &DbStatus,
        old: &OldApp,
        report: &mut Report,
        changes: &mut Changes,
    ) -> anyhow::Result<()> {
        let (sh, printer) = (self.sh, self.printer);
        if let Some(container) = old.container.as_ref().filter(|c| c.is_running()) {
            printer.step(report, "stop old app", || stop_container(sh, &container.id))?;
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
            let imported = printer.step(report, "import database", || {
                old_app::import(sh, stack, &stack.bot_image, &planned.source)
            })?;
            let text = planned.describe(&imported);
            printer.detail(report, text.clone());
            report.imported_from = Some(text);
            database::refuse_unsafe(&imported.status)?;
            status = imported.status;
        }
        if status.needs_migration() {
            let backup_name = self.backup_name(stack, &status);
            let migration = printer.step(report, "prepare migration", || {
                MigrationContainer::create(
                    sh,
                    stack,
                    &stack.bot_image,
                    &self.labels(&backup_name, &status),
                )
            })?;
            self.note_migration_prepared(&status, &migration, &backup_name);
            changes.migration = Some(migration);
            changes.migrated = true;
            let outcome = printer.step(report, "migrate database", || {
                changes.migration.as_ref().expect("just set").run(sh)
            })?;
            self.record_migration(stack, &status, &outcome, report, changes)?;
        }
        if let Some(container) = &old.container {
            let kept = printer.step(report, "keep old app's container", || {
                old_app::keep(sh, stack, container)
            })?;
            printer.detail(
                report,
                format!(
                    "stopped, kept as {} until the new bot is healthy",
                    kept.copy_name
                ),
            );
            changes.kept = Some(kept);
        }
        if changes.stopped_at.is_none() {
            changes.stopped_at = Some(Instant::now());
        }
        printer.step(report, "start bot", || stack.up(sh))?;
        self.wait_until_serving(stack, report, changes)?;
        if let (Some(kept), Some(container)) = (&changes.kept, &old.container) {
            report.old_app = Some(format!(
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
    fn roll_back_old_app(
        &self,
        stack: &Stack,
        old: &OldApp,
        changes: &mut Changes,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let (sh, printer) = (self.sh, self.printer);
        let mut failures = Vec::new();
        let ours = stack
            .bot_containers(sh)
            .unwrap_or_default()
            .into_iter()
            .filter(ContainerState::is_ours);
        for container in ours {
            let id = container.id;
            if let Err(e) = printer.step(report, "rollback: remove new bot", || {
                process::run(cmd!(sh, "docker rm -f {id}"), "removing the new bot").map(drop)
            }) {
                failures.push(format!("{e:#}"));
            }
        }
        if let Some(migration) = changes.migration.take() {
            if !changes.imported && changes.migrated {
                changes.migration = Some(migration);
                if let Err(e) = self.restore_pre_deploy_database(stack, changes, report) {
                    failures.push(format!("{e:#}"));
                }
                if let Some(migration) = changes.migration.take() {
                    migration.remove(sh);
                }
            } else {
                migration.remove(sh);
            }
        }
        if changes.imported {
            // The volume was empty before the import (checked), so nothing of value goes.
            let volume = stack.volume();
            if let Err(e) = printer.step(report, "rollback: discard imported database", || {
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
        report.revision_after = None;
        if let Some(container) = &old.container {
            match printer.step(report, "rollback: start old app", || {
                old_app::bring_back(
                    sh,
                    &container.id,
                    changes.kept.as_ref(),
                    container.is_running(),
                )
            }) {
                Ok(name) => printer.detail(report, format!("the old app runs again as {name}")),
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
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("{}", failures.join("\n"))
        }
    }

    /// Prints what the deploy would do and changes nothing: no image, container, volume or
    /// backup is touched. The plan of migrations comes from this build's engine.
    fn dry_run(
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
                    report.state_before = Some(planned.checked.status.state.clone());
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
                "migrate database: docker run --user {} -v {}:/data {} db upgrade --adopt --backup-to {}",
                database::BOT_OWNER,
                stack.volume(),
                stack.bot_image,
                database::BACKUP_IN_CONTAINER
            ));
            plan.push(format!(
                "save backup: docker cp <migration>:{} {}/",
                database::BACKUP_IN_CONTAINER,
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
    fn plan_migrations(&self, stack: &Stack) -> anyhow::Result<MigrationPlan> {
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
            serde_json::from_str::<serde_json::Value>(out.stdout.trim())?
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
        let from = plan_json["from"].as_u64().map(|v| v as u32);
        let to = plan_json["to"].as_u64().map(|v| v as u32);
        let steps = plan_json["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .map(|s| {
                        (
                            s["file"].as_str().unwrap_or("?").to_owned(),
                            s["sql"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((steps, from, to))
    }
}

/// The migrations a dry run found (file and SQL), and the revisions before and after.
type MigrationPlan = (Vec<(String, String)>, Option<u32>, Option<u32>);

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
    let stopped = loop {
        let wait_ended = old_exit.try_wait()?.is_some();
        let given_up = compose.is_finished() || Instant::now() >= deadline;
        if wait_ended || given_up {
            // `docker wait` also ends when it fails: the engine says whether the bot stopped.
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

/// The live database a rollback's restore replaced, when it held rows the restored backup
/// has not: where it is kept in the volume, and the rows per table it has more.
struct SetAside {
    file: String,
    rows: String,
}

impl SetAside {
    /// From the JSON of `bot db restore`; `None` when nothing was replaced or the replaced
    /// content has no more rows in any table than the restored one.
    fn from_restore(restored: &serde_json::Value) -> Option<SetAside> {
        let file = restored["replaced"].as_str()?;
        let (before, after) = (
            restored["rows"]["replaced"].as_object()?,
            &restored["rows"]["restored"],
        );
        let more: Vec<String> = before
            .iter()
            .filter_map(|(table, n)| {
                let extra = n.as_u64()? as i64 - after[table].as_u64().unwrap_or(0) as i64;
                (extra > 0).then(|| format!("{table} +{extra}"))
            })
            .collect();
        if more.is_empty() {
            return None;
        }
        Some(SetAside {
            file: file.to_owned(),
            rows: format!("rows it has more than the backup: {}", more.join(", ")),
        })
    }
}

struct Previous {
    /// A name of the image the bot ran before this deploy.
    image: Option<String>,
    /// That image's id.
    image_id: Option<String>,
    /// The `-previous` tag, and the image it named before this deploy moved it.
    previous_tag: (String, Option<String>),
    env_file: Option<PathBuf>,
    was_running: bool,
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
    if status.needs_migration() {
        question.push_str(&format!(
            " back up and migrate the database ({} -> revision {}),",
            status.state, status.head
        ));
    }
    question.push_str(" and start the bot. Go ahead?");
    question
}

/// Stops a container (SIGTERM; the bot exits within a second).
pub fn stop_container(sh: &Shell, id: &str) -> anyhow::Result<()> {
    process::run(cmd!(sh, "docker stop -t 10 {id}"), "stopping the bot").map(drop)
}

/// Waits until the bot's container reports healthy; fails at once when it exits or restarts.
pub fn wait_until_healthy(sh: &Shell, stack: &Stack, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        signals::checkpoint()?;
        let state = stack
            .bot_container(sh)?
            .context("the bot's container is gone")?;
        if state.health.as_deref() == Some("healthy") {
            return Ok(());
        }
        if state.status == "exited"
            || state.status == "dead"
            || state.status == "restarting"
            || state.restart_count > 0
        {
            bail!(
                "the bot stopped (status {}, exit code {}) instead of becoming healthy; its last log lines:\n{}",
                state.status,
                state.exit_code,
                docker::logs_tail(sh, &state.id, 15)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the bot did not become healthy within {}s (health: {}; last check said: {}); its last log lines:\n{}",
                timeout.as_secs(),
                state.health.as_deref().unwrap_or("none"),
                state.health_output.as_deref().unwrap_or("nothing"),
                docker::logs_tail(sh, &state.id, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A database state in words.
pub fn describe(status: &DbStatus) -> String {
    let revision = status.version.map_or("none".into(), |v| v.to_string());
    match status.state.as_str() {
        "unstamped" | "foreign" => match status.matches {
            Some(m) => format!(
                "{}: tables without our history, matching revision {m} (head {})",
                status.state, status.head
            ),
            None => format!(
                "{}: tables without our history, matching no revision (head {})",
                status.state, status.head
            ),
        },
        "empty" => format!("empty (head {})", status.head),
        state => format!("{state}: revision {revision} (head {})", status.head),
    }
}

/// An image id's first 12 hex digits.
pub fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_over_newer_rows_is_said_table_by_table() {
        let restored = serde_json::json!({
            "replaced": "/data/bot_database.db.replaced-20261126T101010Z",
            "rows": {
                "replaced": {"users": 12, "command_log": 30, "schema_history": 4},
                "restored": {"users": 10, "command_log": 30, "schema_history": 3}
            }
        });
        let set_aside = SetAside::from_restore(&restored).unwrap();
        assert_eq!(
            set_aside.file,
            "/data/bot_database.db.replaced-20261126T101010Z"
        );
        assert_eq!(
            set_aside.rows,
            "rows it has more than the backup: schema_history +1, users +2"
        );
        let same = serde_json::json!({
            "replaced": "/data/x",
            "rows": {"replaced": {"users": 10}, "restored": {"users": 10}}
        });
        assert!(SetAside::from_restore(&same).is_none());
        assert!(SetAside::from_restore(&serde_json::json!({"replaced": null})).is_none());
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(format_utc(0), "19700101T000000Z");
        assert_eq!(format_utc(1_795_588_876), "20261125T064116Z");
        assert_eq!(format_utc(951_782_400), "20000229T000000Z");
    }

    #[test]
    fn short_ids() {
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn confirm_asks_unless_yes_and_refuses_without_a_terminal() {
        let mut nothing = std::io::Cursor::new(Vec::new());
        confirm_on(true, "go?", false, &mut nothing).unwrap();
        let error = confirm_on(false, "go?", false, &mut nothing).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::ExitCode::Usage);
        assert!(error.to_string().contains("--yes"));
        confirm_on(
            false,
            "go?",
            true,
            &mut std::io::Cursor::new(b"y\n".to_vec()),
        )
        .unwrap();
        let no = confirm_on(
            false,
            "go?",
            true,
            &mut std::io::Cursor::new(b"n\n".to_vec()),
        )
        .unwrap_err();
        assert!(no.to_string().contains("nothing was changed"));
    }

    #[test]
    fn the_question_says_what_will_happen() {
        let mut status = DbStatus::empty(4);
        status.state = "behind".into();
        let q = question(true, &status, &OldApp::default());
        assert!(
            q.contains("stop the bot") && q.contains("migrate the database (behind -> revision 4)"),
            "{q}"
        );
        status.state = "current".into();
        assert!(!question(false, &status, &OldApp::default()).contains("migrate"));
    }
}
