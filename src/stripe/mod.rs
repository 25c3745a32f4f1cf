//! What Stripe sends: signed deliveries and event envelopes. Nothing here knows about
//! HTTP or storage.

pub mod event;
pub mod signature;
