//! The check of the backup `bot db upgrade --backup-to` takes before it migrates. A rollback
//! restores that backup, so the migration must not commit unless it is fit: not 0 bytes, with
//! tables, sound (`quick_check`), and the very state the migration starts from. The check runs
//! in a thread beside the migration, and the migration's first COMMIT waits for its verdict
//! (the engine's commit gate): the downtime grows only by what the check takes beyond the
//! migration's first step. A database in WAL mode is copied in that thread too, from a read
//! transaction pinned before the migration takes the write lock
//! ([`SnapshotCheck::copy_and_check`]); the gate then also asks whether anything committed
//! between the pin and the lock.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context;
use migrations::{BackupInfo, Commit, GateError, Pinned, State, Status};

/// A backup unfit to roll back to, and why.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the backup {} taken before the migration {problem}, and a rollback would restore it",
    .path.display()
)]
pub struct Unfit {
    /// The backup.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a backup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The file is empty.
    #[error("is 0 bytes")]
    Empty,
    /// A database without tables, where the database had some.
    #[error("holds no tables")]
    NoTables,
    /// It could not be opened or failed `quick_check`.
    #[error("failed its check ({0})")]
    Unsound(String),
    /// The copy could not be written (a full disk, a folder it may not write).
    #[error("could not be written ({0})")]
    NotWritten(String),
    /// Another process committed between the moment the copy pinned and the migration's write
    /// lock: the copy lacks that commit.
    #[error(
        "lacks what another process committed to the database after the copy began and before the migration took the write lock"
    )]
    Overtaken,
    /// It is not the state the migration started from: the database changed after the copy.
    #[error(
        "is {found}, but the database was {expected} when the migration took the write lock (another process changed it after the backup was taken)"
    )]
    NotBefore {
        /// The backup's state.
        found: String,
        /// The database's, under the write lock.
        expected: String,
    },
    /// The check ended without a verdict.
    #[error("could not be checked: the check stopped before its verdict")]
    NoVerdict,
}

impl Unfit {
    /// What to do next, for the line after the error.
    pub fn advice(&self) -> String {
        match self.problem {
            Problem::NotBefore { .. } | Problem::Overtaken => "Nothing needs undoing. Find what else changed the database (another `bot db` command or deploy?), then run the upgrade again: it takes a new backup.".to_string(),
            _ => format!(
                "Nothing needs undoing. Check the disk and the folder that hold {} (room, errors), or give --backup-to another place, then run the upgrade again.",
                self.path.display()
            ),
        }
    }
}

/// What the checking thread found: the copy's check.
struct Checked {
    info: Result<BackupInfo, Problem>,
}

/// The check of one backup, running in a thread from [`SnapshotCheck::start`] or
/// [`SnapshotCheck::copy_and_check`].
pub struct SnapshotCheck {
    path: PathBuf,
    /// The migrating connection's `PRAGMA data_version` before the pin: another reading under
    /// the write lock that differs means something committed that the copy may lack.
    data_version: Option<i64>,
    verdicts: Option<mpsc::Receiver<Checked>>,
    checking: Option<JoinHandle<()>>,
}

impl SnapshotCheck {
    /// Starts checking a backup already written at `path` (without a pin: the tests' copies
    /// made by hand) in a thread of its own.
    #[cfg(test)]
    pub fn start(path: &Path) -> anyhow::Result<SnapshotCheck> {
        Self::spawn(path, None, false, None)
    }

    /// Starts copying the state `pinned` holds to `path`, then checking the copy, in a thread
    /// of its own: the migration runs meanwhile. `data_version`: the migrating connection's,
    /// read before the pin.
    pub fn copy_and_check(
        pinned: Pinned,
        path: &Path,
        data_version: i64,
    ) -> anyhow::Result<SnapshotCheck> {
        Self::spawn(path, Some(pinned), true, Some(data_version))
    }

    /// Starts checking the copy `pinned` already wrote at `path`. `data_version`: the
    /// migrating connection's, read before the pin.
    pub fn check_pinned(
        pinned: Pinned,
        path: &Path,
        data_version: i64,
    ) -> anyhow::Result<SnapshotCheck> {
        Self::spawn(path, Some(pinned), false, Some(data_version))
    }

    fn spawn(
        path: &Path,
        pinned: Option<Pinned>,
        copy_first: bool,
        data_version: Option<i64>,
    ) -> anyhow::Result<SnapshotCheck> {
        let (verdict, verdicts) = mpsc::channel();
        let copy = path.to_owned();
        let checking = std::thread::Builder::new()
            .name("backup-check".into())
            .spawn(move || {
                let mut pinned = pinned;
                let copied = match pinned.as_mut().filter(|_| copy_first) {
                    Some(pin) => pin
                        .copy_to(&copy)
                        .map(drop)
                        .map_err(|e| Problem::NotWritten(chain(&e))),
                    None => Ok(()),
                };
                let info = copied.and_then(|()| {
                    migrations::quick_inspect_copy(&copy).map_err(|e| Problem::Unsound(chain(&e)))
                });
                // The pin ends here (its read transaction ended with the copy).
                drop(pinned);
                let _ = verdict.send(Checked { info });
            })
            .context("cannot start the thread that checks the backup")?;
        Ok(SnapshotCheck {
            path: path.to_owned(),
            data_version,
            verdicts: Some(verdicts),
            checking: Some(checking),
        })
    }

    /// The commit gate for the migration: its first call waits for the check and judges the
    /// backup against the state the commit began from; later calls return that verdict. One
    /// gate per check: a second one has no verdict to wait for, and holds every commit back.
    pub fn gate(&mut self) -> impl FnMut(&Commit<'_>) -> Result<(), GateError> + Send + 'static {
        let path = self.path.clone();
        let data_version = self.data_version;
        let verdicts = self.verdicts.take();
        let mut decided: Option<Result<(), Unfit>> = None;
        move |commit| {
            let verdict = decided.get_or_insert_with(|| {
                let checked = verdicts.as_ref().and_then(|v| v.recv().ok());
                judge(&path, checked.map(|c| c.info), commit.before).and_then(|()| {
                    match data_version {
                        Some(version) if version != commit.data_version => Err(Unfit {
                            path: path.clone(),
                            problem: Problem::Overtaken,
                        }),
                        _ => Ok(()),
                    }
                })
            });
            verdict.clone().map_err(GateError::from)
        }
    }

    /// Waits for the check's thread to end (it removes the sidecars its reading made, or the
    /// copy it could not finish). Dropping the check does the same: a migration that failed
    /// leaves no copy half written.
    pub fn finish(self) {}
}

impl Drop for SnapshotCheck {
    fn drop(&mut self) {
        if let Some(checking) = self.checking.take() {
            let _ = checking.join();
        }
    }
}

/// Whether the backup, as the check found it (`None`: no verdict came), is fit to roll back
/// to from the state `before` the first commit.
fn judge(
    path: &Path,
    checked: Option<Result<BackupInfo, Problem>>,
    before: &Status,
) -> Result<(), Unfit> {
    let unfit = |problem| Unfit {
        path: path.to_owned(),
        problem,
    };
    let info = match checked {
        None => return Err(unfit(Problem::NoVerdict)),
        Some(Err(problem)) => return Err(unfit(problem)),
        Some(Ok(info)) => info,
    };
    if info.bytes == 0 {
        return Err(unfit(Problem::Empty));
    }
    if info.state == State::Empty && before.state != State::Empty {
        return Err(unfit(Problem::NoTables));
    }
    let expected = before.version.or(before.matches);
    if (info.state, info.revision) != (before.state, expected) {
        return Err(unfit(Problem::NotBefore {
            found: describe(info.state, info.revision),
            expected: describe(before.state, expected),
        }));
    }
    Ok(())
}

/// A state and the revision it stands for, in words.
fn describe(state: State, revision: Option<u32>) -> String {
    match (state, revision) {
        (State::Empty, _) => "empty".to_string(),
        (State::Unstamped | State::Foreign, Some(r)) => {
            format!("{} (its schema is revision {r}'s)", state.name())
        }
        (State::Unstamped | State::Foreign, None) => {
            format!("{} (its schema is no revision's)", state.name())
        }
        (_, Some(r)) => format!("at revision {r} ({})", state.name()),
        (_, None) => state.name().to_string(),
    }
}

/// An error and its causes, joined with ": ".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: State, version: Option<u32>, matches: Option<u32>) -> Status {
        Status {
            state,
            version,
            head: migrations::head(),
            pending: Vec::new(),
            matches,
            closest: None,
            difference: Vec::new(),
            foreign: None,
            edited: Vec::new(),
            forced: None,
            extra_tables: Vec::new(),
        }
    }

    fn info(
        state: State,
        revision: Option<u32>,
        bytes: u64,
    ) -> Option<Result<BackupInfo, Problem>> {
        Some(Ok(BackupInfo {
            path: PathBuf::from("/tmp/b.db"),
            revision,
            state,
            bytes,
        }))
    }

    fn problem(checked: Option<Result<BackupInfo, Problem>>, before: &Status) -> Option<Problem> {
        judge(Path::new("/tmp/b.db"), checked, before)
            .err()
            .map(|unfit| unfit.problem)
    }

    #[test]
    fn a_backup_of_the_state_the_migration_starts_from_is_fit() {
        let behind = status(State::Behind, Some(3), None);
        assert_eq!(problem(info(State::Behind, Some(3), 8192), &behind), None);
        let unstamped = status(State::Unstamped, None, Some(1));
        assert_eq!(
            problem(info(State::Unstamped, Some(1), 8192), &unstamped),
            None
        );
    }

    #[test]
    fn an_empty_unsound_or_other_backup_is_unfit_and_says_why() {
        let behind = status(State::Behind, Some(3), None);
        assert_eq!(
            problem(info(State::Empty, None, 0), &behind),
            Some(Problem::Empty)
        );
        assert_eq!(
            problem(info(State::Empty, None, 4096), &behind),
            Some(Problem::NoTables)
        );
        assert_eq!(
            problem(Some(Err(Problem::Unsound("damaged".into()))), &behind),
            Some(Problem::Unsound("damaged".into()))
        );
        assert_eq!(problem(None, &behind), Some(Problem::NoVerdict));
        assert_eq!(
            problem(info(State::Behind, Some(2), 8192), &behind),
            Some(Problem::NotBefore {
                found: "at revision 2 (behind)".into(),
                expected: "at revision 3 (behind)".into(),
            })
        );
        // Same schema, but the history is gone from the copy: not the state to return to.
        assert!(matches!(
            problem(info(State::Unstamped, Some(3), 8192), &behind),
            Some(Problem::NotBefore { .. })
        ));
        let message = judge(Path::new("/tmp/b.db"), info(State::Empty, None, 0), &behind)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "the backup /tmp/b.db taken before the migration is 0 bytes, and a rollback would restore it"
        );
    }

    /// Real files: a copy cut short and a copy with scribbled pages fail the check itself.
    #[test]
    fn a_copy_cut_short_or_damaged_fails_the_check() {
        let dir = std::env::temp_dir().join(format!("bot-snapshot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bot.db");
        let mut db = migrations::Database::open(&path).unwrap();
        db.upgrade(|_| {}).unwrap();
        db.connection()
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
                 INSERT INTO users (telegram_id, first_name) SELECT i, 'user' || i FROM n;",
            )
            .unwrap();
        let before = db.status().unwrap();
        drop(db);
        let full = std::fs::read(&path).unwrap();
        let copy = dir.join("copy.db");
        let check = |bytes: &[u8]| -> Option<Problem> {
            std::fs::write(&copy, bytes).unwrap();
            let mut check = SnapshotCheck::start(&copy).unwrap();
            let mut gate = check.gate();
            let verdict = gate(&Commit {
                before: &before,
                after: before.head,
                data_version: 0,
            });
            check.finish();
            verdict
                .err()
                .map(|e| e.downcast::<Unfit>().unwrap().problem)
        };
        assert_eq!(check(&full), None, "the whole file is fit");
        // Later commits get the first verdict: the copy is checked once, not again.
        std::fs::write(&copy, &full).unwrap();
        let mut kept = SnapshotCheck::start(&copy).unwrap();
        let mut gate = kept.gate();
        let commit = Commit {
            before: &before,
            after: before.head,
            data_version: 0,
        };
        assert!(gate(&commit).is_ok());
        std::fs::remove_file(&copy).unwrap();
        assert!(gate(&commit).is_ok(), "the verdict stands");
        kept.finish();
        assert_eq!(check(b""), Some(Problem::Empty));
        let cut = check(&full[..full.len() / 2]);
        assert!(
            matches!(&cut, Some(Problem::Unsound(detail)) if detail.contains("cut short")),
            "{cut:?}"
        );
        let mut scribbled = full.clone();
        let len = scribbled.len();
        for byte in &mut scribbled[2 * 4096..len - 4096] {
            *byte = 0x5a;
        }
        let damaged = check(&scribbled);
        assert!(matches!(damaged, Some(Problem::Unsound(_))), "{damaged:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
