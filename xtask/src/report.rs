//! The final report of a task: what changed, each step with its duration, and how it ended.

use serde::Serialize;

/// One step as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The step's name, e.g. "upgrade database".
    pub name: String,
    /// How long it took.
    pub seconds: f64,
    /// "ok" or "failed".
    pub result: &'static str,
    /// What it found or did, when worth saying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The whole task's report; `--json` prints it as one object on stdout.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// The task, e.g. "prod-full-update".
    pub task: String,
    /// The Compose project.
    pub project: String,
    /// "ok", "failed" or "refused" (or "not-ready", "usage").
    pub result: String,
    /// Whether anything was changed (containers, database).
    pub changed: bool,
    /// The database's recorded revision before (null: none).
    pub revision_before: Option<u32>,
    /// The database's recorded revision after.
    pub revision_after: Option<u32>,
    /// The database's state before ("unstamped", "behind", ...).
    pub state_before: Option<String>,
    /// The backup taken, on the host.
    pub backup: Option<String>,
    /// Where the database came from, when the deploy imported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
    /// What became of the old app's container, when the deploy replaced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_app: Option<String>,
    /// The image the bot runs after the task.
    pub image: Option<String>,
    /// Whether a failure was rolled back.
    pub rolled_back: bool,
    /// Seconds the bot was not running.
    pub downtime_seconds: Option<f64>,
    /// Every step in order.
    pub steps: Vec<StepReport>,
    /// Seconds for the whole task.
    pub seconds: f64,
    /// The step that failed, when one did.
    pub failed_step: Option<String>,
    /// The error, when it failed.
    pub error: Option<String>,
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

impl Report {
    /// An empty report for `task` on `project`.
    pub fn new(task: &str, project: &str) -> Report {
        Report {
            task: task.to_owned(),
            project: project.to_owned(),
            result: "ok".into(),
            ..Report::default()
        }
    }

    /// The name of the last step that failed.
    pub fn last_failed_step(&self) -> Option<String> {
        self.steps
            .iter()
            .rev()
            .find(|s| s.result == "failed")
            .map(|s| s.name.clone())
    }

    /// The report as a person reads it.
    pub fn human(&self) -> String {
        let mut out = format!(
            "{} on project {}: {}\n",
            self.task, self.project, self.result
        );
        let revision = |r: Option<u32>| r.map_or("none".to_owned(), |r| r.to_string());
        if self.revision_before.is_some()
            || self.revision_after.is_some()
            || self.state_before.is_some()
        {
            out.push_str(&format!(
                "  database: revision {} -> {}{}\n",
                revision(self.revision_before),
                revision(self.revision_after),
                self.state_before
                    .as_deref()
                    .map(|s| format!(" (was {s})"))
                    .unwrap_or_default()
            ));
        }
        if let Some(imported) = &self.imported_from {
            out.push_str(&format!("  data:     {imported}\n"));
        }
        if let Some(old_app) = &self.old_app {
            out.push_str(&format!("  old app:  {old_app}\n"));
        }
        if let Some(backup) = &self.backup {
            out.push_str(&format!("  backup:   {backup}\n"));
        }
        if let Some(image) = &self.image {
            out.push_str(&format!("  image:    {image}\n"));
        }
        if let Some(downtime) = self.downtime_seconds {
            out.push_str(&format!("  downtime: {downtime:.1}s\n"));
        }
        out.push_str(&format!(
            "  changed:  {}\n  took:     {:.1}s\n",
            if self.changed { "yes" } else { "nothing" },
            self.seconds
        ));
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
