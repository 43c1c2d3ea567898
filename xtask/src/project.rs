//! Where things are: the repository, the Compose project and its names, the options every
//! deploy task shares.

use std::path::{Path, PathBuf};

use xshell::Shell;

use crate::compose::Stack;
use crate::exit;
use crate::history;
use crate::secrets;

/// What a task runs with: where (the project, its engine, its files) and how (questions,
/// output, limits). Built from the options the task takes ([`Where`] and the groups below),
/// with the defaults for those it does not take.
#[derive(Debug, Clone)]
pub struct StackArgs {
    /// Answer yes to every question.
    pub yes: bool,
    /// The Bot API stand-in instead of Telegram.
    pub demo: bool,
    /// The Compose project, when named.
    pub project_name: Option<String>,
    /// The Docker engine's address, when given.
    pub host: Option<String>,
    /// The Docker context, when given.
    pub context: Option<String>,
    /// The final report as JSON.
    pub json: bool,
    /// Plan only.
    pub dry_run: bool,
    /// The folder for backups and the history, when given.
    pub backup_dir: Option<PathBuf>,
    /// Backups and release tags kept per project.
    pub keep: usize,
    /// The bot's environment file, when given.
    pub env_file: Option<PathBuf>,
    /// Seconds to wait for the bot to become healthy.
    pub health_timeout: u64,
    /// The newest schema revision to build with, when not the head.
    pub schema_head: Option<u32>,
}

/// Where a task works: the project, its engine, its environment file and its backup folder.
#[derive(Debug, Clone, clap::Args)]
pub struct Where {
    /// Run with the Bot API stand-in instead of Telegram; no token needed. Without it (and
    /// without --env-file) a task uses what the project's last deploy used.
    #[arg(long)]
    pub demo: bool,
    /// The Compose project (else COMPOSE_PROJECT_NAME, else Compose's default, `docker`).
    #[arg(long, short = 'p', value_name = "NAME")]
    pub project_name: Option<String>,
    /// The Docker engine to work on: `ssh://user@server[:port]` deploys to a server from this
    /// machine (else DOCKER_HOST, else the current Docker context).
    #[arg(long, value_name = "URL")]
    pub host: Option<String>,
    /// The Docker context whose engine to work on (`docker context ls`).
    #[arg(long, value_name = "NAME", conflicts_with = "host")]
    pub context: Option<String>,
    /// The folder for backups and the deploy history (one sub-folder per project).
    #[arg(long, value_name = "DIR", env = "TGBOT_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// The bot's environment file (default: the last deploy's, else `.env`, or
    /// `docker/demo.env` with --demo).
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
}

/// `--yes`, for the tasks that may ask.
#[derive(Debug, Clone, clap::Args)]
pub struct Confirm {
    /// Answer yes to every question (for scripts).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `--json`, for the tasks with a final report or a status.
#[derive(Debug, Clone, clap::Args)]
pub struct Json {
    /// Print the final report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--dry-run`, for the tasks that change things.
#[derive(Debug, Clone, clap::Args)]
pub struct DryRun {
    /// Print the plan (steps, Docker commands, migrations) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--keep`, for the tasks that take backups.
#[derive(Debug, Clone, clap::Args)]
pub struct Keep {
    /// How many backups (and release tags, `tgbot-bot:<project>-<git>-<time>`) to keep per
    /// project.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub keep: usize,
}

/// `--health-timeout`, for the tasks that start the bot.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthTimeout {
    /// Seconds to wait for the bot to become healthy.
    #[arg(long, value_name = "SECONDS", default_value_t = 90)]
    pub health_timeout: u64,
}

/// `--schema-head`, for the tasks that build.
#[derive(Debug, Clone, clap::Args)]
pub struct SchemaHead {
    /// Build with the schema history only up to this revision (an older release, for tests and
    /// benchmarks).
    #[arg(long, value_name = "N", hide = true)]
    pub schema_head: Option<u32>,
}

/// An option group's part of [`StackArgs`].
trait Fill {
    fn fill(&self, args: &mut StackArgs);
}

/// Each group's field is the [`StackArgs`] field of the same name.
macro_rules! fill {
    ($($group:ty => $field:ident),*) => {
        $(impl Fill for $group {
            fn fill(&self, args: &mut StackArgs) {
                args.$field = self.$field;
            }
        })*
    };
}

fill!(
    Confirm => yes,
    Json => json,
    DryRun => dry_run,
    Keep => keep,
    HealthTimeout => health_timeout,
    SchemaHead => schema_head
);

impl From<&Where> for StackArgs {
    fn from(at: &Where) -> StackArgs {
        StackArgs {
            yes: false,
            demo: at.demo,
            project_name: at.project_name.clone(),
            host: at.host.clone(),
            context: at.context.clone(),
            json: false,
            dry_run: false,
            backup_dir: at.backup_dir.clone(),
            keep: 10,
            env_file: at.env_file.clone(),
            health_timeout: 90,
            schema_head: None,
        }
    }
}

/// A task's options: [`Where`] and the groups it takes, and no others (`history --keep 3` is a
/// usage error).
macro_rules! task_options {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $group:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, clap::Args)]
        pub struct $name {
            /// Where the task works.
            #[command(flatten)]
            pub at: Where,
            $(
                #[allow(missing_docs)]
                #[command(flatten)]
                pub $field: $group,
            )*
        }

        impl $name {
            /// What the task runs with.
            pub fn stack(&self) -> StackArgs {
                #[allow(unused_mut)]
                let mut args = StackArgs::from(&self.at);
                $( self.$field.fill(&mut args); )*
                args
            }
        }
    };
}

task_options!(
    /// The deploy tasks' options: all of them.
    DeployOptions { confirm: Confirm, json: Json, dry_run: DryRun, keep: Keep, health: HealthTimeout, schema_head: SchemaHead }
);
task_options!(
    /// `rollback`'s options.
    RollbackOptions { confirm: Confirm, json: Json, dry_run: DryRun, health: HealthTimeout }
);
task_options!(
    /// The options of the tasks that back up and change the database (`backup`, `db`).
    BackupOptions { confirm: Confirm, json: Json, dry_run: DryRun, keep: Keep }
);
task_options!(
    /// `restore`'s options: [`BackupOptions`], and the schema head of an image it builds.
    RestoreOptions { confirm: Confirm, json: Json, dry_run: DryRun, keep: Keep, schema_head: SchemaHead }
);
task_options!(
    /// `restart`'s options.
    RestartOptions { confirm: Confirm, json: Json, dry_run: DryRun, health: HealthTimeout }
);
task_options!(
    /// `down`'s options.
    DownOptions { confirm: Confirm, json: Json, dry_run: DryRun }
);
task_options!(
    /// The options of the tasks that only look (`status`, `history`, `doctor`).
    LookOptions { json: Json }
);
task_options!(
    /// The options of the tasks that only need the place (`logs`, `chat`).
    PlaceOptions {}
);

impl StackArgs {
    /// The folder holding this project's backups, history and lock: `<backup dir>/<project>`
    /// for the local engine, `<backup dir>/<engine>/<project>` for another one (see
    /// [`crate::host::Engine::folder`]).
    pub fn state_dir(&self, project: &str) -> PathBuf {
        // A relative folder is the repository's; joining an absolute one gives it unchanged.
        let base = root().join(self.backup_dir.as_deref().unwrap_or(Path::new("backups")));
        match crate::host::Engine::current().folder() {
            Some(engine) => base.join(engine).join(project),
            None => base.join(project),
        }
    }
}

/// The stack a task works on: the project from the options; the environment file and the
/// profile from `--env-file` and `--demo`, else those the project's last deploy used (every
/// task after a deploy, the next deploy included, works on what it deployed), else `.env`.
pub fn stack(sh: &Shell, args: &StackArgs) -> anyhow::Result<Stack> {
    let project = project_name(args.project_name.as_deref())?;
    let told = args.demo || args.env_file.is_some();
    let last = if told {
        None
    } else {
        history::last_change(&history::read(&args.state_dir(&project))?).cloned()
    };
    let demo = args.demo || last.as_ref().and_then(|r| r.profile.as_deref()) == Some("demo");
    let mut stack = Stack::new(sh, &project, demo)?;
    if let Some(env_file) = &args.env_file {
        stack.env_file = std::fs::canonicalize(env_file).map_err(|e| {
            exit::not_ready(format!("the environment file {}: {e}", env_file.display()))
        })?;
    } else if let Some(env_file) = last.and_then(|r| r.env_after).filter(|f| f.exists()) {
        stack.env_file = env_file;
    }
    Ok(stack)
}

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The project name: the option, else COMPOSE_PROJECT_NAME, else what Compose derives from the
/// compose file's folder (`docker`).
pub fn project_name(option: Option<&str>) -> anyhow::Result<String> {
    let name = option
        .map(str::to_owned)
        .or_else(|| {
            std::env::var("COMPOSE_PROJECT_NAME")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "docker".into());
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !valid {
        return Err(exit::usage(format!(
            "project name {name:?} is not valid for Compose: use lower-case letters, digits, '-' and '_', starting with a letter or digit"
        )));
    }
    Ok(name)
}

/// Whether `.env` holds a non-empty BOT_TOKEN (the value itself is never read out). The file is
/// parsed as Compose reads it (dotenvy) and its values are registered to be scrubbed from all
/// output; a line that is not KEY=VALUE is refused (exit 4) by its number, never its content.
pub fn env_file_has_token(env_file: &Path) -> anyhow::Result<bool> {
    if !env_file.exists() {
        return Ok(false);
    }
    let env = secrets::load(env_file)?;
    Ok(env.get("BOT_TOKEN").is_some_and(|v| !v.trim().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_follow_compose_rules() {
        assert_eq!(project_name(Some("tgbot-e2e_1")).unwrap(), "tgbot-e2e_1");
        for bad in ["Upper", "-dash", "with space", ""] {
            let error = project_name(Some(bad)).unwrap_err();
            assert_eq!(exit::code_of(&error), exit::ExitCode::Usage, "{bad}");
        }
    }

    #[test]
    fn the_token_is_found_without_being_read_out() {
        let dir = std::env::temp_dir().join(format!("xtask-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".env");
        assert!(!env_file_has_token(&file).unwrap());
        std::fs::write(&file, "# comment\nBOT_TOKEN=\n").unwrap();
        assert!(!env_file_has_token(&file).unwrap());
        std::fs::write(&file, "BOT_TOKEN=123:abc\n").unwrap();
        assert!(env_file_has_token(&file).unwrap());
        std::fs::write(&file, "export BOT_TOKEN = \"123:abc\" # from @BotFather\n").unwrap();
        assert!(env_file_has_token(&file).unwrap(), "as Compose reads it");
        std::fs::write(&file, "BOT_TOKEN=''\n").unwrap();
        assert!(!env_file_has_token(&file).unwrap());
        std::fs::write(&file, "RUST_LOG=info\nBOT_TOKEN 123:xyz-secret-line\n").unwrap();
        let error = env_file_has_token(&file).unwrap_err();
        assert_eq!(exit::code_of(&error), exit::ExitCode::NotReady);
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("line 2 of {} is not KEY=VALUE", file.display())),
            "{message}"
        );
        assert!(!message.contains("xyz-secret"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
