//! `bot run`: the long-polling loop. It is our own loop around teloxide's requests, so that it
//! can beat a heartbeat per poll, tell a rejected token and another instance (409) from an
//! outage, retry what Telegram asks to retry, and stop on SIGTERM without answering anything
//! twice: it stops fetching, lets the chats finish within the grace period, and confirms the
//! offset of what was answered, so that the next bot (a deploy's) starts after it.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use teloxide::RequestError;
use teloxide::prelude::*;
use teloxide::types::{AllowedUpdate, BotCommand, Me, Message, UpdateKind};
use tokio::signal::unix::{SignalKind, signal};

use crate::chats::{Chats, Finished, MAX_IN_FLIGHT, Shared};
use crate::commands::Command;
use crate::config::{AdminIds, Config, Telegram};
use crate::failures::{Failure, MAX_CONFLICT_BACKOFF, RetryPolicy, describe, token_rejected};
use crate::handled::Recorder;
use crate::health::Health;
use crate::migrating;
use crate::replies::Outbox;
use crate::store::{Owner, Store, Verdict};

/// Seconds a `getUpdates` long poll may be held by Telegram (inside teloxide's 17 s timeout).
const POLL_TIMEOUT_SECS: u32 = 10;
// Two instances end each other's polls before either can succeed (see MAX_CONFLICT_BACKOFF).
const _: () = assert!(MAX_CONFLICT_BACKOFF.as_secs() * 2 < POLL_TIMEOUT_SECS as u64);
/// The longest the last `getUpdates`, which confirms the offset at a stop, may take.
/// Updates fetched and not yet confirmed beyond which the offset moves past a chat that is
/// still being answered, so that the others' new messages come (`getUpdates` gives 100 at most).
const MAX_UNCONFIRMED: i64 = 90;
/// The longest pause before asking again when Telegram sent only updates already being
/// answered (a message answered meanwhile ends it early).
const REPOLL_PAUSE: Duration = Duration::from_millis(250);
/// How often the loop looks for answers a stop kept and deletes those sent (see [`Upkeep`]).
const UPKEEP_EVERY: Duration = Duration::from_secs(2);
/// How often saved updates that are handled are deleted.
const TIDY_PENDING_EVERY: Duration = Duration::from_secs(60);
/// How long saving the updates the offset passes waits for another process's lock.
const SAVE_PENDING_WAIT: Duration = Duration::from_secs(2);
/// From the stop signal, by when the stop's last writes must be done: Compose kills the bot
/// 10 s after its SIGTERM, and the offset's confirmation and the close come after them.
const STOP_WRITES_BY: Duration = Duration::from_secs(8);

/// The offsets of `getUpdates`. An offset confirms every update below it, and Telegram forgets
/// what is confirmed: so the offset stays at the lowest update still being answered, and a
/// stop or a crash leaves what was fetched but not answered to the next start. Updates
/// Telegram sends again meanwhile are recognised and passed over.
#[derive(Debug, Default)]
struct Offsets {
    /// Updates fetched at or above the last offset sent.
    fetched: BTreeSet<i64>,
    /// One past the highest update fetched.
    after_all: i64,
    /// Whether the log said that the offset moved past a chat still being answered.
    told_ahead: bool,
}

impl Offsets {
    /// The offset of the next `getUpdates`.
    fn next(&mut self, lowest_unanswered: Option<i64>) -> i32 {
        let offset = match lowest_unanswered {
            Some(lowest) if self.after_all - lowest <= MAX_UNCONFIRMED => {
                self.told_ahead = false;
                lowest
            }
            Some(lowest) => {
                if !self.told_ahead {
                    // Expected under a burst (a thousand users at once): not a complaint.
                    tracing::info!(
                        "update {lowest} is still being answered {} updates behind; confirming past it (what it passes is saved first) so that other chats' messages come",
                        self.after_all - lowest
                    );
                    self.told_ahead = true;
                }
                self.after_all
            }
            None => self.after_all,
        };
        to_offset(offset)
    }

    /// Whether the next offset passes `lowest_unanswered` (then the updates it passes are
    /// saved first: see `pending_updates`).
    fn passes(&self, lowest_unanswered: Option<i64>) -> bool {
        lowest_unanswered.is_some_and(|lowest| self.after_all - lowest > MAX_UNCONFIRMED)
    }

    /// The offset that holds at `lowest_unanswered`, when what it would pass cannot be saved.
    fn hold(&self, lowest_unanswered: Option<i64>) -> i32 {
        to_offset(lowest_unanswered.unwrap_or(self.after_all))
    }

    /// The offset a stop confirms: up to the lowest update left unanswered, or past them all.
    fn at_stop(&self, lowest_unanswered: Option<i64>) -> i32 {
        to_offset(
            lowest_unanswered
                .unwrap_or(self.after_all)
                .min(self.after_all),
        )
    }

    /// A `getUpdates` with `offset` succeeded: Telegram forgot everything below it.
    fn confirmed(&mut self, offset: i32) {
        self.fetched = self.fetched.split_off(&i64::from(offset));
    }

    /// Whether update `id` is new (not fetched before); notes it.
    fn is_new(&mut self, id: i64) -> bool {
        self.after_all = self.after_all.max(id + 1);
        self.fetched.insert(id)
    }
}

/// An update id as `getUpdates`' offset: Telegram's ids fit in 31 bits; one past the largest
/// possible stays at it (that update comes again, and is passed over).
fn to_offset(id: i64) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

const CONFIRM_LIMIT: Duration = Duration::from_secs(1);

/// Retries of one request kind (getMe, getUpdates): counts failures in a row and says so in the
/// log, once per failure and once when it works again.
struct Retries {
    method: &'static str,
    policy: RetryPolicy,
}

impl Retries {
    fn new(method: &'static str) -> Retries {
        Retries {
            method,
            policy: RetryPolicy::reads(),
        }
    }

    /// How long to wait before retrying, or the error that stops the bot.
    fn after_failure(
        &mut self,
        token: &str,
        error: &RequestError,
        took: Duration,
    ) -> anyhow::Result<Duration> {
        let failure = Failure::of(error);
        let Some(wait) = self.policy.after(failure, took) else {
            return Err(token_rejected());
        };
        let method = self.method;
        let failures = self.policy.failures();
        match failure {
            Failure::RetryAfter(_) => {
                tracing::warn!(
                    "{method}: Telegram asks to wait {}s (429 Too Many Requests); waiting, the bot keeps running",
                    wait.as_secs()
                );
                return Ok(wait);
            }
            Failure::Conflict => {
                tracing::error!(
                    "{method}: 409 Conflict ({failures} in a row): another instance is polling with this BOT_TOKEN (another server, a local run?); stop it, or each instance gets only some of the messages. Retrying in {:.1}s; the health check fails after {}s of this",
                    wait.as_secs_f32(),
                    crate::health::MAX_TROUBLE.as_secs()
                );
                return Ok(wait);
            }
            _ => {}
        }
        tracing::warn!(
            "{method} failed ({failures} in a row), retrying in {:.1}s; the bot keeps running: {}",
            wait.as_secs_f32(),
            describe(error, token)
        );
        Ok(wait)
    }

    fn after_success(&mut self) {
        let failures = self.policy.succeeded();
        if failures > 0 {
            tracing::info!(
                "{} works again after {failures} failed attempts",
                self.method
            );
        }
    }
}

/// The signal that stops the bot, as a future the loop can await more than once.
type Shutdown = Pin<Box<dyn Future<Output = &'static str> + Send>>;

/// Runs the bot until SIGTERM or SIGINT (then exits Ok), or until Telegram rejects the token.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let health = Arc::new(Health::new(&config.heartbeat_path));
    let telegram = Telegram::from_env()?;
    let admins = AdminIds::from_env()?;
    let mut shutdown: Shutdown = Box::pin(shutdown_signal()?);
    if !config.schema_wait.is_zero() {
        tokio::select! {
            signal = &mut shutdown => {
                tracing::info!("{signal}: stopping while waiting for the database");
                return Ok(());
            }
            () = wait_for_schema(&config.database_path, config.schema_wait) => {}
        }
    }
    let store = Store::open(&config.database_path)?;
    if admins.count() > 0 {
        tracing::info!("ADMIN_IDS names {} admin(s)", admins.count());
    }
    let outcome = serve(&telegram, admins, store.clone(), health, &mut shutdown).await;
    match store.close().await {
        Ok(()) => tracing::info!("database closed"),
        Err(e) => tracing::warn!("{e:#}"),
    }
    tracing::info!("stopped");
    outcome
}

/// Waits, up to `limit`, while the database is in a state a deploy's migration resolves
/// (behind, unstamped, empty): during a deploy the new bot starts while its migration runs.
/// Past `limit` it keeps waiting while the migration announces that it still runs (its
/// `<database>.migrating` is fresh): a large database may take longer to migrate than any fixed
/// wait. It only reads; `Store::open` then refuses whatever is still not current.
async fn wait_for_schema(path: &std::path::Path, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut told = false;
    let mut told_running = false;
    loop {
        let reading = path.to_owned();
        let (state, running) = tokio::task::spawn_blocking(move || {
            // The announcement first: a migration commits before it removes it, so a state
            // read after seeing it gone is the state the migration left (read the other way
            // round, a migration ending in between looked like one that stopped half way).
            let running = migrating::running(&reading);
            let state = migrations::Database::open_read_only(&reading)
                .ok()
                .flatten()
                .and_then(|db| db.status().ok())
                .map(|status| status.state);
            (state, running)
        })
        .await
        .unwrap_or((None, None));
        if Verdict::of(state) != Verdict::Wait {
            return;
        }
        let state = state.map_or("missing", |s| s.name());
        if tokio::time::Instant::now() >= deadline {
            let Some(age) = running else {
                if told_running {
                    tracing::warn!(
                        "the migration stopped announcing itself ({} not rewritten for {}s) and the database is still {state}",
                        migrating::path_for(path).display(),
                        migrating::FRESH_FOR.as_secs()
                    );
                }
                return;
            };
            if !told_running {
                tracing::info!(
                    "the database is still {state} after {}s, but its migration is running (rewrote its announcement {:.1}s ago): waiting until it ends",
                    limit.as_secs(),
                    age.as_secs_f32()
                );
                told_running = true;
            }
        }
        if !told {
            tracing::info!(
                "the database is {state}: waiting up to {}s for the deploy to migrate it, longer while its migration runs",
                limit.as_secs()
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Resolves with the signal's name on SIGTERM (`docker stop`) or SIGINT (Ctrl-C).
fn shutdown_signal() -> anyhow::Result<impl Future<Output = &'static str>> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

/// Connects, then polls until a signal (Ok) or until the bot must stop (Err).
async fn serve(
    telegram: &Telegram,
    admins: AdminIds,
    store: Store,
    health: Arc<Health>,
    shutdown: &mut Shutdown,
) -> anyhow::Result<()> {
    let mut bot = Bot::new(&telegram.token);
    if let Some(url) = &telegram.api_url {
        bot = bot.set_api_url(url.clone());
    }
    let token = telegram.token.as_str();
    let me = tokio::select! {
        signal = &mut *shutdown => {
            tracing::info!("{signal}: stopping before Telegram was reached");
            return Ok(());
        }
        me = connect(&bot, token) => me?,
    };
    claim_database(&store, &me, telegram.take_over_database).await?;
    let me = me.username.clone().unwrap_or_default();
    let shared = Arc::new(Shared {
        store: store.clone(),
        admins,
        me,
        outbox: Outbox::new(
            bot.clone(),
            telegram.token.clone(),
            telegram.outgoing_limits,
        ),
        token: telegram.token.clone(),
        recorder: Recorder::start(store.clone()),
        sending: Mutex::default(),
    });
    let mut chats = Chats::new(Arc::clone(&shared), telegram.user_messages_per_minute);
    let mut offsets = Offsets::default();
    answer_saved_updates(&store, &mut chats, &mut offsets).await;
    let mut upkeep = Upkeep::default();
    match store.forget_old_updates().await {
        Ok(0) => {}
        Ok(forgotten) => tracing::info!(
            "forgot {forgotten} update ids handled over {} days ago (Telegram may reuse ids after a week without updates)",
            crate::store::HANDLED_UPDATES_DAYS
        ),
        Err(e) => tracing::warn!("{e:#}"),
    }
    let retention = crate::retention::spawn_retention(store.clone(), telegram.command_log_days);
    let mut retries = Retries::new("getUpdates");
    let mut probed = false;
    let mut polled = false;
    health.beat();
    let signal = loop {
        if !probed {
            probed = match store.probe_write().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(
                        "the database does not take writes; the bot is not ready until it does: {e:#}"
                    );
                    false
                }
            };
        }
        if chats.in_flight() >= MAX_IN_FLIGHT {
            // Answers cannot keep up: fetch more only when some are done.
            tokio::select! {
                signal = &mut *shutdown => break signal,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            chats.tidy();
            health.beat();
            continue;
        }
        upkeep.run(&store, &mut chats).await;
        // The first poll returns at once: a deploy waits for it to call the bot ready, and an
        // idle long poll would keep it waiting for the whole timeout.
        let lowest = chats.lowest_unanswered();
        let offset =
            if offsets.passes(lowest) && !save_before_passing(&store, &chats, &offsets).await {
                offsets.hold(lowest)
            } else {
                offsets.next(lowest)
            };
        let poll = bot
            .get_updates()
            .offset(offset)
            .timeout(if polled { POLL_TIMEOUT_SECS } else { 0 })
            .allowed_updates(vec![AllowedUpdate::Message]);
        let started = Instant::now();
        let result = tokio::select! {
            signal = &mut *shutdown => break signal,
            result = health.while_waiting(poll.send()) => result,
        };
        health.writes_failing_since(store.writes_failing_since());
        health.beat();
        match result {
            Ok(updates) => {
                polled = true;
                retries.after_success();
                health.conflict(false);
                if probed {
                    health.ready();
                }
                offsets.confirmed(offset);
                let fetched = updates.len();
                let mut new = 0;
                for update in updates {
                    let id = i64::from(update.id.0);
                    if !offsets.is_new(id) {
                        continue; // still being answered, or answered and not yet confirmed
                    }
                    new += 1;
                    if let UpdateKind::Message(message) = update.kind {
                        chats.dispatch(id, message);
                    }
                }
                chats.tidy();
                if fetched > 0 && new == 0 {
                    // Telegram sent again only what is being answered: ask again once one of
                    // them is answered (the offset can move on), not at once (a long poll
                    // returns at once while updates are pending); at most a moment later.
                    tokio::select! {
                        signal = &mut *shutdown => break signal,
                        () = chats.answered_one() => {}
                        () = tokio::time::sleep(REPOLL_PAUSE) => {}
                    }
                }
            }
            Err(error) => {
                health.conflict(Failure::of(&error) == Failure::Conflict);
                let wait = retries.after_failure(token, &error, started.elapsed())?;
                tokio::select! {
                    signal = &mut *shutdown => break signal,
                    () = health.while_waiting(tokio::time::sleep(wait)) => {}
                }
            }
        }
    };
    let stopping = Instant::now();
    retention.abort();
    let answering = chats.in_flight();
    tracing::info!(
        "{signal}: stopping; no more messages are fetched{}",
        if answering > 0 {
            format!(
                ", the {answering} being answered get up to {}s",
                telegram.stop_grace.as_secs()
            )
        } else {
            String::new()
        }
    );
    let finished = chats.finish(telegram.stop_grace).await;
    if let Err(e) = store.record_handled(shared.recorder.stop()).await {
        tracing::warn!(
            "{e:#}; the next start may answer the last messages that wrote nothing again"
        );
    }
    let unanswered = finished.lowest_unanswered;
    let left = (stopping + STOP_WRITES_BY).saturating_duration_since(Instant::now());
    keep_unsent(&store, finished, left.max(Duration::from_millis(500))).await;
    confirm_offset(&bot, token, offsets.at_stop(unanswered), unanswered).await;
    Ok(())
}

/// What the loop does between polls, every [`UPKEEP_EVERY`]: hands the answers a stop kept
/// to their chats (also those the old bot of a deploy keeps after this one started), deletes
/// the rows of kept answers sent (again later if the database is locked), and now and then
/// the saved updates that are handled.
#[derive(Default)]
struct Upkeep {
    last: Option<Instant>,
    pending_tidied: Option<Instant>,
}

impl Upkeep {
    async fn run(&mut self, store: &Store, chats: &mut Chats) {
        if self.last.is_some_and(|last| last.elapsed() < UPKEEP_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let sent = chats.take_sent_kept();
        if !sent.is_empty() {
            match store.sent(sent.clone()).await {
                Ok(()) => chats.deleted_kept(sent, true),
                Err(e) => {
                    tracing::warn!("{e:#}; tried again in a moment");
                    chats.deleted_kept(sent, false);
                }
            }
        }
        match store.unsent().await {
            Ok(kept) => {
                for answer in kept {
                    chats.dispatch_kept(answer);
                }
            }
            Err(e) => tracing::warn!("{e:#}; answers a stop kept are sent later"),
        }
        if self
            .pending_tidied
            .is_none_or(|at| at.elapsed() >= TIDY_PENDING_EVERY)
        {
            self.pending_tidied = Some(Instant::now());
            if let Err(e) = store.forget_handled_pending().await {
                tracing::warn!("{e:#}");
            }
        }
    }
}

/// At a start: answers the updates a stop or a crash left saved and unanswered (the offset had
/// passed them, so Telegram will not send them again).
async fn answer_saved_updates(store: &Store, chats: &mut Chats, offsets: &mut Offsets) {
    let saved = match store.pending().await {
        Ok(saved) => saved,
        Err(e) => {
            tracing::warn!("{e:#}; updates saved by the last run are answered at the next start");
            return;
        }
    };
    if saved.is_empty() {
        return;
    }
    tracing::info!(
        "answering {} update(s) the last run fetched, saved and did not answer",
        saved.len()
    );
    for (id, body) in saved {
        match serde_json::from_str::<Message>(&body) {
            Ok(message) => {
                offsets.is_new(id);
                chats.dispatch_saved(id, message);
            }
            Err(e) => tracing::warn!("saved update {id} cannot be read back ({e}); passed over"),
        }
    }
}

/// Saves the updates the next offset passes before they are answered; false (the offset then
/// holds) when the database does not take them.
async fn save_before_passing(store: &Store, chats: &Chats, offsets: &Offsets) -> bool {
    let unsaved = chats.take_unsaved(offsets.after_all);
    if unsaved.is_empty() {
        return true;
    }
    let bodies: Vec<(i64, String)> = unsaved
        .iter()
        .filter_map(|(id, message)| serde_json::to_string(message).ok().map(|b| (*id, b)))
        .collect();
    match store.save_pending(bodies, SAVE_PENDING_WAIT).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "{e:#}; the offset stays below the updates being answered until they are saved or answered (new messages wait at Telegram meanwhile)"
            );
            chats.unsaved_again(unsaved);
            false
        }
    }
}

/// At a stop: keeps the answers cut off by the end of the grace period for the next start
/// (their updates' effects are committed, so the next start would not answer them), and
/// deletes the rows of kept answers sent (or cut off with the request out), waiting up to
/// `limit` for another process's lock.
async fn keep_unsent(store: &Store, finished: Finished, limit: Duration) {
    if finished.maybe_sent > 0 {
        tracing::warn!(
            "{} answer(s) were cut off by the end of the grace period while their request was out: Telegram may have delivered them, so they are not sent again",
            finished.maybe_sent
        );
    }
    let count = finished.unsent.len();
    if count == 0 && finished.sent_kept.is_empty() {
        return;
    }
    match store
        .keep_unsent(finished.unsent, finished.sent_kept, limit)
        .await
    {
        Ok(_) if count == 0 => {}
        Ok(true) => tracing::info!(
            "{count} answer(s) not sent within the grace period (waiting for Telegram's limits) are kept in the database: the next start sends them"
        ),
        Ok(false) => tracing::warn!(
            "{count} answer(s) not sent within the grace period are lost: this release's schema has no place to keep them"
        ),
        Err(e) => {
            tracing::warn!("{e:#}; {count} answer(s) not sent within the grace period are lost")
        }
    }
}

/// `getMe` until Telegram accepts the token (retrying outages), then the webhook is removed
/// and the command menu published; returns the bot as Telegram describes it.
async fn connect(bot: &Bot, token: &str) -> anyhow::Result<Me> {
    let mut retries = Retries::new("getMe");
    let me = loop {
        let started = Instant::now();
        match bot.get_me().await {
            Ok(me) => break me,
            Err(error) => {
                let wait = retries.after_failure(token, &error, started.elapsed())?;
                tokio::time::sleep(wait).await;
            }
        }
    };
    retries.after_success();
    let username = me.username.clone().unwrap_or_default();
    tracing::info!("connected to the Bot API as @{username}");
    if let Err(e) = bot.delete_webhook().await {
        tracing::warn!("deleteWebhook failed: {}", describe(&e, token));
    }
    let published: Vec<BotCommand> = Command::ALL
        .into_iter()
        .map(|c| BotCommand::new(c.name(), c.description()))
        .collect();
    if let Err(e) = bot.set_my_commands(published).await {
        tracing::warn!(
            "setMyCommands failed (the command menu may be stale; the commands still work): {}",
            describe(&e, token)
        );
    }
    Ok(me)
}

/// Refuses a database that serves another bot (its update ids would be taken for this bot's),
/// unless told to take it over.
async fn claim_database(store: &Store, me: &Me, take_over: bool) -> anyhow::Result<()> {
    let ours = me.username.as_deref().unwrap_or_default();
    let bot_id = i64::try_from(me.id.0).context("Telegram sent a bot id over 2^63")?;
    match store.claim(bot_id, ours, take_over).await? {
        Owner::This => Ok(()),
        Owner::TakenOver { username } => {
            tracing::warn!(
                "this database served the bot @{username}; it now serves @{ours} (BOT_TAKE_OVER_DATABASE=1): @{username}'s handled update ids are forgotten. Remove BOT_TAKE_OVER_DATABASE from .env"
            );
            Ok(())
        }
        Owner::Other {
            bot_id: theirs,
            username,
        } => anyhow::bail!(
            "this database serves the bot @{username} (id {theirs}), and BOT_TOKEN is the bot @{ours}'s (id {bot_id}): one database serves one bot, since each bot numbers its updates on its own. Put @{username}'s token back in .env, give @{ours} a database of its own (another DATABASE_PATH or Compose project), or, to move this database and its users to @{ours} for good, start it once with BOT_TAKE_OVER_DATABASE=1"
        ),
    }
}

/// Tells Telegram, with a last short `getUpdates`, that every update before `confirm` was
/// answered (all of them, or all before the lowest `unanswered` one): the next bot starts
/// there, and nothing answered here is delivered to it again.
async fn confirm_offset(bot: &Bot, token: &str, confirm: i32, unanswered: Option<i64>) {
    if let Some(lowest) = unanswered {
        tracing::warn!(
            "messages from update {lowest} on were not answered within the grace period; those not yet begun are delivered to the next start"
        );
    }
    if confirm == 0 {
        return;
    }
    let last = bot.get_updates().offset(confirm).timeout(0).limit(1).send();
    match tokio::time::timeout(CONFIRM_LIMIT, last).await {
        Ok(Ok(_)) => {
            tracing::info!("offset {confirm} confirmed: what was answered is not delivered again")
        }
        Ok(Err(e)) => tracing::warn!(
            "could not confirm offset {confirm}; the next start may get the last messages again (handled ones are not answered twice): {}",
            describe(&e, token)
        ),
        Err(_) => tracing::warn!(
            "confirming offset {confirm} took over {}s; the next start may get the last messages again (handled ones are not answered twice)",
            CONFIRM_LIMIT.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_stays_at_the_lowest_update_being_answered() {
        let mut offsets = Offsets::default();
        assert_eq!(offsets.next(None), 0, "nothing fetched: confirm nothing");
        for id in [5, 6, 7] {
            assert!(offsets.is_new(id));
        }
        assert_eq!(offsets.next(None), 8, "all answered: past them all");
        assert_eq!(offsets.next(Some(6)), 6, "6 is still being answered");
        offsets.confirmed(6);
        assert!(
            !offsets.is_new(6),
            "sent again while being answered: passed over"
        );
        assert!(
            !offsets.is_new(7),
            "answered but not confirmed: passed over"
        );
        assert!(offsets.is_new(5), "below the confirmed offset: forgotten");
        assert_eq!(offsets.at_stop(Some(7)), 7);
        assert_eq!(offsets.at_stop(None), 8);
    }

    #[test]
    fn a_chat_far_behind_does_not_hold_back_every_other_chat() {
        let mut offsets = Offsets::default();
        for id in 1..=200 {
            offsets.is_new(id);
        }
        assert_eq!(
            offsets.next(Some(150)),
            150,
            "within the 100 updates getUpdates returns"
        );
        assert_eq!(
            offsets.next(Some(10)),
            201,
            "190 behind: confirmed past it so the others' messages come"
        );
    }

    #[test]
    fn the_largest_update_id_keeps_the_offset_in_range() {
        let mut offsets = Offsets::default();
        assert!(offsets.is_new(i64::from(i32::MAX)));
        assert_eq!(offsets.next(None), i32::MAX);
    }
}
