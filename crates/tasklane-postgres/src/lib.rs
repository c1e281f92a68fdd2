//! Tasklane's PostgreSQL adapter: the [`TaskRepository`](tasklane_domain::TaskRepository) port on
//! tokio-postgres and a pool of deadpool pools, one per worker thread (`pool.rs`), where point
//! reads made at the same time on a thread share a connection (`shared_reads.rs`) and list reads
//! of the same page waiting to start share one statement (`joined_lists.rs`), and the schema
//! migrations embedded from `migrations/postgres/`.
//!
//! Start-up is [`build_pool`] (makes no connection), then [`migrate`](fn@migrate), then
//! [`PgTaskRepository::new`]. Every call the repository makes is bounded in time: waiting for,
//! creating and recycling a pooled connection by the pool's timeouts, and each query by the
//! repository's query timeout, after which the connection is cancelled and discarded; an update
//! waiting in the process for the updates of its task ahead of it (`combine.rs`) by twice the
//! pool's wait plus the query timeout.

mod combine;
mod errors;
mod joined_lists;
mod migrate;
mod pool;
mod repository;
mod search_slots;
mod settings;
mod shared_reads;
mod trigrams;

pub use migrate::{migrate, migrations, schema_fingerprint, MigrateError, Migration};
pub use pool::{Client, Pool, PoolStatus};
pub use repository::PgTaskRepository;
pub use search_slots::{default_search_slots, SearchSlotsStatus};
pub use settings::{build_pool, PgSettings, SetupError};
