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

/// Every task, the "how" options it uses, and the argument it needs after its options.
const TASKS: [(&str, &[&str], Option<&str>); 19] = [
    ("first-deploy", &HOW, None),
    ("prod-migrate", &HOW, None),
    ("prod-full-update", &HOW, None),
    ("recover", &HOW, None),
    (
        "rollback",
        &["--yes", "--json", "--dry-run", "--health-timeout"],
        None,
    ),
    (
        "restore",
        &["--yes", "--json", "--dry-run", "--keep"],
        Some("x.db"),
    ),
    ("backup", &["--yes", "--json", "--dry-run", "--keep"], None),
    (
        "db",
        &["--yes", "--json", "--dry-run", "--keep"],
        Some("status"),
    ),
    (
        "restart",
        &["--yes", "--json", "--dry-run", "--health-timeout"],
        None,
    ),
    ("down", &["--yes", "--json", "--dry-run"], None),
    ("status", &["--json"], None),
    ("history", &["--json"], None),
    ("doctor", &["--json"], None),
    ("logs", &[], None),
    ("chat", &[], Some("/start")),
    ("new-migration", &["--json", "--dry-run"], Some("name")),
    ("check-migrations", &["--json"], None),
    ("ci", &[], None),
    ("bench", &[], None),
];

/// The tasks that work on no project, so take no "where" option.
const NO_PROJECT: [&str; 4] = ["new-migration", "check-migrations", "ci", "bench"];

/// The tasks that build an image, so take the hidden `--schema-head N`.
const BUILDERS: [&str; 5] = [
    "first-deploy",
    "prod-migrate",
    "prod-full-update",
    "recover",
    "restore",
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
    let listing = String::from_utf8(xtask(&[]).stdout).unwrap();
    for (task, uses, _) in TASKS {
        assert!(listing.contains(&format!("  {task} ")), "{task} is a task");
        let listed = listed(task);
        let how: BTreeSet<&str> = HOW.into_iter().filter(|o| listed.contains(*o)).collect();
        assert_eq!(how, uses.iter().copied().collect(), "{task}: {listed:?}");
        let missing: Vec<&str> = WHERE.into_iter().filter(|o| !listed.contains(*o)).collect();
        let expected = if NO_PROJECT.contains(&task) {
            WHERE.len()
        } else {
            0
        };
        assert_eq!(missing.len(), expected, "{task} lacks {missing:?}");
    }
    let commands = listing
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter(|line| !line.trim_start().starts_with("help "))
        .count();
    assert_eq!(
        commands,
        TASKS.len(),
        "every task is in the table: {listing}"
    );
}

#[test]
fn an_option_a_task_does_not_use_is_a_usage_error_naming_it() {
    let mut refused = vec![vec!["history", "--keep", "3", "--health-timeout", "5"]];
    for (task, uses, then) in TASKS {
        let unused = HOW.into_iter().filter(|o| !uses.contains(o));
        let schema_head = Some("--schema-head").filter(|_| !BUILDERS.contains(&task));
        for option in unused.chain(schema_head) {
            let value = ["--keep", "--health-timeout", "--schema-head"].contains(&option);
            let mut args = vec![task, option];
            args.extend(value.then_some("3"));
            // The task's own argument too, so that only the option can be what is refused.
            args.extend(then);
            refused.push(args);
        }
    }
    for args in refused {
        let out = xtask(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        // `db` hands what it does not know to `bot db`, which names the word as no command.
        let named = match args[0] {
            "db" => format!("`bot db {}` is not a database command", args[1]),
            _ => format!("unexpected argument '{}'", args[1]),
        };
        assert!(stderr.contains(&named), "{args:?}: {stderr}");
    }
}
