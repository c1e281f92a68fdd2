//! Tasklane's domain: tasks and their value types, the ports the adapters implement, and the
//! service that implements the use cases on top of them. This crate does no I/O.

mod bumps;
mod idempotency;
mod ports;
mod query;
mod service;
mod task;
mod write_through;

pub use idempotency::*;
pub use ports::*;
pub use query::*;
pub use service::*;
pub use task::*;
pub use write_through::ListRenderer;
