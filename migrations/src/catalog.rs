//! The migrations compiled into this build, and the schema each revision produces.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::schema::Schema;

/// One step of the schema history: `sql/NNNN_<name>.up.sql` and its optional `.down.sql`.
#[derive(Debug)]
pub struct Migration {
    /// The revision this migration brings the database to (1, 2, ...).
    pub version: u32,
    /// The name part of the file name.
    pub name: &'static str,
    /// The `.up.sql` file name.
    pub file: &'static str,
    /// The SQL that applies it.
    pub up: &'static str,
    /// The `.down.sql` file name, when the step can be undone.
    pub down_file: Option<&'static str>,
    /// The SQL that undoes it.
    pub down: Option<&'static str>,
}

impl Migration {
    /// SHA-256 of the `.up.sql` text, hex: what the history records to notice an edited file.
    pub fn checksum(&self) -> String {
        let digest = Sha256::digest(self.up.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The newest revision this build knows.
pub fn head() -> u32 {
    MIGRATIONS.len() as u32
}

/// The migration that brings the database to `version`.
pub fn migration(version: u32) -> Option<&'static Migration> {
    MIGRATIONS.get((version as usize).checked_sub(1)?)
}

/// The normalized schema of revision `version` (0 is the empty schema). `build.rs` works these
/// out when the crate is built, by applying migrations 1..=version to an in-memory database
/// and reading it; a run only parses them (tens of microseconds instead of milliseconds).
pub fn schema_at(version: u32) -> &'static Schema {
    static SCHEMAS: OnceLock<Vec<Schema>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        serde_json::from_str(include_str!(concat!(env!("OUT_DIR"), "/schemas.json")))
            .expect("build.rs writes the schemas in the form this crate reads")
    });
    &schemas[version as usize]
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use crate::schema;

    use super::*;

    #[test]
    fn the_schemas_worked_out_at_build_time_are_what_the_migrations_make_now() {
        let conn = Connection::open_in_memory().unwrap();
        assert_eq!(schema_at(0), &Schema::default());
        for m in MIGRATIONS {
            conn.execute_batch(m.up).unwrap();
            assert_eq!(
                &schema::read(&conn, &[]).unwrap(),
                schema_at(m.version),
                "{}",
                m.file
            );
        }
    }

    #[test]
    fn revisions_are_numbered_from_one() {
        assert!(head() >= 2);
        for (index, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, index + 1);
            assert_eq!(migration(m.version).unwrap().file, m.file);
        }
        assert!(migration(0).is_none());
        assert!(migration(head() + 1).is_none());
    }

    #[test]
    fn revision_one_is_the_old_create_all() {
        let users = &schema_at(1).tables["users"];
        let names: Vec<&str> = users.columns.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "created_at",
                "first_name",
                "id",
                "is_admin",
                "last_name",
                "telegram_id",
                "username"
            ]
        );
        assert!(users.unique.iter().any(|u| u.columns == ["telegram_id"]));
    }

    #[test]
    fn each_revision_changes_the_schema() {
        for version in 1..=head() {
            assert_ne!(
                schema_at(version - 1),
                schema_at(version),
                "revision {version}"
            );
        }
    }

    #[test]
    fn down_files_undo_their_step() {
        let conn = Connection::open_in_memory().unwrap();
        for m in MIGRATIONS {
            conn.execute_batch(m.up).unwrap();
            if let Some(down) = m.down {
                conn.execute_batch(down).unwrap();
                assert_eq!(
                    &schema::read(&conn, &[]).unwrap(),
                    schema_at(m.version - 1),
                    "{}",
                    m.file
                );
                conn.execute_batch(m.up).unwrap();
            }
        }
    }
}
