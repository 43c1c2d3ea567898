//! The dry run's plan against what the deploy then ran: wrappers named `docker` and
//! `docker-compose` first on PATH log the commands, and each planned command is looked for
//! among them (tests/dry_run.rs, tests/adversary_dry_run.rs).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Project, report, steps, text};

/// `docker` and `docker-compose` first on PATH, each logging its arguments, then running the
/// real one. `docker_prelude` is shell run by the `docker` wrapper before it (to block a
/// command). Returns the PATH to use and the log.
pub fn wrapped_path(dir: &Path, docker_prelude: &str) -> (String, PathBuf) {
    let (bin, log) = super::wrappers(dir, "", docker_prelude);
    let path = std::env::var("PATH").unwrap();
    (format!("{}:{path}", bin.display()), log)
}

pub fn planned_commands(report: &Value) -> Vec<(String, String)> {
    report["plan"]
        .as_array()
        .expect("a dry run's report has a plan")
        .iter()
        .filter_map(|line| {
            let (step, rest) = line.as_str().unwrap().split_once(": ")?;
            let command = rest.split(" # ").next().unwrap().trim();
            without_env(command)
                .starts_with("docker")
                .then(|| (step.to_owned(), command.to_owned()))
        })
        .collect()
}

pub fn without_times(text: &str) -> String {
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

/// A command line without the `NAME=value` words a shell would set before it.
pub fn without_env(command: &str) -> &str {
    let mut rest = command;
    while let Some((word, after)) = rest.split_once(' ') {
        let is_env = word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        });
        if !is_env {
            break;
        }
        rest = after;
    }
    rest
}

/// Whether the logged command `ran` is the planned `planned` (its `NAME=value` words aside,
/// which the log does not show): the same arguments, where a `<...>` of the plan stands for
/// an id the deploy learns as it goes, times aside, and the database's size label aside (the
/// bot may write between the two runs).
pub fn same_command(planned: &str, ran: &str) -> bool {
    let (planned, ran) = (without_times(without_env(planned)), without_times(ran));
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

pub fn stands_for(p: &str, r: &str) -> bool {
    // The planned word's literal pieces between its `<...>`, found in `r` in order.
    let mut pieces = Vec::new();
    let mut rest = p;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else {
            break;
        };
        pieces.push(&rest[..open]);
        rest = &rest[open + close + 1..];
    }
    if pieces.is_empty() {
        return false;
    }
    pieces.push(rest);
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if r.len() < first.len() + last.len() || !r.starts_with(first) || !r.ends_with(last) {
        return false;
    }
    let mut middle = &r[first.len()..r.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match middle.find(piece) {
            Some(at) => middle = &middle[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// Runs `task` as a dry run, then for real with the logging wrappers; checks that each planned
/// command ran, in the plan's order, and that the plan's steps are the deploy's, in order.
/// Returns the plan's commands and the real deploy's report.
pub fn plan_matches_deploy(
    project: &Project,
    task: &str,
    args: &[&str],
) -> (Vec<(String, String)>, Value) {
    let mut dry_args = args.to_vec();
    dry_args.extend(["--dry-run", "--json"]);
    let dry = project.xtask(task, &dry_args);
    assert!(dry.status.success(), "{}", text(&dry));
    let dry_report = report(&dry);
    let planned = planned_commands(&dry_report);

    let (path, log) = wrapped_path(&project.dir, "");
    let _ = std::fs::remove_file(&log);
    let mut real_args = args.to_vec();
    real_args.extend(["--yes", "--json"]);
    let real = project.xtask_with_env(task, &real_args, &[("PATH", &path)]);
    assert!(real.status.success(), "{}", text(&real));
    let real_report = report(&real);
    let ran: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut from = 0;
    for (step, command) in &planned {
        let found = ran[from..]
            .iter()
            .position(|line| same_command(command, line))
            .unwrap_or_else(|| {
                panic!(
                    "{task}: the plan's step \"{step}\" shows `{command}`, which the deploy did not run (after the commands matched before it).\nThe plan: {:#}\nThe deploy's steps: {:?}\nIt ran:\n{}",
                    dry_report["plan"],
                    steps(&real_report),
                    ran[from..].join("\n")
                )
            });
        from += found + 1;
    }
    let deploy_steps = steps(&real_report);
    let mut plan_steps: Vec<&str> = planned.iter().map(|(step, _)| step.as_str()).collect();
    plan_steps.dedup();
    // What a deploy with nothing to do runs is no step of its own.
    plan_steps.retain(|step| *step != "nothing to do");
    let mut rest = deploy_steps.iter();
    for step in &plan_steps {
        assert!(
            rest.any(|s| s == step),
            "{task}: the plan's steps {plan_steps:?} are not the deploy's, in order: {deploy_steps:?}"
        );
    }
    (planned, real_report)
}
