//! Dev-only helpers for Tasklane's tests: real services, isolated per test.

pub mod db;
pub mod redis;
