//! Read coalescing: concurrent checkout lookups share one query.
//!
//! Each query costs a round trip and a wake-up of another thread (a PostgreSQL backend,
//! or the thread that runs a SQLite connection), whatever it asks, and that, not the
//! index search, is most of what a lookup spends. Lookups therefore queue here and a
//! reader task asks for everything queued (up to a bound) in one statement, like the
//! store's group commit does for writes. Nobody waits for a batch to fill: a lone lookup
//! is sent at once, and batches grow only while queries are in flight. A lookup joins
//! only a query that has not been sent yet, so it still sees every write that committed
//! before it arrived.

use tokio::sync::{mpsc, oneshot};

use crate::batch_queue;
use crate::lookup::LookupRequest;
use crate::store::{Lookup, Store, StoreError};

/// Lookups per query at most.
const MAX_BATCH: usize = 128;
/// Lookups that may wait for a reader; beyond this, callers wait to enqueue.
const QUEUE: usize = 8_192;
/// Queries in flight at once: one batch gathers while others run.
const READERS: usize = 4;

struct Job {
    request: LookupRequest,
    reply: oneshot::Sender<Result<Lookup, StoreError>>,
}

/// The handle request handlers look customers up through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LookupBatcher {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The email is a buyer's: not for logs.
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

impl LookupBatcher {
    /// Starts the readers on the current Tokio runtime.
    pub fn start(store: &Store) -> Self {
        let store = store.clone();
        let jobs = batch_queue::spawn(READERS, QUEUE, MAX_BATCH, move |batch| {
            answer(store.clone(), batch)
        });
        Self { jobs }
    }

    /// Checkout's answer, as [`Store::lookup`] gives it.
    pub async fn lookup(&self, request: LookupRequest) -> Result<Lookup, StoreError> {
        let make = |reply| Job { request, reply };
        batch_queue::ask(&self.jobs, make, || StoreError::ReaderStopped).await
    }
}

/// One batch: ask for every lookup in one statement, answer each caller its own.
async fn answer(store: Store, batch: Vec<Job>) {
    let (requests, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|job| (job.request, job.reply))
        .unzip();
    match store.lookup_many(&requests).await {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A caller that went away needs no answer.
                let _ = reply.send(Ok(answer));
            }
        }
        Err(error) => batch_queue::fail_all(replies, error),
    }
}
