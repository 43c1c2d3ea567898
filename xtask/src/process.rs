//! Running programs: argv only (never a shell), output captured, failures that show the command
//! and what it printed.

use anyhow::bail;
use xshell::Cmd;

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `cmd` to the end; fails with the command line and the tail of its output when it exits
/// non-zero. `what` says what the command was for.
pub fn run(cmd: Cmd<'_>, what: &str) -> anyhow::Result<Finished> {
    let shown = cmd.to_string();
    let output = match cmd.quiet().ignore_status().output() {
        Ok(output) => output,
        Err(e) => bail!("{what}: cannot run `{shown}`: {e}"),
    };
    let finished = Finished {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    if !output.status.success() {
        let code = output
            .status
            .code()
            .map_or("a signal".to_owned(), |c| c.to_string());
        bail!(
            "{what}: `{shown}` exited with {code}:\n{}",
            tail(&format!("{}{}", finished.stderr, finished.stdout), 25)
        );
    }
    Ok(finished)
}

/// The last `lines` lines of `text`, indented.
pub fn tail(text: &str, lines: usize) -> String {
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
}
