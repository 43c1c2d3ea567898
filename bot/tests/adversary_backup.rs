//! Adversarial tests of `bot db upgrade --backup-to` (promise P1: "the backup is therefore
//! always exactly the state the migration started from"; a backup that is not fit holds the
//! migration back with the database unchanged).

mod common;

use common::{
    Dir, assert_stderr_has, bot, count_users, limit_file_size, show, sql, upgrade_backing_up_to,
    upgrade_overtaken_at,
};

use std::path::Path;

use rusqlite::Connection;

fn revision(db: &Path) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row("SELECT max(version) FROM schema_history", [], |row| {
            row.get(0)
        })
        .unwrap()
}

/// Broke P1 (fixed: such a destination is refused). `--backup-to` naming the live database's own `-wal` file (a typo, a glob, a
/// script that backs up "bot.db*"): the copy is written into the WAL of the very database being
/// migrated, passes the commit gate's quick check, and the migration COMMITs — into the same
/// `-wal`, overwriting the "backup". The command then exits 4 ("the migration succeeded, but
/// the backup taken before it failed its check") with the database migrated and no backup at
/// all. Promised: a backup unfit to roll back to holds the migration back (exit 1, database
/// unchanged), so that a migration never goes without the exact pre-migration copy. (Naming
/// the live file itself, its `-shm`, or its `.migrating` file is held back correctly.)
#[test]
fn adversary_backup_to_the_live_wal_lets_the_migration_commit_without_a_backup() {
    let (_dir, db) = Dir::behind("adv-backup-to-wal", true);
    let before = revision(&db);
    let wal = format!("{}-wal", db.display());
    let output = bot(&db, &["db", "upgrade", "--backup-to", &wal])
        .output()
        .unwrap();
    let after = revision(&db);
    // Refused before anything is copied or migrated (exit 3, as every refusal), naming why.
    assert_eq!(
        (output.status.code(), after),
        (Some(3), before),
        "a backup that cannot be the pre-migration state must hold the migration back, \
         database unchanged; got: {}",
        show(&output)
    );
    assert_stderr_has(&output, "is the -wal file of the database");
}

/// Broke P1 (fixed: the copy first is taken by a pin, asked at the first commit whether anything
/// committed since) ("A rollback-journal database is copied first, as before. The backup is
/// therefore always exactly the state the migration started from"; "any commit by another
/// process between the [backup] and the migration's write lock (even one that keeps the
/// revision) holds the migration back"). In rollback-journal mode the copy is taken by
/// `snapshot_to` under a read transaction of its own that ends before the migration asks for
/// the write lock, and the commit gate only compares revisions (there is no pin to ask
/// `changed_since`). Another process that holds the write lock while the copy is taken (a
/// reader is allowed beside a RESERVED lock), then inserts a user and commits, keeps the
/// revision: the migration then commits, exit 0, and the backup lacks that user. A rollback
/// restoring it loses the row. Same reproduction as db_cli.rs's WAL test
/// `in_wal_mode_a_commit_between_the_backup_and_the_lock_stops_the_migration`, without
/// `PRAGMA journal_mode = WAL`.
#[test]
fn adversary_in_journal_mode_a_commit_between_the_backup_and_the_lock_is_not_noticed() {
    let (dir, db) = Dir::behind("adv-backup-journal-overtaken", false);
    let backup = dir.path("pre-deploy.db");
    let ended = upgrade_overtaken_at(&db, &backup, "backed up to");
    let (live, copied) = (count_users(&db), count_users(&backup));
    assert!(
        ended.status.code() == Some(1) || live == copied,
        "the migration committed ({}) though its backup has {copied} users and the \
         database it migrated had {live}: a rollback would lose a row.\nstdout: {}\nstderr: {}",
        ended.status,
        ended.stdout,
        ended.stderr
    );
}

/// Broke P1 (fixed: a final symlink is followed, and what failed is removed at its target)
/// ("a copy that cannot be written (disk full ...) stops the migration with the
/// database unchanged and leaves no half-written file"), mildly. `--backup-to` is a symlink to
/// where backups live (e.g. `pre-deploy.db -> /mnt/backups/x.db`), not yet there. The copy
/// fails on a full disk (here RLIMIT_FSIZE, as db_cli.rs's `a_failed_backup_leaves_no_partial_copy`);
/// the migration is held back correctly, but the clean-up removes the *symlink* (the operator's
/// own file) and leaves the file the copy created at the link's target: a 0-byte "backup" where
/// none was before.
#[test]
fn adversary_a_failed_copy_through_a_symlink_leaves_a_file_at_its_target() {
    let (dir, db) = Dir::behind("adv-backup-symlink", true);
    sql(
        &db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
         INSERT INTO users (telegram_id, first_name) SELECT i + 1000, 'user' || i FROM n;",
    );
    let real = dir.0.join("real");
    std::fs::create_dir_all(&real).unwrap();
    let target = real.join("target.db");
    let link = dir.0.join("pre-deploy.db");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let before = revision(&db);
    let mut command = upgrade_backing_up_to(&db, &link);
    limit_file_size(&mut command);
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert_eq!(revision(&db), before, "held back");
    let left: Vec<String> = std::fs::read_dir(&real)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.is_empty() && link.symlink_metadata().is_ok(),
        "a failed copy left {left:?} at the link's target (sizes: {:?}) and the link itself is {}",
        std::fs::metadata(&target).map(|m| m.len()).ok(),
        if link.symlink_metadata().is_ok() {
            "kept"
        } else {
            "removed"
        }
    );
}
