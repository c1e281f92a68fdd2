//! How driver and pool errors become the port's [`RepoError`]: whatever says "the database
//! cannot answer now" is `Unavailable` (worth retrying, 503), everything else `Unexpected`.

use deadpool_postgres::PoolError;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;
use tasklane_domain::RepoError;

/// A statement did not finish within the repository's query timeout.
#[derive(Debug, thiserror::Error)]
#[error("the query did not finish within {} ms", Self::millis(self.0))]
pub(crate) struct QueryTimeout(pub(crate) Duration);

impl QueryTimeout {
    /// Whole milliseconds, at least 1: what PostgreSQL's `statement_timeout` takes (0 would mean
    /// no limit at all).
    pub(crate) fn millis(d: Duration) -> u128 {
        d.as_millis().max(1)
    }
}

/// One statement's error, for each of the callers it answered (`what`: whose statement, as in
/// "a combined update"): the same variant, with a cause that names it and then chains as the
/// error's own cause does.
pub(crate) fn shared(error: &Arc<RepoError>, what: &'static str) -> RepoError {
    let shared = || {
        Box::new(Shared {
            error: Arc::clone(error),
            what,
        })
    };
    match error.as_ref() {
        RepoError::NotFound => RepoError::NotFound,
        RepoError::PreconditionFailed => RepoError::PreconditionFailed,
        RepoError::IdempotencyKeyReused => RepoError::IdempotencyKeyReused,
        RepoError::IdempotencyKeyInFlight => RepoError::IdempotencyKeyInFlight,
        RepoError::Unavailable(_) => RepoError::Unavailable(shared()),
        RepoError::Unexpected(_) => RepoError::Unexpected(shared()),
    }
}

/// See [`shared`].
#[derive(Debug)]
struct Shared {
    error: Arc<RepoError>,
    what: &'static str,
}

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.what, self.error)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// A row that breaks a domain rule: the schema and the domain disagree, which is a bug.
#[derive(Debug, thiserror::Error)]
#[error("stored task {id} has an invalid {field}")]
pub(crate) struct InvalidRow {
    pub(crate) id: i64,
    pub(crate) field: &'static str,
    #[source]
    pub(crate) source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub(crate) fn from_pg(e: tokio_postgres::Error) -> RepoError {
    if is_unavailable(&e) {
        RepoError::Unavailable(Box::new(e))
    } else {
        RepoError::Unexpected(Box::new(e))
    }
}

pub(crate) fn from_pool(e: PoolError) -> RepoError {
    match e {
        // Every connection busy past the wait, or opening one too slow, or the pool shut down
        // during a graceful stop: all say "not now".
        PoolError::Timeout(_) | PoolError::Closed => RepoError::Unavailable(Box::new(e)),
        // The pool could not open (or recycle) a connection. Whatever PostgreSQL said (refused,
        // no such database after it was dropped, a password rotated under us), the database
        // cannot serve this request now: that is a 503, and readiness must say so.
        PoolError::Backend(inner) => RepoError::Unavailable(Box::new(inner)),
        PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
            RepoError::Unexpected(Box::new(e))
        }
    }
}

/// Whether the error says the database cannot serve now, rather than that the request or the
/// code is wrong.
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") // connection exception
            || code.starts_with("53") // insufficient resources: too many connections, disk full
            || matches!(
                code,
                // The server is shutting down, crashed or starting up.
                "57P01" | "57P02" | "57P03"
                // Cancelled by statement_timeout, or a lock_timeout.
                | "57014" | "55P03"
                // A read-only standby: after a failover, until the pool reconnects to the new
                // primary.
                | "25006"
            );
    }
    // Connection refused or reset, a DNS failure, a connect timeout: the driver wraps an I/O
    // error.
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}
