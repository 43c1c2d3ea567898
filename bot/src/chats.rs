//! Answering messages: one worker per chat, so that each chat's messages are answered in the
//! order they came and a chat that waits (a 429 for it, a slow answer) holds up nobody else,
//! while the polling loop goes on fetching. A user who writes faster than the per-user limit is
//! not answered (and costs no write) until they slow down.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use teloxide::prelude::*;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::commands::{self, Answer, ChatKind, Incoming, Record};
use crate::config::{AdminIds, redact};
use crate::handled::{Recorder, Recording};
use crate::replies::{Outbox, Pace, Sent, fit};
use crate::store::{Store, Unsent, UserFacts};

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
    /// Where the ids of updates whose handling wrote nothing are recorded.
    pub recorder: Recorder,
    /// The answers being sent, by update id: what a stop cuts off is kept for the next start.
    pub sending: Mutex<BTreeMap<i64, Sending>>,
    /// BOT_TOKEN, to keep it out of log lines.
    pub token: String,
}

/// An answer being sent.
#[derive(Debug)]
pub struct Sending {
    answer: Unsent,
    /// A request is out: if the send is cut off now, Telegram may have delivered it.
    requesting: bool,
    /// It is an answer a stop kept, sent again (its row stays until it is sent).
    kept: bool,
}

/// What [`Chats::finish`] leaves.
pub struct Finished {
    /// The lowest update id left unanswered, if any.
    pub lowest_unanswered: Option<i64>,
    /// Answers cut off while they waited (a 429, the limits): surely not delivered.
    pub unsent: Vec<Unsent>,
    /// Kept answers sent, or cut off with the request out (maybe delivered): their rows go.
    pub sent_kept: Vec<i64>,
    /// New answers cut off with a request out: maybe delivered, so not sent again.
    pub maybe_sent: usize,
}

/// What a chat's worker does next.
enum Job {
    /// Answer a message.
    Message {
        update_id: i64,
        message: Box<Message>,
    },
    /// Send an answer a stop kept.
    Kept(Unsent),
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
    /// Update ids handed out and not yet answered, with the message while it is not saved in
    /// `pending_updates` (see [`Chats::take_unsaved`]).
    unfinished: Arc<Mutex<BTreeMap<i64, Option<Message>>>>,
    /// Kept answers handed to the workers and not yet deleted from the database.
    kept: HashSet<i64>,
    /// Kept answers sent (or cut off with the request out), whose rows are to be deleted.
    sent_kept: Arc<Mutex<Vec<i64>>>,
    /// Told each time a message is answered: the polling loop may move its offset on.
    progress: Arc<Notify>,
    per_user: Option<PerUserLimit>,
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
            kept: HashSet::new(),
            sent_kept: Arc::default(),
            progress: Arc::default(),
            per_user: (user_messages_per_minute > 0)
                .then(|| PerUserLimit::new(user_messages_per_minute)),
            flooding: HashSet::new(),
        }
    }

    /// Hands a message to its chat's worker (starting one if needed); a message over its
    /// sender's limit is dropped here, before any write.
    pub fn dispatch(&mut self, update_id: i64, message: Message) {
        if let (Some(limit), Some(from)) = (&mut self.per_user, message.from.as_ref()) {
            let user = from.id.0;
            if !limit.allows(user, Instant::now()) {
                if self.flooding.insert(user) {
                    tracing::warn!(
                        "user {user} writes faster than {} messages a minute: their messages are ignored (no answer, no write) until they slow down",
                        limit.per_minute
                    );
                }
                return;
            }
            if self.flooding.remove(&user) {
                tracing::info!("user {user} slowed down: answered again");
            }
        }
        lock(&self.unfinished).insert(update_id, Some(message.clone()));
        let chat = message.chat.id;
        self.hand_over(
            chat,
            Job::Message {
                update_id,
                message: Box::new(message),
            },
        );
    }

    /// Hands a message saved before a stop or a crash (`pending_updates`) to its chat's
    /// worker, as [`Chats::dispatch`] does (it is saved already).
    pub fn dispatch_saved(&mut self, update_id: i64, message: Message) {
        self.dispatch(update_id, message);
        if let Some(unsaved) = lock(&self.unfinished).get_mut(&update_id) {
            *unsaved = None;
        }
    }

    /// Hands an answer a stop kept to its chat's worker, unless it was handed over already:
    /// it goes out in order with the chat's other answers, at the chat's pace.
    pub fn dispatch_kept(&mut self, answer: Unsent) {
        // One being sent (and kept while Telegram does not take it), or sent and not deleted
        // yet, is not handed over again.
        if lock(&self.shared.sending).contains_key(&answer.update_id)
            || lock(&self.sent_kept).contains(&answer.update_id)
        {
            return;
        }
        if self.kept.insert(answer.update_id) {
            self.hand_over(ChatId(answer.chat_id), Job::Kept(answer));
        }
    }

    /// The kept answers sent since the last call, whose rows are to be deleted (then see
    /// [`Chats::deleted_kept`]).
    pub fn take_sent_kept(&self) -> Vec<i64> {
        std::mem::take(&mut *lock(&self.sent_kept))
    }

    /// Notes kept answers whose rows are deleted now, or (`deleted` false) to delete later.
    pub fn deleted_kept(&mut self, update_ids: Vec<i64>, deleted: bool) {
        if deleted {
            for id in update_ids {
                self.kept.remove(&id);
            }
        } else {
            lock(&self.sent_kept).extend(update_ids);
        }
    }

    /// The messages handed out, not answered, below `below` and not saved yet: taken to be
    /// saved before the offset passes them (see [`Chats::unsaved_again`] when that fails).
    pub fn take_unsaved(&self, below: i64) -> Vec<(i64, Message)> {
        lock(&self.unfinished)
            .range_mut(..below)
            .filter_map(|(id, message)| message.take().map(|m| (*id, m)))
            .collect()
    }

    /// Puts back messages [`Chats::take_unsaved`] took whose saving failed.
    pub fn unsaved_again(&self, messages: Vec<(i64, Message)>) {
        let mut unfinished = lock(&self.unfinished);
        for (id, message) in messages {
            if let Some(slot) = unfinished.get_mut(&id) {
                *slot = Some(message);
            }
        }
    }

    /// Gives `job` to `chat`'s worker, starting one if needed.
    fn hand_over(&mut self, chat: ChatId, job: Job) {
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
            Arc::clone(&self.sent_kept),
            Arc::clone(&self.progress),
        ));
        self.workers.insert(chat, Worker { queue, pending });
    }

    /// Resolves when a message was answered since the last time it resolved.
    pub async fn answered_one(&self) {
        self.progress.notified().await;
    }

    /// The lowest update handed out and not yet answered.
    pub fn lowest_unanswered(&self) -> Option<i64> {
        lock(&self.unfinished).keys().next().copied()
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
        if let Some(limit) = &mut self.per_user {
            limit.forget_idle(Instant::now());
        }
    }

    /// Stops taking messages and waits up to `grace` for every chat to finish what it has;
    /// says what was left.
    pub async fn finish(mut self, grace: Duration) -> Finished {
        self.workers.clear();
        let unfinished = Arc::clone(&self.unfinished);
        let drained = tokio::time::timeout(grace, async {
            while self.running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.running.abort_all();
            while self.running.join_next().await.is_some() {}
        }
        let (requesting, waiting): (Vec<Sending>, Vec<Sending>) =
            std::mem::take(&mut *lock(&self.shared.sending))
                .into_values()
                .partition(|sending| sending.requesting);
        let (kept_out, new_out): (Vec<Sending>, Vec<Sending>) =
            requesting.into_iter().partition(|s| s.kept);
        let mut sent_kept = std::mem::take(&mut *lock(&self.sent_kept));
        sent_kept.extend(kept_out.into_iter().map(|s| s.answer.update_id));
        Finished {
            lowest_unanswered: lock(&unfinished).keys().next().copied(),
            unsent: waiting.into_iter().map(|s| s.answer).collect(),
            sent_kept,
            maybe_sent: new_out.len(),
        }
    }
}

/// The per-user limit on incoming messages: at most `per_minute` of one user's messages are
/// answered within any 60 s. A log of the times of each user's last answered messages, because a
/// rate limiter's quota (governor's, a burst of N then one every 60/N s) lets up to 2N-1
/// through within a minute.
struct PerUserLimit {
    per_minute: u32,
    answered: HashMap<u64, VecDeque<Instant>>,
}

/// The window the per-user limit counts in.
const USER_WINDOW: Duration = Duration::from_secs(60);

impl PerUserLimit {
    fn new(per_minute: u32) -> PerUserLimit {
        PerUserLimit {
            per_minute,
            answered: HashMap::new(),
        }
    }

    /// Whether `user`'s message at `now` is answered; notes it when it is.
    fn allows(&mut self, user: u64, now: Instant) -> bool {
        let times = self.answered.entry(user).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= USER_WINDOW)
        {
            times.pop_front();
        }
        if times.len() >= self.per_minute as usize {
            return false;
        }
        times.push_back(now);
        true
    }

    /// Forgets users with nothing answered in the last minute (memory stays with the active).
    fn forget_idle(&mut self, now: Instant) {
        self.answered.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < USER_WINDOW)
        });
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
    unfinished: Arc<Mutex<BTreeMap<i64, Option<Message>>>>,
    sent_kept: Arc<Mutex<Vec<i64>>>,
    progress: Arc<Notify>,
) {
    let mut pace = Pace::default();
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Message { update_id, message } => {
                if answer(&shared, update_id, *message, &mut pace).await {
                    lock(&sent_kept).push(update_id);
                }
                lock(&unfinished).remove(&update_id);
            }
            Job::Kept(kept) => {
                let update_id = kept.update_id;
                send(&shared, kept, true, &mut pace).await;
                lock(&sent_kept).push(update_id);
            }
        }
        pending.fetch_sub(1, Ordering::SeqCst);
        progress.notify_one();
    }
}

/// Answers one message; whether its answer ended up kept in the database (see [`send`]).
async fn answer(shared: &Shared, update_id: i64, message: Message, pace: &mut Pace) -> bool {
    let (Some(from), Some(text)) = (message.from.as_ref(), message.text()) else {
        return false;
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
    if commands::is_answered(incoming.chat, &incoming.text, &shared.me) {
        shared.outbox.wait_turn(message.chat.id, pace).await;
    }
    let answered = commands::answer(&shared.store, &shared.admins, &shared.me, incoming).await;
    let (reply, record) = match answered {
        Ok(Answer::Reply(reply, record)) => (reply, record),
        Ok(Answer::Nothing) => {
            // Nothing to answer twice; recorded all the same, in the next batch, so that a
            // second delivery is passed over without a look at the database's users.
            shared.recorder.later(update_id);
            return false;
        }
        Ok(Answer::AlreadyHandled) => {
            tracing::info!(
                "update {update_id} was handled before (its effects are in the database): not answered again"
            );
            return false;
        }
        Err(e) => {
            tracing::error!(
                "message {} from user {} not handled, answered with an apology: {}",
                message.id,
                from.id,
                redact(&format!("{e:#}"), &shared.token)
            );
            (SORRY.to_owned(), Record::Later)
        }
    };
    match record {
        Record::Written => {}
        Record::First => {
            if shared.recorder.record(update_id).await == Recording::Before {
                tracing::info!(
                    "update {update_id} was answered before (before a restart, or by another instance with this BOT_TOKEN): not answered again"
                );
                return false;
            }
        }
        Record::Later => shared.recorder.later(update_id),
    }
    let answer = Unsent {
        update_id,
        chat_id: message.chat.id.0,
        text: fit(reply),
    };
    send(shared, answer, false, pace).await
}

/// Sends `answer`, noted in [`Shared::sending`] while it goes: a stop that cuts it off keeps
/// it if it was waiting, and knows it may be delivered if its request was out. An answer
/// Telegram surely did not take after every try (an outage) is kept in the database (a crash
/// meanwhile leaves it to the next start) and tried again every [`NOT_YET_PAUSE`], the chat's
/// later answers waiting behind it. Returns whether this call put it in the database (its row
/// is then to be deleted).
async fn send(shared: &Shared, answer: Unsent, kept: bool, pace: &mut Pace) -> bool {
    let update_id = answer.update_id;
    let (chat, text) = (ChatId(answer.chat_id), answer.text.clone());
    // In `sending` until it is done, pauses included: the upkeep hands no kept answer over
    // twice, and a stop keeps it.
    lock(&shared.sending).insert(
        update_id,
        Sending {
            answer,
            requesting: false,
            kept,
        },
    );
    let requesting = |out: bool| {
        if let Some(sending) = lock(&shared.sending).get_mut(&update_id) {
            sending.requesting = out;
        }
    };
    let mut saved = false;
    while shared.outbox.send(chat, &text, pace, &requesting).await == Sent::NotYet {
        let unsaved = lock(&shared.sending)
            .get(&update_id)
            .filter(|s| !s.kept)
            .map(|s| s.answer.clone());
        if let Some(answer) = unsaved {
            match shared
                .store
                .keep_unsent(vec![answer], Vec::new(), KEEP_WAIT)
                .await
            {
                Ok(true) => {
                    saved = true;
                    if let Some(sending) = lock(&shared.sending).get_mut(&update_id) {
                        sending.kept = true;
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("{e:#}; the answer is tried again, not kept"),
            }
        }
        tokio::time::sleep(NOT_YET_PAUSE).await;
    }
    lock(&shared.sending).remove(&update_id);
    saved
}

/// How long keeping an answer Telegram did not take waits for another process's lock.
const KEEP_WAIT: Duration = Duration::from_secs(2);
/// The pause before an answer Telegram did not take after every try is tried again.
const NOT_YET_PAUSE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_user_limit_counts_any_sixty_seconds() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut limit = PerUserLimit::new(2);
        assert!(limit.allows(7, at(0)));
        assert!(limit.allows(7, at(0)));
        assert!(!limit.allows(7, at(31)), "a third within the minute");
        assert!(limit.allows(8, at(31)), "another user is not limited by it");
        assert!(limit.allows(7, at(60)), "the first two are a minute old");
        assert!(limit.allows(7, at(60)));
        assert!(!limit.allows(7, at(119)));
        limit.forget_idle(at(119));
        assert_eq!(
            limit.answered.keys().collect::<Vec<_>>(),
            [&7],
            "user 8, last answered 88 s ago, is forgotten"
        );
        limit.forget_idle(at(120));
        assert!(limit.answered.is_empty());
    }
}
