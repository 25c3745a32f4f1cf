//! Email keys and length limits: no Unicode folding makes two addresses one, and values
//! Stripe would never hold are refused at every door (deliveries, lookups, ensure).

use reqwest::StatusCode;
use serde_json::json;

use crate::fake_stripe::{FakeStripe, TEST_KEY};
use crate::helpers::{created, encode, into_json, AppConfig, Backend, TestApp};

const A: &str = "acct_1OrganizerAaaaaaa";
/// KELVIN SIGN: Unicode lowercases it to an ASCII `k`.
const KELVIN: &str = "\u{212A}@x.io";

async fn lookup(app: &TestApp, email: &str) -> (StatusCode, serde_json::Value) {
    app.lookup(&format!(
        "account={A}&email={}&livemode=false",
        encode(email)
    ))
    .await
}

async fn app_with_fake_stripe(backend: Backend) -> (FakeStripe, TestApp) {
    let fake = FakeStripe::start().await;
    let config = AppConfig {
        stripe_api: Some(fake.config(TEST_KEY)),
        ..AppConfig::default()
    };
    (fake, TestApp::spawn_with(backend, config).await)
}

async fn post_ensure(app: &TestApp, body: &serde_json::Value) -> (StatusCode, serde_json::Value) {
    let response = app
        .client
        .post(format!("{}/v1/customers/ensure", app.base))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("ensure");
    into_json(response).await
}

async fn a_lookalike_address_never_finds_another_customer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, _) = app
        .deliver_json(&created("evt_k", A, "cus_k", "K@x.io", 100))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.customer_id(A, "k@X.IO", false).await.as_deref(),
        Some("cus_k")
    );
    assert_eq!(app.customer_id(A, KELVIN, false).await, None);

    // The lookalike is an address of its own, with its own customer.
    let (status, _) = app
        .deliver_json(&created("evt_kelvin", A, "cus_kelvin", KELVIN, 101))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.customer_id(A, KELVIN, false).await.as_deref(),
        Some("cus_kelvin")
    );
    assert_eq!(
        app.customer_id(A, "k@x.io", false).await.as_deref(),
        Some("cus_k")
    );
    // Letters outside ASCII keep their case in the key.
    let (status, _) = app
        .deliver_json(&created("evt_ae", A, "cus_ae", "ÄDA@x.io", 102))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.customer_id(A, "Äda@X.IO", false).await.as_deref(),
        Some("cus_ae")
    );
    assert_eq!(app.customer_id(A, "äda@x.io", false).await, None);
}

async fn ensure_for_a_lookalike_address_creates_its_own_customer(backend: Backend) {
    let (fake, app) = app_with_fake_stripe(backend).await;
    let (status, _) = app
        .deliver_json(&created("evt_k", A, "cus_k", "k@x.io", 100))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = post_ensure(
        &app,
        &json!({"account": A, "email": KELVIN, "livemode": false}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_ne!(body["customer_id"], "cus_k", "{body}");
    assert_eq!(body["email"], KELVIN);
    assert_eq!(fake.creations().len(), 1);
}

async fn an_overlong_or_unprintable_customer_is_stored_as_a_projection_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // 3 KB: more than PostgreSQL can put in one index entry.
    let long_email = format!("{}@x.io", "a".repeat(3000));
    let mut long_name = created("evt_name", A, "cus_name", "name@x.io", 100);
    long_name["data"]["object"]["name"] = json!("n".repeat(257));
    let mut control_name = created("evt_ctrl", A, "cus_ctrl", "ctrl@x.io", 100);
    control_name["data"]["object"]["name"] = json!("Ada\u{1b}[2J");
    let events = [
        created("evt_long", A, "cus_long", &long_email, 100),
        created("evt_tab", A, "cus_tab", "a\tb@x.io", 100),
        long_name,
        control_name,
    ];
    for event in &events {
        // Acknowledged, so Stripe does not retry it for three days.
        let (status, body) = app.deliver_json(event).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "stored", "{body}");
    }
    let status = app.store.status().await.expect("status");
    assert_eq!((status.events, status.projection_errors), (4, 4));
    assert_eq!(status.customers, 0);
    for email in ["name@x.io", "ctrl@x.io"] {
        assert_eq!(app.customer_id(A, email, false).await, None);
    }
    // Names at the limit are customers like any other.
    let mut longest_name = created("evt_ok", A, "cus_ok", "ok@x.io", 100);
    longest_name["data"]["object"]["name"] = json!("é".repeat(256));
    assert_eq!(app.deliver_json(&longest_name).await.0, StatusCode::OK);
    assert_eq!(
        app.customer_id(A, "ok@x.io", false).await.as_deref(),
        Some("cus_ok")
    );
}

async fn lookups_refuse_emails_no_customer_can_have(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let longest = format!("{}@x.io", "a".repeat(507));
    assert_eq!(lookup(&app, &longest).await.0, StatusCode::NOT_FOUND);
    for bad in [
        format!("a{longest}"),
        "a\u{7}@x.io".to_owned(),
        "a\u{0}@x.io".to_owned(),
    ] {
        let (status, body) = lookup(&app, &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(body["error"], "invalid_request");
    }
}

async fn ensure_refuses_values_stripe_would_not_keep_without_calling_stripe(backend: Backend) {
    let (fake, app) = app_with_fake_stripe(backend).await;
    for body in [
        json!({"account": A, "email": format!("{}@x.io", "a".repeat(508))}),
        json!({"account": A, "email": "a\u{1b}@x.io"}),
        json!({"account": A, "email": "ada@x.io", "name": "n".repeat(257)}),
        json!({"account": A, "email": "ada@x.io", "name": "Ada\nLovelace"}),
    ] {
        let (status, answer) = post_ensure(&app, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"], "invalid_request");
    }
    assert!(fake.creations().is_empty());
}

on_both_backends!(
    a_lookalike_address_never_finds_another_customer,
    ensure_for_a_lookalike_address_creates_its_own_customer,
    an_overlong_or_unprintable_customer_is_stored_as_a_projection_error,
    lookups_refuse_emails_no_customer_can_have,
    ensure_refuses_values_stripe_would_not_keep_without_calling_stripe,
);
