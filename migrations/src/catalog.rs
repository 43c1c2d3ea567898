//! Schema histories: the migrations compiled into this build (or a test's own), and the
//! schema each revision produces.

use std::sync::OnceLock;

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::schema::{self, Schema};

/// One step of the schema history: `sql/NNNN_<name>.up.sql` and its optional `.down.sql`.
#[derive(Debug, Clone)]
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

/// A schema history: migrations numbered 1, 2, ... and the schema each revision produces. The
/// engine decides and migrates along the catalog it is given, so that tests can hand it
/// migrations of their own; [`Catalog::released`] is the one compiled into this build.
#[derive(Debug)]
pub struct Catalog {
    migrations: Vec<Migration>,
    /// The schema of revision N at index N (0: the empty schema).
    schemas: Vec<Schema>,
}

impl Catalog {
    /// The migrations of `migrations/sql/`, compiled into this build. `build.rs` works out
    /// their schemas when the crate is built, by applying migrations 1..=N to an in-memory
    /// database and reading it; a run only parses them (tens of microseconds instead of
    /// milliseconds).
    pub fn released() -> &'static Catalog {
        static RELEASED: OnceLock<Catalog> = OnceLock::new();
        RELEASED.get_or_init(|| Catalog {
            migrations: MIGRATIONS.to_vec(),
            schemas: serde_json::from_str(include_str!(concat!(env!("OUT_DIR"), "/schemas.json")))
                .expect("build.rs writes the schemas in the form this crate reads"),
        })
    }

    /// A catalog of `migrations` (versions 1, 2, ... in order), each revision's schema made by
    /// applying them in turn to an in-memory database.
    pub fn new(migrations: Vec<Migration>) -> rusqlite::Result<Catalog> {
        let conn = Connection::open_in_memory()?;
        let mut schemas = vec![Schema::default()];
        for (index, m) in migrations.iter().enumerate() {
            assert_eq!(m.version as usize, index + 1, "{}: out of order", m.file);
            conn.execute_batch(m.up)?;
            schemas.push(schema::read(&conn, &[])?);
        }
        Ok(Catalog {
            migrations,
            schemas,
        })
    }

    /// Every migration, in order.
    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }

    /// The newest revision.
    pub fn head(&self) -> u32 {
        self.migrations.len() as u32
    }

    /// The migration that brings the database to `version`.
    pub fn migration(&self, version: u32) -> Option<&Migration> {
        self.migrations.get((version as usize).checked_sub(1)?)
    }

    /// The normalized schema of revision `version` (0 is the empty schema).
    pub fn schema_at(&self, version: u32) -> &Schema {
        &self.schemas[version as usize]
    }
}

/// The newest revision this build knows.
pub fn head() -> u32 {
    Catalog::released().head()
}

/// The migration of this build that brings the database to `version`.
pub fn migration(version: u32) -> Option<&'static Migration> {
    Catalog::released().migration(version)
}

/// The normalized schema of revision `version` of this build (0 is the empty schema).
pub fn schema_at(version: u32) -> &'static Schema {
    Catalog::released().schema_at(version)
}

#[cfg(test)]
mod tests {
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
