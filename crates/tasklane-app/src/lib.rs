//! Tasklane's HTTP application: handlers and DTOs over the domain's `TaskService`, settings,
//! telemetry, and the wiring of the PostgreSQL and Redis adapters. `main.rs` only starts it.

pub mod cli;
pub mod dto;
pub mod error;
pub mod http;
pub mod jobs;
pub mod memory_cache;
pub mod metrics;
pub mod routes;
pub mod security_headers;
pub mod settings;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod ui;
