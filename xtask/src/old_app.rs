//! The old app: a `bot` container of the project that is not ours (the app this workspace replaces,
//! which made its tables with its own create-all). Its database is found through that container's
//! mounts and brought into our volume while the old app is stopped; the container is kept, stopped,
//! until the new bot is healthy, and put back running when the deploy fails.
//!
//! Compose finds a service's container by its labels, which Docker cannot change, so the first
//! `up` of our stack would remove the old container. Before that `up`, the old container is
//! committed to an image and a stopped copy of it is created under labels Compose does not
//! look for, sharing its mounts (`--volumes-from`). A rollback recreates the container from
//! that image with its own name, labels, restart policy and networks.

use migrations::Recovery;
use migrations::json::{ExitCode as BotExit, ImportReport, Search};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;
use xshell::{Shell, cmd};

use crate::compose::Stack;
use crate::database::{self, DbStatus};
use crate::docker::{self, ContainerState, Mount, Throwaway};
use crate::{exit, process};

/// Where the old app's mounts appear, read-only, in the containers that read them.
const OLD_ROOT: &str = "/tgbot-old-app";

/// The file the runbook names: the old app's database, looked at first.
pub const RUNBOOK_PATH: &str = "/app/bot_database.db";

/// Where a host file to import is copied in the container that reads it.
const HOST_FILE_IN_CONTAINER: &str = "/tmp/import-source.db";

/// The label a kept copy of the old container carries (its value: the project).
pub const KEPT_LABEL: &str = "org.tgbot.kept-for";

/// Options that decide where the database comes from on a server with an old app.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ImportArgs {
    /// Bring this database into the volume: a file on this machine, or CONTAINER:PATH (a file
    /// on one of that container's mounts).
    #[arg(long, value_name = "FILE|CONTAINER:PATH", conflicts_with = "fresh")]
    pub import: Option<String>,
    /// Import nothing: deploy with the volume as it is (empty on a new server), even where the
    /// old app's container has a database.
    #[arg(long)]
    pub fresh: bool,
}

/// Where an imported database comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on a mount of a container (the old app's).
    Container {
        /// The container's id.
        id: String,
        /// Its name.
        name: String,
        /// The file's path inside it.
        path: String,
    },
    /// A file on this machine.
    HostFile(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Container { name, path, .. } => write!(f, "{name}:{path}"),
            Source::HostFile(path) => write!(f, "{}", path.display()),
        }
    }
}

/// What `bot db import --check-only` found in the source: a checked copy's state.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The copy's state, as `bot db status` tells it.
    pub status: DbStatus,
    /// Rows in `users`, when there is such a table.
    pub users: Option<u64>,
    /// The crash leftover SQLite recovered on the copy (a journal or a WAL).
    pub recovered: Option<Recovery>,
}

impl Checked {
    fn from_json(value: &Value) -> anyhow::Result<Checked> {
        let report: ImportReport = serde_json::from_value(value.clone())
            .context("`bot db import` printed a status of another shape")?;
        let mut status = report.status;
        if status.bytes == 0 {
            status.bytes = report.bytes;
        }
        Ok(Checked {
            status,
            users: report.users.and_then(|n| u64::try_from(n).ok()),
            recovered: report.recovered,
        })
    }
}

/// A database to bring into the volume, checked while the old app still ran.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Where it comes from.
    pub source: Source,
    /// What the check found.
    pub checked: Checked,
}

impl Planned {
    /// For the report and the history: `imported from CONTAINER:PATH, 50 users, matched revision 1`.
    pub fn describe(&self, imported: &Checked) -> String {
        let mut text = format!("imported from {}", self.source);
        if let Some(users) = imported.users {
            text.push_str(&format!(", {users} users"));
        }
        match (imported.status.version, imported.status.matches) {
            (Some(v), _) => text.push_str(&format!(", at revision {v}")),
            (None, Some(m)) => text.push_str(&format!(", matched revision {m}")),
            (None, None) => {}
        }
        if let Some(recovered) = &imported.recovered {
            text.push_str(&format!(
                " (a {recovered} left by a killed writer was recovered on the copy)"
            ));
        }
        text
    }
}

/// What the deploy found of an old app before changing anything.
#[derive(Debug, Clone, Default)]
pub struct OldApp {
    /// The project's `bot` container when it is not ours.
    pub container: Option<ContainerState>,
    /// The database to import, if any.
    pub import: Option<Planned>,
}

/// Refuses a task that would replace or remove the bot's container when that container is the
/// old app's: only a deploy brings its database over.
pub fn refuse_if_old_app(sh: &Shell, stack: &Stack, task: &str) -> anyhow::Result<()> {
    match stack.bot_containers(sh)?.into_iter().find(|c| !c.is_ours()) {
        Some(c) => Err(exit::refused(format!(
            "the project's bot container {} runs {}, which is not this workspace's bot (the old app?); `{task}` would act on it. Deploy with `cargo xtask first-deploy`, which finds the old app's database and brings it over. Nothing was changed.",
            c.name, c.config_image
        ))),
        None => Ok(()),
    }
}

/// Refuses when the bot service has several containers and one of them is the old app's (a
/// scaled old app): stopping and keeping one while another still writes would lose writes.
pub fn refuse_a_scaled_old_app(containers: &[ContainerState]) -> anyhow::Result<()> {
    if containers.len() > 1 && containers.iter().any(|c| !c.is_ours()) {
        let name =
            |c: &ContainerState| format!("{} ({}, image {})", c.name, c.status, c.config_image);
        let names: Vec<String> = containers.iter().map(name).collect();
        return Err(exit::refused(format!(
            "the project's bot service has {} containers: {}. The old app seems to be scaled; its database can only be brought over from one stopped writer. Scale it to one (`docker-compose -p <project> up -d --scale bot=1`, or stop and remove the extra containers), then deploy again. Nothing was changed.",
            containers.len(),
            names.join(", ")
        )));
    }
    Ok(())
}

/// Looks for the old app and, unless told otherwise, for the one database to bring over. Reads
/// only: the old app keeps running. `image` is our bot image, whose `bot db` does the reading.
pub fn look(
    sh: &Shell,
    image: &str,
    before: Option<&ContainerState>,
    args: &ImportArgs,
) -> anyhow::Result<OldApp> {
    let container = before.filter(|c| !c.is_ours()).cloned();
    let source = match (&args.import, &container) {
        (Some(spec), _) => Some(parse_source(sh, spec)?),
        (None, _) if args.fresh => None,
        (None, None) => None,
        (None, Some(old)) => Some(find_the_one(sh, image, old)?),
    };
    let import = match source {
        Some(source) => {
            let checked = check(sh, image, &source)?;
            Some(Planned { source, checked })
        }
        None => None,
    };
    Ok(OldApp { container, import })
}

/// `FILE` (an existing file here) or `CONTAINER:PATH`.
fn parse_source(sh: &Shell, spec: &str) -> anyhow::Result<Source> {
    let as_file = Path::new(spec);
    if as_file.is_file() {
        return Ok(Source::HostFile(std::fs::canonicalize(as_file)?));
    }
    let Some((container, path)) = spec
        .split_once(':')
        .filter(|(c, p)| !c.is_empty() && p.starts_with('/'))
    else {
        return Err(exit::usage(format!(
            "--import {spec}: there is no such file here, and it is not CONTAINER:/path/in/container"
        )));
    };
    let state = docker::inspect(sh, container).map_err(|e| {
        exit::usage(format!(
            "--import {spec}: there is no container {container} ({e:#})"
        ))
    })?;
    Ok(Source::Container {
        id: state.id,
        name: state.name,
        path: path.to_owned(),
    })
}

/// Where a mount of the old container appears in the containers that read it.
fn under_root(m: &Mount) -> String {
    format!("{OLD_ROOT}{}", m.destination)
}

/// The old container's mounts as read-only `--mount` options under [`OLD_ROOT`].
fn mount_args(old: &ContainerState) -> Vec<String> {
    old.mounts
        .iter()
        .flat_map(|m| ["--mount".to_owned(), m.read_only_at(&under_root(m))])
        .collect()
}

/// The mount of `old` that holds `path`, if any (the deepest one).
fn mount_holding<'a>(old: &'a ContainerState, path: &str) -> Option<&'a Mount> {
    old.mounts
        .iter()
        .filter(|m| {
            path == m.destination
                || path.starts_with(&format!("{}/", m.destination.trim_end_matches('/')))
        })
        .max_by_key(|m| m.destination.len())
}

/// Finds the SQLite files on the old container's mounts; exactly one is the database to
/// import, else the deploy is refused with what was found and the options that decide.
fn find_the_one(sh: &Shell, image: &str, old: &ContainerState) -> anyhow::Result<Source> {
    let found = if old.mounts.is_empty() {
        Vec::new()
    } else {
        let mut places: Vec<String> = old.mounts.iter().map(under_root).collect();
        places.sort();
        let find = cmd!(sh, "docker run --rm --user 0:0 --network none")
            .args(mount_args(old))
            .arg(image)
            .args(["db", "find-databases", "--json"])
            .args(&places);
        let out = process::run(find, "looking for the old app's database on its mounts")?;
        let listing = database::last_json(&out.stdout, "`bot db find-databases`")?;
        let listing = serde_json::from_value(listing);
        candidates(&listing.context("`bot db find-databases` printed JSON of another shape")?)
    };
    let mounts: Vec<String> = old.mounts.iter().map(|m| m.destination.clone()).collect();
    match found.as_slice() {
        [one] => Ok(Source::Container {
            id: old.id.clone(),
            name: old.name.clone(),
            path: one.0.clone(),
        }),
        [] => Err(exit::refused(format!(
            "the project's bot container {} is not ours (the old app, image {}), and no SQLite database was found on its mounts ({}). Nothing was changed; the old app runs on.\nSay where its database is with `--import CONTAINER:PATH` or `--import FILE`, or pass `--fresh` to start with an empty database on purpose.",
            old.name,
            old.config_image,
            if mounts.is_empty() {
                "it has none".to_owned()
            } else {
                mounts.join(", ")
            }
        ))),
        several => Err(exit::refused(format!(
            "the project's bot container {} is not ours (the old app, image {}), and its mounts hold {} SQLite databases:\n{}\nNothing was changed; the old app runs on. Say which one to bring over with `--import {}:PATH` (or `--import FILE`), or pass `--fresh` to start with an empty database on purpose.",
            old.name,
            old.config_image,
            several.len(),
            several
                .iter()
                .map(|(path, bytes)| format!("  {}:{path} ({bytes} bytes)", old.name))
                .collect::<Vec<_>>()
                .join("\n"),
            old.name
        ))),
    }
}

/// The databases `bot db find-databases` listed, as paths inside the old container with their
/// sizes; the runbook's path first.
fn candidates(listing: &Search) -> Vec<(String, u64)> {
    let listed = listing.databases.iter();
    let inside = listed.filter_map(|d| Some((d.path.strip_prefix(OLD_ROOT)?.to_owned(), d.bytes)));
    let mut found: Vec<(String, u64)> = inside.collect();
    found.sort_by_key(|(path, _)| path != RUNBOOK_PATH);
    found
}

/// Runs `bot db import <args>` in a throw-away container that sees the source, as root (the
/// old app's files are root's), with more `docker create` options `extra`.
fn run_import(
    sh: &Shell,
    image: &str,
    source: &Source,
    extra: &[String],
    args: &[&str],
    what: &str,
) -> anyhow::Result<Value> {
    let (mounts, inside, host_file) = match source {
        Source::Container { id, path, .. } => {
            let old = docker::inspect(sh, id)?;
            if mount_holding(&old, path).is_none() {
                return Err(exit::refused(format!(
                    "{source}: {path} is not on a bind mount or volume of {}, so it cannot be read safely. Stop the app, copy the file out (`docker cp {}:{path} .`) and pass `--import FILE`. Nothing was changed.",
                    old.name, old.name
                )));
            }
            (mount_args(&old), format!("{OLD_ROOT}{path}"), None)
        }
        Source::HostFile(file) => (Vec::new(), HOST_FILE_IN_CONTAINER.to_owned(), Some(file)),
    };
    // The project of the image tag `tgbot-bot:<project>`, for the helper's labels.
    let project = image.rsplit_once(':').map_or(image, |(_, project)| project);
    let create = cmd!(sh, "docker create --user 0:0 --network none")
        .args(database::helper_labels(project))
        .args(mounts)
        .args(extra)
        .arg(image)
        .args(["db", "import", &inside])
        .args(args);
    let helper = Throwaway::create(sh, create, "preparing the import")?;
    let size = host_file.map_or(0, |file| std::fs::metadata(file).map_or(0, |m| m.len()));
    if let Some(file) = host_file {
        // The crash leftovers travel with the file, so SQLite recovers the copy.
        for suffix in ["", "-journal", "-wal"] {
            let from = PathBuf::from(format!("{}{suffix}", file.display()));
            if suffix.is_empty() || from.exists() {
                let to = format!("{inside}{suffix}");
                let what = "copying the database to import to Docker";
                helper.copy_in(&from, &to, what, process::copy_limit(size))?;
            }
        }
    }
    let out = helper.run(what, process::copy_limit(size))?;
    database::last_json(&out.stdout, "`bot db import`")
}

/// Checks the source on a copy (the old app still runs) and reads its state.
fn check(sh: &Shell, image: &str, source: &Source) -> anyhow::Result<Checked> {
    let value = run_import(
        sh,
        image,
        source,
        &[],
        &["--check-only", "--json"],
        "checking the database to import",
    )
    .map_err(|e| {
        // `bot db import` exits 3 (refused) or 4 (not SQLite, damaged) for the file itself;
        // anything else (a timeout, Docker) is not the file's fault.
        let text = format!("{e:#}");
        let the_files_fault = database::bot_failure(&e)
            .is_some_and(|f| matches!(f.exit_code, BotExit::Refused | BotExit::BadFile));
        if exit::code_of(&e) == exit::ExitCode::Failed && the_files_fault {
            exit::refused(format!(
                "the database to import, {source}, cannot be used: {text}\nNothing was changed; the old app runs on."
            ))
        } else {
            e.context(format!(
                "checking the database to import, {source}; nothing was changed and the old app runs on"
            ))
        }
    })?;
    Checked::from_json(&value)
}

/// Copies the source into the volume (the old app must be stopped), checked, owned by the bot.
pub fn import(sh: &Shell, stack: &Stack, image: &str, source: &Source) -> anyhow::Result<Checked> {
    let volume = format!("type=volume,src={},dst=/data", stack.volume());
    Checked::from_json(&run_import(
        sh,
        image,
        source,
        &["--mount".to_owned(), volume],
        &["--owner", database::BOT_OWNER, "--json"],
        "importing the database",
    )?)
}

/// The old container, kept out of Compose's sight until the new bot is healthy.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Its name.
    pub original_name: String,
    /// The image it was committed to.
    pub image: String,
    /// The stopped copy's name.
    pub copy_name: String,
    restart_policy: String,
    networks: Vec<(String, Vec<String>)>,
    /// `docker create` options that give the recreated container the old one's host settings.
    host_options: Vec<String>,
}

/// `docker create` options for the host settings of `host_config` (an inspect's `HostConfig`) that
/// a recreated container would otherwise lose: published ports, extra hosts, tmpfs, capabilities,
/// security options, memory and CPU limits, log driver, init, read-only root, privileged mode.
fn host_options(host_config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |flag: &str, value: String| out.extend([flag.to_owned(), value]);
    let object = |key: &str| host_config[key].as_object().into_iter().flatten();
    let strings = |key: &str| {
        let values = host_config[key].as_array().into_iter().flatten();
        values.filter_map(Value::as_str).map(str::to_owned)
    };
    for (container_port, bindings) in object("PortBindings") {
        for binding in bindings.as_array().into_iter().flatten() {
            let host_port = binding["HostPort"].as_str().unwrap_or("");
            match binding["HostIp"].as_str().unwrap_or("") {
                "" => add("--publish", format!("{host_port}:{container_port}")),
                ip => add("--publish", format!("{ip}:{host_port}:{container_port}")),
            }
        }
    }
    strings("ExtraHosts").for_each(|host| add("--add-host", host));
    for (path, options) in object("Tmpfs") {
        match options.as_str().unwrap_or("") {
            "" => add("--tmpfs", path.clone()),
            options => add("--tmpfs", format!("{path}:{options}")),
        }
    }
    for (key, flag) in [
        ("CapAdd", "--cap-add"),
        ("CapDrop", "--cap-drop"),
        ("SecurityOpt", "--security-opt"),
    ] {
        strings(key).for_each(|value| add(flag, value));
    }
    for (key, flag) in [
        ("Memory", "--memory"),
        ("MemorySwap", "--memory-swap"),
        ("NanoCpus", "--cpus"),
    ] {
        if let Some(value) = host_config[key].as_i64().filter(|v| *v > 0) {
            let value = if key == "NanoCpus" {
                format!("{}", value as f64 / 1e9)
            } else {
                value.to_string()
            };
            add(flag, value);
        }
    }
    let log = &host_config["LogConfig"];
    if let Some(driver) = log["Type"].as_str().filter(|d| !d.is_empty()) {
        add("--log-driver", driver.to_owned());
        for (key, value) in log["Config"].as_object().into_iter().flatten() {
            let value = value.as_str().unwrap_or("");
            add("--log-opt", format!("{key}={value}"));
        }
    }
    for (key, flag) in [
        ("Init", "--init"),
        ("ReadonlyRootfs", "--read-only"),
        ("Privileged", "--privileged"),
    ] {
        if host_config[key].as_bool() == Some(true) {
            out.push(flag.to_owned());
        }
    }
    out
}

/// Commits the (stopped) old container and creates a stopped copy that shares its mounts,
/// under labels Compose does not look for.
pub fn keep(sh: &Shell, stack: &Stack, old: &ContainerState) -> anyhow::Result<Kept> {
    let raw = inspect_raw(sh, &old.id)?;
    let policy = &raw["HostConfig"]["RestartPolicy"];
    let name = policy["Name"].as_str().filter(|p| !p.is_empty());
    let restart_policy = match (name.unwrap_or("no"), policy["MaximumRetryCount"].as_i64()) {
        ("on-failure", Some(retries)) if retries > 0 => format!("on-failure:{retries}"),
        (name, _) => name.to_owned(),
    };
    let host_options = host_options(&raw["HostConfig"]);
    let networks = raw["NetworkSettings"]["Networks"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, n)| {
            let aliases = n["Aliases"].as_array().into_iter().flatten();
            // Docker adds the short id itself.
            let aliases = aliases
                .filter_map(Value::as_str)
                .filter(|x| !old.id.starts_with(x));
            (name.clone(), aliases.map(str::to_owned).collect())
        })
        .collect();
    let image = format!("tgbot-old-app:{}", stack.project);
    let id = &old.id;
    let commit = cmd!(sh, "docker commit {id} {image}");
    let what = "keeping the old app's container (docker commit)";
    process::run_within(commit, what, process::copy_limit(0))?;
    let copy_name = format!("{}-kept-by-tgbot", old.name);
    remove_container(sh, &copy_name);
    let kept_for = format!("{KEPT_LABEL}={}", stack.project);
    let create = cmd!(
        sh,
        "docker create --name {copy_name} --volumes-from {id} --network none --label com.docker.compose.project= --label com.docker.compose.service= --label com.docker.compose.oneoff=True --label {kept_for} {image}"
    );
    process::run(create, "keeping the old app's container (a stopped copy)")?;
    Ok(Kept {
        original_name: old.name.clone(),
        image,
        copy_name,
        restart_policy,
        networks,
        host_options,
    })
}

fn inspect_raw(sh: &Shell, id: &str) -> anyhow::Result<Value> {
    let inspect = cmd!(sh, "docker container inspect {id}");
    let out = process::run(inspect, "inspecting the old app's container")?;
    let all: Value = serde_json::from_str(&out.stdout).context("docker inspect printed no JSON")?;
    Ok(all[0].clone())
}

/// Starts the old app again. The container itself when Compose has not removed it yet;
/// otherwise it is recreated from the kept image with its own name, labels (so its Compose
/// manages it again), mounts, restart policy and networks. Returns its name.
pub fn bring_back(
    sh: &Shell,
    old_id: &str,
    kept: Option<&Kept>,
    start: bool,
) -> anyhow::Result<String> {
    if process::output(cmd!(sh, "docker container inspect {old_id}"))
        .is_ok_and(|o| o.status.success())
    {
        if start {
            let docker_start = cmd!(sh, "docker start {old_id}");
            process::run(docker_start, "starting the old app again")?;
        }
        if let Some(kept) = kept {
            remove_container(sh, &kept.copy_name);
        }
        let raw = inspect_raw(sh, old_id)?;
        let name = raw["Name"].as_str().unwrap_or(old_id);
        return Ok(name.trim_start_matches('/').to_owned());
    }
    let Some(kept) = kept else {
        bail!("the old app's container {old_id} is gone and no copy of it was kept");
    };
    let (name, copy, restart) = (&kept.original_name, &kept.copy_name, &kept.restart_policy);
    let mut create = cmd!(
        sh,
        "docker create --name {name} --volumes-from {copy} --restart {restart}"
    )
    .args(&kept.host_options);
    if let Some((network, aliases)) = kept.networks.first() {
        let aliases = aliases.iter().flat_map(|a| ["--network-alias", a.as_str()]);
        create = create.args(["--network", network]).args(aliases);
    }
    let image = &kept.image;
    let created = process::run(create.arg(image), "recreating the old app's container")?;
    let id = created.stdout.trim();
    for (network, aliases) in kept.networks.iter().skip(1) {
        let aliases = aliases.iter().flat_map(|a| ["--alias", a.as_str()]);
        let connect = cmd!(sh, "docker network connect").args(aliases);
        let connect = connect.args([network, id]);
        process::run(connect, "connecting the old app to its network")?;
    }
    if start {
        process::run(cmd!(sh, "docker start {id}"), "starting the old app again")?;
    }
    remove_container(sh, copy);
    Ok(name.clone())
}

/// `docker rm -f`, whatever it answers.
fn remove_container(sh: &Shell, name: &str) {
    let _ = process::output(cmd!(sh, "docker rm -f {name}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::MountSource;
    use migrations::State;
    use serde_json::json;

    fn old(mounts: &[(&str, MountSource)]) -> ContainerState {
        ContainerState {
            id: "abc".into(),
            image_id: "sha256:1".into(),
            status: "running".into(),
            name: "docker_bot_1".into(),
            config_image: "oldbot:latest".into(),
            mounts: mounts
                .iter()
                .map(|(d, s)| Mount {
                    destination: (*d).into(),
                    source: s.clone(),
                })
                .collect(),
            ..ContainerState::default()
        }
    }

    #[test]
    fn the_runbooks_path_comes_first_and_paths_are_the_old_containers() {
        let listing = serde_json::from_value(json!({"databases": [
            {"path": "/tgbot-old-app/app/a.db", "bytes": 1},
            {"path": "/tgbot-old-app/app/bot_database.db", "bytes": 2},
        ]}))
        .unwrap();
        assert_eq!(
            candidates(&listing),
            vec![("/app/bot_database.db".into(), 2), ("/app/a.db".into(), 1)]
        );
    }

    #[test]
    fn a_recreated_container_gets_the_old_ones_host_settings() {
        let host_config = json!({
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18932"}]},
            "ExtraHosts": ["db:10.0.0.5"],
            "Tmpfs": {"/run": "size=1m"},
            "CapDrop": ["ALL"],
            "Memory": 67108864,
            "LogConfig": {"Type": "none", "Config": {}},
            "Init": true,
            "ReadonlyRootfs": false,
        });
        let expected = "--publish 127.0.0.1:18932:8080/tcp --add-host db:10.0.0.5 --tmpfs /run:size=1m \
                        --cap-drop ALL --memory 67108864 --log-driver none --init";
        assert_eq!(
            host_options(&host_config),
            expected.split(' ').collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_scaled_old_app_is_refused_but_one_container_is_not() {
        let one = old(&[]);
        refuse_a_scaled_old_app(std::slice::from_ref(&one)).unwrap();
        let mut two = one.clone();
        two.name = "docker_bot_2".into();
        let error = refuse_a_scaled_old_app(&[one, two]).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::ExitCode::Refused);
        assert!(
            error.to_string().contains("docker_bot_1")
                && error.to_string().contains("docker_bot_2"),
            "{error}"
        );
    }

    #[test]
    fn the_deepest_mount_holds_a_path() {
        let c = old(&[
            ("/app", MountSource::Bind("/srv/app".into())),
            ("/app/data", MountSource::Volume("v".into())),
            ("/app/bot_database.db", MountSource::Bind("/srv/db".into())),
        ]);
        let held = |path| mount_holding(&c, path).map(|m| m.destination.as_str());
        assert_eq!(held("/app/data/x.db"), Some("/app/data"));
        assert_eq!(held("/app/bot_database.db"), Some("/app/bot_database.db"));
        assert_eq!(held("/app/other.db"), Some("/app"));
        assert_eq!(held("/application/x.db"), None);
        assert_eq!(held("/etc/x.db"), None);
    }

    #[test]
    fn a_mount_path_with_a_comma_or_quote_is_quoted_for_dockers_csv() {
        let c = old(&[("/app", MountSource::Bind("/srv/my app,v1 \"x\"".into()))]);
        assert_eq!(
            mount_args(&c)[1],
            "type=bind,\"src=/srv/my app,v1 \"\"x\"\"\",dst=/tgbot-old-app/app,readonly"
        );
    }

    #[test]
    fn mounts_are_shown_read_only_under_their_own_root() {
        let c = old(&[
            (
                "/app/bot_database.db",
                MountSource::Bind("/srv/db file".into()),
            ),
            ("/srv/state", MountSource::Volume("p_appdata".into())),
        ]);
        assert_eq!(
            mount_args(&c),
            vec![
                "--mount",
                "type=bind,src=/srv/db file,dst=/tgbot-old-app/app/bot_database.db,readonly",
                "--mount",
                "type=volume,src=p_appdata,dst=/tgbot-old-app/srv/state,readonly",
            ]
        );
    }

    #[test]
    fn an_import_is_described_with_its_source_users_and_revision() {
        let mut status = DbStatus::empty(4);
        status.state = State::Unstamped;
        status.matches = Some(1);
        let checked = Checked {
            status,
            users: Some(50),
            recovered: None,
        };
        let planned = Planned {
            source: Source::Container {
                id: "abc".into(),
                name: "docker_bot_1".into(),
                path: RUNBOOK_PATH.into(),
            },
            checked: checked.clone(),
        };
        assert_eq!(
            planned.describe(&checked),
            "imported from docker_bot_1:/app/bot_database.db, 50 users, matched revision 1"
        );
    }

    #[test]
    fn only_our_image_or_label_makes_a_container_ours() {
        let mut c = old(&[]);
        assert!(!c.is_ours());
        c.config_image = "tgbot-bot:docker".into();
        assert!(!c.is_ours(), "a tag alone is not enough");
        c.mounts.push(Mount {
            destination: "/data".into(),
            source: MountSource::Volume("docker_bot-data".into()),
        });
        assert!(
            c.is_ours(),
            "our image with our volume: deployed before the label existed"
        );
        c.mounts.clear();
        c.config_image = "sha256:0123".into();
        c.labels.insert(docker::OUR_LABEL.into(), "bot".into());
        assert!(c.is_ours());
    }
}
