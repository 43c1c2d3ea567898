//! `cargo xtask chat --demo TEXT`: talk to the demo bot through the stand-in.

use xshell::Shell;

use crate::compose::Stack;
use crate::exit;
use crate::project::{self, StackArgs};

/// Arguments of `chat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    stack: StackArgs,
    /// The Telegram user id to send as.
    #[arg(long, default_value_t = 1001)]
    user: i64,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    wait_ms: u64,
    /// The message, e.g. "/start".
    text: String,
}

/// Sends the message and prints the bot's answers.
pub fn run(sh: &Shell, args: Args) -> anyhow::Result<()> {
    if !args.stack.demo {
        return Err(exit::usage("chat talks to the demo stand-in; pass --demo"));
    }
    let stack = Stack::new(
        sh,
        &project::project_name(args.stack.project_name.as_deref())?,
        true,
    )?;
    print!("{}", stack.chat(sh, &args.text, args.user, args.wait_ms)?);
    Ok(())
}
