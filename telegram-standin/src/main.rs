//! `telegram-standin serve` runs the Bot API stand-in; `telegram-standin chat TEXT` plays a user
//! against a running one and prints the bot's answers.

use std::process::ExitCode;
use std::time::Duration;

use telegram_standin::{Config, IncomingMessage, SentMessage, Standin, client};

const USAGE: &str = "usage:
  telegram-standin serve [--listen ADDR]          (token from STANDIN_TOKEN, default the demo token)
  telegram-standin chat [--server URL] [--user ID] [--wait-ms N] TEXT
  telegram-standin health [--server URL]";

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
            let standin = Standin::start(&listen, config)
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            eprintln!(
                "telegram-standin: serving the Bot API on {}",
                standin.addr()
            );
            standin.join();
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
    if sent.is_empty() {
        return Err(format!(
            "the bot did not answer within {wait_ms} ms (is it running and healthy?)"
        ));
    }
    for message in sent {
        println!("{}", message.text);
    }
    Ok(())
}
