//! Two `serve` processes on one PostgreSQL database store each event once and project
//! like one.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;
use serde_json::json;

use super::deliver;
use crate::helpers::{postgres_configured, Backend, EventSpec, TestDb};
use crate::process::{serve_command, Served};

/// A history with collisions on purpose: shared emails across customers, an email change,
/// deletions, late updates, several events in one second, other `customer.*` types.
fn scale_out_history() -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    let accounts = [Some("acct_S1"), Some("acct_S2"), None];
    for c in 0..30usize {
        let account = accounts[c % 3];
        let customer = format!("cus_s{c:02}");
        let email = format!("shared{}@example.com", c % 4);
        let created = 1_700_000_000 + (c as i64 % 5);
        let spec = |n: usize, event_type, created, email: Option<&str>| {
            EventSpec {
                id: &format!("evt_s{c:02}_{n}"),
                event_type,
                account,
                created,
                livemode: c % 2 == 0,
                customer_id: &customer,
                email,
                customer_created: 1_700_000_000 + (c as i64 % 5),
            }
            .to_json()
        };
        events.push(spec(0, "customer.created", created, Some(&email)));
        events.push(spec(
            1,
            "customer.updated",
            created,
            Some(&email.to_uppercase()),
        ));
        if c % 3 == 0 {
            events.push(spec(
                2,
                "customer.updated",
                created + 1,
                Some("moved@example.com"),
            ));
        }
        if c % 4 == 1 {
            events.push(spec(3, "customer.deleted", created + 2, Some(&email)));
            events.push(spec(4, "customer.updated", created + 3, Some(&email)));
        }
        if c % 5 == 2 {
            events.push(spec(5, "customer.subscription.created", created, None));
        }
    }
    // A fixed shuffle (linear congruential), so arrival order is not creation order.
    let mut state: u64 = 0x5eed;
    for i in (1..events.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let j = (state >> 33) as usize % (i + 1);
        events.swap(i, j);
    }
    events
        .into_iter()
        .map(|e| e.to_string().into_bytes())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_store_each_event_once_and_project_like_one() {
    if !postgres_configured() {
        return;
    }
    let history = scale_out_history();
    let shared = TestDb::create(Backend::Postgres).await;
    // Both start (and migrate) at once: the migration lock serializes them.
    let (first, second) = (
        Served::spawn(serve_command(&shared.url)),
        Served::spawn(serve_command(&shared.url)),
    );
    let client = reqwest::Client::new();
    let both = history.iter().map(|body| {
        let client = &client;
        let (a, b) = (first.base.as_str(), second.base.as_str());
        async move {
            let (one, two) = tokio::join!(deliver(client, a, body), deliver(client, b, body));
            [one, two]
        }
    });
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let mut answers = stream::iter(both).buffer_unordered(8);
    while let Some(pair) = answers.next().await {
        for (status, body) in pair {
            assert_eq!(status, StatusCode::OK, "{body}");
            *statuses
                .entry(body["status"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let distinct = history.len();
    assert_eq!(statuses.get("stored"), Some(&distinct), "{statuses:?}");
    assert_eq!(statuses.get("duplicate"), Some(&distinct), "{statuses:?}");
    let store = shared.store().await;
    assert_eq!(store.status().await.unwrap().events, distinct as i64);

    let alone = TestDb::create(Backend::Postgres).await;
    let single = Served::spawn(serve_command(&alone.url));
    for body in &history {
        let (status, answer) = deliver(&client, &single.base, body).await;
        assert_eq!(
            (status, &answer["status"]),
            (StatusCode::OK, &json!("stored"))
        );
    }
    let expected = alone.store().await.customers().await.unwrap();
    assert!(expected.len() >= 30);
    assert_eq!(store.customers().await.unwrap(), expected);
}
