//! `cargo xtask restore <file>`: put a database file (the old server's `bot_database.db`) into the
//! volume, owned by the bot's user. It does not migrate: `prod-migrate` does that.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use xshell::{Shell, cmd};

use crate::database;
use crate::deploy;
use crate::docker;
use crate::exit;
use crate::images;
use crate::output::Printer;
use crate::process;
use crate::project::StackArgs;
use crate::report::Report;

/// The bot's user and group in the image.
const BOT_OWNER: &str = "10001:10001";

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    stack: StackArgs,
    /// The SQLite database file to put in place.
    file: PathBuf,
}

impl Args {
    /// The options shared with the other tasks.
    pub fn stack_args(&self) -> &StackArgs {
        &self.stack
    }
}

/// Replaces the live database with FILE, backing the live one up first.
pub fn run(sh: &Shell, args: Args, printer: &Printer, report: &mut Report) -> anyhow::Result<()> {
    let file = std::fs::canonicalize(&args.file)
        .map_err(|e| exit::usage(format!("{}: {e}", args.file.display())))?;
    let mut header = [0u8; 16];
    let is_sqlite = std::fs::File::open(&file)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok()
        && &header == b"SQLite format 3\0";
    if !is_sqlite {
        return Err(exit::refused(format!(
            "{}: not a SQLite database (its first bytes are not \"SQLite format 3\"); nothing was changed",
            file.display()
        )));
    }
    let stack = deploy::check_machine(sh, &args.stack, None, printer, report)?;
    if docker::image_id(sh, &stack.bot_image)?.is_none() {
        printer.step(report, "build images", || {
            images::build(sh, &stack).map(drop)
        })?;
    }
    let live = printer.step(report, "read database", || database::status(sh, &stack))?;
    report.state_before = Some(live.state.clone());
    report.revision_before = live.version;
    deploy::confirm(
        args.stack.yes,
        &format!(
            "Replace the database in volume {} ({}) with {}? The bot will be stopped.",
            stack.volume(),
            deploy::describe(&live),
            file.display()
        ),
    )?;
    report.changed = true;
    if stack
        .bot_container(sh)?
        .is_some_and(|c| c.status == "running")
    {
        printer.step(report, "stop bot", || stack.stop_bot(sh))?;
    }
    if live.state != "empty" {
        let name = format!(
            "{}-{}-before-restore-r{}.db",
            stack.project,
            deploy::timestamp(),
            live.effective_version()
                .map_or("none".into(), |v| v.to_string())
        );
        let backup = printer.step(report, "back up database", || {
            database::back_up(sh, &stack, &name, &deploy::backup_dir(&stack.project))
        })?;
        report.backup = Some(backup.display().to_string());
    }
    printer.step(report, "restore database", || {
        let mount = format!("{}:/data", stack.volume());
        let image = &stack.bot_image;
        let id = process::run(
            cmd!(sh, "docker create --user 0:0 -v {mount} {image} db restore /tmp/restore-source.db --owner {BOT_OWNER}"),
            "preparing the restore",
        )?
        .stdout
        .trim()
        .to_owned();
        let target = format!("{id}:/tmp/restore-source.db");
        let result = process::run(cmd!(sh, "docker cp {file} {target}"), "copying the file to Docker")
            .and_then(|_| process::run(cmd!(sh, "docker start -a {id}"), "restoring the database"));
        let _ = cmd!(sh, "docker rm -f {id}").quiet().ignore_status().output();
        result.map(drop)
    })?;
    let after = database::status(sh, &stack).context("reading the restored database")?;
    report.revision_after = after.version;
    printer.info(&format!(
        "restored: the database is {}. Next: `cargo xtask prod-migrate` (or prod-full-update) to bring it to head and start the bot",
        deploy::describe(&after)
    ));
    Ok(())
}
