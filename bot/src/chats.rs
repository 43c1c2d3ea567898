//! Answering messages: one worker per chat, so that each chat's messages are answered in the
//! order they came and a chat that waits (a 429 for it, a slow answer) holds up nobody else,
//! while the polling loop goes on fetching. A user who writes faster than the per-user limit is
//! not answered (and costs no write) until they slow down.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use teloxide::prelude::*;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::commands::{self, Answer, ChatKind, Incoming};
use crate::config::{AdminIds, redact};
use crate::replies::{Outbox, Pace, fit};
use crate::store::{Store, UserFacts};

/// The answer when the database fails under a message, so the user is not left waiting.
const SORRY: &str = "Sorry, something went wrong on my side. Please try again in a minute.";

/// Messages waiting or being answered, over all chats, beyond which the loop stops fetching
/// until some are done: memory stays bounded when answers cannot keep up.
pub const MAX_IN_FLIGHT: usize = 1000;

/// Everything the workers share.
pub struct Shared {
    /// The database.
    pub store: Store,
    /// Admins from ADMIN_IDS.
    pub admins: AdminIds,
    /// The bot's username (without @), to tell commands addressed to other bots.
    pub me: String,
    /// Where answers go out.
    pub outbox: Outbox,
    /// BOT_TOKEN, to keep it out of log lines.
    pub token: String,
}

/// The update ids answered and not yet recorded as handled, shared by the workers and the
/// loop that records them.
#[derive(Clone, Default)]
pub struct Answered(Arc<Mutex<Vec<i64>>>);

impl Answered {
    /// The ids answered since the last call.
    pub fn take(&self) -> Vec<i64> {
        std::mem::take(&mut *lock(&self.0))
    }
}

/// One message to answer.
struct Job {
    update_id: i64,
    message: Message,
}

/// A chat's worker: its queue, and how many of its messages are queued or being answered.
struct Worker {
    queue: mpsc::UnboundedSender<Job>,
    pending: Arc<AtomicUsize>,
}

/// The dispatcher the polling loop hands messages to.
pub struct Chats {
    shared: Arc<Shared>,
    workers: HashMap<ChatId, Worker>,
    running: JoinSet<()>,
    /// Update ids handed out and not yet answered.
    unfinished: Arc<Mutex<BTreeSet<i64>>>,
    /// Update ids answered since the last note of them (see [`Chats::answered`]).
    answered: Answered,
    /// Told each time a message is answered: the polling loop may move its offset on.
    progress: Arc<Notify>,
    per_user: Option<(DefaultKeyedRateLimiter<u64>, u32)>,
    /// Users whose messages are being ignored, so that the log says so once per flood.
    flooding: HashSet<u64>,
}

impl Chats {
    /// A dispatcher; `user_messages_per_minute` is the per-user limit (0: none).
    pub fn new(shared: Arc<Shared>, user_messages_per_minute: u32) -> Chats {
        Chats {
            shared,
            workers: HashMap::new(),
            running: JoinSet::new(),
            unfinished: Arc::default(),
            answered: Answered::default(),
            progress: Arc::default(),
            per_user: NonZeroU32::new(user_messages_per_minute)
                .map(|n| (RateLimiter::keyed(Quota::per_minute(n)), n.get())),
            flooding: HashSet::new(),
        }
    }

    /// Hands a message to its chat's worker (starting one if needed); a message over its
    /// sender's limit is dropped here, before any write.
    pub fn dispatch(&mut self, update_id: i64, message: Message) {
        if let (Some((limit, per_minute)), Some(from)) = (&self.per_user, message.from.as_ref()) {
            let user = from.id.0;
            if limit.check_key(&user).is_err() {
                if self.flooding.insert(user) {
                    tracing::warn!(
                        "user {user} writes faster than {per_minute} messages a minute: their messages are ignored (no answer, no write) until they slow down"
                    );
                }
                return;
            }
            if self.flooding.remove(&user) {
                tracing::info!("user {user} slowed down: answered again");
            }
        }
        lock(&self.unfinished).insert(update_id);
        let chat = message.chat.id;
        let job = Job { update_id, message };
        let job = match self.workers.get(&chat) {
            Some(worker) => {
                worker.pending.fetch_add(1, Ordering::SeqCst);
                match worker.queue.send(job) {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(job)) => {
                        // The worker is gone (it panicked): start another.
                        self.workers.remove(&chat);
                        job
                    }
                }
            }
            None => job,
        };
        let (queue, jobs) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(1));
        queue
            .send(job)
            .unwrap_or_else(|_| unreachable!("the receiver is alive"));
        self.running.spawn(work(
            Arc::clone(&self.shared),
            jobs,
            Arc::clone(&pending),
            Arc::clone(&self.unfinished),
            self.answered.clone(),
            Arc::clone(&self.progress),
        ));
        self.workers.insert(chat, Worker { queue, pending });
    }

    /// The update ids answered since the last call: for [`Store::note_handled`], which records
    /// those whose handling wrote nothing.
    pub fn answered(&self) -> Answered {
        self.answered.clone()
    }

    /// Resolves when a message was answered since the last time it resolved.
    pub async fn answered_one(&self) {
        self.progress.notified().await;
    }

    /// The lowest update handed out and not yet answered.
    pub fn lowest_unanswered(&self) -> Option<i64> {
        lock(&self.unfinished).first().copied()
    }

    /// Messages handed out and not yet answered.
    pub fn in_flight(&self) -> usize {
        lock(&self.unfinished).len()
    }

    /// Lets go of the workers of chats with nothing to do (their tasks end), and forgets idle
    /// users' and chats' rate-limit state. Only a chat with nothing queued is let go, so the
    /// order within a chat holds: a new message starts a new worker after the old one is done.
    pub fn tidy(&mut self) {
        self.workers
            .retain(|_, worker| worker.pending.load(Ordering::SeqCst) > 0);
        while self.running.try_join_next().is_some() {}
        if let Some((limit, _)) = &self.per_user {
            limit.retain_recent();
        }
    }

    /// Stops taking messages and waits up to `grace` for every chat to finish what it has;
    /// returns the lowest update id left unanswered, if any.
    pub async fn finish(mut self, grace: Duration) -> Option<i64> {
        self.workers.clear();
        let unfinished = Arc::clone(&self.unfinished);
        let drained = tokio::time::timeout(grace, async {
            while self.running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.running.abort_all();
        }
        lock(&unfinished).first().copied()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A chat's worker: answers its messages in order until its queue is let go.
async fn work(
    shared: Arc<Shared>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    pending: Arc<AtomicUsize>,
    unfinished: Arc<Mutex<BTreeSet<i64>>>,
    answered: Answered,
    progress: Arc<Notify>,
) {
    let mut pace = Pace::default();
    while let Some(Job { update_id, message }) = jobs.recv().await {
        answer(&shared, update_id, message, &mut pace).await;
        lock(&answered.0).push(update_id);
        lock(&unfinished).remove(&update_id);
        pending.fetch_sub(1, Ordering::SeqCst);
        progress.notify_one();
    }
}

async fn answer(shared: &Shared, update_id: i64, message: Message, pace: &mut Pace) {
    let (Some(from), Some(text)) = (message.from.as_ref(), message.text()) else {
        return;
    };
    let incoming = Incoming {
        update_id,
        chat: if message.chat.is_private() {
            ChatKind::Private
        } else {
            ChatKind::Group
        },
        user: UserFacts {
            telegram_id: from.id.0 as i64,
            username: from.username.clone(),
            first_name: from.first_name.clone(),
            last_name: from.last_name.clone(),
            language_code: from.language_code.clone(),
        },
        text: text.to_owned(),
    };
    shared.outbox.wait_turn(message.chat.id, pace).await;
    let answered = commands::answer(&shared.store, &shared.admins, &shared.me, incoming).await;
    let reply = match answered {
        Ok(Answer::Reply(reply)) => reply,
        Ok(Answer::Nothing) => return,
        Ok(Answer::AlreadyHandled) => {
            tracing::info!(
                "update {update_id} was handled before (its effects are in the database): not answered again"
            );
            return;
        }
        Err(e) => {
            tracing::error!(
                "message {} from user {} not handled, answered with an apology: {}",
                message.id,
                from.id,
                redact(&format!("{e:#}"), &shared.token)
            );
            SORRY.to_owned()
        }
    };
    shared.outbox.send(message.chat.id, &fit(reply), pace).await;
}
