//! Prometheus metrics: what the on-call engineer needs to see at 3 a.m.
//!
//! One recorder per process: the `metrics` facade allows a single global recorder, and
//! the integration tests start many servers in one process, so [`install`] is idempotent
//! and every server renders the same registry.
//!
//! Labels take only values from fixed lists (outcomes, reasons, Stripe's `customer.*`
//! types). Emails, event ids and accounts are never labels: they are unbounded (every
//! value is a new time series) and emails are personal data.

use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::Source;

const WEBHOOK_REQUESTS: &str = "stripe_projector_webhook_requests_total";
const SIGNATURE_FAILURES: &str = "stripe_projector_signature_failures_total";
const EVENTS_APPENDED: &str = "stripe_projector_events_appended_total";
const PROJECTION_ERRORS: &str = "stripe_projector_projection_errors_total";
const APPEND_DURATION: &str = "stripe_projector_append_duration_seconds";
const COMMIT_BATCH: &str = "stripe_projector_commit_batch_events";
const LOOKUPS: &str = "stripe_projector_lookups_total";
const ENSURES: &str = "stripe_projector_ensure_total";
const STRIPE_REQUESTS: &str = "stripe_projector_stripe_requests_total";
const BUILD_INFO: &str = "stripe_projector_build_info";
const BODY_BYTES_IN_FLIGHT: &str = "stripe_projector_body_bytes_in_flight";

/// Every answer of `POST /webhooks/stripe`: the 200 statuses, then each rejection code.
pub const WEBHOOK_OUTCOMES: [&str; 13] = [
    "stored",
    "duplicate",
    "ignored",
    "missing_signature",
    "malformed_signature",
    "signature_mismatch",
    "timestamp_out_of_tolerance",
    "invalid_payload",
    "payload_too_large",
    "store_unavailable",
    "overloaded",
    "request_timeout",
    "client_closed",
];

/// The webhook outcomes that are signature failures; the reason is the rejection code.
pub const SIGNATURE_REASONS: [&str; 4] = [
    "missing_signature",
    "malformed_signature",
    "signature_mismatch",
    "timestamp_out_of_tolerance",
];

/// Every answer of `GET /v1/customers`.
pub const LOOKUP_OUTCOMES: [&str; 6] = [
    "found",
    "not_found",
    "ambiguous_livemode",
    "invalid_request",
    "unauthorized",
    "store_unavailable",
];

/// Every answer of `POST /v1/customers/ensure`: the two successes, then each error code.
pub const ENSURE_OUTCOMES: [&str; 15] = [
    "found",
    "created",
    "invalid_request",
    "invalid_payload",
    "payload_too_large",
    "unauthorized",
    "livemode_mismatch",
    "ensure_disabled",
    "stripe_error",
    "stripe_unavailable",
    "store_unavailable",
    "customer_superseded",
    "overloaded",
    "request_timeout",
    "client_closed",
];

/// What became of each request we meant to send to Stripe, retries included: `ok`,
/// `rejected` (4xx but 429), `rate_limited` (429), `server_error` (5xx), `network_error`
/// (no answer, or one cut short), `timeout`, `invalid_response` (a 2xx that is not a
/// customer, or another status), `limited_locally` (not sent: our own limit).
pub const STRIPE_REQUEST_OUTCOMES: [&str; 8] = [
    "ok",
    "rejected",
    "rate_limited",
    "server_error",
    "network_error",
    "timeout",
    "invalid_response",
    "limited_locally",
];

/// Stripe's `customer.*` event types (Stripe's API reference), and our own
/// `customer.snapshot`. A type outside this list is counted as
/// `other`, so a hostile or future type cannot grow the number of series.
const CUSTOMER_EVENT_TYPES: [&str; 22] = [
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.snapshot",
    "customer.discount.created",
    "customer.discount.updated",
    "customer.discount.deleted",
    "customer.source.created",
    "customer.source.updated",
    "customer.source.deleted",
    "customer.source.expiring",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "customer.tax_id.created",
    "customer.tax_id.updated",
    "customer.tax_id.deleted",
];

/// Append latency buckets, in seconds: a healthy commit takes milliseconds (on SQLite it
/// includes the fsync of its log); the top buckets catch a database near the 3 s
/// acquire timeout, where Stripe deliveries start to fail.
const APPEND_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Events per group-commit transaction: 1 when deliveries arrive one at a time, up to
/// the committer's bound (512) under a burst.
const COMMIT_BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often histogram samples are folded into their buckets when nobody scrapes:
/// without it an unscraped process would keep every sample.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The recorder's handle; `None` when another recorder was installed first (a program
/// embedding the library with its own metrics), and `/metrics` then says so.
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(install_once).as_ref()
}

/// The text `GET /metrics` answers, or `None` when our recorder is not the installed one.
pub fn render() -> Option<String> {
    install().map(PrometheusHandle::render)
}

fn install_once() -> Option<PrometheusHandle> {
    let builder = match PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(APPEND_DURATION.to_owned()), &APPEND_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(COMMIT_BATCH.to_owned()),
                &COMMIT_BATCH_BUCKETS,
            )
        }) {
        Ok(builder) => builder,
        // Only an empty bucket list is refused, and neither list is empty.
        Err(error) => {
            tracing::error!(%error, "metrics disabled: bad histogram buckets");
            return None;
        }
    };
    let handle = match builder.install_recorder() {
        Ok(handle) => handle,
        Err(error) => {
            tracing::warn!(%error, "metrics disabled: another metrics recorder is installed");
            return None;
        }
    };
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        });
    if let Err(error) = spawned {
        // Rendering drains the samples too, so regular scrapes keep memory bounded.
        tracing::warn!(%error, "metrics upkeep thread did not start");
    }
    describe_and_zero();
    Some(handle)
}

/// Describes every metric and creates each known series at zero, so dashboards and
/// `rate()` see a series before its first event and an alert on it is never "no data".
fn describe_and_zero() {
    describe_counter!(
        WEBHOOK_REQUESTS,
        "Webhook deliveries answered, by outcome (stored, duplicate, ignored, or the rejection code)"
    );
    describe_counter!(
        SIGNATURE_FAILURES,
        "Webhook deliveries refused for their Stripe-Signature, by reason"
    );
    describe_counter!(
        EVENTS_APPENDED,
        "customer.* events newly appended to the log, by type and source"
    );
    describe_counter!(
        PROJECTION_ERRORS,
        "Events stored but not projected (recorded in the log as projection errors)"
    );
    describe_histogram!(
        APPEND_DURATION,
        Unit::Seconds,
        "Time to append and project one event, commit included"
    );
    describe_histogram!(
        COMMIT_BATCH,
        Unit::Count,
        "Deliveries committed together in one group-commit transaction"
    );
    describe_counter!(LOOKUPS, "Checkout lookups answered, by outcome");
    describe_counter!(
        ENSURES,
        "Checkout get-or-create calls answered, by outcome (found, created, or the error code)"
    );
    describe_counter!(
        STRIPE_REQUESTS,
        "Requests to Stripe's API, retries included, by outcome (limited_locally: not sent, our own limit was reached)"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build");
    describe_gauge!(
        BODY_BYTES_IN_FLIGHT,
        Unit::Bytes,
        "Bytes reserved now for request bodies being read or handled (bounded by MAX_BODY_BYTES_IN_FLIGHT)"
    );
    for outcome in WEBHOOK_OUTCOMES {
        counter!(WEBHOOK_REQUESTS, "outcome" => outcome).increment(0);
    }
    for reason in SIGNATURE_REASONS {
        counter!(SIGNATURE_FAILURES, "reason" => reason).increment(0);
    }
    for outcome in LOOKUP_OUTCOMES {
        counter!(LOOKUPS, "outcome" => outcome).increment(0);
    }
    for outcome in ENSURE_OUTCOMES {
        counter!(ENSURES, "outcome" => outcome).increment(0);
    }
    for outcome in STRIPE_REQUEST_OUTCOMES {
        counter!(STRIPE_REQUESTS, "outcome" => outcome).increment(0);
    }
    counter!(PROJECTION_ERRORS).increment(0);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(BODY_BYTES_IN_FLIGHT).increment(0.0);
}

/// Counts one answered webhook delivery. `outcome` is the 200 status or the error code.
pub fn webhook_answered(outcome: &'static str) {
    counter!(WEBHOOK_REQUESTS, "outcome" => outcome).increment(1);
    if SIGNATURE_REASONS.contains(&outcome) {
        counter!(SIGNATURE_FAILURES, "reason" => outcome).increment(1);
    }
}

/// Records bytes reserved for a request body (see `http::body_budget`).
pub fn body_bytes_reserved(bytes: usize) {
    // Exact below 2^53 bytes, far beyond any budget.
    gauge!(BODY_BYTES_IN_FLIGHT).increment(bytes as f64);
}

/// Records bytes given back once a request body is done with.
pub fn body_bytes_released(bytes: usize) {
    gauge!(BODY_BYTES_IN_FLIGHT).decrement(bytes as f64);
}

/// Counts one answered lookup. `outcome` is `found` or the error code.
pub fn lookup_answered(outcome: &'static str) {
    counter!(LOOKUPS, "outcome" => outcome).increment(1);
}

/// Counts one answered ensure. `outcome` is `found`, `created` or the error code.
pub fn ensure_answered(outcome: &'static str) {
    counter!(ENSURES, "outcome" => outcome).increment(1);
}

/// Counts one request to Stripe by outcome, one of [`STRIPE_REQUEST_OUTCOMES`].
pub fn stripe_request(outcome: &'static str) {
    counter!(STRIPE_REQUESTS, "outcome" => outcome).increment(1);
}

/// Records one append: its latency always, and when the event was new, its type and
/// whether it could be projected.
pub fn append_finished(
    event_type: &str,
    source: Source,
    elapsed: Duration,
    stored: bool,
    projection_error: bool,
) {
    ::metrics::histogram!(APPEND_DURATION).record(elapsed.as_secs_f64());
    if stored {
        let event_type = known_event_type(event_type);
        counter!(EVENTS_APPENDED, "type" => event_type, "source" => source.as_str()).increment(1);
    }
    if projection_error {
        counter!(PROJECTION_ERRORS).increment(1);
    }
}

/// Records the size of one group-commit transaction.
pub fn batch_committed(events: usize) {
    // Exact below 2^53, far beyond any batch.
    ::metrics::histogram!(COMMIT_BATCH).record(events as f64);
}

/// The type as a label value: one of Stripe's `customer.*` types, else `other`.
fn known_event_type(event_type: &str) -> &'static str {
    CUSTOMER_EVENT_TYPES
        .iter()
        .find(|known| **known == event_type)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_event_types_are_other() {
        assert_eq!(known_event_type("customer.updated"), "customer.updated");
        assert_eq!(
            known_event_type("customer.tax_id.created"),
            "customer.tax_id.created"
        );
        assert_eq!(known_event_type("customer.anything_new"), "other");
        assert_eq!(known_event_type("customer.ada@example.com"), "other");
    }
}
