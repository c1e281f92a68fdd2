//! The routing table, the OpenAPI document, and the answers for unknown paths and methods.

mod health;
mod tasks;

pub(crate) use tasks::render_list;

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
        description = "A self-hosted task service. Every response carries `Cache-Control: no-cache` and an `X-Request-Id`; errors are JSON `{error, code, field?}`. A path that is not listed here is 404 (`not_found`); a method a path does not list is 405 (`method_not_allowed`) with an `Allow` header (HEAD is answered wherever GET is). A 503 always carries `Retry-After`."
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
    let doc = DOC.get_or_init(document);
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.as_str())
}

/// The document as served: the annotations' document, finished by `finish_document`.
pub fn document() -> String {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document does not serialize");
            return String::new();
        }
    };
    finish_document(&mut doc);
    serde_json::to_string(&doc).unwrap_or_default()
}

/// Headers the middleware puts on every response.
const EVERY_RESPONSE_HEADERS: [(&str, &str, &str); 2] = [
    (
        "X-Request-Id",
        "The request's id: the caller's own `X-Request-Id` when it is 1 to 64 of `A-Z a-z 0-9 . _ -`, else a new one",
        "^[A-Za-z0-9._-]{1,64}$",
    ),
    (
        "Cache-Control",
        "`no-cache`: clients revalidate with the ETag",
        "^no-cache$",
    ),
];

/// Documented headers that are always sent where they are documented (utoipa's annotations
/// cannot mark a response header required).
const ALWAYS_SENT: [&str; 3] = ["ETag", "Location", "Retry-After"];

/// utoipa 5 serializes a Link object's fields in snake case (`operation_id`; fixed in utoipa 6,
/// which needs a newer Rust than the workspace's); OpenAPI spells them `operationId`,
/// `operationRef` and `requestBody`, and tools ignore links without them.
fn camel_case_link(link: &mut serde_json::Map<String, serde_json::Value>) {
    for (snake, camel) in [
        ("operation_id", "operationId"),
        ("operation_ref", "operationRef"),
        ("request_body", "requestBody"),
    ] {
        if let Some(value) = link.remove(snake) {
            link.insert(camel.to_owned(), value);
        }
    }
}

/// What the annotations cannot say: the headers every response carries, that every 503 carries
/// `Retry-After`, which documented response headers are always present, and links spelled as
/// OpenAPI spells them.
fn finish_document(doc: &mut serde_json::Value) {
    use serde_json::{json, Map, Value};
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for (status, response) in responses.iter_mut() {
            let Some(response) = response.as_object_mut() else {
                continue;
            };
            if let Some(links) = response.get_mut("links").and_then(Value::as_object_mut) {
                links
                    .values_mut()
                    .filter_map(Value::as_object_mut)
                    .for_each(camel_case_link);
            }
            let headers = response
                .entry("headers")
                .or_insert_with(|| Value::Object(Map::new()));
            let Some(headers) = headers.as_object_mut() else {
                continue;
            };
            for (name, description, pattern) in EVERY_RESPONSE_HEADERS {
                headers.insert(
                    name.to_owned(),
                    json!({
                        "description": description,
                        "required": true,
                        "schema": {"type": "string", "pattern": pattern},
                    }),
                );
            }
            if status == "503" {
                headers.entry("Retry-After").or_insert_with(
                    || json!({"schema": {"type": "string"}, "description": "Seconds to wait before retrying"}),
                );
            }
            for name in ALWAYS_SENT {
                if let Some(header) = headers.get_mut(name).and_then(Value::as_object_mut) {
                    header.insert("required".to_owned(), Value::Bool(true));
                    let pattern = match name {
                        "Retry-After" => "^[0-9]+$",
                        // A strong entity tag (RFC 9110 §8.8.3).
                        "ETag" => "^\"[!#-~]*\"$",
                        _ => continue,
                    };
                    header.insert(
                        "schema".to_owned(),
                        json!({"type": "string", "pattern": pattern}),
                    );
                }
            }
        }
    }
}

type Refusal = std::future::Ready<Result<HttpResponse, ApiError>>;

fn method_not_allowed(allow: &'static str) -> impl Fn() -> Refusal + Clone {
    move || std::future::ready(Err(ApiError::MethodNotAllowed { allow }))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::RouteNotFound)
}

/// A resource that answers GET and HEAD with `handler`, and any other method with 405.
fn read_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(method_not_allowed("GET, HEAD")))
}

/// Registers the API routes. Every resource answers other methods with 405 and `Allow`.
pub fn api(cfg: &mut web::ServiceConfig) {
    cfg.service(read_only("/api/health", health::readiness))
        .service(read_only("/api/health/live", health::liveness))
        .service(read_only("/api/openapi.json", openapi_json))
        // One scope for the task routes: its prefix is compared as a string, so the one dynamic
        // pattern, `/{id}`, runs its regex over `/123` rather than the whole path (routing was ~16%
        // of a get-one request's instructions). Paths under the prefix that no resource claims fall
        // through to the app's default service, like any other unknown path.
        .service(
            web::scope("/api/tasks")
                .service(
                    web::resource("")
                        .route(web::get().to(tasks::list_tasks))
                        .route(web::head().to(tasks::list_tasks))
                        .route(web::post().to(tasks::create_task))
                        .default_service(web::to(method_not_allowed("GET, HEAD, POST"))),
                )
                .service(read_only("/counts", tasks::task_counts))
                .service(
                    web::resource("/{id}")
                        .route(web::get().to(tasks::get_task))
                        .route(web::head().to(tasks::get_task))
                        .route(web::put().to(tasks::update_task))
                        .route(web::patch().to(tasks::patch_task))
                        .route(web::delete().to(tasks::delete_task))
                        .default_service(web::to(method_not_allowed(
                            "GET, HEAD, PUT, PATCH, DELETE",
                        ))),
                ),
        );
}

/// The answer for any path no route claims.
pub fn fallback() -> actix_web::Route {
    web::to(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(&document()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn links_are_spelled_as_openapi_spells_them() {
        let doc = doc();
        let links = &doc["paths"]["/api/tasks"]["post"]["responses"]["201"]["links"];
        for (name, operation) in [
            ("GetTask", "get_task"),
            ("UpdateTask", "update_task"),
            ("PatchTask", "patch_task"),
            ("DeleteTask", "delete_task"),
        ] {
            assert_eq!(links[name]["operationId"], operation, "{links}");
            assert!(links[name].get("operation_id").is_none());
            assert_eq!(links[name]["parameters"]["id"], "$response.body#/id");
            // The target exists.
            let found = doc["paths"]
                .as_object()
                .into_iter()
                .flat_map(|paths| paths.values())
                .filter_map(Value::as_object)
                .flat_map(|item| item.values())
                .any(|op| op["operationId"] == operation);
            assert!(found, "{operation}");
        }
    }

    #[test]
    fn every_response_documents_the_common_headers_and_every_503_retry_after() {
        let doc = doc();
        let mut responses = 0;
        for item in doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
        {
            for operation in item.as_object().into_iter().flat_map(|i| i.values()) {
                for (status, response) in operation["responses"]
                    .as_object()
                    .into_iter()
                    .flat_map(|r| r.iter())
                {
                    responses += 1;
                    let headers = &response["headers"];
                    assert_eq!(headers["X-Request-Id"]["required"], true);
                    assert_eq!(headers["Cache-Control"]["required"], true);
                    if status == "503" {
                        assert_eq!(headers["Retry-After"]["required"], true);
                    }
                    if let Some(etag) = headers.get("ETag") {
                        assert_eq!(etag["required"], true);
                    }
                }
            }
        }
        assert!(responses > 30, "{responses}");
    }

    #[test]
    fn parameters_say_what_the_server_accepts() {
        let doc = doc();
        let params = |path: &str, method: &str| -> Vec<Value> {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let find = |params: &[Value], name: &str| -> Value {
            params
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("no {name}"))
        };
        let list = params("/api/tasks", "get");
        assert_eq!(
            find(&list, "status")["schema"]["enum"],
            serde_json::json!(["todo", "in_progress", "done", ""])
        );
        let limit = find(&list, "limit");
        assert_eq!(limit["schema"]["oneOf"][0]["minimum"], 1);
        assert_eq!(limit["schema"]["oneOf"][0]["maximum"], 500);
        assert_eq!(find(&list, "q")["schema"]["maxLength"], 255);
        for method in ["put", "patch", "delete"] {
            let params = params("/api/tasks/{id}", method);
            assert_eq!(find(&params, "id")["schema"]["minimum"], 1);
            // Optional headers are absent or a string, never `null`.
            assert_eq!(find(&params, "If-Match")["schema"]["type"], "string");
        }
        let create = params("/api/tasks", "post");
        assert_eq!(find(&create, "Idempotency-Key")["schema"]["type"], "string");
        let patch = &doc["paths"]["/api/tasks/{id}"]["patch"]["requestBody"]["content"];
        assert!(patch["application/merge-patch+json"].is_object());
        assert!(patch["application/json"].is_object());
    }

    #[test]
    fn bodies_refuse_unknown_fields_and_null_titles() {
        let doc = doc();
        for name in ["CreateTaskBody", "UpdateTaskBody"] {
            let schema = &doc["components"]["schemas"][name];
            assert_eq!(schema["additionalProperties"], false, "{name}");
            assert_eq!(schema["properties"]["title"]["type"], "string", "{name}");
            assert_eq!(schema["properties"]["title"]["maxLength"], 255, "{name}");
            assert_eq!(
                schema["properties"]["description"]["type"],
                serde_json::json!(["string", "null"]),
                "{name}"
            );
            for ignored in ["id", "version", "created_at", "updated_at"] {
                assert!(
                    schema["properties"][ignored].is_object(),
                    "{name}.{ignored}"
                );
            }
        }
        assert_eq!(
            doc["components"]["schemas"]["CreateTaskBody"]["required"],
            serde_json::json!(["title"])
        );
        let pattern = |name: &str, field: &str| {
            doc["components"]["schemas"][name]["properties"][field]["pattern"].clone()
        };
        for field in ["title", "description"] {
            assert!(pattern("TaskDto", field).is_string(), "{field}");
            assert_eq!(pattern("TaskDto", field), pattern("CreateTaskBody", field));
            assert_eq!(pattern("TaskDto", field), pattern("UpdateTaskBody", field));
        }
    }
}
