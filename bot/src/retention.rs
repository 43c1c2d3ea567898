//! Retention: `command_log` is kept for `COMMAND_LOG_DAYS` days (90 unless set; 0 keeps it for
//! ever), `handled_updates` for two days. A task trims them in small batches, each its own short
//! transaction on the writer with a pause between, so that a message never waits long behind it.

use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;

use crate::store::{Closed, Store};

/// Days of `command_log` kept when `COMMAND_LOG_DAYS` is not set.
pub const DEFAULT_COMMAND_LOG_DAYS: u32 = 90;
/// When [`spawn_retention`]'s first round starts: not among the start's own work.
const FIRST_ROUND_AFTER: Duration = Duration::from_secs(60);

/// How the retention task works.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Days of `command_log` kept; 0 keeps it for ever.
    pub command_log_days: u32,
    /// Rows removed per transaction at most.
    pub batch: usize,
    /// The pause between two batches while old rows are left: the messages queued meanwhile
    /// go first.
    pub pause: Duration,
    /// How long the task waits after the bot starts, and between two rounds.
    pub every: Duration,
}

impl Retention {
    /// The defaults: 1000 rows per batch, 100 ms apart, a round every hour.
    pub fn new(command_log_days: u32) -> Retention {
        Retention {
            command_log_days,
            batch: 1000,
            pause: Duration::from_millis(100),
            every: Duration::from_secs(3600),
        }
    }
}

/// Reads `COMMAND_LOG_DAYS`: a whole number of days, 0 for ever; unset or empty means
/// [`DEFAULT_COMMAND_LOG_DAYS`].
pub fn command_log_days_from_env() -> anyhow::Result<u32> {
    parse_days(&std::env::var("COMMAND_LOG_DAYS").unwrap_or_default())
}

fn parse_days(value: &str) -> anyhow::Result<u32> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(DEFAULT_COMMAND_LOG_DAYS);
    }
    value.parse().ok().with_context(|| {
        format!(
            "COMMAND_LOG_DAYS={value:?} is not a number of days; give a whole number, e.g. COMMAND_LOG_DAYS=90 (0 keeps the command log for ever)"
        )
    })
}

/// Starts the retention task with the defaults ([`Retention::new`]). It runs until the store
/// is closed (or the handle is aborted); its first round starts a minute after it.
pub fn spawn_retention(store: Store, command_log_days: u32) -> JoinHandle<()> {
    spawn_with(store, Retention::new(command_log_days), FIRST_ROUND_AFTER)
}

/// Starts the retention task: its first round after `first`, then one every `retention.every`.
/// A round trims batch after batch while old rows are left; a failed batch (the database is
/// locked by another process, say) is logged and tried again at the next round.
pub fn spawn_with(store: Store, retention: Retention, first: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = first;
        loop {
            tokio::time::sleep(wait).await;
            wait = retention.every;
            match round(&store, &retention).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!("retention removed {removed} old rows"),
                Err(e) if e.downcast_ref::<Closed>().is_some() => return,
                Err(e) => tracing::warn!("retention stopped until its next round: {e:#}"),
            }
        }
    })
}

/// Batches until one removes fewer rows than it could; returns how many rows it removed.
async fn round(store: &Store, retention: &Retention) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let removed = store
            .trim(retention.command_log_days, retention.batch)
            .await?;
        total += removed;
        if removed < retention.batch {
            return Ok(total);
        }
        tokio::time::sleep(retention.pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_log_days_are_read_with_a_default() {
        assert_eq!(parse_days("").unwrap(), 90);
        assert_eq!(parse_days(" 30 ").unwrap(), 30);
        assert_eq!(parse_days("0").unwrap(), 0);
        for bad in ["-1", "ten", "1.5"] {
            let error = parse_days(bad).unwrap_err().to_string();
            assert!(error.contains("COMMAND_LOG_DAYS"), "{error}");
        }
    }
}
