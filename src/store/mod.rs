//! Storage: the event log and the customer table, on SQLite or PostgreSQL.
//!
//! The only module that knows SQL. It persists what `projection` decides and answers
//! checkout's reads; every write of an event and its projection is one transaction.

mod append;
mod group_commit;
mod postgres;
mod sql;
mod sqlite;

use serde::Serialize;

use crate::domain::{AccountId, EmailKey};
use crate::projection::Projected;

use sql::Sql;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Where the store lives, checked before anything connects.
#[derive(Debug, Clone)]
pub enum DatabaseUrl {
    Sqlite(sqlx::sqlite::SqliteConnectOptions),
    Postgres(sqlx::postgres::PgConnectOptions),
}

/// A `DATABASE_URL` we cannot use. The message never repeats the URL (it may hold a
/// password).
#[derive(Debug, thiserror::Error)]
#[error("DATABASE_URL {0}")]
pub struct InvalidDatabaseUrl(String);

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, InvalidDatabaseUrl> {
        let invalid = |e: sqlx::Error| InvalidDatabaseUrl(format!("is not usable: {e}"));
        if url.starts_with("sqlite:") {
            sqlite::options(url).map(Self::Sqlite).map_err(invalid)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::options(url).map(Self::Postgres).map_err(invalid)
        } else {
            Err(InvalidDatabaseUrl(
                "must start with sqlite: or postgres://".to_owned(),
            ))
        }
    }
}

impl DatabaseUrl {
    /// Where the database is, for messages: the SQLite file, or the PostgreSQL server and
    /// database. Never the password.
    pub fn location(&self) -> String {
        match self {
            Self::Sqlite(options) => format!("SQLite file {}", options.get_filename().display()),
            Self::Postgres(options) => {
                let server = match options.get_socket() {
                    Some(socket) => format!("socket {}", socket.display()),
                    None => format!("{}:{}", options.get_host(), options.get_port()),
                };
                match options.get_database() {
                    Some(database) => format!("PostgreSQL server {server}, database {database:?}"),
                    None => format!("PostgreSQL server {server}"),
                }
            }
        }
    }
}

/// Why a connection failed, in the database's or the operating system's own words,
/// without sqlx's wrapping ("error returned from database: ...").
fn connect_cause(error: &StoreError) -> String {
    match error {
        StoreError::Database(sqlx::Error::Database(e)) => e.message().to_owned(),
        StoreError::Database(sqlx::Error::Io(e)) => io_cause(e),
        StoreError::Database(sqlx::Error::PoolTimedOut) => {
            "no connection could be made in time".to_owned()
        }
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(_, Some(message))) => message.clone(),
        other => other.to_string(),
    }
}

fn io_cause(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        std::io::ErrorKind::NotFound => "no such socket or host".to_owned(),
        std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
        _ => error.to_string(),
    }
}

/// The store failed; the caller answers 503 and Stripe retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or reached: where, and why.
    #[error("{location}: {cause}")]
    Connect { location: String, cause: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the writer has stopped")]
    WriterStopped,
    #[error("the lookup readers have stopped")]
    ReaderStopped,
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Another event's failure, shared by everything committed with it.
    #[error("the transaction holding this event failed")]
    BatchFailed,
    /// SQLite: the disk failed under the write-ahead log (a flush, or a write or checkpoint
    /// with an I/O error), so what it held may not be on disk; every later append is
    /// refused too (see `writer.rs`).
    #[error("the disk failed under the write-ahead log ({0}); appends are refused until the service restarts")]
    DiskFailed(String),
}

/// Declares [`Source`]: each variant with the name the log stores for it.
macro_rules! sources {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// Where an event in the log came from. A new source is one line here.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Source {
            $($(#[$doc])* $variant,)+
        }

        impl Source {
            /// The name stored in the log's `source` column and used as a metric label.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }
    };
}

sources! {
    /// Delivered to `POST /webhooks/stripe`.
    Webhook => "webhook",
    /// Backfilled from a Stripe event export by `import`.
    Import => "import",
    /// Recorded from Stripe's answer to our own API call (checkout's get-or-create).
    Api => "api",
}

/// The result of appending an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Newly in the log at `seq`, projected (or recorded as a projection error).
    Stored {
        seq: i64,
        projection_error: Option<String>,
    },
    /// The event id was already in the log; nothing changed.
    Duplicate,
}

/// What checkout reads: the lookup body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Customer {
    pub customer_id: String,
    pub account: String,
    /// As Stripe has it (not normalized).
    pub email: Option<String>,
    pub livemode: bool,
    pub name: Option<String>,
    pub last_event_id: String,
    pub last_event_created: i64,
}

/// A row of a many-key lookup: the customer found for the key at position `i` (from 0).
#[derive(sqlx::FromRow)]
struct NumberedCustomer {
    i: i64,
    #[sqlx(flatten)]
    customer: Customer,
}

/// Places each backend's numbered rows at their key's position; keys without a row are
/// `None`.
fn in_key_order(
    rows: Vec<NumberedCustomer>,
    keys: usize,
) -> Result<Vec<Option<Customer>>, sqlx::Error> {
    let mut found = vec![None; keys];
    for row in rows {
        let slot = usize::try_from(row.i)
            .ok()
            .and_then(|i| found.get_mut(i))
            .ok_or_else(|| sqlx::Error::Protocol(format!("lookup key {} out of range", row.i)))?;
        *slot = Some(row.customer);
    }
    Ok(found)
}

/// Checkout's question: the customer for this email on this account (see
/// `lookup::LookupRequest::parse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupRequest {
    pub account: AccountId,
    pub email: EmailKey,
    /// `None`: either mode, as long as only one has a customer.
    pub livemode: Option<bool>,
}

/// Checkout's answer for `(account, email[, livemode])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Customer),
    NotFound,
    /// No livemode was given and both modes have a customer.
    AmbiguousLivemode,
}

/// A whole row of the customer table, deleted customers included: for comparisons
/// (tests, and `replay --verify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ProjectedCustomer {
    pub account: String,
    pub livemode: bool,
    pub customer_id: String,
    pub email: Option<String>,
    pub email_key: Option<String>,
    pub name: Option<String>,
    pub customer_created: i64,
    pub deleted: bool,
    pub version: String,
    pub last_event_id: String,
    pub last_event_created: i64,
}

/// One row of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LoggedEvent {
    pub seq: i64,
    pub event_id: String,
    /// The event's `account`, else the platform's id.
    pub account: String,
    pub event_type: String,
    pub created: i64,
    pub livemode: bool,
    pub object_id: Option<String>,
    pub source: String,
    /// The delivered bytes, verbatim.
    pub payload: String,
    pub projection_error: Option<String>,
}

/// A row of the log as a rebuild reads it: the envelope, what the projection extracted
/// when the event was appended, and the payload when that extraction must be redone.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LogRecord {
    pub seq: i64,
    pub event_id: String,
    pub account: String,
    pub event_type: String,
    pub created: i64,
    pub livemode: bool,
    /// The `PROJECTION_VERSION` that extracted the columns below.
    pub projection_version: i64,
    pub customer_id: Option<String>,
    pub email: Option<String>,
    pub email_key: Option<String>,
    pub name: Option<String>,
    pub customer_created: Option<i64>,
    pub version: Option<String>,
    /// Present when `projection_version` is older than the caller asked for.
    pub payload: Option<String>,
}

/// The part of the log up to a rebuild's horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct LogSummary {
    pub events: i64,
    /// The oldest `PROJECTION_VERSION` among them; `None` when there are none.
    pub oldest_projection: Option<i64>,
}

/// A customer row on which a rebuild and the live table disagree. `expected_*` are the
/// rebuild's (absent: the rebuild has no such customer), `actual_*` the live table's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Difference {
    pub account: String,
    pub livemode: bool,
    pub customer_id: String,
    pub expected_email: Option<String>,
    pub expected_version: Option<String>,
    pub actual_email: Option<String>,
    pub actual_version: Option<String>,
}

/// What a rebuild does with the table it builds aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildKind {
    /// Swap it in for the live customer table (`replay`).
    Replace,
    /// Compare it with the live table, then drop it (`replay --verify`).
    Verify,
}

/// A rebuild in progress: its aside table and the part of the log it reads freely.
#[derive(Debug)]
pub struct Rebuild {
    kind: RebuildKind,
    /// Makes index and constraint names unique to this rebuild.
    token: String,
    /// Every event up to this sequence number had committed when the rebuild started.
    pub horizon: i64,
}

impl Rebuild {
    fn table(&self) -> &'static str {
        Self::table_for(self.kind)
    }

    fn table_for(kind: RebuildKind) -> &'static str {
        match kind {
            RebuildKind::Replace => "customers_rebuild",
            RebuildKind::Verify => "customers_verify",
        }
    }
}

/// The end of a rebuild, appends blocked: what arrived since it started is to be
/// projected and written with [`FinishingRebuild::complete`]. Dropped, it changes nothing
/// and appends resume.
#[derive(Debug)]
pub struct FinishingRebuild {
    rebuild: Rebuild,
    locked: Locked,
    arrived: Vec<LogRecord>,
}

/// The transaction that blocks appends, and the pool it came from.
#[derive(Debug)]
enum Locked {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::SqlitePool),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>, sqlx::PgPool),
}

impl FinishingRebuild {
    /// The events appended since the rebuild started, in log order.
    pub fn arrived(&self) -> &[LogRecord] {
        &self.arrived
    }

    /// Writes `rows` (what [`Self::arrived`] projects to, newest per customer) into the
    /// rebuild's table, then swaps the table in (`Replace`) or returns how it differs from
    /// the live table (`Verify`, which changes nothing).
    pub async fn complete(self, rows: &[Projected]) -> Result<Vec<Difference>, StoreError> {
        let table = self.rebuild.table();
        let swap = self.rebuild.kind == RebuildKind::Replace;
        Ok(match self.locked {
            Locked::Sqlite(tx, pool) => Sql::finish_rebuild(tx, &pool, table, swap, rows).await?,
            Locked::Postgres(tx, pool) => Sql::finish_rebuild(tx, &pool, table, swap, rows).await?,
        })
    }
}

/// Counts for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Status {
    pub events: i64,
    pub customers: i64,
    pub deleted_customers: i64,
    /// The log sequence number the projection has applied up to. Projection happens in
    /// the append transaction, so this is the newest event in the log.
    pub projection_position: i64,
    pub projection_errors: i64,
}

/// The customer table's size, as `replay` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct CustomerCounts {
    pub customers: i64,
    pub deleted_customers: i64,
}

/// The store: an event log and its projection, on one of the two backends.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Connects (creating an SQLite file if missing). Does not migrate.
    ///
    /// A failure says where the database is and why it could not be used (the
    /// database's or the system's own words), never the password.
    pub async fn connect(url: &DatabaseUrl) -> Result<Self, StoreError> {
        let connected = match url {
            DatabaseUrl::Sqlite(options) => SqliteStore::connect(options.clone())
                .await
                .map(Self::Sqlite),
            DatabaseUrl::Postgres(options) => PgStore::connect(options.clone())
                .await
                .map(Self::Postgres)
                .map_err(StoreError::from),
        };
        connected.map_err(|error| StoreError::Connect {
            location: url.location(),
            cause: connect_cause(&error),
        })
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(store) => store.migrate().await?,
            Self::Postgres(store) => store.migrate().await?,
        }
        Ok(())
    }

    /// The customer checkout should use for this email on this account.
    pub async fn lookup(
        &self,
        account: &AccountId,
        email: &EmailKey,
        livemode: Option<bool>,
    ) -> Result<Lookup, StoreError> {
        let request = LookupRequest {
            account: account.clone(),
            email: email.clone(),
            livemode,
        };
        let mut answers = self.lookup_many(std::slice::from_ref(&request)).await?;
        Ok(answers.pop().unwrap_or(Lookup::NotFound))
    }

    /// Checkout's answers to several lookups, in order, read in one statement (see
    /// `lookup_batch`). A lookup without livemode asks for both modes.
    pub async fn lookup_many(&self, requests: &[LookupRequest]) -> Result<Vec<Lookup>, StoreError> {
        let keys: Vec<(&str, bool, &str)> = requests
            .iter()
            .flat_map(|request| {
                let modes: &[bool] = match request.livemode {
                    Some(false) => &[false],
                    Some(true) => &[true],
                    None => &[false, true],
                };
                modes
                    .iter()
                    .map(|&livemode| (request.account.as_str(), livemode, request.email.as_str()))
            })
            .collect();
        let mut answers = match self {
            Self::Sqlite(s) => s.canonical_many(&keys).await?,
            Self::Postgres(s) => postgres::canonical_many(&s.pool, &keys).await?,
        }
        .into_iter();
        // Each backend answers every key, in order.
        let mut next = || answers.next().flatten();
        let found = |customer: Option<Customer>| customer.map_or(Lookup::NotFound, Lookup::Found);
        Ok(requests
            .iter()
            .map(|request| match request.livemode {
                Some(_) => found(next()),
                None => match (next(), next()) {
                    (Some(_), Some(_)) => Lookup::AmbiguousLivemode,
                    (test, live) => found(test.or(live)),
                },
            })
            .collect())
    }

    /// Every row of the customer table, ordered by (account, livemode, customer id).
    pub async fn customers(&self) -> Result<Vec<ProjectedCustomer>, StoreError> {
        Ok(match self {
            Self::Sqlite(s) => Sql::all_customers(&s.reader).await?,
            Self::Postgres(s) => Sql::all_customers(&s.pool).await?,
        })
    }

    /// One event of the log, by id.
    pub async fn event(&self, event_id: &str) -> Result<Option<LoggedEvent>, StoreError> {
        Ok(match self {
            Self::Sqlite(s) => Sql::event(&s.reader, event_id).await?,
            Self::Postgres(s) => Sql::event(&s.pool, event_id).await?,
        })
    }

    /// How many customers the table holds, live and deleted (cheaper than `status`).
    pub async fn customer_counts(&self) -> Result<CustomerCounts, StoreError> {
        Ok(match self {
            Self::Sqlite(s) => Sql::customer_counts(&s.reader).await?,
            Self::Postgres(s) => Sql::customer_counts(&s.pool).await?,
        })
    }

    pub async fn status(&self) -> Result<Status, StoreError> {
        Ok(match self {
            Self::Sqlite(s) => Sql::status(&s.reader).await?,
            Self::Postgres(s) => Sql::status(&s.pool).await?,
        })
    }

    /// Starts rebuilding the customer table aside (see `replay`). Any aside table left by
    /// an interrupted rebuild of the same kind is dropped.
    pub async fn start_rebuild(&self, kind: RebuildKind) -> Result<Rebuild, StoreError> {
        let token = chrono::Utc::now().timestamp_micros().to_string();
        let table = Rebuild::table_for(kind);
        let horizon = match self {
            Self::Sqlite(s) => Sql::start_rebuild(&s.maintenance, table).await?,
            Self::Postgres(s) => Sql::start_rebuild(&s.pool, table).await?,
        };
        Ok(Rebuild {
            kind,
            token,
            horizon,
        })
    }

    /// The part of the log a rebuild reads before it blocks appends.
    pub async fn log_summary(&self, upto: i64) -> Result<LogSummary, StoreError> {
        Ok(match self {
            Self::Sqlite(s) => Sql::log_summary(&s.reader, upto).await?,
            Self::Postgres(s) => Sql::log_summary(&s.pool, upto).await?,
        })
    }

    /// At most `limit` events of the log after `after` and up to `upto`, in order, with
    /// their payload when their projection version is below `reparse_below`; with
    /// `only_stale`, only those events.
    pub async fn log_page(
        &self,
        after: i64,
        upto: i64,
        limit: i64,
        reparse_below: i64,
        only_stale: bool,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let (below, stale) = (reparse_below, only_stale);
        Ok(match self {
            Self::Sqlite(s) => Sql::log_page(&s.reader, after, upto, limit, below, stale).await?,
            Self::Postgres(s) => Sql::log_page(&s.pool, after, upto, limit, below, stale).await?,
        })
    }

    /// Fills the rebuild's table from the columns the current projection stored with each
    /// event (version `current`), in one statement; returns how many rows it wrote.
    pub async fn rebuild_from_columns(
        &self,
        rebuild: &Rebuild,
        current: i64,
    ) -> Result<u64, StoreError> {
        let (table, token, upto) = (rebuild.table(), rebuild.token.as_str(), rebuild.horizon);
        Ok(match self {
            Self::Sqlite(s) => {
                sqlite::rebuild_from_columns(&s.maintenance, table, token, upto, current).await?
            }
            Self::Postgres(s) => {
                postgres::rebuild_from_columns(&s.pool, table, token, upto, current).await?
            }
        })
    }

    /// Writes projected rows into the rebuild's table (newest snapshot wins, as live).
    pub async fn write_rebuild(
        &self,
        rebuild: &Rebuild,
        rows: &[Projected],
    ) -> Result<(), StoreError> {
        let table = rebuild.table();
        match self {
            Self::Sqlite(s) => Sql::write_rows(&s.maintenance, table, rows).await?,
            Self::Postgres(s) => Sql::write_rows(&s.pool, table, rows).await?,
        }
        Ok(())
    }

    /// Starts the end of a rebuild: blocks appends (until the returned [`FinishingRebuild`]
    /// completes or is dropped) and reads what arrived since the rebuild started, for the
    /// caller to project.
    pub async fn finish_rebuild(&self, rebuild: Rebuild) -> Result<FinishingRebuild, StoreError> {
        let horizon = rebuild.horizon;
        let (locked, arrived) = match self {
            Self::Sqlite(s) => {
                let (tx, arrived) = Sql::lock_for_finish(&s.maintenance, horizon).await?;
                (Locked::Sqlite(tx, s.maintenance.clone()), arrived)
            }
            Self::Postgres(s) => {
                let (tx, arrived) = Sql::lock_for_finish(&s.pool, horizon).await?;
                (Locked::Postgres(tx, s.pool.clone()), arrived)
            }
        };
        Ok(FinishingRebuild {
            rebuild,
            locked,
            arrived,
        })
    }

    /// Removes snapshots older than `older_than` (unix seconds) that a newer snapshot of
    /// the same customer supersedes. Returns how many were removed.
    pub async fn prune_superseded(&self, older_than: i64) -> Result<u64, StoreError> {
        Ok(match self {
            Self::Sqlite(s) => Sql::prune_superseded(&s.maintenance, older_than).await?,
            Self::Postgres(s) => Sql::prune_superseded(&s.pool, older_than).await?,
        })
    }

    /// Whether the database answers: readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.ping().await?,
            Self::Postgres(s) => Sql::ping(&s.pool).await?,
        }
        Ok(())
    }
}
