//! The deploy tool as a library: `cargo xtask`'s tasks ([`cli`]), and the types its tests and
//! benchmarks share with it (the stack, images, containers, the history).

pub mod backups;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod compose;
pub mod database;
pub mod deploy;
pub mod docker;
pub mod exit;
pub mod history;
pub mod host;
pub mod images;
pub mod journal;
pub mod lock;
pub mod old_app;
pub mod output;
pub mod process;
pub mod project;
pub mod report;
pub mod secrets;
pub mod signals;
pub mod tasks;

/// What the unit tests share.
#[cfg(test)]
mod testing {
    /// An empty folder for the test named `label`, `xtask-<label>-<pid>` in the temporary one.
    pub fn temp_dir(label: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
