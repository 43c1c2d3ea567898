//! `telegram-standin serve` runs the Bot API stand-in; `telegram-standin chat TEXT` plays a user
//! against a running one and prints the bot's answers; `telegram-standin load --users N` has N
//! users send /start at once and prints how fast the bot answered them all.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use telegram_standin::{Config, IncomingMessage, Limits, SentMessage, Standin, client};

const USAGE: &str = "usage:
  telegram-standin serve [--listen ADDR] [--latency-ms N] [--telegram-limits]
      (token from STANDIN_TOKEN, default the demo token; --latency-ms delays every Bot API call;
       --telegram-limits answers 429 over Telegram's rate limits: 1 message/s per chat,
       20/min per group, 30/s overall)
  telegram-standin chat [--server URL] [--user ID] [--wait-ms N] TEXT
      (prints the answers as soon as the first arrives; nothing, and exit 0, when none came)
  telegram-standin health [--server URL]
  telegram-standin stats [--server URL]           (the control API's counters, as JSON)
  telegram-standin load [--server URL] --users N [--first-user ID] [--timeout-secs S]
      (prints one JSON line {messages, seconds, per_second} once every user got an answer)";

/// The first user id `load` plays, unless `--first-user` says otherwise.
const LOAD_FIRST_USER: i64 = 1_000_000;
/// How long `load` waits for every answer, unless `--timeout-secs` says otherwise.
const LOAD_TIMEOUT_SECS: u64 = 300;

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("telegram-standin: {message}");
            ExitCode::FAILURE
        }
    }
}

fn take_option(args: &mut Vec<String>, name: &str) -> Result<Option<String>, String> {
    let Some(at) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    if at + 1 >= args.len() {
        return Err(format!("{name} needs a value\n{USAGE}"));
    }
    let value = args.remove(at + 1);
    args.remove(at);
    Ok(Some(value))
}

/// Removes the flag `name` from `args`; whether it was there.
fn take_flag(args: &mut Vec<String>, name: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != name);
    args.len() != before
}

fn run(mut args: Vec<String>) -> Result<(), String> {
    if args.is_empty() {
        return Err(USAGE.into());
    }
    let command = args.remove(0);
    let server =
        take_option(&mut args, "--server")?.unwrap_or_else(|| "http://127.0.0.1:8081".into());
    match command.as_str() {
        "serve" => {
            let listen =
                take_option(&mut args, "--listen")?.unwrap_or_else(|| "0.0.0.0:8081".into());
            let mut config = Config::default();
            if let Ok(token) = std::env::var("STANDIN_TOKEN") {
                config.token = token;
            }
            if let Ok(ms) = std::env::var("STANDIN_MAX_LONG_POLL_MS") {
                let ms: u64 = ms.parse().map_err(|_| {
                    format!("STANDIN_MAX_LONG_POLL_MS={ms} is not a number of milliseconds")
                })?;
                config.max_long_poll = Duration::from_millis(ms);
            }
            if let Some(ms) = take_option(&mut args, "--latency-ms")? {
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| format!("--latency-ms takes milliseconds, not {ms}"))?;
                config.latency = Duration::from_millis(ms);
            }
            if take_flag(&mut args, "--telegram-limits") {
                config.limits = Some(Limits::default());
            }
            if !args.is_empty() {
                return Err(format!("serve takes no argument {:?}\n{USAGE}", args[0]));
            }
            let standin = Standin::start(&listen, config)
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            eprintln!(
                "telegram-standin: serving the Bot API on {}",
                standin.addr()
            );
            standin.join();
            Ok(())
        }
        "stats" => {
            let (status, body) = client::request(
                &server,
                "GET",
                "/control/stats",
                None,
                Duration::from_secs(10),
            )
            .map_err(|e| format!("cannot reach the stand-in at {server}: {e}"))?;
            if status != 200 {
                return Err(format!("{server}: status {status}"));
            }
            println!("{}", body.trim());
            Ok(())
        }
        "chat" => {
            let user_id: i64 = take_option(&mut args, "--user")?
                .unwrap_or_else(|| "1001".into())
                .parse()
                .map_err(|_| "--user takes a numeric Telegram user id".to_owned())?;
            let wait_ms: u64 = take_option(&mut args, "--wait-ms")?
                .unwrap_or_else(|| "10000".into())
                .parse()
                .map_err(|_| "--wait-ms takes milliseconds".to_owned())?;
            let text = args.join(" ");
            if text.is_empty() {
                return Err(format!("chat needs the message text\n{USAGE}"));
            }
            chat(&server, user_id, &text, wait_ms)
        }
        "health" => client::request(
            &server,
            "GET",
            "/control/health",
            None,
            Duration::from_secs(5),
        )
        .map_err(|e| format!("{server}: {e}"))
        .and_then(|(status, _)| {
            if status == 200 {
                Ok(())
            } else {
                Err(format!("{server}: status {status}"))
            }
        }),
        "load" => {
            let users: usize = take_option(&mut args, "--users")?
                .ok_or_else(|| format!("load needs --users N\n{USAGE}"))?
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| "--users takes a number of users, 1 or more".to_owned())?;
            let first_user: i64 =
                match take_option(&mut args, "--first-user")? {
                    None => LOAD_FIRST_USER,
                    Some(id) => id.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
                        "--first-user takes a positive Telegram user id".to_owned()
                    })?,
                };
            let timeout: u64 = match take_option(&mut args, "--timeout-secs")? {
                None => LOAD_TIMEOUT_SECS,
                Some(s) => s
                    .parse()
                    .map_err(|_| "--timeout-secs takes whole seconds".to_owned())?,
            };
            if !args.is_empty() {
                return Err(format!("load takes no argument {:?}\n{USAGE}", args[0]));
            }
            load(&server, users, first_user, Duration::from_secs(timeout))
        }
        other => Err(format!("unknown command {other}\n{USAGE}")),
    }
}

fn chat(server: &str, user_id: i64, text: &str, wait_ms: u64) -> Result<(), String> {
    let mut message = IncomingMessage::new(user_id, text);
    message.first_name = Some("Demo".into());
    message.username = Some("demo_user".into());
    let body = serde_json::to_string(&message).map_err(|e| e.to_string())?;
    let (status, answer) = client::request(
        server,
        "POST",
        "/control/messages",
        Some(&body),
        Duration::from_secs(10),
    )
    .map_err(|e| format!("cannot reach the stand-in at {server}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "the stand-in refused the message: {status} {answer}"
        ));
    }
    let posted: serde_json::Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
    let after = posted["sent_before"].as_u64().unwrap_or(0);
    let path = format!("/control/sent?after={after}&chat_id={user_id}&wait_ms={wait_ms}");
    let (_, answer) = client::request(
        server,
        "GET",
        &path,
        None,
        Duration::from_millis(wait_ms + 5000),
    )
    .map_err(|e| format!("cannot reach the stand-in at {server}: {e}"))?;
    let sent: Vec<SentMessage> = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
    // No answer is an answer too (the bot answers commands only): the caller decides.
    for message in sent {
        println!("{}", message.text);
    }
    Ok(())
}

/// Posts one /start from each of `users` distinct users in one batch, waits until each got an
/// answer, and prints the rate as one JSON line on stdout.
fn load(server: &str, users: usize, first_user: i64, timeout: Duration) -> Result<(), String> {
    let ids: Vec<i64> = (0..users as i64).map(|i| first_user + i).collect();
    let messages: Vec<IncomingMessage> = ids
        .iter()
        .map(|&id| {
            let mut message = IncomingMessage::new(id, "/start");
            message.first_name = Some(format!("Load {id}"));
            message
        })
        .collect();
    let body = serde_json::to_string(&messages).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let deadline = started + timeout;
    let (status, answer) = client::request(
        server,
        "POST",
        "/control/messages/batch",
        Some(&body),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("cannot reach the stand-in at {server}: {e}"))?;
    if status != 200 {
        return Err(format!("the stand-in refused the batch: {status} {answer}"));
    }
    let posted: serde_json::Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
    let mut seen_up_to = posted["sent_before"].as_u64().unwrap_or(0);
    let waiting_for: HashSet<i64> = ids.iter().copied().collect();
    let mut answered: HashSet<i64> = HashSet::new();
    while answered.len() < waiting_for.len() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!(
                "only {} of {users} users got an answer within {}s (is the bot running, and polling this stand-in?)",
                answered.len(),
                timeout.as_secs()
            ));
        }
        let missing = waiting_for.len() - answered.len();
        let path = format!(
            "/control/sent?after={seen_up_to}&min={missing}&wait_ms={}",
            remaining.as_millis()
        );
        let (_, answer) = client::request(
            server,
            "GET",
            &path,
            None,
            remaining + Duration::from_secs(10),
        )
        .map_err(|e| format!("cannot reach the stand-in at {server}: {e}"))?;
        let sent: Vec<SentMessage> = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
        for message in sent {
            seen_up_to = seen_up_to.max(message.seq);
            if waiting_for.contains(&message.chat_id) {
                answered.insert(message.chat_id);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Written by hand to keep the keys in this order for scripts that read the line as text.
    println!(
        "{{\"messages\":{users},\"seconds\":{seconds:.3},\"per_second\":{:.1}}}",
        users as f64 / seconds
    );
    Ok(())
}
