//! A stand-in for the Telegram Bot API: a real HTTP server that answers the methods the bot
//! calls (`POST /bot<token>/<method>`, method names in any case) the way Telegram does, and a
//! control API under `/control/` that plays the users: post a user's message, read what the bot
//! sent.
//!
//! Control API (JSON):
//! - `POST /control/messages` `{"user_id":42,"text":"/start","first_name":"Ann"}` queues a message
//!   and answers `{"update_id":..,"sent_before":N}`.
//! - `GET /control/sent?after=N&chat_id=42&wait_ms=5000` answers the messages the bot sent after
//!   sequence number N, waiting up to `wait_ms` for the first.
//! - `GET /control/stats` answers call counts and the time of every `getUpdates` call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response, Server};

pub mod client;

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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: "123456:DEMO-TOKEN".into(),
            bot_id: 123456,
            bot_username: "demo_bot".into(),
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
pub struct Stats {
    /// Calls per method (lower-case name).
    pub calls: HashMap<String, u64>,
    /// Milliseconds since the Unix epoch of each `getUpdates` call's arrival.
    pub get_updates_at_ms: Vec<u64>,
    /// Calls refused for a wrong token.
    pub unauthorized: u64,
}

#[derive(Default)]
struct State {
    next_update_id: i64,
    next_message_id: i64,
    updates: Vec<(i64, Value)>,
    sent: Vec<SentMessage>,
    commands: Value,
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
    server: Arc<Server>,
    addr: SocketAddr,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Standin {
    /// Starts serving on `listen` (e.g. "127.0.0.1:0" for any free port).
    pub fn start(listen: &str, config: Config) -> std::io::Result<Standin> {
        let server = Arc::new(Server::http(listen).map_err(std::io::Error::other)?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("the stand-in listens on an IP address"))?;
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
        let acceptor = {
            let server = Arc::clone(&server);
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                for request in server.incoming_requests() {
                    let shared = Arc::clone(&shared);
                    // A thread each: long polls hold their request for seconds.
                    thread::spawn(move || handle(&shared, request));
                }
            })
        };
        Ok(Standin {
            shared,
            server,
            addr,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give the bot as its Bot API URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a user's message for the bot's next `getUpdates`; returns the sent-message
    /// sequence number before it, for [`Standin::wait_for_sent`].
    pub fn post_message(&self, message: &IncomingMessage) -> u64 {
        post_message(&self.shared, message).1
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
        wait_for_sent(&self.shared, after, chat_id, timeout)
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
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn post_message(shared: &Shared, message: &IncomingMessage) -> (i64, u64) {
    let mut state = shared.lock();
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
    let sent_before = state.sent.last().map_or(0, |m| m.seq);
    shared.changed.notify_all();
    (update_id, sent_before)
}

fn wait_for_sent(
    shared: &Shared,
    after: u64,
    chat_id: Option<i64>,
    timeout: Duration,
) -> Vec<SentMessage> {
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
        if !found.is_empty() || now >= deadline {
            return found;
        }
        state = shared
            .changed
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

fn respond(request: Request, status: u16, body: &Value) {
    let header = Header::from_bytes("Content-Type", "application/json").expect("a valid header");
    let response = Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header);
    let _ = request.respond(response);
}

fn bot_error(request: Request, status: u16, description: &str) {
    respond(
        request,
        status,
        &json!({"ok": false, "error_code": status, "description": description}),
    );
}

fn handle(shared: &Shared, mut request: Request) {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let mut body = String::new();
    if request.as_reader().read_to_string(&mut body).is_err() {
        return bot_error(request, 400, "Bad Request: body is not UTF-8");
    }
    if let Some(rest) = path.strip_prefix("/control/") {
        return control(shared, request, rest, query, &body);
    }
    let Some((token, method)) = path
        .strip_prefix("/bot")
        .and_then(|rest| rest.split_once('/'))
    else {
        return bot_error(request, 404, "Not Found");
    };
    if token != shared.config.token {
        shared.lock().stats.unauthorized += 1;
        return bot_error(request, 401, "Unauthorized");
    }
    let params: Value = if body.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str(&body) {
            Ok(value) => value,
            Err(_) => return bot_error(request, 400, "Bad Request: can't parse JSON"),
        }
    };
    let method = method.to_ascii_lowercase();
    {
        let mut state = shared.lock();
        *state.stats.calls.entry(method.clone()).or_default() += 1;
        if method == "getupdates" {
            state.stats.get_updates_at_ms.push(now_ms());
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
            None => return bot_error(request, 400, "Bad Request: chat_id and text are required"),
        },
        _ => return bot_error(request, 404, "Not Found: method not found"),
    };
    respond(request, 200, &json!({"ok": true, "result": result}));
}

fn get_updates(shared: &Shared, params: &Value) -> Value {
    let offset = params.get("offset").and_then(Value::as_i64).unwrap_or(0);
    let limit = params
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(100)
        .clamp(1, 100) as usize;
    let timeout = Duration::from_secs(params.get("timeout").and_then(Value::as_u64).unwrap_or(0))
        .min(MAX_LONG_POLL);
    let deadline = Instant::now() + timeout;
    let mut state = shared.lock();
    // As Telegram does: asking for an offset confirms every update before it.
    state.updates.retain(|(id, _)| *id >= offset);
    loop {
        let ready: Vec<Value> = state
            .updates
            .iter()
            .take(limit)
            .map(|(_, u)| u.clone())
            .collect();
        let now = Instant::now();
        if !ready.is_empty() || now >= deadline {
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

fn control(shared: &Shared, request: Request, rest: &str, query: &str, body: &str) {
    match (request.method(), rest) {
        (Method::Post, "messages") => match serde_json::from_str::<IncomingMessage>(body) {
            Ok(message) => {
                let (update_id, sent_before) = post_message(shared, &message);
                respond(
                    request,
                    200,
                    &json!({"update_id": update_id, "sent_before": sent_before}),
                );
            }
            Err(e) => respond(request, 400, &json!({"error": e.to_string()})),
        },
        (Method::Get, "sent") => {
            let after = query_param(query, "after")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            let chat_id = query_param(query, "chat_id").and_then(|c| c.parse().ok());
            let wait = query_param(query, "wait_ms")
                .and_then(|w| w.parse().ok())
                .unwrap_or(0u64)
                .min(60_000);
            let sent = wait_for_sent(shared, after, chat_id, Duration::from_millis(wait));
            respond(request, 200, &json!(sent));
        }
        (Method::Get, "stats") => {
            let stats = shared.lock().stats.clone();
            respond(request, 200, &json!(stats));
        }
        (Method::Get, "commands") => {
            let commands = shared.lock().commands.clone();
            respond(request, 200, &commands);
        }
        (Method::Get, "health") => respond(request, 200, &json!({"ok": true})),
        _ => respond(request, 404, &json!({"error": "unknown control endpoint"})),
    }
}
