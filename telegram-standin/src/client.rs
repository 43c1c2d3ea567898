//! A client for the control API, for the `chat`, `load`, `health` and `stats` commands (plain
//! HTTP, no TLS, so the binary still runs alone in the stand-in's `scratch` container), and
//! helpers for tests that drive a stand-in in another process.

use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::Client;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::Limits;

/// How long a control call may take: none of these waits for anything.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls the control API at `base` (`http://host:port`; `path` from `/control/`) and returns
/// its JSON answer; a refusal is an error carrying the stand-in's reason.
pub fn control(base: &str, method: &str, path: &str, body: Option<&Value>) -> io::Result<Value> {
    let body = body.map(Value::to_string);
    let (status, answer) = request(base, method, path, body.as_deref(), CONTROL_TIMEOUT)?;
    let answer: Value = serde_json::from_str(&answer).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{base}{path}: the answer is not JSON ({e}); is {base} a telegram-standin?"),
        )
    })?;
    if status != 200 {
        let why = answer["error"]
            .as_str()
            .map_or_else(|| answer.to_string(), str::to_owned);
        return Err(io::Error::other(format!(
            "{method} {base}{path} was refused ({status}): {why}"
        )));
    }
    Ok(answer)
}

/// Upgrades group `from` to supergroup `to` (`POST /control/chats/migrate`).
pub fn migrate_chat(base: &str, from: i64, to: i64) -> io::Result<()> {
    let body = json!({"from": from, "to": to});
    control(base, "POST", "/control/chats/migrate", Some(&body)).map(drop)
}

/// Turns Telegram's rate limits on (`Some`) or off (`None`) (`POST /control/limits`).
pub fn set_limits(base: &str, limits: Option<&Limits>) -> io::Result<()> {
    control(base, "POST", "/control/limits", Some(&json!(limits))).map(drop)
}

/// Makes every Bot API call wait `latency` before it is handled (`POST /control/latency`).
pub fn set_latency(base: &str, latency: Duration) -> io::Result<()> {
    let body = json!({"ms": latency.as_millis() as u64});
    control(base, "POST", "/control/latency", Some(&body)).map(drop)
}

/// The client every call shares: its connections are kept alive between calls.
fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Client::builder()
            // The stand-in is local or in the same network: an HTTP_PROXY meant for the
            // internet must not carry these calls.
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client without TLS always builds")
    })
}

/// Sends one request to `base` (`http://host:port`) and returns the status and the body. An
/// answer that is not HTTP is an [`io::ErrorKind::InvalidData`] error.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut request = client()
        .request(method, &url)
        .timeout(timeout)
        .header(CONTENT_TYPE, "application/json");
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().map_err(to_io)?;
    let status = response.status().as_u16();
    let body = response.text().map_err(to_io)?;
    Ok((status, body))
}

/// The I/O error behind a failed call, or `InvalidData` when the answer was not HTTP.
fn to_io(error: reqwest::Error) -> io::Error {
    let kind = if error.is_timeout() {
        io::ErrorKind::TimedOut
    } else {
        std::iter::successors(std::error::Error::source(&error), |e| e.source())
            .find_map(|e| e.downcast_ref::<io::Error>())
            .map_or(io::ErrorKind::InvalidData, io::Error::kind)
    };
    io::Error::new(kind, error)
}
