//! Maintenance commands of one kind exclude each other on one database, by design: the
//! second says who holds the database since when and exits 1, or waits with `--wait`.
//! Appends (`import`, `serve`) never wait for them.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use stripe_projector::store::Maintenance;

use crate::backfill::{finish, outcome, sync_command, A};
use crate::fake_stripe::{customer_object, FakeStripe};
use crate::helpers::{Backend, TestDb};
use crate::process::run;

/// While a rebuild holds the database, `replay`, `replay --verify` and `prune` refuse with
/// one line naming the holder, and `import` goes on; once it is released they run. No
/// database notice reaches the operator.
async fn a_rebuild_excludes_another_but_not_an_import(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = db.store().await;
    let held = store
        .lock_maintenance(Maintenance::Rebuild, "replay", false, |_| {})
        .await
        .expect("the lock is free");

    for args in [
        &["replay"][..],
        &["replay", "--verify"],
        &["prune", "--older-than", "30"],
    ] {
        let output = run(&db.url, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(
                "error: another rebuild is running on this database: stripe-projector replay"
            ),
            "{stderr}"
        );
        assert!(stderr.contains(" since 20"), "{stderr}");
    }
    let folder = tempfile::tempdir().unwrap();
    let export = folder.path().join("events.jsonl");
    std::fs::write(&export, b"").unwrap();
    let imported = run(&db.url, &["import", export.to_str().unwrap()]);
    assert_eq!(
        imported.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );

    drop(held);
    for _ in 0..2 {
        let output = run(&db.url, &["replay"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        assert!(
            !stderr.contains("NOTICE") && !stderr.contains("skipping"),
            "{stderr}"
        );
    }
}

/// A second `backfill` while one runs: exit 1 at once, or with `--wait`, a line saying
/// what it waits for, then its own run once the first is done.
async fn a_second_backfill_refuses_or_waits(backend: Backend) {
    let fake = FakeStripe::start().await;
    fake.add_customer(
        Some(A),
        customer_object("cus_1", Some("a@x.io"), None, 1, false),
    );
    let db = TestDb::create(backend).await;
    drop(db.store().await);
    fake.hold();
    let args = ["backfill", "--account", A];
    let first = sync_command(&db, &fake, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    fake.wait_in_flight(1).await;

    let (code, _, stderr) = outcome(&finish(sync_command(&db, &fake, &args)).await);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("another backfill is running on this database: stripe-projector backfill"),
        "{stderr}"
    );

    let mut waiting = sync_command(&db, &fake, &["backfill", "--account", A, "--wait"]);
    waiting.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut second = waiting.spawn().unwrap();
    // Its stderr is read to the end, line by line (a closed pipe would fail its writes).
    let stderr = second.stderr.take().unwrap();
    let (lines, said) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // It says what it waits for before it waits; only then is the first let go.
    let said =
        tokio::task::spawn_blocking(move || said.iter().find(|line| line.starts_with("waiting:")))
            .await
            .unwrap();
    assert!(said.is_some_and(|line| line.contains("stripe-projector backfill")));
    fake.release();
    let first = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(outcome(&first).0, Some(0));
    let second = tokio::task::spawn_blocking(move || second.wait_with_output().unwrap())
        .await
        .unwrap();
    let (code, counts, _) = outcome(&second);
    assert_eq!(code, Some(0));
    assert_eq!(counts["unchanged"], 1);
}

on_both_backends!(
    a_rebuild_excludes_another_but_not_an_import,
    a_second_backfill_refuses_or_waits,
);
