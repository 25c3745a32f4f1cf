//! Integration tests: the real HTTP stack on a bound port, over a real SQLite file and a
//! real PostgreSQL database (when TEST_DATABASE_URL is set).

#[macro_use]
mod helpers;
mod backfill;
mod catch_up;
mod cli;
mod client_faults;
mod database_errors;
mod deploy;
mod disk_full;
mod ensure;
mod explain;
mod fake_stripe;
mod faults;
mod hostile;
mod import;
mod isolation;
mod limits;
mod lookup;
mod maintenance;
mod memory;
mod openapi;
mod ops;
mod permutation;
mod pg_crash;
mod php_example;
mod process;
mod replay;
mod rules;
mod secrets;
mod slow_db;
mod sql_mirrors;
mod stripe_reads;
mod webhook;
