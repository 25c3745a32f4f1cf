//! The embedded backend: one SQLite file in WAL mode.
//!
//! SQLite takes one writer at a time. Appends go to one writer thread with a connection of
//! its own, which commits everything queued in one transaction (see `writer.rs`); the few
//! other writes (migrations, rebuilds, pruning) use a one-connection pool, so they queue in
//! process instead of spinning on SQLITE_BUSY. Checkout's lookups run on reader threads
//! of their own (see `readers.rs`), other reads on a pool; both proceed during writes.
//!
//! Durability: the writer commits with `synchronous=NORMAL`, which writes the commit to the
//! write-ahead log without waiting for the disk, and the flusher thread then fsyncs the
//! log; no append returns before that flush. The flush is thus out of the write lock: the
//! next batch is written while this one reaches the disk, where `synchronous=FULL` would
//! flush under the lock, one batch at a time. The log is written in order, so a flush
//! covers every commit before it, and a power loss keeps a prefix of the commits. A reader
//! may see a commit a few milliseconds before it is durable; if the machine then loses
//! power, that event is gone, unacknowledged, and Stripe delivers it again.

mod aside;
mod readers;
mod writer;

pub(super) use aside::rebuild_from_columns;

use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::sql::{Dialect, Sql};
use super::{in_key_order, AppendOutcome, Customer, Source, StoreError};
use crate::projection::canonical::{CANDIDATE_SQL, CANONICAL_ORDER_SQL};
use crate::projection::Effect;
use crate::stripe::event::CustomerEvent;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a writer waits for another process (say `replay`) to release the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const READERS: u32 = 4;
/// Threads that answer checkout's lookups: one per lookup query in flight (see
/// `lookup_batch`).
const LOOKUP_READERS: usize = 4;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Writes other than appends: migrations, rebuilds, pruning.
    pub(super) maintenance: SqlitePool,
    pub(super) reader: SqlitePool,
    appender: writer::Appender,
    lookups: readers::Readers,
}

/// Checks a `sqlite:` URL without opening it. An in-memory database is refused: it would
/// lose every acknowledged event at exit, and the appender's connections (see `writer.rs`)
/// could not share it.
pub(super) fn options(url: &str) -> Result<SqliteConnectOptions, sqlx::Error> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Err(sqlx::Error::Configuration(
            "names an in-memory SQLite database, which keeps nothing: give a file".into(),
        ));
    }
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        // Small pages: each event dirties about two random index pages (customer key,
        // email key) that the commit writes whole to the WAL, flushes and checkpoints
        // again, so smaller pages write fewer bytes per event, more so as the log grows.
        // Replay, which reads every page of the log, is slower with them.
        // Applies to new files only: an existing file keeps its page size.
        .page_size(4_096)
        // Statement journals (one per multi-row write) in memory, not a file created and
        // deleted per transaction.
        .pragma("temp_store", "memory"))
}

impl SqliteStore {
    pub(super) async fn connect(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        // Creates the file when missing, before the appender's connections open it.
        let maintenance = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .test_before_acquire(false)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        let appender = writer::Appender::start(options.get_filename())?;
        let lookups = readers::Readers::start(options.get_filename(), LOOKUP_READERS)?;
        Ok(Self {
            maintenance,
            reader,
            appender,
            lookups,
        })
    }

    /// Appends through the writer thread's group commit (see `writer.rs`).
    pub(super) async fn append(
        &self,
        events: Vec<(CustomerEvent, Effect)>,
        source: Source,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        self.appender.append(events, source).await
    }

    /// Whether the database answers and appends can be made durable (see
    /// `writer::flush_each`): readiness.
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.appender.check()?;
        Sql::ping(&self.reader).await?;
        Ok(())
    }

    /// Checkout's customer for each `(account, livemode, email key)`, in order, in one
    /// statement (see [`CANONICAL_MANY`]).
    pub(super) async fn canonical_many(
        &self,
        keys: &[(&str, bool, &str)],
    ) -> Result<Vec<Option<Customer>>, StoreError> {
        let keys_json = serde_json::Value::from(
            keys.iter()
                .map(|&(account, livemode, email_key)| {
                    serde_json::json!([account, i64::from(livemode), email_key])
                })
                .collect::<Vec<_>>(),
        )
        .to_string();
        let rows = self.lookups.canonical_many(keys_json).await?;
        Ok(in_key_order(rows, keys.len())?)
    }

    pub(super) async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.maintenance).await
    }
}

/// Checkout's customer for each `(account, livemode, email key)` of the JSON array `?1`
/// (`[[account, livemode as 0 or 1, email key], ...]`) that has one, numbered by the
/// key's position: the statement's text (and its prepared form) is the same for any
/// number of keys, and each key is one index search for rule 5's first candidate.
static CANONICAL_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT CAST(key.key AS INTEGER) AS i, c.customer_id, c.account, c.email, c.livemode,
                c.name, c.last_event_id, c.last_event_created
         FROM json_each(?1) AS key
         JOIN customers AS c ON c.rowid = (
             SELECT rowid FROM customers
             WHERE account = key.value ->> 0 AND livemode = key.value ->> 1
               AND email_key = key.value ->> 2
               AND {CANDIDATE_SQL}
             ORDER BY {CANONICAL_ORDER_SQL}
             LIMIT 1
         )"
    )
});

/// A connection of our own threads (see `writer.rs`, `readers.rs`) with the settings of
/// every connection of ours (see [`options`]), then `extra`.
fn open_connection(path: &Path, extra: &str) -> Result<rusqlite::Connection, rusqlite::Error> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = rusqlite::Connection::open_with_flags(path, flags)?;
    connection.busy_handler(Some(retry_every_millisecond))?;
    connection.execute_batch("PRAGMA synchronous = FULL; PRAGMA temp_store = memory;")?;
    connection.execute_batch(extra)?;
    Ok(connection)
}

/// Our threads' busy handler: while another connection holds the write lock (a chunk of
/// a rebuild or a prune, see `aside.rs` and `Sql::prune_superseded`), try again every
/// millisecond, for up to [`BUSY_TIMEOUT`]. SQLite's own handler (`busy_timeout`) backs
/// off to 100 ms between tries, and so would mostly miss the short pauses between chunks.
fn retry_every_millisecond(retries: i32) -> bool {
    std::thread::sleep(Duration::from_millis(1));
    u128::try_from(retries).is_ok_and(|retries| retries < BUSY_TIMEOUT.as_millis())
}

fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map(drop)
        .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))
}

impl Dialect for Sqlite {
    /// A write transaction that holds SQLite's write lock from its first statement, so no
    /// other writer (another process's `serve`) can append until it ends.
    async fn begin_locked(
        pool: &SqlitePool,
    ) -> Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    fn rows_affected(done: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn execute_built(
        connection: &mut sqlx::SqliteConnection,
        mut query: sqlx::QueryBuilder<'_, Sqlite>,
    ) -> Result<(), sqlx::Error> {
        query.build().execute(connection).await.map(drop)
    }
}
