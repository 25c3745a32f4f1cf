//! Group commit: concurrent deliveries share one transaction.
//!
//! A commit costs a disk flush (SQLite) or a round trip and a WAL flush (PostgreSQL),
//! whatever it holds. Deliveries therefore queue, and a committer takes everything queued
//! (up to a bound) into one transaction. Nobody waits for a batch to fill: a lone delivery
//! is committed at once, and batches grow only while a commit is in progress. Each caller
//! is answered after the transaction holding its event is durable. Duplicates are
//! detected within a batch and across batches by the store, and an event that cannot be
//! projected is data, not a failure. If a batch fails as a whole, its events are retried
//! one by one, so one bad event cannot fail its neighbours.
//!
//! On SQLite the store's writer thread is itself such a committer (it has to be: SQLite
//! has one writer), so deliveries go straight to it; see `store/sqlite/writer.rs`. On
//! PostgreSQL the committers are here.

use tokio::sync::{mpsc, oneshot};

use crate::batch_queue;
use crate::projection::Effect;
use crate::store::{AppendOutcome, Source, Store, StoreError};
use crate::stripe::event::CustomerEvent;

/// Events per transaction at most: bounds a transaction's length and its locks.
const MAX_BATCH: usize = 512;
/// Deliveries that may wait for a committer; beyond this, callers wait to enqueue.
const QUEUE: usize = 8_192;
/// PostgreSQL committers: two, so that one batch gathers while another commits. More make
/// smaller batches, and the database's cost per statement then shows as less throughput.
const PG_COMMITTERS: usize = 2;

struct Job {
    event: CustomerEvent,
    effect: Effect,
    source: Source,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("event_id", &self.event.id)
            .finish()
    }
}

/// The handle request handlers append through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupCommitter {
    route: Route,
}

#[derive(Debug, Clone)]
enum Route {
    /// SQLite: the store batches.
    Store(Store),
    /// PostgreSQL: to the committers.
    Committers(mpsc::Sender<Job>),
}

impl GroupCommitter {
    /// Starts the PostgreSQL committers on the current Tokio runtime (SQLite needs none).
    pub fn start(store: &Store) -> Self {
        let route = match store {
            Store::Sqlite(_) => Route::Store(store.clone()),
            Store::Postgres(_) => {
                let store = store.clone();
                let committers =
                    batch_queue::spawn(PG_COMMITTERS, QUEUE, MAX_BATCH, move |batch| {
                        commit(store.clone(), batch)
                    });
                Route::Committers(committers)
            }
        };
        Self { route }
    }

    /// Appends and projects one event; returns once it is durable (or known to be a
    /// duplicate).
    pub async fn append(
        &self,
        event: CustomerEvent,
        effect: Effect,
        source: Source,
    ) -> Result<AppendOutcome, StoreError> {
        let committers = match &self.route {
            Route::Store(store) => {
                let mut outcomes = store.append_owned(vec![(event, effect)], source).await?;
                // The store answers every event it is given: one here.
                return outcomes.pop().ok_or(StoreError::BatchFailed);
            }
            Route::Committers(committers) => committers,
        };
        let make = |reply| Job {
            event,
            effect,
            source,
            reply,
        };
        batch_queue::ask(committers, make, || StoreError::WriterStopped).await
    }
}

/// One batch: commit it, then answer each caller (a PostgreSQL commit is durable when it
/// returns).
async fn commit(store: Store, batch: Vec<Job>) {
    crate::metrics::batch_committed(batch.len());
    // One append takes one source; webhooks are the only caller today, so a mixed batch
    // is the rare case and is committed event by event.
    let source = batch[0].source;
    if batch.iter().any(|job| job.source != source) {
        for job in batch {
            let outcome = store.append(&job.event, &job.effect, job.source).await;
            let _ = job.reply.send(outcome);
        }
        return;
    }
    let (events, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|job| ((job.event, job.effect), job.reply))
        .unzip();
    let refs: Vec<_> = events
        .iter()
        .map(|(event, effect)| (event, effect))
        .collect();
    match store.append_refs(&refs, source).await {
        Ok(outcomes) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A caller that went away (client disconnected) needs no answer.
                let _ = reply.send(Ok(outcome));
            }
        }
        // Only a statement the database refused can be one event's fault; a lost
        // connection or a full pool fails everyone alike, at once.
        Err(error) if events.len() == 1 || !refused_statement(&error) => {
            batch_queue::fail_all(replies, error);
        }
        Err(error) => {
            tracing::warn!(%error, events = events.len(), "batch failed; committing its events one by one");
            for (reply, (event, effect)) in replies.into_iter().zip(&events) {
                let _ = reply.send(store.append(event, effect, source).await);
            }
        }
    }
}

fn refused_statement(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(sqlx::Error::Database(_)))
}
