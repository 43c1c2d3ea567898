//! Checks a folder of migration files before they are released: names and numbering, released
//! files unchanged (their SHA-256 is listed in `released.sha256`), and every revision applied on
//! a fresh database with its down file round-tripped to the same schema.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::schema::{self, Schema};

/// The file, in the sql folder, that lists the checksum of every released `.up.sql`.
pub const RELEASED_FILE: &str = "released.sha256";

/// Why a folder of migrations fails the check. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The folder or a file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file name that is not `NNNN_<name>.up.sql` / `.down.sql`.
    #[error(
        "{file}: expected NNNN_<name>.up.sql or NNNN_<name>.down.sql (name in lowercase snake case); rename or remove it"
    )]
    BadName {
        /// The file name.
        file: String,
    },
    /// Revisions must be 1, 2, 3, ... without gaps or repeats.
    #[error(
        "{file}: expected revision {expected} here; revisions are numbered 1, 2, 3, ... without gaps or repeats: renumber the new file"
    )]
    Numbering {
        /// The file name.
        file: String,
        /// The revision expected.
        expected: u32,
    },
    /// A down file with no up file of the same revision and name.
    #[error(
        "{file}: a down file needs its up file ({version:04}_{name}.up.sql); add it or remove the down file"
    )]
    DownWithoutUp {
        /// The file name.
        file: String,
        /// Its revision.
        version: u32,
        /// Its name.
        name: String,
    },
    /// `released.sha256` has a line it cannot read.
    #[error("{RELEASED_FILE} line {line}: expected `<sha256>  <file>`; restore it from git")]
    BadReleasedLine {
        /// The line number (from 1).
        line: usize,
    },
    /// A released file was edited.
    #[error(
        "{file} was released and has been edited (sha256 {actual}, released as {released}): databases already at that revision will never run the change. Restore the file (`git checkout -- migrations/sql/{file}`) and write the change as a new migration (`cargo xtask new-migration NAME`)"
    )]
    EditedReleased {
        /// The file name.
        file: String,
        /// The released checksum.
        released: String,
        /// The checksum now.
        actual: String,
    },
    /// A released file is gone.
    #[error(
        "{file} was released but is missing: restore it (`git checkout -- migrations/sql/{file}`); released migrations are never removed, write a new migration to undo one"
    )]
    MissingReleased {
        /// The file name.
        file: String,
    },
    /// A migration does not apply on the revision before it.
    #[error("{file} does not apply on a fresh database at revision {from}: {source}; fix the SQL")]
    Apply {
        /// The file name.
        file: String,
        /// The revision it was applied to.
        from: u32,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A step leaves a schema other than expected.
    #[error(
        "{what} gives a schema other than revision {revision}'s:\n{differences}\nfix {file} so that up, down and up again give the same schema"
    )]
    Schema {
        /// What was run (e.g. `0003_x.down.sql after 0003_x.up.sql`).
        what: String,
        /// The revision whose schema was expected.
        revision: u32,
        /// The file to fix.
        file: String,
        /// The differences, one a line.
        differences: String,
    },
    /// The schema could not be read.
    #[error("reading the schema after {file}: {source}")]
    Read {
        /// The file last applied.
        file: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
}

/// One revision as found in a folder.
#[derive(Debug, Clone)]
pub struct SqlMigration {
    /// The revision (1, 2, ...).
    pub version: u32,
    /// The name part.
    pub name: String,
    /// The `.up.sql` file name.
    pub file: String,
    /// Its text.
    pub up: String,
    /// The `.down.sql` file name and text, if any.
    pub down: Option<(String, String)>,
}

impl SqlMigration {
    /// SHA-256 of the up text, hex: the same value [`crate::Migration::checksum`] gives.
    pub fn checksum(&self) -> String {
        sha256_hex(&self.up)
    }
}

/// What a passing check found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    /// The revisions checked.
    pub revisions: u32,
    /// How many are listed as released.
    pub released: u32,
    /// The up files not yet released (they may still be edited).
    pub unreleased: Vec<String>,
    /// The revisions with no down file (not round-tripped).
    pub without_down: Vec<String>,
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckError + '_ {
    move |source| CheckError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether `name` is lowercase snake case: `[a-z][a-z0-9_]*`, no double or trailing `_`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.ends_with('_')
        && !name.contains("__")
}

/// Reads the migrations of `dir`, in order: names, numbering without gaps, down files with
/// their up file. Other files than `*.sql` and [`RELEASED_FILE`] are ignored only if hidden.
pub fn load_dir(dir: &Path) -> Result<Vec<SqlMigration>, CheckError> {
    let mut ups = BTreeMap::new();
    let mut downs = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort();
    for path in entries {
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default()
            .to_owned();
        if file == RELEASED_FILE || file.starts_with('.') {
            continue;
        }
        let (stem, is_up) = if let Some(stem) = file.strip_suffix(".up.sql") {
            (stem, true)
        } else if let Some(stem) = file.strip_suffix(".down.sql") {
            (stem, false)
        } else {
            return Err(CheckError::BadName { file });
        };
        let Some((number, name)) = stem.split_once('_') else {
            return Err(CheckError::BadName { file });
        };
        let version = match number.parse::<u32>() {
            Ok(v) if number.len() == 4 && valid_name(name) => v,
            _ => return Err(CheckError::BadName { file }),
        };
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        if is_up {
            if ups.contains_key(&version) {
                return Err(CheckError::Numbering {
                    file,
                    expected: ups.len() as u32 + 1,
                });
            }
            ups.insert(
                version,
                SqlMigration {
                    version,
                    name: name.to_owned(),
                    file,
                    up: text,
                    down: None,
                },
            );
        } else {
            downs.push((version, name.to_owned(), file, text));
        }
    }
    for (index, m) in ups.values().enumerate() {
        if m.version as usize != index + 1 {
            return Err(CheckError::Numbering {
                file: m.file.clone(),
                expected: index as u32 + 1,
            });
        }
    }
    for (version, name, file, text) in downs {
        match ups.get_mut(&version) {
            Some(up) if up.name == name => up.down = Some((file, text)),
            _ => {
                return Err(CheckError::DownWithoutUp {
                    file,
                    version,
                    name,
                });
            }
        }
    }
    Ok(ups.into_values().collect())
}

/// The released checksums of `dir`: file name to SHA-256 (empty when the list does not exist).
pub fn released(dir: &Path) -> Result<BTreeMap<String, String>, CheckError> {
    let path = dir.join(RELEASED_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io(&path)(e)),
    };
    let mut out = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((sum, file)) = line.split_once(char::is_whitespace) else {
            return Err(CheckError::BadReleasedLine { line: index + 1 });
        };
        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CheckError::BadReleasedLine { line: index + 1 });
        }
        out.insert(file.trim().to_owned(), sum.to_ascii_lowercase());
    }
    Ok(out)
}

/// Appends every up file of `dir` not yet in [`RELEASED_FILE`] to it, after checking the
/// folder; returns the files added.
pub fn release(dir: &Path) -> Result<Vec<String>, CheckError> {
    let report = check_dir(dir)?;
    if report.unreleased.is_empty() {
        return Ok(Vec::new());
    }
    let path = dir.join(RELEASED_FILE);
    let mut text = fs::read_to_string(&path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for m in load_dir(dir)? {
        if report.unreleased.contains(&m.file) {
            text.push_str(&format!("{}  {}\n", m.checksum(), m.file));
        }
    }
    fs::write(&path, text).map_err(io(&path))?;
    Ok(report.unreleased)
}

/// Checks the migrations of `dir`; see the module's documentation.
pub fn check_dir(dir: &Path) -> Result<CheckReport, CheckError> {
    let migrations = load_dir(dir)?;
    let released = released(dir)?;
    check(&migrations, &released)
}

/// Checks `migrations` (in order, as [`load_dir`] gives them) against the `released`
/// checksums, then applies them on a fresh in-memory database: each up, its down (compared
/// with the previous revision's schema), and its up again (compared with its own).
pub fn check(
    migrations: &[SqlMigration],
    released: &BTreeMap<String, String>,
) -> Result<CheckReport, CheckError> {
    let mut report = CheckReport {
        revisions: migrations.len() as u32,
        ..CheckReport::default()
    };
    for (file, sum) in released {
        match migrations.iter().find(|m| &m.file == file) {
            None => return Err(CheckError::MissingReleased { file: file.clone() }),
            Some(m) if &m.checksum() != sum => {
                return Err(CheckError::EditedReleased {
                    file: file.clone(),
                    released: sum.clone(),
                    actual: m.checksum(),
                });
            }
            Some(_) => report.released += 1,
        }
    }
    let conn = Connection::open_in_memory().map_err(|source| CheckError::Apply {
        file: "(a fresh database)".into(),
        from: 0,
        source,
    })?;
    let read = |file: &str| {
        schema::read(&conn, &[]).map_err(|source| CheckError::Read {
            file: file.to_owned(),
            source,
        })
    };
    let apply = |sql: &str, file: &str, from: u32| {
        conn.execute_batch(sql).map_err(|source| CheckError::Apply {
            file: file.to_owned(),
            from,
            source,
        })
    };
    let compare = |expected: &Schema, actual: &Schema, revision: u32, what: String, file: &str| {
        if expected == actual {
            return Ok(());
        }
        let differences = schema::diff(expected, actual)
            .iter()
            .map(|d| format!("  - {d}"))
            .collect::<Vec<_>>()
            .join("\n");
        Err(CheckError::Schema {
            what,
            revision,
            file: file.to_owned(),
            differences,
        })
    };
    let mut previous = Schema::default();
    for m in migrations {
        if !released.contains_key(&m.file) {
            report.unreleased.push(m.file.clone());
        }
        apply(&m.up, &m.file, m.version - 1)?;
        let after_up = read(&m.file)?;
        // The compiled catalog's schema, when this is the very file that build compiled in.
        if crate::migration(m.version).is_some_and(|c| c.up == m.up) {
            compare(
                crate::schema_at(m.version),
                &after_up,
                m.version,
                format!("{} on a fresh database", m.file),
                &m.file,
            )?;
        }
        match &m.down {
            None => report.without_down.push(m.file.clone()),
            Some((down_file, down)) => {
                apply(down, down_file, m.version)?;
                compare(
                    &previous,
                    &read(down_file)?,
                    m.version - 1,
                    format!("{down_file} after {}", m.file),
                    down_file,
                )?;
                apply(&m.up, &m.file, m.version - 1)?;
                compare(
                    &after_up,
                    &read(&m.file)?,
                    m.version,
                    format!("{} again after {down_file}", m.file),
                    &m.file,
                )?;
            }
        }
        previous = after_up;
    }
    Ok(report)
}
