//! The bot's reads and writes. One writing connection, owned by one thread: the database has
//! exactly one writer, requests queue instead of fighting over locks, and the async runtime never
//! waits on SQLite (callers await a reply from that thread). /stats, and the reads an answer needs
//! when its write failed, run on a second, read-only connection with a thread of its own: in WAL
//! mode it reads while the writer writes, so no read ever holds a message's write up.
//!
//! What needs revision 5 (each update handled once, the /stats summaries) is used only when this
//! build's schema head is 5 or later: an older release built from this code (`TGBOT_SCHEMA_HEAD`)
//! runs on its own older schema. [`Store::open`] decides it once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use migrations::{Database, State};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::oneshot;

/// How long a write that must happen (registration) waits for another process (`bot db
/// restore`, a migration) to let go.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a best-effort write (last-seen, the command log of a command other than /start,
/// retention) waits: every message queues behind the writer, so while another process holds
/// the lock these give up quickly and the answers go out without them.
const BEST_EFFORT_BUSY_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a message's best-effort write waits for its turn on the writer and its own work:
/// while another process holds the lock, each registration ahead of it waits out
/// [`BUSY_TIMEOUT`] in turn, and a known user's /help must not wait for all of them.
const BEST_EFFORT_WAIT: Duration = Duration::from_secs(2);
/// The first revision with `handled_updates` and the /stats summaries.
pub const REVISION_HANDLED_ONCE: u32 = 5;
/// The first revision with `unsent_answers`.
pub const REVISION_UNSENT_ANSWERS: u32 = 6;
/// `last_seen_at` is written at most this often per user (it is shown rounded to this anyway).
pub const LAST_SEEN_EVERY_MINUTES: u32 = 5;
/// Days of `handled_updates` kept: Telegram delivers an update again within hours, and may
/// start its ids over after a week without updates.
pub const HANDLED_UPDATES_DAYS: u32 = 2;
/// Days of `stats_commands_hourly` kept (/stats reads the last 24 hours of it).
const COMMAND_HOURS_DAYS: u32 = 2;
/// The commands /stats names; the others are summed up as "others".
pub const TOP_COMMANDS: usize = 10;

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
    /// When the user last wrote (UTC), to within [`LAST_SEEN_EVERY_MINUTES`].
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

/// The outcome of a write made for one Telegram update.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled<T> {
    /// Written, with the update's id (from revision 5).
    Done(T),
    /// Nothing needed writing, so the update's id is not recorded either: its answer must
    /// record it first (see [`Store::record_handled`]).
    NothingWritten(T),
    /// The update's id was already recorded: it was handled before, nothing was written.
    Before,
}

/// An answer a stopping bot could not send within its grace period, kept for the next start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsent {
    /// The update it answers.
    pub update_id: i64,
    /// Where it goes.
    pub chat_id: i64,
    /// What it says.
    pub text: String,
}

/// Which bot a database serves, as [`Store::claim`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This bot (now recorded, if the database named no bot before).
    This,
    /// Another bot: the database is left as it is.
    Other {
        /// Its Telegram id.
        bot_id: i64,
        /// Its username.
        username: String,
    },
    /// Another bot's, moved to this one as asked: that bot's handled update ids are forgotten.
    TakenOver {
        /// The other bot's username.
        username: String,
    },
}

/// The numbers /stats shows. On revision 5 and later they are counted by the hour: the windows
/// start at the whole hour 24 hours (7 days) ago, as [`UserStats::counted_from`] says, and the
/// answer names that hour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserStats {
    /// Rows in `users`.
    pub users_total: i64,
    /// Users registered in the last 7 days.
    pub new_this_week: i64,
    /// Users seen in the last 24 hours.
    pub active_today: i64,
    /// The most used commands of the last 24 hours, most used first (at most [`TOP_COMMANDS`]).
    pub commands_today: Vec<(String, i64)>,
    /// Uses of the other commands in the last 24 hours.
    pub other_commands: i64,
    /// On revision 5 and later: the whole UTC hours the windows start at (the hour 7 days ago,
    /// the hour 24 hours ago), since the summaries count by the hour.
    pub counted_from: Option<HourWindows>,
}

/// Where the windows of /stats start when it counts by the hour, as `YYYY-MM-DD HH:00`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourWindows {
    /// The hour 7 days ago.
    pub week: String,
    /// The hour 24 hours ago.
    pub day: String,
}

impl UserStats {
    /// Keeps the [`TOP_COMMANDS`] first of `counts` (most used first) by name and sums up the
    /// rest, and the uses counted under no name (''), as others.
    fn set_commands(&mut self, counts: impl IntoIterator<Item = (String, i64)>) {
        for (command, uses) in counts {
            if command.is_empty() || self.commands_today.len() >= TOP_COMMANDS {
                self.other_commands += uses;
            } else {
                self.commands_today.push((command, uses));
            }
        }
    }
}

/// The error of every call once the database is closed: the bot is stopping.
#[derive(Debug, thiserror::Error)]
#[error("the database is closed (the bot is stopping)")]
pub struct Closed;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

thread_local! {
    /// On a connection's thread, while a job runs: whether its asker is gone (see
    /// [`abandoned`]).
    static ASKER: std::cell::RefCell<Option<Box<dyn Fn() -> bool>>> =
        const { std::cell::RefCell::new(None) };
}

/// Whether nobody waits any more for the job running on this connection's thread (its chat's
/// worker was cut off by a stop, or gave up waiting): a write checks it before it commits, so
/// that what an update changed is never committed without its answer going out.
fn abandoned() -> bool {
    ASKER.with(|slot| slot.borrow().as_ref().is_some_and(|gone| gone()))
}

/// The error a write returns when it is abandoned (see [`abandoned`]): it is rolled back.
fn abandoned_error() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
        Some("nobody waits for this write any more: rolled back".into()),
    )
}

enum Request {
    Run(Job),
    Close(oneshot::Sender<rusqlite::Result<()>>),
}

/// One connection and the thread that owns it.
#[derive(Clone)]
struct Worker {
    requests: mpsc::Sender<Request>,
    /// Set when any clone asks the thread to close: work queued behind that is dropped unrun.
    closing: Arc<AtomicBool>,
    /// For the writer: since when every write has failed, if they do.
    failing_since: Option<Arc<Mutex<Option<SystemTime>>>>,
}

impl Worker {
    /// Starts the thread; `writes`: the connection writes (and runs `PRAGMA optimize` before
    /// it closes).
    fn start(name: &str, conn: Connection, writes: bool) -> anyhow::Result<Worker> {
        let (requests, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(conn, queue, writes))
            .with_context(|| format!("cannot start the {name} thread"))?;
        Ok(Worker {
            requests,
            closing: Arc::new(AtomicBool::new(false)),
            failing_since: writes.then(Arc::default),
        })
    }

    /// Runs `work` on the connection thread and waits for its result without blocking the
    /// runtime; `what` names the work in errors ("cannot {what}: ...").
    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.run_within(what, None, work).await
    }

    /// [`Worker::run`], giving up after `limit` (when given) if the work has not ended: the
    /// work is then dropped unrun when its turn comes (or its result is, if it was running).
    async fn run_within<T: Send + 'static>(
        &self,
        what: &'static str,
        limit: Option<Duration>,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (reply, answer) = oneshot::channel();
        let closing = Arc::clone(&self.closing);
        let job: Job = Box::new(move |conn| {
            // Nobody waits for it any more (its chat was given up at a stop), or the store is
            // closing: a stop must not wait behind writes that each wait for a lock.
            if reply.is_closed() || closing.load(Ordering::SeqCst) {
                return;
            }
            let reply = Arc::new(Mutex::new(Some(reply)));
            let asker = Arc::clone(&reply);
            ASKER.with(|slot| {
                *slot.borrow_mut() = Some(Box::new(move || {
                    asker
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .is_none_or(|r| r.is_closed())
                }))
            });
            let result = work(conn);
            ASKER.with(|slot| *slot.borrow_mut() = None);
            if let Some(reply) = reply.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = reply.send(result);
            }
        });
        self.requests
            .send(Request::Run(job))
            .map_err(|_| anyhow::Error::new(Closed).context(format!("cannot {what}")))?;
        let answer = match limit {
            None => answer.await,
            Some(limit) => match tokio::time::timeout(limit, answer).await {
                Ok(answer) => answer,
                Err(_) => anyhow::bail!(
                    "cannot {what}: the database writer did not get to it within {} ms (writes ahead of it wait for a lock another process holds?)",
                    limit.as_millis()
                ),
            },
        };
        let result = answer.map_err(|_| {
            if self.closing.load(Ordering::SeqCst) {
                anyhow::Error::new(Closed).context(format!("cannot {what}"))
            } else {
                anyhow::anyhow!(
                    "cannot {what}: the database thread stopped (see the error logged before)"
                )
            }
        })?;
        if let Some(failing_since) = &self.failing_since {
            let mut since = failing_since.lock().unwrap_or_else(|p| p.into_inner());
            match (&result, *since) {
                (Ok(_), Some(_)) => *since = None,
                (Err(_), None) => *since = Some(SystemTime::now()),
                _ => {}
            }
        }
        result.with_context(|| format!("cannot {what}"))
    }

    async fn close(&self) -> anyhow::Result<()> {
        self.closing.store(true, Ordering::SeqCst);
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Close(reply)).map_err(|_| {
            anyhow::anyhow!("cannot close the database: its thread already stopped")
        })?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("cannot close the database: its thread stopped"))?
            .context("closing the database failed; the next start recovers from the WAL")
    }
}

/// The bot's database: cheap to clone, every clone talks to the same two connection threads.
#[derive(Clone)]
pub struct Store {
    writer: Worker,
    reader: Worker,
    /// The schema revision the database is at (this build's head).
    revision: u32,
}

/// The one rule of what the bot does with a database, by its state (None: no file, or one that
/// cannot be read yet): serve it, wait for a deploy's migration to bring it to head, or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Current: the bot serves it.
    Serve,
    /// Missing, empty, behind, or not yet ours (unstamped, another tool's): what a migration
    /// that runs beside a starting bot brings to head.
    Wait,
    /// Ahead, modified or drifted: only a person can sort it out.
    Refuse,
}

impl Verdict {
    /// The verdict on a database in `state`.
    pub fn of(state: Option<State>) -> Verdict {
        match state {
            Some(State::Current) => Verdict::Serve,
            None | Some(State::Behind | State::Unstamped | State::Foreign | State::Empty) => {
                Verdict::Wait
            }
            Some(State::Ahead | State::Modified | State::Drifted) => Verdict::Refuse,
        }
    }
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
        if Verdict::of(Some(status.state)) != Verdict::Serve {
            bail!(
                "the database at {} is {} (revision {}, this build needs {}); run `cargo xtask prod-migrate` (or `bot db upgrade`) first",
                path.display(),
                status.state.name(),
                status.version.map_or("none".into(), |v| v.to_string()),
                status.head
            );
        }
        drop(db);
        Store::connect(path, migrations::head())
    }

    /// Opens the two connections on a database known to be at `revision`.
    fn connect(path: &Path, revision: u32) -> anyhow::Result<Store> {
        let conn =
            Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        switch_to_wal(&conn, path)?;
        // In WAL mode NORMAL cannot corrupt the database; a power cut may lose the last commits,
        // which costs a user one repeated /start, against an fsync per message otherwise.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Opened after the switch to WAL, which it needs to read beside the writer.
        let read = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open {} for reading", path.display()))?;
        read.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Store {
            writer: Worker::start("database", conn, true)?,
            reader: Worker::start("database-reader", read, false)?,
            revision,
        })
    }

    /// Since when every write has failed, if the last one failed.
    pub fn writes_failing_since(&self) -> Option<SystemTime> {
        let failing_since = self.writer.failing_since.as_ref()?;
        *failing_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records updates as handled, in one transaction, and says of each whether it is new
    /// (false: recorded before, by a run before a restart or another instance with this token).
    /// For those whose handling wrote nothing (an unknown user's /help): they have no row of
    /// their own, and Telegram may deliver them again after a restart. Best effort: waits
    /// briefly for the writer and for another process's lock. Before revision 5 every update
    /// is new.
    pub async fn record_handled(&self, update_ids: Vec<i64>) -> anyhow::Result<Vec<bool>> {
        if !self.handles_once() || update_ids.is_empty() {
            return Ok(vec![true; update_ids.len()]);
        }
        self.writer
            .run_within(
                "record the handled updates",
                Some(BEST_EFFORT_WAIT),
                move |conn| {
                    with_busy_timeout(conn, BEST_EFFORT_BUSY_TIMEOUT, |conn| {
                        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                        let mut new = Vec::with_capacity(update_ids.len());
                        for id in update_ids {
                            new.push(mark_handled(&tx, id)?);
                        }
                        tx.commit()?;
                        Ok(new)
                    })
                },
            )
            .await
    }

    /// At a stop: keeps the answers not sent within the grace period for the next start and
    /// records their updates as handled, and deletes the kept answers in `forget` (sent again
    /// by this run with the request out when it was cut off: maybe delivered), in one
    /// transaction, waiting up to `limit` for another process's lock; false when this build's
    /// schema has no place for them (an older release's).
    pub async fn keep_unsent(
        &self,
        keep: Vec<Unsent>,
        forget: Vec<i64>,
        limit: Duration,
    ) -> anyhow::Result<bool> {
        if self.revision < REVISION_UNSENT_ANSWERS {
            return Ok(false);
        }
        if keep.is_empty() && forget.is_empty() {
            return Ok(true);
        }
        let once = self.handles_once();
        self.writer
            .run("keep the unsent answers", move |conn| {
                with_busy_timeout(conn, limit, |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    for answer in keep {
                        if once {
                            mark_handled(&tx, answer.update_id)?;
                        }
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO unsent_answers (update_id, chat_id, text)
                             VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![
                            answer.update_id,
                            answer.chat_id,
                            answer.text
                        ])?;
                    }
                    for update_id in forget {
                        tx.prepare_cached("DELETE FROM unsent_answers WHERE update_id = ?1")?
                            .execute([update_id])?;
                    }
                    tx.commit()?;
                    Ok(true)
                })
            })
            .await
    }

    /// Records that the database serves the bot `bot_id`, unless it serves another one; with
    /// `take_over`, it is moved to this bot, forgetting the other's update ids and answers.
    /// Before revision 6 a database names no bot: it is taken to be this one's.
    pub async fn claim(
        &self,
        bot_id: i64,
        username: &str,
        take_over: bool,
    ) -> anyhow::Result<Owner> {
        if self.revision < REVISION_UNSENT_ANSWERS {
            return Ok(Owner::This);
        }
        let username = username.to_owned();
        self.writer
            .run("record which bot the database serves", move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let recorded: Option<(i64, String)> = tx
                    .query_row("SELECT bot_id, username FROM bot_identity", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                let owner = match recorded {
                    Some((other, theirs)) if other != bot_id => {
                        if !take_over {
                            return Ok(Owner::Other {
                                bot_id: other,
                                username: theirs,
                            });
                        }
                        tx.execute_batch(
                            "DELETE FROM handled_updates; DELETE FROM unsent_answers;
                             DELETE FROM pending_updates;",
                        )?;
                        Owner::TakenOver { username: theirs }
                    }
                    Some((_, ours)) if ours == username => return Ok(Owner::This),
                    _ => Owner::This,
                };
                tx.execute(
                    "INSERT INTO bot_identity (only_row, bot_id, username) VALUES (1, ?1, ?2)
                     ON CONFLICT (only_row) DO UPDATE SET bot_id = excluded.bot_id,
                        username = excluded.username,
                        since = CASE WHEN bot_identity.bot_id = excluded.bot_id
                            THEN bot_identity.since ELSE CURRENT_TIMESTAMP END",
                    params![bot_id, username],
                )?;
                tx.commit()?;
                Ok(owner)
            })
            .await
    }

    /// Writes updates the offset is about to pass before they are answered (their ids and
    /// their JSON), in one transaction: Telegram forgets them then, and a start after a crash
    /// or a stop answers them from here. Waits up to `limit` for another process's lock.
    pub async fn save_pending(
        &self,
        updates: Vec<(i64, String)>,
        limit: Duration,
    ) -> anyhow::Result<()> {
        if self.revision < REVISION_UNSENT_ANSWERS || updates.is_empty() {
            return Ok(());
        }
        self.writer
            .run("save the updates not answered yet", move |conn| {
                with_busy_timeout(conn, limit, |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    {
                        let mut insert = tx.prepare_cached(
                            "INSERT OR IGNORE INTO pending_updates (update_id, body) VALUES (?1, ?2)",
                        )?;
                        for (id, body) in updates {
                            insert.execute(params![id, body])?;
                        }
                    }
                    tx.commit()
                })
            })
            .await
    }

    /// The saved updates not handled yet (see [`Store::save_pending`]), oldest first.
    pub async fn pending(&self) -> anyhow::Result<Vec<(i64, String)>> {
        if self.revision < REVISION_UNSENT_ANSWERS {
            return Ok(Vec::new());
        }
        self.reader
            .run("read the updates not answered yet", |conn| {
                conn.prepare(
                    "SELECT update_id, body FROM pending_updates
                     WHERE update_id NOT IN (SELECT update_id FROM handled_updates)
                     ORDER BY update_id",
                )?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
            })
            .await
    }

    /// Deletes the saved updates that are handled now, and those of over
    /// [`HANDLED_UPDATES_DAYS`] ago; returns how many. Best effort.
    pub async fn forget_handled_pending(&self) -> anyhow::Result<usize> {
        if self.revision < REVISION_UNSENT_ANSWERS {
            return Ok(0);
        }
        self.writer
            .run_within(
                "forget the saved updates that are handled",
                Some(BEST_EFFORT_WAIT),
                |conn| {
                    with_busy_timeout(conn, BEST_EFFORT_BUSY_TIMEOUT, |conn| {
                        conn.prepare_cached(
                            "DELETE FROM pending_updates
                             WHERE update_id IN (SELECT update_id FROM handled_updates)
                                OR saved_at < datetime('now', ?1)",
                        )?
                        .execute([format!("-{HANDLED_UPDATES_DAYS} days")])
                    })
                },
            )
            .await
    }

    /// The answers a stopped bot kept for this start, oldest first.
    pub async fn unsent(&self) -> anyhow::Result<Vec<Unsent>> {
        if self.revision < REVISION_UNSENT_ANSWERS {
            return Ok(Vec::new());
        }
        self.reader
            .run("read the unsent answers", |conn| {
                conn.prepare(
                    "SELECT update_id, chat_id, text FROM unsent_answers ORDER BY update_id",
                )?
                .query_map([], |row| {
                    Ok(Unsent {
                        update_id: row.get(0)?,
                        chat_id: row.get(1)?,
                        text: row.get(2)?,
                    })
                })?
                .collect()
            })
            .await
    }

    /// Deletes kept answers once they are sent. Best effort: the caller tries again later.
    pub async fn sent(&self, update_ids: Vec<i64>) -> anyhow::Result<()> {
        self.writer
            .run_within(
                "delete the sent answers",
                Some(BEST_EFFORT_WAIT),
                move |conn| {
                    with_busy_timeout(conn, BEST_EFFORT_BUSY_TIMEOUT, |conn| {
                        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                        for update_id in update_ids {
                            tx.prepare_cached("DELETE FROM unsent_answers WHERE update_id = ?1")?
                                .execute([update_id])?;
                        }
                        tx.commit()
                    })
                },
            )
            .await
    }

    /// Forgets the handled update ids older than [`HANDLED_UPDATES_DAYS`], at once: after a week
    /// without updates Telegram may start its ids over, and a new update must not be taken for
    /// one handled before the bot was stopped. Called before the first poll.
    pub async fn forget_old_updates(&self) -> anyhow::Result<usize> {
        if !self.handles_once() {
            return Ok(0);
        }
        self.writer
            .run("forget old update ids", |conn| {
                conn.execute(
                    "DELETE FROM handled_updates WHERE handled_at < datetime('now', ?1)",
                    [format!("-{HANDLED_UPDATES_DAYS} days")],
                )
            })
            .await
    }

    /// Takes the write lock and lets it go, writing nothing: whether the database takes writes
    /// (not read-only, not locked by another process past the busy timeout), for readiness.
    pub async fn probe_write(&self) -> anyhow::Result<()> {
        self.writer
            .run("take the write lock (the readiness probe)", |conn| {
                conn.transaction_with_behavior(TransactionBehavior::Immediate)?
                    .rollback()
            })
            .await
    }

    /// Whether updates are recorded in `handled_updates` (and /stats reads the summaries).
    fn handles_once(&self) -> bool {
        self.revision >= REVISION_HANDLED_ONCE
    }

    /// Inserts the user, or refreshes a known user's names, language and last-seen time, and
    /// logs `command` for them, all in one transaction with `update_id` (from revision 5):
    /// an update already recorded writes nothing.
    pub async fn register(
        &self,
        update_id: i64,
        user: UserFacts,
        command: &str,
    ) -> anyhow::Result<Handled<Registration>> {
        let command = command.to_owned();
        let once = self.handles_once();
        self.writer.run("register the user", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if once && !mark_handled(&tx, update_id)? {
                return Ok(Handled::Before);
            }
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
            if abandoned() {
                return Err(abandoned_error());
            }
            tx.commit()?;
            Ok(Handled::Done(if known.is_some() { Registration::Refreshed } else { Registration::New }))
        })
        .await
    }

    /// Notes that a user wrote and returns their row, or None for a user who never sent
    /// /start (left unregistered: only /start registers, and an unknown user costs no write).
    /// For a known user it writes, in one transaction with `update_id` (from revision 5):
    /// `command` to the log, if given, and the last-seen time (and the language, when Telegram
    /// sent another one) when the last one is [`LAST_SEEN_EVERY_MINUTES`] old. When none of
    /// this is due nothing is written, `update_id` included.
    ///
    /// Best effort: it waits only briefly for another process's lock, and the caller may
    /// answer without it when it fails.
    pub async fn seen(
        &self,
        update_id: i64,
        telegram_id: i64,
        language_code: Option<String>,
        command: Option<String>,
    ) -> anyhow::Result<Handled<Option<StoredUser>>> {
        let once = self.handles_once();
        self.writer
            .run_within(
                "record the user's activity",
                Some(BEST_EFFORT_WAIT),
                move |conn| {
                    with_busy_timeout(conn, BEST_EFFORT_BUSY_TIMEOUT, |conn| {
                        let every = format!("-{LAST_SEEN_EVERY_MINUTES} minutes");
                        let lookup = |conn: &Connection| {
                            conn.prepare_cached(SELECT_USER_DUE)?
                                .query_row(params![telegram_id, language_code, every], |row| {
                                    Ok((row.get::<_, i64>(0)?, stored_user(row)?, row.get(9)?))
                                })
                                .optional()
                        };
                        // Read first, without the write lock: most messages write nothing. An update
                        // whose handling wrote nothing may still be recorded (see `record_handled`).
                        let done = |conn: &Connection, user| -> rusqlite::Result<_> {
                            Ok(if once && was_handled(conn, update_id)? {
                                Handled::Before
                            } else {
                                Handled::NothingWritten(user)
                            })
                        };
                        match lookup(conn)? {
                            None => return done(conn, None),
                            Some((_, user, false)) if command.is_none() => {
                                return done(conn, Some(user));
                            }
                            Some(_) => {}
                        }
                        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                        let (id, user, due) = match lookup(&tx)? {
                            None => return Ok(Handled::NothingWritten(None)),
                            Some((_, user, false)) if command.is_none() => {
                                return Ok(Handled::NothingWritten(Some(user)));
                            }
                            Some(found) => found,
                        };
                        if once && !mark_handled(&tx, update_id)? {
                            return Ok(Handled::Before);
                        }
                        let user = if due {
                            tx.prepare_cached(
                                "UPDATE users SET last_seen_at = CURRENT_TIMESTAMP,
                                language_code = coalesce(?2, language_code)
                             WHERE id = ?1
                             RETURNING id, telegram_id, username, first_name, last_name,
                                language_code, is_admin, created_at, last_seen_at",
                            )?
                            .query_row(params![id, language_code], stored_user)?
                        } else {
                            user
                        };
                        if let Some(command) = &command {
                            log_command(&tx, id, command)?;
                        }
                        if abandoned() {
                            return Err(abandoned_error());
                        }
                        tx.commit()?;
                        Ok(Handled::Done(Some(user)))
                    })
                },
            )
            .await
    }

    /// A user's row, read on the reading connection (never waits for the writer): for an
    /// answer whose write failed.
    pub async fn user(&self, telegram_id: i64) -> anyhow::Result<Option<StoredUser>> {
        self.reader
            .run("read the user", move |conn| {
                conn.prepare_cached(
                    "SELECT id, telegram_id, username, first_name, last_name, language_code,
                        is_admin, created_at, last_seen_at
                     FROM users WHERE telegram_id = ?1",
                )?
                .query_row([telegram_id], stored_user)
                .optional()
            })
            .await
    }

    /// The numbers /stats shows, read on the reading connection: never on the writer's thread,
    /// and in WAL mode never waiting for a write. From revision 5 it sums the hourly summaries
    /// (a row per hour, whatever the number of users: a few ms at 10M users); before, it
    /// counts the tables (seconds at 10M users).
    pub async fn stats(&self) -> anyhow::Result<UserStats> {
        let summaries = self.handles_once();
        self.reader
            .run("count the users", move |conn| {
                let tx = conn.transaction()?; // one snapshot for all the numbers
                let stats = if summaries {
                    summed_stats(&tx)?
                } else {
                    counted_stats(&tx)?
                };
                tx.finish()?;
                Ok(stats)
            })
            .await
    }

    /// One batch of retention, in one short transaction on the writer: removes up to `batch`
    /// rows in all, oldest first, of `command_log` older than `command_log_days` days (0: none,
    /// the log is kept for ever), then (from revision 5) of `handled_updates` older than
    /// [`HANDLED_UPDATES_DAYS`] and of the hourly command counts older than two days. Returns
    /// how many rows it removed: fewer than `batch` means nothing old is left.
    pub async fn trim(&self, command_log_days: u32, batch: usize) -> anyhow::Result<usize> {
        let once = self.handles_once();
        self.writer
            .run("trim old rows", move |conn| {
                with_busy_timeout(conn, BEST_EFFORT_BUSY_TIMEOUT, |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let mut left = batch;
                    let mut delete = |sql: &str, age: String| -> rusqlite::Result<()> {
                        if left > 0 {
                            let removed =
                                tx.prepare_cached(sql)?.execute(params![age, left as i64])?;
                            left -= removed.min(left);
                        }
                        Ok(())
                    };
                    if command_log_days > 0 {
                        delete(
                            "DELETE FROM command_log WHERE id IN (
                                SELECT id FROM command_log WHERE used_at < datetime('now', ?1)
                                ORDER BY used_at LIMIT ?2)",
                            format!("-{command_log_days} days"),
                        )?;
                    }
                    if once {
                        delete(
                            "DELETE FROM handled_updates WHERE update_id IN (
                                SELECT update_id FROM handled_updates
                                WHERE handled_at < datetime('now', ?1)
                                ORDER BY handled_at LIMIT ?2)",
                            format!("-{HANDLED_UPDATES_DAYS} days"),
                        )?;
                        delete(
                            "DELETE FROM stats_commands_hourly WHERE (hour, command) IN (
                                SELECT hour, command FROM stats_commands_hourly
                                WHERE hour < strftime('%Y-%m-%d %H:00:00', 'now', ?1)
                                LIMIT ?2)",
                            format!("-{COMMAND_HOURS_DAYS} days"),
                        )?;
                    }
                    tx.commit()?;
                    Ok(batch - left)
                })
            })
            .await
    }

    /// Waits for the queued work, then closes both connections (the writer last: closing it
    /// checkpoints the WAL into the database file). Later calls on any clone fail with
    /// [`Closed`].
    pub async fn close(self) -> anyhow::Result<()> {
        let read = self.reader.close().await;
        let write = self.writer.close().await;
        read.and(write)
    }
}

/// Puts the database in WAL mode (a no-op when it is). The switch from a rollback journal
/// needs the file to itself for a moment, and SQLite answers "locked" at once, without its busy
/// wait, while another connection holds a read beside a pending write: what a migration that
/// has just committed does for one last look. So it is asked again until the busy timeout.
fn switch_to_wal(conn: &Connection, path: &Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot switch {} to WAL", path.display()));
            }
        }
    }
}

/// The user's row (columns 1 to 8 as [`stored_user`] reads them) and, column 9, whether a write
/// is due: the last-seen time is older than [`LAST_SEEN_EVERY_MINUTES`] (or not a time), or
/// Telegram sent another language.
const SELECT_USER_DUE: &str =
    "SELECT id, telegram_id, username, first_name, last_name, language_code,
        is_admin, created_at, last_seen_at,
        coalesce(julianday(last_seen_at) < julianday('now', ?3), 1)
            OR (?2 IS NOT NULL AND ?2 IS NOT language_code)
     FROM users WHERE telegram_id = ?1";

/// /stats from the hourly summaries of revision 5.
fn summed_stats(conn: &Connection) -> rusqlite::Result<UserStats> {
    let (users_total, new_this_week, active_today, week, day) = conn
        .prepare_cached(
            "SELECT coalesce(sum(registered), 0),
                coalesce(sum(registered) FILTER (
                    WHERE hour >= strftime('%Y-%m-%d %H:00:00', 'now', '-7 days')), 0),
                coalesce(sum(last_seen) FILTER (
                    WHERE hour >= strftime('%Y-%m-%d %H:00:00', 'now', '-1 day')), 0),
                strftime('%Y-%m-%d %H:00', 'now', '-7 days'),
                strftime('%Y-%m-%d %H:00', 'now', '-1 day')
             FROM stats_users_hourly",
        )?
        .query_row([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
    let mut stats = UserStats {
        users_total,
        new_this_week,
        active_today,
        counted_from: Some(HourWindows { week, day }),
        ..UserStats::default()
    };
    let mut statement = conn.prepare_cached(
        "SELECT command, sum(uses) FROM stats_commands_hourly
         WHERE hour >= strftime('%Y-%m-%d %H:00:00', 'now', '-1 day')
         GROUP BY command HAVING sum(uses) > 0 ORDER BY 2 DESC, command",
    )?;
    let counts = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    stats.set_commands(counts);
    Ok(stats)
}

/// /stats before revision 5: counted from the tables (a full scan of `users`).
fn counted_stats(conn: &Connection) -> rusqlite::Result<UserStats> {
    let (users_total, new_this_week, active_today) = conn.query_row(
        "SELECT count(*),
            count(*) FILTER (WHERE created_at >= datetime('now', '-7 days')),
            count(*) FILTER (WHERE last_seen_at >= datetime('now', '-1 day'))
         FROM users",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut stats = UserStats {
        users_total,
        new_this_week,
        active_today,
        ..UserStats::default()
    };
    let mut statement = conn.prepare_cached(
        "SELECT command, count(*) FROM command_log
         WHERE used_at >= datetime('now', '-1 day')
         GROUP BY command ORDER BY count(*) DESC, command",
    )?;
    let counts = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    stats.set_commands(counts);
    Ok(stats)
}

/// Runs `work` with another busy timeout, then puts [`BUSY_TIMEOUT`] back.
fn with_busy_timeout<T>(
    conn: &mut Connection,
    timeout: Duration,
    work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.busy_timeout(timeout)?;
    let result = work(conn);
    let reset = conn.busy_timeout(BUSY_TIMEOUT);
    let value = result?;
    reset?;
    Ok(value)
}

/// Records `update_id` in `handled_updates`; false when it was there already.
/// Whether `update_id` is recorded as handled.
fn was_handled(conn: &Connection, update_id: i64) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM handled_updates WHERE update_id = ?1")?
        .query_row([update_id], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

fn mark_handled(conn: &Connection, update_id: i64) -> rusqlite::Result<bool> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO handled_updates (update_id) VALUES (?1) ON CONFLICT DO NOTHING",
        )?
        .execute([update_id])?;
    Ok(inserted == 1)
}

/// The connection thread: runs jobs in arrival order until asked to close (or every [`Store`]
/// is gone).
fn serve(mut conn: Connection, queue: mpsc::Receiver<Request>, writes: bool) {
    while let Ok(request) = queue.recv() {
        match request {
            Request::Run(job) => {
                // A panicking job must not take the connection with it; its transaction rolls
                // back as it unwinds, and its caller sees an error.
                let run = std::panic::AssertUnwindSafe(|| job(&mut conn));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("a database job panicked; its transaction was rolled back");
                }
            }
            Request::Close(done) => {
                // From here on every call fails at once with `Closed`.
                drop(queue);
                // Not worth waiting for another process's lock at a stop.
                let _ = conn.busy_timeout(Duration::ZERO);
                if writes && let Err(e) = conn.execute_batch("PRAGMA optimize") {
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

/// Reads columns 1 to 8 of a user's row (column 0 is `id`).
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

/// Test databases made by the migrations engine, as `bot db upgrade` makes them.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;

    use rusqlite::Connection;

    use super::Store;

    /// A database file in a folder of its own, removed when dropped.
    pub struct TempDb {
        dir: PathBuf,
        pub path: PathBuf,
    }

    impl TempDb {
        /// A database at this build's head.
        pub fn new(name: &str) -> TempDb {
            TempDb::at(name, migrations::head())
        }

        /// A database at `revision`.
        pub fn at(name: &str, revision: u32) -> TempDb {
            let dir = std::env::temp_dir().join(format!(
                "bot-store-test-{}-{name}-r{revision}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("bot_database.db");
            migrations::Database::open(&path)
                .unwrap()
                .upgrade_to(revision, |_| {})
                .unwrap();
            TempDb { dir, path }
        }

        /// The bot's store on it, as `bot run` opens it (the database must be at head).
        pub fn open(&self) -> Store {
            Store::open(&self.path).unwrap()
        }

        /// The store as a release whose schema head is `revision` opens it: what an older
        /// release built from this code does on its own database.
        pub fn open_as_release(&self, revision: u32) -> Store {
            Store::connect(&self.path, revision).unwrap()
        }

        /// Another connection, as another process would have it.
        pub fn conn(&self) -> Connection {
            let conn = Connection::open(&self.path).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            conn
        }

        /// One number from SQL.
        pub fn count(&self, sql: &str) -> i64 {
            self.conn().query_row(sql, [], |r| r.get(0)).unwrap()
        }
    }

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TempDb;
    use super::*;

    #[test]
    fn the_bot_serves_a_current_database_waits_for_a_migration_and_refuses_the_rest() {
        assert_eq!(Verdict::of(Some(State::Current)), Verdict::Serve);
        for state in [
            None,
            Some(State::Empty),
            Some(State::Unstamped),
            Some(State::Foreign),
            Some(State::Behind),
        ] {
            assert_eq!(Verdict::of(state), Verdict::Wait, "{state:?}");
        }
        for state in [State::Ahead, State::Modified, State::Drifted] {
            assert_eq!(Verdict::of(Some(state)), Verdict::Refuse, "{state:?}");
        }
    }

    fn facts(telegram_id: i64) -> UserFacts {
        UserFacts {
            telegram_id,
            username: None,
            first_name: format!("User {telegram_id}"),
            last_name: None,
            language_code: None,
        }
    }

    /// Fills users and command_log through other connections' SQL: registrations and last-seen
    /// times far from an hour's edge, deletions, moves, a junk timestamp.
    fn activity(db: &TempDb) {
        db.conn()
            .execute_batch(
                "INSERT INTO users (telegram_id, first_name, created_at, last_seen_at) VALUES
                    (1, 'a', datetime('now', '-30 days'), datetime('now', '-3 days')),
                    (2, 'b', datetime('now', '-3 days'), datetime('now', '-2 hours')),
                    (3, 'c', datetime('now', '-2 hours'), NULL),
                    (4, 'd', '1999-13-45', '1999-99-99'),
                    (5, 'e', datetime('now', '-40 days'), datetime('now', '-30 hours')),
                    (6, 'f', datetime('now', '-1 hour'), datetime('now', '-1 hour'));
                 INSERT INTO command_log (user_id, command, used_at)
                    SELECT id, 'help', datetime('now', '-2 hours') FROM users;
                 INSERT INTO command_log (user_id, command, used_at)
                    SELECT id, 'start', datetime('now', '-3 days') FROM users WHERE id < 4;
                 INSERT INTO command_log (user_id, command)
                    SELECT id, 'me' FROM users WHERE id > 2;
                 UPDATE users SET last_seen_at = datetime('now', '-3 hours') WHERE telegram_id = 1;
                 UPDATE users SET created_at = datetime('now', '-4 days') WHERE telegram_id = 5;
                 UPDATE command_log SET command = 'stats' WHERE id = 1;
                 DELETE FROM users WHERE telegram_id = 6;",
            )
            .unwrap();
    }

    #[tokio::test]
    async fn the_hourly_summaries_agree_with_the_tables() {
        let db = TempDb::new("summaries");
        activity(&db);
        let store = db.open();
        store.register(1, facts(7), "start").await.unwrap();
        store.seen(2, 2, None, Some("help".into())).await.unwrap();
        let counted = store
            .reader
            .run("count", |conn| counted_stats(conn))
            .await
            .unwrap();
        let summed = store.stats().await.unwrap();
        // The same numbers; only the summaries name the hours their windows start at.
        assert!(summed.counted_from.is_some());
        assert_eq!(
            UserStats {
                counted_from: None,
                ..summed.clone()
            },
            counted
        );
        assert_eq!(
            (
                summed.users_total,
                summed.new_this_week,
                summed.active_today
            ),
            (6, 4, 3),
            "{summed:?}"
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn the_migration_fills_the_summaries_from_the_rows_there_are() {
        if migrations::head() < REVISION_HANDLED_ONCE {
            return;
        }
        let db = TempDb::at("backfill", REVISION_HANDLED_ONCE - 1);
        activity(&db);
        migrations::Database::open(&db.path)
            .unwrap()
            .upgrade(|_| {})
            .unwrap();
        let store = db.open();
        let counted = store
            .reader
            .run("count", |conn| counted_stats(conn))
            .await
            .unwrap();
        let summed = store.stats().await.unwrap();
        assert_eq!(
            UserStats {
                counted_from: None,
                ..summed
            },
            counted
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_flood_of_made_up_commands_is_summed_up_as_others() {
        let db = TempDb::new("flood");
        let store = db.open();
        store.register(1, facts(1), "start").await.unwrap();
        store.register(2, facts(1), "start").await.unwrap();
        // The known commands come first: an hour that is full counts later names as others.
        db.conn()
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150)
                 INSERT INTO command_log (user_id, command)
                    SELECT 1, 'help' FROM n WHERE i <= 3;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150)
                 INSERT INTO command_log (user_id, command)
                    SELECT 1, printf('junk%028d', i) FROM n;",
            )
            .unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.commands_today.len(), TOP_COMMANDS);
        assert_eq!(stats.commands_today[0], ("help".into(), 3));
        assert_eq!(stats.commands_today[1], ("start".into(), 2));
        let named: i64 = stats.commands_today.iter().map(|(_, n)| n).sum();
        assert_eq!(named + stats.other_commands, 155, "{stats:?}");
        if store.handles_once() {
            assert!(
                db.count("SELECT count(*) FROM stats_commands_hourly") <= 101,
                "an hour keeps at most 100 names and ''"
            );
        }
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn retention_trims_in_batches_and_keeps_what_is_recent() {
        let db = TempDb::new("retention");
        let store = db.open();
        store.register(1, facts(1), "start").await.unwrap();
        db.conn()
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
                 INSERT INTO command_log (user_id, command, used_at)
                    SELECT 1, 'help', datetime('now', '-91 days', '-' || i || ' minutes') FROM n;
                 INSERT INTO command_log (user_id, command, used_at)
                    VALUES (1, 'me', datetime('now', '-89 days'));",
            )
            .unwrap();
        // From revision 5 the summary's hours of those old rows go too.
        let hours = if store.handles_once() {
            db.count(
                "SELECT count(*) FROM stats_commands_hourly
                 WHERE hour < strftime('%Y-%m-%d %H:00:00', 'now', '-2 days')",
            ) as usize
        } else {
            0
        };
        let mut batches = Vec::new();
        loop {
            let removed = store.trim(90, 1000).await.unwrap();
            batches.push(removed);
            if removed < 1000 {
                break;
            }
        }
        assert_eq!(batches, [1000, 1000, 500 + hours]);
        assert_eq!(
            db.count("SELECT count(*) FROM command_log"),
            2,
            "the /start of now and the /me of 89 days ago are kept"
        );
        assert_eq!(store.trim(0, 1000).await.unwrap(), 0);
        assert_eq!(store.trim(88, 1000).await.unwrap(), 1);
        assert_eq!(store.trim(0, 1000).await.unwrap(), 0, "0 keeps the log");
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn retention_trims_old_update_ids_and_command_hours() {
        let db = TempDb::new("retention-updates");
        if migrations::head() < REVISION_HANDLED_ONCE {
            return;
        }
        let store = db.open();
        store.register(5000, facts(1), "start").await.unwrap();
        db.conn()
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)
                 INSERT INTO handled_updates (update_id, handled_at)
                    SELECT i, datetime('now', '-3 days') FROM n;
                 INSERT INTO command_log (user_id, command, used_at)
                    VALUES (1, 'help', datetime('now', '-3 days'));",
            )
            .unwrap();
        assert_eq!(db.count("SELECT count(*) FROM stats_commands_hourly"), 2);
        assert_eq!(store.trim(0, 1000).await.unwrap(), 1000);
        assert_eq!(store.trim(0, 1000).await.unwrap(), 501, "500 ids, 1 hour");
        assert_eq!(
            db.count("SELECT count(*) FROM handled_updates WHERE update_id = 5000"),
            1
        );
        assert_eq!(db.count("SELECT count(*) FROM handled_updates"), 1);
        assert_eq!(db.count("SELECT count(*) FROM stats_commands_hourly"), 1);
        assert_eq!(
            db.count("SELECT count(*) FROM command_log"),
            2,
            "kept for ever"
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn the_retention_task_trims_until_done_and_ends_with_the_store() {
        let db = TempDb::new("retention-task");
        let store = db.open();
        store.register(1, facts(1), "start").await.unwrap();
        db.conn()
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 250)
                 INSERT INTO command_log (user_id, command, used_at)
                    SELECT 1, 'help', datetime('now', '-8 days') FROM n;",
            )
            .unwrap();
        let retention = crate::retention::Retention {
            command_log_days: 7,
            batch: 100,
            pause: Duration::from_millis(1),
            every: Duration::from_millis(20),
        };
        let task = crate::retention::spawn_with(store.clone(), retention, Duration::ZERO);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db.count("SELECT count(*) FROM command_log") > 1 {
            assert!(std::time::Instant::now() < deadline, "retention never ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.close().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends once the store is closed")
            .unwrap();
    }

    #[tokio::test]
    async fn a_database_serves_one_bot_unless_another_takes_it_over() {
        if migrations::head() < REVISION_UNSENT_ANSWERS {
            return;
        }
        let db = TempDb::new("owner");
        let store = db.open();
        assert_eq!(
            store.claim(1, "demo_bot", false).await.unwrap(),
            Owner::This
        );
        assert_eq!(
            store.claim(1, "renamed_bot", false).await.unwrap(),
            Owner::This
        );
        store.register(7, facts(7), "start").await.unwrap();
        let other = Owner::Other {
            bot_id: 1,
            username: "renamed_bot".into(),
        };
        assert_eq!(store.claim(2, "other_bot", false).await.unwrap(), other);
        assert_eq!(
            db.count("SELECT count(*) FROM handled_updates"),
            1,
            "left as it is"
        );
        assert_eq!(
            store.claim(2, "other_bot", true).await.unwrap(),
            Owner::TakenOver {
                username: "renamed_bot".into()
            }
        );
        assert_eq!(db.count("SELECT count(*) FROM handled_updates"), 0);
        assert_eq!(db.count("SELECT count(*) FROM users"), 1, "the users stay");
        assert_eq!(
            store.claim(2, "other_bot", true).await.unwrap(),
            Owner::This
        );
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn answers_kept_at_a_stop_are_read_back_and_deleted_once_sent() {
        if migrations::head() < REVISION_UNSENT_ANSWERS {
            return;
        }
        let db = TempDb::new("unsent");
        let store = db.open();
        let kept = |update_id| Unsent {
            update_id,
            chat_id: 40 + update_id,
            text: format!("answer {update_id}"),
        };
        let limit = Duration::from_secs(1);
        assert!(
            store
                .keep_unsent(vec![kept(3), kept(2), kept(5)], Vec::new(), limit)
                .await
                .unwrap()
        );
        assert!(store.keep_unsent(Vec::new(), vec![5], limit).await.unwrap());
        assert_eq!(store.unsent().await.unwrap(), [kept(2), kept(3)]);
        assert_eq!(
            store.record_handled(vec![2, 3, 4]).await.unwrap(),
            [false, false, true],
            "their updates are recorded as handled with them"
        );
        store.sent(vec![2]).await.unwrap();
        assert_eq!(store.unsent().await.unwrap(), [kept(3)]);
        store.close().await.unwrap();

        let older = TempDb::at("unsent-older", REVISION_UNSENT_ANSWERS - 1);
        let store = older.open_as_release(REVISION_UNSENT_ANSWERS - 1);
        assert!(
            !store
                .keep_unsent(vec![kept(1)], Vec::new(), Duration::from_secs(1))
                .await
                .unwrap()
        );
        assert!(store.unsent().await.unwrap().is_empty());
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn updates_saved_before_the_offset_passes_them_are_read_back_until_handled() {
        if migrations::head() < REVISION_UNSENT_ANSWERS {
            return;
        }
        let db = TempDb::new("pending");
        let store = db.open();
        let limit = Duration::from_secs(1);
        store
            .save_pending(vec![(7, "{}".into()), (3, "{\"a\":1}".into())], limit)
            .await
            .unwrap();
        store
            .save_pending(vec![(3, "again".into())], limit)
            .await
            .unwrap();
        assert_eq!(
            store.pending().await.unwrap(),
            [(3, "{\"a\":1}".to_owned()), (7, "{}".to_owned())]
        );
        store.record_handled(vec![3]).await.unwrap();
        assert_eq!(store.pending().await.unwrap(), [(7, "{}".to_owned())]);
        assert_eq!(store.forget_handled_pending().await.unwrap(), 1);
        assert_eq!(db.count("SELECT count(*) FROM pending_updates"), 1);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn an_older_release_works_on_its_own_schema() {
        for revision in [3, 4].into_iter().filter(|r| *r <= migrations::head()) {
            let db = TempDb::at("older", revision);
            let store = db.open_as_release(revision);
            assert_eq!(
                store.register(1, facts(1), "start").await.unwrap(),
                Handled::Done(Registration::New)
            );
            assert_eq!(
                store.register(1, facts(1), "start").await.unwrap(),
                Handled::Done(Registration::Refreshed),
                "revision {revision} has no handled_updates: the update is handled again"
            );
            let seen = store.seen(2, 1, None, Some("help".into())).await.unwrap();
            assert!(matches!(seen, Handled::Done(Some(_))), "{seen:?}");
            let stats = store.stats().await.unwrap();
            assert_eq!((stats.users_total, stats.active_today), (1, 1), "{stats:?}");
            assert_eq!(
                stats.commands_today,
                [("start".into(), 2), ("help".into(), 1)]
            );
            assert_eq!(store.trim(90, 1000).await.unwrap(), 0);
            store.close().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_closed_store_says_so() {
        let db = TempDb::new("closed");
        let store = db.open();
        let other = store.clone();
        store.close().await.unwrap();
        let error = other.trim(90, 10).await.unwrap_err();
        assert!(error.downcast_ref::<Closed>().is_some(), "{error:#}");
    }
}
