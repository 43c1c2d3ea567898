//! The command line: the tasks, their options, and how each one's outcome becomes the exit
//! code and the final report.

use std::time::Instant;

use clap::{CommandFactory, Parser, Subcommand};
use xshell::Shell;

use crate::deploy::Mode;
use crate::exit::ExitCode;
use crate::output::Run;
use crate::project::StackArgs;
use crate::report::Outcome;
use crate::{bench, deploy, exit, host, old_app, project, secrets, signals, tasks};

/// Deploys and runs the bot with Docker Compose.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    after_help = "Exit codes: 0 done, 1 a step failed (rolled back), 2 usage, 3 refused (nothing changed), 4 machine not ready, 5 another deploy holds the lock, 6 done with a warning (see the report), 128+N stopped by signal N before anything changed."
)]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Set up a server: check it, build, create, import or adopt the database, start, wait
    /// until healthy.
    FirstDeploy(DeployArgs),
    /// The database part alone: stop, back up, adopt, upgrade, start, wait until healthy.
    ProdMigrate(DeployArgs),
    /// Build while the old bot runs, then migrate and start the new image. Idempotent.
    ProdFullUpdate(DeployArgs),
    /// Finish a deploy that was killed before it ended (`status` names it): brings the
    /// database to this image's head and the bot up, verified healthy; `rollback` afterwards
    /// returns to where that deploy started.
    Recover(DeployArgs),
    /// Containers, health, database state.
    Status(project::LookOptions),
    /// Put a database file into the volume (it does not migrate).
    Restore(tasks::restore::Args),
    /// Go back to the image (and backup) from before the last deploy.
    Rollback(project::RollbackOptions),
    /// Take a checked backup of the live database into the backup folder.
    Backup(project::BackupOptions),
    /// The deploy history as a table.
    History(project::LookOptions),
    /// Run the preflight checks alone, each with its fix.
    Doctor(project::LookOptions),
    /// `bot db ARGS` on the project's volume in a throw-away container: reads at once; writes
    /// (upgrade, downgrade, stamp, adopt) after a question, under the deploy lock, after a backup.
    Db(tasks::db::Args),
    /// The bot's log.
    Logs {
        #[command(flatten)]
        options: project::PlaceOptions,
        /// Follow the log.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Lines from the end.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// Restart the bot and wait until it is healthy.
    Restart(project::RestartOptions),
    /// Stop and remove the containers (never the volume).
    Down(project::DownOptions),
    /// Write the next migration's up and down files.
    NewMigration(tasks::schema::NewArgs),
    /// Check every migration on a fresh database: released files unchanged, down files
    /// round-trip; `--release` records the new ones as released.
    CheckMigrations(tasks::schema::CheckArgs),
    /// What CI runs: fmt, clippy, check-migrations, every test.
    Ci,
    /// Send a message to the demo bot through the stand-in and print the answer.
    Chat(tasks::chat::Args),
    /// Measure the speed and size targets; write docs/BENCHMARKS.md.
    Bench(bench::Args),
}

/// The options of the deploy tasks.
#[derive(Debug, clap::Args)]
struct DeployArgs {
    #[command(flatten)]
    options: project::DeployOptions,
    #[command(flatten)]
    import: old_app::ImportArgs,
}

/// Parses the command line and runs the task; `cargo xtask` alone lists the tasks.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let Some(task) = cli.task else {
        let _ = Cli::command().print_help();
        return std::process::ExitCode::SUCCESS;
    };
    // The engine is chosen before any thread starts: it becomes this process's DOCKER_HOST.
    if let Some(args) = task.stack_args() {
        match host::resolve(args.host.as_deref(), args.context.as_deref()) {
            Ok(engine) => engine.apply(),
            Err(error) => return std::process::ExitCode::from(plain(Err(error)) as u8),
        }
    }
    let Ok(sh) = Shell::new().inspect_err(|e| eprintln!("error: {e}")) else {
        return std::process::ExitCode::FAILURE;
    };
    sh.change_dir(project::root());
    signals::install();
    let code = match task {
        Task::FirstDeploy(args) => deploy_task(&sh, Mode::FirstDeploy, args),
        Task::ProdMigrate(args) => deploy_task(&sh, Mode::Migrate, args),
        Task::ProdFullUpdate(args) => deploy_task(&sh, Mode::FullUpdate, args),
        Task::Recover(args) => deploy_task(&sh, Mode::Recover, args),
        Task::Restore(args) => reported(&sh, "restore", args.options.stack(), move |sh, _, run| {
            tasks::restore::run(sh, args, run)
        }),
        Task::Rollback(args) => reported(&sh, "rollback", args.stack(), tasks::rollback::run),
        Task::Backup(args) => reported(&sh, "backup", args.stack(), tasks::backup::run),
        Task::Restart(args) => reported(&sh, "restart", args.stack(), tasks::ops::restart),
        Task::Down(args) => reported(&sh, "down", args.stack(), tasks::ops::down),
        Task::History(args) => plain(tasks::history::run(&args.stack())),
        Task::Doctor(args) => plain(tasks::doctor::run(&sh, &args.stack())),
        Task::Logs {
            options,
            follow,
            tail,
        } => plain(tasks::ops::logs(&sh, &options.stack(), follow, tail)),
        Task::NewMigration(args) => plain(tasks::schema::new_migration(args)),
        Task::CheckMigrations(args) => plain(tasks::schema::check_migrations(args)),
        Task::Ci => plain(tasks::ci::run(&sh)),
        Task::Status(args) => plain(tasks::status::run(&sh, &args.stack())),
        Task::Chat(args) => plain(tasks::chat::run(&sh, args)),
        Task::Db(args) => match args.kind() {
            Err(error) => plain(Err(error)),
            Ok(tasks::db::Kind::Reads) => plain(tasks::db::read(&sh, &args)),
            Ok(tasks::db::Kind::Writes) => {
                reported(&sh, "db", args.options.stack(), |sh, _, run| {
                    tasks::db::write(sh, &args, run)
                })
            }
        },
        Task::Bench(args) => plain(bench::run(&sh, args)),
    };
    std::process::ExitCode::from(code as u8)
}

impl Task {
    /// What the task runs with, for the tasks that work on a project.
    fn stack_args(&self) -> Option<StackArgs> {
        match self {
            Task::FirstDeploy(args)
            | Task::ProdMigrate(args)
            | Task::ProdFullUpdate(args)
            | Task::Recover(args) => Some(args.options.stack()),
            Task::Restore(args) => Some(args.options.stack()),
            Task::Rollback(args) => Some(args.stack()),
            Task::Backup(args) => Some(args.stack()),
            Task::History(args) | Task::Doctor(args) | Task::Status(args) => Some(args.stack()),
            Task::Restart(args) => Some(args.stack()),
            Task::Down(args) => Some(args.stack()),
            Task::Db(args) => Some(args.options.stack()),
            Task::Logs { options, .. } => Some(options.stack()),
            Task::Chat(args) => Some(args.options.stack()),
            Task::NewMigration(_) | Task::CheckMigrations(_) | Task::Ci | Task::Bench(_) => None,
        }
    }
}

fn deploy_task(sh: &Shell, mode: Mode, args: DeployArgs) -> ExitCode {
    let DeployArgs { options, import } = args;
    reported(sh, mode.task(), options.stack(), |sh, args, run| {
        deploy::run(sh, args, &import, mode, run)
    })
}

/// Runs a task that changes things, timing it and printing its final report.
fn reported(
    sh: &Shell,
    task: &str,
    args: StackArgs,
    work: impl FnOnce(&Shell, &StackArgs, &Run) -> anyhow::Result<()>,
) -> ExitCode {
    // Worked out once: the run carries it to every step (a name Compose refuses ends the task
    // before it starts).
    let project = project::project_name(args.project_name.as_deref());
    let run = Run::new(task, project.as_deref().unwrap_or_default(), args.json);
    let started = Instant::now();
    let result = project.and_then(|_| work(sh, &args, &run));
    let mut report = run.edit();
    report.seconds = started.elapsed().as_secs_f64();
    report.result = Outcome::of_task(&result, &report);
    let code = match result {
        Ok(()) if !report.warnings.is_empty() => ExitCode::Warning,
        Ok(()) => ExitCode::Success,
        Err(error) => {
            report.error = Some(format!("{error:#}"));
            if report.failed_step.is_none() {
                report.failed_step = report.last_failed_step();
            }
            plain(Err(error))
        }
    };
    report.exit_code = code as i32;
    drop(report);
    run.finish();
    code
}

fn plain(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::Success,
        Err(error) => {
            eprintln!("error: {}", secrets::scrub(&format!("{error:#}")));
            exit::code_of(&error)
        }
    }
}
