//! HTTP tests: the real server on port 0, with the real PostgreSQL and Redis adapters, driven
//! over HTTP. One test binary, several modules (zero-to-production's layout).

// A test that cannot set up or whose assumption breaks should fail loudly.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod cache;
mod conditional;
mod health;
mod helpers;
mod idempotency;
mod lifecycle;
mod limits;
mod list;
mod seed;
mod tasks;
mod validation;
