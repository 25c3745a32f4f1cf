//! Every error the API can answer, and its status and body (docs/api.md).

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::ensure::EnsureError;
use crate::ingest::Rejected;
use crate::lookup::InvalidLookup;
use crate::store::StoreError;
use crate::stripe::api::StripeApiError;
use crate::stripe::signature::SignatureError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body is not a well-formed HTTP body (e.g. a corrupt encoding).
    #[error("the request body could not be read")]
    BodyUnreadable,
    /// The client did not send its whole body within the client timeout.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// The client closed the connection before its body ended: nobody hears the answer.
    #[error("the client closed the connection before its body ended")]
    ClientClosed,
    #[error("no Stripe-Signature header")]
    MissingSignature,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("{0}")]
    InvalidPayload(String),
    /// The budget of request body bytes in flight cannot take this body now.
    #[error("too many request bodies are being read at once; retry later")]
    Overloaded,
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
    /// Checkout's get-or-create failed; invalid requests and store failures arrive as
    /// `InvalidRequest` and `StoreUnavailable` instead (see `From<EnsureError>`).
    #[error(transparent)]
    Ensure(EnsureError),
}

impl From<EnsureError> for ApiError {
    fn from(error: EnsureError) -> Self {
        match error {
            EnsureError::Invalid(e) => Self::InvalidRequest(InvalidLookup(e.0)),
            EnsureError::Store(e) => Self::StoreUnavailable(e),
            other => Self::Ensure(other),
        }
    }
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
            Self::RequestTimeout => "request_timeout",
            Self::ClientClosed => "client_closed",
            Self::MissingSignature => "missing_signature",
            Self::Signature(SignatureError::Malformed(_)) => "malformed_signature",
            Self::Signature(SignatureError::Mismatch) => "signature_mismatch",
            Self::Signature(SignatureError::OutOfTolerance { .. }) => "timestamp_out_of_tolerance",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::Overloaded => "overloaded",
            Self::InvalidRequest(_) => "invalid_request",
            Self::NotFound => "not_found",
            Self::AmbiguousLivemode => "ambiguous_livemode",
            Self::Unauthorized => "unauthorized",
            Self::Ensure(e) => match e {
                EnsureError::Invalid(_) => "invalid_request",
                EnsureError::Disabled => "ensure_disabled",
                EnsureError::LivemodeMismatch { .. } => "livemode_mismatch",
                EnsureError::Stripe(e) if stripe_unavailable(e) => "stripe_unavailable",
                EnsureError::Stripe(_) => "stripe_error",
                EnsureError::Store(_) => "store_unavailable",
                EnsureError::Superseded { .. } => "customer_superseded",
                EnsureError::CreatedElsewhere | EnsureError::PreCheckFailed => "stripe_unavailable",
            },
        }
    }
}

/// Stripe failures worth retrying later: 503, not 502.
fn stripe_unavailable(error: &StripeApiError) -> bool {
    matches!(
        error,
        StripeApiError::Unavailable { .. }
            | StripeApiError::LimitedLocally
            | StripeApiError::RateLimited
    )
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::StoreUnavailable(_) | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AmbiguousLivemode => StatusCode::CONFLICT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Ensure(e) => match e {
                EnsureError::Invalid(_) | EnsureError::LivemodeMismatch { .. } => {
                    StatusCode::BAD_REQUEST
                }
                EnsureError::Disabled
                | EnsureError::Store(_)
                | EnsureError::CreatedElsewhere
                | EnsureError::PreCheckFailed => StatusCode::SERVICE_UNAVAILABLE,
                EnsureError::Stripe(e) if stripe_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
                EnsureError::Stripe(_) => StatusCode::BAD_GATEWAY,
                EnsureError::Superseded { .. } => StatusCode::CONFLICT,
            },
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyUnreadable
            | Self::ClientClosed
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
        } else if let Self::RequestTimeout | Self::ClientClosed = self {
            // The client's doing, not a bad payload: said once, without a payload reason.
            tracing::info!(code = self.code(), "request body not received: {self}");
        } else if let Self::Overloaded = self {
            tracing::warn!(code = self.code(), "request refused: body budget exhausted");
        } else if let Self::Ensure(cause) = self {
            // Our own words; Stripe's status, type, code and request id, and network errors,
            // were logged with each attempt.
            tracing::warn!(code = self.code(), reason = %cause, "ensure failed");
            if let EnsureError::Stripe(StripeApiError::InvalidResponse(detail)) = cause {
                tracing::warn!(detail = ?detail, "Stripe's answer is not a customer");
            }
        } else if status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE {
            tracing::warn!(code = self.code(), reason = %self, "request rejected");
        }
        let body = match self {
            Self::NotFound | Self::AmbiguousLivemode | Self::Unauthorized => {
                json!({ "error": self.code() })
            }
            // Stripe's identifiers, so checkout can tell a bad email from a bad key; never
            // Stripe's message, which can quote the buyer's email and part of our key.
            Self::Ensure(EnsureError::Stripe(StripeApiError::Rejected {
                status: stripe_status,
                kind,
                code,
                param,
            })) => json!({
                "error": self.code(),
                "message": "Stripe refused to create the customer; `stripe` holds its status, type, code and param",
                "stripe": { "status": stripe_status, "type": kind, "code": code, "param": param },
            }),
            _ => json!({ "error": self.code(), "message": self.to_string() }),
        };
        let mut response = HttpResponse::build(status);
        match self {
            Self::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            // Budget frees as soon as bodies in flight are handled; Stripe retries 5xx anyway.
            Self::Overloaded => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        response.json(body)
    }
}
