//! `--dry-run` shows the very commands the deploy then runs: every Docker and Compose command of
//! a dry run's plan is found, argument for argument and in the same order, among the commands
//! the real deploy ran right after it (logged by `docker` and `docker-compose` wrappers first on
//! PATH), on the three paths a deploy takes: a first deploy on an empty volume, the fast path
//! (a new image with pending migrations while the bot serves) and the slow one (a new
//! environment: stop, start).

mod common;

use common::*;
use serde_json::Value;

/// The plan's commands, as (step, command): the text after `step: ` up to a ` # ` note; lines
/// that only describe (no `docker` command) are left out.
fn planned_commands(report: &Value) -> Vec<(String, String)> {
    report["plan"]
        .as_array()
        .expect("a dry run's report has a plan")
        .iter()
        .filter_map(|line| {
            let (step, rest) = line.as_str().unwrap().split_once(": ")?;
            let command = rest.split(" # ").next().unwrap().trim();
            command
                .starts_with("docker")
                .then(|| (step.to_owned(), command.to_owned()))
        })
        .collect()
}

/// `text` with each time as the tool writes it (`20261125T064430Z`) replaced by `<time>`: a
/// dry run and the deploy after it start at different seconds.
fn without_times(text: &str) -> String {
    let bytes = text.as_bytes();
    let is_time = |at: usize| {
        bytes.len() >= at + 16
            && bytes[at..at + 8].iter().all(u8::is_ascii_digit)
            && bytes[at + 8] == b'T'
            && bytes[at + 9..at + 15].iter().all(u8::is_ascii_digit)
            && bytes[at + 15] == b'Z'
    };
    let (mut out, mut at) = (String::new(), 0);
    while at < text.len() {
        if is_time(at) {
            out.push_str("<time>");
            at += 16;
        } else {
            let c = text[at..].chars().next().unwrap();
            out.push(c);
            at += c.len_utf8();
        }
    }
    out
}

/// Whether the logged command `ran` is the planned `planned`: the same arguments, where a
/// `<...>` of the plan stands for an id the deploy learns as it goes, times aside, and the
/// database's size label (the bot may write between the two runs) aside.
fn same_command(planned: &str, ran: &str) -> bool {
    let (planned, ran) = (without_times(planned), without_times(ran));
    let (p, r): (Vec<&str>, Vec<&str>) = (
        planned.split_whitespace().collect(),
        ran.split_whitespace().collect(),
    );
    p.len() == r.len()
        && p.iter().zip(&r).all(|(p, r)| {
            p == r
                || stands_for(p, r)
                || (p.starts_with("org.tgbot.bytes=") && r.starts_with("org.tgbot.bytes="))
        })
}

/// Whether the planned argument `p`, with one `<...>` in it (`<migration>:/backup/x.db`), is
/// `r` with an id in that place.
fn stands_for(p: &str, r: &str) -> bool {
    let (Some(open), Some(close)) = (p.find('<'), p.find('>')) else {
        return false;
    };
    let (before, after) = (&p[..open], &p[close + 1..]);
    open < close
        && r.len() > before.len() + after.len()
        && r.starts_with(before)
        && r.ends_with(after)
}

/// Runs `task` as a dry run, then for real with the logging wrappers, and checks that each
/// planned command ran, in the plan's order, and that the plan's steps are the deploy's.
fn plan_matches_deploy(project: &Project, task: &str, args: &[&str]) -> Vec<(String, String)> {
    let mut dry_args = args.to_vec();
    dry_args.extend(["--dry-run", "--json"]);
    let dry = project.xtask(task, &dry_args);
    assert!(dry.status.success(), "{}", text(&dry));
    let planned = planned_commands(&report(&dry));
    assert!(!planned.is_empty(), "{}", text(&dry));

    let (bin, log) = logging_bin(&project.dir);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let _ = std::fs::remove_file(&log);
    let mut real_args = args.to_vec();
    real_args.extend(["--yes", "--json"]);
    let real = project.xtask_with_env(task, &real_args, &[("PATH", &path)]);
    assert!(real.status.success(), "{}", text(&real));
    let ran: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| {
            line.split_once(" :: ")
                .map_or(line, |(_, command)| command)
                .to_owned()
        })
        .collect();
    let mut from = 0;
    for (step, command) in &planned {
        let found = ran[from..]
            .iter()
            .position(|line| same_command(command, line))
            .unwrap_or_else(|| {
                panic!(
                    "{task}: the plan's step \"{step}\" shows `{command}`, which the deploy did not run (after the commands matched before it). It ran:\n{}",
                    ran[from..].join("\n")
                )
            });
        from += found + 1;
    }
    let deploy_steps = steps(&report(&real));
    let mut plan_steps: Vec<&str> = planned.iter().map(|(step, _)| step.as_str()).collect();
    plan_steps.dedup();
    let mut rest = deploy_steps.iter();
    for step in &plan_steps {
        assert!(
            rest.any(|s| s == step),
            "{task}: the plan's steps {plan_steps:?} are not the deploy's, in order: {deploy_steps:?}"
        );
    }
    planned
}

#[test]
fn a_dry_run_shows_the_commands_the_deploy_then_runs() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let project = Project::new("dry-run-commands");

    // An empty volume: build, migrate from nothing, start.
    let first = plan_matches_deploy(&project, "first-deploy", &["--schema-head", "3"]);
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
    let fast = plan_matches_deploy(&project, "prod-full-update", &[]);
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
    let slow = plan_matches_deploy(&project, "prod-full-update", &["--env-file", env]);
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
