//! Sending answers: within Telegram's published limits (about 30 messages a second overall, one
//! a second per chat, 20 a minute per group), each chat waiting only for itself; retried only
//! when Telegram surely did not deliver; a group that became a supergroup gets the answer at its
//! new id.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use teloxide::prelude::*;

use crate::config::redact;
use crate::failures::{Failure, RetryPolicy};

/// Tries of one sendMessage before the answer is dropped (and logged).
pub const SEND_ATTEMPTS: u32 = 5;

/// The spacing of one chat's messages, 10% over Telegram's (one a second in a private chat, 20
/// a minute in a group): the time from here to Telegram varies by request.
const PRIVATE_CHAT_SPACING: Duration = Duration::from_millis(1100);
/// See [`PRIVATE_CHAT_SPACING`].
const GROUP_SPACING: Duration = Duration::from_millis(3300);
/// How long a slot of the overall limit taken by [`Outbox::wait_turn`] stays good for the send.
const FRESH_SLOT: Duration = Duration::from_millis(50);
/// The spacing of all messages, 10% over Telegram's 30 a second.
const OVERALL_SPACING: Duration = Duration::from_micros(36_700);

/// When a chat's worker last sent, so that its next message keeps the chat's spacing. Measured
/// from the moment of sending, not of queueing: a wait for the overall limit in between can
/// only widen the gap, never bunch two messages to one chat.
#[derive(Debug, Default)]
pub struct Pace {
    last_sent: Option<Instant>,
    /// When [`Outbox::wait_turn`] took a slot of the overall limit for the next send.
    slot_taken: Option<Instant>,
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
    /// while a chat waits for its turn leaves the message unhandled, to be delivered again (or
    /// saved, see `pending_updates`). The turn includes the overall limit: under a burst the
    /// chats queue there, and a message handled first and sent later would be lost to a crash.
    pub async fn wait_turn(&self, chat: ChatId, pace: &mut Pace) {
        if let Some(overall) = &self.overall {
            tokio::time::sleep(pace.wait(chat, Instant::now())).await;
            overall.until_ready().await;
            pace.slot_taken = Some(Instant::now());
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
        requesting: &impl Fn(bool),
    ) -> Sent {
        let mut retries = RetryPolicy::reply(SEND_ATTEMPTS);
        let mut moved = false;
        loop {
            if let Some(overall) = &self.overall {
                // The slot the turn took, if it is fresh (a handling that waited long for the
                // database would otherwise bunch its send with later ones).
                let fresh = pace
                    .slot_taken
                    .take()
                    .is_some_and(|at| at.elapsed() < FRESH_SLOT);
                if !fresh {
                    tokio::time::sleep(pace.wait(chat, Instant::now())).await;
                    overall.until_ready().await;
                }
                pace.last_sent = Some(Instant::now());
            }
            let started = Instant::now();
            let (failure, error) = match self.send_once(chat, text, requesting).await {
                Ok(()) => {
                    let failures = retries.succeeded();
                    if failures > 0 {
                        tracing::info!(
                            "sendMessage to chat {chat} went through after {failures} failed attempts"
                        );
                    }
                    return Sent::Delivered;
                }
                Err(failed) => failed,
            };
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
            let wait = retries.after(failure, started.elapsed());
            let failures = retries.failures();
            match (wait, failure) {
                (Some(wait), Failure::RetryAfter(_)) => tracing::warn!(
                    "sendMessage to chat {chat}: Telegram asks to wait {}s (429 Too Many Requests); waiting, then attempt {} of {SEND_ATTEMPTS}",
                    wait.as_secs(),
                    failures + 1
                ),
                (Some(wait), _) => tracing::warn!(
                    "sendMessage to chat {chat} failed (attempt {failures} of {SEND_ATTEMPTS}), retrying in {:.1}s: {}",
                    wait.as_secs_f32(),
                    error
                ),
                (None, _) => {}
            }
            let Some(wait) = wait else {
                if failure.safe_to_retry() {
                    tracing::warn!(
                        "sendMessage to chat {chat} failed {failures} times, surely not delivered: the answer is kept and tried again in a moment: {error}"
                    );
                    return Sent::NotYet;
                }
                let why = match failure {
                    Failure::Unknown => "it may have been delivered, so it is not sent again",
                    _ => "Telegram refused it",
                };
                tracing::warn!(
                    "sendMessage to chat {chat} failed, answer dropped ({why}): {error}"
                );
                return Sent::Dropped;
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Outbox {
    /// One `sendMessage`, through teloxide's HTTP client, its answer read here: teloxide waits
    /// 10 s inside a request that got a 5xx before it reports it, and a stop in that wait could
    /// not tell a refused answer (to keep for the next start) from one maybe delivered.
    /// `requesting` is true from the request until its status is known. The error says what
    /// failed without the token or Telegram's raw answer.
    async fn send_once(
        &self,
        chat: ChatId,
        text: &str,
        requesting: &impl Fn(bool),
    ) -> Result<(), (Failure, String)> {
        let mut url = self.bot.api_url();
        url.path_segments_mut()
            .map_err(|()| {
                (
                    Failure::Refused,
                    "TELEGRAM_API_URL cannot take a path".to_owned(),
                )
            })?
            .push(&format!("bot{}", self.token))
            .push("sendMessage");
        requesting(true);
        let response = self
            .bot
            .client()
            .post(url)
            .json(&serde_json::json!({"chat_id": chat.0, "text": text}))
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                requesting(false);
                let failure = if e.is_connect() {
                    Failure::Unreached
                } else {
                    Failure::Unknown
                };
                return Err((failure, redact(&e.without_url().to_string(), &self.token)));
            }
        };
        let status = response.status();
        requesting(false);
        if status.is_server_error() {
            return Err((Failure::NotDone, format!("Telegram answered {status}")));
        }
        let body = response.text().await.unwrap_or_default();
        let answer: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let Some(answer) = answer.filter(|a| a.get("ok").is_some()) else {
            return Err((
                Failure::Unknown,
                format!("Telegram's answer ({status}) is not JSON this build understands"),
            ));
        };
        if answer["ok"] == true {
            return Ok(());
        }
        // The status only, never Telegram's description: it may echo the user's data.
        let failure = Failure::of_answer(status.as_u16(), &answer["parameters"]);
        Err((failure, format!("Telegram answered {status}")))
    }
}

/// How a send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Telegram has it.
    Delivered,
    /// Refused, or maybe delivered: not sent again.
    Dropped,
    /// Surely not delivered after [`SEND_ATTEMPTS`] tries (an outage): to keep and try later.
    NotYet,
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
            ..Pace::default()
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
