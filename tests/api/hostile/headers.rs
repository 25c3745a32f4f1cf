//! Signature headers with thousands of entries, and heads past actix's own limits.

use std::io::{Read, Write};
use std::net::TcpStream;

use reqwest::StatusCode;
use serde_json::json;

use super::generators::many_v1;
use crate::helpers::{created, now, sign, Backend, TestApp, HANG, SECRET};

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

on_both_backends!(
    thousands_of_v1_entries_are_malformed_not_checked,
    heads_beyond_actix_limits_are_refused_by_actix,
);
