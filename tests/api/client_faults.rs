//! Clients that stall or leave mid-body: answered and counted as the client's doing
//! (`request_timeout`, `client_closed`), never as an invalid payload.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Stdio;

use crate::helpers::{eventually, metric, Backend, TestDb, HANG};
use crate::process::{serve_command, Served};

/// A request head declaring 100 bytes of body, and the first few of them.
fn partial_request(path: &str, extra_header: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n{extra_header}\r\n{{\"id\":"
    )
    .into_bytes()
}

/// Sends part of a request, then waits for the server's answer and its close. The read
/// timeout only turns a hang into a failure.
fn stall(addr: &str, partial: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(HANG)).unwrap();
    stream.write_all(partial).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the server answers a stalled body and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends part of a request and closes the connection.
fn leave(addr: &str, partial: &[u8]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(partial).unwrap();
    stream.shutdown(Shutdown::Both).unwrap();
}

async fn exposition(client: &reqwest::Client, base: &str) -> String {
    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

/// Polls `/metrics` until `series` reaches `value`.
async fn wait_for_metric(client: &reqwest::Client, base: &str, series: &str, value: f64) {
    eventually(&format!("{series} reaches {value}"), || async {
        let text = exposition(client, base).await;
        match metric(&text, series) {
            Some(found) if found == value => Ok(()),
            _ => Err(text),
        }
    })
    .await
}

async fn stalled_and_closed_bodies_are_the_clients_outcomes(backend: Backend) {
    let db = TestDb::create(backend).await;
    let folder = tempfile::tempdir().unwrap();
    let log = folder.path().join("serve.log");
    let mut command = serve_command(&db.url);
    command
        .env("CLIENT_TIMEOUT_SECS", "1")
        .env("RUST_LOG", "info")
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let served = Served::spawn(command);
    let client = reqwest::Client::new();
    let webhook = partial_request("/webhooks/stripe", "Stripe-Signature: t=1,v1=00\r\n");
    let ensure = partial_request("/v1/customers/ensure", "");

    for (partial, metric_name) in [
        (&webhook, "stripe_projector_webhook_requests_total"),
        (&ensure, "stripe_projector_ensure_total"),
    ] {
        let answer = stall(served.addr(), partial);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
        let timed_out = format!(r#"{metric_name}{{outcome="request_timeout"}}"#);
        wait_for_metric(&client, &served.base, &timed_out, 1.0).await;

        leave(served.addr(), partial);
        let closed = format!(r#"{metric_name}{{outcome="client_closed"}}"#);
        wait_for_metric(&client, &served.base, &closed, 1.0).await;

        let text = exposition(&client, &served.base).await;
        let invalid = format!(r#"{metric_name}{{outcome="invalid_payload"}}"#);
        assert_eq!(metric(&text, &invalid), Some(0.0), "{text}");
        assert_eq!(metric(&text, &timed_out), Some(1.0), "{text}");
    }

    let mut served = served;
    served.terminate();
    assert!(served.wait_exit(HANG).is_some());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("invalid_payload"), "{logged}");
    assert_eq!(
        logged.matches(r#"code="client_closed""#).count(),
        2,
        "{logged}"
    );
    assert_eq!(
        logged.matches(r#"code="request_timeout""#).count(),
        2,
        "{logged}"
    );
}

on_both_backends!(stalled_and_closed_bodies_are_the_clients_outcomes);
