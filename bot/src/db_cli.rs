//! `bot db ...`: the migration engine's commands, run where the database is (in the container).
//!
//! With `--json` (before or after the command's name) every command prints one JSON object on
//! stdout, on success and on failure: the types of [`migrations::json`], documented there. Exit
//! codes are [`ExitCode`]: 0 done, 1 failed (rolled back), 2 usage, 3 refused because of the
//! database's state or place (nothing changed: e.g. a missing or read-only folder), 4 the file
//! is not a SQLite database (a folder, another kind of file, a FIFO, a device) or is damaged
//! (cut short, failing `quick_check`; `check` runs `integrity_check`, which also finds an index
//! that disagrees with its table and a broken UNIQUE constraint, which `quick_check` and so the
//! writing commands do not see), 5 the database stayed locked by another process (the message
//! says whether by a writer or by a reader). Each command is one function below.
//!
//! Before anything reads the database, what a writer killed mid-transaction left beside it is
//! recovered the way SQLite recovers it (a read-write open rolls back a hot `-journal`; the
//! last connection folds a `-wal` into the file), by every command, `status` included: this
//! never changes committed data, and is what the bot's own first read would do. A line on
//! stderr says so, and the JSON object gets `"recovered": "journal"` or `"wal"` (else null).
//! When this user may not write the folder, the command refuses and names the journal.
//!
//! A 0-byte file is what a failed copy (or `touch`) leaves: `status` reports it (state `empty`,
//! `"zero_bytes": true`); `upgrade` builds the schema into it, as into a new file, and says so
//! on stderr (`"zero_bytes": true`), since an upgrade killed before its first commit leaves one
//! too.
//!
//! `upgrade` announces itself while it runs: `<database>.migrating`, rewritten every second
//! and removed when it ends, keeps a bot that waits for the schema waiting (`bot run`,
//! `BOT_SCHEMA_WAIT_SECS`).
//!
//! `diff` and `baseline` change nothing: they print SQL for a person to review and run (the
//! script on stdout, a summary line on stderr); `baseline` reads FILE, not DATABASE_PATH.
//!
//! `DATABASE_BUSY_TIMEOUT` (seconds, default 30) sets how long a command waits for another
//! process's lock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use migrations::json::{
    AdoptPlanReport, AdoptReport, BaselineReport, CheckReport, DiffReport, ErrorReport, ExitCode,
    HistoryReport, ImportReport, OwnershipReport, PlanReport, RestoreReport, SchemaReport, Search,
    StampPlanReport, StampReport, StatusReport, UpgradeReport, WrongOwner,
};
use migrations::{
    BackupInfo, Catalog, Database, DiffScript, Error, LockHolder, Plan, Recovery, State, Status,
    Upgrade, head, schema, schema_at,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::import;
use crate::migrating::Announcement;
use crate::snapshot::SnapshotCheck;

/// The database commands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Tell the database's state: empty, unstamped, foreign, behind, current, ahead, modified, drifted.
    Status,
    /// Apply every pending migration.
    Upgrade {
        /// Adopt an unstamped database first (refused when its schema matches no revision).
        #[arg(long)]
        adopt: bool,
        /// Back the database up to this new file first (online backup API), when anything is
        /// to change. The copy is checked (not empty, quick_check, the revision the migration
        /// starts from) while the migration runs, and the first commit waits for the verdict:
        /// an unfit copy stops the migration with nothing changed. integrity_check follows
        /// once the migration is done.
        #[arg(long, value_name = "PATH")]
        backup_to: Option<PathBuf>,
        /// Print the plan and the SQL; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Open and check the database, then wait for a line `go` on stdin before anything else
        /// (a deploy prepares this while the old bot still runs); any other line cancels.
        #[arg(long)]
        wait_for_go: bool,
    },
    /// Undo migrations down to a revision with their .down.sql files.
    Downgrade {
        /// The revision to go down to.
        #[arg(long)]
        to: u32,
        /// Print the plan and the SQL; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Record a revision without running it (refused unless the live schema is that revision's).
    Stamp {
        /// A revision number, or `head`.
        revision: String,
        /// Stamp even when the live schema differs (recorded as `forced`).
        #[arg(long)]
        force: bool,
        /// Print what would be recorded; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stamp an unstamped database at the revision its live schema matches.
    Adopt {
        /// Print what would be recorded; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the applied revisions: when and how (applied, stamped, forced).
    History,
    /// Exit non-zero when the database is modified, drifted, ahead or damaged (for CI).
    ///
    /// Runs `PRAGMA integrity_check`, which reads every page and checks every index against
    /// its table. The writing commands check with the faster `quick_check` only, which does
    /// not see an index that disagrees with its table or a broken UNIQUE constraint: run
    /// `check` before a write when in doubt.
    Check,
    /// Print the normalized schema: the live one, or a revision's.
    Schema {
        /// A revision instead of the live database.
        #[arg(long)]
        at: Option<u32>,
    },
    /// Print SQL that turns the live schema into revision N's, for a person to review and run
    /// with `sqlite3 -bail` on a copy; what SQL cannot do, in words. Changes nothing.
    Diff {
        /// The revision: a number, or `head`.
        #[arg(long, value_name = "N")]
        to: String,
        /// Print statements that lose data (DROP TABLE, DROP COLUMN, a rebuild that leaves
        /// columns out) as SQL instead of as comments.
        #[arg(long)]
        allow_data_loss: bool,
        /// Exit 1 when the schema differs from revision N's, like `git diff --exit-code`.
        #[arg(long)]
        exit_code: bool,
    },
    /// Print the schema of an existing database (FILE, only read) as a first migration file,
    /// `0001_baseline.up.sql`, for a project that starts using this workspace.
    Baseline {
        /// The database whose schema to print (not DATABASE_PATH).
        file: PathBuf,
        /// Write it to this new file instead of stdout (never overwrites).
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Copy the live database with the online backup API, check the copy, name its revision.
    Backup {
        /// Where to write the copy (a new file).
        path: PathBuf,
    },
    /// Give the data folder and the database files to UID:GID where they belong to someone
    /// else (the old app ran as root); needs root.
    FixOwnership {
        /// The owner, UID:GID.
        #[arg(long)]
        owner: String,
        /// Only report; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// List the SQLite databases in files and folders, found by their header (never opened).
    FindDatabases {
        /// Files or folders; folders are searched 6 levels deep, symlinks in them not followed.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Copy another app's database (SOURCE, never written) into this one, which must be absent,
    /// empty, or a database with no tables; recovers a hot journal or WAL in a staged copy.
    Import {
        /// The old database file.
        source: PathBuf,
        /// Copy SOURCE to a temporary file, check it and report; write no database.
        #[arg(long)]
        check_only: bool,
        /// Give the imported file (and its folder) to this UID:GID (needs root); with
        /// --check-only only its syntax is checked.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Replace the live database with FILE, after checking FILE (integrity_check); the database
    /// it replaces is kept beside it as `<name>.replaced-<UTC time>`.
    Restore {
        /// The database file to put in place.
        file: PathBuf,
        /// Restore FILE even when it is 0 bytes or has no tables while the live database has
        /// tables.
        #[arg(long)]
        force: bool,
        /// Give the restored file (and its folder) to this UID:GID (needs root).
        #[arg(long)]
        owner: Option<String>,
        /// When the live database is damaged (not SQLite, cut short, failing quick_check),
        /// rename it to `<name>.damaged-<UTC time>` and restore into its place.
        #[arg(long)]
        replace_damaged: bool,
    },
}

impl DbCommand {
    /// Whether the command reads or writes the database at DATABASE_PATH (so that what a
    /// killed writer left must be recovered first).
    fn reads_the_database(&self) -> bool {
        match self {
            DbCommand::Schema { at, .. } => at.is_none(),
            DbCommand::FixOwnership { .. }
            | DbCommand::FindDatabases { .. }
            | DbCommand::Import { .. }
            | DbCommand::Baseline { .. } => false,
            _ => true,
        }
    }
}

/// The exit code for an error.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    match error.chain().find_map(|e| e.downcast_ref::<Error>()) {
        Some(e) if e.is_refusal() => ExitCode::Refused,
        Some(e) if e.is_bad_file() => ExitCode::BadFile,
        Some(Error::Busy { .. }) => ExitCode::Busy,
        _ if error.chain().any(|e| e.downcast_ref::<Refused>().is_some()) => ExitCode::Refused,
        _ if error.chain().any(|e| e.downcast_ref::<Usage>().is_some()) => ExitCode::Usage,
        _ => ExitCode::Failed,
    }
}

/// A refusal found by the command itself (e.g. `check`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(pub(crate) String);

/// A wrong setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// What the command line adds to an engine error's message: the remedy, naming the commands
/// that help (the engine knows none), worded to read on from the message, most on a line of
/// its own; `path` is DATABASE_PATH.
fn remedy(error: &Error, path: &Path) -> Option<String> {
    Some(match error {
        Error::SameFile { .. } => {
            ". Restore a backup: a copy made with `bot db backup FILE`".to_string()
        }
        Error::Unstamped { .. } => "; run `bot db adopt` (or `cargo xtask prod-migrate`) to record the revision its schema matches".to_string(),
        Error::StampMismatch { .. } => "\nStamp the revision it matches (`bot db adopt`), or pass --force if you are sure".to_string(),
        _ => format!("\n{}", advice(error, path)?),
    })
}

/// The remedy for an engine error, on a line of its own, naming the commands that help;
/// `path` is DATABASE_PATH.
fn advice(error: &Error, path: &Path) -> Option<String> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .display();
    let db = path.display();
    let about_the_database = |p: &Path| p == path;
    Some(match error {
        Error::Folder { path: p } => format!(
            "Point DATABASE_PATH at the database file inside it; `bot db find-databases {}` lists the SQLite databases in it.",
            p.display()
        ),
        Error::MissingFolder { .. } => format!(
            "Check DATABASE_PATH: is the volume mounted at {folder}? Once the folder exists, `bot db upgrade` creates the database (or `bot db import` copies an old one in)."
        ),
        Error::ReadOnly { .. } => "Run the command as a user who may write them (the bot's user), or give the folder and the database files to that user: `bot db fix-ownership --owner UID:GID` as root. If the volume is mounted read-only, mount it read-write.".to_string(),
        Error::NeedsRecovery { path: p, .. } if !about_the_database(p) => format!(
            "Only a connection that may write it recovers it: `DATABASE_PATH={} bot db status`, run as a user who may write it and its folder, rolls it back and says so.",
            p.display()
        ),
        Error::NeedsRecovery { .. } => format!(
            "Run `bot db status` as a user who may write {db} and its folder {folder} (the bot's user): it recovers it and says so. `bot db fix-ownership --owner UID:GID` as root gives the folder and the files to that user; a read-only mount must be mounted read-write."
        ),
        Error::Busy { holder: LockHolder::Writer, .. } => "Stop the other writer and retry: is the bot still running, or another `bot db` command? DATABASE_BUSY_TIMEOUT sets how many seconds to wait.".to_string(),
        Error::Busy { holder: LockHolder::Readers, .. } => "Let the reader finish and retry: a `sqlite3` shell or a database browser holding a transaction open, a long query or a backup in progress (in rollback-journal mode a write commits only when no one reads). DATABASE_BUSY_TIMEOUT sets how many seconds to wait.".to_string(),
        Error::NotADatabase { path: p }
        | Error::Truncated { path: p, .. }
        | Error::Corrupt { path: p, .. }
            if about_the_database(p) =>
        {
            format!(
                "Nothing writes into it. Put a good copy in its place with `bot db restore BACKUP --replace-damaged` (the damaged file, with its -journal and -wal, is kept as {db}.damaged-<UTC time>), or move it away yourself and `bot db import OLD_DATABASE`."
            )
        }
        Error::Drifted { version, forced: Some(forced), .. } => format!(
            "Make the live schema revision {version}'s: `bot db diff --to {version}` prints the differences as SQL where SQLite can express them. Or restore the backup taken before the stamp of revision {forced} (`bot db restore FILE`)."
        ),
        Error::Drifted { version, .. } => format!(
            "`bot db diff --to {version}` prints the differences as SQL where SQLite can express them."
        ),
        Error::NoMatch { closest, extra_tables, .. } if !extra_tables.is_empty() => format!(
            "No revision has the table{} {}: the old app's own? If the bot does not need {}, drop {} (after `bot db backup FILE`); to keep {}, add {} in a migration. `bot db diff --to {closest}` prints every difference as SQL where SQLite can express it; for a new project, `bot db baseline FILE` prints this database's schema as a first migration.",
            if extra_tables.len() == 1 { "" } else { "s" },
            extra_tables.join(", "),
            if extra_tables.len() == 1 { "it" } else { "them" },
            if extra_tables.len() == 1 { "it" } else { "them" },
            if extra_tables.len() == 1 { "it" } else { "them" },
            if extra_tables.len() == 1 { "it" } else { "them" },
        ),
        Error::NoMatch { closest, .. } => format!(
            "Make the schema revision {closest}'s (`bot db diff --to {closest}` prints the differences as SQL where SQLite can express them) or restore a backup, then retry."
        ),
        Error::HeldBack { cause, .. } => {
            return cause
                .downcast_ref::<crate::snapshot::Unfit>()
                .map(crate::snapshot::Unfit::advice);
        }
        Error::EmptySource { .. } => "Check that it is the right file. To replace the database with it anyway, pass --force: the database it replaces is kept beside it as <name>.replaced-<time>.".to_string(),
        _ => return None,
    })
}

/// Runs one database command against `path`; on failure prints the error (as JSON with
/// `--json`) and exits with its code.
pub fn run(command: DbCommand, json: bool, path: &Path) -> anyhow::Result<()> {
    // Every message names the file in full, whatever the working directory.
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let path = absolute.as_path();
    let exit_on_difference = matches!(
        command,
        DbCommand::Diff {
            exit_code: true,
            ..
        }
    );
    let mut recovered = None;
    let result = check_database_path()
        .and_then(|()| set_busy_timeout())
        .and_then(|()| {
            if command.reads_the_database() {
                recovered = Database::recover(path)?;
                if let Some(how) = recovered {
                    eprintln!("bot: {}", recovered_line(path, how));
                }
            }
            Ok(())
        })
        .and_then(|()| execute(command, path, json));
    match result {
        Ok(mut value) => {
            if json {
                if value.is_object() && recovered.is_some() {
                    value["recovered"] = json!(recovered);
                }
                println!("{value}");
            }
            let differs = value["differences"]
                .as_array()
                .is_some_and(|d| !d.is_empty());
            if exit_on_difference && differs {
                std::process::exit(i32::from(ExitCode::Failed.code()));
            }
            Ok(())
        }
        Err(error) => {
            let code = exit_code(&error);
            let mut message = crate::failures::chain(error.as_ref());
            if let Some(remedy) = error
                .chain()
                .find_map(|e| e.downcast_ref::<Error>())
                .and_then(|e| remedy(e, path))
            {
                message.push_str(&remedy);
            }
            if json {
                let report = ErrorReport {
                    error: message.clone(),
                    exit_code: code,
                    database: path.display().to_string(),
                    recovered,
                };
                println!("{}", serde_json::to_value(&report)?);
            }
            eprintln!("bot: {message}");
            std::process::exit(i32::from(code.code()));
        }
    }
}

/// Refuses a DATABASE_PATH that is set but empty (a typo in a deploy's environment), rather
/// than using the default path in its place.
fn check_database_path() -> anyhow::Result<()> {
    if std::env::var_os("DATABASE_PATH").is_some_and(|v| v.is_empty()) {
        return Err(Usage(format!(
            "DATABASE_PATH is set but empty; set it to the database file (unset, it is {})",
            crate::config::DEFAULT_DATABASE_PATH
        ))
        .into());
    }
    Ok(())
}

/// Applies DATABASE_BUSY_TIMEOUT (seconds) to the engine.
fn set_busy_timeout() -> anyhow::Result<()> {
    let Ok(text) = std::env::var("DATABASE_BUSY_TIMEOUT") else {
        return Ok(());
    };
    let seconds: f64 = text
        .trim()
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| {
            Usage(format!(
                "DATABASE_BUSY_TIMEOUT={text:?} is not a number of seconds (e.g. 30 or 0.5)"
            ))
        })?;
    migrations::set_busy_timeout(Duration::from_secs_f64(seconds));
    Ok(())
}

/// The line that says what was recovered.
fn recovered_line(path: &Path, how: Recovery) -> String {
    match how {
        Recovery::Journal => format!(
            "recovered {}: rolled back the hot journal {}-journal a writer killed mid-transaction left; the database is as its last commit left it",
            path.display(),
            path.display()
        ),
        Recovery::Wal => format!(
            "recovered {}: folded the write-ahead log {}-wal, which no process had open (a writer was killed), into the database; its committed transactions are kept",
            path.display(),
            path.display()
        ),
    }
}

/// Prints a line for a person, unless the command prints JSON.
macro_rules! say {
    ($json:expr, $($arg:tt)*) => {
        if !$json {
            println!($($arg)*);
        }
    };
}

/// Runs `command`: what it prints for a person (unless `json`), and its object of [`json`](migrations::json).
fn execute(command: DbCommand, path: &Path, json: bool) -> anyhow::Result<Value> {
    fn value(report: impl Serialize) -> anyhow::Result<Value> {
        Ok(serde_json::to_value(report)?)
    }
    match command {
        DbCommand::Status => value(status(path, json)?),
        DbCommand::Check => value(check(path, json)?),
        DbCommand::Upgrade {
            adopt,
            dry_run: true,
            ..
        } => value(plan_upgrade(path, adopt, json)?),
        DbCommand::Upgrade {
            adopt,
            backup_to,
            dry_run: false,
            wait_for_go,
        } => value(upgrade(path, adopt, backup_to, wait_for_go, json)?),
        DbCommand::Downgrade { to, dry_run: true } => {
            let plan = open_existing_read_only(path)?.plan_downgrade(to)?;
            value(print_plan("downgrade", plan, json))
        }
        DbCommand::Downgrade { to, dry_run: false } => value(downgrade(path, to, json)?),
        DbCommand::Stamp {
            revision,
            force,
            dry_run: true,
        } => value(plan_stamp(path, &revision, force, json)?),
        DbCommand::Stamp {
            revision,
            force,
            dry_run: false,
        } => value(stamp(path, &revision, force, json)?),
        DbCommand::Adopt { dry_run: true } => value(plan_adopt(path, json)?),
        DbCommand::Adopt { dry_run: false } => value(adopt(path, json)?),
        DbCommand::History => value(history(path, json)?),
        DbCommand::Schema { at } => value(schema_report(path, at, json)?),
        DbCommand::Diff {
            to,
            allow_data_loss,
            exit_code: _,
        } => value(diff(path, &to, allow_data_loss, json)?),
        DbCommand::Baseline { file, output } => value(baseline(&file, output, json)?),
        DbCommand::Backup { path: dest } => value(backup(path, &dest, json)?),
        DbCommand::FixOwnership { owner, check } => {
            value(fix_ownership(path, &owner, check, json)?)
        }
        DbCommand::FindDatabases { paths } => value(find_databases(&paths, json)),
        DbCommand::Import {
            source,
            check_only,
            owner,
        } => value(import(path, &source, check_only, owner.as_deref(), json)?),
        DbCommand::Restore {
            file,
            owner,
            force,
            replace_damaged,
        } => value(restore(
            path,
            &file,
            owner.as_deref(),
            force,
            replace_damaged,
            json,
        )?),
    }
}

/// `status`.
fn status(path: &Path, json: bool) -> anyhow::Result<StatusReport> {
    let status = read_status(path)?;
    let size = file_size(path);
    if !json {
        print_status(path, &status, size);
    }
    Ok(status_report(path, status, size.unwrap_or(0)))
}

/// `check`: unlike `status`, reads every page and checks every index against its table
/// (`integrity_check`): it fails on damage.
fn check(path: &Path, json: bool) -> anyhow::Result<CheckReport> {
    let status = match Database::open_read_only(path)? {
        Some(db) => {
            db.integrity_check()?;
            db.status()?
        }
        None => read_status(path)?,
    };
    if !json {
        print_status(path, &status, file_size(path));
    }
    if matches!(
        status.state,
        State::Modified | State::Drifted | State::Ahead
    ) {
        let mut reason = format!("check failed: the database is {}", status.state.name());
        for line in &status.difference {
            reason.push_str(&format!("\n  {line}"));
        }
        return Err(Refused(reason).into());
    }
    Ok(CheckReport {
        status,
        database: path.display().to_string(),
        ok: true,
    })
}

/// `upgrade --dry-run`.
fn plan_upgrade(path: &Path, adopt: bool, json: bool) -> anyhow::Result<PlanReport> {
    let plan = match Database::open_read_only(path)? {
        Some(db) if adopt && matches!(db.status()?.state, State::Unstamped | State::Foreign) => {
            let version = db.plan_adopt()?;
            say!(json, "would adopt: the live schema is revision {version}");
            Plan::after(db.catalog(), Some(version))
        }
        Some(db) => db.plan_upgrade()?,
        None => Plan::after(Catalog::released(), None),
    };
    Ok(print_plan("upgrade", plan, json))
}

/// `upgrade`.
fn upgrade(
    path: &Path,
    adopt: bool,
    backup_to: Option<PathBuf>,
    wait_for_go: bool,
    json: bool,
) -> anyhow::Result<UpgradeReport> {
    let size = file_size(path);
    let mut db = Database::open(path)?;
    if size.is_none() {
        say!(json, "creating {}", path.display());
    }
    if wait_for_go {
        eprintln!("bot: ready; waiting for go");
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read stdin")?;
        if line.trim() != "go" {
            bail!("cancelled before anything was changed");
        }
    }
    // From before the backup to the end of the migration: a bot waiting for the schema
    // waits as long as this runs, not only BOT_SCHEMA_WAIT_SECS.
    let migrating = match Announcement::start(path) {
        Ok(announcement) => Some(announcement),
        Err(e) => {
            eprintln!(
                "bot: warning: {e:#}, so a bot waiting for the schema waits only its BOT_SCHEMA_WAIT_SECS for this migration"
            );
            None
        }
    };
    let before = db.status()?;
    let mut check = None;
    if let Some(dest) =
        backup_to.filter(|_| before.state != State::Current && before.state != State::Empty)
    {
        // A rollback restores this copy: it is checked while the migration runs, and the
        // first COMMIT waits for the verdict. In WAL mode it is also written meanwhile,
        // from the state pinned now (the old bot has stopped): the downtime does not
        // wait for the copy.
        refuse_a_file_of_the_database(path, &dest)?;
        // Read before the pin: a commit by another process between the two is seen
        // again under the write lock (a false alarm at worst, never a miss).
        let version = db.data_version()?;
        let mut pinned = db.pin()?;
        let mut started = if pinned.copies_beside_a_writer() {
            say!(
                json,
                "backing up to {} beside the migration",
                dest.display()
            );
            SnapshotCheck::copy_and_check(pinned, &dest, version)?
        } else {
            let bytes = pinned.copy_to(&dest)?;
            say!(json, "backed up to {} ({bytes} bytes)", dest.display());
            SnapshotCheck::check_pinned(pinned, &dest, version)?
        };
        db.set_commit_gate(started.gate());
        check = Some((dest, started));
    }
    // Decided again under the write lock: another process may have adopted it meanwhile.
    let adopted = if adopt {
        db.adopt_if_unstamped()?
    } else {
        None
    };
    if let Some(version) = adopted {
        say!(
            json,
            "adopted: the live schema is revision {version}, now recorded"
        );
    }
    let upgrade = db.upgrade(|m| say!(json, "applying {}", m.file))?;
    db.clear_commit_gate();
    drop(migrating);
    // Said only when this run built the schema into the 0-byte file: another process
    // that created the file a moment earlier and built it meanwhile is no failed copy.
    let built_into_empty = size == Some(0) && upgrade.from.is_none() && !upgrade.applied.is_empty();
    if built_into_empty {
        eprintln!(
            "bot: {} was a 0-byte file, not a database SQLite wrote: the schema was built into it. If it should hold data, a copy into it failed: stop, and put the data in place with `bot db restore BACKUP` or `bot db import OLD_DATABASE`",
            path.display()
        );
    }
    if upgrade.applied.is_empty() {
        say!(
            json,
            "nothing to apply: the database is at revision {}",
            upgrade.to
        );
    } else {
        say!(
            json,
            "the database is at revision {} (applied {})",
            upgrade.to,
            upgrade.applied.len()
        );
    }
    let backup = match check {
        Some((dest, check)) => {
            // The full check (integrity_check), off the downtime path: the new bot may
            // serve meanwhile.
            check.finish();
            let info = migrations::inspect_copy(&dest).context(
                "the migration succeeded, but the backup taken before it failed its check",
            )?;
            say!(
                json,
                "the backup {} is sound (revision {:?})",
                dest.display(),
                info.revision
            );
            Some(info)
        }
        None => None,
    };
    Ok(UpgradeReport {
        upgrade,
        state_before: before.state,
        adopted,
        backup,
        zero_bytes: built_into_empty,
    })
}

/// `downgrade`.
fn downgrade(path: &Path, to: u32, json: bool) -> anyhow::Result<Upgrade> {
    let mut db = open_existing(path)?;
    let downgrade = db.downgrade(to, |m| {
        say!(json, "undoing {}", m.down_file.unwrap_or(m.file))
    })?;
    say!(
        json,
        "the database is at revision {} (undid {})",
        downgrade.to,
        downgrade.applied.len()
    );
    Ok(downgrade)
}

/// `stamp --dry-run`.
fn plan_stamp(
    path: &Path,
    revision: &str,
    force: bool,
    json: bool,
) -> anyhow::Result<StampPlanReport> {
    let version = parse_revision(revision)?;
    let difference = open_existing_read_only(path)?.check_stamp(version, force)?;
    let how = if difference.is_empty() {
        "stamped"
    } else {
        "forced"
    };
    say!(
        json,
        "would record revisions 1 to {version} as {how}; nothing was changed"
    );
    for line in &difference {
        say!(json, "  {line}");
    }
    Ok(StampPlanReport {
        dry_run: true,
        stamp: version,
        how: how.to_owned(),
        difference,
    })
}

/// `stamp`.
fn stamp(path: &Path, revision: &str, force: bool, json: bool) -> anyhow::Result<StampReport> {
    let version = parse_revision(revision)?;
    let difference = open_existing(path)?.stamp(version, force)?;
    if difference.is_empty() {
        say!(json, "stamped revision {version}");
    } else {
        say!(
            json,
            "stamped revision {version} with --force (recorded as forced) over a schema that differs:"
        );
        for line in &difference {
            say!(json, "  {line}");
        }
    }
    Ok(StampReport {
        stamped: version,
        forced: !difference.is_empty(),
        difference,
    })
}

/// `adopt --dry-run`.
fn plan_adopt(path: &Path, json: bool) -> anyhow::Result<AdoptPlanReport> {
    let version = open_existing_read_only(path)?.plan_adopt()?;
    say!(
        json,
        "would record revision {version}, which the live schema matches; nothing was changed"
    );
    Ok(AdoptPlanReport {
        dry_run: true,
        adopt: version,
    })
}

/// `adopt`.
fn adopt(path: &Path, json: bool) -> anyhow::Result<AdoptReport> {
    let version = open_existing(path)?.adopt()?;
    say!(
        json,
        "adopted: the live schema is revision {version}, now recorded"
    );
    Ok(AdoptReport { adopted: version })
}

/// `history`.
fn history(path: &Path, json: bool) -> anyhow::Result<HistoryReport> {
    let history = open_existing_read_only(path)?
        .history()?
        .unwrap_or_default();
    if history.is_empty() {
        say!(json, "no history: the database is not stamped");
    }
    for row in &history {
        say!(
            json,
            "{:>4}  {:<24} {:<8} {}",
            row.version,
            row.name,
            row.how,
            row.applied_at
        );
    }
    Ok(HistoryReport {
        database: path.display().to_string(),
        history,
    })
}

/// `schema`: the live one, or revision `at`'s.
fn schema_report(path: &Path, at: Option<u32>, json: bool) -> anyhow::Result<SchemaReport> {
    let schema = match at {
        Some(version) if version > head() => bail!(Error::UnknownRevision {
            version,
            head: head()
        }),
        Some(version) => schema_at(version).clone(),
        None => open_existing_read_only(path)?.schema()?,
    };
    say!(json, "{}", schema::render(&schema).trim_end());
    Ok(SchemaReport { at, schema })
}

/// `diff --to N`.
fn diff(path: &Path, to: &str, allow_data_loss: bool, json: bool) -> anyhow::Result<DiffReport> {
    let version = parse_revision(to)?;
    let diff = open_existing_read_only(path)?.diff_to(version, allow_data_loss)?;
    if !json {
        print!("{}", diff.script);
    }
    eprintln!("bot: {}", diff_summary(&diff));
    Ok(DiffReport {
        diff,
        database: path.display().to_string(),
    })
}

/// `baseline FILE`.
fn baseline(file: &Path, output: Option<PathBuf>, json: bool) -> anyhow::Result<BaselineReport> {
    let db = Database::open_read_only(file)?
        .with_context(|| format!("{}: no such file", file.display()))?;
    let baseline = db.baseline()?;
    drop(db);
    match &output {
        Some(dest) => {
            write_new_file(dest, &baseline.sql)?;
            say!(
                json,
                "wrote {}: {} statements, the schema of {}",
                dest.display(),
                baseline.statements.len(),
                file.display()
            );
        }
        None if !json => print!("{}", baseline.sql),
        None => {}
    }
    Ok(BaselineReport {
        baseline,
        output: output.as_ref().map(|o| o.display().to_string()),
    })
}

/// `backup PATH`.
fn backup(path: &Path, dest: &Path, json: bool) -> anyhow::Result<BackupInfo> {
    if dest.exists() {
        bail!("{} exists already; choose a new file name", dest.display());
    }
    let info = open_existing_read_only(path)?.backup_to(dest)?;
    say!(
        json,
        "backed up to {} ({} bytes, integrity ok, revision {}, {})",
        dest.display(),
        info.bytes,
        info.revision.map_or("none".into(), |r| r.to_string()),
        info.state.name()
    );
    Ok(info)
}

/// `fix-ownership`.
fn fix_ownership(
    path: &Path,
    owner: &str,
    check: bool,
    json: bool,
) -> anyhow::Result<OwnershipReport> {
    let (uid, gid) = parse_owner(owner)?;
    let mut targets = vec![path.parent().unwrap_or(Path::new("/")).to_path_buf()];
    for suffix in ["", "-wal", "-shm", "-journal"] {
        targets.push(PathBuf::from(format!("{}{suffix}", path.display())));
    }
    let mut wrong = Vec::new();
    for target in targets {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::metadata(&target) else {
            continue;
        };
        if meta.uid() != uid || meta.gid() != gid {
            wrong.push(WrongOwner {
                path: target.display().to_string(),
                uid: meta.uid(),
                gid: meta.gid(),
            });
            if !check {
                std::os::unix::fs::chown(&target, Some(uid), Some(gid)).with_context(|| {
                    format!(
                        "cannot give {} to {uid}:{gid} (run as root)",
                        target.display()
                    )
                })?;
            }
        }
    }
    let verb = if check {
        "owned by someone else"
    } else {
        "given to the bot"
    };
    for item in &wrong {
        say!(
            json,
            "{} was {}:{}, {verb} ({uid}:{gid})",
            item.path,
            item.uid,
            item.gid
        );
    }
    if wrong.is_empty() {
        say!(
            json,
            "the data folder and database files belong to {uid}:{gid}"
        );
    }
    Ok(OwnershipReport {
        owner: owner.to_owned(),
        check,
        fixed: !check && !wrong.is_empty(),
        wrong,
    })
}

/// `find-databases`.
fn find_databases(paths: &[PathBuf], json: bool) -> Search {
    let search = import::find_databases(paths);
    for missing in &search.missing {
        eprintln!("bot: {missing}: no such file or folder; skipped");
    }
    for db in &search.databases {
        let mut notes = String::new();
        if db.journal {
            notes.push_str(", a non-empty -journal beside it");
        }
        if db.wal {
            notes.push_str(", a -wal beside it");
        }
        say!(json, "{} ({} bytes{notes})", db.path, db.bytes);
    }
    if search.databases.is_empty() {
        eprintln!("bot: no SQLite database found");
    }
    search
}

/// `import SOURCE`.
fn import(
    path: &Path,
    source: &Path,
    check_only: bool,
    owner: Option<&str>,
    json: bool,
) -> anyhow::Result<ImportReport> {
    let owner = owner.map(parse_owner).transpose()?;
    let imported = import::import(source, path, check_only, owner.filter(|_| !check_only))?;
    let status = &imported.status;
    let revision = match (status.version, status.matches, status.closest) {
        (Some(version), _, _) => format!("at revision {version} ({})", status.state.name()),
        (None, Some(matches), _) => format!("matches revision {matches}"),
        (None, None, Some(closest)) => {
            format!("matches no revision (closest {closest})")
        }
        (None, None, None) => status.state.name().to_string(),
    };
    let users = imported
        .users
        .map_or("no users table".into(), |n| format!("{n} users"));
    let recovered = match imported.recovered {
        Some(import::Recovery::Journal) => " (recovered: its hot journal rolled back)",
        Some(import::Recovery::Wal) => " (recovered: its WAL read)",
        None => "",
    };
    let what = format!(
        "{}: {users}, tables {}, {revision}{recovered}",
        imported.source.display(),
        imported.tables.join(", ")
    );
    match &imported.target {
        Some(target) => say!(json, "imported {what}; now at {}", target.display()),
        None => say!(
            json,
            "can import {what}; nothing was written (--check-only)"
        ),
    }
    let shown = imported.target.as_deref().unwrap_or(&imported.source);
    let status = status_report(shown, imported.status, imported.bytes);
    Ok(ImportReport {
        source: imported.source.display().to_string(),
        bytes: imported.bytes,
        recovered: imported.recovered,
        users: imported.users,
        tables: imported.tables,
        status,
        target: imported.target.as_ref().map(|t| t.display().to_string()),
        check_only,
    })
}

/// `restore FILE`.
fn restore(
    path: &Path,
    file: &Path,
    owner: Option<&str>,
    force: bool,
    replace_damaged: bool,
    json: bool,
) -> anyhow::Result<RestoreReport> {
    let owner = owner.map(parse_owner).transpose()?;
    if !file.exists() {
        bail!("{}: no such file; nothing was changed", file.display());
    }
    let damaged = if replace_damaged {
        // The source first: a damaged live database is set aside only for a good one.
        migrations::inspect_copy(file)?;
        Database::set_aside_damaged(path)?
    } else {
        None
    };
    if let Some(aside) = &damaged {
        say!(
            json,
            "the live database was damaged: it is kept as {}",
            aside.display()
        );
    }
    let mut db = Database::open(path)?;
    let restored = db.restore_from(file, force)?;
    drop(db);
    if let Some((uid, gid)) = owner {
        let targets = [Some(path), restored.replaced.as_deref(), path.parent()];
        for target in targets.into_iter().flatten() {
            std::os::unix::fs::chown(target, Some(uid), Some(gid))
                .with_context(|| format!("cannot give {} to {uid}:{gid}", target.display()))?;
        }
    }
    let info = &restored.info;
    say!(
        json,
        "restored {} to {} (revision {}, {})",
        file.display(),
        path.display(),
        info.revision.map_or("none".into(), |r| r.to_string()),
        info.state.name()
    );
    match &restored.replaced {
        Some(kept) => say!(
            json,
            "the database it replaced is kept as {}",
            kept.display()
        ),
        None => say!(
            json,
            "the database it replaced had no tables; nothing was kept"
        ),
    }
    Ok(RestoreReport {
        restored,
        damaged: damaged.map(|d| d.display().to_string()),
    })
}

/// The object `status --json` prints: the [`Status`] and the file's sizes.
fn status_report(path: &Path, status: Status, bytes: u64) -> StatusReport {
    let size = file_size(path);
    StatusReport {
        status,
        database: path.display().to_string(),
        bytes,
        wal_bytes: file_size(&crate::import::beside(path, "-wal")).unwrap_or(0),
        exists: size.is_some(),
        zero_bytes: size == Some(0),
    }
}

/// The file's size, `None` when there is none.
/// Refuses a backup destination that is the database itself or one of the files SQLite or a
/// migration keeps beside it (`-wal`, `-shm`, `-journal`, `.migrating`): the copy would be
/// written into the very files the migration changes.
fn refuse_a_file_of_the_database(db: &Path, dest: &Path) -> anyhow::Result<()> {
    let absolute = |p: &Path| {
        let folder = p
            .parent()
            .filter(|f| !f.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::canonicalize(folder)
            .map(|f| f.join(p.file_name().unwrap_or_default()))
            .unwrap_or_else(|_| p.to_owned())
    };
    let dest = absolute(dest);
    let db = absolute(db);
    for suffix in ["", "-wal", "-shm", "-journal", ".migrating"] {
        if dest == crate::import::beside(&db, suffix) {
            return Err(Refused(format!(
                "--backup-to {} is {} of the database being migrated; give a path outside them (e.g. {}.pre-migration)",
                dest.display(),
                if suffix.is_empty() { "the file".to_string() } else { format!("the {suffix} file") },
                db.display()
            ))
            .into());
        }
    }
    Ok(())
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

fn read_status(path: &Path) -> anyhow::Result<Status> {
    Ok(match Database::open_read_only(path)? {
        Some(db) => db.status()?,
        None => Status::empty(head()),
    })
}

fn print_status(path: &Path, status: &Status, size: Option<u64>) {
    let version = status.version.map_or("none".into(), |v| v.to_string());
    println!("database: {}", path.display());
    match size {
        None => println!("file:     none yet (`bot db upgrade` creates it)"),
        Some(0) => println!(
            "file:     0 bytes: an empty file, not a database SQLite wrote (a failed copy?); `bot db upgrade` would build the schema into it"
        ),
        Some(bytes) => println!("file:     {bytes} bytes"),
    }
    println!("state:    {}", status.state.name());
    println!("revision: {version} (head {})", status.head);
    if let Some(forced) = status.forced {
        println!(
            "forced:   revision {forced} was stamped with --force over a schema that differed from it"
        );
    }
    if let Some(foreign) = &status.foreign {
        println!(
            "foreign:  {} history in table {} at {} (left as it is)",
            foreign.tool,
            foreign.table,
            foreign.revision.as_deref().unwrap_or("no revision")
        );
    }
    if let Some(matches) = status.matches {
        println!("matches:  revision {matches} (run `bot db adopt` to record it)");
    }
    if let Some(closest) = status.closest {
        println!("matches:  no revision; closest is {closest}:");
    }
    for line in &status.difference {
        println!("  {line}");
    }
    if !status.extra_tables.is_empty() {
        println!(
            "extra:    {} (in no revision): drop what the bot does not need, or keep it by adding it in a migration; `bot db diff --to N` prints the differences as SQL",
            status.extra_tables.join(", ")
        );
    }
    if !status.pending.is_empty() {
        let pending: Vec<String> = status.pending.iter().map(u32::to_string).collect();
        println!("pending:  {}", pending.join(", "));
    }
}

/// Prints a dry run's plan for a person (unless `json`).
fn print_plan(what: &str, plan: Plan, json: bool) -> PlanReport {
    let from = plan.from.map_or("none".into(), |v| v.to_string());
    say!(
        json,
        "{what} plan: revision {from} -> {} ({} steps); nothing was changed",
        plan.to,
        plan.steps.len()
    );
    for step in &plan.steps {
        say!(
            json,
            "\n-- {} (revision {})\n{}",
            step.file,
            step.version,
            step.sql.trim_end()
        );
    }
    PlanReport {
        plan,
        dry_run: true,
    }
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

/// One line on what a diff script does, for stderr (the script itself goes to stdout).
fn diff_summary(diff: &DiffScript) -> String {
    let version = diff.to;
    let count = diff.statements.len();
    if count == 0 {
        return format!("the schema is revision {version}'s: nothing to do");
    }
    let commented = diff.statements.iter().filter(|s| s.commented).count();
    let commented = match commented {
        0 => String::new(),
        1 => " (1 printed as a comment: it loses data)".to_owned(),
        n => format!(" ({n} printed as comments: they lose data)"),
    };
    let after = match diff.remaining.len() {
        0 => format!("after them the schema matches revision {version}"),
        1 => "after them 1 difference remains (listed at the top)".to_owned(),
        n => format!("after them {n} differences remain (listed at the top)"),
    };
    format!(
        "{count} statement{} to revision {version}{commented}; {after}; nothing was changed",
        if count == 1 { "" } else { "s" }
    )
}

/// Writes `text` to `dest`, which must not exist yet.
fn write_new_file(dest: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Refused(format!(
                "{} exists already; nothing was written: choose a new file name",
                dest.display()
            ))
            .into());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dest.display())),
    };
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", dest.display()))
}

fn parse_owner(text: &str) -> anyhow::Result<(u32, u32)> {
    let (uid, gid) = text.split_once(':').context("--owner takes UID:GID")?;
    Ok((
        uid.parse().context("UID is a number")?,
        gid.parse().context("GID is a number")?,
    ))
}

fn require_file(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        bail!("there is no database at {}", path.display());
    }
    Ok(())
}

fn open_existing(path: &Path) -> anyhow::Result<Database> {
    require_file(path)?;
    Ok(Database::open(path)?)
}

fn open_existing_read_only(path: &Path) -> anyhow::Result<Database> {
    require_file(path)?;
    Ok(Database::open_read_only(path)?.expect("the file exists"))
}
