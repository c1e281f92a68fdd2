//! HTTP mechanics shared by the handlers: reading a bounded JSON body, and entity tags with
//! their conditional-request headers.

use crate::error::ApiError;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use compact_str::{CompactString, ToCompactString};
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

/// A task's strong entity tag, `"v{version}"`. Made on every revalidation, so it is built
/// inline (versions up to 19 digits fit its 24 bytes) and without the formatting machinery.
pub fn task_etag(version: Version) -> CompactString {
    let mut tag = CompactString::const_new("\"v");
    tag.push_str(&version.get().to_compact_string());
    tag.push('"');
    tag
}

/// The length of every [`bytes_etag`]: `"l`, 16 hex digits, `"`.
pub const BYTES_ETAG_LEN: usize = 19;

/// A strong entity tag for bytes: a 64-bit hash, stable across processes and releases (replicas
/// must agree on it, so it has no random key), `BYTES_ETAG_LEN` long.
pub fn bytes_etag(body: &[u8]) -> String {
    format!("\"l{:016x}\"", body_hash(body))
}

/// Reads 8 bytes at a time, each word mixed in by a 64 × 64 → 128-bit multiply whose halves
/// are folded together (as wyhash and foldhash do: every bit of the word reaches every bit of
/// the state, so changes in two words cannot cancel out the way they do with a plain multiply
/// and rotate), then the length, then a final avalanche (MurmurHash3's finalizer). 5.5 µs for a
/// 22 kB page where FNV-1a, a multiply per byte, took 29 µs: 8% of the CPU of an uncached
/// 100-row page (docs/PERFORMANCE.md section 13). Like FNV-1a, not a defence against someone
/// crafting collisions.
fn body_hash(body: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |hash: u64, word: u64| {
        let product = u128::from(hash ^ word) * u128::from(K);
        let [low, high] = [product, product >> 64].map(|half| half as u64);
        low ^ high
    };
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = body.chunks_exact(8);
    let mut word = [0u8; 8];
    for chunk in &mut words {
        word.copy_from_slice(chunk);
        hash = mix(hash, u64::from_le_bytes(word));
    }
    let tail = words.remainder();
    word = [0u8; 8];
    word[..tail.len()].copy_from_slice(tail);
    hash = mix(hash, u64::from_le_bytes(word));
    hash = mix(hash, u64::try_from(body.len()).unwrap_or(u64::MAX));
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
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
/// Nothing is allocated: this runs on every revalidation of a cached list.
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
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
    fn task_etags_quote_the_version() {
        assert_eq!(task_etag(Version::new(1)), "\"v1\"");
        assert_eq!(task_etag(Version::new(907)), "\"v907\"");
        assert_eq!(
            task_etag(Version::new(i64::MAX)),
            "\"v9223372036854775807\""
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
        // No header, empty entries, and tags only in a later header line.
        assert!(!if_none_match(&HeaderMap::new(), "\"v1\""));
        assert!(!if_none_match(
            &headers(header::IF_NONE_MATCH, " , ,"),
            "\"v1\""
        ));
        let mut lines = headers(header::IF_NONE_MATCH, "\"v1\"");
        lines.append(
            header::IF_NONE_MATCH,
            HeaderValue::from_bytes(b"\"v\xe9\", W/\"v2\"").unwrap(),
        );
        lines.append(header::IF_NONE_MATCH, HeaderValue::from_static("W/\"v5\""));
        assert!(if_none_match(&lines, "\"v5\""));
        assert!(
            !if_none_match(&lines, "\"v2\""),
            "an unreadable line is skipped whole"
        );
    }

    #[test]
    fn bytes_etags_are_stable_and_distinct() {
        assert_eq!(bytes_etag(b"[]"), bytes_etag(b"[]"));
        assert_ne!(bytes_etag(b"[]"), bytes_etag(b"[1]"));
        // Replicas and releases must agree: the function is pinned.
        assert_eq!(bytes_etag(b"[]"), "\"l9f4aadfd48da6c47\"");
        // Every length (tail and zero padding included) and every single-bit change of a body
        // gives its own tag, and every tag is as long as announced.
        let body: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        let mut seen = std::collections::HashSet::new();
        for len in 0..=body.len() {
            let tag = bytes_etag(&body[..len]);
            assert_eq!(tag.len(), BYTES_ETAG_LEN);
            assert!(seen.insert(tag), "length {len}");
        }
        assert_ne!(bytes_etag(b"ab"), bytes_etag(b"ab\0"));
        for byte in 0..body.len() {
            for bit in 0..8 {
                let mut changed = body.clone();
                changed[byte] ^= 1 << bit;
                assert!(seen.insert(bytes_etag(&changed)), "byte {byte} bit {bit}");
            }
        }
        // Two changes that cancel out under a plain multiply and rotate (the top bit of one word
        // and the bit it rotates to in the next) do not cancel here.
        let mut twice = body.clone();
        twice[7] ^= 0x80;
        twice[11] ^= 0x10;
        assert!(seen.insert(bytes_etag(&twice)));
    }
}
