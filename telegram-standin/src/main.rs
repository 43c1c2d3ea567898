//! `telegram-standin serve` runs the Bot API stand-in; `telegram-standin chat TEXT` plays a user
//! against a running one and prints the bot's answers; `telegram-standin load --users N` has N
//! users send /start at once and prints how fast the bot answered them all.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use telegram_standin::{Config, IncomingMessage, Limits, SentMessage, Standin, client};

/// Telegram's Bot API for the bot, played locally: serve it, or talk to a running stand-in as
/// its users.
#[derive(Parser)]
#[command(name = "telegram-standin", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the Bot API stand-in.
    #[command(after_help = "Environment:
  STANDIN_TOKEN             the only token accepted (default: the demo token)
  STANDIN_MAX_LONG_POLL_MS  the longest a getUpdates long poll is held (at most 10000)")]
    Serve {
        /// The address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8081", value_parser = socket_address)]
        listen: String,
        /// Delays every Bot API call by N milliseconds, as if Telegram were far away.
        #[arg(long, value_name = "N", default_value_t = 0)]
        latency_ms: u64,
        /// Answers 429 over Telegram's rate limits: 1 message/s per chat, 20/min per group,
        /// 30/s overall.
        #[arg(long)]
        telegram_limits: bool,
    },
    /// Sends TEXT as a user; prints the answers as soon as the first arrives (nothing, and
    /// exit 0, when none came).
    Chat {
        #[command(flatten)]
        server: Server,
        /// The Telegram user id to write as.
        #[arg(long = "user", value_name = "ID", default_value_t = 1001)]
        user_id: i64,
        /// How long to wait for the first answer, in milliseconds (at most an hour).
        #[arg(long, value_name = "N", default_value_t = 10_000,
              value_parser = clap::value_parser!(u64).range(..=3_600_000))]
        wait_ms: u64,
        /// The message (words are joined with spaces).
        #[arg(required = true, value_name = "TEXT")]
        text: Vec<String>,
    },
    /// Exits 0 when the stand-in answers.
    Health {
        #[command(flatten)]
        server: Server,
    },
    /// Prints the control API's counters, as JSON.
    Stats {
        #[command(flatten)]
        server: Server,
    },
    /// Has N users send /start at once; prints one JSON line {messages, seconds, per_second}
    /// once every user got an answer.
    Load {
        #[command(flatten)]
        server: Server,
        /// How many distinct users.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        users: u64,
        /// The first user's id; the others follow it.
        #[arg(long, value_name = "ID", default_value_t = 1_000_000,
              value_parser = clap::value_parser!(i64).range(1..))]
        first_user: i64,
        /// How long to wait for every answer, in whole seconds (at most a day).
        #[arg(long, value_name = "S", default_value_t = 300,
              value_parser = clap::value_parser!(u64).range(1..=86_400))]
        timeout_secs: u64,
    },
}

/// The running stand-in the client commands talk to.
#[derive(Args)]
struct Server {
    /// The stand-in's base URL.
    #[arg(
        long = "server",
        value_name = "URL",
        default_value = "http://127.0.0.1:8081",
        value_parser = http_url
    )]
    url: String,
}

/// An address to listen on (`HOST:PORT`), checked as the command line is read.
fn socket_address(text: &str) -> Result<String, String> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .map(|_| text.to_owned())
        .map_err(|e| format!("not an address to listen on (HOST:PORT): {e}"))
}

/// An http(s) URL, checked as the command line is read.
fn http_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(text.to_owned())
        }
        Ok(_) => Err("not an http:// or https:// URL with a host".into()),
        Err(e) => Err(format!("not a URL: {e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Load {
        users, first_user, ..
    } = &cli.command
        && first_user.checked_add(*users as i64).is_none()
    {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::ValueValidation,
                "--first-user plus --users goes past the largest user id",
            )
            .exit();
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("telegram-standin: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve {
            listen,
            latency_ms,
            telegram_limits,
        } => {
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
            config.latency = Duration::from_millis(latency_ms);
            if telegram_limits {
                config.limits = Some(Limits::default());
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
        Command::Stats { server } => {
            let server = server.url;
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
        Command::Chat {
            server,
            user_id,
            wait_ms,
            text,
        } => chat(&server.url, user_id, &text.join(" "), wait_ms),
        Command::Health { server } => {
            let server = server.url;
            let (status, _) = client::request(
                &server,
                "GET",
                "/control/health",
                None,
                Duration::from_secs(5),
            )
            .map_err(|e| format!("{server}: {e}"))?;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("{server}: status {status}"))
            }
        }
        Command::Load {
            server,
            users,
            first_user,
            timeout_secs,
        } => load(
            &server.url,
            users as usize,
            first_user,
            Duration::from_secs(timeout_secs),
        ),
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
