//! Matching compares behaviour, not SQL text: the same schema written differently matches its
//! revision, true equivalents match, and each single change (including the ones no column list
//! shows: rowid-ness, WITHOUT ROWID, STRICT, CHECK, COLLATE, conflict clauses, generated
//! columns, index details, views, triggers, foreign-key actions) matches nothing, with the
//! difference named.

use std::path::PathBuf;

use migrations::{Database, MIGRATIONS, State, head};
use rusqlite::Connection;

fn handwritten(k: u32) -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/handwritten/r{k}.sql"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; every revision needs a hand-written twin here",
            path.display()
        )
    })
}

fn status_of(sql: &str, name: &str) -> migrations::Status {
    let dir = std::env::temp_dir().join(format!("matching-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    Connection::open(&path).unwrap().execute_batch(sql).unwrap();
    let status = Database::open_read_only(&path)
        .unwrap()
        .unwrap()
        .status()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    status
}

#[test]
fn each_revision_written_by_hand_in_another_style_matches_it() {
    assert_eq!(MIGRATIONS.len() as u32, head());
    for k in 1..=head() {
        let status = status_of(&handwritten(k), &format!("hand{k}"));
        assert_eq!(status.state, State::Unstamped, "revision {k}");
        assert_eq!(
            status.matches,
            Some(k),
            "revision {k}: {:?}",
            status.difference
        );
    }
}

/// Applies `edit` to the hand-written head schema and expects exactly `expected` as the
/// difference to the closest revision, head.
fn expect_single_change(name: &str, edit: impl Fn(&str) -> String, expected: &str) {
    let original = handwritten(head());
    let changed = edit(&original);
    assert_ne!(changed, original, "{name}: the edit changed nothing");
    let status = status_of(&changed, name);
    assert_eq!(status.state, State::Unstamped, "{name}");
    assert_eq!(status.matches, None, "{name} must match no revision");
    assert_eq!(
        status.closest,
        Some(head()),
        "{name}: {:?}",
        status.difference
    );
    assert_eq!(status.difference, vec![expected.to_owned()], "{name}");
}

#[test]
fn each_single_change_matches_nothing_and_is_named() {
    let replace = |from: &'static str, to: &'static str| move |sql: &str| sql.replacen(from, to, 1);
    expect_single_change(
        "column removed",
        replace("  last_name     text,\n", ""),
        "table users: column last_name missing (revision 1 adds it)",
    );
    expect_single_change(
        "column added",
        replace(
            "  last_name     text,\n",
            "  last_name     text,\n  nickname text,\n",
        ),
        "table users: unexpected column nickname",
    );
    expect_single_change(
        "index removed",
        replace(
            "create index ix_users_last_seen_at on users (last_seen_at);",
            "",
        ),
        "table users: index ix_users_last_seen_at missing (revision 4 adds it)",
    );
    expect_single_change(
        "index added",
        |sql: &str| format!("{sql}\ncreate index ix_users_username on users (username);"),
        "table users: unexpected index ix_users_username (username)",
    );
    expect_single_change(
        "unique removed",
        replace("int       not null   unique,", "int       not null,"),
        "table users: UNIQUE (telegram_id) missing (revision 1 adds it)",
    );
    expect_single_change(
        "unique added",
        replace(
            "[username]    varchar ( 64 ),",
            "[username]    varchar ( 64 ) unique,",
        ),
        "table users: unexpected UNIQUE (username)",
    );
    expect_single_change(
        "foreign key removed",
        replace(
            "USED_AT DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL,\n   FOREIGN KEY (USER_ID) REFERENCES USERS (ID) ON DELETE CASCADE",
            "USED_AT DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL",
        ),
        "table command_log: foreign key (user_id) -> users(id) missing (revision 3 adds it)",
    );
    expect_single_change(
        "foreign key added",
        replace(
            "COMMAND TEXT NOT NULL,",
            "COMMAND TEXT NOT NULL REFERENCES users (username),",
        ),
        "table command_log: unexpected foreign key (command) -> users(username)",
    );
    expect_single_change(
        "NOT NULL removed",
        replace(
            "telegram_id   int       not null   unique,",
            "telegram_id   int   unique,",
        ),
        "table users: column telegram_id: NOT NULL expected",
    );
    expect_single_change(
        "NOT NULL added",
        replace(
            "`first_name`  nvarchar(128),",
            "`first_name`  nvarchar(128) not null,",
        ),
        "table users: column first_name: NOT NULL not expected",
    );
    expect_single_change(
        "default removed",
        replace("not null   default current_timestamp", "not null"),
        "table users: column created_at: default CURRENT_TIMESTAMP expected, found none",
    );
    expect_single_change(
        "default added",
        replace(
            "language_code character(16),",
            "language_code character(16) default 'en',",
        ),
        "table users: column language_code: default none expected, found 'en'",
    );
    expect_single_change(
        "affinity changed",
        replace("is_admin      int ", "is_admin      boolean "),
        "table users: column is_admin: type affinity INTEGER expected, found NUMERIC (revision 4 changes it)",
    );
}

#[test]
fn a_column_removed_from_any_revision_matches_nothing() {
    for k in 1..=head() {
        let sql = handwritten(k).replacen("  last_name     text,\n", "", 1);
        let status = status_of(&sql, &format!("minus{k}"));
        assert_eq!(status.matches, None, "revision {k}");
        assert!(
            status
                .difference
                .iter()
                .any(|d| d.starts_with("table users: column last_name missing")),
            "revision {k}: {:?}",
            status.difference
        );
    }
}

/// Revision 1 exactly as the old app's create-all made it (SQLAlchemy, the seed's database).
fn revision_one() -> &'static str {
    MIGRATIONS[0].up
}

/// Applies `edit` to `original`, and expects the result to match no revision, with a
/// difference to `closest` that contains `expected`.
fn expect_named(
    name: &str,
    original: &str,
    edit: impl Fn(&str) -> String,
    closest: u32,
    expected: &str,
) {
    let changed = edit(original);
    assert_ne!(changed, original, "{name}: the edit changed nothing");
    let status = status_of(&changed, name);
    assert_eq!(status.matches, None, "{name} must match no revision");
    assert_eq!(
        status.closest,
        Some(closest),
        "{name}: {:?}",
        status.difference
    );
    assert!(
        status.difference.iter().any(|d| d.contains(expected)),
        "{name}: expected a difference containing {expected:?}, got {:#?}",
        status.difference
    );
}

/// Applies `edit` to `original` and expects it to match revision `k` still.
fn expect_equivalent(name: &str, original: &str, edit: impl Fn(&str) -> String, k: u32) {
    let changed = edit(original);
    assert_ne!(changed, original, "{name}: the edit changed nothing");
    let status = status_of(&changed, name);
    assert_eq!(status.matches, Some(k), "{name}: {:#?}", status.difference);
}

fn replace(from: &'static str, to: &'static str) -> impl Fn(&str) -> String {
    move |sql: &str| {
        assert!(sql.contains(from), "{from:?} is not in the SQL");
        sql.replacen(from, to, 1)
    }
}

fn append(extra: &'static str) -> impl Fn(&str) -> String {
    move |sql: &str| format!("{sql}\n{extra}")
}

#[test]
fn a_primary_key_that_is_not_the_rowid_is_named() {
    let one = revision_one();
    expect_named(
        "bigint id",
        one,
        replace("id INTEGER NOT NULL,", "id BIGINT NOT NULL,"),
        1,
        "table users: column id: a rowid alias (INTEGER PRIMARY KEY) expected, found BIGINT PRIMARY KEY (not an alias: an insert without an id fails)",
    );
    expect_named(
        "int primary key",
        one,
        replace("id INTEGER NOT NULL,", "id INT,"),
        1,
        "column id: a rowid alias (INTEGER PRIMARY KEY) expected, found INT PRIMARY KEY (not an alias: an insert without an id stores NULL)",
    );
    expect_named(
        "integer primary key desc",
        one,
        |sql: &str| {
            sql.replacen(
                "id INTEGER NOT NULL,",
                "id INTEGER NOT NULL PRIMARY KEY DESC,",
                1,
            )
            .replacen("PRIMARY KEY (id),", "", 1)
        },
        1,
        "found INTEGER PRIMARY KEY DESC (a SQLite quirk",
    );
    expect_named(
        "without rowid",
        one,
        |sql: &str| {
            format!(
                "{};",
                sql.trim_end().trim_end_matches(';').to_owned() + " WITHOUT ROWID"
            )
        },
        1,
        "table users: WITHOUT ROWID not expected",
    );
    expect_named(
        "autoincrement",
        one,
        |sql: &str| {
            sql.replacen(
                "id INTEGER NOT NULL,",
                "id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,",
                1,
            )
            .replacen("PRIMARY KEY (id),", "", 1)
        },
        1,
        "table users: AUTOINCREMENT not expected",
    );
    expect_named(
        "primary key on conflict replace",
        one,
        replace("PRIMARY KEY (id),", "PRIMARY KEY (id) ON CONFLICT REPLACE,"),
        1,
        "table users: PRIMARY KEY ON CONFLICT REPLACE not expected",
    );
}

#[test]
fn constraints_only_the_create_statement_records_are_named() {
    let one = revision_one();
    expect_named(
        "strict",
        "CREATE TABLE users (id INTEGER NOT NULL, telegram_id INTEGER NOT NULL, username TEXT, first_name TEXT, last_name TEXT, is_admin ANY DEFAULT 0 NOT NULL, created_at ANY DEFAULT CURRENT_TIMESTAMP NOT NULL, PRIMARY KEY (id), UNIQUE (telegram_id)) STRICT;",
        |sql: &str| sql.to_owned() + "\n",
        1,
        "table users: STRICT not expected (a value of another type is refused instead of converted)",
    );
    expect_named(
        "check",
        one,
        replace(
            "UNIQUE (telegram_id)",
            "UNIQUE (telegram_id), CHECK (length(username) <= 64)",
        ),
        1,
        "table users: unexpected CHECK (length(username) <= 64)",
    );
    expect_named(
        "boolean check of SQLAlchemy 1.3",
        one,
        replace(
            "UNIQUE (telegram_id)",
            "UNIQUE (telegram_id),\n\tCHECK (is_admin IN (0, 1))",
        ),
        1,
        "table users: unexpected CHECK (is_admin IN (0, 1)) (revision 4 adds it)",
    );
    expect_named(
        "collate nocase",
        one,
        replace(
            "username VARCHAR(64),",
            "username VARCHAR(64) COLLATE NOCASE,",
        ),
        1,
        "table users: column username: collation BINARY expected, found NOCASE",
    );
    expect_named(
        "unique on conflict replace",
        one,
        replace(
            "UNIQUE (telegram_id)",
            "UNIQUE (telegram_id) ON CONFLICT REPLACE",
        ),
        1,
        "table users: UNIQUE (telegram_id) expected, found UNIQUE (telegram_id) ON CONFLICT REPLACE (an insert of a duplicate deletes the old row instead of failing)",
    );
    expect_named(
        "not null on conflict ignore",
        one,
        replace(
            "telegram_id BIGINT NOT NULL,",
            "telegram_id BIGINT NOT NULL ON CONFLICT IGNORE,",
        ),
        1,
        "column telegram_id: NOT NULL without ON CONFLICT expected, found ON CONFLICT IGNORE",
    );
    expect_named(
        "generated column",
        one,
        replace(
            "username VARCHAR(64),",
            "username VARCHAR(64) GENERATED ALWAYS AS ('user' || telegram_id) VIRTUAL,",
        ),
        1,
        "table users: column username: a generated column (AS ('user' || telegram_id) VIRTUAL) not expected: an insert cannot set it",
    );
    expect_named(
        "stored generated column",
        one,
        replace(
            "last_name VARCHAR(128),",
            "last_name VARCHAR(128) AS (upper(first_name)) STORED,",
        ),
        1,
        "column last_name: a generated column (AS (upper(first_name)) STORED) not expected",
    );
}

#[test]
fn index_details_are_named_with_the_definition() {
    let head_sql = handwritten(head());
    let index = "create index ix_users_last_seen_at on users (last_seen_at);";
    for (name, variant, found) in [
        (
            "desc index",
            "create index ix_users_last_seen_at on users (last_seen_at desc);",
            "(last_seen_at DESC)",
        ),
        (
            "partial index",
            "create index ix_users_last_seen_at on users (last_seen_at) where last_seen_at is not null;",
            "(last_seen_at) WHERE last_seen_at IS NOT NULL",
        ),
        (
            "expression index",
            "create index ix_users_last_seen_at on users (date(last_seen_at));",
            "(date(last_seen_at))",
        ),
        (
            "index collation",
            "create index ix_users_last_seen_at on users (last_seen_at collate nocase);",
            "(last_seen_at COLLATE NOCASE)",
        ),
        (
            "unique index",
            "create unique index ix_users_last_seen_at on users (last_seen_at);",
            "UNIQUE (last_seen_at)",
        ),
    ] {
        expect_named(
            name,
            &head_sql,
            |sql: &str| sql.replacen(index, variant, 1),
            head(),
            &format!(
                "table users: index ix_users_last_seen_at: (last_seen_at) expected, found {found}"
            ),
        );
    }
    expect_named(
        "extra unique index",
        &head_sql,
        append("create unique index ix_users_username on users (username);"),
        head(),
        "table users: unexpected index ix_users_username UNIQUE (username)",
    );
}

#[test]
fn views_and_triggers_are_named_with_what_a_later_migration_does_to_them() {
    let one = revision_one();
    expect_named(
        "view on users",
        one,
        append("CREATE VIEW admins AS SELECT * FROM users WHERE is_admin;"),
        1,
        "view admins: not in revision 1; revision 4 rebuilds users and would fail on it",
    );
    expect_named(
        "trigger on users",
        one,
        append(
            "CREATE TRIGGER keep_admins BEFORE DELETE ON users WHEN old.is_admin BEGIN SELECT RAISE(ABORT, 'admins stay'); END;",
        ),
        1,
        "trigger keep_admins on users: not in revision 1; revision 4 rebuilds users and would drop it",
    );
    expect_named(
        "index on users at revision 1",
        one,
        append("CREATE INDEX ix_users_username ON users (username);"),
        1,
        "table users: unexpected index ix_users_username (username); revision 4 rebuilds users and would drop it",
    );
    expect_named(
        "extra column at revision 1",
        one,
        replace(
            "last_name VARCHAR(128),",
            "last_name VARCHAR(128), nickname TEXT,",
        ),
        1,
        "table users: unexpected column nickname; revision 4 rebuilds users and would drop it and its data",
    );
    expect_named(
        "extra table of the old app",
        one,
        append("CREATE TABLE settings (key VARCHAR(64) PRIMARY KEY, value TEXT);"),
        1,
        "table settings: unexpected table (no revision has it: if the bot does not need it, save its rows elsewhere and DROP TABLE settings; or add a migration that creates it)",
    );
}

#[test]
fn foreign_key_actions_are_named() {
    let three = handwritten(3);
    expect_named(
        "on delete set null",
        &three,
        replace("ON DELETE CASCADE", "ON DELETE SET NULL"),
        3,
        "table command_log: foreign key (user_id) -> users(id): ON DELETE CASCADE expected, found ON DELETE SET NULL",
    );
    expect_named(
        "deferred",
        &three,
        replace(
            "ON DELETE CASCADE",
            "ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED",
        ),
        3,
        "foreign key (user_id) -> users(id): ON DELETE CASCADE expected, found ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED",
    );
    expect_equivalent(
        "implied parent key",
        &three,
        replace("REFERENCES USERS (ID)", "REFERENCES users"),
        3,
    );
    expect_equivalent(
        "not deferrable",
        &three,
        replace("ON DELETE CASCADE", "ON DELETE CASCADE NOT DEFERRABLE"),
        3,
    );
}

#[test]
fn true_equivalents_match() {
    let one = revision_one();
    for (name, from, to) in [
        (
            "rowid alias without NOT NULL",
            "id INTEGER NOT NULL,",
            "id INTEGER,",
        ),
        (
            "rowid alias as a column constraint",
            "id INTEGER NOT NULL,",
            "id integer primary key,",
        ),
        (
            "DEFAULT FALSE",
            "DEFAULT 0 NOT NULL",
            "DEFAULT FALSE NOT NULL",
        ),
        ("DEFAULT 0.0", "DEFAULT 0 NOT NULL", "DEFAULT 0.0 NOT NULL"),
        ("DEFAULT '0'", "DEFAULT 0 NOT NULL", "DEFAULT '0' NOT NULL"),
        ("DEFAULT (0)", "DEFAULT 0 NOT NULL", "DEFAULT (0) NOT NULL"),
        (
            "DEFAULT (CURRENT_TIMESTAMP)",
            "DEFAULT CURRENT_TIMESTAMP",
            "DEFAULT (current_timestamp)",
        ),
        (
            "DEFAULT NULL",
            "username VARCHAR(64),",
            "username VARCHAR(64) DEFAULT NULL,",
        ),
        (
            "TEXT for VARCHAR",
            "username VARCHAR(64),",
            "\"Username\" TEXT,",
        ),
        (
            "constraint names",
            "PRIMARY KEY (id),\n\tUNIQUE (telegram_id)",
            "CONSTRAINT pk_users PRIMARY KEY (id),\n\tCONSTRAINT uq_users_telegram_id UNIQUE (telegram_id)",
        ),
        (
            "unique as a column constraint",
            "telegram_id BIGINT NOT NULL,",
            "telegram_id BIGINT NOT NULL UNIQUE,",
        ),
        (
            "redundant UNIQUE on the rowid",
            "id INTEGER NOT NULL,",
            "id INTEGER NOT NULL UNIQUE,",
        ),
        (
            "explicit ON CONFLICT ABORT",
            "UNIQUE (telegram_id)",
            "UNIQUE (telegram_id) ON CONFLICT ABORT",
        ),
        (
            "explicit COLLATE BINARY",
            "username VARCHAR(64),",
            "username VARCHAR(64) COLLATE binary,",
        ),
    ] {
        let edit = move |sql: &str| {
            let changed = sql.replacen(from, to, 1);
            // Moving a table constraint to the column: the table one goes.
            match name {
                "unique as a column constraint" => {
                    changed.replacen(",\n\tUNIQUE (telegram_id)", "", 1)
                }
                "rowid alias as a column constraint" => {
                    changed.replacen("PRIMARY KEY (id),", "", 1)
                }
                _ => changed,
            }
        };
        expect_equivalent(name, one, edit, 1);
    }
}

#[test]
fn a_unique_index_stands_in_for_a_unique_constraint_and_revision_4_turns_it_into_one() {
    let sql = revision_one().replacen(",\n\tUNIQUE (telegram_id)", "", 1)
        + "\nCREATE UNIQUE INDEX ix_users_telegram_id ON users (telegram_id);";
    let status = status_of(&sql, "unique-index");
    assert_eq!(status.matches, Some(1), "{:#?}", status.difference);

    let dir = std::env::temp_dir().join(format!("matching-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("unique-index-upgrade.db");
    let _ = std::fs::remove_file(&path);
    Connection::open(&path)
        .unwrap()
        .execute_batch(&sql)
        .unwrap();
    let mut db = Database::open(&path).unwrap();
    assert_eq!(db.adopt().unwrap(), 1);
    for k in 2..=head() {
        db.upgrade_to(k, |_| {}).unwrap();
        let status = db.status().unwrap();
        assert_eq!(status.version, Some(k));
        assert!(
            status.difference.is_empty(),
            "revision {k}: {:#?}",
            status.difference
        );
    }
    assert_eq!(db.schema().unwrap(), *migrations::schema_at(head()));
    drop(db);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_unique_index_does_not_stand_in_when_it_is_partial_or_the_constraint_has_a_conflict_clause() {
    let one = revision_one();
    expect_named(
        "partial unique index",
        one,
        |sql: &str| {
            sql.replacen(",\n\tUNIQUE (telegram_id)", "", 1)
                + "\nCREATE UNIQUE INDEX ix_users_telegram_id ON users (telegram_id) WHERE telegram_id > 0;"
        },
        1,
        "table users: UNIQUE (telegram_id) missing",
    );
}

#[test]
fn what_the_messages_say_a_rebuild_does_is_what_sqlite_does() {
    let rebuild = MIGRATIONS[3].up;
    let setup = |extra: &str| {
        let conn = Connection::open_in_memory().unwrap();
        for m in &MIGRATIONS[..3] {
            conn.execute_batch(m.up).unwrap();
        }
        conn.execute_batch(extra).unwrap();
        conn
    };
    // The rebuild in a transaction of its own fails, naming `needle`.
    let fails_naming = |conn: Connection, needle: &str| {
        let error = conn
            .execute_batch(&format!("BEGIN; {rebuild} COMMIT;"))
            .unwrap_err();
        assert!(error.to_string().contains(needle), "{error}");
    };
    // A view that reads users: the rebuild fails at its RENAME.
    let conn = setup("CREATE VIEW admins AS SELECT * FROM users WHERE is_admin;");
    fails_naming(conn, "error in view admins");
    // A trigger on users: dropped with the old table, silently.
    let conn = setup("CREATE TRIGGER keep_admins BEFORE DELETE ON users BEGIN SELECT 1; END;");
    conn.execute_batch(rebuild).unwrap();
    let triggers: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 0);
    // A trigger elsewhere that writes users: the rebuild fails on it.
    let conn = setup(
        "CREATE TABLE audit (x); CREATE TRIGGER t_audit AFTER INSERT ON audit BEGIN UPDATE users SET username = 'x'; END;",
    );
    fails_naming(conn, "error in trigger t_audit");
    let status = status_of(
        &format!(
            "{}\nCREATE TABLE audit (x); CREATE TRIGGER t_audit AFTER INSERT ON audit BEGIN UPDATE users SET username = 'x'; END;",
            revision_one()
        ),
        "audit-trigger",
    );
    assert!(
        status.difference.iter().any(|d| d == "trigger t_audit on audit: not in revision 1; revision 4 rebuilds users and would fail on it"),
        "{:#?}",
        status.difference
    );
}

#[test]
fn a_trigger_or_view_named_like_a_history_table_is_seen() {
    let one = revision_one();
    for name in ["schema_migrations", "schema_history", "alembic_version"] {
        let trigger = format!(
            "CREATE TRIGGER {name} AFTER INSERT ON users BEGIN UPDATE users SET is_admin = 1 WHERE id = new.id; END;"
        );
        let status = status_of(&format!("{one}\n{trigger}"), &format!("trigger-{name}"));
        assert_eq!(status.matches, None, "trigger {name}");
        assert_eq!(status.closest, Some(1), "trigger {name}");
        assert!(
            status
                .difference
                .iter()
                .any(|d| d.starts_with(&format!("trigger {name} on users: not in revision 1"))),
            "trigger {name}: {:#?}",
            status.difference
        );
    }
    expect_named(
        "view named alembic_version",
        one,
        append("CREATE VIEW alembic_version AS SELECT id FROM users;"),
        1,
        "view alembic_version: not in revision 1",
    );
}

#[test]
fn a_unique_conflict_clause_is_read_however_the_key_is_written() {
    let one = revision_one();
    for (name, to) in [
        (
            "string literal key",
            "UNIQUE ('telegram_id') ON CONFLICT REPLACE",
        ),
        (
            "same keys twice",
            "UNIQUE (telegram_id), UNIQUE (telegram_id) ON CONFLICT REPLACE",
        ),
        (
            "bracketed key",
            "UNIQUE ((telegram_id)) ON CONFLICT REPLACE",
        ),
    ] {
        expect_named(
            name,
            one,
            replace("UNIQUE (telegram_id)", to),
            1,
            "table users: UNIQUE (telegram_id) expected, found UNIQUE (telegram_id) ON CONFLICT REPLACE (an insert of a duplicate deletes the old row instead of failing)",
        );
    }
}

#[test]
fn a_non_breaking_space_is_part_of_a_name_as_in_sqlite() {
    let one = revision_one();
    expect_named(
        "nbsp before DEFAULT hides nothing",
        one,
        replace(
            "username VARCHAR(64),",
            "username VARCHAR \u{a0}DEFAULT COLLATE NOCASE,",
        ),
        1,
        "table users: column username: collation BINARY expected, found NOCASE (comparisons, ORDER BY and UNIQUE follow it)",
    );
    expect_named(
        "nbsp before CONSTRAINT hides nothing",
        one,
        replace(
            "telegram_id BIGINT NOT NULL,",
            "telegram_id BIGINT \u{a0}CONSTRAINT NOT NULL ON CONFLICT IGNORE,",
        ),
        1,
        "table users: column telegram_id: NOT NULL without ON CONFLICT expected, found ON CONFLICT IGNORE (an insert that breaks it is skipped silently instead of failing)",
    );
}

#[test]
fn a_string_literal_as_the_referenced_table_keeps_the_deferral() {
    expect_named(
        "string literal parent, deferred",
        &handwritten(3),
        replace(
            "REFERENCES USERS (ID) ON DELETE CASCADE",
            "REFERENCES 'users' (ID) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED",
        ),
        3,
        "foreign key (user_id) -> users(id): ON DELETE CASCADE expected, found ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED",
    );
}

#[test]
fn a_double_quoted_default_and_datetime_now_are_true_equivalents() {
    let one = revision_one();
    expect_equivalent(
        "DEFAULT \"0\"",
        one,
        replace("DEFAULT 0 NOT NULL", "DEFAULT \"0\" NOT NULL"),
        1,
    );
    expect_equivalent(
        "DEFAULT (datetime('now'))",
        one,
        replace("DEFAULT CURRENT_TIMESTAMP", "DEFAULT (DateTime( 'NOW' ))"),
        1,
    );
    expect_named(
        "DEFAULT \"1\"",
        one,
        replace("DEFAULT 0 NOT NULL", "DEFAULT \"1\" NOT NULL"),
        1,
        "column is_admin: default 0 expected, found 1",
    );
    expect_named(
        "DEFAULT (datetime('now', 'localtime'))",
        one,
        replace(
            "DEFAULT CURRENT_TIMESTAMP",
            "DEFAULT (datetime('now', 'localtime'))",
        ),
        1,
        "column created_at: default CURRENT_TIMESTAMP expected",
    );
}
