//! The adapter's settings and the connection pool built from them.

use crate::errors::QueryTimeout;
use crate::pool::Pool;
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime, Timeouts};
use std::fmt;
use std::time::Duration;

/// What the adapter needs to reach PostgreSQL. The app fills it from its own settings.
#[derive(Clone)]
pub struct PgSettings {
    /// A `postgres://` URL or a `key=value` connection string. It may hold a password: it is
    /// never logged, and [`fmt::Debug`] hides it.
    pub url: String,
    /// The most connections the pool opens.
    pub pool_size: usize,
    /// How many shards the pool is split into: one per HTTP worker thread, each of which claims
    /// its own (see `pool.rs`). 1 is one plain pool; more than `pool_size` counts as `pool_size`.
    pub shards: usize,
    /// How long a caller waits for a free connection when all are in use.
    pub wait_timeout: Duration,
    /// How long opening a new connection (TCP, start-up, authentication) may take.
    pub connect_timeout: Duration,
    /// How long checking an idle connection before reuse may take.
    pub recycle_timeout: Duration,
    /// How long one statement may run; also set as the server's `statement_timeout`, so that a
    /// statement the client gave up on does not go on running (or holding locks) on the server.
    pub query_timeout: Duration,
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSettings")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("shards", &self.shards)
            .field("wait_timeout", &self.wait_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("recycle_timeout", &self.recycle_timeout)
            .field("query_timeout", &self.query_timeout)
            .finish()
    }
}

/// Why a pool could not be built. No variant carries the URL, which may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The URL does not parse. `reason` never quotes the URL.
    #[error("the PostgreSQL URL is malformed: {reason}")]
    InvalidUrl { reason: &'static str },
    /// A pool of no connections could serve nothing.
    #[error("the PostgreSQL pool size must be at least 1")]
    PoolSize,
    /// deadpool refused the configuration.
    #[error("could not build the PostgreSQL pool")]
    Build(#[source] deadpool_postgres::BuildError),
}

/// Builds the pool. It makes no connection: the first one is opened by the first caller (or by
/// [`migrate`](fn@crate::migrate)), so start-up can retry an unreachable database as it sees fit.
///
/// # Errors
/// [`SetupError`] for a malformed URL, a zero pool size or a configuration deadpool refuses.
pub fn build_pool(s: &PgSettings) -> Result<Pool, SetupError> {
    if s.pool_size == 0 {
        return Err(SetupError::PoolSize);
    }
    let mut pg: tokio_postgres::Config = s.url.parse().map_err(|e| SetupError::InvalidUrl {
        reason: url_error_reason(&e),
    })?;
    pg.connect_timeout(s.connect_timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("tasklane");
    }
    // Sent in the start-up packet: no extra round trip per connection. A URL that sets either
    // of these itself keeps its own.
    //
    // JIT compilation is off: every statement Tasklane sends is a short one, and the server
    // compiles any whose estimated cost passes `jit_above_cost`, a few milliseconds each run.
    // A search walking the list with its generic plan (`repository.rs`) is estimated far above
    // it on a large table while it runs in well under a millisecond, and compiling doubled its
    // time (docs/PERFORMANCE.md section 21).
    let defaults = [
        (
            "statement_timeout",
            QueryTimeout::millis(s.query_timeout).to_string(),
        ),
        ("jit", "off".to_owned()),
    ];
    let own = pg.get_options().unwrap_or_default().to_owned();
    let mut options = own.clone();
    for (name, value) in defaults {
        // `-c jit=on` and `--jit=on` both hold `jit=`; `jit_above_cost=...` does not.
        if !own.contains(&format!("{name}=")) {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c {name}={value}"));
        }
    }
    if options != own {
        pg.options(options);
    }

    let timeouts = Timeouts {
        wait: Some(s.wait_timeout),
        create: Some(s.connect_timeout),
        recycle: Some(s.recycle_timeout),
    };
    Pool::new(s.pool_size, s.shards, timeouts, |size, connect| {
        let manager = Manager::from_connect(
            pg.clone(),
            connect,
            ManagerConfig {
                // Only `is_closed()` on reuse: no round trip per checkout. A connection broken
                // since fails its next query, which maps to `Unavailable`; a query timeout
                // discards its connection outright.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(size)
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(SetupError::Build)
    })
}

/// Names what is wrong with a URL without echoing any of it. tokio-postgres's own messages may
/// quote part of the string (an unknown option's name, an unexpected character), which could be
/// part of a password, so only a fixed text is passed on.
fn url_error_reason(e: &tokio_postgres::Error) -> &'static str {
    // The Display is only "invalid connection string"; the detail is in the source.
    let text = std::error::Error::source(e)
        .map(ToString::to_string)
        .unwrap_or_default();
    let option = text
        .split_once("invalid value for option `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name);
    match option {
        Some("port") => "invalid port",
        Some("host") => "invalid host",
        Some("hostaddr") => "invalid hostaddr",
        Some("sslmode") => "invalid sslmode",
        Some("connect_timeout") => "invalid connect_timeout",
        Some("target_session_attrs") => "invalid target_session_attrs",
        Some(_) => "an option has an invalid value",
        None => "not a valid postgres:// URL or key=value connection string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> PgSettings {
        PgSettings {
            url: url.to_owned(),
            pool_size: 2,
            shards: 1,
            wait_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(100),
            recycle_timeout: Duration::from_millis(100),
            query_timeout: Duration::from_millis(100),
        }
    }

    #[test]
    fn a_malformed_url_is_refused_without_echoing_it() {
        for url in [
            "postgres://app:s3cr3t@db:notaport/tasks",
            "postgres://app:s3cr3t@db/tasks?s3cr3t=1",
            "host=db password=abc s3cr3t=1",
            "host=db password='s3cr3t",
            "postgres://app:s3cr3t@[db/tasks",
        ] {
            let err = build_pool(&settings(url)).err();
            assert!(matches!(err, Some(SetupError::InvalidUrl { .. })), "{url}");
            let shown = format!(
                "{} {:?}",
                err.as_ref().map_or(String::new(), ToString::to_string),
                err
            );
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
    }

    #[test]
    fn a_bad_port_is_named() {
        let err = build_pool(&settings("postgres://app:pw@db:notaport/tasks")).err();
        assert_eq!(
            err.map(|e| e.to_string()),
            Some("the PostgreSQL URL is malformed: invalid port".to_owned())
        );
    }

    #[test]
    fn settings_debug_hides_the_url() {
        let shown = format!("{:?}", settings("postgres://app:s3cr3t@db/tasks"));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn a_zero_pool_is_refused() {
        let mut s = settings("postgres://db/tasks");
        s.pool_size = 0;
        assert!(matches!(build_pool(&s), Err(SetupError::PoolSize)));
    }

    #[tokio::test]
    async fn building_makes_no_connection() {
        // Nothing listens on port 1: building still succeeds, as no connection is attempted.
        let pool = build_pool(&settings("postgres://app@127.0.0.1:1/tasks"));
        assert!(pool.is_ok_and(|p| p.status().size == 0));
    }
}
