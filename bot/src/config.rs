//! Configuration from the environment, and keeping the token out of every output.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// Where the database lives when `DATABASE_PATH` is not set.
pub const DEFAULT_DATABASE_PATH: &str = "/data/bot_database.db";
/// Where the polling loop leaves its heartbeat when `HEARTBEAT_PATH` is not set.
pub const DEFAULT_HEARTBEAT_PATH: &str = "/tmp/bot-heartbeat";

/// The bot's settings.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_PATH`.
    pub database_path: PathBuf,
    /// `HEARTBEAT_PATH`: a file the polling loop touches after every poll.
    pub heartbeat_path: PathBuf,
    /// `BOT_SCHEMA_WAIT_SECS`: how long `bot run` waits at start for a deploy to finish
    /// migrating a database that is behind (0: refuse at once); past it, it keeps waiting while
    /// the migration announces that it runs (a fresh `<database>.migrating`).
    pub schema_wait: std::time::Duration,
}

impl Config {
    /// Reads the settings every command needs.
    pub fn from_env() -> Config {
        let var = |name: &str, default: &str| {
            PathBuf::from(
                std::env::var(name)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| default.into()),
            )
        };
        Config {
            database_path: var("DATABASE_PATH", DEFAULT_DATABASE_PATH),
            heartbeat_path: var("HEARTBEAT_PATH", DEFAULT_HEARTBEAT_PATH),
            schema_wait: std::time::Duration::from_secs(
                std::env::var("BOT_SCHEMA_WAIT_SECS")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0),
            ),
        }
    }
}

/// What `bot run` needs on top of [`Config`].
pub struct Telegram {
    /// `BOT_TOKEN`.
    pub token: String,
    /// `TELEGRAM_API_URL`, or Telegram's own.
    pub api_url: Option<reqwest::Url>,
    /// `BOT_RATE_LIMITS`: `telegram` (the default) keeps outgoing messages within Telegram's
    /// published limits; `off` only for a stand-in without limits (benchmarks, fast tests).
    pub outgoing_limits: bool,
    /// `BOT_USER_MESSAGES_PER_MINUTE` (default 20; 0: no limit): messages of one user answered
    /// within any 60 s; the rest are ignored.
    pub user_messages_per_minute: u32,
    /// `BOT_STOP_GRACE_SECS` (default 4): how long a stopping bot lets the chats finish the
    /// messages they have. A write already waiting for another process's lock may take its
    /// 5 s busy timeout on top, and the whole stop must stay inside Compose's 10 s.
    pub stop_grace: std::time::Duration,
    /// `COMMAND_LOG_DAYS` (default 90; 0: for ever): how long the command log is kept.
    pub command_log_days: u32,
    /// `BOT_TAKE_OVER_DATABASE=1`: a database that served another bot is moved to this one
    /// (once, on purpose: the other bot's handled update ids are forgotten).
    pub take_over_database: bool,
}

impl Telegram {
    /// Reads `BOT_TOKEN` and `TELEGRAM_API_URL`.
    pub fn from_env() -> anyhow::Result<Telegram> {
        let token = std::env::var("BOT_TOKEN").unwrap_or_default();
        let token = token.trim().to_owned();
        if token.is_empty() {
            bail!(
                "BOT_TOKEN is not set: put the token @BotFather gave you in .env (see .env.example)"
            );
        }
        if !looks_like_token(&token) {
            bail!(
                "BOT_TOKEN does not look like a bot token (expected <digits>:<letters>, as @BotFather gives it); check .env"
            );
        }
        let api_url = match std::env::var("TELEGRAM_API_URL")
            .ok()
            .filter(|v| !v.is_empty())
        {
            None => None,
            Some(url) => Some(url.parse().with_context(|| {
                format!("TELEGRAM_API_URL={url} is not a URL; use e.g. https://api.telegram.org")
            })?),
        };
        let outgoing_limits = match std::env::var("BOT_RATE_LIMITS").unwrap_or_default().trim() {
            "" | "telegram" => true,
            "off" => false,
            other => bail!(
                "BOT_RATE_LIMITS={other:?} is not known: use `telegram` (the default) or `off` (only against a stand-in without limits)"
            ),
        };
        Ok(Telegram {
            token,
            api_url,
            outgoing_limits,
            user_messages_per_minute: number("BOT_USER_MESSAGES_PER_MINUTE", 20)?,
            stop_grace: std::time::Duration::from_secs(number("BOT_STOP_GRACE_SECS", 4)?.into()),
            command_log_days: crate::retention::command_log_days_from_env()?,
            take_over_database: match std::env::var("BOT_TAKE_OVER_DATABASE")
                .unwrap_or_default()
                .trim()
            {
                "" | "0" => false,
                "1" => true,
                other => bail!(
                    "BOT_TAKE_OVER_DATABASE={other:?} is not known: use 1 (move a database that served another bot to this one) or leave it unset"
                ),
            },
        })
    }
}

/// The whole number in the environment variable `name`, or `default` when it is unset or empty.
fn number(name: &str, default: u32) -> anyhow::Result<u32> {
    match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(value) => value.trim().parse().with_context(|| {
            format!("{name}={value:?} is not a whole number (default {default}); fix it in .env")
        }),
    }
}

/// The Telegram user ids named in `ADMIN_IDS`: they may use /stats, as may users whose row has
/// `is_admin = 1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminIds(BTreeSet<i64>);

impl AdminIds {
    /// Reads `ADMIN_IDS`; unset or empty means no admins by id.
    pub fn from_env() -> anyhow::Result<AdminIds> {
        AdminIds::parse(&std::env::var("ADMIN_IDS").unwrap_or_default())
    }

    /// Parses a comma-separated list of Telegram user ids; blanks around ids and empty entries
    /// are ignored, so `"1, 2,"` is fine.
    pub fn parse(list: &str) -> anyhow::Result<AdminIds> {
        let mut ids = BTreeSet::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let id: i64 = entry.parse().ok().filter(|id| *id > 0).with_context(|| {
                format!(
                    "ADMIN_IDS: {entry:?} is not a Telegram user id; give positive numbers separated by commas, e.g. ADMIN_IDS=12345678,87654321 (a user sees theirs in /me)"
                )
            })?;
            ids.insert(id);
        }
        Ok(AdminIds(ids))
    }

    /// Whether `telegram_id` is listed.
    pub fn contains(&self, telegram_id: i64) -> bool {
        self.0.contains(&telegram_id)
    }

    /// How many ids are listed.
    pub fn count(&self) -> usize {
        self.0.len()
    }
}

fn looks_like_token(token: &str) -> bool {
    token.split_once(':').is_some_and(|(id, secret)| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && !secret.is_empty()
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// Replaces the token, and anything shaped like a token in a Bot API URL, with `<BOT_TOKEN>`:
/// reqwest puts the request URL, token included, into its errors.
pub fn redact(text: &str, token: &str) -> String {
    let mut text = if token.is_empty() {
        text.to_owned()
    } else {
        text.replace(token, "<BOT_TOKEN>")
    };
    let mut from = 0;
    while let Some(at) = text[from..].find("/bot").map(|i| i + from) {
        let start = at + 4;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == ':' || c == '_' || c == '-'))
            .map_or(text.len(), |i| i + start);
        if looks_like_token(&text[start..end]) {
            text.replace_range(start..end, "<BOT_TOKEN>");
        }
        from = start;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_redacted_even_inside_a_url() {
        let token = "123456:AAH-secret_value";
        let error = format!(
            "error sending request for url (http://api/bot{token}/GetUpdates): timed out {token}"
        );
        let shown = redact(&error, token);
        assert!(!shown.contains("AAH-secret_value"), "{shown}");
        assert_eq!(
            shown,
            "error sending request for url (http://api/bot<BOT_TOKEN>/GetUpdates): timed out <BOT_TOKEN>"
        );
        let other = redact(
            "GET https://api.telegram.org/bot999:OTHER-token/getMe",
            token,
        );
        assert_eq!(other, "GET https://api.telegram.org/bot<BOT_TOKEN>/getMe");
        assert_eq!(redact("/botany is fine", token), "/botany is fine");
    }

    #[test]
    fn admin_ids_are_a_comma_separated_list_of_user_ids() {
        let admins = AdminIds::parse(" 42, 7,,1000000000000 ,").unwrap();
        assert!(admins.contains(42) && admins.contains(7) && admins.contains(1_000_000_000_000));
        assert!(!admins.contains(43));
        assert_eq!(admins.count(), 3);
        assert_eq!(AdminIds::parse("").unwrap(), AdminIds::default());
        assert_eq!(AdminIds::parse(" , ").unwrap().count(), 0);
        assert_eq!(AdminIds::parse("42,42").unwrap().count(), 1);
    }

    #[test]
    fn a_malformed_admin_id_is_refused_with_the_entry_named() {
        for bad in ["42;7", "@ann", "-5", "0", "42 7"] {
            let error = format!("{:#}", AdminIds::parse(bad).unwrap_err());
            assert!(
                error.contains("ADMIN_IDS") && error.contains("e.g."),
                "{error}"
            );
        }
        let error = format!("{:#}", AdminIds::parse("1,two,3").unwrap_err());
        assert!(error.contains("\"two\""), "{error}");
    }

    #[test]
    fn token_shape() {
        assert!(looks_like_token("123:abc-DEF_9"));
        assert!(!looks_like_token("abc:def"));
        assert!(!looks_like_token("123:"));
        assert!(!looks_like_token("123 abc"));
    }
}
