//! `bot run`: the long-polling loop. It is our own loop around teloxide's requests, so that it
//! can beat a heartbeat per poll, stop at once on SIGTERM, and tell a rejected token from an
//! outage.

use std::time::Duration;

use anyhow::Context;
use teloxide::prelude::*;
use teloxide::types::{AllowedUpdate, BotCommand, UpdateKind};
use teloxide::{ApiError, RequestError};
use tokio::signal::unix::{SignalKind, signal};

use crate::commands::{self, COMMANDS};
use crate::config::{Config, Telegram, redact};
use crate::health;
use crate::store::{Store, UserFacts};

/// Seconds a `getUpdates` long poll may be held by Telegram.
const POLL_TIMEOUT_SECS: u32 = 10;
/// The longest pause between retries after network errors or 5xx.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a failed request means for the loop.
enum Failure {
    /// The token was rejected: retrying cannot help.
    Fatal(anyhow::Error),
    /// Wait this long, then retry.
    Retry(Duration),
}

fn classify(error: &RequestError, token: &str, backoff: &mut Duration) -> Failure {
    match error {
        RequestError::Api(ApiError::InvalidToken) => Failure::Fatal(anyhow::anyhow!(
            "Telegram rejected BOT_TOKEN (401 Unauthorized): the token is wrong or was revoked; put the token @BotFather gave you in .env"
        )),
        RequestError::RetryAfter(seconds) => {
            tracing::warn!(
                "Telegram asks to wait {}s (429 Too Many Requests)",
                seconds.seconds()
            );
            Failure::Retry(seconds.duration())
        }
        other => {
            let wait = *backoff;
            *backoff = (*backoff * 2).min(MAX_BACKOFF);
            tracing::warn!(
                "request failed, retrying in {}s: {}",
                wait.as_secs(),
                redact(&other.to_string(), token)
            );
            Failure::Retry(wait)
        }
    }
}

/// Runs the bot until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    health::clear(&config.heartbeat_path);
    let telegram = Telegram::from_env()?;
    let store = Store::open(&config.database_path)?;
    let token = telegram.token.clone();
    let mut bot = Bot::new(&telegram.token);
    if let Some(url) = telegram.api_url {
        bot = bot.set_api_url(url);
    }

    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    };
    tokio::pin!(shutdown);

    let mut backoff = Duration::from_secs(1);
    let me = loop {
        tokio::select! {
            signal = &mut shutdown => {
                tracing::info!("{signal}: stopping before the first poll");
                return Ok(());
            }
            result = bot.get_me() => match result {
                Ok(me) => break me,
                Err(error) => match classify(&error, &token, &mut backoff) {
                    Failure::Fatal(error) => return Err(error),
                    Failure::Retry(wait) => tokio::time::sleep(wait).await,
                },
            },
        }
    };
    let username = me.username.clone().unwrap_or_default();
    tracing::info!("connected to the Bot API as @{username}");
    if let Err(e) = bot.delete_webhook().await {
        tracing::warn!("deleteWebhook failed: {}", redact(&e.to_string(), &token));
    }
    let published: Vec<BotCommand> = COMMANDS
        .iter()
        .map(|(name, description)| BotCommand::new(*name, *description))
        .collect();
    if let Err(e) = bot.set_my_commands(published).await {
        tracing::warn!("setMyCommands failed: {}", redact(&e.to_string(), &token));
    }

    let mut offset: i32 = 0;
    backoff = Duration::from_secs(1);
    health::beat(&config.heartbeat_path);
    loop {
        let poll = bot
            .get_updates()
            .offset(offset)
            .timeout(POLL_TIMEOUT_SECS)
            .allowed_updates(vec![AllowedUpdate::Message]);
        let result = tokio::select! {
            signal = &mut shutdown => {
                tracing::info!("{signal}: stopping; the long poll in flight is abandoned");
                break;
            }
            result = poll.send() => result,
        };
        health::beat(&config.heartbeat_path);
        match result {
            Ok(updates) => {
                backoff = Duration::from_secs(1);
                for update in updates {
                    offset = offset.max(update.id.0 as i32 + 1);
                    if let UpdateKind::Message(message) = update.kind {
                        handle_message(&bot, &store, &token, message).await;
                    }
                }
            }
            Err(error) => match classify(&error, &token, &mut backoff) {
                Failure::Fatal(error) => return Err(error),
                Failure::Retry(wait) => {
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            },
        }
    }
    drop(store);
    tracing::info!("stopped");
    Ok(())
}

async fn handle_message(bot: &Bot, store: &Store, token: &str, message: Message) {
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
    match commands::answer(store, user, text).await {
        Ok(Some(reply)) => {
            if let Err(e) = bot.send_message(message.chat.id, reply).await {
                tracing::warn!(
                    "sendMessage to chat {} failed: {}",
                    message.chat.id,
                    redact(&e.to_string(), token)
                );
            }
        }
        Ok(None) => {}
        Err(e) => tracing::error!("message from user {} not handled: {e:#}", from.id),
    }
}
