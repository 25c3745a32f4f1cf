//! The webhook oracle: the answers docs/api.md allows for a generated request.
//!
//! It never calls the product's verifier or parser: the expected answer comes from what
//! the generator built, and where the generator built something arbitrary (a random
//! header, random bytes, a JSON value from hostile parts), from the rules docs/api.md
//! states, re-implemented here as plainly as they are written there.

use serde_json::Value;

use super::generators::{Body, Sig};
use super::LIMIT;
use crate::helpers::{SECOND_SECRET, SECRET};

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
pub(super) enum Answer {
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
    let matches = [SECRET, SECOND_SECRET].iter().any(|secret| {
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
pub(super) fn expected_answers(
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
