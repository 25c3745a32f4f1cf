//! `POST /webhooks/stripe`: Connect and platform deliveries alike.

use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::{ApiError, AppState};
use crate::ingest;

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

/// Checks run in the contract's order: body size, header present, then (in `ingest`)
/// header syntax, signature, timestamp, payload shape.
async fn accept(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<ingest::Accepted, ApiError> {
    let body = read_limited(request, payload, state.webhook.max_body_bytes).await?;
    let signature = request
        .headers()
        .get("Stripe-Signature")
        .ok_or(ApiError::MissingSignature)?;
    let now = chrono::Utc::now().timestamp();
    let accepted = ingest::deliver(
        &state.committer,
        &state.webhook,
        signature.as_bytes(),
        &body,
        now,
    )
    .await?;
    Ok(accepted)
}

/// Reads the raw body (the signature covers these exact bytes), refusing more than
/// `limit` bytes without buffering them.
pub(super) async fn read_limited(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::BodyUnreadable)?;
        if body.len() + chunk.len() > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
