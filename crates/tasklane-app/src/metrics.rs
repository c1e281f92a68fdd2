//! Prometheus metrics at `GET /metrics` (on the API's port; nginx refuses it publicly):
//! requests and latency per route, method and status; the list cache's hits, misses and
//! errors, the pages updates were written through into, and the conditional task reads
//! answered from a cached version or not; the PostgreSQL pool, its search
//! slots, its combined updates and its joined list reads; the Redis circuit breaker and the
//! hits served on a lease.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tasklane_domain::TaskService;

/// The PostgreSQL pool's state at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct PoolGauges {
    pub max_size: usize,
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
    /// Text searches allowed to run at once, running, and waiting for a slot.
    pub search_slots: usize,
    pub searches_running: usize,
    pub searches_waiting: usize,
    /// Updates waiting for an update of the same task to end, and those written with at least
    /// one other in one `UPDATE` since start (`tasklane-postgres`'s `combine.rs`).
    pub updates_waiting: usize,
    pub updates_combined: u64,
    /// List reads that joined an identical read waiting to start, since start
    /// (`tasklane-postgres`'s `joined_lists.rs`).
    pub lists_joined: u64,
}

type PoolProbe = Box<dyn Fn() -> PoolGauges + Send + Sync>;
/// The Redis cache's state at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct RedisGauges {
    /// The circuit breaker's state: `closed`, `open` or `half_open`.
    pub breaker: &'static str,
    /// Hits served on a lease alone, without a round trip, since start.
    pub lease_hits: u64,
}

type RedisProbe = Box<dyn Fn() -> RedisGauges + Send + Sync>;

/// Everything `/metrics` reports.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    service: Arc<TaskService>,
    pool: Option<PoolProbe>,
    redis: Option<RedisProbe>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

impl Metrics {
    /// # Errors
    /// Only if the metric definitions are invalid (a bug).
    pub fn new(
        service: Arc<TaskService>,
        pool: Option<PoolProbe>,
        redis: Option<RedisProbe>,
    ) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("tasklane_http_requests_total", "HTTP requests served"),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "tasklane_http_request_duration_seconds",
                "Time to produce the response",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route", "method", "status"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            service,
            pool,
            redis,
        })
    }

    fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.latency.with_label_values(&labels).observe(seconds);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        let stats = self.service.cache_stats();
        for (name, help, value) in [
            ("hits", "List reads served from the cache", &stats.hits),
            (
                "misses",
                "List reads the cache could not serve",
                &stats.misses,
            ),
            (
                "errors",
                "Cache calls that failed or timed out (served from the store)",
                &stats.errors,
            ),
            (
                "replaced",
                "List pages an update was written through into (stored under the new generation with its bump)",
                &stats.replaced,
            ),
            (
                "revalidation_hits",
                "Conditional task reads (If-None-Match) answered from a task version in the cache, without the database",
                &stats.revalidation_hits,
            ),
            (
                "revalidation_misses",
                "Conditional task reads (If-None-Match) that read the database: no version cached, or not the one the client has",
                &stats.revalidation_misses,
            ),
            (
                "shared_bumps",
                "Writes whose generation bump was made by another write that finished at the same time (one bump, sent after both committed)",
                &stats.shared_bumps,
            ),
        ] {
            let _ = writeln!(
                text,
                "# HELP tasklane_cache_{name}_total {help}\n# TYPE tasklane_cache_{name}_total counter\ntasklane_cache_{name}_total {}",
                value.load(Ordering::Relaxed)
            );
        }
        if let Some(pool) = &self.pool {
            let p = pool();
            for (name, help, value) in [
                ("max", "Most connections the pool may hold", p.max_size),
                ("size", "Connections the pool holds", p.size),
                ("available", "Idle connections", p.available),
                (
                    "in_use",
                    "Connections checked out",
                    p.size.saturating_sub(p.available),
                ),
                ("waiting", "Requests waiting for a connection", p.waiting),
            ] {
                let _ = writeln!(
                    text,
                    "# HELP tasklane_db_pool_{name} {help}\n# TYPE tasklane_db_pool_{name} gauge\ntasklane_db_pool_{name} {value}"
                );
            }
            for (name, help, value) in [
                (
                    "search_slots",
                    "Text searches allowed to run at once",
                    p.search_slots,
                ),
                (
                    "searches_running",
                    "Text searches running",
                    p.searches_running,
                ),
                (
                    "searches_waiting",
                    "Text searches waiting for a slot",
                    p.searches_waiting,
                ),
                (
                    "updates_waiting",
                    "Updates waiting in the process for an update of the same task to end",
                    p.updates_waiting,
                ),
            ] {
                let _ = writeln!(
                    text,
                    "# HELP tasklane_db_{name} {help}\n# TYPE tasklane_db_{name} gauge\ntasklane_db_{name} {value}"
                );
            }
            let _ = writeln!(
                text,
                "# HELP tasklane_db_updates_combined_total Updates written with at least one other update of the same task in one UPDATE\n# TYPE tasklane_db_updates_combined_total counter\ntasklane_db_updates_combined_total {}",
                p.updates_combined
            );
            let _ = writeln!(
                text,
                "# HELP tasklane_db_lists_joined_total List reads answered by an identical read that had not started yet, instead of a statement of their own\n# TYPE tasklane_db_lists_joined_total counter\ntasklane_db_lists_joined_total {}",
                p.lists_joined
            );
        }
        if let Some(redis) = &self.redis {
            let gauges = redis();
            let _ = writeln!(
                text,
                "# HELP tasklane_cache_lease_hits_total Cache hits (list pages, task versions) served from a local copy on a lease, without a round trip to Redis\n# TYPE tasklane_cache_lease_hits_total counter\ntasklane_cache_lease_hits_total {}",
                gauges.lease_hits
            );
            let current = gauges.breaker;
            let _ = writeln!(
                text,
                "# HELP tasklane_cache_breaker_state The Redis circuit breaker's state (1 = current)\n# TYPE tasklane_cache_breaker_state gauge"
            );
            for state in BREAKER_STATES {
                let _ = writeln!(
                    text,
                    "tasklane_cache_breaker_state{{state=\"{state}\"}} {}",
                    u8::from(state == current)
                );
            }
        }
        text
    }
}

/// Records every request (for `actix_web::middleware::from_fn`). Routes are labelled by their
/// pattern (`/api/tasks/{id}`), and anything unrouted as `unmatched`, so that no client can
/// grow the label set.
pub async fn metrics_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = req.method().clone();
    let started = Instant::now();
    let res = next.call(req).await?;
    if let Some(metrics) = metrics {
        // Asked after routing, actix finds the pattern by the path the router took; asked
        // before, it matches the path against every route again (~18% of a get-one request).
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let method = match method.as_str() {
            m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
            _ => "other",
        };
        metrics.observe(
            &route,
            method,
            res.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    Ok(res)
}

/// `GET /metrics`.
pub async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}
