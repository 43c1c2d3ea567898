//! Matching compares structure, not SQL text: the same schema written differently matches its
//! revision, and each single change matches nothing, with the difference named.

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
        "table users: unexpected index ix_users_username",
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
