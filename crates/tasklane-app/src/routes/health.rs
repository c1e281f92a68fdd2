//! Readiness (`/api/health`, the seed's report) and liveness (`/api/health/live`).

use crate::dto::{HealthDto, LiveDto};
use crate::error::RETRY_AFTER_SECS;
use crate::state::AppState;
use actix_web::http::header;
use actix_web::{web, HttpResponse};
use tasklane_domain::CacheHealth;

/// Readiness: 200 when the database answers (the cache being down only makes it `degraded`);
/// 503 when the database does not answer or the server is draining.
#[utoipa::path(
    get,
    path = "/api/health",
    tag = "health",
    responses(
        (status = 200, description = "Ready: the database answers", body = HealthDto),
        (status = 503, description = "Not ready: the database is down or the server is draining", body = HealthDto),
    )
)]
pub async fn readiness(state: web::Data<AppState>) -> HttpResponse {
    let health = state.service.health().await;
    let database = if health.store_ok {
        "connected"
    } else {
        "disconnected"
    };
    let cache = match health.cache {
        CacheHealth::Connected => "connected",
        CacheHealth::Disconnected => "disconnected",
        CacheHealth::Disabled => "disabled",
    };
    let (status, ready) = if state.is_draining() {
        ("draining", false)
    } else if !health.store_ok {
        ("unhealthy", false)
    } else if health.cache == CacheHealth::Disconnected {
        ("degraded", true)
    } else {
        ("healthy", true)
    };
    let body = HealthDto::now(status, database, cache);
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, RETRY_AFTER_SECS))
            .json(body)
    }
}

/// Liveness: the process serves HTTP. Checks no dependency.
#[utoipa::path(
    get,
    path = "/api/health/live",
    tag = "health",
    responses((status = 200, description = "Alive", body = LiveDto))
)]
pub async fn liveness() -> HttpResponse {
    HttpResponse::Ok().json(LiveDto { status: "alive" })
}
