//! `bot db ...`: the migration engine's commands, run where the database is (in the container).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use migrations::{Database, State, Status, head};
use serde_json::json;

/// The database commands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Tell the database's state: empty, unstamped, behind, current, ahead, modified.
    Status {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Apply every pending migration.
    Upgrade {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Record a revision without running it (checked against the live schema).
    Stamp {
        /// A revision number, or `head`.
        revision: String,
        /// Stamp even when the live schema differs (recorded as `forced`).
        #[arg(long)]
        force: bool,
    },
    /// Stamp an unstamped database at the revision its live schema matches.
    Adopt {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Copy the live database with the online backup API and check the copy.
    Backup {
        /// Where to write the copy.
        path: PathBuf,
    },
    /// Replace the live database with a checked copy of FILE.
    Restore {
        /// The database file to put in place.
        file: PathBuf,
        /// Give the restored file (and its folder) to this UID:GID (needs root).
        #[arg(long)]
        owner: Option<String>,
    },
}

fn print_status(path: &Path, status: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(status)?;
        value["database"] = json!(path.display().to_string());
        println!("{value}");
        return Ok(());
    }
    let version = status.version.map_or("none".into(), |v| v.to_string());
    println!("database: {}", path.display());
    println!("state:    {}", status.state.name());
    println!("revision: {version} (head {})", status.head);
    if let Some(matches) = status.matches {
        println!("matches:  revision {matches} (run `bot db adopt` to record it)");
    }
    if let Some(closest) = status.closest {
        println!("matches:  no revision; closest is {closest}:");
    }
    for line in &status.difference {
        println!("  {line}");
    }
    if !status.pending.is_empty() {
        let pending: Vec<String> = status.pending.iter().map(u32::to_string).collect();
        println!("pending:  {}", pending.join(", "));
    }
    Ok(())
}

fn parse_revision(text: &str) -> anyhow::Result<u32> {
    if text == "head" {
        return Ok(head());
    }
    text.parse().with_context(|| {
        format!(
            "{text} is not a revision: give a number from 1 to {} or `head`",
            head()
        )
    })
}

fn parse_owner(text: &str) -> anyhow::Result<(u32, u32)> {
    let (uid, gid) = text.split_once(':').context("--owner takes UID:GID")?;
    Ok((
        uid.parse().context("UID is a number")?,
        gid.parse().context("GID is a number")?,
    ))
}

/// Runs one database command against `path`.
pub fn run(command: DbCommand, path: &Path) -> anyhow::Result<()> {
    match command {
        DbCommand::Status { json } => {
            let status = match Database::open_read_only(path)? {
                Some(db) => db.status()?,
                None => Status {
                    state: State::Empty,
                    version: None,
                    head: head(),
                    pending: (1..=head()).collect(),
                    matches: None,
                    closest: None,
                    difference: Vec::new(),
                },
            };
            print_status(path, &status, json)
        }
        DbCommand::Upgrade { json } => {
            let mut db = Database::open(path)?;
            let upgrade = db.upgrade(|m| {
                if !json {
                    println!("applying {}", m.file);
                }
            })?;
            if json {
                println!("{}", serde_json::to_string(&upgrade)?);
            } else if upgrade.applied.is_empty() {
                println!(
                    "nothing to apply: the database is at revision {}",
                    upgrade.to
                );
            } else {
                println!(
                    "the database is at revision {} (applied {})",
                    upgrade.to,
                    upgrade.applied.len()
                );
            }
            Ok(())
        }
        DbCommand::Stamp { revision, force } => {
            let version = parse_revision(&revision)?;
            let mut db = open_existing(path)?;
            db.stamp(version, force)?;
            println!("stamped revision {version}");
            Ok(())
        }
        DbCommand::Adopt { json } => {
            let mut db = open_existing(path)?;
            let version = db.adopt()?;
            if json {
                println!("{}", json!({"adopted": version}));
            } else {
                println!("adopted: the live schema is revision {version}, now recorded");
            }
            Ok(())
        }
        DbCommand::Backup { path: dest } => {
            if dest.exists() {
                bail!("{} exists already; choose a new file name", dest.display());
            }
            let db = open_existing(path)?;
            db.backup_to(&dest)?;
            println!("backed up to {}", dest.display());
            Ok(())
        }
        DbCommand::Restore { file, owner } => {
            let owner = owner.as_deref().map(parse_owner).transpose()?;
            let mut db = Database::open(path)?;
            db.restore_from(&file)?;
            drop(db);
            if let Some((uid, gid)) = owner {
                for target in [Some(path), path.parent()].into_iter().flatten() {
                    std::os::unix::fs::chown(target, Some(uid), Some(gid)).with_context(|| {
                        format!("cannot give {} to {uid}:{gid}", target.display())
                    })?;
                }
            }
            let status = Database::open_read_only(path)?
                .context("the restored file is gone")?
                .status()?;
            println!(
                "restored {} to {} (state {})",
                file.display(),
                path.display(),
                status.state.name()
            );
            Ok(())
        }
    }
}

fn open_existing(path: &Path) -> anyhow::Result<Database> {
    if !path.exists() {
        bail!("there is no database at {}", path.display());
    }
    Ok(Database::open(path)?)
}
