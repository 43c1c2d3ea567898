//! Backups on this machine: named with time and revision, mode 0600, checked with
//! `integrity_check` and their revision read (rusqlite, through the engine), old ones pruned.

use std::path::{Path, PathBuf};

use anyhow::Context;
use migrations::BackupInfo;
use xshell::{Shell, cmd};

use crate::exit;
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

/// The backups of `project` in `dir`, oldest first.
pub fn list(dir: &Path, project: &str) -> Vec<PathBuf> {
    let prefix = format!("{project}-");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".db"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Deletes all but the newest `keep` backups; returns what it deleted.
pub fn prune(dir: &Path, project: &str, keep: usize) -> anyhow::Result<Vec<PathBuf>> {
    let files = list(dir, project);
    let old = files.len().saturating_sub(keep.max(1));
    let mut removed = Vec::new();
    for file in &files[..old] {
        std::fs::remove_file(file)
            .with_context(|| format!("cannot remove the old backup {}", file.display()))?;
        removed.push(file.clone());
    }
    Ok(removed)
}

/// Prunes, and says so when it deleted anything.
pub fn prune_and_tell(
    printer: &crate::output::Printer,
    dir: &Path,
    project: &str,
    keep: usize,
) -> anyhow::Result<()> {
    let pruned = prune(dir, project, keep)?;
    if !pruned.is_empty() {
        printer.info(&format!(
            "pruned {} old backups (keeping {keep})",
            pruned.len()
        ));
    }
    Ok(())
}

/// Free bytes in the file system holding `dir` (`df`, which every Linux has).
pub fn free_bytes(sh: &Shell, dir: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = process::run(
        cmd!(sh, "df --output=avail -B1 {dir}"),
        "reading the free disk space",
    )?;
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
        let dir = std::env::temp_dir().join(format!("xtask-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for minute in 0..5 {
            std::fs::write(
                dir.join(name(
                    "p",
                    &format!("20261125T07{minute:02}00Z"),
                    Some(1),
                    None,
                )),
                b"x",
            )
            .unwrap();
        }
        std::fs::write(dir.join("other-20261125T070000Z-r1.db"), b"x").unwrap();
        let removed = prune(&dir, "p", 2).unwrap();
        assert_eq!(removed.len(), 3);
        let left: Vec<String> = list(&dir, "p")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            ["p-20261125T070300Z-r1.db", "p-20261125T070400Z-r1.db"]
        );
        assert!(
            dir.join("other-20261125T070000Z-r1.db").exists(),
            "another project's backups are left alone"
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
