//! Sending answers: within Telegram's published limits (about 30 messages a second overall, one
//! a second per chat, 20 a minute per group), each chat waiting only for itself; retried only
//! when Telegram surely did not deliver; a group that became a supergroup gets the answer at its
//! new id.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use teloxide::prelude::*;

use crate::failures::{Failure, backoff, describe};

/// Tries of one sendMessage before the answer is dropped (and logged).
pub const SEND_ATTEMPTS: u32 = 5;

/// Telegram's published limits for a bot's outgoing messages (core.telegram.org/bots/faq).
struct OutgoingLimits {
    per_private_chat: DefaultKeyedRateLimiter<i64>,
    per_group: DefaultKeyedRateLimiter<i64>,
    overall: DefaultDirectRateLimiter,
}

/// One message per `period`, evenly spaced: no burst, so that no window of Telegram's (a
/// second, a minute) ever sees more than its limit.
fn one_per(period: Duration) -> Quota {
    Quota::with_period(period)
        .expect("a period above zero")
        .allow_burst(NonZeroU32::MIN)
}

impl OutgoingLimits {
    fn telegram() -> OutgoingLimits {
        OutgoingLimits {
            // 10% under Telegram's numbers: the time from here to Telegram varies by request.
            per_private_chat: RateLimiter::keyed(one_per(Duration::from_millis(1100))),
            per_group: RateLimiter::keyed(one_per(Duration::from_millis(3300))),
            overall: RateLimiter::direct(one_per(Duration::from_micros(36_700))),
        }
    }

    /// Waits until `chat` may get a message: the overall limit first, then the chat's own,
    /// nearest to the request, so that a wait for the overall one cannot bunch two messages to
    /// one chat.
    async fn wait_for(&self, chat: ChatId) {
        self.overall.until_ready().await;
        if chat.is_group() || chat.is_channel_or_supergroup() {
            self.per_group.until_key_ready(&chat.0).await;
        } else {
            self.per_private_chat.until_key_ready(&chat.0).await;
        }
    }

    /// Forgets chats that have not been written to lately, so memory does not grow per chat.
    fn forget_idle_chats(&self) {
        self.per_private_chat.retain_recent();
        self.per_group.retain_recent();
    }
}

/// Sends the bot's answers.
pub struct Outbox {
    bot: Bot,
    token: String,
    limits: Option<OutgoingLimits>,
}

impl Outbox {
    /// An outbox for `bot`; `limited` applies Telegram's limits (off only against a stand-in
    /// that has none, for benchmarks and fast tests).
    pub fn new(bot: Bot, token: String, limited: bool) -> Outbox {
        Outbox {
            bot,
            token,
            limits: limited.then(OutgoingLimits::telegram),
        }
    }

    /// Forgets the rate-limit state of idle chats (call now and then).
    pub fn tidy(&self) {
        if let Some(limits) = &self.limits {
            limits.forget_idle_chats();
        }
    }

    /// Sends `text` to `chat`: waits for the limits, retries what Telegram surely did not do
    /// (429 after `retry_after`, 5xx and refused connections after a backoff) up to
    /// [`SEND_ATTEMPTS`] tries, follows a group's move to a supergroup once, and drops (with a
    /// log line) what was refused or may already have been delivered.
    pub async fn send(&self, mut chat: ChatId, text: &str) {
        let mut failures = 0;
        let mut moved = false;
        loop {
            if let Some(limits) = &self.limits {
                limits.wait_for(chat).await;
            }
            let started = Instant::now();
            let error = match self.bot.send_message(chat, text).await {
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
    fn each_chat_has_its_own_limit_under_an_overall_one() {
        let limits = OutgoingLimits::telegram();
        assert!(limits.per_private_chat.check_key(&1).is_ok());
        assert!(
            limits.per_private_chat.check_key(&1).is_err(),
            "a second message to a private chat within a second waits"
        );
        assert!(
            limits.per_private_chat.check_key(&2).is_ok(),
            "another chat does not wait for it"
        );
        assert!(limits.per_group.check_key(&-100).is_ok());
        assert!(
            limits.per_group.check_key(&-100).is_err(),
            "a group's messages are spread over its minute (20 at most)"
        );
        assert!(limits.overall.check().is_ok());
        assert!(
            limits.overall.check().is_err(),
            "messages are spread over the second (30 at most)"
        );
    }
}
