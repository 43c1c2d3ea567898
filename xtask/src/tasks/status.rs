//! `cargo xtask status`: the bot's container, its health, and the database's state.

use serde_json::json;
use xshell::Shell;

use crate::database;
use crate::deploy;
use crate::docker;
use crate::output::Printer;
use crate::project::StackArgs;
use crate::report::Report;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    stack: StackArgs,
}

/// Prints the status; `--json` prints one object.
pub fn run(sh: &Shell, args: Args) -> anyhow::Result<()> {
    let printer = Printer::new(args.stack.json);
    let mut report = Report::new("status", "");
    let stack = deploy::check_machine(sh, &args.stack, None, &printer, &mut report)?;
    let container = stack.bot_container(sh)?;
    let image = docker::image_id(sh, &stack.bot_image)?;
    let database = match image {
        Some(_) => Some(database::status(sh, &stack)?),
        None => None,
    };
    if args.stack.json {
        let value = json!({
            "project": stack.project,
            "compose": stack.flavour.describe(),
            "container": container.as_ref().map(|c| json!({
                "id": c.id, "status": c.status, "health": c.health, "started_at": c.started_at,
                "restart_count": c.restart_count, "image_id": c.image_id,
            })),
            "image": stack.bot_image,
            "image_id": image,
            "database": database.as_ref().map(|d| json!({
                "state": d.state, "version": d.version, "head": d.head, "pending": d.pending,
                "matches": d.matches, "difference": d.difference,
            })),
        });
        println!("{value}");
        return Ok(());
    }
    println!(
        "project:   {} ({})",
        stack.project,
        stack.flavour.describe()
    );
    match &container {
        Some(c) => println!(
            "bot:       {} {} (started {}, restarts {})",
            c.status,
            c.health.as_deref().unwrap_or("no health check"),
            c.started_at,
            c.restart_count
        ),
        None => println!("bot:       no container (deploy with `cargo xtask first-deploy`)"),
    }
    match (&image, &database) {
        (Some(id), Some(db)) => {
            println!("image:     {} {}", stack.bot_image, id);
            println!("database:  {}", deploy::describe(db));
            for line in &db.difference {
                println!("           {line}");
            }
        }
        _ => println!("image:     none ({} is not built yet)", stack.bot_image),
    }
    Ok(())
}
