//! What the bot answers to each message.

use crate::store::{Store, UserFacts};

/// The commands the bot publishes with setMyCommands and lists in /help.
pub const COMMANDS: &[(&str, &str)] = &[
    ("start", "register with the bot"),
    ("help", "list the commands"),
];

/// The command in a message's text, lower-cased, without a `@botname` suffix.
pub fn parse_command(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?.strip_prefix('/')?;
    let name = first.split('@').next().unwrap_or(first);
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// The help text.
pub fn help_text() -> String {
    let mut text = String::from("Commands:");
    for (name, description) in COMMANDS {
        text.push_str(&format!("\n/{name} - {description}"));
    }
    text
}

/// Handles one message; returns the answer to send, if any.
pub async fn answer(store: &Store, user: UserFacts, text: &str) -> anyhow::Result<Option<String>> {
    let Some(command) = parse_command(text) else {
        store.touch(user.telegram_id, user.language_code).await?;
        return Ok(None);
    };
    let reply = match command.as_str() {
        "start" => {
            let first_name = user.first_name.clone();
            if store.register(user).await? {
                format!(
                    "Welcome, {first_name}! You are registered. Send /help to see what I can do."
                )
            } else {
                format!("Welcome back, {first_name}! Your details are up to date.")
            }
        }
        "help" => {
            store.touch(user.telegram_id, user.language_code).await?;
            help_text()
        }
        other => {
            store.touch(user.telegram_id, user.language_code).await?;
            format!("I don't know /{other}. Send /help for the list of commands.")
        }
    };
    Ok(Some(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed() {
        assert_eq!(parse_command("/start"), Some("start".into()));
        assert_eq!(parse_command("/Help@demo_bot now"), Some("help".into()));
        assert_eq!(parse_command("hello"), None);
        assert_eq!(parse_command("/"), None);
    }

    #[test]
    fn help_lists_every_command() {
        let help = help_text();
        for (name, _) in COMMANDS {
            assert!(help.contains(&format!("/{name}")), "{help}");
        }
    }
}
