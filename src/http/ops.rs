//! Liveness and readiness, for load balancers and orchestrators.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;

/// Readiness gives up on a database that does not answer within this bound.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub(super) async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Ok(Err(error)) => {
            let error = state.store.explain_failure(error).await;
            tracing::warn!(%error, "not ready: the database cannot be used");
            not_ready()
        }
        Err(_) => {
            let location = state.store.location();
            tracing::warn!(
                location,
                "not ready: the database did not answer within 2 s"
            );
            not_ready()
        }
    }
}

/// The OpenAPI 3.1 document of this HTTP surface (`docs/openapi.json`, compiled in).
pub(super) async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!("../../docs/openapi.json"))
}

/// Prometheus text exposition of this process's metrics.
pub(super) async fn metrics() -> HttpResponse {
    match crate::metrics::render() {
        Some(text) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        None => HttpResponse::ServiceUnavailable().json(json!({
            "error": "metrics_unavailable",
            "message": "another metrics recorder is installed in this process"
        })),
    }
}

fn not_ready() -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .json(json!({ "error": "store_unavailable", "message": "the database does not answer" }))
}
