//! Reads a live schema: `sqlite_schema` and pragmas only, never table data, so that it stays
//! fast on any size of file.

use std::collections::BTreeMap;
use std::sync::Mutex;

use rusqlite::Connection;

use super::sql::{self, TableClauses, Token};
use super::{Affinity, Column, ForeignKey, Index, Schema, Table, Trigger, Unique, View};

/// One row of `sqlite_schema`.
struct Entry {
    kind: String,
    name: String,
    table: String,
    sql: Option<String>,
}

/// Reads the normalized schema of every table, view and trigger but SQLite's own and the
/// tables named in `skip` (with their indexes). Only a *table* of such a name is skipped: a
/// view or a trigger is read whatever its name, and so is a trigger on a skipped table (it
/// fires when the history is written).
pub fn read(conn: &Connection, skip: &[&str]) -> rusqlite::Result<Schema> {
    let internal = |name: &str| {
        name.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("sqlite_"))
    };
    let skipped_table = |name: &str| skip.iter().any(|s| s.eq_ignore_ascii_case(name));
    let mut statement =
        conn.prepare("SELECT type, name, tbl_name, sql FROM main.sqlite_schema ORDER BY name")?;
    let entries: Vec<Entry> = statement
        .query_map([], |row| {
            Ok(Entry {
                kind: row.get(0)?,
                name: row.get(1)?,
                table: row.get(2)?,
                sql: row.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut options =
        conn.prepare("SELECT name, type, wr, strict FROM pragma_table_list WHERE schema = 'main'")?;
    let table_options: BTreeMap<String, (String, bool, bool)> = options
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?.to_ascii_lowercase(),
                (
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)? != 0,
                    row.get::<_, i64>(3)? != 0,
                ),
            ))
        })?
        .collect::<Result<_, _>>()?;

    let index_sql: BTreeMap<String, &str> = entries
        .iter()
        .filter(|e| e.kind == "index")
        .filter_map(|e| Some((e.name.to_ascii_lowercase(), e.sql.as_deref()?)))
        .collect();
    let mut evaluator = DefaultEvaluator::default();
    let mut schema = Schema::default();
    // The skipped tables that are tables (a view may have a history table's name).
    let skipped_tables: Vec<String> = entries
        .iter()
        .filter(|e| e.kind == "table" && skipped_table(&e.name))
        .map(|e| e.name.to_ascii_lowercase())
        .collect();
    for entry in &entries {
        if internal(&entry.name) || internal(&entry.table) {
            continue;
        }
        let skipped = match entry.kind.as_str() {
            "table" => skipped_tables.contains(&entry.name.to_ascii_lowercase()),
            "index" => skipped_tables.contains(&entry.table.to_ascii_lowercase()),
            _ => false,
        };
        if skipped {
            continue;
        }
        let key = entry.name.to_ascii_lowercase();
        let text = entry.sql.as_deref().unwrap_or_default();
        match entry.kind.as_str() {
            "table" => {
                let (kind, without_rowid, strict) = table_options
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| ("table".into(), false, false));
                if kind == "shadow" {
                    continue; // part of a virtual table
                }
                let table = read_table(
                    conn,
                    &entry.name,
                    text,
                    without_rowid,
                    strict,
                    &index_sql,
                    &mut evaluator,
                )?;
                schema.tables.insert(key, table);
            }
            "view" => {
                schema.views.insert(
                    key,
                    View {
                        sql: sql::canonical_text(text),
                    },
                );
            }
            "trigger" => {
                schema.triggers.insert(
                    key,
                    Trigger {
                        table: entry.table.to_ascii_lowercase(),
                        sql: sql::canonical_text(text),
                    },
                );
            }
            _ => {} // indexes are read with their table
        }
    }
    resolve_implied_references(&mut schema);
    Ok(schema)
}

fn read_table(
    conn: &Connection,
    name: &str,
    create: &str,
    without_rowid: bool,
    strict: bool,
    index_sql: &BTreeMap<String, &str>,
    evaluator: &mut DefaultEvaluator,
) -> rusqlite::Result<Table> {
    let clauses = sql::parse_create_table(create);
    let mut table = Table {
        without_rowid,
        strict,
        autoincrement: clauses.autoincrement,
        primary_key_conflict: clauses.primary_key_conflict.clone(),
        checks: clauses.checks.iter().cloned().collect(),
        ..Table::default()
    };
    let mut columns = conn.prepare(
        "SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM pragma_table_xinfo(?1)",
    )?;
    let mut rows = columns.query([name])?;
    while let Some(row) = rows.next()? {
        let hidden: i64 = row.get(5)?;
        if hidden == 1 {
            continue; // a virtual table's hidden column
        }
        let column_name: String = row.get::<_, String>(0)?.to_ascii_lowercase();
        let declared_type: String = row.get(1)?;
        let default: Option<String> = row.get(3)?;
        let written = clauses.column(&column_name);
        let generated = match hidden {
            2 | 3 => Some(format!(
                "AS ({}) {}",
                written.generated.as_deref().unwrap_or("?"),
                if hidden == 3 { "STORED" } else { "VIRTUAL" }
            )),
            _ => None,
        };
        let column = Column {
            affinity: Affinity::of(&declared_type),
            not_null: row.get::<_, i64>(2)? != 0,
            not_null_conflict: written.not_null_conflict,
            default: default
                .as_deref()
                .and_then(|d| evaluator.normalize(d, &declared_type, strict)),
            primary_key: row.get(4)?,
            rowid_alias: false,
            collation: written.collation.unwrap_or_else(|| "BINARY".into()),
            generated,
            declared_type,
        };
        table.columns.insert(column_name, column);
    }
    read_indexes(conn, name, &clauses, &mut table, index_sql)?;
    read_foreign_keys(conn, name, &clauses, &mut table)?;
    Ok(table)
}

/// Reads the table's indexes: UNIQUE constraints, CREATE INDEX ones, and whether the primary
/// key is the rowid (SQLite makes an index of its own for any other primary key).
fn read_indexes(
    conn: &Connection,
    name: &str,
    clauses: &TableClauses,
    table: &mut Table,
    index_sql: &BTreeMap<String, &str>,
) -> rusqlite::Result<()> {
    let mut index_list =
        conn.prepare("SELECT name, \"unique\", origin FROM pragma_index_list(?1)")?;
    let indexes: Vec<(String, bool, String)> = index_list
        .query_map([name], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? != 0, row.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut key_columns = conn.prepare(
        "SELECT cid, name, \"desc\", coll FROM pragma_index_xinfo(?1) WHERE key ORDER BY seqno",
    )?;
    let mut primary_key_index = false;
    for (index_name, unique, origin) in indexes {
        let written = index_sql
            .get(&index_name.to_ascii_lowercase())
            .map(|text| sql::parse_create_index(text))
            .unwrap_or_default();
        let rows: Vec<(i64, Option<String>, bool, Option<String>)> = key_columns
            .query_map([&index_name], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get::<_, i64>(2)? != 0,
                    row.get(3)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let keys: Vec<String> = rows
            .into_iter()
            .enumerate()
            .map(|(seq, (cid, column, desc, collation))| {
                let collation = collation.unwrap_or_default().to_ascii_uppercase();
                let (mut key, natural) = match (cid, column) {
                    (-1, _) => ("rowid".to_owned(), "BINARY".to_owned()),
                    (_, Some(column)) => {
                        let column = column.to_ascii_lowercase();
                        let natural = table
                            .columns
                            .get(&column)
                            .map_or_else(|| "BINARY".to_owned(), |c| c.collation.clone());
                        (sql::quote_name(&column), natural)
                    }
                    (_, None) => (
                        written
                            .expressions
                            .get(seq)
                            .cloned()
                            .flatten()
                            .unwrap_or_else(|| "<expression>".into()),
                        "BINARY".to_owned(),
                    ),
                };
                if !collation.is_empty() && collation != natural {
                    key.push_str(&format!(" COLLATE {collation}"));
                }
                if desc {
                    key.push_str(" DESC");
                }
                key
            })
            .collect();
        match origin.as_str() {
            "pk" => primary_key_index = true,
            "u" => {
                let names: Vec<String> = keys.iter().map(|k| key_column(k)).collect();
                // SQLite makes one index of several UNIQUE clauses with the same keys, with
                // the one conflict clause among them that is not the default (two different
                // ones are an error).
                let conflict = clauses
                    .unique
                    .iter()
                    .filter(|u| u.columns == names)
                    .find_map(|u| u.conflict.clone());
                table.unique.push(Unique {
                    columns: keys,
                    conflict,
                });
            }
            _ => {
                table.indexes.insert(
                    index_name.to_ascii_lowercase(),
                    Index {
                        columns: keys,
                        unique,
                        where_clause: written.where_clause,
                    },
                );
            }
        }
    }
    let key_count = table.columns.values().filter(|c| c.primary_key > 0).count();
    let rowid_alias = !table.without_rowid && key_count == 1 && !primary_key_index;
    let mut primary_key: Vec<(u32, String)> = Vec::new();
    for (name, column) in &mut table.columns {
        if column.primary_key == 0 {
            continue;
        }
        primary_key.push((column.primary_key, sql::quote_name(name)));
        // A rowid alias is never NULL, nor is a WITHOUT ROWID table's key: NOT NULL or not.
        column.rowid_alias = rowid_alias;
        if rowid_alias || table.without_rowid {
            column.not_null = true;
        }
    }
    primary_key.sort();
    let primary_key: Vec<String> = primary_key.into_iter().map(|(_, c)| c).collect();
    // A UNIQUE constraint on exactly the primary key adds nothing the key does not enforce.
    table
        .unique
        .retain(|u| u.conflict.is_some() || u.columns != primary_key);
    table.unique.sort();
    Ok(())
}

/// The column name of an index key (`name COLLATE X DESC` gives `name`).
fn key_column(key: &str) -> String {
    let tokens = sql::tokenize(key);
    tokens
        .first()
        .and_then(Token::name)
        .unwrap_or_default()
        .to_owned()
}

fn read_foreign_keys(
    conn: &Connection,
    name: &str,
    clauses: &TableClauses,
    table: &mut Table,
) -> rusqlite::Result<()> {
    let mut foreign_keys = conn.prepare(
        "SELECT id, \"table\", \"from\", \"to\", on_update, on_delete FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
    )?;
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
            deferred: false,
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
    for key in by_id.values_mut() {
        key.deferred = clauses
            .foreign_keys
            .iter()
            .any(|c| c.deferred && c.columns == key.columns && c.table == key.table);
    }
    table.foreign_keys = by_id.into_values().collect();
    table.foreign_keys.sort();
    Ok(())
}

/// `REFERENCES users` means the referenced table's primary key: name its columns, so that it
/// compares equal to `REFERENCES users (id)`.
fn resolve_implied_references(schema: &mut Schema) {
    let keys: BTreeMap<String, Vec<String>> = schema
        .tables
        .iter()
        .map(|(name, table)| {
            let mut key: Vec<(u32, &String)> = table
                .columns
                .iter()
                .filter(|(_, c)| c.primary_key > 0)
                .map(|(n, c)| (c.primary_key, n))
                .collect();
            key.sort();
            (
                name.clone(),
                key.into_iter().map(|(_, n)| n.clone()).collect(),
            )
        })
        .collect();
    for table in schema.tables.values_mut() {
        for key in &mut table.foreign_keys {
            if key.to.is_empty()
                && let Some(primary_key) = keys.get(&key.table)
            {
                key.to = primary_key.clone();
            }
        }
        table.foreign_keys.sort();
    }
}

/// The string literal SQLite makes of a default written as a bare or quoted name with no
/// brackets (`DEFAULT "Ab"` stores `'Ab'`, case kept); `None` for anything else, and for the
/// words that are not names there (NULL, TRUE, FALSE, CURRENT_TIMESTAMP...).
fn bare_name_as_string(raw: &str, token: &Token) -> Option<String> {
    let text = match token {
        Token::Quoted(_) => {
            let open = raw.chars().next()?;
            let inner = raw.get(1..raw.len().checked_sub(1)?)?;
            match open {
                '[' => inner.to_owned(),
                '"' => inner.replace("\"\"", "\""),
                '`' => inner.replace("``", "`"),
                _ => return None,
            }
        }
        Token::Word(w)
            if !matches!(
                w.as_str(),
                "null" | "true" | "false" | "current_date" | "current_time" | "current_timestamp"
            ) =>
        {
            raw.to_owned()
        }
        _ => return None,
    };
    Some(format!("'{}'", text.replace('\'', "''")))
}

/// `datetime('now')`, `date('now')` and `time('now')` store what `CURRENT_TIMESTAMP`,
/// `CURRENT_DATE` and `CURRENT_TIME` store (SQLite implements the keywords as these very
/// calls, on the same statement time): the keyword they read as.
fn current_time_keyword(tokens: &[Token]) -> Option<&'static str> {
    let [Token::Word(function), open, Token::Str(argument), close] = tokens else {
        return None;
    };
    if *open != Token::Punct("(")
        || *close != Token::Punct(")")
        || !argument.eq_ignore_ascii_case("'now'")
    {
        return None;
    }
    match function.as_str() {
        "datetime" => Some("CURRENT_TIMESTAMP"),
        "date" => Some("CURRENT_DATE"),
        "time" => Some("CURRENT_TIME"),
        _ => None,
    }
}

/// Works out what an insert stores for a constant default, by asking SQLite: the default is
/// converted by the column's affinity like any inserted value, so `FALSE`, `0`, `0.0` and
/// `'0'` all store the integer 0 in a NUMERIC column, while a TEXT column stores `'0'` for
/// `0` and `'0.0'` for `0.0`.
#[derive(Default)]
struct DefaultEvaluator {
    conn: Option<Connection>,
}

impl DefaultEvaluator {
    /// The normalized default: `None` for NULL, the stored value (`quote()`) for a constant,
    /// the canonical text for an expression (CURRENT_TIMESTAMP, a function call...).
    fn normalize(&mut self, raw: &str, declared_type: &str, strict: bool) -> Option<String> {
        let mut tokens = sql::tokenize(raw);
        // `DEFAULT "0"` and `DEFAULT abc` (a name with no brackets around it) are string
        // literals to SQLite: `'0'` and `'abc'`, converted by the affinity like any other.
        if let [token] = tokens.as_slice()
            && let Some(literal) = bare_name_as_string(raw.trim(), token)
        {
            tokens = vec![Token::Str(literal)];
        }
        let inner = sql::strip_outer_brackets(&tokens);
        let constant = inner.iter().all(|t| match t {
            Token::Number(_) | Token::Str(_) | Token::Blob(_) => true,
            Token::Punct(p) => matches!(*p, "(" | ")" | "+" | "-" | "*" | "/" | "||"),
            Token::Word(w) => matches!(w.as_str(), "null" | "true" | "false"),
            _ => false,
        });
        let text = sql::canonical(inner);
        if !constant {
            return Some(current_time_keyword(inner).map_or(text, str::to_owned));
        }
        // The answer depends only on the constant and the column's type: ask SQLite once per
        // process (a revision's schema and the live one share most defaults).
        static KNOWN: Mutex<BTreeMap<(String, String, bool), Option<String>>> =
            Mutex::new(BTreeMap::new());
        let key = (text.clone(), declared_type.to_ascii_uppercase(), strict);
        if let Some(value) = KNOWN.lock().ok().and_then(|known| known.get(&key).cloned()) {
            return value;
        }
        let value = match self.stored_value(&text, declared_type, strict) {
            Ok(value) => value,
            Err(_) => Some(text),
        };
        if let Ok(mut known) = KNOWN.lock() {
            known.insert(key, value.clone());
        }
        value
    }

    fn stored_value(
        &mut self,
        constant: &str,
        declared_type: &str,
        strict: bool,
    ) -> rusqlite::Result<Option<String>> {
        if self.conn.is_none() {
            self.conn = Some(Connection::open_in_memory()?);
        }
        let conn = self.conn.as_ref().expect("opened above");
        let strict_type = ["INT", "INTEGER", "REAL", "TEXT", "BLOB", "ANY"]
            .into_iter()
            .find(|t| strict && t.eq_ignore_ascii_case(declared_type.trim()));
        let (column_type, options) = match strict_type {
            Some(t) => (t, " STRICT"),
            None => (
                match Affinity::of(declared_type) {
                    Affinity::Integer => "INTEGER",
                    Affinity::Text => "TEXT",
                    Affinity::Blob => "",
                    Affinity::Real => "REAL",
                    Affinity::Numeric => "NUMERIC",
                },
                "",
            ),
        };
        conn.execute(
            &format!("CREATE TABLE probe (v {column_type} DEFAULT ({constant})){options}"),
            [],
        )?;
        let value = conn
            .execute("INSERT INTO probe DEFAULT VALUES", [])
            .and_then(|_| {
                conn.query_row(
                    "SELECT CASE WHEN v IS NULL THEN NULL ELSE quote(v) END FROM probe",
                    [],
                    |row| row.get::<_, Option<String>>(0),
                )
            });
        conn.execute("DROP TABLE probe", [])?;
        value
    }
}
