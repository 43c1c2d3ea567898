//! Adversarial tests of `xtask::process` (child processes on duct): each test states the promise
//! it probes; a failing one names the promise that broke. No Docker: plain programs only.
//!
//! Tests that need a process of their own (the signal handler, what `stream` writes on stdout)
//! re-run this test binary with `ADV6_HELPER` set, which makes `zz_helper_process` act.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use xtask::process::{self, Argv};

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adv6-process-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Registers an environment file holding `BOT_TOKEN=<token>` (a process-wide registry).
fn register_token(dir: &Path, token: &str) {
    let env = dir.join("adv.env");
    std::fs::write(&env, format!("BOT_TOKEN={token}\n")).unwrap();
    xtask::secrets::load(&env).unwrap();
}

/// Waits up to `within` for `path` to hold a pid.
fn read_pid(path: &Path, within: Duration) -> Option<i32> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Whether `pid` still runs (a zombie counts as ended).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Whether `pid` ends within `within`.
fn ends_within(pid: i32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !alive(pid)
}

/// Kills a process this test started (by its id).
fn kill(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets: "values registered from the env file never appear in errors".

#[test]
fn run_within_error_scrubs_the_what_it_was_for() {
    let dir = scratch("what");
    let token = "616161:ADVsixWHATsecretVALUE";
    register_token(&dir, token);
    let error = process::run_within(
        Argv::new("false", Vec::<&str>::new()),
        &format!("calling the API with {token}"),
        Duration::from_secs(10),
    )
    .unwrap_err();
    let shown = format!("{error:#} / {error:?}");
    assert!(
        !shown.contains("ADVsixWHATsecretVALUE"),
        "promise broken: a value from the env file appears in an error (run_within's \
         non-zero exit message puts `what` unscrubbed): {shown}"
    );
}

#[test]
fn wait_within_error_scrubs_the_what_it_waited_for() {
    let dir = scratch("wait-what");
    let token = "626262:ADVsixWAITsecretVALUE";
    register_token(&dir, token);
    let started = Argv::new("sleep", ["5"]).start().unwrap();
    let error = started
        .wait_within(&format!("waiting with {token}"), Duration::from_millis(200))
        .unwrap_err();
    let shown = format!("{error:#}");
    assert!(
        !shown.contains("ADVsixWAITsecretVALUE"),
        "promise broken: a value from the env file appears in a timeout error \
         (Started::wait_within puts `what` unscrubbed): {shown}"
    );
}

#[test]
fn a_secret_registered_after_the_command_was_built_is_still_scrubbed() {
    let dir = scratch("late");
    // The command is built first (as a task does before it meets the stack's env file)...
    let command = Argv::new("ls", ["/no/such/dir/636363:ADVsixLATEsecretVALUE"]);
    // ...then the env file is registered, then the command runs and fails.
    register_token(&dir, "636363:ADVsixLATEsecretVALUE");
    let error = process::run(command, "listing").unwrap_err();
    let shown = format!("{error:#}");
    assert!(
        !shown.contains("ADVsixLATEsecretVALUE"),
        "promise broken: a value from the env file appears in an error (the command line is \
         scrubbed when the Argv is built, not when the error is made): {shown}"
    );
}

// ---------------------------------------------------------------------------------------------
// "A program that cannot start gives a clear error".

#[test]
fn output_of_a_program_that_cannot_start_names_the_program() {
    let error = process::output(Argv::new("/no/such/adv6-docker", ["version"])).unwrap_err();
    let shown = error.to_string();
    assert!(
        shown.contains("adv6-docker"),
        "promise broken: a program that cannot start gives a clear error; \
         process::output (used by docker::image_id etc. with `?`) says only: {shown:?}"
    );
}

#[test]
fn a_missing_working_directory_is_not_blamed_on_the_program() {
    let error = process::run(
        Argv::new("true", Vec::<&str>::new()).dir(Path::new("/no/such/adv6-dir")),
        "running in a directory",
    )
    .unwrap_err();
    let shown = format!("{error:#}");
    assert!(
        shown.contains("/no/such/adv6-dir"),
        "promise broken: a program that cannot start gives a clear error; with a missing \
         working directory the error blames `true` (which exists) and never names the \
         directory: {shown:?}"
    );
}

#[test]
fn argv_is_never_a_shell() {
    let tricky = "$HOME; `id` && echo pwned | cat > /tmp/adv6-pwned *";
    let out = process::run(Argv::new("echo", [tricky]), "echoing").unwrap();
    assert_eq!(
        out.stdout,
        format!("{tricky}\n"),
        "argv only, never a shell"
    );
    assert!(!Path::new("/tmp/adv6-pwned").exists());
    // A program name with a space is a file name, not a command line.
    let error = process::run(Argv::new("echo hi", Vec::<&str>::new()), "spaced").unwrap_err();
    assert!(
        format!("{error:#}").starts_with("spaced: cannot run `echo hi`"),
        "{error:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// Output: "MBs on stdout and stderr at once do not deadlock", "non-UTF-8 does not panic".

#[test]
fn megabytes_on_both_streams_at_once_do_not_deadlock() {
    let script = "yes aaaaaaa | head -c 6000000 & yes bbbbbbb | head -c 6000000 >&2 & wait; exit 3";
    let begun = Instant::now();
    let (done, got) = mpsc::channel();
    std::thread::spawn(move || {
        let result = process::run_to_end(
            Argv::new("sh", ["-c", script]),
            "flooding",
            Duration::from_secs(30),
        );
        let _ =
            done.send(result.map(|(status, f)| (status.code(), f.stdout.len(), f.stderr.len())));
    });
    let result = got
        .recv_timeout(Duration::from_secs(40))
        .expect("promise broken: MBs on stdout and stderr at once deadlock");
    let (code, out, err) = result.unwrap();
    assert_eq!((code, out, err), (Some(3), 6_000_000, 6_000_000));
    assert!(begun.elapsed() < Duration::from_secs(30));
    // The failing form shows a tail, not 12 MB.
    let error = process::run_within(
        Argv::new("sh", ["-c", script]),
        "flooding",
        Duration::from_secs(30),
    )
    .unwrap_err();
    assert!(
        format!("{error:#}").len() < 10_000,
        "the error is not a tail"
    );
}

#[test]
fn non_utf8_output_and_arguments_do_not_panic() {
    let script = r"printf 'out \377\376 end\n'; printf 'err \300 end\n' >&2; exit 7";
    let error = process::run(Argv::new("sh", ["-c", script]), "printing bytes").unwrap_err();
    let shown = format!("{error:#}");
    assert!(shown.contains("exited with 7"), "{shown}");
    assert!(shown.contains("err \u{fffd} end"), "{shown}");
    let (_, finished) = process::run_to_end(
        Argv::new(
            "printf",
            [
                OsStr::from_bytes(b"%s\\377"),
                OsStr::from_bytes(b"\xff\xfe"),
            ],
        ),
        "printing",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(finished.stdout, "\u{fffd}\u{fffd}\u{fffd}");
}

// ---------------------------------------------------------------------------------------------
// Timeouts: "every wait bounded by a timeout"; "the whole process group is killed".

#[test]
fn a_timeout_kills_a_background_grandchild() {
    let dir = scratch("grandchild");
    let pidfile = dir.join("pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let error = process::run_within(
        Argv::new("sh", ["-c", &script]),
        "waiting for a family",
        Duration::from_millis(500),
    )
    .unwrap_err();
    assert!(
        format!("{error:#}").starts_with("waiting for a family: `sh -c"),
        "{error:#}"
    );
    let pid = read_pid(&pidfile, Duration::from_secs(2)).expect("the grandchild's pid");
    let gone = ends_within(pid, Duration::from_secs(3));
    if !gone {
        kill(pid);
    }
    assert!(
        gone,
        "promise broken: on timeout the grandchildren are killed too"
    );
}

#[test]
fn a_timeout_is_kept_when_a_grandchild_left_the_group_and_holds_the_output() {
    // A grandchild in a session of its own (a daemonising tool) keeps the captured pipes open;
    // the group kill cannot reach it. The wait must still end near its timeout.
    let dir = scratch("escaped");
    let pidfile = dir.join("pid");
    let script = format!("setsid sleep 30 & echo $! > {}; wait", pidfile.display());
    let begun = Instant::now();
    let error = process::run_within(
        Argv::new("sh", ["-c", &script]),
        "waiting for an escaped family",
        Duration::from_millis(500),
    )
    .unwrap_err();
    let took = begun.elapsed();
    if let Some(pid) = read_pid(&pidfile, Duration::from_secs(1)) {
        kill(pid);
    }
    assert!(
        format!("{error:#}").contains("did not finish within 0.5s"),
        "{error:#}"
    );
    assert!(
        took < Duration::from_secs(5),
        "promise broken: every wait is bounded by its timeout; a 0.5 s timeout returned after \
         {took:.1?} (the 10 s reap wait runs in wait_within's stop() and again in Drop)"
    );
}

#[test]
fn a_huge_timeout_does_not_panic() {
    let result = std::panic::catch_unwind(|| {
        process::run_within(
            Argv::new("true", Vec::<&str>::new()),
            "waiting long",
            Duration::MAX,
        )
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
    });
    assert!(
        matches!(result, Ok(Ok(()))),
        "promise broken: a wait bounded by a (very long) timeout panics instead of waiting \
         (duct's wait_timeout computes Instant::now() + timeout): {:?}",
        result.map_err(|p| p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())))
    );
}

// ---------------------------------------------------------------------------------------------
// `stream`: "passes lines through scrubbed and ends when the program ends".

/// Runs `stream` on `script` in a thread; Some(result) when it ended within `within`.
fn stream_within(script: String, within: Duration) -> Option<Result<(), String>> {
    let (done, got) = mpsc::channel();
    std::thread::spawn(move || {
        let result =
            process::stream(Argv::new("sh", ["-c", &script])).map_err(|e| format!("{e:#}"));
        let _ = done.send(result);
    });
    got.recv_timeout(within).ok()
}

#[test]
fn stream_ends_when_the_program_ends_though_a_grandchild_holds_stdout() {
    let dir = scratch("stream-out");
    let pidfile = dir.join("pid");
    let script = format!(
        "sleep 20 & echo $! > {}; echo streamed-line",
        pidfile.display()
    );
    let ended = stream_within(script, Duration::from_secs(5));
    if let Some(pid) = read_pid(&pidfile, Duration::from_secs(1)) {
        kill(pid);
    }
    assert!(
        matches!(ended, Some(Ok(()))),
        "promise broken: `stream` ends when the program ends; `sh` exited at once but stream \
         was still reading after 5 s (a background grandchild holds stdout): {ended:?}"
    );
}

#[test]
fn stream_ends_when_the_program_ends_though_a_grandchild_holds_stderr() {
    let dir = scratch("stream-err");
    let pidfile = dir.join("pid");
    let script = format!(
        "sleep 20 >/dev/null & echo $! > {}; echo streamed-line",
        pidfile.display()
    );
    let ended = stream_within(script, Duration::from_secs(5));
    if let Some(pid) = read_pid(&pidfile, Duration::from_secs(1)) {
        kill(pid);
    }
    assert!(
        matches!(ended, Some(Ok(()))),
        "promise broken: `stream` ends when the program ends; `sh` exited at once but stream \
         had not returned after 5 s (a background grandchild holds stderr; the stderr \
         thread's join has no bound): {ended:?}"
    );
}

/// Runs this test binary as a helper in `mode`; its child.
fn helper(mode: &str, dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "zz_helper_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ADV6_HELPER", mode)
        .env("ADV6_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn stream_passes_lines_scrubbed_and_survives_non_utf8() {
    let dir = scratch("stream-scrub");
    let child = helper("stream", &dir);
    let (done, got) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let out = got
        .recv_timeout(Duration::from_secs(20))
        .expect("the stream helper did not end")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "stream helper failed: {stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("ADVsixSTREAMsecret") && !stderr.contains("ADVsixSTREAMsecret"),
        "promise broken: streamed lines are scrubbed: {stdout}\n{stderr}"
    );
    assert!(stdout.contains("out token=<BOT_TOKEN>"), "{stdout}");
    assert!(stderr.contains("err <BOT_TOKEN>"), "{stderr}");
    assert!(stdout.contains("bytes \u{fffd} end"), "{stdout}");
    assert!(
        stdout.contains("line 2000 of 2000"),
        "a long stream is passed whole: {stdout}"
    );
}

/// Starts the signal helper (signal handler installed, one child started by `script`, which
/// writes `sh.pid` and `grandchild.pid` in the directory), sends it SIGINT, and returns the
/// helper's exit code and the two pids.
fn interrupt_helper_running(dir: &Path, script: &str) -> (Option<i32>, i32, i32) {
    std::fs::write(dir.join("script"), script).unwrap();
    let mut child = helper("signal", dir);
    let sh = read_pid(&dir.join("sh.pid"), Duration::from_secs(10)).expect("the child's pid");
    let grandchild = read_pid(&dir.join("grandchild.pid"), Duration::from_secs(10))
        .expect("the grandchild's pid");
    std::thread::sleep(Duration::from_millis(200));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let until = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, sh, grandchild)
}

#[test]
fn a_signal_stops_the_tracked_child_and_its_group() {
    let dir = scratch("signal");
    let script = format!(
        "sleep 30 & echo $! > {d}/grandchild.pid; echo $$ > {d}/sh.pid; wait",
        d = dir.display()
    );
    let (code, sh, grandchild) = interrupt_helper_running(&dir, &script);
    let sh_gone = ends_within(sh, Duration::from_secs(3));
    let grandchild_gone = ends_within(grandchild, Duration::from_secs(3));
    for (pid, gone) in [(sh, sh_gone), (grandchild, grandchild_gone)] {
        if !gone {
            kill(pid);
        }
    }
    assert_eq!(code, Some(130), "SIGINT ends the tool with 128 + 2");
    assert!(
        sh_gone && grandchild_gone,
        "promise broken: children are tracked for the signal handler and stopped with their \
         group (child gone: {sh_gone}, grandchild gone: {grandchild_gone})"
    );
}

#[test]
fn a_signal_stops_a_tracked_child_that_ignores_sigterm() {
    let dir = scratch("signal-trap");
    let script = format!(
        "trap '' TERM; sleep 30 & echo $! > {d}/grandchild.pid; echo $$ > {d}/sh.pid; wait",
        d = dir.display()
    );
    let (code, sh, grandchild) = interrupt_helper_running(&dir, &script);
    let sh_gone = ends_within(sh, Duration::from_secs(3));
    let grandchild_gone = ends_within(grandchild, Duration::from_secs(3));
    for (pid, gone) in [(sh, sh_gone), (grandchild, grandchild_gone)] {
        if !gone {
            kill(pid);
        }
    }
    assert_eq!(code, Some(130), "SIGINT ends the tool with 128 + 2");
    assert!(
        sh_gone && grandchild_gone,
        "promise broken: on a signal the programs the tool runs are stopped; a child that \
         ignores SIGTERM outlives the tool (the handler sends SIGTERM once, then exits at once, \
         never SIGKILL): child gone: {sh_gone}, grandchild gone: {grandchild_gone}"
    );
}

/// Not a test of its own: the body of the helper processes above (does nothing otherwise).
#[test]
fn zz_helper_process() {
    let Ok(mode) = std::env::var("ADV6_HELPER") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("ADV6_DIR").unwrap());
    match mode.as_str() {
        "stream" => {
            register_token(&dir, "646464:ADVsixSTREAMsecret");
            let script = r"echo out token=646464:ADVsixSTREAMsecret
echo err 646464:ADVsixSTREAMsecret >&2
printf 'bytes \377 end\n'
i=1; while [ $i -le 2000 ]; do echo line $i of 2000; i=$((i+1)); done";
            process::stream(Argv::new("sh", ["-c", script])).unwrap();
        }
        "signal" => {
            xtask::signals::install();
            let script = std::fs::read_to_string(dir.join("script")).unwrap();
            let _started = Argv::new("sh", ["-c", &script]).start().unwrap();
            std::thread::sleep(Duration::from_secs(30));
        }
        other => panic!("unknown helper mode {other}"),
    }
}
