//! `cargo xtask new-migration` and `check-migrations`, run as the binary on temporary copies
//! of the sql folder (and check-migrations on the real one).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .unwrap()
}

fn copy(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tgbot-schema-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(root().join("migrations/sql")).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn check_migrations_passes_on_the_real_tree() {
    let out = xtask(&["check-migrations", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["result"], "ok");
}

#[test]
fn new_migration_writes_the_next_number_with_a_header() {
    let dir = copy("new");
    let d = dir.to_str().unwrap();
    let next = highest_revision(&dir) + 1;
    let name = |n: u32| format!("{n:04}_add_notes.up.sql");
    let out = xtask(&["new-migration", "add_notes", "--dry-run", "--dir", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.join(name(next)).exists());
    let out = xtask(&["new-migration", "add_notes", "--json", "--dir", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["revision"], next);
    let up = fs::read_to_string(dir.join(name(next))).unwrap();
    let down = fs::read_to_string(dir.join(format!("{next:04}_add_notes.down.sql"))).unwrap();
    assert!(
        up.contains("never be edited") && down.contains("up, down, up"),
        "{up}\n{down}"
    );
    // The empty pair checks, but changes nothing: it is new, not yet released.
    let out = xtask(&["check-migrations", "--json", "--dir", d]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["report"]["unreleased"][0], name(next).as_str());
    // The same name again, a bad name: refused (3) and usage (2), nothing written.
    assert_eq!(
        xtask(&["new-migration", "add_notes", "--dir", d])
            .status
            .code(),
        Some(3)
    );
    assert_eq!(
        xtask(&["new-migration", "Add-Notes", "--dir", d])
            .status
            .code(),
        Some(2)
    );
    assert!(!dir.join(name(next + 1)).exists());
    fs::remove_dir_all(dir).unwrap();
}

/// The highest revision among the migration files in `dir`.
fn highest_revision(dir: &std::path::Path) -> u32 {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().ok()?;
            name.strip_suffix(".up.sql")?.get(..4)?.parse().ok()
        })
        .max()
        .expect("migration files")
}

#[test]
fn check_migrations_refuses_an_edited_released_file() {
    let dir = copy("edited");
    let file = dir.join("0003_command_log.up.sql");
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, text.replacen(' ', "  ", 1)).unwrap();
    let out = xtask(&["check-migrations", "--dir", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("0003_command_log.up.sql") && stderr.contains("new-migration"),
        "{stderr}"
    );
    fs::remove_dir_all(dir).unwrap();
}
