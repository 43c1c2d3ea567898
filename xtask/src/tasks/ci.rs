//! `cargo xtask ci`: what CI runs, for scripts: formatting, lints, every test.

use xshell::{Shell, cmd};

/// Runs fmt, clippy and the tests; stops at the first failure.
pub fn run(sh: &Shell) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    cmd!(sh, "{cargo} fmt --all -- --check").run()?;
    cmd!(
        sh,
        "{cargo} clippy --workspace --all-targets --locked -- -D warnings"
    )
    .run()?;
    cmd!(sh, "{cargo} test --workspace --locked").run()?;
    Ok(())
}
