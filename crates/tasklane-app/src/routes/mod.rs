//! The routing table, the OpenAPI document, and the answers for unknown paths and methods.

mod health;
mod tasks;

use crate::dto::{
    CountsDto, CreateTaskBody, HealthDto, LiveDto, MessageDto, StatusDto, TaskDto, UpdateTaskBody,
};
use crate::error::{ApiError, ErrorBody};
use actix_web::{web, HttpResponse};
use std::sync::OnceLock;
use utoipa::OpenApi;

/// The OpenAPI 3 document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tasklane",
        description = "A self-hosted task service. Every response carries `Cache-Control: no-cache` and an `X-Request-Id`; errors are JSON `{error, code, field?}`."
    ),
    paths(
        health::readiness,
        health::liveness,
        tasks::list_tasks,
        tasks::task_counts,
        tasks::create_task,
        tasks::get_task,
        tasks::update_task,
        tasks::patch_task,
        tasks::delete_task,
        openapi_json,
    ),
    components(schemas(
        TaskDto, StatusDto, CreateTaskBody, UpdateTaskBody, CountsDto, MessageDto, HealthDto,
        LiveDto, ErrorBody
    )),
    tags((name = "tasks"), (name = "health"), (name = "meta"))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json"))
)]
pub async fn openapi_json() -> HttpResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.as_str())
}

type Refusal = std::future::Ready<Result<HttpResponse, ApiError>>;

fn method_not_allowed(allow: &'static str) -> impl Fn() -> Refusal + Clone {
    move || std::future::ready(Err(ApiError::MethodNotAllowed { allow }))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

/// Registers the API routes. Every resource answers other methods with 405 and `Allow`.
pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/health")
            .route(web::get().to(health::readiness))
            .route(web::head().to(health::readiness))
            .default_service(web::to(method_not_allowed("GET, HEAD"))),
    )
    .service(
        web::resource("/api/health/live")
            .route(web::get().to(health::liveness))
            .route(web::head().to(health::liveness))
            .default_service(web::to(method_not_allowed("GET, HEAD"))),
    )
    .service(
        web::resource("/api/openapi.json")
            .route(web::get().to(openapi_json))
            .route(web::head().to(openapi_json))
            .default_service(web::to(method_not_allowed("GET, HEAD"))),
    )
    .service(
        web::resource("/api/tasks")
            .route(web::get().to(tasks::list_tasks))
            .route(web::head().to(tasks::list_tasks))
            .route(web::post().to(tasks::create_task))
            .default_service(web::to(method_not_allowed("GET, HEAD, POST"))),
    )
    .service(
        web::resource("/api/tasks/counts")
            .route(web::get().to(tasks::task_counts))
            .route(web::head().to(tasks::task_counts))
            .default_service(web::to(method_not_allowed("GET, HEAD"))),
    )
    .service(
        web::resource("/api/tasks/{id}")
            .route(web::get().to(tasks::get_task))
            .route(web::head().to(tasks::get_task))
            .route(web::put().to(tasks::update_task))
            .route(web::patch().to(tasks::patch_task))
            .route(web::delete().to(tasks::delete_task))
            .default_service(web::to(method_not_allowed("GET, HEAD, PUT, PATCH, DELETE"))),
    );
}

/// The answer for any path no route claims.
pub fn fallback() -> actix_web::Route {
    web::to(not_found)
}
