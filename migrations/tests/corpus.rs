//! The engine's verdict on databases that real tools made: SQLAlchemy 1.3, 1.4 and 2.0,
//! Alembic, the sqlite3 shell, `.dump` round trips, DB Browser style DDL (tests/corpus, made by
//! its make.sh; the expected verdicts and their reasons are in tests/corpus/expected.json).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use migrations::{Database, State, head, schema, schema_at};
use serde::Deserialize;

/// One database of the corpus and the verdict the engine must give on it.
#[derive(Debug, Deserialize)]
struct Expected {
    /// The file, in tests/corpus.
    file: String,
    /// The tool that made it.
    tool: String,
    /// The state `status` must report.
    state: String,
    /// The revision the schema must match, or none.
    matches: Option<u32>,
    /// A substring of one line of the difference; none: no difference at all.
    difference: Option<String>,
    /// Why this is the right verdict.
    reason: String,
}

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn manifest() -> Vec<Expected> {
    let path = corpus().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A copy of a corpus file in a folder of its own, so that nothing the engine does (a `-shm`
/// file for a WAL database, say) touches the checked-in file.
fn copy_of(file: &str, scratch: &Path) -> PathBuf {
    let copy = scratch.join(file);
    std::fs::copy(corpus().join(file), &copy).unwrap();
    copy
}

#[test]
fn every_database_has_an_expected_verdict_and_every_verdict_a_database() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".db"))
        .collect();
    let listed: Vec<String> = manifest().into_iter().map(|e| e.file).collect();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), listed_set.len(), "a file is listed twice");
    let unlisted: Vec<&String> = on_disk.difference(&listed_set).collect();
    let missing: Vec<&String> = listed_set.difference(&on_disk).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "databases without an expected verdict: {unlisted:?}; verdicts without a database: {missing:?} (tests/corpus/make.sh makes both)"
    );
    assert!(
        on_disk.len() >= 40,
        "the corpus has {} databases",
        on_disk.len()
    );
}

#[test]
fn the_engine_gives_every_database_its_expected_verdict() {
    let scratch = std::env::temp_dir().join(format!("corpus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let mut failures = Vec::new();
    let mut slowest = (std::time::Duration::ZERO, String::new());
    for expected in manifest() {
        let copy = copy_of(&expected.file, &scratch);
        let started = std::time::Instant::now();
        let status =
            Database::open_read_only(&copy).and_then(|db| db.expect("the copy exists").status());
        if started.elapsed() > slowest.0 {
            slowest = (started.elapsed(), expected.file.clone());
        }
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                failures.push(format!("{}: status failed: {e}", expected.file));
                continue;
            }
        };
        let mut wrong = Vec::new();
        if status.state.name() != expected.state {
            wrong.push(format!(
                "state {} expected, found {}",
                expected.state,
                status.state.name()
            ));
        }
        if status.matches != expected.matches {
            wrong.push(format!(
                "matches {:?} expected, found {:?}",
                expected.matches, status.matches
            ));
        }
        match &expected.difference {
            Some(part) if !status.difference.iter().any(|d| d.contains(part.as_str())) => {
                wrong.push(format!("a difference containing {part:?} expected"));
            }
            None if !status.difference.is_empty() => {
                wrong.push("no difference expected".to_owned());
            }
            _ => {}
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{} (made by {}; {}): {}\n    difference: {:#?}",
                expected.file,
                expected.tool,
                expected.reason,
                wrong.join("; "),
                status.difference
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!("slowest open and status: {:?} ({})", slowest.0, slowest.1);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_database_that_matches_a_revision_is_adopted_and_upgraded_to_head() {
    // "Matches N" promises that the migrations after N run on it as on N's own schema.
    let scratch = std::env::temp_dir().join(format!("corpus-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    for expected in manifest().into_iter().filter(|e| e.matches.is_some()) {
        let copy = copy_of(&expected.file, &scratch);
        let mut db = Database::open(&copy).unwrap();
        assert_eq!(db.adopt().ok(), expected.matches, "{}", expected.file);
        db.upgrade(|_| {})
            .unwrap_or_else(|e| panic!("{}: {e}", expected.file));
        let status = db.status().unwrap();
        assert_eq!(
            (status.state, status.version),
            (State::Current, Some(head())),
            "{}: {:#?}",
            expected.file,
            status.difference
        );
        assert!(
            schema::diff(schema_at(head()), &db.schema().unwrap()).is_empty(),
            "{}",
            expected.file
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn checking_a_copy_leaves_the_checked_in_files_as_they_are() {
    // The engine only reads; a WAL database gets its -shm beside the copy, never here.
    for expected in manifest() {
        let original = corpus().join(&expected.file);
        for suffix in ["-wal", "-shm", "-journal"] {
            let companion = PathBuf::from(format!("{}{suffix}", original.display()));
            assert!(
                !companion.exists(),
                "{} must not be checked in or left behind",
                companion.display()
            );
        }
    }
}
