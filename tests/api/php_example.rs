//! `examples/php/checkout.php`, run with Debian's `php` against the real `serve` and the
//! fake Stripe, so the example cannot rot. `.ci/run` installs `php-cli` and sets
//! `REQUIRE_PHP=1`, which makes a missing `php` a failure; elsewhere the test is skipped
//! (with a note) when `php` is not installed.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::ensure::serve_with_stripe;
use crate::fake_stripe::{FakeStripe, TEST_KEY};
use crate::helpers::{Backend, TestDb, HANG};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/php/checkout.php");
const ENSURE_TOKEN: &str = "ensure-token-for-the-php-example";

fn php_available() -> bool {
    let found = Command::new("php")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var("REQUIRE_PHP").is_err(),
            "REQUIRE_PHP is set but `php` cannot be run"
        );
        eprintln!("skipped: php is not installed");
    }
    found
}

/// Runs the example for one organizer's buyer; its printed JSON.
async fn checkout(base: &str, fake: &FakeStripe, account: &str, email: &str) -> Value {
    let mut command = Command::new("php");
    command
        .arg(EXAMPLE)
        .args([account, email, "Ada Lovelace"])
        .env("PROJECTOR_URL", base)
        .env("ENSURE_API_TOKEN", ENSURE_TOKEN)
        .env("STRIPE_SECRET_KEY", TEST_KEY)
        .env("STRIPE_API_BASE", &fake.base);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run php"))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

/// The seed's bug, from PHP: one buyer at two organizers' checkouts gets a customer on
/// each organizer's account, and each payment is made on that account with that customer.
async fn the_php_checkout_pays_on_the_organizers_account_with_its_customer(backend: Backend) {
    if !php_available() {
        return;
    }
    const A: &str = "acct_1PhpOrganizerAaaaa";
    const B: &str = "acct_1PhpOrganizerBbbbb";
    let fake = FakeStripe::start().await;
    let db = TestDb::create(backend).await;
    let folder = tempfile::tempdir().unwrap();
    let log = folder.path().join("serve.log");
    let mut served =
        serve_with_stripe(&db, &fake.base, &log, &[("ENSURE_API_TOKEN", ENSURE_TOKEN)]);

    let at_a = checkout(&served.base, &fake, A, "Ada@Example.com").await;
    let again = checkout(&served.base, &fake, A, "ada@example.com").await;
    let at_b = checkout(&served.base, &fake, B, "ada@example.com").await;

    assert_eq!(at_a["created"], true);
    assert_eq!(again["created"], false);
    assert_eq!(again["customer_id"], at_a["customer_id"]);
    assert_eq!(at_b["created"], true);
    assert_ne!(at_b["customer_id"], at_a["customer_id"]);
    let intents: Vec<(Option<String>, Option<String>)> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/payment_intents")
        .map(|r| {
            (
                r.header("stripe-account").map(str::to_owned),
                r.field("customer").map(str::to_owned),
            )
        })
        .collect();
    let id = |answer: &Value| answer["customer_id"].as_str().map(str::to_owned);
    assert_eq!(
        intents,
        [
            (Some(A.to_owned()), id(&at_a)),
            (Some(A.to_owned()), id(&at_a)),
            (Some(B.to_owned()), id(&at_b)),
        ]
    );
    served.terminate();
    assert!(served.wait_exit(HANG).is_some());
}

on_both_backends!(the_php_checkout_pays_on_the_organizers_account_with_its_customer);
