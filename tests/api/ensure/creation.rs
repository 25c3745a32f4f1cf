//! Creating the customer on the right account, what is recorded, and the requests ensure refuses before asking Stripe.

use super::*;

async fn ensure_creates_the_customer_on_the_organizers_account_with_stripes_headers(
    backend: Backend,
) {
    let fake = FakeStripe::start().await;
    let app = app_with(backend, &fake, TEST_KEY).await;

    let (status, body) = ensure(
        &app,
        &json!({"account": A, "email": " Ada.Lovelace@Example.com", "livemode": false, "name": "Ada Lovelace"}),
    )
    .await;

    assert_eq!(status, StatusCode::CREATED, "{body}");
    let requests = fake.creations();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/v1/customers")
    );
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {TEST_KEY}").as_str())
    );
    assert_eq!(sent.header("stripe-account"), Some(A));
    assert_eq!(
        sent.header("idempotency-key"),
        Some(key_of(A, false, ADA).as_str())
    );
    assert_eq!(
        sent.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        sent.form,
        [
            ("email".to_owned(), "Ada.Lovelace@Example.com".to_owned()),
            ("name".to_owned(), "Ada Lovelace".to_owned())
        ]
    );
    let customer = fake.customer_for_key(&key_of(A, false, ADA)).unwrap();
    let customer_id = customer["id"].as_str().unwrap();
    assert_eq!(
        body,
        json!({
            "customer_id": customer_id,
            "account": A,
            "email": "Ada.Lovelace@Example.com",
            "livemode": false,
            "name": "Ada Lovelace",
            "last_event_id": api_event_id(&AccountId::parse(A).unwrap(), false, customer_id),
            "last_event_created": customer["created"],
            "created": true
        })
    );
    // The read model knows the customer at once, without waiting for the webhook.
    assert_eq!(
        app.customer_id(A, ADA, false).await.as_deref(),
        Some(customer_id)
    );
}

async fn platform_account_is_created_without_a_stripe_account_header(backend: Backend) {
    let fake = FakeStripe::start().await;
    let app = app_with(backend, &fake, TEST_KEY).await;

    let (status, body) = ensure(&app, &json!({"account": PLATFORM, "email": ADA})).await;

    assert_eq!(status, StatusCode::CREATED, "{body}");
    let requests = fake.creations();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("stripe-account"), None);
    assert!(requests[0].header("authorization").is_some());
    // No name given: none sent.
    assert_eq!(requests[0].form, [("email".to_owned(), ADA.to_owned())]);
    assert_eq!(body["account"], PLATFORM);
    assert_eq!(body["name"], Value::Null);
}

/// The seed's bug: one buyer, two organizers. Each organizer gets its own customer,
/// created on its own account.
async fn one_buyer_two_organizers_get_two_customers_each_on_its_own_account(backend: Backend) {
    let fake = FakeStripe::start().await;
    let app = app_with(backend, &fake, TEST_KEY).await;

    let (status_a, at_a) = ensure(
        &app,
        &json!({"account": A, "email": "Ada.Lovelace@Example.com"}),
    )
    .await;
    let (status_b, at_b) = ensure(
        &app,
        &json!({"account": B, "email": " ada.lovelace@example.com"}),
    )
    .await;

    assert_eq!(
        (status_a, status_b),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_ne!(at_a["customer_id"], at_b["customer_id"]);
    let accounts: Vec<Option<String>> = fake
        .requests()
        .iter()
        .map(|r| r.header("stripe-account").map(str::to_owned))
        .collect();
    assert_eq!(accounts, [Some(A.to_owned()), Some(B.to_owned())]);
    assert_eq!(
        app.customer_id(A, ADA, false).await,
        at_a["customer_id"].as_str().map(str::to_owned)
    );
    assert_eq!(
        app.customer_id(B, ADA, false).await,
        at_b["customer_id"].as_str().map(str::to_owned)
    );
}

async fn the_later_webhook_for_an_ensured_customer_changes_nothing_checkout_sees(backend: Backend) {
    let fake = FakeStripe::start().await;
    let app = app_with(backend, &fake, TEST_KEY).await;
    ensure(&app, &json!({"account": A, "email": ADA, "name": "Ada"})).await;
    ensure(&app, &json!({"account": B, "email": ADA, "name": "Ada"})).await;
    let before = app.store.customers().await.unwrap();
    let (at_a, at_b) = (
        app.customer_id(A, ADA, false).await,
        app.customer_id(B, ADA, false).await,
    );

    // One webhook in the same second as the customer, one a second later: whichever
    // snapshot wins by rule 3, it is the same customer.
    let customer_a = fake.customer_for_key(&key_of(A, false, ADA)).unwrap();
    let customer_b = fake.customer_for_key(&key_of(B, false, ADA)).unwrap();
    let (status, answer) = app
        .deliver_json(&stripe_webhook_for(
            &customer_a,
            A,
            "evt_1RealStripeCreatedA",
            0,
        ))
        .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (StatusCode::OK, Some("stored"))
    );
    let (status, _) = app
        .deliver_json(&stripe_webhook_for(
            &customer_b,
            B,
            "evt_1RealStripeCreatedB",
            1,
        ))
        .await;
    assert_eq!(status, StatusCode::OK);

    let after = app.store.customers().await.unwrap();
    assert_eq!(checkout_view(&after), checkout_view(&before));
    assert_eq!(app.customer_id(A, ADA, false).await, at_a);
    assert_eq!(app.customer_id(B, ADA, false).await, at_b);
    assert_eq!(app.store.status().await.unwrap().events, 4);
}

/// The log holds Stripe's answer as an event from source "api", and the projection is
/// what the pure rules make of the logged events; a replay gives the same table.
async fn the_log_holds_an_api_event_and_the_projection_matches_the_pure_rules(backend: Backend) {
    let fake = FakeStripe::start().await;
    let app = app_with(backend, &fake, TEST_KEY).await;
    ensure(&app, &json!({"account": A, "email": ADA, "name": "Ada"})).await;
    ensure(&app, &json!({"account": PLATFORM, "email": ADA})).await;
    let customer_a = fake.customer_for_key(&key_of(A, false, ADA)).unwrap();
    let webhook = stripe_webhook_for(&customer_a, A, "evt_1RealStripeCreatedA", 0);
    app.deliver_json(&webhook).await;

    let mut event_ids = vec!["evt_1RealStripeCreatedA".to_owned()];
    for account in [A, PLATFORM] {
        let customer = fake.customer_for_key(&key_of(account, false, ADA)).unwrap();
        let customer_id = customer["id"].as_str().unwrap();
        let id = api_event_id(&AccountId::parse(account).unwrap(), false, customer_id);
        let logged = app
            .store
            .event(&id)
            .await
            .unwrap()
            .expect("the API event is logged");
        assert_eq!(logged.source, "api");
        assert_eq!(logged.event_type, "customer.created");
        assert_eq!(logged.account, account);
        assert_eq!(logged.object_id.as_deref(), Some(customer_id));
        assert_eq!(logged.created, customer["created"].as_i64().unwrap());
        let payload: Value = serde_json::from_str(&logged.payload).unwrap();
        assert_eq!(payload["data"]["object"], customer);
        assert_eq!(payload["source"], "api");
        assert_eq!(payload["id"], id.as_str());
        event_ids.push(id);
    }

    let platform = AccountId::parse(PLATFORM).unwrap();
    let mut oracle = ReadModel::default();
    for id in &event_ids {
        let logged = app.store.event(id).await.unwrap().unwrap();
        let Ok(Delivery::Customer(event)) = event::parse(logged.payload.as_bytes(), &platform)
        else {
            panic!("{id} does not parse as a customer event");
        };
        assert_eq!(event.account.as_str(), logged.account);
        oracle.apply(&event);
    }
    let projected = app.store.customers().await.unwrap();
    assert_eq!(projected, crate::permutation::oracle_rows(&oracle));

    let replayed = stripe_projector::replay::rebuild(
        &app.store,
        stripe_projector::store::RebuildKind::Replace,
        &stripe_projector::replay::Silent,
    )
    .await
    .unwrap();
    assert_eq!(replayed.events, 3);
    assert_eq!(
        app.store.customers().await.unwrap(),
        projected,
        "replay after ensure"
    );
}

async fn an_existing_customer_is_200_created_false_without_asking_stripe(backend: Backend) {
    let fake = FakeStripe::start().await;
    let app = app_with(backend, &fake, TEST_KEY).await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;

    let (status, body) = ensure(
        &app,
        &json!({"account": A, "email": "ADA.lovelace@example.com ", "livemode": false}),
    )
    .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["customer_id"], "cus_Q3IFa65giu0cDn");
    assert_eq!(body["created"], false);
    assert_eq!(body["last_event_id"], "evt_1Qo7ireY8Hq2yVrb8PNLnXTs");
    assert!(fake.creations().is_empty());
}

async fn livemode_must_match_the_keys_mode_and_defaults_to_it(backend: Backend) {
    let fake = FakeStripe::start().await;
    let test = app_with(backend, &fake, TEST_KEY).await;
    let live = app_with(backend, &fake, LIVE_KEY).await;

    let (status, body) = ensure(
        &test,
        &json!({"account": A, "email": ADA, "livemode": true}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("livemode_mismatch"))
    );
    let (status, body) = ensure(
        &live,
        &json!({"account": A, "email": ADA, "livemode": false}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("livemode_mismatch"))
    );
    assert!(fake.creations().is_empty());

    let (status, body) = ensure(&live, &json!({"account": A, "email": ADA})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["livemode"], true);
    assert_eq!(
        live.customer_id(A, ADA, true).await,
        body["customer_id"].as_str().map(str::to_owned)
    );
}

async fn without_a_stripe_key_ensure_is_503_ensure_disabled(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.deliver_fixture("seed/01_customer_created_organizer_a.json")
        .await;

    let (status, body) = ensure(
        &app,
        &json!({"account": A, "email": ADA, "livemode": false}),
    )
    .await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "ensure_disabled");
}

async fn invalid_bodies_are_400_invalid_request(backend: Backend) {
    let fake = FakeStripe::start().await;
    let app = app_with(backend, &fake, TEST_KEY).await;
    let bodies = [
        "not json".to_owned(),
        "[]".to_owned(),
        json!({"email": ADA}).to_string(),
        json!({"account": A}).to_string(),
        json!({"account": A, "email": "  "}).to_string(),
        json!({"account": "", "email": ADA}).to_string(),
        json!({"account": A, "email": ADA, "livemode": "false"}).to_string(),
        json!({"account": A, "email": ADA, "livemode": 0}).to_string(),
        json!({"account": A, "email": ADA, "name": 5}).to_string(),
    ];
    for body in bodies {
        let (status, answer) = ensure_raw(&app, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["error"], "invalid_request", "{body}");
        assert!(answer["message"].is_string(), "{body}");
    }
    assert!(fake.creations().is_empty());
}

on_both_backends!(
    ensure_creates_the_customer_on_the_organizers_account_with_stripes_headers,
    platform_account_is_created_without_a_stripe_account_header,
    one_buyer_two_organizers_get_two_customers_each_on_its_own_account,
    the_later_webhook_for_an_ensured_customer_changes_nothing_checkout_sees,
    the_log_holds_an_api_event_and_the_projection_matches_the_pure_rules,
    an_existing_customer_is_200_created_false_without_asking_stripe,
    livemode_must_match_the_keys_mode_and_defaults_to_it,
    without_a_stripe_key_ensure_is_503_ensure_disabled,
    invalid_bodies_are_400_invalid_request,
);
