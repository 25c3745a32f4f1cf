//! `POST /v1/customers/ensure` and the `ensure` command, against a local fake Stripe API,
//! one file per concern; the helpers they share are here.

mod access;
mod before_backfill;
mod creation;
mod once;
mod stripe_failures;
mod stripe_limits;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use stripe_projector::domain::{AccountId, EmailKey};
use stripe_projector::ensure::{api_event_id, idempotency_key};
use stripe_projector::projection::ReadModel;
use stripe_projector::store::{ProjectedCustomer, Store};
use stripe_projector::stripe::event::{self, Delivery};
use stripe_projector::stripe::limiter::Limits;

use crate::fake_stripe::{Behavior, Failure, FakeStripe, LIVE_KEY, TEST_KEY};
use crate::helpers::{
    eventually, into_json, metric, AppConfig, Backend, TestApp, TestDb, PLATFORM,
};
use crate::process::{command, serve_command, Served};

const A: &str = "acct_1OrganizerAaaaaaa";

const B: &str = "acct_1OrganizerBbbbbbb";

const ADA: &str = "ada.lovelace@example.com";

/// An app whose `ensure` creates through `fake`, on a database where a backfill of the
/// suite's accounts has completed (see [`backfilled`]).
async fn app_with(backend: Backend, fake: &FakeStripe, key: &str) -> TestApp {
    let config = AppConfig {
        stripe_api: Some(fake.config(key)),
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;
    backfilled(&app.store).await;
    app
}

/// Records a completed backfill pass of the suite's accounts in both modes: `ensure` then
/// trusts the read model and asks Stripe nothing before creating, so these tests see the
/// creation alone. What `ensure` asks before a backfill has tests of its own.
async fn backfilled(store: &Store) {
    for account in [A, B, PLATFORM] {
        let account = AccountId::parse(account).unwrap();
        for livemode in [false, true] {
            let pass = store
                .start_backfill_pass(&account, livemode, 0)
                .await
                .unwrap();
            store
                .complete_backfill_pass(&account, livemode, pass.pass, 0)
                .await
                .unwrap();
        }
    }
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

/// Waits, polling, until `condition` holds.
async fn wait_for(condition: impl Fn() -> bool) {
    eventually("the condition holds", || async {
        if condition() {
            Ok(())
        } else {
            Err(String::new())
        }
    })
    .await
}

async fn app_with_limits(backend: Backend, fake: &FakeStripe, limits: Limits) -> TestApp {
    let mut stripe_api = fake.config(TEST_KEY);
    stripe_api.limits = limits;
    let config = AppConfig {
        stripe_api: Some(stripe_api),
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;
    backfilled(&app.store).await;
    app
}

/// `serve` (the real binary) creating customers through `api_base`, its log in `log`.
pub(crate) fn serve_with_stripe(
    db: &TestDb,
    api_base: &str,
    log: &Path,
    settings: &[(&str, &str)],
) -> Served {
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
    assert!(served.wait_exit(crate::helpers::HANG).is_some());
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
