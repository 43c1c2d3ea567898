//! `cargo xtask new-migration NAME` and `cargo xtask check-migrations`: changing the schema.
//! The checks themselves live in the migrations crate (`migrations::check`); this module finds
//! the folder, writes the new files and reports.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use migrations::check::{self, RELEASED_FILE};

use crate::exit;

/// The options of `new-migration`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The migration's name, in lowercase snake case (e.g. `add_user_language`).
    pub name: String,
    /// Print the files it would write, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// The migrations folder (default `migrations/sql`).
    #[arg(long, hide = true)]
    pub dir: Option<PathBuf>,
}

/// The options of `check-migrations`.
#[derive(Debug, Default, clap::Args)]
pub struct CheckArgs {
    /// After a passing check, record every new up file as released in
    /// `migrations/sql/released.sha256` (do it in the commit that ships them).
    #[arg(long)]
    pub release: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// The migrations folder (default `migrations/sql`).
    #[arg(long, hide = true)]
    pub dir: Option<PathBuf>,
}

fn sql_dir(dir: Option<&Path>) -> PathBuf {
    dir.map_or_else(
        || crate::project::root().join("migrations/sql"),
        Path::to_owned,
    )
}

/// The header written at the top of a new file.
pub fn header(file: &str, version: u32, up: bool, pair: &str) -> String {
    let what = if up {
        let previous = version - 1;
        format!("brings the database from revision {previous} to {version}; undone by {pair}")
    } else {
        format!("undoes {pair}: it must bring the schema back exactly to the previous revision")
    };
    format!(
        "-- {file}: {what}.\n\
         -- Once released (listed in {RELEASED_FILE}) this file must never be edited: write a new\n\
         -- migration instead (`cargo xtask new-migration NAME`).\n\
         -- Write the down file so that up, down, up gives the same schema; `cargo xtask\n\
         -- check-migrations` checks it. Each file runs in one transaction.\n\n"
    )
}

/// Writes the next `NNNN_<name>.up.sql` and `.down.sql`.
pub fn new_migration(args: NewArgs) -> anyhow::Result<()> {
    if !check::valid_name(&args.name) {
        return Err(exit::usage(format!(
            "{:?} is not a migration name: use lowercase snake case, e.g. add_user_language",
            args.name
        )));
    }
    let dir = sql_dir(args.dir.as_deref());
    let existing = check::load_dir(&dir).with_context(|| {
        format!(
            "reading {}; fix it (`cargo xtask check-migrations` says more) before adding a migration",
            dir.display()
        )
    })?;
    if let Some(m) = existing.iter().find(|m| m.name == args.name) {
        let (file, name) = (&m.file, &args.name);
        let message = format!("{file} already has the name {name:?}; pick another name");
        return Err(exit::refused(message));
    }
    let version = existing.len() as u32 + 1;
    let up = format!("{version:04}_{}.up.sql", args.name);
    let down = format!("{version:04}_{}.down.sql", args.name);
    let paths = [dir.join(&up), dir.join(&down)];
    if let Some(path) = paths.iter().find(|p| p.exists()) {
        let message = format!("{} exists; nothing was written", path.display());
        return Err(exit::refused(message));
    }
    let texts = [
        header(&up, version, true, &down),
        header(&down, version, false, &up),
    ];
    if !args.dry_run {
        for (path, text) in paths.iter().zip(&texts) {
            fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if args.json {
        let value = serde_json::json!({
            "task": "new-migration",
            "revision": version,
            "files": paths,
            "dry_run": args.dry_run,
        });
        println!("{value}");
    } else {
        let verb = if args.dry_run { "would write" } else { "wrote" };
        for path in &paths {
            eprintln!("{verb} {}", path.display());
        }
        eprintln!(
            "next: write the SQL, then run `cargo xtask check-migrations` (the bot's code must \
             work on revision {} and {version} while a deploy runs; see README, \"Changing the schema\")",
            version - 1
        );
    }
    Ok(())
}

/// Checks every migration; with `--release`, records the new ones as released.
pub fn check_migrations(args: CheckArgs) -> anyhow::Result<()> {
    let dir = sql_dir(args.dir.as_deref());
    let shown = dir.display();
    let report = check::check_dir(&dir).map_err(|e| match e {
        check::CheckError::Io { .. } => {
            anyhow::Error::new(e).context(format!("checking the migrations in {shown}"))
        }
        other => exit::refused(format!("the migrations in {shown} fail the check: {other}")),
    })?;
    let released = if args.release {
        check::release(&dir)
            .with_context(|| format!("recording the released migrations in {shown}"))?
    } else {
        Vec::new()
    };
    if args.json {
        let value = serde_json::json!({
            "task": "check-migrations",
            "result": "ok",
            "report": report,
            "released_now": released,
        });
        println!("{value}");
    } else {
        eprintln!(
            "ok: {} revisions apply on a fresh database, {} down files round-trip, {} released unchanged",
            report.revisions,
            report.revisions as usize - report.without_down.len(),
            report.released
        );
        if !released.is_empty() {
            eprintln!(
                "recorded as released in {RELEASED_FILE}: {}",
                released.join(", ")
            );
        } else if !report.unreleased.is_empty() {
            eprintln!(
                "not released yet (may still be edited): {}; run `cargo xtask check-migrations --release` in the commit that ships them",
                report.unreleased.join(", ")
            );
        }
    }
    Ok(())
}
