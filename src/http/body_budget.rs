//! A process-wide cap on the bytes of request bodies in flight.
//!
//! Every body is read whole into memory (the signature covers its exact bytes), and a
//! client may announce a body and then send it as slowly as the body deadline allows. So
//! before reading, a request reserves its declared length (or its limit, when it declares
//! none) from one budget shared by all workers; when the budget cannot cover it at once,
//! the request is refused with 503 instead of waiting, and memory stays bounded whatever
//! the number of such clients.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::ApiError;

/// The budget: a semaphore whose permits are bytes.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
}

impl BodyBudget {
    /// A budget of `max_bytes`, capped at what a semaphore can count (far above any
    /// memory).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(max_bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Reserves `bytes` now, or refuses with `Overloaded`. The reservation lasts as long as
    /// the returned permit.
    pub(super) fn reserve(&self, bytes: usize) -> Result<BodyPermit, ApiError> {
        // A body limit beyond u32 (4 GiB) would exceed any budget anyway.
        let permits = u32::try_from(bytes).map_err(|_| ApiError::Overloaded)?;
        match Arc::clone(&self.bytes).try_acquire_many_owned(permits) {
            Ok(permit) => {
                crate::metrics::body_bytes_reserved(bytes);
                Ok(BodyPermit {
                    _permit: permit,
                    bytes,
                })
            }
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => Err(ApiError::Overloaded),
        }
    }
}

/// Bytes reserved for one body; given back when dropped (the handler is done with the
/// body, or the request was abandoned).
#[derive(Debug)]
pub(super) struct BodyPermit {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        crate::metrics::body_bytes_released(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_beyond_the_budget_are_refused_until_one_is_released() {
        let budget = BodyBudget::new(100);
        let first = budget.reserve(60).unwrap();
        let second = budget.reserve(40).unwrap();
        assert!(matches!(budget.reserve(1), Err(ApiError::Overloaded)));
        drop(first);
        let third = budget.reserve(60).unwrap();
        assert!(matches!(budget.reserve(1), Err(ApiError::Overloaded)));
        drop((second, third));
        assert!(budget.reserve(100).is_ok());
        assert!(matches!(budget.reserve(101), Err(ApiError::Overloaded)));
    }
}
