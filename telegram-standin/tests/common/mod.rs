//! What the stand-in's integration tests share: a stand-in on a free port, its Bot API and
//! control API called over HTTP with JSON, and the `load` command run against it.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use telegram_standin::{Config, Standin, client};

/// A stand-in with the default configuration on a free port.
pub fn start() -> Standin {
    Standin::start("127.0.0.1:0", Config::default()).unwrap()
}

/// The default configuration's bot token.
pub fn token() -> String {
    Config::default().token
}

/// `method path` on the stand-in with an optional JSON body: status and JSON answer.
pub fn control(standin: &Standin, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = client::request(
        &standin.url(),
        method,
        path,
        body.as_deref(),
        Duration::from_secs(20),
    )
    .unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

/// A control API `path` posted `body`.
pub fn post(standin: &Standin, path: &str, body: Value) -> (u16, Value) {
    control(standin, "POST", path, Some(body))
}

/// A Bot API `method` posted with `token`.
pub fn call_as(standin: &Standin, token: &str, method: &str, body: Value) -> (u16, Value) {
    post(standin, &format!("/bot{token}/{method}"), body)
}

/// A Bot API `method` posted with the default token.
pub fn call(standin: &Standin, method: &str, body: Value) -> (u16, Value) {
    call_as(standin, &token(), method, body)
}

/// `telegram-standin load` against `standin` for `users` users, giving up after `timeout_secs`.
pub fn load(standin: &Standin, users: &str, timeout_secs: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_telegram-standin"))
        .args([
            "load",
            "--server",
            &standin.url(),
            "--users",
            users,
            "--timeout-secs",
            timeout_secs,
        ])
        .output()
        .unwrap()
}
