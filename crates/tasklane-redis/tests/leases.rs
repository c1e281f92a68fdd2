//! Leases (src/lease.rs): hits served without a round trip, and every bump seen by every lease
//! holder before the bump returns, also when a holder goes quiet or Redis loses what it held.

mod common;

use bytes::Bytes;
use common::{cache, cause, deadline, raw, settings, TestResult};
use deadpool_redis::redis::{self, AsyncCommands};
use std::time::{Duration, Instant};
use tasklane_domain::{CacheLookup, Generation, Replacement, TaskCache};
use tasklane_redis::{RedisCacheError, RedisTaskCache};
use tasklane_testkit::proxy::{FaultProxy, Mode};
use tasklane_testkit::redis::{shared_redis_url, unique_prefix, RedisServer, SharedPrefix};

type Error = Box<dyn std::error::Error>;

/// The current generation, seeding it if needed.
async fn generation(cache: &RedisTaskCache) -> Result<Generation, Error> {
    for _ in 0..2 {
        if let CacheLookup::Miss(Some(g)) = cache.lookup("none", deadline()).await? {
            return Ok(g);
        }
    }
    Err("no generation after two lookups".into())
}

/// Looks `key` up until a hit is served on the lease alone (the subscriber connects and the
/// registration's marker arrives in the background). Every lookup must hit `value`.
async fn until_leased(cache: &RedisTaskCache, key: &str, value: &[u8]) -> TestResult {
    let start = Instant::now();
    let before = cache.lease_hits();
    while cache.lease_hits() == before {
        assert_eq!(
            cache.lookup(key, deadline()).await?,
            CacheLookup::Hit(Bytes::copy_from_slice(value))
        );
        if start.elapsed() > Duration::from_secs(10) {
            return Err("no lease within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Stores `page` as entry `k` under the current generation and looks it up until the holder
/// serves it on a lease. Answers the generation and the page.
async fn leased_page(holder: &RedisTaskCache, page: &str) -> Result<(Generation, String), Error> {
    let g = generation(holder).await?;
    holder
        .store("k", g, Bytes::from(page.to_owned()), deadline())
        .await?;
    until_leased(holder, "k", page.as_bytes()).await?;
    Ok((g, page.to_owned()))
}

/// Redis's clock in ms.
async fn redis_now_ms(conn: &mut redis::aio::MultiplexedConnection) -> Result<u64, Error> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1000 + micros / 1000)
}

#[tokio::test]
async fn a_lookup_allocates_a_small_future_and_a_round_trip_its_own() -> TestResult {
    // Every lookup allocates its future (async_trait boxes it), hits on a lease included. A
    // round trip's state is some 8 KB, past glibc's per-thread cache (1,032 bytes): it must not
    // be part of that future, or every hit pays the allocator's slow path.
    let cache = cache(shared_redis_url(), unique_prefix())?;
    let lookup = cache.lookup("k", deadline());
    let size = std::mem::size_of_val(&*lookup);
    assert!(size <= 512, "a lookup's future takes {size} bytes");
    drop(lookup);
    Ok(())
}

#[tokio::test]
async fn a_replica_holding_a_lease_serves_hits_without_asking_redis() -> TestResult {
    // A private server: its command count is this test's alone.
    let server = RedisServer::spawn().await?;
    let cache = cache(server.url(), unique_prefix())?;
    let g = generation(&cache).await?;
    cache
        .store("k", g, Bytes::from_static(b"page"), deadline())
        .await?;
    until_leased(&cache, "k", b"page").await?;
    let mut conn = raw(&server.url()).await?;
    let commands = |text: String| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let stats = || redis::cmd("INFO").arg("stats").clone();
    let before = commands(stats().query_async(&mut conn).await?);
    let hits = cache.lease_hits();
    for _ in 0..200 {
        assert_eq!(
            cache.lookup("k", deadline()).await?,
            CacheLookup::Hit(Bytes::from_static(b"page"))
        );
    }
    let after = commands(stats().query_async(&mut conn).await?);
    let on_lease = cache.lease_hits() - hits;
    // The first INFO counts itself; renewals (one per half lease) are a few more.
    println!(
        "200 hits: {on_lease} on the lease, {} commands",
        after - before
    );
    assert!(on_lease >= 150, "{on_lease} of 200 hits on the lease");
    assert!(
        after - before < 50,
        "{} commands for 200 hits",
        after - before
    );
    Ok(())
}

#[tokio::test]
async fn a_bump_returns_only_after_every_lease_holder_took_it_in() -> TestResult {
    let prefix = SharedPrefix::new();
    let holder = cache(shared_redis_url(), prefix.to_string())?;
    let writer = cache(shared_redis_url(), prefix.to_string())?;
    for round in 0..60u32 {
        let (g, old) = leased_page(&holder, &format!("page {round}")).await?;
        // The very next lookup, with no pause: the lease must already know.
        if round % 2 == 0 {
            writer.bump_generation(deadline()).await?;
            match holder.lookup("k", deadline()).await? {
                CacheLookup::Miss(Some(next)) => assert_ne!(next, g),
                other => return Err(format!("round {round}: {other:?} after the bump").into()),
            }
        } else {
            // A write-through from the writer: the holder reads the new page.
            let made = writer
                .bump_generation_replacing(
                    &[Replacement {
                        key: "k".to_owned(),
                        expected_generation: g,
                        expected_value: Bytes::from(old),
                        value: Bytes::from_static(b"new"),
                    }],
                    deadline(),
                )
                .await?;
            assert_eq!(made, vec![true]);
            assert_eq!(
                holder.lookup("k", deadline()).await?,
                CacheLookup::Hit(Bytes::from_static(b"new")),
                "round {round}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_holder_that_does_not_answer_is_waited_for_until_its_lease_ends() -> TestResult {
    const LEASE: Duration = Duration::from_millis(400);
    let prefix = SharedPrefix::new();
    let mut s = settings(shared_redis_url(), prefix.to_string());
    s.lease_time = LEASE;
    let writer = RedisTaskCache::new(s)?;
    writer.bump_generation(deadline()).await?;
    let mut conn = raw(&shared_redis_url()).await?;
    let registry = format!("{prefix}:leases");

    // A replica that registered a lease and then went silent (stopped, cut off).
    let now = redis_now_ms(&mut conn).await?;
    let () = conn.hset(&registry, "ghost", now + 300).await?;
    let start = Instant::now();
    writer.bump_generation(deadline()).await?;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "returned after {waited:?}"
    );

    // Its lease over, it no longer counts (and is taken out of the registry).
    let start = Instant::now();
    writer.bump_generation(deadline()).await?;
    assert!(start.elapsed() < Duration::from_millis(250));
    let ghost: Option<String> = conn.hget(&registry, "ghost").await?;
    assert_eq!(ghost, None);

    // A lease running longer than the writer's lease time (a replica with another setting):
    // the bump is made and waited on for one lease time, but cannot be vouched for, so it
    // fails (the caller then owes a bump) instead of waiting 10 s.
    let now = redis_now_ms(&mut conn).await?;
    let () = conn.hset(&registry, "ghost", now + 10_000).await?;
    let before = generation(&writer).await?;
    let start = Instant::now();
    let e = writer
        .bump_generation(deadline())
        .await
        .err()
        .ok_or("the bump returned as seen while a longer lease was still running")?;
    let waited = start.elapsed();
    assert!(
        matches!(cause(&e), Some(RedisCacheError::LeaseTooLong)),
        "{e:?}"
    );
    assert!(
        waited >= LEASE && waited < Duration::from_secs(2),
        "returned after {waited:?}"
    );
    assert_ne!(generation(&writer).await?, before);
    Ok(())
}

/// The caller's deadline does not end the wait for a holder: the write is acknowledged when the
/// bump returns, so returning while a holder may still serve its old copy would let a read that
/// begins after the acknowledgement miss the write. Here the holder's subscriber is slower than
/// the writer's deadline (its connection is 200 ms late each way); the bump returns once the
/// holder's lease has ended, a little past the deadline.
#[tokio::test]
async fn a_holder_slower_than_the_deadline_is_waited_for_past_it() -> TestResult {
    const LEASE: Duration = Duration::from_millis(300);
    let prefix = SharedPrefix::new();
    let redis_addr = shared_redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()?;
    let proxy = FaultProxy::start(redis_addr)?;
    let mut s = settings(shared_redis_url(), prefix.to_string());
    s.lease_time = LEASE;
    let writer = RedisTaskCache::new(s.clone())?;
    s.url = format!("redis://127.0.0.1:{}", proxy.port());
    let holder = RedisTaskCache::new(s)?;
    writer.bump_generation(deadline()).await?;

    for round in 0..3 {
        let (_, old) = leased_page(&holder, &format!("old {round}")).await?;
        proxy.set_mode(Mode::Latency(Duration::from_millis(200)));
        let start = Instant::now();
        // The write is acknowledged once this returns, whatever it returns (a failed bump is
        // owed, and acknowledged all the same).
        let bumped = writer
            .bump_generation(Instant::now() + Duration::from_millis(50))
            .await;
        let returned = start.elapsed();
        // So the holder must not serve its old copy now.
        let read = holder
            .lookup("k", Instant::now() + Duration::from_secs(5))
            .await?;
        assert_ne!(
            read,
            CacheLookup::Hit(Bytes::from(old)),
            "round {round}: the holder served its old copy after the bump returned at {returned:?}"
        );
        bumped?;
        assert!(
            returned <= LEASE + Duration::from_millis(200),
            "round {round}: returned after {returned:?}"
        );
        proxy.set_mode(Mode::Pass);
    }
    Ok(())
}

#[tokio::test]
async fn a_lost_registry_is_waited_out_for_a_lease_time() -> TestResult {
    let prefix = SharedPrefix::new();
    let mut s = settings(shared_redis_url(), prefix.to_string());
    s.lease_time = Duration::from_millis(300);
    let writer = RedisTaskCache::new(s)?;
    writer.bump_generation(deadline()).await?;
    let mut conn = raw(&shared_redis_url()).await?;
    let registry = format!("{prefix}:leases");
    // Lost (a flush, an eviction): whoever held a lease in it may still be serving on it.
    let () = conn.del(&registry).await?;
    let start = Instant::now();
    writer.bump_generation(deadline()).await?;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(290),
        "returned after {waited:?}"
    );
    let mark: Option<String> = conn.hget(&registry, "_lost_until").await?;
    assert!(mark.is_some());
    // The same when it was replaced by something else than a hash.
    let () = conn.set(&registry, "garbage").await?;
    let start = Instant::now();
    writer.bump_generation(deadline()).await?;
    assert!(start.elapsed() >= Duration::from_millis(290));
    Ok(())
}

#[tokio::test]
async fn a_holder_whose_subscription_breaks_serves_nothing_stale_and_leases_again() -> TestResult {
    let server = RedisServer::spawn().await?;
    let prefix = unique_prefix();
    let holder = cache(server.url(), prefix.clone())?;
    let writer = cache(server.url(), prefix.clone())?;
    let mut conn = raw(&server.url()).await?;
    for round in 0..5u32 {
        let (g, _) = leased_page(&holder, &format!("page {round}")).await?;
        // Cut every subscriber off, then write at once: nobody can acknowledge the bump.
        let _: u64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await?;
        writer.bump_generation(deadline()).await?;
        match holder.lookup("k", deadline()).await? {
            CacheLookup::Miss(Some(next)) => assert_ne!(next, g),
            other => return Err(format!("round {round}: {other:?} after the bump").into()),
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_flushed_redis_ends_every_lease() -> TestResult {
    let server = RedisServer::spawn().await?;
    let prefix = unique_prefix();
    let holder = cache(server.url(), prefix.clone())?;
    let writer = cache(server.url(), prefix.clone())?;
    leased_page(&holder, "before").await?;
    let mut conn = raw(&server.url()).await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
    // The writer's next write seeds a new generation (a reset) and bumps it.
    writer.bump_generation(deadline()).await?;
    assert!(
        !matches!(holder.lookup("k", deadline()).await?, CacheLookup::Hit(_)),
        "the copy from before the flush was served after a write"
    );
    Ok(())
}
