//! Each task takes only the options it uses: every task that works on a project takes the
//! "where" options, its help lists exactly the "how" options it uses, and an option it does
//! not use is a usage error (exit 2) before anything runs.

use std::collections::BTreeSet;
use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .unwrap()
}

/// Where: the project, its engine, its files.
const WHERE: [&str; 6] = [
    "--demo",
    "--project-name",
    "--host",
    "--context",
    "--backup-dir",
    "--env-file",
];

/// How: questions, output, limits.
const HOW: [&str; 5] = ["--yes", "--json", "--dry-run", "--keep", "--health-timeout"];

/// The tasks and the "how" options each one uses.
const TASKS: [(&str, &[&str]); 16] = [
    ("first-deploy", &HOW),
    ("prod-migrate", &HOW),
    ("prod-full-update", &HOW),
    ("recover", &HOW),
    ("rollback", &HOW),
    ("restore", &["--yes", "--json", "--dry-run", "--keep"]),
    ("backup", &["--yes", "--json", "--dry-run", "--keep"]),
    ("db", &["--yes", "--json", "--dry-run", "--keep"]),
    (
        "restart",
        &["--yes", "--json", "--dry-run", "--health-timeout"],
    ),
    ("down", &["--yes", "--json", "--dry-run"]),
    ("status", &["--json"]),
    ("history", &["--json"]),
    ("doctor", &["--json"]),
    ("logs", &[]),
    ("chat", &[]),
    ("bench", &[]),
];

/// The long options `task --help` lists.
fn listed(task: &str) -> BTreeSet<String> {
    let out = xtask(&[task, "--help"]);
    assert!(out.status.success(), "{task} --help: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|line| line.trim_start().starts_with('-'))
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with("--")))
        .map(|option| option.trim_end_matches(',').to_owned())
        .collect()
}

#[test]
fn each_task_lists_exactly_the_how_options_it_uses_and_every_where_option() {
    for (task, uses) in TASKS {
        let listed = listed(task);
        let how: Vec<&str> = HOW.into_iter().filter(|o| listed.contains(*o)).collect();
        assert_eq!(how, uses, "{task}: {listed:?}");
        if task != "bench" {
            let missing: Vec<&str> = WHERE.into_iter().filter(|o| !listed.contains(*o)).collect();
            assert!(missing.is_empty(), "{task} lacks {missing:?}");
        }
    }
}

#[test]
fn an_option_a_task_does_not_use_is_a_usage_error_naming_it() {
    let mut refused = vec![
        vec!["history", "--keep", "3"],
        vec!["history", "--keep", "3", "--health-timeout", "5"],
        vec!["restart", "--schema-head", "3"],
        vec!["rollback", "--schema-head", "3"],
    ];
    for (task, uses) in TASKS {
        for option in HOW.into_iter().filter(|o| !uses.contains(o)) {
            let value = ["--keep", "--health-timeout"].contains(&option);
            refused.push([&[task, option][..], if value { &["3"] } else { &[] }].concat());
        }
    }
    for args in refused {
        let out = xtask(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        // `db` passes what follows it to `bot db`, which names the word it does not know.
        assert!(stderr.contains(args[1]), "{args:?}: {stderr}");
    }
}
