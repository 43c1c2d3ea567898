//! The repository keeps its promises: the README's commands are what CI runs, every source
//! file says what it is for, no program runs through a shell, and the exit codes read the same
//! in the code, the help and the README.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The README's test command, as `cargo xtask ci` (the one list of what CI runs) has it.
fn test_command() -> String {
    let ci = read("xtask/src/tasks/ci.rs");
    let line = ci
        .lines()
        .find(|l| l.starts_with("pub const TEST_COMMAND: &str = "))
        .expect("xtask/src/tasks/ci.rs names the test command");
    line.split('"').nth(1).unwrap().to_owned()
}

#[test]
fn the_readme_gives_the_deploy_and_test_commands_and_ci_runs_the_test_command() {
    let readme = read("README.md");
    assert!(
        readme.contains("cargo xtask first-deploy --demo"),
        "README shows the deploy command"
    );
    let test = test_command();
    assert_eq!(test, "cargo nextest run --workspace --locked");
    assert!(readme.contains(&test), "README shows the test command");
    let ci = read(".ci/run");
    assert_eq!(
        ci.lines()
            .filter(|l| l.trim() == "exec cargo xtask ci")
            .count(),
        1,
        ".ci/run runs `cargo xtask ci`, the one list of what CI runs"
    );
    for listed in ["cargo fmt", "cargo clippy", "cargo test", "cargo nextest"] {
        assert!(
            !ci.lines().any(|l| l.trim_start().starts_with(listed)),
            ".ci/run lists {listed} again: it belongs in xtask/src/tasks/ci.rs"
        );
    }
    assert!(
        read(".github/workflows/ci.yml").contains(".ci/run"),
        "GitHub's CI runs .ci/run"
    );
}

#[test]
fn ci_run_is_executable() {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root().join(".ci/run"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, ".ci/run must be executable");
}

/// Every Rust file of the workspace's crates (their src, tests and benches).
fn rust_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for krate in ["bot", "migrations", "telegram-standin", "xtask"] {
        for part in ["src", "tests", "benches"] {
            let dir = root().join(krate).join(part);
            if dir.is_dir() {
                walk(&dir, &mut found);
            }
        }
    }
    assert!(found.len() > 50, "the walk found the sources: {found:?}");
    found
}

#[test]
fn every_source_file_opens_with_a_doc_comment() {
    let missing: Vec<_> = rust_files()
        .into_iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap().starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` comment saying what they are for: {missing:?}"
    );
}

/// The programs the crates and their tests run are argv, never a shell. One test file is
/// exempt, by name: it makes process trees with a shell to test the runner itself.
#[test]
fn no_program_is_run_through_a_shell() {
    let exempt = [
        root().join("xtask/tests/tidy.rs"),
        root().join("xtask/tests/adversary_process.rs"),
    ];
    let needles = [
        concat!("\"sh\"", ", \"-c\""),
        concat!("\"bash\"", ", \"-c\""),
        concat!("sh ", "-c"),
    ];
    let sources: Vec<PathBuf> = rust_files()
        .into_iter()
        .filter(|p| !exempt.contains(p))
        .collect();
    assert!(
        sources.len() > 80,
        "the walk found every source file: {sources:?}"
    );
    for path in sources {
        let text = std::fs::read_to_string(&path).unwrap();
        for needle in needles {
            assert!(
                !text.contains(needle),
                "{} runs a shell ({needle}): pass argv instead",
                path.display()
            );
        }
    }
}

/// The exit codes `xtask/src/exit.rs` defines, as numbers.
fn exit_codes() -> Vec<u32> {
    let exit = read("xtask/src/exit.rs");
    let start = exit.find("pub enum ExitCode {").unwrap();
    let body = &exit[start..exit[start..].find("\n}").unwrap() + start];
    let codes: Vec<u32> = body
        .lines()
        .filter_map(|l| l.trim().strip_suffix(',')?.split_once(" = "))
        .map(|(_, n)| n.parse().unwrap())
        .collect();
    assert!(codes.len() >= 7, "{codes:?}");
    codes
}

#[test]
fn the_exit_codes_are_the_same_in_the_code_the_help_and_the_readme() {
    let main = read("xtask/src/cli.rs");
    let help = main
        .lines()
        .find(|l| l.trim_start().starts_with("after_help = \"Exit codes:"))
        .expect("the help lists the exit codes");
    let readme = read("README.md");
    let table = &readme[readme.find("### Exit codes").expect("README: Exit codes")..];
    for code in exit_codes() {
        let in_help = help.contains(&format!(" {code} ")) || help.contains(&format!(": {code} "));
        assert!(
            in_help,
            "`cargo xtask --help` does not list exit code {code}: {help}"
        );
        assert!(
            table.contains(&format!("\n| {code} |")),
            "the README's exit-code table does not list {code}"
        );
    }
    assert!(
        help.contains("128+N") && table.contains("128+N"),
        "the signal exit codes (128+N) are in the help and the README"
    );
}
