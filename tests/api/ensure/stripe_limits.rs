//! Our own bounds on Stripe requests (concurrency, rate) and the metrics that count each outcome.

use super::*;

/// Many buyers at once: Stripe never sees more requests in flight than the limit, and
/// every caller still gets its customer.
async fn distinct_emails_at_once_never_exceed_the_concurrency_limit(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.hold();
    let limits = Limits {
        concurrency: 3,
        rate: 1_000,
        max_wait: Duration::from_secs(60),
    };
    let app = app_with_limits(backend, &fake, limits).await;
    let callers = (0..10).map(|i| {
        let body = json!({"account": A, "email": format!("buyer{i}@example.com")});
        let app = &app;
        async move { ensure(app, &body).await }
    });
    let release = async {
        fake.wait_in_flight(3).await;
        fake.release();
    };

    let (answers, ()) = tokio::join!(futures_util::future::join_all(callers), release);

    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(fake.creations().len(), 10);
    assert_eq!(fake.max_in_flight(), 3);
}

/// Stripe never gets more than the rate in one second, retries included.
async fn the_rate_limit_holds_in_every_one_second_window(backend: Backend) {
    let fake = FakeStripe::start().await;
    let limits = Limits {
        concurrency: 100,
        rate: 2,
        max_wait: Duration::from_secs(60),
    };
    let app = app_with_limits(backend, &fake, limits).await;
    let callers = (0..6).map(|i| {
        let body = json!({"account": A, "email": format!("buyer{i}@example.com")});
        let app = &app;
        async move { ensure(app, &body).await }
    });

    let answers = futures_util::future::join_all(callers).await;

    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(fake.creations().len(), 6);
    // Our limiter spaces starts by whole seconds; the loopback hop and the waking of a
    // task may move an arrival by a few milliseconds, so the window measured at the fake
    // allows for that.
    let window = Duration::from_millis(900);
    assert_eq!(fake.max_arrivals_within(window), 2);

    // Retries take their turn too: three attempts at 2 per second span over a second.
    fake.set(Behavior::Fail {
        status: 500,
        body: json!({"error": {"type": "api_error"}}),
    });
    let before = fake.creations().len();
    let (status, _) = ensure(&app, &json!({"account": B, "email": ADA})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(fake.creations().len() - before, 3);
    assert_eq!(fake.max_arrivals_within(window), 2);
}

/// A 429 while our own rate is used up is not retried: a retry would wait for a turn and
/// meet Stripe's limit again. Checkout gets a 503 at once.
async fn a_429_while_our_rate_is_used_up_is_not_retried_and_is_503(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.set(Behavior::Fail {
        status: 429,
        body: json!({"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}}),
    });
    let limits = Limits {
        rate: 1,
        ..Limits::default()
    };
    let app = app_with_limits(backend, &fake, limits).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "stripe_unavailable");
    assert!(
        body["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    assert_eq!(fake.creations().len(), 1, "not retried");
}

/// When no turn can be had within the wait allowed, nothing is sent and checkout hears
/// that our own limit was reached.
async fn no_turn_within_the_wait_allowed_is_503_and_sends_nothing(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.hold();
    let limits = Limits {
        concurrency: 1,
        rate: 1_000,
        max_wait: Duration::from_millis(200),
    };
    let app = app_with_limits(backend, &fake, limits).await;
    let first = async { ensure(&app, &json!({"account": A, "email": "first@example.com"})).await };
    let second = async {
        fake.wait_in_flight(1).await;
        let answer = ensure(&app, &json!({"account": A, "email": "second@example.com"})).await;
        fake.release();
        answer
    };

    let ((first_status, _), (status, body)) = tokio::join!(first, second);

    assert_eq!(first_status, StatusCode::CREATED);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "stripe_unavailable");
    assert_eq!(
        body["message"],
        "our own limit on requests to Stripe is reached; nothing was sent to Stripe, retry shortly"
    );
    assert_eq!(fake.creations().len(), 1);
}

/// A fresh process has a registry of its own, so the counts are exact.
async fn ensure_and_stripe_request_metrics_count_outcomes_exactly(backend: Backend) {
    let fake = FakeStripe::start().await;
    let db = TestDb::create(backend).await;
    backfilled(&db.store().await).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let served = serve_with_stripe(&db, &fake.base, &log, &[("STRIPE_API_CONCURRENCY", "1")]);
    let client = reqwest::Client::new();
    let call = |body: Value| ensure_at(&client, &served.base, body.to_string());
    let outcome = |(status, body): (StatusCode, Value)| match status {
        StatusCode::CREATED => "created".to_owned(),
        StatusCode::OK => "found".to_owned(),
        _ => body["error"].as_str().unwrap().to_owned(),
    };
    let metrics = || async {
        client
            .get(format!("{}/metrics", served.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = metrics().await;

    let mut outcomes = vec![
        outcome(call(json!({"account": A, "email": ADA})).await),
        outcome(call(json!({"account": A, "email": ADA})).await),
        outcome(call(json!({"account": A})).await),
        outcome(call(json!({"account": A, "email": ADA, "livemode": true})).await),
    ];
    fake.set(Behavior::Fail {
        status: 400,
        body: stripe_error_quoting(ADA),
    });
    outcomes.push(outcome(call(json!({"account": B, "email": ADA})).await));
    fake.set(Behavior::Fail {
        status: 500,
        body: json!({"error": {"type": "api_error"}}),
    });
    outcomes.push(outcome(call(json!({"account": B, "email": ADA})).await));
    fake.set(Behavior::Fail {
        status: 429,
        body: json!({"error": {"type": "invalid_request_error", "code": "rate_limit"}}),
    });
    outcomes.push(outcome(call(json!({"account": B, "email": ADA})).await));
    // One request held at Stripe takes the only place in flight: the next caller waits
    // its second, then is refused without sending anything.
    fake.set(Behavior::Create);
    fake.hold();
    let held = call(json!({"account": B, "email": "held@example.com"}));
    let refused = async {
        fake.wait_in_flight(1).await;
        let answer = call(json!({"account": B, "email": "refused@example.com"})).await;
        fake.release();
        answer
    };
    let (held, refused) = tokio::join!(held, refused);
    outcomes.push(outcome(held));
    outcomes.push(outcome(refused));
    let after = metrics().await;
    drop(served);

    assert_eq!(
        outcomes,
        [
            "created",
            "found",
            "invalid_request",
            "livemode_mismatch",
            "stripe_error",
            "stripe_unavailable",
            "stripe_error",
            "created",
            "stripe_unavailable"
        ]
    );
    let count = |text: &str, series: String| {
        metric(text, &series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    for (outcome, expected) in [
        ("found", 1.0),
        ("created", 2.0),
        ("invalid_request", 1.0),
        ("invalid_payload", 0.0),
        ("payload_too_large", 0.0),
        ("unauthorized", 0.0),
        ("livemode_mismatch", 1.0),
        ("ensure_disabled", 0.0),
        ("stripe_error", 2.0),
        ("stripe_unavailable", 2.0),
        ("store_unavailable", 0.0),
        ("customer_superseded", 0.0),
    ] {
        let series = format!(r#"stripe_projector_ensure_total{{outcome="{outcome}"}}"#);
        assert_eq!(count(&before, series.clone()), 0.0, "{series}");
        assert_eq!(count(&after, series.clone()), expected, "{series}");
    }
    for (outcome, expected) in [
        ("ok", 2.0),
        ("rejected", 1.0),
        ("rate_limited", 3.0),
        ("server_error", 3.0),
        ("network_error", 0.0),
        ("timeout", 0.0),
        ("invalid_response", 0.0),
        ("limited_locally", 1.0),
    ] {
        let series = format!(r#"stripe_projector_stripe_requests_total{{outcome="{outcome}"}}"#);
        assert_eq!(count(&before, series.clone()), 0.0, "{series}");
        assert_eq!(count(&after, series.clone()), expected, "{series}");
    }
    assert_eq!(fake.creations().len(), 9);
}

on_both_backends!(
    distinct_emails_at_once_never_exceed_the_concurrency_limit,
    the_rate_limit_holds_in_every_one_second_window,
    a_429_while_our_rate_is_used_up_is_not_retried_and_is_503,
    no_turn_within_the_wait_allowed_is_503_and_sends_nothing,
    ensure_and_stripe_request_metrics_count_outcomes_exactly,
);
