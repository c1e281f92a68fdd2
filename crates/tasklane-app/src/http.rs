//! HTTP mechanics shared by the handlers: reading a bounded JSON body, and entity tags with
//! their conditional-request headers.

use crate::error::ApiError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::time::Duration;
use tasklane_domain::{Precondition, Version};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Is this a JSON media type (`application/json`, `application/*+json`), parameters aside?
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads a JSON request body: 415 unless the content type is JSON, 413 past `limit` bytes
/// (before reading when `Content-Length` says so), 408 when it does not arrive within
/// `deadline` (a slow client must not hold a worker).
pub async fn read_json_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !is_json(content_type) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let read = async {
        let mut body = BytesMut::with_capacity(declared.map_or(1024, |n| n as usize));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(
                    "invalid_body",
                    format!("The request body could not be read: {e}"),
                )
            })?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| ApiError::RequestTimeout)?
}

/// A task's strong entity tag.
pub fn task_etag(version: Version) -> String {
    format!("\"v{}\"", version.get())
}

/// A strong entity tag for bytes: a 64-bit FNV-1a hash, stable across processes and releases.
pub fn bytes_etag(body: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"l{hash:016x}\"")
}

/// The entity tags listed in a header such as `If-Match` (`*` is returned as is).
fn listed_tags(headers: &HeaderMap, name: header::HeaderName) -> Option<Vec<String>> {
    let mut tags = Vec::new();
    let mut present = false;
    for value in headers.get_all(name) {
        present = true;
        let Ok(text) = value.to_str() else { continue };
        tags.extend(
            text.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        );
    }
    present.then_some(tags)
}

/// The precondition an `If-Match` header states. Weak tags never match (RFC 9110 §13.1.1
/// uses the strong comparison).
pub fn if_match(headers: &HeaderMap) -> Precondition {
    let Some(tags) = listed_tags(headers, header::IF_MATCH) else {
        return Precondition::None;
    };
    if tags.iter().any(|t| t == "*") {
        return Precondition::Exists;
    }
    tags.iter()
        .filter_map(|t| {
            t.strip_prefix("\"v")?
                .strip_suffix('"')?
                .parse::<i64>()
                .ok()
        })
        .next()
        .map_or(Precondition::Never, |v| {
            Precondition::Version(Version::new(v))
        })
}

/// Does `If-None-Match` list this tag (weak comparison, RFC 9110 §13.1.2)?
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let Some(tags) = listed_tags(headers, header::IF_NONE_MATCH) else {
        return false;
    };
    let bare = |t: &str| t.strip_prefix("W/").unwrap_or(t).to_owned();
    tags.iter().any(|t| t == "*" || bare(t) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn json_media_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }

    #[test]
    fn if_match_parses_versions_star_and_junk() {
        assert_eq!(if_match(&HeaderMap::new()), Precondition::None);
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "\"v3\"")),
            Precondition::Version(Version::new(3))
        );
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "*")),
            Precondition::Exists
        );
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "W/\"v3\"")),
            Precondition::Never
        );
        assert_eq!(
            if_match(&headers(header::IF_MATCH, "garbage")),
            Precondition::Never
        );
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let h = headers(header::IF_NONE_MATCH, "W/\"v3\", \"v9\"");
        assert!(if_none_match(&h, "\"v3\""));
        assert!(if_none_match(&h, "\"v9\""));
        assert!(!if_none_match(&h, "\"v4\""));
        assert!(if_none_match(
            &headers(header::IF_NONE_MATCH, "*"),
            "\"v1\""
        ));
    }

    #[test]
    fn bytes_etags_are_stable_and_distinct() {
        assert_eq!(bytes_etag(b"[]"), bytes_etag(b"[]"));
        assert_ne!(bytes_etag(b"[]"), bytes_etag(b"[1]"));
    }
}
