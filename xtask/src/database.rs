//! The database in the volume, as the bot binary reports it: the deploy asks `bot db ...` in a
//! throw-away container and never opens SQLite itself.

use anyhow::Context;
use serde::Deserialize;
use xshell::{Shell, cmd};

use crate::compose::Stack;
use crate::exit;
use crate::process;

/// `bot db status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct DbStatus {
    /// empty, unstamped, behind, current, ahead, modified.
    pub state: String,
    /// The recorded revision.
    pub version: Option<u32>,
    /// The build's newest revision.
    pub head: u32,
    /// Revisions to apply.
    pub pending: Vec<u32>,
    /// For unstamped: the revision the schema matches.
    pub matches: Option<u32>,
    /// For unstamped without a match: the closest revision.
    pub closest: Option<u32>,
    /// What differs.
    #[serde(default)]
    pub difference: Vec<String>,
}

impl DbStatus {
    /// The revision the database will be at once adopted (or its recorded one).
    pub fn effective_version(&self) -> Option<u32> {
        self.version.or(self.matches)
    }
}

/// Reads the database's state with the bot image's engine.
pub fn status(sh: &Shell, stack: &Stack) -> anyhow::Result<DbStatus> {
    let out = match stack.bot(
        sh,
        &["db", "status", "--json"],
        "reading the database's state",
    ) {
        Ok(out) => out,
        Err(e)
            if e.to_string().contains("not a SQLite database")
                || e.to_string().contains("is damaged") =>
        {
            return Err(exit::refused(format!(
                "{e:#}\nThe deploy changed nothing. Put a good database in place with `cargo xtask restore <file>`."
            )));
        }
        Err(e) => return Err(e),
    };
    let line = out
        .stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("`bot db status --json` printed no JSON")?;
    serde_json::from_str(line).context("`bot db status --json` printed JSON of another shape")
}

/// Refuses, before anything changes, the states only a person can resolve.
pub fn refuse_unsafe(status: &DbStatus) -> anyhow::Result<()> {
    let differences = || {
        status
            .difference
            .iter()
            .map(|d| format!("  {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    match status.state.as_str() {
        "unstamped" if status.matches.is_none() => Err(exit::refused(format!(
            "the database has tables but no migration history, and its schema matches no revision of this build (closest: revision {}):\n{}\nThe deploy changed nothing and the bot was left as it was. Make the schema match a revision (or restore a backup with `cargo xtask restore`), then deploy again.",
            status.closest.unwrap_or(0),
            differences()
        ))),
        "ahead" => Err(exit::refused(format!(
            "the database is at revision {}, newer than this build's head {}: deploy the newer build, or restore a backup taken before it. The deploy changed nothing.",
            status.version.unwrap_or(0),
            status.head
        ))),
        "modified" => Err(exit::refused(format!(
            "migration files were edited after they were applied:\n{}\nPut them back (`git checkout migrations/sql`) and add a new migration instead. The deploy changed nothing.",
            differences()
        ))),
        _ => Ok(()),
    }
}

/// Backs the live database up inside the volume (`/data/backups/<name>`) with the online
/// backup API, then copies it to `host_dir` on this machine, mode 0600.
pub fn back_up(
    sh: &Shell,
    stack: &Stack,
    name: &str,
    host_dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let in_volume = format!("/data/backups/{name}");
    stack.bot(sh, &["db", "backup", &in_volume], "backing up the database")?;
    std::fs::create_dir_all(host_dir)
        .with_context(|| format!("cannot create {}", host_dir.display()))?;
    let host_file = host_dir.join(name);
    copy_out_of_volume(sh, stack, &in_volume, &host_file)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o600))?;
    Ok(host_file)
}

/// Copies a file out of the volume through a created (never started) container, which works
/// with a remote DOCKER_HOST too.
fn copy_out_of_volume(
    sh: &Shell,
    stack: &Stack,
    path: &str,
    host_file: &std::path::Path,
) -> anyhow::Result<()> {
    let mount = format!("{}:/data", stack.volume());
    let image = &stack.bot_image;
    let id = process::run(
        cmd!(sh, "docker create -v {mount} {image}"),
        "preparing the backup copy",
    )?
    .stdout
    .trim()
    .to_owned();
    let source = format!("{id}:{path}");
    let copied = process::run(
        cmd!(sh, "docker cp {source} {host_file}"),
        "copying the backup to this machine",
    );
    let _ = cmd!(sh, "docker rm -f {id}")
        .quiet()
        .ignore_status()
        .output();
    copied.map(drop)
}

/// Puts the backup at `/data/backups/<name>` back as the live database.
pub fn restore_backup(sh: &Shell, stack: &Stack, name: &str) -> anyhow::Result<()> {
    let in_volume = format!("/data/backups/{name}");
    stack
        .bot(
            sh,
            &["db", "restore", &in_volume],
            "restoring the database from the backup",
        )
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str, matches: Option<u32>) -> DbStatus {
        DbStatus {
            state: state.into(),
            version: None,
            head: 2,
            pending: vec![],
            matches,
            closest: Some(1),
            difference: vec!["table users: column last_name missing".into()],
        }
    }

    #[test]
    fn only_states_a_person_must_resolve_are_refused() {
        for ok in ["empty", "behind", "current"] {
            refuse_unsafe(&status(ok, None)).unwrap();
        }
        refuse_unsafe(&status("unstamped", Some(1))).unwrap();
        let error = refuse_unsafe(&status("unstamped", None)).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::ExitCode::Refused);
        assert!(
            error
                .to_string()
                .contains("table users: column last_name missing"),
            "{error}"
        );
        for refused in ["ahead", "modified"] {
            assert_eq!(
                exit::code_of(&refuse_unsafe(&status(refused, None)).unwrap_err()),
                exit::ExitCode::Refused
            );
        }
    }
}
