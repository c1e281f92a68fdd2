//! PostgreSQL restarted, hung, and starved of connections: 503 with `Retry-After` within 2 s,
//! never a hang, recovery within 5 s, and no acknowledged write lost.

use crate::harness::{
    assert_only_503_with_retry_after, client, list_all, metrics, ms, post_task, private_pg,
    seed_tasks, sleep_until, App, Figures, Rec, Recorder, Summary,
};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tasklane_testkit::proxy::{FaultProxy, Mode};

/// The bound on every answer while the database is away.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// The bound on the first success after the database is back.
const RECOVER_WITHIN: Duration = Duration::from_secs(5);

/// When each request completed, since the recorder's start.
fn done_at(r: &Rec) -> Duration {
    r.at + r.latency
}

/// The first success that completed after `back`, as a delay from `back`.
fn first_ok_after(all: &[Rec], back: Duration) -> Option<Duration> {
    all.iter()
        .filter(|r| r.ok() && done_at(r) >= back)
        .map(|r| done_at(r) - back)
        .min()
}

/// What a create finally came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// 201 (first time or replayed).
    Acknowledged,
    /// A definite refusal (a 4xx other than 409).
    Refused,
    /// No definite answer before the test gave up.
    Unknown,
}

/// One element of the set: a unique title, created with its own `Idempotency-Key`.
#[derive(Debug, Clone)]
struct Op {
    title: String,
    fate: Fate,
    attempts: u32,
}

/// Counts of the answers the set test saw.
#[derive(Debug, Default)]
struct Tally {
    replayed: u64,
    in_flight_409: u64,
    unavailable_503: u64,
    client_timeouts: u64,
    transport_errors: u64,
    other: Vec<String>,
}

/// How long the set test's client waits for a create before it gives up on it (and retries it):
/// short, so that creates slowed down on purpose time out while the server still completes them.
const CREATE_TIMEOUT: Duration = Duration::from_millis(300);
/// The added latency, each way, between tasklane and PostgreSQL during the slow phase: a create
/// (about six round trips) then takes well over [`CREATE_TIMEOUT`] but less than the server's
/// query timeout (1 s), so the server commits what the client gave up on.
const SLOW_PG: Duration = Duration::from_millis(50);

/// Sends the create until it gets a definite answer: 201 is acknowledged, another 4xx is
/// refused; a 503, a 409 (the same key still in flight), a timeout or a broken connection say
/// nothing about whether the task was written, so the same request is sent again with the same
/// key. Gives up (`Unknown`) at `give_up_at`.
async fn until_definite(
    rec: &Recorder,
    client: &reqwest::Client,
    app: &App,
    key: &str,
    body: &Value,
    give_up_at: Duration,
    tally: &Mutex<Tally>,
) -> (Fate, u32) {
    let mut attempts = 0;
    while rec.now() < give_up_at && attempts < 500 {
        attempts += 1;
        let reply = rec
            .send(
                "create",
                post_task(client, app, body)
                    .header("Idempotency-Key", key)
                    .timeout(CREATE_TIMEOUT),
            )
            .await;
        {
            let mut tally = tally.lock().unwrap();
            match reply {
                Ok(r) if r.status == 201 => {
                    if r.header("idempotent-replayed") == Some("true") {
                        tally.replayed += 1;
                    }
                    return (Fate::Acknowledged, attempts);
                }
                Ok(r) if r.status == 409 => tally.in_flight_409 += 1,
                Ok(r) if r.status == 503 => tally.unavailable_503 += 1,
                Ok(r) if (400..500).contains(&r.status) => return (Fate::Refused, attempts),
                Ok(r) => {
                    tally
                        .other
                        .push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)))
                }
                Err(e) if e == "timeout" => tally.client_timeouts += 1,
                Err(_) => tally.transport_errors += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (Fate::Unknown, attempts)
}

const SET_WRITERS: usize = 8;

/// Issue 6: "PostgreSQL restarted during writes: requests during the outage get 503 with
/// `Retry-After` within 2 s (no hangs); the first 2xx comes within 5 s after the database is
/// back. A Jepsen-style set test: unique titles as elements, each create sent with an
/// `Idempotency-Key`; a create that timed out is indeterminate and is retried with the same key
/// until it gets a definite answer. A final read shows every acknowledged element (lost = 0) and
/// no element whose create was definitely refused (unexpected = 0), with no duplicates."
///
/// PostgreSQL sits behind the fault proxy. The run: healthy; then a slow phase (the proxy adds
/// [`SLOW_PG`] each way) in which creates outlast the client's [`CREATE_TIMEOUT`], so that the
/// client retries creates the server is still running (409) or has committed (a replayed 201);
/// then the restart: the proxy resets every connection at once (commits whose answers are on
/// the wire are lost to the server, as in a crash) and PostgreSQL is stopped (fast shutdown),
/// started again after the outage, and the proxy passes traffic again.
///
/// Every fifth acknowledged element's key is then reused with another title: that create must
/// be refused (422), and its title must never appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_writes_set_test() {
    let mut figures = Figures::new("postgres_restarted_during_writes_set_test");
    let (mut pg, _) = private_pg().await;
    let redis = crate::harness::private_redis().await;
    let proxy = FaultProxy::start(pg.addr()).unwrap();
    let app = Arc::new(
        App::spawn(&[
            (
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{}/tasklane", proxy.port()),
            ),
            ("REDIS_URL", redis.url()),
            ("TASKLANE_CACHE_KEY_PREFIX", "resilience".to_owned()),
        ])
        .await,
    );
    let _log = app.log_on_panic();

    let slow_at = Duration::from_secs(3);
    let stop_at = Duration::from_secs(6);
    let outage = Duration::from_secs(4);
    let rec = Arc::new(Recorder::new());
    let writes_end_ms = Arc::new(AtomicU64::new(60_000));
    let give_up_at = Duration::from_secs(60);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let ops = Arc::new(Mutex::new(Vec::<Op>::new()));

    let mut workers = Vec::new();
    for w in 0..SET_WRITERS {
        let (app, rec, end, tally, ops) = (
            app.clone(),
            rec.clone(),
            writes_end_ms.clone(),
            tally.clone(),
            ops.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = crate::harness::client();
            let mut n = 0u32;
            while rec.now() < Duration::from_millis(end.load(Ordering::SeqCst)) && n < 10_000 {
                n += 1;
                let title = format!("el-{w}-{n}");
                let key = uuid::Uuid::new_v4().to_string();
                let body = json!({ "title": title });
                let (fate, attempts) =
                    until_definite(&rec, &client, &app, &key, &body, give_up_at, &tally).await;
                ops.lock().unwrap().push(Op {
                    title: title.clone(),
                    fate,
                    attempts,
                });
                if fate == Fate::Acknowledged && n % 5 == 0 {
                    let reused = format!("{title}-reused-key");
                    let body = json!({ "title": reused });
                    let (fate, attempts) =
                        until_definite(&rec, &client, &app, &key, &body, give_up_at, &tally).await;
                    ops.lock().unwrap().push(Op {
                        title: reused,
                        fate,
                        attempts,
                    });
                }
            }
        }));
    }
    // Two readers of an uncached route, so that reads see the outage too.
    let readers_stop = Arc::new(AtomicBool::new(false));
    for _ in 0..2 {
        let (app, rec, stop) = (app.clone(), rec.clone(), readers_stop.clone());
        workers.push(tokio::spawn(async move {
            let client = crate::harness::client();
            while !stop.load(Ordering::SeqCst) && rec.now() < give_up_at {
                let _ = rec
                    .send("counts", client.get(app.url("/api/tasks/counts")))
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    sleep_until(rec.t0, slow_at).await;
    proxy.set_mode(Mode::Latency(SLOW_PG));
    sleep_until(rec.t0, stop_at).await;
    let stopping = rec.now();
    proxy.set_mode(Mode::Reset);
    pg.stop().await;
    let stopped = rec.now();
    sleep_until(rec.t0, stopping + outage).await;
    pg.start()
        .await
        .unwrap_or_else(|e| panic!("restart postgres: {e}"));
    proxy.set_mode(Mode::Pass);
    let back = rec.now();
    writes_end_ms.store(
        u64::try_from((back + Duration::from_secs(4)).as_millis()).unwrap(),
        Ordering::SeqCst,
    );
    sleep_until(rec.t0, back + Duration::from_secs(4)).await;
    readers_stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let finished = rec.now();

    // The final read, through the API, every page.
    let client = client();
    let listed = list_all(&client, &app).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for task in &listed {
        *seen
            .entry(task["title"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let ops = ops.lock().unwrap().clone();
    let attempted: HashSet<&str> = ops.iter().map(|o| o.title.as_str()).collect();
    let count = |fate: Fate| ops.iter().filter(|o| o.fate == fate).count();
    let lost: Vec<&str> = ops
        .iter()
        .filter(|o| o.fate == Fate::Acknowledged && !seen.contains_key(&o.title))
        .map(|o| o.title.as_str())
        .collect();
    let unexpected: Vec<&str> = ops
        .iter()
        .filter(|o| o.fate == Fate::Refused && seen.contains_key(&o.title))
        .map(|o| o.title.as_str())
        .collect();
    let duplicates: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let foreign: Vec<&String> = seen
        .keys()
        .filter(|t| !attempted.contains(t.as_str()))
        .collect();
    let reused_key_acknowledged = ops
        .iter()
        .filter(|o| o.title.ends_with("-reused-key") && o.fate == Fate::Acknowledged)
        .count();
    let retried = ops.iter().filter(|o| o.attempts > 1).count();
    let unknown_present = ops
        .iter()
        .filter(|o| o.fate == Fate::Unknown && seen.contains_key(&o.title))
        .count();
    let db_rows: i64 = pg
        .client("tasklane")
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM tasks", &[])
        .await
        .unwrap()
        .get(0);

    let all = rec.all();
    let in_outage: Vec<&Rec> = all
        .iter()
        .filter(|r| r.sent_between(stopping, back))
        .collect();
    let outage_summary = Summary::of(in_outage.iter().copied());
    let during_slow = Summary::of(all.iter().filter(|r| r.sent_between(slow_at, stopping)));
    let overall = Summary::of(&all);
    let first_ok = first_ok_after(&all, back);
    let late_failures: Vec<String> = all
        .iter()
        .filter(|r| !r.ok() && r.at >= back + RECOVER_WITHIN)
        .take(5)
        .map(Rec::describe)
        .collect();
    let tally = tally.lock().unwrap();

    figures.set("slow_phase", during_slow.to_json());
    figures.set_ms("stop_took_ms", stopped - stopping);
    figures.set_ms("outage_ms", back - stopping);
    figures.set("requests", overall.count);
    figures.set("during_outage", outage_summary.to_json());
    figures.set_ms("max_latency_ms", overall.max);
    figures.set("first_2xx_after_back_ms", json!(first_ok.map(ms)));
    figures.set("elements_attempted", ops.len());
    figures.set("acknowledged", count(Fate::Acknowledged));
    figures.set("refused", count(Fate::Refused));
    figures.set("indeterminate_at_end", count(Fate::Unknown));
    figures.set("indeterminate_at_end_present", unknown_present);
    figures.set("elements_retried", retried);
    figures.set("replayed_201", tally.replayed);
    figures.set("answers_503", tally.unavailable_503);
    figures.set("answers_409", tally.in_flight_409);
    figures.set("client_timeouts", tally.client_timeouts);
    figures.set("transport_errors", tally.transport_errors);
    figures.set("lost", lost.len());
    figures.set("unexpected", unexpected.len());
    figures.set("duplicates", duplicates.len());
    figures.set("foreign", foreign.len());
    figures.set("reused_key_acknowledged", reused_key_acknowledged);
    figures.set("listed", listed.len());
    figures.set("db_rows", db_rows);
    figures.set_ms("test_ms", finished);
    figures.emit();

    assert!(
        tally.other.is_empty(),
        "unexpected answers: {:?}",
        tally.other
    );
    assert_eq!(tally.transport_errors, 0, "connections failed");
    // No hangs: every answer within the bound (the creates' own client timeout is shorter, so
    // the readers, which wait up to 5 s, carry this bound).
    assert!(
        overall.max < ANSWER_WITHIN,
        "a request took {:?} (bound {ANSWER_WITHIN:?})",
        overall.max
    );
    // The set test's definite answers (409 in flight, 422 for a reused key) and its own
    // client timeouts aside, every failure must be a 503 with Retry-After.
    let definite_or_own_timeout = |r: &Rec| {
        matches!(r.status, Some(409 | 422))
            || (r.kind == "create" && r.error.as_deref() == Some("timeout"))
    };
    let failed_in_outage =
        assert_only_503_with_retry_after(all.iter().filter(|r| !definite_or_own_timeout(r)));
    assert!(
        failed_in_outage > 0,
        "no request saw the outage: the test proved nothing"
    );
    assert!(
        tally.client_timeouts > 0,
        "no create timed out: the indeterminate path was not exercised"
    );
    let first_ok = first_ok.expect("no success after the database came back");
    assert!(
        first_ok <= RECOVER_WITHIN,
        "first 2xx {first_ok:?} after the database was back"
    );
    assert!(
        late_failures.is_empty(),
        "still failing after recovery: {late_failures:?}"
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(unexpected.is_empty(), "refused but present: {unexpected:?}");
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    assert!(foreign.is_empty(), "never attempted: {foreign:?}");
    assert_eq!(
        reused_key_acknowledged, 0,
        "a reused key with another body was accepted"
    );
    assert_eq!(
        count(Fate::Unknown),
        0,
        "creates left without a definite answer"
    );
    assert_eq!(
        usize::try_from(db_rows).unwrap(),
        listed.len(),
        "the list and the table disagree"
    );
}

/// Issue 6: "PostgreSQL hung for 10 s: 503 within 2 s; recovery within 5 s of it resuming."
/// The postmaster and every backend get `SIGSTOP`: open connections hang mid-query and new ones
/// hang in the handshake, as with a frozen host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hung() {
    let mut figures = Figures::new("postgres_hung");
    let (mut pg, db_url) = private_pg().await;
    let app = Arc::new(App::spawn(&[("DATABASE_URL", db_url)]).await);
    let _log = app.log_on_panic();
    let client = client();
    let ids = Arc::new(seed_tasks(&client, &app, 20).await);

    let hang_at = Duration::from_secs(3);
    let hang = Duration::from_secs(10);
    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..6usize {
        let (app, rec, stop, ids) = (app.clone(), rec.clone(), stop.clone(), ids.clone());
        workers.push(tokio::spawn(async move {
            let client = crate::harness::client();
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) && n < 100_000 {
                n += 1;
                match i % 3 {
                    0 => {
                        let id = ids[n % ids.len()];
                        let _ = rec
                            .send("get", client.get(app.url(&format!("/api/tasks/{id}"))))
                            .await;
                    }
                    1 => {
                        let _ = rec
                            .send("list", client.get(app.url("/api/tasks?limit=10")))
                            .await;
                    }
                    _ => {
                        let body = json!({ "title": format!("hung-{i}-{n}") });
                        let _ = rec.send("create", post_task(&client, &app, &body)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    {
        let (app, rec, stop) = (app.clone(), rec.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = crate::harness::client();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 10_000 {
                n += 1;
                let _ = rec.send("health", client.get(app.url("/api/health"))).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    sleep_until(rec.t0, hang_at).await;
    pg.pause().unwrap_or_else(|e| panic!("pause: {e}"));
    let paused = rec.now();
    sleep_until(rec.t0, paused + hang).await;
    pg.resume().unwrap_or_else(|e| panic!("resume: {e}"));
    let resumed = rec.now();
    sleep_until(rec.t0, resumed + RECOVER_WITHIN + Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let all = rec.all();
    let during: Vec<&Rec> = all
        .iter()
        .filter(|r| r.sent_between(paused, resumed))
        .collect();
    let during_summary = Summary::of(during.iter().copied());
    // Healthy: answered before the pause (a request caught in flight by it is not).
    let healthy = Summary::of(all.iter().filter(|r| done_at(r) < paused));
    let overall = Summary::of(&all);
    let first_503 = all
        .iter()
        .filter(|r| r.at >= paused && r.status == Some(503))
        .map(|r| done_at(r) - paused)
        .min();
    let health_503 = all
        .iter()
        .filter(|r| r.kind == "health" && r.at >= paused && r.status == Some(503))
        .map(|r| done_at(r) - paused)
        .min();
    let first_ok = first_ok_after(&all, resumed);
    let late_failures: Vec<String> = all
        .iter()
        .filter(|r| !r.ok() && r.at >= resumed + RECOVER_WITHIN)
        .take(5)
        .map(Rec::describe)
        .collect();
    let ok_during = during.iter().filter(|r| r.ok()).count();
    let by_kind = |kind: &str| Summary::of(during.iter().copied().filter(|r| r.kind == kind));

    figures.set_ms("hang_ms", resumed - paused);
    figures.set("requests", overall.count);
    figures.set("healthy", healthy.to_json());
    figures.set("during_hang", during_summary.to_json());
    figures.set("during_hang_get", by_kind("get").to_json());
    figures.set("during_hang_list", by_kind("list").to_json());
    figures.set("during_hang_create", by_kind("create").to_json());
    figures.set("during_hang_health", by_kind("health").to_json());
    figures.set("ok_during_hang", ok_during);
    figures.set_ms("max_latency_ms", overall.max);
    figures.set("first_503_after_pause_ms", json!(first_503.map(ms)));
    figures.set("health_503_after_pause_ms", json!(health_503.map(ms)));
    figures.set("first_2xx_after_resume_ms", json!(first_ok.map(ms)));
    figures.emit();

    let slow: Vec<String> = all
        .iter()
        .filter(|r| r.latency >= ANSWER_WITHIN)
        .take(5)
        .map(Rec::describe)
        .collect();
    assert!(
        slow.is_empty(),
        "answers slower than {ANSWER_WITHIN:?}: {slow:?}"
    );
    let failed = assert_only_503_with_retry_after(&all);
    assert!(
        failed > 0,
        "no request saw the hang: the test proved nothing"
    );
    let first_503 = first_503.expect("no 503 while the database hung");
    assert!(first_503 <= ANSWER_WITHIN, "{first_503:?}");
    assert!(
        health_503.is_some(),
        "readiness never said 503 while the database hung"
    );
    let first_ok = first_ok.expect("no success after the database resumed");
    assert!(
        first_ok <= RECOVER_WITHIN,
        "first 2xx {first_ok:?} after resume"
    );
    assert!(
        late_failures.is_empty(),
        "still failing after recovery: {late_failures:?}"
    );
}

/// Issue 6: "Pool exhaustion (every connection held, 100 more requests): each gets 503 within
/// the pool wait timeout; the number of server connections never exceeds the pool size."
///
/// An outside session locks the tasks table; four list requests then each hold one of the
/// pool's four connections, blocked on the lock (the query timeout is raised so that they keep
/// holding them). A hundred reads are sent at once while `pg_stat_activity` is sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion() {
    const POOL: i64 = 4;
    const WAIT: Duration = Duration::from_millis(500);
    const BURST: usize = 100;
    let mut figures = Figures::new("pool_exhaustion");
    let (pg, db_url) = private_pg().await;
    let app = Arc::new(
        App::spawn(&[
            ("DATABASE_URL", db_url),
            ("TASKLANE_DB_POOL_SIZE", POOL.to_string()),
            ("TASKLANE_DB_WAIT_TIMEOUT_MS", WAIT.as_millis().to_string()),
            ("TASKLANE_DB_QUERY_TIMEOUT_MS", "15000".to_owned()),
        ])
        .await,
    );
    let _log = app.log_on_panic();
    let client = client();
    let ids = seed_tasks(&client, &app, 5).await;

    // Server-side connections of the app, sampled every 10 ms.
    let max_server = Arc::new(AtomicI64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let monitor = pg.client("postgres").await.unwrap();
        let (max_server, sampling) = (max_server.clone(), sampling.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while sampling.load(Ordering::SeqCst) && samples < 100_000 {
                samples += 1;
                let row = monitor
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname = 'tasklane' AND application_name = 'tasklane'",
                        &[],
                    )
                    .await
                    .unwrap();
                max_server.fetch_max(row.get::<_, i64>(0), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            samples
        })
    };

    let locker = pg.client("tasklane").await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let rec = Arc::new(Recorder::new());
    // Four different pages: identical list reads waiting to start would share one connection
    // (joined_lists.rs).
    let holders: Vec<_> = (0..POOL)
        .map(|i| {
            let (app, rec) = (app.clone(), rec.clone());
            tokio::spawn(async move {
                let client = crate::harness::client();
                let url = app.url(&format!("/api/tasks?limit={}", 5 + i));
                rec.send("holder", client.get(url)).await.map(|r| r.status)
            })
        })
        .collect();
    // Wait (bounded) until the pool says all four are checked out.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(&client, &app).await;
        if m.get("tasklane_db_pool_in_use").copied() == Some(4.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the holders never held the pool: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let burst_started = Instant::now();
    // One client (and a connection per request): building a hundred clients would put the test's
    // own CPU time into the figures.
    let burst_client = crate::harness::client();
    let burst: Vec<_> = (0..BURST)
        .map(|i| {
            let (app, rec, client) = (app.clone(), rec.clone(), burst_client.clone());
            let id = ids[i % ids.len()];
            tokio::spawn(async move {
                let _ = rec
                    .send("burst", client.get(app.url(&format!("/api/tasks/{id}"))))
                    .await;
            })
        })
        .collect();
    // The pool's own view in the middle of the burst.
    tokio::time::sleep(WAIT / 2).await;
    let mid = metrics(&client, &app).await;
    for b in burst {
        b.await.unwrap();
    }
    let burst_took = burst_started.elapsed();

    locker.batch_execute("COMMIT").await.unwrap();
    let mut holder_statuses = Vec::new();
    for h in holders {
        holder_statuses.push(h.await.unwrap());
    }
    let after = crate::harness::exchange(client.get(app.url(&format!("/api/tasks/{}", ids[0]))))
        .await
        .map(|r| r.status);
    // The server's own view of the burst's 503s: its latency histogram, cumulative by bucket.
    let server_side: serde_json::Map<String, Value> = metrics(&client, &app)
        .await
        .into_iter()
        .filter(|(series, _)| {
            series.starts_with("tasklane_http_request_duration_seconds_bucket{")
                && series.contains("route=\"/api/tasks/{id}\"")
                && series.contains("status=\"503\"")
        })
        .filter_map(|(series, count)| {
            let le = series.split("le=\"").nth(1)?.split('"').next()?.to_owned();
            let wanted = ["0.25", "0.5", "1", "2.5", "5", "+Inf"];
            wanted
                .contains(&le.as_str())
                .then(|| (format!("le_{}", le.replace("+Inf", "inf")), json!(count)))
        })
        .collect();
    sampling.store(false, Ordering::SeqCst);
    let samples = sampler.await.unwrap();

    let all = rec.all();
    let burst: Vec<&Rec> = all.iter().filter(|r| r.kind == "burst").collect();
    let summary = Summary::of(burst.iter().copied());
    let fastest = burst.iter().map(|r| r.latency).min().unwrap_or_default();
    let answered_503 = burst
        .iter()
        .filter(|r| r.status == Some(503) && r.retry_after)
        .count();

    figures.set("pool_size", POOL);
    figures.set_ms("wait_timeout_ms", WAIT);
    figures.set("burst", BURST);
    figures.set("burst_503_with_retry_after", answered_503);
    figures.set("burst_latency", summary.to_json());
    figures.set_ms("burst_took_ms", burst_took);
    figures.set_ms("burst_fastest_503_ms", fastest);
    figures.set(
        "burst_503_server_side_histogram",
        Value::Object(server_side),
    );
    figures.set(
        "pool_mid_burst",
        json!({
            "in_use": mid.get("tasklane_db_pool_in_use"),
            "waiting": mid.get("tasklane_db_pool_waiting"),
            "size": mid.get("tasklane_db_pool_size"),
        }),
    );
    figures.set("max_server_connections", max_server.load(Ordering::SeqCst));
    figures.set("pg_stat_activity_samples", samples);
    figures.set(
        "holders",
        json!(holder_statuses
            .iter()
            .map(|s| json!(s.as_ref().ok()))
            .collect::<Vec<_>>()),
    );
    figures.set("after_release", json!(after.as_ref().ok()));
    figures.emit();

    assert_eq!(
        answered_503, BURST,
        "every request of the burst gets 503 + Retry-After"
    );
    // The 503s come from the pool's wait timeout, not from something failing sooner...
    assert!(
        fastest >= WAIT.mul_f32(0.9),
        "a 503 came after {fastest:?}, before the wait timeout ({WAIT:?})"
    );
    // ...and not later than the hang bound. The lock is held until the whole burst is answered,
    // so a request that waited for a connection instead of timing out would never be answered
    // (the client gives up after 5 s). The distance from the wait timeout is printed, not
    // asserted: on a two-core machine it is the machine's scheduling (a hundred connections at
    // once, next to other builds), which the server-side histogram above separates out.
    assert!(
        summary.max < ANSWER_WITHIN,
        "a 503 took {:?} (bound {ANSWER_WITHIN:?})",
        summary.max
    );
    assert!(
        max_server.load(Ordering::SeqCst) <= POOL,
        "{} server connections for a pool of {POOL}",
        max_server.load(Ordering::SeqCst)
    );
    for s in &holder_statuses {
        assert_eq!(s.as_ref().ok(), Some(&200), "a holder failed: {s:?}");
    }
    assert_eq!(after.ok(), Some(200));
}
