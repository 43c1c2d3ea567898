//! Running programs, with duct: argv only (never a shell), output captured, every wait bounded
//! by a timeout that says what it waited for, failures that show the command and what it
//! printed, scrubbed of the environment file's secrets (see [`crate::secrets`]). Each program
//! runs in a process group of its own, noted for the signal handler while it runs (see
//! [`crate::signals`]); a program that outlives its time limit is stopped with its group.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Output};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use xshell::Cmd;

use crate::secrets;

/// How long a Docker or Compose command may take unless a step says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

/// How long a program stopped (SIGKILL to its group) may take to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest wait any caller may ask for (a longer one overflows the clock's arithmetic).
const LONGEST_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// The size to plan a copy's or a migration's time for when it cannot be known (a damaged
/// file, a container made before sizes were labelled): about 50 minutes of copy.
pub const UNKNOWN_SIZE: u64 = 100_000_000_000;

/// A time limit for copying `bytes` (`docker cp`, the backup API): three minutes, and a minute
/// more per 2 GB.
pub fn copy_limit(bytes: u64) -> Duration {
    Duration::from_secs(180 + bytes / 33_000_000)
}

/// A time limit for work that reads and rewrites a database of `bytes` (a migration, a
/// restore): ten minutes, and a second more per 2 MB (a 10 GB file gets about 1.5 hours).
pub fn migration_limit(bytes: u64) -> Duration {
    Duration::from_secs(600 + bytes / 2_000_000)
}

/// What a finished command printed, as it printed it: data for the caller to parse (ids, JSON,
/// paths). Text of it that is shown goes through [`tail`] or [`secrets::scrub`] first.
pub struct Finished {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("stdout", &secrets::scrub(&self.stdout))
            .field("stderr", &secrets::scrub(&self.stderr))
            .finish()
    }
}

/// A command line: a program and its arguments (never a shell), in a process group of its own,
/// with the working directory and environment an xshell `Shell` gave it.
pub struct Argv {
    expression: duct::Expression,
    /// The command line, scrubbed whenever it is shown (a secret may be registered later).
    shown: String,
    /// The working directory, when not this process's.
    dir: Option<std::path::PathBuf>,
}

impl Argv {
    /// `program` with `args`, in this process's working directory and environment.
    pub fn new<I>(program: &str, args: I) -> Argv
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let shown = std::iter::once(program.into())
            .chain(args.iter().map(|a| a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ");
        Argv::of(duct::cmd(program, args), &shown)
    }

    fn of(expression: duct::Expression, shown: &str) -> Argv {
        Argv {
            expression: expression.before_spawn(|command| {
                crate::signals::own_group(command);
                Ok(())
            }),
            shown: shown.to_owned(),
            dir: None,
        }
    }

    /// Runs it in `dir`.
    pub fn dir(self, dir: &Path) -> Argv {
        Argv {
            expression: self.expression.dir(dir),
            dir: Some(dir.to_owned()),
            ..self
        }
    }

    /// The command line as it may be shown: scrubbed of the secrets known now.
    pub fn shown(&self) -> String {
        secrets::scrub(&self.shown)
    }

    /// Starts it with standard input from /dev/null and its output captured.
    pub fn start(&self) -> std::io::Result<Started> {
        self.start_with(|e| e.stdin_null().stdout_capture().stderr_capture())
    }

    /// Starts it with the redirections `io` adds (duct's `stdin_file`, `stdout_capture`...).
    /// The expression is dropped once started, so the pipe ends handed to it close here.
    pub fn start_with(
        &self,
        io: impl FnOnce(duct::Expression) -> duct::Expression,
    ) -> std::io::Result<Started> {
        let handle = io(self.expression.clone())
            .unchecked()
            .start()
            .map_err(|e| match &self.dir {
                // The kernel says "not found" for a missing folder as for a missing program.
                Some(dir) if !dir.is_dir() => std::io::Error::new(
                    e.kind(),
                    format!(
                        "the working directory {} of `{}` does not exist",
                        dir.display(),
                        self.shown()
                    ),
                ),
                _ => std::io::Error::new(e.kind(), format!("cannot run `{}`: {e}", self.shown())),
            })?;
        let tracked = handle.pids().into_iter().map(Tracked::new).collect();
        Ok(Started {
            handle,
            shown: self.shown.clone(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            _tracked: tracked,
        })
    }
}

impl From<Cmd<'_>> for Argv {
    /// The program, arguments, working directory and environment variables (the `Shell`'s and
    /// the command's own) of an xshell command.
    fn from(cmd: Cmd<'_>) -> Argv {
        let shown = cmd.to_string();
        let command = std::process::Command::from(cmd);
        let mut expression = duct::cmd(command.get_program(), command.get_args());
        for (key, value) in command.get_envs() {
            expression = match value {
                Some(value) => expression.env(key, value),
                None => expression.env_remove(key),
            };
        }
        let argv = Argv::of(expression, &shown);
        match command.get_current_dir() {
            Some(dir) => argv.dir(dir),
            None => argv,
        }
    }
}

/// A program started by [`Argv::start`], noted for the signal handler until dropped; dropped
/// while it still runs, it is stopped with its process group.
pub struct Started {
    handle: duct::Handle,
    shown: String,
    /// Whether [`Started::stop`] has run: it kills and waits once, not again when dropped.
    stopped: std::sync::atomic::AtomicBool,
    _tracked: Vec<Tracked>,
}

impl Started {
    /// What it printed and its status, once it has ended.
    pub fn try_wait(&self) -> Option<&Output> {
        let ended = self.handle.try_wait().ok().flatten();
        crate::signals::wait_if_stopping();
        ended
    }

    /// Waits at most `up_to` for it to end, and leaves it running past that: for a caller that
    /// watches more than one thing within a deadline of its own.
    pub fn wait_briefly(&self, up_to: Duration) -> Option<&Output> {
        let up_to = up_to.min(LONGEST_WAIT);
        let ended = self.handle.wait_timeout(up_to).ok().flatten();
        crate::signals::wait_if_stopping();
        ended
    }

    /// Waits at most `timeout` for it to end: what it printed and its status. Past that it is
    /// stopped, and the error names `what` was waited for and the command.
    pub fn wait_within(&self, what: &str, timeout: Duration) -> anyhow::Result<&Output> {
        let timeout = timeout.min(LONGEST_WAIT);
        // Scrubbed now, not when the command was built: a secret may be known only since.
        let (what, shown) = (secrets::scrub(what), secrets::scrub(&self.shown));
        let ended = self.handle.wait_timeout(timeout);
        crate::signals::wait_if_stopping();
        match ended {
            Ok(Some(output)) => Ok(output),
            Ok(None) => {
                self.stop();
                bail!(
                    "{what}: `{shown}` did not finish within {:.1}s and was stopped; check that the Docker daemon answers (`docker info`)",
                    timeout.as_secs_f64()
                )
            }
            Err(e) => bail!("{what}: waiting for `{shown}` failed: {e}"),
        }
    }

    /// Stops it and its process group (SIGKILL), and reaps it within [`REAP_TIMEOUT`].
    pub fn stop(&self) {
        if self.stopped.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Ok(None) = self.handle.try_wait() {
            // Its group's id is its pid, which is not reused while the group has a member.
            for pid in self.handle.pids() {
                crate::signals::kill_group(pid);
            }
            let _ = self.handle.kill();
            let _ = self.handle.wait_timeout(REAP_TIMEOUT);
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child noted for the signal handler while it runs (see [`crate::signals`]).
pub struct Tracked(u32);

impl Tracked {
    /// Notes the child `pid` until dropped.
    pub fn new(pid: u32) -> Tracked {
        crate::signals::track(pid);
        Tracked(pid)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        crate::signals::untrack(self.0);
    }
}

/// Runs `command` to the end within [`DEFAULT_TIMEOUT`] for what it prints, whatever its exit
/// status: for lookups whose failure is an answer. An error when it cannot run or outlives
/// the limit (and was stopped).
pub fn output(command: impl Into<Argv>) -> std::io::Result<Output> {
    let started = command.into().start()?;
    started
        .wait_within("looking up", DEFAULT_TIMEOUT)
        .cloned()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{e:#}")))
}

/// Runs `command` to the end within [`DEFAULT_TIMEOUT`]; see [`run_within`].
pub fn run(command: impl Into<Argv>, what: &str) -> anyhow::Result<Finished> {
    run_within(command, what, DEFAULT_TIMEOUT)
}

/// Runs `command` to the end; fails with the command line and the tail of its output when it
/// exits non-zero, and stops it when it outlives `timeout`. `what` says what the command was
/// for. Every error is scrubbed of the environment file's secrets.
pub fn run_within(
    command: impl Into<Argv>,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<Finished> {
    let command = command.into();
    let shown = command.shown.clone();
    let (status, finished) = run_to_end(command, what, timeout)?;
    if !status.success() {
        let code = status.code().map_or("a signal".into(), |c| c.to_string());
        let output = tail(&format!("{}{}", finished.stderr, finished.stdout), 25);
        let message = secrets::scrub(&format!("{what}: `{shown}` exited with {code}:\n{output}"));
        return Err(Exited {
            code: status.code(),
            message,
            stdout: finished.stdout,
        }
        .into());
    }
    Ok(finished)
}

/// A command that exited non-zero: the error of [`run_within`], which says so with the command
/// line and the tail of its output; the caller may read the exit code and what it printed (the
/// JSON of `bot db ... --json`).
pub struct Exited {
    /// The exit code; none when a signal ended it.
    pub code: Option<i32>,
    /// What it printed on standard output.
    pub stdout: String,
    /// The message shown.
    message: String,
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::fmt::Debug for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exited")
            .field("code", &self.code)
            .field("stdout", &secrets::scrub(&self.stdout))
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for Exited {}

/// Runs `command` to the end within `timeout` (else stops it and fails), whatever its exit
/// status: the status and what it printed, for a caller that passes the command's own verdict
/// on.
pub fn run_to_end(
    command: impl Into<Argv>,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<(ExitStatus, Finished)> {
    let what = secrets::scrub(what);
    let started = command.into().start().map_err(|e| anyhow!("{what}: {e}"))?;
    let output = started.wait_within(&what, timeout)?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    Ok((output.status, Finished { stdout, stderr }))
}

/// Runs `command` with what it prints shown line by line as it comes (`logs -f`), scrubbed of
/// the environment file's secrets, until it ends, the user stops it (Ctrl-C stops its group),
/// or nobody reads this tool's output any more (`| head`). Fails when it exits non-zero.
pub fn stream(command: impl Into<Argv>) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let command = command.into();
    let (out_reader, out_writer) = std::io::pipe().context("cannot make a pipe")?;
    let (err_reader, err_writer) = std::io::pipe().context("cannot make a pipe")?;
    let started = command.start_with(|e| {
        e.stdin_null()
            .stdout_file(out_writer)
            .stderr_file(err_writer)
    })?;
    // Read apart from the wait: the program's end, not the pipes', ends the stream (a child it
    // left in the background may hold them open).
    let reader_gone = std::sync::Arc::new(AtomicBool::new(false));
    let gone = reader_gone.clone();
    std::thread::spawn(move || {
        if !forward_lines(out_reader, std::io::stdout().lock()) {
            gone.store(true, Ordering::SeqCst); // the reader went away (`| head`)
        }
    });
    std::thread::spawn(move || forward_lines(err_reader, std::io::stderr()));
    let status = loop {
        if let Some(output) = started.wait_briefly(Duration::from_millis(100)) {
            break output.status;
        }
        if reader_gone.load(Ordering::SeqCst) {
            started.stop();
            return Ok(());
        }
    };
    // What it printed last gets a moment to be shown.
    std::thread::sleep(Duration::from_millis(100));
    if !status.success() && status.code().is_some() {
        bail!("`{}` exited with {status}", command.shown());
    }
    Ok(())
}

/// Copies `reader`'s lines to `out`, scrubbed of the environment file's secrets, until the
/// reader ends (true) or `out` can no longer be written (false).
fn forward_lines(reader: impl std::io::Read, mut out: impl std::io::Write) -> bool {
    use std::io::BufRead;
    std::io::BufReader::new(reader)
        .split(b'\n')
        .map_while(Result::ok)
        .all(|line| writeln!(out, "{}", secrets::scrub(&String::from_utf8_lossy(&line))).is_ok())
}

/// The last `lines` lines of what a command printed, indented, scrubbed of the environment
/// file's secrets: the form in which captured output is shown.
pub fn tail(text: &str, lines: usize) -> String {
    let text = secrets::scrub(text);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// What `command` printed; it must succeed.
    fn printed(command: impl Into<Argv>) -> String {
        run(command, "printing").unwrap().stdout
    }

    /// The error of `command`, run for `what`; it must fail.
    fn failure(command: impl Into<Argv>, what: &str) -> String {
        run(command, what).unwrap_err().to_string()
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\n\nc\n", 2), "    b\n    c");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn a_failing_command_names_itself_and_its_output() {
        let sh = xshell::Shell::new().unwrap();
        let error = failure(sh.cmd("ls").arg("/no/such/path"), "listing");
        assert!(
            error.starts_with("listing: `ls /no/such/path` exited with 2"),
            "{error}"
        );
        assert!(error.contains("No such file"), "{error}");
        assert_eq!(printed(sh.cmd("echo").arg("hi")), "hi\n");
    }

    #[test]
    fn what_a_failing_command_prints_of_the_environment_file_is_scrubbed() {
        let dir = crate::testing::temp_dir("process");
        let env = dir.join("echoed.env");
        let text = "BOT_TOKEN=515151:PROCESStestSECRETvalue\nDB_PASSWORD=process-test-password\n";
        std::fs::write(&env, text).unwrap();
        secrets::load(&env).unwrap();
        let sh = xshell::Shell::new().unwrap();
        // Prints the file's lines, then fails on the missing one: a tool echoing the file.
        let error = failure(xshell::cmd!(sh, "grep -H . {env} /no/such/file"), "echoing");
        assert!(error.contains("BOT_TOKEN=<BOT_TOKEN>"), "{error}");
        assert!(error.contains("DB_PASSWORD=<DB_PASSWORD>"), "{error}");
        assert!(
            !error.contains("PROCESStestSECRETvalue") && !error.contains("process-test-password"),
            "{error}"
        );
        let shown = tail("token 515151%3APROCESStestSECRETvalue\n", 5);
        assert_eq!(shown, "    token <BOT_TOKEN>");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_command_runs_where_and_with_what_its_shell_set() {
        let sh = xshell::Shell::new().unwrap();
        sh.change_dir("/tmp");
        sh.set_var("XTASK_PROCESS_TEST", "from the shell");
        assert_eq!(printed(sh.cmd("pwd")), "/tmp\n");
        let env = printed(sh.cmd("env").env("XTASK_OWN", "its own"));
        assert!(env.contains("XTASK_PROCESS_TEST=from the shell\n"), "{env}");
        assert!(env.contains("XTASK_OWN=its own\n"), "{env}");
        let removed = printed(sh.cmd("env").env_remove("XTASK_PROCESS_TEST"));
        assert!(!removed.contains("XTASK_PROCESS_TEST"), "{removed}");
    }

    /// A command that outlives its timeout is stopped and named. The second takes its process
    /// group along: `timeout` runs `sleep` as its child, which holds the output pipes open, so
    /// stopping only `timeout` would leave the wait hanging on them for 30 s.
    #[test]
    fn a_command_stopped_at_its_timeout_is_named_and_takes_its_process_group_along() {
        let sh = xshell::Shell::new().unwrap();
        let cases = [
            (
                Argv::from(sh.cmd("sleep").arg("30")),
                "waiting for nothing: `sleep 30` did not finish within 0.3s",
            ),
            (
                Argv::new("timeout", ["60", "sleep", "30"]),
                "waiting for a family: `timeout 60 sleep 30` did not finish within 0.3s",
            ),
        ];
        for (command, expected) in cases {
            let what = expected.split(':').next().unwrap();
            let started = Instant::now();
            let error = run_within(command, what, Duration::from_millis(300))
                .unwrap_err()
                .to_string();
            assert!(started.elapsed() < Duration::from_secs(10), "{error}");
            assert!(error.starts_with(expected), "{error}");
        }
    }

    #[test]
    fn a_streamed_command_passes_on_its_verdict() {
        stream(Argv::new("echo", ["streamed"])).unwrap();
        let error = stream(Argv::new("ls", ["/no/such/path"])).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("`ls /no/such/path` exited with"),
            "{error}"
        );
    }

    #[test]
    fn a_program_that_cannot_run_says_so() {
        let error = failure(Argv::new("/no/such/program", ["x"]), "running nothing");
        assert!(
            error.starts_with("running nothing: cannot run `/no/such/program x`"),
            "{error}"
        );
        assert!(output(Argv::new("/no/such/program", ["x"])).is_err());
    }
}
