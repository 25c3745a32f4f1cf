//! Stripe failing: what is retried, what checkout hears, and what never leaves the process.

use super::*;

async fn stripe_4xx_is_502_with_stripes_error_and_never_the_key(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.set(Behavior::Fail {
        status: 400,
        body: json!({"error": {
            "type": "invalid_request_error", "code": "email_invalid", "param": "email",
            "message": format!("Invalid email address (key {TEST_KEY})")
        }}),
    });
    let app = app_with(backend, &fake, TEST_KEY).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": "not-an-email"})).await;

    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"], "stripe_error");
    assert_eq!(
        body["stripe"],
        json!({"status": 400, "type": "invalid_request_error", "code": "email_invalid", "param": "email"})
    );
    assert!(!body.to_string().contains(TEST_KEY), "{body}");
    assert!(!body.to_string().contains("Invalid email"), "{body}");
    assert_eq!(fake.creations().len(), 1, "a 4xx is not retried");
    assert_eq!(app.store.status().await.unwrap().events, 0);
}

async fn stripe_5xx_is_retried_then_503_stripe_unavailable(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.set(Behavior::Fail {
        status: 500,
        body: json!({"error": {"type": "api_error", "message": "Something went wrong"}}),
    });
    let app = app_with(backend, &fake, TEST_KEY).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "stripe_unavailable");
    let requests = fake.creations();
    assert_eq!(requests.len(), 3, "3 attempts");
    let key = key_of(A, false, ADA);
    assert!(requests
        .iter()
        .all(|r| r.header("idempotency-key") == Some(key.as_str())));
    assert_eq!(app.customer_id(A, ADA, false).await, None);

    // Stripe recovers: the next call creates the customer.
    fake.set(Behavior::Create);
    let (status, _) = ensure(&app, &json!({"account": A, "email": ADA})).await;
    assert_eq!(status, StatusCode::CREATED);
}

async fn stripe_timeouts_are_retried_then_503_stripe_unavailable(backend: Backend) {
    let fake = FakeStripe::start().await;
    // Never answered.
    fake.hold();
    let config = AppConfig {
        stripe_api: Some(fake.config_with(TEST_KEY, Duration::from_millis(200))),
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;
    backfilled(&app.store).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "stripe_unavailable");
    assert_eq!(fake.creations().len(), 3, "3 attempts");
}

async fn unreachable_stripe_is_503_stripe_unavailable(backend: Backend) {
    let fake = FakeStripe::start().await;
    let mut config = fake.config(TEST_KEY);
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    config.api_base =
        stripe_projector::stripe::api::parse_api_base(&format!("http://127.0.0.1:{port}")).unwrap();
    let app = TestApp::spawn_with(
        backend,
        AppConfig {
            stripe_api: Some(config),
            ..AppConfig::default()
        },
    )
    .await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("stripe_unavailable"))
    );
}

/// Stripe's SDKs retry 409 `lock_timeout`, 429 and 5xx: so do we, with the same
/// idempotency key, and the customer of the attempt that succeeds is the answer.
async fn failures_then_success_are_retried_with_one_key_until_created(backend: Backend) {
    let cases = [
        vec![
            Failure::new(500, "api_error", None),
            Failure::new(503, "api_error", None),
        ],
        vec![Failure::new(
            429,
            "invalid_request_error",
            Some("rate_limit"),
        )],
        vec![Failure::new(
            409,
            "invalid_request_error",
            Some("lock_timeout"),
        )],
    ];
    for (n, failures) in cases.into_iter().enumerate() {
        let fake = FakeStripe::start().await;
        let app = app_with(backend, &fake, TEST_KEY).await;
        let attempts = failures.len() + 1;
        fake.fail_next(failures);

        let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

        assert_eq!(status, StatusCode::CREATED, "case {n}: {body}");
        assert_eq!(body["created"], true);
        let requests = fake.creations();
        assert_eq!(requests.len(), attempts, "case {n}");
        let key = key_of(A, false, ADA);
        assert!(requests
            .iter()
            .all(|r| r.header("idempotency-key") == Some(key.as_str())));
        assert_eq!(fake.customers_created(), 1);
        assert_eq!(
            app.customer_id(A, ADA, false).await,
            body["customer_id"].as_str().map(str::to_owned)
        );
    }
}

/// `Stripe-Should-Retry` overrides the status: `false` stops retries of a 5xx, `true`
/// retries a 4xx.
async fn stripe_should_retry_overrides_the_status(backend: Backend) {
    let fake = FakeStripe::start().await;
    let app = app_with(backend, &fake, TEST_KEY).await;
    fake.fail_next([
        Failure::new(500, "api_error", None).with_header("Stripe-Should-Retry", "false")
    ]);
    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "stripe_unavailable");
    assert_eq!(fake.creations().len(), 1, "not retried");

    fake.fail_next([
        Failure::new(400, "invalid_request_error", Some("processing_error"))
            .with_header("Stripe-Should-Retry", "true"),
    ]);
    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(fake.creations().len(), 3, "retried once");
}

/// A key Stripe does not know is 401: not retried, 502 `stripe_error` with Stripe's status
/// and type, and neither the key nor Stripe's message (which quotes it) in the answer.
async fn an_unknown_api_key_is_502_with_stripes_401_and_never_the_key(backend: Backend) {
    const UNKNOWN_KEY: &str = "sk_test_51KeyStripeHasNeverIssued000000";
    let fake = FakeStripe::start().await;
    let app = app_with(backend, &fake, UNKNOWN_KEY).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "stripe_error");
    assert_eq!(body["stripe"]["status"], 401);
    assert_eq!(body["stripe"]["type"], "invalid_request_error");
    assert!(!body.to_string().contains(UNKNOWN_KEY), "{body}");
    assert!(!body.to_string().contains("Invalid API Key"), "{body}");
    assert_eq!(fake.creations().len(), 1, "a 401 is not retried");
    assert_eq!(fake.customers_created(), 0);
}

/// Stripe's message quotes the buyer's email and a masked key: neither the client nor
/// the log of the real binary sees it. The log keeps Stripe's status, type, code and
/// request id, escaped so Stripe's text cannot start a log line of its own.
async fn stripes_message_reaches_neither_the_client_nor_the_log(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.set(Behavior::Fail {
        status: 400,
        body: stripe_error_quoting(ADA),
    });
    let db = TestDb::create(backend).await;
    backfilled(&db.store().await).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let served = serve_with_stripe(&db, &fake.base, &log, &[]);
    let client = reqwest::Client::new();

    let (status, body) = ensure_at(
        &client,
        &served.base,
        json!({"account": A, "email": ADA}).to_string(),
    )
    .await;
    fake.set(Behavior::Fail {
        status: 400,
        body: json!({"error": {"type": "invalid_request_error", "code": "odd\nERROR forged line"}}),
    });
    let (forged_status, _) = ensure_at(
        &client,
        &served.base,
        json!({"account": B, "email": ADA}).to_string(),
    )
    .await;
    let logged = stop_and_read_log(served, &log);

    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        body,
        json!({
            "error": "stripe_error",
            "message": "Stripe refused to create the customer; `stripe` holds its status, type, code and param",
            "stripe": {"status": 400, "type": "invalid_request_error", "code": "email_invalid", "param": "email"}
        })
    );
    assert_eq!(forged_status, StatusCode::BAD_GATEWAY);
    for private in [STRIPE_SAYS, MASKED_KEY, ADA, TEST_KEY] {
        assert!(!logged.contains(private), "{private} in the log:\n{logged}");
    }
    for kept in [
        "email_invalid",
        "invalid_request_error",
        "req_fake_failure",
        "status=400",
    ] {
        assert!(logged.contains(kept), "{kept} not in the log:\n{logged}");
    }
    assert!(
        logged.lines().all(|line| !line.starts_with("ERROR forged")),
        "{logged}"
    );
}

/// A connection that cannot be made: why goes to the log, escaped; the client only hears
/// that Stripe is unavailable.
async fn a_network_error_goes_to_the_log_and_never_to_the_client(backend: Backend) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let db = TestDb::create(backend).await;
    backfilled(&db.store().await).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let served = serve_with_stripe(&db, &format!("http://127.0.0.1:{port}"), &log, &[]);

    let (status, body) = ensure_at(
        &reqwest::Client::new(),
        &served.base,
        json!({"account": A, "email": ADA}).to_string(),
    )
    .await;
    let logged = stop_and_read_log(served, &log);

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"error": "stripe_unavailable", "message": "Stripe is unavailable after 3 attempt(s); retry later"})
    );
    let refused = logged
        .lines()
        .filter(|line| {
            line.contains("Stripe request failed") && line.contains("Connection refused")
        })
        .count();
    assert_eq!(refused, 3, "one line per attempt:\n{logged}");
    assert!(
        logged.contains("error=\"connection failed: "),
        "escaped as text:\n{logged}"
    );
}

on_both_backends!(
    stripe_4xx_is_502_with_stripes_error_and_never_the_key,
    stripe_5xx_is_retried_then_503_stripe_unavailable,
    stripe_timeouts_are_retried_then_503_stripe_unavailable,
    unreachable_stripe_is_503_stripe_unavailable,
    failures_then_success_are_retried_with_one_key_until_created,
    stripe_should_retry_overrides_the_status,
    an_unknown_api_key_is_502_with_stripes_401_and_never_the_key,
    stripes_message_reaches_neither_the_client_nor_the_log,
    a_network_error_goes_to_the_log_and_never_to_the_client,
);
