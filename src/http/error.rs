//! Every error the API can answer, and its status and body (CONTRACT.md).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::ingest::Rejected;
use crate::lookup::InvalidLookup;
use crate::store::StoreError;
use crate::stripe::signature::SignatureError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body could not be read")]
    BodyUnreadable,
    #[error("no Stripe-Signature header")]
    MissingSignature,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("{0}")]
    InvalidPayload(String),
    #[error("the event store is unavailable; retry later")]
    StoreUnavailable(#[source] StoreError),
    #[error(transparent)]
    InvalidRequest(#[from] InvalidLookup),
    #[error("no such customer")]
    NotFound,
    #[error("both test and live mode have a customer; pass livemode")]
    AmbiguousLivemode,
    #[error("a valid Authorization: Bearer token is required")]
    Unauthorized,
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self::StoreUnavailable(error)
    }
}

impl From<Rejected> for ApiError {
    fn from(rejected: Rejected) -> Self {
        match rejected {
            Rejected::Signature(e) => Self::Signature(e),
            Rejected::Payload(e) => Self::InvalidPayload(e.to_string()),
            Rejected::Store(e) => Self::StoreUnavailable(e),
        }
    }
}

impl ApiError {
    /// The stable, machine-readable code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::BodyUnreadable | Self::InvalidPayload(_) => "invalid_payload",
            Self::MissingSignature => "missing_signature",
            Self::Signature(SignatureError::Malformed(_)) => "malformed_signature",
            Self::Signature(SignatureError::Mismatch) => "signature_mismatch",
            Self::Signature(SignatureError::OutOfTolerance { .. }) => "timestamp_out_of_tolerance",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::InvalidRequest(_) => "invalid_request",
            Self::NotFound => "not_found",
            Self::AmbiguousLivemode => "ambiguous_livemode",
            Self::Unauthorized => "unauthorized",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AmbiguousLivemode => StatusCode::CONFLICT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BodyUnreadable
            | Self::MissingSignature
            | Self::Signature(_)
            | Self::InvalidPayload(_)
            | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if let Self::StoreUnavailable(cause) = self {
            // The cause stays in our logs; the client only learns to retry.
            tracing::error!(error = %cause, "store unavailable");
        } else if status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE {
            tracing::warn!(code = self.code(), reason = %self, "request rejected");
        }
        let body = match self {
            Self::NotFound | Self::AmbiguousLivemode | Self::Unauthorized => {
                json!({ "error": self.code() })
            }
            _ => json!({ "error": self.code(), "message": self.to_string() }),
        };
        let mut response = HttpResponse::build(status);
        if let Self::Unauthorized = self {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(body)
    }
}
