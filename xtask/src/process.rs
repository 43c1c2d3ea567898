//! Running programs: argv only (never a shell), output captured, every wait bounded by a
//! timeout that says what it waited for, failures that show the command and what it printed,
//! scrubbed of the environment file's secrets (see [`crate::secrets`]).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use xshell::Cmd;

use crate::secrets;

/// How long a Docker or Compose command may take unless a step says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);

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

/// Runs `cmd` to the end for what it prints, whatever its exit status, in a process group of
/// its own (see [`crate::signals`]): for lookups whose failure is an answer.
pub fn output(cmd: Cmd<'_>) -> std::io::Result<std::process::Output> {
    let mut command: Command = cmd.into();
    crate::signals::own_group(&mut command)
        .stdin(Stdio::null())
        .output()
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

/// Runs `cmd` to the end within [`DEFAULT_TIMEOUT`]; see [`run_within`].
pub fn run(cmd: Cmd<'_>, what: &str) -> anyhow::Result<Finished> {
    run_within(cmd, what, DEFAULT_TIMEOUT)
}

/// Runs `cmd` to the end; fails with the command line and the tail of its output when it exits
/// non-zero, and kills it when it outlives `timeout`. `what` says what the command was for.
/// Every error is scrubbed of the environment file's secrets.
pub fn run_within(cmd: Cmd<'_>, what: &str, timeout: Duration) -> anyhow::Result<Finished> {
    let shown = secrets::scrub(&cmd.to_string());
    let (status, finished) = run_to_end(cmd, what, timeout)?;
    if !status.success() {
        let code = status
            .code()
            .map_or("a signal".to_owned(), |c| c.to_string());
        bail!(
            "{what}: `{shown}` exited with {code}:\n{}",
            tail(&format!("{}{}", finished.stderr, finished.stdout), 25)
        );
    }
    Ok(finished)
}

/// Runs `cmd` to the end within `timeout` (else kills it and fails), whatever its exit status:
/// the status and what it printed, for a caller that passes the command's own verdict on.
pub fn run_to_end(
    cmd: Cmd<'_>,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<(std::process::ExitStatus, Finished)> {
    let shown = secrets::scrub(&cmd.to_string());
    let what = secrets::scrub(what);
    let mut command: Command = cmd.into();
    crate::signals::own_group(&mut command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => bail!("{what}: cannot run `{shown}`: {e}"),
    };
    let _tracked = Tracked::new(child.id());
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what}: `{shown}` did not finish within {:.1}s and was stopped; check that the Docker daemon answers (`docker info`)",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let finished = Finished {
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
    };
    Ok((status, finished))
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
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\n\nc\n", 2), "    b\n    c");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn a_failing_command_names_itself_and_its_output() {
        let sh = xshell::Shell::new().unwrap();
        let error = run(sh.cmd("ls").arg("/no/such/path"), "listing")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("listing: `ls /no/such/path` exited with 2"),
            "{error}"
        );
        assert!(error.contains("No such file"), "{error}");
        assert_eq!(
            run(sh.cmd("echo").arg("hi"), "echo").unwrap().stdout,
            "hi\n"
        );
    }

    #[test]
    fn what_a_failing_command_prints_of_the_environment_file_is_scrubbed() {
        let dir = std::env::temp_dir().join(format!("xtask-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let env = dir.join("echoed.env");
        std::fs::write(
            &env,
            "BOT_TOKEN=515151:PROCESStestSECRETvalue\nDB_PASSWORD=process-test-password\n",
        )
        .unwrap();
        secrets::load(&env).unwrap();
        let sh = xshell::Shell::new().unwrap();
        // Prints the file's lines, then fails on the missing one: a tool echoing the file.
        let error = run(
            sh.cmd("grep")
                .arg("-H")
                .arg(".")
                .arg(&env)
                .arg("/no/such/file"),
            "echoing",
        )
        .unwrap_err()
        .to_string();
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
    fn a_command_that_outlives_its_timeout_is_stopped_and_named() {
        let sh = xshell::Shell::new().unwrap();
        let started = Instant::now();
        let error = run_within(
            sh.cmd("sleep").arg("30"),
            "waiting for nothing",
            Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            error.starts_with("waiting for nothing: `sleep 30` did not finish within 0.3s"),
            "{error}"
        );
    }
}
