//! JSON logs: each line names its request and event, and none shows a secret, a body or an
//! email.

use std::collections::HashMap;
use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    created, now, post_signed, sign, Backend, TestDb, HANG, SECOND_SECRET, SECRET, UNKNOWN_SECRET,
};
use crate::process::{serve_command, Served};

/// One JSON log line's message and the fields of all its spans, merged.
struct LogLine {
    raw: String,
    level: String,
    message: String,
    /// Logged inside at least one span.
    in_span: bool,
    spans: HashMap<String, Value>,
}

fn parse_logs(text: &str) -> Vec<LogLine> {
    text.lines()
        .map(|raw| {
            let line: Value = serde_json::from_str(raw)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {raw}"));
            let mut spans = HashMap::new();
            let list = line["spans"].as_array().into_iter().flatten();
            let in_span = list.clone().next().is_some();
            for span in list {
                for (key, value) in span.as_object().unwrap() {
                    spans.insert(key.clone(), value.clone());
                }
            }
            LogLine {
                raw: raw.to_owned(),
                level: line["level"].as_str().unwrap_or_default().to_owned(),
                message: line["fields"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                in_span,
                spans,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_request_and_event_and_never_show_secrets_bodies_or_emails() {
    const READ_TOKEN: &str = "read_token_never_logged";
    let db = TestDb::create(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let mut command = serve_command(&db.url);
    command
        .env("LOG_FORMAT", "json")
        .env("STRIPE_WEBHOOK_SECRET", format!("{SECOND_SECRET},{SECRET}"))
        .env("READ_API_TOKEN", READ_TOKEN)
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()));
    let mut served = Served::spawn(command);
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/stripe", served.base);

    let mut event = created(
        "evt_logs_1",
        "acct_logs",
        "cus_logs",
        "Private.Person@Example.com",
        1_700_000_000,
    );
    event["data"]["object"]["name"] = json!("Bodymarker Zebrafinch");
    let body = event.to_string();
    let response = post_signed(&client, &served.base, body.as_bytes())
        .header("X-Request-Id", "req-from-balancer-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "req-from-balancer-42");

    // Rejected bodies that carry an email: the reasons must not echo them.
    let not_json = r#"{"id":"evt_logs_2","email":"private.person@example.com" oops"#;
    let not_event =
        r#"{"id":"evt_logs_3","type":"customer.created","email":"private.person@example.com"}"#;
    for bad in [not_json, not_event] {
        let response = post_signed(&client, &served.base, bad.as_bytes())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let mismatch = client
        .post(&url)
        .header(
            "Stripe-Signature",
            sign(UNKNOWN_SECRET, now(), body.as_bytes()),
        )
        .header("X-Request-Id", "has spaces so it is replaced")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let generated = mismatch.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        generated.len() == 16 && generated.bytes().all(|b| b.is_ascii_hexdigit()),
        "an unusable incoming id is replaced by a generated one: {generated}"
    );
    let lookup = client
        .get(format!(
            "{}/v1/customers?account=acct_logs&email=private.person%40example.com&livemode=false",
            served.base
        ))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(lookup.status(), StatusCode::OK);
    let lookup_id = lookup.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(lookup_id, generated, "every request gets its own id");

    served.terminate();
    let exit = served.wait_exit(HANG).expect("exits");
    assert_eq!(exit.code(), Some(0));
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines = parse_logs(&text);

    for line in &lines {
        let lower = line.raw.to_lowercase();
        for secret in [SECRET, SECOND_SECRET, READ_TOKEN] {
            assert!(
                !line.raw.contains(secret),
                "a secret is logged: {}",
                line.raw
            );
        }
        assert!(
            !lower.contains("private.person"),
            "an email is logged: {}",
            line.raw
        );
        assert!(
            !lower.contains("example.com"),
            "an email is logged: {}",
            line.raw
        );
        assert!(
            !line.raw.contains("Zebrafinch"),
            "the body is logged: {}",
            line.raw
        );
        assert!(
            !line.raw.contains("oops"),
            "the body is logged: {}",
            line.raw
        );
    }
    let of_request = |id: &str| -> Vec<&LogLine> {
        lines
            .iter()
            .filter(|line| line.spans.get("request_id") == Some(&json!(id)))
            .collect()
    };
    let stored = of_request("req-from-balancer-42");
    assert!(
        stored.iter().any(|line| line.message == "event stored"),
        "{text}"
    );
    assert!(stored.iter().any(|line| line.message == "request finished"));
    for line in &stored {
        assert_eq!(line.spans["event_id"], "evt_logs_1", "{}", line.raw);
        assert_eq!(line.spans["event_type"], "customer.created", "{}", line.raw);
        assert_eq!(line.spans["account"], "acct_logs", "{}", line.raw);
    }
    let rejected = of_request(&generated);
    assert!(
        rejected
            .iter()
            .any(|line| line.level == "WARN" && line.message == "request rejected"),
        "the rejection is logged under the generated id: {text}"
    );
    assert!(!of_request(&lookup_id).is_empty());
    for line in lines.iter().filter(|line| line.in_span) {
        assert!(
            line.spans.contains_key("request_id"),
            "every line logged within a request carries its id: {}",
            line.raw
        );
    }
}
