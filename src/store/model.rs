//! The store's vocabulary: where it lives, how it fails, and the rows and answers it
//! deals in.

use serde::Serialize;

use super::{postgres, sqlite};
use crate::domain::{AccountId, EmailKey};

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
pub(super) fn connect_cause(error: &StoreError) -> String {
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
    /// A Customer Stripe's API listed, recorded as a snapshot by `backfill`.
    Backfill => "backfill",
    /// An event Stripe's events API listed, handled by `catch-up` as its delivery.
    EventsApi => "events_api",
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
