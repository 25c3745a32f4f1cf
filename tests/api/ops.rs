//! Operating it: metrics, logs and request ids, readiness, graceful shutdown, two instances.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    created, fixture, into_json, metric, now, postgres_admin_url, sign, Backend, EventSpec,
    TestApp, TestDb, SECRET,
};
use crate::process::{serve_command, Served};

/// PostgreSQL-only tests follow `on_both_backends!`'s rule: skip without the server.
fn postgres_configured() -> bool {
    if postgres_admin_url().is_none() {
        eprintln!("skipped: TEST_DATABASE_URL is unset");
        return false;
    }
    true
}

async fn post(
    client: &reqwest::Client,
    base: &str,
    body: &[u8],
    signature: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = client
        .post(format!("{base}/webhooks/stripe"))
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    into_json(request.send().await.expect("webhook request")).await
}

async fn deliver(client: &reqwest::Client, base: &str, body: &[u8]) -> (StatusCode, Value) {
    post(client, base, body, Some(&sign(SECRET, now(), body))).await
}

async fn scrape(client: &reqwest::Client, base: &str) -> String {
    let response = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

fn count(exposition: &str, series: &str) -> f64 {
    metric(exposition, series).unwrap_or_else(|| panic!("no {series} in:\n{exposition}"))
}

/// A fresh process has a registry of its own, so the counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_exactly() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = serve_command(&db.url);
    command
        .env("MAX_BODY_BYTES", "8192")
        .env("READ_API_TOKEN", "token_for_metrics");
    let served = Served::spawn(command);
    let (client, base) = (reqwest::Client::new(), served.base.as_str());

    let before = scrape(&client, base).await;
    assert_eq!(
        count(&before, r#"stripe_projector_build_info{version="0.1.0"}"#),
        1.0
    );
    assert_eq!(
        count(
            &before,
            r#"stripe_projector_webhook_requests_total{outcome="stored"}"#
        ),
        0.0,
        "known series exist at zero before any traffic"
    );

    let seed = fixture("seed/01_customer_created_organizer_a.json");
    let mut live: Value = serde_json::from_slice(&fixture("test_mode/customer_created_live.json"))
        .expect("fixture is JSON");
    live["account"] = json!("acct_1OrganizerAaaaaaa");
    live["data"]["object"]["email"] = json!("ada.lovelace@example.com");
    let mut updated = created("evt_metrics_upd", "acct_m", "cus_m", "m@example.com", 10);
    updated["type"] = json!("customer.updated");
    let mut future_type = created("evt_metrics_new", "acct_m", "cus_m", "m@example.com", 11);
    future_type["type"] = json!("customer.brand_new_kind");
    let stored = [
        seed.clone(),
        live.to_string().into_bytes(),
        updated.to_string().into_bytes(),
        fixture("other/customer_subscription_created.json"),
        future_type.to_string().into_bytes(),
        fixture("other/customer_created_not_a_customer.json"),
    ];
    for body in &stored {
        let (status, answer) = deliver(&client, base, body).await;
        assert_eq!(
            (status, &answer["status"]),
            (StatusCode::OK, &json!("stored"))
        );
    }
    let (_, answer) = deliver(&client, base, &seed).await;
    assert_eq!(answer["status"], "duplicate");
    let (_, answer) = deliver(&client, base, &fixture("other/invoice_paid.json")).await;
    assert_eq!(answer["status"], "ignored");
    let rejections: [(&[u8], Option<String>, &str); 7] = [
        (&seed, None, "missing_signature"),
        (&seed, Some("v1=abc".into()), "malformed_signature"),
        (
            &seed,
            Some(sign("whsec_other", now(), &seed)),
            "signature_mismatch",
        ),
        (
            b"{}",
            Some(sign("whsec_other", now(), b"{}")),
            "signature_mismatch",
        ),
        (
            &seed,
            Some(sign(SECRET, now() - 3600, &seed)),
            "timestamp_out_of_tolerance",
        ),
        (b"[1]", Some(sign(SECRET, now(), b"[1]")), "invalid_payload"),
        (&[b' '; 9000], Some("t=1,v1=00".into()), "payload_too_large"),
    ];
    for (body, signature, code) in rejections {
        let (_, answer) = post(&client, base, body, signature.as_deref()).await;
        assert_eq!(answer["error"], code);
    }

    let lookups = [
        (
            "email=ada.lovelace@example.com&livemode=false",
            true,
            "found",
        ),
        ("email=nobody@example.com&livemode=false", true, "not_found"),
        ("email=nobody@example.com", true, "not_found"),
        ("email=ada.lovelace@example.com", true, "ambiguous_livemode"),
        (
            "email=ada.lovelace@example.com&livemode=yes",
            true,
            "invalid_request",
        ),
        (
            "email=ada.lovelace@example.com&livemode=false",
            false,
            "unauthorized",
        ),
    ];
    for (query, authorized, expected) in lookups {
        let mut request = client.get(format!(
            "{base}/v1/customers?account=acct_1OrganizerAaaaaaa&{query}"
        ));
        if authorized {
            request = request.bearer_auth("token_for_metrics");
        }
        let (status, body) = into_json(request.send().await.unwrap()).await;
        let outcome = if status == StatusCode::OK {
            "found"
        } else {
            body["error"].as_str().unwrap()
        };
        assert_eq!(outcome, expected, "{query}");
    }

    let after = scrape(&client, base).await;
    let webhook = |outcome: &str| {
        count(
            &after,
            &format!(r#"stripe_projector_webhook_requests_total{{outcome="{outcome}"}}"#),
        )
    };
    for (outcome, expected) in [
        ("stored", 6.0),
        ("duplicate", 1.0),
        ("ignored", 1.0),
        ("missing_signature", 1.0),
        ("malformed_signature", 1.0),
        ("signature_mismatch", 2.0),
        ("timestamp_out_of_tolerance", 1.0),
        ("invalid_payload", 1.0),
        ("payload_too_large", 1.0),
        ("store_unavailable", 0.0),
    ] {
        assert_eq!(webhook(outcome), expected, "{outcome}");
    }
    for (reason, expected) in [
        ("missing_signature", 1.0),
        ("malformed_signature", 1.0),
        ("signature_mismatch", 2.0),
        ("timestamp_out_of_tolerance", 1.0),
    ] {
        let series = format!(r#"stripe_projector_signature_failures_total{{reason="{reason}"}}"#);
        assert_eq!(count(&after, &series), expected, "{reason}");
    }
    for (event_type, expected) in [
        ("customer.created", 3.0),
        ("customer.updated", 1.0),
        ("customer.subscription.created", 1.0),
        ("other", 1.0),
    ] {
        let series = format!(
            r#"stripe_projector_events_appended_total{{type="{event_type}",source="webhook"}}"#
        );
        assert_eq!(count(&after, &series), expected, "{event_type}");
    }
    assert_eq!(
        count(&after, "stripe_projector_projection_errors_total"),
        1.0
    );
    assert_eq!(
        count(&after, "stripe_projector_append_duration_seconds_count"),
        7.0,
        "six appends and one duplicate"
    );
    assert!(after.contains("# TYPE stripe_projector_append_duration_seconds histogram"));
    assert_eq!(
        count(
            &after,
            r#"stripe_projector_append_duration_seconds_bucket{le="+Inf"}"#
        ),
        7.0
    );
    assert_eq!(
        (
            count(&after, "stripe_projector_commit_batch_events_count"),
            count(&after, "stripe_projector_commit_batch_events_sum"),
        ),
        (7.0, 7.0),
        "deliveries sent one after another commit one by one"
    );
    assert_eq!(
        count(
            &after,
            r#"stripe_projector_commit_batch_events_bucket{le="1"}"#
        ),
        7.0
    );
    for (outcome, expected) in [
        ("found", 1.0),
        ("not_found", 2.0),
        ("ambiguous_livemode", 1.0),
        ("invalid_request", 1.0),
        ("unauthorized", 1.0),
        ("store_unavailable", 0.0),
    ] {
        let series = format!(r#"stripe_projector_lookups_total{{outcome="{outcome}"}}"#);
        assert_eq!(count(&after, &series), expected, "{outcome}");
    }
    for private in ["acct_1OrganizerAaaaaaa", "evt_", "example.com", "cus_"] {
        assert!(!after.contains(private), "{private} must not be a label");
    }
}

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
    const OTHER_SECRET: &str = "whsec_second_secret_never_logged";
    const READ_TOKEN: &str = "read_token_never_logged";
    let db = TestDb::create(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let mut command = serve_command(&db.url);
    command
        .env("LOG_FORMAT", "json")
        .env("STRIPE_WEBHOOK_SECRET", format!("{OTHER_SECRET},{SECRET}"))
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
    let response = client
        .post(&url)
        .header("Stripe-Signature", sign(SECRET, now(), body.as_bytes()))
        .header("X-Request-Id", "req-from-balancer-42")
        .body(body.clone())
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
        let response = client
            .post(&url)
            .header("Stripe-Signature", sign(SECRET, now(), bad.as_bytes()))
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let mismatch = client
        .post(&url)
        .header(
            "Stripe-Signature",
            sign("whsec_wrong", now(), body.as_bytes()),
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
    let exit = served.wait_exit(Duration::from_secs(60)).expect("exits");
    assert_eq!(exit.code(), Some(0));
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines = parse_logs(&text);

    for line in &lines {
        let lower = line.raw.to_lowercase();
        for secret in [SECRET, OTHER_SECRET, READ_TOKEN] {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_webhooks_follow_the_database_down_and_back_up() {
    if !postgres_configured() {
        return;
    }
    let app = TestApp::spawn(Backend::Postgres).await;
    let event = |i: usize| {
        created(
            &format!("evt_ready_{i}"),
            "acct_ready",
            &format!("cus_ready_{i}"),
            &format!("r{i}@example.com"),
            1_700_000_000,
        )
    };
    assert_eq!(app.get("/readyz").await.0, StatusCode::OK);
    assert_eq!(app.deliver_json(&event(1)).await.0, StatusCode::OK);
    let before = scrape(&app.client, &app.base).await;
    let unavailable = r#"stripe_projector_webhook_requests_total{outcome="store_unavailable"}"#;

    app.db.refuse_connections().await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "store_unavailable");
    let (status, body) = app.deliver_json(&event(2)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "store_unavailable");
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK, "still alive");
    let during = scrape(&app.client, &app.base).await;
    assert!(count(&during, unavailable) >= count(&before, unavailable) + 1.0);

    app.db.allow_connections().await;
    let mut ready = false;
    for _ in 0..200 {
        if app.get("/readyz").await.0 == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "readyz comes back without a restart");
    let (status, body) = app.deliver_json(&event(2)).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("stored"))
    );
    assert!(app.store.event("evt_ready_2").await.unwrap().is_some());
}

/// A delivery whose request the server has started (it answered `100 Continue`), with
/// half of its body sent: genuinely in flight, with no sleep on either side.
struct SlowDelivery {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowDelivery {
    fn start(addr: &str, body: &[u8]) -> Self {
        let mut stream = TcpStream::connect(addr).expect("connect");
        // A safety net so a broken server fails the test instead of hanging it.
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let head = format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: {addr}\r\nStripe-Signature: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\nConnection: close\r\n\r\n",
            sign(SECRET, now(), body),
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).expect("read 100 Continue");
            assert_eq!(n, 1, "connection closed before 100 Continue");
            seen.push(byte[0]);
        }
        assert!(seen.starts_with(b"HTTP/1.1 100"), "{seen:?}");
        let half = body.len() / 2;
        stream.write_all(&body[..half]).unwrap();
        Self {
            stream,
            rest: body[half..].to_vec(),
        }
    }

    /// Sends the rest of the body and reads the whole answer.
    fn finish(mut self) -> String {
        self.stream.write_all(&self.rest).unwrap();
        let mut answer = String::new();
        self.stream.read_to_string(&mut answer).expect("answer");
        answer
    }

    /// What the server sent on a delivery that never finished: nothing but its end.
    fn abandoned(mut self) -> Vec<u8> {
        let mut answer = Vec::new();
        let _ = self.stream.read_to_end(&mut answer);
        answer
    }
}

const SHUTDOWN_TIMEOUT_SECS: u64 = 8;

async fn sigterm_lets_in_flight_deliveries_finish_and_commit(backend: Backend) {
    const SLOW: usize = 6;
    const FAST: usize = 120;
    let db = TestDb::create(backend).await;
    let mut command = serve_command(&db.url);
    command
        .env("SHUTDOWN_TIMEOUT_SECS", SHUTDOWN_TIMEOUT_SECS.to_string())
        // The slow deliveries wait for the fast ones: on a busy machine that may take
        // longer than the default client timeout, which would cut them off with a 408.
        .env("CLIENT_TIMEOUT_SECS", "120");
    let mut served = Served::spawn(command);
    let body = |prefix: &str, i: usize| {
        created(
            &format!("evt_{prefix}_{i:03}"),
            &format!("acct_{}", i % 3),
            &format!("cus_{prefix}_{i:03}"),
            &format!("{prefix}{i}@example.com"),
            1_700_000_000 + i as i64,
        )
        .to_string()
        .into_bytes()
    };
    let slow: Vec<SlowDelivery> = (0..SLOW)
        .map(|i| SlowDelivery::start(served.addr(), &body("slow", i)))
        .collect();
    // Never finished: the shutdown bound must not wait for it forever.
    let stuck = SlowDelivery::start(served.addr(), &body("stuck", 0));

    let client = reqwest::Client::new();
    let base = served.base.clone();
    let deliveries = (0..FAST).map(|i| {
        let (client, base, body) = (client.clone(), base.clone(), body("fast", i));
        async move {
            let answer = client
                .post(format!("{base}/webhooks/stripe"))
                .header("Stripe-Signature", sign(SECRET, now(), &body))
                .body(body)
                .send()
                .await;
            (i, answer.is_ok_and(|r| r.status().is_success()))
        }
    });
    let mut answers = stream::iter(deliveries).buffer_unordered(8);
    let mut acknowledged = BTreeSet::new();
    let mut signalled_at = None;
    while let Some((i, ok)) = answers.next().await {
        if ok {
            acknowledged.insert(i);
        }
        if acknowledged.len() == 10 && signalled_at.is_none() {
            served.terminate();
            signalled_at = Some(Instant::now());
        }
    }
    drop(answers);
    drop(client);
    let signalled_at = signalled_at.expect("ten deliveries were acknowledged");

    for (i, delivery) in slow.into_iter().enumerate() {
        let answer = delivery.finish();
        assert!(answer.starts_with("HTTP/1.1 200"), "slow {i}: {answer}");
        assert!(
            answer.contains(r#""status":"stored""#),
            "slow {i}: {answer}"
        );
    }
    let bound = Duration::from_secs(SHUTDOWN_TIMEOUT_SECS + 20);
    let exit = served
        .wait_exit(bound.saturating_sub(signalled_at.elapsed()))
        .expect("serve exits within the shutdown bound despite a stuck client");
    assert_eq!(exit.code(), Some(0), "a graceful stop exits 0");
    let abandoned = stuck.abandoned();
    assert!(
        !String::from_utf8_lossy(&abandoned).contains("HTTP/1.1 200"),
        "the stuck delivery was never acknowledged"
    );

    let store = db.store().await;
    for i in 0..SLOW {
        let id = format!("evt_slow_{i:03}");
        assert!(store.event(&id).await.unwrap().is_some(), "{id} missing");
    }
    for &i in &acknowledged {
        let id = format!("evt_fast_{i:03}");
        assert!(
            store.event(&id).await.unwrap().is_some(),
            "{id} acknowledged, not logged"
        );
    }
    assert!(store.event("evt_stuck_000").await.unwrap().is_none());
}

on_both_backends!(sigterm_lets_in_flight_deliveries_finish_and_commit);

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
