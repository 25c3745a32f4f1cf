//! A PostgreSQL server that answers, but too slowly to be of use: the real `serve` reaches
//! it through a proxy in this process that holds back every chunk of bytes, either way.
//! Requests that need the database answer 503 `store_unavailable` instead of waiting for
//! it, and once the network is fast again the same process answers 200s again.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::helpers::{
    created, into_json, post_signed, postgres_configured, wait_until_ready, Backend, TestDb, HANG,
};
use crate::process::{serve_command, Served};

/// A TCP proxy to one upstream address that forwards bytes both ways, each chunk held
/// back by the current delay, if any. Turning the delay off releases the held chunks at
/// once, in order.
struct SlowProxy {
    addr: SocketAddr,
    delay: watch::Sender<Option<Duration>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (delay, delays) = watch::channel(None);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, delays.clone()));
                tokio::spawn(forward(server_read, client_write, delays.clone()));
            }
        });
        Self {
            addr,
            delay,
            accepting,
        }
    }

    /// Holds back every chunk, from now on, by `delay`; `None` forwards at once.
    fn set_delay(&self, delay: Option<Duration>) {
        self.delay.send_replace(delay);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut delay: watch::Receiver<Option<Duration>>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let held = *delay.borrow_and_update();
        if let Some(held) = held {
            tokio::select! {
                () = tokio::time::sleep(held) => {}
                _ = delay.wait_for(Option::is_none) => {}
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// `url` with its `host:port` replaced by `addr`, keeping user, database and options.
fn through(url: &str, addr: SocketAddr) -> String {
    let start = url.find("://").expect("a URL with a scheme") + 3;
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..end];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    format!(
        "{}{}{addr}{}",
        &url[..start],
        &authority[..host_start],
        &url[end..]
    )
}

/// The `host:port` of a `postgres://` URL.
fn upstream(url: &str) -> String {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url).expect("a PostgreSQL URL");
    format!("{}:{}", options.get_host(), options.get_port())
}

/// PostgreSQL behind a network that holds every chunk back for as long as a test may
/// wait: deliveries and lookups answer 503 `store_unavailable` (never a hang, never a
/// 2xx), `/readyz` answers 503 and `/healthz` 200; once the network is fast again the
/// same process is ready and stores and finds the same events, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_that_answers_slowly_gets_503s_and_the_process_recovers() {
    if !postgres_configured() {
        return;
    }
    let db = TestDb::create(Backend::Postgres).await;
    let proxy = SlowProxy::start(upstream(&db.url)).await;
    let url = through(&db.url, proxy.addr);
    let served = tokio::task::block_in_place(|| Served::spawn(serve_command(&url)));
    let client = reqwest::Client::new();
    let base = served.base.clone();
    let event = |i: usize| {
        created(
            &format!("evt_slow_{i}"),
            "acct_slow",
            &format!("cus_slow_{i}"),
            &format!("s{i}@example.com"),
            1_700_000_000,
        )
        .to_string()
    };
    let deliver = |i: usize| {
        let request = post_signed(&client, &base, event(i).as_bytes());
        async move { into_json(request.send().await.expect("webhook request")).await }
    };
    let get = |path: String| {
        let request = client.get(format!("{base}{path}"));
        async move { into_json(request.send().await.expect("GET")).await }
    };
    let lookup = |i: usize| {
        get(format!(
            "/v1/customers?account=acct_slow&email=s{i}%40example.com&livemode=false"
        ))
    };

    assert_eq!(deliver(0).await.0, StatusCode::OK);
    assert_eq!(lookup(0).await.0, StatusCode::OK);

    // No request may wait this long: one that does has hung.
    proxy.set_delay(Some(HANG));
    let deliveries =
        futures_util::future::join_all((1..=4).map(|i| tokio::time::timeout(HANG, deliver(i))));
    let lookups =
        futures_util::future::join_all((0..2).map(|i| tokio::time::timeout(HANG, lookup(i))));
    let (deliveries, lookups) = tokio::join!(deliveries, lookups);
    for answer in deliveries {
        let (status, body) = answer.expect("a delivery hung on the slow database");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "store_unavailable", "{body}");
    }
    for answer in lookups {
        let (status, body) = answer.expect("a lookup hung on the slow database");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "store_unavailable", "{body}");
    }
    let (status, body) = tokio::time::timeout(HANG, get("/readyz".to_owned()))
        .await
        .expect("/readyz hung on the slow database");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(get("/healthz".to_owned()).await.0, StatusCode::OK);

    proxy.set_delay(None);
    wait_until_ready(&client, &base).await;
    for i in 1..=4 {
        let (status, body) = tokio::time::timeout(HANG, deliver(i))
            .await
            .expect("a delivery hung after the network recovered");
        assert_eq!(
            status,
            StatusCode::OK,
            "Stripe's retry of evt_slow_{i}: {body}"
        );
        // A statement abandoned by the server's bound was still sent: the database may
        // have committed it once the held bytes arrived, and then the retry is a duplicate.
        assert!(
            body["status"] == json!("stored") || body["status"] == json!("duplicate"),
            "{body}"
        );
    }
    let (status, body) = tokio::time::timeout(HANG, lookup(4))
        .await
        .expect("a lookup hung after the network recovered");
    assert_eq!(
        (status, &body["customer_id"]),
        (StatusCode::OK, &json!("cus_slow_4"))
    );
    let events = db
        .fetch_strings("SELECT event_id FROM events ORDER BY event_id")
        .await;
    assert_eq!(
        events,
        (0..=4).map(|i| format!("evt_slow_{i}")).collect::<Vec<_>>()
    );
    let mut served = served;
    assert!(
        served.child.try_wait().expect("try_wait").is_none(),
        "serve exited"
    );
}

#[test]
fn through_replaces_only_host_and_port() {
    let addr: SocketAddr = "127.0.0.1:4321".parse().unwrap();
    assert_eq!(
        through(
            "postgres://postgres@127.0.0.1:5432/db_1?sslmode=disable",
            addr
        ),
        "postgres://postgres@127.0.0.1:4321/db_1?sslmode=disable"
    );
    assert_eq!(
        through("postgres://u:p@localhost/db", addr),
        "postgres://u:p@127.0.0.1:4321/db"
    );
}
