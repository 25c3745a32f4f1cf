//! Bounded memory under hostile clients: bodies are paid for from a process-wide budget
//! before they are read, and a request without a well-formed signature header is answered
//! before its body is read at all.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    created, eventually, into_json, metric, now, post_signed, sign, AppConfig, Backend, TestApp,
    TestDb, HANG, SECRET,
};
use crate::process::{serve_command, Served};

const MIB: usize = 1_048_576;
const IN_FLIGHT: &str = "stripe_projector_body_bytes_in_flight";
const OVERLOADED: &str = r#"stripe_projector_webhook_requests_total{outcome="overloaded"}"#;

/// The resident memory of a process, in bytes, as the kernel counts it.
fn vm_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    kib * 1024
}

async fn scrape(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Scrapes `/metrics` until `done` holds for the exposition, at most `HANG`.
async fn wait_for_metrics(
    client: &reqwest::Client,
    base: &str,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    eventually(what, || async {
        let exposition = scrape(client, base).await;
        if done(&exposition) {
            Ok(exposition)
        } else {
            Err(exposition)
        }
    })
    .await
}

/// A client that sent a request head and all of its body but the last byte, then
/// stalled; reading it never blocks.
struct Stalled {
    stream: TcpStream,
    answer: Vec<u8>,
    closed: bool,
}

impl Stalled {
    fn open(addr: &str, head: &[u8], body: &[u8]) -> Self {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_write_timeout(Some(HANG)).unwrap();
        stream.write_all(head).expect("write the head");
        // A refused request's connection may be closed under the rest of its body.
        if let Err(error) = stream.write_all(&body[..body.len() - 1]) {
            assert_ne!(error.kind(), ErrorKind::WouldBlock, "a hang");
            assert_ne!(error.kind(), ErrorKind::TimedOut, "a hang");
        }
        stream.set_nonblocking(true).unwrap();
        Self {
            stream,
            answer: Vec::new(),
            closed: false,
        }
    }

    /// Takes whatever the server has sent so far.
    fn poll(&mut self) {
        let mut buffer = [0u8; 4096];
        while !self.closed {
            match self.stream.read(&mut buffer) {
                Ok(0) => self.closed = true,
                Ok(n) => self.answer.extend_from_slice(&buffer[..n]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::ConnectionReset => self.closed = true,
                Err(error) => panic!("read: {error}"),
            }
        }
    }

    /// A whole answer: its head, and its JSON body up to the closing brace.
    fn answered(&self) -> bool {
        let text = String::from_utf8_lossy(&self.answer);
        text.split_once("\r\n\r\n")
            .is_some_and(|(_, body)| body.trim_end().ends_with('}'))
    }
}

/// 150 clients each announce a 1 MiB delivery with a well-formed signature, send all of
/// it but its last byte and stall. With a 16 MiB budget, 16 of them are held (up to the
/// client timeout) and the other 134 get 503 `overloaded` at once; the process's resident
/// memory grows by the budget and per-connection buffers, not by 150 bodies. Meanwhile a
/// delivery without a signature is still answered 400 (header checks come before the
/// budget). Once the stalled clients leave, the budget is free again and a normal
/// delivery is stored.
async fn stalled_bodies_cannot_grow_memory_past_the_budget(backend: Backend) {
    const CLIENTS: usize = 150;
    const HELD: usize = 16;
    let db = TestDb::create(backend).await;
    let mut command = serve_command(&db.url);
    command
        .env("MAX_BODY_BYTES_IN_FLIGHT", (HELD * MIB).to_string())
        // The held clients stay held for the whole test.
        .env("CLIENT_TIMEOUT_SECS", "600");
    let served = Served::spawn(command);
    let (client, base) = (reqwest::Client::new(), served.base.clone());
    let pid = served.child.id();
    // Settled first: the registry and one request's worth of buffers exist.
    wait_for_metrics(&client, &base, "the gauge at zero", |text| {
        metric(text, IN_FLIGHT) == Some(0.0)
    })
    .await;
    let rss_before = vm_rss(pid);

    let mut body = created("evt_big", "acct_big", "cus_big", "big@example.com", 1)
        .to_string()
        .into_bytes();
    body.resize(MIB, b' ');
    let addr = served.addr().to_owned();
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: {addr}\r\nStripe-Signature: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {MIB}\r\n\r\n",
        sign(SECRET, now(), &body)
    );
    let mut stalled = tokio::task::spawn_blocking(move || {
        (0..CLIENTS)
            .map(|_| Stalled::open(&addr, head.as_bytes(), &body))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();

    let exposition = wait_for_metrics(&client, &base, "16 held, 134 refused", |text| {
        metric(text, IN_FLIGHT) == Some((HELD * MIB) as f64)
            && metric(text, OVERLOADED) == Some((CLIENTS - HELD) as f64)
    })
    .await;
    // The held bodies, plus room for each connection's buffers and what the allocator
    // keeps; without the budget every one of the clients would hold its whole body.
    let rss_held = vm_rss(pid);
    assert!(
        rss_held < rss_before + HELD * MIB + 80 * MIB,
        "resident memory grew from {rss_before} to {rss_held} bytes\n{exposition}"
    );

    // Every refused client has its whole answer without sending the rest of its body; the
    // held ones have none.
    let deadline = Instant::now() + HANG;
    stalled = tokio::task::spawn_blocking(move || loop {
        stalled.iter_mut().for_each(Stalled::poll);
        if stalled.iter().filter(|s| s.answered()).count() >= CLIENTS - HELD {
            return stalled;
        }
        assert!(
            Instant::now() < deadline,
            "the refused clients got no answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    })
    .await
    .unwrap();
    let (answered, held): (Vec<&Stalled>, Vec<&Stalled>) =
        stalled.iter().partition(|s| s.answered());
    assert_eq!((answered.len(), held.len()), (CLIENTS - HELD, HELD));
    for refused in answered {
        let text = String::from_utf8_lossy(&refused.answer).to_lowercase();
        assert!(text.starts_with("http/1.1 503"), "{text}");
        assert!(text.contains("\r\nretry-after: 1\r\n"), "{text}");
        assert!(text.contains(r#""error":"overloaded""#), "{text}");
    }
    for held in held {
        assert!(
            held.answer.is_empty() && !held.closed,
            "a held client was answered"
        );
    }

    // While the budget is spent: header checks still answer first, then the budget.
    let small = created("evt_small", "acct_big", "cus_small", "s@example.com", 2).to_string();
    let (status, answer) = into_json(
        client
            .post(format!("{base}/webhooks/stripe"))
            .body(small.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"], "missing_signature");
    let signed = post_signed(&client, &base, small.as_bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(signed.headers()["retry-after"], "1");
    let (status, answer) = into_json(signed).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"], "overloaded");
    assert!(answer["message"].is_string(), "{answer}");

    drop(stalled);
    wait_for_metrics(&client, &base, "the budget released", |text| {
        metric(text, IN_FLIGHT) == Some(0.0)
    })
    .await;
    let (status, answer) = into_json(
        post_signed(&client, &base, small.as_bytes())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::OK,
            json!({"status": "stored", "event_id": "evt_small"})
        )
    );
    let store = db.store().await;
    assert!(store.event("evt_small").await.unwrap().is_some());
    assert!(store.event("evt_big").await.unwrap().is_none());
}

/// Sends a request head (and no body) and reads the answer until the server closes.
fn head_only_exchange(addr: &str, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(HANG)).unwrap();
    stream.write_all(head.as_bytes()).expect("write");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::ConnectionReset => {}
        Err(error) => panic!("the server kept the connection open ({error}): a hang"),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A request that announces a body and never sends it is answered on its head alone when
/// the head decides: 413 for a declared length over the limit (first, whatever the
/// header), 400 for a missing or malformed `Stripe-Signature`. Only a well-formed header
/// goes on to wait for the body, and gets 408 when it never comes.
async fn signature_header_is_checked_before_the_body_is_read(backend: Backend) {
    const LIMIT: usize = 2048;
    let app = TestApp::spawn_with(
        backend,
        AppConfig {
            max_body_bytes: LIMIT,
            // Short, so a request that waits for its body ends soon.
            client_timeout: Duration::from_secs(1),
            ..AppConfig::default()
        },
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let cases = [
        (LIMIT + 1, None, "413", "payload_too_large"),
        (LIMIT + 1, Some("garbage"), "413", "payload_too_large"),
        (LIMIT, None, "400", "missing_signature"),
        (LIMIT, Some("garbage"), "400", "malformed_signature"),
        (LIMIT, Some("t=1"), "400", "malformed_signature"),
        (LIMIT, Some("t=1,v1=00"), "408", "request_timeout"),
    ];
    for (length, signature, status, code) in cases {
        let signature = signature
            .map(|value| format!("Stripe-Signature: {value}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: {addr}\r\n{signature}\
             Content-Length: {length}\r\n\r\n"
        );
        let addr = addr.clone();
        let answer = tokio::task::spawn_blocking(move || head_only_exchange(&addr, &head))
            .await
            .unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{length} {signature}: {answer}"
        );
        assert!(answer.contains(&format!(r#""error":"{code}""#)), "{answer}");
    }
    // Chunked, no chunk ever sent: the same.
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let answer = tokio::task::spawn_blocking(move || head_only_exchange(&addr, &head))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains(r#""error":"missing_signature""#),
        "{answer}"
    );
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK);
}

on_both_backends!(
    stalled_bodies_cannot_grow_memory_past_the_budget,
    signature_header_is_checked_before_the_body_is_read,
);
