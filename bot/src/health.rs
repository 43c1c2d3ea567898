//! The heartbeat the polling loop leaves, and `bot healthcheck`, which reads it: no port needed.
//!
//! Two questions, as a deploy and a supervisor ask them. **Ready** (once per process): one
//! `getUpdates` succeeded and the database took a write probe; a deploy waits for this before it
//! calls the new bot healthy. **Alive** (every check): the loop beat recently, no other instance
//! has been polling with this token for a minute (409s in a row), the bot's writes have not all
//! failed for a minute, and the database is current. A Telegram outage keeps a ready bot alive:
//! the loop beats through its retries, and restarting the bot would not bring Telegram back.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use migrations::Database;
use serde::{Deserialize, Serialize};

use crate::store::Verdict;

/// A heartbeat older than this means the polling loop is stuck or gone. The loop beats after
/// every poll, and every [`BEAT_INTERVAL`] while it waits (a request, a retry, a batch).
pub const MAX_HEARTBEAT_AGE: Duration = Duration::from_secs(45);

/// How often the loop beats while it waits on something bounded.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How long 409 Conflicts in a row, or failed writes in a row, are tolerated before the bot
/// counts as unhealthy: a second instance started by mistake, or a disk that filled up.
pub const MAX_TROUBLE: Duration = Duration::from_secs(60);

/// What the polling loop knows about itself; the heartbeat file holds it as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vitals {
    /// One `getUpdates` succeeded and the database took a write probe, in this process.
    pub ready: bool,
    /// Milliseconds since the Unix epoch of the first 409 Conflict of the current run of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_since_ms: Option<u64>,
    /// Milliseconds since the Unix epoch of the first failed write of the current run of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_failing_since_ms: Option<u64>,
}

impl Vitals {
    /// Why a bot with these vitals is not healthy at `now_ms`, if it is not.
    pub fn trouble(&self, now_ms: u64) -> Option<String> {
        if !self.ready {
            return Some(
                "not ready yet: no successful getUpdates and database write probe so far".into(),
            );
        }
        let lasting = |since: Option<u64>| {
            since
                .map(|since| Duration::from_millis(now_ms.saturating_sub(since)))
                .filter(|lasted| *lasted > MAX_TROUBLE)
        };
        if let Some(lasted) = lasting(self.conflict_since_ms) {
            return Some(format!(
                "another instance has been polling with this BOT_TOKEN for {}s (409 Conflict): stop the other instance (another server, a local run) or give one of them another token",
                lasted.as_secs()
            ));
        }
        if let Some(lasted) = lasting(self.writes_failing_since_ms) {
            return Some(format!(
                "every database write has failed for {}s (see the bot's log: disk full, permissions, a lock held by another process)",
                lasted.as_secs()
            ));
        }
        None
    }
}

/// The polling loop's side: keeps the vitals and writes them with every beat.
pub struct Health {
    path: PathBuf,
    vitals: Mutex<Vitals>,
}

impl Health {
    /// Starts from "not ready", removing a heartbeat an earlier process left, so that it cannot
    /// vouch for this one.
    pub fn new(path: &Path) -> Health {
        let _ = std::fs::remove_file(path);
        Health {
            path: path.to_owned(),
            vitals: Mutex::new(Vitals::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vitals> {
        self.vitals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the polling loop is alive: writes the vitals (by rename, so that a check
    /// never reads half a file).
    pub fn beat(&self) {
        let text = serde_json::to_string(&*self.lock()).unwrap_or_default();
        let partial = self.path.with_extension("partial");
        let written =
            std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, &self.path));
        if let Err(e) = written {
            tracing::warn!(
                "cannot write the heartbeat file {}: {e}",
                self.path.display()
            );
        }
    }

    fn update(&self, change: impl FnOnce(&mut Vitals)) {
        let changed = {
            let mut vitals = self.lock();
            let before = vitals.clone();
            change(&mut vitals);
            *vitals != before
        };
        if changed {
            self.beat();
        }
    }

    /// One `getUpdates` and the write probe succeeded.
    pub fn ready(&self) {
        self.update(|v| v.ready = true);
    }

    /// A `getUpdates` ended in 409 Conflict (`true`) or in anything else (`false`).
    pub fn conflict(&self, conflicted: bool) {
        self.update(|v| match (conflicted, v.conflict_since_ms) {
            (true, None) => v.conflict_since_ms = Some(now_ms()),
            (false, Some(_)) => v.conflict_since_ms = None,
            _ => {}
        });
    }

    /// Since when every database write has failed (`None`: the last one went through).
    pub fn writes_failing_since(&self, since: Option<SystemTime>) {
        self.update(|v| v.writes_failing_since_ms = since.map(ms_since_epoch));
    }

    /// Awaits `work`, beating every [`BEAT_INTERVAL`] meanwhile: a wait the loop chose
    /// (Telegram's `retry_after`, a backoff, teloxide's own 10 s pause after a 5xx) is not a
    /// hang. Only give it work that ends by itself, or a stuck loop would look alive.
    pub async fn while_waiting<F: Future>(&self, work: F) -> F::Output {
        self.beating_every(BEAT_INTERVAL, work).await
    }

    async fn beating_every<F: Future>(&self, interval: Duration, work: F) -> F::Output {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                output = &mut work => return output,
                _ = ticks.tick() => self.beat(),
            }
        }
    }
}

fn now_ms() -> u64 {
    ms_since_epoch(SystemTime::now())
}

fn ms_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Ok when the polling loop beat recently, is ready and untroubled, and the database is
/// current; else what is wrong.
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
    let text = std::fs::read_to_string(heartbeat)
        .with_context(|| format!("cannot read the heartbeat at {}", heartbeat.display()))?;
    let vitals: Vitals = serde_json::from_str(&text).with_context(|| {
        format!(
            "the heartbeat at {} is not what this bot writes (another version?)",
            heartbeat.display()
        )
    })?;
    if let Some(trouble) = vitals.trouble(now_ms()) {
        bail!("{trouble}");
    }
    let db = Database::open_read_only(database)?
        .with_context(|| format!("no database at {}", database.display()))?;
    let status = db.status()?;
    if Verdict::of(Some(status.state)) != Verdict::Serve {
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

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bot-health-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("heartbeat")
    }

    #[tokio::test]
    async fn a_long_wait_keeps_beating_and_returns_the_work_output() {
        let heartbeat = temp("wait");
        let health = Health::new(&heartbeat);
        let waited = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // The heartbeat of an earlier beat is gone; only a beat during the wait brings it back.
            let _ = std::fs::remove_file(&heartbeat);
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done"
        };
        let output = health
            .beating_every(Duration::from_millis(50), waited)
            .await;
        assert_eq!(output, "done");
        assert!(heartbeat.exists(), "beaten again during the wait");
        std::fs::remove_dir_all(heartbeat.parent().unwrap()).unwrap();
    }

    #[test]
    fn ready_bots_stay_healthy_through_short_trouble_and_fail_after_a_minute_of_it() {
        let now = 10_000_000;
        let ready = Vitals {
            ready: true,
            ..Vitals::default()
        };
        assert_eq!(ready.trouble(now), None);
        let not_ready = Vitals::default().trouble(now).unwrap();
        assert!(not_ready.contains("not ready yet"), "{not_ready}");

        let conflict = |for_ms: u64| Vitals {
            conflict_since_ms: Some(now - for_ms),
            ..ready.clone()
        };
        assert_eq!(
            conflict(59_000).trouble(now),
            None,
            "a short conflict is tolerated"
        );
        let text = conflict(61_000).trouble(now).unwrap();
        assert!(
            text.contains("another instance") && text.contains("409") && text.contains("61s"),
            "{text}"
        );

        let failing = |for_ms: u64| Vitals {
            writes_failing_since_ms: Some(now - for_ms),
            ..ready.clone()
        };
        assert_eq!(failing(30_000).trouble(now), None);
        let text = failing(90_000).trouble(now).unwrap();
        assert!(
            text.contains("every database write has failed for 90s"),
            "{text}"
        );
    }

    #[test]
    fn the_vitals_track_runs_of_trouble_and_reach_the_file() {
        let heartbeat = temp("vitals");
        let health = Health::new(&heartbeat);
        health.beat();
        let read = || {
            serde_json::from_str::<Vitals>(&std::fs::read_to_string(&heartbeat).unwrap()).unwrap()
        };
        assert_eq!(read(), Vitals::default());
        health.ready();
        health.conflict(true);
        let first = read().conflict_since_ms.expect("a conflict is noted");
        health.conflict(true);
        assert_eq!(
            read().conflict_since_ms,
            Some(first),
            "a run keeps its start"
        );
        health.conflict(false);
        health.writes_failing_since(Some(UNIX_EPOCH + Duration::from_millis(12)));
        let vitals = read();
        assert!(vitals.ready && vitals.conflict_since_ms.is_none());
        assert_eq!(vitals.writes_failing_since_ms, Some(12));
        health.writes_failing_since(None);
        assert_eq!(
            read(),
            Vitals {
                ready: true,
                ..Vitals::default()
            }
        );
        std::fs::remove_dir_all(heartbeat.parent().unwrap()).unwrap();
    }
}
