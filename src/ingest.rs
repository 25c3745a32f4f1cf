//! One delivery, end to end: verified bytes -> parsed event -> append and project.
//!
//! Shared by the webhook endpoint and anything else that feeds signed deliveries.

use serde::Serialize;

use crate::config::WebhookConfig;
use crate::projection;
use crate::store::{AppendOutcome, Source, Store, StoreError};
use crate::stripe::event::{self, Delivery, PayloadError};
use crate::stripe::signature::{SignatureError, SignatureHeader};

/// What happened to an accepted delivery: the 200 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Accepted {
    Stored { event_id: String },
    Duplicate { event_id: String },
    Ignored { event_id: String },
}

impl Accepted {
    /// The `status` of the body, as a metric label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Stored { .. } => "stored",
            Self::Duplicate { .. } => "duplicate",
            Self::Ignored { .. } => "ignored",
        }
    }
}

/// Why a delivery was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("payload is not a Stripe event: {0}")]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Verifies, parses, then appends and projects a delivery. The header arrives parsed (its
/// syntax is checked before the body is read); its signature and timestamp are checked
/// here, against the body. Returns only once the event is committed, so an `Ok` may be
/// acknowledged to Stripe.
///
/// Once parsed, the event's id, type and account are recorded on the current span (the
/// HTTP request span declares `event_id`, `event_type` and `account`), so every line
/// logged for this delivery names the event. Never the body: it holds emails.
pub async fn deliver(
    store: &Store,
    config: &WebhookConfig,
    signature: &SignatureHeader<'_>,
    body: &[u8],
    now: i64,
) -> Result<Accepted, Rejected> {
    signature.verify(body, &config.secrets, now, config.tolerance_secs)?;
    let span = tracing::Span::current();
    let event = match event::parse(body, &config.platform_account)? {
        Delivery::Ignored { event_id } => {
            span.record("event_id", event_id.as_str());
            tracing::info!("event ignored: not a customer.* event");
            return Ok(Accepted::Ignored {
                event_id: event_id.to_string(),
            });
        }
        Delivery::Customer(event) => event,
    };
    span.record("event_id", event.id.as_str());
    span.record("event_type", event.event_type.as_str());
    span.record("account", event.account.as_str());
    let effect = projection::effect_of(&event);
    let event_id = event.id.to_string();
    let outcome = store
        .append(vec![(event, effect)], Source::Webhook)
        .await?
        .pop();
    // The store answers every event it is given: one here.
    match outcome.ok_or(StoreError::BatchFailed)? {
        AppendOutcome::Stored {
            projection_error, ..
        } => {
            if let Some(reason) = projection_error {
                tracing::warn!(%reason, "event stored but not projected");
            }
            tracing::info!("event stored");
            Ok(Accepted::Stored { event_id })
        }
        AppendOutcome::Duplicate => {
            tracing::info!("duplicate delivery");
            Ok(Accepted::Duplicate { event_id })
        }
    }
}
