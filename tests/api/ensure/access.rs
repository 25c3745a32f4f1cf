//! Who may call ensure (the ensure token, loopback), `serve`'s refusal to expose it, and the `ensure` command.

use super::*;

const READ_TOKEN: &str = "read-token-for-lookups";

const ENSURE_TOKEN: &str = "ensure-token-for-checkout";

/// With `ENSURE_API_TOKEN` set, ensure needs exactly it: no token, a wrong one and the
/// read token are all 401 before Stripe is asked; lookups do not take the ensure token.
async fn ensure_token_is_required_and_is_not_the_read_token(backend: Backend) {
    let fake = FakeStripe::start().await;
    let config = AppConfig {
        read_token: Some(READ_TOKEN.into()),
        ensure_token: Some(ENSURE_TOKEN.into()),
        stripe_api: Some(fake.config(TEST_KEY)),
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;
    let url = format!("{}/v1/customers/ensure", app.base);
    let body = json!({"account": A, "email": ADA}).to_string();
    let post = |token: Option<&'static str>| {
        let mut request = app.client.post(&url).body(body.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.expect("ensure request") }
    };

    for token in [None, Some("ensure-token-for-checkout2"), Some(READ_TOKEN)] {
        let refused = post(token).await;
        assert_eq!(
            refused
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{token:?}"
        );
        assert_eq!(
            into_json(refused).await,
            (StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"})),
            "{token:?}"
        );
    }
    assert!(fake.creations().is_empty());
    let (status, created) = into_json(post(Some(ENSURE_TOKEN)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    let lookup = format!(
        "{}/v1/customers?account={A}&email={}&livemode=false",
        app.base,
        crate::helpers::encode(ADA)
    );
    let with_ensure_token = app
        .client
        .get(&lookup)
        .bearer_auth(ENSURE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(with_ensure_token.status(), StatusCode::UNAUTHORIZED);
    let (status, found) = into_json(
        app.client
            .get(&lookup)
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["customer_id"], created["customer_id"]);
}

/// Without `ENSURE_API_TOKEN`, the read token does not guard ensure either: the suite's
/// client is on loopback, where an untokened ensure is open.
async fn without_an_ensure_token_a_loopback_client_needs_none(backend: Backend) {
    let fake = FakeStripe::start().await;
    let config = AppConfig {
        read_token: Some(READ_TOKEN.into()),
        stripe_api: Some(fake.config(TEST_KEY)),
        ..AppConfig::default()
    };
    let app = TestApp::spawn_with(backend, config).await;

    let (status, body) = ensure(&app, &json!({"account": A, "email": ADA})).await;

    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Waits, at most `bound`, for a child to exit by itself; kills it otherwise.
fn exit_within(
    child: &mut std::process::Child,
    bound: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The tables in a test database, without creating it (an SQLite file that does not
/// exist has none).
async fn tables(db: &TestDb, backend: Backend) -> Vec<String> {
    match backend {
        Backend::Sqlite => {
            let path = db.url.strip_prefix("sqlite:").unwrap();
            if !std::path::Path::new(path).exists() {
                return Vec::new();
            }
            db.fetch_strings("SELECT name FROM sqlite_master WHERE type = 'table'")
                .await
        }
        Backend::Postgres => {
            db.fetch_strings(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public'",
            )
            .await
        }
    }
}

/// The real binary: bound beyond loopback with a Stripe key and no ensure token, `serve`
/// refuses to start (exit 2, one line naming the fix, no secret) before it binds or
/// migrates; with the token it starts and ensure takes exactly that token.
async fn serve_beyond_loopback_with_a_stripe_key_needs_an_ensure_token(backend: Backend) {
    use std::io::Read;
    use std::process::Stdio;

    let fake = FakeStripe::start().await;
    let db = TestDb::create(backend).await;
    let exposed = |command: &mut std::process::Command| {
        command
            .env("LISTEN_ADDR", "0.0.0.0:0")
            .env("STRIPE_SECRET_KEY", TEST_KEY)
            .env("STRIPE_API_BASE", &fake.base);
    };

    let mut refused = serve_command(&db.url);
    exposed(&mut refused);
    let mut child = refused
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let exit = tokio::task::block_in_place(|| exit_within(&mut child, crate::helpers::HANG));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(2),
        "still serving? {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("ENSURE_API_TOKEN"),
        "{stderr}"
    );
    for secret in [TEST_KEY, crate::helpers::SECRET] {
        assert!(!stderr.contains(secret), "{stderr}");
    }
    assert_eq!(tables(&db, backend).await, Vec::<String>::new(), "migrated");

    let mut with_token = serve_command(&db.url);
    exposed(&mut with_token);
    with_token.env("ENSURE_API_TOKEN", ENSURE_TOKEN);
    let served = tokio::task::block_in_place(|| Served::spawn(with_token));
    let port = served.addr().rsplit_once(':').unwrap().1.to_owned();
    let url = format!("http://127.0.0.1:{port}/v1/customers/ensure");
    let client = reqwest::Client::new();
    let body = json!({"account": A, "email": ADA}).to_string();
    let without = client.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(without.status(), StatusCode::UNAUTHORIZED);
    let with = client
        .post(&url)
        .bearer_auth(ENSURE_TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), StatusCode::CREATED);
    assert_eq!(fake.creations().len(), 1);
}

/// The command: the same body on stdout; 2 for a person's mistake, 1 when Stripe fails,
/// with one line on stderr that never holds the key.
async fn ensure_command_prints_the_body_and_exits_by_outcome(backend: Backend) {
    let fake = FakeStripe::start().await;
    let db = TestDb::create(backend).await;
    let store: Store = db.store().await;
    let run = |args: &'static [&'static str], key: Option<&'static str>| {
        let mut command = command(&db.url);
        command
            .arg("ensure")
            .args(args)
            .env("STRIPE_API_BASE", &fake.base)
            .env("STRIPE_API_TIMEOUT_SECS", "5");
        if let Some(key) = key {
            command.env("STRIPE_SECRET_KEY", key);
        }
        async move {
            tokio::task::spawn_blocking(move || command.output().expect("run ensure"))
                .await
                .unwrap()
        }
    };
    let args: &'static [&'static str] = &[
        "--account",
        A,
        "--email",
        "Ada.Lovelace@Example.com",
        "--name",
        "Ada",
    ];

    let first = run(args, Some(TEST_KEY)).await;
    let second = run(args, Some(TEST_KEY)).await;

    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let printed: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(printed["created"], true);
    assert_eq!(printed["account"], A);
    assert_eq!(printed["name"], "Ada");
    let again: Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(again["created"], false);
    assert_eq!(again["customer_id"], printed["customer_id"]);
    assert_eq!(fake.creations().len(), 1);
    assert_eq!(fake.creations()[0].header("stripe-account"), Some(A));
    assert_eq!(store.status().await.unwrap().customers, 1);

    let one_line = |output: &std::process::Output, code: i32| {
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(code), "{text}");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            !text.contains(TEST_KEY) && !text.contains("panicked"),
            "{text}"
        );
        text
    };
    let no_key = run(&["--account", B, "--email", ADA], None).await;
    assert!(one_line(&no_key, 2).contains("STRIPE_SECRET_KEY"));
    let bad_mode = run(
        &["--account", B, "--email", ADA, "--livemode", "yes"],
        Some(TEST_KEY),
    )
    .await;
    assert!(one_line(&bad_mode, 2).contains("livemode"));
    let mismatch = run(
        &["--account", B, "--email", ADA, "--livemode", "true"],
        Some(TEST_KEY),
    )
    .await;
    assert!(one_line(&mismatch, 2).contains("livemode"));
    let bad_key = run(
        &["--account", B, "--email", ADA],
        Some("pk_test_not_a_secret_key"),
    )
    .await;
    assert!(!one_line(&bad_key, 2).contains("pk_test_not_a_secret_key"));

    fake.set(Behavior::Fail {
        status: 402,
        body: stripe_error_quoting(ADA),
    });
    let refused = run(&["--account", B, "--email", ADA], Some(TEST_KEY)).await;
    let text = one_line(&refused, 1);
    assert!(text.contains("email_invalid"), "{text}");
    for private in [STRIPE_SAYS, MASKED_KEY, ADA] {
        assert!(!text.contains(private), "{private} in {text}");
    }
    assert!(refused.stdout.is_empty());
}

on_both_backends!(
    ensure_token_is_required_and_is_not_the_read_token,
    without_an_ensure_token_a_loopback_client_needs_none,
    serve_beyond_loopback_with_a_stripe_key_needs_an_ensure_token,
    ensure_command_prints_the_body_and_exits_by_outcome,
);
