//! Tasklane's SQLite adapter, the embedded default store: the
//! [`TaskRepository`](tasklane_domain::TaskRepository) port on rusqlite (SQLite compiled in, so
//! nothing needs installing), and the schema migrations embedded from `migrations/sqlite/`.
//!
//! Start-up is [`open`], which creates the folder and the file, migrates, and opens the
//! connections. It behaves exactly as the PostgreSQL adapter does (order, filters, pagination,
//! text search, versions, preconditions, counts, errors): the port contract suite in
//! `tasklane-testkit` runs against both.

mod errors;
mod migrate;
mod pool;
mod repository;
mod search;
mod settings;

pub use errors::SqliteError;
pub use migrate::{migrations, Migration};
pub use repository::SqliteTaskRepository;
pub use settings::{migrate, open, SqliteSettings};
