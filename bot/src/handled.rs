//! Recording the updates whose handling wrote nothing (an unknown user's /help) before their
//! answers go out, those of many chats in one write: after a crash Telegram delivers again what
//! the offset had not confirmed, and a second instance polling with the same token may get the
//! same update; the id in `handled_updates` makes either pass it over. One write per batch, so
//! an unknown user's message costs no write of its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::Store;

/// How often the ids whose recording failed are written again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// The most ids in one write.
const MAX_BATCH: usize = 1000;

/// Whether an update is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// Recorded now: answer it.
    New,
    /// Recorded before (answered before a restart, or by another instance): do not answer.
    Before,
    /// Not written (the database is locked): answer anyway; it is recorded later.
    Failed,
}

type Request = (i64, oneshot::Sender<Recording>);

/// What the chats' workers record updates through.
pub struct Recorder {
    requests: mpsc::UnboundedSender<Request>,
    later: Arc<Mutex<Vec<i64>>>,
    task: JoinHandle<()>,
}

impl Recorder {
    /// Starts the task that writes the ids.
    pub fn start(store: Store) -> Recorder {
        let (requests, queue) = mpsc::unbounded_channel();
        let later = Arc::<Mutex<Vec<i64>>>::default();
        let task = tokio::spawn(write_batches(store, queue, Arc::clone(&later)));
        Recorder {
            requests,
            later,
            task,
        }
    }

    /// Records `update_id` (in one write with the others asked for meanwhile) and says whether
    /// to answer it.
    pub async fn record(&self, update_id: i64) -> Recording {
        let (reply, answer) = oneshot::channel();
        if self.requests.send((update_id, reply)).is_ok()
            && let Ok(recording) = answer.await
        {
            return recording;
        }
        self.later(update_id);
        Recording::Failed
    }

    /// Notes an update answered without its id written, to write when the database lets us.
    pub fn later(&self, update_id: i64) {
        lock(&self.later).push(update_id);
    }

    /// Stops writing and returns the ids still to write (for the stop's last write).
    pub fn stop(&self) -> Vec<i64> {
        self.task.abort();
        std::mem::take(&mut *lock(&self.later))
    }
}

/// Writes the ids asked for, as many as wait at once in one transaction, and those left for
/// later every [`RETRY_EVERY`].
async fn write_batches(
    store: Store,
    mut queue: mpsc::UnboundedReceiver<Request>,
    later: Arc<Mutex<Vec<i64>>>,
) {
    let mut retry = tokio::time::interval(RETRY_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            request = queue.recv() => match request {
                Some(request) => batch.push(request),
                None => return,
            },
            _ = retry.tick() => {}
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let retried = std::mem::take(&mut *lock(&later));
        if batch.is_empty() && retried.is_empty() {
            continue;
        }
        let ids = batch
            .iter()
            .map(|(id, _)| *id)
            .chain(retried.iter().copied())
            .collect();
        match store.record_handled(ids).await {
            Ok(new) => {
                if failing {
                    tracing::info!("handled updates are recorded again");
                    failing = false;
                }
                for ((_, reply), new) in batch.into_iter().zip(new) {
                    let _ = reply.send(if new {
                        Recording::New
                    } else {
                        Recording::Before
                    });
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "{e:#}; answering anyway and recording them when the database lets us (a crash meanwhile may answer them again)"
                    );
                    failing = true;
                }
                let mut later = lock(&later);
                later.extend(retried);
                for (id, reply) in batch {
                    later.push(id);
                    let _ = reply.send(Recording::Failed);
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::TempDb;

    #[tokio::test]
    async fn an_update_is_answered_once_whoever_records_it_first() {
        let db = TempDb::new("recorder");
        let store = db.open();
        let first = Recorder::start(store.clone());
        let second = Recorder::start(store.clone());
        let (a, b) = tokio::join!(first.record(7), second.record(7));
        let mut outcomes = [a, b];
        outcomes.sort_by_key(|r| *r as u8);
        assert_eq!(outcomes, [Recording::New, Recording::Before]);
        assert_eq!(first.record(8).await, Recording::New);
        assert_eq!(first.record(8).await, Recording::Before);
        assert!(first.stop().is_empty());
        second.stop();
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn ids_answered_while_the_database_is_locked_are_written_later() {
        let db = TempDb::new("recorder-locked");
        let store = db.open();
        let recorder = Recorder::start(store.clone());
        let blocker = db.conn();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert_eq!(recorder.record(9).await, Recording::Failed);
        blocker.execute_batch("ROLLBACK").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db.count("SELECT count(*) FROM handled_updates WHERE update_id = 9") == 0 {
            assert!(std::time::Instant::now() < deadline, "never written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(recorder.record(9).await, Recording::Before);
        recorder.stop();
        store.close().await.unwrap();
    }
}
