//! Filling the log from Stripe's API where webhooks did not reach: `backfill` records every
//! live customer of an account as a snapshot, `catch-up` handles the `customer.*` events
//! Stripe still keeps as deliveries.

pub mod record;
pub mod since;
