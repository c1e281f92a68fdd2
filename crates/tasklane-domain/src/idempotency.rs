//! Idempotent creates: the client's `Idempotency-Key`, the fingerprint of the request it was
//! first sent with, and how long a store remembers the pair.
//!
//! A client that timed out cannot tell whether its create happened. Retrying with the same key
//! and the same request returns the first answer and creates nothing; the same key with a
//! different request is refused, since answering it with the first request's task would be a
//! lie.

use crate::task::NewTask;
use chrono::TimeDelta;
use sha2::{Digest, Sha256};
use std::fmt;

/// The longest idempotency key, in characters (all ASCII, so also in bytes).
pub const IDEMPOTENCY_KEY_MAX_CHARS: usize = 255;

/// How long a store remembers a key. A retry later than this is a new request; the periodic
/// cleanup removes older keys.
pub const IDEMPOTENCY_KEY_TTL: TimeDelta = TimeDelta::hours(24);

/// Why an idempotency key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyKeyError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters (got {got})")]
    TooLong { max: usize, got: usize },
    /// Spaces, control characters and anything outside ASCII: a key is a token (a UUID, say),
    /// and refusing the rest keeps it byte-for-byte the same through proxies and logs.
    #[error("must contain only visible ASCII characters (no spaces)")]
    InvalidCharacter,
}

/// A client's idempotency key: 1 to 255 visible ASCII characters (0x21 to 0x7E).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// # Errors
    /// When the key is empty, too long, or holds a character outside 0x21..=0x7E.
    pub fn new(s: impl Into<String>) -> Result<Self, IdempotencyKeyError> {
        let s = s.into();
        Self::check(s.as_bytes())?;
        Ok(Self(s))
    }

    /// Validates raw bytes (an HTTP header value need not be UTF-8).
    ///
    /// # Errors
    /// As [`IdempotencyKey::new`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdempotencyKeyError> {
        Self::check(bytes)?;
        // Visible ASCII is UTF-8.
        std::str::from_utf8(bytes)
            .map(|s| Self(s.to_owned()))
            .map_err(|_| IdempotencyKeyError::InvalidCharacter)
    }

    fn check(bytes: &[u8]) -> Result<(), IdempotencyKeyError> {
        if bytes.is_empty() {
            return Err(IdempotencyKeyError::Empty);
        }
        if !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(IdempotencyKeyError::InvalidCharacter);
        }
        if bytes.len() > IDEMPOTENCY_KEY_MAX_CHARS {
            return Err(IdempotencyKeyError::TooLong {
                max: IDEMPOTENCY_KEY_MAX_CHARS,
                got: bytes.len(),
            });
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stable digest of a request, stored with its key so that a retry can be told apart from a
/// different request reusing the key. SHA-256 over a tagged, length-prefixed encoding of the
/// validated fields: the same request gives the same bytes in every process and every release
/// (a unit test pins the value), and no two different requests share an encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestFingerprint([u8; 32]);

impl RequestFingerprint {
    pub const LEN: usize = 32;

    /// The fingerprint of a create. It covers the validated task, not the request's bytes, so
    /// `{"title":"a"}` and `{"description":"","title":"a"}` are the same request.
    ///
    /// Changing the encoding (a new field, say) would turn every retry that straddles the
    /// release into a mismatch: a new field must be appended only when it differs from its
    /// default, or the tag must change and old fingerprints be accepted for a day.
    pub fn of_new_task(new: &NewTask) -> Self {
        let mut h = Sha256::new();
        for part in [
            b"tasklane:create-task:v1".as_slice(),
            new.title.as_str().as_bytes(),
            new.description.as_str().as_bytes(),
            new.status.as_str().as_bytes(),
        ] {
            // Lengths first: ("ab", "c") and ("a", "bc") must not hash alike.
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Self(h.finalize().into())
    }

    /// A fingerprint read back from a store; `None` when it is not [`Self::LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for RequestFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestFingerprint(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…)")
    }
}

/// What a store needs to make a create idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: IdempotencyKey,
    pub fingerprint: RequestFingerprint,
    /// A stored key older than this is ignored (and replaced), as if it were absent. The
    /// service always passes [`IDEMPOTENCY_KEY_TTL`]; tests pass less to see keys expire.
    pub ttl: TimeDelta,
}

impl Idempotency {
    /// The key of a create of `new`, remembered for [`IDEMPOTENCY_KEY_TTL`].
    pub fn for_create(key: IdempotencyKey, new: &NewTask) -> Self {
        Self {
            key,
            fingerprint: RequestFingerprint::of_new_task(new),
            ttl: IDEMPOTENCY_KEY_TTL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Description, Status, Title};

    fn new_task(title: &str, description: &str, status: Status) -> NewTask {
        NewTask {
            title: Title::new(title).unwrap_or_else(|_| unreachable!()),
            description: Description::new(description).unwrap_or_else(|_| unreachable!()),
            status,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn keys_are_one_to_255_visible_ascii_characters() {
        for good in [
            "a",
            "!",
            "~",
            "550e8400-e29b-41d4-a716-446655440000",
            "a:b/c=d",
        ] {
            assert_eq!(
                IdempotencyKey::new(good).map(|k| k.as_str().to_owned()),
                Ok(good.to_owned())
            );
        }
        assert!(IdempotencyKey::new("k".repeat(255)).is_ok());
        assert_eq!(
            IdempotencyKey::new("k".repeat(256)),
            Err(IdempotencyKeyError::TooLong { max: 255, got: 256 })
        );
        assert_eq!(IdempotencyKey::new(""), Err(IdempotencyKeyError::Empty));
        for bad in ["a b", " a", "a\t", "a\0", "\u{7f}", "é", "ключ", "a\n"] {
            assert_eq!(
                IdempotencyKey::new(bad),
                Err(IdempotencyKeyError::InvalidCharacter),
                "{bad:?}"
            );
        }
        assert_eq!(
            IdempotencyKey::from_bytes(b"caf\xe9"),
            Err(IdempotencyKeyError::InvalidCharacter)
        );
        assert_eq!(
            IdempotencyKey::from_bytes(b"ok").map(|k| k.to_string()),
            Ok("ok".to_owned())
        );
    }

    #[test]
    fn the_fingerprint_is_pinned_across_releases() {
        // Stored fingerprints outlive the process that computed them: a change here turns
        // retries made across an upgrade into 422s. Change the tag, not this value.
        let f =
            RequestFingerprint::of_new_task(&new_task("Learn Docker", "tutorial", Status::Done));
        assert_eq!(
            hex(f.as_bytes()),
            "2b45031308a824d9949722811b417a34d424316fbcb706cb0a446d3aa81cd812",
        );
    }

    #[test]
    fn the_fingerprint_tells_every_field_apart() {
        let base = RequestFingerprint::of_new_task(&new_task("ab", "c", Status::Todo));
        assert_eq!(
            base,
            RequestFingerprint::of_new_task(&new_task("ab", "c", Status::Todo))
        );
        for other in [
            new_task("a", "bc", Status::Todo),
            new_task("abc", "", Status::Todo),
            new_task("ab", "c ", Status::Todo),
            new_task("ab", "c", Status::Done),
            new_task("AB", "c", Status::Todo),
        ] {
            assert_ne!(base, RequestFingerprint::of_new_task(&other), "{other:?}");
        }
        assert_eq!(RequestFingerprint::from_slice(base.as_bytes()), Some(base));
        assert_eq!(RequestFingerprint::from_slice(&[0; 31]), None);
    }
}
