//! What the bot answers to each message. The texts are built by pure functions, tested below;
//! [`answer`] adds the database and Telegram's rules: each update is handled once, a command
//! for another bot is not ours, and a group never sees anyone's details.

use std::fmt::Write as _;

use crate::config::AdminIds;
use crate::store::{Handled, Registration, Store, StoredUser, UserFacts, UserStats};

/// The bot's commands, declared once: setMyCommands, /help and [`answer`] take them from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Register, or refresh the stored details.
    Start,
    /// List the commands.
    Help,
    /// Show what the bot stores about the user.
    Me,
    /// User numbers, for admins.
    Stats,
}

impl Command {
    /// Every command, in the order the menu and /help list them.
    pub const ALL: [Command; 4] = [Command::Start, Command::Help, Command::Me, Command::Stats];

    /// Its name, without the slash.
    pub fn name(self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Help => "help",
            Command::Me => "me",
            Command::Stats => "stats",
        }
    }

    /// What the menu and /help say it does.
    pub fn description(self) -> &'static str {
        match self {
            Command::Start => "register, or refresh your details",
            Command::Help => "list the commands",
            Command::Me => "show what I store about you",
            Command::Stats => "user numbers (admins only)",
        }
    }

    /// The command of that (lower-case) name, if the bot has one.
    pub fn named(name: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether its answer is for one person (their details) or the admins (the numbers), so a
    /// group gets a hint to ask in private instead.
    pub fn is_private_only(self) -> bool {
        matches!(self, Command::Me | Command::Stats)
    }
}

/// Telegram's limit on a command's length, and `command_log.command`'s.
const MAX_COMMAND_LENGTH: usize = 32;

/// Telegram's limit on a message's text.
pub const MAX_MESSAGE_LENGTH: usize = 4096;

/// Where a message was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatKind {
    /// A private chat with the bot.
    Private,
    /// A group or supergroup: other people (and other bots) read along.
    Group,
}

/// One message, as [`answer`] needs it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The id of the update that brought the message: Telegram may deliver it more than once.
    pub update_id: i64,
    /// Where it was written.
    pub chat: ChatKind,
    /// Who wrote it.
    pub user: UserFacts,
    /// Its text.
    pub text: String,
}

/// What to do about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send this text to the chat, after doing what [`Record`] says about the update's id.
    Reply(String, Record),
    /// Send nothing (plain text, a command for another bot).
    Nothing,
    /// The update was handled before (a second delivery): send nothing.
    AlreadyHandled,
}

/// Whether the update's id is in the database before its answer goes out: an update answered
/// and not recorded would be answered again after a crash, or by a second instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Recorded with what the update changed.
    Written,
    /// Its handling wrote nothing (an unknown user's /help): record it, then answer.
    First,
    /// Its write failed (the database is locked): answer anyway, record it when possible.
    Later,
}

/// Whether a message gets an answer at all: a command for this bot (in a group, addressed to
/// it or one it knows). Decided from the text alone, before any database work, so that only
/// messages that will be answered wait for a turn at Telegram's limits.
pub fn is_answered(chat: ChatKind, text: &str, me: &str) -> bool {
    match parse_command(text) {
        Some(command) if !command.is_for(me) => false,
        Some(command) => !(chat == ChatKind::Group && command.bot.is_none() && !command.is_known()),
        None => false,
    }
}

/// A command in a message's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCommand {
    /// The command, lower-cased, without the slash and the `@botname` suffix.
    pub name: String,
    /// The bot it is addressed to (`/start@demo_bot`), as written.
    pub bot: Option<String>,
}

impl ParsedCommand {
    /// Whether the command is for the bot named `me` (its username without @): addressed to no
    /// bot, or to `me` in any case.
    pub fn is_for(&self, me: &str) -> bool {
        self.bot
            .as_deref()
            .is_none_or(|bot| bot.eq_ignore_ascii_case(me))
    }

    /// Whether it is one of the bot's [`Command`]s.
    pub fn is_known(&self) -> bool {
        Command::named(&self.name).is_some()
    }
}

/// The command at the start of a message's text: its name lower-cased, and the `@botname` it is
/// addressed to, if any.
pub fn parse_command(text: &str) -> Option<ParsedCommand> {
    let first = text.split_whitespace().next()?.strip_prefix('/')?;
    let (name, bot) = match first.split_once('@') {
        Some((name, bot)) => (name, Some(bot.to_owned())),
        None => (first, None),
    };
    (!name.is_empty()).then(|| ParsedCommand {
        name: name.to_ascii_lowercase(),
        bot,
    })
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
    for command in Command::ALL {
        let _ = write!(text, "\n/{} - {}", command.name(), command.description());
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

/// The answer to /me or /stats in a group: what it would show is for the user (or the admins)
/// only.
pub fn private_only_text(command: Command) -> String {
    let what = if command == Command::Stats {
        "the bot's numbers"
    } else {
        "your details"
    };
    format!(
        "Send /{} to me in a private chat: I do not post {what} in a group.",
        command.name()
    )
}

/// The answer to /stats. "Today" is the last 24 hours, so the numbers do not drop at midnight.
/// At most [`TOP_COMMANDS`](crate::store::TOP_COMMANDS) commands are named, each cut to
/// Telegram's command length, the rest summed up as others: the text stays far below
/// [`MAX_MESSAGE_LENGTH`] whatever users send.
pub fn stats_text(stats: &UserStats) -> String {
    use crate::store::TOP_COMMANDS;
    let named = stats.commands_today.iter().take(TOP_COMMANDS);
    let others: i64 = stats.other_commands
        + stats
            .commands_today
            .iter()
            .skip(TOP_COMMANDS)
            .map(|(_, n)| n)
            .sum::<i64>();
    let commands: i64 = others + named.clone().map(|(_, n)| n).sum::<i64>();
    let (week, day) = match &stats.counted_from {
        Some(from) => (
            format!("since {} UTC", from.week),
            format!("since {} UTC", from.day),
        ),
        None => ("in the last 7 days".into(), "in the last 24 hours".into()),
    };
    let mut text = format!(
        "Users: {}\nNew {week}: {}\nActive {day}: {}\nCommands {day}: {commands}",
        stats.users_total, stats.new_this_week, stats.active_today
    );
    let mut each: Vec<String> = named
        .map(|(name, n)| {
            let name: String = name.chars().take(MAX_COMMAND_LENGTH).collect();
            format!("/{name} {n}")
        })
        .collect();
    if others > 0 {
        each.push(format!("others {others}"));
    }
    if !each.is_empty() {
        let _ = write!(text, " ({})", each.join(", "));
    }
    debug_assert!(text.len() <= MAX_MESSAGE_LENGTH, "{text}");
    text
}

/// The answer to a command the bot does not have.
pub fn unknown_text(command: &str) -> String {
    let shown: String = command.chars().take(MAX_COMMAND_LENGTH).collect();
    format!("I don't know /{shown}. Send /help for the list of commands.")
}

/// Handles one message: updates the database (registration, last-seen, language, the command
/// log, the update's id) and says what to answer. `me` is the bot's username, without @.
///
/// - A command addressed to another bot (`/start@other_bot`) is not ours: nothing is written
///   or sent. In a group, neither is plain text, nor a command the bot does not have unless it
///   is addressed to the bot by name (it may be another bot's).
/// - An update whose id is recorded was handled before: [`Answer::AlreadyHandled`], nothing
///   written (from schema revision 5).
/// - /start registers; when that fails, the error comes back (the caller apologises).
/// - Anything else writes best effort (last-seen, the command log): when that write fails it
///   is logged and the message is answered all the same.
/// - In a group, /me and /stats answer with a hint to ask in private.
pub async fn answer(
    store: &Store,
    admins: &AdminIds,
    me: &str,
    incoming: Incoming,
) -> anyhow::Result<Answer> {
    let Incoming {
        update_id,
        chat,
        user,
        text,
    } = incoming;
    let group = chat == ChatKind::Group;
    let command = parse_command(&text);
    match &command {
        Some(_) if !is_answered(chat, &text, me) => return Ok(Answer::Nothing),
        None if group => return Ok(Answer::Nothing),
        _ => {}
    }
    let command = command.map(|c| c.name);
    let known = command.as_deref().and_then(Command::named);
    if known == Some(Command::Start) {
        let first_name = user.first_name.clone();
        return Ok(match store.register(update_id, user, "start").await? {
            Handled::Done(registration) | Handled::NothingWritten(registration) => {
                Answer::Reply(start_text(registration, &first_name), Record::Written)
            }
            Handled::Before => Answer::AlreadyHandled,
        });
    }
    let logged = command.clone().filter(|c| is_loggable(c));
    let telegram_id = user.telegram_id;
    let seen = store
        .seen(update_id, telegram_id, user.language_code, logged)
        .await;
    let (stored, record) = match seen {
        Ok(Handled::Done(stored)) => (Some(stored), Record::Written),
        Ok(Handled::NothingWritten(stored)) => (Some(stored), Record::First),
        Ok(Handled::Before) => return Ok(Answer::AlreadyHandled),
        Err(e) => {
            tracing::warn!(
                "update {update_id} from user {telegram_id}: last-seen and command log not written, answering anyway: {e:#}"
            );
            (None, Record::Later)
        }
    };
    let Some(command) = command else {
        return Ok(Answer::Nothing);
    };
    let private_only = known.filter(|c| c.is_private_only());
    if let (true, Some(known)) = (group, private_only) {
        return Ok(Answer::Reply(private_only_text(known), record));
    }
    let stored = match stored {
        Some(stored) => stored,
        // The write failed: what the answer needs of the row is read without it.
        None if private_only.is_some() => store.user(telegram_id).await?,
        None => None,
    };
    let admin = admins.contains(telegram_id) || stored.as_ref().is_some_and(|u| u.is_admin);
    let reply = match known {
        Some(Command::Help) => help_text(),
        Some(Command::Me) => match &stored {
            Some(stored) => me_text(stored, admin),
            None => NOT_REGISTERED.to_owned(),
        },
        Some(Command::Stats) if admin => stats_text(&store.stats().await?),
        Some(Command::Stats) => STATS_REFUSED.to_owned(),
        // /start was answered above.
        Some(Command::Start) | None => unknown_text(&command),
    };
    Ok(Answer::Reply(reply, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(name: &str, bot: Option<&str>) -> Option<ParsedCommand> {
        Some(ParsedCommand {
            name: name.into(),
            bot: bot.map(Into::into),
        })
    }

    #[test]
    fn commands_are_parsed_with_the_bot_they_are_addressed_to() {
        assert_eq!(parse_command("/start"), command("start", None));
        assert_eq!(
            parse_command("/Help@Demo_bot now"),
            command("help", Some("Demo_bot"))
        );
        assert_eq!(parse_command("  /me  "), command("me", None));
        assert_eq!(parse_command("/stats\nplease"), command("stats", None));
        assert_eq!(parse_command("/start@"), command("start", Some("")));
        assert_eq!(parse_command("hello /start"), None);
        assert_eq!(parse_command("hello"), None);
        assert_eq!(parse_command(""), None);
        assert_eq!(parse_command("/"), None);
        assert_eq!(parse_command("/@demo_bot"), None);
    }

    #[test]
    fn a_command_is_ours_unless_addressed_to_another_bot() {
        let to = |text: &str| parse_command(text).unwrap();
        assert!(to("/start").is_for("demo_bot"));
        assert!(to("/start@demo_bot").is_for("demo_bot"));
        assert!(to("/start@DEMO_Bot").is_for("demo_bot"));
        assert!(!to("/start@other_bot").is_for("demo_bot"));
        assert!(!to("/start@").is_for("demo_bot"));
        assert!(to("/me").is_known() && !to("/nope").is_known());
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
        assert_eq!(help.lines().count(), Command::ALL.len() + 1, "{help}");
        for command in Command::ALL {
            let line = format!("/{} - {}", command.name(), command.description());
            assert!(help.contains(&line), "{help}");
            assert_eq!(Command::named(command.name()), Some(command));
        }
        assert_eq!(
            help,
            "Commands:\n/start - register, or refresh your details\n/help - list the commands\n\
             /me - show what I store about you\n/stats - user numbers (admins only)"
        );
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
            other_commands: 0,
            counted_from: None,
        };
        assert_eq!(
            stats_text(&stats),
            "Users: 12\nNew in the last 7 days: 3\nActive in the last 24 hours: 5\n\
             Commands in the last 24 hours: 7 (/start 4, /help 2, /me 1)"
        );
        let with_others = UserStats {
            other_commands: 5,
            ..stats
        };
        assert!(
            stats_text(&with_others).ends_with(
                "Commands in the last 24 hours: 12 (/start 4, /help 2, /me 1, others 5)"
            )
        );
        assert_eq!(
            stats_text(&UserStats::default()),
            "Users: 0\nNew in the last 7 days: 0\nActive in the last 24 hours: 0\n\
             Commands in the last 24 hours: 0"
        );
        // Counted by the hour (revision 5): the answer names the hours the windows start at.
        let by_hour = UserStats {
            counted_from: Some(crate::store::HourWindows {
                week: "2026-11-19 17:00".into(),
                day: "2026-11-25 17:00".into(),
            }),
            ..with_others
        };
        assert_eq!(
            stats_text(&by_hour),
            "Users: 12\nNew since 2026-11-19 17:00 UTC: 3\nActive since 2026-11-25 17:00 UTC: 5\n\
             Commands since 2026-11-25 17:00 UTC: 12 (/start 4, /help 2, /me 1, others 5)"
        );
    }

    #[test]
    fn stats_text_names_ten_commands_and_stays_within_telegrams_limit() {
        let junk: Vec<(String, i64)> = (0..150)
            .map(|i| (format!("{i:x<32}"), i64::MAX / 1000 - i))
            .collect();
        let stats = UserStats {
            users_total: i64::MAX,
            new_this_week: i64::MAX,
            active_today: i64::MAX,
            commands_today: junk.clone(),
            other_commands: 0,
            counted_from: None,
        };
        let text = stats_text(&stats);
        assert!(text.len() <= MAX_MESSAGE_LENGTH, "{} chars", text.len());
        assert!(text.contains(&format!("/{} ", junk[9].0)), "{text}");
        assert!(!text.contains(&junk[10].0), "{text}");
        let others: i64 = junk[10..].iter().map(|(_, n)| n).sum();
        assert!(text.ends_with(&format!(", others {others})")), "{text}");
        // Names longer than Telegram allows (written by someone else) are cut.
        let long = UserStats {
            commands_today: vec![("y".repeat(5000), 1)],
            ..UserStats::default()
        };
        assert!(stats_text(&long).len() < 200);
    }

    #[test]
    fn in_a_group_me_and_stats_point_to_the_private_chat() {
        assert_eq!(
            private_only_text(Command::Me),
            "Send /me to me in a private chat: I do not post your details in a group."
        );
        assert_eq!(
            private_only_text(Command::Stats),
            "Send /stats to me in a private chat: I do not post the bot's numbers in a group."
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

    /// [`answer`] on a real database made by the migrations.
    mod answering {
        use std::sync::atomic::{AtomicI64, Ordering};
        use std::time::{Duration, Instant};

        use crate::store::testing::TempDb;
        use crate::store::{REVISION_HANDLED_ONCE, UserFacts};

        use super::*;

        const ME: &str = "demo_bot";

        /// Handled only once from revision 5 on; an older release handles it again.
        fn handles_once() -> bool {
            migrations::head() >= REVISION_HANDLED_ONCE
        }

        fn next_update() -> i64 {
            static NEXT: AtomicI64 = AtomicI64::new(1);
            NEXT.fetch_add(1, Ordering::Relaxed)
        }

        fn user(telegram_id: i64) -> UserFacts {
            UserFacts {
                telegram_id,
                username: Some(format!("u{telegram_id}")),
                first_name: "Ann".into(),
                last_name: None,
                language_code: Some("en".into()),
            }
        }

        fn incoming(update_id: i64, chat: ChatKind, telegram_id: i64, text: &str) -> Incoming {
            Incoming {
                update_id,
                chat,
                user: user(telegram_id),
                text: text.into(),
            }
        }

        struct Bot {
            db: TempDb,
            store: Store,
            admins: AdminIds,
            /// Another connection: its `PRAGMA data_version` moves when the bot commits.
            watcher: rusqlite::Connection,
        }

        impl Bot {
            fn new(name: &str) -> Bot {
                let db = TempDb::new(name);
                let store = db.open();
                let watcher = db.conn();
                Bot {
                    db,
                    store,
                    admins: AdminIds::parse("1000").unwrap(),
                    watcher,
                }
            }

            async fn send(&self, chat: ChatKind, telegram_id: i64, text: &str) -> Answer {
                self.send_update(next_update(), chat, telegram_id, text)
                    .await
            }

            async fn say(&self, telegram_id: i64, text: &str) -> Answer {
                self.send(ChatKind::Private, telegram_id, text).await
            }

            async fn send_update(
                &self,
                update_id: i64,
                chat: ChatKind,
                telegram_id: i64,
                text: &str,
            ) -> Answer {
                let message = incoming(update_id, chat, telegram_id, text);
                answer(&self.store, &self.admins, ME, message)
                    .await
                    .unwrap()
            }

            fn data_version(&self) -> i64 {
                self.watcher
                    .query_row("PRAGMA data_version", [], |r| r.get(0))
                    .unwrap()
            }

            /// Runs `send` and says whether the bot committed anything meanwhile.
            async fn writes(&self, send: impl Future<Output = Answer>) -> (Answer, bool) {
                let before = self.data_version();
                let answer = send.await;
                (answer, self.data_version() != before)
            }

            fn logged(&self) -> Vec<String> {
                let mut statement = self
                    .watcher
                    .prepare("SELECT command FROM command_log ORDER BY id")
                    .unwrap();
                statement
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }

            fn set_last_seen(&self, telegram_id: i64, ago: &str) {
                self.watcher
                    .execute(
                        "UPDATE users SET last_seen_at = datetime('now', ?2) WHERE telegram_id = ?1",
                        rusqlite::params![telegram_id, ago],
                    )
                    .unwrap();
            }

            fn last_seen_is_fresh(&self, telegram_id: i64) -> bool {
                self.watcher
                    .query_row(
                        "SELECT last_seen_at >= datetime('now', '-1 minute') FROM users
                         WHERE telegram_id = ?1",
                        [telegram_id],
                        |r| r.get(0),
                    )
                    .unwrap()
            }

            async fn close(self) {
                self.store.close().await.unwrap();
            }
        }

        fn reply(answer: &Answer) -> &str {
            match answer {
                Answer::Reply(text, _) => text,
                other => panic!("expected a reply, got {other:?}"),
            }
        }

        #[tokio::test]
        async fn an_update_delivered_twice_is_handled_once() {
            let bot = Bot::new("twice");
            let start = next_update();
            let first = bot.send_update(start, ChatKind::Private, 1, "/start").await;
            assert!(reply(&first).starts_with("Welcome, Ann!"));
            let (again, wrote) = bot
                .writes(bot.send_update(start, ChatKind::Private, 1, "/start"))
                .await;
            let help = next_update();
            bot.send_update(help, ChatKind::Private, 1, "/help").await;
            let help_again = bot.send_update(help, ChatKind::Private, 1, "/help").await;
            if handles_once() {
                assert_eq!(again, Answer::AlreadyHandled);
                assert!(!wrote, "a second delivery writes nothing");
                assert_eq!(help_again, Answer::AlreadyHandled);
                assert_eq!(bot.logged(), ["start", "help"]);
                assert_eq!(
                    bot.db.count("SELECT count(*) FROM handled_updates"),
                    2,
                    "{start} and {help}"
                );
            } else {
                assert!(reply(&again).starts_with("Welcome back"));
                assert!(reply(&help_again).starts_with("Commands:"));
            }
            bot.close().await;
        }

        #[tokio::test]
        async fn an_unknown_user_costs_no_write() {
            let bot = Bot::new("unknown");
            for text in ["/help", "/me", "/stats", "/nope", "hello"] {
                let (answer, wrote) = bot.writes(bot.say(7, text)).await;
                assert!(!wrote, "{text}: {answer:?}");
                if text == "hello" {
                    assert_eq!(answer, Answer::Nothing);
                } else {
                    assert_ne!(answer, Answer::Nothing, "{text}");
                }
            }
            assert_eq!(reply(&bot.say(7, "/me").await), NOT_REGISTERED);
            assert_eq!(bot.db.count("SELECT count(*) FROM users"), 0);
            assert!(bot.logged().is_empty());
            if handles_once() {
                assert_eq!(bot.db.count("SELECT count(*) FROM handled_updates"), 0);
            }
            bot.close().await;
        }

        #[tokio::test]
        async fn a_command_for_another_bot_is_ignored() {
            let bot = Bot::new("other-bot");
            for chat in [ChatKind::Private, ChatKind::Group] {
                for text in ["/start@other_bot", "/help@other_bot", "/me@OtherBot hi"] {
                    let (answer, wrote) = bot.writes(bot.send(chat, 1, text)).await;
                    assert_eq!((answer, wrote), (Answer::Nothing, false), "{text}");
                }
            }
            assert_eq!(bot.db.count("SELECT count(*) FROM users"), 0);
            let start = bot.send(ChatKind::Group, 1, "/start@Demo_Bot").await;
            assert!(reply(&start).starts_with("Welcome, Ann!"));
            let help = bot.say(1, "/help@demo_bot").await;
            assert!(reply(&help).starts_with("Commands:"));
            assert_eq!(bot.logged(), ["start", "help"]);
            bot.close().await;
        }

        #[tokio::test]
        async fn a_group_gets_no_details_and_no_chatter() {
            let bot = Bot::new("group");
            bot.say(1000, "/start").await;
            bot.set_last_seen(1000, "-1 hour");
            let group = ChatKind::Group;

            let (answer, wrote) = bot.writes(bot.send(group, 1000, "hello everyone")).await;
            assert_eq!((answer, wrote), (Answer::Nothing, false), "plain text");
            let (answer, wrote) = bot.writes(bot.send(group, 1000, "/weather")).await;
            assert_eq!(
                (answer, wrote),
                (Answer::Nothing, false),
                "not ours: maybe another bot's"
            );
            assert!(
                reply(&bot.send(group, 1000, "/weather@demo_bot").await)
                    .starts_with("I don't know /weather")
            );

            for command in [Command::Me, Command::Stats] {
                let name = command.name();
                let (answer, wrote) = bot.writes(bot.send(group, 1000, &format!("/{name}"))).await;
                assert_eq!(
                    answer,
                    Answer::Reply(private_only_text(command), Record::Written)
                );
                assert!(wrote, "/{name} is logged as usual");
            }
            assert!(bot.last_seen_is_fresh(1000));
            assert_eq!(
                reply(&bot.send(group, 7, "/me").await),
                private_only_text(Command::Me),
                "the same hint to a stranger"
            );
            assert!(reply(&bot.send(group, 1000, "/help").await).starts_with("Commands:"));
            assert_eq!(bot.logged(), ["start", "weather", "me", "stats", "help"]);
            // In private the same commands answer in full.
            assert!(reply(&bot.say(1000, "/me").await).contains("Telegram id: 1000"));
            assert!(reply(&bot.say(1000, "/stats").await).starts_with("Users: 1\n"));
            bot.close().await;
        }

        #[tokio::test]
        async fn last_seen_is_written_at_most_every_few_minutes() {
            let bot = Bot::new("last-seen");
            bot.say(1, "/start").await;
            bot.set_last_seen(1, "-2 minutes");
            let (answered, wrote) = bot.writes(bot.say(1, "hello")).await;
            assert_eq!((answered, wrote), (Answer::Nothing, false), "seen just now");
            assert!(!bot.last_seen_is_fresh(1));

            bot.set_last_seen(1, "-6 minutes");
            let (answered, wrote) = bot.writes(bot.say(1, "hello")).await;
            assert_eq!((answered, wrote), (Answer::Nothing, true));
            assert!(bot.last_seen_is_fresh(1));
            let (_, wrote) = bot.writes(bot.say(1, "hello again")).await;
            assert!(!wrote, "written a moment ago");

            // Another language is written at once.
            let mut german = incoming(next_update(), ChatKind::Private, 1, "hallo");
            german.user.language_code = Some("de".into());
            let before = bot.data_version();
            answer(&bot.store, &bot.admins, ME, german).await.unwrap();
            assert_ne!(bot.data_version(), before);
            assert!(reply(&bot.say(1, "/me").await).contains("Language: en"));
            bot.set_last_seen(1, "-1 minute");
            let mut silent = incoming(next_update(), ChatKind::Private, 1, "/me");
            silent.user.language_code = None;
            let me = answer(&bot.store, &bot.admins, ME, silent).await.unwrap();
            assert!(reply(&me).contains("Language: en"), "none sent: kept");
            // A command is logged even when last-seen is not due.
            assert_eq!(bot.logged(), ["start", "me", "me"]);
            bot.close().await;
        }

        #[tokio::test]
        async fn a_failed_best_effort_write_still_answers() {
            let bot = Bot::new("locked");
            bot.say(1, "/start").await;
            bot.set_last_seen(1, "-1 hour");
            let holder = bot.db.conn();
            holder.execute_batch("BEGIN IMMEDIATE").unwrap();

            let started = Instant::now();
            assert!(reply(&bot.say(1, "/help").await).starts_with("Commands:"));
            assert!(reply(&bot.say(1, "/nope").await).starts_with("I don't know /nope"));
            let me = bot.say(1, "/me").await;
            assert!(
                reply(&me).contains("Telegram id: 1\n"),
                "read beside the lock"
            );
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "best-effort writes give up quickly: {:?}",
                started.elapsed()
            );
            holder.execute_batch("ROLLBACK").unwrap();
            assert_eq!(bot.logged(), ["start"], "nothing was written");

            // /start must write: its failure is an error (the caller apologises).
            bot.watcher
                .execute_batch(
                    "CREATE TRIGGER full BEFORE INSERT ON command_log
                     BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
                )
                .unwrap();
            assert!(reply(&bot.say(1, "/help").await).starts_with("Commands:"));
            let message = incoming(next_update(), ChatKind::Private, 1, "/start");
            let error = answer(&bot.store, &bot.admins, ME, message)
                .await
                .unwrap_err();
            assert!(format!("{error:#}").contains("disk is full"), "{error:#}");
            bot.close().await;
        }

        #[tokio::test]
        async fn stats_answers_within_telegrams_limit() {
            let bot = Bot::new("stats");
            bot.say(1000, "/start").await;
            for i in 0..150 {
                bot.say(1000, &format!("/{i:x<32}")).await;
            }
            let stats = bot.say(1000, "/stats").await;
            let text = reply(&stats);
            assert!(text.len() <= MAX_MESSAGE_LENGTH, "{text}");
            assert!(text.starts_with("Users: 1\n"), "{text}");
            // /start, the 150 and this /stats: each once, named in the order of their names.
            assert!(text.contains(" UTC: 152 (/0xxx"), "{text}");
            assert!(text.ends_with(", others 142)"), "{text}");
            assert_eq!(
                reply(&bot.say(1, "/stats").await),
                STATS_REFUSED,
                "not an admin"
            );
            bot.close().await;
        }
    }
}
