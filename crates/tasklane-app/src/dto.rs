//! The HTTP representations: what goes out (serialized from domain values) and what comes in
//! (parsed by hand from a JSON object, so every refusal names its field).

use crate::error::ApiError;
use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tasklane_domain::{
    Description, NewTask, Status, StatusCounts, Task, TaskPatch, TextError, Title, LIMIT_MAX,
};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

// The title's `pattern`, here and in the two request bodies (utoipa takes only a literal): no NUL,
// and at least one character that is neither NUL nor Unicode White_Space, the characters Rust's
// `str::trim` removes, which is how `Title::new` decides "blank". A unit test in routes/mod.rs
// checks that the three copies agree.

/// A task as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskDto<'a> {
    #[schema(example = 1, minimum = 1)]
    pub id: i64,
    /// 1 to 255 characters (Unicode scalar values), not only whitespace, no NUL.
    #[schema(
        example = "Learn Docker",
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000]*[^\\u0000\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000]*$"
    )]
    pub title: &'a str,
    /// At most 10,000 characters, no NUL.
    #[schema(
        example = "Complete Docker tutorial series",
        max_length = 10000,
        pattern = "^[^\\u0000]*$"
    )]
    pub description: &'a str,
    pub status: StatusDto,
    /// RFC 3339, UTC.
    #[schema(value_type = String, format = DateTime, example = "2026-11-27T12:00:00.000000Z")]
    pub created_at: String,
    /// RFC 3339, UTC; moves on every change.
    #[schema(value_type = String, format = DateTime, example = "2026-11-27T12:00:00.000000Z")]
    pub updated_at: String,
    /// One on creation, one more on every change; the ETag is `"v<version>"`.
    #[schema(example = 1, minimum = 1)]
    pub version: i64,
}

/// RFC 3339 in UTC with microseconds, byte for byte what
/// `t.to_rfc3339_opts(SecondsFormat::Micros, true)` writes (`2026-11-28T05:27:12.123456Z`), but
/// with plain digit arithmetic: chrono's goes through `fmt` and was 15% of the instructions of an
/// uncached 100-row list, which formats 200 of these (docs/PERFORMANCE.md, section 8). Years
/// outside 0-9999 and leap seconds, which have other shapes, are left to chrono.
fn rfc3339(t: DateTime<Utc>) -> String {
    // In UTC the naive value is the instant's own fields: no offset arithmetic per field.
    let n = t.naive_utc();
    let nanos = n.nanosecond();
    let Ok(year @ 0..=9999) = u32::try_from(n.year()) else {
        return t.to_rfc3339_opts(SecondsFormat::Micros, true);
    };
    if nanos >= 1_000_000_000 {
        return t.to_rfc3339_opts(SecondsFormat::Micros, true);
    }
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    for (at, width, value) in [
        (0, 4, year),
        (5, 2, n.month()),
        (8, 2, n.day()),
        (11, 2, n.hour()),
        (14, 2, n.minute()),
        (17, 2, n.second()),
        (20, 6, nanos / 1_000),
    ] {
        let mut v = value;
        for byte in out[at..at + width].iter_mut().rev() {
            *byte = b"0123456789"[(v % 10) as usize];
            v /= 10;
        }
    }
    // Only ASCII digits and separators were written: this never falls back.
    std::str::from_utf8(&out).map_or_else(
        |_| t.to_rfc3339_opts(SecondsFormat::Micros, true),
        str::to_owned,
    )
}

impl<'a> From<&'a Task> for TaskDto<'a> {
    fn from(t: &'a Task) -> Self {
        TaskDto {
            id: t.id.get(),
            title: t.title.as_str(),
            description: t.description.as_str(),
            status: t.status.into(),
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
            version: t.version.get(),
        }
    }
}

/// A task's status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusDto {
    Todo,
    InProgress,
    Done,
}

impl From<Status> for StatusDto {
    fn from(s: Status) -> Self {
        match s {
            Status::Todo => StatusDto::Todo,
            Status::InProgress => StatusDto::InProgress,
            Status::Done => StatusDto::Done,
        }
    }
}

/// The `status` query parameter of the list: a status, or empty for no filter.
pub struct StatusFilterParam;

impl utoipa::PartialSchema for StatusFilterParam {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["todo", "in_progress", "done", ""]))
            .into()
    }
}

impl ToSchema for StatusFilterParam {}

/// The `limit` query parameter of the list: 1 to 500, or empty for the default (100).
pub struct LimitParam;

impl utoipa::PartialSchema for LimitParam {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(LIMIT_MAX)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([""])),
            )
            .into()
    }
}

impl ToSchema for LimitParam {}

/// The body of `POST /api/tasks`. Unknown fields are refused (422), except the read-only
/// fields of a task (`id`, `version`, `created_at`, `updated_at`), which are ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Documents the body; the handler parses it by hand.
pub struct CreateTaskBody {
    /// 1 to 255 characters (Unicode scalar values), not only whitespace, no NUL.
    #[schema(
        example = "New Task",
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000]*[^\\u0000\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000]*$"
    )]
    title: String,
    /// At most 10,000 characters, no NUL; absent or `null` means "".
    #[schema(example = "Test task", max_length = 10000, pattern = "^[^\\u0000]*$")]
    description: Option<String>,
    /// Absent means `todo`; `null` is refused.
    #[schema(nullable = false)]
    status: Option<StatusDto>,
    /// Ignored (a read-only field of a task).
    #[schema(value_type = Option<Value>)]
    id: Option<Value>,
    /// Ignored (a read-only field of a task).
    #[schema(value_type = Option<Value>)]
    version: Option<Value>,
    /// Ignored (a read-only field of a task).
    #[schema(value_type = Option<Value>)]
    created_at: Option<Value>,
    /// Ignored (a read-only field of a task).
    #[schema(value_type = Option<Value>)]
    updated_at: Option<Value>,
}

/// The body of `PUT` and `PATCH /api/tasks/{id}`: absent fields keep their value; a `null`
/// description means ""; a `null` title or status is refused; `id`, `version`, `created_at` and
/// `updated_at` are ignored (so a task read with GET can be sent back); other fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Documents the body; the handler parses it by hand.
pub struct UpdateTaskBody {
    /// 1 to 255 characters (Unicode scalar values), not only whitespace, no NUL.
    #[schema(
        example = "Updated Task",
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000]*[^\\u0000\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000]*$"
    )]
    title: Option<String>,
    /// At most 10,000 characters, no NUL; `null` means "".
    #[schema(max_length = 10000, pattern = "^[^\\u0000]*$")]
    description: Option<String>,
    #[schema(nullable = false)]
    status: Option<StatusDto>,
    /// Ignored (a read-only field of a task).
    #[schema(value_type = Option<Value>)]
    id: Option<Value>,
    /// Ignored (a read-only field of a task).
    #[schema(value_type = Option<Value>)]
    version: Option<Value>,
    /// Ignored (a read-only field of a task).
    #[schema(value_type = Option<Value>)]
    created_at: Option<Value>,
    /// Ignored (a read-only field of a task).
    #[schema(value_type = Option<Value>)]
    updated_at: Option<Value>,
}

/// Counts of tasks per status.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountsDto {
    pub todo: u64,
    pub in_progress: u64,
    pub done: u64,
    pub total: u64,
}

impl From<StatusCounts> for CountsDto {
    fn from(c: StatusCounts) -> Self {
        CountsDto {
            todo: c.todo,
            in_progress: c.in_progress,
            done: c.done,
            total: c.total(),
        }
    }
}

/// A confirmation.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageDto {
    #[schema(example = "Task deleted")]
    pub message: &'static str,
}

/// The readiness report (the seed's fields).
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthDto {
    /// `healthy`, `degraded` (cache down), `unhealthy` (database down) or `draining`.
    #[schema(example = "healthy")]
    pub status: &'static str,
    /// `connected` or `disconnected`.
    #[schema(example = "connected")]
    pub database: &'static str,
    /// `connected`, `disconnected` or `disabled` (no cache configured).
    #[schema(example = "connected")]
    pub cache: &'static str,
    /// RFC 3339, UTC.
    pub timestamp: String,
}

impl HealthDto {
    pub fn now(status: &'static str, database: &'static str, cache: &'static str) -> Self {
        HealthDto {
            status,
            database,
            cache,
            timestamp: rfc3339(Utc::now()),
        }
    }
}

/// The liveness report.
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveDto {
    #[schema(example = "alive")]
    pub status: &'static str,
}

const READ_ONLY_FIELDS: [&str; 4] = ["id", "version", "created_at", "updated_at"];

/// Parses a request body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "invalid_json",
            "The request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(
            "invalid_json",
            format!("The request body is not valid JSON: {e}"),
        )),
    }
}

fn refuse_unknown_fields(map: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    for key in map.keys() {
        if !known.contains(&key.as_str()) && !READ_ONLY_FIELDS.contains(&key.as_str()) {
            return Err(ApiError::validation(
                key.chars().take(64).collect::<String>(),
                "is not a field of a task",
            ));
        }
    }
    Ok(())
}

fn text_error(field: &'static str, e: TextError) -> ApiError {
    ApiError::validation(field, e.to_string())
}

fn as_str<'a>(value: &'a Value, field: &'static str) -> Result<&'a str, ApiError> {
    value
        .as_str()
        .ok_or_else(|| ApiError::validation(field, "must be a string"))
}

fn parse_title(value: &Value) -> Result<Title, ApiError> {
    if value.is_null() {
        return Err(ApiError::validation("title", "must not be null"));
    }
    Title::new(as_str(value, "title")?).map_err(|e| text_error("title", e))
}

fn parse_description(value: &Value) -> Result<Description, ApiError> {
    if value.is_null() {
        return Ok(Description::default());
    }
    Description::new(as_str(value, "description")?).map_err(|e| text_error("description", e))
}

fn parse_status(value: &Value) -> Result<Status, ApiError> {
    if value.is_null() {
        return Err(ApiError::validation("status", "must not be null"));
    }
    as_str(value, "status")?
        .parse()
        .map_err(|e: tasklane_domain::StatusError| ApiError::validation("status", e.to_string()))
}

/// Parses the body of a create.
pub fn parse_create(body: &[u8]) -> Result<NewTask, ApiError> {
    let map = parse_object(body)?;
    refuse_unknown_fields(&map, &["title", "description", "status"])?;
    let title = match map.get("title") {
        None => return Err(ApiError::validation("title", "is required")),
        Some(v) => parse_title(v)?,
    };
    let description = match map.get("description") {
        None => Description::default(),
        Some(v) => parse_description(v)?,
    };
    let status = match map.get("status") {
        None => Status::Todo,
        Some(v) => parse_status(v)?,
    };
    Ok(NewTask {
        title,
        description,
        status,
    })
}

/// Parses the body of a PUT or PATCH (JSON merge patch semantics).
pub fn parse_patch(body: &[u8]) -> Result<TaskPatch, ApiError> {
    let map = parse_object(body)?;
    refuse_unknown_fields(&map, &["title", "description", "status"])?;
    Ok(TaskPatch {
        title: map.get("title").map(parse_title).transpose()?,
        description: map.get("description").map(parse_description).transpose()?,
        status: map.get("status").map(parse_status).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_writes_what_chrono_writes() {
        let chrono = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut samples: Vec<DateTime<Utc>> = [
            "2026-11-28T05:27:12.123456789Z",
            "2026-11-28T05:27:12Z",
            "1970-01-01T00:00:00Z",
            "0000-01-01T00:00:00.000001Z",
            "9999-12-31T23:59:59.999999999Z",
            "2000-02-29T12:00:00.5Z",
        ]
        .iter()
        .map(|s| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
        // Every shape the fast path can meet: a spread of instants over the four-digit years,
        // with every sub-second precision.
        let (first, last) = (-62_167_219_200_i64, 253_402_300_799_i64);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs =
                first + i64::try_from(x % u64::try_from(last - first).unwrap_or(1)).unwrap_or(0);
            let nanos = u32::try_from(x >> 34).unwrap_or(0) % 1_000_000_000;
            samples.extend(DateTime::from_timestamp(secs, nanos));
        }
        // The shapes left to chrono: five-digit and negative years, a leap second.
        samples.extend(DateTime::from_timestamp(253_402_300_800, 0));
        samples.extend(DateTime::from_timestamp(-62_167_219_201, 0));
        samples.extend(DateTime::from_timestamp(1_483_228_799, 1_500_000_000));
        assert!(samples.len() > 20_000);
        for t in samples {
            assert_eq!(rfc3339(t), chrono(t), "{t:?}");
        }
    }

    fn field_of(e: ApiError) -> Option<String> {
        match e {
            ApiError::Validation { field, .. } => Some(field),
            _ => None,
        }
    }

    #[test]
    fn create_defaults_and_validation() {
        let t = parse_create(br#"{"title":"x"}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.status, Status::Todo);
        assert_eq!(t.description.as_str(), "");
        assert_eq!(
            field_of(parse_create(b"{}").unwrap_err()),
            Some("title".into())
        );
        assert_eq!(
            field_of(parse_create(br#"{"title":5}"#).unwrap_err()),
            Some("title".into())
        );
        assert_eq!(
            field_of(parse_create(br#"{"title":"x","status":"nope"}"#).unwrap_err()),
            Some("status".into())
        );
        assert_eq!(
            field_of(parse_create(br#"{"title":"x","colour":"red"}"#).unwrap_err()),
            Some("colour".into())
        );
        assert!(matches!(
            parse_create(b"[1]").unwrap_err(),
            ApiError::BadRequest { .. }
        ));
        assert!(matches!(
            parse_create(b"{").unwrap_err(),
            ApiError::BadRequest { .. }
        ));
    }

    #[test]
    fn patch_keeps_absent_fields_and_ignores_read_only_ones() {
        let p = parse_patch(br#"{"status":"done","id":9,"version":3,"created_at":"x"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.status, Some(Status::Done));
        assert_eq!(p.title, None);
        let p = parse_patch(br#"{"description":null}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.description, Some(Description::default()));
        assert_eq!(
            field_of(parse_patch(br#"{"title":null}"#).unwrap_err()),
            Some("title".into())
        );
        assert_eq!(
            field_of(parse_patch(br#"{"status":null}"#).unwrap_err()),
            Some("status".into())
        );
    }
}
