//! The structure of a database, normalized so that two schemas written differently compare equal
//! when SQLite treats them the same, and the difference between two of them in words.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rusqlite::Connection;
use serde::Serialize;

/// The structure of every user table of a database, keyed by lower-case table name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Schema {
    /// Tables by lower-case name.
    pub tables: BTreeMap<String, Table>,
}

/// One table's structure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Table {
    /// Columns by lower-case name.
    pub columns: BTreeMap<String, Column>,
    /// Column lists of the UNIQUE constraints (however they were written).
    pub unique: BTreeSet<Vec<String>>,
    /// Indexes made with CREATE INDEX, by lower-case name.
    pub indexes: BTreeMap<String, Index>,
    /// Foreign keys.
    pub foreign_keys: BTreeSet<ForeignKey>,
}

/// One column: what SQLite enforces of it, not how it was spelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    /// The type affinity SQLite derives from the declared type.
    pub affinity: Affinity,
    /// NOT NULL.
    pub not_null: bool,
    /// The default, normalized (outer parentheses dropped, keywords upper-cased).
    pub default: Option<String>,
    /// Position in the primary key (1-based), 0 when not part of it.
    pub primary_key: u32,
}

/// An index created with CREATE INDEX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Index {
    /// Indexed columns in order (lower case; `<expr>` for an expression).
    pub columns: Vec<String>,
    /// UNIQUE index.
    pub unique: bool,
    /// Has a WHERE clause.
    pub partial: bool,
}

/// A foreign key constraint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ForeignKey {
    /// Referencing columns.
    pub columns: Vec<String>,
    /// Referenced table.
    pub table: String,
    /// Referenced columns (empty when the primary key is implied).
    pub to: Vec<String>,
    /// ON UPDATE action.
    pub on_update: String,
    /// ON DELETE action.
    pub on_delete: String,
}

/// SQLite's type affinity (sqlite.org/datatype3.html, section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Affinity {
    /// INT in the type name.
    Integer,
    /// CHAR, CLOB or TEXT in the type name.
    Text,
    /// BLOB, or no type.
    Blob,
    /// REAL, FLOA or DOUB.
    Real,
    /// Anything else (NUMERIC, BOOLEAN, DATETIME, DECIMAL...).
    Numeric,
}

impl Affinity {
    /// The affinity of a declared type name, by SQLite's rules in their order.
    pub fn of(declared: &str) -> Affinity {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.trim().is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Affinity::Integer => "INTEGER",
            Affinity::Text => "TEXT",
            Affinity::Blob => "BLOB",
            Affinity::Real => "REAL",
            Affinity::Numeric => "NUMERIC",
        };
        f.write_str(name)
    }
}

fn normalize_default(raw: &str) -> String {
    let mut text = raw.trim();
    // `DEFAULT (0)` and `DEFAULT 0` are the same default.
    while text.starts_with('(') && text.ends_with(')') && balanced(&text[1..text.len() - 1]) {
        text = text[1..text.len() - 1].trim();
    }
    if text.starts_with('\'') || text.starts_with('"') {
        return text.to_owned();
    }
    let upper = text.to_ascii_uppercase();
    if let Ok(number) = upper.parse::<f64>() {
        if number.fract() == 0.0 && number.abs() < 1e15 {
            return format!("{}", number as i64);
        }
        return format!("{number}");
    }
    upper
}

fn balanced(text: &str) -> bool {
    let mut depth = 0i32;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    depth == 0
}

/// Reads the normalized schema of every table but SQLite's own and those named in `skip`.
pub fn read(conn: &Connection, skip: &[&str]) -> rusqlite::Result<Schema> {
    let mut statement = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    let names: Vec<String> = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut schema = Schema::default();
    for name in names {
        if skip.iter().any(|s| s.eq_ignore_ascii_case(&name)) {
            continue;
        }
        schema
            .tables
            .insert(name.to_ascii_lowercase(), read_table(conn, &name)?);
    }
    Ok(schema)
}

fn read_table(conn: &Connection, name: &str) -> rusqlite::Result<Table> {
    let mut table = Table::default();
    let mut columns = conn.prepare(
        "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1)",
    )?;
    let mut rows = columns.query([name])?;
    while let Some(row) = rows.next()? {
        let hidden: i64 = row.get(5)?;
        if hidden == 1 {
            continue; // a virtual table's hidden column
        }
        let column_name: String = row.get(0)?;
        let declared: String = row.get(1)?;
        let default: Option<String> = row.get(3)?;
        table.columns.insert(
            column_name.to_ascii_lowercase(),
            Column {
                affinity: Affinity::of(&declared),
                not_null: row.get::<_, i64>(2)? != 0,
                default: default.as_deref().map(normalize_default),
                primary_key: row.get(4)?,
            },
        );
    }

    let mut index_list =
        conn.prepare("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1)")?;
    let indexes: Vec<(String, bool, String, bool)> = index_list
        .query_map([name], |row| {
            Ok((
                row.get(0)?,
                row.get::<_, i64>(1)? != 0,
                row.get(2)?,
                row.get::<_, i64>(3)? != 0,
            ))
        })?
        .collect::<Result<_, _>>()?;
    let mut index_info = conn.prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?;
    for (index_name, unique, origin, partial) in indexes {
        let columns: Vec<String> = index_info
            .query_map([&index_name], |row| row.get::<_, Option<String>>(0))?
            .map(|c| c.map(|c| c.map_or_else(|| "<expr>".to_owned(), |c| c.to_ascii_lowercase())))
            .collect::<Result<_, _>>()?;
        match origin.as_str() {
            // A UNIQUE constraint, column or table style: its auto-index name is not part of the design.
            "u" => {
                table.unique.insert(columns);
            }
            // The PRIMARY KEY's own index: already described by the columns' `primary_key`.
            "pk" => {}
            _ => {
                table.indexes.insert(
                    index_name.to_ascii_lowercase(),
                    Index {
                        columns,
                        unique,
                        partial,
                    },
                );
            }
        }
    }

    let mut foreign_keys =
        conn.prepare("SELECT id, \"table\", \"from\", \"to\", on_update, on_delete FROM pragma_foreign_key_list(?1) ORDER BY id, seq")?;
    let mut by_id: BTreeMap<i64, ForeignKey> = BTreeMap::new();
    let mut rows = foreign_keys.query([name])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let key = by_id.entry(id).or_insert_with(|| ForeignKey {
            columns: Vec::new(),
            table: String::new(),
            to: Vec::new(),
            on_update: String::new(),
            on_delete: String::new(),
        });
        key.table = row.get::<_, String>(1)?.to_ascii_lowercase();
        key.columns
            .push(row.get::<_, String>(2)?.to_ascii_lowercase());
        if let Some(to) = row.get::<_, Option<String>>(3)? {
            key.to.push(to.to_ascii_lowercase());
        }
        key.on_update = row.get::<_, String>(4)?.to_ascii_uppercase();
        key.on_delete = row.get::<_, String>(5)?.to_ascii_uppercase();
    }
    table.foreign_keys = by_id.into_values().collect();
    Ok(table)
}

/// What a difference is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// The table itself.
    Table,
    /// A column, by name.
    Column(String),
    /// A UNIQUE constraint, by its columns.
    Unique(Vec<String>),
    /// An index, by name.
    Index(String),
    /// A foreign key.
    ForeignKey(ForeignKey),
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
    /// The table concerned.
    pub table: String,
    /// What it is about.
    pub subject: Subject,
    /// Which way it differs.
    pub change: Change,
    /// What differs, e.g. "column language_code missing".
    pub what: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table {}: {}", self.table, self.what)
    }
}

impl Schema {
    /// Whether this schema has the subject of a difference, exactly as in `like` (for columns
    /// and indexes, the same definition).
    pub fn has(&self, table: &str, subject: &Subject, like: Option<&Schema>) -> bool {
        let Some(t) = self.tables.get(table) else {
            return false;
        };
        let other = like.and_then(|s| s.tables.get(table));
        match subject {
            Subject::Table => true,
            Subject::Column(name) => {
                match (t.columns.get(name), other.map(|o| o.columns.get(name))) {
                    (Some(c), Some(Some(o))) => c == o,
                    (Some(_), _) => true,
                    (None, _) => false,
                }
            }
            Subject::Unique(columns) => t.unique.contains(columns),
            Subject::Index(name) => match (t.indexes.get(name), other.map(|o| o.indexes.get(name)))
            {
                (Some(i), Some(Some(o))) => i == o,
                (Some(_), _) => true,
                (None, _) => false,
            },
            Subject::ForeignKey(key) => t.foreign_keys.contains(key),
        }
    }
}

fn describe_key(key: &ForeignKey) -> String {
    format!(
        "({}) -> {}({})",
        key.columns.join(", "),
        key.table,
        key.to.join(", ")
    )
}

/// How `actual` differs from `expected`, one line per difference, in a stable order.
pub fn diff(expected: &Schema, actual: &Schema) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut push = |table: &str, subject: Subject, change: Change, what: String| {
        out.push(Difference {
            table: table.to_owned(),
            subject,
            change,
            what,
        })
    };
    for (name, want) in &expected.tables {
        let Some(have) = actual.tables.get(name) else {
            push(
                name,
                Subject::Table,
                Change::Missing,
                "table missing".into(),
            );
            continue;
        };
        for (column, want_column) in &want.columns {
            let subject = || Subject::Column(column.clone());
            let Some(have_column) = have.columns.get(column) else {
                push(
                    name,
                    subject(),
                    Change::Missing,
                    format!("column {column} missing"),
                );
                continue;
            };
            if want_column.affinity != have_column.affinity {
                push(
                    name,
                    subject(),
                    Change::Differs,
                    format!(
                        "column {column}: type affinity {} expected, found {}",
                        want_column.affinity, have_column.affinity
                    ),
                );
            }
            if want_column.not_null != have_column.not_null {
                let word = if want_column.not_null {
                    "expected"
                } else {
                    "not expected"
                };
                push(
                    name,
                    subject(),
                    Change::Differs,
                    format!("column {column}: NOT NULL {word}"),
                );
            }
            if want_column.default != have_column.default {
                let show = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".into());
                push(
                    name,
                    subject(),
                    Change::Differs,
                    format!(
                        "column {column}: default {} expected, found {}",
                        show(&want_column.default),
                        show(&have_column.default)
                    ),
                );
            }
            if want_column.primary_key != have_column.primary_key {
                let word = if want_column.primary_key > 0 {
                    "part of the primary key, but is not"
                } else {
                    "not part of the primary key, but is"
                };
                push(
                    name,
                    subject(),
                    Change::Differs,
                    format!("column {column}: should be {word}"),
                );
            }
        }
        for column in have
            .columns
            .keys()
            .filter(|c| !want.columns.contains_key(*c))
        {
            push(
                name,
                Subject::Column(column.clone()),
                Change::Unexpected,
                format!("unexpected column {column}"),
            );
        }
        for unique in want.unique.difference(&have.unique) {
            push(
                name,
                Subject::Unique(unique.clone()),
                Change::Missing,
                format!("UNIQUE ({}) missing", unique.join(", ")),
            );
        }
        for unique in have.unique.difference(&want.unique) {
            push(
                name,
                Subject::Unique(unique.clone()),
                Change::Unexpected,
                format!("unexpected UNIQUE ({})", unique.join(", ")),
            );
        }
        for (index, want_index) in &want.indexes {
            match have.indexes.get(index) {
                None => push(
                    name,
                    Subject::Index(index.clone()),
                    Change::Missing,
                    format!("index {index} missing"),
                ),
                Some(have_index) if have_index != want_index => push(
                    name,
                    Subject::Index(index.clone()),
                    Change::Differs,
                    format!(
                        "index {index}: {}({}) expected, found {}({})",
                        if want_index.unique { "UNIQUE " } else { "" },
                        want_index.columns.join(", "),
                        if have_index.unique { "UNIQUE " } else { "" },
                        have_index.columns.join(", ")
                    ),
                ),
                Some(_) => {}
            }
        }
        for index in have
            .indexes
            .keys()
            .filter(|i| !want.indexes.contains_key(*i))
        {
            push(
                name,
                Subject::Index(index.clone()),
                Change::Unexpected,
                format!("unexpected index {index}"),
            );
        }
        for key in want.foreign_keys.difference(&have.foreign_keys) {
            push(
                name,
                Subject::ForeignKey(key.clone()),
                Change::Missing,
                format!("foreign key {} missing", describe_key(key)),
            );
        }
        for key in have.foreign_keys.difference(&want.foreign_keys) {
            push(
                name,
                Subject::ForeignKey(key.clone()),
                Change::Unexpected,
                format!("unexpected foreign key {}", describe_key(key)),
            );
        }
    }
    for name in actual
        .tables
        .keys()
        .filter(|t| !expected.tables.contains_key(*t))
    {
        push(
            name,
            Subject::Table,
            Change::Unexpected,
            "unexpected table".into(),
        );
    }
    out
}

/// The normalized schema as text, one line per fact, for `bot db schema`.
pub fn render(schema: &Schema) -> String {
    let mut out = String::new();
    for (name, table) in &schema.tables {
        out.push_str(&format!("table {name}\n"));
        for (column, c) in &table.columns {
            out.push_str(&format!("  column {column} {}", c.affinity));
            if c.not_null {
                out.push_str(" NOT NULL");
            }
            if let Some(default) = &c.default {
                out.push_str(&format!(" DEFAULT {default}"));
            }
            if c.primary_key > 0 {
                out.push_str(&format!(" PRIMARY KEY({})", c.primary_key));
            }
            out.push('\n');
        }
        for unique in &table.unique {
            out.push_str(&format!("  unique ({})\n", unique.join(", ")));
        }
        for (index, i) in &table.indexes {
            out.push_str(&format!(
                "  index {index} {}({}){}\n",
                if i.unique { "UNIQUE " } else { "" },
                i.columns.join(", "),
                if i.partial { " WHERE ..." } else { "" }
            ));
        }
        for key in &table.foreign_keys {
            out.push_str(&format!(
                "  foreign key {} ON UPDATE {} ON DELETE {}\n",
                describe_key(key),
                key.on_update,
                key.on_delete
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_of(sql: &str) -> Schema {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(sql).unwrap();
        read(&conn, &[]).unwrap()
    }

    #[test]
    fn affinity_follows_sqlite_rules() {
        assert_eq!(Affinity::of("BIGINT"), Affinity::Integer);
        assert_eq!(Affinity::of("VARCHAR(64)"), Affinity::Text);
        assert_eq!(Affinity::of(""), Affinity::Blob);
        assert_eq!(Affinity::of("DOUBLE PRECISION"), Affinity::Real);
        assert_eq!(Affinity::of("BOOLEAN"), Affinity::Numeric);
        assert_eq!(Affinity::of("DATETIME"), Affinity::Numeric);
    }

    #[test]
    fn spelling_does_not_matter() {
        let a = schema_of(
            "CREATE TABLE users (id INTEGER NOT NULL, tid BIGINT NOT NULL, flag BOOLEAN DEFAULT 0 NOT NULL, PRIMARY KEY (id), UNIQUE (tid));",
        );
        let b = schema_of(
            "create table \"USERS\" (\n  \"id\"   integer primary key not null,\n  [tid] INT not null unique,\n  flag numeric not null default (0)\n);",
        );
        assert_eq!(diff(&a, &b), vec![]);
    }

    #[test]
    fn each_difference_is_named() {
        let a = schema_of(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL DEFAULT 'x', b INT UNIQUE);",
        );
        let b = schema_of("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, c INT);");
        let lines: Vec<String> = diff(&a, &b).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "table t: column a: NOT NULL expected",
                "table t: column a: default 'x' expected, found none",
                "table t: column b missing",
                "table t: unexpected column c",
                "table t: UNIQUE (b) missing",
            ]
        );
    }

    #[test]
    fn indexes_and_foreign_keys_are_compared() {
        let a = schema_of(
            "CREATE TABLE u (id INTEGER PRIMARY KEY); CREATE TABLE l (id INTEGER PRIMARY KEY, u INT REFERENCES u(id) ON DELETE CASCADE); CREATE INDEX ix_l_u ON l(u);",
        );
        let b = schema_of(
            "CREATE TABLE u (id INTEGER PRIMARY KEY); CREATE TABLE l (id INTEGER PRIMARY KEY, u INT);",
        );
        let lines: Vec<String> = diff(&a, &b).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "table l: index ix_l_u missing",
                "table l: foreign key (u) -> u(id) missing",
            ]
        );
    }
}
