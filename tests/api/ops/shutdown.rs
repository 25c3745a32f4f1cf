//! Graceful shutdown: SIGTERM with deliveries genuinely in flight.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use crate::helpers::{created, now, post_signed, sign, Backend, TestDb, HANG, SECRET};
use crate::process::{serve_command, Served};

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
        stream.set_read_timeout(Some(HANG)).unwrap();
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
            let answer = post_signed(&client, &base, &body).send().await;
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
