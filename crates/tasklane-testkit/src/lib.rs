//! Dev-only helpers for Tasklane's tests: real services, isolated per test.

pub mod contract;
pub mod db;
pub mod pg_cluster;
pub mod proxy;
pub mod redis;
