//! `bot db diff` and `bot db baseline` on databases real tools made (tests/corpus): the diff
//! script to every revision, run on a copy with its rows, leaves a schema that matches that
//! revision; the baseline, run on an empty database, gives back the same schema.

mod common;

use std::path::{Path, PathBuf};

use common::status;
use migrations::{Database, State, head, schema};
use rusqlite::Connection;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn corpus_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".db"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 40,
        "the corpus has {} databases",
        files.len()
    );
    files
}

/// A folder of its own for this test's copies.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("script-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A copy of a corpus file (checked in alone, without a -wal), so that nothing touches
    /// the checked-in file.
    fn copy(&self, file: &str, name: &str) -> PathBuf {
        let copy = self.0.join(name);
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", copy.display()));
        }
        std::fs::copy(corpus().join(file), &copy).unwrap_or_else(|e| panic!("{file}: {e}"));
        copy
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn users(path: &Path) -> Option<i64> {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM users", [], |row| row.get(0))
        .ok()
}

#[test]
fn the_diff_to_every_revision_makes_every_corpus_database_match_it_and_keeps_its_users() {
    let scratch = Scratch::new("diff");
    let mut failures = Vec::new();
    for file in corpus_files() {
        for version in 1..=head() {
            let copy = scratch.copy(&file, "copy.db");
            let users_before = users(&copy);
            let db = Database::open_read_only(&copy).unwrap().unwrap();
            let before = db.status().unwrap();
            let script = db.diff_to(version, true).unwrap();
            drop(db);
            let case = format!("{file} to revision {version}");
            if !script.remaining.is_empty() {
                failures.push(format!("{case}: remaining {:?}", script.remaining));
                continue;
            }
            if let Err(e) = Connection::open(&copy)
                .unwrap()
                .execute_batch(&script.script)
            {
                failures.push(format!("{case}: {e}\n{}", script.script));
                continue;
            }
            let after = status(&copy);
            let expected_state = match before.state {
                State::Empty => State::Unstamped,
                other => other,
            };
            if after.state != expected_state || after.matches != Some(version) {
                failures.push(format!(
                    "{case}: {:?} matching {:?}, expected {expected_state:?} matching {version}; {:?}\n{}",
                    after.state, after.matches, after.difference, script.script
                ));
            }
            // Only a table the revision lacks may lose its rows.
            let users_after = users(&copy);
            if users_before.is_some() && users_after != users_before {
                failures.push(format!(
                    "{case}: {users_before:?} users before, {users_after:?} after"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn without_data_loss_allowed_nothing_is_dropped_and_what_remains_is_said() {
    let scratch = Scratch::new("lossless");
    for (file, remains) in [
        ("sa20_extra_table.db", "unexpected table"),
        ("sa20_extra_column.db", "unexpected column"),
    ] {
        let copy = scratch.copy(file, "copy.db");
        let db = Database::open_read_only(&copy).unwrap().unwrap();
        let script = db.diff_to(1, false).unwrap();
        drop(db);
        assert!(
            script.remaining.iter().any(|line| line.contains(remains)),
            "{file}: {:?}",
            script.remaining
        );
        assert!(script.statements.iter().any(|s| s.commented && !s.safe));
        let tables_before = tables(&copy);
        Connection::open(&copy)
            .unwrap()
            .execute_batch(&script.script)
            .unwrap();
        assert_eq!(tables(&copy), tables_before, "{file}");
        let status = Database::open_read_only(&copy)
            .unwrap()
            .unwrap()
            .status()
            .unwrap();
        assert_eq!(status.matches, None, "{file}");
    }
}

/// Every table's name and columns.
fn tables(path: &Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT m.name || '.' || group_concat(p.name) FROM sqlite_schema m, pragma_table_info(m.name) p WHERE m.type = 'table' GROUP BY m.name ORDER BY m.name",
        )
        .unwrap();
    statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_baseline_run_on_an_empty_database_gives_back_every_corpus_databases_schema() {
    let scratch = Scratch::new("baseline");
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for file in corpus_files() {
        let copy = scratch.copy(&file, "copy.db");
        let db = Database::open_read_only(&copy).unwrap().unwrap();
        let original = db.schema().unwrap();
        let baseline = db.baseline().unwrap();
        drop(db);
        for statement in &baseline.statements {
            let words: Vec<String> = statement
                .split_whitespace()
                .take(4)
                .map(str::to_uppercase)
                .collect();
            seen.extend(
                ["VIEW", "TRIGGER", "INDEX"]
                    .into_iter()
                    .filter(|k| words[1] == *k),
            );
            for feature in [
                "WITHOUT ROWID",
                "STRICT",
                "AUTOINCREMENT",
                "GENERATED",
                " AS (",
            ] {
                if statement.to_uppercase().contains(feature) {
                    seen.insert(feature);
                }
            }
            if statement.contains("schema_history") || statement.contains("alembic_version") {
                failures.push(format!("{file}: a history table in {statement}"));
            }
        }
        let fresh = scratch.0.join("fresh.db");
        let _ = std::fs::remove_file(&fresh);
        if let Err(e) = Connection::open(&fresh)
            .unwrap()
            .execute_batch(&baseline.sql)
        {
            failures.push(format!("{file}: {e}\n{}", baseline.sql));
            continue;
        }
        let rebuilt = Database::open_read_only(&fresh)
            .unwrap()
            .unwrap()
            .schema()
            .unwrap();
        let difference = schema::diff(&original, &rebuilt);
        if !difference.is_empty() || rebuilt != original {
            failures.push(format!("{file}: {difference:?}\n{}", baseline.sql));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    for feature in [
        "VIEW",
        "TRIGGER",
        "INDEX",
        "WITHOUT ROWID",
        "STRICT",
        "AUTOINCREMENT",
        " AS (",
    ] {
        assert!(
            seen.contains(feature),
            "no corpus baseline had {feature}: {seen:?}"
        );
    }
}
