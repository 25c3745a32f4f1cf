//! One delivery, end to end: verified bytes -> parsed event -> append and project.
//!
//! Shared by the webhook endpoint and anything else that feeds signed deliveries.

use serde::Serialize;

use crate::config::WebhookConfig;
use crate::projection;
use crate::store::{AppendOutcome, Source, Store, StoreError};
use crate::stripe::event::{self, Delivery, PayloadError};
use crate::stripe::signature::{self, SignatureError};

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

/// Verifies, parses, then appends and projects a delivery. Returns only once the event is
/// committed, so an `Ok` may be acknowledged to Stripe.
pub async fn deliver(
    store: &Store,
    config: &WebhookConfig,
    signature_header: &[u8],
    body: &[u8],
    now: i64,
) -> Result<Accepted, Rejected> {
    signature::verify(
        signature_header,
        body,
        &config.secrets,
        now,
        config.tolerance_secs,
    )?;
    let event = match event::parse(body, &config.platform_account)? {
        Delivery::Ignored { event_id } => return Ok(Accepted::Ignored { event_id }),
        Delivery::Customer(event) => event,
    };
    let effect = projection::effect_of(&event);
    let event_id = event.id.to_string();
    match store.append(&event, &effect, Source::Webhook).await? {
        AppendOutcome::Stored {
            projection_error, ..
        } => {
            if let Some(reason) = projection_error {
                tracing::warn!(event_id, event_type = %event.event_type, account = %event.account, %reason, "event stored but not projected");
            }
            tracing::info!(event_id, event_type = %event.event_type, account = %event.account, "event stored");
            Ok(Accepted::Stored { event_id })
        }
        AppendOutcome::Duplicate => {
            tracing::info!(event_id, event_type = %event.event_type, account = %event.account, "duplicate delivery");
            Ok(Accepted::Duplicate { event_id })
        }
    }
}
