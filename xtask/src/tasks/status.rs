//! `cargo xtask status`: the bot's container and health, its image, the database's revision and
//! pending migrations, the last backup, the last deploy and (apart) the last other task, and the
//! deploy lock with its holder.

use serde_json::json;
use xshell::Shell;

use crate::backups;
use crate::database;
use crate::deploy;
use crate::docker;
use crate::history;
use crate::host::Engine;
use crate::lock::{self, Liveness};
use crate::project::{self, StackArgs};
use crate::report::Outcome;

/// Prints the status; `--json` prints one object.
pub fn run(sh: &Shell, stack_args: &StackArgs) -> anyhow::Result<()> {
    docker::check_daemon(sh)?;
    let stack = project::stack(sh, stack_args)?;
    let container = stack.bot_container(sh)?;
    let image = docker::image_id(sh, &stack.bot_image)?;
    let database = image
        .as_ref()
        .map(|_| database::status(sh, &stack, &stack.bot_image))
        .transpose()?;
    let state_dir = stack_args.state_dir(&stack.project);
    let last_backup = backups::list(&state_dir, &stack.project).pop();
    let records = history::read(&state_dir)?;
    // The lock is the engine's, whatever the backup folder: see `lock`.
    let held = lock::held(sh, &stack.project)?;
    // Where the data came from: the last deploy that imported it and ended well.
    let imported_from = records.iter().rev().find_map(|r| {
        let from = r
            .imported_from
            .as_ref()
            .filter(|_| r.result == Outcome::Ok)?;
        Some(format!("{from} (by {} at {})", r.task, r.time))
    });
    // A refused rollback or a backup is not "the last deploy": each is shown apart.
    let last = |deploy: bool| {
        records
            .iter()
            .rev()
            .find(|r| history::is_deploy(&r.task) == deploy)
    };
    let (last_deploy, last_other) = (last(true), last(false));
    // A run that started and never ended: running now if it holds the lock, else killed.
    let running = held
        .as_ref()
        .filter(|h| matches!(h.liveness, Liveness::Alive | Liveness::Elsewhere));
    let mut unfinished = history::unfinished(&records);
    unfinished.retain(|r| running.is_none_or(|h| h.holder.since != r.time));
    let old_app = container.as_ref().filter(|c| !c.is_ours());
    if stack_args.json {
        let value = json!({
            "project": stack.project,
            "engine": Engine::current().describe(),
            "compose": stack.flavour.describe(),
            "container": container.as_ref().map(|c| json!({
                "id": c.id, "status": c.status, "health": c.health, "started_at": c.started_at,
                "restart_count": c.restart_count, "image_id": c.image_id,
            })),
            "image": stack.bot_image,
            "image_id": image,
            "database": database.as_ref().map(|d| json!({
                "state": d.state, "version": d.version, "head": d.head, "pending": d.pending,
                "matches": d.matches, "difference": d.difference, "bytes": d.bytes,
            })),
            "old_app": old_app.map(|c| json!({"name": c.name, "image": c.config_image, "status": c.status})),
            "imported_from": imported_from,
            "last_backup": last_backup,
            "last_deploy": last_deploy,
            "last_other_task": last_other,
            "unfinished": unfinished.iter().map(|r| json!({
                "task": r.task, "time": r.time, "operator": r.operator, "pid": r.pid,
                "step": r.step, "volume": r.volume, "backup": r.backup,
                "description": deploy::describe_unfinished(r),
            })).collect::<Vec<_>>(),
            "lock": held.as_ref().map(|h| json!({
                "task": h.holder.task, "operator": h.holder.operator, "pid": h.holder.pid,
                "host": h.holder.host, "since": h.holder.since, "checkout": h.holder.checkout,
                "marker": h.marker,
                // true: running; false: dead (the next deploy takes the lock over); null: on
                // another machine or container, not checkable from here.
                "alive": match &h.liveness {
                    Liveness::Alive => Some(true),
                    Liveness::Dead(_) => Some(false),
                    Liveness::Elsewhere => None,
                },
            })),
        });
        println!("{value}");
        return Ok(());
    }
    let (flavour, engine) = (stack.flavour.describe(), Engine::current().describe());
    println!("project:     {} ({flavour}, {engine})", stack.project);
    match &container {
        Some(c) if !c.is_ours() => println!(
            "bot:         {} is the old app's container ({}, image {}), not ours; `cargo xtask first-deploy` brings its database over",
            c.name, c.status, c.config_image
        ),
        Some(c) => println!(
            "bot:         {} {} (started {}, restarts {}, image {})",
            c.status,
            c.health.as_deref().unwrap_or("no health check"),
            c.started_at,
            c.restart_count,
            deploy::short(&c.image_id)
        ),
        None => println!("bot:         no container (deploy with `cargo xtask first-deploy`)"),
    }
    match (&image, &database) {
        (Some(id), Some(db)) => {
            println!("image:       {} {}", stack.bot_image, deploy::short(id));
            println!("database:    {}", deploy::describe(db));
            if !db.pending.is_empty() {
                let pending: Vec<String> = db.pending.iter().map(u32::to_string).collect();
                println!("pending:     {}", pending.join(", "));
            }
            for line in &db.difference {
                println!("             {line}");
            }
        }
        _ => println!("image:       none ({} is not built yet)", stack.bot_image),
    }
    if let Some(imported) = &imported_from {
        println!("data:        {imported}");
    }
    let last_backup = last_backup.map(|b| b.display().to_string());
    println!("last backup: {}", last_backup.as_deref().unwrap_or("none"));
    let ran =
        |r: &history::Record| format!("{} {} by {}: {}", r.time, r.task, r.operator, r.result);
    let last_deploy = last_deploy.map_or("none recorded".into(), ran);
    println!("last deploy: {last_deploy}");
    if let Some(t) = last_other {
        println!("last task:   {}", ran(t));
    }
    for run in &unfinished {
        let killed = deploy::describe_unfinished(run);
        println!("unfinished:  {killed}. Run `cargo xtask recover` (or deploy again) to finish it");
    }
    match &held {
        None => println!("lock:        free"),
        Some(h) => match &h.liveness {
            Liveness::Alive => println!("lock:        held by {}", h.holder.describe()),
            Liveness::Elsewhere => println!(
                "lock:        held by {} (on another machine or container; if it is gone for good, `docker rm -f {}`)",
                h.holder.describe(),
                h.marker
            ),
            Liveness::Dead(why) => println!(
                "lock:        free: left by {} ({why}); the next deploy takes it over",
                h.holder.describe()
            ),
        },
    }
    Ok(())
}
