//! The foreign key check a migration runs before COMMIT (foreign keys are off during it).
//!
//! `PRAGMA foreign_key_check` walks each child table in rowid order and looks every row's
//! parent up: one random B-tree seek per row, which at 20M `command_log` rows and a cold cache
//! costs more than the rebuild itself. A reference to a parent's rowid (`REFERENCES users (id)`
//! with `id INTEGER PRIMARY KEY`, what every ORM writes) is checked instead by walking the
//! child's distinct values in order (through its index when it has one) and seeking each
//! value's parent once, in key order. It asks what SQLite's own check asks (a non-NULL value
//! with no parent row whose rowid equals it, compared as SQLite's lookup compares), and only
//! whether one exists; every other kind of reference, and the count when there is a violation,
//! is left to `PRAGMA foreign_key_check` itself.

use rusqlite::Connection;

use super::file::query_all;
use crate::schema::{self, Schema, sql::quote_name};

/// The first table with a row whose reference has no parent, and how many such rows it has;
/// `None` when every reference holds.
pub(super) fn first_violation(conn: &Connection) -> rusqlite::Result<Option<(String, usize)>> {
    let schema = schema::read(conn, &[])?;
    // Every table SQLite has, as its own check walks them: the schema reader leaves some out
    // (a virtual table's shadow tables, SQLite's own), and those are checked by SQLite.
    let sql = "SELECT name FROM main.sqlite_schema WHERE type = 'table' ORDER BY name";
    let tables: Vec<String> = query_all(conn, sql)?;
    for name in tables {
        let table = schema.tables.get(&name.to_ascii_lowercase());
        let walks: Option<Vec<String>> = table.and_then(|table| {
            let keys = table.foreign_keys.iter();
            keys.map(|key| rowid_reference_check(&schema, &name, key))
                .collect()
        });
        // A walk that cannot run (a collation this process does not have, say) proves
        // nothing: SQLite's check decides.
        let holds = walks.is_some_and(|queries| {
            queries.iter().all(|query| {
                conn.query_row(query, [], |row| row.get::<_, bool>(0))
                    .is_ok_and(|missing| !missing)
            })
        });
        if !holds {
            let sql = "SELECT count(*) FROM pragma_foreign_key_check(?1)";
            let count = conn.query_row(sql, [&name], |row| row.get::<_, i64>(0))? as usize;
            if count > 0 {
                return Ok(Some((name, count)));
            }
        }
    }
    Ok(None)
}

/// For a one-column reference to the parent's rowid: a query answering whether a child value
/// lacks its parent. `None` for any other reference (several columns, a parent that is not
/// a rowid table, a missing parent), which `PRAGMA foreign_key_check` handles.
fn rowid_reference_check(schema: &Schema, child: &str, key: &schema::ForeignKey) -> Option<String> {
    let ([column], [to]) = (key.columns.as_slice(), key.to.as_slice()) else {
        return None;
    };
    let parent = schema.tables.get(&key.table)?;
    if !parent.columns.get(to)?.rowid_alias {
        return None;
    }
    let (child, column, parent, to) = (
        quote_name(child),
        quote_name(column),
        quote_name(&key.table),
        quote_name(to),
    );
    // DISTINCT reads the child's index in order when there is one; the parent lookup then
    // moves forward through the parent's B-tree instead of jumping for every row.
    Some(format!(
        "SELECT EXISTS (SELECT 1 FROM (SELECT DISTINCT {column} AS value FROM main.{child}) AS child \
         WHERE child.value IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM main.{parent} AS parent WHERE parent.{to} = child.value))"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(sql: &str) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        // As during a migration: the rows below break references on purpose.
        conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        conn.execute_batch(sql).unwrap();
        conn
    }

    /// What SQLite's own check says, for comparison.
    fn sqlite_says(conn: &Connection) -> Option<(String, usize)> {
        let tables: Vec<String> = query_all(conn, "PRAGMA foreign_key_check").unwrap();
        tables
            .first()
            .map(|first| (first.clone(), tables.iter().filter(|t| *t == first).count()))
    }

    #[test]
    fn every_kind_of_child_value_gets_the_verdict_sqlites_check_gives() {
        // Child values of every storage class, in columns of every affinity, against a rowid
        // parent with ids 1..=5: the walk must agree with PRAGMA foreign_key_check on each.
        let values = [
            "NULL",
            "3",
            "9",
            "'3'",
            "' 3'",
            "'3 '",
            "'03'",
            "3.0",
            "3.5",
            "'3.0'",
            "'abc'",
            "x'03'",
            "'9223372036854775808'",
            "-0.0",
            "'0x3'",
            "'3e0'",
        ];
        for affinity in ["INTEGER", "TEXT", "BLOB", "", "REAL", "NUMERIC"] {
            for value in values {
                let conn = database(&format!(
                    "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5)
                     INSERT INTO parent (id) SELECT i FROM n;
                     CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id {affinity} REFERENCES parent (id));
                     INSERT INTO child (parent_id) VALUES ({value});"
                ));
                assert_eq!(
                    first_violation(&conn).unwrap(),
                    sqlite_says(&conn),
                    "a {value} in a {affinity:?} column"
                );
            }
        }
    }

    #[test]
    fn references_the_walk_does_not_take_are_checked_by_sqlite() {
        for sql in [
            // A UNIQUE parent key, a composite key, a missing parent, a WITHOUT ROWID parent,
            // an INT (not INTEGER) primary key, and a collation on the parent key.
            "CREATE TABLE p (code TEXT UNIQUE); INSERT INTO p VALUES ('a');
             CREATE TABLE c (code TEXT REFERENCES p (code)); INSERT INTO c VALUES ('a'), ('b'), ('b');",
            "CREATE TABLE p (a INTEGER, b INTEGER, PRIMARY KEY (a, b)); INSERT INTO p VALUES (1, 1);
             CREATE TABLE c (a, b, FOREIGN KEY (a, b) REFERENCES p); INSERT INTO c VALUES (1, 1), (1, 2);",
            "CREATE TABLE c (p_id INTEGER REFERENCES gone (id)); INSERT INTO c VALUES (1), (NULL);",
            "CREATE TABLE p (id INTEGER PRIMARY KEY) WITHOUT ROWID; INSERT INTO p VALUES (1);
             CREATE TABLE c (p_id REFERENCES p (id)); INSERT INTO c VALUES ('1'), (2);",
            "CREATE TABLE p (id INT PRIMARY KEY); INSERT INTO p VALUES (1);
             CREATE TABLE c (p_id TEXT REFERENCES p (id)); INSERT INTO c VALUES ('1'), ('x');",
            "CREATE TABLE p (name TEXT COLLATE NOCASE UNIQUE); INSERT INTO p VALUES ('Ann');
             CREATE TABLE c (name TEXT REFERENCES p (name)); INSERT INTO c VALUES ('ann'), ('Bob');",
            // A parent key whose name differs from another column's only in non-ASCII case.
            "CREATE TABLE p (\"é\" INTEGER, \"É\" INTEGER PRIMARY KEY); INSERT INTO p VALUES (7, 1);
             CREATE TABLE c (x INTEGER REFERENCES p (\"É\")); INSERT INTO c VALUES (7);",
        ] {
            let conn = database(sql);
            assert_eq!(first_violation(&conn).unwrap(), sqlite_says(&conn), "{sql}");
            assert!(first_violation(&conn).unwrap().is_some(), "{sql}");
        }
    }

    #[test]
    fn the_first_table_with_a_broken_reference_is_named_with_its_count() {
        let users = "CREATE TABLE users (id INTEGER PRIMARY KEY);
             INSERT INTO users VALUES (1), (2);
             CREATE TABLE command_log (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users (id));
             CREATE INDEX ix ON command_log (user_id);
             INSERT INTO command_log (user_id) VALUES (1), (2), (2), (1);";
        let broken = format!("{users} DELETE FROM users WHERE id = 2;");
        for (sql, expected) in [
            // A sound database passes; a broken reference is counted row by row.
            (users, None),
            (&broken, Some(("command_log", 2))),
            // SQLite folds ASCII letters only: "é" and "É" are two columns.
            (
                "CREATE TABLE users (id INTEGER PRIMARY KEY); INSERT INTO users VALUES (1);
                 CREATE TABLE t (\"é\" INTEGER, \"É\" INTEGER REFERENCES users (id));
                 INSERT INTO t VALUES (1, 999);",
                Some(("t", 1)),
            ),
            (
                "CREATE TABLE users (id INTEGER PRIMARY KEY); INSERT INTO users VALUES (1);
                 CREATE TABLE t (\"Ö\" INTEGER REFERENCES users (id)); INSERT INTO t VALUES (1);",
                None,
            ),
            // An FTS5 table's shadow tables are not part of the schema the engine matches, but
            // SQLite checks their foreign keys, and so must the engine.
            (
                "CREATE TABLE users (id INTEGER PRIMARY KEY);
                 CREATE VIRTUAL TABLE docs USING fts5(body, content='');
                 CREATE TABLE docs_content (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users (id));
                 INSERT INTO docs_content (user_id) VALUES (42), (43);",
                Some(("docs_content", 2)),
            ),
            // Odd names are quoted.
            (
                "CREATE TABLE \"order\" (\"select\" INTEGER PRIMARY KEY);
                 CREATE TABLE \"my items\" (\"the order\" INTEGER REFERENCES \"order\" (\"select\"));
                 INSERT INTO \"my items\" VALUES (7);",
                Some(("my items", 1)),
            ),
        ] {
            let conn = database(sql);
            let expected = expected.map(|(table, count)| (table.to_owned(), count));
            assert_eq!(first_violation(&conn).unwrap(), expected, "{sql}");
            assert_eq!(first_violation(&conn).unwrap(), sqlite_says(&conn), "{sql}");
        }
    }

    #[test]
    fn a_collation_this_process_lacks_leaves_the_verdict_to_sqlite() {
        let maker = database("");
        maker
            .create_collation("appcoll", |a: &str, b: &str| a.cmp(b))
            .unwrap();
        maker
            .execute_batch(
                "CREATE TABLE users (id INTEGER PRIMARY KEY); INSERT INTO users VALUES (1);
                 CREATE TABLE t (v TEXT COLLATE appcoll REFERENCES users (id));
                 INSERT INTO t VALUES ('1');",
            )
            .unwrap();
        maker.remove_collation("appcoll").unwrap();
        assert_eq!(first_violation(&maker).unwrap(), None);
        maker.execute_batch("INSERT INTO t VALUES ('2')").unwrap();
        assert_eq!(first_violation(&maker).unwrap(), Some(("t".to_owned(), 1)));
    }
}
