//! Group commit: concurrent appends share one transaction, on both backends.
//!
//! A commit costs a disk flush (SQLite) or a round trip and a WAL flush (PostgreSQL),
//! whatever it holds. Appends therefore queue, and a committer takes everything queued (up
//! to [`MAX_JOBS`]) into one transaction. Nobody waits for a batch to fill: a lone append
//! is committed at once, and batches grow only while a commit is in progress. Each caller
//! is answered once the transaction holding its events is durable. Duplicates are
//! detected within a batch and across batches by the backend's statements, and an event
//! that cannot be projected is data, not a failure. If the database refuses a batch's
//! statement, its jobs are written again one by one, so one bad event fails alone.
//!
//! This module is the policy; each backend supplies a [`Backend`] (its statements and its
//! classifier of refused statements) and what drains the queue: tasks on PostgreSQL, the
//! writer thread on SQLite (see `sqlite/writer.rs`), which also makes a batch durable
//! before it is answered.

use std::future::Future;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::append::record_appends;
use super::{AppendOutcome, Source, StoreError};
use crate::batch_queue;
use crate::projection::Effect;
use crate::stripe::event::CustomerEvent;

/// Appends that may wait for a committer; beyond this, callers wait to enqueue.
pub(super) const QUEUE: usize = 8_192;
/// Appends (each one delivery, or one caller's batch) per transaction at most: bounds a
/// transaction's length and how long it holds its locks.
pub(super) const MAX_JOBS: usize = 512;

type Answer = Result<Vec<AppendOutcome>, StoreError>;

/// One caller's events, appended in one transaction with whatever else is queued.
pub(super) struct Job {
    pub(super) events: Vec<(CustomerEvent, Effect)>,
    pub(super) source: Source,
    reply: oneshot::Sender<Answer>,
}

impl Job {
    /// A job, and where its answer arrives.
    #[cfg(test)]
    pub(super) fn new(
        events: Vec<(CustomerEvent, Effect)>,
        source: Source,
    ) -> (Self, oneshot::Receiver<Answer>) {
        let (reply, answer) = oneshot::channel();
        let job = Self {
            events,
            source,
            reply,
        };
        (job, answer)
    }
}

/// The handle appends go through; the committers stop when every handle is gone.
#[derive(Debug, Clone)]
pub(super) struct Committer {
    jobs: mpsc::Sender<Job>,
}

impl Committer {
    /// A committer whose queue the caller drains (up to [`MAX_JOBS`] at a time, each
    /// batch through [`commit`]).
    pub(super) fn channel() -> (Self, mpsc::Receiver<Job>) {
        let (jobs, queue) = mpsc::channel(QUEUE);
        (Self { jobs }, queue)
    }

    /// Starts `committers` tasks on the current Tokio runtime, each committing a batch
    /// with its own `backend` and answering it at once: for a backend whose commit is
    /// durable when it returns.
    pub(super) fn spawn<B>(committers: usize, backend: B) -> Self
    where
        B: Backend + Clone + Send + Sync + 'static,
    {
        let jobs = batch_queue::spawn(committers, QUEUE, MAX_JOBS, move |batch| {
            let mut backend = backend.clone();
            async move { commit(&mut backend, batch).await.answer() }
        });
        Self { jobs }
    }

    /// Appends and projects `events`, in one transaction possibly shared with other
    /// callers' events; returns once that transaction is durable.
    pub(super) async fn append(
        &self,
        events: Vec<(CustomerEvent, Effect)>,
        source: Source,
    ) -> Answer {
        let make = |reply| Job {
            events,
            source,
            reply,
        };
        batch_queue::ask(&self.jobs, make, || StoreError::WriterStopped).await
    }
}

/// What a backend supplies to group commit.
pub(super) trait Backend {
    /// Whether one transaction may hold events of several sources; when not, a batch is
    /// committed as one transaction per source.
    const MIXES_SOURCES: bool;

    /// Appends every job's events and projects them, in one transaction; outcomes in
    /// order, job after job.
    fn write(&mut self, jobs: &[Job]) -> impl Future<Output = Answer> + Send;

    /// Whether the database refused a statement, which may be one event's fault, as
    /// opposed to a failure that fails every event alike (a lost connection, a busy
    /// database, a failing disk).
    fn refused(error: &StoreError) -> bool;
}

/// A batch written, whose callers wait for it to be durable.
pub(super) struct Committed {
    pub(super) jobs: Vec<Job>,
    /// Each job's outcomes, or why its transaction failed.
    pub(super) results: Vec<Answer>,
    pub(super) started: Instant,
}

/// Writes a batch taken from the queue: in one transaction (one per source when the
/// backend cannot mix them), and when the database refuses one, each of its jobs alone.
pub(super) async fn commit<B: Backend>(backend: &mut B, mut jobs: Vec<Job>) -> Committed {
    let started = Instant::now();
    if !B::MIXES_SOURCES {
        // Stable: each source's jobs keep their order.
        jobs.sort_by_key(|job| job.source);
    }
    let mut results = Vec::with_capacity(jobs.len());
    let mut rest = jobs.as_slice();
    while let Some(first) = rest.first() {
        let same = match B::MIXES_SOURCES {
            true => rest.len(),
            false => rest.partition_point(|job| job.source == first.source),
        };
        let (transaction, after) = rest.split_at(same);
        results.extend(write_with_fallback(backend, transaction).await);
        rest = after;
    }
    Committed {
        jobs,
        results,
        started,
    }
}

async fn write_with_fallback<B: Backend>(backend: &mut B, jobs: &[Job]) -> Vec<Answer> {
    crate::metrics::batch_committed(jobs.iter().map(|job| job.events.len()).sum());
    match backend.write(jobs).await {
        Ok(outcomes) => split(outcomes, jobs),
        Err(error) if jobs.len() > 1 && B::refused(&error) => {
            tracing::warn!(%error, jobs = jobs.len(), "batch failed; writing its appends one by one");
            let mut results = Vec::with_capacity(jobs.len());
            for job in jobs {
                results.push(backend.write(std::slice::from_ref(job)).await);
            }
            results
        }
        // Only a statement the database refused can be one event's fault; anything else
        // fails everyone alike, at once.
        Err(error) => failed(error, jobs.len()),
    }
}

/// Hands each job its share of the batch's outcomes (they are in job order).
fn split(outcomes: Vec<AppendOutcome>, jobs: &[Job]) -> Vec<Answer> {
    let mut outcomes = outcomes.into_iter();
    jobs.iter()
        .map(|job| Ok(outcomes.by_ref().take(job.events.len()).collect()))
        .collect()
}

/// A whole transaction's failure: the first job gets the cause, the others
/// [`StoreError::BatchFailed`] (a `StoreError` cannot be cloned).
fn failed(error: StoreError, jobs: usize) -> Vec<Answer> {
    std::iter::once(Err(error))
        .chain(std::iter::repeat_with(|| Err(StoreError::BatchFailed)))
        .take(jobs)
        .collect()
}

impl Committed {
    /// Whether any of its transactions committed, even one that found only duplicates
    /// (what it found must be durable before it is acknowledged). A batch that failed
    /// whole has nothing to make durable, and may be answered at once.
    pub(super) fn committed_any(&self) -> bool {
        self.results.iter().any(Result::is_ok)
    }

    /// Answers a durable batch and counts its appends (a caller that went away needs no
    /// answer).
    pub(super) fn answer(self) {
        for (job, result) in self.jobs.into_iter().zip(self.results) {
            if let Ok(outcomes) = &result {
                let events = job.events.iter().map(|(event, _)| event);
                record_appends(events, job.source, self.started, outcomes);
            }
            let _ = job.reply.send(result);
        }
    }

    /// Answers every caller `error` instead: the batch could not be made durable.
    pub(super) fn fail_each(self, error: impl Fn() -> StoreError) {
        for job in self.jobs {
            let _ = job.reply.send(Err(error()));
        }
    }
}

/// Answers jobs that were not written: the first caller gets the cause, the others
/// [`StoreError::BatchFailed`].
pub(super) fn fail_all(jobs: Vec<Job>, error: StoreError) {
    batch_queue::fail_all(jobs.into_iter().map(|job| job.reply), error);
}
