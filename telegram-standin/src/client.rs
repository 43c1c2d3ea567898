//! A minimal HTTP/1.1 client for the control API, so the `chat` command needs no HTTP crate and
//! runs inside the stand-in's `scratch` container; and helpers for tests that drive a stand-in
//! in another process.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

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

/// Sends one request to `base` (`http://host:port`) and returns the status and the body.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{base}: only http:// URLs are supported"),
            )
        })?
        .trim_end_matches('/');
    let addr = authority.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{authority}: no address"))
    })?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "no HTTP header in the response")
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "no HTTP status in the response")
        })?;
    Ok((status, body.to_owned()))
}
