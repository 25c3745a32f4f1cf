//! Bounds on the requests one process sends to Stripe: how many are in flight at once and
//! how many start in any one second, retries included.
//!
//! Stripe counts requests per account key, not per caller, so every caller of a process
//! shares one [`Limiter`] (clones share it). A caller that would wait longer than
//! [`Limits::max_wait`] is refused at once: checkout is waiting, and a queue of buyers
//! behind our own limit is better answered with a 503 than with a slow timeout.
//!
//! Written here rather than taken from a crate: it is a semaphore and a short log of start
//! times, and callers need two answers a generic rate limiter does not give directly (how
//! long a permit would take, to refuse before waiting; whether the rate is saturated right
//! now, to stop retrying a 429).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The window the rate is counted over.
const WINDOW: Duration = Duration::from_secs(1);

/// How many requests may be sent to Stripe, and how long a caller may wait for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight at once, at most (at least 1).
    pub concurrency: u32,
    /// Requests started in any one-second window, at most (at least 1).
    pub rate: u32,
    /// A caller who would wait longer than this for a permit is refused instead.
    pub max_wait: Duration,
}

impl Default for Limits {
    /// 32 in flight, 20 per second (below Stripe's 25 per second for one endpoint in test
    /// mode), and at most 1 s of waiting.
    fn default() -> Self {
        Self {
            concurrency: 32,
            rate: 20,
            max_wait: Duration::from_secs(1),
        }
    }
}

/// No permit within [`Limits::max_wait`]: nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("our own limit on requests to Stripe is reached")]
pub struct LimitReached;

/// The right to send one request. Dropping it frees its place among those in flight.
#[derive(Debug)]
pub struct Permit {
    _in_flight: OwnedSemaphorePermit,
}

/// One process's bounds on Stripe requests. Cheap to clone; clones share the bounds.
#[derive(Debug, Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: Limits,
    in_flight: Arc<Semaphore>,
    /// Start times given out, oldest first, the last `rate` of them only. Some may lie in
    /// the future: callers told to wait until then.
    starts: Mutex<VecDeque<Instant>>,
}

impl Limiter {
    pub fn new(limits: Limits) -> Self {
        let limits = Limits {
            concurrency: limits.concurrency.max(1),
            rate: limits.rate.max(1),
            ..limits
        };
        Self {
            inner: Arc::new(Inner {
                limits,
                in_flight: Arc::new(Semaphore::new(limits.concurrency as usize)),
                starts: Mutex::new(VecDeque::with_capacity(limits.rate as usize)),
            }),
        }
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Waits for a place among the requests in flight, then for a start time within the
    /// rate, both within `max_wait` in all; refuses at once when the start time given
    /// would come later than that.
    pub async fn acquire(&self) -> Result<Permit, LimitReached> {
        let deadline = Instant::now() + self.inner.limits.max_wait;
        let in_flight =
            tokio::time::timeout_at(deadline, self.inner.in_flight.clone().acquire_owned())
                .await
                // The semaphore is never closed; a closed one would be a bug, and refusing is safe.
                .map_err(|_| LimitReached)?
                .map_err(|_| LimitReached)?;
        // The place in flight is taken first: a start time given to a caller still queued
        // for a place could pass unused, and the caller would then start late, in a second
        // already full.
        let start = self.reserve_start(deadline)?;
        tokio::time::sleep_until(start).await;
        Ok(Permit {
            _in_flight: in_flight,
        })
    }

    /// True when a request now would have to wait for the rate: `rate` requests started
    /// (or were promised a start) within the last second.
    pub fn saturated(&self) -> bool {
        let starts = self.starts();
        let now = Instant::now();
        self.next_start(&starts, now) > now
    }

    /// Gives out the earliest start at which no one-second window holds more than `rate`
    /// starts, unless that is later than `deadline`. A cancelled waiter keeps its start:
    /// the rate is then under-used for a second, never exceeded.
    fn reserve_start(&self, deadline: Instant) -> Result<Instant, LimitReached> {
        let mut starts = self.starts();
        let start = self.next_start(&starts, Instant::now());
        if start > deadline {
            return Err(LimitReached);
        }
        starts.push_back(start);
        if starts.len() > self.inner.limits.rate as usize {
            starts.pop_front();
        }
        Ok(start)
    }

    /// Starts are given out in order and the log keeps the last `rate`, so its front is the
    /// start the next one must follow by a whole window.
    fn next_start(&self, starts: &VecDeque<Instant>, now: Instant) -> Instant {
        match starts.front() {
            Some(oldest) if starts.len() >= self.inner.limits.rate as usize => {
                (*oldest + WINDOW).max(now)
            }
            _ => now,
        }
    }

    fn starts(&self) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        // Every update is one push and at most one pop under the lock, so a poisoned log
        // is still a consistent one.
        self.inner
            .starts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(concurrency: u32, rate: u32, max_wait_ms: u64) -> Limiter {
        Limiter::new(Limits {
            concurrency,
            rate,
            max_wait: Duration::from_millis(max_wait_ms),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_of_one_second_holds_more_than_rate_starts() {
        let limiter = limiter(100, 3, 10_000);
        let begin = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..10 {
            let _permit = limiter.acquire().await.unwrap();
            starts.push(Instant::now() - begin);
        }
        for (i, first) in starts.iter().enumerate() {
            let within = starts[i..]
                .iter()
                .filter(|at| **at - *first < WINDOW)
                .count();
            assert!(within <= 3, "{starts:?}");
        }
        // A burst of `rate` goes at once; the rest follow a window later.
        assert_eq!(
            &starts[..4],
            &[Duration::ZERO, Duration::ZERO, Duration::ZERO, WINDOW]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_later_than_max_wait_is_refused_at_once() {
        let limiter = limiter(100, 2, 1_000);
        let now = Instant::now();
        let deadline = now + Duration::from_secs(1);
        assert_eq!(limiter.reserve_start(deadline), Ok(now));
        assert_eq!(limiter.reserve_start(deadline), Ok(now));
        assert!(limiter.saturated());
        // A window later: exactly the longest wait allowed.
        assert_eq!(limiter.reserve_start(deadline), Ok(now + WINDOW));
        assert_eq!(limiter.reserve_start(deadline), Ok(now + WINDOW));
        assert_eq!(limiter.reserve_start(deadline), Err(LimitReached));
        assert_eq!(limiter.acquire().await.unwrap_err(), LimitReached);
        assert_eq!(Instant::now(), now, "refused without waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_places_are_shared_by_clones_and_bounded_in_wait() {
        let limiter = limiter(1, 100, 1_000);
        let held = limiter.clone().acquire().await.unwrap();
        let begin = Instant::now();
        assert_eq!(limiter.acquire().await.unwrap_err(), LimitReached);
        assert_eq!(Instant::now() - begin, Duration::from_secs(1));
        drop(held);
        drop(limiter.acquire().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn saturation_ends_when_the_window_has_passed() {
        let limiter = limiter(100, 1, 1_000);
        assert!(!limiter.saturated());
        drop(limiter.acquire().await.unwrap());
        assert!(limiter.saturated());
        tokio::time::sleep(WINDOW).await;
        assert!(!limiter.saturated());
    }
}
