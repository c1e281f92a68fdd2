//! The cache contract, against the machine's shared Redis, each test under its own key prefix.

mod common;

use bytes::Bytes;
use common::{
    cache, cause, deadline, is_unavailable, raw, replacement, settings, store_then_replace,
    TestResult,
};
use deadpool_redis::redis::{self, AsyncCommands};
use std::time::{Duration, Instant};
use tasklane_domain::{CacheLookup, Generation, TaskCache};
use tasklane_redis::{BreakerState, RedisCacheError, RedisTaskCache, SetupError, SCHEMA};
use tasklane_testkit::redis::{shared_redis_url, unique_prefix, SharedPrefix};

/// A cache on the shared Redis under a new prefix, with its generation already set.
async fn ready_cache(
) -> Result<(RedisTaskCache, SharedPrefix, Generation), Box<dyn std::error::Error>> {
    let prefix = SharedPrefix::new();
    let cache = cache(shared_redis_url(), prefix.to_string())?;
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(None)
    );
    let CacheLookup::Miss(Some(generation)) = cache.lookup("k", deadline()).await? else {
        return Err("no generation after the first lookup".into());
    };
    Ok((cache, prefix, generation))
}

/// The generation of a cache on a fresh prefix: the first lookup seeds it, the second reports
/// it.
async fn seeded_generation(
    cache: &RedisTaskCache,
) -> Result<Generation, Box<dyn std::error::Error>> {
    let _ = cache.lookup("k", deadline()).await?;
    match cache.lookup("k", deadline()).await? {
        CacheLookup::Miss(Some(generation)) => Ok(generation),
        other => Err(format!("no generation after the first lookup: {other:?}").into()),
    }
}

fn entry_key(prefix: &str, schema: u32, key: &str) -> String {
    format!("{prefix}:v{schema}:{key}")
}

/// Writes entry `k` straight into Redis, under `generation`, with `body`: what another replica
/// storing its own read of the same generation would leave there.
async fn overwrite_entry(prefix: &str, generation: Generation, body: &[u8]) -> TestResult {
    let mut conn = raw(&shared_redis_url()).await?;
    let entry = [&generation.0.to_be_bytes()[..], body].concat();
    let () = conn.set(entry_key(prefix, SCHEMA, "k"), &entry).await?;
    Ok(())
}

#[tokio::test]
async fn a_miss_then_a_store_then_a_hit() -> TestResult {
    let (cache, _prefix, generation) = ready_cache().await?;

    assert_eq!(
        cache.lookup("status=todo", deadline()).await?,
        CacheLookup::Miss(Some(generation))
    );
    cache
        .store(
            "status=todo",
            generation,
            Bytes::from_static(b"[1,2,3]"),
            deadline(),
        )
        .await?;
    assert_eq!(
        cache.lookup("status=todo", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"[1,2,3]"))
    );
    // Another key is still a miss.
    assert_eq!(
        cache.lookup("status=done", deadline()).await?,
        CacheLookup::Miss(Some(generation))
    );
    Ok(())
}

#[tokio::test]
async fn an_empty_value_is_cached_too() -> TestResult {
    let (cache, _prefix, generation) = ready_cache().await?;
    cache
        .store("k", generation, Bytes::new(), deadline())
        .await?;
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::new())
    );
    Ok(())
}

#[tokio::test]
async fn a_bump_turns_every_entry_into_a_miss_under_the_new_generation() -> TestResult {
    let (cache, _prefix, generation) = ready_cache().await?;
    cache
        .store("a", generation, Bytes::from_static(b"old a"), deadline())
        .await?;
    cache
        .store("b", generation, Bytes::from_static(b"old b"), deadline())
        .await?;

    cache.bump_generation(deadline()).await?;

    let CacheLookup::Miss(Some(next)) = cache.lookup("a", deadline()).await? else {
        return Err("an entry of the old generation was served".into());
    };
    assert_ne!(next, generation);
    assert_eq!(
        cache.lookup("b", deadline()).await?,
        CacheLookup::Miss(Some(next))
    );
    Ok(())
}

#[tokio::test]
async fn a_value_stored_under_an_old_generation_is_never_served() -> TestResult {
    // The race the generation exists for: a reader looks up, a writer commits and bumps, and
    // the reader then stores what it read from the store before the write.
    let (cache, _prefix, generation) = ready_cache().await?;
    cache.bump_generation(deadline()).await?;
    cache
        .store("k", generation, Bytes::from_static(b"stale"), deadline())
        .await?;

    let lookup = cache.lookup("k", deadline()).await?;
    assert!(
        matches!(lookup, CacheLookup::Miss(Some(g)) if g != generation),
        "{lookup:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_garbage_entry_is_a_miss_not_an_error() -> TestResult {
    let (cache, prefix, generation) = ready_cache().await?;
    let mut conn = raw(&shared_redis_url()).await?;
    let key = entry_key(&prefix, SCHEMA, "k");
    let junk: [&[u8]; 4] = [
        b"",
        b"junk",
        b"\x00\x00\x00\x00\x00\x00\x00",
        b"definitely not a generation tag",
    ];
    for value in junk {
        let () = conn.set(&key, value).await?;
        assert_eq!(
            cache.lookup("k", deadline()).await?,
            CacheLookup::Miss(Some(generation)),
            "entry {value:?}"
        );
    }
    // A value of another type under the entry's key is no error either.
    let () = conn.del(&key).await?;
    let _: i64 = conn.rpush(&key, "x").await?;
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(Some(generation))
    );
    Ok(())
}

#[tokio::test]
async fn a_fresh_prefix_has_no_generation_and_the_first_lookup_seeds_one() -> TestResult {
    let prefix = SharedPrefix::new();
    let cache = cache(shared_redis_url(), prefix.to_string())?;
    let mut conn = raw(&shared_redis_url()).await?;
    let gen_key = format!("{prefix}:gen");

    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(None)
    );
    let seeded: Option<u64> = conn.get(&gen_key).await?;
    let Some(seeded) = seeded else {
        return Err("the lookup did not seed a generation".into());
    };
    // Random, not 1: entries that outlived an old generation key cannot look current.
    assert!(seeded > 1 && seeded < 1 << 62, "{seeded}");
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(Some(Generation(seeded)))
    );
    Ok(())
}

#[tokio::test]
async fn a_lookup_never_overwrites_an_existing_generation() -> TestResult {
    let (cache, _prefix, generation) = ready_cache().await?;
    for _ in 0..3 {
        assert_eq!(
            cache.lookup("k", deadline()).await?,
            CacheLookup::Miss(Some(generation))
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_bump_on_a_fresh_prefix_starts_at_random_not_at_1() -> TestResult {
    let prefix = SharedPrefix::new();
    let cache = cache(shared_redis_url(), prefix.to_string())?;
    let mut conn = raw(&shared_redis_url()).await?;
    // An entry left from an earlier life of the generation key, stored under generation 1.
    let () = conn
        .set(
            entry_key(&prefix, SCHEMA, "k"),
            [&1u64.to_be_bytes()[..], b"stale"].concat(),
        )
        .await?;

    cache.bump_generation(deadline()).await?;

    let generation: u64 = conn.get(format!("{prefix}:gen")).await?;
    assert!(generation > 2, "{generation}");
    assert!(matches!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(Some(_))
    ));
    Ok(())
}

#[tokio::test]
async fn a_bump_moves_the_generation_on_by_one() -> TestResult {
    let (cache, _prefix, generation) = ready_cache().await?;
    cache.bump_generation(deadline()).await?;
    cache.bump_generation(deadline()).await?;
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(Some(Generation(generation.0 + 2)))
    );
    Ok(())
}

#[tokio::test]
async fn a_generation_key_that_is_not_a_number_is_replaced() -> TestResult {
    let (cache, prefix, generation) = ready_cache().await?;
    cache
        .store("k", generation, Bytes::from_static(b"v"), deadline())
        .await?;
    let mut conn = raw(&shared_redis_url()).await?;
    let gen_key = format!("{prefix}:gen");

    let () = conn.set(&gen_key, "garbage").await?;
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(None)
    );
    let healed: Option<u64> = conn.get(&gen_key).await?;
    assert!(healed.is_some_and(|g| g != generation.0), "{healed:?}");

    // A bump, too, must get past it, or a debt of owed bumps could never be paid.
    let () = conn.set(&gen_key, "garbage").await?;
    cache.bump_generation(deadline()).await?;
    let healed: Option<u64> = conn.get(&gen_key).await?;
    assert!(healed.is_some(), "{healed:?}");

    // And a bump with replacements: nothing is replaced, and the call does not fail.
    let Some(current) = healed.map(Generation) else {
        return Err("no generation".into());
    };
    cache
        .store("k", current, Bytes::from_static(b"a"), deadline())
        .await?;
    let () = conn.set(&gen_key, "garbage").await?;
    let made = cache
        .bump_generation_replacing(&[replacement(current, b"a", b"b")], deadline())
        .await?;
    assert_eq!(made, vec![false]);
    let healed: Option<u64> = conn.get(&gen_key).await?;
    assert!(healed.is_some(), "{healed:?}");
    assert!(matches!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(Some(_))
    ));
    Ok(())
}

#[tokio::test]
async fn entries_expire_after_the_ttl() -> TestResult {
    let prefix = SharedPrefix::new();
    let mut s = settings(shared_redis_url(), prefix.to_string());
    s.ttl = Duration::from_secs(30);
    let cache = RedisTaskCache::new(s)?;
    let generation = seeded_generation(&cache).await?;
    cache
        .store("k", generation, Bytes::from_static(b"v"), deadline())
        .await?;

    let mut conn = raw(&shared_redis_url()).await?;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(entry_key(&prefix, SCHEMA, "k"))
        .query_async(&mut conn)
        .await?;
    // Stored for 27-30 s (the last tenth drawn at random), less the time since.
    assert!(pttl > 25_000 && pttl <= 30_000, "PTTL {pttl}");
    // The generation itself never expires.
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}:gen"))
        .query_async(&mut conn)
        .await?;
    assert_eq!(pttl, -1);
    Ok(())
}

#[tokio::test]
async fn entries_stored_together_do_not_expire_together() -> TestResult {
    let prefix = SharedPrefix::new();
    let mut s = settings(shared_redis_url(), prefix.to_string());
    s.ttl = Duration::from_secs(60);
    let cache = RedisTaskCache::new(s)?;
    let generation = seeded_generation(&cache).await?;
    let mut conn = raw(&shared_redis_url()).await?;
    let mut pttls = Vec::new();
    for id in 0..50 {
        let key = format!("task:{id}:version");
        cache
            .store(&key, generation, Bytes::from_static(b"v"), deadline())
            .await?;
        let pttl: i64 = redis::cmd("PTTL")
            .arg(entry_key(&prefix, SCHEMA, &key))
            .query_async(&mut conn)
            .await?;
        pttls.push(pttl);
    }
    // Each within the last tenth of the TTL (less the few ms since it was stored)...
    for &pttl in &pttls {
        assert!(pttl > 53_000 && pttl <= 60_000, "PTTL {pttl}");
    }
    // ...and spread over it: 50 draws over 6 s all within one second of each other would be a
    // chance of about 50 * (1/6)^49.
    let (min, max) = (pttls.iter().min(), pttls.iter().max());
    let spread = max.zip(min).map_or(0, |(max, min)| max - min);
    assert!(spread > 1_000, "TTLs within {spread} ms: {pttls:?}");
    Ok(())
}

#[tokio::test]
async fn entries_of_another_schema_are_not_read() -> TestResult {
    let (cache, prefix, generation) = ready_cache().await?;
    let mut conn = raw(&shared_redis_url()).await?;
    // What another release would have stored under the current generation.
    let tagged = [&generation.0.to_be_bytes()[..], b"other release"].concat();
    for other in [SCHEMA + 1, SCHEMA.saturating_sub(1)] {
        let () = conn.set(entry_key(&prefix, other, "k"), &tagged).await?;
    }
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(Some(generation))
    );

    // And this release's entry is where the key layout says.
    cache
        .store("k", generation, Bytes::from_static(b"ours"), deadline())
        .await?;
    let ours: Vec<u8> = conn.get(entry_key(&prefix, SCHEMA, "k")).await?;
    assert_eq!(ours, [&generation.0.to_be_bytes()[..], b"ours"].concat());
    Ok(())
}

#[tokio::test]
async fn a_deadline_already_past_fails_at_once_without_blaming_redis() -> TestResult {
    let (cache, _prefix, _) = ready_cache().await?;
    let past = Instant::now() - Duration::from_millis(1);
    for _ in 0..10 {
        let started = Instant::now();
        let r = cache.lookup("k", past).await;
        assert!(is_unavailable(&r), "{r:?}");
        assert!(matches!(
            r.as_ref().err().and_then(cause),
            Some(RedisCacheError::NoTimeLeft)
        ));
        assert!(
            started.elapsed() < common::BUDGET,
            "{:?}",
            started.elapsed()
        );
        assert!(is_unavailable(&cache.bump_generation(past).await));
        assert!(is_unavailable(&cache.ping(past).await));
    }
    // The caller's spent budget is not Redis's failure.
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    cache.ping(deadline()).await?;
    Ok(())
}

#[tokio::test]
async fn ping_answers() -> TestResult {
    let cache = cache(shared_redis_url(), unique_prefix())?;
    cache.ping(deadline()).await?;
    Ok(())
}

#[tokio::test]
async fn many_concurrent_calls_share_the_connection() -> TestResult {
    let (cache, _prefix, generation) = ready_cache().await?;
    cache
        .store("k", generation, Bytes::from_static(b"v"), deadline())
        .await?;
    let cache = std::sync::Arc::new(cache);
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .lookup("k", Instant::now() + Duration::from_secs(2))
                    .await
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await??, CacheLookup::Hit(Bytes::from_static(b"v")));
    }
    Ok(())
}

#[tokio::test]
async fn setting_up_makes_no_connection() -> TestResult {
    // Nothing listens on port 1: only a call would notice.
    let cache = cache("redis://127.0.0.1:1".to_owned(), unique_prefix())?;
    assert!(is_unavailable(&cache.ping(deadline()).await));
    Ok(())
}

#[test]
fn a_malformed_url_is_refused_without_repeating_it() -> TestResult {
    for url in [
        "redis://:s3cret-pw@localhost:notaport",
        "http://user:s3cret-pw@localhost:6379",
        "s3cret-pw",
        "redis://:s3cret-pw@localhost:6379/notadb",
    ] {
        let r = cache(url.to_owned(), unique_prefix());
        let Err(e) = r else {
            return Err(format!("{url} was accepted").into());
        };
        assert!(matches!(e, SetupError::InvalidUrl(_)), "{e:?}");
        let mut text = format!("{e} {e:?}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(&format!(" {s} {s:?}"));
            source = s.source();
        }
        assert!(!text.contains("s3cret"), "{text}");
    }
    Ok(())
}

#[test]
fn settings_do_not_show_the_password() {
    let s = settings(
        "redis://:s3cret-pw@localhost:6379".to_owned(),
        unique_prefix(),
    );
    assert!(!format!("{s:?}").contains("s3cret"));
}

#[test]
fn settings_out_of_range_are_refused() {
    let url = shared_redis_url;
    let mut cases = Vec::new();
    let mut s = settings(url(), String::new());
    cases.push(s.clone());
    s = settings(url(), unique_prefix());
    s.ttl = Duration::ZERO;
    cases.push(s);
    s = settings(url(), unique_prefix());
    s.pool_size = 0;
    cases.push(s);
    s = settings(url(), unique_prefix());
    s.breaker_threshold = 0;
    cases.push(s);
    for s in cases {
        assert!(
            matches!(
                RedisTaskCache::new(s.clone()),
                Err(SetupError::InvalidSetting(_))
            ),
            "{s:?}"
        );
    }
}

// Local copies: what one process has read or written, served after a `GET` of the generation.

/// A second cache on the same prefix: another replica of the app.
fn replica(prefix: &str) -> Result<RedisTaskCache, SetupError> {
    cache(shared_redis_url(), prefix.to_owned())
}

#[tokio::test]
async fn a_local_copy_is_served_while_the_shared_generation_stands_and_only_then() -> TestResult {
    let (a, prefix, generation) = ready_cache().await?;
    let b = replica(&prefix)?;
    a.store("k", generation, Bytes::from_static(b"from a"), deadline())
        .await?;
    // Proof that the hit is A's local copy, not the entry: the entry now says something else
    // (two replicas may each store a page read under the same generation; both are valid).
    overwrite_entry(&prefix, generation, b"in redis").await?;
    assert_eq!(
        a.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"from a"))
    );
    assert_eq!(
        b.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"in redis"))
    );

    // Replica B writes and bumps: A's copy is never served again.
    b.bump_generation(deadline()).await?;
    let CacheLookup::Miss(Some(next)) = a.lookup("k", deadline()).await? else {
        return Err("a local copy was served after another replica's bump".into());
    };
    assert_ne!(next, generation);

    // B stores the page read after its write: A reads it from Redis, then keeps a copy of it.
    b.store(
        "k",
        next,
        Bytes::from_static(b"after the write"),
        deadline(),
    )
    .await?;
    assert_eq!(
        a.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"after the write"))
    );
    let mut conn = raw(&shared_redis_url()).await?;
    let () = conn.del(entry_key(&prefix, SCHEMA, "k")).await?;
    assert_eq!(
        a.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"after the write")),
        "the copy A took on its hit"
    );
    Ok(())
}

#[tokio::test]
async fn a_hit_on_a_local_copy_fetches_the_generation_alone() -> TestResult {
    // A private server: its output-byte count is this test's alone.
    let server = tasklane_testkit::redis::RedisServer::spawn().await?;
    let cache = cache(server.url(), unique_prefix())?;
    let generation = seeded_generation(&cache).await?;
    let page = Bytes::from(vec![b'x'; 20_000]);
    cache
        .store("big", generation, page.clone(), deadline())
        .await?;
    let mut conn = raw(&server.url()).await?;
    let info = |text: String| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let before = info(
        redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await?,
    );
    for _ in 0..50 {
        assert_eq!(
            cache.lookup("big", deadline()).await?,
            CacheLookup::Hit(page.clone())
        );
    }
    let after = info(
        redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await?,
    );
    // 50 page-sized replies would be 1,000,000 bytes; 50 generations and an INFO reply are a
    // few kilobytes.
    let sent = after.saturating_sub(before);
    println!("Redis sent {sent} bytes for 50 hits on a 20,000-byte page");
    assert!(sent < 20_000, "{sent} bytes: the page came from Redis");
    Ok(())
}

#[tokio::test]
async fn a_local_copy_expires_no_later_than_its_entry() -> TestResult {
    let prefix = SharedPrefix::new();
    let mut s = settings(shared_redis_url(), prefix.to_string());
    s.ttl = Duration::from_millis(400);
    let writer = RedisTaskCache::new(s.clone())?;
    let reader = RedisTaskCache::new(s)?;
    let generation = seeded_generation(&writer).await?;
    writer
        .store("k", generation, Bytes::from_static(b"v"), deadline())
        .await?;
    // The reader's copy comes from a hit, with the entry's remaining TTL.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        reader.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"v"))
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    for (who, cache) in [("writer", &writer), ("reader", &reader)] {
        assert_eq!(
            cache.lookup("k", deadline()).await?,
            CacheLookup::Miss(Some(generation)),
            "the {who}'s copy outlived the entry"
        );
    }
    Ok(())
}

#[tokio::test]
async fn with_local_copies_off_every_hit_reads_the_entry() -> TestResult {
    let prefix = SharedPrefix::new();
    let mut s = settings(shared_redis_url(), prefix.to_string());
    s.local_copy_bytes = 0;
    let cache = RedisTaskCache::new(s)?;
    let generation = seeded_generation(&cache).await?;
    cache
        .store("k", generation, Bytes::from_static(b"stored"), deadline())
        .await?;
    overwrite_entry(&prefix, generation, b"in redis").await?;
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"in redis"))
    );
    Ok(())
}

/// Generations near 2^62 (beyond what a Lua number holds exactly) are compared exactly; the
/// replaced entry keeps its TTL and is what another replica reads.
#[tokio::test]
async fn a_replacing_bump_compares_large_generations_exactly_and_keeps_the_ttl() -> TestResult {
    let prefix = SharedPrefix::new();
    let cache = cache(shared_redis_url(), prefix.to_string())?;
    let mut conn = raw(&shared_redis_url()).await?;
    let big = (1u64 << 62) - 7;
    let () = conn.set(format!("{prefix}:gen"), big).await?;
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(Some(Generation(big)))
    );
    cache
        .store("k", Generation(big), Bytes::from_static(b"old"), deadline())
        .await?;
    let () = redis::cmd("PEXPIRE")
        .arg(entry_key(&prefix, SCHEMA, "k"))
        .arg(20_000)
        .query_async(&mut conn)
        .await?;

    // Another replica's plain bump: now `big + 1`, which a double cannot tell from `big`.
    let () = redis::cmd("INCR")
        .arg(format!("{prefix}:gen"))
        .query_async(&mut conn)
        .await?;
    let made = cache
        .bump_generation_replacing(&[replacement(Generation(big), b"old", b"x")], deadline())
        .await?;
    assert_eq!(made, vec![false], "a bump came between: refused");
    // The bump happened: now `big + 2`, and the entry (still tagged `big`) misses.
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(Some(Generation(big + 2)))
    );
    cache
        .store(
            "k",
            Generation(big + 2),
            Bytes::from_static(b"old"),
            deadline(),
        )
        .await?;
    let () = redis::cmd("PEXPIRE")
        .arg(entry_key(&prefix, SCHEMA, "k"))
        .arg(20_000)
        .query_async(&mut conn)
        .await?;
    let made = cache
        .bump_generation_replacing(
            &[replacement(Generation(big + 2), b"old", b"new")],
            deadline(),
        )
        .await?;
    assert_eq!(made, vec![true]);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(entry_key(&prefix, SCHEMA, "k"))
        .query_async(&mut conn)
        .await?;
    assert!(
        pttl > 15_000 && pttl <= 20_000,
        "PTTL {pttl}: the TTL was not kept"
    );
    let other = replica(&prefix)?;
    assert_eq!(
        other.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"new"))
    );
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"new"))
    );
    let current: u64 = conn.get(format!("{prefix}:gen")).await?;
    assert_eq!(current, big + 3);
    Ok(())
}

/// After Redis forgets its scripts (a restart, `SCRIPT FLUSH`), the next replacing bump loads
/// it again and works.
#[tokio::test]
async fn a_replacing_bump_survives_a_script_flush() -> TestResult {
    let (cache, _prefix, generation) = ready_cache().await?;
    assert_eq!(
        store_then_replace(&cache, generation, b"a", b"b").await?,
        vec![true]
    );
    let mut conn = raw(&shared_redis_url()).await?;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await?;
    let next = Generation(generation.0 + 1);
    let made = cache
        .bump_generation_replacing(&[replacement(next, b"b", b"c")], deadline())
        .await?;
    assert_eq!(made, vec![true]);
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"c"))
    );
    Ok(())
}
