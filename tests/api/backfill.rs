//! `backfill` through the real binary, against the fake Stripe and real databases.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fake_stripe::{customer_object, Failure, FakeStripe, TEST_KEY};
use crate::helpers::{encode, eventually, now, AppConfig, Backend, TestApp, TestDb, PLATFORM};
use crate::process::command;

pub(crate) const A: &str = "acct_1BackfillAaaaaaaa";
pub(crate) const B: &str = "acct_1BackfillBbbbbbbb";

/// The binary, reading Stripe through `fake` with the suite's test key.
pub(crate) fn sync_command(db: &TestDb, fake: &FakeStripe, args: &[&str]) -> Command {
    let mut command = command(&db.url);
    command
        .env("STRIPE_SECRET_KEY", TEST_KEY)
        .env("STRIPE_API_BASE", &fake.base)
        .args(args);
    command
}

/// Runs a command to its end, off the runtime's threads (the fake answers on them).
pub(crate) async fn finish(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run the binary"))
        .await
        .unwrap()
}

/// Exit code, the JSON line of counts, and stderr.
pub(crate) fn outcome(output: &Output) -> (Option<i32>, Value, String) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let counts = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    (output.status.code(), counts, stderr)
}

fn customer(id: &str, email: &str, created: i64) -> Value {
    customer_object(id, Some(email), None, created, false)
}

/// `count` customers of `account` (`None`: the platform), `<prefix>NNN@x.io`.
fn add_customers(fake: &FakeStripe, account: Option<&str>, prefix: &str, count: usize) {
    for n in 0..count {
        let id = format!("cus_{prefix}{n:04}");
        fake.add_customer(
            account,
            customer(
                &id,
                &format!("{prefix}{n:04}@x.io"),
                1_600_000_000 + n as i64,
            ),
        );
    }
}

async fn found(app: &TestApp, account: &str, email: &str) -> Option<String> {
    let (status, body) = app
        .lookup(&format!(
            "account={account}&email={}&livemode=false",
            encode(email)
        ))
        .await;
    (status == StatusCode::OK).then(|| body["customer_id"].as_str().unwrap().to_owned())
}

async fn events_in_log(app: &TestApp) -> i64 {
    app.store.status().await.unwrap().events
}

/// Customers of two accounts and of the platform, on several pages: each recorded once
/// on its own account, the platform's without `Stripe-Account`. A second run right after
/// records nothing.
async fn every_customer_of_each_account_and_the_platform_is_recorded_once(backend: Backend) {
    let fake = FakeStripe::start().await;
    add_customers(&fake, Some(A), "a", 250);
    add_customers(&fake, Some(B), "b", 5);
    add_customers(&fake, None, "p", 3);
    let app = TestApp::spawn(backend).await;
    let args = ["backfill", "--account", A, "--account", B, "--platform"];

    let (code, counts, stderr) = outcome(&finish(sync_command(&app.db, &fake, &args)).await);

    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        counts,
        json!({"accounts": 3, "failed": 0, "customers": 258, "recorded": 258,
               "unchanged": 0, "deleted": 0, "requests": 5})
    );
    assert_eq!(
        found(&app, A, "a0000@x.io").await.as_deref(),
        Some("cus_a0000")
    );
    assert_eq!(
        found(&app, A, "a0249@x.io").await.as_deref(),
        Some("cus_a0249")
    );
    assert_eq!(
        found(&app, B, "b0004@x.io").await.as_deref(),
        Some("cus_b0004")
    );
    assert_eq!(
        found(&app, PLATFORM, "p0002@x.io").await.as_deref(),
        Some("cus_p0002")
    );
    assert_eq!(
        found(&app, B, "a0000@x.io").await,
        None,
        "accounts never mix"
    );
    let requests = fake.requests();
    let on = |account: Option<&str>| {
        requests
            .iter()
            .filter(|r| r.header("stripe-account") == account)
            .count()
    };
    assert_eq!((on(Some(A)), on(Some(B)), on(None)), (3, 1, 1));
    assert_eq!(events_in_log(&app).await, 258);

    let (code, counts, stderr) = outcome(&finish(sync_command(&app.db, &fake, &args)).await);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(counts["recorded"], 0);
    assert_eq!(counts["unchanged"], 258);
    assert_eq!(
        events_in_log(&app).await,
        258,
        "a second pass appends nothing"
    );

    let status = crate::process::run(&app.db.url, &["status"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let passes = status["backfill"].as_array().unwrap();
    assert_eq!(passes.len(), 3);
    let a = passes.iter().find(|p| p["account"] == A).unwrap();
    assert_eq!(
        (a["pass"].as_i64(), a["pages"].as_i64()),
        (Some(2), Some(3))
    );
    assert!(a["completed_at"].is_i64());
}

/// A webhook event older than the reading loses to the snapshot whichever arrives first;
/// one from after the reading wins whichever arrives first.
async fn a_snapshot_outranks_what_it_reflects_and_loses_to_later_changes(backend: Backend) {
    let fake = FakeStripe::start().await;
    for id in [
        "cus_old_first",
        "cus_old_after",
        "cus_new_first",
        "cus_new_after",
    ] {
        fake.add_customer(
            Some(A),
            customer(id, &format!("{id}@stripe.io"), 1_600_000_000),
        );
    }
    let app = TestApp::spawn(backend).await;
    let updated = |id: &str, email: &str, created: i64| {
        json!({"id": format!("evt_{id}_{created}"), "object": "event", "account": A,
               "type": "customer.updated", "created": created, "livemode": false,
               "data": {"object": customer(id, email, 1_600_000_000)}})
    };
    let old = now() - 1_000;
    let later = now() + 1_000;
    for (id, created) in [("cus_old_first", old), ("cus_new_first", later)] {
        let (status, _) = app
            .deliver_json(&updated(id, &format!("{id}@webhook.io"), created))
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    let (code, _, stderr) =
        outcome(&finish(sync_command(&app.db, &fake, &["backfill", "--account", A])).await);
    assert_eq!(code, Some(0), "{stderr}");
    for (id, created) in [("cus_old_after", old), ("cus_new_after", later)] {
        let (status, _) = app
            .deliver_json(&updated(id, &format!("{id}@webhook.io"), created))
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    for id in ["cus_old_first", "cus_old_after"] {
        assert_eq!(
            found(&app, A, &format!("{id}@stripe.io")).await.as_deref(),
            Some(id)
        );
        assert_eq!(found(&app, A, &format!("{id}@webhook.io")).await, None);
    }
    for id in ["cus_new_first", "cus_new_after"] {
        assert_eq!(
            found(&app, A, &format!("{id}@webhook.io")).await.as_deref(),
            Some(id)
        );
        assert_eq!(found(&app, A, &format!("{id}@stripe.io")).await, None);
    }
}

/// A customer held as live that the listing does not return is fetched: Stripe's
/// `"deleted": true` is recorded as a deletion; a 404 is reported and changes nothing.
async fn deletions_are_found_and_a_404_is_never_taken_for_one(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.add_customer(Some(A), customer("cus_live", "live@x.io", 1));
    fake.add_customer(Some(A), customer("cus_gone", "gone@x.io", 2));
    fake.delete_customer(Some(A), "cus_gone");
    let app = TestApp::spawn(backend).await;
    for (id, email) in [("cus_gone", "gone@x.io"), ("cus_unknown", "unknown@x.io")] {
        let created = json!({"id": format!("evt_{id}"), "object": "event", "account": A,
                             "type": "customer.created", "created": 10, "livemode": false,
                             "data": {"object": customer(id, email, 1)}});
        assert_eq!(app.deliver_json(&created).await.0, StatusCode::OK);
    }

    let (code, counts, stderr) =
        outcome(&finish(sync_command(&app.db, &fake, &["backfill", "--account", A])).await);

    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(counts["deleted"], 1, "{counts}");
    assert_eq!(found(&app, A, "gone@x.io").await, None);
    assert_eq!(
        found(&app, A, "live@x.io").await.as_deref(),
        Some("cus_live")
    );
    assert_eq!(
        found(&app, A, "unknown@x.io").await.as_deref(),
        Some("cus_unknown")
    );
    assert!(stderr.contains("cus_unknown"), "{stderr}");
    let fetched: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/customers/"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        fetched,
        ["/v1/customers/cus_gone", "/v1/customers/cus_unknown"]
    );
}

/// Stripe refuses the third page: the account fails alone (exit 1, named on stderr) with
/// two pages committed; the next run starts after page 2 and records each customer once.
async fn a_failed_page_resumes_after_the_last_committed_page(backend: Backend) {
    let fake = FakeStripe::start().await;
    add_customers(&fake, Some(A), "a", 250);
    add_customers(&fake, Some(B), "b", 3);
    let app = TestApp::spawn(backend).await;
    // One account at a time: A's pages 1 and 2 are answered, its third is refused.
    fake.fail_after(
        2,
        [Failure::new(
            403,
            "invalid_request_error",
            Some("account_invalid"),
        )],
    );
    let args = [
        "backfill",
        "--account",
        A,
        "--account",
        B,
        "--concurrency",
        "1",
    ];

    let (code, counts, stderr) = outcome(&finish(sync_command(&app.db, &fake, &args)).await);

    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&format!("failed: {A}")), "{stderr}");
    assert!(stderr.contains("HTTP 403"), "{stderr}");
    assert!(!stderr.contains(TEST_KEY), "{stderr}");
    assert_eq!(counts["failed"], 1);
    assert_eq!(counts["recorded"], 203, "{counts}");
    let before = fake.requests().len();

    let (code, counts, stderr) = outcome(&finish(sync_command(&app.db, &fake, &args)).await);

    assert_eq!(code, Some(0), "{stderr}");
    let resumed = &fake.requests()[before];
    assert_eq!(resumed.header("stripe-account"), Some(A));
    assert_eq!(
        resumed.param("starting_after"),
        Some("cus_a0050"),
        "after page 2"
    );
    assert_eq!(counts["recorded"], 50);
    assert_eq!(events_in_log(&app).await, 253);

    // --restart: every named account from the top; nothing changed, nothing recorded.
    let before = fake.requests().len();
    let restart = ["backfill", "--account", A, "--restart"];
    let (code, counts, stderr) = outcome(&finish(sync_command(&app.db, &fake, &restart)).await);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(fake.requests()[before].param("starting_after"), None);
    assert_eq!(
        (counts["recorded"].as_u64(), counts["unchanged"].as_u64()),
        (Some(0), Some(250))
    );
}

/// Stripe allows fewer requests per second than `--rate`: its 429s are retried and every
/// customer is recorded, while no second ever sees more than `--rate` requests.
async fn the_rate_holds_in_every_second_under_429s(backend: Backend) {
    let fake = FakeStripe::start().await;
    let accounts: Vec<String> = (0..6)
        .map(|n| format!("acct_1Rate{n}aaaaaaaaaaaa"))
        .collect();
    let mut args = vec!["backfill", "--rate", "4", "--concurrency", "6"];
    for account in &accounts {
        add_customers(&fake, Some(account), account, 2);
        args.extend(["--account", account]);
    }
    fake.limit_rate(2);
    let app = TestApp::spawn(backend).await;

    let (code, counts, stderr) = outcome(&finish(sync_command(&app.db, &fake, &args)).await);

    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(counts["recorded"], 12);
    assert!(
        counts["requests"].as_u64().unwrap() > 6,
        "some met a 429: {counts}"
    );
    // Our limiter spaces starts a second apart; the network may move an arrival by a few
    // milliseconds, so the window measured at the fake allows for that.
    let busiest = fake.max_arrivals_within(Duration::from_millis(900));
    assert!(busiest <= 4, "{busiest} requests within 900 ms");
}

/// SIGKILL while page 3 is in flight: pages 1 and 2 stay committed, and the next run
/// starts after page 2 and records each customer once. SIGTERM instead: the page in hand
/// is committed, the run says it stopped (exit 1), and the next run starts after it.
async fn a_killed_or_stopped_backfill_resumes_without_losing_or_repeating(backend: Backend) {
    let fake = FakeStripe::start().await;
    add_customers(&fake, Some(A), "a", 450);
    let app = TestApp::spawn(backend).await;
    let args = ["backfill", "--account", A];

    fake.hold_after(2);
    let mut child = sync_command(&app.db, &fake, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Page 3 is asked for, so page 2 is committed; its answer is held.
    requests_reach(&fake, 3).await;
    child.kill().unwrap();
    child.wait().unwrap();
    fake.release();
    assert_eq!(events_in_log(&app).await, 200);

    let sent = fake.requests().len();
    fake.hold_after(sent + 1);
    let stopping = sync_command(&app.db, &fake, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Page 3 answered; page 4 asked for and held.
    requests_reach(&fake, sent + 2).await;
    let signalled = Command::new("kill")
        .args(["-TERM", &stopping.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    fake.release();
    let output = tokio::task::spawn_blocking(move || stopping.wait_with_output().unwrap())
        .await
        .unwrap();
    let (code, _, stderr) = outcome(&output);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("stopped: 1 account"), "{stderr}");
    assert_eq!(
        fake.requests()[sent].param("starting_after"),
        Some("cus_a0250")
    );
    assert_eq!(
        events_in_log(&app).await,
        400,
        "the page in hand was committed"
    );

    let before = fake.requests().len();
    let (code, counts, stderr) = outcome(&finish(sync_command(&app.db, &fake, &args)).await);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        fake.requests()[before].param("starting_after"),
        Some("cus_a0050")
    );
    assert_eq!(counts["recorded"], 50);
    assert_eq!(events_in_log(&app).await, 450);
}

/// Waits until the fake has received `count` requests.
async fn requests_reach(fake: &FakeStripe, count: usize) {
    eventually(&format!("{count} requests"), || async {
        match fake.requests().len() {
            seen if seen >= count => Ok(()),
            seen => Err(format!("{seen} so far")),
        }
    })
    .await
}

/// `--all-accounts` takes every connected account Stripe lists; naming none is a usage
/// error, and so is a missing key.
async fn all_accounts_are_listed_and_naming_none_is_a_usage_error(backend: Backend) {
    let fake = FakeStripe::start().await;
    for account in [A, B] {
        fake.add_account(account);
        add_customers(&fake, Some(account), &account[5..9], 2);
    }
    let app = TestApp::spawn_with(backend, AppConfig::default()).await;

    let (code, counts, stderr) = outcome(
        &finish(sync_command(
            &app.db,
            &fake,
            &["backfill", "--all-accounts"],
        ))
        .await,
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        (counts["accounts"].as_u64(), counts["recorded"].as_u64()),
        (Some(2), Some(4))
    );

    let (code, _, stderr) = outcome(&finish(sync_command(&app.db, &fake, &["backfill"])).await);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--account"), "{stderr}");
    let mut keyless = sync_command(&app.db, &fake, &["backfill", "--platform"]);
    keyless.env_remove("STRIPE_SECRET_KEY");
    let (code, _, stderr) = outcome(&finish(keyless).await);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("STRIPE_SECRET_KEY"), "{stderr}");
}

on_both_backends!(
    every_customer_of_each_account_and_the_platform_is_recorded_once,
    a_snapshot_outranks_what_it_reflects_and_loses_to_later_changes,
    deletions_are_found_and_a_404_is_never_taken_for_one,
    a_failed_page_resumes_after_the_last_committed_page,
    the_rate_holds_in_every_second_under_429s,
    a_killed_or_stopped_backfill_resumes_without_losing_or_repeating,
    all_accounts_are_listed_and_naming_none_is_a_usage_error,
);
