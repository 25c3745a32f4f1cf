//! Exactly one customer per buyer: the idempotency key, one flight per key, and processes racing.

use super::*;

/// Two processes (two apps, two databases, one Stripe) asking for one buyer send one
/// idempotency key, so Stripe gives both the same customer; any other account, mode or
/// email gets another key. (Other spellings of one email share the key too, and Stripe
/// refuses them as other parameters: see the tests after this one.)
async fn idempotency_key_is_one_per_account_mode_and_normalized_email(backend: Backend) {
    let fake = FakeStripe::start().await;
    let first = app_with(backend, &fake, TEST_KEY).await;
    let second = app_with(backend, &fake, TEST_KEY).await;
    let live = app_with(backend, &fake, LIVE_KEY).await;

    let (_, one) = ensure(
        &first,
        &json!({"account": A, "email": "Ada.Lovelace@Example.com"}),
    )
    .await;
    // The same spelling with spaces around: the same parameters once trimmed.
    let (_, again) = ensure(
        &second,
        &json!({"account": A, "email": " Ada.Lovelace@Example.com "}),
    )
    .await;
    ensure(&first, &json!({"account": B, "email": ADA})).await;
    ensure(&first, &json!({"account": A, "email": "grace@example.com"})).await;
    ensure(
        &live,
        &json!({"account": A, "email": ADA, "livemode": true}),
    )
    .await;

    let keys: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 5);
    assert_eq!(keys[0], keys[1]);
    assert_eq!(one["customer_id"], again["customer_id"]);
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{keys:?}");
    assert_eq!(keys[4], key_of(A, true, ADA));
}

/// Two processes on one database race for one buyer with different spellings and names.
/// While the first one's request runs, Stripe answers the second 409
/// `idempotency_key_in_use` on every attempt; the second then waits for the first's record
/// and both answer with the one customer Stripe created, in the first caller's spelling.
async fn two_processes_racing_with_other_spellings_get_one_customer(backend: Backend) {
    let fake = FakeStripe::start().await;
    let first = app_with(backend, &fake, TEST_KEY).await;
    let folder = tempfile::tempdir().unwrap();
    let log = folder.path().join("serve.log");
    let second = serve_with_stripe(&first.db, &fake.base, &log, &[]);
    fake.hold();

    let first_body =
        json!({"account": A, "email": "Ada.Lovelace@Example.com", "name": "Ada Lovelace"});
    let first_call = ensure(&first, &first_body);
    let second_call = async {
        fake.wait_in_flight(1).await;
        let (client, base) = (first.client.clone(), second.base.clone());
        let body = json!({"account": A, "email": "ada.lovelace@example.com", "name": "Ada"});
        let answer = tokio::spawn(async move { ensure_at(&client, &base, body.to_string()).await });
        // The first request, then the second process's three attempts, each refused.
        wait_for(|| fake.creations().len() == 4).await;
        assert!(
            !answer.is_finished(),
            "the second caller waits for the record"
        );
        fake.release();
        answer.await.unwrap()
    };
    let ((first_status, first_body), (second_status, second_body)) =
        tokio::join!(first_call, second_call);

    assert_eq!(first_status, StatusCode::CREATED, "{first_body}");
    assert_eq!(second_status, StatusCode::OK, "{second_body}");
    assert_eq!(second_body["created"], false);
    assert_eq!(first_body["customer_id"], second_body["customer_id"]);
    assert_eq!(second_body["email"], "Ada.Lovelace@Example.com");
    assert_eq!(second_body["name"], "Ada Lovelace");
    assert_eq!(fake.customers_created(), 1);
    let key = key_of(A, false, ADA);
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.header("idempotency-key") == Some(key.as_str())));
    assert_eq!(first.store.customers().await.unwrap().len(), 1);
    stop_and_read_log(second, &log);
}

/// Stripe refuses a key reused with other parameters (400 `idempotency_error`) once the
/// first request is answered. That refusal is not retried and never reaches checkout as a
/// Stripe error: the caller waits for the other process's customer to reach its read
/// model (here by Stripe's webhook) and answers with it; when nothing comes within the
/// wait, 503 `stripe_unavailable`, so checkout retries.
async fn a_key_reused_with_other_parameters_waits_for_the_customer(backend: Backend) {
    let fake = FakeStripe::start().await;
    let first = app_with(backend, &fake, TEST_KEY).await;
    let second = app_with(backend, &fake, TEST_KEY).await;
    let (status, created) = ensure(
        &first,
        &json!({"account": A, "email": "Ada.Lovelace@Example.com", "name": "Ada Lovelace"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let customer = fake.customer_for_key(&key_of(A, false, ADA)).unwrap();

    let other_spelling = json!({"account": A, "email": ADA});
    let (waited, ()) = tokio::join!(ensure(&second, &other_spelling), async {
        wait_for(|| fake.creations().len() == 2).await;
        let webhook = stripe_webhook_for(&customer, A, "evt_1StripesOwnCreated", 0);
        assert_eq!(second.deliver_json(&webhook).await.0, StatusCode::OK);
    });
    assert_eq!(waited.0, StatusCode::OK, "{}", waited.1);
    assert_eq!(waited.1["created"], false);
    assert_eq!(waited.1["customer_id"], created["customer_id"]);
    assert_eq!(fake.creations().len(), 2, "a 400 is not retried");

    // A third process whose read model never hears of the customer.
    let third = app_with(backend, &fake, TEST_KEY).await;
    let (status, body) = ensure(&third, &other_spelling).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "stripe_unavailable");
    assert_eq!(fake.creations().len(), 3);
    assert_eq!(fake.customers_created(), 1);
    assert_eq!(third.customer_id(A, ADA, false).await, None);
}

async fn fifty_concurrent_ensures_make_one_stripe_request_and_get_one_id(backend: Backend) {
    let fake = FakeStripe::start().await;
    // Stripe holds its answer until every caller is waiting for the first one's creation.
    fake.hold();
    let app = app_with(backend, &fake, TEST_KEY).await;
    let body = json!({"account": A, "email": ADA, "livemode": false});
    let answered = AtomicUsize::new(0);
    let callers = (0..50).map(|_| async {
        let answer = ensure(&app, &body).await;
        answered.fetch_add(1, Ordering::SeqCst);
        answer
    });
    let release = async {
        fake.wait_in_flight(1).await;
        wait_for(|| app.ensurer.callers_in_flight() == 50).await;
        assert_eq!(
            answered.load(Ordering::SeqCst),
            0,
            "every caller was waiting"
        );
        fake.release();
    };

    let (answers, ()) = tokio::join!(futures_util::future::join_all(callers), release);

    assert_eq!(fake.creations().len(), 1);
    let ids: Vec<&Value> = answers
        .iter()
        .map(|(_, body)| &body["customer_id"])
        .collect();
    assert!(ids[0].is_string(), "{:?}", answers[0]);
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let created = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    let found = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    assert_eq!((created, found), (1, 49));
    assert_eq!(app.store.customers().await.unwrap().len(), 1);
}

/// Within Stripe's 24 hours, the idempotency key gives back the customer it first created,
/// even when that customer has since been deleted: ensure records it again but checkout
/// cannot be given a deleted customer, so the answer is 409 `customer_superseded`.
async fn a_customer_deleted_since_it_was_created_is_409_customer_superseded(backend: Backend) {
    let fake = FakeStripe::start().await;
    let app = app_with(backend, &fake, TEST_KEY).await;
    let (status, created) = ensure(&app, &json!({"account": A, "email": ADA})).await;
    assert_eq!(status, StatusCode::CREATED);
    let customer = fake.customer_for_key(&key_of(A, false, ADA)).unwrap();
    let mut deleted = stripe_webhook_for(&customer, A, "evt_1CustomerDeletedLater", 5);
    deleted["type"] = json!("customer.deleted");
    assert_eq!(app.deliver_json(&deleted).await.0, StatusCode::OK);

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "customer_superseded");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains(created["customer_id"].as_str().unwrap()));
    assert_eq!(fake.creations().len(), 2);
    assert_eq!(fake.customers_created(), 1, "no second customer");
    assert_eq!(app.customer_id(A, ADA, false).await, None);
}

on_both_backends!(
    idempotency_key_is_one_per_account_mode_and_normalized_email,
    two_processes_racing_with_other_spellings_get_one_customer,
    a_key_reused_with_other_parameters_waits_for_the_customer,
    fifty_concurrent_ensures_make_one_stripe_request_and_get_one_id,
    a_customer_deleted_since_it_was_created_is_409_customer_superseded,
);
