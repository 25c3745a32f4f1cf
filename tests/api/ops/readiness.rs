//! Readiness while PostgreSQL refuses connections, and after, without a restart.

use reqwest::StatusCode;
use serde_json::json;

use super::{count, scrape};
use crate::helpers::{created, postgres_configured, wait_until_ready, Backend, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_webhooks_follow_the_database_down_and_back_up() {
    if !postgres_configured() {
        return;
    }
    let app = TestApp::spawn(Backend::Postgres).await;
    let event = |i: usize| {
        created(
            &format!("evt_ready_{i}"),
            "acct_ready",
            &format!("cus_ready_{i}"),
            &format!("r{i}@example.com"),
            1_700_000_000,
        )
    };
    assert_eq!(app.get("/readyz").await.0, StatusCode::OK);
    assert_eq!(app.deliver_json(&event(1)).await.0, StatusCode::OK);
    let before = scrape(&app.client, &app.base).await;
    let unavailable = r#"stripe_projector_webhook_requests_total{outcome="store_unavailable"}"#;

    app.db.refuse_connections().await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "store_unavailable");
    let (status, body) = app.deliver_json(&event(2)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "store_unavailable");
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK, "still alive");
    let during = scrape(&app.client, &app.base).await;
    assert!(count(&during, unavailable) >= count(&before, unavailable) + 1.0);

    app.db.allow_connections().await;
    // Ready again without a restart.
    wait_until_ready(&app.client, &app.base).await;
    let (status, body) = app.deliver_json(&event(2)).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("stored"))
    );
    assert!(app.store.event("evt_ready_2").await.unwrap().is_some());
}
