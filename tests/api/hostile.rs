//! Hostile input: whatever arrives, every answer is one docs/api.md documents (400 with a
//! documented code, 401, 404, 409, 413, 200), never a 5xx on a healthy database, never a
//! panic (the server keeps answering `/healthz`), never a hang, and never an error body
//! that repeats a secret or the read token.
//!
//! The property tests run `DEFAULT_CASES` cases; `PROPTEST_CASES=100000 cargo test --test
//! api hostile` runs more (see docs/architecture.md, "Guarantees").

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::StatusCode;
use serde_json::{json, Value};
use stripe_projector::lookup::LookupRequest;

use crate::helpers::{
    self, created, encode, into_json, now, sign, AppConfig, Backend, TestApp, SECRET,
};

const DEFAULT_CASES: u32 = 256;
/// A small limit keeps the bodies at and around it cheap to generate.
const LIMIT: usize = 2048;
const OTHER_SECRET: &str = "whsec_hostile_second_secret";
const READ_TOKEN: &str = "read_token_hostile_suite";
/// Anything slower than this is a hang, not a slow answer.
const HANG: Duration = Duration::from_secs(30);

fn hostile_config() -> AppConfig {
    AppConfig {
        secrets: vec![OTHER_SECRET.to_owned(), SECRET.to_owned()],
        max_body_bytes: LIMIT,
        read_token: Some(READ_TOKEN.to_owned()),
        client_timeout: Duration::from_secs(1),
        ..AppConfig::default()
    }
}

/// No answer ever carries a secret or the token, whatever was asked.
fn assert_no_secret(text: &str) {
    for secret in [SECRET, OTHER_SECRET, READ_TOKEN] {
        assert!(!text.contains(secret), "an answer repeats a secret: {text}");
    }
}

// ---------------------------------------------------------------------------------------
// Generators.

/// What goes in `Stripe-Signature`.
#[derive(Debug, Clone)]
enum Sig {
    Absent,
    /// Any bytes a header value can carry (visible ASCII, tab, obs-text).
    Arbitrary(Vec<u8>),
    /// Text shaped like a header, with random items.
    Shaped(String),
    /// A correct signature, `skew` seconds away from now.
    Signed {
        skew: i64,
    },
    /// A few `v1` (around the limit of 16) to thousands, the right one at `valid_at` (or
    /// none).
    ManyV1 {
        count: usize,
        valid_at: Option<usize>,
    },
}

/// What goes in the body.
#[derive(Debug, Clone)]
enum Body {
    Bytes(Vec<u8>),
    /// A JSON value built from hostile parts (NUL in ids and emails, wrong types...).
    Json(Value),
    /// `[[[...]]]` or `{"a":{"a":...}}`, `depth` deep.
    Nested {
        depth: usize,
        objects: bool,
    },
    /// A valid event padded with spaces to `LIMIT + delta` bytes.
    Sized {
        delta: i64,
    },
}

impl Body {
    fn bytes(&self, n: usize) -> Vec<u8> {
        match self {
            Body::Bytes(bytes) => bytes.clone(),
            Body::Json(value) => value.to_string().into_bytes(),
            Body::Nested { depth, objects } => {
                let (open, close) = if *objects {
                    (r#"{"a":"#, "}")
                } else {
                    ("[", "]")
                };
                format!("{}1{}", open.repeat(*depth), close.repeat(*depth)).into_bytes()
            }
            Body::Sized { delta } => {
                let event = created(
                    &format!("evt_sized_{n}"),
                    "acct_sized",
                    "cus_sized",
                    "sized@example.com",
                    1_700_000_000,
                );
                let mut body = event.to_string().into_bytes();
                let target = (LIMIT as i64 + delta) as usize;
                body.resize(target.max(body.len()), b' ');
                body
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Case {
    Webhook {
        sig: Sig,
        body: Body,
    },
    Lookup {
        account: Option<String>,
        email: Option<String>,
        livemode: Option<String>,
        authorization: Option<Vec<u8>>,
    },
}

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    // What `HeaderValue::from_bytes` takes: no controls except tab, no DEL.
    let byte = prop_oneof![
        8 => 0x20u8..0x7f,
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ];
    prop::collection::vec(byte, 0..200)
}

fn shaped_header() -> impl Strategy<Value = String> {
    let item = prop_oneof![
        "t=[0-9]{0,12}",
        "t=[-+ 0-9a-fx_]{0,12}",
        "v1=[0-9a-f]{0,70}",
        "v0=[0-9a-f]{64}",
        "[a-z0-9]{0,3}=[ -~]{0,10}",
        "[ -~]{0,10}",
    ];
    prop::collection::vec(item, 0..8).prop_map(|items| items.join(","))
}

fn sig() -> impl Strategy<Value = Sig> {
    prop_oneof![
        1 => Just(Sig::Absent),
        3 => header_bytes().prop_map(Sig::Arbitrary),
        3 => shaped_header().prop_map(Sig::Shaped),
        // The tolerance's edges (300 s, inclusive, both directions) come up often.
        6 => prop_oneof![Just(0i64), 298i64..=302, -302i64..=-298, -400i64..400]
            .prop_map(|skew| Sig::Signed { skew }),
        // The cap's edge (16) comes up often, and so does a header with no `v1` at all.
        2 => (
            prop_oneof![2 => 14usize..=18, 1 => 0usize..40, 1 => 200usize..1400],
            prop::option::of(0usize..1400),
        )
            .prop_map(|(count, at)| Sig::ManyV1 {
                count,
                valid_at: at.filter(|_| count > 0).map(|at| at % count),
            }),
    ]
}

/// Strings that break things: NUL and other controls, odd unicode, the empty string.
fn wild_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z_]{0,4}\u{0}[a-z]{0,4}",
        "[\u{0}-\u{1f}]{1,4}",
        Just(String::new()),
        Just("A@B.c\u{0}".to_owned()),
        Just("ü@exämple.com".to_owned()),
        Just("x".repeat(600)),
    ]
}

fn maybe_wild(good: &'static [&'static str]) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        4 => prop::sample::select(good).prop_map(|s| Some(json!(s))),
        2 => wild_string().prop_map(|s| Some(json!(s))),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => any::<i64>().prop_map(|n| Some(json!(n))),
        1 => Just(Some(json!(["x"]))),
    ]
}

fn integer_ish() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        4 => (1_600_000_000i64..1_800_000_000).prop_map(|n| Some(json!(n))),
        1 => any::<i64>().prop_map(|n| Some(json!(n))),
        1 => Just(Some(json!(u64::MAX))),
        1 => Just(Some(json!(1.5))),
        1 => Just(Some(json!("1700000000"))),
        1 => Just(None),
    ]
}

fn boolean_ish() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => any::<bool>().prop_map(|b| Some(json!(b))),
        1 => Just(Some(json!("false"))),
        1 => Just(Some(json!(0))),
        1 => Just(None),
    ]
}

/// An event assembled from good and hostile parts; absent parts are left out.
fn event_json() -> impl Strategy<Value = Value> {
    let envelope = (
        maybe_wild(&["evt_h_1", "evt_h_2", "evt_h_3"]),
        prop_oneof![
            9 => maybe_wild(&[
            "customer.created",
            "customer.updated",
            "customer.deleted",
            "customer.subscription.created",
            "invoice.paid",
            "v1.customer.updated",
            ]),
            // A customer.* type with NUL or controls in it: it would be stored as is.
            1 => wild_string().prop_map(|s| Some(json!(format!("customer.{s}")))),
        ],
        maybe_wild(&["acct_h_A", "acct_h_B"]),
        integer_ish(),
        boolean_ish(),
    );
    let object = (
        maybe_wild(&["cus_h_1", "cus_h_2"]),
        maybe_wild(&["customer", "subscription"]),
        maybe_wild(&["ada@example.com", " Ada@Example.com"]),
        maybe_wild(&["Ada"]),
        integer_ish(),
        0usize..140,
    );
    let data_shape = prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)];
    (envelope, object, data_shape).prop_map(
        |(
            (id, kind, account, created, livemode),
            (cid, object_kind, email, name, ccreated, depth),
            shape,
        )| {
            let mut object = serde_json::Map::new();
            for (key, value) in [
                ("id", cid),
                ("object", object_kind),
                ("email", email),
                ("name", name),
                ("created", ccreated),
            ] {
                if let Some(value) = value {
                    object.insert(key.to_owned(), value);
                }
            }
            // Nesting inside a real field: deep enough, past serde_json's recursion limit.
            let mut metadata = json!("leaf");
            for _ in 0..depth {
                metadata = json!({ "k": metadata });
            }
            object.insert("metadata".to_owned(), metadata);
            let data = match shape {
                0 => json!({ "object": object }),
                1 => json!({ "object": "not an object" }),
                _ => json!([object]),
            };
            let mut event = serde_json::Map::new();
            event.insert("object".to_owned(), json!("event"));
            event.insert("data".to_owned(), data);
            for (key, value) in [
                ("id", id),
                ("type", kind),
                ("account", account),
                ("created", created),
                ("livemode", livemode),
            ] {
                if let Some(value) = value {
                    event.insert(key.to_owned(), value);
                }
            }
            Value::Object(event)
        },
    )
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Body::Bytes),
        // Not UTF-8 on purpose: a lone continuation byte inside otherwise valid JSON.
        1 => "[a-z]{0,20}".prop_map(|s| Body::Bytes(format!("{{\"id\":\"{s}\u{0}\"}}").into_bytes()
            .into_iter().chain([0xff, 0xfe]).collect())),
        8 => event_json().prop_map(Body::Json),
        2 => (1usize..1000, any::<bool>()).prop_map(|(depth, objects)| Body::Nested { depth, objects }),
        2 => (-3i64..=3).prop_map(|delta| Body::Sized { delta }),
    ]
}

fn lookup_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        4 => prop::sample::select(&["acct_h_A", "platform", "ada@example.com", " ADA@example.com", "true", "false"][..])
            .prop_map(|s| Some(s.to_owned())),
        4 => wild_string().prop_map(Some),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        4 => (sig(), body()).prop_map(|(sig, body)| Case::Webhook { sig, body }),
        1 => (
            lookup_value(),
            lookup_value(),
            lookup_value(),
            prop_oneof![
                6 => Just(Some(format!("Bearer {READ_TOKEN}").into_bytes())),
                1 => Just(None),
                1 => header_bytes().prop_map(Some),
            ],
        )
            .prop_map(|(account, email, livemode, authorization)| Case::Lookup {
                account,
                email,
                livemode,
                authorization,
            }),
    ]
}

// ---------------------------------------------------------------------------------------
// The property.

property_on_both_backends!(hostile_requests_get_documented_answers_on_sqlite, hostile_requests_get_documented_answers_on_postgres => check_hostile);

fn config() -> Config {
    let cases = match std::env::var("PROPTEST_CASES") {
        Ok(cases) => cases.parse().expect("PROPTEST_CASES is a number"),
        Err(_) => DEFAULT_CASES,
    };
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn check_hostile(backend: Backend) {
    // proptest's strategies for these nested shapes need more stack than a test thread's
    // 2 MiB in debug builds (the server's own threads are not involved).
    std::thread::Builder::new()
        .stack_size(64 * 1024 * 1024)
        .spawn(move || run_hostile(backend))
        .expect("thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

fn run_hostile(backend: Backend) {
    let runtime = helpers::property_runtime();
    let app = runtime.block_on(TestApp::spawn_with(backend, hostile_config()));
    let runs = Cell::new(0usize);
    let mut runner = TestRunner::new(config());
    let result = runner.run(&case(), |case| {
        let n = runs.replace(runs.get() + 1);
        runtime.block_on(async {
            tokio::time::timeout(HANG, check_case(&app, &case, n))
                .await
                .map_err(|_| TestCaseError::fail("the server did not answer: a hang"))?
        })
    });
    let TestApp { store, db, .. } = app;
    runtime.block_on(async move { drop(store) });
    drop(db);
    if let Err(error) = result {
        panic!("hostile input on {backend:?}: {error}");
    }
}

async fn check_case(app: &TestApp, case: &Case, n: usize) -> Result<(), TestCaseError> {
    match case {
        Case::Webhook { sig, body } => check_webhook(app, sig, body, n).await?,
        Case::Lookup {
            account,
            email,
            livemode,
            authorization,
        } => check_lookup(app, account, email, livemode, authorization.as_deref()).await?,
    }
    let (status, _) = app.get("/healthz").await;
    prop_assert_eq!(status, StatusCode::OK, "the server stopped answering");
    Ok(())
}

fn header_value(sig: &Sig, body: &[u8], t0: i64) -> Option<Vec<u8>> {
    match sig {
        Sig::Absent => None,
        Sig::Arbitrary(bytes) => Some(bytes.clone()),
        Sig::Shaped(text) => Some(text.clone().into_bytes()),
        Sig::Signed { skew } => Some(sign(SECRET, t0 + skew, body).into_bytes()),
        Sig::ManyV1 { count, valid_at } => Some(many_v1(body, t0, *count, *valid_at).into_bytes()),
    }
}

/// A header signed at `t` with `count` `v1` entries, the right one (if any) at `valid_at`.
fn many_v1(body: &[u8], t: i64, count: usize, valid_at: Option<usize>) -> String {
    let good = sign(SECRET, t, body);
    let good_v1 = good.split_once(",v1=").expect("signed header").1.to_owned();
    let mut header = format!("t={t}");
    for i in 0..count {
        let v1 = if Some(i) == valid_at {
            good_v1.clone()
        } else {
            format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15)
        };
        header.push_str(",v1=");
        header.push_str(&v1);
    }
    header
}

// ---------------------------------------------------------------------------------------
// The webhook oracle. It never calls the product's verifier or parser: the expected answer
// comes from what the generator built, and where the generator built something arbitrary
// (a random header, random bytes, a JSON value from hostile parts), from the rules
// docs/api.md states, re-implemented here as plainly as they are written there.

/// What the signature header says, before the clock is consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Missing,
    Malformed,
    Mismatch,
    /// A `v1` matches a configured secret; signed at this unix time.
    SignedAt(i64),
}

/// What a signed body is, per the documented payload rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// A `customer.*` event: stored (or a duplicate of an earlier case's id).
    Customer,
    /// Another event with a valid id: acknowledged only.
    Ignored,
    Invalid,
}

/// One acceptable answer: a 200 with one of these `status` values, or an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted(&'static [&'static str]),
    Refused(&'static str),
}

/// The verdict on the header the generator built. Only `Shaped` and `Arbitrary` headers
/// are unknown to it; they are read by [`spec_header`].
fn verdict(sig: &Sig, header: Option<&[u8]>, body: &[u8], t0: i64) -> Verdict {
    match (sig, header) {
        (Sig::Absent, _) | (_, None) => Verdict::Missing,
        (Sig::Signed { skew }, _) => Verdict::SignedAt(t0 + skew),
        // At most 16 `v1` are read (16 of them are about 1.1 KiB, well under the 8 KiB
        // cap), and a header needs at least one.
        (Sig::ManyV1 { count, .. }, _) if *count == 0 || *count > 16 => Verdict::Malformed,
        (Sig::ManyV1 { valid_at, .. }, _) => match valid_at {
            Some(_) => Verdict::SignedAt(t0),
            None => Verdict::Mismatch,
        },
        (Sig::Shaped(_) | Sig::Arbitrary(_), Some(header)) => spec_header(header, body),
    }
}

/// docs/api.md "Header parsing": at most 8192 bytes of UTF-8; items split on `,`, each
/// trimmed of ASCII whitespace and of the form `key=value`; exactly one `t`, of ASCII
/// digits only; at least one and at most 16 `v1`; other keys ignored. A `v1` matches when
/// it is the hex HMAC-SHA256, keyed with a whole secret, of `"{t}.{body}"` (so a `v1`
/// that is not 64 hex digits never matches).
fn spec_header(header: &[u8], body: &[u8]) -> Verdict {
    let Some(text) = std::str::from_utf8(header)
        .ok()
        .filter(|_| header.len() <= 8192)
    else {
        return Verdict::Malformed;
    };
    let mut t: Vec<&str> = Vec::new();
    let mut v1: Vec<&str> = Vec::new();
    for item in text.split(',') {
        let item = item.trim_matches(|c: char| c.is_ascii_whitespace());
        let Some((key, value)) = item.split_once('=') else {
            return Verdict::Malformed;
        };
        match key {
            "t" => t.push(value),
            "v1" => v1.push(value),
            _ => {}
        }
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // A unix time in seconds: one that does not fit in 64 bits is no time at all.
    let timestamp = match t.as_slice() {
        [t] if digits(t) => t.parse::<i64>().ok(),
        _ => None,
    };
    let Some(timestamp) = timestamp.filter(|_| (1..=16).contains(&v1.len())) else {
        return Verdict::Malformed;
    };
    let matches = [SECRET, OTHER_SECRET].iter().any(|secret| {
        let expected = stripe_v1(secret, t[0], body);
        v1.iter().any(|v| v.eq_ignore_ascii_case(&expected))
    });
    if matches {
        Verdict::SignedAt(timestamp)
    } else {
        Verdict::Mismatch
    }
}

/// Stripe's `v1`: lowercase hex of HMAC-SHA256 over `"{t}.{body}"`, keyed with the secret.
fn stripe_v1(secret: &str, t: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The payload the generator built, where it knows; the documented rules otherwise.
fn payload(body: &Body) -> Payload {
    match body {
        // `created(...)`: a customer.created event with every field right.
        Body::Sized { .. } => Payload::Customer,
        // An array, or an object whose only field is `a`: no `id`, no `type`.
        Body::Nested { .. } => Payload::Invalid,
        Body::Json(value) => spec_event(value),
        // Up to 300 random bytes: too short to nest past serde_json's depth limit or to
        // hold an event naming one of its fields twice, where `Value` would differ from
        // the rules.
        Body::Bytes(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .map_or(Payload::Invalid, |value| spec_event(&value)),
    }
}

/// docs/api.md: a JSON object with string `id` and `type`; every identifier (the event
/// id, and `account` when present and not null) non-empty, at most 255 bytes, without
/// control characters. Other types are ignored. A `customer.*` event also needs a type
/// and a `data.object.id` (when a string) without control characters, an integer
/// `created` (a unix time, so within 64 bits), a boolean `livemode` and an object
/// `data.object`.
fn spec_event(event: &Value) -> Payload {
    let control = |s: &str| s.chars().any(char::is_control);
    let identifier = |s: &str| !s.is_empty() && s.len() <= 255 && !control(s);
    let Some(event) = event.as_object() else {
        return Payload::Invalid;
    };
    let text = |key: &str| event.get(key).and_then(Value::as_str);
    let (Some(id), Some(kind)) = (text("id"), text("type")) else {
        return Payload::Invalid;
    };
    if !identifier(id) {
        return Payload::Invalid;
    }
    if !kind.starts_with("customer.") {
        return Payload::Ignored;
    }
    let account = match event.get("account") {
        None | Some(Value::Null) => true,
        Some(Value::String(account)) => identifier(account),
        Some(_) => false,
    };
    let object = event
        .get("data")
        .and_then(Value::as_object)
        .and_then(|data| data.get("object"))
        .and_then(Value::as_object);
    let object_id = object
        .and_then(|object| object.get("id"))
        .and_then(Value::as_str)
        .is_none_or(|id| !control(id));
    let valid = !control(kind)
        && event.get("created").is_some_and(|c| c.as_i64().is_some())
        && event.get("livemode").is_some_and(Value::is_boolean)
        && account
        && object.is_some()
        && object_id;
    if valid {
        Payload::Customer
    } else {
        Payload::Invalid
    }
}

/// Every answer the server may rightly give. The server reads its clock somewhere between
/// `t0` (taken before the header was signed) and `t1` (taken after the answer came): one
/// answer unless the tolerance's edge (300 s, inclusive) falls inside that window, and
/// then exactly two, the payload's answer and `timestamp_out_of_tolerance`.
fn expected_answers(
    sig: &Sig,
    header: Option<&[u8]>,
    body: &Body,
    bytes: &[u8],
    t0: i64,
    t1: i64,
) -> Vec<Answer> {
    // The order docs/api.md gives: declared size, header present, header syntax,
    // signature, timestamp, payload.
    if bytes.len() > LIMIT {
        return vec![Answer::Refused("payload_too_large")];
    }
    let signed_at = match verdict(sig, header, bytes, t0) {
        Verdict::Missing => return vec![Answer::Refused("missing_signature")],
        Verdict::Malformed => return vec![Answer::Refused("malformed_signature")],
        Verdict::Mismatch => return vec![Answer::Refused("signature_mismatch")],
        Verdict::SignedAt(at) => at,
    };
    let accepted = match payload(body) {
        Payload::Customer if matches!(body, Body::Sized { .. }) => {
            // Its id is unique to the case: never seen before.
            Answer::Accepted(&["stored"])
        }
        Payload::Customer => Answer::Accepted(&["stored", "duplicate"]),
        Payload::Ignored => Answer::Accepted(&["ignored"]),
        Payload::Invalid => Answer::Refused("invalid_payload"),
    };
    let mut answers = Vec::new();
    for server_now in t0..=t1 {
        let answer = if (server_now - signed_at).abs() <= 300 {
            accepted
        } else {
            Answer::Refused("timestamp_out_of_tolerance")
        };
        if !answers.contains(&answer) {
            answers.push(answer);
        }
    }
    answers
}

async fn check_webhook(
    app: &TestApp,
    sig: &Sig,
    body: &Body,
    n: usize,
) -> Result<(), TestCaseError> {
    let bytes = body.bytes(n);
    let t0 = now();
    let header = header_value(sig, &bytes, t0);
    let mut request = app
        .client
        .post(format!("{}/webhooks/stripe", app.base))
        .body(bytes.clone());
    if let Some(header) = &header {
        request = request.header("Stripe-Signature", header.as_slice());
    }
    let response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("request failed: {e}")))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let t1 = now();
    assert_no_secret(&text);
    let answer: Value = serde_json::from_str(&text)
        .map_err(|_| TestCaseError::fail(format!("{status}: not JSON: {text}")))?;

    let expected = expected_answers(sig, header.as_deref(), body, &bytes, t0, t1);
    // Two answers only across the tolerance's edge: the payload's and the clock's.
    prop_assert!(
        expected.len() == 1
            || (expected.len() == 2
                && expected.contains(&Answer::Refused("timestamp_out_of_tolerance"))),
        "the oracle allows {:?}",
        expected
    );
    let fits = |expected: &Answer| match *expected {
        Answer::Accepted(statuses) => {
            status == StatusCode::OK
                && answer["status"]
                    .as_str()
                    .is_some_and(|s| statuses.contains(&s))
                && answer["event_id"].is_string()
        }
        Answer::Refused(code) => {
            let want = if code == "payload_too_large" {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            status == want && answer["error"] == code && answer["message"].is_string()
        }
    };
    prop_assert!(
        expected.iter().any(fits),
        "expected one of {:?}, got {} {}",
        expected,
        status,
        text
    );
    Ok(())
}

async fn check_lookup(
    app: &TestApp,
    account: &Option<String>,
    email: &Option<String>,
    livemode: &Option<String>,
    authorization: Option<&[u8]>,
) -> Result<(), TestCaseError> {
    let query: Vec<String> = [
        ("account", account),
        ("email", email),
        ("livemode", livemode),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name}={}", encode(v))))
    .collect();
    let mut request = app
        .client
        .get(format!("{}/v1/customers?{}", app.base, query.join("&")));
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    let response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("request failed: {e}")))?;
    let (status, answer) = into_json(response).await;
    assert_no_secret(&answer.to_string());
    let authorized = authorization == Some(format!("Bearer {READ_TOKEN}").as_bytes());
    if !authorized {
        prop_assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", answer);
        return Ok(());
    }
    match LookupRequest::parse(account.as_deref(), email.as_deref(), livemode.as_deref()) {
        Err(_) => {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", answer);
            prop_assert_eq!(&answer["error"], "invalid_request");
        }
        Ok(request) => match status {
            StatusCode::OK => {
                prop_assert_eq!(&answer["account"], request.account.as_str());
                if let Some(livemode) = request.livemode {
                    prop_assert_eq!(&answer["livemode"], livemode);
                }
            }
            StatusCode::NOT_FOUND => prop_assert_eq!(&answer["error"], "not_found"),
            StatusCode::CONFLICT => {
                prop_assert_eq!(&answer["error"], "ambiguous_livemode");
                prop_assert!(request.livemode.is_none());
            }
            other => prop_assert!(false, "undocumented lookup answer {}: {}", other, answer),
        },
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Deterministic edges: the default limit, actix's own limits, slow clients.

/// A valid event padded to exactly the limit is stored; one byte more is 413. A body of
/// nothing but nesting at the limit is refused as invalid, without exhausting the stack.
async fn bodies_at_and_over_the_default_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let limit = AppConfig::default().max_body_bytes;
    let event = created(
        "evt_at_limit",
        "acct_l",
        "cus_l",
        "l@example.com",
        1_700_000_000,
    );
    let mut body = event.to_string().into_bytes();
    body.resize(limit, b' ');
    let (status, answer) = app.deliver(&body).await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored"))
    );

    let mut over = created("evt_over_limit", "acct_l", "cus_o", "o@example.com", 1)
        .to_string()
        .into_bytes();
    over.resize(limit + 1, b' ');
    let (status, answer) = app.deliver(&over).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["error"], "payload_too_large");
    assert!(app.store.event("evt_over_limit").await.unwrap().is_none());

    for open in ["[", r#"{"a":"#] {
        let depth = limit / (2 * open.len());
        let close = if open == "[" { "]" } else { "}" };
        let mut nested = format!("{}{}", open.repeat(depth), close.repeat(depth)).into_bytes();
        nested.truncate(limit);
        let (status, answer) = app.deliver(&nested).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"], "invalid_payload");
    }
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(app.store.status().await.unwrap().events, 1);
}

/// Without Content-Length (chunked), the limit is enforced while reading.
async fn chunked_bodies_over_the_limit_are_refused_while_reading(backend: Backend) {
    let app = TestApp::spawn_with(backend, hostile_config()).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let chunk = vec![b' '; 1000];
        let mut request = format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: {addr}\r\nStripe-Signature: t=1,v1=00\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        for _ in 0..(LIMIT / 1000 + 2) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(&chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        raw_exchange(&addr, &request)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK);
}

/// Writes a whole request and reads until the server closes; a read that blocks longer
/// than `HANG` fails the test (a hang).
fn raw_exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(HANG)).unwrap();
    // The server may answer and close before it has read everything (431, 413): keep
    // what it said.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    if let Err(error) = stream.read_to_end(&mut answer) {
        assert_ne!(error.kind(), std::io::ErrorKind::WouldBlock, "a hang");
        assert_ne!(error.kind(), std::io::ErrorKind::TimedOut, "a hang");
    }
    answer
}

/// A header with about 1,800 `v1` entries (just under actix's 128 KiB head limit) is
/// malformed, whether or not one of them is right: at most 16 are read, so a forged
/// header cannot make the server compute an HMAC per entry. Nothing is stored.
async fn thousands_of_v1_entries_are_malformed_not_checked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = created("evt_many_v1", "acct_v", "cus_v", "v@example.com", 1).to_string();
    let count = 1800;
    for valid_at in [Some(0), Some(count - 1), None] {
        let header = many_v1(body.as_bytes(), now(), count, valid_at);
        assert!(header.len() > 120_000);
        let (status, answer) = app.post_webhook(body.as_bytes(), Some(&header)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{valid_at:?}");
        assert_eq!(answer["error"], "malformed_signature", "{valid_at:?}");
    }
    assert_eq!(app.store.status().await.unwrap().events, 0);
    let (status, answer) = app
        .post_webhook(
            body.as_bytes(),
            Some(&many_v1(body.as_bytes(), now(), 16, Some(15))),
        )
        .await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored"))
    );
}

/// Beyond actix's limits the request never reaches our code: a head over 128 KiB is
/// answered `431 Request Header Fields Too Large` (empty body) by actix itself, and so is
/// a head with more than 96 header fields; never a 2xx, and the server keeps serving. The
/// 431 itself must be seen: a connection closed without it proves nothing.
async fn heads_beyond_actix_limits_are_refused_by_actix(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = created("evt_huge_head", "acct_h", "cus_h", "h@example.com", 1).to_string();
    let addr = app.base.trim_start_matches("http://").to_owned();
    let huge = format!(
        "{},v1={}",
        sign(SECRET, now(), body.as_bytes()),
        "0".repeat(200_000)
    );
    let many: String = (0..200).map(|i| format!("X-Filler-{i}: x\r\n")).collect();
    for (extra, expected) in [
        (format!("Stripe-Signature: {huge}\r\n"), "HTTP/1.1 431"),
        (
            format!(
                "Stripe-Signature: {}\r\n{many}",
                sign(SECRET, now(), body.as_bytes())
            ),
            "HTTP/1.1 431",
        ),
    ] {
        let request = format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let addr = addr.clone();
        let answers = tokio::task::spawn_blocking(move || {
            let mut answers = Vec::new();
            // Bounded: an attempt whose answer a reset overtook is tried again, a few times.
            for _ in 0..REFUSED_HEAD_ATTEMPTS {
                let answer = refused_head_exchange(&addr, request.as_bytes());
                let refused = answer.starts_with(expected.as_bytes());
                answers.push(String::from_utf8_lossy(&answer).into_owned());
                if refused {
                    break;
                }
            }
            answers
        })
        .await
        .unwrap();
        // Every answer that came is the limit's, never a 2xx; and one did come.
        for text in &answers {
            assert!(text.is_empty() || text.starts_with(expected), "{text}");
        }
        assert!(
            answers.iter().any(|text| text.starts_with(expected)),
            "no {expected} in {} attempts: {answers:?}",
            answers.len()
        );
        assert_eq!(app.get("/healthz").await.0, StatusCode::OK);
    }
    assert!(app.store.event("evt_huge_head").await.unwrap().is_none());
}

/// Attempts at a refused head before the test gives up on seeing the answer.
const REFUSED_HEAD_ATTEMPTS: usize = 5;

/// Sends a request whose head the server refuses, reading the answer while the request is
/// still being written. The server answers 431 as soon as the head passes its limit and
/// closes with the rest of the request unread, so its kernel resets the connection; a
/// client that reads only after writing everything may meet the reset first and lose the
/// answer. Reading from the start takes the answer in as it arrives. Returns what was read
/// before the server closed or reset the connection.
fn refused_head_exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut reader = TcpStream::connect(addr).expect("connect");
    reader.set_read_timeout(Some(HANG)).unwrap();
    let mut writer = reader.try_clone().expect("clone the socket");
    writer.set_write_timeout(Some(HANG)).unwrap();
    let request = request.to_vec();
    // The write fails once the server has reset the connection: expected, and ignored.
    let writing = std::thread::spawn(move || drop(writer.write_all(&request)));
    let mut answer = Vec::new();
    // `read_to_end` keeps what it read before an error (a reset).
    if let Err(error) = reader.read_to_end(&mut answer) {
        assert_ne!(error.kind(), std::io::ErrorKind::WouldBlock, "a hang");
        assert_ne!(error.kind(), std::io::ErrorKind::TimedOut, "a hang");
    }
    writing.join().expect("the writing thread");
    answer
}

/// A client that sends its head and half its body, then stalls, gets 408 and a closed
/// connection once the client timeout (1 s here) passes; so does one that never finishes
/// its head. Other requests are served meanwhile, and nothing is stored.
async fn slow_clients_are_cut_off_while_others_are_served(backend: Backend) {
    let app = TestApp::spawn_with(backend, hostile_config()).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let body = created("evt_slow_body", "acct_s", "cus_s", "s@example.com", 1).to_string();
    let signature = sign(SECRET, now(), body.as_bytes());
    let half_body = {
        let addr = addr.clone();
        let body = body.clone();
        tokio::task::spawn_blocking(move || {
            let head = format!(
                "POST /webhooks/stripe HTTP/1.1\r\nHost: {addr}\r\nStripe-Signature: {signature}\r\n\
                 Content-Length: {}\r\n\r\n{}",
                body.len(),
                &body[..body.len() / 2]
            );
            stalled_exchange(&addr, head.as_bytes())
        })
    };
    let half_head = {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            stalled_exchange(
                &addr,
                b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nStripe-Sig",
            )
        })
    };
    // Served while both stall.
    let event = created("evt_meanwhile", "acct_s", "cus_m", "m@example.com", 1);
    let (status, answer) = app.deliver_json(&event).await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored"))
    );

    for (name, stalled) in [("half a body", half_body), ("half a head", half_head)] {
        let answer = stalled.await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{name}: {text}");
        assert!(!text.contains("stored"), "{name}: {text}");
    }
    assert!(app.store.event("evt_slow_body").await.unwrap().is_none());
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK);
}

/// Sends part of a request and never the rest; returns what the server said before it
/// closed the connection. A server that never closes fails the read after `HANG`.
fn stalled_exchange(addr: &str, partial: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(HANG)).unwrap();
    stream.write_all(partial).expect("write");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("the server kept a stalled connection open ({error}): a hang"),
    }
    answer
}

/// A captured delivery, re-sent within the tolerance, is a duplicate that changes nothing;
/// re-sent once the tolerance has passed, it is refused and changes nothing either; with
/// its body changed, its signature no longer matches. "Time passing" is a second `serve` on
/// the same database whose tolerance is shorter than the capture's age: from where it
/// stands, the capture is as old as one replayed after the tolerance.
async fn captured_deliveries_replay_as_duplicates_then_not_at_all(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let event = created(
        "evt_captured",
        "acct_r",
        "cus_r",
        "r@example.com",
        1_700_000_000,
    );
    let body = event.to_string().into_bytes();
    let captured = sign(SECRET, now() - 100, &body);
    let (status, answer) = app.post_webhook(&body, Some(&captured)).await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("stored"))
    );
    let tables = |store: stripe_projector::store::Store| async move {
        (
            store.status().await.unwrap(),
            store.customers().await.unwrap(),
        )
    };
    let before = tables(app.store.clone()).await;

    let (status, answer) = app.post_webhook(&body, Some(&captured)).await;
    assert_eq!(
        (status, &answer["status"]),
        (StatusCode::OK, &json!("duplicate"))
    );
    assert_eq!(tables(app.store.clone()).await, before);

    let mut forged = event.clone();
    forged["data"]["object"]["email"] = json!("attacker@example.com");
    let (status, answer) = app
        .post_webhook(forged.to_string().as_bytes(), Some(&captured))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"], "signature_mismatch");

    let mut later = crate::process::serve_command(&app.db.url);
    later.env("STRIPE_WEBHOOK_TOLERANCE_SECS", "50");
    let later = crate::process::Served::spawn(later);
    let never_seen = created("evt_captured_2", "acct_r", "cus_r2", "r2@example.com", 1);
    let never_seen = never_seen.to_string().into_bytes();
    for (body, header) in [
        (body.clone(), captured.clone()),
        (never_seen.clone(), sign(SECRET, now() - 100, &never_seen)),
    ] {
        let response = app
            .client
            .post(format!("{}/webhooks/stripe", later.base))
            .header("Stripe-Signature", header)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, answer) = into_json(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"], "timestamp_out_of_tolerance");
    }
    assert_eq!(tables(app.store.clone()).await, before);
}

on_both_backends!(
    captured_deliveries_replay_as_duplicates_then_not_at_all,
    bodies_at_and_over_the_default_limit,
    chunked_bodies_over_the_limit_are_refused_while_reading,
    thousands_of_v1_entries_are_malformed_not_checked,
    heads_beyond_actix_limits_are_refused_by_actix,
    slow_clients_are_cut_off_while_others_are_served,
);
