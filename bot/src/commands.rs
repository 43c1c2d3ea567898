//! What the bot answers to each message. The texts are built by pure functions, tested below;
//! [`answer`] adds the database.

use std::fmt::Write as _;

use crate::config::AdminIds;
use crate::store::{Registration, Store, StoredUser, UserFacts, UserStats};

/// The commands the bot publishes with setMyCommands and lists in /help.
pub const COMMANDS: &[(&str, &str)] = &[
    ("start", "register, or refresh your details"),
    ("help", "list the commands"),
    ("me", "show what I store about you"),
    ("stats", "user numbers (admins only)"),
];

/// Telegram's limit on a command's length, and `command_log.command`'s.
const MAX_COMMAND_LENGTH: usize = 32;

/// The command in a message's text, lower-cased, without a `@botname` suffix.
pub fn parse_command(text: &str) -> Option<String> {
    let first = text.split_whitespace().next()?.strip_prefix('/')?;
    let name = first.split('@').next().unwrap_or(first);
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// Whether a command goes into `command_log`: any command of Telegram's shape (1 to 32 of
/// `a-z`, `0-9`, `_`), unknown ones included, so /stats shows what users try; other text after
/// a slash is not a command and is not kept.
pub fn is_loggable(command: &str) -> bool {
    !command.is_empty()
        && command.len() <= MAX_COMMAND_LENGTH
        && command
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The help text.
pub fn help_text() -> String {
    let mut text = String::from("Commands:");
    for (name, description) in COMMANDS {
        let _ = write!(text, "\n/{name} - {description}");
    }
    text
}

/// The answer to /start.
pub fn start_text(registration: Registration, first_name: &str) -> String {
    match registration {
        Registration::New => {
            format!("Welcome, {first_name}! You are registered. Send /help to see what I can do.")
        }
        Registration::Refreshed => {
            format!("Welcome back, {first_name}! Your details are up to date.")
        }
    }
}

/// The answer to /me and /stats from a user who never sent /start.
pub const NOT_REGISTERED: &str =
    "I don't know you yet, so I store nothing about you. Send /start to register.";

/// The answer to /stats from someone who is not an admin.
pub const STATS_REFUSED: &str =
    "Sorry, /stats is only for the bot's admins. Send /help to see what you can use.";

/// The answer to /me: everything the bot stores about the user. `admin` is the effective
/// status (listed in ADMIN_IDS, or `is_admin` in the database).
pub fn me_text(user: &StoredUser, admin: bool) -> String {
    fn or_not_set(value: Option<&str>) -> &str {
        value.filter(|v| !v.is_empty()).unwrap_or("not set")
    }
    let username = user.username.as_ref().map(|u| format!("@{u}"));
    let utc = |t: &Option<String>| t.as_ref().map(|t| format!("{t} UTC"));
    format!(
        "Here is what I store about you:\n\
         Telegram id: {}\n\
         Username: {}\n\
         First name: {}\n\
         Last name: {}\n\
         Language: {}\n\
         Registered: {}\n\
         Last seen: {}\n\
         Admin: {}",
        user.telegram_id,
        or_not_set(username.as_deref()),
        or_not_set(user.first_name.as_deref()),
        or_not_set(user.last_name.as_deref()),
        or_not_set(user.language_code.as_deref()),
        or_not_set(utc(&user.created_at).as_deref()),
        or_not_set(utc(&user.last_seen_at).as_deref()),
        if admin { "yes" } else { "no" },
    )
}

/// The answer to /stats. "Today" is the last 24 hours, so the numbers do not drop at midnight.
pub fn stats_text(stats: &UserStats) -> String {
    let commands: i64 = stats.commands_today.iter().map(|(_, n)| n).sum();
    let mut text = format!(
        "Users: {}\nNew in the last 7 days: {}\nActive in the last 24 hours: {}\nCommands in the last 24 hours: {commands}",
        stats.users_total, stats.new_this_week, stats.active_today
    );
    if !stats.commands_today.is_empty() {
        let each: Vec<String> = stats
            .commands_today
            .iter()
            .map(|(name, n)| format!("/{name} {n}"))
            .collect();
        let _ = write!(text, " ({})", each.join(", "));
    }
    text
}

/// The answer to a command the bot does not have.
pub fn unknown_text(command: &str) -> String {
    let shown: String = command.chars().take(MAX_COMMAND_LENGTH).collect();
    format!("I don't know /{shown}. Send /help for the list of commands.")
}

/// Handles one message: updates the database (registration, last-seen, language, the command
/// log) and returns the answer to send, if any.
pub async fn answer(
    store: &Store,
    admins: &AdminIds,
    user: UserFacts,
    text: &str,
) -> anyhow::Result<Option<String>> {
    let command = parse_command(text);
    if command.as_deref() == Some("start") {
        let first_name = user.first_name.clone();
        let registration = store.register(user, "start").await?;
        return Ok(Some(start_text(registration, &first_name)));
    }
    let logged = command.clone().filter(|c| is_loggable(c));
    let stored = store
        .seen(user.telegram_id, user.language_code, logged)
        .await?;
    let Some(command) = command else {
        return Ok(None);
    };
    let admin = admins.contains(user.telegram_id) || stored.as_ref().is_some_and(|u| u.is_admin);
    let reply = match command.as_str() {
        "help" => help_text(),
        "me" => match &stored {
            Some(stored) => me_text(stored, admin),
            None => NOT_REGISTERED.to_owned(),
        },
        "stats" if admin => stats_text(&store.stats().await?),
        "stats" => STATS_REFUSED.to_owned(),
        other => unknown_text(other),
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
        assert_eq!(parse_command("  /me  "), Some("me".into()));
        assert_eq!(parse_command("/stats\nplease"), Some("stats".into()));
        assert_eq!(parse_command("hello /start"), None);
        assert_eq!(parse_command("hello"), None);
        assert_eq!(parse_command(""), None);
        assert_eq!(parse_command("/"), None);
        assert_eq!(parse_command("/@demo_bot"), None);
    }

    #[test]
    fn only_commands_of_telegrams_shape_are_logged() {
        for name in ["start", "stats", "nope", "a_1", &"x".repeat(32)] {
            assert!(is_loggable(name), "{name}");
        }
        for name in ["", "привет", "drop table", "a-b", "ab;", &"x".repeat(33)] {
            assert!(!is_loggable(name), "{name}");
        }
    }

    #[test]
    fn help_lists_every_command() {
        let help = help_text();
        assert_eq!(help.lines().count(), COMMANDS.len() + 1, "{help}");
        for (name, description) in COMMANDS {
            assert!(help.contains(&format!("/{name} - {description}")), "{help}");
        }
    }

    #[test]
    fn start_tells_new_from_known_users() {
        assert_eq!(
            start_text(Registration::New, "Ann"),
            "Welcome, Ann! You are registered. Send /help to see what I can do."
        );
        assert_eq!(
            start_text(Registration::Refreshed, "Ann"),
            "Welcome back, Ann! Your details are up to date."
        );
    }

    fn ann() -> StoredUser {
        StoredUser {
            telegram_id: 42,
            username: Some("ann".into()),
            first_name: Some("Ann".into()),
            last_name: None,
            language_code: Some("de".into()),
            is_admin: false,
            created_at: Some("2024-05-01 10:00:00".into()),
            last_seen_at: Some("2024-05-02 11:30:00".into()),
        }
    }

    #[test]
    fn me_shows_every_stored_field() {
        assert_eq!(
            me_text(&ann(), false),
            "Here is what I store about you:\n\
             Telegram id: 42\n\
             Username: @ann\n\
             First name: Ann\n\
             Last name: not set\n\
             Language: de\n\
             Registered: 2024-05-01 10:00:00 UTC\n\
             Last seen: 2024-05-02 11:30:00 UTC\n\
             Admin: no"
        );
        let bare = StoredUser {
            username: None,
            language_code: None,
            last_seen_at: None,
            ..ann()
        };
        let text = me_text(&bare, true);
        assert!(text.contains("Username: not set\n"), "{text}");
        assert!(text.contains("Language: not set\n"), "{text}");
        assert!(text.contains("Last seen: not set\n"), "{text}");
        assert!(text.ends_with("Admin: yes"), "{text}");
    }

    #[test]
    fn stats_text_shows_the_numbers_and_each_command() {
        let stats = UserStats {
            users_total: 12,
            new_this_week: 3,
            active_today: 5,
            commands_today: vec![("start".into(), 4), ("help".into(), 2), ("me".into(), 1)],
        };
        assert_eq!(
            stats_text(&stats),
            "Users: 12\nNew in the last 7 days: 3\nActive in the last 24 hours: 5\n\
             Commands in the last 24 hours: 7 (/start 4, /help 2, /me 1)"
        );
        assert_eq!(
            stats_text(&UserStats::default()),
            "Users: 0\nNew in the last 7 days: 0\nActive in the last 24 hours: 0\n\
             Commands in the last 24 hours: 0"
        );
    }

    #[test]
    fn an_unknown_command_gets_a_hint_and_a_long_one_is_cut() {
        assert_eq!(
            unknown_text("nope"),
            "I don't know /nope. Send /help for the list of commands."
        );
        let long = unknown_text(&"y".repeat(500));
        assert!(long.contains(&format!("/{}. ", "y".repeat(32))), "{long}");
    }
}
