//! Backups on this machine: named with time and revision, mode 0600, checked with
//! `integrity_check` and their revision read (rusqlite, through the engine), old ones pruned
//! without ever deleting the backup a rollback needs (see [`plan`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use migrations::BackupInfo;
use xshell::{Shell, cmd};

use crate::compose::Stack;
use crate::exit;
use crate::history::{self, Record};
use crate::output::Run;
use crate::process;

/// A backup's file name: `<project>-<time>-r<revision>[-<label>].db`.
pub fn name(project: &str, time: &str, revision: Option<u32>, label: Option<&str>) -> String {
    let revision = revision.map_or("none".to_owned(), |r| r.to_string());
    match label {
        Some(label) => format!("{project}-{time}-r{revision}-{label}.db"),
        None => format!("{project}-{time}-r{revision}.db"),
    }
}

/// Checks a backup on this machine and makes it readable by its owner only.
pub fn seal(file: &Path) -> anyhow::Result<BackupInfo> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", file.display()))?;
    migrations::inspect_copy(file)
        .with_context(|| format!("the backup {} is not sound", file.display()))
}

/// The step "back up database": a checked copy of the live database of `stack` in `file` on
/// this machine.
pub fn back_up(
    run: &Run,
    sh: &Shell,
    stack: &Stack,
    file: &Path,
    bytes: u64,
) -> anyhow::Result<BackupInfo> {
    run.step("back up database", || {
        crate::database::back_up_to_host(sh, stack, &stack.bot_image, file, bytes)?;
        seal(file)
    })
}

/// The backups of `project` in `dir`, oldest first: `<project>-<time>...db`, the time starting
/// with a digit (so project `p` does not take project `p-x`'s files for its own).
pub fn list(dir: &Path, project: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| is_backup_of(n, project))
        })
        .collect();
    files.sort();
    files
}

fn is_backup_of(name: &str, project: &str) -> bool {
    name.ends_with(".db")
        && name
            .strip_prefix(project)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The revision a backup's name carries (see [`name`]): `Some(Some(4))` for `...-r4.db` and
/// `...-r4-before-restore.db`, `Some(None)` for `-rnone`, None when the name is not a backup's.
pub fn revision_in_name(name: &str, project: &str) -> Option<Option<u32>> {
    if !is_backup_of(name, project) {
        return None;
    }
    let rest = name[project.len() + 1..].strip_suffix(".db")?;
    let (_time, rest) = rest.split_once("-r")?;
    let revision = rest.split('-').next()?;
    match revision {
        "none" => Some(None),
        digits => digits.parse().ok().map(Some),
    }
}

/// What retention decided.
#[derive(Debug, Default, PartialEq)]
pub struct Pruned {
    /// The backups deleted.
    pub removed: Vec<PathBuf>,
    /// The backups older than the newest `keep` that were kept because a rollback needs them,
    /// each with the reason.
    pub kept_for_rollback: Vec<(PathBuf, String)>,
}

/// The deploys `rollback` can still undo, newest first: the one [`history::last_change`] finds,
/// then the one it would find once that one is rolled back, and so on.
fn in_reach(records: &[Record]) -> Vec<&Record> {
    let mut reach = Vec::new();
    let mut rest = records;
    while let Some(change) = history::last_change(rest) {
        reach.push(change);
        let index = rest
            .iter()
            .position(|r| std::ptr::eq(r, change))
            .expect("last_change returns one of the records");
        rest = &rest[..index];
    }
    reach
}

/// Which backups retention deletes, from their names and the deploy history (pure).
///
/// The newest `keep` (at least 1) are kept. Older ones are deleted, except, for every deploy
/// that moved the schema and that `rollback` can still undo ([`in_reach`]):
/// - the backup the deploy recorded: the file `rollback` restores to undo it;
/// - the newest backup at the revision the schema moved from (`revision_before`), the data the
///   previous release runs on, for when the recorded file is gone or to restore by hand.
///
/// So older revisions cost at most one extra file each, however many backups follow.
pub fn plan(files: &[PathBuf], project: &str, keep: usize, records: &[Record]) -> Pruned {
    let old = files.len().saturating_sub(keep.max(1));
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let mut reasons: Vec<(usize, String)> = Vec::new();
    for change in in_reach(records) {
        let Some(from) = change.revision_before else {
            continue;
        };
        if change.revision_after == Some(from) {
            continue;
        }
        let to = change.revision_after.map_or("?".into(), |r| r.to_string());
        let recorded = change
            .backup
            .as_deref()
            .and_then(file_name)
            .and_then(|recorded| {
                files
                    .iter()
                    .position(|f| file_name(f).as_deref() == Some(recorded.as_str()))
            });
        let (task, time) = (&change.task, &change.time);
        if let Some(index) = recorded {
            let reason = format!(
                "`rollback` restores it to undo the {task} of {time} (revision {from} -> {to})"
            );
            reasons.push((index, reason));
        }
        let newest_at = files.iter().rposition(|f| {
            file_name(f).and_then(|n| revision_in_name(&n, project)) == Some(Some(from))
        });
        if let Some(index) = newest_at.filter(|i| Some(*i) != recorded) {
            let reason = format!(
                "the newest backup at revision {from}, which the {task} of {time} moved the schema from (to {to})"
            );
            reasons.push((index, reason));
        }
    }
    let mut pruned = Pruned::default();
    for (index, file) in files.iter().cloned().enumerate().take(old) {
        match reasons.iter().find(|(i, _)| *i == index) {
            Some((_, reason)) => pruned.kept_for_rollback.push((file, reason.clone())),
            None => pruned.removed.push(file),
        }
    }
    pruned
}

/// Deletes the backups [`plan`] gives up, by the history beside them (`deploys.jsonl` in `dir`).
/// When the history cannot be read, nothing is deleted.
pub fn prune(dir: &Path, project: &str, keep: usize) -> anyhow::Result<Pruned> {
    let records = history::read(dir).with_context(|| {
        format!(
            "kept every backup in {}: without the deploy history there is no telling which one a rollback needs",
            dir.display()
        )
    })?;
    let pruned = plan(&list(dir, project), project, keep, &records);
    for file in &pruned.removed {
        std::fs::remove_file(file)
            .with_context(|| format!("cannot remove the old backup {}", file.display()))?;
    }
    Ok(pruned)
}

/// Prunes, and says what it deleted and what it kept for a rollback. A failure to prune is
/// reported, never fatal: the task's work is done by then.
pub fn prune_and_tell(run: &Run, dir: &Path, project: &str, keep: usize) -> anyhow::Result<()> {
    let pruned = match prune(dir, project, keep) {
        Ok(pruned) => pruned,
        Err(e) => {
            run.info(&format!("warning: old backups were not pruned: {e:#}"));
            return Ok(());
        }
    };
    let keep = keep.max(1);
    let count = pruned.removed.len();
    if count > 0 {
        let s = if count == 1 { "" } else { "s" };
        let line = format!("pruned {count} old backup{s} (keeping the newest {keep})");
        run.info(&line);
    }
    for (file, reason) in &pruned.kept_for_rollback {
        let name = file.file_name().unwrap_or(file.as_os_str()).display();
        run.info(&format!("kept {name} as well: {reason}"));
    }
    Ok(())
}

/// Free bytes in the file system holding `dir` (`df`, which every Linux has).
pub fn free_bytes(sh: &Shell, dir: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let df = cmd!(sh, "df --output=avail -B1 {dir}");
    let out = process::run(df, "reading the free disk space")?;
    out.stdout
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("df printed no number")
}

/// Refuses, before anything changes, when `dir` cannot hold a backup of `bytes`.
pub fn require_room(sh: &Shell, dir: &Path, bytes: u64) -> anyhow::Result<()> {
    let free = free_bytes(sh, dir)?;
    // The copy, plus room for SQLite's journal while checking it.
    let needed = bytes + bytes / 10 + 64 * 1024;
    if free < needed {
        return Err(exit::not_ready(format!(
            "no room for the backup in {}: {free} bytes free, {needed} needed for a database of {bytes} bytes; free some space or pass --backup-dir; nothing was changed",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Outcome, Progress};

    #[test]
    fn names_sort_by_time_and_pruning_keeps_the_newest() {
        assert_eq!(
            name("p", "20261125T070000Z", Some(4), None),
            "p-20261125T070000Z-r4.db"
        );
        assert_eq!(
            name("p", "T", None, Some("before-restore")),
            "p-T-rnone-before-restore.db"
        );
        let dir = crate::testing::temp_dir("prune");
        let others = ["other-20261125T070000Z-r1.db", "p-x-20261125T070000Z-r1.db"];
        let ours =
            (0..5).map(|minute| name("p", &format!("20261125T07{minute:02}00Z"), Some(1), None));
        for file in ours.chain(others.map(String::from)) {
            std::fs::write(dir.join(file), b"x").unwrap();
        }
        let pruned = prune(&dir, "p", 2).unwrap();
        assert_eq!(pruned.removed.len(), 3);
        assert!(
            pruned.kept_for_rollback.is_empty(),
            "no history, no rollback"
        );
        assert_eq!(
            names(&list(&dir, "p")),
            ["p-20261125T070300Z-r1.db", "p-20261125T070400Z-r1.db"]
        );
        for other in others {
            assert!(
                dir.join(other).exists(),
                "another project's backups are left alone"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn change(time: &str, from: u32, to: u32, backup: Option<&str>) -> Record {
        Record {
            time: time.into(),
            task: "prod-full-update".into(),
            progress: Progress {
                changed: true,
                revision_before: Some(from),
                revision_after: Some(to),
                backup: backup.map(|b| PathBuf::from("/somewhere/backups/p").join(b)),
                ..Progress::default()
            },
            ..Record::default()
        }
    }

    fn names<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> Vec<String> {
        files
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn files(names: &[impl AsRef<str>]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| Path::new("/b/p").join(n.as_ref()))
            .collect()
    }

    #[test]
    fn the_revision_is_read_from_a_backups_name() {
        for (name, project, revision) in [
            ("p-20261125T070000Z-r4.db", "p", Some(Some(4))),
            (
                "p-20261125T070000Z-r12-before-restore.db",
                "p",
                Some(Some(12)),
            ),
            ("p-20261125T070000Z-rnone.db", "p", Some(None)),
            ("my-bot-20261125T070000Z-r3.db", "my-bot", Some(Some(3))),
            ("p-x-20261125T070000Z-r3.db", "p", None),
            ("p-20261125T070000Z-r3.db.tmp", "p", None),
        ] {
            assert_eq!(revision_in_name(name, project), revision, "{name}");
        }
    }

    #[test]
    fn ten_backups_after_a_schema_moving_deploy_keep_the_one_rollback_restores() {
        // A deploy moved the schema from 3 to 4, backing up at revision 3 first; ten backups
        // followed at revision 4.
        let recorded = "p-20261125T070000Z-r3.db";
        let mut all = vec![recorded.to_owned()];
        all.extend((1..=10).map(|minute| format!("p-20261125T07{minute:02}00Z-r4.db")));
        let all = files(&all);
        let history = [change("20261125T070000Z", 3, 4, Some(recorded))];
        let pruned = plan(&all, "p", 3, &history);
        assert_eq!(pruned.removed.len(), 7, "{pruned:?}");
        assert_eq!(
            names(&pruned.removed),
            names(&all[1..8]),
            "the oldest backups at revision 4 go"
        );
        assert_eq!(pruned.kept_for_rollback.len(), 1);
        let (kept, reason) = &pruned.kept_for_rollback[0];
        assert_eq!(kept, &all[0]);
        assert!(reason.contains("`rollback` restores it"), "{reason}");
        assert!(reason.contains("revision 3 -> 4"), "{reason}");

        // Today's rule, without the history: it would have gone.
        assert!(plan(&all, "p", 3, &[]).removed.contains(&all[0]));
    }

    #[test]
    fn without_the_recorded_file_the_newest_backup_at_the_old_revision_is_kept() {
        let all = files(&[
            "p-20261125T060000Z-r2.db",
            "p-20261125T061000Z-r3.db",
            "p-20261125T062000Z-r3-before-restore.db",
            "p-20261125T070000Z-r4.db",
            "p-20261125T071000Z-r4.db",
        ]);
        // The recorded backup was deleted by hand; the deploy before it went from 2 to 3.
        let history = [
            change("20261125T060000Z", 2, 3, Some("p-20261125T060000Z-r2.db")),
            change("20261125T063000Z", 3, 4, Some("gone.db")),
        ];
        let pruned = plan(&all, "p", 1, &history);
        assert_eq!(
            names(pruned.kept_for_rollback.iter().map(|(f, _)| f)),
            [
                "p-20261125T060000Z-r2.db",
                "p-20261125T062000Z-r3-before-restore.db"
            ],
            "{pruned:?}"
        );
        assert_eq!(
            names(&pruned.removed),
            ["p-20261125T061000Z-r3.db", "p-20261125T070000Z-r4.db"]
        );
        let (_, reason) = &pruned.kept_for_rollback[1];
        assert!(reason.contains("newest backup at revision 3"), "{pruned:?}");
    }

    #[test]
    fn a_rolled_back_deploy_or_one_that_kept_the_schema_protects_nothing() {
        let all = files(&[
            "p-20261125T060000Z-r2.db",
            "p-20261125T061000Z-r3.db",
            "p-20261125T070000Z-r3.db",
            "p-20261125T071000Z-r3.db",
        ]);
        let moved = change("20261125T060000Z", 2, 3, Some("p-20261125T060000Z-r2.db"));
        let rollback = Record {
            task: "rollback".into(),
            ..change("20261125T065000Z", 3, 2, None)
        };
        let same_schema = change("20261125T066000Z", 3, 3, Some("p-20261125T061000Z-r3.db"));
        let failed = Record {
            result: Outcome::RolledBack,
            ..change("20261125T067000Z", 2, 3, Some("p-20261125T060000Z-r2.db"))
        };
        // Undone by the rollback: nothing to protect.
        let pruned = plan(&all, "p", 1, &[moved.clone(), rollback, failed.clone()]);
        assert!(pruned.kept_for_rollback.is_empty(), "{pruned:?}");
        assert_eq!(pruned.removed.len(), 3);
        // A deploy that kept the schema needs no backup; the one before it still does.
        let pruned = plan(&all, "p", 1, &[moved, same_schema, failed]);
        assert_eq!(
            names(&pruned.removed),
            ["p-20261125T061000Z-r3.db", "p-20261125T070000Z-r3.db"]
        );
        assert_eq!(pruned.kept_for_rollback.len(), 1);
    }

    #[test]
    fn free_space_is_read() {
        let sh = Shell::new().unwrap();
        assert!(free_bytes(&sh, &std::env::temp_dir()).unwrap() > 0);
        let error = require_room(&sh, &std::env::temp_dir(), u64::MAX / 4).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::ExitCode::NotReady);
        assert!(
            error.to_string().contains("no room for the backup"),
            "{error}"
        );
    }
}
