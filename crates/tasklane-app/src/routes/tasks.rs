//! The task routes: list, counts, create, read, update (PUT and PATCH), delete.

use crate::dto::{self, CountsDto, MessageDto, TaskDto};
use crate::error::{ApiError, ErrorBody, IDEMPOTENCY_KEY};
use crate::http::{bytes_etag, if_match, if_none_match, read_json_body, task_etag, BYTES_ETAG_LEN};
use crate::state::AppState;
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{BufMut, Bytes, BytesMut};
use tasklane_domain::{
    Cursor, IdempotencyKey, Limit, ListQuery, Page, Revalidated, SearchText, Task, TaskId, Version,
};

const JSON: &str = "application/json";

/// The task id of a `/{id}` route; 404 unless a positive 64-bit integer. Read from the matched
/// path as it is: `web::Path<String>` would copy it into a new string on every request, and
/// decode what the request line's own decoding leaves encoded (such as `%2F`), which no id
/// contains (digits arrive decoded: `/api/tasks/%31` is task 1 either way).
fn task_id(req: &HttpRequest) -> Result<TaskId, ApiError> {
    req.match_info()
        .get("id")
        .and_then(TaskId::parse)
        .ok_or(ApiError::TaskNotFound)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Internal(Box::new(e)))
}

/// Marks the answer to a create retried with the same `Idempotency-Key`: the first answer again.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The `Idempotency-Key` header of a create: `None` when absent. Present more than once, or not
/// 1 to 255 visible ASCII characters, is 400.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let invalid = |why: String| ApiError::bad_request("invalid_idempotency_key", why);
    let mut values = headers.get_all(HeaderName::from_static("idempotency-key"));
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid(format!("{IDEMPOTENCY_KEY} must be given once")));
    }
    IdempotencyKey::from_bytes(value.as_bytes())
        .map(Some)
        .map_err(|e| invalid(format!("{IDEMPOTENCY_KEY} {e}")))
}

/// A task response with its ETag.
fn task_response(status: StatusCode, task: &Task) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::build(status)
        .content_type(JSON)
        .insert_header((header::ETAG, task_etag(task.version).as_str()))
        .body(to_json(&TaskDto::from(task))?))
}

/// Parses the list query string. Empty values mean "not given"; a repeated parameter is 400.
fn parse_list_query(query_string: &str) -> Result<ListQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query_string)
        .map_err(|_| ApiError::bad_request("invalid_query", "The query string is malformed"))?;
    let mut query = ListQuery::default();
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in &pairs {
        let key = key.as_str();
        if !matches!(key, "status" | "q" | "limit" | "cursor") {
            continue;
        }
        if seen.contains(&key) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("The parameter {key} is given more than once"),
            ));
        }
        seen.push(key);
        if value.is_empty() {
            continue;
        }
        match key {
            "status" => {
                query.status = Some(value.parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_status",
                        "status must be one of todo, in_progress, done",
                    )
                })?);
            }
            "q" => {
                query.search = SearchText::new(value)
                    .map_err(|e| ApiError::bad_request("invalid_search", format!("q {e}")))?;
            }
            "limit" => {
                query.limit = Limit::parse(value)
                    .map_err(|e| ApiError::bad_request("invalid_limit", format!("limit {e}")))?;
            }
            _ => {
                query.cursor =
                    Some(Cursor::decode(value).map_err(|e| {
                        ApiError::bad_request("invalid_cursor", format!("cursor {e}"))
                    })?);
            }
        }
    }
    Ok(query)
}

/// The relative URL of the page after this one.
fn next_link(query: &ListQuery, next: Cursor) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::with_capacity(4);
    if let Some(status) = query.status {
        pairs.push(("status", status.as_str().to_owned()));
    }
    if let Some(q) = &query.search {
        pairs.push(("q", q.as_str().to_owned()));
    }
    pairs.push(("limit", query.limit.get().to_string()));
    pairs.push(("cursor", next.encode()));
    let qs = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    format!("</api/tasks?{qs}>; rel=\"next\"")
}

/// A rendered list page as cached: its ETag, its `Link` header (maybe empty) and its body, in
/// one buffer so that a cache hit is served without parsing or serializing anything.
struct RenderedList {
    blob: Bytes,
    etag: (usize, usize),
    link: (usize, usize),
    body: usize,
}

const RENDERED_MAGIC: &[u8] = b"TL1\n";

impl RenderedList {
    fn render(query: &ListQuery, page: &Page) -> Bytes {
        let dtos: Vec<TaskDto<'_>> = page.tasks.iter().map(TaskDto::from).collect();
        let link = page.next.map(|c| next_link(query, c)).unwrap_or_default();
        // Sized for the texts plus the fixed part of each object (names, id, status, two
        // timestamps, version: about 190 bytes), so that the body is not grown by doubling (and
        // copied) eight times on the way to a 20 kB page.
        let texts: usize = page
            .tasks
            .iter()
            .map(|t| t.title.as_str().len() + t.description.as_str().len())
            .sum();
        let head = RENDERED_MAGIC.len() + BYTES_ETAG_LEN + link.len() + 2;
        let mut blob = BytesMut::with_capacity(head + texts + 200 * page.tasks.len() + 2);
        blob.put_slice(RENDERED_MAGIC);
        // The ETag is a hash of the body, which is written straight into the blob after it: its
        // place is kept (every such tag has the same length) and filled in at the end.
        let etag_at = blob.len();
        blob.put_bytes(b' ', BYTES_ETAG_LEN);
        blob.put_u8(b'\n');
        blob.put_slice(link.as_bytes());
        blob.put_u8(b'\n');
        let body_at = blob.len();
        let mut writer = blob.writer();
        let written = serde_json::to_writer(&mut writer, &dtos);
        let mut blob = writer.into_inner();
        if written.is_err() {
            blob.truncate(body_at);
            blob.put_slice(b"[]");
        }
        let etag = bytes_etag(&blob[body_at..]);
        blob[etag_at..etag_at + BYTES_ETAG_LEN].copy_from_slice(etag.as_bytes());
        blob.freeze()
    }

    fn parse(blob: Bytes) -> Option<Self> {
        let rest = blob.strip_prefix(RENDERED_MAGIC)?;
        let start = RENDERED_MAGIC.len();
        let etag_len = rest.iter().position(|b| *b == b'\n')?;
        let link_start = start + etag_len + 1;
        let link_len = blob[link_start..].iter().position(|b| *b == b'\n')?;
        let body = link_start + link_len + 1;
        std::str::from_utf8(&blob[start..body]).ok()?;
        Some(Self {
            etag: (start, start + etag_len),
            link: (link_start, link_start + link_len),
            body,
            blob,
        })
    }

    fn header(&self, (from, to): (usize, usize)) -> Option<HeaderValue> {
        (to > from)
            .then(|| HeaderValue::from_maybe_shared(self.blob.slice(from..to)).ok())
            .flatten()
    }
}

/// Renders a list page as it is cached and served: what the service writes updates through
/// with, the same function as the readers' on a miss.
pub(crate) fn render_list(query: &ListQuery, page: &Page) -> Bytes {
    RenderedList::render(query, page)
}

/// List tasks, newest first.
#[utoipa::path(
    get,
    path = "/api/tasks",
    tag = "tasks",
    params(
        ("status" = inline(Option<dto::StatusFilterParam>), Query, description = "Only tasks in this status (empty: no filter); any other value is 400"),
        ("q" = Option<String>, Query, max_length = 255, pattern = "^[^\\u0000]*$", description = "Case-insensitive substring of the title or description (empty: no filter; % and _ match literally); over 255 characters or a NUL is 400"),
        ("limit" = inline(Option<dto::LimitParam>), Query, description = "Page size, 1 to 500 (empty or absent: 100); anything else is 400"),
        ("cursor" = Option<String>, Query, max_length = 100, pattern = "^[A-Za-z0-9_-]*$", description = "Opaque cursor from a previous page's Link header (empty: the first page); one this server did not issue is 400"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "304 when the current ETag is one of these (weak comparison; `*` matches any)"),
    ),
    responses(
        (status = 200, description = "A page of tasks, newest first", body = Vec<TaskDto>,
            headers(("ETag" = String), ("Link" = String, description = "RFC 8288 link to the next page (`</api/tasks?...&cursor=...>; rel=\"next\"`), when more tasks exist"))),
        (status = 304, description = "Not modified since the ETag given in If-None-Match",
            headers(("ETag" = String), ("Link" = String, description = "As on the 200 answer"))),
        (status = 400, description = "A bad status (`invalid_status`), q (`invalid_search`), limit (`invalid_limit`) or cursor (`invalid_cursor`), or a parameter given twice or a malformed query string (`invalid_query`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`); retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn list_tasks(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = parse_list_query(req.query_string())?;
    let mut blob = state
        .service
        .list_rendered(&query, |page| render_list(&query, page))
        .await?;
    let rendered = match RenderedList::parse(blob) {
        Some(r) => r,
        None => {
            // Only a cache entry from a buggy or foreign writer can get here: answer from the
            // store instead of failing.
            tracing::warn!("unreadable cached list page; rendering afresh");
            let page = state.service.list(&query).await?;
            blob = RenderedList::render(&query, &page);
            RenderedList::parse(blob)
                .ok_or_else(|| ApiError::Internal("rendered list unreadable".into()))?
        }
    };
    let etag = rendered
        .header(rendered.etag)
        .ok_or_else(|| ApiError::Internal("rendered list without ETag".into()))?;
    let not_modified = etag.to_str().is_ok_and(|e| if_none_match(req.headers(), e));
    let mut res = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag));
    if let Some(link) = rendered.header(rendered.link) {
        res.insert_header((header::LINK, link));
    }
    if not_modified {
        return Ok(res.finish());
    }
    Ok(res
        .content_type(JSON)
        .body(rendered.blob.slice(rendered.body..)))
}

/// The number of tasks in each status.
#[utoipa::path(
    get,
    path = "/api/tasks/counts",
    tag = "tasks",
    responses(
        (status = 200, description = "Counts per status", body = CountsDto),
        (status = 503, description = "The database is unavailable (`unavailable`); retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn task_counts(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let counts = state.service.counts().await?;
    Ok(HttpResponse::Ok()
        .content_type(JSON)
        .body(to_json(&CountsDto::from(counts))?))
}

/// Create a task. With an `Idempotency-Key`, a retry of the same request (within 24 hours)
/// gets the first answer again and creates nothing.
#[utoipa::path(
    post,
    path = "/api/tasks",
    tag = "tasks",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
            description = "Makes the create safe to retry: the same key with the same body within 24 hours returns the first response (with `Idempotent-Replayed: true`) and creates nothing; with a different body it is 422. 1 to 255 visible ASCII characters, e.g. a UUID; anything else is 400."),
    ),
    request_body(content = dto::CreateTaskBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created, or the first response again for a retried Idempotency-Key", body = TaskDto,
            headers(
                ("Location" = String, description = "The new task's URL, relative"),
                ("ETag" = String),
                ("Idempotent-Replayed" = String, description = "`true` when this repeats the response to an earlier request with the same Idempotency-Key"),
            ),
            links(
                ("GetTask" = (operation_id = "get_task", parameters(("id" = "$response.body#/id")), description = "Read the task")),
                ("UpdateTask" = (operation_id = "update_task", parameters(("id" = "$response.body#/id")), description = "Update the task")),
                ("PatchTask" = (operation_id = "patch_task", parameters(("id" = "$response.body#/id")), description = "Patch the task")),
                ("DeleteTask" = (operation_id = "delete_task", parameters(("id" = "$response.body#/id")), description = "Delete the task")),
            )),
        (status = 400, description = "Not a JSON object (`invalid_json`), an unreadable body (`invalid_body`), or an invalid Idempotency-Key (`invalid_idempotency_key`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`); the connection is closed", body = ErrorBody),
        (status = 409, description = "A request with the same Idempotency-Key is still in progress (`idempotency_key_in_flight`); retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = String))),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON (`application/json` or `application/*+json`) (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "A field is invalid (`validation_failed`; `field` names it), or the Idempotency-Key was used with a different request (`idempotency_key_reused`, `field` is `Idempotency-Key`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`); retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn create_task(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(req.headers())?;
    let body = read_json_body(&req, payload, state.max_body_bytes, state.body_timeout).await?;
    let new = dto::parse_create(&body)?;
    let created = state.service.create(new, key).await?;
    let task = &created.task;
    let mut res = task_response(StatusCode::CREATED, task)?;
    if let Ok(location) = HeaderValue::from_str(&format!("/api/tasks/{}", task.id)) {
        res.headers_mut().insert(header::LOCATION, location);
    }
    if created.replayed {
        res.headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(res)
}

/// Read a task.
#[utoipa::path(
    get,
    path = "/api/tasks/{id}",
    tag = "tasks",
    params(
        ("id" = i64, Path, minimum = 1, description = "The task's id, a positive 64-bit integer. Any other segment (not digits, zero, negative, out of range) is 404."),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "304 when the current ETag is one of these (weak comparison; `*` matches any)"),
    ),
    responses(
        (status = 200, description = "The task", body = TaskDto, headers(("ETag" = String))),
        (status = 304, description = "Not modified since the ETag given in If-None-Match", headers(("ETag" = String))),
        (status = 404, description = "No such task (`task_not_found`), including ids that are not a positive 64-bit integer", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`); retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn get_task(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = task_id(&req)?;
    let headers = req.headers();
    if !headers.contains_key(header::IF_NONE_MATCH) {
        return task_response(StatusCode::OK, &state.service.get(id).await?);
    }
    // A revalidation: the task's version may be answered from the cache.
    let known = |version| if_none_match(headers, &task_etag(version));
    match state.service.get_unless(id, &known).await? {
        Revalidated::Unchanged(version) => Ok(not_modified(version)),
        // Read from the store: its version may still be one the client has.
        Revalidated::Current(task) if known(task.version) => Ok(not_modified(task.version)),
        Revalidated::Current(task) => task_response(StatusCode::OK, &task),
    }
}

/// A 304 for a task at `version`.
fn not_modified(version: Version) -> HttpResponse {
    HttpResponse::NotModified()
        .insert_header((header::ETAG, task_etag(version).as_str()))
        .finish()
}

/// Update a task: absent fields keep their value. PUT and PATCH (JSON merge patch) behave alike.
#[utoipa::path(
    put,
    path = "/api/tasks/{id}",
    tag = "tasks",
    params(
        ("id" = i64, Path, minimum = 1, description = "The task's id, a positive 64-bit integer. Any other segment (not digits, zero, negative, out of range) is 404."),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Only update if the task's ETag is still one of these (`*`: if it exists); otherwise 412. Weak tags never match."),
    ),
    request_body(content((dto::UpdateTaskBody = "application/json"))),
    responses(
        (status = 200, description = "The updated task", body = TaskDto, headers(("ETag" = String))),
        (status = 400, description = "Not a JSON object (`invalid_json`) or an unreadable body (`invalid_body`)", body = ErrorBody),
        (status = 404, description = "No such task (`task_not_found`), including ids that are not a positive 64-bit integer", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`); the connection is closed", body = ErrorBody),
        (status = 412, description = "The task changed since the If-Match ETag (`precondition_failed`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON (`application/json` or `application/*+json`) (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "A field is invalid (`validation_failed`); `field` names it", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`); retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn update_task(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = task_id(&req)?;
    let body = read_json_body(&req, payload, state.max_body_bytes, state.body_timeout).await?;
    let patch = dto::parse_patch(&body)?;
    let task = state
        .service
        .update(id, patch, if_match(req.headers()))
        .await?;
    task_response(StatusCode::OK, &task)
}

/// Update a task with a JSON merge patch (RFC 7396); the same as PUT.
#[utoipa::path(
    patch,
    path = "/api/tasks/{id}",
    tag = "tasks",
    params(
        ("id" = i64, Path, minimum = 1, description = "The task's id, a positive 64-bit integer. Any other segment (not digits, zero, negative, out of range) is 404."),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Only update if the task's ETag is still one of these (`*`: if it exists); otherwise 412. Weak tags never match."),
    ),
    request_body(content((dto::UpdateTaskBody = "application/merge-patch+json"), (dto::UpdateTaskBody = "application/json"))),
    responses(
        (status = 200, description = "The updated task", body = TaskDto, headers(("ETag" = String))),
        (status = 400, description = "Not a JSON object (`invalid_json`) or an unreadable body (`invalid_body`)", body = ErrorBody),
        (status = 404, description = "No such task (`task_not_found`), including ids that are not a positive 64-bit integer", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`request_timeout`); the connection is closed", body = ErrorBody),
        (status = 412, description = "The task changed since the If-Match ETag (`precondition_failed`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB (`payload_too_large`)", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON (`application/json` or `application/*+json`) (`unsupported_media_type`)", body = ErrorBody),
        (status = 422, description = "A field is invalid (`validation_failed`); `field` names it", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`); retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn patch_task(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    update_task(req, payload, state).await
}

/// Delete a task.
#[utoipa::path(
    delete,
    path = "/api/tasks/{id}",
    tag = "tasks",
    params(
        ("id" = i64, Path, minimum = 1, description = "The task's id, a positive 64-bit integer. Any other segment (not digits, zero, negative, out of range) is 404."),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Only delete if the task's ETag is still one of these (`*`: if it exists); otherwise 412. Weak tags never match."),
    ),
    responses(
        (status = 200, description = "Deleted", body = MessageDto),
        (status = 404, description = "No such task (`task_not_found`), including ids that are not a positive 64-bit integer", body = ErrorBody),
        (status = 412, description = "The task changed since the If-Match ETag (`precondition_failed`)", body = ErrorBody),
        (status = 503, description = "The database is unavailable (`unavailable`); retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
pub async fn delete_task(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = task_id(&req)?;
    state.service.delete(id, if_match(req.headers())).await?;
    Ok(HttpResponse::Ok()
        .content_type(JSON)
        .body(to_json(&MessageDto {
            message: "Task deleted",
        })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(r: Result<ListQuery, ApiError>) -> Option<&'static str> {
        match r {
            Err(ApiError::BadRequest { code, .. }) => Some(code),
            _ => None,
        }
    }

    #[test]
    fn list_query_parsing() {
        let q = parse_list_query("status=done&q=a%25b&limit=5").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.status, Some(tasklane_domain::Status::Done));
        assert_eq!(
            q.search.map(|s| s.as_str().to_owned()),
            Some("a%b".to_owned())
        );
        assert_eq!(q.limit.get(), 5);
        assert_eq!(
            parse_list_query("status=&q=&cursor=&other=1").ok(),
            Some(ListQuery::default())
        );
        assert_eq!(
            code_of(parse_list_query("status=nope")),
            Some("invalid_status")
        );
        assert_eq!(code_of(parse_list_query("limit=0")), Some("invalid_limit"));
        assert_eq!(
            code_of(parse_list_query("limit=100000")),
            Some("invalid_limit")
        );
        assert_eq!(
            code_of(parse_list_query("cursor=zzz")),
            Some("invalid_cursor")
        );
        assert_eq!(
            code_of(parse_list_query("limit=1&limit=2")),
            Some("invalid_query")
        );
    }

    #[test]
    fn the_idempotency_key_header_is_optional_single_and_visible_ascii() {
        let headers = |values: &[&[u8]]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(
                    HeaderName::from_static("idempotency-key"),
                    HeaderValue::from_bytes(v).unwrap_or_else(|e| panic!("{e}")),
                );
            }
            map
        };
        let code = |r: Result<Option<IdempotencyKey>, ApiError>| match r {
            Err(ApiError::BadRequest { code, .. }) => Some(code),
            _ => None,
        };
        assert_eq!(idempotency_key(&headers(&[])).ok(), Some(None));
        assert_eq!(
            idempotency_key(&headers(&[b"abc-123"]))
                .ok()
                .flatten()
                .map(|k| k.to_string()),
            Some("abc-123".to_owned())
        );
        let long = "k".repeat(256);
        for bad in [
            &[b"a".as_slice(), b"b".as_slice()][..],
            &[b"".as_slice()],
            &[b"a b".as_slice()],
            &[b"caf\xe9".as_slice()],
            &[long.as_bytes()],
        ] {
            assert_eq!(
                code(idempotency_key(&headers(bad))),
                Some("invalid_idempotency_key"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rendered_lists_round_trip() {
        let blob = RenderedList::render(&ListQuery::default(), &Page::default());
        let r = RenderedList::parse(blob).unwrap_or_else(|| panic!("unparsable"));
        assert_eq!(&r.blob[r.body..], b"[]");
        assert_eq!(
            r.header(r.etag).as_ref().map(HeaderValue::as_bytes),
            Some(bytes_etag(b"[]").as_bytes()),
            "the tag of the body that follows it"
        );
        assert!(r.header(r.link).is_none());
        assert!(RenderedList::parse(Bytes::from_static(b"garbage")).is_none());
    }
}
