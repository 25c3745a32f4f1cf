//! `GET /v1/customers`: every row of the lookup table of docs/api.md.

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
            &EmailKey::parse("lib@example.com").unwrap(),
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

/// Many lookups at once (on PostgreSQL they share queries, see `lookup_batch`): each
/// caller gets the answer to its own question, whatever else was asked with it.
async fn concurrent_lookups_each_get_their_own_answer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // 24 buyers over 3 accounts in test mode; every fourth also has a live customer, and
    // every sixth a second, older test customer that is therefore the canonical one.
    for i in 0..24 {
        let account = format!("acct_many_{}", i % 3);
        let email = format!("buyer{i}@example.com");
        let mut specs = vec![(format!("cus_t{i}"), false, 2_000)];
        if i % 4 == 0 {
            specs.push((format!("cus_l{i}"), true, 2_000));
        }
        if i % 6 == 0 {
            specs.push((format!("cus_old{i}"), false, 1_000));
        }
        for (customer, livemode, created) in specs {
            let event = EventSpec {
                id: &format!("evt_{customer}"),
                event_type: "customer.created",
                account: Some(&account),
                created,
                livemode,
                customer_id: &customer,
                email: Some(&email),
                customer_created: created,
            };
            assert_eq!(app.deliver_json(&event.to_json()).await.0, StatusCode::OK);
        }
    }
    let expected = |i: usize, livemode: Option<bool>| -> (StatusCode, Option<String>) {
        let test = if i.is_multiple_of(6) {
            format!("cus_old{i}")
        } else {
            format!("cus_t{i}")
        };
        let live = i.is_multiple_of(4).then(|| format!("cus_l{i}"));
        match (livemode, live) {
            (Some(false), _) | (None, None) => (StatusCode::OK, Some(test)),
            (Some(true), Some(live)) => (StatusCode::OK, Some(live)),
            (Some(true), None) => (StatusCode::NOT_FOUND, None),
            (None, Some(_)) => (StatusCode::CONFLICT, None),
        }
    };
    // Every buyer in every mode, on its account, on another account, and unknown buyers.
    let mut questions = Vec::new();
    for i in 0..30 {
        for (mode, livemode) in [
            ("&livemode=false", Some(false)),
            ("&livemode=true", Some(true)),
            ("", None),
        ] {
            let right = format!(
                "account=acct_many_{}&email=Buyer{i}%40Example.com{mode}",
                i % 3
            );
            let answer = if i < 24 {
                expected(i, livemode)
            } else {
                (StatusCode::NOT_FOUND, None)
            };
            questions.push((right, answer));
            let wrong = format!(
                "account=acct_many_{}&email=buyer{i}%40example.com{mode}",
                (i + 1) % 3
            );
            questions.push((wrong, (StatusCode::NOT_FOUND, None)));
        }
    }

    let answers =
        futures_util::future::join_all(questions.iter().map(|(query, _)| app.lookup(query))).await;

    for ((query, (status, customer)), (got_status, body)) in questions.iter().zip(answers) {
        assert_eq!(got_status, *status, "{query}: {body}");
        if let Some(customer) = customer {
            assert_eq!(body["customer_id"], json!(customer), "{query}");
        }
    }
}

on_both_backends!(
    concurrent_lookups_each_get_their_own_answer,
    found_customer_has_the_documented_body,
    email_is_matched_trimmed_and_lowercased_but_account_is_exact,
    unknown_customer_is_404,
    missing_account_or_email_or_bad_livemode_is_400,
    omitted_livemode_is_ambiguous_only_when_both_modes_have_a_customer,
    read_token_is_required_when_configured,
    lookup_is_also_a_library_call,
);
