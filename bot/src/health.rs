//! The heartbeat the polling loop leaves, and `bot healthcheck`, which reads it: no port needed.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use migrations::{Database, State};

/// A heartbeat older than this means the polling loop is stuck or gone. The loop beats after
/// every poll, and every [`BEAT_INTERVAL`] while it waits (a request, a retry, a batch).
pub const MAX_HEARTBEAT_AGE: Duration = Duration::from_secs(45);

/// How often the loop beats while it waits on something bounded.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Records that the polling loop is alive.
pub fn beat(path: &Path) {
    if let Err(e) = std::fs::write(path, b"alive\n") {
        tracing::warn!("cannot write the heartbeat file {}: {e}", path.display());
    }
}

/// Awaits `work`, beating every [`BEAT_INTERVAL`] meanwhile: a wait the loop chose (Telegram's
/// `retry_after`, a backoff, teloxide's own 10 s pause after a 5xx) is not a hang. Only give it
/// work that ends by itself, or a stuck loop would look alive.
pub async fn while_waiting<F: Future>(path: &Path, work: F) -> F::Output {
    beating_every(BEAT_INTERVAL, path, work).await
}

async fn beating_every<F: Future>(interval: Duration, path: &Path, work: F) -> F::Output {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            output = &mut work => return output,
            _ = ticks.tick() => beat(path),
        }
    }
}

/// Removes a heartbeat left by an earlier process, so it cannot vouch for this one.
pub fn clear(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Ok when the polling loop beat recently and the database is current; else what is wrong.
pub fn check(heartbeat: &Path, database: &Path) -> anyhow::Result<()> {
    let modified = std::fs::metadata(heartbeat)
        .and_then(|m| m.modified())
        .with_context(|| {
            format!(
                "no heartbeat at {}: the polling loop has not started",
                heartbeat.display()
            )
        })?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    if age > MAX_HEARTBEAT_AGE {
        bail!(
            "the polling loop last beat {}s ago (limit {}s)",
            age.as_secs(),
            MAX_HEARTBEAT_AGE.as_secs()
        );
    }
    let db = Database::open_read_only(database)?
        .with_context(|| format!("no database at {}", database.display()))?;
    let status = db.status()?;
    if status.state != State::Current {
        bail!(
            "the database is {} (revision {:?}, head {})",
            status.state.name(),
            status.version,
            status.head
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_wait_keeps_beating_and_returns_the_work_output() {
        let dir = std::env::temp_dir().join(format!("bot-heartbeat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let heartbeat = dir.join("heartbeat");
        let waited = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // The heartbeat of an earlier beat is gone; only a beat during the wait brings it back.
            clear(&heartbeat);
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done"
        };
        let output = beating_every(Duration::from_millis(50), &heartbeat, waited).await;
        assert_eq!(output, "done");
        assert!(heartbeat.exists(), "beaten again during the wait");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
