//! Ctrl-C, SIGTERM and SIGHUP (a closed SSH session). Before a task changes anything, a signal
//! ends it: the programs it runs are stopped, its history line says where (see
//! [`crate::journal`]) and it exits with 128 + the signal's number. During the critical part of
//! a deploy (from the first change until the bot serves again, rollback included) stopping would
//! leave the bot down, so the first signal is held and said on screen, and the deploy ends
//! normally; a second one asks for a rollback, which the deploy starts at its next step.
//!
//! The programs this tool runs are put in process groups of their own ([`own_group`]), so that a
//! Ctrl-C at the terminal reaches this process alone and never kills a `docker` command halfway
//! through the critical part.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// Whether the critical part runs.
static CRITICAL: AtomicBool = AtomicBool::new(false);
/// Whether a rollback runs (it is never interrupted).
static ROLLING_BACK: AtomicBool = AtomicBool::new(false);
/// Signals received during the critical part.
static HELD: AtomicUsize = AtomicUsize::new(0);
/// What runs that no signal interrupts, said when one is held.
static UNBREAKABLE: Mutex<&str> = Mutex::new("");
/// The signal held, by name.
static HELD_NAME: Mutex<&str> = Mutex::new("");
/// Process groups of the programs running now.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The value behind `mutex`, even when a thread panicked holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the thread that handles the signals. Called once, at the start of `main`.
pub fn install() {
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        eprintln!("warning: signals cannot be handled; Ctrl-C will stop this tool at once");
        return;
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            on_signal(signal);
        }
    });
}

fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT (Ctrl-C)",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

fn on_signal(signal: i32) {
    let name = name(signal);
    if CRITICAL.load(Ordering::SeqCst) {
        let count = HELD.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&HELD_NAME) = name;
        if ROLLING_BACK.load(Ordering::SeqCst) {
            // Copied out: the lock is not held while stderr is written.
            let what = *lock(&UNBREAKABLE);
            eprintln!("\n{name}: held; {what}");
        } else if count == 1 {
            eprintln!(
                "\n{name}: held. The bot is being replaced, and stopping now would leave it down: this deploy ends once the bot serves again. Press Ctrl-C again to roll back instead."
            );
        } else {
            eprintln!("\n{name} again: rolling back at the next step");
        }
        return;
    }
    STOPPING.store(true, Ordering::SeqCst);
    let step = crate::journal::interrupted(name);
    let groups = lock(&CHILDREN).clone();
    for group in &groups {
        // The group's leader is the child: its pid is the group's id.
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
        unsafe {
            libc::kill(-(*group as i32), SIGTERM);
        }
    }
    // Nothing was changed yet, so nothing of theirs needs a grace period; and a program that
    // ignores SIGTERM is not left behind. No waiting: a wait would let the task see its child
    // end and report a failure of its own before this exit.
    groups.iter().copied().for_each(kill_group);
    let during = step.map_or_else(String::new, |s| format!(" during step \"{s}\""));
    eprintln!("\nstopped by {name}{during}; nothing was changed");
    std::process::exit(128 + signal);
}

/// Set once a signal stops the task: the handler is about to exit.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// When a signal is stopping the task, never returns: the handler exits the process, and the
/// task must not see its programs end by that signal and report a failure of its own.
pub fn wait_if_stopping() {
    while STOPPING.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// Runs `command` in a process group of its own (see the module's documentation).
pub fn own_group(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    command.process_group(0)
}

/// Stops at once (SIGKILL) the process group of a child started with [`own_group`] and not
/// reaped yet (so that its pid is still the group's id).
pub fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

/// Notes a running child (its own group), so that a signal before the critical part stops it.
pub fn track(pid: u32) {
    lock(&CHILDREN).push(pid);
}

/// Forgets a child that ended.
pub fn untrack(pid: u32) {
    lock(&CHILDREN).retain(|p| *p != pid);
}

/// The critical part of a deploy, while it lives: signals are held.
pub struct Critical(());

impl Critical {
    /// Enters the critical part.
    pub fn enter() -> Critical {
        CRITICAL.store(true, Ordering::SeqCst);
        Critical(())
    }
}

impl Drop for Critical {
    fn drop(&mut self) {
        CRITICAL.store(false, Ordering::SeqCst);
        ROLLING_BACK.store(false, Ordering::SeqCst);
        if HELD.load(Ordering::SeqCst) > 0 {
            let name = *lock(&HELD_NAME);
            eprintln!("the {name} held during the deploy is honoured now: the task ends here");
        }
    }
}

/// A rollback starts: from now on no signal interrupts it.
pub fn rolling_back() {
    hold_all("a rollback is running and ends once the previous bot serves again");
}

/// From now on every signal is held until the critical part ends (a task with no way back
/// halfway: `rollback`, `restore`); `what` says on screen what runs.
pub fn hold_all(what: &'static str) {
    *lock(&UNBREAKABLE) = what;
    ROLLING_BACK.store(true, Ordering::SeqCst);
}

/// Fails when a second signal asked for a rollback (and no rollback runs yet); called by the
/// deploy between its steps and while it waits.
pub fn checkpoint() -> anyhow::Result<()> {
    if HELD.load(Ordering::SeqCst) >= 2 && !ROLLING_BACK.load(Ordering::SeqCst) {
        anyhow::bail!(
            "stopped by a second {}: rolling back, as asked",
            lock(&HELD_NAME)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_the_critical_part_one_signal_is_held_and_a_second_asks_for_a_rollback() {
        let critical = Critical::enter();
        on_signal(SIGINT);
        assert_eq!(HELD.load(Ordering::SeqCst), 1);
        checkpoint().expect("one signal is only held");
        on_signal(SIGTERM);
        let error = checkpoint().unwrap_err();
        assert!(error.to_string().contains("rolling back"), "{error}");
        rolling_back();
        checkpoint().expect("a running rollback is never interrupted");
        drop(critical);
        HELD.store(0, Ordering::SeqCst);
    }
}
