//! Bodies at and over the size limit, with a declared length and chunked.

use std::io::{Read, Write};
use std::net::TcpStream;

use reqwest::StatusCode;
use serde_json::json;

use super::{hostile_config, LIMIT};
use crate::helpers::{created, AppConfig, Backend, TestApp, HANG};

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

on_both_backends!(
    bodies_at_and_over_the_default_limit,
    chunked_bodies_over_the_limit_are_refused_while_reading,
);
