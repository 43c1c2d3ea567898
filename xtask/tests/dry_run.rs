//! `--dry-run` shows the very commands the deploy then runs: every Docker and Compose command of
//! a dry run's plan is found, argument for argument and in the same order, among the commands
//! the real deploy ran right after it (logged by `docker` and `docker-compose` wrappers first on
//! PATH), on the three paths a deploy takes: a first deploy on an empty volume, the fast path
//! (a new image with pending migrations while the bot serves) and the slow one (a new
//! environment: stop, start).

mod common;

use common::plan::plan_matches_deploy;
use common::*;

#[test]
fn a_dry_run_shows_the_commands_the_deploy_then_runs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("dry-run-commands");

    // An empty volume: build, migrate from nothing, start.
    let (first, _) = plan_matches_deploy(&project, "first-deploy", &["--schema-head", "3"]);
    let steps: Vec<&str> = first.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        steps.contains(&"build images")
            && steps.contains(&"prepare migration")
            && steps.contains(&"start bot"),
        "{first:?}"
    );

    // A running bot at revision 3 and a new image: the fast path.
    let data = project.dir.join("revision-3.db");
    revision_3_database(&data, 20, false);
    project.overwrite_live_database(&data);
    let (fast, _) = plan_matches_deploy(&project, "prod-full-update", &[]);
    for step in ["start migration, waiting", "start new bot", "save backup"] {
        assert!(fast.iter().any(|(s, _)| s == step), "{step} in {fast:?}");
    }
    assert!(
        !fast
            .iter()
            .any(|(s, _)| s == "stop bot" || s == "start bot"),
        "the fast path neither stops nor starts the bot as steps of their own: {fast:?}"
    );

    // A new environment only: the bot is stopped and started again.
    let env = env_file(&project.dir, "other.env", "123456:DEMO-TOKEN");
    let env = env.to_str().unwrap();
    let (slow, _) = plan_matches_deploy(&project, "prod-full-update", &["--env-file", env]);
    let steps: Vec<&str> = slow.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        steps,
        [
            "build images",
            "build images",
            "stop bot",
            "start bot",
            "wait until healthy"
        ]
    );
    project.assert_healthy_at_head_with(20, "after the three deploys");
}
