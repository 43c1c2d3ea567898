//! The everyday tasks: `logs`, `restart`, `down`.

use xshell::Shell;

use crate::deploy;
use crate::exit;
use crate::output::Run;
use crate::project::StackArgs;

/// `cargo xtask logs [-f]`: the bot's log.
pub fn logs(sh: &Shell, args: &StackArgs, follow: bool, tail: usize) -> anyhow::Result<()> {
    crate::project::stack(sh, args)?.logs(sh, follow, tail)
}

/// `cargo xtask restart`: restarts the bot and waits until it is healthy.
pub fn restart(sh: &Shell, args: &StackArgs, run: &Run) -> anyhow::Result<()> {
    deploy::locked_and_recorded(sh, args, "restart", run, |_, _| {
        let stack = deploy::check_machine(sh, args, false, run)?;
        crate::old_app::refuse_if_old_app(sh, &stack, "restart")?;
        let container = stack.bot_container(sh)?.ok_or_else(|| {
            exit::not_ready("there is no bot container; deploy first (`cargo xtask first-deploy`)")
        })?;
        if args.dry_run {
            return run.dry_run(&format!(
                "dry run: would run `docker restart {}` and wait until healthy",
                deploy::short(&container.id)
            ));
        }
        deploy::confirm(args.yes, "Restart the bot?")?;
        // What a killed task left (its helper containers, labelled) goes with the next one.
        crate::database::remove_leftover_helpers(sh, &stack.project)?;
        run.edit().changed = true;
        let id = &container.id;
        let restart = xshell::cmd!(sh, "docker restart -t 10 {id}");
        run.step("restart bot", || {
            crate::process::run(restart, "restarting the bot").map(drop)
        })?;
        deploy::wait_until_healthy_step(run, sh, &stack, args)
    })
}

/// `cargo xtask down`: stops and removes the containers; never the volume.
pub fn down(sh: &Shell, args: &StackArgs, run: &Run) -> anyhow::Result<()> {
    deploy::locked_and_recorded(sh, args, "down", run, |_, _| {
        let stack = deploy::check_machine(sh, args, false, run)?;
        crate::old_app::refuse_if_old_app(sh, &stack, "down")?;
        let (project, volume) = (&stack.project, stack.volume());
        if args.dry_run {
            return run.dry_run(&format!(
                "dry run: would stop and remove the containers of {project}; the volume {volume} stays"
            ));
        }
        let question = format!(
            "Stop the bot and remove its containers? (the volume {volume} and its database stay)"
        );
        deploy::confirm(args.yes, &question)?;
        crate::database::remove_leftover_helpers(sh, &stack.project)?;
        run.edit().changed = true;
        run.step("stop stack", || stack.down(sh))
    })
}
