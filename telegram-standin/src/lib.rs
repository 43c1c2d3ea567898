//! A stand-in for the Telegram Bot API: a real HTTP server that answers the methods the bot
//! calls (`POST /bot<token>/<method>`, method names in any case) the way Telegram does, and a
//! control API under `/control/` that plays the users: post a user's message, read what the bot
//! sent.
//!
//! It never answers 5xx unless told to: faults are injected on purpose, in-process with
//! [`Standin::inject`] or over the control API, and each applies to a number of calls.
//!
//! Telegram's own refusals are played as Telegram words them: a `sendMessage` to a group that
//! became a supergroup (400 with `parameters.migrate_to_chat_id`), an empty or too long text
//! (400), a second `getUpdates` while one is held (409 to the held one), and, when [`Limits`] are
//! on, a message over Telegram's rate limits (429 with `parameters.retry_after`).
//!
//! Control API (JSON):
//! - `POST /control/messages` `{"user_id":42,"text":"/start","first_name":"Ann"}` queues a message
//!   and answers `{"update_id":..,"sent_before":N}`. With
//!   `"chat":{"id":-100123,"type":"supergroup","title":"Team"}` (or `"type":"group"`) the user
//!   writes in that group instead of their private chat.
//! - `POST /control/messages/batch` `[{...}, {...}]` queues many users' messages at once (one
//!   `getUpdates` can see them all) and answers `{"update_ids":[..],"sent_before":N}`.
//! - `GET /control/sent?after=N&chat_id=42&min=1&wait_ms=5000` answers the messages the bot sent
//!   after sequence number N (`chat_id` may be a group's negative id), waiting up to `wait_ms`
//!   until there are `min` (default 1).
//! - `GET /control/stats` answers call counts, the arrival time of every call, the faults
//!   applied, how many long polls are being held, the updates not yet confirmed, and the 409s
//!   and 429s answered.
//! - `POST /control/faults` adds a [`Fault`], e.g.
//!   `{"method":"sendMessage","kind":"too_many_requests","retry_after":2,"times":1}`,
//!   `{"method":"*","kind":"delay","ms":300,"times":null}` (`null`: until cleared),
//!   `{"method":"getUpdates","kind":"server_error","status":502}`,
//!   `{"method":"getMe","kind":"broken_response"}`, `{"method":"sendMessage","kind":"garbled_answer"}`,
//!   `{"method":"getUpdates","kind":"conflict","times":null}` (another bot instance polls);
//!   `times` defaults to 1.
//!   `GET /control/faults` lists those still pending; `DELETE /control/faults` clears them.
//! - `POST /control/chats/migrate` `{"from":-123,"to":-100123}` upgrades group `from` to
//!   supergroup `to`: from then on a `sendMessage` to `from` is refused as Telegram refuses it.
//! - `POST /control/limits` `{"per_chat_per_sec":1,"per_group_per_min":20,"overall_per_sec":30}`
//!   turns Telegram's rate limits on (missing fields take these values), `null` turns them off;
//!   `GET /control/limits` answers those in force (`null`: off).
//! - `POST /control/latency` `{"ms":50}` makes every Bot API call wait that long before it is
//!   handled (control calls never wait); `GET /control/latency` answers it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub mod client;
mod http;

use http::{Reply, Request, Server};

/// The longest a `getUpdates` long poll is held: well inside teloxide's 17 s request timeout.
pub const MAX_LONG_POLL: Duration = Duration::from_secs(10);

/// The longest text `sendMessage` takes, in characters, as Telegram counts them.
pub const MAX_MESSAGE_LENGTH: usize = 4096;

/// What Telegram answers the earlier of two `getUpdates` calls.
const CONFLICT: &str = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";

/// How the stand-in presents itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// The only token it accepts; others get 401 Unauthorized, as from Telegram.
    pub token: String,
    /// The bot's user id.
    pub bot_id: i64,
    /// The bot's username.
    pub bot_username: String,
    /// The longest a `getUpdates` long poll is held (at most [`MAX_LONG_POLL`]); shorter makes an
    /// idle bot poll often, so a benchmark sees its downtime as a gap between polls.
    pub max_long_poll: Duration,
    /// Telegram's rate limits on `sendMessage`; `None` (the default) lets every message through.
    pub limits: Option<Limits>,
    /// How long every Bot API call waits before it is handled, as if Telegram were far away.
    pub latency: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: "123456:DEMO-TOKEN".into(),
            bot_id: 123456,
            bot_username: "demo_bot".into(),
            max_long_poll: MAX_LONG_POLL,
            limits: None,
            latency: Duration::ZERO,
        }
    }
}

/// Telegram's rate limits on `sendMessage`, as sliding windows: a message over any of them is
/// answered 429 with `parameters.retry_after`. Fields left out of the JSON take Telegram's
/// values (the [`Default`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Messages per second to one private chat (positive chat id).
    pub per_chat_per_sec: u32,
    /// Messages per minute to one group or supergroup (negative chat id).
    pub per_group_per_min: u32,
    /// Messages per second to all chats together.
    pub overall_per_sec: u32,
}

impl Default for Limits {
    /// Telegram's: 1 per second per chat, 20 per minute per group, 30 per second overall.
    fn default() -> Self {
        Limits {
            per_chat_per_sec: 1,
            per_group_per_min: 20,
            overall_per_sec: 30,
        }
    }
}

impl Limits {
    /// Why the limits cannot be applied, if they cannot.
    fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("per_chat_per_sec", self.per_chat_per_sec),
            ("per_group_per_min", self.per_group_per_min),
            ("overall_per_sec", self.overall_per_sec),
        ] {
            if value == 0 {
                return Err(format!(
                    "{name} must be 1 or more (to let every message through, turn the limits off with null)"
                ));
            }
        }
        Ok(())
    }
}

/// What kind of group a [`Chat`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// A basic group; it can be upgraded to a supergroup ([`Standin::migrate_chat`]).
    Group,
    /// A supergroup.
    Supergroup,
}

impl ChatKind {
    /// Telegram's name for it, the chat's `type`.
    fn name(self) -> &'static str {
        match self {
            ChatKind::Group => "group",
            ChatKind::Supergroup => "supergroup",
        }
    }
}

/// A group a user writes in, instead of their private chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    /// The chat id, negative as Telegram's group ids are (e.g. -100123).
    pub id: i64,
    /// Group or supergroup.
    #[serde(rename = "type")]
    pub kind: ChatKind,
    /// The title (default "Group <id>").
    #[serde(default)]
    pub title: Option<String>,
}

impl Chat {
    /// A basic group.
    pub fn group(id: i64, title: &str) -> Chat {
        Chat {
            id,
            kind: ChatKind::Group,
            title: Some(title.to_owned()),
        }
    }

    /// A supergroup.
    pub fn supergroup(id: i64, title: &str) -> Chat {
        Chat {
            id,
            kind: ChatKind::Supergroup,
            title: Some(title.to_owned()),
        }
    }

    /// The chat as Telegram shows it in a message.
    fn to_json(&self) -> Value {
        let title = self
            .title
            .clone()
            .unwrap_or_else(|| format!("Group {}", self.id));
        json!({"id": self.id, "type": self.kind.name(), "title": title})
    }
}

/// A user's message, as the control API takes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IncomingMessage {
    /// Telegram user id (also the private chat's id).
    pub user_id: i64,
    /// The text.
    pub text: String,
    /// First name (default "User <id>").
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Username.
    #[serde(default)]
    pub username: Option<String>,
    /// IETF language tag.
    #[serde(default)]
    pub language_code: Option<String>,
    /// The group it is written in; `None` (the default): the user's private chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<Chat>,
}

impl IncomingMessage {
    /// A message from `user_id` with default names.
    pub fn new(user_id: i64, text: &str) -> Self {
        IncomingMessage {
            user_id,
            text: text.to_owned(),
            first_name: None,
            last_name: None,
            username: None,
            language_code: None,
            chat: None,
        }
    }

    /// The same message, written in `chat` instead of the user's private chat.
    pub fn in_chat(self, chat: Chat) -> Self {
        IncomingMessage {
            chat: Some(chat),
            ..self
        }
    }

    /// The chat it appears in.
    fn chat_id(&self) -> i64 {
        self.chat.as_ref().map_or(self.user_id, |c| c.id)
    }
}

/// A message the bot sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SentMessage {
    /// Sequence number, from 1.
    pub seq: u64,
    /// The chat it went to.
    pub chat_id: i64,
    /// Its text.
    pub text: String,
    /// The message it replies to (`reply_parameters.message_id`, or the older
    /// `reply_to_message_id`).
    #[serde(default)]
    pub reply_to_message_id: Option<i64>,
    /// Milliseconds since the Unix epoch of the `sendMessage` call's arrival.
    #[serde(default)]
    pub at_ms: u64,
}

/// Counters the tests and benchmarks read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Calls per method (lower-case name).
    pub calls: HashMap<String, u64>,
    /// Milliseconds since the Unix epoch of each `getUpdates` call's arrival.
    pub get_updates_at_ms: Vec<u64>,
    /// Per method (lower-case name): milliseconds since the Unix epoch of each call's arrival,
    /// faulted calls included.
    pub calls_at_ms: HashMap<String, Vec<u64>>,
    /// Every fault applied, in order.
    pub faults_applied: Vec<AppliedFault>,
    /// `getUpdates` calls being held right now (one abandoned by its client counts until its
    /// timeout, or until a newer `getUpdates` ends it with a 409).
    pub polls_in_flight: u64,
    /// Calls refused for a wrong token.
    pub unauthorized: u64,
    /// Updates queued and not yet confirmed by a `getUpdates` offset.
    pub pending_updates: u64,
    /// 409 Conflicts answered: held `getUpdates` calls ended by a newer one, and `conflict`
    /// faults.
    pub conflicts: u64,
    /// 429 Too Many Requests answered: messages over the [`Limits`], and `too_many_requests`
    /// faults.
    pub rate_limited: u64,
    /// Per chat id: the `sendMessage` calls to it answered 429 (either way). In JSON the ids
    /// are strings, as JSON keys are.
    pub rate_limited_by_chat: HashMap<i64, u64>,
}

/// What a [`Fault`] does to a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// 429, shaped as Telegram sends it, with `parameters.retry_after` in seconds.
    TooManyRequests {
        /// Seconds the client must wait.
        retry_after: u32,
    },
    /// Waits this long, then answers as usual. Every matching delay applies, on top of at
    /// most one other fault.
    Delay {
        /// Milliseconds.
        ms: u64,
    },
    /// A 5xx (500..=599) with Telegram's error body. teloxide sleeps 10 s inside the request
    /// on any 5xx before it reports the error.
    ServerError {
        /// The HTTP status.
        status: u16,
    },
    /// Bytes that are not HTTP: the client sees a network error.
    BrokenResponse,
    /// The call is done as usual (a message is sent), then answered with HTTP 200 and its JSON
    /// cut in half: what a client sees when an answer breaks off or changes shape (teloxide
    /// reports `InvalidJson`, with the text it got, which holds the message).
    GarbledAnswer,
    /// 409, as Telegram answers a `getUpdates` while another bot instance polls with the same
    /// token. Only for `getUpdates`.
    Conflict,
}

/// A fault to inject into the next calls of a Bot API method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The method, in any case, or `*` for every method.
    pub method: String,
    /// What it does.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// How many calls it still applies to; `None` until cleared.
    #[serde(default = "once")]
    pub times: Option<u32>,
}

fn once() -> Option<u32> {
    Some(1)
}

impl Fault {
    /// One 429 for `method`, asking to wait `retry_after` seconds.
    pub fn too_many_requests(method: &str, retry_after: u32) -> Fault {
        Fault::once(method, FaultKind::TooManyRequests { retry_after })
    }

    /// A delay on every call of `method` until cleared.
    pub fn delay(method: &str, delay: Duration) -> Fault {
        let ms = delay.as_millis() as u64;
        Fault::once(method, FaultKind::Delay { ms }).times(None)
    }

    /// One 5xx for `method`.
    pub fn server_error(method: &str, status: u16) -> Fault {
        Fault::once(method, FaultKind::ServerError { status })
    }

    /// One answer to `method` that is not HTTP.
    pub fn broken_response(method: &str) -> Fault {
        Fault::once(method, FaultKind::BrokenResponse)
    }

    /// One call of `method` done as usual but answered with half its JSON.
    pub fn garbled_answer(method: &str) -> Fault {
        Fault::once(method, FaultKind::GarbledAnswer)
    }

    /// One 409 Conflict for `getUpdates`, as if another bot instance polled with the same
    /// token; `.times(None)` keeps it until cleared.
    pub fn conflict() -> Fault {
        Fault::once("getUpdates", FaultKind::Conflict)
    }

    /// The same fault for `times` calls (`None`: until cleared).
    pub fn times(self, times: Option<u32>) -> Fault {
        Fault { times, ..self }
    }

    fn once(method: &str, kind: FaultKind) -> Fault {
        Fault {
            method: method.to_owned(),
            kind,
            times: Some(1),
        }
    }

    /// Why the fault cannot be applied, if it cannot.
    fn check(&self) -> Result<(), String> {
        if self.method.is_empty() {
            return Err("a fault needs a method (or \"*\" for every method)".into());
        }
        match self.kind {
            FaultKind::ServerError { status } if !(500..=599).contains(&status) => Err(format!(
                "server_error needs a status from 500 to 599, not {status}"
            )),
            FaultKind::Conflict if !self.method.eq_ignore_ascii_case("getUpdates") => Err(format!(
                "Telegram answers a conflict only to getUpdates; give \"method\":\"getUpdates\", not {:?}",
                self.method
            )),
            _ => Ok(()),
        }
    }

    fn matches(&self, method: &str) -> bool {
        self.times != Some(0) && (self.method == "*" || self.method.eq_ignore_ascii_case(method))
    }
}

/// A fault as it was applied to a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFault {
    /// The method called (lower-case).
    pub method: String,
    /// What was done.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// Milliseconds since the Unix epoch of the call's arrival.
    pub at_ms: u64,
}

#[derive(Default)]
struct State {
    next_update_id: i64,
    next_message_id: i64,
    updates: Vec<(i64, Value)>,
    sent: Vec<SentMessage>,
    commands: Value,
    faults: Vec<Fault>,
    stats: Stats,
    /// Every chat a message was posted in, as the updates showed it, so that `sendMessage`
    /// echoes the chat as it is.
    chats: HashMap<i64, Value>,
    /// Groups upgraded to supergroups: old id to new id.
    migrated: HashMap<i64, i64>,
    limits: Option<Limits>,
    windows: Windows,
    latency: Duration,
    /// `getUpdates` calls started so far: a held call whose number is no longer the latest was
    /// superseded by a newer one, and answers 409.
    polls_started: u64,
}

impl State {
    fn stats(&self) -> Stats {
        Stats {
            pending_updates: self.updates.len() as u64,
            ..self.stats.clone()
        }
    }

    /// Counts a 429 answered to a call (to `chat_id`, for a `sendMessage`).
    fn count_rate_limited(&mut self, chat_id: Option<i64>) {
        self.stats.rate_limited += 1;
        if let Some(chat_id) = chat_id {
            *self.stats.rate_limited_by_chat.entry(chat_id).or_default() += 1;
        }
    }

    /// Why `from` cannot be upgraded to `to`, if it cannot.
    fn migrate(&mut self, from: i64, to: i64) -> Result<(), String> {
        if from >= 0 || to >= 0 {
            return Err(format!(
                "only a group migrates, to a supergroup: both ids are negative (e.g. -123 to -100123), not {from} to {to}"
            ));
        }
        if from == to {
            return Err(format!("a chat cannot migrate to itself ({from})"));
        }
        if self
            .chats
            .get(&from)
            .is_some_and(|c| c["type"] == "supergroup")
        {
            return Err(format!(
                "chat {from} is a supergroup already; only a basic group is upgraded"
            ));
        }
        for chat in [from, to] {
            if let Some(new) = self.migrated.get(&chat) {
                return Err(format!(
                    "chat {chat} was already upgraded to {new}; migrate a group that is still active"
                ));
            }
        }
        let title = self
            .chats
            .get(&from)
            .and_then(|c| c["title"].as_str())
            .map(str::to_owned);
        self.migrated.insert(from, to);
        self.chats.insert(
            to,
            Chat {
                id: to,
                kind: ChatKind::Supergroup,
                title,
            }
            .to_json(),
        );
        Ok(())
    }
}

/// Sliding windows of the messages sent while [`Limits`] are on.
#[derive(Default)]
struct Windows {
    overall: VecDeque<Instant>,
    per_chat: HashMap<i64, VecDeque<Instant>>,
}

impl Windows {
    /// How long the bot must wait before it may send to `chat_id` at `now`, if it must.
    fn wait(&mut self, limits: &Limits, chat_id: i64, now: Instant) -> Option<Duration> {
        let (per_chat, span) = if chat_id < 0 {
            (limits.per_group_per_min, Duration::from_secs(60))
        } else {
            (limits.per_chat_per_sec, Duration::from_secs(1))
        };
        let chat = self.per_chat.entry(chat_id).or_default();
        let chat_wait = wait_in(chat, per_chat, span, now);
        let overall_wait = wait_in(
            &mut self.overall,
            limits.overall_per_sec,
            Duration::from_secs(1),
            now,
        );
        chat_wait.max(overall_wait)
    }

    fn record(&mut self, chat_id: i64, now: Instant) {
        self.overall.push_back(now);
        self.per_chat.entry(chat_id).or_default().push_back(now);
    }
}

/// Drops what left the window; then, if `limit` messages are still in it, how long until the
/// oldest of them leaves.
fn wait_in(
    window: &mut VecDeque<Instant>,
    limit: u32,
    span: Duration,
    now: Instant,
) -> Option<Duration> {
    while window
        .front()
        .is_some_and(|&at| now.saturating_duration_since(at) >= span)
    {
        window.pop_front();
    }
    let limit = limit.max(1) as usize;
    let oldest_in_the_way = window.len().checked_sub(limit)?;
    Some((window[oldest_in_the_way] + span).saturating_duration_since(now))
}

/// Telegram's `retry_after`: whole seconds, rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

struct Shared {
    config: Config,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running stand-in. Dropping it stops the server.
pub struct Standin {
    shared: Arc<Shared>,
    server: Server,
}

impl Standin {
    /// Starts serving on `listen` (e.g. "127.0.0.1:0" for any free port).
    pub fn start(listen: &str, config: Config) -> std::io::Result<Standin> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                next_update_id: 1,
                next_message_id: 1,
                commands: json!([]),
                limits: config.limits,
                latency: config.latency,
                ..State::default()
            }),
            config,
            changed: Condvar::new(),
        });
        let server = {
            let shared = Arc::clone(&shared);
            Server::start(listen, Arc::new(move |request| handle(&shared, request)))?
        };
        Ok(Standin { shared, server })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The base URL to give the bot as its Bot API URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Queues a user's message for the bot's next `getUpdates`; returns the sent-message
    /// sequence number before it, for [`Standin::wait_for_sent`].
    ///
    /// # Panics
    /// If Telegram could not deliver it (a group with a positive id, a group upgraded to a
    /// supergroup).
    pub fn post_message(&self, message: &IncomingMessage) -> u64 {
        self.post_messages(std::slice::from_ref(message))
    }

    /// Queues many users' messages at once, so one `getUpdates` can see them all; returns the
    /// sent-message sequence number before them.
    ///
    /// # Panics
    /// As [`Standin::post_message`]; then none is queued.
    pub fn post_messages(&self, messages: &[IncomingMessage]) -> u64 {
        match post_messages(&self.shared, messages) {
            Ok((_, sent_before)) => sent_before,
            Err(e) => panic!("{e}"),
        }
    }

    /// Upgrades group `from` to supergroup `to`, as Telegram does when a group grows: from then
    /// on a `sendMessage` to `from` is answered 400 with `parameters.migrate_to_chat_id` = `to`.
    ///
    /// # Panics
    /// If the ids are not both negative, are the same, or either was already upgraded.
    pub fn migrate_chat(&self, from: i64, to: i64) {
        if let Err(e) = self.shared.lock().migrate(from, to) {
            panic!("{e}");
        }
    }

    /// Turns Telegram's rate limits on `sendMessage` on (`Some`) or off (`None`).
    ///
    /// # Panics
    /// If a limit is 0.
    pub fn set_limits(&self, limits: Option<Limits>) {
        if let Some(Err(e)) = limits.as_ref().map(Limits::check) {
            panic!("{e}");
        }
        self.shared.lock().limits = limits;
    }

    /// The rate limits in force, if they are on.
    pub fn limits(&self) -> Option<Limits> {
        self.shared.lock().limits
    }

    /// Makes every Bot API call from now on wait `latency` before it is handled.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// How long every Bot API call waits before it is handled.
    pub fn latency(&self) -> Duration {
        self.shared.lock().latency
    }

    /// Adds a fault for the next calls of its method.
    ///
    /// # Panics
    /// If the fault makes no sense (a `server_error` status outside 500..=599, no method).
    pub fn inject(&self, fault: Fault) {
        if let Err(e) = fault.check() {
            panic!("{e}");
        }
        self.shared.lock().faults.push(fault);
    }

    /// The faults still pending.
    pub fn faults(&self) -> Vec<Fault> {
        self.shared.lock().faults.clone()
    }

    /// Drops every pending fault.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Every message the bot sent so far.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.shared.lock().sent.clone()
    }

    /// Waits up to `timeout` for messages sent after `after` (to `chat_id`, when given).
    pub fn wait_for_sent(
        &self,
        after: u64,
        chat_id: Option<i64>,
        timeout: Duration,
    ) -> Vec<SentMessage> {
        wait_for_sent(&self.shared, after, chat_id, 1, timeout)
    }

    /// Waits up to `timeout` until at least `count` messages were sent after `after`; returns
    /// those sent so far (fewer on timeout).
    pub fn wait_for_sent_count(
        &self,
        after: u64,
        count: usize,
        timeout: Duration,
    ) -> Vec<SentMessage> {
        wait_for_sent(&self.shared, after, None, count, timeout)
    }

    /// The commands the bot published with setMyCommands.
    pub fn commands(&self) -> Value {
        self.shared.lock().commands.clone()
    }

    /// Call counters.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats()
    }

    /// Blocks until the server stops (for the binary).
    pub fn join(mut self) {
        self.server.join();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Queues the messages in one go; returns their update ids and the sequence number of the last
/// message sent before them, or why one of them cannot be delivered (then none is queued).
fn post_messages(shared: &Shared, messages: &[IncomingMessage]) -> Result<(Vec<i64>, u64), String> {
    let mut state = shared.lock();
    for message in messages {
        if let Some(chat) = &message.chat
            && chat.id >= 0
        {
            return Err(format!(
                "a group's id is negative (e.g. -100123), not {}; leave out \"chat\" for the user's private chat",
                chat.id
            ));
        }
        if let Some(new) = state.migrated.get(&message.chat_id()) {
            return Err(format!(
                "chat {} was upgraded to supergroup {new}; post the message in {new}",
                message.chat_id()
            ));
        }
    }
    let update_ids = messages
        .iter()
        .map(|message| push_update(&mut state, message))
        .collect();
    let sent_before = state.sent.last().map_or(0, |m| m.seq);
    shared.changed.notify_all();
    Ok((update_ids, sent_before))
}

fn push_update(state: &mut State, message: &IncomingMessage) -> i64 {
    let update_id = state.next_update_id;
    state.next_update_id += 1;
    let message_id = state.next_message_id;
    state.next_message_id += 1;
    let first_name = message
        .first_name
        .clone()
        .unwrap_or_else(|| format!("User {}", message.user_id));
    let mut from = json!({"id": message.user_id, "is_bot": false, "first_name": first_name});
    let mut chat = json!({"id": message.user_id, "type": "private", "first_name": first_name});
    for (key, value) in [
        ("last_name", &message.last_name),
        ("username", &message.username),
        ("language_code", &message.language_code),
    ] {
        if let Some(value) = value {
            from[key] = json!(value);
            if key != "language_code" {
                chat[key] = json!(value);
            }
        }
    }
    if let Some(group) = &message.chat {
        chat = group.to_json();
    }
    state.chats.insert(message.chat_id(), chat.clone());
    let mut body = json!({
        "message_id": message_id,
        "from": from,
        "chat": chat,
        "date": now_ms() / 1000,
        "text": message.text,
    });
    if message.text.starts_with('/') {
        let length = message
            .text
            .split_whitespace()
            .next()
            .map_or(0, |c| c.encode_utf16().count());
        body["entities"] = json!([{"type": "bot_command", "offset": 0, "length": length}]);
    }
    state
        .updates
        .push((update_id, json!({"update_id": update_id, "message": body})));
    update_id
}

fn wait_for_sent(
    shared: &Shared,
    after: u64,
    chat_id: Option<i64>,
    min: usize,
    timeout: Duration,
) -> Vec<SentMessage> {
    let min = min.max(1);
    let deadline = Instant::now() + timeout;
    let mut state = shared.lock();
    loop {
        let found: Vec<SentMessage> = state
            .sent
            .iter()
            .filter(|m| m.seq > after && chat_id.is_none_or(|c| c == m.chat_id))
            .cloned()
            .collect();
        let now = Instant::now();
        if found.len() >= min || now >= deadline {
            return found;
        }
        state = shared
            .changed
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

fn respond(status: u16, body: Value) -> Reply {
    Reply::Json { status, body }
}

fn bot_error(status: u16, description: &str) -> Reply {
    respond(
        status,
        json!({"ok": false, "error_code": status, "description": description}),
    )
}

fn handle(shared: &Shared, request: Request) -> Reply {
    let url = request.target;
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let Ok(body) = String::from_utf8(request.body) else {
        return bot_error(400, "Bad Request: body is not UTF-8");
    };
    if let Some(rest) = path.strip_prefix("/control/") {
        return control(shared, &request.method, rest, query, &body);
    }
    let Some((token, method)) = path
        .strip_prefix("/bot")
        .and_then(|rest| rest.split_once('/'))
    else {
        return bot_error(404, "Not Found");
    };
    // The call arrived now, whatever the latency makes it wait.
    let arrived = now_ms();
    let latency = shared.lock().latency;
    if !latency.is_zero() {
        thread::sleep(latency);
    }
    if token != shared.config.token {
        shared.lock().stats.unauthorized += 1;
        return bot_error(401, "Unauthorized");
    }
    let params = match bot_params(query, &body) {
        Some(params) => params,
        None => return bot_error(400, "Bad Request: can't parse JSON"),
    };
    let method = method.to_ascii_lowercase();
    let (delay, fault) = {
        let mut state = shared.lock();
        *state.stats.calls.entry(method.clone()).or_default() += 1;
        state
            .stats
            .calls_at_ms
            .entry(method.clone())
            .or_default()
            .push(arrived);
        if method == "getupdates" {
            state.stats.get_updates_at_ms.push(arrived);
        }
        take_faults(&mut state, &method, arrived)
    };
    if !delay.is_zero() {
        thread::sleep(delay);
    }
    match fault {
        None | Some(FaultKind::Delay { .. }) => {}
        Some(FaultKind::TooManyRequests { retry_after }) => {
            let chat_id = (method == "sendmessage")
                .then(|| chat_id_param(&params))
                .flatten();
            shared.lock().count_rate_limited(chat_id);
            return too_many_requests(u64::from(retry_after));
        }
        Some(FaultKind::ServerError { status }) => {
            return bot_error(status, &server_error_description(status));
        }
        Some(FaultKind::BrokenResponse) => return Reply::Raw(b"THIS IS NOT HTTP\r\n\r\n"),
        Some(FaultKind::GarbledAnswer) => {}
        Some(FaultKind::Conflict) => {
            shared.lock().stats.conflicts += 1;
            return bot_error(409, CONFLICT);
        }
    }
    let result = match method.as_str() {
        "getme" => json!({
            "id": shared.config.bot_id,
            "is_bot": true,
            "first_name": "Demo Bot",
            "username": shared.config.bot_username,
            "can_join_groups": true,
            "can_read_all_group_messages": false,
            "supports_inline_queries": false,
            "can_connect_to_business": false,
            "has_main_web_app": false,
        }),
        "getwebhookinfo" => {
            let pending = shared.lock().updates.len();
            json!({"url": "", "has_custom_certificate": false, "pending_update_count": pending})
        }
        "deletewebhook" | "setmycommands" => {
            if method == "setmycommands" {
                shared.lock().commands = params.get("commands").cloned().unwrap_or(json!([]));
            }
            json!(true)
        }
        "getupdates" => match get_updates(shared, &params) {
            Ok(updates) => updates,
            Err(refused) => return refused,
        },
        "sendmessage" => match send_message(shared, &params, arrived) {
            Ok(message) => message,
            Err(refused) => return refused,
        },
        _ => return bot_error(404, "Not Found: method not found"),
    };
    let answer = json!({"ok": true, "result": result});
    if fault == Some(FaultKind::GarbledAnswer) {
        let text = answer.to_string();
        let half = text
            .char_indices()
            .nth(text.chars().count() / 2)
            .map_or(0, |(i, _)| i);
        return Reply::Text {
            status: 200,
            body: text[..half].to_owned(),
        };
    }
    respond(200, answer)
}

/// A 429, shaped as Telegram sends it.
fn too_many_requests(retry_after: u64) -> Reply {
    respond(
        429,
        json!({
            "ok": false,
            "error_code": 429,
            "description": format!("Too Many Requests: retry after {retry_after}"),
            "parameters": {"retry_after": retry_after},
        }),
    )
}

/// Takes the faults for one call of `method`: the sum of the matching delays, and the first
/// other matching fault. Each counts one use; used-up faults are dropped.
fn take_faults(state: &mut State, method: &str, arrived: u64) -> (Duration, Option<FaultKind>) {
    let mut delay = Duration::ZERO;
    let mut chosen = None;
    let mut applied = Vec::new();
    for fault in state.faults.iter_mut().filter(|f| f.matches(method)) {
        match fault.kind {
            FaultKind::Delay { ms } => delay += Duration::from_millis(ms),
            _ if chosen.is_some() => continue,
            _ => chosen = Some(fault.kind.clone()),
        }
        if let Some(times) = &mut fault.times {
            *times -= 1;
        }
        applied.push(AppliedFault {
            method: method.to_owned(),
            kind: fault.kind.clone(),
            at_ms: arrived,
        });
    }
    state.faults.retain(|f| f.times != Some(0));
    state.stats.faults_applied.extend(applied);
    (delay, chosen)
}

fn server_error_description(status: u16) -> String {
    match status {
        500 => "Internal Server Error".into(),
        502 => "Bad Gateway".into(),
        503 => "Service Unavailable".into(),
        504 => "Gateway Timeout".into(),
        other => format!("Server Error {other}"),
    }
}

fn get_updates(shared: &Shared, params: &Value) -> Result<Value, Reply> {
    let offset = number_param(params, "offset").unwrap_or(0);
    let limit = number_param(params, "limit").unwrap_or(100).clamp(1, 100) as usize;
    let timeout = Duration::from_secs(number_param(params, "timeout").unwrap_or(0).max(0) as u64)
        .min(shared.config.max_long_poll.min(MAX_LONG_POLL));
    let deadline = Instant::now() + timeout;
    let mut state = shared.lock();
    state.polls_started += 1;
    let this_poll = state.polls_started;
    // A poll being held wakes up to see it was superseded.
    shared.changed.notify_all();
    if offset < 0 {
        // As Telegram documents: the last -offset updates; every earlier one is forgotten.
        let keep = usize::try_from(offset.unsigned_abs()).unwrap_or(usize::MAX);
        let forget = state.updates.len().saturating_sub(keep);
        state.updates.drain(..forget);
    } else {
        // As Telegram does: asking for an offset confirms every update before it.
        state.updates.retain(|(id, _)| *id >= offset);
    }
    state.stats.polls_in_flight += 1;
    loop {
        if state.polls_started != this_poll {
            // As Telegram does: a newer getUpdates ends the one being held with a 409.
            state.stats.polls_in_flight -= 1;
            state.stats.conflicts += 1;
            return Err(bot_error(409, CONFLICT));
        }
        let ready: Vec<Value> = state
            .updates
            .iter()
            .take(limit)
            .map(|(_, u)| u.clone())
            .collect();
        let now = Instant::now();
        if !ready.is_empty() || now >= deadline {
            state.stats.polls_in_flight -= 1;
            return Ok(Value::Array(ready));
        }
        state = shared
            .changed
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

/// The `chat_id` parameter, as a number or a numeric string.
fn chat_id_param(params: &Value) -> Option<i64> {
    number_param(params, "chat_id")
}

/// A number parameter, as JSON sends it or as a query string or form sends it (text).
fn number_param(params: &Value, name: &str) -> Option<i64> {
    params
        .get(name)
        .and_then(|c| c.as_i64().or_else(|| c.as_str()?.trim().parse().ok()))
}

/// A Bot API call's parameters, from wherever Telegram takes them: the query string, and a
/// JSON or form (`application/x-www-form-urlencoded`) body; a form or query value that is a
/// JSON object or array (`reply_parameters`) is read as one. None: a body that is neither.
fn bot_params(query: &str, body: &str) -> Option<Value> {
    let from_form = |text: &str| -> serde_json::Map<String, Value> {
        form_urlencoded::parse(text.as_bytes())
            .map(|(key, value)| {
                let structured = (value.starts_with('{') || value.starts_with('['))
                    .then(|| serde_json::from_str(&value).ok())
                    .flatten();
                let value = structured.unwrap_or_else(|| Value::String(value.into_owned()));
                (key.into_owned(), value)
            })
            .collect()
    };
    let mut params = from_form(query);
    let body = body.trim();
    if !body.is_empty() {
        match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(fields)) => params.extend(fields),
            Ok(_) => return None,
            Err(_) if body.contains('=') && !body.starts_with(['{', '[']) => {
                params.extend(from_form(body));
            }
            Err(_) => return None,
        }
    }
    Some(Value::Object(params))
}

/// The chat as Telegram shows it, for a chat no message was posted in.
fn unknown_chat(chat_id: i64) -> Value {
    if chat_id >= 0 {
        return json!({"id": chat_id, "type": "private", "first_name": format!("User {chat_id}")});
    }
    // Telegram's supergroup ids are -100 followed by 10 digits; basic groups' are short.
    let kind = if chat_id <= -1_000_000_000_000 {
        ChatKind::Supergroup
    } else {
        ChatKind::Group
    };
    Chat {
        id: chat_id,
        kind,
        title: None,
    }
    .to_json()
}

fn send_message(shared: &Shared, params: &Value, arrived: u64) -> Result<Value, Reply> {
    let (Some(chat_id), Some(text)) = (
        chat_id_param(params),
        params.get("text").and_then(Value::as_str),
    ) else {
        return Err(bot_error(400, "Bad Request: chat_id and text are required"));
    };
    let reply_to_message_id = params
        .pointer("/reply_parameters/message_id")
        .and_then(Value::as_i64)
        .or_else(|| number_param(params, "reply_to_message_id"));
    let mut state = shared.lock();
    if let Some(&new) = state.migrated.get(&chat_id) {
        return Err(respond(
            400,
            json!({
                "ok": false,
                "error_code": 400,
                "description": "Bad Request: group chat was upgraded to a supergroup chat",
                "parameters": {"migrate_to_chat_id": new},
            }),
        ));
    }
    // Telegram trims the text; what is left is counted in characters after entity parsing,
    // which for plain text is the text itself.
    if text.trim().is_empty() {
        return Err(bot_error(400, "Bad Request: message text is empty"));
    }
    if text.chars().count() > MAX_MESSAGE_LENGTH {
        return Err(bot_error(400, "Bad Request: message is too long"));
    }
    if let Some(limits) = state.limits {
        let now = Instant::now();
        if let Some(wait) = state.windows.wait(&limits, chat_id, now) {
            state.count_rate_limited(Some(chat_id));
            return Err(too_many_requests(retry_after_secs(wait)));
        }
        state.windows.record(chat_id, now);
    }
    let seq = state.sent.last().map_or(0, |m| m.seq) + 1;
    let message_id = state.next_message_id;
    state.next_message_id += 1;
    state.sent.push(SentMessage {
        seq,
        chat_id,
        text: text.to_owned(),
        reply_to_message_id,
        at_ms: arrived,
    });
    let chat = state
        .chats
        .get(&chat_id)
        .cloned()
        .unwrap_or_else(|| unknown_chat(chat_id));
    shared.changed.notify_all();
    Ok(json!({
        "message_id": message_id,
        "from": {"id": shared.config.bot_id, "is_bot": true, "first_name": "Demo Bot", "username": shared.config.bot_username},
        "chat": chat,
        "date": now_ms() / 1000,
        "text": text,
    }))
}

/// The query parameter `name`, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn control(shared: &Shared, method: &str, rest: &str, query: &str, body: &str) -> Reply {
    let refused = |e: &dyn std::fmt::Display| respond(400, json!({"error": e.to_string()}));
    match (method, rest) {
        ("POST", "messages") => match serde_json::from_str::<IncomingMessage>(body)
            .map_err(|e| e.to_string())
            .and_then(|message| post_messages(shared, &[message]))
        {
            Ok((update_ids, sent_before)) => respond(
                200,
                json!({"update_id": update_ids[0], "sent_before": sent_before}),
            ),
            Err(e) => refused(&e),
        },
        ("POST", "messages/batch") => match serde_json::from_str::<Vec<IncomingMessage>>(body)
            .map_err(|e| e.to_string())
            .and_then(|messages| post_messages(shared, &messages))
        {
            Ok((update_ids, sent_before)) => respond(
                200,
                json!({"update_ids": update_ids, "sent_before": sent_before}),
            ),
            Err(e) => refused(&e),
        },
        ("POST", "chats/migrate") => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Migration {
                from: i64,
                to: i64,
            }
            let migrated = serde_json::from_str::<Migration>(body)
                .map_err(|e| format!("{e}; send {{\"from\":-123,\"to\":-100123}}"))
                .and_then(|m| shared.lock().migrate(m.from, m.to).map(|()| m));
            match migrated {
                Ok(m) => respond(200, json!({"from": m.from, "to": m.to})),
                Err(e) => refused(&e),
            }
        }
        ("POST", "limits") => {
            let limits = serde_json::from_str::<Option<Limits>>(body)
                .map_err(|e| {
                    format!(
                        "{e}; send {{\"per_chat_per_sec\":1,\"per_group_per_min\":20,\"overall_per_sec\":30}}, or null to turn the limits off"
                    )
                })
                .and_then(|limits| match &limits {
                    Some(l) => l.check().map(|()| limits),
                    None => Ok(None),
                });
            match limits {
                Ok(limits) => {
                    shared.lock().limits = limits;
                    respond(200, json!(limits))
                }
                Err(e) => refused(&e),
            }
        }
        ("GET", "limits") => respond(200, json!(shared.lock().limits)),
        ("POST", "latency") => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Latency {
                ms: u64,
            }
            match serde_json::from_str::<Latency>(body) {
                Ok(Latency { ms }) => {
                    shared.lock().latency = Duration::from_millis(ms);
                    respond(200, json!({"ms": ms}))
                }
                Err(e) => refused(&format!("{e}; send {{\"ms\":50}} (0 for none)")),
            }
        }
        ("GET", "latency") => {
            let ms = shared.lock().latency.as_millis() as u64;
            respond(200, json!({"ms": ms}))
        }
        ("POST", "faults") => {
            let fault = serde_json::from_str::<Fault>(body)
                .map_err(|e| e.to_string())
                .and_then(|fault| fault.check().map(|()| fault));
            match fault {
                Ok(fault) => {
                    let mut state = shared.lock();
                    state.faults.push(fault);
                    respond(200, json!(state.faults))
                }
                Err(e) => refused(&e),
            }
        }
        ("GET", "faults") => respond(200, json!(shared.lock().faults)),
        ("DELETE", "faults") => {
            shared.lock().faults.clear();
            respond(200, json!([]))
        }
        ("GET", "sent") => {
            let after = query_param(query, "after")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            let chat_id = query_param(query, "chat_id").and_then(|c| c.parse().ok());
            let min = query_param(query, "min")
                .and_then(|m| m.parse().ok())
                .unwrap_or(1);
            let wait = query_param(query, "wait_ms")
                .and_then(|w| w.parse().ok())
                .unwrap_or(0u64)
                .min(600_000);
            let sent = wait_for_sent(shared, after, chat_id, min, Duration::from_millis(wait));
            respond(200, json!(sent))
        }
        ("GET", "stats") => respond(200, json!(shared.lock().stats())),
        ("GET", "commands") => respond(200, shared.lock().commands.clone()),
        ("GET", "health") => respond(200, json!({"ok": true})),
        _ => respond(404, json!({"error": "unknown control endpoint"})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_lets_its_limit_through_then_says_when_the_oldest_leaves() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let limits = Limits {
            per_chat_per_sec: 2,
            per_group_per_min: 1,
            overall_per_sec: 3,
        };
        let mut windows = Windows::default();
        for ms in [0, 100] {
            assert_eq!(windows.wait(&limits, 42, at(ms)), None);
            windows.record(42, at(ms));
        }
        assert_eq!(
            windows.wait(&limits, 42, at(300)),
            Some(Duration::from_millis(700)),
            "the message at 0 ms leaves the window at 1000 ms"
        );

        // Another private chat is free, until the overall limit (3 in a second) is reached.
        assert_eq!(windows.wait(&limits, 7, at(200)), None);
        windows.record(7, at(200));
        assert_eq!(
            windows.wait(&limits, 8, at(250)),
            Some(Duration::from_millis(750)),
            "three sent in the last second, the first at 0 ms"
        );

        assert_eq!(
            windows.wait(&limits, 42, at(1000)),
            None,
            "a second later it has left"
        );
        // A group's window is a minute long.
        assert_eq!(windows.wait(&limits, -100123, at(0)), None);
        windows.record(-100123, at(0));
        assert_eq!(
            windows.wait(&limits, -100123, at(30_000)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(windows.wait(&limits, -100123, at(60_000)), None);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(59)), 59);
    }

    #[test]
    fn a_migration_needs_two_distinct_negative_ids_once() {
        let mut state = State::default();
        assert!(
            state
                .migrate(123, -100123)
                .unwrap_err()
                .contains("negative")
        );
        assert!(state.migrate(-5, -5).unwrap_err().contains("itself"));
        state.migrate(-123, -100123).unwrap();
        assert_eq!(state.chats[&-100123]["type"], "supergroup");
        assert!(
            state
                .migrate(-123, -100999)
                .unwrap_err()
                .contains("already upgraded to -100123")
        );
        assert!(
            state
                .migrate(-100123, -100999)
                .unwrap_err()
                .contains("supergroup already")
        );
    }

    #[test]
    fn unknown_chats_are_private_or_groups_by_their_id() {
        assert_eq!(unknown_chat(42)["type"], "private");
        assert_eq!(unknown_chat(-123)["type"], "group");
        assert_eq!(unknown_chat(-1_001_234_567_890)["type"], "supergroup");
        assert_eq!(unknown_chat(-123)["title"], "Group -123");
    }

    #[test]
    fn incoming_json_without_a_chat_is_still_a_private_message() {
        let old: IncomingMessage =
            serde_json::from_str(r#"{"user_id":42,"text":"/start","first_name":"Ann"}"#).unwrap();
        assert_eq!((old.chat.clone(), old.chat_id()), (None, 42));
        assert!(
            !serde_json::to_string(&old).unwrap().contains("chat"),
            "serialized as before"
        );
        let group: IncomingMessage = serde_json::from_str(
            r#"{"user_id":42,"text":"hi","chat":{"id":-100123,"type":"supergroup","title":"Team"}}"#,
        )
        .unwrap();
        assert_eq!(group.chat, Some(Chat::supergroup(-100123, "Team")));
        assert_eq!(group.chat_id(), -100123);
        assert!(
            serde_json::from_str::<IncomingMessage>(
                r#"{"user_id":42,"text":"hi","chat":{"id":-1,"type":"channel"}}"#
            )
            .is_err()
        );
    }
}
