//! What a failed Bot API request means, told the same way for every request: whether Telegram
//! surely did not do it (safe to retry), may have done it (a retry could duplicate a reply), or
//! refused it for good; and how to describe it in a log line without the token or Telegram's raw
//! answer (which can hold a user's data).

use std::time::Duration;

use teloxide::types::ChatId;
use teloxide::{ApiError, RequestError};

use crate::config::redact;

/// The pause after the first failure in a row; it doubles per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between retries after network errors or 5xx.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest pause after a 409 Conflict: under half a long poll (`polling::POLL_TIMEOUT_SECS`,
/// 10 s). While two instances poll with one token, each then ends the other's poll with its
/// own before that poll can succeed, so the run of 409s the health check counts is not broken
/// by the chance of a poll that happened to end just before the other's retry.
pub const MAX_CONFLICT_BACKOFF: Duration = Duration::from_secs(4);

/// What a failed request means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 401: the token is wrong or revoked; retrying cannot help.
    TokenRejected,
    /// 409 on `getUpdates`: another instance polls with this token.
    Conflict,
    /// 429: Telegram says how long to wait; it did not do the request.
    RetryAfter(Duration),
    /// The group became a supergroup: the same request goes to this chat instead.
    MovedTo(ChatId),
    /// Telegram answered that it did not do it, with an error this build does not know (5xx
    /// answers arrive this way, after teloxide's own 10 s pause): worth retrying.
    NotDone,
    /// The connection was never made: the request surely did not arrive; worth retrying.
    Unreached,
    /// The request may have been done: a timeout, a connection lost mid-answer, an answer that
    /// is not JSON this build understands. Retrying a reply could send it twice.
    Unknown,
    /// Telegram refused this request (the user blocked the bot, the text is too long): the same
    /// request will fail again.
    Refused,
}

impl Failure {
    /// Tells what `error` means.
    pub fn of(error: &RequestError) -> Failure {
        match error {
            RequestError::Api(ApiError::InvalidToken) => Failure::TokenRejected,
            RequestError::Api(ApiError::TerminatedByOtherGetUpdates) => Failure::Conflict,
            RequestError::RetryAfter(seconds) => Failure::RetryAfter(seconds.duration()),
            RequestError::MigrateToChatId(chat) => Failure::MovedTo(*chat),
            RequestError::Api(ApiError::Unknown(description)) if refusal(description) => {
                Failure::Refused
            }
            RequestError::Api(ApiError::Unknown(_)) => Failure::NotDone,
            RequestError::Network(e) if e.is_connect() => Failure::Unreached,
            RequestError::Network(_) | RequestError::Io(_) | RequestError::InvalidJson { .. } => {
                Failure::Unknown
            }
            RequestError::Api(_) => Failure::Refused,
        }
    }

    /// What Telegram's JSON answer with `"ok": false` means, from the HTTP status and the
    /// answer's `parameters` (never its description, which may echo the user's data).
    pub fn of_answer(status: u16, parameters: &serde_json::Value) -> Failure {
        if let Some(seconds) = parameters["retry_after"].as_u64() {
            Failure::RetryAfter(Duration::from_secs(seconds))
        } else if status == 429 {
            // Too many requests, without saying how long to wait: not done, retried later.
            Failure::NotDone
        } else if let Some(moved) = parameters["migrate_to_chat_id"].as_i64() {
            Failure::MovedTo(ChatId(moved))
        } else if status == 401 {
            Failure::TokenRejected
        } else if (400..500).contains(&status) {
            Failure::Refused
        } else if status >= 500 {
            Failure::NotDone
        } else {
            Failure::Unknown
        }
    }

    /// Whether a request that failed this way can be sent again without the risk of it being
    /// done twice.
    pub fn safe_to_retry(self) -> bool {
        matches!(
            self,
            Failure::RetryAfter(_) | Failure::NotDone | Failure::Unreached
        )
    }
}

/// Whether an error teloxide does not know is Telegram refusing the request (a 4xx, whose
/// description starts with its reason: "Bad Request: not enough rights to send text messages"),
/// rather than failing to do it (a 5xx: "Bad Gateway"): teloxide keeps no status code.
fn refusal(description: &str) -> bool {
    [
        "Bad Request",
        "Forbidden",
        "Not Found",
        "Unauthorized",
        "Conflict",
    ]
    .iter()
    .any(|reason| description.starts_with(reason))
}

/// The pause before the next try after `failures` failures in a row (1 s, 2 s, 4 s, ... 10 s),
/// counted from when the failed request started: teloxide itself sleeps 10 s inside a request
/// that got a 5xx, and that sleep is part of the pause, not added to it.
pub fn backoff(failures: u32, request_took: Duration) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF).saturating_sub(request_took)
}

/// The one retry policy of every Bot API request: counts the failures in a row and says how
/// long to wait before the next try, or that there is none. A 429 waits its `retry_after`;
/// anything else waits [`backoff`]; a request that could be done twice (a reply) is retried only
/// when Telegram surely did not do it, and a rejected token is never retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    failures: u32,
    /// The most tries, if limited.
    attempts: Option<u32>,
    /// Whether doing the request twice is harmless (getUpdates, getMe).
    idempotent: bool,
}

impl RetryPolicy {
    /// For reads (getMe, getUpdates): retried as long as the bot runs.
    pub fn reads() -> RetryPolicy {
        RetryPolicy {
            failures: 0,
            attempts: None,
            idempotent: true,
        }
    }

    /// For a reply: retried only when surely not done, at most `attempts` tries in all.
    pub fn reply(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            failures: 0,
            attempts: Some(attempts),
            idempotent: false,
        }
    }

    /// Counts a failure of the request that started `took` ago: the pause before the next try,
    /// or None when there is to be none.
    pub fn after(&mut self, failure: Failure, took: Duration) -> Option<Duration> {
        self.failures += 1;
        if failure == Failure::TokenRejected
            || self.attempts.is_some_and(|most| self.failures >= most)
        {
            return None;
        }
        match failure {
            Failure::RetryAfter(wait) => Some(wait),
            Failure::Conflict if self.idempotent => {
                Some(backoff(self.failures, took).min(MAX_CONFLICT_BACKOFF))
            }
            f if self.idempotent || f.safe_to_retry() => Some(backoff(self.failures, took)),
            _ => None,
        }
    }

    /// The failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the count starts again; returns the failures before it.
    pub fn succeeded(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }
}

/// The error that stops the bot when Telegram rejects the token.
pub fn token_rejected() -> anyhow::Error {
    anyhow::anyhow!(
        "Telegram rejected BOT_TOKEN (401 Unauthorized): the token is wrong or was revoked; put the token @BotFather gave you in .env and restart"
    )
}

/// The error and its causes for a log line, token removed, Telegram's raw answer left out:
/// "A network error: error sending request" alone does not say whether the connection was
/// refused, reset or timed out, and a raw answer to /me holds the user's stored data.
pub fn describe(error: &RequestError, token: &str) -> String {
    let text = match error {
        RequestError::InvalidJson { source, .. } => {
            format!("Telegram's answer is not JSON this build understands ({source})")
        }
        other => chain(other),
    };
    redact(&text, token)
}

/// An error and its chain of sources, joined with ": " as anyhow's `{:#}` joins them, except
/// that a source its parent already shows is left out: the parent's text is the source's, opens
/// with it and a `;` (as the engine's `HeldBack` does), or ends with `: ` and it (as teloxide's
/// errors do). Text that merely contains it elsewhere (a path, a word the user typed) does not
/// count, and an empty source is kept, as anyhow shows it.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let (mut parent, mut source) = (text.clone(), error.source());
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        let shown = !cause_text.is_empty()
            && (parent == cause_text
                || parent.starts_with(&format!("{cause_text};"))
                || parent.ends_with(&format!(": {cause_text}")));
        if !shown {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        (parent, source) = (cause_text, cause.source());
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use teloxide::types::Seconds;

    use super::*;

    fn not_json(raw: &str) -> RequestError {
        RequestError::InvalidJson {
            source: Arc::new(serde_json::from_str::<u8>("<html>").unwrap_err()),
            raw: raw.into(),
        }
    }

    #[test]
    fn failures_are_told_apart() {
        let cases = [
            (
                RequestError::Api(ApiError::InvalidToken),
                Failure::TokenRejected,
            ),
            (
                RequestError::Api(ApiError::TerminatedByOtherGetUpdates),
                Failure::Conflict,
            ),
            (
                RequestError::RetryAfter(Seconds::from_seconds(2)),
                Failure::RetryAfter(Duration::from_secs(2)),
            ),
            (
                RequestError::MigrateToChatId(ChatId(-100_123)),
                Failure::MovedTo(ChatId(-100_123)),
            ),
            (not_json("<html>502 Bad Gateway</html>"), Failure::Unknown),
            (
                RequestError::Api(ApiError::Unknown("Bad Gateway".into())),
                Failure::NotDone,
            ),
            (
                RequestError::Io(Arc::new(std::io::Error::other("reset"))),
                Failure::Unknown,
            ),
            (RequestError::Api(ApiError::BotBlocked), Failure::Refused),
            (
                RequestError::Api(ApiError::MessageIsTooLong),
                Failure::Refused,
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(Failure::of(&error), expected, "{error}");
        }
    }

    #[test]
    fn a_poll_ended_by_409s_is_retried_before_the_other_instances_poll_could_succeed() {
        let mut polls = RetryPolicy::reads();
        let waits: Vec<Duration> = (0..8)
            .map(|_| polls.after(Failure::Conflict, Duration::ZERO).unwrap())
            .collect();
        assert_eq!(waits[..3], [1, 2, 4].map(Duration::from_secs));
        assert!(
            waits.iter().all(|w| *w <= MAX_CONFLICT_BACKOFF),
            "{waits:?}"
        );
        assert!(
            MAX_CONFLICT_BACKOFF * 2 < Duration::from_secs(10),
            "a long poll's 10 s"
        );
        let mut reply = RetryPolicy::reply(5);
        assert_eq!(reply.after(Failure::Conflict, Duration::ZERO), None);
    }

    #[test]
    fn only_what_surely_was_not_done_is_retried() {
        for retried in [
            Failure::RetryAfter(Duration::from_secs(1)),
            Failure::NotDone,
            Failure::Unreached,
        ] {
            assert!(retried.safe_to_retry(), "{retried:?}");
        }
        for kept in [
            Failure::Unknown,
            Failure::Refused,
            Failure::TokenRejected,
            Failure::Conflict,
            Failure::MovedTo(ChatId(1)),
        ] {
            assert!(!kept.safe_to_retry(), "{kept:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreached() {
        // A port nothing listens on: the connection is refused before anything is sent.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let error = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/bot1:x/sendMessage"))
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            Failure::of(&RequestError::Network(Arc::new(error))),
            Failure::Unreached
        );
    }

    #[test]
    fn one_policy_retries_reads_always_and_replies_only_when_surely_not_done() {
        let quick = Duration::ZERO;
        let mut reads = RetryPolicy::reads();
        for failure in [Failure::Unknown, Failure::Refused, Failure::Conflict] {
            assert!(reads.after(failure, quick).is_some(), "{failure:?}");
        }
        assert_eq!(reads.failures(), 3);
        assert_eq!(
            reads.after(Failure::RetryAfter(Duration::from_secs(7)), quick),
            Some(Duration::from_secs(7))
        );
        assert_eq!(reads.after(Failure::TokenRejected, quick), None);
        assert_eq!(reads.succeeded(), 5);
        assert_eq!(reads.failures(), 0);

        for failure in [Failure::Unknown, Failure::Refused, Failure::TokenRejected] {
            assert_eq!(
                RetryPolicy::reply(5).after(failure, quick),
                None,
                "{failure:?}"
            );
        }
        let mut reply = RetryPolicy::reply(3);
        assert_eq!(
            reply.after(Failure::NotDone, quick),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            reply.after(Failure::Unreached, quick),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            reply.after(Failure::RetryAfter(Duration::from_secs(3)), quick),
            None,
            "the third try was the last"
        );
    }

    #[test]
    fn telegrams_refusals_are_told_by_status_and_parameters() {
        let none = serde_json::json!(null);
        assert_eq!(
            Failure::of_answer(429, &serde_json::json!({"retry_after": 4})),
            Failure::RetryAfter(Duration::from_secs(4))
        );
        assert_eq!(Failure::of_answer(429, &none), Failure::NotDone);
        assert_eq!(
            Failure::of_answer(400, &serde_json::json!({"migrate_to_chat_id": -100})),
            Failure::MovedTo(ChatId(-100))
        );
        assert_eq!(Failure::of_answer(401, &none), Failure::TokenRejected);
        assert_eq!(Failure::of_answer(403, &none), Failure::Refused);
        assert_eq!(Failure::of_answer(502, &none), Failure::NotDone);
        assert_eq!(Failure::of_answer(200, &none), Failure::Unknown);
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
    fn a_description_has_the_causes_once_and_neither_the_token_nor_the_raw_answer() {
        let io = std::io::Error::other("connection reset by peer");
        assert_eq!(
            describe(&RequestError::Io(Arc::new(io)), "1:SECRET"),
            "An I/O error: connection reset by peer",
            "the source already shown is not repeated"
        );
        let raw = r#"{"ok":true,"result":{"text":"Here is what I store about you: Ann"}}"#;
        let text = describe(&not_json(raw), "1:SECRET");
        assert!(
            !text.contains("Ann") && !text.contains("store about"),
            "{text}"
        );
        assert!(text.contains("not JSON"), "{text}");
        let unknown = RequestError::Api(ApiError::Unknown("token 1:SECRET leaked".into()));
        assert!(!describe(&unknown, "1:SECRET").contains("SECRET"));
    }

    #[test]
    fn a_chain_leaves_out_only_a_cause_its_parent_opens_or_closes_with() {
        let chained = |cause: &str, parent: &str| {
            chain(
                anyhow::anyhow!(cause.to_owned())
                    .context(parent.to_owned())
                    .as_ref(),
            )
        };
        let cases = [
            ("unfit", "unfit; rolled back", "unfit; rolled back"),
            ("reset", "An I/O error: reset", "An I/O error: reset"),
            ("same", "same", "same"),
            ("x y", "x y is not a revision", "x y is not a revision: x y"),
            ("/a b", "cannot use /a b/c", "cannot use /a b/c: /a b"),
            ("", "failed", "failed: "),
        ];
        for (cause, parent, shown) in cases {
            assert_eq!(chained(cause, parent), shown, "{cause:?} under {parent:?}");
        }
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
