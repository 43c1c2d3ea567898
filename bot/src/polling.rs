//! `bot run`: the long-polling loop. It is our own loop around teloxide's requests, so that it
//! can beat a heartbeat per poll, stop at once on SIGTERM, tell a rejected token from an outage,
//! and retry what Telegram asks to retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use teloxide::prelude::*;
use teloxide::types::{AllowedUpdate, BotCommand, UpdateKind};
use teloxide::{ApiError, RequestError};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::commands::{self, COMMANDS};
use crate::config::{AdminIds, Config, Telegram, redact};
use crate::health;
use crate::migrating;
use crate::store::{Store, UserFacts};

/// Seconds a `getUpdates` long poll may be held by Telegram (inside teloxide's 17 s timeout).
const POLL_TIMEOUT_SECS: u32 = 10;
/// The pause after the first failure in a row; it doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between retries after network errors or 5xx.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Tries of one sendMessage before the answer is dropped (and logged).
const SEND_ATTEMPTS: u32 = 5;
/// Chats answered at once. Each chat's messages stay in order; the database serialises the
/// writes anyway, so this only overlaps the round trips to Telegram.
const CHATS_AT_ONCE: usize = 8;
/// The answer when the database fails under a message, so the user is not left waiting.
const SORRY: &str = "Sorry, something went wrong on my side. Please try again in a minute.";

/// What a failed request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// 401: the token is wrong or revoked; retrying cannot help.
    TokenRejected,
    /// 429: Telegram says how long to wait.
    RetryAfter(Duration),
    /// Network errors, timeouts, 5xx (teloxide reports those as unknown API errors or as a body
    /// that is not JSON): worth retrying after a backoff.
    Transient,
    /// Telegram refused this request (e.g. the user blocked the bot): the same request will
    /// fail again.
    Refused,
}

impl Failure {
    fn of(error: &RequestError) -> Failure {
        match error {
            RequestError::Api(ApiError::InvalidToken) => Failure::TokenRejected,
            RequestError::RetryAfter(seconds) => Failure::RetryAfter(seconds.duration()),
            RequestError::Network(_)
            | RequestError::Io(_)
            | RequestError::InvalidJson { .. }
            | RequestError::Api(ApiError::Unknown(_)) => Failure::Transient,
            RequestError::Api(_) | RequestError::MigrateToChatId(_) => Failure::Refused,
        }
    }
}

/// The pause before the next try after `failures` failures in a row (1 s, 2 s, 4 s, ... 10 s),
/// counted from when the failed request started: teloxide itself sleeps 10 s inside a request
/// that got a 5xx, and that sleep is part of the pause, not added to it.
fn backoff(failures: u32, request_took: Duration) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF).saturating_sub(request_took)
}

/// The error that stops the bot when Telegram rejects the token.
fn token_rejected() -> anyhow::Error {
    anyhow::anyhow!(
        "Telegram rejected BOT_TOKEN (401 Unauthorized): the token is wrong or was revoked; put the token @BotFather gave you in .env and restart"
    )
}

/// Everything the loop and the message handlers share.
struct Shared {
    bot: Bot,
    store: Store,
    admins: AdminIds,
    token: String,
    heartbeat: std::path::PathBuf,
}

impl Shared {
    /// The error and its causes, token removed: "A network error: error sending request"
    /// alone does not say whether the connection was refused, reset or timed out.
    fn redact(&self, error: &dyn std::error::Error) -> String {
        redact(&describe(error), &self.token)
    }
}

/// An error and its chain of sources, joined with ": ", skipping a source whose text its
/// parent already shows.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Retries of one request kind (getMe, getUpdates): counts failures in a row and says so in the
/// log, once per failure and once when it works again.
struct Retries {
    method: &'static str,
    failures: u32,
}

impl Retries {
    fn new(method: &'static str) -> Retries {
        Retries {
            method,
            failures: 0,
        }
    }

    /// How long to wait before retrying, or the error that stops the bot.
    fn after_failure(
        &mut self,
        shared: &Shared,
        error: &RequestError,
        took: Duration,
    ) -> anyhow::Result<Duration> {
        self.failures += 1;
        let method = self.method;
        let failures = self.failures;
        let wait = match Failure::of(error) {
            Failure::TokenRejected => return Err(token_rejected()),
            Failure::RetryAfter(wait) => {
                tracing::warn!(
                    "{method}: Telegram asks to wait {}s (429 Too Many Requests); waiting, the bot keeps running",
                    wait.as_secs()
                );
                return Ok(wait);
            }
            Failure::Transient | Failure::Refused => backoff(failures, took),
        };
        tracing::warn!(
            "{method} failed ({failures} in a row), retrying in {:.1}s; the bot keeps running: {}",
            wait.as_secs_f32(),
            shared.redact(error)
        );
        Ok(wait)
    }

    fn after_success(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                "{} works again after {} failed attempts",
                self.method,
                self.failures
            );
            self.failures = 0;
        }
    }
}

/// Runs the bot until SIGTERM or SIGINT (then exits Ok), or until Telegram rejects the token.
pub async fn run(config: Config) -> anyhow::Result<()> {
    health::clear(&config.heartbeat_path);
    let telegram = Telegram::from_env()?;
    let admins = AdminIds::from_env()?;
    let mut shutdown = Box::pin(shutdown_signal()?);
    if !config.schema_wait.is_zero() {
        tokio::select! {
            signal = &mut shutdown => {
                tracing::info!("{signal}: stopping while waiting for the database");
                return Ok(());
            }
            () = wait_for_schema(&config.database_path, config.schema_wait) => {}
        }
    }
    let store = Store::open(&config.database_path)?;
    let mut bot = Bot::new(&telegram.token);
    if let Some(url) = telegram.api_url {
        bot = bot.set_api_url(url);
    }
    if admins.count() > 0 {
        tracing::info!("ADMIN_IDS names {} admin(s)", admins.count());
    }
    let shared = Arc::new(Shared {
        bot,
        store: store.clone(),
        admins,
        token: telegram.token,
        heartbeat: config.heartbeat_path.clone(),
    });

    // Dropping `serve` on a signal abandons whatever it awaits: the long poll, a retry pause,
    // the handlers of a batch. A batch cut short is delivered again on the next start, since
    // its offset was not confirmed.
    let outcome = tokio::select! {
        signal = &mut shutdown => {
            tracing::info!("{signal}: stopping; the request in flight is abandoned");
            Ok(())
        }
        fatal = serve(&shared) => fatal,
    };
    drop(shared);
    match store.close().await {
        Ok(()) => tracing::info!("database closed"),
        Err(e) => tracing::warn!("{e:#}"),
    }
    tracing::info!("stopped");
    outcome
}

/// Waits, up to `limit`, while the database is in a state a deploy's migration resolves
/// (behind, unstamped, empty): during a deploy the new bot starts while its migration runs.
/// Past `limit` it keeps waiting while the migration announces that it still runs (its
/// `<database>.migrating` is fresh): a large database may take longer to migrate than any fixed
/// wait. It only reads; `Store::open` then refuses whatever is still not current.
async fn wait_for_schema(path: &std::path::Path, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut told = false;
    let mut told_running = false;
    loop {
        let reading = path.to_owned();
        let (state, running) = tokio::task::spawn_blocking(move || {
            let state = migrations::Database::open_read_only(&reading)
                .ok()
                .flatten()
                .and_then(|db| db.status().ok())
                .map(|status| status.state);
            (state, migrating::running(&reading))
        })
        .await
        .unwrap_or((None, None));
        let waitable = matches!(
            state,
            None | Some(
                migrations::State::Behind
                    | migrations::State::Unstamped
                    | migrations::State::Foreign
                    | migrations::State::Empty
            )
        );
        if !waitable {
            return;
        }
        let state = state.map_or("missing", |s| s.name());
        if tokio::time::Instant::now() >= deadline {
            let Some(age) = running else {
                if told_running {
                    tracing::warn!(
                        "the migration stopped announcing itself ({} not rewritten for {}s) and the database is still {state}",
                        migrating::path_for(path).display(),
                        migrating::FRESH_FOR.as_secs()
                    );
                }
                return;
            };
            if !told_running {
                tracing::info!(
                    "the database is still {state} after {}s, but its migration is running (rewrote its announcement {:.1}s ago): waiting until it ends",
                    limit.as_secs(),
                    age.as_secs_f32()
                );
                told_running = true;
            }
        }
        if !told {
            tracing::info!(
                "the database is {state}: waiting up to {}s for the deploy to migrate it, longer while its migration runs",
                limit.as_secs()
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Resolves with the signal's name on SIGTERM (`docker stop`) or SIGINT (Ctrl-C).
fn shutdown_signal() -> anyhow::Result<impl Future<Output = &'static str>> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

/// Connects, then polls for ever; returns only when the bot must stop.
async fn serve(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let heartbeat = shared.heartbeat.as_path();
    // No heartbeat until Telegram has accepted the token: a bot that never got through is not
    // healthy yet, and a deploy waiting for health must not pass on a bad token.
    let mut retries = Retries::new("getMe");
    let me = loop {
        let started = Instant::now();
        match shared.bot.get_me().await {
            Ok(me) => break me,
            Err(error) => {
                let wait = retries.after_failure(shared, &error, started.elapsed())?;
                tokio::time::sleep(wait).await;
            }
        }
    };
    retries.after_success();
    let username = me.username.clone().unwrap_or_default();
    tracing::info!("connected to the Bot API as @{username}");
    if let Err(e) = shared.bot.delete_webhook().await {
        tracing::warn!("deleteWebhook failed: {}", shared.redact(&e));
    }
    let published: Vec<BotCommand> = COMMANDS
        .iter()
        .map(|(name, description)| BotCommand::new(*name, *description))
        .collect();
    if let Err(e) = shared.bot.set_my_commands(published).await {
        tracing::warn!(
            "setMyCommands failed (the command menu may be stale; the commands still work): {}",
            shared.redact(&e)
        );
    }

    let mut offset: i32 = 0;
    let mut retries = Retries::new("getUpdates");
    health::beat(heartbeat);
    loop {
        let poll = shared
            .bot
            .get_updates()
            .offset(offset)
            .timeout(POLL_TIMEOUT_SECS)
            .allowed_updates(vec![AllowedUpdate::Message]);
        let started = Instant::now();
        let result = health::while_waiting(heartbeat, poll.send()).await;
        health::beat(heartbeat);
        match result {
            Ok(updates) => {
                retries.after_success();
                let mut messages = Vec::with_capacity(updates.len());
                for update in updates {
                    offset = offset.max(update.id.0 as i32 + 1);
                    if let UpdateKind::Message(message) = update.kind {
                        messages.push(message);
                    }
                }
                if !messages.is_empty() {
                    health::while_waiting(heartbeat, handle_batch(shared, messages)).await;
                }
            }
            Err(error) => {
                let wait = retries.after_failure(shared, &error, started.elapsed())?;
                health::while_waiting(heartbeat, tokio::time::sleep(wait)).await;
            }
        }
    }
}

/// Answers one poll's messages: chats in parallel (at most [`CHATS_AT_ONCE`]), each chat's
/// messages in the order they came.
async fn handle_batch(shared: &Arc<Shared>, messages: Vec<Message>) {
    let mut chats: Vec<Vec<Message>> = Vec::new();
    let mut index: HashMap<ChatId, usize> = HashMap::new();
    for message in messages {
        let at = *index.entry(message.chat.id).or_insert_with(|| {
            chats.push(Vec::new());
            chats.len() - 1
        });
        chats[at].push(message);
    }
    let slots = Arc::new(Semaphore::new(CHATS_AT_ONCE));
    let mut handlers = JoinSet::new();
    for chat in chats {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let shared = Arc::clone(shared);
        handlers.spawn(async move {
            for message in chat {
                handle_message(&shared, message).await;
            }
            drop(slot);
        });
    }
    while let Some(done) = handlers.join_next().await {
        if let Err(e) = done {
            tracing::error!("a message handler failed: {e}");
        }
    }
}

async fn handle_message(shared: &Shared, message: Message) {
    let (Some(from), Some(text)) = (message.from.as_ref(), message.text()) else {
        return;
    };
    let user = UserFacts {
        telegram_id: from.id.0 as i64,
        username: from.username.clone(),
        first_name: from.first_name.clone(),
        last_name: from.last_name.clone(),
        language_code: from.language_code.clone(),
    };
    let reply = match commands::answer(&shared.store, &shared.admins, user, text).await {
        Ok(Some(reply)) => reply,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(
                "message {} from user {} not handled, answered with an apology: {}",
                message.id,
                from.id,
                redact(&format!("{e:#}"), &shared.token)
            );
            SORRY.to_owned()
        }
    };
    send_reply(shared, message.chat.id, reply).await;
}

/// Sends an answer, retrying 429s (after `retry_after`) and transient failures (after a
/// backoff), up to [`SEND_ATTEMPTS`] tries.
async fn send_reply(shared: &Shared, chat: ChatId, text: String) {
    let mut failures = 0;
    loop {
        let started = Instant::now();
        let error = match shared.bot.send_message(chat, text.clone()).await {
            Ok(_) => {
                if failures > 0 {
                    tracing::info!(
                        "sendMessage to chat {chat} went through after {failures} failed attempts"
                    );
                }
                return;
            }
            Err(error) => error,
        };
        failures += 1;
        let wait = match Failure::of(&error) {
            _ if failures >= SEND_ATTEMPTS => None,
            Failure::RetryAfter(wait) => {
                tracing::warn!(
                    "sendMessage to chat {chat}: Telegram asks to wait {}s (429 Too Many Requests); waiting, then attempt {} of {SEND_ATTEMPTS}",
                    wait.as_secs(),
                    failures + 1
                );
                Some(wait)
            }
            Failure::Transient => {
                let wait = backoff(failures, started.elapsed());
                tracing::warn!(
                    "sendMessage to chat {chat} failed (attempt {failures} of {SEND_ATTEMPTS}), retrying in {:.1}s: {}",
                    wait.as_secs_f32(),
                    shared.redact(&error)
                );
                Some(wait)
            }
            Failure::TokenRejected | Failure::Refused => None,
        };
        let Some(wait) = wait else {
            tracing::warn!(
                "sendMessage to chat {chat} failed, answer dropped after {failures} attempt(s): {}",
                shared.redact(&error)
            );
            return;
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use teloxide::types::Seconds;

    use super::*;

    fn not_json() -> RequestError {
        RequestError::InvalidJson {
            source: Arc::new(serde_json::from_str::<u8>("<html>").unwrap_err()),
            raw: "<html>502 Bad Gateway</html>".into(),
        }
    }

    #[test]
    fn failures_are_told_apart() {
        assert_eq!(
            Failure::of(&RequestError::Api(ApiError::InvalidToken)),
            Failure::TokenRejected
        );
        assert_eq!(
            Failure::of(&RequestError::RetryAfter(Seconds::from_seconds(2))),
            Failure::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(Failure::of(&not_json()), Failure::Transient);
        assert_eq!(
            Failure::of(&RequestError::Api(ApiError::Unknown("Bad Gateway".into()))),
            Failure::Transient
        );
        assert_eq!(
            Failure::of(&RequestError::Io(Arc::new(std::io::Error::other("reset")))),
            Failure::Transient
        );
        assert_eq!(
            Failure::of(&RequestError::Api(ApiError::BotBlocked)),
            Failure::Refused
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_counts_the_time_the_request_took() {
        let quick = Duration::ZERO;
        let waits: Vec<u64> = (1..=7).map(|n| backoff(n, quick).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10, 10]);
        assert_eq!(backoff(1000, quick), MAX_BACKOFF);
        // teloxide slept 10 s inside the request after a 5xx: no further pause.
        assert_eq!(backoff(5, Duration::from_secs(10)), Duration::ZERO);
        assert_eq!(
            backoff(3, Duration::from_millis(1500)),
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn an_error_is_described_with_its_causes_once() {
        let io = std::io::Error::other("connection reset by peer");
        let error = RequestError::Io(Arc::new(io));
        assert_eq!(
            describe(&error),
            "An I/O error: connection reset by peer",
            "the source already shown is not repeated"
        );
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            describe(&refused),
            "error sending request: connection refused"
        );
    }

    #[test]
    fn the_token_rejection_says_what_to_do() {
        let text = token_rejected().to_string();
        assert!(
            text.contains("rejected BOT_TOKEN") && text.contains(".env"),
            "{text}"
        );
    }
}
