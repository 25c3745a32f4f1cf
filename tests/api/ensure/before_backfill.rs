//! `ensure` on an account whose backfill has not completed: Stripe is asked before a
//! customer is created, so a customer Stripe already has is never created twice.

use super::*;
use crate::backfill::{finish, outcome, sync_command};
use crate::fake_stripe::{customer_object, Failure};

/// An app whose `ensure` goes through `fake`, on a database no backfill has touched.
async fn app_not_backfilled(backend: Backend, fake: &FakeStripe) -> TestApp {
    let config = AppConfig {
        stripe_api: Some(fake.config(TEST_KEY)),
        ..AppConfig::default()
    };
    TestApp::spawn_with(backend, config).await
}

/// Stripe already has the buyer, spelled in another case: ensure records that customer
/// and answers with it, creating nothing. A new buyer is asked for, found nowhere, and
/// created. After a completed backfill, ensure asks nothing before creating.
async fn an_existing_stripe_customer_is_reused_then_new_buyers_are_created(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.add_customer(
        Some(A),
        customer_object(
            "cus_1Existing",
            Some("Ada.Lovelace@Example.com"),
            Some("Ada"),
            1_600_000_000,
            false,
        ),
    );
    let app = app_not_backfilled(backend, &fake).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["customer_id"], "cus_1Existing");
    assert_eq!(body["created"], false);
    assert_eq!(body["email"], "Ada.Lovelace@Example.com");
    assert!(fake.creations().is_empty());
    let asked = fake.requests();
    assert_eq!(asked.len(), 2);
    assert!(asked
        .iter()
        .all(|r| r.method == "GET" && r.header("stripe-account") == Some(A)));
    assert_eq!(asked[0].path, "/v1/customers/search");
    assert_eq!(
        asked[0].param("query"),
        Some(r#"email:"ada.lovelace@example.com""#)
    );
    assert_eq!(asked[1].path, "/v1/customers");
    assert_eq!(asked[1].param("email"), Some(ADA));
    let recorded = app.store.customers().await.unwrap();
    assert_eq!(recorded.len(), 1);
    let event = app
        .store
        .event(&recorded[0].last_event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.event_type.as_str(), event.source.as_str()),
        ("customer.snapshot", "api")
    );

    let (status, body) = ensure(&app, &json!({"account": A, "email": "grace@example.com"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(fake.creations().len(), 1);
    assert_eq!(fake.requests().len(), 5, "search, list, then the creation");

    let (code, _, stderr) =
        outcome(&finish(sync_command(&app.db, &fake, &["backfill", "--account", A])).await);
    assert_eq!(code, Some(0), "{stderr}");
    let before = fake.requests().len();
    let (status, _) = ensure(&app, &json!({"account": A, "email": "hopper@example.com"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let after: Vec<_> = fake.requests()[before..].to_vec();
    assert_eq!(after.len(), 1, "no question before the creation");
    assert_eq!(after[0].method, "POST");
}

/// The search lags Stripe's writes: a customer created a moment ago is found by the
/// list's exact filter on the spelling given.
async fn a_customer_the_search_does_not_see_yet_is_found_by_the_exact_filter(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.add_customer(
        Some(A),
        customer_object("cus_1JustMade", Some(ADA), None, 1_700_000_000, false),
    );
    fake.hide_from_search("cus_1JustMade");
    let app = app_not_backfilled(backend, &fake).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["customer_id"], "cus_1JustMade");
    assert!(fake.creations().is_empty());
}

/// Where Stripe refuses the search (it is not offered in every country), the list's exact
/// filter still answers.
async fn a_refused_search_leaves_the_exact_filter_to_answer(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.add_customer(
        Some(A),
        customer_object("cus_1Listed", Some(ADA), None, 1_700_000_000, false),
    );
    fake.fail_next([Failure::new(400, "invalid_request_error", None)]);
    let app = app_not_backfilled(backend, &fake).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["customer_id"], "cus_1Listed");
    assert!(fake.creations().is_empty());
    assert_eq!(fake.requests()[0].path, "/v1/customers/search");
}

/// When Stripe cannot be asked, nothing is created: 503 `stripe_unavailable`.
async fn a_failed_question_is_503_and_never_a_creation(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.fail_next([
        Failure::new(500, "api_error", None).with_header("Stripe-Should-Retry", "false")
    ]);
    let app = app_not_backfilled(backend, &fake).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "stripe_unavailable");
    assert!(fake.creations().is_empty());
    assert_eq!(app.store.status().await.unwrap().events, 0);
}

on_both_backends!(
    an_existing_stripe_customer_is_reused_then_new_buyers_are_created,
    a_customer_the_search_does_not_see_yet_is_found_by_the_exact_filter,
    a_failed_question_is_503_and_never_a_creation,
    a_refused_search_leaves_the_exact_filter_to_answer,
);
