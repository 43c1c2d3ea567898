//! The deploy lock: one deploy per project at a time. The file lock is the operating system's
//! (`File::try_lock`), so a holder that died holds nothing; the file's text names the holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use xshell::Shell;

use crate::exit;

/// Who holds the lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    /// The task, e.g. "prod-full-update".
    pub task: String,
    /// Who ran it.
    pub operator: String,
    /// Its process id.
    pub pid: u32,
    /// Since when (UTC).
    pub since: String,
}

/// A held deploy lock; released when dropped (or when the process dies).
pub struct DeployLock {
    _file: File,
}

/// Who is running this: `$USER`, else "unknown".
pub fn operator() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

impl DeployLock {
    /// Takes the lock of `project` for `task`, or fails at once naming the holder.
    pub fn acquire(
        _sh: &Shell,
        _project: &str,
        dir: &Path,
        task: &str,
        since: &str,
    ) -> anyhow::Result<DeployLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("deploy.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the deploy lock {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = serde_json::from_str::<Holder>(&text)
                    .map(|h| {
                        format!(
                            "{} by {} (pid {}) since {}",
                            h.task, h.operator, h.pid, h.since
                        )
                    })
                    .unwrap_or_else(|_| "another deploy".into());
                return Err(exit::locked(format!(
                    "another deploy of this project is running: {holder} (lock {}); wait for it to finish, then retry",
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let holder = Holder {
            task: task.to_owned(),
            operator: operator(),
            pid: std::process::id(),
            since: since.to_owned(),
        };
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(serde_json::to_string(&holder)?.as_bytes())?;
        file.flush()?;
        Ok(DeployLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquire(dir: &Path, task: &str, since: &str) -> anyhow::Result<DeployLock> {
        DeployLock::acquire(&Shell::new().unwrap(), "p", dir, task, since)
    }

    #[test]
    fn a_second_holder_is_refused_naming_the_first_and_a_released_lock_is_free() {
        let dir = std::env::temp_dir().join(format!("xtask-lock-{}", std::process::id()));
        let first = acquire(&dir, "prod-full-update", "20261125T070000Z").unwrap();
        let error = acquire(&dir, "prod-migrate", "20261125T070001Z")
            .err()
            .unwrap();
        assert_eq!(exit::code_of(&error), exit::ExitCode::Locked);
        let message = error.to_string();
        assert!(message.contains("prod-full-update by"), "{message}");
        assert!(
            message.contains(&format!("(pid {})", std::process::id())),
            "{message}"
        );
        assert!(message.contains("since 20261125T070000Z"), "{message}");
        drop(first);
        acquire(&dir, "prod-migrate", "20261125T070002Z").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_whose_holder_died_is_free() {
        let dir = std::env::temp_dir().join(format!("xtask-lock-dead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("deploy.lock");
        // Another process takes the same operating-system lock, then is killed with SIGKILL.
        let mut holder = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\ntime.sleep(60)",
            ])
            .arg(&file)
            .spawn()
            .expect("python3 runs");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match acquire(&dir, "prod-migrate", "T") {
                Err(e) => {
                    assert_eq!(exit::code_of(&e), exit::ExitCode::Locked);
                    break;
                }
                Ok(lock) => {
                    drop(lock);
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the other process never took the lock"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
        holder.kill().unwrap();
        holder.wait().unwrap();
        acquire(&dir, "prod-migrate", "T").expect("the dead holder's lock is free");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
