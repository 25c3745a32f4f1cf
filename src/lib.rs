//! stripe-projector: a correct customer read model for Stripe Connect platforms.
//!
//! Verified webhooks are appended to an event log tagged with their account, and
//! projected, in the same transaction, into a table keyed by
//! `(account, livemode, normalized email)` that checkout reads.
#![forbid(unsafe_code)]

mod batch_queue;
pub mod cli;
pub mod config;
pub mod domain;
pub mod ensure;
pub mod http;
pub mod import;
pub mod ingest;
pub mod lookup;
pub mod lookup_batch;
pub mod metrics;
pub mod projection;
pub mod replay;
pub mod secret;
pub mod send;
pub mod store;
pub mod stripe;
pub mod sync;
pub mod telemetry;
