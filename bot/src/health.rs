//! The heartbeat the polling loop leaves, and `bot healthcheck`, which reads it: no port needed.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use migrations::{Database, State};

/// A heartbeat older than this means the polling loop is stuck or gone. The loop beats at least
/// once per long poll (10 s) and per retry (at most 10 s apart).
pub const MAX_HEARTBEAT_AGE: Duration = Duration::from_secs(45);

/// Records that the polling loop is alive.
pub fn beat(path: &Path) {
    if let Err(e) = std::fs::write(path, b"alive\n") {
        tracing::warn!("cannot write the heartbeat file {}: {e}", path.display());
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
