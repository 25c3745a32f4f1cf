//! A rebuild's table on SQLite, filled without holding appends up.
//!
//! SQLite has one write lock per file, and a statement that writes holds it to its end:
//! filling a table of every customer in one statement kept `serve`'s appends waiting for
//! seconds per million events. So the sorted aggregation is written to a scratch file of
//! its own, attached beside the database: that takes the scratch file's lock only, and
//! the database is only read. The rows then go into the database in chunks of
//! [`ROWS_PER_CHUNK`], each its own short transaction, with a pause after each in which a
//! waiting append takes the lock (the appender tries again every millisecond, see
//! `open_connection`). Checkout's index exists from the start and grows chunk by chunk:
//! built at the end by `CREATE INDEX`, it would hold the lock for one statement again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqlitePool};
use tokio::sync::Notify;

use super::SqliteStore;
use crate::projection::canonical;
use crate::projection::order::NEWEST_SQL;
use crate::projection::types::PROJECTED_TYPES_SQL;
use crate::store::sql::{LET_APPENDS_IN, ROWS_PER_CHUNK};

/// The columns of the customer table, in the order the fill selects them.
const COLUMNS: &str = "account, livemode, customer_id, email, email_key, name, customer_created,
                       deleted, version, last_event_id, last_event_created";

/// Every customer's newest snapshot among the events up to `$1` that the current
/// projection (`$2`) extracted, in key order, into the scratch file's table `fill` (whose
/// rowids then follow the key, so each chunk appends to the end of the primary key). One
/// sorted aggregation: in a group with a single `max()`, SQLite takes the other columns
/// from the row holding the maximum (its documented "bare column" rule), so the newest
/// version of rule 3 brings its row. Only types that project (rule 6).
static FILL_SCRATCH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "CREATE TABLE scratch.fill AS
         SELECT account, livemode, customer_id, email, email_key, name, customer_created,
                deleted, {NEWEST_SQL} AS version, event_id AS last_event_id,
                created AS last_event_created
         FROM main.events
         WHERE seq <= $1 AND projection_version >= $2 AND version IS NOT NULL
           AND {PROJECTED_TYPES_SQL}
         GROUP BY account, livemode, customer_id
         ORDER BY account, livemode, customer_id"
    )
});

/// Fills the rebuild's table `aside` (see the module documentation) and returns the rows
/// written. Index names outlive a table rename, so each rebuild's index gets a name of its
/// own (`token`). A scratch file left by an interrupted rebuild is removed first, and
/// this one when done, failed or not.
pub(in crate::store) async fn rebuild_from_columns(
    store: &SqliteStore,
    aside: &str,
    token: &str,
    upto: i64,
    current: i64,
) -> Result<u64, sqlx::Error> {
    let pool = &store.maintenance;
    let scratch = scratch_path(pool.connect_options().get_filename(), aside);
    remove_scratch(&scratch)?;
    create_aside(pool, aside).await?;
    let checkout = canonical::checkout_index_sql(&format!("customers_by_email_{token}"), aside);
    sqlx::query(&checkout).execute(pool).await?;

    let mut connection = bulk_connection(pool).await?;
    let checkpoints = Checkpoints::start(store.reader.clone());
    let filled = fill(
        &mut connection,
        &scratch,
        aside,
        upto,
        current,
        &checkpoints,
    )
    .await;
    checkpoints.stop().await;
    // The connection goes first: it holds the scratch file open.
    let closed = connection.close().await;
    let removed = remove_scratch(&scratch);
    let rows = filled?;
    closed?;
    removed?;
    Ok(rows)
}

async fn fill(
    connection: &mut sqlx::SqliteConnection,
    scratch: &Path,
    aside: &str,
    upto: i64,
    current: i64,
    checkpoints: &Checkpoints,
) -> Result<u64, sqlx::Error> {
    let scratch = scratch
        .to_str()
        .ok_or_else(|| sqlx::Error::Protocol("the database path is not UTF-8".into()))?;
    sqlx::query("ATTACH DATABASE $1 AS scratch")
        .bind(scratch)
        .execute(&mut *connection)
        .await?;
    // The scratch file is thrown away whole if anything fails: no journal, no flush.
    for setting in [
        "PRAGMA scratch.journal_mode = OFF",
        "PRAGMA scratch.synchronous = OFF",
    ] {
        sqlx::query(setting).execute(&mut *connection).await?;
    }
    sqlx::query(&FILL_SCRATCH)
        .bind(upto)
        .bind(current)
        .execute(&mut *connection)
        .await?;
    let last: Option<i64> = sqlx::query_scalar("SELECT max(rowid) FROM scratch.fill")
        .fetch_one(&mut *connection)
        .await?;
    let copy = format!(
        "INSERT INTO main.{aside} ({COLUMNS})
         SELECT {COLUMNS} FROM scratch.fill WHERE rowid > $1 AND rowid <= $2"
    );
    let mut rows = 0;
    let mut after = 0;
    while after < last.unwrap_or(0) {
        let done = sqlx::query(&copy)
            .bind(after)
            .bind(after + ROWS_PER_CHUNK)
            .execute(&mut *connection)
            .await?;
        rows += done.rows_affected();
        after += ROWS_PER_CHUNK;
        checkpoints.due();
        tokio::time::sleep(LET_APPENDS_IN).await;
    }
    sqlx::query("DETACH DATABASE scratch")
        .execute(&mut *connection)
        .await?;
    Ok(rows)
}

/// Checkpoints of the write-ahead log while the chunks are written, on another connection
/// and so on another thread (SQLite runs each connection on one): the chunks' own
/// automatic checkpoints would copy each chunk into the database file between chunks,
/// on the rebuild's thread. Passive: never waits for, nor blocks, a writer or a reader.
struct Checkpoints {
    signal: Arc<CheckpointSignal>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct CheckpointSignal {
    due: Notify,
    stopped: AtomicBool,
}

impl Checkpoints {
    fn start(pool: SqlitePool) -> Self {
        let signal = Arc::new(CheckpointSignal::default());
        let shared = signal.clone();
        let task = tokio::spawn(async move {
            loop {
                shared.due.notified().await;
                if shared.stopped.load(Ordering::Acquire) {
                    return;
                }
                let checkpoint = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&pool)
                    .await;
                // Another checkpoint (serve's) may be running: the next chunk asks again.
                if let Err(error) = checkpoint {
                    tracing::debug!(%error, "a rebuild's checkpoint failed");
                }
            }
        });
        Self { signal, task }
    }

    /// Asks for a checkpoint; one asked for while one runs is kept, and runs next.
    fn due(&self) {
        self.signal.due.notify_one();
    }

    /// Waits for the checkpoint running, if any, and stops.
    async fn stop(self) {
        self.signal.stopped.store(true, Ordering::Release);
        self.signal.due.notify_one();
        if let Err(error) = self.task.await {
            tracing::warn!(%error, "a rebuild's checkpoints stopped abnormally");
        }
    }
}

/// The scratch file of a rebuild into `aside`: beside the database, on the disk sized for
/// it (docs/operations.md, "Sizing"), named like SQLite's own `-wal` and `-shm`.
fn scratch_path(database: &Path, aside: &str) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push(format!("-{aside}"));
    path.into()
}

fn remove_scratch(path: &Path) -> Result<(), sqlx::Error> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(sqlx::Error::Io(error)),
        _ => Ok(()),
    }
}

/// A connection for a rebuild's pass over the whole log and its chunks. Close it after
/// use, so the pool never hands its settings out.
async fn bulk_connection(pool: &SqlitePool) -> Result<PoolConnection<Sqlite>, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    let settings = [
        // Temporary data to files rather than memory: the pools keep it in memory (see
        // `options`), which suits ingestion's small statement journals but would hold a
        // whole sort.
        "PRAGMA temp_store = FILE",
        // A rebuild reads the whole log once: through the writer's map it would all count
        // as this process's memory.
        "PRAGMA mmap_size = 0",
        // The sorter sizes its runs in memory by the page cache: SQLite's default (2 MiB)
        // keeps a rebuild's memory small, not the writer's 16 MiB.
        "PRAGMA cache_size = -2000",
        // The sorter may merge on helper threads: a rebuild is the one process's work.
        "PRAGMA threads = 2",
        // The chunks are not flushed one by one: the swap's commit (`synchronous=FULL`)
        // flushes the log with all of them before it, and a crash before the swap throws
        // them away with the rest of the rebuild.
        "PRAGMA synchronous = NORMAL",
        // Checkpoints run beside the chunks instead (see `Checkpoints`).
        "PRAGMA wal_autocheckpoint = 0",
    ];
    for setting in settings {
        sqlx::query(setting).execute(&mut *connection).await?;
    }
    Ok(connection)
}

/// A rebuild's aside table, declared exactly like the live customer table: SQLite keeps
/// each table's `CREATE TABLE` text, so the column list is taken from there.
async fn create_aside(pool: &SqlitePool, aside: &str) -> Result<(), sqlx::Error> {
    let live: String = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'customers'",
    )
    .fetch_one(pool)
    .await?;
    let columns = live
        .find('(')
        .map(|start| &live[start..])
        .ok_or_else(|| sqlx::Error::Protocol("customers has no column list".into()))?;
    sqlx::query(&format!("CREATE TABLE {aside} {columns}"))
        .execute(pool)
        .await
        .map(drop)
}
