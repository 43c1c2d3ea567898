//! `bot db find-databases` and `bot db import`: find an old app's SQLite database and copy it into
//! ours, never writing it.
//!
//! The deploy tool runs these in a throw-away container that has the old app's mounts. The old
//! database is read, never written: not the file, not its `-journal`, `-wal` or `-shm`. When a
//! writer was killed and left a hot journal or a WAL behind, those files are copied byte for byte
//! into a private staging folder and SQLite recovers the staged copy there (a hot journal can
//! only be rolled back by a read-write connection). The copy is made with the online backup API,
//! checked (`integrity_check`, state, revision), and only then renamed into place.
//!
//! # JSON
//!
//! - `find-databases`: `{"databases":[{"path","bytes","journal","wal"}],"searched":[..],"missing":[..]}`
//!   (`journal`: a non-empty `-journal` is beside it; `wal`: a `-wal` is).
//! - `import`: `{"source","bytes","recovered","users","tables","status","target","check_only"}`:
//!   `bytes` is the copy's size, `recovered` is `"journal"`, `"wal"` or null, `users` the rows of
//!   `users` (null without that table), `tables` the tables without `sqlite_*` and history
//!   tables, `status` the object `bot db status --json` prints for the copy (its `database` is
//!   the target, or SOURCE with `--check-only`), `target` null with `--check-only`.

use std::collections::HashSet;
use std::fs::{DirBuilder, File};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
pub use migrations::Recovery;
pub use migrations::json::{FoundDatabase, Search};
use migrations::{Database, Error, Status, busy_timeout, inspect_copy};
use rusqlite::{Connection, OpenFlags};

use crate::db_cli::Refused;

/// How deep `find-databases` looks into a folder, like `find -maxdepth 6`: the folder's own
/// entries are level 1.
pub const MAX_DEPTH: usize = 6;

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The files SQLite keeps beside a database.
const SIDECARS: [&str; 3] = ["-journal", "-wal", "-shm"];

/// Finds SQLite databases in `paths` (files or folders) by their first 16 bytes, without opening
/// them with SQLite. Folders are walked down to [`MAX_DEPTH`] without following symlinks;
/// unreadable entries and SQLite's own `-journal`, `-wal` and `-shm` files are skipped; a file
/// reached twice is listed once.
pub fn find_databases(paths: &[PathBuf]) -> Search {
    let mut search = Search {
        databases: Vec::new(),
        searched: Vec::new(),
        missing: Vec::new(),
    };
    let mut seen = HashSet::new();
    for path in paths {
        // A path given by name is followed when it is a symlink; links inside folders are not.
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                search.missing.push(path.display().to_string());
                continue;
            }
            Err(_) => {
                search.searched.push(path.display().to_string());
                continue;
            }
        };
        search.searched.push(path.display().to_string());
        let mut files = Vec::new();
        if meta.is_dir() {
            walk(path, 1, &mut files);
        } else if meta.is_file() {
            files.push(path.clone());
        }
        files.sort();
        for file in files {
            if !has_sqlite_header(&file) {
                continue;
            }
            let canonical = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if !seen.insert(canonical) {
                continue;
            }
            search.databases.push(FoundDatabase {
                bytes: std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0),
                journal: non_empty(&beside(&file, "-journal")),
                wal: beside(&file, "-wal").exists(),
                path: file.display().to_string(),
            });
        }
    }
    search
}

/// Collects the regular files under `dir`, whose entries are at `depth`.
fn walk(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        // `file_type` does not follow symlinks: a link is neither a file nor a folder here.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, files);
            }
        } else if kind.is_file() && !is_sidecar(&path) {
            files.push(path);
        }
    }
}

fn is_sidecar(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    SIDECARS.iter().any(|suffix| name.ends_with(suffix))
}

/// Whether the file starts with "SQLite format 3\0" (only those 16 bytes are read).
fn has_sqlite_header(path: &Path) -> bool {
    let mut header = [0u8; 16];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .is_ok()
        && &header == SQLITE_HEADER
}

/// `path` with `suffix` appended to its file name (`x.db` and `-wal` give `x.db-wal`).
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn non_empty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

/// What `import` did, or with `--check-only` would do.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The old database.
    pub source: PathBuf,
    /// The size of the copy.
    pub bytes: u64,
    /// How the source was recovered, if it had to be.
    pub recovered: Option<Recovery>,
    /// Rows in `users`, when there is such a table.
    pub users: Option<i64>,
    /// The copy's tables, without `sqlite_*` and migration history tables.
    pub tables: Vec<String>,
    /// The copy's state.
    pub status: Status,
    /// Where the copy now is; `None` with `--check-only`.
    pub target: Option<PathBuf>,
}

/// What lies at the source and beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SourceFiles {
    /// The header says WAL mode (file format version 2), so even a read-only open creates
    /// `-wal` and `-shm` beside it.
    wal_mode: bool,
    /// A non-empty `-journal`.
    journal: bool,
    /// A `-wal`.
    wal: bool,
    /// A `-shm`.
    shm: bool,
}

/// How to read the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Open it read-only and copy it with the backup API.
    ReadOnly,
    /// Copy it (with its sidecars) into the staging folder, let SQLite recover the staged copy
    /// read-write, and copy that.
    Stage(Option<Recovery>),
}

/// Chooses how to read the source. A real import runs after the old app stopped: any sidecar
/// is a crash leftover and is recovered in a staged copy. `--check-only` may run while the old
/// app still writes: the read-only open is tried first (the backup API is safe against a live
/// writer), except where it would roll back a journal or create a `-shm` beside the source.
fn choose(files: SourceFiles, check_only: bool) -> Way {
    if files.journal {
        Way::Stage(Some(Recovery::Journal))
    } else if files.wal && (!check_only || !files.shm) {
        Way::Stage(Some(Recovery::Wal))
    } else if files.wal_mode && !files.wal {
        Way::Stage(None)
    } else {
        Way::ReadOnly
    }
}

/// Reads what lies at `source`: refuses a folder, an empty file and one that is not SQLite.
fn look_at_source(source: &Path) -> anyhow::Result<SourceFiles> {
    let meta = std::fs::metadata(source).with_context(|| {
        format!(
            "cannot read {}; nothing was changed. Run `bot db find-databases` to find the old database",
            source.display()
        )
    })?;
    if meta.is_dir() {
        bail!(
            "{} is a folder, not a database file; nothing was changed. Run `bot db find-databases {}` to find the database in it",
            source.display(),
            source.display()
        );
    }
    let files = |wal_mode| SourceFiles {
        wal_mode,
        journal: non_empty(&beside(source, "-journal")),
        wal: beside(source, "-wal").exists(),
        shm: beside(source, "-shm").exists(),
    };
    if meta.len() == 0 {
        let files = files(false);
        if !files.journal && !files.wal {
            return Err(no_tables(source));
        }
        return Ok(files);
    }
    let mut header = [0u8; 100];
    let read = File::open(source).and_then(|mut file| file.read_exact(&mut header));
    if read.is_err() || &header[..16] != SQLITE_HEADER {
        return Err(Error::NotADatabase {
            path: source.to_owned(),
        }
        .into());
    }
    Ok(files(header[18] == 2 || header[19] == 2))
}

fn no_tables(source: &Path) -> anyhow::Error {
    Refused(format!(
        "{} has no tables: nothing to import; nothing was changed. Is it the right file? `bot db find-databases` lists the candidates",
        source.display()
    ))
    .into()
}

/// Refuses a target that holds anything: it must be absent, empty, or a database with no tables.
fn check_target(target: &Path) -> anyhow::Result<()> {
    for suffix in ["-journal", "-wal"] {
        let sidecar = beside(target, suffix);
        if non_empty(&sidecar) {
            return Err(Refused(format!(
                "the target {} has {} beside it (a writer's leftovers); nothing was changed. Move the target and its -journal, -wal and -shm files away, or start the bot once so that SQLite recovers them",
                target.display(),
                sidecar.display()
            ))
            .into());
        }
    }
    match std::fs::metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the target {}", target.display()));
        }
        Ok(meta) if meta.is_dir() => bail!(
            "the target {} is a folder; point DATABASE_PATH at a file",
            target.display()
        ),
        Ok(meta) if meta.len() == 0 => return Ok(()),
        Ok(_) => {}
    }
    let db = Database::open_read_only(target)
        .with_context(|| format!("cannot read the target {}", target.display()))?
        .expect("the target exists");
    let tables: Vec<String> = db
        .connection()
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()
        })
        .with_context(|| format!("cannot read the tables of the target {}", target.display()))?;
    if !tables.is_empty() {
        return Err(Refused(format!(
            "the target {} already holds a database (tables: {}); nothing was changed. Import only into an empty volume; to replace that database, back it up (`bot db backup`) and move it away first",
            target.display(),
            tables.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// A private folder removed with everything in it when dropped.
struct Staging(PathBuf);

impl Staging {
    /// Creates `path` (mode 0700), replacing a stale one left by an earlier run.
    fn create(path: PathBuf) -> anyhow::Result<Staging> {
        if std::fs::symlink_metadata(&path).is_ok() {
            std::fs::remove_dir_all(&path).with_context(|| {
                format!(
                    "cannot remove {}, left by an earlier import; remove it by hand",
                    path.display()
                )
            })?;
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create the staging folder {}", path.display()))?;
        Ok(Staging(path))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The folder a path's file is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Copies the database at `source` into `target` (absent, empty, or a database with no
/// tables), or with `check_only` into a temporary file that is removed; checks the copy and
/// reports what it holds. With `owner`, the target and its folder are given to UID:GID.
pub fn import(
    source: &Path,
    target: &Path,
    check_only: bool,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<Imported> {
    if !check_only {
        check_target(target)?;
    }
    let files = look_at_source(source)?;
    let staging = if check_only {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Staging::create(
            std::env::temp_dir().join(format!("bot-import-{}-{nanos}", std::process::id())),
        )?
    } else {
        let folder = folder_of(target);
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create the folder {}", folder.display()))?;
        Staging::create(folder.join(format!(".import-{}", std::process::id())))?
    };
    let copy = staging.0.join("copy.db");
    let recovered = copy_source(source, files, check_only, &staging.0, &copy)?;
    let checking = "cannot check the copy of SOURCE";
    let info = inspect_copy(&copy).map_err(|e| source_failure(e, source, checking))?;
    let (status, tables, users) = {
        let db = Database::open_read_only(&copy)
            .map_err(|e| source_failure(e, source, checking))?
            .expect("the copy exists");
        let status = db
            .status()
            .map_err(|e| source_failure(e, source, checking))?;
        let tables: Vec<String> = db
            .schema()
            .map_err(|e| source_failure(e, source, checking))?
            .tables
            .into_keys()
            .collect();
        let users = if tables.iter().any(|t| t == "users") {
            Some(
                db.connection()
                    .query_row("SELECT count(*) FROM users", [], |row| row.get(0))
                    .with_context(|| {
                        format!("cannot count the users in a copy of {}", source.display())
                    })?,
            )
        } else {
            None
        };
        (status, tables, users)
    };
    if tables.is_empty() {
        return Err(no_tables(source));
    }
    let mut imported = Imported {
        source: source.to_owned(),
        bytes: info.bytes,
        recovered,
        users,
        tables,
        status,
        target: None,
    };
    if check_only {
        return Ok(imported);
    }
    put_in_place(&copy, target)?;
    if let Some((uid, gid)) = owner {
        let given = [target, folder_of(target)]
            .into_iter()
            .try_for_each(|path| {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| {
                    format!(
                        "cannot give {} to {uid}:{gid} (run as root)",
                        path.display()
                    )
                })
            });
        if let Err(error) = given {
            remove_database(target);
            return Err(error.context(format!(
                "the imported copy {} was removed again; nothing was changed",
                target.display()
            )));
        }
    }
    imported.target = Some(target.to_owned());
    Ok(imported)
}

/// Copies the source into `copy` with the backup API, the way [`choose`] says; returns how the
/// source was recovered.
fn copy_source(
    source: &Path,
    files: SourceFiles,
    check_only: bool,
    staging: &Path,
    copy: &Path,
) -> anyhow::Result<Option<Recovery>> {
    match choose(files, check_only) {
        Way::Stage(recovery) => {
            stage_and_copy(source, files, staging, copy)?;
            Ok(recovery)
        }
        Way::ReadOnly => match copy_read_only(source, copy) {
            Ok(()) => Ok(None),
            // A live writer's WAL and -shm: read a staged copy instead.
            Err(_) if check_only && files.wal => {
                for suffix in ["", "-journal", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(beside(copy, suffix));
                }
                stage_and_copy(source, files, staging, copy)?;
                Ok(Some(Recovery::Wal))
            }
            Err(error) => Err(error),
        },
    }
}

fn copy_read_only(source: &Path, copy: &Path) -> anyhow::Result<()> {
    let db = Database::open_read_only(source)
        .map_err(|e| source_failure(e, source, "cannot read SOURCE"))?
        .expect("the source exists");
    db.snapshot_to(copy)
        .map_err(|e| source_failure(e, source, "cannot copy SOURCE"))?;
    Ok(())
}

/// Copies the source and its journal or WAL byte for byte into `staging`, lets SQLite recover
/// that copy (read-write: it rolls back a hot journal, reads the WAL and checkpoints it), then
/// copies the recovered database into `copy` with the backup API.
fn stage_and_copy(
    source: &Path,
    files: SourceFiles,
    staging: &Path,
    copy: &Path,
) -> anyhow::Result<()> {
    let folder = staging.join("source");
    DirBuilder::new()
        .mode(0o700)
        .create(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let staged = folder.join(source.file_name().unwrap_or("source.db".as_ref()));
    let mut suffixes = vec![""];
    if files.journal {
        suffixes.push("-journal");
    }
    if files.wal {
        suffixes.push("-wal");
    }
    // Not the -shm: SQLite rebuilds it from the WAL.
    for suffix in suffixes {
        let (from, to) = (beside(source, suffix), beside(&staged, suffix));
        std::fs::copy(&from, &to).with_context(|| {
            format!(
                "cannot copy {} to {} to recover it there",
                from.display(),
                to.display()
            )
        })?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} writable", to.display()))?;
    }
    let what = match (files.journal, files.wal) {
        (true, _) => "with its hot journal",
        (false, true) => "with its WAL",
        _ => "(the file alone)",
    };
    let recovering = format!(
        "cannot recover a copy of SOURCE {what} (staged in {})",
        staged.display()
    );
    recover(&staged, files.wal).map_err(|e| source_failure(e, source, &recovering))?;
    let db = Database::open_read_only(&staged)
        .map_err(|e| source_failure(e, source, &recovering))?
        .expect("the staged copy exists");
    db.snapshot_to(copy)
        .map_err(|e| source_failure(e, source, "cannot copy the recovered copy of SOURCE"))?;
    Ok(())
}

/// Opens the staged copy read-write so that SQLite recovers it, and folds a WAL into it.
fn recover(staged: &Path, wal: bool) -> Result<(), Error> {
    let err = |e| sqlite_error(staged, e);
    let conn = Connection::open_with_flags(
        staged,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(busy_timeout()).map_err(err)?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| {
        row.get::<_, i64>(0)
    })
    .map_err(err)?;
    if wal {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        })
        .map_err(err)?;
    }
    conn.close().map_err(|(_, e)| err(e))
}

fn sqlite_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::from_sqlite(path, e)
}

/// An error met while reading the source or a copy of it, naming the source: a bad file or a
/// lock is told as the source's; anything else says what was being done (`doing`, in which
/// `SOURCE` stands for the source's path).
fn source_failure(error: Error, source: &Path, doing: &str) -> anyhow::Error {
    let error = about_source(error, source);
    if error.is_bad_file() || matches!(error, Error::Busy { .. }) {
        error.into()
    } else {
        anyhow::Error::new(error).context(doing.replace("SOURCE", &source.display().to_string()))
    }
}

/// Names the source in an error about it found on a copy (a staged or the imported one).
fn about_source(error: Error, source: &Path) -> Error {
    let path = source.to_owned();
    match error {
        Error::NotADatabase { .. } => Error::NotADatabase { path },
        Error::Corrupt { detail, .. } => Error::Corrupt { path, detail },
        Error::IntegrityCheck { detail, .. } => Error::Corrupt {
            path,
            detail: format!("integrity_check of its copy: {detail}"),
        },
        Error::Busy { holder, waited, .. } => Error::Busy {
            path,
            holder,
            waited,
        },
        other => other,
    }
}

/// Renames the checked copy to `target`, after removing what an empty target had beside it.
fn put_in_place(copy: &Path, target: &Path) -> anyhow::Result<()> {
    for suffix in SIDECARS {
        let sidecar = beside(target, suffix);
        match std::fs::remove_file(&sidecar) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot remove {} (beside the empty target); nothing was changed",
                        sidecar.display()
                    )
                });
            }
        }
    }
    std::fs::rename(copy, target).with_context(|| {
        format!(
            "cannot move the checked copy {} to {}; nothing was changed",
            copy.display(),
            target.display()
        )
    })?;
    // The rename is durable once the folder is synced.
    if let Err(error) = File::open(folder_of(target)).and_then(|folder| folder.sync_all()) {
        remove_database(target);
        return Err(error).with_context(|| {
            format!(
                "cannot sync the folder of {}; the imported copy was removed again",
                target.display()
            )
        });
    }
    Ok(())
}

/// Removes a database file and its sidecars.
fn remove_database(path: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let _ = std::fs::remove_file(beside(path, suffix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(wal_mode: bool, journal: bool, wal: bool, shm: bool) -> SourceFiles {
        SourceFiles {
            wal_mode,
            journal,
            wal,
            shm,
        }
    }

    #[test]
    fn a_clean_rollback_database_is_read_in_place() {
        for check_only in [false, true] {
            assert_eq!(
                choose(files(false, false, false, false), check_only),
                Way::ReadOnly
            );
        }
    }

    #[test]
    fn a_hot_journal_is_always_rolled_back_in_a_staged_copy() {
        for check_only in [false, true] {
            assert_eq!(
                choose(files(false, true, false, false), check_only),
                Way::Stage(Some(Recovery::Journal))
            );
        }
    }

    #[test]
    fn a_wal_is_staged_unless_a_live_writer_may_hold_it_during_a_check() {
        assert_eq!(
            choose(files(true, false, true, true), false),
            Way::Stage(Some(Recovery::Wal))
        );
        assert_eq!(
            choose(files(true, false, true, false), true),
            Way::Stage(Some(Recovery::Wal))
        );
        assert_eq!(choose(files(true, false, true, true), true), Way::ReadOnly);
    }

    #[test]
    fn a_cleanly_closed_wal_database_is_staged_so_no_sidecar_appears_beside_it() {
        for check_only in [false, true] {
            assert_eq!(
                choose(files(true, false, false, false), check_only),
                Way::Stage(None)
            );
        }
    }

    #[test]
    fn sidecars_are_told_by_their_suffix() {
        assert!(is_sidecar(Path::new("/app/bot.db-journal")));
        assert!(is_sidecar(Path::new("/app/bot.db-wal")));
        assert!(is_sidecar(Path::new("bot.db-shm")));
        assert!(!is_sidecar(Path::new("/app/bot.db")));
        assert!(!is_sidecar(Path::new("/app/journal.db")));
        assert_eq!(
            beside(Path::new("/app/bot.db"), "-wal"),
            PathBuf::from("/app/bot.db-wal")
        );
    }
}
