//! One module per task that is more than a deploy mode.

pub mod backup;
pub mod chat;
pub mod ci;
pub mod db;
pub mod doctor;
pub mod history;
pub mod ops;
pub mod restore;
pub mod rollback;
pub mod schema;
pub mod status;

use std::time::Duration;

use xshell::Shell;

use crate::compose::Stack;
use crate::output::Run;
use crate::project::StackArgs;

/// The step that waits until the bot of `stack` is healthy, within `--health-timeout`.
fn wait_until_healthy(
    run: &Run,
    sh: &Shell,
    stack: &Stack,
    args: &StackArgs,
) -> anyhow::Result<()> {
    run.step("wait until healthy", || {
        crate::deploy::wait_until_healthy(sh, stack, Duration::from_secs(args.health_timeout))
    })
}
