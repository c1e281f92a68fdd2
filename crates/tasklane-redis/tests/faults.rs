//! Redis killed, hung and restarted: each test on a private `redis-server`, never the shared one.

mod common;

use bytes::Bytes;
use common::{
    budget_deadline, cause, deadline, is_unavailable, raw, settings, store_then_replace,
    TestResult, BUDGET,
};
use deadpool_redis::redis;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasklane_domain::{CacheLookup, TaskCache};
use tasklane_redis::{BreakerState, RedisCacheError, RedisTaskCache};
use tasklane_testkit::redis::{unique_prefix, RedisServer};

/// How late past its deadline a call may return on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(250);

/// A cache whose breaker never opens, to look at one failure at a time.
fn cache_without_breaker(
    server: &RedisServer,
) -> Result<RedisTaskCache, tasklane_redis::SetupError> {
    let mut s = settings(server.url(), unique_prefix());
    s.breaker_threshold = u32::MAX;
    RedisTaskCache::new(s)
}

fn cache_with_breaker(
    server: &RedisServer,
    threshold: u32,
    cooldown: Duration,
) -> Result<RedisTaskCache, tasklane_redis::SetupError> {
    let mut s = settings(server.url(), unique_prefix());
    s.breaker_threshold = threshold;
    s.breaker_cooldown = cooldown;
    RedisTaskCache::new(s)
}

/// How many connections the server has accepted since it started.
async fn connections_accepted(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<u64, Box<dyn std::error::Error>> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .ok_or("no total_connections_received in INFO")?
        .trim()
        .parse()
        .map_err(Into::into)
}

/// Runs every kind of call with the default budget and checks each fails as unavailable by its
/// deadline.
async fn assert_every_call_unavailable_in_time(cache: &RedisTaskCache) {
    let started = Instant::now();
    let r = cache.lookup("k", budget_deadline()).await;
    assert!(is_unavailable(&r), "lookup: {r:?}");
    assert!(
        started.elapsed() < BUDGET + SLACK,
        "lookup took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let r = cache
        .store(
            "k",
            tasklane_domain::Generation(1),
            Bytes::from_static(b"v"),
            budget_deadline(),
        )
        .await;
    assert!(is_unavailable(&r), "store: {r:?}");
    assert!(
        started.elapsed() < BUDGET + SLACK,
        "store took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let r = cache.bump_generation(budget_deadline()).await;
    assert!(is_unavailable(&r), "bump: {r:?}");
    assert!(
        started.elapsed() < BUDGET + SLACK,
        "bump took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let r = cache.ping(budget_deadline()).await;
    assert!(is_unavailable(&r), "ping: {r:?}");
    assert!(
        started.elapsed() < BUDGET + SLACK,
        "ping took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stopped_redis_is_unavailable_within_the_deadline() -> TestResult {
    let mut server = RedisServer::spawn().await?;
    let connected = cache_without_breaker(&server)?;
    connected.ping(deadline()).await?;
    server.stop().await;

    // With a connection that died under it, and with none at all.
    assert_every_call_unavailable_in_time(&connected).await;
    assert_every_call_unavailable_in_time(&cache_without_breaker(&server)?).await;
    Ok(())
}

#[tokio::test]
async fn a_hung_redis_is_unavailable_by_the_deadline_then_recovers() -> TestResult {
    let server = RedisServer::spawn().await?;
    let cache = Arc::new(cache_without_breaker(&server)?);
    cache.ping(deadline()).await?;
    server.pause()?;

    assert_every_call_unavailable_in_time(&cache).await;
    // Many callers at once: each still gets its answer by its own deadline.
    let started = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.lookup("k", budget_deadline()).await })
        })
        .collect();
    for call in calls {
        let r = call.await?;
        assert!(is_unavailable(&r), "{r:?}");
    }
    assert!(
        started.elapsed() < BUDGET + SLACK,
        "took {:?}",
        started.elapsed()
    );

    server.resume()?;
    // The stuck connection was dropped; a new one answers.
    cache.ping(deadline()).await?;
    assert!(matches!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(_)
    ));
    Ok(())
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_probes_and_closes() -> TestResult {
    let server = RedisServer::spawn().await?;
    let cooldown = Duration::from_millis(300);
    let cache = cache_with_breaker(&server, 3, cooldown)?;
    cache.ping(deadline()).await?;
    server.pause()?;

    // Three calls time out against the hung server, each taking the whole budget...
    for i in 0..3 {
        assert_eq!(
            cache.breaker_state(),
            BreakerState::Closed,
            "after {i} failures"
        );
        let e = cache.lookup("k", budget_deadline()).await.err();
        assert!(
            matches!(e.as_ref().and_then(cause), Some(RedisCacheError::Timeout)),
            "{e:?}"
        );
    }
    assert_eq!(cache.breaker_state(), BreakerState::Open);

    // ...then calls fail at once: a call that went to the hung server would take the budget.
    let started = Instant::now();
    for _ in 0..100 {
        let e = cache.lookup("k", budget_deadline()).await.err();
        assert!(
            matches!(
                e.as_ref().and_then(cause),
                Some(RedisCacheError::BreakerOpen)
            ),
            "{e:?}"
        );
        let e = cache.ping(budget_deadline()).await.err();
        assert!(
            matches!(
                e.as_ref().and_then(cause),
                Some(RedisCacheError::BreakerOpen)
            ),
            "{e:?}"
        );
    }
    // Had any of them gone to the hung server, it alone would have taken the whole budget.
    assert!(
        started.elapsed() < BUDGET,
        "fail-fast took {:?}",
        started.elapsed()
    );

    // After the cool-down one probe goes to Redis; still hung, it fails and re-opens the breaker.
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    assert_eq!(cache.breaker_state(), BreakerState::HalfOpen);
    let e = cache.lookup("k", budget_deadline()).await.err();
    assert!(
        matches!(e.as_ref().and_then(cause), Some(RedisCacheError::Timeout)),
        "{e:?}"
    );
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    let e = cache.lookup("k", budget_deadline()).await.err();
    assert!(
        matches!(
            e.as_ref().and_then(cause),
            Some(RedisCacheError::BreakerOpen)
        ),
        "{e:?}"
    );

    // Redis is back: after the cool-down the probe succeeds and closes the breaker.
    server.resume()?;
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    assert_eq!(cache.breaker_state(), BreakerState::HalfOpen);
    cache.ping(deadline()).await?;
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    assert!(matches!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(_)
    ));
    Ok(())
}

/// The generation on the private server (the one cache's `{prefix}:gen`).
async fn server_generation(
    server: &RedisServer,
) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let mut conn = raw(&server.url()).await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:gen")
        .query_async(&mut conn)
        .await?;
    let Some(key) = keys.first() else {
        return Ok(None);
    };
    Ok(redis::cmd("GET").arg(key).query_async(&mut conn).await?)
}

/// An open breaker fails lookups fast, but not a write's bump: one not made would leave a debt,
/// and other replicas serving what it invalidates. The breaker may be open because this process
/// stalled while Redis kept answering the others. A reader's payment of a debt still fails fast.
#[tokio::test]
async fn a_write_s_bump_is_sent_while_the_breaker_is_open() -> TestResult {
    let server = RedisServer::spawn().await?;
    let cache = cache_with_breaker(&server, 3, Duration::from_secs(30))?;
    cache.bump_generation(deadline()).await?;
    server.pause()?;
    for _ in 0..3 {
        let _ = cache.lookup("k", budget_deadline()).await;
    }
    assert_eq!(cache.breaker_state(), BreakerState::Open);

    // Still hung: the bump goes to Redis and times out (it is not failed fast).
    let started = Instant::now();
    let e = cache.bump_generation(budget_deadline()).await.err();
    assert!(
        matches!(e.as_ref().and_then(cause), Some(RedisCacheError::Timeout)),
        "{e:?}"
    );
    assert!(started.elapsed() >= BUDGET - Duration::from_millis(10));

    // Redis answers again, the breaker is still open: a debt's payment fails fast...
    server.resume()?;
    let before = server_generation(&server).await?;
    let e = cache.pay_owed_bump(budget_deadline()).await.err();
    assert!(
        matches!(
            e.as_ref().and_then(cause),
            Some(RedisCacheError::BreakerOpen)
        ),
        "{e:?}"
    );
    assert_eq!(server_generation(&server).await?, before);
    assert_eq!(cache.breaker_state(), BreakerState::Open);

    // ...and a write's bump is made; Redis answered, so the breaker closes.
    cache.bump_generation(deadline()).await?;
    assert_ne!(server_generation(&server).await?, before);
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    assert!(matches!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(_)
    ));
    Ok(())
}

#[tokio::test]
async fn the_breaker_recovers_from_a_killed_and_restarted_redis() -> TestResult {
    let mut server = RedisServer::spawn().await?;
    let cooldown = Duration::from_millis(300);
    let cache = cache_with_breaker(&server, 3, cooldown)?;
    cache.ping(deadline()).await?;
    server.stop().await;

    for _ in 0..3 {
        assert!(is_unavailable(&cache.ping(budget_deadline()).await));
    }
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    let e = cache.ping(budget_deadline()).await.err();
    assert!(
        matches!(
            e.as_ref().and_then(cause),
            Some(RedisCacheError::BreakerOpen)
        ),
        "{e:?}"
    );

    server.start().await?;
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    cache.ping(deadline()).await?;
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    Ok(())
}

#[tokio::test]
async fn after_a_restart_the_first_call_reconnects_and_succeeds() -> TestResult {
    let mut server = RedisServer::spawn().await?;
    let cache = cache_without_breaker(&server)?;
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(None)
    );
    let CacheLookup::Miss(Some(generation)) = cache.lookup("k", deadline()).await? else {
        return Err("no generation".into());
    };
    cache
        .store("k", generation, Bytes::from_static(b"v"), deadline())
        .await?;
    assert!(matches!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Hit(_)
    ));

    server.stop().await;
    server.start().await?;

    // The shared connection died with the old process; the call notices, reconnects and
    // retries once within its deadline. The new process keeps nothing: a miss without a
    // generation, then one.
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(None)
    );
    assert!(matches!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Miss(Some(_))
    ));
    Ok(())
}

#[tokio::test]
async fn concurrent_calls_share_one_connection_even_when_reconnecting() -> TestResult {
    let mut server = RedisServer::spawn().await?;
    let cache = Arc::new(cache_without_breaker(&server)?);

    let burst = |cache: Arc<RedisTaskCache>| async move {
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
        let mut ok = 0;
        for call in calls {
            if call.await.is_ok_and(|r| r.is_ok()) {
                ok += 1;
            }
        }
        ok
    };

    let mut observer = raw(&server.url()).await?;
    let before = connections_accepted(&mut observer).await?;
    assert_eq!(burst(cache.clone()).await, 200);
    assert_eq!(connections_accepted(&mut observer).await? - before, 1);

    // Every call of the next burst finds the connection dead; only one of them reconnects.
    server.stop().await;
    server.start().await?;
    let mut observer = raw(&server.url()).await?;
    let before = connections_accepted(&mut observer).await?;
    assert_eq!(burst(cache.clone()).await, 200);
    assert_eq!(connections_accepted(&mut observer).await? - before, 1);
    Ok(())
}

#[tokio::test]
async fn each_thread_gets_one_connection_and_keeps_it() -> TestResult {
    let server = RedisServer::spawn().await?;
    let cache = Arc::new(cache_without_breaker(&server)?);
    let mut observer = raw(&server.url()).await?;
    let before = connections_accepted(&mut observer).await?;
    // 100 lookups on a thread with a runtime of its own, as actix runs a worker.
    let lookups = |cache: Arc<RedisTaskCache>, runtime: &tokio::runtime::Runtime| {
        runtime.block_on(async {
            let mut answered = 0;
            for _ in 0..100 {
                let deadline = Instant::now() + Duration::from_millis(500);
                if cache.lookup("k", deadline).await.is_ok() {
                    answered += 1;
                }
            }
            answered
        })
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    };
    // The first worker serves its lookups, then sits idle with its runtime alive but not
    // running (as a worker between requests does): a connection driven by it would not answer.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let first = {
        let cache = cache.clone();
        std::thread::spawn(move || -> Result<usize, String> {
            let rt = runtime()?;
            let answered = lookups(cache, &rt);
            let _ = done_tx.send(());
            let _ = release_rx.recv();
            drop(rt);
            Ok(answered)
        })
    };
    done_rx.recv()?;
    let second = {
        let cache = cache.clone();
        std::thread::spawn(move || -> Result<usize, String> { Ok(lookups(cache, &runtime()?)) })
    };
    let second = second.join().map_err(|_| "thread panicked")??;
    let _ = release_tx.send(());
    let first = first.join().map_err(|_| "thread panicked")??;
    assert_eq!((first, second), (100, 100), "every lookup answered in time");
    assert_eq!(
        connections_accepted(&mut observer).await? - before,
        2,
        "one connection per thread, reused by every later call on it"
    );
    Ok(())
}

/// The bump with replacements goes on the process's ordered connection: after a restart it
/// reconnects too, and the restarted Redis, which has forgotten the script, gets it again.
#[tokio::test]
async fn after_a_restart_a_replacing_bump_reconnects_and_reloads_its_script() -> TestResult {
    let mut server = RedisServer::spawn().await?;
    let cache = cache_without_breaker(&server)?;
    let _ = cache.lookup("k", deadline()).await?;
    let CacheLookup::Miss(Some(generation)) = cache.lookup("k", deadline()).await? else {
        return Err("no generation".into());
    };
    assert_eq!(
        store_then_replace(&cache, generation, b"a", b"b").await?,
        vec![true]
    );

    server.stop().await;
    server.start().await?;

    let _ = cache.lookup("k", deadline()).await?;
    let CacheLookup::Miss(Some(generation)) = cache.lookup("k", deadline()).await? else {
        return Err("no generation after the restart".into());
    };
    assert_eq!(
        store_then_replace(&cache, generation, b"c", b"d").await?,
        vec![true]
    );
    assert_eq!(
        cache.lookup("k", deadline()).await?,
        CacheLookup::Hit(Bytes::from_static(b"d"))
    );
    Ok(())
}
