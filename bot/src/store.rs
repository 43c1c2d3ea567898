//! The bot's reads and writes of `users`, on one connection used from blocking threads so the
//! async runtime never waits on SQLite.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use migrations::{Database, State};
use rusqlite::{Connection, OptionalExtension, params};

/// What Telegram tells about a user.
#[derive(Debug, Clone)]
pub struct UserFacts {
    /// Telegram user id.
    pub telegram_id: i64,
    /// @username.
    pub username: Option<String>,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: Option<String>,
    /// IETF language tag.
    pub language_code: Option<String>,
}

/// The one writer of the bot's database.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens the database; refuses unless its schema is current, since the bot never creates
    /// or changes tables itself.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let db = match Database::open_read_only(path)? {
            Some(db) => db,
            None => bail!(
                "there is no database at {}; create it with `cargo xtask first-deploy` (or `bot db upgrade`)",
                path.display()
            ),
        };
        let status = db.status()?;
        if status.state != State::Current {
            bail!(
                "the database at {} is {} (revision {}, this build needs {}); run `cargo xtask prod-migrate` (or `bot db upgrade`) first",
                path.display(),
                status.state.name(),
                status.version.map_or("none".into(), |v| v.to_string()),
                status.head
            );
        }
        drop(db);
        let conn =
            Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let conn = Arc::clone(&self.conn);
        let result = tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&conn)
        })
        .await
        .context("the database thread panicked")?;
        Ok(result?)
    }

    /// Inserts the user, or refreshes a known user's names; true when the user is new.
    pub async fn register(&self, user: UserFacts) -> anyhow::Result<bool> {
        self.with(move |conn| {
            let known: Option<i64> = conn
                .query_row("SELECT id FROM users WHERE telegram_id = ?1", [user.telegram_id], |r| r.get(0))
                .optional()?;
            conn.execute(
                "INSERT INTO users (telegram_id, username, first_name, last_name, language_code, last_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, CURRENT_TIMESTAMP)
                 ON CONFLICT (telegram_id) DO UPDATE SET
                    username = excluded.username, first_name = excluded.first_name,
                    last_name = excluded.last_name, language_code = excluded.language_code,
                    last_seen_at = excluded.last_seen_at",
                params![user.telegram_id, user.username, user.first_name, user.last_name, user.language_code],
            )?;
            Ok(known.is_none())
        })
        .await
    }

    /// Notes that a known user was active; unknown users are left for /start.
    pub async fn touch(
        &self,
        telegram_id: i64,
        language_code: Option<String>,
    ) -> anyhow::Result<()> {
        self.with(move |conn| {
            conn.execute(
                "UPDATE users SET last_seen_at = CURRENT_TIMESTAMP, language_code = coalesce(?2, language_code) WHERE telegram_id = ?1",
                params![telegram_id, language_code],
            )
            .map(drop)
        })
        .await
    }
}
