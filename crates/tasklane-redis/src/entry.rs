//! The byte format of cache entries and of the generation key, and the keys themselves.

use bytes::Bytes;
use tasklane_domain::Generation;

/// The version of the entry format *and* of what the app puts in entries. Bump it whenever
/// either changes: entries live under `{prefix}:v{SCHEMA}:`, so two releases side by side
/// (a rolling upgrade) never read each other's entries. The generation key is deliberately not
/// versioned: both releases must bump and check the same generation, or a write acknowledged by
/// one would not invalidate the other's entries.
pub const SCHEMA: u32 = 1;

/// The length of the generation tag in front of every entry's payload.
const TAG_LEN: usize = 8;

/// The Redis keys of one cache.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    generation: String,
    entry_prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            generation: format!("{prefix}:gen"),
            entry_prefix: format!("{prefix}:v{SCHEMA}:"),
        }
    }

    pub(crate) fn generation(&self) -> &str {
        &self.generation
    }

    pub(crate) fn entry(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.entry_prefix.len() + key.len());
        k.push_str(&self.entry_prefix);
        k.push_str(key);
        k
    }
}

/// An entry: the generation it was computed under (8 bytes, big-endian), then the payload.
pub(crate) fn encode(generation: Generation, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(TAG_LEN + payload.len());
    v.extend_from_slice(&generation.0.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Splits an entry into its generation and payload without copying the payload; `None` when it
/// is too short to be one.
pub(crate) fn decode(raw: Vec<u8>) -> Option<(Generation, Bytes)> {
    let tag: [u8; TAG_LEN] = raw.get(..TAG_LEN)?.try_into().ok()?;
    Some((
        Generation(u64::from_be_bytes(tag)),
        Bytes::from(raw).slice(TAG_LEN..),
    ))
}

/// Reads the generation key's value (decimal text, as `INCR` writes it); `None` when it is not
/// a non-negative integer.
pub(crate) fn parse_generation(raw: &[u8]) -> Option<Generation> {
    std::str::from_utf8(raw).ok()?.parse().ok().map(Generation)
}

/// The TTL of one stored entry, in ms: drawn at random between nine tenths of `max` and `max`.
///
/// Entries stored in the same moment (the versions of many tasks revalidated at once, the pages
/// read again after a bump) would otherwise all expire in the same moment, and be read from the
/// store again together, a minute later and every minute after, since each burst stores them
/// together again. Never longer than `max`: the TTL bounds how long a replica's owed bump can go
/// unnoticed (ARCHITECTURE.md, *Debt*).
pub(crate) fn ttl_millis(max: u64) -> u64 {
    use rand::Rng;
    max - rand::thread_rng().gen_range(0..=max / 10)
}

/// A random first generation. It stays below 2^62 so `INCR` has room for 2^62 bumps before it
/// overflows; at random, it is all but certain to differ from every generation that entries
/// still in Redis were stored under.
pub(crate) fn random_generation() -> u64 {
    use rand::Rng;
    rand::thread_rng().gen_range(1..(1u64 << 62))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips() {
        let raw = encode(Generation(0x0102_0304_0506_0708), b"payload");
        assert_eq!(&raw[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            decode(raw),
            Some((
                Generation(0x0102_0304_0506_0708),
                Bytes::from_static(b"payload")
            ))
        );
    }

    #[test]
    fn an_empty_payload_is_still_an_entry() {
        assert_eq!(
            decode(encode(Generation(5), b"")),
            Some((Generation(5), Bytes::new()))
        );
    }

    #[test]
    fn too_short_is_not_an_entry() {
        assert_eq!(decode(Vec::new()), None);
        assert_eq!(decode(b"1234567".to_vec()), None);
    }

    #[test]
    fn generations_parse_only_as_non_negative_integers() {
        assert_eq!(parse_generation(b"42"), Some(Generation(42)));
        assert_eq!(parse_generation(b"-1"), None);
        assert_eq!(parse_generation(b"junk"), None);
        assert_eq!(parse_generation(b""), None);
        assert_eq!(parse_generation(&[0xff, 0xfe]), None);
    }

    #[test]
    fn keys_carry_the_prefix_and_only_entries_carry_the_schema() {
        let keys = Keys::new("tl");
        assert_eq!(keys.generation(), "tl:gen");
        assert_eq!(
            keys.entry("list:s=todo"),
            format!("tl:v{SCHEMA}:list:s=todo")
        );
    }

    #[test]
    fn entry_ttls_are_spread_over_the_last_tenth_and_never_longer() {
        for max in [1, 9, 10, 11, 400, u64::MAX] {
            for _ in 0..1000 {
                let ttl = ttl_millis(max);
                assert!(ttl <= max && ttl >= max - max / 10, "{ttl} of {max}");
            }
        }
        let ttls: Vec<u64> = (0..1000).map(|_| ttl_millis(60_000)).collect();
        let distinct: std::collections::HashSet<_> = ttls.iter().collect();
        assert!(distinct.len() > 100, "{} distinct TTLs", distinct.len());
        // Each of these fails by chance with a probability of 0.9^1000, about 2e-46.
        assert!(ttls.iter().any(|&t| t < 54_600), "none in the first tenth");
        assert!(ttls.iter().any(|&t| t > 59_400), "none in the last tenth");
    }

    #[test]
    fn random_generations_leave_room_to_increment() {
        for _ in 0..1000 {
            let g = random_generation();
            assert!((1..1u64 << 62).contains(&g));
        }
    }
}
