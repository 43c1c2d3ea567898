//! The database in the volume, as the bot binary reports it: the deploy asks `bot db ...` in
//! throw-away containers and never opens the live database itself. Files move in and out with
//! `docker cp` through created containers, which works with a remote DOCKER_HOST too.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use migrations::State;
use migrations::json::{
    ErrorReport, ExitCode, OwnershipReport, RestoreReport, StatusReport, UpgradeReport,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::compose::Stack;
use crate::docker::{self, Throwaway};
use crate::exit;
use crate::process;

/// The bot's user and group in the image.
pub const BOT_OWNER: &str = "10001:10001";

/// Where the migration container of an image built before the backup folder writes the backup
/// it takes before changing anything (its own layer).
pub const BACKUP_IN_CONTAINER: &str = "/tmp/pre-deploy.db";

/// The folder the bot's image has for backups (labelled `org.tgbot.backup-volume`): a container
/// that takes a backup mounts an anonymous volume there, written at the host file system's
/// speed, where its own layer may be a slow overlay (`fuse-overlayfs`: SQLite's temporary files
/// there made the migration at 100k users take 450 ms instead of 230 ms), and removed with the
/// container (`docker rm -v`).
pub const BACKUP_VOLUME: &str = "/backup";
/// The image label that says the image has [`BACKUP_VOLUME`], owned by the bot's user.
const BACKUP_VOLUME_LABEL: &str = "org.tgbot.backup-volume";

/// Where a container writes the backup it takes, and what `docker create` needs for it.
#[derive(Debug, Clone)]
pub struct BackupPlace {
    /// The backup's path inside the container.
    pub path: String,
    /// `docker create` arguments (the anonymous volume).
    create_args: Vec<String>,
}

impl BackupPlace {
    /// For a container of `image` writing the backup as `file`: in the backup volume when the
    /// image has its folder, else in `/tmp` (images built before it).
    pub fn for_image(sh: &Shell, image: &str, file: &str) -> BackupPlace {
        let format = format!("{{{{index .Config.Labels \"{BACKUP_VOLUME_LABEL}\"}}}}");
        let label = docker::image_inspect(sh, image, &format);
        if label.is_ok_and(|label| label.as_deref() == Some(BACKUP_VOLUME)) {
            BackupPlace::in_volume(file)
        } else {
            BackupPlace {
                path: format!("/tmp/{file}"),
                create_args: Vec::new(),
            }
        }
    }

    /// In the backup volume, as for an image built from this checkout's Dockerfile.
    pub fn in_volume(file: &str) -> BackupPlace {
        BackupPlace {
            path: format!("{BACKUP_VOLUME}/{file}"),
            // SQLite's temporary files (the sorts of an index build or a GROUP BY) go there
            // too: in the container's own layer they made a migration twice as slow.
            create_args: [
                "-v",
                BACKUP_VOLUME,
                "-e",
                &format!("SQLITE_TMPDIR={BACKUP_VOLUME}"),
                // The bot service's hardening (docker-compose.prod.yml), which a container
                // made by `docker create` does not inherit: it writes only to the volumes
                // (/data, and its copy and temporary files here), as the bot's own user.
                "--read-only",
                "--cap-drop",
                "ALL",
                "--security-opt",
                "no-new-privileges",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// `bot db status --json`: the engine's own type, read as its [`migrations::Status`].
pub type DbStatus = StatusReport;

/// Whether a deploy changes the database: anything but `current`.
pub fn needs_migration(status: &DbStatus) -> bool {
    status.state != State::Current
}

/// Reads the last JSON object `what` printed as `T`.
pub fn parse_last<T: DeserializeOwned>(out: &str, what: &str) -> anyhow::Result<T> {
    serde_json::from_value(last_json(out, what)?)
        .with_context(|| format!("{what} printed JSON of another shape"))
}

/// What `bot db ... --json` printed when it failed, read from the error of the command that
/// ran it: the bot's [`ErrorReport`], if it printed one.
pub fn bot_failure(error: &anyhow::Error) -> Option<ErrorReport> {
    let exited = error.downcast_ref::<process::Exited>()?;
    parse_last(&exited.stdout, "the bot").ok()
}

/// Whether the project's volume exists.
pub fn volume_exists(sh: &Shell, stack: &Stack) -> bool {
    let volume = stack.volume();
    crate::process::output(cmd!(sh, "docker volume inspect {volume}"))
        .is_ok_and(|o| o.status.success())
}

/// Creates the volume with Compose's labels, so Compose takes it for its own.
pub fn create_volume(sh: &Shell, stack: &Stack) -> anyhow::Result<()> {
    let volume = stack.volume();
    let project = format!("com.docker.compose.project={}", stack.project);
    process::run(
        cmd!(sh, "docker volume create --label {project} --label com.docker.compose.volume=bot-data {volume}"),
        "creating the database volume",
    )
    .map(drop)
}

/// The last line of `out` that is a JSON object, parsed.
pub fn last_json(out: &str, what: &str) -> anyhow::Result<Value> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed JSON of another shape"))
}

/// Runs `bot <args>` from `image` in a throw-away container on the volume, as `user`.
pub fn bot_once(
    sh: &Shell,
    stack: &Stack,
    image: &str,
    user: &str,
    args: &[&str],
    what: &str,
) -> anyhow::Result<process::Finished> {
    let mount = format!("{}:/data", stack.volume());
    process::run(
        cmd!(sh, "docker run --rm --user {user} -v {mount} {image}").args(args),
        what,
    )
}

/// Reads the database's state with `image`'s engine. A volume that does not exist is empty.
pub fn status(sh: &Shell, stack: &Stack, image: &str) -> anyhow::Result<DbStatus> {
    status_or_damaged(sh, stack, image)?.map_err(|damage| {
        exit::refused(format!(
            "{damage}\nNothing was changed. Put a good database in place with `cargo xtask restore <file>`."
        ))
    })
}

/// The live database's state, or (the inner `Err`) what the engine said of a live file that
/// is damaged or not SQLite at all.
pub fn status_or_damaged(
    sh: &Shell,
    stack: &Stack,
    image: &str,
) -> anyhow::Result<Result<DbStatus, String>> {
    if !volume_exists(sh, stack) {
        return Ok(Ok(DbStatus::empty(image_head(sh, image)?)));
    }
    let (args, what) = (["db", "status", "--json"], "reading the database's state");
    let out = match bot_once(sh, stack, image, BOT_OWNER, &args, what) {
        Ok(out) => out,
        // Not SQLite at all, or damaged: told by the bot's exit code, not by its words.
        Err(e) if bot_failure(&e).is_some_and(|f| f.exit_code == ExitCode::BadFile) => {
            return Ok(Err(format!("{e:#}")));
        }
        Err(e) => return Err(e),
    };
    parse_last(&out.stdout, "`bot db status --json`").map(Ok)
}

/// The newest revision `image` knows, without touching any volume.
fn image_head(sh: &Shell, image: &str) -> anyhow::Result<u32> {
    let out = process::run(
        cmd!(
            sh,
            "docker run --rm -e DATABASE_PATH=/tmp/none.db {image} db status --json"
        ),
        "reading the image's schema head",
    )?;
    parse_last::<StatusReport>(&out.stdout, "`bot db status --json`").map(|status| status.head)
}

/// Refuses, before anything changes, the states only a person can resolve.
pub fn refuse_unsafe(status: &DbStatus) -> anyhow::Result<()> {
    let differences = || {
        status
            .difference
            .iter()
            .map(|d| format!("  {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    match status.state {
        State::Unstamped | State::Foreign if status.matches.is_none() => {
            Err(exit::refused(format!(
                "the database has tables but no migration history, and its schema matches no revision of this build (closest: revision {}):\n{}\nThe deploy changed nothing and the bot was left as it was. Make the schema match a revision (or restore a backup with `cargo xtask restore`), then deploy again.",
                status.closest.unwrap_or(0),
                differences()
            )))
        }
        State::Ahead => Err(exit::refused(format!(
            "the database is at revision {}, newer than this build's head {}: deploy the newer build, or roll back with `cargo xtask rollback`. The deploy changed nothing.",
            status.version.unwrap_or(0),
            status.head
        ))),
        State::Modified => Err(exit::refused(format!(
            "migration files were edited after they were applied:\n{}\nPut them back (`git checkout migrations/sql`) and add a new migration instead. The deploy changed nothing.",
            differences()
        ))),
        State::Drifted => Err(exit::refused(format!(
            "the live schema is not the revision its history records (someone changed it by hand):\n{}\nUndo that change or restore a backup. The deploy changed nothing.",
            differences()
        ))),
        _ => Ok(()),
    }
}

/// Finds database files in the volume that the bot's user does not own (the old app ran as
/// root); gives them to the bot unless `check_only`. Returns the paths that were wrong.
pub fn fix_ownership(
    sh: &Shell,
    stack: &Stack,
    image: &str,
    check_only: bool,
) -> anyhow::Result<Vec<String>> {
    if !volume_exists(sh, stack) {
        return Ok(Vec::new());
    }
    let mut args = vec!["db", "fix-ownership", "--owner", BOT_OWNER, "--json"];
    if check_only {
        args.push("--check");
    }
    let what = "checking who owns the database files";
    let out = bot_once(sh, stack, image, "0:0", &args, what)?;
    let report: OwnershipReport = parse_last(&out.stdout, "`bot db fix-ownership`")?;
    Ok(report
        .wrong
        .iter()
        .map(|w| format!("{} (was {}:{})", w.path, w.uid, w.gid))
        .collect())
}

/// A created container that backs the database up, adopts it if needed and applies the pending
/// migrations in one process: prepared while the old bot still runs, started once it stopped.
pub struct MigrationContainer {
    /// Its id.
    pub id: String,
    /// The size of the database it migrates (its time limits grow with it).
    pub bytes: u64,
    /// Where it writes its backup.
    pub backup_path: String,
}

/// The label naming the project on the containers the deploy starts besides Compose's.
pub const PROJECT_LABEL: &str = "org.tgbot.project";
/// The label saying what such a container is for (`migration`).
pub const ROLE_LABEL: &str = "org.tgbot.role";
/// The label naming the deploy (its start time) that made the container.
pub const DEPLOY_LABEL: &str = "org.tgbot.deploy";
/// The label naming the file the container's pre-deploy backup gets on this machine.
pub const BACKUP_NAME_LABEL: &str = "org.tgbot.backup-name";

/// The label with the size of the database a migration container migrates.
pub const BYTES_LABEL: &str = "org.tgbot.bytes";
/// The label giving the path of a migration container's backup inside it (absent on
/// containers made before it: [`BACKUP_IN_CONTAINER`]).
pub const BACKUP_PATH_LABEL: &str = "org.tgbot.backup-path";

/// The role of the container that backs up and migrates the database during a deploy.
pub const MIGRATION_ROLE: &str = "migration";

/// The role of the short-lived containers a task creates, uses and removes (backup, restore,
/// copies, plans, imports): a run killed meanwhile leaves them, and the next run removes them.
pub const HELPER_ROLE: &str = "helper";

/// `--label` options for a helper container of `project`: the project, the role, and the
/// running task's start time (from its history line), so that a later run can find it.
pub fn helper_labels(project: &str) -> Vec<String> {
    let deploy = crate::journal::read(|r| format!("{DEPLOY_LABEL}={}", r.time));
    [
        format!("{PROJECT_LABEL}={project}"),
        format!("{ROLE_LABEL}={HELPER_ROLE}"),
    ]
    .into_iter()
    .chain(deploy)
    .flat_map(|label| ["--label".to_owned(), label])
    .collect()
}

/// The ids of every container (running or not) of `project` labelled with `role`.
fn labelled_containers(sh: &Shell, project: &str, role: &str) -> anyhow::Result<Vec<String>> {
    let project_filter = format!("label={PROJECT_LABEL}={project}");
    let role_filter = format!("label={ROLE_LABEL}={role}");
    let ids = process::run(
        cmd!(
            sh,
            "docker ps -a -q --no-trunc --filter {project_filter} --filter {role_filter}"
        ),
        "looking for containers an earlier run left",
    )?
    .stdout;
    Ok(ids.split_whitespace().map(str::to_owned).collect())
}

/// Removes the helper containers an earlier run of `project` left (killed between creating and
/// removing one). Returns the ids of those still running, which are left alone: their work (a
/// restore, a backup) must not be cut short.
pub fn remove_leftover_helpers(sh: &Shell, project: &str) -> anyhow::Result<Vec<String>> {
    let mut running = Vec::new();
    for id in &labelled_containers(sh, project, HELPER_ROLE)? {
        if docker::inspect(sh, id).is_ok_and(|state| state.status == "running") {
            running.push(id.to_owned());
        } else {
            let _ = process::output(cmd!(sh, "docker rm -f -v {id}"));
        }
    }
    Ok(running)
}

/// What a migration container is labelled with, so that a later run finds it when the deploy
/// that made it was killed or could not copy its backup out.
pub struct MigrationLabels<'a> {
    /// The deploy's start time.
    pub deploy: &'a str,
    /// The name its backup gets in the backup folder.
    pub backup_name: &'a str,
    /// The database's size: the time limits of the migration and of the backup's copy grow
    /// with it (also for the run that saves a backup a killed run left).
    pub bytes: u64,
}

impl MigrationLabels<'_> {
    fn args(&self, stack: &Stack, place: &BackupPlace) -> Vec<String> {
        [
            (PROJECT_LABEL, stack.project.as_str()),
            (ROLE_LABEL, MIGRATION_ROLE),
            (DEPLOY_LABEL, self.deploy),
            (BACKUP_NAME_LABEL, self.backup_name),
            (BYTES_LABEL, &self.bytes.to_string()),
            (BACKUP_PATH_LABEL, &place.path),
        ]
        .into_iter()
        .flat_map(|(key, value)| ["--label".to_owned(), format!("{key}={value}")])
        .collect()
    }
}

impl MigrationContainer {
    /// Creates it from the project's image (nothing runs yet); when `waiting`, one that opens
    /// and checks the database, then waits for `go` on its stdin.
    pub fn create(
        sh: &Shell,
        stack: &Stack,
        labels: &MigrationLabels,
        waiting: bool,
    ) -> anyhow::Result<MigrationContainer> {
        let place = BackupPlace::for_image(sh, &stack.bot_image, "pre-deploy.db");
        let create = Self::create_cmd(sh, stack, labels, &place, waiting);
        let id = process::run(create, "preparing the migration")?.stdout;
        Ok(MigrationContainer {
            id: id.trim().to_owned(),
            bytes: labels.bytes,
            backup_path: place.path,
        })
    }

    /// The `docker create` command of a migration container writing its backup to `place`
    /// (one that waits for `go` on its stdin when `waiting`): what the deploy runs, and what
    /// its dry run shows.
    pub fn create_cmd<'a>(
        sh: &'a Shell,
        stack: &Stack,
        labels: &MigrationLabels,
        place: &BackupPlace,
        waiting: bool,
    ) -> xshell::Cmd<'a> {
        let mount = format!("{}:/data", stack.volume());
        let label_args = labels.args(stack, place);
        let (stdin, extra) = (waiting.then_some("-i"), waiting.then_some("--wait-for-go"));
        let (volume, backup, image) = (&place.create_args, &place.path, &stack.bot_image);
        cmd!(
            sh,
            "docker create {label_args...} {volume...} {stdin...} --user {BOT_OWNER} -v {mount} {image} db upgrade --adopt --backup-to {backup} {extra...} --json"
        )
    }

    /// Starts one made `waiting` by [`MigrationContainer::create`] and returns once it is
    /// ready and waiting.
    pub fn start_waiting(&self) -> anyhow::Result<WaitingMigration> {
        let (stdin_reader, stdin) = std::io::pipe().context("cannot make a pipe")?;
        let (stderr, stderr_writer) = std::io::pipe().context("cannot make a pipe")?;
        let started = docker::start_argv(&self.id, true)
            .start_with(|e| {
                e.stdin_file(stdin_reader)
                    .stdout_capture()
                    .stderr_file(stderr_writer)
            })
            .context("cannot run docker start")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let errors = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("waiting for go") {
                    let _ = ready_tx.send(());
                } else {
                    lines.push(line);
                }
            }
            lines.join("\n")
        });
        let mut waiting = WaitingMigration {
            limit: process::migration_limit(self.bytes),
            started,
            stdin: Some(stdin),
            errors: Some(errors),
        };
        let ready = ready_rx.recv_timeout(std::time::Duration::from_secs(120));
        if ready.is_err() {
            let (_, errors) = waiting.finish();
            bail!("the migration container did not get ready within 120 s: {errors}");
        }
        Ok(waiting)
    }

    /// Runs it to the end; returns what `bot db upgrade --json` reported.
    pub fn run(&self) -> anyhow::Result<UpgradeReport> {
        let out = process::run_within(
            docker::start_argv(&self.id, false),
            "migrating the database",
            process::migration_limit(self.bytes),
        )?;
        parse_last(&out.stdout, "`bot db upgrade --json`")
    }

    /// Copies the backup it took to `host_file`: to `<host_file>.partial` first, renamed once
    /// whole, so that a copy killed halfway never lies under the backup's name.
    pub fn copy_backup(&self, sh: &Shell, host_file: &Path) -> anyhow::Result<()> {
        let source = format!("{}:{}", self.id, self.backup_path);
        copy_out(sh, &source, host_file, self.bytes)
    }

    /// Removes it, with its backup volume.
    pub fn remove(self, sh: &Shell) {
        let id = self.id;
        let _ = crate::process::output(cmd!(sh, "docker rm -f -v {id}"));
    }
}

/// Copies `source` (`<container>:<path>`) to `host_file` on this machine within a limit that
/// grows with `bytes`: to `<host_file>.partial` first, made private (0600) and renamed once
/// whole, so that a copy killed halfway never lies under the file's name.
pub fn copy_out(sh: &Shell, source: &str, host_file: &Path, bytes: u64) -> anyhow::Result<()> {
    let partial = partial_name(host_file);
    let _ = std::fs::remove_file(&partial);
    let copied = process::run_within(
        copy_out_cmd(sh, source, &partial),
        "copying the file to this machine",
        process::copy_limit(bytes),
    )
    .and_then(|_| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", partial.display()))?;
        std::fs::rename(&partial, host_file).with_context(|| {
            format!(
                "cannot rename {} to {}",
                partial.display(),
                host_file.display()
            )
        })
    });
    if copied.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    copied
}

/// The `docker cp` command of [`copy_out`], which writes to `partial` first.
pub fn copy_out_cmd<'a>(sh: &'a Shell, source: &str, partial: &Path) -> xshell::Cmd<'a> {
    cmd!(sh, "docker cp {source} {partial}")
}

/// Where a copy to `file` is written until it is whole.
pub fn partial_name(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// A migration container started and waiting for `go`.
pub struct WaitingMigration {
    /// How long the migration may take once told to go.
    limit: std::time::Duration,
    /// `docker start -ai`, its standard output captured.
    started: process::Started,
    stdin: Option<std::io::PipeWriter>,
    /// Its standard error, less the line saying it waits.
    errors: Option<std::thread::JoinHandle<String>>,
}

impl WaitingMigration {
    /// Lets it migrate; returns what `bot db upgrade --json` reported.
    pub fn go(mut self) -> anyhow::Result<UpgradeReport> {
        self.tell(b"go\n")
            .context("cannot tell the migration to go")?;
        let (ended, errors) = self.finish();
        match ended {
            Ok((status, stdout)) if status.success() => {
                parse_last(&stdout, "`bot db upgrade --json`")
            }
            Ok(_) => bail!(
                "migrating the database failed:\n{}",
                process::tail(&errors, 25)
            ),
            Err(e) => bail!("{e:#}\n{}", process::tail(&errors, 25)),
        }
    }

    /// Tells it to stop without changing anything.
    pub fn cancel(mut self) {
        let _ = self.tell(b"cancel\n");
        let _ = self.finish();
    }

    /// Writes `word` to its standard input, then closes it (once: later words go nowhere).
    fn tell(&mut self, word: &[u8]) -> std::io::Result<()> {
        let stdin = self.stdin.take();
        stdin.map_or(Ok(()), |mut stdin| stdin.write_all(word))
    }

    /// Closes its standard input and waits for it within the migration's limit (else stops
    /// it): its standard output, and its standard error.
    fn finish(&mut self) -> (anyhow::Result<(std::process::ExitStatus, String)>, String) {
        drop(self.stdin.take());
        let ended = self
            .started
            .wait_within("migrating the database", self.limit)
            .map(|output| {
                let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
                (output.status, stdout)
            });
        let errors = self
            .errors
            .take()
            .map(|e| e.join().unwrap_or_default())
            .unwrap_or_default();
        (ended, errors)
    }
}

/// Takes a checked online backup of the live database into `host_file` on this machine.
pub fn back_up_to_host(
    sh: &Shell,
    stack: &Stack,
    image: &str,
    host_file: &Path,
    bytes: u64,
) -> anyhow::Result<()> {
    let mount = format!("{}:/data", stack.volume());
    let labels = helper_labels(&stack.project);
    let place = BackupPlace::for_image(sh, image, "backup.db");
    let (volume, backup) = (&place.create_args, &place.path);
    let helper = Throwaway::create(
        sh,
        cmd!(
            sh,
            "docker create {labels...} {volume...} --user {BOT_OWNER} -v {mount} {image} db backup {backup} --json"
        ),
        "preparing the backup",
    )?;
    helper.run("backing up the database", process::copy_limit(bytes))?;
    copy_out(sh, &format!("{}:{backup}", helper.id), host_file, bytes)
}

/// Replaces the live database with `host_file` (checked by the engine first), owned by the
/// bot's user. The bot must be stopped. With `replace_damaged`, a damaged live database is
/// set aside in the volume (`bot db restore --replace-damaged`).
pub fn restore_from_host(
    sh: &Shell,
    stack: &Stack,
    image: &str,
    host_file: &Path,
    replace_damaged: bool,
) -> anyhow::Result<RestoreReport> {
    let mount = format!("{}:/data", stack.volume());
    let labels = helper_labels(&stack.project);
    let bytes = std::fs::metadata(host_file).map_or(0, |m| m.len());
    let damaged = replace_damaged.then_some("--replace-damaged");
    let helper = Throwaway::create(
        sh,
        cmd!(
            sh,
            "docker create {labels...} --user 0:0 -v {mount} {image} db restore /tmp/restore-source.db {damaged...} --owner {BOT_OWNER} --json"
        ),
        "preparing the restore",
    )?;
    helper.copy_in(
        host_file,
        "/tmp/restore-source.db",
        "copying the database file to Docker",
        process::copy_limit(bytes),
    )?;
    let out = helper.run("restoring the database", process::migration_limit(bytes))?;
    parse_last(&out.stdout, "`bot db restore --json`")
}

/// Saves the pre-deploy backups that migration containers of earlier runs still hold into
/// `dir` (under the name each was labelled with, checked), then removes those containers.
/// Returns the backups saved and the running containers left alone (a migration still at
/// work is never interrupted).
pub fn save_leftover_backups(
    sh: &Shell,
    stack: &Stack,
    dir: &Path,
) -> anyhow::Result<(Vec<PathBuf>, Vec<String>)> {
    let (mut saved, mut running) = (Vec::new(), Vec::new());
    let leftovers = labelled_containers(sh, &stack.project, MIGRATION_ROLE)?
        .iter()
        .map(|id| docker::inspect(sh, id))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for state in leftovers {
        if state.status == "running" {
            running.push(state.id);
            continue;
        }
        let label = |key: &str| state.labels.get(key).cloned();
        let container = MigrationContainer {
            id: state.id.clone(),
            // Made by a release before the label: the size is not known.
            bytes: label(BYTES_LABEL)
                .and_then(|b| b.parse().ok())
                .unwrap_or(process::UNKNOWN_SIZE),
            backup_path: label(BACKUP_PATH_LABEL).unwrap_or_else(|| BACKUP_IN_CONTAINER.to_owned()),
        };
        if let Some(name) = label(BACKUP_NAME_LABEL) {
            let mut host_file = dir.join(&name);
            // A file already there under that name is trusted only when it is a sound copy (a
            // copy killed halfway is not): else the backup is saved beside it.
            if host_file.exists() && migrations::inspect_copy(&host_file).is_err() {
                host_file = dir.join(name.replace(".db", "-saved-later.db"));
            }
            if !host_file.exists() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                match container.copy_backup(sh, &host_file) {
                    Ok(()) => {
                        crate::backups::seal(&host_file)?;
                        saved.push(host_file);
                    }
                    // No backup inside: the migration never got as far as taking one.
                    Err(e)
                        if ["Could not find the file", "No such container:path"]
                            .iter()
                            .any(|m| format!("{e:#}").contains(m)) => {}
                    Err(e) => {
                        let _ = std::fs::remove_file(&host_file);
                        return Err(e.context(format!(
                            "the pre-deploy backup in container {} could not be saved; the container is kept",
                            container.id
                        )));
                    }
                }
            }
        }
        container.remove(sh);
    }
    Ok((saved, running))
}

/// Copies `file`, a path in the project's volume (under `/data`), to `host_file` on this
/// machine, through a container that is created and never started.
pub fn copy_from_volume(
    sh: &Shell,
    stack: &Stack,
    image: &str,
    file: &str,
    host_file: &Path,
    bytes: u64,
) -> anyhow::Result<()> {
    let mount = format!("{}:/data", stack.volume());
    let labels = helper_labels(&stack.project);
    let helper = Throwaway::create(
        sh,
        cmd!(sh, "docker create {labels...} -v {mount} {image} db status"),
        "preparing the copy out of the volume",
    )?;
    copy_out(sh, &format!("{}:{file}", helper.id), host_file, bytes)
}

/// A temporary file on this machine, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// A new name in the system's temporary folder.
    pub fn new(label: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!(
            "tgbot-{label}-{}-{}.db",
            std::process::id(),
            crate::clock::timestamp()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: State, matches: Option<u32>) -> DbStatus {
        let mut status = DbStatus::empty(2);
        status.state = state;
        status.pending = vec![];
        status.matches = matches;
        status.closest = Some(1);
        status.difference = vec!["table users: column last_name missing".into()];
        status
    }

    #[test]
    fn only_states_a_person_must_resolve_are_refused() {
        for ok in [State::Empty, State::Behind, State::Current] {
            refuse_unsafe(&status(ok, None)).unwrap();
        }
        refuse_unsafe(&status(State::Unstamped, Some(1))).unwrap();
        refuse_unsafe(&status(State::Foreign, Some(1))).unwrap();
        let error = refuse_unsafe(&status(State::Unstamped, None)).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::ExitCode::Refused);
        assert!(
            error
                .to_string()
                .contains("table users: column last_name missing"),
            "{error}"
        );
        for refused in [
            State::Ahead,
            State::Modified,
            State::Drifted,
            State::Foreign,
        ] {
            assert_eq!(
                exit::code_of(&refuse_unsafe(&status(refused, None)).unwrap_err()),
                exit::ExitCode::Refused,
                "{refused}"
            );
        }
    }
}
