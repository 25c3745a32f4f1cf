//! A queue that several tasks drain in batches: the shape group commit and shared lookups
//! have in common.
//!
//! Callers enqueue one job each and wait for their own answer. A drainer takes everything
//! queued (up to a bound) and handles it as one batch; nobody waits for a batch to fill,
//! so a lone job is handled at once and batches grow only while other batches are being
//! handled.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

use crate::store::StoreError;

/// Starts `drainers` tasks on the current Tokio runtime, each handing batches of at most
/// `max_batch` jobs to `handle`; they stop when every sender is gone.
pub(crate) fn spawn<J, F, Fut>(
    drainers: usize,
    capacity: usize,
    max_batch: usize,
    handle: F,
) -> mpsc::Sender<J>
where
    J: Send + 'static,
    F: Fn(Vec<J>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (jobs, queue) = mpsc::channel(capacity);
    let queue = Arc::new(Mutex::new(queue));
    for _ in 0..drainers {
        let (queue, handle) = (queue.clone(), handle.clone());
        tokio::spawn(async move {
            loop {
                let mut batch = Vec::with_capacity(max_batch);
                {
                    let mut queue = queue.lock().await;
                    if queue.recv_many(&mut batch, max_batch).await == 0 {
                        return;
                    }
                }
                handle(batch).await;
            }
        });
    }
    jobs
}

/// Sends the job `make` builds around a reply channel and waits for its answer; when the
/// queue or the answer is gone (its thread or task stopped), `stopped`.
pub(crate) async fn ask<J, T>(
    jobs: &mpsc::Sender<J>,
    make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> J,
    stopped: fn() -> StoreError,
) -> Result<T, StoreError> {
    let (reply, answer) = oneshot::channel();
    jobs.send(make(reply)).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// Answers a whole batch that failed: the first caller gets the cause, the others
/// [`StoreError::BatchFailed`] (a `StoreError` cannot be cloned). A caller that went away
/// needs no answer.
pub(crate) fn fail_all<T>(
    replies: impl IntoIterator<Item = oneshot::Sender<Result<T, StoreError>>>,
    error: StoreError,
) {
    let mut replies = replies.into_iter();
    if let Some(first) = replies.next() {
        let _ = first.send(Err(error));
    }
    for reply in replies {
        let _ = reply.send(Err(StoreError::BatchFailed));
    }
}
