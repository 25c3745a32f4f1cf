//! Hostile input: whatever arrives, every answer is one docs/api.md documents (400 with a
//! documented code, 401, 404, 409, 413, 200), never a 5xx on a healthy database, never a
//! panic (the server keeps answering `/healthz`), never a hang, and never an error body
//! that repeats a secret or the read token.
//!
//! The property test runs `property::DEFAULT_CASES` cases; `PROPTEST_CASES=100000 cargo
//! test --test api hostile` runs more (see docs/architecture.md, "Guarantees").

mod bodies;
mod generators;
mod headers;
mod oracle;
mod property;
mod replays;
mod slow_clients;

use std::time::Duration;

use crate::helpers::{AppConfig, SECOND_SECRET, SECRET};

/// A small limit keeps the bodies at and around it cheap to generate.
const LIMIT: usize = 2048;
const READ_TOKEN: &str = "read_token_hostile_suite";

fn hostile_config() -> AppConfig {
    AppConfig {
        secrets: vec![SECOND_SECRET.to_owned(), SECRET.to_owned()],
        max_body_bytes: LIMIT,
        read_token: Some(READ_TOKEN.to_owned()),
        client_timeout: Duration::from_secs(1),
        ..AppConfig::default()
    }
}

/// No answer ever carries a secret or the token, whatever was asked.
fn assert_no_secret(text: &str) {
    for secret in [SECRET, SECOND_SECRET, READ_TOKEN] {
        assert!(!text.contains(secret), "an answer repeats a secret: {text}");
    }
}
