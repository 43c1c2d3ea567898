//! How a live schema differs from a revision's, one named difference per fact.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::{Column, Schema, Table};

/// The schema object a difference is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Object {
    /// A table, by lower-case name.
    Table(String),
    /// A view, by lower-case name.
    View(String),
    /// A trigger, by lower-case name, and the table it fires on.
    Trigger {
        /// The trigger.
        name: String,
        /// Its table.
        table: String,
    },
}

impl Object {
    /// The table the object belongs to (a view: itself).
    pub fn table(&self) -> &str {
        match self {
            Object::Table(name) | Object::View(name) => name,
            Object::Trigger { table, .. } => table,
        }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Table(name) => write!(f, "table {name}"),
            Object::View(name) => write!(f, "view {name}"),
            Object::Trigger { name, table } => write!(f, "trigger {name} on {table}"),
        }
    }
}

/// A table-wide property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableOption {
    /// `WITHOUT ROWID`.
    WithoutRowid,
    /// `STRICT`.
    Strict,
    /// `AUTOINCREMENT`.
    Autoincrement,
    /// The PRIMARY KEY's `ON CONFLICT` algorithm.
    PrimaryKeyConflict,
}

/// What a difference is about, within its object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// The object itself (table, view or trigger).
    Whole,
    /// A table-wide property.
    Option(TableOption),
    /// A column, by name.
    Column(String),
    /// A UNIQUE constraint, by its keys.
    Unique(Vec<String>),
    /// A CHECK constraint, by its canonical expression.
    Check(String),
    /// An index, by name.
    Index(String),
    /// A foreign key, by its columns and what they reference (`(a) -> t(b)`).
    ForeignKey(String),
}

/// Which way it differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Expected but absent.
    Missing,
    /// Present but not expected.
    Unexpected,
    /// Present in both, different.
    Differs,
}

/// One way in which a live schema differs from a revision's, phrased for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The object concerned.
    pub object: Object,
    /// What it is about.
    pub subject: Subject,
    /// Which way it differs.
    pub change: Change,
    /// What differs, e.g. "column language_code missing".
    pub what: String,
    /// For a view or trigger: the tables its SQL names (a migration that rebuilds one of them
    /// drops the trigger on it, or fails on the view or trigger that reads it).
    pub reads: BTreeSet<String>,
}

impl Difference {
    /// The table the difference is about (for a view: the view; for a trigger: its table).
    pub fn table(&self) -> &str {
        self.object.table()
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.what)
    }
}

impl Schema {
    /// The definition of a subject in this schema, as compared, or `None` when absent.
    pub fn fact(&self, object: &Object, subject: &Subject) -> Option<String> {
        let table = || self.tables.get(object.table());
        match (object, subject) {
            (Object::View(name), _) => self.views.get(name).map(|v| v.sql.clone()),
            (Object::Trigger { name, .. }, _) => self
                .triggers
                .get(name)
                .map(|t| format!("on {}: {}", t.table, t.sql)),
            (Object::Table(_), Subject::Whole) => table().map(|_| String::new()),
            (Object::Table(_), Subject::Option(option)) => {
                table().and_then(|t| option_value(t, *option))
            }
            (Object::Table(_), Subject::Column(name)) => {
                table()?.columns.get(name).map(Column::definition)
            }
            (Object::Table(_), Subject::Unique(keys)) => table()?
                .unique
                .iter()
                .find(|u| &u.columns == keys)
                .map(|u| u.definition()),
            (Object::Table(_), Subject::Check(check)) => {
                table()?.checks.contains(check).then(|| check.clone())
            }
            (Object::Table(_), Subject::Index(name)) => {
                table()?.indexes.get(name).map(|i| i.definition())
            }
            (Object::Table(_), Subject::ForeignKey(target)) => table()?
                .foreign_keys
                .iter()
                .find(|k| &k.target() == target)
                .map(|k| k.definition()),
        }
    }

    /// Whether this schema has the subject of a difference, and (when `like` has it too) with
    /// the same definition as there.
    pub fn has(&self, object: &Object, subject: &Subject, like: Option<&Schema>) -> bool {
        match (
            self.fact(object, subject),
            like.and_then(|l| l.fact(object, subject)),
        ) {
            (Some(mine), Some(theirs)) => mine == theirs,
            (mine, _) => mine.is_some(),
        }
    }
}

/// A table-wide property's value, `None` when it has the default.
fn option_value(table: &Table, option: TableOption) -> Option<String> {
    match option {
        TableOption::WithoutRowid => table.without_rowid.then(|| "WITHOUT ROWID".into()),
        TableOption::Strict => table.strict.then(|| "STRICT".into()),
        TableOption::Autoincrement => table.autoincrement.then(|| "AUTOINCREMENT".into()),
        TableOption::PrimaryKeyConflict => table
            .primary_key_conflict
            .as_ref()
            .map(|c| format!("PRIMARY KEY ON CONFLICT {c}")),
    }
}

/// Why a table-wide property matters, said after "not expected".
fn option_consequence(option: TableOption) -> &'static str {
    match option {
        TableOption::WithoutRowid => " (the table has no rowid)",
        TableOption::Strict => " (a value of another type is refused instead of converted)",
        TableOption::Autoincrement => " (ids are never reused; sqlite_sequence counts them)",
        TableOption::PrimaryKeyConflict => "",
    }
}

/// What an `ON CONFLICT` algorithm does to an insert that breaks the constraint.
fn conflict_consequence(conflict: Option<&str>) -> &'static str {
    match conflict {
        Some("REPLACE") => " (an insert of a duplicate deletes the old row instead of failing)",
        Some("IGNORE") => " (an insert that breaks it is skipped silently instead of failing)",
        Some(_) => " (a statement that breaks it ends differently)",
        None => "",
    }
}

fn conflict_clause(conflict: Option<&String>) -> String {
    conflict.map_or_else(
        || "without ON CONFLICT".into(),
        |c| format!("ON CONFLICT {c}"),
    )
}

/// Collects the differences of one comparison.
struct Differences(Vec<Difference>);

impl Differences {
    fn push(&mut self, object: &Object, subject: Subject, change: Change, what: String) {
        self.0.push(Difference {
            object: object.clone(),
            subject,
            change,
            what,
            reads: BTreeSet::new(),
        });
    }

    /// `what` (e.g. "column x") missing from `object`.
    fn missing(&mut self, object: &Object, subject: Subject, what: &str) {
        self.push(object, subject, Change::Missing, format!("{what} missing"));
    }

    /// `what` (e.g. "column x") in `object`, not expected.
    fn unexpected(&mut self, object: &Object, subject: Subject, what: &str) {
        self.push(
            object,
            subject,
            Change::Unexpected,
            format!("unexpected {what}"),
        );
    }

    /// A view or a trigger (`sql` its statement) missing, different or not expected, with the
    /// tables the one found reads.
    fn statement<V: PartialEq>(
        &mut self,
        object: &Object,
        pair: Pair<'_, V>,
        sql: impl Fn(&V) -> &String,
        expected: &Schema,
        actual: &Schema,
    ) {
        let (change, what, found) = match pair {
            Pair::Missing(_) => (Change::Missing, "missing".into(), None),
            Pair::Both(want, have) if have != want => (
                Change::Differs,
                format!("{} expected, found {}", sql(want), sql(have)),
                Some(have),
            ),
            Pair::Both(..) => return,
            Pair::Unexpected(have) => (Change::Unexpected, "not expected".into(), Some(have)),
        };
        self.push(object, Subject::Whole, change, what);
        if let Some(have) = found {
            self.reading(sql(have), expected, actual);
        }
    }

    /// Records the tables the last difference's view or trigger names.
    fn reading(&mut self, sql: &str, expected: &Schema, actual: &Schema) {
        if let Some(last) = self.0.last_mut() {
            last.reads = expected
                .tables
                .keys()
                .chain(actual.tables.keys())
                .filter(|table| super::sql::mentions(sql, table))
                .cloned()
                .collect();
        }
    }
}

/// What two maps hold under one name.
enum Pair<'a, V> {
    /// Only the expected schema has it.
    Missing(&'a V),
    /// Both have it: the expected one, then the actual one.
    Both(&'a V, &'a V),
    /// Only the actual schema has it.
    Unexpected(&'a V),
}

impl<'a, V> Pair<'a, V> {
    /// What it holds; the expected one when both hold it.
    fn either(&self) -> &'a V {
        match *self {
            Pair::Missing(v) | Pair::Both(v, _) | Pair::Unexpected(v) => v,
        }
    }
}

/// Pairs two maps by name, in the order every difference is reported: `expected`'s names
/// first, then the names only `actual` has.
fn by_name<'a, V>(
    expected: &'a BTreeMap<String, V>,
    actual: &'a BTreeMap<String, V>,
) -> impl Iterator<Item = (&'a String, Pair<'a, V>)> {
    let ours = expected.iter().map(|(name, want)| {
        let pair = match actual.get(name) {
            Some(have) => Pair::Both(want, have),
            None => Pair::Missing(want),
        };
        (name, pair)
    });
    let theirs = actual
        .iter()
        .filter(|(name, _)| !expected.contains_key(*name))
        .map(|(name, have)| (name, Pair::Unexpected(have)));
    ours.chain(theirs)
}

/// How `actual` differs from `expected`, one line per difference, in a stable order.
pub fn diff(expected: &Schema, actual: &Schema) -> Vec<Difference> {
    let mut out = Differences(Vec::new());
    for (name, pair) in by_name(&expected.tables, &actual.tables) {
        let object = Object::Table(name.clone());
        match pair {
            Pair::Missing(_) => out.missing(&object, Subject::Whole, "table"),
            Pair::Both(want, have) => diff_table(&object, want, have, &mut out),
            Pair::Unexpected(_) => out.unexpected(&object, Subject::Whole, "table"),
        }
    }
    for (name, pair) in by_name(&expected.views, &actual.views) {
        let object = Object::View(name.clone());
        out.statement(&object, pair, |view| &view.sql, expected, actual);
    }
    for (name, pair) in by_name(&expected.triggers, &actual.triggers) {
        let object = Object::Trigger {
            name: name.clone(),
            table: pair.either().table.clone(),
        };
        out.statement(&object, pair, |trigger| &trigger.sql, expected, actual);
    }
    out.0
}

fn diff_table(object: &Object, want: &Table, have: &Table, out: &mut Differences) {
    for option in [
        TableOption::WithoutRowid,
        TableOption::Strict,
        TableOption::Autoincrement,
        TableOption::PrimaryKeyConflict,
    ] {
        match (option_value(want, option), option_value(have, option)) {
            (None, Some(found)) => out.push(
                object,
                Subject::Option(option),
                Change::Unexpected,
                format!("{found} not expected{}", option_consequence(option)),
            ),
            (Some(expected), None) => out.push(
                object,
                Subject::Option(option),
                Change::Missing,
                format!("{expected} expected"),
            ),
            (Some(expected), Some(found)) if expected != found => out.push(
                object,
                Subject::Option(option),
                Change::Differs,
                format!("{expected} expected, found {found}"),
            ),
            _ => {}
        }
    }
    for (column, pair) in by_name(&want.columns, &have.columns) {
        let subject = Subject::Column(column.clone());
        match pair {
            Pair::Missing(_) => out.missing(object, subject, &format!("column {column}")),
            Pair::Both(want_column, have_column) => {
                diff_column(object, column, want_column, have_column, have, out)
            }
            Pair::Unexpected(_) => out.unexpected(object, subject, &format!("column {column}")),
        }
    }
    diff_unique_and_indexes(object, want, have, out);
    for check in want.checks.difference(&have.checks) {
        out.missing(
            object,
            Subject::Check(check.clone()),
            &format!("CHECK ({check})"),
        );
    }
    for check in have.checks.difference(&want.checks) {
        out.unexpected(
            object,
            Subject::Check(check.clone()),
            &format!("CHECK ({check})"),
        );
    }
    diff_foreign_keys(object, want, have, out);
}

fn diff_column(
    object: &Object,
    column: &str,
    want: &Column,
    have: &Column,
    have_table: &Table,
    out: &mut Differences,
) {
    let mut differs = |what: String| {
        out.push(
            object,
            Subject::Column(column.to_owned()),
            Change::Differs,
            format!("column {column}: {what}"),
        )
    };
    if want.affinity != have.affinity {
        differs(format!(
            "type affinity {} expected, found {}",
            want.affinity, have.affinity
        ));
    }
    if want.not_null != have.not_null {
        differs(format!(
            "NOT NULL {}",
            if want.not_null {
                "expected"
            } else {
                "not expected"
            }
        ));
    }
    if want.not_null && have.not_null && want.not_null_conflict != have.not_null_conflict {
        differs(format!(
            "NOT NULL {} expected, found {}{}",
            conflict_clause(want.not_null_conflict.as_ref()),
            conflict_clause(have.not_null_conflict.as_ref()),
            conflict_consequence(have.not_null_conflict.as_deref()),
        ));
    }
    if want.default != have.default {
        let show = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".into());
        differs(format!(
            "default {} expected, found {}",
            show(&want.default),
            show(&have.default)
        ));
    }
    if want.primary_key != have.primary_key {
        differs(format!(
            "should be {}",
            if want.primary_key > 0 {
                "part of the primary key, but is not"
            } else {
                "not part of the primary key, but is"
            }
        ));
    }
    if want.rowid_alias && !have.rowid_alias && have.primary_key > 0 {
        let keys = have_table
            .columns
            .values()
            .filter(|c| c.primary_key > 0)
            .count();
        let found = if have_table.without_rowid {
            format!(
                "{} PRIMARY KEY in a WITHOUT ROWID table",
                have.declared_type
            )
        } else if keys > 1 {
            "part of a primary key of several columns".to_owned()
        } else if have.declared_type.eq_ignore_ascii_case("INTEGER") {
            "INTEGER PRIMARY KEY DESC (a SQLite quirk: DESC there makes an ordinary key)".to_owned()
        } else {
            format!("{} PRIMARY KEY", have.declared_type)
        };
        let consequence = if have.not_null {
            "an insert without an id fails"
        } else {
            "an insert without an id stores NULL"
        };
        differs(format!(
            "a rowid alias (INTEGER PRIMARY KEY) expected, found {found} (not an alias: {consequence})"
        ));
    } else if !want.rowid_alias && have.rowid_alias && want.primary_key > 0 {
        differs(format!(
            "an ordinary primary key ({} PRIMARY KEY) expected, found a rowid alias (INTEGER PRIMARY KEY)",
            want.declared_type
        ));
    }
    if want.collation != have.collation {
        differs(format!(
            "collation {} expected, found {} (comparisons, ORDER BY and UNIQUE follow it)",
            want.collation, have.collation
        ));
    }
    match (&want.generated, &have.generated) {
        (None, Some(found)) => differs(format!(
            "a generated column ({found}) not expected: an insert cannot set it"
        )),
        (Some(expected), None) => differs(format!(
            "generated {expected} expected, found an ordinary column"
        )),
        (Some(expected), Some(found)) if expected != found => {
            differs(format!("generated {expected} expected, found {found}"))
        }
        _ => {}
    }
}

/// UNIQUE constraints, by their keys. A full UNIQUE index on the same keys, not named in the
/// expected schema, stands in for a UNIQUE constraint without a conflict clause (see the crate
/// docs for why); every other index is compared by name.
fn diff_unique_and_indexes(object: &Object, want: &Table, have: &Table, out: &mut Differences) {
    let mut standing_in = BTreeSet::new();
    for unique in &want.unique {
        let subject = Subject::Unique(unique.columns.clone());
        match have.unique.iter().find(|u| u.columns == unique.columns) {
            Some(found) if found.conflict != unique.conflict => out.push(
                object,
                subject,
                Change::Differs,
                format!(
                    "{} expected, found {}{}",
                    unique.definition(),
                    found.definition(),
                    conflict_consequence(found.conflict.as_deref())
                ),
            ),
            Some(_) => {}
            None => {
                let stand_in = have.indexes.iter().find(|(name, index)| {
                    unique.conflict.is_none()
                        && index.unique
                        && index.where_clause.is_none()
                        && index.columns == unique.columns
                        && !want.indexes.contains_key(*name)
                        && !standing_in.contains(*name)
                });
                match stand_in {
                    Some((name, _)) => {
                        standing_in.insert(name.clone());
                    }
                    None => out.missing(object, subject, &unique.definition()),
                }
            }
        }
    }
    for unique in have
        .unique
        .iter()
        .filter(|u| !want.unique.iter().any(|w| w.columns == u.columns))
    {
        let consequence = conflict_consequence(unique.conflict.as_deref());
        let what = format!("{}{consequence}", unique.definition());
        out.unexpected(object, Subject::Unique(unique.columns.clone()), &what);
    }
    for (index, pair) in by_name(&want.indexes, &have.indexes) {
        let subject = Subject::Index(index.clone());
        match pair {
            Pair::Missing(_) => out.missing(object, subject, &format!("index {index}")),
            Pair::Both(want_index, have_index) if have_index != want_index => out.push(
                object,
                subject,
                Change::Differs,
                format!(
                    "index {index}: {} expected, found {}",
                    want_index.definition(),
                    have_index.definition()
                ),
            ),
            Pair::Both(..) => {}
            // A UNIQUE index standing in for a UNIQUE constraint is no difference.
            Pair::Unexpected(_) if standing_in.contains(index) => {}
            Pair::Unexpected(have_index) => {
                let what = format!("index {index} {}", have_index.definition());
                out.unexpected(object, subject, &what);
            }
        }
    }
}

fn diff_foreign_keys(object: &Object, want: &Table, have: &Table, out: &mut Differences) {
    for key in &want.foreign_keys {
        let subject = Subject::ForeignKey(key.target());
        match have
            .foreign_keys
            .iter()
            .find(|k| k.target() == key.target())
        {
            None => out.missing(object, subject, &format!("foreign key {}", key.target())),
            Some(found) if found != key => {
                let show = |actions: String| {
                    if actions.is_empty() {
                        "no actions".to_owned()
                    } else {
                        actions
                    }
                };
                out.push(
                    object,
                    subject,
                    Change::Differs,
                    format!(
                        "foreign key {}: {} expected, found {}",
                        key.target(),
                        show(key.actions()),
                        show(found.actions())
                    ),
                );
            }
            Some(_) => {}
        }
    }
    for key in have
        .foreign_keys
        .iter()
        .filter(|k| !want.foreign_keys.iter().any(|w| w.target() == k.target()))
    {
        let what = format!("foreign key {}", key.definition());
        out.unexpected(object, Subject::ForeignKey(key.target()), &what);
    }
}
