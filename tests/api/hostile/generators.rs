//! Generators of hostile requests: signature headers, bodies and lookup queries.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{LIMIT, READ_TOKEN};
use crate::helpers::{created, sign, SECRET};

/// What goes in `Stripe-Signature`.
#[derive(Debug, Clone)]
pub(super) enum Sig {
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
pub(super) enum Body {
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
    pub(super) fn bytes(&self, n: usize) -> Vec<u8> {
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
pub(super) enum Case {
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

pub(super) fn case() -> impl Strategy<Value = Case> {
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

/// A header signed at `t` with `count` `v1` entries, the right one (if any) at `valid_at`.
pub(super) fn many_v1(body: &[u8], t: i64, count: usize, valid_at: Option<usize>) -> String {
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
