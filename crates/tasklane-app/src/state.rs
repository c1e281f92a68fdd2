//! What every handler shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tasklane_domain::TaskService;

/// The application state handed to handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    pub service: Arc<TaskService>,
    /// Set when shutdown begins: readiness answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    pub max_body_bytes: usize,
    /// The longest a request body may take to arrive.
    pub body_timeout: Duration,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
