//! The deploy and the bot, measured on the real stack: the downtime of `prod-full-update` with
//! one pending migration against the seed's manual flow on the same images (both seen as the
//! gap in `getUpdates` calls at the stand-in), a no-op update, and the bot's idle memory, image
//! size and throughput.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::Value;
use xshell::{Shell, cmd};

use super::{Measurement, Section, show, work_dir};
use crate::compose::Stack;
use crate::process;

const PROJECT: &str = "tgbot-bench";
const USERS: u64 = 100_000;
/// Long polls held this long at most, so the bot polls often and a stop shows as a gap.
const POLL_CAP_MS: &str = "100";

/// Runs the stack benchmarks: the deploy section and the bot section.
pub fn run(sh: &Shell) -> anyhow::Result<(Section, Section)> {
    let dir = work_dir().join("stack");
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("revision-3-100k.db");
    if !data.exists() {
        eprintln!("creating a database of {USERS} users at revision 3");
        revision_3_database(&data)?;
    }
    let stack = Stack::new(sh, PROJECT, true)?;
    remove(sh, &stack);
    let result = measure(sh, &stack, &data);
    remove(sh, &stack);
    result
}

fn measure(sh: &Shell, stack: &Stack, data: &Path) -> anyhow::Result<(Section, Section)> {
    // The old release (schema head 3) running on 100,000 users.
    xtask(&["first-deploy", "--schema-head", "3"])?;
    let old_image = image_id(sh, &stack.bot_image)?;
    xtask(&["restore", data.to_str().context("UTF-8 path")?])?;
    xtask(&["prod-migrate"])?;
    std::thread::sleep(Duration::from_secs(2));

    // Ours: one pending migration (revision 4, the users rebuild).
    let (ours, ours_report) = timed_gap(sh, stack, || xtask(&["prod-full-update", "--json"]))?;
    let new_image = image_id(sh, &stack.bot_image)?;
    let report: Value = serde_json::from_str(ours_report.lines().last().unwrap_or("{}"))?;
    if report["revision_after"] != 4 {
        bail!("the measured deploy did not migrate to revision 4: {report}");
    }
    let container_before = started_at(sh, stack)?;
    let started = Instant::now();
    let (noop_gap, _) = timed_gap(sh, stack, || xtask(&["prod-full-update", "--json"]))?;
    let noop_took = started.elapsed();
    let restarted = started_at(sh, stack)? != container_before;

    // The bot, idle then under load, on the new image.
    std::thread::sleep(Duration::from_secs(5));
    let memory = idle_memory(sh, stack)?;
    let size = image_size(sh, &stack.bot_image)?;
    let load = throughput(sh, stack)?;

    // The seed's manual flow, from the same starting point on the same images.
    xtask(&["down"])?;
    tag(sh, &old_image, &stack.bot_image)?;
    xtask(&["restore", data.to_str().context("UTF-8 path")?])?;
    xtask(&["prod-migrate"])?;
    std::thread::sleep(Duration::from_secs(2));
    let mut new = stack.clone();
    new.bot_image = format!("{}-bench-new", stack.bot_image);
    tag(sh, &new_image, &new.bot_image)?;
    let (manual, _) = timed_gap(sh, stack, || {
        process::run(
            new.cmd(sh)
                .args(["up", "-d", "bot"])
                .env("STANDIN_MAX_LONG_POLL_MS", POLL_CAP_MS),
            "manual: up -d",
        )?;
        process::run(
            new.cmd(sh)
                .args(["run", "--rm", "-T", "bot", "db", "upgrade"])
                .env("STANDIN_MAX_LONG_POLL_MS", POLL_CAP_MS),
            "manual: one-off migrate",
        )?;
        process::run(
            new.cmd(sh)
                .args(["restart", "bot"])
                .env("STANDIN_MAX_LONG_POLL_MS", POLL_CAP_MS),
            "manual: restart",
        )?;
        wait_for_polls(sh, stack)?;
        Ok(String::new())
    })?;
    let ratio = manual.total.as_secs_f64() / ours.total.as_secs_f64().max(0.001);
    let describe = |gaps: &Gaps| {
        format!(
            "{} ({} outage{}, longest gap {})",
            show(gaps.total),
            gaps.outages,
            if gaps.outages == 1 { "" } else { "s" },
            show(gaps.longest)
        )
    };

    let deploy = Section {
        title: "Deploy".into(),
        method: format!(
            "The demo stack (docker-compose, `scratch` images) with {USERS} users at revision 3, the old release running. The stand-in holds long polls {POLL_CAP_MS} ms, so a serving bot calls `getUpdates` several times a second; downtime is the sum of the gaps between two calls longer than {OUTAGE} ms while the deploy ran (each such gap is an outage). The manual flow is the seed's: `up -d` with the new image, a one-off `bot db upgrade`, `restart`, on the same images, data and compose file."
        ),
        rows: vec![
            Measurement {
                name: "downtime of `prod-full-update`, one pending migration (the `users` rebuild)"
                    .into(),
                ours: describe(&ours),
                baseline: format!("manual flow: {}", describe(&manual)),
                target: "under 2 s".into(),
                met: ours.total < Duration::from_secs(2),
            },
            Measurement {
                name: "downtime against the manual flow".into(),
                ours: format!("{:.2} of it", 1.0 / ratio),
                baseline: format!("manual flow: {}", show(manual.total)),
                target: "under a third".into(),
                met: ratio > 3.0,
            },
            Measurement {
                name: "no-op `prod-full-update`: time".into(),
                ours: show(noop_took),
                baseline: String::new(),
                target: "under 5 s".into(),
                met: noop_took < Duration::from_secs(5),
            },
            Measurement {
                name: "no-op `prod-full-update`: downtime".into(),
                ours: format!(
                    "{} ({}; longest gap between polls {})",
                    if restarted {
                        "the bot restarted"
                    } else {
                        "none"
                    },
                    if restarted {
                        "container restarted"
                    } else {
                        "same container, never stopped"
                    },
                    show(noop_gap.longest)
                ),
                baseline: String::new(),
                target: "zero".into(),
                met: !restarted && noop_gap.outages == 0,
            },
        ],
    };
    let bot = Section {
        title: "Bot".into(),
        method: "The static release binary in its `scratch` image, running in the demo stack after the deploy above. Memory is `docker stats` after 5 s idle; throughput is `telegram-standin load`: 1,000 distinct users send /start at once, timed until every one got its answer.".into(),
        rows: vec![
            Measurement {
                name: "idle memory".into(),
                ours: format!("{:.1} MiB", memory),
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
                ours: format!("{:.0}/s ({} messages in {:.2} s)", load.2, load.0, load.1),
                baseline: String::new(),
                target: "(measured)".into(),
                met: load.0 == 1000,
            },
        ],
    };
    Ok((deploy, bot))
}

/// Runs this very xtask with `args` for the benchmark project.
fn xtask(args: &[&str]) -> anyhow::Result<String> {
    let program = std::env::current_exe()?;
    let output = Command::new(program)
        .args(args)
        .args(["--demo", "--yes", "--project-name", PROJECT])
        .env("STANDIN_MAX_LONG_POLL_MS", POLL_CAP_MS)
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        bail!(
            "cargo xtask {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A gap between two `getUpdates` calls longer than this is downtime: a serving bot calls
/// again within the stand-in's poll cap plus a few milliseconds.
const OUTAGE: u64 = 300;

/// What the stand-in saw while some work ran.
struct Gaps {
    /// The sum of the gaps longer than [`OUTAGE`]: the time no bot was polling.
    total: Duration,
    /// The longest gap.
    longest: Duration,
    /// How many outages.
    outages: usize,
}

/// Runs `work` and returns the gaps between `getUpdates` calls while it ran.
fn timed_gap(
    sh: &Shell,
    stack: &Stack,
    work: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<(Gaps, String)> {
    let from = now_ms();
    let output = work()?;
    wait_for_polls(sh, stack)?;
    let to = now_ms();
    let calls = poll_times(sh, stack)?;
    let window: Vec<u64> = calls
        .into_iter()
        .filter(|t| *t + 1000 >= from && *t <= to)
        .collect();
    let gaps: Vec<u64> = window.windows(2).map(|w| w[1] - w[0]).collect();
    let longest = gaps.iter().copied().max().unwrap_or(to - from);
    let outages: Vec<u64> = gaps.into_iter().filter(|g| *g > OUTAGE).collect();
    Ok((
        Gaps {
            total: Duration::from_millis(outages.iter().sum()),
            longest: Duration::from_millis(longest),
            outages: outages.len(),
        },
        output,
    ))
}

/// Waits until the bot has polled again after whatever just happened.
fn wait_for_polls(sh: &Shell, stack: &Stack) -> anyhow::Result<()> {
    let since = now_ms();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if poll_times(sh, stack)?
            .iter()
            .filter(|t| **t > since)
            .count()
            >= 3
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the bot did not poll the stand-in within 60 s")
}

fn poll_times(sh: &Shell, stack: &Stack) -> anyhow::Result<Vec<u64>> {
    let out = stack.standin(sh, &["stats"], "reading the stand-in's counters")?;
    let stats: Value = serde_json::from_str(out.stdout.trim())?;
    Ok(stats["get_updates_at_ms"]
        .as_array()
        .context("no get_updates_at_ms in the stand-in's stats")?
        .iter()
        .filter_map(Value::as_u64)
        .collect())
}

fn image_id(sh: &Shell, image: &str) -> anyhow::Result<String> {
    crate::docker::image_id(sh, image)?.with_context(|| format!("no image {image}"))
}

fn tag(sh: &Shell, id: &str, tag: &str) -> anyhow::Result<()> {
    process::run(cmd!(sh, "docker tag {id} {tag}"), "tagging an image").map(drop)
}

fn started_at(sh: &Shell, stack: &Stack) -> anyhow::Result<String> {
    Ok(stack
        .bot_container(sh)?
        .context("no bot container")?
        .started_at)
}

fn idle_memory(sh: &Shell, stack: &Stack) -> anyhow::Result<f64> {
    let id = stack.bot_container(sh)?.context("no bot container")?.id;
    let format = "{{.MemUsage}}";
    let out = process::run(
        cmd!(sh, "docker stats --no-stream --format {format} {id}"),
        "reading the bot's memory",
    )?;
    let used = out.stdout.split('/').next().unwrap_or("").trim().to_owned();
    let (number, unit) = used.split_at(
        used.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(used.len()),
    );
    let number: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("docker stats printed {used:?}"))?;
    Ok(match unit {
        "KiB" | "kB" => number / 1024.0,
        "GiB" | "GB" => number * 1024.0,
        "B" => number / 1024.0 / 1024.0,
        _ => number,
    })
}

fn image_size(sh: &Shell, image: &str) -> anyhow::Result<u64> {
    let format = "{{.Size}}";
    let out = process::run(
        cmd!(sh, "docker image inspect --format {format} {image}"),
        "reading the image size",
    )?;
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

fn remove(sh: &Shell, stack: &Stack) {
    let _ = stack
        .cmd(sh)
        .args(["down", "-v", "--remove-orphans"])
        .quiet()
        .ignore_status()
        .output();
    let state = crate::project::root().join("backups").join(PROJECT);
    let _ = std::fs::remove_dir_all(state);
}

/// A stamped revision-3 database with `USERS` users, built by the engine on this machine.
fn revision_3_database(path: &PathBuf) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut db = migrations::Database::open(&partial)?;
    db.upgrade(|_| {})?;
    db.downgrade(3, |_| {})?;
    db.connection().execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {USERS})
         INSERT INTO users (telegram_id, username, first_name, last_name, is_admin, language_code)
         SELECT 500000000 + i, 'user' || i, 'First' || i, 'Last' || i, i % 100 = 0, 'en' FROM n;
         INSERT INTO command_log (user_id, command) SELECT id, '/start' FROM users;"
    ))?;
    drop(db);
    std::fs::rename(&partial, path)?;
    Ok(())
}
