//! The alert rules and the dashboard in `deploy/` name only metrics the server exports, so
//! a renamed metric cannot leave an alert silent. (`promtool check rules` and `promtool
//! test rules` check the rules themselves, in `.ci/run`.)

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{created, Backend, TestApp};

const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yml");
const DASHBOARD: &str = include_str!("../../deploy/grafana/stripe-projector.json");

/// Every `stripe_projector_...` name in `text`, without a histogram's series suffix.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("stripe_projector_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .map_or(name.clone(), str::to_owned);
        names.insert(name);
    }
    names
}

/// The metric families a server exports after a delivery and a lookup.
async fn exported() -> BTreeSet<String> {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let event = created(
        "evt_1Deploy",
        "acct_1Deploy",
        "cus_1",
        "a@x.io",
        1_700_000_000,
    );
    assert_eq!(app.deliver_json(&event).await.0, StatusCode::OK);
    app.lookup("account=acct_1Deploy&email=a%40x.io&livemode=false")
        .await;
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_name_only_exported_metrics() {
    let exported = exported().await;
    let alerts = metric_names(ALERTS);
    assert!(alerts.len() >= 6, "{alerts:?}");
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("targets"))
        .map(|target| target["expr"].as_str().expect("an expr"))
        .collect();
    assert!(!exprs.is_empty());
    let charted = metric_names(&exprs.join("\n"));
    for name in alerts.iter().chain(&charted) {
        assert!(
            exported.contains(name),
            "{name} is not exported: {exported:?}"
        );
    }
    // Every exported family has a panel.
    for name in &exported {
        assert!(charted.contains(name), "no panel charts {name}");
    }
}

#[test]
fn metric_names_are_found_whole_and_without_series_suffixes() {
    let names = metric_names(
        "rate(stripe_projector_a_total[5m]) + stripe_projector_b_seconds_bucket{le=\"1\"}",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["stripe_projector_a_total", "stripe_projector_b_seconds"]
    );
}
