//! The repository keeps its promises: the README's commands are what CI runs.

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

const TEST_COMMAND: &str = "cargo test --workspace --locked";

#[test]
fn the_readme_gives_the_deploy_and_test_commands_and_ci_runs_the_test_command() {
    let readme = read("README.md");
    assert!(
        readme.contains("cargo xtask first-deploy --demo"),
        "README shows the deploy command"
    );
    assert!(
        readme.contains(TEST_COMMAND),
        "README shows the test command"
    );
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|line| line.trim() == TEST_COMMAND),
        ".ci/run runs the README's test command"
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

#[test]
fn xtask_runs_programs_without_a_shell() {
    for entry in std::fs::read_dir(root().join("xtask/src"))
        .unwrap()
        .chain(std::fs::read_dir(root().join("xtask/src/tasks")).unwrap())
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for needle in ["\"sh\", \"-c\"", "\"bash\", \"-c\"", "sh -c"] {
                assert!(
                    !text.contains(needle),
                    "{} runs a shell ({needle})",
                    path.display()
                );
            }
        }
    }
}
