//! The exit codes scripts can rely on, and the errors that carry them.

use std::fmt;

/// Exit codes, stable (listed in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Done.
    Success = 0,
    /// A step failed; the report names it (and what was rolled back).
    Failed = 1,
    /// Wrong command line, or a question that needs `--yes` in a script.
    Usage = 2,
    /// Refused before changing anything: the database needs a person (its schema matches no
    /// revision, it is newer than this build, a migration file was edited, it is damaged).
    Refused = 3,
    /// The machine is not ready: Docker unreachable, Compose missing, no token, no room.
    NotReady = 4,
    /// Another deploy of the project holds the lock.
    Locked = 5,
    /// Done, but something needs attention: the report's `warnings` say what (e.g. the
    /// pre-deploy backup is still in its container because the backup folder was full).
    Warning = 6,
}

/// An error that ends the task with a given exit code.
#[derive(Debug)]
pub struct Exit {
    /// The code.
    pub code: ExitCode,
    /// The message: what, why, what to do.
    pub message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// An error that ends the task with `code`.
pub fn with_code(code: ExitCode, message: impl Into<String>) -> anyhow::Error {
    let message = message.into();
    Exit { code, message }.into()
}

/// Refused: nothing was changed.
pub fn refused(message: impl Into<String>) -> anyhow::Error {
    with_code(ExitCode::Refused, message)
}

/// The machine is not ready.
pub fn not_ready(message: impl Into<String>) -> anyhow::Error {
    with_code(ExitCode::NotReady, message)
}

/// Another deploy holds the lock.
pub fn locked(message: impl Into<String>) -> anyhow::Error {
    with_code(ExitCode::Locked, message)
}

/// A usage problem.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    with_code(ExitCode::Usage, message)
}

/// The exit code an error stands for.
pub fn code_of(error: &anyhow::Error) -> ExitCode {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<Exit>())
        .map_or(ExitCode::Failed, |exit| exit.code)
}
