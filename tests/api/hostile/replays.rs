//! Captured deliveries replayed within the tolerance, after it, and with a changed body.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{created, into_json, now, sign, Backend, TestApp, SECRET};

/// A captured delivery, re-sent within the tolerance, is a duplicate that changes nothing;
/// re-sent once the tolerance has passed, it is refused and changes nothing either; with
/// its body changed, its signature no longer matches. "Time passing" is a second `serve` on
/// the same database whose tolerance is shorter than the capture's age: from where it
/// stands, the capture is as old as one replayed after the tolerance.
async fn captured_deliveries_replay_as_duplicates_then_not_at_all(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let event = created(
        "evt_captured",
        "acct_r",
        "cus_r",
        "r@example.com",
        1_700_000_000,
    );
    let body = event.to_string().into_bytes();
    let captured = sign(SECRET, now() - 100, &body);
    let (status, answer) = app.post_webhook(&body, Some(&captured)).await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored"))
    );
    let tables = |store: stripe_projector::store::Store| async move {
        (
            store.status().await.unwrap(),
            store.customers().await.unwrap(),
        )
    };
    let before = tables(app.store.clone()).await;

    let (status, answer) = app.post_webhook(&body, Some(&captured)).await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("duplicate"))
    );
    assert_eq!(tables(app.store.clone()).await, before);

    let mut forged = event.clone();
    forged["data"]["object"]["email"] = json!("attacker@example.com");
    let (status, answer) = app
        .post_webhook(forged.to_string().as_bytes(), Some(&captured))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"], "signature_mismatch");

    let mut later = crate::process::serve_command(&app.db.url);
    later.env("STRIPE_WEBHOOK_TOLERANCE_SECS", "50");
    let later = crate::process::Served::spawn(later);
    let never_seen = created("evt_captured_2", "acct_r", "cus_r2", "r2@example.com", 1);
    let never_seen = never_seen.to_string().into_bytes();
    for (body, header) in [
        (body.clone(), captured.clone()),
        (never_seen.clone(), sign(SECRET, now() - 100, &never_seen)),
    ] {
        let response = app
            .client
            .post(format!("{}/webhooks/stripe", later.base))
            .header("Stripe-Signature", header)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, answer) = into_json(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"], "timestamp_out_of_tolerance");
    }
    assert_eq!(tables(app.store.clone()).await, before);
}

on_both_backends!(captured_deliveries_replay_as_duplicates_then_not_at_all);
