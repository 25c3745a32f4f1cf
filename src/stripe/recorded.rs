//! Events this service writes itself: a customer `ensure` created, a customer a sync read
//! from Stripe's API. They are shaped like Stripe's own events, so the log holds one
//! format and a replay parses them like any delivery:
//!
//! ```json
//! {"id":"evt_...","object":"event","account":"acct_...","api_version":null,
//!  "created":...,"data":{"object":<the Customer, byte for byte>},
//!  "livemode":false,"pending_webhooks":0,"request":null or {"id":...,"idempotency_key":...},
//!  "type":"customer....","source":"api"}
//! ```
//!
//! `account` is left out for the platform's own account, as in Stripe's events; `source`
//! is ours (Stripe's events have none), so an operator reading the log sees where the
//! record came from.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::domain::AccountId;
use crate::stripe::event::{self, CustomerEvent, Delivery, PayloadError};

/// An event to record, and what it says.
#[derive(Debug, Clone, Copy)]
pub struct RecordedEvent<'a> {
    pub id: &'a str,
    pub account: &'a AccountId,
    pub platform: &'a AccountId,
    pub created: i64,
    pub livemode: bool,
    /// The Customer object, byte for byte as Stripe sent it.
    pub object: &'a RawValue,
    /// The request that made the change, when it was ours.
    pub request: Option<Request<'a>>,
    pub event_type: &'static str,
    pub source: &'static str,
}

/// Stripe's `request` member of an event.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Request<'a> {
    pub id: Option<&'a str>,
    pub idempotency_key: &'a str,
}

/// Why a record cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot write the record: {0}")]
    Unwritable(#[from] serde_json::Error),
    #[error("the record does not parse: {0}")]
    Invalid(#[from] PayloadError),
    #[error("the record is not a customer event")]
    NotACustomerEvent,
}

impl RecordedEvent<'_> {
    /// The payload stored verbatim in the log.
    pub fn payload(&self) -> Result<String, serde_json::Error> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            id: &'a str,
            object: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            account: Option<&'a str>,
            api_version: Option<&'a str>,
            created: i64,
            data: Data<'a>,
            livemode: bool,
            pending_webhooks: u32,
            request: Option<Request<'a>>,
            #[serde(rename = "type")]
            event_type: &'static str,
            source: &'static str,
        }
        #[derive(Serialize)]
        struct Data<'a> {
            object: &'a RawValue,
        }
        serde_json::to_string(&Envelope {
            id: self.id,
            object: "event",
            account: (self.account != self.platform).then_some(self.account.as_str()),
            api_version: None,
            created: self.created,
            data: Data {
                object: self.object,
            },
            livemode: self.livemode,
            pending_webhooks: 0,
            request: self.request,
            event_type: self.event_type,
            source: self.source,
        })
    }

    /// The event, parsed from its payload like a delivery, so it is exactly what a replay
    /// of the log reads.
    pub fn event(&self) -> Result<CustomerEvent, RecordError> {
        let payload = self.payload()?;
        match event::parse(payload.as_bytes(), self.platform)? {
            Delivery::Customer(event) => Ok(event),
            Delivery::Ignored { .. } => Err(RecordError::NotACustomerEvent),
        }
    }
}
