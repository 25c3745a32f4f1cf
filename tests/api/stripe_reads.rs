//! Reading Stripe's API through the client (`StripeApi::list_page`, `retrieve_customer`,
//! `search_customers_by_email`) against the fake Stripe: pages, account scoping, filters,
//! deletions and failures as Stripe answers them.

use std::time::Duration;

use serde_json::{json, Value};
use stripe_projector::domain::AccountId;
use stripe_projector::stripe::api::{StripeApi, StripeApiError};
use stripe_projector::stripe::reads::{ListOf, Listed, Retrieved};

use crate::fake_stripe::{customer_object, Failure, FakeStripe, TEST_KEY};

const A: &str = "acct_1ReadsAaaaaaaaaa";
const B: &str = "acct_1ReadsBbbbbbbbbb";

fn client(fake: &FakeStripe) -> StripeApi {
    StripeApi::new(fake.config(TEST_KEY)).unwrap()
}

fn account(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

fn customer(id: &str, email: &str, created: i64) -> Value {
    customer_object(id, Some(email), None, created, false)
}

/// Every object of a list, page after page; and how many pages it took.
async fn list_all(
    api: &StripeApi,
    list: ListOf<'_>,
    on: Option<&AccountId>,
) -> (Vec<Listed>, usize) {
    let (mut all, mut pages) = (Vec::new(), 0);
    let mut after: Option<String> = None;
    loop {
        let page = api.list_page(list, on, after.as_deref()).await.unwrap();
        pages += 1;
        after = page.starting_after().map(str::to_owned);
        all.extend(page.objects);
        if after.is_none() {
            return (all, pages);
        }
    }
}

fn ids(objects: &[Listed]) -> Vec<&str> {
    objects.iter().map(|o| o.id.as_str()).collect()
}

#[tokio::test]
async fn lists_page_newest_first_within_one_account() {
    let fake = FakeStripe::start().await;
    for n in 0..250 {
        fake.add_customer(
            Some(A),
            customer(&format!("cus_a{n:03}"), "a@x.io", 1_700_000_000 + n),
        );
    }
    fake.add_customer(Some(B), customer("cus_b", "b@x.io", 1_700_000_000));
    fake.add_customer(None, customer("cus_p", "p@x.io", 1_700_000_000));
    let api = client(&fake);

    let (all, pages) = list_all(&api, ListOf::Customers { email: None }, Some(&account(A))).await;

    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..250).rev().map(|n| format!("cus_a{n:03}")).collect();
    assert_eq!(
        ids(&all),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let requests = fake.requests();
    assert!(requests
        .iter()
        .all(|r| r.header("stripe-account") == Some(A) && r.param("limit") == Some("100")));
    assert_eq!(requests[1].param("starting_after"), Some("cus_a150"));
    // Kept byte for byte as the fake sent it.
    assert_eq!(
        serde_json::from_str::<Value>(all[0].raw.get()).unwrap(),
        customer("cus_a249", "a@x.io", 1_700_000_249)
    );

    let (platform, _) = list_all(&api, ListOf::Customers { email: None }, None).await;
    assert_eq!(ids(&platform), ["cus_p"]);
    assert_eq!(
        fake.requests().last().unwrap().header("stripe-account"),
        None
    );
    let (other, _) = list_all(&api, ListOf::Customers { email: None }, Some(&account(B))).await;
    assert_eq!(ids(&other), ["cus_b"]);
}

#[tokio::test]
async fn the_email_filter_is_exact_and_the_search_ignores_case_but_lags() {
    let fake = FakeStripe::start().await;
    fake.add_customer(Some(A), customer("cus_upper", "Ada@X.io", 1));
    fake.add_customer(Some(A), customer("cus_lower", "ada@x.io", 2));
    fake.add_customer(Some(A), customer("cus_new", "ADA@x.io", 3));
    fake.add_customer(Some(B), customer("cus_elsewhere", "ada@x.io", 4));
    fake.hide_from_search("cus_new");
    let api = client(&fake);
    let a = account(A);

    let (exact, _) = list_all(
        &api,
        ListOf::Customers {
            email: Some("ada@x.io"),
        },
        Some(&a),
    )
    .await;
    assert_eq!(ids(&exact), ["cus_lower"]);
    let (exact, _) = list_all(
        &api,
        ListOf::Customers {
            email: Some("ADA@x.io"),
        },
        Some(&a),
    )
    .await;
    assert_eq!(ids(&exact), ["cus_new"]);

    let found = api
        .search_customers_by_email(Some(&a), "ada@x.io")
        .await
        .unwrap();
    assert_eq!(ids(&found), ["cus_lower", "cus_upper"]);
    let request = fake.requests().pop().unwrap();
    assert_eq!(request.path, "/v1/customers/search");
    assert_eq!(request.param("query"), Some(r#"email:"ada@x.io""#));
}

#[tokio::test]
async fn deleted_customers_leave_lists_and_retrieve_as_deleted_never_as_missing() {
    let fake = FakeStripe::start().await;
    fake.add_customer(Some(A), customer("cus_live", "l@x.io", 1));
    fake.add_customer(Some(A), customer("cus_gone", "g@x.io", 2));
    fake.delete_customer(Some(A), "cus_gone");
    let api = client(&fake);
    let a = account(A);

    let (listed, _) = list_all(&api, ListOf::Customers { email: None }, Some(&a)).await;
    assert_eq!(ids(&listed), ["cus_live"]);
    assert!(matches!(
        api.retrieve_customer(Some(&a), "cus_live").await,
        Ok(Retrieved::Live(_))
    ));
    match api.retrieve_customer(Some(&a), "cus_gone").await {
        Ok(Retrieved::Deleted(raw)) => assert_eq!(
            serde_json::from_str::<Value>(raw.get()).unwrap(),
            json!({"id": "cus_gone", "object": "customer", "deleted": true})
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        api.retrieve_customer(Some(&a), "cus_never").await,
        Ok(Retrieved::Missing)
    ));
    // Another account's customer does not exist here.
    assert!(matches!(
        api.retrieve_customer(Some(&account(B)), "cus_live").await,
        Ok(Retrieved::Missing)
    ));
}

#[tokio::test]
async fn events_are_listed_by_type_and_time_newest_first() {
    let fake = FakeStripe::start().await;
    let event = |id: &str, kind: &str, created: i64| {
        json!({"id": id, "object": "event", "account": A, "type": kind, "created": created,
               "livemode": false, "data": {"object": {"id": "cus_1", "object": "customer"}}})
    };
    fake.add_event(Some(A), event("evt_old", "customer.created", 100));
    fake.add_event(Some(A), event("evt_charge", "charge.succeeded", 200));
    for n in 0..150 {
        fake.add_event(
            Some(A),
            event(&format!("evt_{n:03}"), "customer.updated", 300 + n),
        );
    }
    fake.add_event(
        Some(A),
        event("evt_cash", "customer_cash_balance_transaction.created", 500),
    );
    let api = client(&fake);

    let (events, pages) = list_all(
        &api,
        ListOf::CustomerEvents { since: 200 },
        Some(&account(A)),
    )
    .await;

    assert_eq!(pages, 2);
    let expected: Vec<String> = (0..150).rev().map(|n| format!("evt_{n:03}")).collect();
    assert_eq!(
        ids(&events),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let first = &fake.requests()[0];
    assert_eq!(first.param("type"), Some("customer.*"));
    assert_eq!(first.param("created[gte]"), Some("200"));
}

#[tokio::test]
async fn connected_accounts_are_listed_by_the_platform() {
    let fake = FakeStripe::start().await;
    for n in 0..120 {
        fake.add_account(&format!("acct_{n:03}"));
    }
    let api = client(&fake);
    let (accounts, pages) = list_all(&api, ListOf::Accounts, None).await;
    assert_eq!(pages, 2);
    assert_eq!(accounts.len(), 120);
    assert_eq!(accounts[0].id, "acct_119");
}

#[tokio::test]
async fn a_disconnected_account_is_refused_at_once_and_never_retried() {
    let fake = FakeStripe::start().await;
    fake.disconnect(A);
    let api = client(&fake);

    let error = api
        .list_page(ListOf::Customers { email: None }, Some(&account(A)), None)
        .await
        .unwrap_err();

    assert!(
        matches!(&error, StripeApiError::Rejected { status: 401, code: Some(code), .. } if code == "account_invalid"),
        "{error:?}"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn should_retry_false_on_a_500_is_not_retried() {
    let fake = FakeStripe::start().await;
    fake.fail_next([
        Failure::new(500, "api_error", None).with_header("Stripe-Should-Retry", "false")
    ]);
    let api = client(&fake);
    let error = api
        .list_page(ListOf::Customers { email: None }, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StripeApiError::Unavailable { .. }),
        "{error:?}"
    );
    assert_eq!(fake.requests().len(), 1);
}

/// A Stripe that allows fewer requests per second than we send: its 429s are retried with
/// backoff until every page is read, when the policy lets a batch job wait.
#[tokio::test]
async fn bursts_of_429_are_retried_until_every_page_is_read() {
    let fake = FakeStripe::start().await;
    for n in 0..300 {
        fake.add_customer(Some(A), customer(&format!("cus_{n:03}"), "a@x.io", n));
    }
    fake.limit_rate(1);
    let mut config = fake.config(TEST_KEY);
    config.retry.attempts = 12;
    config.retry.backoff = Duration::from_millis(20);
    config.retry.give_up_on_429_at_our_rate = false;
    let api = StripeApi::new(config).unwrap();

    let (all, pages) = list_all(&api, ListOf::Customers { email: None }, Some(&account(A))).await;

    assert_eq!((all.len(), pages), (300, 3));
    assert!(fake.requests().len() > 3, "some requests met a 429");
}
