//! The deploy history: one JSON line per deploy in `deploys.jsonl` beside the backups, and
//! `cargo xtask history`, which shows it as a table. No line ever holds a secret: the records
//! name files and images, never the environment's contents, and their text (the error above all)
//! is scrubbed of the environment file's values before it is written or shown (see
//! [`crate::secrets`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::report::{Outcome, Progress};
use crate::secrets;

/// One deploy, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Record {
    /// When it started (UTC).
    pub time: String,
    /// The task.
    pub task: String,
    /// Who ran it.
    pub operator: String,
    /// The repository's git revision.
    pub git_revision: Option<String>,
    /// The image id the bot ran before.
    pub image_before: Option<String>,
    /// The tag kept for that image.
    pub image_before_tag: Option<String>,
    /// The image id it runs after.
    pub image_after: Option<String>,
    /// The environment file the bot ran with before (its path; no copy is kept).
    pub env_before: Option<PathBuf>,
    /// The environment file it runs with after.
    pub env_after: Option<PathBuf>,
    /// The Compose profile it deployed (`demo`: with the stand-in), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// SHA-256 of the environment file deployed (to notice a changed `.env`).
    pub env_sha256: Option<String>,
    /// ok, failed, refused, rolled-back, nothing-to-do; `running` while it runs (and for ever
    /// when it was killed: see [`unfinished`]); `interrupted` when a signal stopped it before it
    /// changed anything, or a later run found it unfinished and finished it.
    pub result: Outcome,
    /// The step it is in (or was in when it stopped), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What the volume holds at this point of the deploy, in words (kept current as it goes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The process that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// For an unfinished run: the run that found it and finished it (task and time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_by: Option<String>,
    /// The error, when it failed.
    pub error: Option<String>,
    /// What it did, as its report told it (revisions, backup, steps, downtime, changed).
    #[serde(flatten)]
    pub progress: Progress,
}

impl std::ops::Deref for Record {
    type Target = Progress;

    fn deref(&self) -> &Progress {
        &self.progress
    }
}

impl std::ops::DerefMut for Record {
    fn deref_mut(&mut self) -> &mut Progress {
        &mut self.progress
    }
}

/// The history file in a project's state folder.
pub fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("deploys.jsonl")
}

/// The record with its text scrubbed: the error, where the data came from, the steps' names.
/// The fields a later task reads back as data (paths, image ids and tags, the hash) are left
/// as they are, so that a path which happens to hold a value of the environment file still
/// leads to its file; they come from this program, not from what a tool printed.
fn scrubbed(record: &Record) -> Record {
    let mut clean = record.clone();
    let scrub = |text: &mut Option<String>| *text = text.as_deref().map(secrets::scrub);
    scrub(&mut clean.error);
    scrub(&mut clean.progress.imported_from);
    for step in &mut clean.progress.steps {
        step.name = secrets::scrub(&step.name);
        scrub(&mut step.detail);
    }
    clean
}

/// Appends one record (mode 0600), its text scrubbed.
pub fn append(state_dir: &Path, record: &Record) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state_dir)?;
    let path = file(state_dir);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write the deploy history {}", path.display()))?;
    writeln!(out, "{}", serde_json::to_string(&scrubbed(record))?)?;
    out.sync_data()?;
    Ok(())
}

/// Writes `record` in place of the line of the same run (same time and task), or appends it
/// when there is none. The file is replaced whole by a rename, so a process killed meanwhile
/// leaves the old history or the new one, never half a line.
pub fn save(state_dir: &Path, record: &Record) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = file(state_dir);
    let old = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return append(state_dir, record),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let line = serde_json::to_string(&scrubbed(record))?;
    let mut lines: Vec<&str> = old.lines().collect();
    let same = |existing: &&str| {
        serde_json::from_str::<Record>(existing)
            .is_ok_and(|r| r.time == record.time && r.task == record.task)
    };
    match lines.iter().position(same) {
        Some(index) => lines[index] = &line,
        None => lines.push(&line),
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let temporary = state_dir.join(".deploys.jsonl.new");
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot write the deploy history {}", temporary.display()))?;
    out.write_all(text.as_bytes())?;
    out.sync_data()?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("cannot replace the deploy history {}", path.display()))?;
    Ok(())
}

/// Runs that started and never ended (killed, or still running: the lock tells which).
pub fn unfinished(records: &[Record]) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| r.result == Outcome::Running)
        .collect()
}

/// Every record, oldest first, as written; lines that do not parse are skipped.
pub fn read(state_dir: &Path) -> anyhow::Result<Vec<Record>> {
    let path = file(state_dir);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// The tasks that deploy a new image or schema.
const DEPLOYS: &[&str] = &[
    "first-deploy",
    "prod-migrate",
    "prod-full-update",
    "recover",
];

/// Whether `task` deploys (a new image or schema).
pub fn is_deploy(task: &str) -> bool {
    DEPLOYS.contains(&task)
}

/// The last deploy that changed the stack, ended well and was not rolled back since: what
/// `rollback` returns from.
pub fn last_change(records: &[Record]) -> Option<&Record> {
    let mut rolled_back = 0;
    for record in records.iter().rev() {
        if record.task == "rollback" && record.result == Outcome::Ok {
            rolled_back += 1;
        } else if DEPLOYS.contains(&record.task.as_str())
            && record.changed
            && record.result == Outcome::Ok
        {
            if rolled_back == 0 {
                return Some(record);
            }
            rolled_back -= 1;
        }
    }
    None
}

/// The history as a table, scrubbed.
pub fn table(records: &[Record]) -> String {
    secrets::scrub(&table_unscrubbed(records))
}

fn table_unscrubbed(records: &[Record]) -> String {
    let mut out = format!(
        "{:<17} {:<17} {:<10} {:<9} {:<8} {:>9} {:>9}  {}\n",
        "time", "task", "operator", "git", "revision", "downtime", "took", "result"
    );
    for r in records {
        let revision = |v: Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
        let took: f64 = r.steps.iter().map(|s| s.seconds).sum();
        let git = r.git_revision.as_deref().unwrap_or("-");
        let git = &git[..git.len().min(9)];
        let (before, after) = (revision(r.revision_before), revision(r.revision_after));
        let moved = format!("{before}->{after}");
        let down = r.downtime_seconds.map(|d| format!("{d:.1}s"));
        let down = down.as_deref().unwrap_or("-");
        let step = r.step.as_deref().filter(|_| r.result == Outcome::Running);
        let step = step.map(|s| format!(" (step \"{s}\")")).unwrap_or_default();
        let error = r.error.as_deref().map(|e| e.lines().next().unwrap_or(""));
        let error = error.map(|e| format!(": {e}")).unwrap_or_default();
        out.push_str(&format!(
            "{:<17} {:<17} {:<10} {git:<9} {moved:<8} {down:>9} {took:>8.1}s  {}{step}{error}\n",
            r.time, r.task, r.operator, r.result
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_dir;

    #[test]
    fn records_round_trip_and_the_last_change_is_found() {
        let dir = temp_dir("history");
        let mut ok = Record {
            time: "20261125T070000Z".into(),
            task: "prod-full-update".into(),
            ..Record::default()
        };
        ok.changed = true;
        (ok.revision_before, ok.revision_after) = (Some(3), Some(4));
        let mut noop = ok.clone();
        noop.changed = false;
        let mut failed = ok.clone();
        failed.result = Outcome::RolledBack;
        let mut older = ok.clone();
        (older.revision_before, older.revision_after) = (Some(2), Some(3));
        for record in [&older, &ok, &noop, &failed] {
            append(&dir, record).unwrap();
        }
        let records = read(&dir).unwrap();
        assert_eq!(records.len(), 4);
        let last = last_change(&records).unwrap();
        assert_eq!(
            (last.revision_before, last.revision_after),
            (Some(3), Some(4))
        );
        let mut rollback = ok.clone();
        rollback.task = "rollback".into();
        append(&dir, &rollback).unwrap();
        let records = read(&dir).unwrap();
        let before_that = last_change(&records).unwrap();
        assert_eq!(
            before_that.revision_after,
            Some(3),
            "a rolled back deploy is not rolled back twice"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(file(&dir)).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let shown = table(&records);
        assert!(
            shown.contains("3->4") && shown.contains("rolled-back"),
            "{shown}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_is_written_with_its_text_scrubbed_and_its_paths_as_they_are() {
        secrets::register_text("BOT_TOKEN=717171:HISTORYtestSECRET\nDATA_DIR=/srv/history-test\n");
        let dir = temp_dir("history-secret");
        let mut record = Record {
            task: "prod-migrate".into(),
            result: Outcome::Failed,
            error: Some("log: token 717171:HISTORYtestSECRET in /srv/history-test".into()),
            ..Record::default()
        };
        record.backup = Some(PathBuf::from("/srv/history-test/backup.db"));
        append(&dir, &record).unwrap();
        let written = std::fs::read_to_string(file(&dir)).unwrap();
        assert!(!written.contains("HISTORYtestSECRET"), "{written}");
        let read = read(&dir).unwrap();
        assert_eq!(
            read[0].error.as_deref(),
            Some("log: token <BOT_TOKEN> in <DATA_DIR>")
        );
        assert_eq!(
            read[0].backup.as_deref(),
            Some(Path::new("/srv/history-test/backup.db")),
            "a path is data a rollback reads back: kept as it is"
        );
        let shown = table(&read);
        assert!(shown.contains("failed: log: token <BOT_TOKEN>"), "{shown}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
