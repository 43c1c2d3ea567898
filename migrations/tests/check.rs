//! `migrations::check`: the real folder passes; an edited released file, a down that does not
//! restore the schema, gaps and orphan down files are caught.

use std::fs;
use std::path::{Path, PathBuf};

use migrations::check::{self, CheckError};

fn sql_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sql")
}

/// A copy of the real sql folder in a fresh temporary folder.
fn copy(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tgbot-check-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(sql_dir()).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

#[test]
fn the_real_migrations_pass_and_are_all_released() {
    let report = check::check_dir(&sql_dir()).unwrap();
    assert_eq!(report.revisions, migrations::head());
    assert!(
        report.unreleased.is_empty(),
        "run `cargo xtask check-migrations --release`: {:?}",
        report.unreleased
    );
}

#[test]
fn the_released_checksums_are_the_engines() {
    let released = check::released(&sql_dir()).unwrap();
    for m in migrations::MIGRATIONS {
        assert_eq!(released.get(m.file), Some(&m.checksum()), "{}", m.file);
    }
}

#[test]
fn an_edited_released_file_is_caught() {
    let dir = copy("edited");
    let file = dir.join("0002_user_activity.up.sql");
    let mut text = fs::read(&file).unwrap();
    text.push(b' ');
    fs::write(&file, text).unwrap();
    let error = check::check_dir(&dir).unwrap_err();
    assert!(
        matches!(error, CheckError::EditedReleased { ref file, .. } if file == "0002_user_activity.up.sql"),
        "{error}"
    );
    assert!(error.to_string().contains("new migration"), "{error}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_down_that_does_not_restore_the_schema_is_caught() {
    let dir = copy("down");
    let head = migrations::head();
    let up = format!("{:04}_add_notes.up.sql", head + 1);
    let down = format!("{:04}_add_notes.down.sql", head + 1);
    fs::write(
        dir.join(&up),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);\nCREATE INDEX notes_body ON notes(body);\n",
    )
    .unwrap();
    fs::write(dir.join(&down), "DROP INDEX notes_body;\n").unwrap();
    let error = check::check_dir(&dir).unwrap_err();
    assert!(
        matches!(error, CheckError::Schema { ref file, revision, .. } if *file == down && revision == head),
        "{error}"
    );
    assert!(error.to_string().contains("notes"), "{error}");
    // Fixed, it passes and is new (not released).
    fs::write(dir.join(&down), "DROP TABLE notes;\n").unwrap();
    let report = check::check_dir(&dir).unwrap();
    assert_eq!(report.unreleased, std::slice::from_ref(&up));
    // Released, it is listed and may no longer change.
    assert_eq!(check::release(&dir).unwrap(), std::slice::from_ref(&up));
    assert!(check::check_dir(&dir).unwrap().unreleased.is_empty());
    fs::write(
        dir.join(&up),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY);\n",
    )
    .unwrap();
    assert!(matches!(
        check::check_dir(&dir).unwrap_err(),
        CheckError::EditedReleased { .. }
    ));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn gaps_and_orphan_down_files_are_caught() {
    let dir = copy("gap");
    let next = migrations::head() + 1;
    let later = format!("{:04}_later.up.sql", next + 1);
    fs::write(dir.join(&later), "CREATE TABLE later (id INTEGER);\n").unwrap();
    let error = check::check_dir(&dir).unwrap_err();
    assert!(
        matches!(error, CheckError::Numbering { expected, .. } if expected == next),
        "{error}"
    );
    fs::remove_file(dir.join(&later)).unwrap();
    fs::write(
        dir.join(format!("{next:04}_orphan.down.sql")),
        "SELECT 1;\n",
    )
    .unwrap();
    let error = check::check_dir(&dir).unwrap_err();
    assert!(
        matches!(error, CheckError::DownWithoutUp { version, .. } if version == next),
        "{error}"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_released_file_is_caught() {
    let dir = copy("missing");
    let last = migrations::MIGRATIONS.last().unwrap().file;
    fs::remove_file(dir.join(last)).unwrap();
    fs::remove_file(dir.join(last.replace(".up.sql", ".down.sql"))).unwrap();
    let error = check::check_dir(&dir).unwrap_err();
    assert!(
        matches!(error, CheckError::MissingReleased { .. }),
        "{error}"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn names_are_lowercase_snake_case() {
    for good in ["add_x", "users2", "a"] {
        assert!(check::valid_name(good), "{good}");
    }
    for bad in ["", "Add", "add-x", "_x", "x_", "a__b", "1x", "ä"] {
        assert!(!check::valid_name(bad), "{bad}");
    }
}
