//! The bot's reads and writes. One connection, owned by one thread: the database has exactly one
//! writer, requests queue instead of fighting over locks, and the async runtime never waits on
//! SQLite (callers await a reply from that thread).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use migrations::{Database, State};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::oneshot;

/// How long a write waits for another process (`bot db backup`, a healthcheck) to let go.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A user's row, as /me shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUser {
    /// Telegram user id.
    pub telegram_id: i64,
    /// @username.
    pub username: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// IETF language tag.
    pub language_code: Option<String>,
    /// `users.is_admin`.
    pub is_admin: bool,
    /// When the user registered (UTC, as SQLite stores it).
    pub created_at: Option<String>,
    /// When the user last wrote (UTC).
    pub last_seen_at: Option<String>,
}

/// Whether /start met a new user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The user was inserted.
    New,
    /// The user was known; names, language and last-seen were refreshed.
    Refreshed,
}

/// The numbers /stats shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserStats {
    /// Rows in `users`.
    pub users_total: i64,
    /// Users registered in the last 7 days.
    pub new_this_week: i64,
    /// Users seen in the last 24 hours.
    pub active_today: i64,
    /// Commands logged in the last 24 hours, most used first.
    pub commands_today: Vec<(String, i64)>,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Request {
    Run(Job),
    Close(oneshot::Sender<rusqlite::Result<()>>),
}

/// The bot's database: cheap to clone, every clone talks to the same connection thread.
#[derive(Clone)]
pub struct Store {
    requests: mpsc::Sender<Request>,
}

impl Store {
    /// Opens the database; refuses unless its schema is current, since the bot never creates
    /// or changes tables itself.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        // What a killed writer left (the old app's hot journal) is recovered as SQLite does,
        // before anything is read: never "attempt to write a readonly database".
        if let Some(recovery) = Database::recover(path)? {
            tracing::warn!(
                "recovered a {recovery:?} left by a writer that was killed mid-transaction"
            );
        }
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
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("cannot switch {} to WAL", path.display()))?;
        // In WAL mode NORMAL cannot corrupt the database; a power cut may lose the last commits,
        // which costs a user one repeated /start, against an fsync per message otherwise.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let (requests, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("database".into())
            .spawn(move || serve(conn, queue))
            .context("cannot start the database thread")?;
        Ok(Store { requests })
    }

    /// Runs `work` on the connection thread and waits for its result without blocking the
    /// runtime; `what` names the work in errors ("cannot {what}: ...").
    async fn with<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(work(conn));
        });
        self.requests
            .send(Request::Run(job))
            .map_err(|_| anyhow!("cannot {what}: the database is closed (the bot is stopping)"))?;
        let result = answer.await.map_err(|_| {
            anyhow!("cannot {what}: the database thread stopped (see the error logged before)")
        })?;
        result.with_context(|| format!("cannot {what}"))
    }

    /// Inserts the user, or refreshes a known user's names, language and last-seen time, and
    /// logs `command` for them, all in one transaction.
    pub async fn register(&self, user: UserFacts, command: &str) -> anyhow::Result<Registration> {
        let command = command.to_owned();
        self.with("register the user", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let known = tx
                .query_row(
                    "SELECT id FROM users WHERE telegram_id = ?1",
                    [user.telegram_id],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?;
            let id: i64 = tx.query_row(
                "INSERT INTO users (telegram_id, username, first_name, last_name, language_code, last_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, CURRENT_TIMESTAMP)
                 ON CONFLICT (telegram_id) DO UPDATE SET
                    username = excluded.username, first_name = excluded.first_name,
                    last_name = excluded.last_name,
                    language_code = coalesce(excluded.language_code, users.language_code),
                    last_seen_at = excluded.last_seen_at
                 RETURNING id",
                params![user.telegram_id, user.username, user.first_name, user.last_name, user.language_code],
                |r| r.get(0),
            )?;
            log_command(&tx, id, &command)?;
            tx.commit()?;
            Ok(if known.is_some() { Registration::Refreshed } else { Registration::New })
        })
        .await
    }

    /// Notes that a user wrote (last-seen time, and language when Telegram sent one) and logs
    /// `command`, if given; returns the user's row, or None for a user who never sent /start
    /// (left unregistered: only /start registers).
    pub async fn seen(
        &self,
        telegram_id: i64,
        language_code: Option<String>,
        command: Option<String>,
    ) -> anyhow::Result<Option<StoredUser>> {
        self.with("record the user's activity", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let user = tx
                .query_row(
                    "UPDATE users SET last_seen_at = CURRENT_TIMESTAMP,
                        language_code = coalesce(?2, language_code)
                     WHERE telegram_id = ?1
                     RETURNING id, telegram_id, username, first_name, last_name, language_code,
                        is_admin, created_at, last_seen_at",
                    params![telegram_id, language_code],
                    |row| Ok((row.get::<_, i64>(0)?, stored_user(row)?)),
                )
                .optional()?;
            if let (Some((id, _)), Some(command)) = (&user, &command) {
                log_command(&tx, *id, command)?;
            }
            tx.commit()?;
            Ok(user.map(|(_, user)| user))
        })
        .await
    }

    /// The numbers /stats shows.
    pub async fn stats(&self) -> anyhow::Result<UserStats> {
        self.with("count the users", |conn| {
            let (users_total, new_this_week, active_today) = conn.query_row(
                "SELECT count(*),
                    count(*) FILTER (WHERE created_at >= datetime('now', '-7 days')),
                    count(*) FILTER (WHERE last_seen_at >= datetime('now', '-1 day'))
                 FROM users",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let mut statement = conn.prepare_cached(
                "SELECT command, count(*) FROM command_log
                 WHERE used_at >= datetime('now', '-1 day')
                 GROUP BY command ORDER BY count(*) DESC, command",
            )?;
            let commands_today = statement
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(UserStats {
                users_total,
                new_this_week,
                active_today,
                commands_today,
            })
        })
        .await
    }

    /// Waits for the queued work, then closes the connection (which checkpoints the WAL into
    /// the database file). Later calls on any clone fail with "the database is closed".
    pub async fn close(self) -> anyhow::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Close(reply))
            .map_err(|_| anyhow!("cannot close the database: its thread already stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("cannot close the database: its thread stopped"))?
            .context("closing the database failed; the next start recovers from the WAL")
    }
}

/// The connection thread: runs jobs in arrival order until asked to close (or every [`Store`]
/// is gone).
fn serve(mut conn: Connection, queue: mpsc::Receiver<Request>) {
    for request in queue {
        match request {
            Request::Run(job) => {
                // A panicking job must not take the bot's only connection with it; its
                // transaction rolls back as it unwinds, and its caller sees an error.
                let run = std::panic::AssertUnwindSafe(|| job(&mut conn));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("a database job panicked; its transaction was rolled back");
                }
            }
            Request::Close(done) => {
                if let Err(e) = conn.execute_batch("PRAGMA optimize") {
                    tracing::warn!("PRAGMA optimize before closing the database failed: {e}");
                }
                let _ = done.send(conn.close().map_err(|(_, e)| e));
                return;
            }
        }
    }
}

fn log_command(conn: &Connection, user_id: i64, command: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT INTO command_log (user_id, command) VALUES (?1, ?2)")?
        .execute(params![user_id, command])
        .map(drop)
}

/// Reads columns 1.. of `seen`'s RETURNING row.
fn stored_user(row: &Row) -> rusqlite::Result<StoredUser> {
    Ok(StoredUser {
        telegram_id: row.get(1)?,
        username: row.get(2)?,
        first_name: row.get(3)?,
        last_name: row.get(4)?,
        language_code: row.get(5)?,
        is_admin: row.get::<_, i64>(6)? != 0,
        created_at: timestamp(row, 7)?,
        last_seen_at: timestamp(row, 8)?,
    })
}

/// A DATETIME column as text: SQLite keeps whatever was written, and rows the old app wrote may
/// hold something other than `CURRENT_TIMESTAMP`'s text.
fn timestamp(row: &Row, column: usize) -> rusqlite::Result<Option<String>> {
    Ok(match row.get_ref(column)? {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(r) => Some(r.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    })
}
