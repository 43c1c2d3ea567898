//! The running task's line in the deploy history: written when the task starts and rewritten at
//! every step, so that a run killed at any point (SIGKILL, the OOM killer, a lost SSH session)
//! leaves a line that names its step and what the volume held. `status` shows such a line as an
//! unfinished deploy; the next deploy or `cargo xtask recover` finishes it and takes over its way
//! back (see [`inherit`]).
//!
//! The line lives in one process-wide place because two threads write it: the task's, and the
//! signal thread's (see [`crate::signals`]) when a signal ends the task before it changed anything.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::history::{self, Record};
use crate::report::{Outcome, Report};

struct Journal {
    state_dir: PathBuf,
    record: Record,
    /// Unfinished runs this one found and finishes: their way back becomes this run's.
    inherited: Vec<Record>,
}

static CURRENT: Mutex<Option<Journal>> = Mutex::new(None);

fn current() -> std::sync::MutexGuard<'static, Option<Journal>> {
    CURRENT.lock().unwrap_or_else(|p| p.into_inner())
}

fn with<T>(work: impl FnOnce(&mut Journal) -> T) -> Option<T> {
    current().as_mut().map(work)
}

/// Saves `record`; a failure is only reported.
fn save(state_dir: &Path, record: &Record) {
    if let Err(e) = history::save(state_dir, record) {
        eprintln!("warning: the deploy history could not be updated: {e:#}");
    }
}

/// Writes `record` as a running task's line; fails (changing nothing) when the history cannot
/// be written, since a run that leaves no trace must not start.
pub fn begin(state_dir: &Path, mut record: Record) -> anyhow::Result<()> {
    record.result = Outcome::Running;
    record.pid = Some(std::process::id());
    std::fs::create_dir_all(state_dir)?;
    history::save(state_dir, &record).map_err(|e| {
        crate::exit::not_ready(format!(
            "{e:#}; nothing was changed. Free room or fix the permissions of {}, then run again",
            state_dir.display()
        ))
    })?;
    *current() = Some(Journal {
        state_dir: state_dir.to_owned(),
        record,
        inherited: Vec::new(),
    });
    Ok(())
}

/// Changes the running task's record (and writes it).
pub fn update(change: impl FnOnce(&mut Record)) {
    with(|journal| {
        change(&mut journal.record);
        save(&journal.state_dir, &journal.record);
    });
}

/// Reads from the running task's record.
pub fn read<T>(look: impl FnOnce(&Record) -> T) -> Option<T> {
    with(|journal| look(&journal.record))
}

/// Notes that a step starts (or ended: `step` None keeps the last one) and copies the report's
/// progress into the record.
pub fn progress(report: &Report, step: Option<&str>) {
    with(|journal| {
        fill_from_report(&mut journal.record, report);
        if let Some(step) = step {
            journal.record.step = Some(step.to_owned());
        }
        save(&journal.state_dir, &journal.record);
    });
}

/// Says what the volume holds now.
pub fn volume(state: impl Into<String>) {
    let state = state.into();
    update(|record| record.volume = Some(state));
}

/// Unfinished runs that this one finishes. Only when this run ends well is each marked
/// `interrupted` (finished by this run) and its way back carried into this run's record; a run
/// that fails, is refused or is killed itself leaves them unfinished for the next one.
pub fn take_over(unfinished: Vec<Record>) {
    with(|journal| journal.inherited.extend(unfinished));
}

/// The image an unfinished run this one finishes had replaced (the id its way back names),
/// if it had replaced one.
pub fn replaced_image() -> Option<String> {
    with(|journal| {
        journal
            .inherited
            .iter()
            .find(|r| r.image_before_tag.is_some())
            .map(|r| r.image_before.clone().unwrap_or_default())
    })
    .flatten()
}

/// Ends the running task's record with the report and the result, and writes it.
pub fn finish(report: &Report, result: &anyhow::Result<()>) {
    let mut current = current();
    let Some(mut journal) = current.take() else {
        return;
    };
    finish_record(&mut journal.record, report, result);
    if journal.record.result.ended_well() {
        let by = format!("{} {}", journal.record.task, journal.record.time);
        for old in &journal.inherited {
            inherit(&mut journal.record, old);
            let mut finished = old.clone();
            finished.result = Outcome::Interrupted;
            finished.finished_by = Some(by.clone());
            save(&journal.state_dir, &finished);
        }
    }
    save(&journal.state_dir, &journal.record);
}

/// Ends the running task's record as stopped by `signal` (from the signal thread); returns the
/// step it was in.
pub fn interrupted(signal: &str) -> Option<String> {
    let mut current = current();
    let mut journal = current.take()?;
    journal.record.result = Outcome::Interrupted;
    let step = journal.record.step.clone();
    let during = step.as_deref().map(|s| format!(" during step \"{s}\""));
    let during = during.unwrap_or_default();
    let error = format!("stopped by {signal}{during} before anything was changed");
    journal.record.error = Some(error);
    save(&journal.state_dir, &journal.record);
    step
}

/// Copies the report's progress into the record: what a killed run's line should say. The
/// backup the record names (where this deploy's will be) stays until the report names one.
fn fill_from_report(record: &mut Record, report: &Report) {
    let planned_backup = record.backup.take();
    record.progress = report.progress.clone();
    if record.backup.is_none() {
        record.backup = planned_backup;
    }
}

/// Fills the record's outcome from the report.
pub fn finish_record(record: &mut Record, report: &Report, result: &anyhow::Result<()>) {
    // The backup the run ended with, not the one it meant to take.
    record.progress = report.progress.clone();
    record.step = None;
    record.result = Outcome::in_history(result, report);
    record.error = result.as_ref().err().map(|e| format!("{e:#}"));
}

/// A run that finished an unfinished deploy forward carries that deploy's way back, so that
/// `rollback` afterwards returns to where the deploy started: the image it replaced (when this
/// run replaced none itself) and the backup taken before its migration (when this run took none
/// and that file was saved).
pub fn inherit(record: &mut Record, old: &Record) {
    if !record.result.ended_well() {
        return;
    }
    let mut took = false;
    if record.image_before_tag.is_none() && old.image_before_tag.is_some() {
        record.image_before = old.image_before.clone();
        record.image_before_tag = old.image_before_tag.clone();
        record.env_before = old.env_before.clone();
        took = true;
    }
    if record.revision_before == record.revision_after
        && old.backup.as_ref().is_some_and(|b| b.exists())
        && old.revision_before != record.revision_after
    {
        record.backup = old.backup.clone();
        record.revision_before = old.revision_before;
        took = true;
    }
    if took {
        record.changed = true;
        record.result = Outcome::Ok;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_dir;

    /// A record of a run that took the schema from revision `from` to `to`.
    fn moved(from: u32, to: u32, result: Outcome) -> Record {
        let mut record = Record {
            result,
            ..Record::default()
        };
        (record.revision_before, record.revision_after) = (Some(from), Some(to));
        record
    }

    #[test]
    fn a_running_line_is_replaced_in_place_and_other_lines_stay() {
        let dir = temp_dir("journal-save");
        let earlier = Record {
            time: "20261126T100000Z".into(),
            task: "backup".into(),
            ..Record::default()
        };
        history::append(&dir, &earlier).unwrap();
        let mut running = Record {
            time: "20261126T110000Z".into(),
            task: "prod-full-update".into(),
            result: Outcome::Running,
            step: Some("build images".into()),
            ..Record::default()
        };
        history::save(&dir, &running).unwrap();
        running.step = Some("migrate database".into());
        running.volume = Some("migrating".into());
        history::save(&dir, &running).unwrap();
        let records = history::read(&dir).unwrap();
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(records[0].task, "backup");
        assert_eq!(records[1].step.as_deref(), Some("migrate database"));
        let unfinished = history::unfinished(&records);
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].time, "20261126T110000Z");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_finishing_run_takes_over_the_way_back_of_the_run_it_finished() {
        let dir = temp_dir("journal-inherit");
        let backup = dir.join("proj-20261126T110000Z-rev3.db");
        std::fs::write(&backup, b"x").unwrap();
        let mut killed = moved(3, 3, Outcome::Running);
        killed.backup = Some(backup.clone());
        killed.task = "prod-full-update".into();
        killed.image_before = Some("sha256:old".into());
        killed.image_before_tag = Some("tgbot-bot:proj-previous".into());
        // The killed run's migration and new bot went on without it: nothing left to do.
        let mut finisher = moved(4, 4, Outcome::NothingToDo);
        inherit(&mut finisher, &killed);
        assert_eq!(finisher.result, Outcome::Ok);
        assert!(finisher.changed);
        assert_eq!(finisher.image_before_tag, killed.image_before_tag);
        assert_eq!(finisher.revision_before, Some(3));
        assert_eq!(finisher.backup.as_deref(), Some(backup.as_path()));

        // A finisher that migrated and replaced the image itself keeps its own way back.
        let mut own = moved(3, 4, Outcome::Ok);
        own.backup = Some(dir.join("mine.db"));
        own.image_before = Some("sha256:mine".into());
        own.image_before_tag = Some("tgbot-bot:proj-previous".into());
        inherit(&mut own, &killed);
        assert_eq!(own.image_before.as_deref(), Some("sha256:mine"));
        assert_eq!(own.backup.as_deref(), Some(dir.join("mine.db").as_path()));

        // A backup the killed run never took is no way back.
        std::fs::remove_file(&backup).unwrap();
        let mut nothing = moved(4, 4, Outcome::NothingToDo);
        let killed_early = Record {
            image_before_tag: None,
            ..killed
        };
        inherit(&mut nothing, &killed_early);
        assert_eq!(nothing.result, Outcome::NothingToDo);
        assert!(nothing.backup.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
