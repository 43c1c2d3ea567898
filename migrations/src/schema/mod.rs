//! The structure of a database, normalized so that two schemas compare equal exactly when every
//! statement the bot and the migrations run behaves the same on both (the rule and the reason
//! for each tolerance are in the crate docs), and the difference between two of them in words.
//!
//! - [`read`] reads a live schema from `sqlite_schema` and pragmas only (never table data);
//! - [`diff`] names each difference;
//! - [`render`] prints a schema, one line per fact.

mod diff;
mod read;
pub(crate) mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

pub use diff::{Change, Difference, Object, Subject, TableOption, diff};
pub use read::read;

/// The structure of a database: tables, views and triggers, keyed by lower-case name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// Tables by lower-case name.
    pub tables: BTreeMap<String, Table>,
    /// Views by lower-case name.
    pub views: BTreeMap<String, View>,
    /// Triggers by lower-case name.
    pub triggers: BTreeMap<String, Trigger>,
}

/// One table's structure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Columns by lower-case name.
    pub columns: BTreeMap<String, Column>,
    /// Declared `WITHOUT ROWID`.
    pub without_rowid: bool,
    /// Declared `STRICT`.
    pub strict: bool,
    /// `AUTOINCREMENT` on the primary key: ids are never reused.
    pub autoincrement: bool,
    /// The PRIMARY KEY's conflict algorithm (`ON CONFLICT ...`); none means ABORT.
    pub primary_key_conflict: Option<String>,
    /// UNIQUE constraints (however they were written), sorted.
    pub unique: Vec<Unique>,
    /// CHECK constraints (column or table ones alike), canonical expressions.
    pub checks: BTreeSet<String>,
    /// Indexes made with CREATE INDEX, by lower-case name.
    pub indexes: BTreeMap<String, Index>,
    /// Foreign keys, sorted.
    pub foreign_keys: Vec<ForeignKey>,
}

/// One column: what SQLite enforces of it, not how it was spelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// The declared type as written (shown in messages; compared through its affinity).
    pub declared_type: String,
    /// The type affinity SQLite derives from the declared type.
    pub affinity: Affinity,
    /// NOT NULL (always true for a rowid alias and for a WITHOUT ROWID table's key).
    pub not_null: bool,
    /// The NOT NULL constraint's conflict algorithm; none means ABORT.
    pub not_null_conflict: Option<String>,
    /// The value an insert without this column stores: a constant default as SQLite stores it
    /// in this column (`quote()` of it), or an expression's canonical text; none for NULL.
    pub default: Option<String>,
    /// Position in the primary key (1-based), 0 when not part of it.
    pub primary_key: u32,
    /// The column is the table's rowid (an `INTEGER PRIMARY KEY` of a rowid table).
    pub rowid_alias: bool,
    /// The collation of comparisons on this column (BINARY unless COLLATE says otherwise).
    pub collation: String,
    /// For a generated column: `AS (expr) VIRTUAL` or `AS (expr) STORED`.
    pub generated: Option<String>,
}

/// A UNIQUE constraint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unique {
    /// Its keys: a column name, with ` COLLATE X` when it compares unlike the column and ` DESC`.
    pub columns: Vec<String>,
    /// Its conflict algorithm; none means ABORT.
    pub conflict: Option<String>,
}

/// An index created with CREATE INDEX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Its keys in order: a column name or a canonical expression, with ` COLLATE X` when it
    /// compares unlike the column and ` DESC` when sorted descending.
    pub columns: Vec<String>,
    /// UNIQUE index.
    pub unique: bool,
    /// A partial index's WHERE clause, canonical.
    pub where_clause: Option<String>,
}

/// A foreign key constraint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ForeignKey {
    /// Referencing columns.
    pub columns: Vec<String>,
    /// Referenced table.
    pub table: String,
    /// Referenced columns (the referenced table's primary key when the SQL names none).
    pub to: Vec<String>,
    /// ON UPDATE action.
    pub on_update: String,
    /// ON DELETE action.
    pub on_delete: String,
    /// `DEFERRABLE INITIALLY DEFERRED`: checked at COMMIT instead of after each statement.
    pub deferred: bool,
}

/// A view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Its `CREATE VIEW` statement, canonical.
    pub sql: String,
}

/// A trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The table (or view) it fires on, lower case.
    pub table: String,
    /// Its `CREATE TRIGGER` statement, canonical.
    pub sql: String,
}

impl View {
    /// Whether the view reads `table`.
    pub fn mentions(&self, table: &str) -> bool {
        sql::mentions(&self.sql, table)
    }
}

impl Trigger {
    /// Whether the trigger's body names `table`.
    pub fn mentions(&self, table: &str) -> bool {
        sql::mentions(&self.sql, table)
    }
}

/// The tables a migration's SQL drops with `DROP TABLE`, lower case: rebuilt when the schema
/// after it still has them.
pub fn dropped_tables(sql: &str) -> BTreeSet<String> {
    sql::dropped_tables(sql)
}

/// SQLite's type affinity (sqlite.org/datatype3.html, section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl Column {
    /// The column's normalized definition, as compared: affinity, constraints, default.
    pub fn definition(&self) -> String {
        let mut out = self.affinity.to_string();
        if self.rowid_alias {
            out.push_str(" PRIMARY KEY (rowid alias)");
        } else if self.primary_key > 0 {
            out.push_str(&format!(" PRIMARY KEY({})", self.primary_key));
        }
        if self.not_null {
            out.push_str(" NOT NULL");
        }
        if let Some(conflict) = &self.not_null_conflict {
            out.push_str(&format!(" ON CONFLICT {conflict}"));
        }
        if let Some(default) = &self.default {
            out.push_str(&format!(" DEFAULT {default}"));
        }
        if self.collation != "BINARY" {
            out.push_str(&format!(" COLLATE {}", self.collation));
        }
        if let Some(generated) = &self.generated {
            out.push_str(&format!(" {generated}"));
        }
        out
    }
}

impl Unique {
    /// `UNIQUE (a, b)`, with its conflict clause.
    pub fn definition(&self) -> String {
        let mut out = format!("UNIQUE ({})", self.columns.join(", "));
        if let Some(conflict) = &self.conflict {
            out.push_str(&format!(" ON CONFLICT {conflict}"));
        }
        out
    }
}

impl Index {
    /// `UNIQUE (a, b DESC) WHERE ...`: what the index holds and enforces.
    pub fn definition(&self) -> String {
        let mut out = format!(
            "{}({})",
            if self.unique { "UNIQUE " } else { "" },
            self.columns.join(", ")
        );
        if let Some(condition) = &self.where_clause {
            out.push_str(&format!(" WHERE {condition}"));
        }
        out
    }
}

impl ForeignKey {
    /// `(a) -> t(b)`: the columns and what they reference.
    pub fn target(&self) -> String {
        format!(
            "({}) -> {}({})",
            self.columns.join(", "),
            self.table,
            self.to.join(", ")
        )
    }

    /// The actions and deferral, e.g. `ON DELETE CASCADE`; empty for the defaults.
    pub fn actions(&self) -> String {
        let mut parts = Vec::new();
        if self.on_update != "NO ACTION" {
            parts.push(format!("ON UPDATE {}", self.on_update));
        }
        if self.on_delete != "NO ACTION" {
            parts.push(format!("ON DELETE {}", self.on_delete));
        }
        if self.deferred {
            parts.push("DEFERRABLE INITIALLY DEFERRED".to_owned());
        }
        parts.join(" ")
    }

    /// The full definition: target and actions.
    pub fn definition(&self) -> String {
        let actions = self.actions();
        if actions.is_empty() {
            self.target()
        } else {
            format!("{} {actions}", self.target())
        }
    }
}

/// The normalized schema as text, one line per fact, for `bot db schema`.
pub fn render(schema: &Schema) -> String {
    let mut out = String::new();
    for (name, table) in &schema.tables {
        let mut options = Vec::new();
        if table.without_rowid {
            options.push("WITHOUT ROWID".to_owned());
        }
        if table.strict {
            options.push("STRICT".to_owned());
        }
        if table.autoincrement {
            options.push("AUTOINCREMENT".to_owned());
        }
        if let Some(conflict) = &table.primary_key_conflict {
            options.push(format!("PRIMARY KEY ON CONFLICT {conflict}"));
        }
        out.push_str(&format!("table {name}"));
        if !options.is_empty() {
            out.push_str(&format!(" ({})", options.join(", ")));
        }
        out.push('\n');
        for (column, c) in &table.columns {
            out.push_str(&format!("  column {column} {}\n", c.definition()));
        }
        for unique in &table.unique {
            out.push_str(&format!("  {}\n", unique.definition()));
        }
        for check in &table.checks {
            out.push_str(&format!("  CHECK ({check})\n"));
        }
        for (index, i) in &table.indexes {
            out.push_str(&format!("  index {index} {}\n", i.definition()));
        }
        for key in &table.foreign_keys {
            out.push_str(&format!("  foreign key {}\n", key.definition()));
        }
    }
    for (name, view) in &schema.views {
        out.push_str(&format!("view {name}: {}\n", view.sql));
    }
    for (name, trigger) in &schema.triggers {
        out.push_str(&format!(
            "trigger {name} on {}: {}\n",
            trigger.table, trigger.sql
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn schema_of(sql: &str) -> Schema {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(sql).unwrap();
        read(&conn, &[]).unwrap()
    }

    fn lines(a: &str, b: &str) -> Vec<String> {
        diff(&schema_of(a), &schema_of(b))
            .iter()
            .map(ToString::to_string)
            .collect()
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
        let a = "CREATE TABLE users (id INTEGER NOT NULL, tid BIGINT NOT NULL, flag BOOLEAN DEFAULT 0 NOT NULL, PRIMARY KEY (id), UNIQUE (tid));";
        let b = "create table \"USERS\" (\n  \"id\"   integer primary key,\n  [tid] INT not null unique,\n  flag numeric not null default (FALSE)\n);";
        assert_eq!(lines(a, b), Vec::<String>::new());
    }

    #[test]
    fn each_difference_is_named() {
        assert_eq!(
            lines(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL DEFAULT 'x', b INT UNIQUE);",
                "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, c INT);"
            ),
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
        assert_eq!(
            lines(
                "CREATE TABLE u (id INTEGER PRIMARY KEY); CREATE TABLE l (id INTEGER PRIMARY KEY, u INT REFERENCES u(id) ON DELETE CASCADE); CREATE INDEX ix_l_u ON l(u);",
                "CREATE TABLE u (id INTEGER PRIMARY KEY); CREATE TABLE l (id INTEGER PRIMARY KEY, u INT REFERENCES u);"
            ),
            vec![
                "table l: index ix_l_u missing",
                "table l: foreign key (u) -> u(id): ON DELETE CASCADE expected, found no actions",
            ]
        );
    }

    #[test]
    fn defaults_compare_as_the_value_an_insert_stores() {
        let same = |a: &str, b: &str| {
            lines(
                &format!("CREATE TABLE t (id INTEGER PRIMARY KEY, {a});"),
                &format!("CREATE TABLE t (id INTEGER PRIMARY KEY, {b});"),
            )
        };
        let none = Vec::<String>::new();
        assert_eq!(same("f BOOLEAN DEFAULT 1", "f BOOLEAN DEFAULT TRUE"), none);
        assert_eq!(same("f BOOLEAN DEFAULT 0", "f NUMERIC DEFAULT '0'"), none);
        assert_eq!(same("f BOOLEAN DEFAULT 0", "f DECIMAL DEFAULT (0.0)"), none);
        assert_eq!(same("f INT DEFAULT 0", "f BIGINT DEFAULT -0"), none);
        assert_eq!(same("s TEXT DEFAULT '0'", "s VARCHAR(8) DEFAULT 0"), none);
        assert_eq!(same("s TEXT", "s TEXT DEFAULT NULL"), none);
        assert_eq!(
            same("s TEXT DEFAULT '0'", "s TEXT DEFAULT 0.0"),
            vec!["table t: column s: default '0' expected, found '0.0'"]
        );
        assert_eq!(
            same("f BOOLEAN DEFAULT 0", "f BOOLEAN DEFAULT 'false'"),
            vec!["table t: column f: default 0 expected, found 'false'"]
        );
        assert_eq!(
            same(
                "d DATETIME DEFAULT CURRENT_TIMESTAMP",
                "d DATETIME DEFAULT (datetime('now'))"
            ),
            none
        );
        assert_eq!(
            same(
                "d DATETIME DEFAULT CURRENT_DATE",
                "d DATETIME DEFAULT (date('now'))"
            ),
            none
        );
        assert_eq!(
            same(
                "d DATETIME DEFAULT CURRENT_TIMESTAMP",
                "d DATETIME DEFAULT (datetime('now', 'utc'))"
            ),
            vec![
                "table t: column d: default CURRENT_TIMESTAMP expected, found datetime('now', 'utc')"
            ]
        );
        assert_eq!(same("f NUMERIC DEFAULT 0", "f NUMERIC DEFAULT \"0\""), none);
        assert_eq!(same("s TEXT DEFAULT 'Ab'", "s TEXT DEFAULT [Ab]"), none);
        assert_eq!(same("s TEXT DEFAULT 'abc'", "s TEXT DEFAULT abc"), none);
        assert_eq!(
            same("s TEXT DEFAULT 'ab'", "s TEXT DEFAULT \"Ab\""),
            vec!["table t: column s: default 'ab' expected, found 'Ab'"]
        );
    }

    #[test]
    fn a_unique_index_and_a_plain_one_read_differently() {
        assert_eq!(
            lines(
                "CREATE TABLE users (id INTEGER PRIMARY KEY, telegram_id INT); CREATE UNIQUE INDEX ix_users_x ON users (telegram_id);",
                "CREATE TABLE users (id INTEGER PRIMARY KEY, telegram_id INT); CREATE INDEX ix_users_x ON users (telegram_id);"
            ),
            vec![
                "table users: index ix_users_x: UNIQUE (telegram_id) expected, found (telegram_id)"
            ]
        );
    }

    #[test]
    fn a_unique_constraint_does_not_stand_in_for_a_unique_index() {
        assert_eq!(
            lines(
                "CREATE TABLE u (id INTEGER PRIMARY KEY, t INT); CREATE UNIQUE INDEX ix_u_t ON u (t);",
                "CREATE TABLE u (id INTEGER PRIMARY KEY, t INT UNIQUE);"
            ),
            vec![
                "table u: unexpected UNIQUE (t)",
                "table u: index ix_u_t missing"
            ]
        );
    }

    #[test]
    fn views_and_triggers_compare_as_canonical_sql() {
        let base = "CREATE TABLE t (id INTEGER PRIMARY KEY, a INT);";
        assert_eq!(
            lines(
                &format!(
                    "{base} CREATE VIEW v AS SELECT a FROM t; CREATE TRIGGER tr AFTER DELETE ON t BEGIN SELECT 1; END;"
                ),
                &format!(
                    "{base} create view \"V\" as select [A] from T; create trigger TR after delete on t begin select 1; end;"
                )
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            lines(
                &format!("{base} CREATE VIEW v AS SELECT a FROM t;"),
                &format!(
                    "{base} CREATE VIEW v AS SELECT a FROM t WHERE a > 0; CREATE TRIGGER tr AFTER DELETE ON t BEGIN SELECT 1; END;"
                )
            ),
            vec![
                "view v: CREATE VIEW v AS SELECT a FROM t expected, found CREATE VIEW v AS SELECT a FROM t WHERE a > 0",
                "trigger tr on t: not expected",
            ]
        );
    }

    #[test]
    fn a_virtual_table_is_a_table_and_its_shadow_tables_are_not() {
        let schema = schema_of("CREATE VIRTUAL TABLE notes USING fts5(body);");
        assert_eq!(schema.tables.keys().collect::<Vec<_>>(), vec!["notes"]);
        assert_eq!(
            lines("", "CREATE VIRTUAL TABLE notes USING fts5(body);"),
            vec!["table notes: unexpected table"]
        );
    }

    #[test]
    fn the_rowid_alias_is_what_sqlite_says_it_is() {
        let alias = |sql: &str| schema_of(sql).tables["t"].columns["id"].rowid_alias;
        assert!(alias("CREATE TABLE t (id INTEGER PRIMARY KEY)"));
        assert!(alias("CREATE TABLE t (id integer, PRIMARY KEY (id DESC))"));
        assert!(alias(
            "CREATE TABLE t (id INTEGER NOT NULL, PRIMARY KEY (id))"
        ));
        assert!(!alias("CREATE TABLE t (id INTEGER PRIMARY KEY DESC)"));
        assert!(!alias("CREATE TABLE t (id INT PRIMARY KEY)"));
        assert!(!alias("CREATE TABLE t (id BIGINT PRIMARY KEY)"));
        assert!(!alias(
            "CREATE TABLE t (id INTEGER PRIMARY KEY) WITHOUT ROWID"
        ));
        assert!(!alias(
            "CREATE TABLE t (id INTEGER, k INT, PRIMARY KEY (id, k))"
        ));
    }

    #[test]
    fn only_a_table_of_a_skipped_name_is_skipped() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY);
             CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY);
             CREATE INDEX ix_sm ON schema_migrations (version);
             CREATE TRIGGER on_history AFTER INSERT ON schema_migrations BEGIN DELETE FROM users; END;
             CREATE TRIGGER alembic_version AFTER INSERT ON users BEGIN SELECT 1; END;
             CREATE VIEW schema_history AS SELECT id FROM users;",
        )
        .unwrap();
        let schema = read(
            &conn,
            &["schema_migrations", "schema_history", "alembic_version"],
        )
        .unwrap();
        assert_eq!(schema.tables.keys().collect::<Vec<_>>(), vec!["users"]);
        assert_eq!(
            schema.views.keys().collect::<Vec<_>>(),
            vec!["schema_history"]
        );
        assert_eq!(
            schema.triggers.keys().collect::<Vec<_>>(),
            vec!["alembic_version", "on_history"]
        );
    }

    #[test]
    fn render_shows_every_fact() {
        let schema = schema_of(
            "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n TEXT COLLATE NOCASE UNIQUE ON CONFLICT REPLACE CHECK (n != ''));
             CREATE INDEX ix ON t (lower(n) DESC) WHERE n IS NOT NULL;
             CREATE VIEW v AS SELECT n FROM t;
             CREATE TRIGGER tr AFTER DELETE ON t BEGIN SELECT 1; END;",
        );
        assert_eq!(
            render(&schema),
            "table t (AUTOINCREMENT)\n  column id INTEGER PRIMARY KEY (rowid alias) NOT NULL\n  column n TEXT COLLATE NOCASE\n  UNIQUE (n) ON CONFLICT REPLACE\n  CHECK (n != '')\n  index ix (lower(n) DESC) WHERE n IS NOT NULL\nview v: CREATE VIEW v AS SELECT n FROM t\ntrigger tr on t: CREATE TRIGGER tr AFTER DELETE ON t BEGIN SELECT 1; END\n"
        );
    }
}
