//! SQLite's appends: one thread writes, one flushes, one checkpoints, each with a
//! connection of its own.
//!
//! SQLite takes one writer at a time, so every append of the process goes to one writer
//! thread, which drains the group-commit queue: each batch is committed by the shared
//! policy (see `store/group_commit.rs`) with this backend's statements. It then hands
//! the batch to the flusher thread, which makes it durable (see `sqlite.rs` on
//! `synchronous=NORMAL`) and only then answers each caller, while the writer writes the
//! next batch; one flush covers every batch committed before it. After each flush the checkpointer copies the log into the database file, beside
//! the writer, so the writer seldom has to.
//!
//! Why threads and not sqlx: sqlx runs each SQLite connection on a thread of its own too,
//! but sends every statement's result and every row back to the waiting task one by one,
//! and each send woke that task, which took the core from the writer in the middle of its
//! transaction, over and over under load. These threads wake nobody until a batch is
//! written, then one thread per step.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, OnceLock};

use futures_util::FutureExt;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::mpsc;

use super::{open_connection, spawn_thread};
use crate::projection::{Effect, PROJECTION_VERSION};
use crate::store::append::{AppendPlan, EventRow};
use crate::store::group_commit::{self, Committed, Committer, Job, MAX_JOBS};
use crate::store::sql::{
    statement_chunks, INSERT_EVENTS_HEAD, UPSERT_CUSTOMERS_HEAD, UPSERT_CUSTOMERS_TAIL,
};
use crate::store::{AppendOutcome, Source, StoreError};
use crate::stripe::event::CustomerEvent;

/// The handle appends go through; the threads stop when every handle is gone.
#[derive(Debug, Clone)]
pub(in crate::store) struct Appender {
    committer: Committer,
    /// Why the disk failed, once it has (see [`flush_each`]).
    disk_failure: Arc<DiskFailure>,
}

/// The first cause of the disk's failure under the log: a failed flush, or an I/O error
/// while writing or checkpointing. Set once, never cleared: appends are refused from then
/// on, and readiness fails, until the service is restarted.
type DiskFailure = OnceLock<String>;

/// Records that the disk failed `during` a step (the first cause is kept, and logged
/// once); returns the cause kept.
fn disk_failed(failure: &DiskFailure, during: &str, error: &dyn std::fmt::Display) -> String {
    failure
        .get_or_init(|| {
            tracing::error!(%error, "{during} failed: appends are refused until the service restarts");
            format!("{during}: {error}")
        })
        .clone()
}

/// An I/O error: the disk failed under SQLite (it may have failed a write-back whose error
/// the next `fsync` no longer reports), as opposed to a full disk, which refuses a write
/// before taking it (SQLITE_FULL, or [`index_full`]), or a busy database.
fn io_failure(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.code == rusqlite::ErrorCode::SystemIoFailure
    ) && !index_full(error)
}

/// The log's index (the `-shm` file) could not grow: a full disk that SQLite reports as an
/// I/O error (SQLITE_IOERR_SHMSIZE). SQLite grows that file by writing a byte into each of
/// its new pages, which fails at once on a full disk. It grows when a connection rebuilds
/// it from the log, or when a commit takes the log past the frames it covers (4,062, then
/// every 4,096): after the commit's frames are written, before the commit is complete, so
/// nothing was acknowledged, and the next commit tries again. The file holds nothing that
/// the log does not and is never flushed, so its failure hides no failed write-back.
fn index_full(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE
    )
}

/// `error`, saying what [`index_full`] is where SQLite only says "disk I/O error".
fn described(error: rusqlite::Error) -> rusqlite::Error {
    match error {
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE =>
        {
            let message = "the write-ahead log's index (the -shm file) could not grow: \
                           is the disk full?";
            rusqlite::Error::SqliteFailure(failure, Some(message.to_owned()))
        }
        other => other,
    }
}

impl Appender {
    /// Opens the three connections to the database at `path` (which must exist) and
    /// starts their threads.
    pub(in crate::store) fn start(path: &Path) -> Result<Self, StoreError> {
        let writer = open_connection(path, WRITER_SETTINGS)?;
        let checkpointer = open_connection(path, "")?;
        let wal = wal_path(path);
        let (checkpoints, due) = std_mpsc::sync_channel(1);
        let (flushes, committed) = std_mpsc::channel();
        let (committer, queue) = Committer::channel();
        let disk_failure = Arc::new(DiskFailure::new());
        let failure = disk_failure.clone();
        spawn_thread("sqlite-checkpoint", move || {
            checkpoint_each(checkpointer, due, &failure)
        })?;
        let failure = disk_failure.clone();
        spawn_thread("sqlite-flush", move || {
            flush_each(&wal, committed, checkpoints, &failure)
        })?;
        let failure = disk_failure.clone();
        let writer = Writer {
            connection: writer,
            failure: disk_failure.clone(),
        };
        spawn_thread("sqlite-writer", move || {
            write_each(writer, queue, flushes, &failure)
        })?;
        Ok(Self {
            committer,
            disk_failure,
        })
    }

    /// Fails once the disk has failed: appends are refused from then on, and readiness
    /// says so, until a restart.
    pub(in crate::store) fn check(&self) -> Result<(), StoreError> {
        match self.disk_failure.get() {
            Some(failure) => Err(StoreError::DiskFailed(failure.clone())),
            None => Ok(()),
        }
    }

    /// Appends and projects `events` (in one transaction, possibly shared with other
    /// callers' events); returns once that transaction is durable.
    pub(in crate::store) async fn append(
        &self,
        events: Vec<(CustomerEvent, Effect)>,
        source: Source,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        self.check()?;
        self.committer.append(events, source).await
    }
}

/// The writer's settings beyond those of every connection (see `open_connection`): the
/// log is flushed by the flusher, not under the write lock; pages are read through a
/// memory map of the file's first 64 MiB instead of a read() copy each (with a large log,
/// each commit reads index pages that are not in the page cache; mapped pages count in
/// the process's resident memory, hence not more); and its page cache holds 16 MiB
/// (SQLite's default, 2 MiB, is fewer pages than a full batch dirties at about two index
/// pages per event, so pages were evicted and read again between batches).
const WRITER_SETTINGS: &str = "
    PRAGMA synchronous = NORMAL;
    PRAGMA mmap_size = 67108864;
    PRAGMA cache_size = -16384;";

fn wal_path(database: &Path) -> PathBuf {
    let mut wal = database.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// Group commit's statements on SQLite, on the writer thread's connection.
struct Writer {
    connection: Connection,
    failure: Arc<DiskFailure>,
}

impl group_commit::Backend for Writer {
    /// Each row is bound with its own source.
    const MIXES_SOURCES: bool = true;

    /// Synchronous: the future is ready when returned. An I/O error is the disk failing,
    /// which is final (see [`flush_each`]).
    fn write(
        &mut self,
        jobs: &[Job],
    ) -> impl std::future::Future<Output = Result<Vec<AppendOutcome>, StoreError>> + Send {
        let written = write(&mut self.connection, jobs).map_err(|error| {
            if io_failure(&error) {
                disk_failed(&self.failure, "writing to the database", &error);
            }
            StoreError::from(described(error))
        });
        std::future::ready(written)
    }

    /// An I/O error or a busy database fails everyone alike.
    fn refused(error: &StoreError) -> bool {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure};
        match error {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => !matches!(
                failure.code,
                DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure
            ),
            _ => false,
        }
    }
}

/// The writer thread: each turn takes every job queued (up to [`MAX_JOBS`]) and commits
/// them through group commit, then hands what it wrote to the flusher, which answers the
/// callers once it is durable. Once the disk has failed (see [`flush_each`]), jobs are
/// refused unwritten.
fn write_each(
    mut writer: Writer,
    mut queue: mpsc::Receiver<Job>,
    flushes: std_mpsc::Sender<Committed>,
    failure: &DiskFailure,
) {
    let mut jobs = Vec::with_capacity(MAX_JOBS);
    while queue.blocking_recv_many(&mut jobs, MAX_JOBS) > 0 {
        let batch = std::mem::replace(&mut jobs, Vec::with_capacity(MAX_JOBS));
        if let Some(failure) = failure.get() {
            group_commit::fail_all(batch, StoreError::DiskFailed(failure.clone()));
            continue;
        }
        // The writer's `write` never waits, so neither does the commit: it is done at its
        // first poll. Were it not, dropping it would answer its callers `WriterStopped`.
        let Some(committed) = group_commit::commit(&mut writer, batch).now_or_never() else {
            tracing::error!("a SQLite commit did not complete at once");
            continue;
        };
        if !committed.committed_any() {
            committed.answer();
            continue;
        }
        if let Err(std_mpsc::SendError(committed)) = flushes.send(committed) {
            let jobs = committed.jobs;
            group_commit::fail_all(jobs, StoreError::WriterStopped);
        }
    }
}

/// Appends every job's events and projects them, in one transaction; outcomes in order,
/// job after job. The rows go in with multi-row statements whose sizes are powers of two
/// (so a few texts serve every batch and stay prepared); one statement per row would
/// cost SQLite a statement journal per row, which copies each page the row touches.
/// Then the customer rows are read back from the log rows of each customer's newest event
/// in the batch, so what is projected is what the log holds; for an event that was
/// already there this rewrites nothing (its snapshot is already applied, or superseded).
fn write(connection: &mut Connection, jobs: &[Job]) -> Result<Vec<AppendOutcome>, rusqlite::Error> {
    let events: Vec<(&CustomerEvent, &Effect)> = jobs
        .iter()
        .flat_map(|job| job.events.iter().map(|(event, effect)| (event, effect)))
        .collect();
    let sources: Vec<Source> = jobs
        .iter()
        .flat_map(|job| std::iter::repeat_n(job.source, job.events.len()))
        .collect();
    let plan = AppendPlan::new(&events);
    let rows: Vec<(&EventRow, Source)> = plan
        .rows
        .iter()
        .zip(&plan.candidates)
        .map(|(row, &i)| (row, sources[i]))
        .collect();
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut stored = Vec::with_capacity(rows.len());
    for chunk in statement_chunks(&rows) {
        let mut insert = transaction.prepare_cached(&insert_events_sql(chunk.len()))?;
        let mut column = 0;
        let mut bind = |value: &dyn rusqlite::ToSql| {
            column += 1;
            insert.raw_bind_parameter(column, value)
        };
        for (row, source) in chunk {
            bind(&row.event_id)?;
            bind(&row.account)?;
            bind(&row.event_type)?;
            bind(&row.created)?;
            bind(&row.livemode)?;
            bind(&row.object_id)?;
            bind(&row.payload)?;
            bind(&row.customer_id)?;
            bind(&row.email)?;
            bind(&row.email_key)?;
            bind(&row.name)?;
            bind(&row.customer_created)?;
            bind(&row.version)?;
            bind(&row.deleted)?;
            bind(&row.projection_error)?;
            bind(&source.as_str())?;
            bind(&PROJECTION_VERSION)?;
        }
        let mut new = insert.raw_query();
        while let Some(row) = new.next()? {
            stored.push((row.get(0)?, row.get(1)?));
        }
    }
    let newest = serde_json::to_string(&plan.newest)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    transaction
        .prepare_cached(&project_newest_sql())?
        .execute([newest])?;
    transaction.commit()?;
    Ok(plan.outcomes(stored))
}

/// Inserts `rows` event rows, each of [`EventRow`]'s columns then source and projection
/// version; returns `(seq, event_id)` of the rows that were new.
fn insert_events_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; 17].join(", "));
    format!(
        "{INSERT_EVENTS_HEAD} VALUES {}
         ON CONFLICT (event_id) DO NOTHING RETURNING seq, event_id",
        vec![row; rows].join(", ")
    )
}

/// Projects the log rows whose event ids are in the JSON array `?1`.
fn project_newest_sql() -> String {
    format!(
        "{head}
         SELECT e.account, e.livemode, e.customer_id, e.email, e.email_key, e.name,
                e.customer_created, e.deleted, e.version, e.event_id, e.created
         FROM json_each(?1) AS newest JOIN events AS e ON e.event_id = newest.value
         WHERE e.version IS NOT NULL
         {tail}",
        head = UPSERT_CUSTOMERS_HEAD.replace("{table}", "customers"),
        tail = *UPSERT_CUSTOMERS_TAIL,
    )
}

/// The flusher thread: each turn makes every batch committed so far durable, answers
/// their callers, then asks for a checkpoint. Each batch it holds is callers still
/// waiting, so what it queues is bounded by the appends in flight.
///
/// A failed flush is final: after a failed `fsync`, Linux may have dropped the pages it
/// could not write and report the next `fsync` as a success, so a later append (or a
/// redelivery found as a duplicate of a row that never reached the disk) would be
/// acknowledged without being durable. Every batch from then on fails as well, and
/// readiness fails, until the service is restarted (after someone has looked at the disk:
/// the error is logged); Stripe redelivers what was refused. An I/O error of the writer or
/// the checkpointer is final alike: a failed write-back of the database file is reported
/// to their `fsync` only (the log's is heard of here too, see [`Log`]). A full disk is
/// not final (see [`io_failure`]): its writes fail before anything is taken, and the
/// first commit after room is made succeeds.
fn flush_each(
    wal: &Path,
    committed: std_mpsc::Receiver<Committed>,
    checkpoints: std_mpsc::SyncSender<()>,
    failure: &DiskFailure,
) {
    let mut log = Log::new(wal);
    while let Ok(first) = committed.recv() {
        let due: Vec<Committed> = std::iter::once(first).chain(committed.try_iter()).collect();
        // Synced first, then asked whether the disk failed: a failure another thread saw
        // while this sync ran is then heard of before anything is acknowledged.
        let synced = log.flush();
        let flushed = match (failure.get(), synced) {
            (Some(failure), _) => Err(failure.clone()),
            (None, Ok(())) => Ok(()),
            (None, Err(error)) => Err(disk_failed(failure, "flushing the write-ahead log", &error)),
        };
        match flushed {
            Ok(()) => due.into_iter().for_each(Committed::answer),
            Err(failure) => {
                for batch in due {
                    batch.fail_each(|| StoreError::DiskFailed(failure.clone()));
                }
            }
        }
        // Full means one is already due.
        let _ = checkpoints.try_send(());
    }
}

/// The write-ahead log as the flusher holds it: one open file, kept from flush to flush.
///
/// Linux reports a failed write-back to the `fsync` of every file description that was
/// open when it failed, once each, but a file opened afterwards hears of it only if no one
/// has yet: once SQLite's own sync (the writer's automatic checkpoint, whose error SQLite
/// keeps to itself, or the checkpointer's) has seen the error, a log opened for each
/// flush would sync "successfully" and acknowledge commits whose pages were lost. Held
/// open, it hears of every failure since its previous flush, whoever saw it first.
struct Log {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Log {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
        }
    }

    /// Makes every commit so far durable: fsync of the write-ahead log. With no log file
    /// there is nothing to flush: SQLite removes it only after copying it into the
    /// database file and syncing that, when its last connection closes. A log file that
    /// is no longer the one at the path (removed and created again then) is replaced.
    fn flush(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let current = match std::fs::metadata(&self.path) {
            Ok(current) => current,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        if let Some(file) = &self.file {
            let held = file.metadata()?;
            if (held.dev(), held.ino()) != (current.dev(), current.ino()) {
                // The old file's pending errors go with it: it is no longer the log.
                self.file = None;
            }
        }
        let file = match self.file.take() {
            Some(file) => file,
            None => std::fs::File::open(&self.path)?,
        };
        let synced = file.sync_data();
        self.file = Some(file);
        synced
    }
}

/// The checkpointer thread: a passive checkpoint (copies what it can of the log into the
/// database file without waiting for readers or blocking the writer) after each flush.
/// A signal that arrives while one runs is kept (capacity 1), so the last flush is always
/// followed by one. When it cannot, the writer checkpoints as the log passes 1,000 pages.
/// An I/O error is the disk failing (final, see [`flush_each`]); once it has failed, no
/// more is written to it.
fn checkpoint_each(connection: Connection, due: std_mpsc::Receiver<()>, failure: &DiskFailure) {
    while due.recv().is_ok() {
        if failure.get().is_some() {
            continue;
        }
        let checkpoint = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        match checkpoint {
            Err(error) if io_failure(&error) => {
                disk_failed(failure, "checkpointing the write-ahead log", &error);
            }
            Err(error) => {
                tracing::warn!(%error, "background checkpoint failed; the writer will do it")
            }
            Ok(()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AccountId;
    use crate::store::{DatabaseUrl, Store};
    use crate::stripe::event::{self, Delivery};

    fn event(id: &str, customer: &str) -> (CustomerEvent, Effect) {
        parsed(&body(id, customer))
    }

    fn body(id: &str, customer: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "type": "customer.created", "created": 1_700_000_000, "livemode": false,
            "data": {"object": {"object": "customer", "id": customer, "email": "a@example.com",
                                "created": 1_700_000_000}},
        })
    }

    fn parsed(body: &serde_json::Value) -> (CustomerEvent, Effect) {
        let platform = AccountId::parse("platform").unwrap();
        let Ok(Delivery::Customer(event)) = event::parse(body.to_string().as_bytes(), &platform)
        else {
            panic!("a customer event")
        };
        let effect = crate::projection::effect_of(&event);
        (event, effect)
    }

    /// A customer event carrying 96 KiB, so that a few hundred fill a small disk.
    fn padded_event(id: &str, customer: &str) -> (CustomerEvent, Effect) {
        let mut body = body(id, customer);
        body["data"]["object"]["padding"] = "x".repeat(96 << 10).into();
        parsed(&body)
    }

    fn job(events: Vec<(CustomerEvent, Effect)>, source: Source) -> Job {
        Job::new(events, source).0
    }

    /// A batch committed and waiting for its flush, and the receiver of its answer.
    fn committed() -> (
        Committed,
        tokio::sync::oneshot::Receiver<Result<Vec<AppendOutcome>, StoreError>>,
    ) {
        let (job, answer) = Job::new(Vec::new(), Source::Webhook);
        let batch = Committed {
            jobs: vec![job],
            results: vec![Ok(Vec::new())],
            started: std::time::Instant::now(),
        };
        (batch, answer)
    }

    fn assert_flush_failed<T: std::fmt::Debug>(result: &Result<T, StoreError>) {
        assert!(
            matches!(result, Err(StoreError::DiskFailed(_))),
            "{result:?}"
        );
    }

    /// A full disk is not a failing one, whichever code SQLite gives it: the log's index
    /// that cannot grow is an I/O error to SQLite, and is said to be a full disk.
    #[test]
    fn a_full_disk_is_not_a_failed_disk() {
        use rusqlite::ffi;
        let error = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        for full in [ffi::SQLITE_FULL, ffi::SQLITE_IOERR_SHMSIZE] {
            assert!(!io_failure(&error(full)), "{full}");
        }
        for failed in [
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_IOERR_SHORT_READ,
        ] {
            assert!(io_failure(&error(failed)), "{failed}");
        }
        let said = described(error(ffi::SQLITE_IOERR_SHMSIZE)).to_string();
        assert!(said.contains("is the disk full?"), "{said}");
    }

    /// After a failed flush, a later flush that succeeds proves nothing (the failed one's
    /// pages may be gone): every later batch fails too.
    #[test]
    fn a_failed_flush_fails_every_later_batch() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the log's folder should be: opening the log fails (not a folder).
        let folder = dir.path().join("data");
        std::fs::write(&folder, b"").unwrap();
        let wal = folder.join("stripe-projector.db-wal");
        let (flushes, committed_batches) = std_mpsc::channel();
        let (checkpoints, _due) = std_mpsc::sync_channel(1);
        let failure = Arc::new(OnceLock::new());
        let flusher = {
            let failure = failure.clone();
            std::thread::spawn(move || flush_each(&wal, committed_batches, checkpoints, &failure))
        };

        let (batch, answer) = committed();
        flushes.send(batch).unwrap();
        let first = answer.blocking_recv().unwrap();
        // The folder is back, without a log: a flush alone would now succeed.
        std::fs::remove_file(&folder).unwrap();
        std::fs::create_dir(&folder).unwrap();
        let (batch, answer) = committed();
        flushes.send(batch).unwrap();
        let second = answer.blocking_recv().unwrap();
        drop(flushes);
        flusher.join().unwrap();

        assert_flush_failed(&first);
        assert_flush_failed(&second);
        assert!(failure.get().is_some());
    }

    /// An ext4 file system on a loop device whose backing file, on a tmpfs, is far larger
    /// than the tmpfs: writes land in the page cache, and their write-back fails (the
    /// disk under the file system is full). Torn down when dropped, a panic included.
    /// (`tests/api/disk_full.rs` has the commented version; this is the same recipe.)
    struct FailingDisk {
        backing: tempfile::TempDir,
        mount: tempfile::TempDir,
        device: Option<String>,
        mounted: Vec<PathBuf>,
    }

    fn run(program: &str, args: &[&str]) -> Result<String, String> {
        let output = std::process::Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
        match output.status.success() {
            true => Ok(text(&output.stdout)),
            false => Err(format!(
                "`{program} {}`: {}",
                args.join(" "),
                text(&output.stderr)
            )),
        }
    }

    impl FailingDisk {
        /// Panics (the test fails, it does not skip) when the machine does not let it
        /// mount or attach a loop device: the test needs root.
        fn new() -> Self {
            Self::with_journal("lazy_itable_init=1,lazy_journal_init=1")
        }

        /// With `lazy_journal_init=0` the journal is written whole when the file system is
        /// made, so it already has its room: only data write-backs fail, and the file
        /// system goes on (a failed journal write would stop every later `fsync`).
        fn with_journal(init: &str) -> Self {
            let mut disk = Self {
                backing: tempfile::tempdir().unwrap(),
                mount: tempfile::tempdir().unwrap(),
                device: None,
                mounted: Vec::new(),
            };
            let backing = disk.backing.path().to_str().unwrap().to_owned();
            let mount = disk.mount.path().to_str().unwrap().to_owned();
            let must = |result: Result<String, String>| {
                result.unwrap_or_else(|e| panic!("setting up a failing disk (needs root): {e}"))
            };
            must(run(
                "mount",
                &["-t", "tmpfs", "-o", "size=12m", "tmpfs", &backing],
            ));
            disk.mounted.push(disk.backing.path().to_owned());
            let image = format!("{backing}/disk.img");
            must(run("truncate", &["-s", "256M", &image]));
            let device = must(run("losetup", &["--find", "--show", &image]));
            disk.device = Some(device.clone());
            must(run("mkfs.ext4", &["-q", "-E", init, &device]));
            must(run("mount", &["-t", "ext4", &device, &mount]));
            disk.mounted.push(disk.mount.path().to_owned());
            disk
        }
    }

    impl Drop for FailingDisk {
        fn drop(&mut self) {
            // The ext4 mount first, then the loop device (detaching one still in use
            // frees it once unused), then the tmpfs; a busy mount is detached lazily.
            let mut mounted = std::mem::take(&mut self.mounted);
            let ext4 = mounted.pop();
            let unmount = |point: PathBuf| {
                let point = point.to_str().unwrap().to_owned();
                if run("umount", &[&point]).is_err() {
                    let _ = run("umount", &["--lazy", &point]);
                }
            };
            ext4.into_iter().for_each(unmount);
            if let Some(device) = self.device.take() {
                let _ = run("losetup", &["--detach", &device]);
            }
            mounted.into_iter().for_each(unmount);
        }
    }

    /// A failed write-back of the log that another file description's `fsync` saw first
    /// (as SQLite's own syncs do, the writer's automatic checkpoint keeping the error to
    /// itself) still fails the flusher's next flush: a log opened afresh for the flush
    /// would hear nothing of it, and acknowledge lost commits.
    #[test]
    fn a_failed_write_back_seen_elsewhere_still_fails_the_flush() {
        use std::io::Write;
        let disk = FailingDisk::with_journal("lazy_itable_init=1,lazy_journal_init=0");
        let wal = disk.mount.path().join("writer.db-wal");
        std::fs::write(&wal, b"header").unwrap();
        let mut log = Log::new(&wal);
        log.flush().unwrap();

        // SQLite's side: writes far more than the disk has room for, then syncs them.
        let mut sqlite = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
        let page = vec![7u8; 1 << 20];
        for _ in 0..64 {
            sqlite.write_all(&page).unwrap();
        }
        assert!(sqlite.sync_data().is_err(), "the write-back did not fail");
        // Opened now, the log would sync "successfully": the error has been seen.
        let fresh = std::fs::File::open(&wal).unwrap();
        assert!(
            fresh.sync_data().is_ok(),
            "the kernel reports seen errors to new files"
        );
        drop(fresh);

        assert!(
            log.flush().is_err(),
            "the held log did not hear of the failure"
        );
        drop((log, sqlite));
    }

    /// Once the disk has failed under the log, appends are refused before they are
    /// written and readiness fails, so an orchestrator restarts the service.
    #[tokio::test]
    async fn after_a_failed_flush_appends_and_readiness_fail() {
        let disk = FailingDisk::new();
        let url = format!("sqlite:{}", disk.mount.path().join("writer.db").display());
        let store = Store::connect(&DatabaseUrl::parse(&url).unwrap())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store.ping().await.unwrap();
        // Padded events until the disk fails (far fewer than this fit on it).
        let mut failed = None;
        for n in 0..1_000 {
            let (event, effect) = padded_event(&format!("evt_{n}"), &format!("cus_{n}"));
            if let Err(error) = store.append(vec![(event, effect)], Source::Webhook).await {
                failed = Some(error);
                break;
            }
        }
        assert!(failed.is_some(), "the disk never failed");

        let (event, effect) = event("evt_after", "cus_after");
        let appended = store.append(vec![(event, effect)], Source::Webhook).await;
        let ready = store.ping().await;

        assert_flush_failed(&appended);
        assert_flush_failed(&ready);
        let Store::Sqlite(sqlite) = &store else {
            unreachable!("a sqlite: URL")
        };
        let written: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id = ?")
            .bind("evt_after")
            .fetch_one(&sqlite.reader)
            .await
            .unwrap();
        assert_eq!(written, 0);
        drop(store);
    }

    /// When the database refuses a batch's statement, the batch is written again job by
    /// job: the job it refuses fails alone, and the others are stored.
    #[tokio::test]
    async fn a_refused_job_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let url = DatabaseUrl::parse(&format!("sqlite:{}", path.display())).unwrap();
        Store::connect(&url).await.unwrap().migrate().await.unwrap();
        let connection = open_connection(&path, WRITER_SETTINGS).unwrap();
        connection
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.event_id = 'evt_bad'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let mut writer = Writer {
            connection,
            failure: Arc::new(DiskFailure::new()),
        };
        let jobs = vec![
            job(vec![event("evt_good", "cus_good")], Source::Webhook),
            job(vec![event("evt_bad", "cus_bad")], Source::Webhook),
            job(vec![event("evt_also", "cus_also")], Source::Import),
        ];

        let committed = group_commit::commit(&mut writer, jobs)
            .now_or_never()
            .unwrap();

        let stored: Vec<bool> = committed
            .results
            .iter()
            .map(|result| matches!(result.as_deref(), Ok([AppendOutcome::Stored { .. }])))
            .collect();
        assert_eq!(stored, [true, false, true]);
        assert!(
            matches!(committed.results[1], Err(StoreError::Sqlite(_))),
            "{:?}",
            committed.results[1]
        );
        let logged: Vec<String> = writer
            .connection
            .prepare("SELECT event_id FROM events ORDER BY event_id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(logged, ["evt_also", "evt_good"]);
    }

    /// Several callers' appends in one transaction: each row keeps its own caller's
    /// source, a repeat across callers is a duplicate, and outcomes come back job by job.
    #[tokio::test]
    async fn one_transaction_keeps_each_callers_source_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.db");
        let url = DatabaseUrl::parse(&format!("sqlite:{}", path.display())).unwrap();
        Store::connect(&url).await.unwrap().migrate().await.unwrap();
        let mut connection = open_connection(&path, WRITER_SETTINGS).unwrap();
        let jobs = [
            job(
                vec![event("evt_b", "cus_b"), event("evt_a", "cus_a")],
                Source::Import,
            ),
            job(
                vec![event("evt_c", "cus_c"), event("evt_a", "cus_a")],
                Source::Webhook,
            ),
        ];

        let outcomes = write(&mut connection, &jobs).unwrap();

        let stored: Vec<bool> = outcomes
            .iter()
            .map(|outcome| matches!(outcome, AppendOutcome::Stored { .. }))
            .collect();
        assert_eq!(stored, [true, true, true, false]);
        let mut rows = connection
            .prepare("SELECT event_id, source FROM events ORDER BY event_id")
            .unwrap();
        let sources: Vec<(String, String)> = rows
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected = [
            ("evt_a", "import"),
            ("evt_b", "import"),
            ("evt_c", "webhook"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(id, source)| (id.to_string(), source.to_string()))
            .collect();
        assert_eq!(sources, expected);
        let customers: i64 = connection
            .query_row("SELECT count(*) FROM customers", [], |row| row.get(0))
            .unwrap();
        assert_eq!(customers, 3);
    }
}
