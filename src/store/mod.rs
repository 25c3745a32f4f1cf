//! Storage: the event log and the customer table, on SQLite or PostgreSQL.
//!
//! The only module that knows SQL. It persists what `projection` decides and answers
//! checkout's reads; every write of an event and its projection is one transaction.
//!
//! By concern: `model` (the URL, errors, rows and answers), `append` and `group_commit`
//! (the one way into the log), `lookup` (checkout's reads), `rebuild` (what `replay`
//! needs), `sql` (the SQL both backends share), then each backend, `sqlite` and
//! `postgres`. Nothing here knows HTTP or the callers' types.

mod append;
mod backfill;
mod explain;
mod group_commit;
mod lookup;
mod maintenance;
mod model;
mod postgres;
mod rebuild;
mod sql;
mod sqlite;

use lookup::{in_key_order, NumberedCustomer};
use model::connect_cause;
use sql::Sql;

pub use backfill::BackfillPass;
pub use explain::{CheckoutAnswer, ExplainedCustomer, ExplainedRecord, Explanation};
pub use maintenance::{LockError, Maintenance, MaintenanceLock};
pub use model::{
    AppendOutcome, Customer, CustomerCounts, DatabaseUrl, Difference, InvalidDatabaseUrl,
    LogRecord, LogSummary, LoggedEvent, Lookup, LookupRequest, ProjectedCustomer, RebuildKind,
    Source, Status, StoreError,
};
pub use postgres::PgStore;
pub use rebuild::{FinishingRebuild, Rebuild};
pub use sqlite::SqliteStore;

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

    /// Whether the database answers: readiness.
    /// Where the database is, for messages (never the password).
    pub fn location(&self) -> String {
        match self {
            Self::Sqlite(s) => {
                DatabaseUrl::Sqlite((*s.maintenance.connect_options()).clone()).location()
            }
            Self::Postgres(s) => {
                DatabaseUrl::Postgres((*s.pool.connect_options()).clone()).location()
            }
        }
    }

    /// `error` as an operator needs it: where the database is and why it failed. A pool
    /// that timed out says nothing of why, so one connection is tried to find out.
    pub async fn explain_failure(&self, error: StoreError) -> StoreError {
        if let StoreError::Connect { .. } = error {
            return error;
        }
        let cause = match (self, &error) {
            (Self::Postgres(s), StoreError::Database(sqlx::Error::PoolTimedOut)) => {
                let options = s.pool.connect_options();
                let probe = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options);
                match tokio::time::timeout(std::time::Duration::from_secs(2), probe).await {
                    Ok(Ok(connection)) => {
                        drop(connection);
                        "every connection was busy for longer than the pool waits".to_owned()
                    }
                    Ok(Err(e)) => connect_cause(&StoreError::Database(e)),
                    Err(_) => "no answer within 2 s".to_owned(),
                }
            }
            _ => connect_cause(&error),
        };
        StoreError::Connect {
            location: self.location(),
            cause,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.ping().await?,
            Self::Postgres(s) => Sql::ping(&s.pool).await?,
        }
        Ok(())
    }
}
