//! Redis killed, and Redis hung, under load: the cache may fail, requests may not.

use crate::harness::{
    breaker_state, cache_counters, client, health, load_duration, ms, post_task, private_pg,
    private_redis, seed_tasks, sleep_until, App, Figures, Recorder, Summary,
};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tasklane_testkit::proxy::{FaultProxy, Mode};

/// The list queries the readers cycle through: a few distinct cache entries.
const READ_PATHS: [&str; 3] = [
    "/api/tasks?limit=20",
    "/api/tasks?status=todo&limit=50",
    "/api/tasks",
];
const READERS: usize = 6;
const WRITERS: usize = 2;
/// A writer's pause between creates (about 40 writes a second in all).
const WRITE_PAUSE: Duration = Duration::from_millis(50);
/// A reader's pause between lists.
const READ_PAUSE: Duration = Duration::from_millis(5);

/// Starts the readers and writers; they stop at `end` (writers also when `writers_stop` is set).
fn start_mixed_load(
    app: &Arc<App>,
    rec: &Arc<Recorder>,
    end: Duration,
    writers_stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let serial = Arc::new(AtomicU64::new(0));
    for i in 0..READERS {
        let (app, rec) = (app.clone(), rec.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut n = i;
            while rec.now() < end {
                let path = READ_PATHS[n % READ_PATHS.len()];
                n += 1;
                let _ = rec.send("read", client.get(app.url(path))).await;
                tokio::time::sleep(READ_PAUSE).await;
            }
        }));
    }
    for w in 0..WRITERS {
        let (app, rec, stop, serial) = (
            app.clone(),
            rec.clone(),
            writers_stop.clone(),
            serial.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = client();
            while rec.now() < end && !stop.load(Ordering::SeqCst) {
                let n = serial.fetch_add(1, Ordering::SeqCst);
                let body = json!({ "title": format!("load-{w}-{n}") });
                let _ = rec.send("write", post_task(&client, &app, &body)).await;
                tokio::time::sleep(WRITE_PAUSE).await;
            }
        }));
    }
    tasks
}

/// Issue 6: "Redis killed during 30 s of mixed load: 0 failed requests; p99 printed beside the
/// healthy p99; health shows `cache: disconnected` within 5 s and `connected` within 5 s of
/// Redis coming back; under a read-only load the cache hit rate is back above 90% within 10 s."
///
/// The load runs for the load duration in thirds: healthy and mixed, Redis killed (`SIGKILL`)
/// and mixed, Redis back and read-only (at least 10 s, for the hit-rate bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_during_mixed_load() {
    let mut figures = Figures::new("redis_killed_during_mixed_load");
    let (_pg, db_url) = private_pg().await;
    let mut redis = private_redis().await;
    let app = Arc::new(
        App::spawn(&[
            ("DATABASE_URL", db_url),
            ("REDIS_URL", redis.url()),
            ("TASKLANE_CACHE_KEY_PREFIX", "resilience".to_owned()),
        ])
        .await,
    );
    let _log = app.log_on_panic();
    let client = client();
    seed_tasks(&client, &app, 30).await;

    let third = load_duration() / 3;
    let kill_at = third;
    let restart_at = 2 * third;
    let end = restart_at + third.max(Duration::from_secs(10));
    let rec = Arc::new(Recorder::new());
    let writers_stop = Arc::new(AtomicBool::new(false));
    let load = start_mixed_load(&app, &rec, end, &writers_stop);

    // Readiness, every 100 ms, throughout.
    let poller = {
        let (app, rec) = (app.clone(), rec.clone());
        tokio::spawn(async move {
            let client = crate::harness::client();
            let mut samples = Vec::new();
            while rec.now() < end {
                let at = rec.now();
                let (status, body) = health(&client, &app).await;
                let cache = body["cache"].as_str().unwrap_or("?").to_owned();
                samples.push((at, status, cache));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };

    sleep_until(rec.t0, kill_at).await;
    redis.stop().await;
    let killed = rec.now();
    sleep_until(rec.t0, restart_at).await;
    writers_stop.store(true, Ordering::SeqCst);
    redis
        .start()
        .await
        .unwrap_or_else(|e| panic!("restart redis: {e}"));
    let restarted = rec.now();

    // The hit rate of read-only load, per second, from /metrics.
    let mut windows = Vec::new();
    let mut above_90_after = None;
    let (mut hits, mut misses, _) = cache_counters(&client, &app).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (h, m, _) = cache_counters(&client, &app).await;
        let (dh, dm) = (h - hits, m - misses);
        let rate = if dh + dm > 0.0 { dh / (dh + dm) } else { 0.0 };
        windows.push((rec.now() - restarted, rate, dh + dm));
        if rate > 0.9 && above_90_after.is_none() {
            above_90_after = Some(rec.now() - restarted);
        }
        (hits, misses) = (h, m);
    }
    for task in load {
        task.await.unwrap();
    }
    let samples = poller.await.unwrap();

    let all = rec.all();
    let reads = |from: Duration, to: Duration| {
        Summary::of(
            all.iter()
                .filter(|r| r.kind == "read" && r.sent_between(from, to)),
        )
    };
    let writes = |from: Duration, to: Duration| {
        Summary::of(
            all.iter()
                .filter(|r| r.kind == "write" && r.sent_between(from, to)),
        )
    };
    let total = Summary::of(&all);
    let healthy_reads = reads(Duration::ZERO, killed);
    let down_reads = reads(killed, restarted);
    let after_reads = reads(restarted, end);
    let healthy_writes = writes(Duration::ZERO, killed);
    let down_writes = writes(killed, restarted);
    let disconnected_after = samples
        .iter()
        .find(|(at, _, cache)| *at >= killed && cache == "disconnected")
        .map(|(at, _, _)| *at - killed);
    let connected_after = samples
        .iter()
        .find(|(at, _, cache)| *at >= restarted && cache == "connected")
        .map(|(at, _, _)| *at - restarted);
    let health_not_200 = samples.iter().filter(|(_, s, _)| *s != Some(200)).count();

    figures.set("load_s", json!(end.as_secs_f64()));
    figures.set("requests", total.count);
    figures.set("failed_requests", total.failed);
    figures.set("read_healthy", healthy_reads.to_json());
    figures.set("read_redis_down", down_reads.to_json());
    figures.set("read_after_restart", after_reads.to_json());
    figures.set("write_healthy", healthy_writes.to_json());
    figures.set("write_redis_down", down_writes.to_json());
    figures.set(
        "read_p99_ratio_down_vs_healthy",
        ratio(down_reads.p99, healthy_reads.p99),
    );
    figures.set(
        "health_cache_disconnected_after_ms",
        json!(disconnected_after.map(ms)),
    );
    figures.set(
        "health_cache_connected_after_restart_ms",
        json!(connected_after.map(ms)),
    );
    figures.set("health_samples_not_200", health_not_200);
    figures.set(
        "hit_rate_windows_after_restart",
        json!(windows
            .iter()
            .map(|(at, rate, n)| json!({"at_s": at.as_secs_f64().round(), "hit_rate": (rate * 1000.0).round() / 1000.0, "reads": n}))
            .collect::<Vec<_>>()),
    );
    figures.set(
        "hit_rate_above_90_after_restart_ms",
        json!(above_90_after.map(ms)),
    );
    figures.emit();

    let failures: Vec<String> = all
        .iter()
        .filter(|r| !r.ok())
        .take(5)
        .map(|r| r.describe())
        .collect();
    assert_eq!(total.failed, 0, "failed requests, e.g. {failures:?}");
    assert_eq!(health_not_200, 0, "readiness must stay 200 with Redis down");
    let disconnected_after = disconnected_after.expect("health never said cache: disconnected");
    assert!(
        disconnected_after <= Duration::from_secs(5),
        "{disconnected_after:?}"
    );
    let connected_after = connected_after.expect("health never said cache: connected again");
    assert!(
        connected_after <= Duration::from_secs(5),
        "{connected_after:?}"
    );
    let above = above_90_after.expect("the hit rate never got above 90% within 10 s");
    assert!(above <= Duration::from_secs(10), "{above:?}");
}

/// `a / b`, two decimals.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        return 0.0;
    }
    (a.as_secs_f64() / b.as_secs_f64() * 100.0).round() / 100.0
}

/// How Redis hangs.
#[derive(Debug, Clone, Copy)]
enum Hang {
    /// The fault proxy between tasklane and Redis forwards nothing.
    Blackhole,
    /// `redis-server` gets `SIGSTOP`.
    Sigstop,
}

/// How long Redis stays hung.
const HANG: Duration = Duration::from_secs(10);
/// The cache timeout the server runs with (its default).
const CACHE_TIMEOUT: Duration = Duration::from_millis(100);

/// Issue 6: "Redis hung (blackhole or SIGSTOP) for 10 s: 0 failed requests; no request takes
/// longer than the cache timeout plus the database time; a circuit breaker stops calling Redis
/// after a few failures and probes it again later."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_blackhole() {
    redis_hung(Hang::Blackhole, "redis_hung_blackhole").await;
}

/// As [`redis_hung_blackhole`], with `redis-server` frozen by `SIGSTOP` instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_sigstop() {
    redis_hung(Hang::Sigstop, "redis_hung_sigstop").await;
}

async fn redis_hung(hang: Hang, name: &'static str) {
    let mut figures = Figures::new(name);
    let (_pg, db_url) = private_pg().await;
    let redis = private_redis().await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port()).into())
        .unwrap_or_else(|e| panic!("proxy: {e}"));
    let app = Arc::new(
        App::spawn(&[
            ("DATABASE_URL", db_url),
            ("REDIS_URL", format!("redis://127.0.0.1:{}", proxy.port())),
            ("TASKLANE_CACHE_KEY_PREFIX", "resilience".to_owned()),
            (
                "TASKLANE_CACHE_TIMEOUT_MS",
                CACHE_TIMEOUT.as_millis().to_string(),
            ),
        ])
        .await,
    );
    let _log = app.log_on_panic();
    let client = client();
    seed_tasks(&client, &app, 30).await;

    let hang_at = Duration::from_secs(5);
    let resume_at = hang_at + HANG;
    let end = resume_at + Duration::from_secs(5);
    let rec = Arc::new(Recorder::new());
    let never = Arc::new(AtomicBool::new(false));
    let load = start_mixed_load(&app, &rec, end, &never);

    let sampler = {
        let (app, rec) = (app.clone(), rec.clone());
        tokio::spawn(async move {
            let client = crate::harness::client();
            let mut samples = Vec::new();
            while rec.now() < end {
                let at = rec.now();
                samples.push((at, breaker_state(&client, &app).await));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };

    sleep_until(rec.t0, hang_at).await;
    let before = cache_counters(&client, &app).await;
    match hang {
        Hang::Blackhole => proxy.set_mode(Mode::Blackhole),
        Hang::Sigstop => redis.pause().unwrap_or_else(|e| panic!("pause: {e}")),
    }
    let hung = rec.now();
    sleep_until(rec.t0, resume_at).await;
    let during = cache_counters(&client, &app).await;
    match hang {
        Hang::Blackhole => proxy.set_mode(Mode::Pass),
        Hang::Sigstop => redis.resume().unwrap_or_else(|e| panic!("resume: {e}")),
    }
    let resumed = rec.now();
    for task in load {
        task.await.unwrap();
    }
    let samples = sampler.await.unwrap();

    let all = rec.all();
    let total = Summary::of(&all);
    let healthy = Summary::of(all.iter().filter(|r| r.sent_between(Duration::ZERO, hung)));
    let hung_reqs = Summary::of(all.iter().filter(|r| r.sent_between(hung, resumed)));
    let after = Summary::of(all.iter().filter(|r| r.sent_between(resumed, end)));
    // Requests that started in the last second of the hang: by then the breaker has long
    // been open, so they show what the breaker saves.
    let hung_late = Summary::of(
        all.iter()
            .filter(|r| r.sent_between(resumed.saturating_sub(Duration::from_secs(2)), resumed)),
    );
    let reads_during = all
        .iter()
        .filter(|r| r.kind == "read" && r.sent_between(hung, resumed))
        .count();
    let first_open = samples
        .iter()
        .find(|(at, s)| *at >= hung && s == "open")
        .map(|(at, _)| *at - hung);
    let during_states = |state: &str| {
        samples
            .iter()
            .filter(|(at, s)| *at >= hung && *at < resumed && s == state)
            .count()
    };
    let closed_after = samples
        .iter()
        .find(|(at, s)| *at >= resumed && s == "closed")
        .map(|(at, _)| *at - resumed);
    let last_state = samples.last().map(|(_, s)| s.clone()).unwrap_or_default();

    figures.set("hang", format!("{hang:?}"));
    figures.set("hang_s", HANG.as_secs());
    figures.set_ms("cache_timeout_ms", CACHE_TIMEOUT);
    figures.set("requests", total.count);
    figures.set("failed_requests", total.failed);
    figures.set("healthy", healthy.to_json());
    figures.set("during_hang", hung_reqs.to_json());
    figures.set("during_hang_last_2s", hung_late.to_json());
    figures.set("after_resume", after.to_json());
    figures.set(
        "p99_ratio_hang_vs_healthy",
        ratio(hung_reqs.p99, healthy.p99),
    );
    figures.set("reads_during_hang", reads_during);
    figures.set("cache_errors_during_hang", during.2 - before.2);
    figures.set("breaker_open_after_ms", json!(first_open.map(ms)));
    figures.set(
        "breaker_samples_during_hang",
        json!({
            "closed": during_states("closed"),
            "open": during_states("open"),
            "half_open": during_states("half_open"),
        }),
    );
    figures.set(
        "breaker_closed_after_resume_ms",
        json!(closed_after.map(ms)),
    );
    figures.set("proxy_connections_total", proxy.connections_total());
    figures.emit();

    let failures: Vec<String> = all
        .iter()
        .filter(|r| !r.ok())
        .take(5)
        .map(|r| r.describe())
        .collect();
    assert_eq!(total.failed, 0, "failed requests, e.g. {failures:?}");
    // The cache's budget plus the database's time: a generous 1 s on a noisy two-core machine
    // (the healthy maximum is printed beside it).
    assert!(
        hung_reqs.max < Duration::from_secs(1),
        "a request took {:?} while Redis hung",
        hung_reqs.max
    );
    let first_open = first_open.expect("the breaker never opened while Redis hung");
    assert!(first_open < Duration::from_secs(2), "{first_open:?}");
    assert!(
        during_states("open") > during_states("closed"),
        "the breaker was mostly closed while Redis hung"
    );
    let closed_after = closed_after.expect("the breaker never closed after Redis came back");
    assert!(closed_after <= Duration::from_secs(5), "{closed_after:?}");
    assert_eq!(last_state, "closed");
}
