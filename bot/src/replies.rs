//! Sending answers: within Telegram's published limits (about 30 messages a second overall, one
//! a second per chat, 20 a minute per group), each chat waiting only for itself; retried only
//! when Telegram surely did not deliver; a group that became a supergroup gets the answer at its
//! new id.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use teloxide::prelude::*;

use crate::failures::{Failure, backoff, describe};

/// Tries of one sendMessage before the answer is dropped (and logged).
pub const SEND_ATTEMPTS: u32 = 5;

/// The spacing of one chat's messages, 10% over Telegram's (one a second in a private chat, 20
/// a minute in a group): the time from here to Telegram varies by request.
const PRIVATE_CHAT_SPACING: Duration = Duration::from_millis(1100);
/// See [`PRIVATE_CHAT_SPACING`].
const GROUP_SPACING: Duration = Duration::from_millis(3300);
/// The spacing of all messages, 10% over Telegram's 30 a second.
const OVERALL_SPACING: Duration = Duration::from_micros(36_700);

/// When a chat's worker last sent, so that its next message keeps the chat's spacing. Measured
/// from the moment of sending, not of queueing: a wait for the overall limit in between can
/// only widen the gap, never bunch two messages to one chat.
#[derive(Debug, Default)]
pub struct Pace {
    last_sent: Option<Instant>,
}

impl Pace {
    /// How long `chat` must still wait at `now`.
    fn wait(&self, chat: ChatId, now: Instant) -> Duration {
        let spacing = if chat.is_group() || chat.is_channel_or_supergroup() {
            GROUP_SPACING
        } else {
            PRIVATE_CHAT_SPACING
        };
        self.last_sent.map_or(Duration::ZERO, |last| {
            (last + spacing).saturating_duration_since(now)
        })
    }
}

/// Telegram's overall limit: one message per [`OVERALL_SPACING`], evenly spaced (no burst), so
/// that no second ever sees more than 30; taken right before each request.
fn overall_limit() -> DefaultDirectRateLimiter {
    RateLimiter::direct(
        Quota::with_period(OVERALL_SPACING)
            .expect("a period above zero")
            .allow_burst(NonZeroU32::MIN),
    )
}

/// Sends the bot's answers.
pub struct Outbox {
    bot: Bot,
    token: String,
    overall: Option<DefaultDirectRateLimiter>,
}

impl Outbox {
    /// An outbox for `bot`; `limited` applies Telegram's limits (off only against a stand-in
    /// that has none, for benchmarks and fast tests).
    pub fn new(bot: Bot, token: String, limited: bool) -> Outbox {
        Outbox {
            bot,
            token,
            overall: limited.then(overall_limit),
        }
    }

    /// Waits until `chat` may get its next message. A worker calls it before it handles the
    /// message, so that its effects are committed just before the answer goes out: a crash
    /// while a chat waits for its turn leaves the message unhandled, to be delivered again.
    pub async fn wait_turn(&self, chat: ChatId, pace: &Pace) {
        if self.overall.is_some() {
            tokio::time::sleep(pace.wait(chat, Instant::now())).await;
        }
    }

    /// Sends `text` to `chat`: waits for the limits, retries what Telegram surely did not do
    /// (429 after `retry_after`, 5xx and refused connections after a backoff) up to
    /// [`SEND_ATTEMPTS`] tries, follows a group's move to a supergroup once, and drops (with a
    /// log line) what was refused or may already have been delivered. `requesting` is told
    /// true while a request is out (the answer may be delivered if the send is cut off then),
    /// false while it waits.
    pub async fn send(
        &self,
        mut chat: ChatId,
        text: &str,
        pace: &mut Pace,
        requesting: impl Fn(bool),
    ) {
        let mut failures = 0;
        let mut moved = false;
        loop {
            if let Some(overall) = &self.overall {
                tokio::time::sleep(pace.wait(chat, Instant::now())).await;
                overall.until_ready().await;
                pace.last_sent = Some(Instant::now());
            }
            let started = Instant::now();
            requesting(true);
            let sent = self.bot.send_message(chat, text).await;
            requesting(false);
            let error = match sent {
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
            let failure = Failure::of(&error);
            if let Failure::MovedTo(new_chat) = failure
                && !moved
            {
                tracing::info!(
                    "chat {chat} became supergroup {new_chat}: sending the answer there"
                );
                chat = new_chat;
                moved = true;
                continue;
            }
            failures += 1;
            let wait = match failure {
                _ if failures >= SEND_ATTEMPTS => None,
                Failure::RetryAfter(wait) => {
                    tracing::warn!(
                        "sendMessage to chat {chat}: Telegram asks to wait {}s (429 Too Many Requests); waiting, then attempt {} of {SEND_ATTEMPTS}",
                        wait.as_secs(),
                        failures + 1
                    );
                    Some(wait)
                }
                Failure::NotDone | Failure::Unreached => {
                    let wait = backoff(failures, started.elapsed());
                    tracing::warn!(
                        "sendMessage to chat {chat} failed (attempt {failures} of {SEND_ATTEMPTS}), retrying in {:.1}s: {}",
                        wait.as_secs_f32(),
                        describe(&error, &self.token)
                    );
                    Some(wait)
                }
                _ => None,
            };
            let Some(wait) = wait else {
                let why = match failure {
                    Failure::Unknown => {
                        "it may have been delivered, so it is not sent again".to_owned()
                    }
                    _ if failure.safe_to_retry() => format!("after {failures} attempts"),
                    _ => "Telegram refused it".to_owned(),
                };
                tracing::warn!(
                    "sendMessage to chat {chat} failed, answer dropped ({why}): {}",
                    describe(&error, &self.token)
                );
                return;
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Telegram's limit on a message's length, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4096;

/// `text` cut to Telegram's limit (with an ellipsis), so that an answer is never refused for
/// its length.
pub fn fit(text: String) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_answers_are_cut_to_telegrams_limit() {
        assert_eq!(fit("short".into()), "short");
        let exact = "é".repeat(MAX_MESSAGE_CHARS);
        assert_eq!(fit(exact.clone()), exact);
        let long = fit("x".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn each_chat_keeps_its_spacing_from_its_last_message_under_an_overall_limit() {
        let now = Instant::now();
        let fresh = Pace::default();
        assert_eq!(
            fresh.wait(ChatId(1), now),
            Duration::ZERO,
            "a first message goes at once"
        );
        let sent = Pace {
            last_sent: Some(now),
        };
        assert_eq!(sent.wait(ChatId(1), now), PRIVATE_CHAT_SPACING);
        assert_eq!(
            sent.wait(ChatId(1), now + Duration::from_millis(600)),
            Duration::from_millis(500)
        );
        assert_eq!(
            sent.wait(ChatId(1), now + Duration::from_secs(2)),
            Duration::ZERO
        );
        assert_eq!(
            sent.wait(ChatId(-100), now),
            GROUP_SPACING,
            "a group: 20 a minute"
        );
        assert_eq!(
            sent.wait(ChatId(-1_000_000_000_100), now),
            GROUP_SPACING,
            "a supergroup too"
        );
        let overall = overall_limit();
        assert!(overall.check().is_ok());
        assert!(
            overall.check().is_err(),
            "messages are spread over the second (30 at most)"
        );
    }
}
