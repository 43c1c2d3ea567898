//! The state a database is in: decided from its history, its live schema and another tool's
//! history, as read, against a catalog. No I/O here, so that every state can be tested with
//! migrations written in the test.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::schema::{self, Change, Difference, Object, Schema, Subject};

/// What the engine can tell about a database.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No tables (or no file yet).
    #[default]
    Empty,
    /// Tables, but no history: made by something else (the old app's create-all).
    Unstamped,
    /// Another tool's history (e.g. `alembic_version`) and none of ours.
    Foreign,
    /// The history names an older revision than head.
    Behind,
    /// The history names head.
    Current,
    /// The history names a revision this build does not know.
    Ahead,
    /// An applied migration's file changed since it was applied.
    Modified,
    /// The history names a revision, but the live schema is not that revision's.
    Drifted,
}

impl State {
    /// The state's name as scripts see it.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "empty",
            State::Unstamped => "unstamped",
            State::Foreign => "foreign",
            State::Behind => "behind",
            State::Current => "current",
            State::Ahead => "ahead",
            State::Modified => "modified",
            State::Drifted => "drifted",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Another tool's history found in the database: the tool (e.g. "alembic"), its table and
/// the revision it records, as text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForeignHistory {
    pub tool: Cow<'static, str>,
    pub table: Cow<'static, str>,
    pub revision: Option<String>,
}

/// An applied migration whose `.up.sql` file changed since: the checksum the history
/// `recorded`, and the file's `current` one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EditedFile {
    pub file: Cow<'static, str>,
    pub recorded: String,
    pub current: String,
}

/// A database's state, as `bot db status --json` prints it ([`crate::json::StatusReport`]).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The state.
    pub state: State,
    /// The revision the history records, if any.
    pub version: Option<u32>,
    /// The newest revision this build knows.
    pub head: u32,
    /// Revisions `upgrade` would apply, in order (for `unstamped`: those after the match).
    pub pending: Vec<u32>,
    /// For `unstamped` and `foreign`: the revision the live schema matches, or null.
    pub matches: Option<u32>,
    /// For `unstamped` and `foreign` with no match: the closest revision.
    pub closest: Option<u32>,
    /// Why the state is not clean: the schema difference (to `closest`, or for `drifted` to the
    /// recorded revision), or the edited files.
    #[serde(default)]
    pub difference: Vec<String>,
    /// For `foreign`: the other tool's history.
    pub foreign: Option<ForeignHistory>,
    /// For `modified`: the edited files with both checksums.
    #[serde(default)]
    pub edited: Vec<EditedFile>,
    /// The newest revision the history says was stamped with `--force` (over a schema that
    /// differed then), if any.
    pub forced: Option<u32>,
    /// For `unstamped` and `foreign` with no match, and `drifted`: live tables that no
    /// revision has (e.g. the old app's own).
    #[serde(default)]
    pub extra_tables: Vec<String>,
}

impl Status {
    /// The state of a database with no tables (or no file yet), for a build whose head is
    /// `head`: every revision pending.
    pub fn empty(head: u32) -> Status {
        Status {
            head,
            pending: (1..=head).collect(),
            ..Status::default()
        }
    }

    /// The revision the database is at: recorded, or matched by its schema.
    pub fn effective_version(&self) -> Option<u32> {
        self.version.or(self.matches)
    }
}

/// One row of the history table: the revision, the migration's name, the SHA-256 of the
/// `.up.sql` file when it was recorded, when (UTC, ISO 8601), and how: `applied`, `stamped`
/// or `forced` (stamped though the schema differed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryRow {
    pub version: u32,
    pub name: String,
    pub checksum: String,
    pub applied_at: String,
    pub how: String,
}

impl fmt::Display for EditedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} changed since it was applied: recorded checksum {}, file now {}",
            self.file, self.recorded, self.current
        )
    }
}

/// The state of a database whose history is `history` (oldest first; empty when there is
/// none), whose live schema is `live` and where `foreign` is another tool's history (only
/// looked at when there is no history of ours), against `catalog`.
pub(crate) fn decide(
    history: &[HistoryRow],
    live: &Schema,
    foreign: Option<ForeignHistory>,
    catalog: &Catalog,
) -> Status {
    let head = catalog.head();
    let mut status = Status {
        head,
        forced: history
            .iter()
            .filter(|row| row.how == "forced")
            .map(|row| row.version)
            .max(),
        ..Status::default()
    };
    let Some(version) = history.iter().map(|row| row.version).max() else {
        if live.tables.is_empty() && foreign.is_none() {
            return Status::empty(head);
        }
        status.state = foreign
            .as_ref()
            .map_or(State::Unstamped, |_| State::Foreign);
        status.foreign = foreign;
        match find_match(live, catalog) {
            Ok(matched) => {
                status.matches = Some(matched);
                status.pending = (matched + 1..=head).collect();
            }
            Err((closest, difference)) => {
                status.closest = Some(closest);
                status.difference = difference;
                status.extra_tables = extra_tables(live, catalog);
            }
        }
        return status;
    };
    status.version = Some(version);
    if version > head {
        status.state = State::Ahead;
        return status;
    }
    status.edited = edited_files(history, catalog);
    if !status.edited.is_empty() {
        status.state = State::Modified;
        status.difference = status.edited.iter().map(EditedFile::to_string).collect();
        return status;
    }
    let drift = differences_to(catalog, live, version);
    if !drift.is_empty() {
        status.state = State::Drifted;
        status.difference = drift;
        status.extra_tables = extra_tables(live, catalog);
        return status;
    }
    status.pending = (version + 1..=head).collect();
    status.state = if status.pending.is_empty() {
        State::Current
    } else {
        State::Behind
    };
    status
}

/// The live tables that no revision has.
fn extra_tables(live: &Schema, catalog: &Catalog) -> Vec<String> {
    live.tables
        .keys()
        .filter(|table| {
            !(1..=catalog.head()).any(|r| catalog.schema_at(r).tables.contains_key(*table))
        })
        .cloned()
        .collect()
}

/// The differences to revision `version` of `catalog` as review comments: what is missing or extra, which revision
/// adds or changes it, and what a later migration would do to an object it does not expect
/// (a rebuild drops a table's triggers, indexes and unknown columns, and fails on a view or
/// another table's trigger that reads the table).
pub fn explain(catalog: &Catalog, differences: &[Difference], version: u32) -> Vec<String> {
    // Each later migration's rebuilt (dropped, then created again) and dropped tables.
    let later: Vec<(u32, String, bool)> = catalog.migrations()[version as usize..]
        .iter()
        .flat_map(|m| {
            schema::dropped_tables(m.up).into_iter().map(move |table| {
                let rebuilt = catalog.schema_at(m.version).tables.contains_key(&table);
                (m.version, table, rebuilt)
            })
        })
        .collect();
    let consequence = |d: &Difference| -> Option<String> {
        let (object_table, fails) = match &d.object {
            Object::Table(table) => (Some(table.as_str()), false),
            Object::Trigger { table, .. } => (Some(table.as_str()), true),
            Object::View(_) => (None, true),
        };
        later.iter().find_map(|(r, table, rebuilt)| {
            let verb = if *rebuilt { "rebuilds" } else { "drops" };
            let note = if object_table == Some(table.as_str()) {
                let what = match d.subject {
                    Subject::Column(_) => "it and its data",
                    _ => "it",
                };
                format!("; revision {r} {verb} {table} and would drop {what}")
            } else if fails && *rebuilt && d.reads.contains(table) {
                format!("; revision {r} rebuilds {table} and would fail on it")
            } else {
                return None;
            };
            Some(note)
        })
    };
    differences
        .iter()
        .map(|d| {
            let first_with = |like: Option<&Schema>| {
                (1..=catalog.head()).find(|&r| catalog.schema_at(r).has(&d.object, &d.subject, like))
            };
            let line = match (&d.object, d.change) {
                (Object::View(_) | Object::Trigger { .. }, Change::Unexpected) => {
                    format!("{}: not in revision {version}", d.object)
                }
                _ => d.to_string(),
            };
            let note = match d.change {
                Change::Missing => first_with(Some(catalog.schema_at(version)))
                    .filter(|&r| r <= version)
                    .map(|r| format!(" (revision {r} adds it)")),
                Change::Unexpected => first_with(None)
                    .filter(|&r| r > version)
                    .map(|r| format!(" (revision {r} adds it)"))
                    .or_else(|| consequence(d))
                    .or_else(|| match (&d.object, &d.subject) {
                        (Object::Table(table), Subject::Whole) => Some(format!(
                            " (no revision has it: if the bot does not need it, save its rows elsewhere and DROP TABLE {table}; or add a migration that creates it)"
                        )),
                        _ => None,
                    }),
                Change::Differs => (1..=version)
                    .rev()
                    .take_while(|&r| {
                        catalog.schema_at(r).has(&d.object, &d.subject, Some(catalog.schema_at(version)))
                    })
                    .last()
                    .filter(|&r| r > 1 && catalog.schema_at(r - 1).has(&d.object, &d.subject, None))
                    .map(|r| format!(" (revision {r} changes it)")),
            };
            format!("{line}{}", note.unwrap_or_default())
        })
        .collect()
}

/// How `live` differs from revision `version` of `catalog`, [explained](explain).
pub(super) fn differences_to(catalog: &Catalog, live: &Schema, version: u32) -> Vec<String> {
    let differences = schema::diff(catalog.schema_at(version), live);
    explain(catalog, &differences, version)
}

/// The revision whose schema is `live`, or the closest one and the difference to it.
fn find_match(live: &Schema, catalog: &Catalog) -> Result<u32, (u32, Vec<String>)> {
    let mut closest: Option<(u32, Vec<Difference>)> = None;
    for version in 1..=catalog.head() {
        let difference = schema::diff(catalog.schema_at(version), live);
        if difference.is_empty() {
            return Ok(version);
        }
        if closest
            .as_ref()
            .is_none_or(|(_, best)| difference.len() <= best.len())
        {
            closest = Some((version, difference));
        }
    }
    let (version, difference) = closest.expect("there is at least one revision");
    Err((version, explain(catalog, &difference, version)))
}

/// The applied migrations whose file's checksum is not the one the history recorded.
fn edited_files(history: &[HistoryRow], catalog: &Catalog) -> Vec<EditedFile> {
    history
        .iter()
        .filter_map(|row| {
            let m = catalog.migration(row.version)?;
            let current = m.checksum();
            (current != row.checksum).then(|| EditedFile {
                file: m.file.into(),
                recorded: row.checksum.clone(),
                current,
            })
        })
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::OnceLock;

    use rusqlite::Connection;

    use super::*;
    use crate::catalog::Migration;

    /// Two tiny migrations: a table, then a column that can be dropped again.
    pub(in crate::engine) fn catalog() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| {
            Catalog::new(vec![
                Migration {
                    version: 1,
                    name: "notes",
                    file: "0001_notes.up.sql",
                    up: "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
                    down_file: None,
                    down: None,
                },
                Migration {
                    version: 2,
                    name: "pinned",
                    file: "0002_pinned.up.sql",
                    up: "ALTER TABLE notes ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;",
                    down_file: Some("0002_pinned.down.sql"),
                    down: Some("ALTER TABLE notes DROP COLUMN pinned;"),
                },
            ])
            .unwrap()
        })
    }

    /// The history row `how` of revision `version`, with the checksum of the file now.
    fn row(version: u32, how: &str) -> HistoryRow {
        HistoryRow {
            version,
            name: format!("revision {version}"),
            checksum: catalog()
                .migration(version)
                .map_or_else(|| "f".repeat(64), |m| m.checksum()),
            applied_at: "2026-01-01T00:00:00Z".into(),
            how: how.into(),
        }
    }

    /// A history that applied `versions`.
    pub(in crate::engine) fn applied(versions: &[u32]) -> Vec<HistoryRow> {
        versions
            .iter()
            .map(|&version| row(version, "applied"))
            .collect()
    }

    /// The schema `sql` makes in an empty database.
    fn schema_of(sql: &str) -> Schema {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(sql).unwrap();
        schema::read(&conn, &[]).unwrap()
    }

    fn alembic() -> ForeignHistory {
        ForeignHistory {
            tool: "alembic".into(),
            table: "alembic_version".into(),
            revision: Some("ae1027a6acf".into()),
        }
    }

    /// The one difference `status` names.
    fn the_difference(status: &Status) -> &str {
        assert_eq!(status.difference.len(), 1, "{:?}", status.difference);
        &status.difference[0]
    }

    /// The state of a database with `history` and the schema of revision `at` of the catalog.
    fn decide_at(history: &[HistoryRow], at: u32, foreign: Option<ForeignHistory>) -> Status {
        decide(history, catalog().schema_at(at), foreign, catalog())
    }

    #[test]
    fn each_clean_state_is_decided_from_the_history_the_schema_and_another_tools_history() {
        use State::*;
        // The revisions the history applied, the schema of revision `at`, whether another
        // tool's history is there; the state, the recorded revision, the matched revision and
        // the pending revisions.
        let cases = [
            // No tables and no history.
            (vec![], 0, false, Empty, None, None, vec![1, 2]),
            // Tables without history: unstamped at the revision they match.
            (vec![], 1, false, Unstamped, None, Some(1), vec![2]),
            // Another tool's history is foreign, even without tables.
            (vec![], 2, true, Foreign, None, Some(2), vec![]),
            (vec![], 0, true, Foreign, None, None, vec![]),
            // An older revision is behind: our history is what counts.
            (vec![1], 1, true, Behind, Some(1), None, vec![2]),
            // A revision after head.
            (vec![1, 2, 3], 2, false, Ahead, Some(3), None, vec![]),
        ];
        for (versions, at, foreign, state, version, matches, pending) in cases {
            let status = decide_at(&applied(&versions), at, foreign.then(alembic));
            let tool = status.foreign.as_ref().map(|f| f.tool.as_ref());
            let found = (status.state, status.version, status.matches, tool);
            let foreign = (state == Foreign).then_some("alembic");
            let expected = (state, version, matches, foreign);
            assert_eq!(found, expected, "{versions:?} at {at}");
            assert_eq!((status.head, status.pending), (2, pending));
            assert!(status.matches.is_none() || status.closest.is_none());
        }
        let current = decide_at(&[row(1, "stamped"), row(2, "applied")], 2, None);
        assert_eq!((current.state, current.forced), (Current, None));
        assert!(current.pending.is_empty());
    }

    #[test]
    fn an_unstamped_schema_that_matches_nothing_names_the_closest_revision() {
        let live = schema_of(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL); CREATE TABLE old (x);",
        );
        let status = decide(&[], &live, None, catalog());
        assert_eq!(status.state, State::Unstamped);
        assert_eq!((status.matches, status.closest), (None, Some(1)));
        assert_eq!(status.extra_tables, ["old"]);
        assert!(status.pending.is_empty());
        let difference = the_difference(&status);
        assert!(
            difference.starts_with("table old: unexpected table (no revision has it"),
            "{difference}"
        );
    }

    #[test]
    fn an_applied_file_edited_since_is_modified() {
        let mut edited = row(1, "applied");
        edited.checksum = "0".repeat(64);
        let status = decide_at(&[edited, row(2, "applied")], 2, None);
        assert_eq!(status.state, State::Modified);
        assert_eq!(status.edited.len(), 1);
        assert_eq!(status.edited[0].file, "0001_notes.up.sql");
        assert_eq!(
            the_difference(&status),
            format!(
                "0001_notes.up.sql changed since it was applied: recorded checksum {}, file now {}",
                "0".repeat(64),
                catalog().migration(1).unwrap().checksum()
            )
        );
    }

    #[test]
    fn a_live_schema_that_is_not_the_recorded_revisions_is_drifted() {
        let status = decide_at(&[row(1, "forced")], 2, None);
        assert_eq!(status.state, State::Drifted);
        assert_eq!(status.forced, Some(1));
        assert!(status.pending.is_empty());
        let difference = the_difference(&status);
        assert!(
            difference.contains("pinned") && difference.ends_with("(revision 2 adds it)"),
            "{difference}"
        );
    }
}
