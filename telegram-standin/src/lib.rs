//! A stand-in for the Telegram Bot API: a real HTTP server that answers the methods the bot
//! calls (`POST /bot<token>/<method>`, method names in any case) the way Telegram does, and a
//! control API under `/control/` that plays the users: post a user's message, read what the bot
//! sent.
//!
//! It never answers 5xx unless told to: faults are injected on purpose, in-process with
//! [`Standin::inject`] or over the control API, and each applies to a number of calls.
//!
//! Control API (JSON):
//! - `POST /control/messages` `{"user_id":42,"text":"/start","first_name":"Ann"}` queues a message
//!   and answers `{"update_id":..,"sent_before":N}`.
//! - `POST /control/messages/batch` `[{...}, {...}]` queues many users' messages at once (one
//!   `getUpdates` can see them all) and answers `{"update_ids":[..],"sent_before":N}`.
//! - `GET /control/sent?after=N&chat_id=42&min=1&wait_ms=5000` answers the messages the bot sent
//!   after sequence number N, waiting up to `wait_ms` until there are `min` (default 1).
//! - `GET /control/stats` answers call counts, the arrival time of every call, the faults
//!   applied, and how many long polls are being held.
//! - `POST /control/faults` adds a [`Fault`], e.g.
//!   `{"method":"sendMessage","kind":"too_many_requests","retry_after":2,"times":1}`,
//!   `{"method":"*","kind":"delay","ms":300,"times":null}` (`null`: until cleared),
//!   `{"method":"getUpdates","kind":"server_error","status":502}`,
//!   `{"method":"getMe","kind":"broken_response"}`; `times` defaults to 1.
//!   `GET /control/faults` lists those still pending; `DELETE /control/faults` clears them.

use std::collections::HashMap;
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: "123456:DEMO-TOKEN".into(),
            bot_id: 123456,
            bot_username: "demo_bot".into(),
            max_long_poll: MAX_LONG_POLL,
        }
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
        }
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
    /// timeout).
    pub polls_in_flight: u64,
    /// Calls refused for a wrong token.
    pub unauthorized: u64,
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
            config,
            state: Mutex::new(State {
                next_update_id: 1,
                next_message_id: 1,
                commands: json!([]),
                ..State::default()
            }),
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
    pub fn post_message(&self, message: &IncomingMessage) -> u64 {
        post_messages(&self.shared, std::slice::from_ref(message)).1
    }

    /// Queues many users' messages at once, so one `getUpdates` can see them all; returns the
    /// sent-message sequence number before them.
    pub fn post_messages(&self, messages: &[IncomingMessage]) -> u64 {
        post_messages(&self.shared, messages).1
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
        self.shared.lock().stats.clone()
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
/// message sent before them.
fn post_messages(shared: &Shared, messages: &[IncomingMessage]) -> (Vec<i64>, u64) {
    let mut state = shared.lock();
    let update_ids = messages
        .iter()
        .map(|message| push_update(&mut state, message))
        .collect();
    let sent_before = state.sent.last().map_or(0, |m| m.seq);
    shared.changed.notify_all();
    (update_ids, sent_before)
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
    if token != shared.config.token {
        shared.lock().stats.unauthorized += 1;
        return bot_error(401, "Unauthorized");
    }
    let params: Value = if body.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str(&body) {
            Ok(value) => value,
            Err(_) => return bot_error(400, "Bad Request: can't parse JSON"),
        }
    };
    let method = method.to_ascii_lowercase();
    let (delay, fault) = {
        let mut state = shared.lock();
        let arrived = now_ms();
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
            return respond(
                429,
                json!({
                    "ok": false,
                    "error_code": 429,
                    "description": format!("Too Many Requests: retry after {retry_after}"),
                    "parameters": {"retry_after": retry_after},
                }),
            );
        }
        Some(FaultKind::ServerError { status }) => {
            return bot_error(status, &server_error_description(status));
        }
        Some(FaultKind::BrokenResponse) => return Reply::Raw(b"THIS IS NOT HTTP\r\n\r\n"),
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
            json!({"url": "", "has_custom_certificate": false, "pending_update_count": 0})
        }
        "deletewebhook" | "setmycommands" => {
            if method == "setmycommands" {
                shared.lock().commands = params.get("commands").cloned().unwrap_or(json!([]));
            }
            json!(true)
        }
        "getupdates" => get_updates(shared, &params),
        "sendmessage" => match send_message(shared, &params) {
            Some(message) => message,
            None => return bot_error(400, "Bad Request: chat_id and text are required"),
        },
        _ => return bot_error(404, "Not Found: method not found"),
    };
    respond(200, json!({"ok": true, "result": result}))
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

fn get_updates(shared: &Shared, params: &Value) -> Value {
    let offset = params.get("offset").and_then(Value::as_i64).unwrap_or(0);
    let limit = params
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(100)
        .clamp(1, 100) as usize;
    let timeout = Duration::from_secs(params.get("timeout").and_then(Value::as_u64).unwrap_or(0))
        .min(shared.config.max_long_poll.min(MAX_LONG_POLL));
    let deadline = Instant::now() + timeout;
    let mut state = shared.lock();
    // As Telegram does: asking for an offset confirms every update before it.
    state.updates.retain(|(id, _)| *id >= offset);
    state.stats.polls_in_flight += 1;
    loop {
        let ready: Vec<Value> = state
            .updates
            .iter()
            .take(limit)
            .map(|(_, u)| u.clone())
            .collect();
        let now = Instant::now();
        if !ready.is_empty() || now >= deadline {
            state.stats.polls_in_flight -= 1;
            return Value::Array(ready);
        }
        state = shared
            .changed
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

fn send_message(shared: &Shared, params: &Value) -> Option<Value> {
    let chat_id = params
        .get("chat_id")
        .and_then(|c| c.as_i64().or_else(|| c.as_str()?.parse().ok()))?;
    let text = params.get("text").and_then(Value::as_str)?.to_owned();
    let mut state = shared.lock();
    let seq = state.sent.last().map_or(0, |m| m.seq) + 1;
    let message_id = state.next_message_id;
    state.next_message_id += 1;
    state.sent.push(SentMessage {
        seq,
        chat_id,
        text: text.clone(),
    });
    shared.changed.notify_all();
    Some(json!({
        "message_id": message_id,
        "from": {"id": shared.config.bot_id, "is_bot": true, "first_name": "Demo Bot", "username": shared.config.bot_username},
        "chat": {"id": chat_id, "type": "private", "first_name": format!("User {chat_id}")},
        "date": now_ms() / 1000,
        "text": text,
    }))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn control(shared: &Shared, method: &str, rest: &str, query: &str, body: &str) -> Reply {
    let refused = |e: &dyn std::fmt::Display| respond(400, json!({"error": e.to_string()}));
    match (method, rest) {
        ("POST", "messages") => match serde_json::from_str::<IncomingMessage>(body) {
            Ok(message) => {
                let (update_ids, sent_before) = post_messages(shared, &[message]);
                respond(
                    200,
                    json!({"update_id": update_ids[0], "sent_before": sent_before}),
                )
            }
            Err(e) => refused(&e),
        },
        ("POST", "messages/batch") => match serde_json::from_str::<Vec<IncomingMessage>>(body) {
            Ok(messages) => {
                let (update_ids, sent_before) = post_messages(shared, &messages);
                respond(
                    200,
                    json!({"update_ids": update_ids, "sent_before": sent_before}),
                )
            }
            Err(e) => refused(&e),
        },
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
        ("GET", "stats") => respond(200, json!(shared.lock().stats)),
        ("GET", "commands") => respond(200, shared.lock().commands.clone()),
        ("GET", "health") => respond(200, json!({"ok": true})),
        _ => respond(404, json!({"error": "unknown control endpoint"})),
    }
}
