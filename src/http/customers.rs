//! `GET /v1/customers`: the checkout read.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::lookup::{InvalidLookup, LookupRequest};
use crate::secret::Secret;
use crate::store::Lookup;

#[derive(Deserialize)]
struct LookupQuery {
    account: Option<String>,
    email: Option<String>,
    livemode: Option<String>,
}

/// Answers checkout and counts the outcome.
pub(super) async fn lookup(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let answer = answer_lookup(&request, &state).await;
    crate::metrics::lookup_answered(match &answer {
        Ok(_) => "found",
        Err(error) => error.code(),
    });
    answer
}

async fn answer_lookup(request: &HttpRequest, state: &AppState) -> Result<HttpResponse, ApiError> {
    authorize(request, state.read_token.as_ref())?;
    let query = web::Query::<LookupQuery>::from_query(request.query_string())
        .map_err(|e| InvalidLookup(format!("query string: {e}")))?;
    let lookup = LookupRequest::parse(
        query.account.as_deref(),
        query.email.as_deref(),
        query.livemode.as_deref(),
    )?;
    match state.lookups.lookup(lookup).await? {
        Lookup::Found(customer) => Ok(HttpResponse::Ok().json(customer)),
        Lookup::NotFound => Err(ApiError::NotFound),
        Lookup::AmbiguousLivemode => Err(ApiError::AmbiguousLivemode),
    }
}

/// `GET /v1/customers/explain`: the lookup's answer and the evidence behind it (same
/// question, same token).
pub(super) async fn explain(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize(&request, state.read_token.as_ref())?;
    let query = web::Query::<LookupQuery>::from_query(request.query_string())
        .map_err(|e| InvalidLookup(format!("query string: {e}")))?;
    let lookup = LookupRequest::parse(
        query.account.as_deref(),
        query.email.as_deref(),
        query.livemode.as_deref(),
    )?;
    let explanation = state
        .store
        .explain(&lookup.account, &lookup.email, lookup.livemode)
        .await?;
    Ok(HttpResponse::Ok().json(explanation))
}

/// Every `/v1` request needs the bearer token when one is configured.
pub(super) fn authorize(request: &HttpRequest, token: Option<&Secret>) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Ok(());
    };
    // The scheme name is case-insensitive (RFC 9110); the token is not.
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .filter(|value| value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|value| &value[7..]);
    match presented {
        Some(presented) if token.matches(presented) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}
