//! The deploy and the bot, measured on the real stack: the downtime of `prod-full-update` with
//! the pending migrations from revision 3 (the `users` rebuild, then revision 5's tables and summaries) at 100k and 1M users, beside the
//! migration's own duration on the same data and the seed's manual flow on the same images
//! (both deploys seen as gaps in `getUpdates` calls at the stand-in); a no-op update; the bot's
//! idle memory, image size and throughput.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use xshell::{Cmd, Shell, cmd};

use super::engine::bot_db;
use super::*;
use crate::clock::unix_ms;
use crate::compose::Stack;
use crate::docker::ContainerState;
use crate::{database, process};

const PROJECT: &str = "tgbot-bench";
/// The sizes measured, in users.
const SIZES: [u64; 2] = [100_000, 1_000_000];
/// Timed runs of each measurement at each size.
const RUNS: usize = 5;
/// Long polls are held this long at most, so that a serving bot calls `getUpdates` every few
/// tens of milliseconds: a gap starts at the old bot's last call, which it was still holding
/// when it stopped, so a gap overstates the downtime by less than one poll interval.
const POLL_CAP_MS: &str = "25";
/// A gap between two `getUpdates` calls longer than this is an outage: a serving bot calls again
/// within the poll cap and a round trip, and stopping and starting a container takes longer.
const OUTAGE_MS: u64 = 150;
/// What the deploy may add to the migration's own duration.
const ALLOWANCE: Duration = Duration::from_millis(300);
/// The target against the manual flow (at the first size): under a third of it.
const MANUAL_RATIO: f64 = 3.0;
/// How long the old bot serves, once seen polling, before a run starts.
pub(super) const SETTLE: Duration = Duration::from_secs(2);
/// Part of the kept databases' names: bump it when the generator changes.
const GENERATOR: u32 = 2;
/// Databases an older version of this benchmark left in its folder.
const OLD_FILES: [&str; 1] = ["revision-3-100k.db"];
/// Options every `cargo xtask` run of the benchmark gets, for its Compose project (`--keep 2`:
/// the backups each deploy and restore takes are pruned as they come, so that every run prunes
/// alike and the disk does not fill at 1M users).
fn xtask_options(project: &str) -> [&str; 6] {
    ["--demo", "--yes", "--project-name", project, "--keep", "2"]
}

/// What this run of the section measures.
struct Plan {
    /// The database sizes, in users.
    sizes: Vec<u64>,
    /// Timed runs of each measurement at each size.
    runs: usize,
    /// A smoke run: its numbers mean nothing.
    quick: bool,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let (sizes, runs) = match quick {
            true => (vec![10_000], 2),
            false => (SIZES.to_vec(), RUNS),
        };
        Plan { sizes, runs, quick }
    }
}

/// Everything measured at one size.
#[derive(Default)]
struct AtSize {
    users: u64,
    bytes: u64,
    /// `bot db upgrade` alone, each run.
    migration: Vec<Duration>,
    /// `prod-full-update`, each run.
    ours: Vec<Gaps>,
    /// The manual flow, each run.
    manual: Vec<Gaps>,
}

/// Runs the stack benchmarks: the deploy section and the bot section. `quick`: a smoke run of
/// the code paths (one small size, two runs each), whose numbers mean nothing.
pub fn run(sh: &Shell, quick: bool) -> anyhow::Result<(Section, Section)> {
    let clock = Clock::start();
    let plan = Plan::new(quick);
    // The current release, built before anything runs (so that no measured deploy compiles
    // while a bot serves), and a copy of its `bot` for the migration alone.
    let tools = Tools::new(&release_binaries(sh)?.0, PROJECT)?;
    remove_old(&tools.dir, &OLD_FILES, "stack");
    let mut data = Vec::new();
    for &users in &plan.sizes {
        data.push((users, dataset(sh, &tools.bot, &tools.dir, users)?));
    }
    let (stack, (results, once)) = tools.on_stack(sh, |demo| demo.measure(&plan, &data))?;
    let method = method(&stack, &plan, &results, &clock);
    Ok(sections(&plan, &results, once, method))
}

/// The programs and folder every measurement uses.
pub(super) struct Tools {
    /// The static release `bot` (a copy).
    pub(super) bot: PathBuf,
    /// This xtask (a copy: a build meanwhile cannot replace it).
    pub(super) xtask: PathBuf,
    /// `target/bench/stack`.
    pub(super) dir: PathBuf,
    /// The Compose project every `cargo xtask` run is for.
    pub(super) project: &'static str,
}

/// The rows measured once, after the last deploy at the first size: the no-op update's (in the
/// deploy section) and the bot's (its own section).
struct Once {
    noop: [Measurement; 2],
    bot: [Measurement; 3],
}

/// A run on the project's demo stack: the shell, the stack and the tools every step uses.
#[derive(Clone, Copy)]
pub(super) struct Demo<'a>(pub &'a Shell, pub &'a Stack, pub &'a Tools);

impl Demo<'_> {
    fn measure(self, plan: &Plan, data: &[(u64, PathBuf)]) -> anyhow::Result<(Vec<AtSize>, Once)> {
        let Demo(sh, stack, tools) = self;
        let first = &data.first().context("no size to measure")?.1;
        let old_image = self.prepare(first, "stack")?;
        // A name for the new image, for the manual flow, that no deploy's pruning removes.
        let new_image = image_id(sh, &stack.bot_image)?;
        let mut new = stack.clone();
        new.bot_image = format!("{}-bench-new", stack.bot_image);
        tag(sh, &new_image, &new.bot_image)?;

        let work = tools.dir.join("work-migrate.db");
        let mut results = Vec::new();
        let mut once = None;
        for (users, file) in data {
            let users = *users;
            let mut at = AtSize {
                users,
                bytes: std::fs::metadata(file)?.len(),
                ..AtSize::default()
            };
            migrate_alone(sh, &tools.bot, file, &work)?; // untimed: the binary and the cache warm
            for run in 1..=plan.runs {
                // The migration alone, on this machine with the stack down.
                take_down(sh, stack)?;
                std::thread::sleep(SETTLE);
                let migration = migrate_alone(sh, &tools.bot, file, &work)?;
                at.migration.push(migration);
                // The manual flow, then ours, each from the same state.
                self.reset(&old_image, file)?;
                let manual = self.manual_flow(&new, &new_image)?;
                self.reset(&old_image, file)?;
                let (ours, report) =
                    self.timed_gap(|| tools.run(sh, &["prod-full-update", "--json"]))?;
                let report = deployed(&report)?;
                eprintln!(
                    "stack: {} users, run {run}/{}: migration alone {}; manual flow {}; prod-full-update {} (its report: {})",
                    label(users),
                    plan.runs,
                    show(migration),
                    manual.describe(),
                    ours.describe(),
                    steps(&report)
                );
                at.manual.push(manual);
                at.ours.push(ours);
            }
            if once.is_none() {
                once = Some(self.noop_and_bot(&label(users))?);
            }
            results.push(at);
        }
        Ok((results, once.context("nothing was measured")?))
    }

    /// Right after a deploy at `first` users: `prod-full-update` again (nothing to do), then the
    /// bot idle and under load.
    fn noop_and_bot(self, first: &str) -> anyhow::Result<Once> {
        let Demo(sh, stack, tools) = self;
        let container_before = bot(sh, stack)?.started_at;
        let mut noop_took = Duration::ZERO;
        let (noop_gaps, _) = self.timed_gap(|| {
            let started = Instant::now();
            let out = tools.run(sh, &["prod-full-update", "--json"]);
            noop_took = started.elapsed();
            out
        })?;
        let restarted = bot(sh, stack)?.started_at != container_before;
        // The bot idle and under load as with Telegram: the stand-in made again with its default
        // long poll (held up to 10 s), not the benchmark's short one.
        let up = stack.cmd(sh).args(["up", "-d", "telegram-standin"]);
        let up = up.env_remove("STANDIN_MAX_LONG_POLL_MS");
        process::run(up, "starting the stand-in with its default long poll")?;
        wait_for_calls(sh, stack, 1)?;
        std::thread::sleep(Duration::from_secs(5));
        let memory = idle_memory(sh, stack)?;
        let size = image_size(sh, &stack.bot_image)?;
        let (messages, seconds, per_second) = throughput(sh, stack)?;
        let stopped = !noop_gaps.outages.is_empty();
        let (downtime, container) = match (restarted, stopped) {
            (true, _) => ("the bot restarted", "container restarted"),
            (false, false) => ("none", "same container, never stopped"),
            (false, true) => ("the bot stopped polling", "same container, never stopped"),
        };
        let noop = [
            Measurement {
                name: format!("no-op `prod-full-update`: time (at {first} users)"),
                ours: show(noop_took),
                baseline: String::new(),
                target: "under 5 s".into(),
                met: noop_took < Duration::from_secs(5),
            },
            Measurement {
                name: "no-op `prod-full-update`: downtime".into(),
                ours: format!(
                    "{downtime} ({container}; longest gap between polls {})",
                    show(noop_gaps.longest)
                ),
                baseline: String::new(),
                target: "zero".into(),
                met: !restarted && !stopped,
            },
        ];
        let bot = [
            Measurement {
                name: "idle memory".into(),
                ours: format!("{memory:.1} MiB"),
                baseline: String::new(),
                target: "under 30 MiB".into(),
                met: memory < 30.0,
            },
            Measurement {
                name: "image size".into(),
                ours: format!("{:.1} MB", size as f64 / 1e6),
                baseline: String::new(),
                target: "under 20 MB".into(),
                met: size < 20_000_000,
            },
            Measurement {
                name: "messages handled per second through the stand-in".into(),
                ours: format!("{per_second:.0}/s ({messages} messages in {seconds:.2} s)"),
                baseline: String::new(),
                target: "(measured)".into(),
                met: messages == 1000,
            },
        ];
        Ok(Once { noop, bot })
    }

    /// The seed's manual flow on the same images: `up -d` with the new image, a one-off
    /// `bot db upgrade`, `restart`.
    fn manual_flow(self, new: &Stack, new_image: &str) -> anyhow::Result<Gaps> {
        let Demo(sh, stack, _) = self;
        let step = |args: &[&str], what: &str| process::run(compose(sh, new).args(args), what);
        let (gaps, _) = self.timed_gap(|| {
            step(&["up", "-d", "bot"], "manual: up -d")?;
            let migrate = ["run", "--rm", "-T", "bot", "db", "upgrade"];
            step(&migrate, "manual: one-off migrate")?;
            step(&["restart", "bot"], "manual: restart")?;
            wait_for_calls(sh, stack, 3)?;
            Ok(String::new())
        })?;
        let running = stack.bot_container(sh)?;
        let running = running.context("no bot container after the manual flow")?;
        if running.image_id != new_image {
            bail!(
                "after the manual flow the bot runs {}, not the new image {new_image}",
                running.image_id
            );
        }
        Ok(gaps)
    }

    /// Starts the old release (schema head 3) and names its image so that no deploy's pruning
    /// removes it; then one untimed `prod-full-update` from `data`, which builds the new images
    /// (no measured deploy builds anything new). Returns the old image's id.
    pub(super) fn prepare(self, data: &Path, group: &str) -> anyhow::Result<String> {
        let Demo(sh, stack, tools) = self;
        eprintln!("{group}: starting the old release (schema head 3)");
        tools.run(sh, &["first-deploy", "--schema-head", "3"])?;
        let old_image = image_id(sh, &stack.bot_image)?;
        tag(sh, &old_image, &format!("{}-bench-old", stack.bot_image))?;
        self.reset(&old_image, data)?;
        eprintln!("{group}: one untimed prod-full-update first (it builds the new images)");
        deployed(&tools.run(sh, &["prod-full-update", "--json"])?)?;
        Ok(old_image)
    }

    /// Brings the stack to where every run starts: the old release serving the kept database of
    /// `data` at revision 3, in a new volume.
    pub(super) fn reset(self, old_image: &str, data: &Path) -> anyhow::Result<()> {
        let Demo(sh, stack, tools) = self;
        take_down(sh, stack)?;
        tag(sh, old_image, &stack.bot_image)?;
        tools.run(sh, &["restore", path_str(data)?])?;
        let out = tools.run(sh, &["prod-migrate", "--json"])?;
        let report = database::last_json(&out, "prod-migrate")?;
        if report["revision_after"] != 3 {
            bail!("the old release did not start at revision 3: {report}");
        }
        wait_for_calls(sh, stack, 3)?;
        std::thread::sleep(SETTLE);
        Ok(())
    }

    /// Runs `work` and returns the gaps between `getUpdates` calls from just before it began until
    /// the bot has polled 3 times after it ended. Fails when the stand-in restarted meanwhile (its
    /// record of calls would be cut).
    fn timed_gap(
        self,
        work: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<(Gaps, String)> {
        let Demo(sh, stack, _) = self;
        let before = standin(sh, stack)?;
        let from = unix_ms();
        let output = work()?;
        wait_for_calls(sh, stack, 3)?;
        let to = unix_ms();
        if standin(sh, stack)? != before {
            bail!("the stand-in restarted during the measured work, so its record of polls is cut");
        }
        let calls = poll_times(sh, &before.0)?;
        Ok((gaps(&calls, from, to)?, output))
    }
}

/// The report of a deploy that must have migrated from revision 3 to the head.
pub(super) fn deployed(out: &str) -> anyhow::Result<Value> {
    let report = database::last_json(out, "prod-full-update")?;
    let head = migrations::head();
    if report["revision_before"] != 3 || report["revision_after"] != head {
        bail!("the deploy did not migrate from revision 3 to {head}: {report}");
    }
    Ok(report)
}

/// A deploy's own account, for the progress lines: its downtime (until healthy) and its steps.
fn steps(report: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(seconds) = report["downtime_seconds"].as_f64() {
        parts.push(format!("downtime until healthy {seconds:.2} s"));
    }
    for step in report["steps"].as_array().into_iter().flatten() {
        let name = step["name"].as_str().unwrap_or("?");
        let seconds = step["seconds"].as_f64().unwrap_or(0.0);
        parts.push(format!("{name} {seconds:.2} s"));
    }
    parts.join(", ")
}

/// `bot db upgrade` alone on a fresh, warm copy of `template`, timed from spawn to exit; the
/// result must be current at the head.
fn migrate_alone(sh: &Shell, bot: &Path, template: &Path, work: &Path) -> anyhow::Result<Duration> {
    warm_copy_whole(template, work)?;
    let result = bot_db(bot, work, &["upgrade"]).and_then(|took| {
        expect_current(sh, bot, work, "after `bot db upgrade` the copy")?;
        Ok(took)
    });
    fresh(work);
    result
}

impl Tools {
    /// The tools for runs of the Compose project `project`, with `bot` and a copy of this xtask.
    pub(super) fn new(bot: &Path, project: &'static str) -> anyhow::Result<Tools> {
        let dir = work_dir().join("stack");
        std::fs::create_dir_all(&dir)?;
        let xtask = own_copy(Path::new("/proc/self/exe"), "xtask")?;
        Ok(Tools {
            bot: bot.to_owned(),
            xtask,
            dir,
            project,
        })
    }

    /// Runs `work` on the demo stack, removing what the benchmark makes in Docker before and after.
    pub(super) fn on_stack<T>(
        &self,
        sh: &Shell,
        work: impl FnOnce(Demo) -> anyhow::Result<T>,
    ) -> anyhow::Result<(Stack, T)> {
        let stack = Stack::new(sh, self.project, true)?;
        remove(sh, &stack);
        let result = work(Demo(sh, &stack, self));
        remove(sh, &stack);
        Ok((stack, result?))
    }

    /// Runs this very xtask (its copy) with `args` for the benchmark project; returns its stdout.
    pub(super) fn run(&self, sh: &Shell, args: &[&str]) -> anyhow::Result<String> {
        let (xtask, options) = (&self.xtask, xtask_options(self.project));
        let what = format!("cargo xtask {}", args.join(" "));
        let command =
            cmd!(sh, "{xtask} {args...} {options...}").env("STANDIN_MAX_LONG_POLL_MS", POLL_CAP_MS);
        Ok(process::run_within(command, &what, UNTIMED_LIMIT)?.stdout)
    }
}

/// What the stand-in saw while some work ran.
#[derive(Debug, Clone, PartialEq)]
struct Gaps {
    /// The gaps longer than [`OUTAGE_MS`], in order: the times no bot was polling.
    outages: Vec<Duration>,
    /// When each outage began, in ms after the measured work began (for the progress lines).
    starts: Vec<i64>,
    /// The longest gap.
    longest: Duration,
}

impl Gaps {
    /// The downtime: the sum of the outages.
    fn total(&self) -> Duration {
        self.outages.iter().sum()
    }

    fn describe(&self) -> String {
        let outages: Vec<String> = (self.outages.iter().zip(&self.starts))
            .map(|(d, at)| format!("{} from {:+.2} s", show(*d), *at as f64 / 1000.0))
            .collect();
        let detail = if self.outages.is_empty() {
            format!("no outage, longest gap {}", show(self.longest))
        } else {
            format!("outages {}", outages.join(" + "))
        };
        format!("{} ({detail})", show(self.total()))
    }
}

/// The gaps between `getUpdates` calls (arrivals in ms) from the last at or before `from` to the
/// last at or before `to`. Fails unless the bot called in the second before `from`.
fn gaps(calls: &[u64], from: u64, to: u64) -> anyhow::Result<Gaps> {
    let mut calls = calls.to_vec();
    calls.sort_unstable();
    let before = calls.iter().rev().find(|t| **t <= from).copied();
    let before =
        before.context("the bot had not called getUpdates before the measured work began")?;
    if from - before > 1000 {
        bail!(
            "the bot was not polling when the measured work began: its last call was {} ms before",
            from - before
        );
    }
    calls.retain(|t| *t >= before && *t <= to);
    let all: Vec<(u64, u64)> = calls.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
    let outages: Vec<(u64, u64)> = all.iter().copied().filter(|g| g.1 > OUTAGE_MS).collect();
    Ok(Gaps {
        outages: outages.iter().map(|g| Duration::from_millis(g.1)).collect(),
        starts: outages.iter().map(|g| g.0 as i64 - from as i64).collect(),
        longest: Duration::from_millis(all.iter().map(|g| g.1).max().unwrap_or(0)),
    })
}

/// The stand-in's container and when it started.
pub(super) fn standin(sh: &Shell, stack: &Stack) -> anyhow::Result<(String, String)> {
    let project = format!("label=com.docker.compose.project={}", stack.project);
    let ps = cmd!(
        sh,
        "docker ps -q --no-trunc --filter {project} --filter label=com.docker.compose.service=telegram-standin"
    );
    let out = process::run(ps, "finding the stand-in")?;
    let id = out.stdout.lines().next();
    let id = id.context("the stand-in is not running")?;
    let state = crate::docker::inspect(sh, id.trim())?;
    Ok((state.id, state.started_at))
}

/// Waits until the bot has called `getUpdates` `calls` times from now on (3: it polls again).
pub(super) fn wait_for_calls(sh: &Shell, stack: &Stack, calls: usize) -> anyhow::Result<()> {
    let since = unix_ms();
    let (standin, _) = standin(sh, stack)?;
    let polled = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let times = poll_times(sh, &standin)?;
        Ok(times.iter().filter(|t| **t > since).count() >= calls)
    })?;
    ensure!(polled, "the bot did not poll the stand-in within 60 s");
    Ok(())
}

/// When the stand-in (container `id`) saw each `getUpdates` call arrive, in ms since the Unix
/// epoch. Read with `docker exec`, far lighter than Compose v1 (a Python program) on the bot's CPU.
fn poll_times(sh: &Shell, id: &str) -> anyhow::Result<Vec<u64>> {
    let stats = cmd!(sh, "docker exec {id} /telegram-standin stats");
    let out = process::run(stats, "reading the stand-in's counters")?;
    let stats: Value = serde_json::from_str(out.stdout.trim())?;
    let calls = stats["get_updates_at_ms"].as_array();
    let calls = calls.context("no get_updates_at_ms in the stand-in's stats")?;
    Ok(calls.iter().filter_map(Value::as_u64).collect())
}

pub(super) fn image_id(sh: &Shell, image: &str) -> anyhow::Result<String> {
    crate::docker::image_id(sh, image)?.with_context(|| format!("no image {image}"))
}

pub(super) fn tag(sh: &Shell, id: &str, tag: &str) -> anyhow::Result<()> {
    process::run(cmd!(sh, "docker tag {id} {tag}"), "tagging an image").map(drop)
}

fn bot(sh: &Shell, stack: &Stack) -> anyhow::Result<ContainerState> {
    stack.bot_container(sh)?.context("no bot container")
}

fn idle_memory(sh: &Shell, stack: &Stack) -> anyhow::Result<f64> {
    let id = bot(sh, stack)?.id;
    let format = "{{.MemUsage}}";
    let stats = cmd!(sh, "docker stats --no-stream --format {format} {id}");
    let out = process::run(stats, "reading the bot's memory")?;
    let used = out.stdout.split('/').next().unwrap_or("").trim().to_owned();
    let digits = used.find(|c: char| c.is_ascii_alphabetic());
    let (number, unit) = used.split_at(digits.unwrap_or(used.len()));
    let number = number.trim().parse::<f64>();
    let number = number.with_context(|| format!("docker stats printed {used:?}"))?;
    Ok(match unit {
        "KiB" | "kB" => number / 1024.0,
        "GiB" | "GB" => number * 1024.0,
        "B" => number / 1024.0 / 1024.0,
        _ => number,
    })
}

fn image_size(sh: &Shell, image: &str) -> anyhow::Result<u64> {
    let format = "{{.Size}}";
    let inspect = cmd!(sh, "docker image inspect --format {format} {image}");
    let out = process::run(inspect, "reading the image size")?;
    out.stdout.trim().parse().context("docker printed no size")
}

fn throughput(sh: &Shell, stack: &Stack) -> anyhow::Result<(u64, f64, f64)> {
    let out = stack.standin(sh, &["load", "--users", "1000"], "loading the bot")?;
    let load: Value = serde_json::from_str(out.stdout.trim())?;
    Ok((
        load["messages"].as_u64().unwrap_or(0),
        load["seconds"].as_f64().unwrap_or(0.0),
        load["per_second"].as_f64().unwrap_or(0.0),
    ))
}

/// A Compose command for `stack`, the stand-in's long polls held [`POLL_CAP_MS`] at most.
fn compose<'a>(sh: &'a Shell, stack: &Stack) -> Cmd<'a> {
    stack.cmd(sh).env("STANDIN_MAX_LONG_POLL_MS", POLL_CAP_MS)
}

/// Removes the stack's containers, network and volume (the deploy history stays).
fn take_down(sh: &Shell, stack: &Stack) -> anyhow::Result<()> {
    let down = compose(sh, stack).args(["down", "-v", "--remove-orphans"]);
    process::run(down, "removing the benchmark's stack and volume").map(drop)
}

/// Removes everything the benchmark made in Docker and its backup folder.
fn remove(sh: &Shell, stack: &Stack) {
    let _ = take_down(sh, stack);
    for suffix in ["-bench-old", "-bench-new"] {
        let name = format!("{}{suffix}", stack.bot_image);
        let _ = process::output(cmd!(sh, "docker image rm {name}"));
    }
    let state = crate::project::root().join("backups").join(&stack.project);
    let _ = std::fs::remove_dir_all(state);
}

/// The kept database of `users` users at revision 3 (see [`kept`]): a stamped revision-3
/// database built by the engine here, in WAL mode as the bot leaves it (every deploy and the
/// migration alone find it so).
pub(super) fn dataset(sh: &Shell, bot: &Path, dir: &Path, users: u64) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("revision-3-{}-g{GENERATOR}.db", label(users)));
    kept(sh, bot, &path, 3, "stack", |partial| {
        let mut db = migrations::Database::open(partial)?;
        db.upgrade(|_| {})?;
        db.downgrade(3, |_| {})?;
        db.connection().execute_batch(&format!(
            "PRAGMA synchronous = OFF;
             BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {users})
             INSERT INTO users (telegram_id, username, first_name, last_name, is_admin, language_code)
             SELECT 500000000 + i, 'user' || i, 'First' || i, 'Last' || i, i % 100 = 0, 'en' FROM n;
             INSERT INTO command_log (user_id, command) SELECT id, '/start' FROM users;
             COMMIT;
             PRAGMA journal_mode = WAL;"
        ))?;
        Ok(())
    })?;
    Ok(path)
}

/// Copies `from` (its main file: it must have no `-wal` with content) to a new file `to` through
/// the page cache, then flushes it: the copy starts warm and clean, as a restore leaves it.
pub(super) fn warm_copy_whole(from: &Path, to: &Path) -> anyhow::Result<()> {
    let wal = PathBuf::from(format!("{}-wal", from.display()));
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        bail!(
            "{} has a -wal with content: a copy of the file alone would lose it",
            from.display()
        );
    }
    super::warm_copy(from, to)
}

/// How many outages the runs had: "1 outage in each run", "1–2 outages per run".
fn outage_counts(runs: &[Gaps]) -> String {
    let counts = runs.iter().map(|g| g.outages.len());
    let (low, high) = (counts.clone().min().unwrap_or(0), counts.max().unwrap_or(0));
    match (low, high) {
        (1, 1) => "1 outage in each run".into(),
        (l, h) if l == h => format!("{l} outages in each run"),
        (l, h) => format!("{l}–{h} outages per run"),
    }
}

fn totals(runs: &[Gaps]) -> Vec<Duration> {
    runs.iter().map(Gaps::total).collect()
}

fn sections(plan: &Plan, results: &[AtSize], once: Once, method: String) -> (Section, Section) {
    let (mut rows, mut against_manual) = (Vec::new(), Vec::new());
    for (i, at) in results.iter().enumerate() {
        let users = label(at.users);
        let ours = median(totals(&at.ours));
        let limit = median(at.migration.clone()) + ALLOWANCE;
        rows.push(Measurement {
            name: format!(
                "downtime of `prod-full-update`, revisions 4 and 5 pending, at {users} users ({})",
                size(at.bytes)
            ),
            ours: format!("{}; {}", spread(&totals(&at.ours)), outage_counts(&at.ours)),
            baseline: format!(
                "the migration alone (`bot db upgrade`): {}",
                spread(&at.migration)
            ),
            target: format!(
                "at most the migration's own duration + {} ({})",
                show(ALLOWANCE),
                show(limit)
            ),
            met: ours <= limit,
        });
        let manual = median(totals(&at.manual));
        let ratio = ours.as_secs_f64() / manual.as_secs_f64().max(0.001);
        // The target is set at the first size (100k users); the others are reported.
        let targeted = i == 0;
        against_manual.push(Measurement {
            name: format!("downtime against the manual flow, at {users} users"),
            ours: format!("{ratio:.2} of it ({})", show(ours)),
            baseline: format!(
                "manual flow: {}; {}",
                spread(&totals(&at.manual)),
                outage_counts(&at.manual)
            ),
            target: if targeted {
                "under a third".into()
            } else {
                "(ratio reported)".into()
            },
            met: !targeted || ratio * MANUAL_RATIO < 1.0,
        });
    }
    rows.extend(against_manual);
    rows.extend(once.noop);
    let deploy = Section {
        title: "Deploy".into(),
        method,
        rows,
    };
    let first = label(plan.sizes[0]);
    let bot = Section {
        title: "Bot".into(),
        method: format!(
            "The static release binary in its `scratch` image, running in the demo stack right after the no-op deploy above (at {first} users), the stand-in then made again with its default long poll (held up to 10 s, as Telegram holds it). Memory is `docker stats` after 5 s idle; throughput is `telegram-standin load`: 1,000 distinct users send /start at once, timed until every one got its answer."
        ),
        rows: once.bot.into(),
    };
    (deploy, bot)
}

fn method(stack: &Stack, plan: &Plan, results: &[AtSize], clock: &Clock) -> String {
    let sizes = results
        .iter()
        .map(|r| format!("{} users ({})", label(r.users), size(r.bytes)))
        .collect::<Vec<_>>()
        .join(" and ");
    let runs = plan.runs;
    let first = label(plan.sizes[0]);
    let options = xtask_options(PROJECT).join(" ");
    let smoke = if plan.quick {
        format!(
            "**A smoke run (`--quick`): {runs} runs at {first} users only. It checks that the code runs; its numbers mean nothing.**\n\n"
        )
    } else {
        String::new()
    };
    format!(
        "{smoke}The demo stack ({compose}, `scratch` images, the Bot API stand-in in place of Telegram) with a database at revision 3 of {sizes}: rows like `user123`, `First123`, one admin in 100, one `command_log` row per user, in WAL mode as the bot leaves it; generated once by the engine and kept in `target/bench/stack/`.\n\n\
         Every run starts from the same state: the stack and its volume removed (`down -v`); the old release's image (built once by `cargo xtask first-deploy --schema-head 3`) tagged as the project's; the kept database put into a new volume by `cargo xtask restore`; the old bot started by `cargo xtask prod-migrate` (nothing to migrate at revision 3), seen polling, then left to serve {settle}. Before the timed runs one untimed `prod-full-update` builds the new images, so that no timed run compiles or builds an image that is not in Docker's cache. Then, at each size, {runs} times in turn:\n\n\
         - the migration alone: `bot db upgrade`, the static release binary the image ships, run on this machine (not in a container, the stack down) on a fresh copy of the same file, written through the page cache and flushed, timed from spawn to exit (one untimed run first). It opens the file, checks it (`quick_check`), rebuilds `users` (revision 4), checks foreign keys and commits, then creates revision 5's tables and fills the /stats summaries from the rows, then revision 6's two empty tables, committing each revision; it takes no backup.\n\
         - the seed's manual flow, on the same images, data and compose file: `up -d bot` with the new image, a one-off `run --rm -T bot db upgrade`, `restart bot`.\n\
         - ours: `cargo xtask prod-full-update --json {options}`. Its migration container opens and checks the file while the old bot still serves; once the old bot has exited, it takes the pre-deploy backup (a full copy, by SQLite's online backup API) and migrates; the new bot, started by Compose meanwhile, waits for the schema and serves once it is current.\n\n\
         Downtime is read at the stand-in, which notes when each `getUpdates` call arrives and holds each long poll {POLL_CAP_MS} ms at most, so that a serving bot calls again every {POLL_CAP_MS} ms plus a round trip. A gap of more than {OUTAGE_MS} ms between two calls, from the last call before the measured command began until the bot had called 3 times after it ended, is an outage, counted whole; downtime is the sum of the outages. A gap begins at the old bot's last call, which it was still holding when it stopped, so it overstates the downtime by less than one poll interval; it ends at the new bot's first `getUpdates`, after its `getMe`, `deleteWebhook` and `setMyCommands`. A run fails if the stand-in restarted meanwhile. A cell gives the median of the {runs} runs, the lowest and the highest, and how many outages the runs had; targets compare medians. The no-op rows are one more `prod-full-update` right after the last timed one at {first} users, timed alone.\n\n\
         {}.",
        clock.summary(""),
        compose = stack.flavour.describe(),
        settle = show(SETTLE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_from_the_last_call_before_the_work_and_only_long_ones() {
        // Polls every 30 ms, a stop of 400 ms at 1100, a hiccup of 120 ms at 2000.
        let mut calls: Vec<u64> = (0..=37).map(|i| i * 30).collect(); // up to 1110
        calls.extend((0..30).map(|i| 1510 + i * 30)); // up to 2380
        calls.push(2500);
        calls.push(2530);
        calls.push(5000); // after `to`
        let g = gaps(&calls, 1000, 2600).unwrap();
        assert_eq!(g.outages, vec![Duration::from_millis(400)]);
        assert_eq!(g.starts, vec![110]);
        assert_eq!(g.longest, Duration::from_millis(400));
        assert_eq!(g.total(), Duration::from_millis(400));

        // A gap that straddles `from` is counted from the last call before it.
        let g = gaps(&[0, 30, 60, 500, 530], 100, 600).unwrap();
        assert_eq!(g.outages, vec![Duration::from_millis(440)]);
        assert_eq!(g.starts, vec![-40]);

        // No poll in the second before the work: not serving, so no measurement.
        assert!(gaps(&[0, 30], 2000, 3000).is_err());
        assert!(gaps(&[5000], 2000, 6000).is_err());
    }

    #[test]
    fn cells_show_the_median_and_the_spread() {
        let ms = Duration::from_millis;
        assert_eq!(
            spread(&[ms(400), ms(380), ms(455), ms(410), ms(420)]),
            "410.0 ms (median of 5; min–max 380.0 ms–455.0 ms)"
        );
        assert_eq!(spread(&[ms(400)]), "400.0 ms (1 run)");
        let run = |n: usize| Gaps {
            outages: vec![ms(300); n],
            starts: vec![0; n],
            longest: ms(300),
        };
        assert_eq!(outage_counts(&[run(1), run(1)]), "1 outage in each run");
        assert_eq!(outage_counts(&[run(2), run(1)]), "1–2 outages per run");
        assert_eq!(outage_counts(&[run(2), run(2)]), "2 outages in each run");
    }

    #[test]
    fn sizes_and_users_as_shown() {
        assert_eq!(label(100_000), "100k");
        assert_eq!(label(1_000_000), "1M");
        assert_eq!(size(27_000_000), "27.0 MB");
    }
}
