//! The production backend: PostgreSQL, shared by any number of `serve` processes.
//!
//! Concurrent deliveries of one event meet on the unique event id (`ON CONFLICT DO
//! NOTHING`); concurrent snapshots of one customer meet on its row, where the conditional
//! upsert keeps the newest. Each transaction locks at most one event id and one customer
//! row, always in that order, so transactions cannot deadlock.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

type Db = Postgres;

pub(super) mod queries {
    use super::Db;
    include!("queries.rs");
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A request waits at most this long for a connection: when the database is gone the
/// webhook answers 503 promptly and Stripe retries later.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECTIONS: u32 = 16;

#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
}

/// Checks a `postgres://` URL without connecting.
pub(super) fn options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    PgConnectOptions::from_str(url)
}

impl PgStore {
    pub(super) async fn connect(options: PgConnectOptions) -> Result<Self, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub(super) async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }
}
