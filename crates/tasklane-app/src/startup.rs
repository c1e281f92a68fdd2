//! Wiring: settings in, adapters built, the database waited for and migrated, the listener
//! bound (port 0 works: tests read the port back), and graceful shutdown on SIGTERM.

use crate::memory_cache::{MemoryCacheSettings, MemoryTaskCache};
use crate::metrics::{metrics_middleware, Metrics, PoolGauges, RedisGauges};
use crate::routes;
use crate::security_headers::SecurityHeaders;
use crate::settings::StoreKind;
use crate::settings::{Settings, SettingsError};
use crate::state::AppState;
use crate::telemetry::request_id_middleware;
use actix_cors::Cors;
use actix_web::dev::{Server, ServerHandle};
use actix_web::http::header;
use actix_web::middleware::{from_fn, Condition};
use actix_web::{web, App, HttpServer};
use secrecy::ExposeSecret;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasklane_domain::{TaskCache, TaskRepository, TaskService};
use tasklane_postgres::{PgSettings, PgTaskRepository};
use tasklane_redis::{RedisSettings, RedisTaskCache};
use tasklane_sqlite::SqliteSettings;

/// Why the server could not start. Each message is one line meant for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("TASKLANE_STORE=postgres but neither DATABASE_URL nor DATABASE_URL_FILE is set (postgres://user:password@host:5432/db)")]
    NoDatabase,
    #[error("TASKLANE_STORE={store} contradicts DATABASE_URL, which names {url_kind}")]
    StoreMismatch {
        store: &'static str,
        url_kind: &'static str,
    },
    #[error("cannot open the embedded store: {0}")]
    Sqlite(String),
    #[error("the database at DATABASE_URL did not answer within {0:?}; last error: {1}")]
    DatabaseUnreachable(Duration, String),
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The wired use cases.
pub struct Wiring {
    pub service: Arc<TaskService>,
    /// `postgres` or `sqlite`.
    pub store: &'static str,
    /// `redis`, `memory` or `none`.
    pub cache: &'static str,
    /// The PostgreSQL repository, when that is the store (its pool and search slots are
    /// metrics).
    pub postgres: Option<PgTaskRepository>,
    /// The Redis cache, when there is one (its breaker state is a metric).
    pub redis: Option<Arc<RedisTaskCache>>,
}

/// Where the tasks are kept, as decided from `TASKLANE_STORE` and the database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorePlan {
    Postgres,
    Sqlite(PathBuf),
}

/// Decides the store. With nothing configured at all, the embedded file; `TASKLANE_STORE`
/// makes the choice explicit, and `postgres` without a URL is an error, never a quiet fallback.
///
/// # Errors
/// `NoDatabase` and `StoreMismatch`.
pub fn plan_store(settings: &Settings) -> Result<StorePlan, StartupError> {
    let sqlite_url = settings.sqlite_url_path();
    let postgres_url = settings.database_url.is_some() && sqlite_url.is_none();
    match settings.store {
        StoreKind::Auto | StoreKind::Sqlite if postgres_url => {
            if settings.store == StoreKind::Sqlite {
                Err(StartupError::StoreMismatch {
                    store: "sqlite",
                    url_kind: "a PostgreSQL database",
                })
            } else {
                Ok(StorePlan::Postgres)
            }
        }
        StoreKind::Auto | StoreKind::Sqlite => Ok(StorePlan::Sqlite(PathBuf::from(
            sqlite_url.unwrap_or_else(|| settings.sqlite_path.clone()),
        ))),
        StoreKind::Postgres if postgres_url => Ok(StorePlan::Postgres),
        StoreKind::Postgres if sqlite_url.is_some() => Err(StartupError::StoreMismatch {
            store: "postgres",
            url_kind: "an SQLite file",
        }),
        StoreKind::Postgres => Err(StartupError::NoDatabase),
    }
}

fn sqlite_settings(settings: &Settings, path: PathBuf) -> SqliteSettings {
    SqliteSettings {
        path,
        busy_timeout: Duration::from_millis(settings.db_query_timeout_ms),
        read_connections: settings.db_pool_size.clamp(1, 8),
    }
}

/// Applies the migrations of whichever store is configured (`tasklane migrate`).
///
/// # Errors
/// Any [`StartupError`].
pub async fn migrate_only(settings: &Settings) -> Result<(), StartupError> {
    match plan_store(settings)? {
        StorePlan::Postgres => connect_and_migrate(settings).await.map(|_| ()),
        StorePlan::Sqlite(path) => {
            let applied = tasklane_sqlite::migrate(&sqlite_settings(settings, path))
                .await
                .map_err(|e| StartupError::Sqlite(error_chain(&e)))?;
            tracing::info!(applied, "embedded store migrated");
            Ok(())
        }
    }
}

fn pg_settings(settings: &Settings) -> Result<PgSettings, StartupError> {
    let url = settings
        .database_url
        .as_ref()
        .ok_or(StartupError::NoDatabase)?;
    Ok(PgSettings {
        url: url.expose_secret().to_owned(),
        pool_size: settings.db_pool_size,
        shards: settings.http_workers(),
        wait_timeout: Duration::from_millis(settings.db_wait_timeout_ms),
        connect_timeout: Duration::from_millis(settings.db_connect_timeout_ms),
        recycle_timeout: Duration::from_millis(settings.db_wait_timeout_ms),
        query_timeout: Duration::from_millis(settings.db_query_timeout_ms),
    })
}

/// Builds the pool, waits (with backoff, for `startup_timeout_secs`) until the database
/// answers, and applies the migrations under the advisory lock.
pub async fn connect_and_migrate(
    settings: &Settings,
) -> Result<tasklane_postgres::Pool, StartupError> {
    let pg = pg_settings(settings)?;
    let pool = tasklane_postgres::build_pool(&pg).map_err(|e| {
        StartupError::Settings(SettingsError::Invalid {
            var: "DATABASE_URL".to_owned(),
            reason: e.to_string(),
        })
    })?;
    let limit = Duration::from_secs(settings.startup_timeout_secs);
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match tasklane_postgres::migrate(&pool).await {
            Ok(applied) => {
                tracing::info!(applied, "database ready; migrations applied");
                return Ok(pool);
            }
            Err(e) if migration_retryable(&e) => {
                if started.elapsed() + backoff > limit {
                    return Err(StartupError::DatabaseUnreachable(limit, error_chain(&e)));
                }
                tracing::warn!(attempt, error = %e, retry_in = ?backoff, "database not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(StartupError::Migration(error_chain(&e))),
        }
    }
}

/// Is this a database that is not there yet (worth waiting for), rather than a broken migration?
fn migration_retryable(e: &tasklane_postgres::MigrateError) -> bool {
    use tasklane_postgres::MigrateError;
    match e {
        MigrateError::Connect(_) => true,
        MigrateError::Database(e) => e.is_closed() || e.code().is_none(),
        MigrateError::Failed { .. } | MigrateError::Changed { .. } => false,
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

fn redis_cache(settings: &Settings) -> Result<Option<Arc<RedisTaskCache>>, StartupError> {
    let Some(url) = &settings.redis_url else {
        return Ok(None);
    };
    let cache = RedisTaskCache::new(RedisSettings {
        url: url.expose_secret().to_owned(),
        key_prefix: settings.cache_key_prefix.clone(),
        ttl: Duration::from_secs(settings.cache_ttl_secs),
        pool_size: settings.cache_pool_size,
        breaker_threshold: settings.cache_breaker_threshold,
        breaker_cooldown: Duration::from_millis(settings.cache_breaker_cooldown_ms),
        local_copy_bytes: settings.cache_local_bytes,
        lease_time: Duration::from_millis(settings.cache_lease_ms),
    })
    .map_err(|e| {
        StartupError::Settings(SettingsError::Invalid {
            var: "REDIS_URL".to_owned(),
            reason: e.to_string(),
        })
    })?;
    Ok(Some(Arc::new(cache)))
}

/// Builds the adapters and the service.
///
/// # Errors
/// Any [`StartupError`].
pub async fn wire(settings: &Settings) -> Result<Wiring, StartupError> {
    let plan = plan_store(settings)?;
    let redis = redis_cache(settings)?;
    let (repo, store, postgres): (Arc<dyn TaskRepository>, &'static str, _) = match &plan {
        StorePlan::Postgres => {
            let pool = connect_and_migrate(settings).await?;
            let repo =
                PgTaskRepository::new(pool, Duration::from_millis(settings.db_query_timeout_ms))
                    .with_search_slots(settings.search_slots());
            (Arc::new(repo.clone()), "postgres", Some(repo))
        }
        StorePlan::Sqlite(path) => {
            let repo = tasklane_sqlite::open(&sqlite_settings(settings, path.clone()))
                .await
                .map_err(|e| StartupError::Sqlite(error_chain(&e)))?;
            (Arc::new(repo), "sqlite", None)
        }
    };
    // Without Redis, the embedded store (one process per file) caches in-process; PostgreSQL
    // without Redis does not cache at all, since replicas could not share an in-process cache.
    let (cache, cache_kind): (Option<Arc<dyn TaskCache>>, &'static str) = match (&redis, &plan) {
        (Some(redis), _) => (Some(redis.clone()), "redis"),
        (None, StorePlan::Sqlite(_)) => (
            Some(Arc::new(MemoryTaskCache::new(MemoryCacheSettings {
                ttl: Duration::from_secs(settings.cache_ttl_secs),
                ..MemoryCacheSettings::default()
            }))),
            "memory",
        ),
        (None, StorePlan::Postgres) => (None, "none"),
    };
    match &plan {
        StorePlan::Sqlite(path) => tracing::info!(
            store = "sqlite",
            path = %path.display(),
            cache = cache_kind,
            "storage wired: embedded SQLite file"
        ),
        StorePlan::Postgres => {
            tracing::info!(
                store = "postgres",
                cache = cache_kind,
                "storage wired: PostgreSQL"
            );
        }
    }
    let mut service = TaskService::new(repo, cache, settings.cache_timeout());
    if settings.cache_write_through {
        service = service.with_list_renderer(Arc::new(crate::routes::render_list));
    }
    let service = Arc::new(service);
    Ok(Wiring {
        service,
        store,
        cache: cache_kind,
        postgres,
        redis,
    })
}

/// The longest the head of a connection's first request may take to arrive.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a closing connection may take to shut down once its answer is written.
pub const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How often expired idempotency keys are purged.
const IDEMPOTENCY_CLEANUP_EVERY: Duration = Duration::from_secs(15 * 60);

/// A built server, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
    state: AppState,
    drain_delay: Duration,
}

/// Triggers the same graceful shutdown as SIGTERM (tests use it).
#[derive(Clone)]
pub struct ShutdownHandle {
    server: ServerHandle,
    draining: Arc<AtomicBool>,
    drain_delay: Duration,
}

impl ShutdownHandle {
    /// Readiness turns 503 at once; after the drain delay the listener closes and in-flight
    /// requests get the shutdown timeout to finish.
    pub async fn shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!(drain_delay = ?self.drain_delay, "shutting down: readiness is 503, draining");
        tokio::time::sleep(self.drain_delay).await;
        tracing::info!("closing the listener; finishing in-flight requests");
        self.server.stop(true).await;
    }
}

fn cors(origins: &[String]) -> Cors {
    origins
        .iter()
        .fold(Cors::default(), |cors, origin| cors.allowed_origin(origin))
        .allowed_methods(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
        .allowed_headers([
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::ETAG,
            header::LOCATION,
            header::LINK,
            header::RETRY_AFTER,
            header::HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(600)
}

impl Application {
    /// Wires everything and binds the listener (`TASKLANE_LISTEN`; port 0 picks a free port).
    ///
    /// # Errors
    /// Any [`StartupError`].
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let wiring = wire(&settings).await?;
        Self::with_wiring(settings, wiring)
    }

    /// Binds the server around already wired adapters.
    ///
    /// # Errors
    /// When the listen address cannot be bound.
    pub fn with_wiring(settings: Settings, wiring: Wiring) -> Result<Self, StartupError> {
        let service = wiring.service;
        // Each worker claims a shard of the PostgreSQL pool as it starts (`pool.rs`).
        let pg_pool = wiring.postgres.as_ref().map(|repo| repo.pool().clone());
        let pool_probe = wiring.postgres.map(|repo| {
            Box::new(move || {
                let status = repo.pool().status();
                let searches = repo.search_slots();
                PoolGauges {
                    max_size: status.max_size,
                    size: status.size,
                    available: status.available,
                    waiting: status.waiting,
                    search_slots: searches.max,
                    searches_running: searches.running,
                    searches_waiting: searches.waiting,
                    updates_waiting: repo.waiting_updates(),
                    updates_combined: repo.combined_updates(),
                    lists_joined: repo.joined_lists(),
                }
            }) as Box<dyn Fn() -> PoolGauges + Send + Sync>
        });
        let redis_probe = wiring.redis.map(|redis| {
            Box::new(move || RedisGauges {
                breaker: redis.breaker_state().as_str(),
                lease_hits: redis.lease_hits(),
            }) as Box<dyn Fn() -> RedisGauges + Send + Sync>
        });
        let metrics = web::Data::new(
            Metrics::new(service.clone(), pool_probe, redis_probe)
                .map_err(|e| StartupError::Metrics(e.to_string()))?,
        );
        let addr = settings.listen_addr()?;
        let listener = TcpListener::bind(addr).map_err(|source| StartupError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind {
                addr: addr.to_string(),
                source,
            })?
            .port();
        let state = AppState {
            service,
            draining: Arc::new(AtomicBool::new(false)),
            max_body_bytes: crate::http::MAX_BODY_BYTES,
            body_timeout: settings.body_timeout(),
        };
        let origins = settings.cors_origins();
        let data = web::Data::new(state.clone());
        let mut server = HttpServer::new(move || {
            // Runs once on each worker thread as it starts.
            if let Some(pool) = &pg_pool {
                pool.claim_thread();
            }
            App::new()
                .app_data(data.clone())
                .app_data(metrics.clone())
                .wrap(Condition::new(!origins.is_empty(), cors(&origins)))
                .wrap(SecurityHeaders)
                .wrap(from_fn(request_id_middleware))
                .wrap(from_fn(metrics_middleware))
                .configure(routes::api)
                .route("/metrics", web::get().to(crate::metrics::metrics))
                .configure(crate::ui::routes)
                .default_service(routes::fallback())
        })
        .disable_signals()
        // Slow clients: the request head (line and headers) of a connection's first request must
        // arrive within this, or the answer is 408 and the connection closes. (actix applies it to
        // the first request of a connection only; the body has its own deadline, `body_timeout`,
        // in `read_json_body`.) Both are actix's defaults, set here so that they are visible.
        .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
        .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
        .shutdown_timeout(settings.shutdown_timeout_secs);
        server = server.workers(settings.http_workers());
        let server = server
            .listen(listener)
            .map_err(|source| StartupError::Bind {
                addr: addr.to_string(),
                source,
            })?
            .run();
        tracing::info!(%addr, port, "listening");
        Ok(Self {
            port,
            server,
            state,
            drain_delay: Duration::from_millis(settings.drain_delay_ms),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            server: self.server.handle(),
            draining: self.state.draining.clone(),
            drain_delay: self.drain_delay,
        }
    }

    /// Serves until a graceful shutdown completes: SIGTERM or SIGINT start one, a second signal
    /// stops at once.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.shutdown_handle();
        let server_handle = self.server.handle();
        // Expired idempotency keys go in the background; every replica may run this at once.
        let cleanup = crate::jobs::spawn_idempotency_cleanup(
            self.state.service.clone(),
            IDEMPOTENCY_CLEANUP_EVERY,
        );
        tokio::spawn(async move {
            wait_for_signal().await;
            tokio::select! {
                () = handle.shutdown() => {}
                () = wait_for_signal() => {
                    tracing::warn!("second signal: stopping now");
                    server_handle.stop(false).await;
                }
            }
        });
        let served = self.server.await;
        cleanup.abort();
        served
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
