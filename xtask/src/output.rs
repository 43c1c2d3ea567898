//! The one place that decides how progress is shown: indicatif spinners on a terminal, plain
//! lines otherwise (indicatif hides itself when stderr is not a terminal). Progress goes to
//! stderr; the final report to stdout. Every line is scrubbed of the environment file's secrets
//! on its way out (see [`crate::secrets`]).

use std::cell::{Ref, RefCell, RefMut};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::{Report, StepReport};
use crate::secrets;

/// One task's run, the context its steps share: how progress is shown, the report it fills
/// (which names the task and the project) and prints at the end.
pub struct Run {
    fancy: bool,
    json: bool,
    report: RefCell<Report>,
}

impl Run {
    /// A run of `task` on `project` showing progress on this process's stderr; `json` sends the
    /// final report to stdout as JSON.
    pub fn new(task: &str, project: &str, json: bool) -> Run {
        Run {
            fancy: std::io::stderr().is_terminal(),
            json,
            report: RefCell::new(Report::new(task, project)),
        }
    }

    /// The Compose project the task works on.
    pub fn project(&self) -> String {
        self.report().project.clone()
    }

    /// The report so far.
    pub fn report(&self) -> Ref<'_, Report> {
        self.report.borrow()
    }

    /// The report, to change; never held across a [`Run::step`].
    pub fn edit(&self) -> RefMut<'_, Report> {
        self.report.borrow_mut()
    }

    /// Prints a line of progress.
    pub fn info(&self, line: &str) {
        eprintln!("{}", secrets::scrub(line));
    }

    /// Ends a dry run: prints what the task would do and marks the report.
    pub fn dry_run(&self, plan: &str) -> anyhow::Result<()> {
        self.info(plan);
        self.edit().dry_run = true;
        Ok(())
    }

    /// Runs one named step, showing it while it runs and recording it in the report.
    pub fn step<T>(
        &self,
        name: &str,
        work: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let name = &secrets::scrub(name);
        // The history line names the step before the screen does: a run killed the moment
        // the step shows leaves a line that names it.
        crate::journal::progress(&self.report(), Some(name));
        let started = Instant::now();
        let spinner = if self.fancy {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .expect("a valid template"),
            );
            bar.set_message(name.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            eprintln!("==> {name}");
            None
        };
        let result = work();
        let seconds = started.elapsed().as_secs_f64();
        let ok = result.is_ok();
        if let Some(bar) = spinner {
            bar.finish_and_clear();
        }
        let mark = if ok { "ok  " } else { "FAIL" };
        eprintln!("{mark} {name} ({seconds:.1}s)");
        self.edit().steps.push(StepReport {
            name: name.to_owned(),
            seconds,
            result: if ok { "ok" } else { "failed" }.into(),
            detail: None,
        });
        crate::journal::progress(&self.report(), None);
        result
    }

    /// Adds a detail to the last step.
    pub fn detail(&self, detail: impl Into<String>) {
        let detail = secrets::scrub(&detail.into());
        eprintln!("     {detail}");
        if let Some(step) = self.edit().steps.last_mut() {
            step.detail = Some(detail);
        }
    }

    /// Prints the final report: JSON on stdout with `--json`, else for a person.
    pub fn finish(&self) {
        let report = self.report();
        if self.json {
            println!("{}", report.json());
        } else {
            print!("{}", report.human());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_details_are_scrubbed_before_they_are_shown_or_kept() {
        secrets::register_text("SMTP_PASSWORD=printer-test-password\n");
        let run = Run::new("backup", "proj", false);
        let result: anyhow::Result<()> = run.step("log in as printer-test-password", || Ok(()));
        result.unwrap();
        run.detail("said printer-test-password");
        run.info("and printer-test-password again");
        let report = run.report();
        let step = &report.steps[0];
        assert_eq!(step.name, "log in as <SMTP_PASSWORD>");
        assert_eq!(step.detail.as_deref(), Some("said <SMTP_PASSWORD>"));
    }
}
