//! `cargo xtask chat --demo TEXT`: talk to the demo bot through the stand-in.

use std::time::Duration;

use xshell::Shell;

use crate::exit;
use crate::project::{self, PlaceOptions};

/// Arguments of `chat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub options: PlaceOptions,
    /// The Telegram user id to send as.
    #[arg(long, default_value_t = 1001)]
    user: i64,
    /// How long to wait for the answer, in milliseconds (it returns as soon as one arrives).
    #[arg(long, default_value_t = 10_000)]
    wait_ms: u64,
    /// The message, e.g. "/start".
    text: String,
}

/// Sends the message and prints the bot's answers.
pub fn run(sh: &Shell, args: Args) -> anyhow::Result<()> {
    let stack = project::stack(sh, &args.options.stack())?;
    if !stack.demo {
        return Err(exit::usage(
            "chat talks to the demo stand-in, and this project was not deployed with --demo; pass --demo",
        ));
    }
    let answers = stack.chat(sh, &args.text, args.user, args.wait_ms)?;
    if answers.trim().is_empty() {
        anyhow::bail!("{}", no_answer(&args.text, args.wait_ms));
    }
    print!("{answers}");
    Ok(())
}

/// Why a message may have got no answer, and what to try.
fn no_answer(text: &str, wait_ms: u64) -> String {
    let waited = format!("{:.0} s", Duration::from_millis(wait_ms).as_secs_f64());
    if text.trim_start().starts_with('/') {
        format!(
            "no answer in {waited}: is the bot healthy? (`cargo xtask status --demo`, `cargo xtask logs --demo`)"
        )
    } else {
        format!("no answer in {waited}: the bot answers commands only (try /help)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_answer_says_why_by_what_was_sent() {
        assert_eq!(
            no_answer("hello", 10_000),
            "no answer in 10 s: the bot answers commands only (try /help)"
        );
        assert!(no_answer("/help", 2_500).starts_with("no answer in 2 s: is the bot healthy?"));
    }
}
