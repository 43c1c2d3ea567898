//! The announcement that a migration runs: `bot db upgrade` keeps a file beside the database,
//! `<database>.migrating`, rewritten every second while it works and removed when it ends
//! (also when it fails). A bot waiting for its schema keeps waiting past
//! `BOT_SCHEMA_WAIT_SECS` while the file is fresh: a migration of a large database may take
//! longer than any fixed wait. A migration killed with SIGKILL leaves the file behind, but its
//! heartbeat stops, and after [`FRESH_FOR`] the file no longer counts.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::Context;

/// How often a running migration rewrites its announcement.
pub const BEAT: Duration = Duration::from_secs(1);
/// How long after its last rewrite the announcement still counts: several beats, so that a
/// busy disk or a descheduled thread does not end a wait early.
pub const FRESH_FOR: Duration = Duration::from_secs(5);

/// The file that announces a migration of the database at `database`.
pub fn path_for(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".migrating");
    PathBuf::from(name)
}

/// How long ago a migration of `database` last announced itself, when it did within
/// [`FRESH_FOR`]; `None` when there is no announcement or its heartbeat stopped.
pub fn running(database: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(path_for(database))
        .ok()?
        .modified()
        .ok()?;
    // A clock set back makes the file look written in the future: its distance counts the same.
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_else(|ahead| ahead.duration());
    (age <= FRESH_FOR).then_some(age)
}

/// A running migration's announcement: rewritten every [`BEAT`] by a thread of its own,
/// removed when dropped.
pub struct Announcement {
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    beating: Option<JoinHandle<()>>,
}

impl Announcement {
    /// Writes the announcement beside `database` and starts its heartbeat.
    pub fn start(database: &Path) -> anyhow::Result<Announcement> {
        let path = path_for(database);
        let text = format!(
            "bot db upgrade (pid {}) is migrating {}; it rewrites this file every second until it ends\n",
            std::process::id(),
            database.display()
        );
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let beat_path = path.clone();
        let beating = std::thread::Builder::new()
            .name("migrating".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(BEAT) {
                    // A failed rewrite is retried at the next beat; the wait it serves has room
                    // for several.
                    let _ = std::fs::write(&beat_path, &text);
                }
            });
        match beating {
            Ok(beating) => Ok(Announcement {
                path,
                stop: Some(stop),
                beating: Some(beating),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e).context("cannot start the thread that keeps the announcement fresh")
            }
        }
    }
}

impl Drop for Announcement {
    fn drop(&mut self) {
        drop(self.stop.take());
        // Joined first: a beat in flight would otherwise write the file again after its removal.
        if let Some(beating) = self.beating.take() {
            let _ = beating.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bot-migrating-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_announcement_is_kept_fresh_while_it_lives_and_removed_after() {
        let dir = folder("fresh");
        let database = dir.join("bot.db");
        assert_eq!(running(&database), None, "nothing announced yet");
        let announcement = Announcement::start(&database).unwrap();
        let file = dir.join("bot.db.migrating");
        assert_eq!(path_for(&database), file);
        let first = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(BEAT * 2 + Duration::from_millis(500));
        let later = std::fs::metadata(&file).unwrap().modified().unwrap();
        assert!(
            later > first,
            "rewritten every beat: {first:?}, then {later:?}"
        );
        assert!(running(&database).is_some_and(|age| age < BEAT * 2));
        drop(announcement);
        assert!(!file.exists(), "removed at the end");
        assert_eq!(running(&database), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_announcement_whose_heartbeat_stopped_does_not_count() {
        let dir = folder("stale");
        let database = dir.join("bot.db");
        let file = std::fs::File::create(path_for(&database)).unwrap();
        let now = SystemTime::now();
        file.set_modified(now - FRESH_FOR + Duration::from_secs(1))
            .unwrap();
        assert!(running(&database).is_some(), "within the bound: fresh");
        file.set_modified(now - FRESH_FOR - Duration::from_secs(1))
            .unwrap();
        assert_eq!(running(&database), None, "a killed migration's leftover");
        file.set_modified(now + FRESH_FOR + Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            running(&database),
            None,
            "far in the future: not fresh either"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
