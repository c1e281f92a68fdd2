//! The `TaskCache` contract: what every list cache must do, as seen through the port only. Each
//! case gets a fresh cache in a namespace of its own.

use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasklane_domain::{CacheLookup, Generation, Replacement, TaskCache};

type Cache = Arc<dyn TaskCache>;

/// A deadline for calls that must succeed: generous, since the cases check behaviour, not speed,
/// and a loaded two-core machine may take more than the app's budget to connect.
fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

async fn lookup(cache: &Cache, key: &str) -> CacheLookup {
    cache
        .lookup(key, deadline())
        .await
        .unwrap_or_else(|e| panic!("lookup {key:?}: {e:?}"))
}

async fn store(cache: &Cache, key: &str, generation: Generation, value: &Bytes) {
    cache
        .store(key, generation, value.clone(), deadline())
        .await
        .unwrap_or_else(|e| panic!("store {key:?} under {generation:?}: {e:?}"));
}

async fn bump(cache: &Cache) {
    cache
        .bump_generation(deadline())
        .await
        .unwrap_or_else(|e| panic!("bump: {e:?}"));
}

/// The generation a lookup of `key` reports, which must be a miss. A cache that has no
/// generation yet may say `Miss(None)` once; the lookup after it must carry one.
async fn generation_of_miss(cache: &Cache, key: &str) -> Generation {
    match lookup(cache, key).await {
        CacheLookup::Miss(Some(g)) => g,
        CacheLookup::Miss(None) => match lookup(cache, key).await {
            CacheLookup::Miss(Some(g)) => g,
            other => panic!("a second lookup of {key:?} still has no generation: {other:?}"),
        },
        CacheLookup::Hit(v) => panic!("{key:?} hit with {v:?} where a miss was due"),
    }
}

/// Bytes no text codec would produce, so that a cache that decodes or trims them shows.
fn payload(tag: u8) -> Bytes {
    let mut v = vec![tag, 0, 255, b'\n', b' '];
    v.extend_from_slice("[{\"title\":\"école\"}]".as_bytes());
    v.extend(std::iter::repeat_n(tag, 1000));
    Bytes::from(v)
}

/// A fresh cache has nothing to serve. Its first lookup may find no generation at all
/// (`Miss(None)`: then nothing should be stored); the next one carries a generation.
pub async fn a_fresh_cache_misses_then_has_a_generation(cache: Cache) {
    match lookup(&cache, "s=;l=100;c=;q=").await {
        CacheLookup::Miss(_) => {}
        hit => panic!("a fresh cache served {hit:?}"),
    }
    match lookup(&cache, "s=;l=100;c=;q=").await {
        CacheLookup::Miss(Some(_)) => {}
        other => panic!("the second lookup carries no generation: {other:?}"),
    }
}

/// Bumping before anything was looked up works, and leaves a generation to store under.
pub async fn a_bump_on_a_fresh_cache_is_fine(cache: Cache) {
    bump(&cache).await;
    let g = generation_of_miss(&cache, "k").await;
    let value = payload(1);
    store(&cache, "k", g, &value).await;
    assert_eq!(lookup(&cache, "k").await, CacheLookup::Hit(value));
}

/// An entry stored under the generation a miss reported is served, byte for byte, until it is
/// replaced by a later store.
pub async fn a_stored_entry_hits_with_the_same_bytes(cache: Cache) {
    let g = generation_of_miss(&cache, "s=todo;l=100;c=;q=").await;
    let value = payload(7);
    store(&cache, "s=todo;l=100;c=;q=", g, &value).await;
    assert_eq!(
        lookup(&cache, "s=todo;l=100;c=;q=").await,
        CacheLookup::Hit(value.clone())
    );
    // Looking does not consume the entry.
    assert_eq!(
        lookup(&cache, "s=todo;l=100;c=;q=").await,
        CacheLookup::Hit(value)
    );

    let replacement = payload(8);
    store(&cache, "s=todo;l=100;c=;q=", g, &replacement).await;
    assert_eq!(
        lookup(&cache, "s=todo;l=100;c=;q=").await,
        CacheLookup::Hit(replacement)
    );

    let empty = Bytes::new();
    store(&cache, "empty", g, &empty).await;
    assert_eq!(lookup(&cache, "empty").await, CacheLookup::Hit(empty));
}

/// A bump makes every entry a miss again, and the miss reports a new generation, under which
/// entries are served again.
pub async fn a_bump_invalidates_and_moves_the_generation(cache: Cache) {
    let g1 = generation_of_miss(&cache, "k").await;
    let value = payload(1);
    store(&cache, "k", g1, &value).await;
    assert_eq!(lookup(&cache, "k").await, CacheLookup::Hit(value.clone()));

    bump(&cache).await;
    let g2 = match lookup(&cache, "k").await {
        CacheLookup::Miss(Some(g2)) => g2,
        other => panic!("after a bump: {other:?}"),
    };
    assert_ne!(g2, g1, "the generation did not move");

    let fresh = payload(2);
    store(&cache, "k", g2, &fresh).await;
    assert_eq!(lookup(&cache, "k").await, CacheLookup::Hit(fresh));

    // Every bump moves it on again.
    bump(&cache).await;
    bump(&cache).await;
    let g3 = generation_of_miss(&cache, "k").await;
    assert!(g3 != g1 && g3 != g2, "{g1:?} {g2:?} {g3:?}");
}

/// A value computed before a write and stored after that write's bump (a reader that raced a
/// writer) is never served.
pub async fn an_entry_stored_under_an_older_generation_never_hits(cache: Cache) {
    let old = generation_of_miss(&cache, "k").await;
    bump(&cache).await;
    store(&cache, "k", old, &payload(1)).await;
    let current = match lookup(&cache, "k").await {
        CacheLookup::Miss(Some(g)) => g,
        other => panic!("an entry of an older generation: {other:?}"),
    };
    assert_ne!(current, old);

    // The same after the current generation's own entry was served and then invalidated.
    store(&cache, "k", current, &payload(2)).await;
    assert_eq!(lookup(&cache, "k").await, CacheLookup::Hit(payload(2)));
    bump(&cache).await;
    store(&cache, "k", current, &payload(3)).await;
    store(&cache, "k", old, &payload(4)).await;
    match lookup(&cache, "k").await {
        CacheLookup::Miss(Some(g)) => assert!(g != current && g != old),
        other => panic!("an entry of an older generation: {other:?}"),
    }
}

/// Each key has its own entry: keys that are prefixes of one another, differ only in case or
/// in the search text, or hold non-ASCII text never see each other's values.
pub async fn distinct_keys_do_not_collide(cache: Cache) {
    let keys = [
        "s=;l=1;c=;q=",
        "s=;l=10;c=;q=",
        "s=;l=100;c=;q=",
        "s=done;l=1;c=;q=",
        "s=;l=1;c=;q=x",
        "s=;l=1;c=;q=X",
        "s=;l=1;c=;q=école",
        "s=;l=1;c=;q=x;q=y",
        "s=;l=1;c=;q=a b*?[]:{}",
    ];
    let g = generation_of_miss(&cache, keys[0]).await;
    for (i, key) in keys.iter().enumerate() {
        store(&cache, key, g, &payload(i as u8)).await;
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            lookup(&cache, key).await,
            CacheLookup::Hit(payload(i as u8)),
            "{key:?}"
        );
    }
    match lookup(&cache, "s=;l=2;c=;q=").await {
        CacheLookup::Miss(Some(current)) => assert_eq!(current, g),
        other => panic!("a key never stored: {other:?}"),
    }
}

/// A cache that is up answers `ping`.
pub async fn ping_answers(cache: Cache) {
    cache
        .ping(deadline())
        .await
        .unwrap_or_else(|e| panic!("ping: {e:?}"));
}

async fn bump_replacing(cache: &Cache, replacements: &[Replacement]) -> Vec<bool> {
    let made = cache
        .bump_generation_replacing(replacements, deadline())
        .await
        .unwrap_or_else(|e| panic!("bump with replacements: {e:?}"));
    assert_eq!(made.len(), replacements.len(), "one answer per replacement");
    made
}

fn replacement(key: &str, expected: Generation, held: &Bytes, next: &Bytes) -> Replacement {
    Replacement {
        key: key.to_owned(),
        expected_generation: expected,
        expected_value: held.clone(),
        value: next.clone(),
    }
}

/// A replacement whose entry holds the expected bytes under the generation the bump starts
/// from is stored under the new generation: it hits at once, where the other entries miss.
pub async fn a_bump_replaces_an_entry_holding_the_expected_bytes(cache: Cache) {
    let g = generation_of_miss(&cache, "k").await;
    let (old, new, other) = (payload(1), payload(2), payload(3));
    store(&cache, "k", g, &old).await;
    store(&cache, "other", g, &other).await;
    let made = bump_replacing(&cache, &[replacement("k", g, &old, &new)]).await;
    assert_eq!(made, vec![true]);
    assert_eq!(lookup(&cache, "k").await, CacheLookup::Hit(new.clone()));
    match lookup(&cache, "other").await {
        CacheLookup::Miss(Some(g2)) => assert!(g2 != g, "the generation moved on"),
        other => panic!("an entry not replaced must miss after the bump: {other:?}"),
    }
    // A chain: the next bump replaces what the last one stored.
    let g2 = generation_of_miss(&cache, "other").await;
    let newer = payload(4);
    let made = bump_replacing(&cache, &[replacement("k", g2, &new, &newer)]).await;
    assert_eq!(made, vec![true]);
    assert_eq!(lookup(&cache, "k").await, CacheLookup::Hit(newer));
}

/// Every reason to refuse: other bytes, another generation (a bump came between), no entry.
/// A refused replacement still bumps: its entry misses afterwards, like every other.
pub async fn a_bump_refuses_a_replacement_of_anything_but_the_expected_entry(cache: Cache) {
    let g = generation_of_miss(&cache, "a").await;
    let (old, new) = (payload(1), payload(2));
    store(&cache, "a", g, &old).await;
    store(&cache, "b", g, &old).await;
    let made = bump_replacing(
        &cache,
        &[
            replacement("a", g, &payload(9), &new),
            replacement("b", g, &old, &new),
            replacement("absent", g, &old, &new),
        ],
    )
    .await;
    assert_eq!(made, vec![false, true, false]);
    assert!(matches!(lookup(&cache, "a").await, CacheLookup::Miss(_)));
    assert!(matches!(
        lookup(&cache, "absent").await,
        CacheLookup::Miss(_)
    ));
    assert_eq!(lookup(&cache, "b").await, CacheLookup::Hit(new.clone()));

    // "b" holds `new` under the current generation, but a replacement that expects the
    // generation before it (built on a page of that one) is refused.
    let made = bump_replacing(&cache, &[replacement("b", g, &new, &payload(5))]).await;
    assert_eq!(made, vec![false]);
    assert!(matches!(lookup(&cache, "b").await, CacheLookup::Miss(_)));

    // An entry holding the expected bytes but stored under an older generation than the one
    // expected: refused too.
    let g3 = generation_of_miss(&cache, "c").await;
    store(&cache, "c", g, &old).await;
    let made = bump_replacing(&cache, &[replacement("c", g3, &old, &new)]).await;
    assert_eq!(made, vec![false]);
    assert!(matches!(lookup(&cache, "c").await, CacheLookup::Miss(_)));
}
