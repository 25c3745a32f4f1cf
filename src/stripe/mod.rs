//! What Stripe sends (signed deliveries and event envelopes) and the one call we make to
//! Stripe's API (`api`), within the process's bounds on such calls (`limiter`). Nothing
//! here knows about our HTTP API or storage.

pub mod api;
pub mod event;
pub mod limiter;
pub mod reads;
pub mod recorded;
pub mod signature;
