//! `cargo xtask history`: the deploy history as a table (or JSON lines with `--json`).

use crate::history;
use crate::project::{self, StackArgs};

/// Prints the history.
pub fn run(args: &StackArgs) -> anyhow::Result<()> {
    let project = project::project_name(args.project_name.as_deref())?;
    let dir = args.state_dir(&project);
    let records = history::read(&dir)?;
    if args.json {
        let value = serde_json::json!({"project": project, "deploys": records});
        println!("{value}");
    } else if records.is_empty() {
        println!(
            "no deploys recorded for project {project} in {}",
            history::file(&dir).display()
        );
    } else {
        print!("{}", history::table(&records));
    }
    Ok(())
}
