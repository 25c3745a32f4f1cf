//! `POST /webhooks/stripe`: Connect and platform deliveries alike.

use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::{ApiError, AppState};
use crate::ingest;
use crate::stripe::signature::SignatureHeader;

/// Answers a delivery and counts its outcome.
pub(super) async fn receive(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let answer = accept(&request, payload, &state).await;
    crate::metrics::webhook_answered(match &answer {
        Ok(accepted) => accepted.outcome(),
        Err(error) => error.code(),
    });
    Ok(HttpResponse::Ok().json(answer?))
}

/// Checks run in the contract's order: body size, header present, header syntax; only then
/// is the body reserved for and read, so a client without a well-formed header costs no
/// body memory and no wait. Then (in `ingest`) signature, timestamp, payload shape.
async fn accept(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<ingest::Accepted, ApiError> {
    let limit = state.webhook.max_body_bytes;
    let declared = declared_length(request, limit)?;
    let signature = request
        .headers()
        .get("Stripe-Signature")
        .ok_or(ApiError::MissingSignature)?;
    let signature = SignatureHeader::parse(signature.as_bytes())?;
    // Held until the delivery is answered: the body lives until then.
    let _reserved = state.body_budget.reserve(declared.unwrap_or(limit))?;
    let body = read_limited(payload, declared, limit).await?;
    let now = chrono::Utc::now().timestamp();
    let accepted = ingest::deliver(&state.store, &state.webhook, &signature, &body, now).await?;
    Ok(accepted)
}

/// The body length the request declares (`Content-Length`), refused with 413 when over
/// `limit` before anything is read. `None` when it declares none (chunked).
pub(super) fn declared_length(
    request: &HttpRequest,
    limit: usize,
) -> Result<Option<usize>, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => Err(ApiError::PayloadTooLarge { limit }),
        // At most `limit`, so it fits in a usize.
        Some(length) => Ok(Some(length as usize)),
        None => Ok(None),
    }
}

/// Why a body could not be read: our deadline (`body_deadline`) passed, the client went
/// away, or the body itself is malformed.
fn body_error(error: PayloadError) -> ApiError {
    match error {
        PayloadError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => ApiError::RequestTimeout,
        PayloadError::Incomplete(_) | PayloadError::Io(_) => ApiError::ClientClosed,
        _ => ApiError::BodyUnreadable,
    }
}

/// Reads the raw body (the signature covers these exact bytes), refusing more than
/// `limit` bytes without buffering them. The buffer is allocated once, of the size
/// reserved for the body: the declared length (actix ends a body at its
/// `Content-Length`), or the limit for a chunked body. It never grows, so it never doubles
/// past the reservation; pages it never fills are never touched.
pub(super) async fn read_limited(
    mut payload: web::Payload,
    declared: Option<usize>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit };
    let mut body = BytesMut::with_capacity(declared.unwrap_or(limit).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(body_error)?;
        if body.len() + chunk.len() > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
