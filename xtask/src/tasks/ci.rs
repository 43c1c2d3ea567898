//! `cargo xtask ci`: what CI runs, the one list of it (`.ci/run` prepares the machine, then runs
//! this): the Docker daemon checked, formatting, lints, the migrations check, every test.

use xshell::{Shell, cmd};

use crate::docker;

/// The README's test command, run last (xtask/tests/tidy.rs keeps the README saying it):
/// nextest runs each test in its own process, scheduled by `.config/nextest.toml`.
pub const TEST_COMMAND: &str = "cargo nextest run --workspace --locked";

/// Runs fmt, clippy, check-migrations and the tests; stops at the first failure.
pub fn run(sh: &Shell) -> anyhow::Result<()> {
    // The end-to-end tests fail one by one without an engine: say it once, first.
    docker::check_daemon(sh)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    cmd!(sh, "{cargo} fmt --all -- --check").run()?;
    cmd!(
        sh,
        "{cargo} clippy --workspace --all-targets --locked -- -D warnings"
    )
    .run()?;
    super::schema::check_migrations(super::schema::CheckArgs::default())?;
    let test = TEST_COMMAND
        .strip_prefix("cargo ")
        .expect("the test command is a cargo command")
        .split(' ');
    cmd!(sh, "{cargo} {test...}").run()?;
    Ok(())
}
