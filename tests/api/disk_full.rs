//! The disk under the SQLite store, full or failing, with the real binary.
//!
//! A failing disk: an ext4 file system whose writes land in the page cache and whose
//! write-back fails, as on a disk that is full or broken below the file system. What it
//! acknowledged survives; from the failed flush on, it acknowledges nothing until it is
//! restarted.
//!
//! A full disk: a plain file system with no room left, whose writes fail at once (ENOSPC,
//! SQLite's SQLITE_FULL) without taking anything. Deliveries are refused while it is
//! full, and the same process stores them again once there is room.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{created, eventually, into_json, post_signed, HANG};
use crate::process::{serve_command, Served};

/// Room the file system's blocks really have: far less than it believes it has.
const TMPFS_SIZE: &str = "12m";
/// What the file system believes it has.
const DEVICE_SIZE: u64 = 256 << 20;
/// The room given afterwards, to repair it: more than the device.
const REPAIRED_TMPFS_SIZE: &str = "512m";
/// Padding per event, so the disk fills within a few hundred events.
const PADDING: usize = 96 << 10;
/// Deliveries in flight at once.
const IN_FLIGHT: usize = 8;
/// Far more than the disk can take: reaching it without a 503 means the failure went unseen.
const MAX_EVENTS: usize = 1_000;

/// An ext4 file system on a loop device whose backing file is a sparse file on a tmpfs
/// much smaller than the file: writes succeed into the page cache, and the `fdatasync`
/// that has to write them back fails (ENOSPC, then EIO once the journal has aborted).
/// Everything it sets up is torn down when it is dropped, a panicking test included; it
/// only ever detaches the loop device it attached.
pub struct FailingDisk {
    /// The tmpfs holding the device's backing file.
    backing: PathBuf,
    /// Where the ext4 file system is mounted.
    mount: PathBuf,
    /// The loop device, once attached.
    device: Option<String>,
    tmpfs_mounted: bool,
    ext4_mounted: bool,
}

impl FailingDisk {
    /// Sets the disk up; panics, with the failing command, if it cannot (the machine must
    /// allow root to mount a tmpfs and attach loop devices: this is a test to run, not to
    /// skip).
    pub fn new() -> Self {
        let mut disk = Self {
            backing: mount_point("backing"),
            mount: mount_point("ext4"),
            device: None,
            tmpfs_mounted: false,
            ext4_mounted: false,
        };
        // From here on a panic drops `disk`, which undoes whatever was done.
        mount_tmpfs(&disk.backing, TMPFS_SIZE);
        disk.tmpfs_mounted = true;
        let image = disk.backing.join("disk.img");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(DEVICE_SIZE))
            .unwrap_or_else(|e| panic!("cannot create the sparse backing file: {e}"));
        let device = run("losetup", &["--find", "--show", path(&image)])
            .unwrap_or_else(|e| panic!("cannot attach a loop device (the test needs root): {e}"));
        disk.device = Some(device.trim().to_owned());
        let device = disk.device().to_owned();
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                &device,
            ],
        )
        .unwrap_or_else(|e| panic!("cannot make the file system: {e}"));
        disk.mount_ext4();
        disk
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// What an operator does once the disk has room again: unmount, give the backing
    /// file room, check and repair the file system (replaying its journal), mount again.
    /// Whatever was flushed before the failure is on it.
    pub fn repair(&mut self) {
        self.unmount_ext4();
        let size = format!("remount,size={REPAIRED_TMPFS_SIZE}");
        run("mount", &["-o", &size, path(&self.backing)])
            .unwrap_or_else(|e| panic!("cannot enlarge the tmpfs: {e}"));
        let device = self.device().to_owned();
        // 0: clean, 1: errors corrected, 2: corrected, reboot advised; above: not repaired.
        let checked = Command::new("e2fsck")
            .args(["-fy", &device])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run e2fsck");
        assert!(
            matches!(checked.code(), Some(0..=2)),
            "e2fsck could not repair {device}: {checked}"
        );
        self.mount_ext4();
    }

    fn device(&self) -> &str {
        self.device.as_deref().expect("the loop device is attached")
    }

    fn mount_ext4(&mut self) {
        let device = self.device().to_owned();
        run("mount", &["-t", "ext4", &device, path(&self.mount)])
            .unwrap_or_else(|e| panic!("cannot mount {device}: {e}"));
        self.ext4_mounted = true;
    }

    fn unmount_ext4(&mut self) {
        run("umount", &[path(&self.mount)]).unwrap_or_else(|e| panic!("{e}"));
        self.ext4_mounted = false;
    }
}

impl Drop for FailingDisk {
    /// Undoes everything in reverse order, going on past failures: a busy mount (a
    /// process still holding a file) is detached lazily, and detaching a loop device that
    /// is still in use makes the kernel free it once it is no longer used.
    fn drop(&mut self) {
        let unmount = |point: &Path| {
            if run("umount", &[path(point)]).is_err() {
                if let Err(e) = run("umount", &["--lazy", path(point)]) {
                    eprintln!("{e}");
                }
            }
        };
        if self.ext4_mounted {
            unmount(&self.mount);
        }
        if let Some(device) = self.device.take() {
            if let Err(e) = run("losetup", &["--detach", &device]) {
                eprintln!("{e}");
            }
        }
        if self.tmpfs_mounted {
            unmount(&self.backing);
        }
        // `remove_dir` removes only an empty folder: never anything on a mount left behind.
        for point in [&self.mount, &self.backing] {
            if let Err(e) = std::fs::remove_dir(point) {
                eprintln!("cannot remove {}: {e}", point.display());
            }
        }
    }
}

/// Mounts a tmpfs of `size` (as `mount` takes it: `16m`) on `point`; panics, with the
/// failing command, if it cannot (the test needs root).
fn mount_tmpfs(point: &Path, size: &str) {
    let size = format!("size={size}");
    run("mount", &["-t", "tmpfs", "-o", &size, "tmpfs", path(point)])
        .unwrap_or_else(|e| panic!("cannot mount a tmpfs (the test needs root): {e}"));
}

/// A new, uniquely named, empty folder to mount on.
fn mount_point(role: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("stripe-projector-disk-{role}-"))
        .tempdir()
        .expect("temporary folder")
        .keep()
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Runs a command; its stdout, or what failed.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Event `n`: a new customer, padded so that every event takes room on the disk.
fn padded_event(n: usize) -> Vec<u8> {
    padded_event_of(n, PADDING)
}

/// Event `n`, carrying `padding` bytes.
fn padded_event_of(n: usize, padding: usize) -> Vec<u8> {
    let mut event = created(
        &format!("evt_full_{n:04}"),
        "acct_full",
        &format!("cus_full_{n:04}"),
        &format!("f{n}@example.com"),
        1_700_000_000,
    );
    event["data"]["object"]["padding"] = json!("x".repeat(padding));
    event.to_string().into_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Stored,
    Duplicate,
    Refused,
}

/// Delivers event `n`; the only answers allowed are 200 ("stored" or "duplicate") and 503
/// `store_unavailable`.
async fn deliver(client: &reqwest::Client, base: &str, n: usize) -> Answer {
    deliver_padded(client, base, n, PADDING).await
}

/// Delivers event `n` carrying `padding` bytes, as [`deliver`].
async fn deliver_padded(client: &reqwest::Client, base: &str, n: usize, padding: usize) -> Answer {
    let body = padded_event_of(n, padding);
    let request = post_signed(client, base, &body).send();
    let response = tokio::time::timeout(HANG, request)
        .await
        .unwrap_or_else(|_| panic!("evt_full_{n:04}: no answer (a hang)"))
        .unwrap_or_else(|e| panic!("evt_full_{n:04}: the request failed: {e}"));
    let (status, body) = into_json(response).await;
    match (status, &body) {
        (StatusCode::OK, body) if body["status"] == "stored" => Answer::Stored,
        (StatusCode::OK, body) if body["status"] == "duplicate" => Answer::Duplicate,
        (StatusCode::SERVICE_UNAVAILABLE, body) if body["error"] == "store_unavailable" => {
            Answer::Refused
        }
        _ => panic!("evt_full_{n:04}: answered {status} {body}"),
    }
}

/// Delivers events, `IN_FLIGHT` at a time, until one is refused; returns the events
/// acknowledged and those refused (those in flight with the first refusal included).
async fn fill(base: &str) -> (BTreeSet<usize>, BTreeSet<usize>) {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, base, next, refusing) = (
                client.clone(),
                base.to_owned(),
                next.clone(),
                refusing.clone(),
            );
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !refusing.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= MAX_EVENTS {
                        break;
                    }
                    let answer = deliver(&client, &base, n).await;
                    if answer == Answer::Refused {
                        refusing.store(true, Ordering::SeqCst);
                    }
                    answers.push((n, answer));
                }
                answers
            })
        })
        .collect();
    let (mut acknowledged, mut refused) = (BTreeSet::new(), BTreeSet::new());
    for worker in workers {
        for (n, answer) in worker.await.expect("a delivery worker panicked") {
            match answer {
                Answer::Stored => acknowledged.insert(n),
                Answer::Refused => refused.insert(n),
                Answer::Duplicate => panic!("evt_full_{n:04}: a new event answered duplicate"),
            };
        }
    }
    assert!(
        !refused.is_empty(),
        "{MAX_EVENTS} padded events were all stored on a disk with room for far fewer"
    );
    (acknowledged, refused)
}

async fn get(client: &reqwest::Client, base: &str, path: &str) -> (StatusCode, Value) {
    let request = client.get(format!("{base}{path}")).send();
    let response = tokio::time::timeout(HANG, request)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer (a hang)"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    into_json(response).await
}

/// The event ids in the log, and SQLite's own check of the file, read on a connection of
/// the test's own that is closed before returning (so the file system can be unmounted).
async fn logged(url: &str) -> (BTreeSet<String>, String) {
    use sqlx::Connection;
    let mut connection = sqlx::SqliteConnection::connect(url).await.expect("connect");
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events")
        .fetch_all(&mut connection)
        .await
        .expect("read the log");
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut connection)
        .await
        .expect("integrity check");
    connection.close().await.expect("close");
    (ids.into_iter().collect(), integrity)
}

/// Stripe's redeliveries, once the disk has room again.
struct Redelivered<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
    padding: usize,
}

impl<'a> Redelivered<'a> {
    fn new(client: &'a reqwest::Client, base: &'a str, padding: usize) -> Self {
        Self {
            client,
            base,
            padding,
        }
    }

    /// Each refused event is stored when delivered again (refused means not written: not
    /// a duplicate), and counts as acknowledged; readiness is 200 afterwards.
    async fn all_stored(
        &self,
        refused: impl IntoIterator<Item = usize>,
        acknowledged: &mut BTreeSet<usize>,
    ) {
        for n in refused {
            assert_eq!(
                deliver_padded(self.client, self.base, n, self.padding).await,
                Answer::Stored,
                "redelivery of evt_full_{n:04}"
            );
            acknowledged.insert(n);
        }
        let (status, body) = get(self.client, self.base, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// The database is intact and its log holds every event of `acknowledged`.
async fn assert_intact_with_all_of(url: &str, acknowledged: &BTreeSet<usize>) {
    let (logged_ids, integrity) = logged(url).await;
    assert_eq!(integrity, "ok");
    let lost: Vec<String> = acknowledged
        .iter()
        .map(|n| format!("evt_full_{n:04}"))
        .filter(|id| !logged_ids.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but not in the log: {lost:?}");
}

/// Where the disk runs out first.
#[derive(Debug, Clone, Copy)]
enum Filling {
    /// A read transaction held open (a backup, say) keeps checkpoints from copying
    /// anything, so only the write-ahead log grows: its flush fails.
    Log,
    /// Checkpoints copy the log into the database file, which grows, and whose flush (by
    /// a checkpoint) fails first, as a rule.
    DatabaseFile,
}

/// The disk fills under load: every delivery is answered "stored" or 503, never anything
/// else and never a hang. From the first 503 on every delivery is refused, a redelivery
/// of an acknowledged event too, and `/readyz` fails. After a SIGKILL and a repair of the
/// disk, every acknowledged event is in the log of an intact database, and the service
/// stores new deliveries and Stripe's redeliveries of the refused ones.
async fn a_failing_disk_refuses_until_restart_and_loses_nothing(filling: Filling) {
    use sqlx::{Connection, Executor};
    let mut disk = FailingDisk::new();
    let url = format!("sqlite:{}", disk.path().join("projector.db").display());
    let client = reqwest::Client::new();
    let mut served = Served::spawn(serve_command(&url));
    let reader = match filling {
        Filling::Log => {
            let mut reader = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            reader.execute("BEGIN").await.expect("BEGIN");
            reader
                .execute("SELECT count(*) FROM events")
                .await
                .expect("a read");
            Some(reader)
        }
        Filling::DatabaseFile => None,
    };

    let (acknowledged, refused) = fill(&served.base).await;
    assert!(
        !acknowledged.is_empty(),
        "the disk failed before anything was stored"
    );

    // The failure is final: nothing is acknowledged until a restart.
    let after = MAX_EVENTS;
    assert_eq!(deliver(&client, &served.base, after).await, Answer::Refused);
    let first = *acknowledged.first().expect("checked non-empty");
    assert_eq!(deliver(&client, &served.base, first).await, Answer::Refused);
    let (status, body) = get(&client, &served.base, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    if let Some(reader) = reader {
        reader.close().await.expect("close the reader");
    }
    served.kill();
    disk.repair();
    let served = Served::spawn(serve_command(&url));
    let (status, body) = get(&client, &served.base, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_intact_with_all_of(&url, &acknowledged).await;

    assert_eq!(
        deliver(&client, &served.base, after + 1).await,
        Answer::Stored
    );
    for &n in refused.iter().chain([&after]) {
        let body = padded_event(n);
        let response = post_signed(&client, &served.base, &body)
            .send()
            .await
            .expect("redelivery");
        let (status, body) = into_json(response).await;
        // A refused event may have reached the disk before the failure was seen: then it
        // is a duplicate now, in the log either way.
        assert_eq!(
            status,
            StatusCode::OK,
            "redelivery of evt_full_{n:04}: {body}"
        );
        assert!(
            body["status"] == "stored" || body["status"] == "duplicate",
            "{body}"
        );
    }
    let (logged_ids, _) = logged(&url).await;
    for n in refused.iter().chain([&after, &(after + 1)]) {
        assert!(logged_ids.contains(&format!("evt_full_{n:04}")));
    }
    // The server goes before the disk is torn down.
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_of_the_log_refuses_until_restart_and_loses_nothing() {
    a_failing_disk_refuses_until_restart_and_loses_nothing(Filling::Log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_checkpoint_refuses_until_restart_and_loses_nothing() {
    a_failing_disk_refuses_until_restart_and_loses_nothing(Filling::DatabaseFile).await;
}

/// Size of the plain tmpfs of a full disk.
const FULL_TMPFS_SIZE: &str = "16m";
/// What the ballast leaves of it: room for a few dozen padded events.
const ROOM: u64 = 4 << 20;

/// A plain tmpfs holding the database: once it is full, `write` fails at once with ENOSPC
/// and takes nothing (SQLite says SQLITE_FULL), and `fsync` never fails. A ballast file
/// takes most of its room, and deleting it frees that room. Unmounted when dropped, a
/// panicking test included.
pub struct FullDisk {
    mount: PathBuf,
    mounted: bool,
}

impl FullDisk {
    /// Mounts one of `size` (as `mount` takes it: `16m`); panics, with the failing
    /// command, if it cannot (the test needs root).
    pub fn new(size: &str) -> Self {
        let mut disk = Self {
            mount: mount_point("full"),
            mounted: false,
        };
        mount_tmpfs(&disk.mount, size);
        disk.mounted = true;
        disk
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }

    fn ballast(&self) -> PathBuf {
        self.mount.join("ballast")
    }

    /// Writes the ballast until the file system is full, then gives `room` bytes of it
    /// back: what is left to the database does not depend on what it already holds.
    pub fn leave_room(&self, room: u64) {
        use std::io::Write;
        let ballast = self.ballast();
        let mut file = std::fs::File::create(&ballast)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", ballast.display()));
        // Bytes written, not a sparse file: a tmpfs takes room for what is written.
        let chunk = vec![0x5a_u8; 1 << 20];
        let mut written: u64 = 0;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("cannot write the ballast: {e}"),
            }
        }
        assert!(
            written > room,
            "the file system had less than {room} bytes free"
        );
        file.set_len(written - room)
            .unwrap_or_else(|e| panic!("cannot shorten the ballast: {e}"));
    }

    /// What an operator does: deletes what took the room.
    pub fn free(&self) {
        std::fs::remove_file(self.ballast())
            .unwrap_or_else(|e| panic!("cannot delete the ballast: {e}"));
    }
}

impl Drop for FullDisk {
    /// Unmounts (lazily when a process still holds a file), then removes the empty folder.
    fn drop(&mut self) {
        if self.mounted && run("umount", &[path(&self.mount)]).is_err() {
            if let Err(e) = run("umount", &["--lazy", path(&self.mount)]) {
                eprintln!("{e}");
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.mount) {
            eprintln!("cannot remove {}: {e}", self.mount.display());
        }
    }
}

/// Whether the service is killed while the disk is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhileFull {
    /// The same process runs throughout.
    KeepRunning,
    /// SIGKILL, then a new process on the still full disk.
    Kill,
}

/// Delivers new events one at a time, from `n` on, until one is refused: a batch refused
/// whole may have needed more room than one event does. Returns the events stored, and
/// the first refused. The disk stays full from then on: nothing frees room, and the
/// service checkpoints only after a commit.
async fn deliver_until_refused(
    client: &reqwest::Client,
    base: &str,
    n: usize,
) -> (BTreeSet<usize>, usize) {
    let mut stored = BTreeSet::new();
    for n in n..n + MAX_EVENTS {
        match deliver(client, base, n).await {
            Answer::Stored => stored.insert(n),
            Answer::Refused => return (stored, n),
            Answer::Duplicate => panic!("evt_full_{n:04}: a new event answered duplicate"),
        };
    }
    panic!("{MAX_EVENTS} more padded events were all stored on a full disk")
}

/// While the disk is full: a redelivery of an acknowledged event is a duplicate (already
/// durable) or refused, never stored again; a new event is refused; `/readyz` answers 200,
/// since lookups are still served and a restart would not make room. Events carry
/// `padding` bytes (a smaller event may fit where a larger one does not).
async fn assert_full(
    client: &reqwest::Client,
    base: &str,
    acknowledged: &BTreeSet<usize>,
    new: usize,
    padding: usize,
) {
    for &n in [acknowledged.first(), acknowledged.last()]
        .into_iter()
        .flatten()
    {
        let answer = deliver_padded(client, base, n, padding).await;
        assert_ne!(
            answer,
            Answer::Stored,
            "evt_full_{n:04}, acknowledged before, stored again"
        );
    }
    assert_eq!(
        deliver_padded(client, base, new, padding).await,
        Answer::Refused,
        "evt_full_{new:04}"
    );
    let (status, body) = get(client, base, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The disk fills under load: every delivery is answered "stored" or 503, never anything
/// else and never a hang; while it is full, no acknowledged event is stored again and new
/// ones are refused (after a SIGKILL too, in a new process). Once the ballast is deleted,
/// the running process stores new deliveries and Stripe's redeliveries of the refused
/// ones (none of which reached the log) with no restart, and every acknowledged event is
/// in the log of an intact database.
async fn a_full_disk_refuses_then_stores_once_freed(while_full: WhileFull) {
    let disk = FullDisk::new(FULL_TMPFS_SIZE);
    let url = format!("sqlite:{}", disk.path().join("projector.db").display());
    let client = reqwest::Client::new();
    let mut served = Served::spawn(serve_command(&url));
    disk.leave_room(ROOM);

    let (mut acknowledged, mut refused) = fill(&served.base).await;
    assert!(
        !acknowledged.is_empty(),
        "the disk was full before anything was stored"
    );
    let (stored, first_refused) = deliver_until_refused(&client, &served.base, MAX_EVENTS).await;
    acknowledged.extend(stored);
    refused.insert(first_refused);
    let mut next = first_refused + 1;
    assert_full(&client, &served.base, &acknowledged, next, PADDING).await;
    refused.insert(next);
    next += 1;

    if while_full == WhileFull::Kill {
        served.kill();
        // A new process starts on the full disk: it rebuilds the log's index in the room
        // the old index took, and needs no other to open the database.
        served = Served::spawn(serve_command(&url));
        assert_full(&client, &served.base, &acknowledged, next, PADDING).await;
        refused.insert(next);
        next += 1;
    }

    disk.free();
    assert_eq!(deliver(&client, &served.base, next).await, Answer::Stored);
    acknowledged.insert(next);
    let redelivered = Redelivered::new(&client, &served.base, PADDING);
    redelivered.all_stored(refused, &mut acknowledged).await;
    assert_intact_with_all_of(&url, &acknowledged).await;
    // The server goes before the disk is unmounted.
    drop(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_then_the_same_process_stores_once_freed() {
    a_full_disk_refuses_then_stores_once_freed(WhileFull::KeepRunning).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_survives_a_sigkill_and_stores_once_freed() {
    a_full_disk_refuses_then_stores_once_freed(WhileFull::Kill).await;
}

/// Bytes of a write-ahead log's header, and of each frame (a 4 KiB page and its header).
const WAL_HEADER: u64 = 32;
const WAL_FRAME: u64 = 24 + 4_096;
/// Frames the first 32 KiB region of the log's index (the `-shm` file) covers: the next
/// frame needs the index to grow by a region.
const FIRST_INDEX_FRAMES: u64 = 4_062;
const INDEX_REGION: u64 = 32 << 10;
/// Padding of the events that grow the log: few deliveries reach its second region.
const LARGE_PADDING: usize = 768 << 10;

fn file_len(file: &Path) -> u64 {
    std::fs::metadata(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .len()
}

/// A full disk where the log still has room (SQLite keeps a log file at its largest and
/// writes it again from its start) but its index does not: the index must grow when the
/// log passes the frames its first region covers, and cannot. SQLite reports that as an
/// I/O error (SQLITE_IOERR_SHMSIZE), but it is a full disk like any other: nothing was
/// acknowledged, and once there is room the same process stores again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_index_that_cannot_grow_on_a_full_disk_stores_once_freed() {
    use sqlx::{Connection, Executor};
    let disk = FullDisk::new("48m");
    let database = disk.path().join("projector.db");
    let url = format!("sqlite:{}", database.display());
    let (wal, shm) = (
        disk.path().join("projector.db-wal"),
        disk.path().join("projector.db-shm"),
    );
    let client = reqwest::Client::new();
    let mut served = Served::spawn(serve_command(&url));
    let mut acknowledged = BTreeSet::new();
    let mut new_events = 2_000..;

    // A reader holds the log, so nothing is copied out of it: it grows well past the
    // first region of its index.
    let mut reader = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    reader.execute("BEGIN").await.expect("BEGIN");
    reader
        .execute("SELECT count(*) FROM events")
        .await
        .expect("a read");
    while file_len(&wal) < WAL_HEADER + (FIRST_INDEX_FRAMES + 512) * WAL_FRAME {
        let event = new_events.next().expect("endless");
        let answer = deliver_padded(&client, &served.base, event, LARGE_PADDING).await;
        assert_eq!(answer, Answer::Stored, "evt_full_{event:04}");
        acknowledged.insert(event);
    }
    reader.close().await.expect("close the reader");
    // Everything is copied into the database file; the next commit writes the log from
    // its start, in the room its file keeps. (Busy while the service's own checkpoint,
    // free to copy the log now, holds it.)
    eventually("a checkpoint that restarts the log", || async {
        let mut connection = sqlx::SqliteConnection::connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        let checkpoint: Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
                .fetch_one(&mut connection)
                .await;
        connection.close().await.map_err(|e| e.to_string())?;
        match checkpoint {
            Ok((0, _, _)) => Ok(()),
            Ok(busy) => Err(format!("busy: {busy:?}")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let kept = file_len(&wal);
    let event = new_events.next().expect("endless");
    assert_eq!(
        deliver_padded(&client, &served.base, event, LARGE_PADDING).await,
        Answer::Stored
    );
    acknowledged.insert(event);
    assert_eq!(
        file_len(&wal),
        kept,
        "the log was not written from its start"
    );
    // A new process rebuilds the index from the log, which is short now: one region.
    served.kill();
    let served = Served::spawn(serve_command(&url));
    assert_eq!(file_len(&shm), INDEX_REGION);

    disk.leave_room(0);
    let mut refused = Vec::new();
    loop {
        let event = new_events.next().expect("endless");
        match deliver_padded(&client, &served.base, event, LARGE_PADDING).await {
            Answer::Stored => acknowledged.insert(event),
            Answer::Refused => {
                refused.push(event);
                break;
            }
            Answer::Duplicate => panic!("evt_full_{event:04}: a new event answered duplicate"),
        };
        assert_eq!(file_len(&wal), kept, "the log grew: the disk had room left");
    }
    // The log had room for the refused event; its index did not grow (and grows with the
    // first event stored once there is room, below).
    assert_eq!(file_len(&shm), INDEX_REGION);
    let event = new_events.next().expect("endless");
    assert_full(&client, &served.base, &acknowledged, event, LARGE_PADDING).await;
    refused.push(event);

    disk.free();
    let event = new_events.next().expect("endless");
    assert_eq!(
        deliver_padded(&client, &served.base, event, LARGE_PADDING).await,
        Answer::Stored,
        "a new event once the disk has room"
    );
    acknowledged.insert(event);
    assert_eq!(file_len(&shm), 2 * INDEX_REGION);
    let redelivered = Redelivered::new(&client, &served.base, LARGE_PADDING);
    redelivered.all_stored(refused, &mut acknowledged).await;
    assert_intact_with_all_of(&url, &acknowledged).await;
    drop(served);
}
