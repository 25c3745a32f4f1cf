//! `GET /v1/customers`: every row of CONTRACT.md's lookup table.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{into_json, AppConfig, Backend, EventSpec, TestApp};

const ACCOUNT_A: &str = "acct_1OrganizerAaaaaaa";

async fn found_customer_has_the_documented_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;

    let (status, body) = app
        .lookup(&format!(
            "account={ACCOUNT_A}&email=ada.lovelace%40example.com&livemode=false"
        ))
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "customer_id": "cus_Q3IFa65giu0cDn",
            "account": ACCOUNT_A,
            "email": "Ada.Lovelace@Example.com",
            "livemode": false,
            "name": "Ada Lovelace",
            "last_event_id": "evt_1Qo7ireY8Hq2yVrb8PNLnXTs",
            "last_event_created": 1730000000
        })
    );
}

async fn email_is_matched_trimmed_and_lowercased_but_account_is_exact(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;

    let spaced = app
        .lookup(&format!(
            "account={ACCOUNT_A}&email=%20%20ADA.LOVELACE%40EXAMPLE.COM%20"
        ))
        .await;
    let other_case_account = app
        .lookup("account=acct_1organizeraaaaaaa&email=ada.lovelace%40example.com")
        .await;

    assert_eq!(spaced.0, StatusCode::OK);
    assert_eq!(spaced.1["customer_id"], "cus_Q3IFa65giu0cDn");
    assert_eq!(
        other_case_account,
        (StatusCode::NOT_FOUND, json!({"error": "not_found"}))
    );
}

async fn unknown_customer_is_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let answer = app
        .lookup(&format!(
            "account={ACCOUNT_A}&email=nobody%40example.com&livemode=false"
        ))
        .await;
    assert_eq!(
        answer,
        (StatusCode::NOT_FOUND, json!({"error": "not_found"}))
    );
}

async fn missing_account_or_email_or_bad_livemode_is_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let queries = [
        "email=a%40b.c".to_owned(),
        format!("account={ACCOUNT_A}"),
        format!("account={ACCOUNT_A}&email=%20%20"),
        "account=&email=a%40b.c".to_owned(),
        format!("account={ACCOUNT_A}&email=a%40b.c&livemode=yes"),
        format!("account={ACCOUNT_A}&email=a%40b.c&livemode=TRUE"),
        String::new(),
    ];
    for query in queries {
        let (status, body) = app.lookup(&query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["error"], "invalid_request", "{query}");
        assert!(body["message"].is_string(), "{query}");
    }
}

async fn omitted_livemode_is_ambiguous_only_when_both_modes_have_a_customer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("test_mode/customer_created_test.json")
        .await;
    let one_mode = app
        .lookup(&format!("account={ACCOUNT_A}&email=barbara%40example.com"))
        .await;
    app.deliver_fixture("test_mode/customer_created_live.json")
        .await;
    let both_modes = app
        .lookup(&format!("account={ACCOUNT_A}&email=barbara%40example.com"))
        .await;

    assert_eq!(one_mode.0, StatusCode::OK);
    assert_eq!(one_mode.1["customer_id"], "cus_QjZ0Te86F0MBtf");
    assert_eq!(
        both_modes,
        (StatusCode::CONFLICT, json!({"error": "ambiguous_livemode"}))
    );
}

async fn read_token_is_required_when_configured(backend: Backend) {
    let config = AppConfig {
        read_token: Some("s3cret-token".into()),
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;
    let url = format!(
        "{}/v1/customers?account={ACCOUNT_A}&email=ada.lovelace%40example.com",
        app.base
    );

    let none = app.client.get(&url).send().await.unwrap();
    let wrong = app
        .client
        .get(&url)
        .bearer_auth("s3cret-token2")
        .send()
        .await
        .unwrap();
    let right = app
        .client
        .get(&url)
        .bearer_auth("s3cret-token")
        .send()
        .await
        .unwrap();

    assert_eq!(
        into_json(none).await,
        (StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}))
    );
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(right.status(), StatusCode::OK);
    for header in ["bearer s3cret-token", "BEARER s3cret-token"] {
        let response = app
            .client
            .get(&url)
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the scheme is case-insensitive: {header}"
        );
    }
    for header in [
        "Bearer S3CRET-TOKEN",
        "Basic s3cret-token",
        "Bearer",
        "s3cret-token",
    ] {
        let response = app
            .client
            .get(&url)
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header}");
    }
    // Webhooks are authenticated by their signature, never by the read token.
    let (status, _) = app
        .deliver_fixture("seed/02_customer_created_organizer_b.json")
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn lookup_is_also_a_library_call(backend: Backend) {
    use stripe_projector::domain::{AccountId, EmailKey};
    use stripe_projector::store::Lookup;
    let app = TestApp::spawn(backend).await;
    let event = EventSpec {
        id: "evt_lib",
        event_type: "customer.created",
        account: Some(ACCOUNT_A),
        created: 10,
        livemode: true,
        customer_id: "cus_lib",
        email: Some("Lib@Example.com"),
        customer_created: 10,
    };
    app.deliver_json(&event.to_json()).await;

    let answer = app
        .store
        .lookup(
            &AccountId::parse(ACCOUNT_A).unwrap(),
            &EmailKey::normalize("lib@example.com").unwrap(),
            Some(true),
        )
        .await
        .unwrap();

    let Lookup::Found(customer) = answer else {
        panic!("expected a customer, got {answer:?}")
    };
    assert_eq!(customer.customer_id, "cus_lib");
    assert!(customer.livemode);
}

on_both_backends!(
    found_customer_has_the_documented_body,
    email_is_matched_trimmed_and_lowercased_but_account_is_exact,
    unknown_customer_is_404,
    missing_account_or_email_or_bad_livemode_is_400,
    omitted_livemode_is_ambiguous_only_when_both_modes_have_a_customer,
    read_token_is_required_when_configured,
    lookup_is_also_a_library_call,
);
