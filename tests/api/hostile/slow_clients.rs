//! Clients that stall mid-head or mid-body are cut off while others are served.

use std::io::{Read, Write};
use std::net::TcpStream;

use reqwest::StatusCode;
use serde_json::json;

use super::hostile_config;
use crate::helpers::{created, now, sign, Backend, TestApp, HANG, SECRET};

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

on_both_backends!(slow_clients_are_cut_off_while_others_are_served);
