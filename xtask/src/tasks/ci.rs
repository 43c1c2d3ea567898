//! `cargo xtask ci`: what CI runs, for scripts: formatting, lints, the migrations check, every
//! test.

use xshell::{Shell, cmd};

/// Runs fmt, clippy, check-migrations and the tests; stops at the first failure.
pub fn run(sh: &Shell) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    cmd!(sh, "{cargo} fmt --all -- --check").run()?;
    cmd!(
        sh,
        "{cargo} clippy --workspace --all-targets --locked -- -D warnings"
    )
    .run()?;
    super::schema::check_migrations(super::schema::CheckArgs {
        release: false,
        json: false,
        dir: None,
    })?;
    cmd!(sh, "{cargo} test --workspace --locked").run()?;
    Ok(())
}
