//! `POST /v1/customers/ensure` and the `ensure` command, against a local fake Stripe API.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use stripe_projector::domain::{AccountId, EmailKey};
use stripe_projector::ensure::{api_event_id, idempotency_key};
use stripe_projector::projection::ReadModel;
use stripe_projector::store::{ProjectedCustomer, Store};
use stripe_projector::stripe::event::{self, Delivery};
use stripe_projector::stripe::limiter::Limits;

use crate::fake_stripe::{Behavior, Failure, FakeStripe, LIVE_KEY, TEST_KEY};
use crate::helpers::{into_json, metric, AppConfig, Backend, TestApp, TestDb, PLATFORM};
use crate::process::{command, serve_command, Served};

const A: &str = "acct_1OrganizerAaaaaaa";
const B: &str = "acct_1OrganizerBbbbbbb";
const ADA: &str = "ada.lovelace@example.com";

async fn app_with(backend: Backend, fake: &FakeStripe, key: &str) -> TestApp {
    let config = AppConfig {
        stripe_api: Some(fake.config(key)),
        ..AppConfig::default()
    };
    TestApp::spawn_with(backend, config).await
}

async fn ensure(app: &TestApp, body: &Value) -> (StatusCode, Value) {
    ensure_raw(app, body.to_string()).await
}

async fn ensure_raw(app: &TestApp, body: String) -> (StatusCode, Value) {
    ensure_at(&app.client, &app.base, body).await
}

async fn ensure_at(client: &reqwest::Client, base: &str, body: String) -> (StatusCode, Value) {
    let response = client
        .post(format!("{base}/v1/customers/ensure"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("ensure request");
    into_json(response).await
}

/// Waits, polling, until `condition` holds; panics after 30 s.
async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not reached in 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn app_with_limits(backend: Backend, fake: &FakeStripe, limits: Limits) -> TestApp {
    let mut stripe_api = fake.config(TEST_KEY);
    stripe_api.limits = limits;
    let config = AppConfig {
        stripe_api: Some(stripe_api),
        ..AppConfig::default()
    };
    TestApp::spawn_with(backend, config).await
}

/// `serve` (the real binary) creating customers through `api_base`, its log in `log`.
fn serve_with_stripe(db: &TestDb, api_base: &str, log: &Path, settings: &[(&str, &str)]) -> Served {
    let mut command = serve_command(&db.url);
    command
        .env("STRIPE_SECRET_KEY", TEST_KEY)
        .env("STRIPE_API_BASE", api_base)
        .env("STRIPE_API_TIMEOUT_SECS", "5")
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    for (name, value) in settings {
        command.env(name, value);
    }
    Served::spawn(command)
}

/// Stops `serve` and returns everything it logged.
fn stop_and_read_log(mut served: Served, log: &Path) -> String {
    served.terminate();
    assert!(served.wait_exit(Duration::from_secs(30)).is_some());
    std::fs::read_to_string(log).unwrap()
}

fn key_of(account: &str, livemode: bool, email: &str) -> String {
    idempotency_key(
        &AccountId::parse(account).unwrap(),
        livemode,
        &EmailKey::parse(email).unwrap(),
    )
}

/// account, livemode, customer id, email, name, deleted.
type CheckoutRow = (String, bool, String, Option<String>, Option<String>, bool);

/// What checkout sees of each projected customer.
fn checkout_view(rows: &[ProjectedCustomer]) -> Vec<CheckoutRow> {
    rows.iter()
        .map(|row| {
            (
                row.account.clone(),
                row.livemode,
                row.customer_id.clone(),
                row.email.clone(),
                row.name.clone(),
                row.deleted,
            )
        })
        .collect()
}

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
    let requests = fake.requests();
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
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("stripe-account"), None);
    assert!(requests[0].header("authorization").is_some());
    // No name given: none sent.
    assert_eq!(requests[0].form, [("email".to_owned(), ADA.to_owned())]);
    assert_eq!(body["account"], PLATFORM);
    assert_eq!(body["name"], Value::Null);
}

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
        wait_for(|| fake.requests().len() == 4).await;
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
        wait_for(|| fake.requests().len() == 2).await;
        let webhook = stripe_webhook_for(&customer, A, "evt_1StripesOwnCreated", 0);
        assert_eq!(second.deliver_json(&webhook).await.0, StatusCode::OK);
    });
    assert_eq!(waited.0, StatusCode::OK, "{}", waited.1);
    assert_eq!(waited.1["created"], false);
    assert_eq!(waited.1["customer_id"], created["customer_id"]);
    assert_eq!(fake.requests().len(), 2, "a 400 is not retried");

    // A third process whose read model never hears of the customer.
    let third = app_with(backend, &fake, TEST_KEY).await;
    let (status, body) = ensure(&third, &other_spelling).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "stripe_unavailable");
    assert_eq!(fake.requests().len(), 3);
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

    assert_eq!(fake.requests().len(), 1);
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

/// Stripe's own `customer.created` webhook, as it would arrive for a customer `ensure`
/// created: same object, a real event id, `created` `delay` seconds after the customer.
fn stripe_webhook_for(customer: &Value, account: &str, event_id: &str, delay: i64) -> Value {
    json!({
        "id": event_id,
        "object": "event",
        "account": account,
        "api_version": "2024-06-20",
        "created": customer["created"].as_i64().unwrap() + delay,
        "data": {"object": customer},
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": "req_fake_create", "idempotency_key": key_of(account, false, customer["email"].as_str().unwrap())},
        "type": "customer.created"
    })
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
    assert!(fake.requests().is_empty());
}

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
    assert_eq!(fake.requests().len(), 1, "a 4xx is not retried");
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
    let requests = fake.requests();
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

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "stripe_unavailable");
    assert_eq!(fake.requests().len(), 3, "3 attempts");
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
    assert!(fake.requests().is_empty());

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
    assert!(fake.requests().is_empty());
}

const READ_TOKEN: &str = "read-token-for-lookups";
const ENSURE_TOKEN: &str = "ensure-token-for-checkout";

/// With `ENSURE_API_TOKEN` set, ensure needs exactly it: no token, a wrong one and the
/// read token are all 401 before Stripe is asked; lookups do not take the ensure token.
async fn ensure_token_is_required_and_is_not_the_read_token(backend: Backend) {
    let fake = FakeStripe::start().await;
    let config = AppConfig {
        read_token: Some(READ_TOKEN.into()),
        ensure_token: Some(ENSURE_TOKEN.into()),
        stripe_api: Some(fake.config(TEST_KEY)),
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;
    let url = format!("{}/v1/customers/ensure", app.base);
    let body = json!({"account": A, "email": ADA}).to_string();
    let post = |token: Option<&'static str>| {
        let mut request = app.client.post(&url).body(body.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("ensure request") }
    };

    for token in [None, Some("ensure-token-for-checkout2"), Some(READ_TOKEN)] {
        let refused = post(token).await;
        assert_eq!(
            refused
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{token:?}"
        );
        assert_eq!(
            into_json(refused).await,
            (StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"})),
            "{token:?}"
        );
    }
    assert!(fake.requests().is_empty());
    let (status, created) = into_json(post(Some(ENSURE_TOKEN)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let lookup = format!(
        "{}/v1/customers?account={A}&email={}&livemode=false",
        app.base,
        crate::helpers::encode(ADA)
    );
    let with_ensure_token = app
        .client
        .get(&lookup)
        .bearer_auth(ENSURE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(with_ensure_token.status(), StatusCode::UNAUTHORIZED);
    let (status, found) = into_json(
        app.client
            .get(&lookup)
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["customer_id"], created["customer_id"]);
}

/// Without `ENSURE_API_TOKEN`, the read token does not guard ensure either: the suite's
/// client is on loopback, where an untokened ensure is open.
async fn without_an_ensure_token_a_loopback_client_needs_none(backend: Backend) {
    let fake = FakeStripe::start().await;
    let config = AppConfig {
        read_token: Some(READ_TOKEN.into()),
        stripe_api: Some(fake.config(TEST_KEY)),
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Waits, at most `bound`, for a child to exit by itself; kills it otherwise.
fn exit_within(
    child: &mut std::process::Child,
    bound: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The tables in a test database, without creating it (an SQLite file that does not
/// exist has none).
async fn tables(db: &TestDb, backend: Backend) -> Vec<String> {
    match backend {
        Backend::Sqlite => {
            let path = db.url.strip_prefix("sqlite:").unwrap();
            if !std::path::Path::new(path).exists() {
                return Vec::new();
            }
            db.fetch_strings("SELECT name FROM sqlite_master WHERE type = 'table'")
                .await
        }
        Backend::Postgres => {
            db.fetch_strings(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public'",
            )
            .await
        }
    }
}

/// The real binary: bound beyond loopback with a Stripe key and no ensure token, `serve`
/// refuses to start (exit 2, one line naming the fix, no secret) before it binds or
/// migrates; with the token it starts and ensure takes exactly that token.
async fn serve_beyond_loopback_with_a_stripe_key_needs_an_ensure_token(backend: Backend) {
    use std::io::Read;
    use std::process::Stdio;

    let fake = FakeStripe::start().await;
    let db = TestDb::create(backend).await;
    let exposed = |command: &mut std::process::Command| {
        command
            .env("LISTEN_ADDR", "0.0.0.0:0")
            .env("STRIPE_SECRET_KEY", TEST_KEY)
            .env("STRIPE_API_BASE", &fake.base);
    };

    let mut refused = serve_command(&db.url);
    exposed(&mut refused);
    let mut child = refused
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let exit = tokio::task::block_in_place(|| exit_within(&mut child, Duration::from_secs(30)));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(2),
        "still serving? {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("ENSURE_API_TOKEN"),
        "{stderr}"
    );
    for secret in [TEST_KEY, crate::helpers::SECRET] {
        assert!(!stderr.contains(secret), "{stderr}");
    }
    assert_eq!(tables(&db, backend).await, Vec::<String>::new(), "migrated");

    let mut with_token = serve_command(&db.url);
    exposed(&mut with_token);
    with_token.env("ENSURE_API_TOKEN", ENSURE_TOKEN);
    let served = tokio::task::block_in_place(|| Served::spawn(with_token));
    let port = served.addr().rsplit_once(':').unwrap().1.to_owned();
    let url = format!("http://127.0.0.1:{port}/v1/customers/ensure");
    let client = reqwest::Client::new();
    let body = json!({"account": A, "email": ADA}).to_string();
    let without = client.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);
    let with = client
        .post(&url)
        .bearer_auth(ENSURE_TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), StatusCode::CREATED);
    assert_eq!(fake.requests().len(), 1);
}

/// The command: the same body on stdout; 2 for a person's mistake, 1 when Stripe fails,
/// with one line on stderr that never holds the key.
async fn ensure_command_prints_the_body_and_exits_by_outcome(backend: Backend) {
    let fake = FakeStripe::start().await;
    let db = TestDb::create(backend).await;
    let store: Store = db.store().await;
    let run = |args: &'static [&'static str], key: Option<&'static str>| {
        let mut command = command(&db.url);
        command
            .arg("ensure")
            .args(args)
            .env("STRIPE_API_BASE", &fake.base)
            .env("STRIPE_API_TIMEOUT_SECS", "5");
        if let Some(key) = key {
            command.env("STRIPE_SECRET_KEY", key);
        }
        async move {
            tokio::task::spawn_blocking(move || command.output().expect("run ensure"))
                .await
                .unwrap()
        }
    };
    let args: &'static [&'static str] = &[
        "--account",
        A,
        "--email",
        "Ada.Lovelace@Example.com",
        "--name",
        "Ada",
    ];

    let first = run(args, Some(TEST_KEY)).await;
    let second = run(args, Some(TEST_KEY)).await;

    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let printed: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(printed["created"], true);
    assert_eq!(printed["account"], A);
    assert_eq!(printed["name"], "Ada");
    let again: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(again["created"], false);
    assert_eq!(again["customer_id"], printed["customer_id"]);
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(fake.requests()[0].header("stripe-account"), Some(A));
    assert_eq!(store.status().await.unwrap().customers, 1);

    let one_line = |output: &std::process::Output, code: i32| {
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(code), "{text}");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            !text.contains(TEST_KEY) && !text.contains("panicked"),
            "{text}"
        );
        text
    };
    let no_key = run(&["--account", B, "--email", ADA], None).await;
    assert!(one_line(&no_key, 2).contains("STRIPE_SECRET_KEY"));
    let bad_mode = run(
        &["--account", B, "--email", ADA, "--livemode", "yes"],
        Some(TEST_KEY),
    )
    .await;
    assert!(one_line(&bad_mode, 2).contains("livemode"));
    let mismatch = run(
        &["--account", B, "--email", ADA, "--livemode", "true"],
        Some(TEST_KEY),
    )
    .await;
    assert!(one_line(&mismatch, 2).contains("livemode"));
    let bad_key = run(
        &["--account", B, "--email", ADA],
        Some("pk_test_not_a_secret_key"),
    )
    .await;
    assert!(!one_line(&bad_key, 2).contains("pk_test_not_a_secret_key"));

    fake.set(Behavior::Fail {
        status: 402,
        body: stripe_error_quoting(ADA),
    });
    let refused = run(&["--account", B, "--email", ADA], Some(TEST_KEY)).await;
    let text = one_line(&refused, 1);
    assert!(text.contains("email_invalid"), "{text}");
    for private in [STRIPE_SAYS, MASKED_KEY, ADA] {
        assert!(!text.contains(private), "{private} in {text}");
    }
    assert!(refused.stdout.is_empty());
}

/// Words only Stripe's error message holds.
const STRIPE_SAYS: &str = "Zebrafinch says no";
/// How Stripe quotes the tail of a key in its messages.
const MASKED_KEY: &str = "sk_test_****abcd";

/// A Stripe error whose message quotes the buyer's email and a masked key.
fn stripe_error_quoting(email: &str) -> Value {
    json!({"error": {
        "type": "invalid_request_error", "code": "email_invalid", "param": "email",
        "message": format!("{STRIPE_SAYS}: {email} is invalid (key {MASKED_KEY})"),
        "doc_url": "https://stripe.com/docs/error-codes/email-invalid"
    }})
}

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
    assert_eq!(fake.requests().len(), 10);
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
    assert_eq!(fake.requests().len(), 6);
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
    let before = fake.requests().len();
    let (status, _) = ensure(&app, &json!({"account": B, "email": ADA})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(fake.requests().len() - before, 3);
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
    assert_eq!(fake.requests().len(), 1, "not retried");
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
    assert_eq!(fake.requests().len(), 1);
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

/// A fresh process has a registry of its own, so the counts are exact.
async fn ensure_and_stripe_request_metrics_count_outcomes_exactly(backend: Backend) {
    let fake = FakeStripe::start().await;
    let db = TestDb::create(backend).await;
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
    assert_eq!(fake.requests().len(), 9);
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
        let requests = fake.requests();
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
    assert_eq!(fake.requests().len(), 1, "not retried");

    fake.fail_next([
        Failure::new(400, "invalid_request_error", Some("processing_error"))
            .with_header("Stripe-Should-Retry", "true"),
    ]);
    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(fake.requests().len(), 3, "retried once");
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
    assert_eq!(fake.requests().len(), 1, "a 401 is not retried");
    assert_eq!(fake.customers_created(), 0);
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
    assert_eq!(fake.requests().len(), 2);
    assert_eq!(fake.customers_created(), 1, "no second customer");
    assert_eq!(app.customer_id(A, ADA, false).await, None);
}

on_both_backends!(
    ensure_creates_the_customer_on_the_organizers_account_with_stripes_headers,
    platform_account_is_created_without_a_stripe_account_header,
    idempotency_key_is_one_per_account_mode_and_normalized_email,
    two_processes_racing_with_other_spellings_get_one_customer,
    a_key_reused_with_other_parameters_waits_for_the_customer,
    fifty_concurrent_ensures_make_one_stripe_request_and_get_one_id,
    one_buyer_two_organizers_get_two_customers_each_on_its_own_account,
    the_later_webhook_for_an_ensured_customer_changes_nothing_checkout_sees,
    the_log_holds_an_api_event_and_the_projection_matches_the_pure_rules,
    an_existing_customer_is_200_created_false_without_asking_stripe,
    stripe_4xx_is_502_with_stripes_error_and_never_the_key,
    stripe_5xx_is_retried_then_503_stripe_unavailable,
    stripe_timeouts_are_retried_then_503_stripe_unavailable,
    unreachable_stripe_is_503_stripe_unavailable,
    livemode_must_match_the_keys_mode_and_defaults_to_it,
    without_a_stripe_key_ensure_is_503_ensure_disabled,
    invalid_bodies_are_400_invalid_request,
    ensure_token_is_required_and_is_not_the_read_token,
    without_an_ensure_token_a_loopback_client_needs_none,
    serve_beyond_loopback_with_a_stripe_key_needs_an_ensure_token,
    ensure_command_prints_the_body_and_exits_by_outcome,
    distinct_emails_at_once_never_exceed_the_concurrency_limit,
    the_rate_limit_holds_in_every_one_second_window,
    a_429_while_our_rate_is_used_up_is_not_retried_and_is_503,
    no_turn_within_the_wait_allowed_is_503_and_sends_nothing,
    stripes_message_reaches_neither_the_client_nor_the_log,
    a_network_error_goes_to_the_log_and_never_to_the_client,
    ensure_and_stripe_request_metrics_count_outcomes_exactly,
    failures_then_success_are_retried_with_one_key_until_created,
    stripe_should_retry_overrides_the_status,
    an_unknown_api_key_is_502_with_stripes_401_and_never_the_key,
    a_customer_deleted_since_it_was_created_is_409_customer_superseded,
);
