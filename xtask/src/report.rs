//! The final report of a task: what changed, each step with its duration, and how it ended.
//! Both its forms are scrubbed of the environment file's secrets (see [`crate::secrets`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secrets;

/// How a task ended, or where it is: one type for the report (`result`), the history (its
/// line's `result`) and `status`, each name written once. The report tells how the task ended
/// for the caller (its exit code's class: `ok`, `warning`, `failed`, `refused`, `not-ready`,
/// `usage`, with `rolled_back` beside); the history tells what it did to the stack (`ok`,
/// `nothing-to-do`, `rolled-back`, `refused`, `failed`, `running`, `interrupted`). Both are
/// decided here ([`Outcome::of_task`], [`Outcome::in_history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It did what it was asked.
    #[default]
    Ok,
    /// It ended well but something went wrong beside (exit code 6).
    Warning,
    /// It had nothing to change.
    NothingToDo,
    /// It failed.
    Failed,
    /// It failed, and what it had changed was undone.
    RolledBack,
    /// It refused before changing anything.
    Refused,
    /// The machine is not ready for it.
    NotReady,
    /// It was called wrongly.
    Usage,
    /// It runs (or was killed: see [`crate::history::unfinished`]).
    Running,
    /// A signal stopped it before it changed anything, or a later run finished it.
    Interrupted,
    /// A name this release does not know (written by a later one).
    #[serde(other)]
    Unknown,
}

impl Outcome {
    /// How a task ended, for its report: the class of its exit code.
    pub fn of_task(result: &anyhow::Result<()>, report: &Report) -> Outcome {
        match result {
            Ok(()) if !report.warnings.is_empty() => Outcome::Warning,
            Ok(()) => Outcome::Ok,
            Err(error) => match crate::exit::code_of(error) {
                crate::exit::ExitCode::Refused => Outcome::Refused,
                crate::exit::ExitCode::NotReady => Outcome::NotReady,
                crate::exit::ExitCode::Usage => Outcome::Usage,
                _ => Outcome::Failed,
            },
        }
    }

    /// What a task did to the stack, for its history line.
    pub fn in_history(result: &anyhow::Result<()>, report: &Report) -> Outcome {
        match result {
            Ok(()) if !report.changed => Outcome::NothingToDo,
            Ok(()) => Outcome::Ok,
            Err(_) if report.rolled_back => Outcome::RolledBack,
            Err(e) if crate::exit::code_of(e) == crate::exit::ExitCode::Refused => Outcome::Refused,
            Err(_) => Outcome::Failed,
        }
    }

    /// Whether a history line with this outcome ended well.
    pub fn ended_well(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::NothingToDo)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self).expect("an outcome serializes");
        f.write_str(name.as_str().unwrap_or("unknown"))
    }
}

/// One step as it ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// The step's name, e.g. "upgrade database".
    pub name: String,
    /// How long it took.
    pub seconds: f64,
    /// "ok" or "failed".
    pub result: String,
    /// What it found or did, when worth saying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a task did so far, as its report and its line in the deploy history both tell it: the
/// history record embeds it as it is (see [`crate::history::Record`]).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Progress {
    /// The database's recorded revision before (null: none).
    pub revision_before: Option<u32>,
    /// The database's recorded revision after.
    pub revision_after: Option<u32>,
    /// The backup taken before the database changed, on this machine.
    pub backup: Option<PathBuf>,
    /// Where the database came from, when the deploy imported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
    /// Every step in order.
    pub steps: Vec<StepReport>,
    /// Seconds the bot was not running.
    pub downtime_seconds: Option<f64>,
    /// Whether anything was changed (containers, database).
    pub changed: bool,
}

/// The whole task's report; `--json` prints it as one object on stdout.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// The task, e.g. "prod-full-update".
    pub task: String,
    /// The Compose project.
    pub project: String,
    /// How it ended: ok, warning, failed, refused, not-ready or usage.
    pub result: Outcome,
    /// What it did so far (revisions, backup, steps, downtime, changed).
    #[serde(flatten)]
    pub progress: Progress,
    /// The database's state before ("unstamped", "behind", ...).
    pub state_before: Option<String>,
    /// What became of the old app's container, when the deploy replaced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_app: Option<String>,
    /// The image the bot runs after the task.
    pub image: Option<String>,
    /// Whether a failure was rolled back.
    pub rolled_back: bool,
    /// Seconds for the whole task.
    pub seconds: f64,
    /// The step that failed, when one did.
    pub failed_step: Option<String>,
    /// The error, when it failed.
    pub error: Option<String>,
    /// What went wrong without undoing the task (exit code 6 when the task otherwise ended
    /// well).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Earlier runs that were killed before they ended, which this run found and finished.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub finished_earlier: Vec<String>,
    /// Whether this was a dry run (nothing changed).
    pub dry_run: bool,
    /// For a dry run: the steps it would take, with their Docker commands.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<String>,
    /// For a dry run: the migrations it would apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<String>,
    /// The exit code.
    pub exit_code: i32,
}

impl std::ops::Deref for Report {
    type Target = Progress;

    fn deref(&self) -> &Progress {
        &self.progress
    }
}

impl std::ops::DerefMut for Report {
    fn deref_mut(&mut self) -> &mut Progress {
        &mut self.progress
    }
}

impl Report {
    /// An empty report for `task` on `project`.
    pub fn new(task: &str, project: &str) -> Report {
        Report {
            task: task.to_owned(),
            project: project.to_owned(),
            ..Report::default()
        }
    }

    /// The name of the last step that failed.
    pub fn last_failed_step(&self) -> Option<String> {
        let failed = self.steps.iter().rev().find(|s| s.result == "failed");
        failed.map(|s| s.name.clone())
    }

    /// The report as one line of JSON, every string in it scrubbed.
    pub fn json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("the report serializes");
        secrets::scrub_json(&mut value);
        value.to_string()
    }

    /// The report as a person reads it, scrubbed.
    pub fn human(&self) -> String {
        secrets::scrub(&self.human_unscrubbed())
    }

    fn human_unscrubbed(&self) -> String {
        let (task, project, result) = (&self.task, &self.project, self.result);
        let mut out = format!("{task} on project {project}: {result}\n");
        let revision = |r: Option<u32>| r.map_or("none".to_owned(), |r| r.to_string());
        let was = self.state_before.as_deref().map(|s| format!(" (was {s})"));
        if self.revision_before.is_some() || self.revision_after.is_some() || was.is_some() {
            let before = revision(self.revision_before);
            let after = revision(self.revision_after);
            let was = was.unwrap_or_default();
            out.push_str(&format!("  database: revision {before} -> {after}{was}\n"));
        }
        let backup = self.backup.as_ref().map(|b| b.display().to_string());
        let downtime = self.downtime_seconds.map(|d| format!("{d:.1}s"));
        let optional = [
            ("data:    ", &self.imported_from),
            ("old app: ", &self.old_app),
            ("backup:  ", &backup),
            ("image:   ", &self.image),
            ("downtime:", &downtime),
        ];
        for (label, value) in optional {
            if let Some(value) = value {
                out.push_str(&format!("  {label} {value}\n"));
            }
        }
        let changed = if self.changed { "yes" } else { "nothing" };
        let took = self.seconds;
        out.push_str(&format!("  changed:  {changed}\n  took:     {took:.1}s\n"));
        if let Some(step) = &self.failed_step {
            out.push_str(&format!("  failed:   step \"{step}\"\n"));
        }
        if self.dry_run {
            out.push_str("  dry run:  nothing was changed\n");
        }
        if self.rolled_back {
            out.push_str("  rolled back: the previous bot and database are back\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_of_the_report_are_scrubbed() {
        secrets::register_text("BOT_TOKEN=616161:REPORTtestSECRETvalue\nDEBUG=1\n");
        let mut report = Report::new("prod-migrate", "proj");
        report.error = Some("Compose said: BOT_TOKEN=616161:REPORTtestSECRETvalue DEBUG=1".into());
        report.failed_step = Some("start bot".into());
        report.steps.push(StepReport {
            name: "start bot".into(),
            seconds: 1.0,
            result: "failed".into(),
            detail: Some("bot/REPORTtestSECRETvalue".into()),
        });
        report.plan.push("wait 1 s".into());
        let json = report.json();
        assert!(!json.contains("REPORTtestSECRETvalue"), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value["error"],
            "Compose said: BOT_TOKEN=<BOT_TOKEN> DEBUG=<DEBUG>"
        );
        assert_eq!(value["steps"][0]["detail"], "bot/<BOT_TOKEN>");
        assert_eq!(
            value["plan"][0], "wait 1 s",
            "a short value elsewhere stays"
        );
        report.old_app = Some("kept as REPORTtestSECRETvalue".into());
        let human = report.human();
        assert!(human.contains("kept as <BOT_TOKEN>"), "{human}");
        assert!(!human.contains("REPORTtestSECRETvalue"), "{human}");
    }
}
