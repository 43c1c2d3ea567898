//! `status` reads the history and the schema from one snapshot: a bot waiting for its schema
//! polls it while a deploy's migration commits step after step, and a read torn between two
//! commits made a database half way between two revisions look modified (the bot then gave up
//! waiting and exited).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::TempDir;
use migrations::{Database, State};

#[test]
fn status_polled_during_migrations_sees_only_whole_revisions() {
    let dir = TempDir::new("status-snapshot");
    let path = dir.file("bot.db");
    let mut db = Database::open(&path).unwrap();
    db.connection()
        .execute_batch("PRAGMA journal_mode = WAL")
        .unwrap();
    db.upgrade_to(1, |_| {}).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path) = (Arc::clone(&stop), path.clone());
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) {
                let db = Database::open_read_only(&path).unwrap().unwrap();
                seen.insert(format!("{:?}", db.status().unwrap().state));
                reads += 1;
            }
            (seen, reads)
        })
    };
    for _ in 0..30 {
        db.upgrade(|_| {}).unwrap();
        db.downgrade(1, |_| {}).unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (seen, reads) = reader.join().unwrap();
    assert!(reads > 100, "the reader polled {reads} times only");
    let whole: BTreeSet<String> = [State::Behind, State::Current]
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    assert!(
        seen.is_subset(&whole),
        "states seen while migrating: {seen:?} ({reads} reads)"
    );
    std::fs::remove_dir_all(&dir.0).unwrap();
}
