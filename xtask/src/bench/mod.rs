//! `cargo xtask bench`: measures the speed and size targets side by side in one run and writes
//! them, with the command that produced them, to `docs/BENCHMARKS.md`.

mod engine;
mod stack;
mod telegram;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use migrations::State;
use xshell::{Shell, cmd};

use crate::database::{self, DbStatus};
use crate::{images, process, project};

/// How long an untimed step (making a database, a deploy) may take.
pub const UNTIMED_LIMIT: Duration = Duration::from_secs(3 * 3600);

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only these groups (engine, stack, telegram); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the results [default: docs/BENCHMARKS.md; with --quick,
    /// target/bench/quick.md].
    #[arg(long)]
    output: Option<PathBuf>,
    /// A smoke run of the stack and telegram sections (the engine section has no such mode and
    /// is left out): 10k users, 2 runs of each measurement; the telegram section with fewer
    /// users and /stats at 100k users. It checks that the code runs end to end; its numbers
    /// mean nothing.
    #[arg(long)]
    quick: bool,
}

impl Args {
    /// The report's path, relative to the repository's root unless absolute.
    fn output(&self) -> PathBuf {
        match &self.output {
            Some(path) => path.clone(),
            None if self.quick => work_dir().join("quick.md"),
            None => PathBuf::from("docs/BENCHMARKS.md"),
        }
    }
}

/// One measured target.
pub struct Measurement {
    /// What was measured.
    pub name: String,
    /// Ours, as shown.
    pub ours: String,
    /// The comparison, as shown ("" when there is none).
    pub baseline: String,
    /// The target, as shown.
    pub target: String,
    /// Whether the target was met.
    pub met: bool,
}

/// A group's results and notes.
pub struct Section {
    /// The group's heading.
    pub title: String,
    /// How it was measured.
    pub method: String,
    /// The rows.
    pub rows: Vec<Measurement>,
}

/// The working folder for benchmark files (large, kept between runs, never committed).
pub fn work_dir() -> PathBuf {
    project::root().join("target/bench")
}

/// The static release `bot` (the one the image ships) and `telegram-standin` binaries, built if
/// needed and copied out of the build folder, so that a build of another release meanwhile (a
/// test's older schema head) cannot change what is measured.
pub fn release_binaries(sh: &Shell) -> anyhow::Result<(PathBuf, PathBuf)> {
    let binaries = images::build_binaries(sh, None)?;
    Ok((
        own_copy(&binaries.bot(), "bot")?,
        own_copy(&binaries.dir.join("telegram-standin"), "telegram-standin")?,
    ))
}

/// A copy of the program `from`, named `name` in the benchmark's `bin` folder: a build
/// meanwhile cannot replace what is measured or run.
pub fn own_copy(from: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = work_dir().join("bin");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join(name);
    let _ = std::fs::remove_file(&copy);
    std::fs::copy(from, &copy)
        .with_context(|| format!("cannot copy the {name} binary to {}", copy.display()))?;
    Ok(copy)
}

/// Runs a program to the end and returns how long it took; fails when it fails.
pub fn time(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> anyhow::Result<Duration> {
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    let took = started.elapsed();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("{} {args:?} failed: {stderr}", program.display());
    }
    Ok(took)
}

/// The median of some durations.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Samples as shown: the median, then the lowest and highest.
pub fn spread(samples: &[Duration]) -> String {
    let mid = median(samples.to_vec());
    match (samples.iter().min(), samples.iter().max()) {
        (Some(low), Some(high)) if samples.len() > 1 => format!(
            "{} (median of {}; min–max {}–{})",
            show(mid),
            samples.len(),
            show(*low),
            show(*high)
        ),
        _ => format!("{} (1 run)", show(mid)),
    }
}

/// A long duration as shown: 21 min 4 s.
pub fn long(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds < 60 {
        show(duration)
    } else {
        format!("{} min {} s", seconds / 60, seconds % 60)
    }
}

/// A number of users as shown: 10k, 1M.
pub fn label(users: u64) -> String {
    match users {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// A file size as shown.
pub fn size(bytes: u64) -> String {
    let mb = bytes as f64 / 1e6;
    if mb >= 1000.0 {
        format!("{:.2} GB", mb / 1000.0)
    } else {
        format!("{mb:.1} MB")
    }
}

/// Copies `from` to a new file `to` through the page cache (read and write: no in-kernel copy
/// that could leave the copy uncached), then flushes it: the copy starts warm and clean.
pub fn warm_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fresh(to);
    let mut source = File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let mut copy =
        File::create_new(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut buffer = vec![0; 1 << 20];
    while let n @ 1.. = source.read(&mut buffer)? {
        copy.write_all(&buffer[..n])?;
    }
    copy.sync_all()?;
    Ok(())
}

/// Removes a database and what SQLite keeps beside it.
pub fn fresh(db: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// The kept database `path` at revision `revision`, made again by `make` (given a new file
/// beside it) when missing, or when `bot db status` no longer reads it as revision `revision`
/// (e.g. a migration file changed). Returns how long making it took, when it was made.
pub fn kept(
    sh: &Shell,
    bot: &Path,
    path: &Path,
    revision: u64,
    group: &str,
    make: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<Option<Duration>> {
    let shown = path.display();
    if path.exists() {
        match state(sh, bot, path) {
            Ok((State::Behind, Some(r))) if r == revision => return Ok(None),
            Ok((state, version)) => eprintln!(
                "{group}: {shown} is {state} at revision {version:?}, not revision {revision}: making it again"
            ),
            Err(e) => eprintln!("{group}: {shown} is unreadable ({e:#}): making it again"),
        }
        fresh(path);
    }
    eprintln!("{group}: making {shown}");
    let started = Instant::now();
    let partial = path.with_extension("partial.db");
    fresh(&partial);
    make(&partial)?;
    File::open(&partial)?.sync_all()?;
    expect_state(sh, bot, &partial, State::Behind, revision, "the generated")?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", partial.display()));
    }
    std::fs::rename(&partial, path)?;
    Ok(Some(started.elapsed()))
}

/// `bot db status --json` of `db`: its state and revision.
pub fn state(sh: &Shell, bot: &Path, db: &Path) -> anyhow::Result<(State, Option<u64>)> {
    let status = cmd!(sh, "{bot} db status --json").env("DATABASE_PATH", db);
    let out = process::run(status, "bot db status")?;
    let status: DbStatus = database::parse_last(&out.stdout, "`bot db status --json`")?;
    Ok((status.state, status.version.map(u64::from)))
}

/// Fails unless `bot db status` reads `db` as `want` at `revision`; `what` begins the error.
pub fn expect_state(
    sh: &Shell,
    bot: &Path,
    db: &Path,
    want: State,
    revision: u64,
    what: &str,
) -> anyhow::Result<()> {
    let (state, version) = state(sh, bot, db)?;
    if state != want || version != Some(revision) {
        bail!(
            "{what} {} is {state} at revision {version:?}, not {want} at revision {revision}",
            db.display()
        );
    }
    Ok(())
}

/// Fails unless `bot db status` reads `db` as current at the head (see [`expect_state`]).
pub fn expect_current(sh: &Shell, bot: &Path, db: &Path, what: &str) -> anyhow::Result<()> {
    let head = u64::from(migrations::head());
    expect_state(sh, bot, db, State::Current, head, what)
}

/// Removes the `files` an older version of a benchmark left in its folder `dir`.
pub fn remove_old(dir: &Path, files: &[&str], group: &str) {
    for old in files.iter().map(|f| dir.join(f)).filter(|f| f.exists()) {
        eprintln!(
            "{group}: removing {}, left by an older benchmark",
            old.display()
        );
        fresh(&old);
    }
}

/// Checks `ready` every `every` until it holds (true) or `timeout` has passed (false).
pub fn wait_until(
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    while !ready()? {
        if Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(every);
    }
    Ok(true)
}

/// When a section's run began, and the load average then.
pub struct Clock {
    started: Instant,
    load: String,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            started: Instant::now(),
            load: load(),
        }
    }

    /// The sentence that ends a section's method: how long its run took (`detail` after the
    /// duration) and the load average at its start and now, its end.
    pub fn summary(&self, detail: &str) -> String {
        format!(
            "This run of the section took {}{detail}; the load average (1 minute) was {} at its start and {} at its end",
            long(self.started.elapsed()),
            self.load,
            load()
        )
    }
}

/// The 1-minute load average.
fn load() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg.split_whitespace().next().unwrap_or("?").to_owned()
}

pub fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// A duration for a table cell.
pub fn show(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", duration.as_secs_f64())
    }
}

/// Runs the benchmarks and writes the report.
pub fn run(sh: &Shell, args: Args) -> anyhow::Result<()> {
    if args.quick && args.only.iter().any(|g| g == "engine") {
        bail!(
            "--quick is a smoke run of the stack and telegram sections; the engine section has none"
        );
    }
    // A group is run when `--only` is not given or names it (or one of its sections).
    let wanted = |names: &[&str]| {
        args.only.is_empty() || args.only.iter().any(|g| names.contains(&g.as_str()))
    };
    std::fs::create_dir_all(work_dir())?;
    let mut sections = Vec::new();
    if wanted(&["engine"]) && !args.quick {
        sections.push(engine::run(sh)?);
    }
    if wanted(&["stack", "deploy", "bot"]) {
        let (deploy, bot) = stack::run(sh, args.quick)?;
        sections.push(deploy);
        sections.push(bot);
    }
    if wanted(&["telegram"]) {
        sections.push(telegram::run(sh, args.quick)?);
    }
    let output = project::root().join(args.output());
    let earlier = std::fs::read_to_string(&output).unwrap_or_default();
    let report = render(&sections, &args, &earlier);
    if let Some(folder) = output.parent() {
        std::fs::create_dir_all(folder)?;
    }
    std::fs::write(&output, &report)
        .with_context(|| format!("cannot write {}", output.display()))?;
    print!("{report}");
    eprintln!("written to {}", output.display());
    let rows = sections.iter().flat_map(|s| &s.rows);
    let missed: Vec<&str> = rows.filter(|r| !r.met).map(|r| r.name.as_str()).collect();
    if !missed.is_empty() {
        eprintln!("targets missed: {}", missed.join("; "));
    }
    Ok(())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find(|l| l.starts_with("model name"));
    let cpu = model.map_or("unknown CPU", |l| l.split(':').nth(1).unwrap_or("").trim());
    format!("{cores} cores ({cpu})")
}

/// The sections of an earlier report (from its first `## ` heading on, one string each, with the
/// date line of that report), for the groups this run did not measure.
fn earlier_sections(earlier: &str, measured: &[&str]) -> Vec<String> {
    let produced = earlier
        .lines()
        .find(|l| l.starts_with("Produced by"))
        .and_then(|l| l.split(" on ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("an earlier run")
        .to_owned();
    let mut out = Vec::new();
    for chunk in earlier.split("\n## ").skip(1) {
        let (heading, body) = chunk.split_once('\n').unwrap_or((chunk, ""));
        let title = heading.trim();
        let title = title.split(" (from the run of").next().unwrap_or(title);
        // A renamed section ("Migration engine: how cost grows") keeps its group before a colon.
        let group = |t: &str| t.split(':').next().unwrap_or(t).trim().to_owned();
        if measured.iter().any(|m| group(m) == group(title)) {
            continue;
        }
        let note = if heading.contains("(from the run of") {
            heading.to_owned()
        } else {
            format!("{title} (from the run of {produced})")
        };
        out.push(format!("\n## {note}\n{}\n", body.trim_end_matches('\n')));
    }
    out
}

fn render(sections: &[Section], args: &Args, earlier: &str) -> String {
    let only = (!args.only.is_empty()).then(|| format!(" --only {}", args.only.join(",")));
    let only = only.unwrap_or_default();
    let quick = if args.quick { " --quick" } else { "" };
    let output = args.output.as_deref().map(Path::display);
    let output = output.map(|o| format!(" --output {o}")).unwrap_or_default();
    let command = format!("cargo xtask bench{only}{quick}{output}");
    let date = crate::clock::minute();
    let mut out = format!(
        "# Benchmarks\n\nProduced by `{command}` on {date}, {}. Every number below comes from that one run, except in sections marked with the run they come from (a run with `--only` keeps the other sections); run `cargo xtask bench` to refresh them all.\n",
        machine()
    );
    for section in sections {
        out.push_str(&format!("\n## {}\n\n{}\n\n| measurement | ours | compared with | target | met |\n| --- | --- | --- | --- | --- |\n", section.title, section.method));
        for row in &section.rows {
            let baseline = Some(row.baseline.as_str()).filter(|b| !b.is_empty());
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                row.name,
                row.ours,
                baseline.unwrap_or("-"),
                row.target,
                if row.met { "yes" } else { "**no**" }
            ));
        }
    }
    let measured: Vec<&str> = sections.iter().map(|s| s.title.as_str()).collect();
    for section in earlier_sections(earlier, &measured) {
        out.push_str(&section);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_run_keeps_the_other_groups_sections_and_says_from_when() {
        let earlier = "# Benchmarks\n\nProduced by `cargo xtask bench` on 2026-11-25T07:40Z, 2 cores.\n\n## Migration engine\n\nold engine\n\n## Deploy\n\ndeploy rows\n\n## Bot (from the run of 2026-11-20T00:00Z)\n\nbot rows\n";
        let kept = earlier_sections(earlier, &["Migration engine: how cost grows"]);
        assert_eq!(
            kept,
            vec![
                "\n## Deploy (from the run of 2026-11-25T07:40Z)\n\ndeploy rows\n".to_owned(),
                "\n## Bot (from the run of 2026-11-20T00:00Z)\n\nbot rows\n".to_owned(),
            ]
        );
        assert!(earlier_sections("", &["Deploy"]).is_empty());
    }
}
