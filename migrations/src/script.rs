//! SQL for a person to review and then run with the `sqlite3` shell: the way from a live schema
//! to a revision's ([`Database::diff_to`], `bot db diff --to N`), and a database's schema as a
//! first migration ([`Database::baseline`], `bot db baseline FILE`). Nothing here writes the
//! database it reads.
//!
//! # What each difference becomes
//!
//! The script runs in one transaction with foreign keys off (`PRAGMA foreign_keys` is ignored
//! inside a transaction), ends with a statement that fails when a row breaks a foreign key, and
//! is meant for `sqlite3 -bail`, which stops at the first error: then nothing has changed.
//!
//! - An unexpected view or trigger: `DROP VIEW` / `DROP TRIGGER` (its definition in the comment);
//!   a missing one: its `CREATE` from the revision; one that differs, or reads a table that is
//!   rebuilt or loses a column: dropped first and created again at the end.
//! - An index: `DROP INDEX` (unexpected), `CREATE INDEX` (missing), both (differs).
//! - A missing column: `ALTER TABLE ... ADD COLUMN` with the revision's own definition of it,
//!   when SQLite allows it on a table with rows (tried on a one-row table: no PRIMARY KEY or
//!   UNIQUE, no STORED generated column, a NOT NULL column needs a non-NULL default, a default
//!   must be a constant); else the table is rebuilt.
//! - An unexpected column: `ALTER TABLE ... DROP COLUMN`, when SQLite allows it; else a rebuild.
//! - A missing table: its `CREATE TABLE` and indexes from the revision; an unexpected table:
//!   `DROP TABLE`.
//! - Anything else about a table (a column's type, NOT NULL, default, key, collation or
//!   generated expression; UNIQUE, CHECK, foreign keys; WITHOUT ROWID, STRICT, AUTOINCREMENT):
//!   ALTER TABLE cannot change it, so the comment says so and the table is rebuilt by SQLite's
//!   procedure (sqlite.org/lang_altertable.html#otheralter): `CREATE TABLE new_X` as the
//!   revision defines it, copy the common columns, `DROP TABLE X`, rename, create its indexes.
//!
//! A statement that loses data (`DROP TABLE`, `DROP COLUMN`, a rebuild that leaves columns out)
//! is printed as a comment unless data loss is allowed. Before it is printed, the script is run
//! on an in-memory copy of the live schema (no rows): a change ALTER TABLE turns out not to make
//! falls back to a rebuild, and what the script as printed leaves different is listed.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::engine::{Database, Error, explain, history_tables, known_revision};
use crate::schema::sql::{Token, mentions, quote_name, tokenize};
use crate::schema::{self, Change, Difference, Object, Schema, Subject};

/// What one statement of a `bot db diff` script does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    /// `CREATE TABLE` of a table the revision has and the database lacks.
    CreateTable,
    /// `DROP TABLE` of a table the revision does not have (loses its rows).
    DropTable,
    /// `ALTER TABLE ... ADD COLUMN`.
    AddColumn,
    /// `ALTER TABLE ... DROP COLUMN` (loses its values).
    DropColumn,
    /// SQLite's 12-step rebuild: create `new_X`, copy, drop `X`, rename, create its indexes.
    RebuildTable,
    /// `CREATE INDEX`.
    CreateIndex,
    /// `DROP INDEX`.
    DropIndex,
    /// `CREATE VIEW`.
    CreateView,
    /// `DROP VIEW`.
    DropView,
    /// `CREATE TRIGGER`.
    CreateTrigger,
    /// `DROP TRIGGER`.
    DropTrigger,
    /// Words only: what SQL cannot do here, for a person.
    Manual,
}

/// One statement of a `bot db diff` script, with what it is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScriptStatement {
    /// What it does.
    pub kind: StatementKind,
    /// The table, view or trigger concerned, lower case.
    pub object: String,
    /// The SQL, ending with `;` (several statements for a rebuild); none for words only.
    pub sql: Option<String>,
    /// It keeps every row and value, and can run as printed.
    pub safe: bool,
    /// Printed as a comment: it loses data, and data loss was not allowed.
    pub commented: bool,
    /// Why, in words (one line or more).
    pub comment: String,
}

/// What `bot db diff --to N` prints: the SQL from the live schema to revision N's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiffScript {
    /// The revision the script leads to.
    pub to: u32,
    /// The revision the history records, if any.
    pub recorded: Option<u32>,
    /// The statements, in the order they run.
    pub statements: Vec<ScriptStatement>,
    /// How the live schema differs from revision `to`, as `status` words it.
    pub differences: Vec<String>,
    /// What differs still after the script as printed, checked on a copy of the schema (e.g.
    /// an unexpected table whose `DROP TABLE` is a comment).
    pub remaining: Vec<String>,
    /// The whole script, as printed.
    pub script: String,
}

/// A database's schema as a first migration file, for `bot db baseline`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    /// The database read.
    pub source: PathBuf,
    /// The `CREATE` statements, each ending with `;`, in an order they can run in.
    pub statements: Vec<String>,
    /// Tables left out: SQLite's own, and migration histories (`schema_history`,
    /// `alembic_version`, ...).
    pub left_out: Vec<String>,
    /// The file's text: a header that says where it came from and how to use it, then the
    /// statements.
    pub sql: String,
}

impl Database {
    /// The SQL that turns the live schema into revision `version`'s, with what cannot be done
    /// in words; statements that lose data are comments unless `allow_data_loss`. Reads only.
    pub fn diff_to(&self, version: u32, allow_data_loss: bool) -> Result<DiffScript, Error> {
        let catalog = self.catalog();
        known_revision(catalog, version)?;
        let err = |e| Error::from_sqlite(self.path(), e);
        let live = self.schema()?;
        let live_entries = read_entries(self.connection(), &history_tables()).map_err(err)?;
        let recorded = self
            .history()?
            .and_then(|rows| rows.iter().map(|r| r.version).max());
        let want_entries = revision_entries(catalog, version);
        let planned = plan_script(
            Target {
                version,
                schema: catalog.schema_at(version),
                entries: &want_entries,
            },
            &live,
            &live_entries,
            allow_data_loss,
            &|differences| explain(catalog, differences, version),
        );
        let script = render_script(
            &self.path().display().to_string(),
            version,
            recorded,
            &planned.statements,
            &planned.remaining,
        );
        Ok(DiffScript {
            to: version,
            recorded,
            statements: planned.statements,
            differences: planned.differences,
            remaining: planned.remaining,
            script,
        })
    }

    /// The schema of this database as a first migration: its tables, indexes, views and
    /// triggers from `sqlite_schema`, without SQLite's own tables and migration histories.
    pub fn baseline(&self) -> Result<Baseline, Error> {
        let err = |e| Error::from_sqlite(self.path(), e);
        let conn = self.connection();
        let skip = history_tables();
        let entries = read_entries(conn, &skip).map_err(err)?;
        let statements = creation_order(&entries, &self.schema()?)
            .into_iter()
            .map(|entry| format!("{};", entry.sql))
            .collect::<Vec<_>>();
        let mut left_out: Vec<String> = conn
            .prepare("SELECT name FROM main.sqlite_schema WHERE type = 'table' ORDER BY name")
            .and_then(|mut s| {
                s.query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(err)?;
        left_out
            .retain(|name| is_internal(name) || skip.iter().any(|s| s.eq_ignore_ascii_case(name)));
        let (now, version): (String, String) = conn
            .query_row(
                "SELECT strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), sqlite_version()",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(err)?;
        let source = self.path().to_owned();
        let sql = render_baseline(
            &source.display().to_string(),
            &now,
            &version,
            &left_out,
            &statements,
        );
        Ok(Baseline {
            source,
            statements,
            left_out,
            sql,
        })
    }
}

/// One row of `sqlite_schema`: the statement that made a table, index, view or trigger.
#[derive(Debug, Clone)]
struct Entry {
    /// `table`, `index`, `view` or `trigger`.
    kind: String,
    /// Its name, lower case.
    name: String,
    /// The table it belongs to (a view or a table: itself), lower case.
    table: String,
    /// The statement, as SQLite keeps it.
    sql: String,
}

/// Whether a name is one of SQLite's own (`sqlite_sequence`, `sqlite_stat1`, ...).
fn is_internal(name: &str) -> bool {
    name.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("sqlite_"))
}

/// The rows of `sqlite_schema` in the order they were made, without SQLite's own objects,
/// virtual tables' shadow tables, automatic indexes, and the tables named in `skip` with
/// what belongs to them.
fn read_entries(conn: &Connection, skip: &[&str]) -> rusqlite::Result<Vec<Entry>> {
    let shadow: BTreeSet<String> = conn
        .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'shadow'")?
        .query_map([], |row| row.get::<_, String>(0))?
        .map(|name| name.map(|n| n.to_ascii_lowercase()))
        .collect::<Result<_, _>>()?;
    let left_out = |name: &str| {
        is_internal(name)
            || shadow.contains(&name.to_ascii_lowercase())
            || skip.iter().any(|s| s.eq_ignore_ascii_case(name))
    };
    let mut statement = conn.prepare(
        "SELECT type, name, tbl_name, sql FROM main.sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid",
    )?;
    let rows = statement.query_map([], |row| {
        Ok(Entry {
            kind: row.get(0)?,
            name: row.get::<_, String>(1)?.to_ascii_lowercase(),
            table: row.get::<_, String>(2)?.to_ascii_lowercase(),
            sql: row.get(3)?,
        })
    })?;
    let mut entries = Vec::new();
    for entry in rows {
        let entry = entry?;
        if !left_out(&entry.name) && !left_out(&entry.table) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// The `sqlite_schema` rows of revision `version` of `catalog`, made by running its
/// migrations in memory.
fn revision_entries(catalog: &Catalog, version: u32) -> Vec<Entry> {
    let conn = Connection::open_in_memory().expect("an in-memory SQLite database opens");
    for m in &catalog.migrations()[..version as usize] {
        conn.execute_batch(m.up)
            .unwrap_or_else(|e| panic!("migrations/sql/{} does not apply: {e}", m.file));
    }
    read_entries(&conn, &[]).expect("an in-memory database's schema reads")
}

/// Tables (a table after the tables its foreign keys reference), then indexes, then views (a
/// view after the views it reads), then triggers (a trigger on a view needs the view); in the
/// order they were made where nothing else decides. `schema` is the one `entries` make.
fn creation_order<'e>(entries: &'e [Entry], schema: &Schema) -> Vec<&'e Entry> {
    let of = |kind: &'static str| entries.iter().filter(move |e| e.kind == kind);
    let references = |a: &Entry, b: &Entry| {
        schema
            .tables
            .get(&a.name)
            .is_some_and(|t| t.foreign_keys.iter().any(|k| k.table == b.name))
    };
    let reads = |a: &Entry, b: &Entry| mentions(&a.sql, &b.name);
    let mut ordered = dependencies_first(of("table").collect(), references);
    ordered.extend(of("index"));
    ordered.extend(dependencies_first(of("view").collect(), reads));
    ordered.extend(of("trigger"));
    ordered
}

/// `items` in their order, except that each comes after those it `depends` on (a cycle is
/// broken at the first item left).
fn dependencies_first(
    mut items: Vec<&Entry>,
    depends: impl Fn(&Entry, &Entry) -> bool,
) -> Vec<&Entry> {
    let mut ordered = Vec::with_capacity(items.len());
    while !items.is_empty() {
        let ready = items
            .iter()
            .position(|a| !items.iter().any(|b| b.name != a.name && depends(a, b)))
            .unwrap_or(0);
        ordered.push(items.remove(ready));
    }
    ordered
}

/// Byte ranges of the tokens of SQL text, coarsely: a quoted run, a bracket, a comma, a
/// semicolon, or a run of anything else; whitespace and comments are left out. Every
/// delimiter is ASCII, so every range starts and ends on a character boundary.
fn token_ranges(sql: &str) -> Vec<Range<usize>> {
    let bytes = sql.as_bytes();
    let starts_comment = |i: usize| {
        matches!(
            (bytes[i], bytes.get(i + 1)),
            (b'-', Some(b'-')) | (b'/', Some(b'*'))
        )
    };
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            i = sql[i + 2..]
                .find("*/")
                .map_or(bytes.len(), |p| i + 2 + p + 2);
        } else if matches!(c, b'\'' | b'"' | b'`' | b'[') {
            let close = if c == b'[' { b']' } else { c };
            let start = i;
            i += 1;
            while i < bytes.len() {
                if bytes[i] == close {
                    if close != b']' && bytes.get(i + 1) == Some(&close) {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            ranges.push(start..i.min(bytes.len()));
        } else if matches!(c, b'(' | b')' | b',' | b';') {
            ranges.push(i..i + 1);
            i += 1;
        } else {
            let start = i;
            while i < bytes.len()
                && !bytes[i].is_ascii_whitespace()
                && !matches!(
                    bytes[i],
                    b'(' | b')' | b',' | b';' | b'\'' | b'"' | b'`' | b'['
                )
                && !starts_comment(i)
            {
                i += 1;
            }
            ranges.push(start..i);
        }
    }
    ranges
}

/// A `CREATE TABLE` statement's text, split where a rebuild and ADD COLUMN need it.
struct TableText<'a> {
    sql: &'a str,
    /// Where the bracket after the table's name opens.
    open: usize,
    /// The items between the brackets (columns and table constraints), each from its first
    /// token to its last, comments around it left out.
    items: Vec<Range<usize>>,
}

impl<'a> TableText<'a> {
    /// Splits a `CREATE TABLE name (...) ...` statement; `None` for any other form.
    fn parse(sql: &'a str) -> Option<TableText<'a>> {
        let tokens = token_ranges(sql);
        let open_at = tokens.iter().position(|r| &sql[r.clone()] == "(")?;
        let head = tokenize(&sql[..tokens[open_at].start]);
        let is_create_table = head.len() >= 3
            && head[0].is("create")
            && head.iter().any(|t| t.is("table"))
            && !head.iter().any(|t| t.is("virtual") || t.is("as"))
            && head.last().and_then(Token::name).is_some();
        if !is_create_table {
            return None;
        }
        let mut items = Vec::new();
        let mut depth = 0usize;
        let mut item: Option<Range<usize>> = None;
        for range in &tokens[open_at..] {
            match &sql[range.clone()] {
                "(" => {
                    depth += 1;
                    if depth == 1 {
                        continue;
                    }
                }
                ")" if depth == 1 => {
                    items.extend(item.take());
                    return Some(TableText {
                        sql,
                        open: tokens[open_at].start,
                        items,
                    });
                }
                ")" => depth -= 1,
                "," if depth == 1 => {
                    items.extend(item.take());
                    continue;
                }
                _ => {}
            }
            item = Some(match item {
                Some(started) => started.start..range.end,
                None => range.clone(),
            });
        }
        None
    }

    /// The statement again, creating the table `name` instead.
    fn renamed(&self, name: &str) -> String {
        format!(
            "CREATE TABLE {} {}",
            quote_name(name),
            &self.sql[self.open..]
        )
    }

    /// The columns' definitions as written, in order, each with its name (lower case).
    fn columns(&self) -> Vec<(String, &'a str)> {
        self.items
            .iter()
            .map(|r| &self.sql[r.clone()])
            .filter_map(|item| {
                let tokens = tokenize(item);
                let first = tokens.first()?;
                let constraint = ["constraint", "primary", "unique", "check", "foreign"]
                    .iter()
                    .any(|k| first.is(k));
                let name = match first {
                    Token::Str(s) => s.trim_matches('\'').to_ascii_lowercase(),
                    other => other.name()?.to_owned(),
                };
                (!constraint).then_some((name, item))
            })
            .collect()
    }

    /// The column names, lower case, in the order the statement declares them.
    fn column_names(&self) -> Vec<String> {
        self.columns().into_iter().map(|(name, _)| name).collect()
    }

    /// The definition of column `name` (lower case) as written, e.g. `last_name VARCHAR(128)`.
    fn column(&self, name: &str) -> Option<&'a str> {
        self.columns()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, item)| item)
    }
}

/// Why SQLite refuses `ALTER TABLE ... ADD COLUMN definition` on `table` when it has rows
/// (tried on a one-row table with the same column names); `None` when it allows it.
fn add_column_refusal(table: &schema::Table, definition: &str) -> Option<String> {
    let attempt = || -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        let columns: Vec<String> = table.columns.keys().map(|c| quote_name(c)).collect();
        conn.execute_batch(&format!(
            "CREATE TABLE probe ({}); INSERT INTO probe DEFAULT VALUES;",
            columns.join(", ")
        ))?;
        conn.execute_batch(&format!("ALTER TABLE probe ADD COLUMN {definition}"))
    };
    attempt().err().map(|e| match e {
        rusqlite::Error::SqliteFailure(_, Some(message)) => message,
        other => other.to_string(),
    })
}

/// What running statements on a copy of a schema showed.
struct Checked {
    /// Statements SQLite refused, by index, with its message.
    failures: Vec<(usize, String)>,
    /// How the copy differs from the revision afterwards.
    remaining: Vec<Difference>,
}

/// Runs the statements `chosen` picks (each on its own, going on after a failure) on an
/// in-memory copy of the schema `entries` describe, and compares the result with `want`.
fn run_on_copy(
    entries: &[Entry],
    statements: &[ScriptStatement],
    chosen: impl Fn(&ScriptStatement) -> bool,
    want: &Schema,
) -> Result<Checked, String> {
    let copy = Connection::open_in_memory().map_err(|e| e.to_string())?;
    for entry in entries {
        copy.execute_batch(&entry.sql)
            .map_err(|e| format!("{}: {e}", entry.name))?;
    }
    let mut failures = Vec::new();
    for (i, statement) in statements.iter().enumerate() {
        let Some(sql) = statement.sql.as_deref().filter(|_| chosen(statement)) else {
            continue;
        };
        if let Err(e) = copy.execute_batch(sql) {
            failures.push((i, e.to_string()));
        }
    }
    let after = schema::read(&copy, &history_tables()).map_err(|e| e.to_string())?;
    Ok(Checked {
        failures,
        remaining: schema::diff(want, &after),
    })
}

/// The schema a script leads to: a revision's.
struct Target<'a> {
    version: u32,
    schema: &'a Schema,
    entries: &'a [Entry],
}

/// A script's statements and what they leave.
struct Planned {
    /// The statements, in order.
    statements: Vec<ScriptStatement>,
    /// The differences the script is for, in words.
    differences: Vec<String>,
    /// What differs still after the statements the script runs as printed.
    remaining: Vec<String>,
}

/// The statements from the live schema to `target`'s, and what differs still after those the
/// script runs as printed (checked on a copy of the schema); `words` says each difference.
fn plan_script(
    target: Target<'_>,
    live: &Schema,
    live_entries: &[Entry],
    allow_data_loss: bool,
    words: &dyn Fn(&[Difference]) -> Vec<String>,
) -> Planned {
    let differences = schema::diff(target.schema, live);
    let said = words(&differences);
    let mut plan = Plan {
        version: target.version,
        want: target.schema,
        want_entries: target.entries,
        live,
        live_entries,
        differences: &differences,
        words: &said,
        rebuild: BTreeMap::new(),
    };
    plan.choose_rebuilds();
    let mut statements = plan.statements();
    for statement in &mut statements {
        statement.commented = !statement.safe && statement.sql.is_some() && !allow_data_loss;
    }
    let remaining = match run_on_copy(live_entries, &statements, |s| !s.commented, target.schema) {
        Ok(check) => check
            .failures
            .iter()
            .map(|(i, e)| {
                let statement = &statements[*i];
                let sql = statement.sql.as_deref().unwrap_or_default();
                match statement.kind {
                    StatementKind::RebuildTable => {
                        format!("the rebuild of table {} fails: {e}", statement.object)
                    }
                    _ => format!("`{sql}` fails: {e}"),
                }
            })
            .chain(words(&check.remaining))
            .collect(),
        Err(e) => vec![format!(
            "the script could not be checked on a copy of the schema: {e}"
        )],
    };
    Planned {
        statements,
        differences: said,
        remaining,
    }
}

/// The decisions behind a diff script.
struct Plan<'a> {
    version: u32,
    want: &'a Schema,
    want_entries: &'a [Entry],
    live: &'a Schema,
    live_entries: &'a [Entry],
    differences: &'a [Difference],
    /// `explain`'s line for each difference, in the same order.
    words: &'a [String],
    /// The tables to rebuild, each with why ALTER TABLE cannot do it.
    rebuild: BTreeMap<String, Vec<String>>,
}

impl Plan<'_> {
    /// The differences about table `table` (in both schemas), with their words.
    fn of_table<'b>(&'b self, table: &'b str) -> impl Iterator<Item = (&'b Difference, &'b str)> {
        self.differences
            .iter()
            .zip(self.words.iter())
            .filter(move |(d, _)| matches!(&d.object, Object::Table(t) if t == table))
            .map(|(d, w)| (d, w.as_str()))
    }

    /// The tables both schemas have and that differ.
    fn changed_tables(&self) -> BTreeSet<String> {
        self.differences
            .iter()
            .filter(|d| d.subject != Subject::Whole)
            .filter_map(|d| match &d.object {
                Object::Table(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    fn want_entry(&self, kind: &str, name: &str) -> Option<&Entry> {
        self.want_entries
            .iter()
            .find(|e| e.kind == kind && e.name == name)
    }

    fn live_entry(&self, kind: &str, name: &str) -> Option<&Entry> {
        self.live_entries
            .iter()
            .find(|e| e.kind == kind && e.name == name)
    }

    /// The definition of a missing column, and why ADD COLUMN cannot add it, if it cannot.
    fn added_column(&self, table: &str, column: &str) -> Result<&str, String> {
        let definition = self
            .want_entry("table", table)
            .and_then(|e| TableText::parse(&e.sql))
            .and_then(|text| text.column(column))
            .ok_or_else(|| format!("revision {}'s definition of it was not found", self.version))?;
        match add_column_refusal(&self.live.tables[table], definition) {
            None => Ok(definition),
            Some(refusal) => Err(format!("ALTER TABLE ADD COLUMN refuses it: {refusal}")),
        }
    }

    /// Picks the tables to rebuild: those with a difference ALTER TABLE cannot make, then
    /// those where the ALTER TABLE statements fail or fall short on a copy of the schema.
    fn choose_rebuilds(&mut self) {
        for table in self.changed_tables() {
            let mut reasons = Vec::new();
            for (d, words) in self.of_table(&table) {
                match (&d.subject, d.change) {
                    (Subject::Column(column), Change::Missing) => {
                        if let Err(why) = self.added_column(&table, column) {
                            reasons.push(format!("{}: {why}", within(words, &table)));
                        }
                    }
                    (Subject::Column(_), Change::Unexpected) | (Subject::Index(_), _) => {}
                    _ => reasons.push(within(words, &table).to_owned()),
                }
            }
            if !reasons.is_empty() {
                self.rebuild.insert(table, reasons);
            }
        }
        // Each round rebuilds one more table or ends: at most one round per table.
        loop {
            let statements = self.statements();
            let Ok(checked) = run_on_copy(self.live_entries, &statements, |_| true, self.want)
            else {
                return;
            };
            let changed = self.changed_tables();
            let mut more = BTreeMap::<String, Vec<String>>::new();
            for (i, error) in &checked.failures {
                let statement = &statements[*i];
                let light = matches!(
                    statement.kind,
                    StatementKind::AddColumn
                        | StatementKind::DropColumn
                        | StatementKind::CreateIndex
                        | StatementKind::DropIndex
                );
                if light
                    && changed.contains(&statement.object)
                    && !self.rebuild.contains_key(&statement.object)
                {
                    let sql = statement.sql.as_deref().unwrap_or_default();
                    more.entry(statement.object.clone())
                        .or_default()
                        .push(format!("SQLite refuses `{sql}`: {error}"));
                }
            }
            for d in &checked.remaining {
                if let Object::Table(table) = &d.object
                    && changed.contains(table)
                    && !self.rebuild.contains_key(table)
                {
                    more.entry(table.clone())
                        .or_default()
                        .push(format!("{}: ALTER TABLE cannot make it", d.what));
                }
            }
            if more.is_empty() {
                return;
            }
            self.rebuild.extend(more);
        }
    }

    /// The script's statements, in the order they run.
    fn statements(&self) -> Vec<ScriptStatement> {
        let version = self.version;
        let mut out = Vec::new();
        let words_for = |object: &Object| {
            self.differences
                .iter()
                .zip(self.words)
                .find(|(d, _)| &d.object == object)
                .map_or_else(String::new, |(_, w)| w.clone())
        };
        // Tables whose definition ALTER TABLE changes: views and triggers that read them must
        // go first (SQLite checks the whole schema after ALTER TABLE) and come back at the end.
        let dropping_columns: BTreeSet<String> = self
            .differences
            .iter()
            .filter(|d| matches!(d.subject, Subject::Column(_)) && d.change == Change::Unexpected)
            .map(|d| d.table().to_owned())
            .collect();
        let altered: BTreeSet<&String> = self.rebuild.keys().chain(&dropping_columns).collect();
        let reads_altered = |sql: &str| altered.iter().find(|t| mentions(sql, t)).cloned();

        let mut dropped_views = BTreeSet::new();
        for entry in self.live_entries.iter().filter(|e| e.kind == "view") {
            let name = &entry.name;
            let comment = match self.want.views.get(name) {
                None => format!(
                    "{}\nits definition: {}",
                    words_for(&Object::View(name.clone())),
                    entry.sql
                ),
                Some(want) if want != &self.live.views[name] => format!(
                    "{}\ncreated again below as revision {version} has it",
                    words_for(&Object::View(name.clone()))
                ),
                Some(_) => match reads_altered(&entry.sql) {
                    Some(table) => format!(
                        "view {name} reads table {table}, which changes below: dropped here, created again at the end"
                    ),
                    None => continue,
                },
            };
            dropped_views.insert(name.clone());
            out.push(statement(
                StatementKind::DropView,
                name,
                Some(format!("DROP VIEW {};", quote_name(name))),
                true,
                comment,
            ));
        }
        let mut dropped_triggers = BTreeSet::new();
        for entry in self.live_entries.iter().filter(|e| e.kind == "trigger") {
            let name = &entry.name;
            let object = Object::Trigger {
                name: name.clone(),
                table: entry.table.clone(),
            };
            let comment = match self.want.triggers.get(name) {
                None => format!("{}\nits definition: {}", words_for(&object), entry.sql),
                Some(want) if want != &self.live.triggers[name] => format!(
                    "{}\ncreated again below as revision {version} has it",
                    words_for(&object)
                ),
                Some(_) if self.rebuild.contains_key(&entry.table) => format!(
                    "trigger {name} is on table {}, which is rebuilt below: dropped here, created again at the end",
                    entry.table
                ),
                Some(_) => match reads_altered(&entry.sql) {
                    Some(table) => format!(
                        "trigger {name} reads table {table}, which changes below: dropped here, created again at the end"
                    ),
                    None => continue,
                },
            };
            dropped_triggers.insert(name.clone());
            out.push(statement(
                StatementKind::DropTrigger,
                name,
                Some(format!("DROP TRIGGER {};", quote_name(name))),
                true,
                comment,
            ));
        }
        for (d, words) in self.differences.iter().zip(self.words) {
            let (Object::Table(table), Subject::Index(index)) = (&d.object, &d.subject) else {
                continue;
            };
            if self.rebuild.contains_key(table) || d.change == Change::Missing {
                continue;
            }
            let comment = match (d.change, self.live_entry("index", index)) {
                (Change::Unexpected, Some(entry)) => {
                    format!("{words}\nits definition: {}", entry.sql)
                }
                _ => format!("{words}\ncreated again below as revision {version} has it"),
            };
            out.push(statement(
                StatementKind::DropIndex,
                table,
                Some(format!("DROP INDEX {};", quote_name(index))),
                true,
                comment,
            ));
        }
        for table in self.changed_tables() {
            if let Some(reasons) = self.rebuild.get(&table) {
                out.push(self.rebuilt(&table, reasons));
                continue;
            }
            for (d, words) in self.of_table(&table) {
                let Subject::Column(column) = &d.subject else {
                    continue;
                };
                let alter = format!("ALTER TABLE {}", quote_name(&table));
                match d.change {
                    Change::Unexpected => out.push(statement(
                        StatementKind::DropColumn,
                        &table,
                        Some(format!("{alter} DROP COLUMN {};", quote_name(column))),
                        false,
                        format!("{words}\ndropping it loses its values"),
                    )),
                    Change::Missing => match self.added_column(&table, column) {
                        Ok(definition) => out.push(statement(
                            StatementKind::AddColumn,
                            &table,
                            Some(format!("{alter} ADD COLUMN {definition};")),
                            true,
                            words.to_owned(),
                        )),
                        Err(why) => out.push(statement(
                            StatementKind::Manual,
                            &table,
                            None,
                            false,
                            format!("{words}: {why}"),
                        )),
                    },
                    Change::Differs => {}
                }
            }
        }
        for (d, words) in self.differences.iter().zip(self.words) {
            if let (Object::Table(table), Subject::Whole, Change::Unexpected) =
                (&d.object, &d.subject, d.change)
            {
                out.push(statement(
                    StatementKind::DropTable,
                    table,
                    Some(format!("DROP TABLE {};", quote_name(table))),
                    false,
                    format!(
                        "{words}\ndropping it loses its rows: keep a copy first (`bot db backup FILE`), or keep the table by adding it in a migration"
                    ),
                ));
            }
        }
        let missing_tables: BTreeSet<&String> = self
            .want
            .tables
            .keys()
            .filter(|t| !self.live.tables.contains_key(*t))
            .collect();
        let ordered = creation_order(self.want_entries, self.want);
        for entry in ordered.iter().filter(|e| e.kind == "table") {
            if missing_tables.contains(&entry.name) {
                out.push(statement(
                    StatementKind::CreateTable,
                    &entry.name,
                    Some(format!("{};", entry.sql)),
                    true,
                    words_for(&Object::Table(entry.name.clone())),
                ));
            }
        }
        for entry in self.want_entries.iter().filter(|e| e.kind == "index") {
            let difference = self.differences.iter().zip(self.words).find(|(d, _)| {
                d.object == Object::Table(entry.table.clone())
                    && d.subject == Subject::Index(entry.name.clone())
                    && d.change != Change::Unexpected
            });
            let comment = if missing_tables.contains(&entry.table) {
                format!(
                    "table {}: index {}, with the table created above",
                    entry.table, entry.name
                )
            } else if self.rebuild.contains_key(&entry.table) {
                continue;
            } else if let Some((_, words)) = difference {
                words.clone()
            } else {
                continue;
            };
            out.push(statement(
                StatementKind::CreateIndex,
                &entry.table,
                Some(format!("{};", entry.sql)),
                true,
                comment,
            ));
        }
        for entry in creation_order(self.want_entries, self.want) {
            let (kind, present, dropped) = match entry.kind.as_str() {
                "view" => (
                    StatementKind::CreateView,
                    self.live.views.contains_key(&entry.name),
                    dropped_views.contains(&entry.name),
                ),
                "trigger" => (
                    StatementKind::CreateTrigger,
                    self.live.triggers.contains_key(&entry.name)
                        && !missing_tables.contains(&entry.table),
                    dropped_triggers.contains(&entry.name),
                ),
                _ => continue,
            };
            let comment = if !present {
                let object = if kind == StatementKind::CreateView {
                    Object::View(entry.name.clone())
                } else {
                    Object::Trigger {
                        name: entry.name.clone(),
                        table: entry.table.clone(),
                    }
                };
                words_for(&object)
            } else if dropped {
                format!(
                    "{} {}, as revision {version} has it",
                    entry.kind, entry.name
                )
            } else {
                continue;
            };
            out.push(statement(
                kind,
                &entry.name,
                Some(format!("{};", entry.sql)),
                true,
                comment,
            ));
        }
        out
    }

    /// SQLite's rebuild of `table` as revision N defines it, with what it cannot keep.
    fn rebuilt(&self, table: &str, reasons: &[String]) -> ScriptStatement {
        let version = self.version;
        let mut comment = format!("table {table}: cannot be done with ALTER TABLE:");
        for reason in reasons {
            comment.push_str(&format!("\n  {reason}"));
        }
        let manual = |comment: String, why: &str| ScriptStatement {
            kind: StatementKind::Manual,
            object: table.to_owned(),
            sql: None,
            safe: false,
            commented: false,
            comment: format!("{comment}\n{why}"),
        };
        let live_entry = self.live_entry("table", table);
        if live_entry.is_some_and(|e| tokenize(&e.sql).iter().take(3).any(|t| t.is("virtual"))) {
            return manual(
                comment,
                "it is a virtual table, which a rebuild cannot copy: drop it and create revision's by hand",
            );
        }
        let Some(text) = self
            .want_entry("table", table)
            .and_then(|e| TableText::parse(&e.sql))
        else {
            return manual(
                comment,
                &format!(
                    "revision {version}'s CREATE TABLE for it cannot be rewritten; rebuild it by hand (sqlite.org/lang_altertable.html#otheralter)"
                ),
            );
        };
        let want = &self.want.tables[table];
        let live = &self.live.tables[table];
        let taken: BTreeSet<&String> = self
            .live_entries
            .iter()
            .chain(self.want_entries)
            .map(|e| &e.name)
            .collect();
        let new_name = (1..)
            .map(|n| match n {
                1 => format!("new_{table}"),
                n => format!("new_{table}_{n}"),
            })
            .find(|name| !taken.contains(name))
            .expect("some name is free");
        let copied: Vec<String> = text
            .column_names()
            .into_iter()
            .filter(|name| {
                want.columns
                    .get(name)
                    .is_some_and(|c| c.generated.is_none() && live.columns.contains_key(name))
            })
            .map(|name| quote_name(&name))
            .collect();
        let lost: Vec<&String> = live
            .columns
            .keys()
            .filter(|c| !want.columns.contains_key(*c))
            .collect();
        let added: Vec<(&String, &schema::Column)> = want
            .columns
            .iter()
            .filter(|(name, column)| {
                column.generated.is_none() && !live.columns.contains_key(*name)
            })
            .collect();
        let (q_table, q_new) = (quote_name(table), quote_name(&new_name));
        let mut sql = format!("{};\n", text.renamed(&new_name));
        if !copied.is_empty() {
            let columns = copied.join(", ");
            sql.push_str(&format!(
                "INSERT INTO {q_new} ({columns})\n    SELECT {columns}\n    FROM {q_table};\n"
            ));
        }
        sql.push_str(&format!(
            "DROP TABLE {q_table};\nALTER TABLE {q_new} RENAME TO {q_table};"
        ));
        for entry in self
            .want_entries
            .iter()
            .filter(|e| e.kind == "index" && e.table == table)
        {
            sql.push_str(&format!("\n{};", entry.sql));
        }
        let also: Vec<&str> = self
            .of_table(table)
            .map(|(_, words)| within(words, table))
            .filter(|words| !reasons.iter().any(|r| r.starts_with(words)))
            .collect();
        if !also.is_empty() {
            comment.push_str("\nthe rebuild also takes care of:");
            for words in also {
                comment.push_str(&format!("\n  {words}"));
            }
        }
        comment.push_str(&format!(
            "\nso it is rebuilt as revision {version} defines it (sqlite.org/lang_altertable.html#otheralter): create {new_name}, copy the rows, drop {table}, rename {new_name} to {table}, create its indexes again"
        ));
        comment.push_str(&format!(
            "\nthe copy fails, and with sqlite3 -bail nothing changes, if a row breaks a constraint of revision {version}'s definition"
        ));
        for (name, column) in &added {
            if column.not_null && column.default.is_none() && !column.rowid_alias {
                comment.push_str(&format!(
                    "\ncolumn {name} is NOT NULL without a default and {table} has no such column: the copy fails on a table with rows unless you add {name} and a value for it to the INSERT and the SELECT"
                ));
            } else if let Some(default) = &column.default {
                comment.push_str(&format!(
                    "\ncolumn {name} is new: every row copied gets its default, {default}"
                ));
            }
        }
        if !lost.is_empty() {
            let names: Vec<&str> = lost.iter().map(|c| c.as_str()).collect();
            comment.push_str(&format!(
                "\nthe copy leaves out column{} {}, which revision {version} does not have: {} values are lost",
                if lost.len() == 1 { "" } else { "s" },
                names.join(", "),
                if lost.len() == 1 { "its" } else { "their" }
            ));
        }
        ScriptStatement {
            kind: StatementKind::RebuildTable,
            object: table.to_owned(),
            sql: Some(sql),
            safe: lost.is_empty(),
            commented: false,
            comment,
        }
    }
}

/// A difference's words without the `table X: ` they start with.
fn within<'w>(words: &'w str, table: &str) -> &'w str {
    words
        .strip_prefix(&format!("table {table}: "))
        .unwrap_or(words)
}

/// A statement, not yet decided whether it is printed as a comment.
fn statement(
    kind: StatementKind,
    object: &str,
    sql: Option<String>,
    safe: bool,
    comment: String,
) -> ScriptStatement {
    ScriptStatement {
        kind,
        object: object.to_owned(),
        sql,
        safe,
        commented: false,
        comment,
    }
}

/// Prefixes every line with `-- `.
fn as_comment(text: &str) -> String {
    text.lines()
        .map(|line| {
            if line.is_empty() {
                "--".to_owned()
            } else {
                format!("-- {line}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The diff script as printed: a header, then the statements in one transaction.
fn render_script(
    database: &str,
    version: u32,
    recorded: Option<u32>,
    statements: &[ScriptStatement],
    remaining: &[String],
) -> String {
    let database = database.replace(['\n', '\r'], " ");
    let mut header = format!(
        "`bot db diff --to {version}`: SQL that turns the schema of {database} into revision {version}'s.\n"
    );
    if statements.is_empty() {
        header.push_str(&format!(
            "The schema is revision {version}'s: nothing to do."
        ));
        return format!("{}\n", as_comment(&header));
    }
    header.push_str(
        "Nothing has run. Review it, then run it on a copy of the database with the sqlite3 shell:\n  sqlite3 -bail COPY.db < THIS_FILE.sql\n-bail stops at the first error, and then nothing has changed: it all runs in one transaction.\n",
    );
    let commented = statements.iter().filter(|s| s.commented).count();
    if commented == 1 {
        header.push_str(
            "1 statement loses data and is printed as a comment: read it; --allow-data-loss prints it as SQL.\n",
        );
    } else if commented > 1 {
        header.push_str(&format!(
            "{commented} statements lose data and are printed as comments: read them; --allow-data-loss prints them as SQL.\n"
        ));
    }
    let manual = statements
        .iter()
        .filter(|s| s.kind == StatementKind::Manual)
        .count();
    if manual > 0 {
        header.push_str(&format!(
            "{manual} change{} cannot be written as SQL here: see the comments without SQL below.\n",
            if manual == 1 { "" } else { "s" }
        ));
    }
    if remaining.is_empty() {
        header.push_str(&format!(
            "Checked on a copy of the schema: after it, the schema matches revision {version}.\n"
        ));
    } else {
        header.push_str("Checked on a copy of the schema: after it, these differences remain:\n");
        for line in remaining {
            header.push_str(&format!("  {line}\n"));
        }
    }
    let once = if remaining.is_empty() {
        "After it"
    } else {
        "Once nothing remains"
    };
    header.push_str(&match recorded {
        Some(r) if r == version => format!(
            "The history records revision {version}: {} the database is no longer drifted.",
            once.to_lowercase()
        ),
        Some(r) => format!(
            "The history records revision {r}, not {version}: {}, `bot db stamp {version}` records revision {version}.",
            once.to_lowercase()
        ),
        None => format!(
            "{once}, `bot db adopt` records revision {version} (`cargo xtask prod-migrate` adopts it and migrates)."
        ),
    });
    let mut out = format!(
        "{}\n\nPRAGMA foreign_keys = OFF;\nBEGIN;\n",
        as_comment(&header)
    );
    for statement in statements {
        out.push('\n');
        out.push_str(&as_comment(&statement.comment));
        out.push('\n');
        match (&statement.sql, statement.commented) {
            (Some(sql), false) => {
                out.push_str(sql);
                out.push('\n');
            }
            (Some(sql), true) => {
                out.push_str(
                    "-- loses data; uncomment it (or pass --allow-data-loss) to run it:\n",
                );
                out.push_str(&as_comment(sql));
                out.push('\n');
            }
            (None, _) => {}
        }
    }
    out.push_str(
        "\n-- No row may break a foreign key: this stops the script, and nothing changes, if one does.\n\
         CREATE TEMP TABLE bot_db_diff_check (rows_breaking_foreign_keys INTEGER CHECK (rows_breaking_foreign_keys = 0));\n\
         INSERT INTO temp.bot_db_diff_check SELECT count(*) FROM pragma_foreign_key_check;\n\
         DROP TABLE temp.bot_db_diff_check;\n\
         COMMIT;\n\
         PRAGMA foreign_keys = ON;\n",
    );
    out
}

/// The baseline file: a header, then the statements.
fn render_baseline(
    source: &str,
    now: &str,
    sqlite_version: &str,
    left_out: &[String],
    statements: &[String],
) -> String {
    let source = source.replace(['\n', '\r'], " ");
    let left_out = if left_out.is_empty() {
        "Nothing was left out.".to_owned()
    } else {
        format!(
            "Left out: {} (SQLite's own tables and migration histories).",
            left_out.join(", ")
        )
    };
    let header = format!(
        "Revision 1 (baseline): the schema of {source} on {now} (SQLite {sqlite_version}),\n\
         printed by `bot db baseline`: its tables, indexes, views and triggers, in an order they can be\n\
         created in. {left_out}\n\
         \n\
         For a project that starts using this workspace with an existing database: save it as\n\
         migrations/sql/0001_baseline.up.sql in place of the files there, and write each later change\n\
         as the next file (0002_<name>.up.sql, and a .down.sql where it can be undone). The existing\n\
         database then reads as `unstamped`, matching revision 1: `bot db adopt` records it (or\n\
         `cargo xtask prod-migrate`, which adopts and migrates); a new database gets it from\n\
         `bot db upgrade`. It has no .down.sql: undoing it would drop every table."
    );
    let mut out = format!("{}\n", as_comment(&header));
    for statement in statements {
        out.push('\n');
        out.push_str(statement);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{MIGRATIONS, head, schema_at};

    fn database(sql: &str) -> (tempdir::Dir, Database) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("db.sqlite");
        Connection::open(&path).unwrap().execute_batch(sql).unwrap();
        let db = Database::open_read_only(&path).unwrap().unwrap();
        (dir, db)
    }

    mod tempdir {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct Dir(pub PathBuf);

        impl Dir {
            pub fn new() -> Dir {
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let dir = std::env::temp_dir().join(format!(
                    "script-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&dir).unwrap();
                Dir(dir)
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const REVISION_1: &str = include_str!("../sql/0001_initial.up.sql");

    /// Runs the script on the database's connection, as `sqlite3` would, and returns the
    /// differences to the revision left.
    fn applied(sql: &str, version: u32, allow: bool) -> (DiffScript, Vec<String>) {
        let (dir, db) = database(sql);
        let script = db.diff_to(version, allow).unwrap();
        drop(db);
        let conn = Connection::open(dir.0.join("db.sqlite")).unwrap();
        conn.execute_batch(&script.script)
            .unwrap_or_else(|e| panic!("{e}\n{}", script.script));
        let after = schema::read(&conn, &history_tables()).unwrap();
        let left = schema::diff(schema_at(version), &after)
            .iter()
            .map(ToString::to_string)
            .collect();
        (script, left)
    }

    fn kinds(script: &DiffScript) -> Vec<StatementKind> {
        script.statements.iter().map(|s| s.kind).collect()
    }

    /// The script from schema `live` (with its rows) to schema `want`, as if `want` were a
    /// revision, run on `live`: its statements' kinds, and the differences left.
    fn between(live: &str, want: &str) -> (Vec<StatementKind>, Vec<String>) {
        let target = Connection::open_in_memory().unwrap();
        target.execute_batch(want).unwrap();
        let want_schema = schema::read(&target, &[]).unwrap();
        let want_entries = read_entries(&target, &[]).unwrap();
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(live).unwrap();
        let live_schema = schema::read(&conn, &[]).unwrap();
        let live_entries = read_entries(&conn, &[]).unwrap();
        let say = |d: &[Difference]| d.iter().map(ToString::to_string).collect::<Vec<_>>();
        let Planned {
            statements,
            remaining,
            ..
        } = plan_script(
            Target {
                version: 1,
                schema: &want_schema,
                entries: &want_entries,
            },
            &live_schema,
            &live_entries,
            true,
            &say,
        );
        assert!(remaining.is_empty(), "{remaining:?}");
        let script = render_script("live", 1, None, &statements, &remaining);
        conn.execute_batch(&script)
            .unwrap_or_else(|e| panic!("{e}\n{script}"));
        let left = say(&schema::diff(
            &want_schema,
            &schema::read(&conn, &[]).unwrap(),
        ));
        (statements.iter().map(|s| s.kind).collect(), left)
    }

    #[test]
    fn views_and_triggers_on_a_rebuilt_table_are_dropped_first_and_created_again() {
        let common = "CREATE VIEW v AS SELECT a FROM t;
             CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END;
             CREATE TABLE other (id INTEGER PRIMARY KEY);
             CREATE TRIGGER reads_t AFTER DELETE ON other BEGIN DELETE FROM t WHERE id = old.id; END;";
        let (kinds, left) = between(
            &format!(
                "CREATE TABLE t (id BIGINT PRIMARY KEY, a TEXT); {common} INSERT INTO t VALUES (1, 'x');"
            ),
            &format!("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT); {common}"),
        );
        assert_eq!(
            kinds,
            [
                StatementKind::DropView,
                StatementKind::DropTrigger,
                StatementKind::DropTrigger,
                StatementKind::RebuildTable,
                StatementKind::CreateView,
                StatementKind::CreateTrigger,
                StatementKind::CreateTrigger,
            ]
        );
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_missing_table_comes_with_its_indexes_and_triggers_and_a_changed_index_is_made_again() {
        let base = "CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT, age INT);";
        let (kinds, left) = between(
            &format!("{base} CREATE INDEX ix_u ON u (name); INSERT INTO u VALUES (1, 'a', 3);"),
            &format!(
                "{base} CREATE UNIQUE INDEX ix_u ON u (name, age DESC) WHERE age > 0;
                 CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, u INT REFERENCES u (id)) STRICT;
                 CREATE INDEX ix_log_u ON log (u);
                 CREATE TRIGGER log_u AFTER INSERT ON u BEGIN INSERT INTO log (u) VALUES (new.id); END;"
            ),
        );
        assert_eq!(
            kinds,
            [
                StatementKind::DropIndex,
                StatementKind::CreateTable,
                StatementKind::CreateIndex,
                StatementKind::CreateIndex,
                StatementKind::CreateTrigger,
            ]
        );
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn table_options_and_constraints_rebuild_and_keep_the_rows() {
        for (live, want) in [
            (
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT)",
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT) STRICT",
            ),
            (
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT)",
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL) WITHOUT ROWID",
            ),
            (
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT)",
                "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, a TEXT COLLATE NOCASE UNIQUE CHECK (a != ''))",
            ),
            (
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT AS (upper(a)) STORED)",
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT AS (lower(a)) VIRTUAL)",
            ),
        ] {
            let (kinds, left) = between(
                &format!("{live}; INSERT INTO t (id, a) VALUES (1, 'x');"),
                want,
            );
            assert_eq!(kinds, [StatementKind::RebuildTable], "{want}");
            assert!(left.is_empty(), "{want}: {left:?}");
        }
    }

    #[test]
    fn token_ranges_keep_quotes_and_skip_comments() {
        let sql = "CREATE TABLE \"a (b\" ( x INT -- note, here\n, 'y' TEXT /* c ) */ )";
        let tokens: Vec<&str> = token_ranges(sql).into_iter().map(|r| &sql[r]).collect();
        assert_eq!(
            tokens,
            [
                "CREATE", "TABLE", "\"a (b\"", "(", "x", "INT", ",", "'y'", "TEXT", ")"
            ]
        );
    }

    #[test]
    fn a_create_table_is_split_into_its_items_and_renamed() {
        let sql = "CREATE TABLE \"users\" (\n\tid INTEGER NOT NULL, -- the key\n\tname VARCHAR(64) DEFAULT 'a,b' CHECK (length(name) > 0),\n\tPRIMARY KEY (id)\n) WITHOUT ROWID";
        let text = TableText::parse(sql).unwrap();
        assert_eq!(text.column("id"), Some("id INTEGER NOT NULL"));
        assert_eq!(
            text.column("name"),
            Some("name VARCHAR(64) DEFAULT 'a,b' CHECK (length(name) > 0)")
        );
        assert_eq!(text.column("primary"), None);
        assert_eq!(text.items.len(), 3);
        assert!(
            text.renamed("new_users")
                .starts_with("CREATE TABLE new_users (\n\tid INTEGER")
        );
        assert!(text.renamed("new_users").ends_with(") WITHOUT ROWID"));
        assert!(TableText::parse("CREATE VIRTUAL TABLE t USING fts5(a)").is_none());
    }

    #[test]
    fn add_column_is_refused_where_sqlite_refuses_it_on_a_table_with_rows() {
        let table = schema::Table {
            columns: [(
                "a".to_owned(),
                schema_at(1).tables["users"].columns["id"].clone(),
            )]
            .into(),
            ..Default::default()
        };
        assert_eq!(add_column_refusal(&table, "b TEXT DEFAULT 'x'"), None);
        assert_eq!(
            add_column_refusal(&table, "b INT NOT NULL DEFAULT (0)"),
            None
        );
        for (definition, message) in [
            ("b INT NOT NULL", "NOT NULL"),
            (
                "b DATETIME DEFAULT CURRENT_TIMESTAMP",
                "non-constant default",
            ),
            ("b INT PRIMARY KEY", "PRIMARY KEY"),
            ("b INT UNIQUE", "UNIQUE"),
            ("b INT AS (a + 1) STORED", "STORED"),
            ("b INT DEFAULT 0 CHECK (b > 0)", "CHECK"),
        ] {
            let refusal = add_column_refusal(&table, definition).unwrap_or_default();
            assert!(refusal.contains(message), "{definition}: {refusal:?}");
        }
    }

    #[test]
    fn a_missing_column_is_added_with_the_revisions_definition() {
        let (script, left) = applied(
            &REVISION_1.replace("\tlast_name VARCHAR(128),\n", ""),
            1,
            false,
        );
        assert_eq!(kinds(&script), [StatementKind::AddColumn]);
        assert_eq!(
            script.statements[0].sql.as_deref(),
            Some("ALTER TABLE users ADD COLUMN last_name VARCHAR(128);")
        );
        assert!(script.remaining.is_empty(), "{:?}", script.remaining);
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_column_alter_table_cannot_add_rebuilds_the_table() {
        let (script, left) = applied(
            &REVISION_1.replace(
                "\tcreated_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,\n",
                "",
            ),
            1,
            false,
        );
        assert_eq!(kinds(&script), [StatementKind::RebuildTable]);
        let statement = &script.statements[0];
        assert!(
            statement.comment.contains("non-constant default"),
            "{}",
            statement.comment
        );
        assert!(statement.safe);
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_column_in_a_table_constraint_falls_back_to_a_rebuild_on_the_copy() {
        let revision_3 = MIGRATIONS[..3]
            .iter()
            .map(|m| m.up)
            .collect::<Vec<_>>()
            .join("\n");
        // command_log without user_id: ADD COLUMN with REFERENCES and NOT NULL without a
        // default is refused; the index on it too needs the column.
        let drifted = revision_3
            .replace(
                "    user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n",
                "",
            )
            .replace(
                "CREATE INDEX ix_command_log_user_id ON command_log (user_id);\n",
                "",
            );
        let (script, left) = applied(&drifted, 3, false);
        assert_eq!(kinds(&script), [StatementKind::RebuildTable]);
        assert!(left.is_empty(), "{left:?}");
        assert!(
            script
                .script
                .contains("CREATE INDEX ix_command_log_user_id")
        );
    }

    #[test]
    fn statements_that_lose_data_are_comments_unless_allowed() {
        let drifted = format!(
            "{REVISION_1}\nALTER TABLE users ADD COLUMN nickname TEXT;\nCREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);"
        );
        let (script, left) = applied(&drifted, 1, false);
        assert_eq!(
            kinds(&script),
            [StatementKind::DropColumn, StatementKind::DropTable]
        );
        assert!(script.statements.iter().all(|s| s.commented && !s.safe));
        assert!(script.script.contains("-- DROP TABLE settings;"));
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(script.remaining.len(), 2, "{:?}", script.remaining);
        let (script, left) = applied(&drifted, 1, true);
        assert!(script.statements.iter().all(|s| !s.commented));
        assert!(script.script.contains("\nDROP TABLE settings;\n"));
        assert!(left.is_empty(), "{left:?}");
        assert!(script.remaining.is_empty());
    }

    #[test]
    fn views_and_triggers_are_dropped_and_revisions_created_again() {
        let drifted = format!(
            "{REVISION_1}\nCREATE VIEW admins AS SELECT * FROM users WHERE is_admin;\nCREATE TRIGGER keep_admins BEFORE DELETE ON users WHEN old.is_admin BEGIN SELECT RAISE(ABORT, 'no'); END;\nCREATE INDEX ix_users_username ON users (username);"
        );
        let (script, left) = applied(&drifted, 1, false);
        assert_eq!(
            kinds(&script),
            [
                StatementKind::DropView,
                StatementKind::DropTrigger,
                StatementKind::DropIndex
            ]
        );
        assert!(
            script.statements[0]
                .comment
                .contains("its definition: CREATE VIEW admins")
        );
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_view_on_a_rebuilt_table_goes_before_and_comes_back_after() {
        let drifted = REVISION_1
            .replace("is_admin BOOLEAN DEFAULT 0", "is_admin BOOLEAN DEFAULT 1")
            + "\nCREATE VIEW admins AS SELECT id FROM users WHERE is_admin;";
        let (dir, db) = database(&drifted);
        let script = db.diff_to(1, false).unwrap();
        assert_eq!(
            kinds(&script),
            [StatementKind::DropView, StatementKind::RebuildTable]
        );
        drop((dir, db));
    }

    #[test]
    fn a_schema_that_is_the_revisions_needs_nothing() {
        let (dir, db) = database(REVISION_1);
        let script = db.diff_to(1, false).unwrap();
        assert!(script.statements.is_empty() && script.differences.is_empty());
        assert!(script.script.contains("nothing to do"));
        assert!(matches!(
            db.diff_to(head() + 1, false),
            Err(Error::UnknownRevision { .. })
        ));
        assert!(matches!(
            db.diff_to(0, false),
            Err(Error::UnknownRevision { .. })
        ));
        drop(dir);
    }

    #[test]
    fn a_baseline_puts_views_after_the_views_they_read_and_leaves_histories_out() {
        let (dir, db) = database(
            "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, a TEXT);
             CREATE VIEW outer_view AS SELECT a FROM inner_view;
             CREATE VIEW inner_view AS SELECT a FROM t;
             CREATE TRIGGER tr INSTEAD OF INSERT ON outer_view BEGIN INSERT INTO t (a) VALUES (new.a); END;
             CREATE INDEX ix ON t (a);
             CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL);
             INSERT INTO t (a) VALUES ('x');",
        );
        let baseline = db.baseline().unwrap();
        let names: Vec<String> = baseline
            .statements
            .iter()
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            names,
            [
                "CREATE TABLE t",
                "CREATE INDEX ix",
                "CREATE VIEW inner_view",
                "CREATE VIEW outer_view",
                "CREATE TRIGGER tr"
            ]
        );
        assert_eq!(baseline.left_out, ["alembic_version", "sqlite_sequence"]);
        let copy = Connection::open_in_memory().unwrap();
        copy.execute_batch(&baseline.sql).unwrap();
        assert_eq!(
            schema::read(&copy, &[]).unwrap(),
            db.schema().unwrap(),
            "{}",
            baseline.sql
        );
        drop(dir);
    }
}
