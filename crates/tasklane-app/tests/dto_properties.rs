//! Property-based tests of the request-body parsers (issue 6, hostile input): for arbitrary JSON
//! values and arbitrary bytes, `parse_create` and `parse_patch` return, never panic, and either
//! parse or refuse with a 400 (not a JSON object) or a 422 (a field is wrong), never a 5xx. What
//! they accept is what the rules allow, and a 422 names a field that is really wrong.
//!
//! 256 cases a property (proptest's default; `PROPTEST_CASES` overrides it).

use actix_web::http::StatusCode;
use actix_web::ResponseError;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Number, Value};
use tasklane_app::dto::{parse_create, parse_patch};
use tasklane_app::error::ApiError;
use tasklane_domain::{Description, Status, Title};

const FIELDS: [&str; 3] = ["title", "description", "status"];
const READ_ONLY: [&str; 4] = ["id", "version", "created_at", "updated_at"];

// ---------------------------------------------------------------------------------------------
// Strategies

/// Short arbitrary text: any Unicode scalar values, NUL and controls included.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// Strings a field could be given: valid ones, blank ones, NUL, the three statuses and
/// near-misses, lengths around the bounds, and arbitrary text.
fn field_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any_text(40),
        2 => select(&["todo", "in_progress", "done", "Done", "in-progress", " todo", "", " ",
                      "\t\n", "\u{3000}", "\u{200b}", "a\0b", "\0", "x", "Learn Docker"][..])
            .prop_map(str::to_owned),
        1 => (select(&["a", "é", "🦀", " "][..]), 250usize..260)
            .prop_map(|(c, n)| c.repeat(n)),
        1 => (select(&["a", "é", "🦀"][..]), 9_995usize..10_005)
            .prop_map(|(c, n)| c.repeat(n)),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("not finite", |f| Number::from_f64(f).map(Value::Number)),
        field_string().prop_map(Value::String),
    ]
}

/// Object keys: the body's fields, the read-only fields it ignores, near-misses, and anything.
fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(&FIELDS[..]).prop_map(str::to_owned),
        1 => select(&READ_ONLY[..]).prop_map(str::to_owned),
        1 => select(&["Title", "title ", "colour", "", "__proto__", "t\0itle"][..])
            .prop_map(str::to_owned),
        1 => any_text(80),
    ]
}

/// Arbitrary JSON values, nested up to a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(json_key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like a body, so that most cases get past the first checks: a few of the
/// body's fields with arbitrary values, sometimes a read-only or an unknown one.
fn body_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(json_key(), json_value(), 0..5)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Bodies that JSON parsers are known to differ on or to trip over.
const ODD_BODIES: &[&[u8]] = &[
    b"\xef\xbb\xbf{}",
    b"{\"title\":\"\xff\"}",
    b"{\"title\":\"\\ud800\"}",
    b"{\"title\":\"\\u0000\"}",
    b"{\"title\":\"x\",\"title\":5}",
    b"{\"title\":\"x\"} {}",
    b"1e99999",
    b"-0",
    b"\"\\u0000\"",
    b" ",
    b"",
];

/// Bytes: arbitrary, or JSON text with a byte changed, cut short, or not UTF-8.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (body_object(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, b)| {
            let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            bytes
        }),
        (body_object(), any::<prop::sample::Index>()).prop_map(|(v, at)| {
            let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
            bytes.truncate(at.index(bytes.len() + 1));
            bytes
        }),
        // Nesting far past serde_json's recursion limit (128).
        (
            1usize..20_000,
            select(&["[", "{\"a\":", "{\"title\":["][..])
        )
            .prop_map(|(n, open)| open.repeat(n).into_bytes()),
        select(ODD_BODIES).prop_map(<[u8]>::to_vec),
    ]
}

// ---------------------------------------------------------------------------------------------
// The rules, written out independently of the parsers.

/// Which fields of a body parsed as `value` are wrong, for a create (`create`) or a patch;
/// `None` when it is not a JSON object at all (a 400).
fn wrong_fields(value: &Value, create: bool) -> Option<Vec<String>> {
    let map = value.as_object()?;
    let mut wrong: Vec<String> = map
        .keys()
        .filter(|k| !FIELDS.contains(&k.as_str()) && !READ_ONLY.contains(&k.as_str()))
        .map(|k| k.chars().take(64).collect())
        .collect();
    let title_ok = match map.get("title") {
        None => !create,
        Some(v) => v.as_str().is_some_and(|s| Title::new(s).is_ok()),
    };
    let description_ok = match map.get("description") {
        None | Some(Value::Null) => true,
        Some(v) => v.as_str().is_some_and(|s| Description::new(s).is_ok()),
    };
    let status_ok = match map.get("status") {
        None => true,
        Some(v) => v.as_str().is_some_and(|s| s.parse::<Status>().is_ok()),
    };
    for (ok, field) in [
        (title_ok, "title"),
        (description_ok, "description"),
        (status_ok, "status"),
    ] {
        if !ok {
            wrong.push(field.to_owned());
        }
    }
    Some(wrong)
}

/// What the body's JSON would be, if it is JSON: the parsers take bytes.
fn as_json(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// The refusal is a 400 or a 422, of the right kind, and renders without panicking.
fn check_refusal(e: &ApiError, expected_wrong: Option<&[String]>) -> Result<(), TestCaseError> {
    let status = e.status_code();
    prop_assert!(
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
        "{status} for {e:?}"
    );
    prop_assert!(!status.is_server_error());
    match (e, expected_wrong) {
        (ApiError::BadRequest { .. }, None) => {}
        (ApiError::Validation { field, .. }, Some(wrong)) => {
            prop_assert!(
                wrong.contains(field),
                "422 names {field:?}, but the wrong fields are {wrong:?}"
            );
        }
        (e, expected) => {
            prop_assert!(false, "{e:?}, expected wrong fields {expected:?}");
        }
    }
    let response = e.error_response();
    prop_assert_eq!(response.status(), status);
    Ok(())
}

fn check_create(body: &[u8]) -> Result<(), TestCaseError> {
    let json = as_json(body);
    let wrong = json.as_ref().and_then(|v| wrong_fields(v, true));
    match parse_create(body) {
        Ok(task) => {
            prop_assert_eq!(wrong.as_deref(), Some(&[][..]), "accepted {:?}", json);
            let map = json.as_ref().and_then(Value::as_object);
            let field = |k: &str| map.and_then(|m| m.get(k)).and_then(Value::as_str);
            prop_assert_eq!(Some(task.title.as_str()), field("title"));
            prop_assert_eq!(
                task.description.as_str(),
                field("description").unwrap_or("")
            );
            prop_assert_eq!(
                task.status,
                field("status")
                    .map_or(Ok(Status::Todo), str::parse)
                    .unwrap_or_default()
            );
        }
        Err(e) => {
            prop_assert_ne!(
                wrong.as_deref(),
                Some(&[][..]),
                "refused a valid body: {}",
                e
            );
            check_refusal(&e, wrong.as_deref())?;
        }
    }
    Ok(())
}

fn check_patch(body: &[u8]) -> Result<(), TestCaseError> {
    let json = as_json(body);
    let wrong = json.as_ref().and_then(|v| wrong_fields(v, false));
    match parse_patch(body) {
        Ok(patch) => {
            prop_assert_eq!(wrong.as_deref(), Some(&[][..]), "accepted {:?}", json);
            let map = json.as_ref().and_then(Value::as_object);
            let get = |k: &str| map.and_then(|m| m.get(k));
            prop_assert_eq!(
                patch.title.as_ref().map(Title::as_str),
                get("title").and_then(Value::as_str)
            );
            prop_assert_eq!(
                patch.description.as_ref().map(Description::as_str),
                get("description").map(|v| v.as_str().unwrap_or(""))
            );
            prop_assert_eq!(
                patch.status.map(Status::as_str),
                get("status").and_then(Value::as_str)
            );
        }
        Err(e) => {
            prop_assert_ne!(
                wrong.as_deref(),
                Some(&[][..]),
                "refused a valid body: {}",
                e
            );
            check_refusal(&e, wrong.as_deref())?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #[test]
    fn any_json_value_parses_or_is_a_4xx(v in json_value()) {
        let body = serde_json::to_vec(&v).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_create(&body)?;
        check_patch(&body)?;
    }

    #[test]
    fn body_shaped_objects_parse_or_name_a_wrong_field(v in body_object()) {
        let body = serde_json::to_vec(&v).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_create(&body)?;
        check_patch(&body)?;
    }

    #[test]
    fn any_bytes_parse_or_are_a_4xx(body in hostile_bytes()) {
        check_create(&body)?;
        check_patch(&body)?;
    }

    /// Well-formed bodies with good or bad values in each field.
    #[test]
    fn field_values_are_validated(
        title in prop::option::of(json_leaf()),
        description in prop::option::of(json_leaf()),
        status in prop::option::of(prop_oneof![
            select(&["todo", "in_progress", "done"][..]).prop_map(Value::from),
            json_leaf(),
        ]),
        read_only in prop::option::of((select(&READ_ONLY[..]), json_leaf())),
    ) {
        let mut map = Map::new();
        for (k, v) in [("title", title), ("description", description), ("status", status)] {
            if let Some(v) = v {
                map.insert(k.to_owned(), v);
            }
        }
        if let Some((k, v)) = read_only {
            map.insert(k.to_owned(), v);
        }
        let body = serde_json::to_vec(&Value::Object(map))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_create(&body)?;
        check_patch(&body)?;
    }
}
