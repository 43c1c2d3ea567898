//! The Telegram bot (`bot run`, the default), its database commands (`bot db ...`) and its health
//! check (`bot healthcheck`).

mod chats;
mod commands;
mod config;
mod db_cli;
mod failures;
mod handled;
mod health;
mod import;
mod migrating;
mod polling;
mod replies;
mod retention;
mod snapshot;
mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use config::Config;

/// The bot. Settings come from the environment: BOT_TOKEN, DATABASE_PATH, TELEGRAM_API_URL,
/// ADMIN_IDS, BOT_RATE_LIMITS, BOT_USER_MESSAGES_PER_MINUTE, BOT_STOP_GRACE_SECS,
/// COMMAND_LOG_DAYS, RUST_LOG.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bot (the default).
    Run,
    /// The database: status, upgrade, stamp, adopt, backup, restore, import.
    Db {
        /// One JSON object on stdout (after the command's name too: `bot db status --json`).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: db_cli::DbCommand,
    },
    /// Exit 0 only when the polling loop is alive and the database is current.
    Healthcheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Db { .. })) {
        // `bot db status | head -1`: a reader that goes away ends the command quietly, as
        // it does any Unix tool, instead of a panic in `println!`.
        // SAFETY: setting a signal's disposition to the default touches no memory of ours.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let config = Config::from_env();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config),
        Command::Db { command, json } => db_cli::run(command, json, &config.database_path),
        Command::Healthcheck => health::check(&config.heartbeat_path, &config.database_path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let token = std::env::var("BOT_TOKEN").unwrap_or_default();
            eprintln!(
                "bot: {}",
                config::redact(&format!("{error:#}"), token.trim())
            );
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(polling::run(config));
    // A DNS lookup in flight runs on a blocking thread that cannot be interrupted; dropping the
    // runtime would wait for it, and SIGTERM must stop the bot within a second.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    outcome
}
