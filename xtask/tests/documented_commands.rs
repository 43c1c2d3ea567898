//! The documentation cannot drift from the tool: every `cargo xtask` line in the README and the
//! GitHub workflows names a real task and only options that task has, the README's task table
//! lists exactly the tasks `cargo xtask` lists, and the CI workflow runs `.ci/run`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `xtask` prints for `args` (its help texts).
fn xtask_help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "xtask {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The tasks `cargo xtask` lists.
fn tasks() -> BTreeSet<String> {
    let listing = xtask_help(&[]);
    listing
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|task| *task != "help")
        .map(str::to_owned)
        .collect()
}

/// Whether `help` names the option `option` (`--yes`, `-y`) as a whole word.
fn has_option(help: &str, option: &str) -> bool {
    help.match_indices(option).any(|(at, _)| {
        let before = help[..at].chars().next_back();
        let after = help[at + option.len()..].chars().next();
        before.is_none_or(|c| c.is_whitespace() || c == ',' || c == '[')
            && after.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    })
}

/// One `cargo xtask ...` written in a file: where, and the words after `cargo xtask`.
#[derive(Debug)]
struct Written {
    at: String,
    words: Vec<String>,
}

/// Every `cargo xtask ...` in `text`, each cut where its command ends (a backtick, a comment,
/// a table cell, a redirection, the end of the line).
fn invocations(file: &str, text: &str) -> Vec<Written> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        for (at, _) in line.match_indices("cargo xtask") {
            let rest = &line[at + "cargo xtask".len()..];
            let end = rest
                .find(['`', '#', '|', '>', ';', ')', '"', '\''])
                .unwrap_or(rest.len());
            let words = rest[..end].split_whitespace().map(str::to_owned).collect();
            found.push(Written {
                at: format!("{file}:{}: {}", number + 1, line.trim()),
                words,
            });
        }
    }
    found
}

/// The files whose `cargo xtask` lines users copy: the README and the workflows.
fn documents() -> Vec<(String, String)> {
    let mut files = vec![root().join("README.md")];
    let workflows = root().join(".github/workflows");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&workflows)
        .unwrap_or_else(|e| panic!("{}: {e}", workflows.display()))
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    files.extend(names);
    files
        .into_iter()
        .map(|path| {
            let name = path.strip_prefix(root()).unwrap().display().to_string();
            (name, read(&path))
        })
        .collect()
}

#[test]
fn every_documented_cargo_xtask_line_names_a_real_task_and_its_options() {
    let tasks = tasks();
    assert!(tasks.contains("prod-full-update"), "{tasks:?}");
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (file, text) in documents() {
        for written in invocations(&file, &text) {
            let Some(task) = written.words.first() else {
                continue; // `cargo xtask` alone: lists the tasks
            };
            if !tasks.contains(task) {
                wrong.push(format!("{}: no task {task:?}", written.at));
                continue;
            }
            let help = helps
                .entry(task.clone())
                .or_insert_with(|| xtask_help(&[task, "--help"]));
            for word in written.words.iter().skip(1) {
                if !word.starts_with('-') || word == "-" {
                    continue; // a value or an argument
                }
                let option = word.split('=').next().unwrap();
                if !has_option(help, option) {
                    wrong.push(format!("{}: {task} has no option {option}", written.at));
                }
            }
            checked += 1;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        checked >= 20,
        "only {checked} lines found: is the parsing right?"
    );
}

#[test]
fn the_readme_task_table_lists_exactly_the_tasks_there_are() {
    let readme = read(&root().join("README.md"));
    let mut listed = BTreeSet::new();
    let mut table = false;
    for line in readme.lines() {
        if line.starts_with("| task |") {
            table = true;
            continue;
        }
        if !table || line.starts_with("| ---") {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cell = line.split('|').nth(1).unwrap();
        for (index, part) in cell.split('`').enumerate() {
            if index % 2 == 1 && !part.starts_with("cargo xtask") {
                listed.insert(part.split_whitespace().next().unwrap().to_owned());
            }
        }
    }
    assert_eq!(listed, tasks(), "the README's task table and `cargo xtask`");
}

#[test]
fn the_ci_workflow_runs_what_ci_run_runs() {
    let workflow = read(&root().join(".github/workflows/ci.yml"));
    assert!(
        workflow.lines().any(|line| line.trim() == "run: .ci/run"),
        "ci.yml runs .ci/run"
    );
    let deploy = read(&root().join(".github/workflows/deploy.yml"));
    for needed in [
        "--yes",
        "--json",
        "secrets.BOT_TOKEN",
        "ssh://",
        "upload-artifact",
    ] {
        assert!(deploy.contains(needed), "deploy.yml: {needed}");
    }
    assert!(
        !deploy.contains("echo \"${{ secrets.BOT_TOKEN"),
        "the token is never echoed to the log"
    );
}

#[test]
fn the_option_check_tells_a_word_from_its_prefix() {
    let help = "  -y, --yes  Answer yes\n      --dry-run  Print\n      --keep <N>  How many";
    assert!(has_option(help, "--yes") && has_option(help, "-y") && has_option(help, "--keep"));
    assert!(!has_option(help, "--dry") && !has_option(help, "--ye") && !has_option(help, "--run"));
    let written = invocations(
        "f",
        "run `cargo xtask chat --demo \"/start\"` | x\ncargo xtask # all",
    );
    assert_eq!(written[0].words, ["chat", "--demo"]);
    assert!(written[1].words.is_empty());
}
