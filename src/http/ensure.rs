//! `POST /v1/customers/ensure`: checkout's get-or-create.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{Map, Value};

use std::net::IpAddr;

use super::customers::authorize;
use super::webhook::{declared_length, read_limited};
use super::{ApiError, AppState, EnsureAccess};
use crate::ensure::{EnsureRequest, InvalidEnsure};

/// An ensure body is four short fields; anything near this size is not one.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub(super) async fn ensure(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    authorize_ensure(&request, &state.ensure_access)?;
    let declared = declared_length(&request, MAX_BODY_BYTES)?;
    let _reserved = state
        .body_budget
        .reserve(declared.unwrap_or(MAX_BODY_BYTES))?;
    let body = read_limited(payload, declared, MAX_BODY_BYTES).await?;
    let ensure = parse_body(&body).map_err(crate::ensure::EnsureError::from)?;
    let ensured = state.ensure.ensure(&state.store, &ensure).await?;
    let status = if ensured.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(ensured))
}

/// Ensure has its own token; without one, only loopback peers may call it.
fn authorize_ensure(request: &HttpRequest, access: &EnsureAccess) -> Result<(), ApiError> {
    match access {
        EnsureAccess::Token(token) => authorize(request, Some(token)),
        EnsureAccess::LoopbackOnly => {
            let peer = request.peer_addr().map(|addr| addr.ip());
            if loopback_peer(peer) {
                Ok(())
            } else {
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// Whether a peer may call an ensure that has no token. An unknown peer (no socket
/// address) is refused: the rule fails closed.
fn loopback_peer(peer: Option<IpAddr>) -> bool {
    peer.is_some_and(crate::config::is_loopback)
}

/// `ensure`, counted by outcome in the metrics.
pub(super) async fn counted(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let answer = ensure(request, payload, state).await;
    crate::metrics::ensure_answered(match &answer {
        Ok(response) if response.status() == StatusCode::CREATED => "created",
        Ok(_) => "found",
        Err(error) => error.code(),
    });
    answer
}

/// Reads the JSON body field by field, so each mistake gets a message naming the field.
/// `null` counts as absent.
fn parse_body(body: &[u8]) -> Result<EnsureRequest, InvalidEnsure> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| InvalidEnsure(format!("body is not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(InvalidEnsure("body must be a JSON object".into()));
    };
    let livemode = match fields.get("livemode") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(livemode)) => Some(*livemode),
        Some(_) => return Err(InvalidEnsure("livemode must be true or false".into())),
    };
    EnsureRequest::parse(
        text(&fields, "account")?,
        text(&fields, "email")?,
        livemode,
        text(&fields, "name")?,
    )
}

fn text<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, InvalidEnsure> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(InvalidEnsure(format!("{name} must be a string"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_token_only_loopback_peers_may_ensure() {
        for peer in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(loopback_peer(Some(peer.parse().unwrap())), "{peer}");
        }
        for peer in [
            "10.0.0.7",
            "192.168.1.2",
            "0.0.0.0",
            "::",
            "fe80::1",
            "::ffff:10.0.0.7",
            "2001:db8::1",
        ] {
            assert!(!loopback_peer(Some(peer.parse().unwrap())), "{peer}");
        }
        assert!(!loopback_peer(None), "an unknown peer is refused");
    }

    #[test]
    fn body_fields_are_typed() {
        let ok =
            parse_body(br#"{"account":"acct_1","email":"a@b.c","livemode":false,"name":null}"#)
                .unwrap();
        assert_eq!(ok.livemode, Some(false));
        assert_eq!(ok.name, None);
        for bad in [
            &b"not json"[..],
            br#"[]"#,
            br#"{"email":"a@b.c"}"#,
            br#"{"account":"acct_1"}"#,
            br#"{"account":"acct_1","email":"a@b.c","livemode":"false"}"#,
            br#"{"account":"acct_1","email":7}"#,
            br#"{"account":"acct_1","email":"a@b.c","name":["x"]}"#,
        ] {
            assert!(parse_body(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
