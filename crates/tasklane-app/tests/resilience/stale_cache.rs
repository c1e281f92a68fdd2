//! The stale-cache race, under load, with the cache write delayed; then garbage in the cache.
//!
//! How the delay is injected, and why there: the race a cache-aside list can lose is "a reader
//! reads the database, a write commits and invalidates, then the reader stores what it read".
//! Its window is the time between the reader's database snapshot and its cache write. Both
//! PostgreSQL and Redis sit behind the fault proxy with added latency:
//!
//! - PostgreSQL, `PG_DELAY` each way: every reader holds its result for at least that long
//!   between the snapshot (taken when the query reaches the server) and the cache write (sent
//!   when the answer is back), so writes commit, bump the generation and are acknowledged inside
//!   that window all the time. This is the delay before the cache write that matters.
//! - Redis, `REDIS_DELAY` each way: every Redis call, the cache write included, lands later, so
//!   that the generation check and the write also race against a slow Redis. Each server thread
//!   has its own connection, so a reader's `SET` and a writer's `INCR` from different threads
//!   may arrive in either order; entries carry the generation seen before the read, so the
//!   order does not matter to correctness.
//!
//! Every write is an update of an unfiltered page's task, so with write-through on (the
//! default) many bumps also store the readers' next page; the test requires that some did.

use crate::harness::{
    breaker_state, cache_counters, cache_lease_hits, cache_replaced, cache_revalidation_hits,
    client, exchange, private_pg, private_redis, seed_tasks, App, Figures, LogOnPanic, Recorder,
    Summary,
};
use deadpool_redis::redis;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tasklane_testkit::proxy::{FaultProxy, Mode};
use tokio::task::JoinHandle;

const WRITERS: usize = 8;
const READERS: usize = 32;
const PG_DELAY: Duration = Duration::from_millis(10);
const REDIS_DELAY: Duration = Duration::from_millis(2);
/// A writer's longest pause between writes (the pause is uniform in 0..=this): about ten
/// writes a second from the eight writers.
const WRITE_PAUSE_MAX_MS: u64 = 1500;
/// A reader's pause between reads.
const READ_PAUSE: Duration = Duration::from_millis(20);
const PREFIX: &str = "resilience-stale";

/// `w{writer}-{n}` → (writer, n).
fn parse_title(title: &str) -> Option<(usize, u64)> {
    let (w, n) = title.strip_prefix('w')?.split_once('-')?;
    Some((w.parse().ok()?, n.parse().ok()?))
}

/// The writers whose acknowledged counter (`floor`, noted before the read began) the list
/// `list` does not show: each entry describes one stale task.
fn behind(floor: &[u64], list: &Value) -> Vec<String> {
    let mut seen = vec![None; floor.len()];
    for (_, title, _) in api_rows(list) {
        if let Some((w, n)) = parse_title(&title) {
            if let Some(slot) = seen.get_mut(w) {
                *slot = Some(n);
            }
        }
    }
    floor
        .iter()
        .zip(&seen)
        .enumerate()
        .filter(|(_, (floor, seen))| seen.is_none_or(|n| n < **floor))
        .map(|(w, (floor, seen))| format!("writer {w}: acknowledged {floor}, read {seen:?}"))
        .collect()
}

/// The shared state of a race between writers and readers of the list: what each writer has had
/// acknowledged, and the reads that missed some of it.
struct Race {
    rec: Recorder,
    /// Writer `i`'s task.
    ids: Vec<i64>,
    acked: Vec<AtomicU64>,
    /// The version of writer `i`'s task its last acknowledged write made.
    acked_version: Vec<AtomicU64>,
    stale: Mutex<Vec<String>>,
    stale_count: AtomicU64,
    until: Duration,
}

impl Race {
    /// One writer per task of `ids`.
    fn new(ids: &[i64], until: Duration) -> Arc<Self> {
        Arc::new(Self {
            rec: Recorder::new(),
            ids: ids.to_vec(),
            acked: ids.iter().map(|_| AtomicU64::new(0)).collect(),
            acked_version: ids.iter().map(|_| AtomicU64::new(0)).collect(),
            stale: Mutex::new(Vec::new()),
            stale_count: AtomicU64::new(0),
            until,
        })
    }

    fn record_stale(&self, problem: String) {
        self.stale_count.fetch_add(1, Ordering::SeqCst);
        let mut stale = self.stale.lock().unwrap();
        if stale.len() < 10 {
            stale.push(problem);
        }
    }

    /// Writer `i`: renames task `id` `w{i}-1`, `w{i}-2`, ... through `app`, one PUT at a time,
    /// publishing `n` after each 200, then pausing for up to `pause_max_ms` (uniform; 0: none).
    fn writer(
        self: &Arc<Self>,
        app: &Arc<App>,
        i: usize,
        id: i64,
        pause_max_ms: u64,
    ) -> JoinHandle<()> {
        let (race, app) = (Arc::clone(self), Arc::clone(app));
        tokio::spawn(async move {
            let client = crate::harness::client();
            let mut n = 0u64;
            while race.rec.now() < race.until && n < 1_000_000 {
                n += 1;
                let req = client
                    .put(app.url(&format!("/api/tasks/{id}")))
                    .header("content-type", "application/json")
                    .body(json!({ "title": format!("w{i}-{n}") }).to_string());
                if let Ok(reply) = race.rec.send("write", req).await {
                    if reply.status == 200 {
                        let version = reply.json()["version"].as_u64().unwrap_or(u64::MAX);
                        race.acked_version[i].store(version, Ordering::SeqCst);
                        race.acked[i].store(n, Ordering::SeqCst);
                    }
                }
                if pause_max_ms > 0 {
                    let pause = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * pause_max_ms / 255;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        })
    }

    /// A reader: notes what was acknowledged, reads the list through `app` (`name` in reports),
    /// records what the list does not show; then revalidates one writer's task (in turn) with
    /// the ETag it last got for it (at first the version the list showed), and records a 304 or
    /// a 200 older than the version acknowledged before the revalidation began; pauses `pause`,
    /// and again.
    fn reader(
        self: &Arc<Self>,
        (name, app): (&'static str, &Arc<App>),
        pause: Duration,
    ) -> JoinHandle<()> {
        let (race, app) = (Arc::clone(self), Arc::clone(app));
        tokio::spawn(async move {
            let client = crate::harness::client();
            let mut reads = 0u64;
            let mut known: Vec<Option<i64>> = vec![None; race.ids.len()];
            while race.rec.now() < race.until && reads < 1_000_000 {
                reads += 1;
                // What was acknowledged before this read began.
                let floor = race.floor();
                let Ok(reply) = race
                    .rec
                    .send("read", client.get(app.url("/api/tasks")))
                    .await
                else {
                    continue;
                };
                if reply.status != 200 {
                    continue;
                }
                let list = reply.json();
                for problem in behind(&floor, &list) {
                    race.record_stale(format!("{problem} at {:?} from {name}", race.rec.now()));
                }
                // Like a client polling the task it shows: it sends the ETag it last got (a
                // version older than the current one whenever a write came in between).
                let w = (reads as usize) % race.ids.len();
                let id = race.ids[w];
                let listed = api_rows(&list).into_iter().find(|row| row.0 == id);
                if let Some(seen) = known[w].or(listed.map(|row| row.2)) {
                    known[w] = race.revalidate((name, &app), &client, w, seen).await;
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        })
    }

    /// Revalidates writer `w`'s task through `app` with the ETag of version `seen`; returns the
    /// version the answer says is current (`None` after a failure).
    async fn revalidate(
        &self,
        (name, app): (&'static str, &App),
        client: &reqwest::Client,
        w: usize,
        seen: i64,
    ) -> Option<i64> {
        let floor = self.acked_version[w].load(Ordering::SeqCst);
        let req = client
            .get(app.url(&format!("/api/tasks/{}", self.ids[w])))
            .header("if-none-match", format!("\"v{seen}\""));
        let reply = self.rec.send("revalidate", req).await.ok()?;
        let current = match reply.status {
            304 => seen,
            200 => reply.json()["version"].as_i64()?,
            _ => return None,
        };
        if u64::try_from(current).unwrap_or(0) < floor {
            self.record_stale(format!(
                "writer {w}: acknowledged version {floor}, revalidation of v{seen} answered {} (v{current}) at {:?} from {name}",
                reply.status,
                self.rec.now()
            ));
        }
        Some(current)
    }

    fn floor(&self) -> Vec<u64> {
        self.acked
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .collect()
    }

    fn acked_writes(&self) -> u64 {
        self.floor().iter().sum()
    }

    fn stale_reads(&self) -> u64 {
        self.stale_count.load(Ordering::SeqCst)
    }

    fn assert_no_stale_read(&self) {
        assert_eq!(
            self.stale_reads(),
            0,
            "reads missing an acknowledged write: {:?}",
            self.stale.lock().unwrap()
        );
    }
}

/// Two replicas on the same database and Redis: `app` keeps local copies of entries (the
/// default), `peer` keeps none, so every read it serves from the cache reads Redis's entry.
async fn two_replicas(env: &[(&'static str, String)]) -> (Arc<App>, Arc<App>, [LogOnPanic; 2]) {
    let app = Arc::new(App::spawn(env).await);
    let mut peer_env = env.to_vec();
    peer_env.push(("TASKLANE_CACHE_LOCAL_BYTES", "0".to_owned()));
    let peer = Arc::new(App::spawn(&peer_env).await);
    let logs = [app.log_on_panic(), peer.log_on_panic()];
    (app, peer, logs)
}

/// `n` tasks titled `w{i}-0`, so that every writer's task has a counter.
async fn seed_counters(client: &reqwest::Client, app: &App, n: usize) -> Vec<i64> {
    let ids = seed_tasks(client, app, n).await;
    for (i, id) in ids.iter().enumerate() {
        let reply = exchange(
            client
                .put(app.url(&format!("/api/tasks/{id}")))
                .header("content-type", "application/json")
                .body(json!({ "title": format!("w{i}-0") }).to_string()),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 200);
    }
    ids
}

/// The tasks as the database has them, newest first: (id, title, version).
async fn db_rows(client: &tokio_postgres::Client) -> Vec<(i64, String, i64)> {
    client
        .query(
            "SELECT id, title, version::bigint FROM tasks ORDER BY created_at DESC, id DESC",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The same three fields of a list response.
fn api_rows(list: &Value) -> Vec<(i64, String, i64)> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|t| {
                    (
                        t["id"].as_i64().unwrap_or(-1),
                        t["title"].as_str().unwrap_or_default().to_owned(),
                        t["version"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 6: "Stale-cache race: 8 writers and 32 readers for 30 s with a delay injected before
/// the cache write: 0 reads that miss an acknowledged write; cache and database agree at the
/// end; a cache entry overwritten with garbage is a miss, not a 500."
///
/// Writer `i` owns task `i` and renames it `w{i}-1`, `w{i}-2`, ... one PUT at a time; after each
/// 200 it publishes `n` as acknowledged. A reader notes every writer's acknowledged `n` before it
/// sends its list request; the list must then show each task at that `n` or later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cache_race_with_a_delayed_cache_write() {
    let mut figures = Figures::new("stale_cache_race_with_a_delayed_cache_write");
    let (pg, _) = private_pg().await;
    let redis = private_redis().await;
    let pg_proxy = FaultProxy::start(pg.addr()).unwrap();
    let redis_proxy = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).unwrap();
    let env = [
        (
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{}/tasklane", pg_proxy.port()),
        ),
        (
            "REDIS_URL",
            format!("redis://127.0.0.1:{}", redis_proxy.port()),
        ),
        ("TASKLANE_CACHE_KEY_PREFIX", PREFIX.to_owned()),
        ("TASKLANE_DB_POOL_SIZE", "16".to_owned()),
    ];
    // Writers and readers are spread over both replicas, so a write acknowledged by one must
    // invalidate the other's copies.
    let (app, peer, _logs) = two_replicas(&env).await;
    let client = client();
    let ids = seed_counters(&client, &app, WRITERS).await;
    pg_proxy.set_mode(Mode::Latency(PG_DELAY));
    redis_proxy.set_mode(Mode::Latency(REDIS_DELAY));

    let load = crate::harness::load_duration();
    let counters_before = both_counters(&client, &app, &peer).await;
    let replaced_before =
        cache_replaced(&client, &app).await + cache_replaced(&client, &peer).await;
    let leased_before =
        cache_lease_hits(&client, &app).await + cache_lease_hits(&client, &peer).await;
    let race = Race::new(&ids, load);
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        // A random pause, so that the generation stands still long enough for entries to be
        // stored and hit between writes, and writes land at any point of a reader's miss.
        let app = if i % 2 == 0 { &app } else { &peer };
        tasks.push(race.writer(app, i, *id, WRITE_PAUSE_MAX_MS));
    }
    for r in 0..READERS {
        // Most readers on the replica with copies: they are what a missed invalidation would
        // make stale.
        let replica = if r % 4 == 3 {
            ("peer", &peer)
        } else {
            ("app", &app)
        };
        tasks.push(race.reader(replica, READ_PAUSE));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counters_after = both_counters(&client, &app, &peer).await;
    let replaced = cache_replaced(&client, &app).await + cache_replaced(&client, &peer).await
        - replaced_before;
    let leased = cache_lease_hits(&client, &app).await + cache_lease_hits(&client, &peer).await
        - leased_before;
    let revalidated_from_cache = cache_revalidation_hits(&client, &app).await
        + cache_revalidation_hits(&client, &peer).await;
    pg_proxy.set_mode(Mode::Pass);
    redis_proxy.set_mode(Mode::Pass);

    // The load may have tripped the breaker (a cache call slower than its budget on a busy
    // machine): wait, bounded, until the cache is in use again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while breaker_state(&client, &app).await != "closed" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // At the end: the list (a miss, then a hit) agrees with the table.
    let direct = pg.client("tasklane").await.unwrap();
    let truth = db_rows(&direct).await;
    let mut agree = Vec::new();
    for _ in 0..2 {
        let before = cache_counters(&client, &app).await;
        let reply = exchange(client.get(app.url("/api/tasks"))).await.unwrap();
        let after = cache_counters(&client, &app).await;
        agree.push((
            reply.status,
            api_rows(&reply.json()) == truth,
            if after.0 > before.0 { "hit" } else { "miss" },
        ));
    }
    // More entries, for the garbage round.
    for path in ["/api/tasks?limit=5", "/api/tasks?status=todo"] {
        let _ = exchange(client.get(peer.url(path))).await.unwrap();
    }

    // Garbage: every entry overwritten, in four ways; each read must still be right. Read
    // through `peer`, which keeps no local copies, so each read meets the garbage.
    let redis_client = redis::Client::open(redis.url()).unwrap();
    let mut conn = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let generation_key = format!("{PREFIX}:gen");
    let mut garbage_rounds = Vec::new();
    for variant in [
        "random",
        "short",
        "generation+random",
        "generation+bad-header",
    ] {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{PREFIX}:*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.retain(|k| *k != generation_key);
        let generation: u64 = redis::cmd("GET")
            .arg(&generation_key)
            .query_async::<Option<u64>>(&mut conn)
            .await
            .unwrap()
            .unwrap_or(0);
        let noise = uuid::Uuid::new_v4().as_bytes().to_vec();
        let value: Vec<u8> = match variant {
            "random" => noise.iter().chain(noise.iter()).copied().collect(),
            "short" => vec![1, 2, 3],
            "generation+random" => generation
                .to_be_bytes()
                .iter()
                .chain(noise.iter())
                .copied()
                .collect(),
            _ => generation
                .to_be_bytes()
                .iter()
                .chain(b"TL1\n\xff\xfe\n\n[".iter())
                .copied()
                .collect(),
        };
        for key in &keys {
            redis::cmd("SET")
                .arg(key)
                .arg(&value)
                .arg("PX")
                .arg(60_000)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
        let before = cache_counters(&client, &peer).await;
        let mut statuses = Vec::new();
        let mut correct = true;
        for path in ["/api/tasks", "/api/tasks?limit=5", "/api/tasks?status=todo"] {
            let reply = exchange(client.get(peer.url(path))).await.unwrap();
            statuses.push(reply.status);
            let expected: Vec<_> = if path.contains("limit=5") {
                truth.iter().take(5).cloned().collect()
            } else {
                truth.clone()
            };
            correct &= api_rows(&reply.json()) == expected;
        }
        // Each task's version entry is garbage too: a revalidation with the current ETag is a
        // 304, with an older one the task (read from the database).
        let mut revalidations = Vec::new();
        for (id, _, version) in &truth {
            for (sent, expected) in [(*version, 304), (version - 1, 200)] {
                let reply = exchange(
                    client
                        .get(peer.url(&format!("/api/tasks/{id}")))
                        .header("if-none-match", format!("\"v{sent}\"")),
                )
                .await
                .unwrap();
                revalidations.push(reply.status);
                correct &= reply.status == expected
                    && (expected == 304 || reply.json()["version"].as_i64() == Some(*version));
            }
        }
        let after = cache_counters(&client, &peer).await;
        garbage_rounds.push(json!({
            "variant": variant,
            "entries_overwritten": keys.len(),
            "statuses": statuses,
            "revalidations": revalidations,
            "correct": correct,
            "hits": after.0 - before.0,
            "misses": after.1 - before.1,
            "errors": after.2 - before.2,
        }));
    }

    // A control, to show that the check above can fail: forge a stale entry (a list read
    // before a write, stored under the generation after it) and read it back. The garbage
    // entries go first: a clean miss stores a good entry. A page of its own, which no reader
    // above read: a miss under a generation whose read of that page has just finished in the
    // process is answered from memory, and stores nothing.
    const CONTROL: &str = "/api/tasks?limit=50";
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.retain(|k| *k != generation_key);
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(&keys)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let before_write = exchange(client.get(peer.url(CONTROL))).await.unwrap();
    let _ = exchange(client.get(peer.url(CONTROL))).await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.retain(|k| *k != generation_key);
    let mut old_entry = None;
    for key in &keys {
        let value: Vec<u8> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if value.ends_with(&before_write.body) {
            old_entry = Some((key.clone(), value));
        }
    }
    let (key, old_value) = old_entry.expect("the list's cache entry");
    let n = race.acked[0].load(Ordering::SeqCst) + 1;
    let reply = exchange(
        client
            .put(app.url(&format!("/api/tasks/{}", ids[0])))
            .header("content-type", "application/json")
            .body(json!({ "title": format!("w0-{n}") }).to_string()),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    race.acked[0].store(n, Ordering::SeqCst);
    let generation: u64 = redis::cmd("GET")
        .arg(&generation_key)
        .query_async::<Option<u64>>(&mut conn)
        .await
        .unwrap()
        .unwrap_or(0);
    let forged: Vec<u8> = generation
        .to_be_bytes()
        .iter()
        .chain(old_value.get(8..).unwrap_or_default())
        .copied()
        .collect();
    redis::cmd("SET")
        .arg(&key)
        .arg(&forged)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let floor = race.floor();
    let forged_read = exchange(client.get(peer.url(CONTROL))).await.unwrap();
    let control = behind(&floor, &forged_read.json());
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    let all = race.rec.all();
    let reads = Summary::of(all.iter().filter(|r| r.kind == "read"));
    let revalidations = Summary::of(all.iter().filter(|r| r.kind == "revalidate"));
    let writes = Summary::of(all.iter().filter(|r| r.kind == "write"));
    let (hits, misses) = (
        counters_after.0 - counters_before.0,
        counters_after.1 - counters_before.1,
    );
    let acked_writes = race.acked_writes();

    figures.set("writers", WRITERS);
    figures.set("readers", READERS);
    figures.set("load_s", load.as_secs());
    figures.set_ms("pg_added_latency_each_way_ms", PG_DELAY);
    figures.set_ms("redis_added_latency_each_way_ms", REDIS_DELAY);
    figures.set("reads", reads.to_json());
    figures.set("revalidations", revalidations.to_json());
    figures.set("revalidations_from_the_cache", revalidated_from_cache);
    figures.set("writes", writes.to_json());
    figures.set("acknowledged_writes", acked_writes);
    figures.set("stale_reads", race.stale_reads());
    figures.set("cache_hits", hits);
    figures.set("cache_misses", misses);
    figures.set("cache_errors", counters_after.2 - counters_before.2);
    figures.set("pages_written_through", replaced);
    figures.set("hits_on_a_lease", leased);
    figures.set(
        "hit_rate",
        if hits + misses > 0.0 {
            (hits / (hits + misses) * 1000.0).round() / 1000.0
        } else {
            0.0
        },
    );
    figures.set(
        "end_reads_agree_with_db",
        json!(agree
            .iter()
            .map(|(s, ok, how)| json!({"status": s, "agrees": ok, "cache": how}))
            .collect::<Vec<_>>()),
    );
    figures.set("garbage", json!(garbage_rounds));
    figures.set("control_forged_stale_entry_detected", json!(control));
    figures.emit();

    assert_eq!(reads.failed, 0, "failed reads");
    assert_eq!(revalidations.failed, 0, "failed revalidations");
    assert_eq!(writes.failed, 0, "failed writes");
    race.assert_no_stale_read();
    assert!(acked_writes > 0 && reads.count > 0, "no load ran");
    assert!(
        revalidated_from_cache > 0.0,
        "no revalidation was answered from the cache"
    );
    // Updates were written through into the readers' page (not only plain bumps): the race
    // above covered that path too.
    assert!(replaced > 0.0, "no update was written through");
    // And hits were served on leases, with no round trip to Redis: the race covered them too.
    assert!(leased > 0.0, "no hit was served on a lease");
    for (status, ok, how) in &agree {
        assert_eq!(*status, 200);
        assert!(ok, "the list ({how}) disagrees with the database");
    }
    assert_eq!(
        agree[1].2, "hit",
        "the second read is served from the cache"
    );
    assert_eq!(
        control.len(),
        1,
        "the check did not catch a forged stale entry: {control:?}"
    );
    for round in &garbage_rounds {
        assert_eq!(round["statuses"], json!([200, 200, 200]), "{round}");
        assert_eq!(round["correct"], json!(true), "{round}");
    }
}

/// Cache hits, misses and errors of both replicas together.
async fn both_counters(client: &reqwest::Client, app: &App, peer: &App) -> (f64, f64, f64) {
    let (a, b) = (
        cache_counters(client, app).await,
        cache_counters(client, peer).await,
    );
    (a.0 + b.0, a.1 + b.1, a.2 + b.2)
}

/// Write-through between two replicas, writing as fast as they can: each replica chains its
/// updates' replaced pages on its own heads, so the other's bumps keep breaking the chains. The
/// cache must refuse every replacement built on a page it did not store (docs/ARCHITECTURE.md,
/// "Write-through of updates"); one it took would drop the other replica's write, and readers
/// would see it missing. Same check as above: every list read shows every write acknowledged
/// before it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_race_between_two_replicas() {
    const WRITERS: usize = 6;
    const READERS: usize = 12;
    const LOAD: Duration = Duration::from_secs(8);
    let mut figures = Figures::new("write_through_race_between_two_replicas");
    let (pg, url) = private_pg().await;
    let redis = private_redis().await;
    let env = [
        ("DATABASE_URL", url),
        ("REDIS_URL", redis.url()),
        (
            "TASKLANE_CACHE_KEY_PREFIX",
            "resilience-write-through".to_owned(),
        ),
    ];
    let (app, peer, _logs) = two_replicas(&env).await;
    let client = client();
    let ids = seed_counters(&client, &app, WRITERS).await;
    let replaced_before = (
        cache_replaced(&client, &app).await,
        cache_replaced(&client, &peer).await,
    );
    let leased_before =
        cache_lease_hits(&client, &app).await + cache_lease_hits(&client, &peer).await;

    let race = Race::new(&ids, LOAD);
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        tasks.push(race.writer(if i % 2 == 0 { &app } else { &peer }, i, *id, 0));
    }
    for r in 0..READERS {
        let replica = if r % 2 == 0 {
            ("app", &app)
        } else {
            ("peer", &peer)
        };
        tasks.push(race.reader(replica, Duration::ZERO));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let replaced = (
        cache_replaced(&client, &app).await - replaced_before.0,
        cache_replaced(&client, &peer).await - replaced_before.1,
    );
    let leased = cache_lease_hits(&client, &app).await + cache_lease_hits(&client, &peer).await
        - leased_before;
    let direct = pg.client("tasklane").await.unwrap();
    let truth = db_rows(&direct).await;
    let mut agree = Vec::new();
    for replica in [&app, &peer] {
        let reply = exchange(client.get(replica.url("/api/tasks")))
            .await
            .unwrap();
        agree.push((reply.status, api_rows(&reply.json()) == truth));
    }

    let all = race.rec.all();
    let reads = Summary::of(all.iter().filter(|r| r.kind == "read"));
    let revalidations = Summary::of(all.iter().filter(|r| r.kind == "revalidate"));
    let writes = Summary::of(all.iter().filter(|r| r.kind == "write"));
    let acked_writes = race.acked_writes();
    figures.set("writers", WRITERS);
    figures.set("readers", READERS);
    figures.set("load_s", LOAD.as_secs());
    figures.set("reads", reads.to_json());
    figures.set("writes", writes.to_json());
    figures.set("acknowledged_writes", acked_writes);
    figures.set("pages_written_through_app", replaced.0);
    figures.set("pages_written_through_peer", replaced.1);
    figures.set("hits_on_a_lease", leased);
    figures.set("revalidations", revalidations.to_json());
    figures.set("stale_reads", race.stale_reads());
    figures.set("end_reads_agree_with_db", json!(agree));
    figures.emit();

    assert_eq!(reads.failed, 0, "failed reads");
    assert_eq!(revalidations.failed, 0, "failed revalidations");
    assert_eq!(writes.failed, 0, "failed writes");
    race.assert_no_stale_read();
    assert!(
        replaced.0 > 0.0 && replaced.1 > 0.0,
        "both replicas wrote updates through: {replaced:?}"
    );
    // Not every write: the replicas' bumps interleave, and each refusal is a chain broken.
    assert!(
        replaced.0 + replaced.1 < acked_writes as f64,
        "every write was written through, so no chain was ever broken: {replaced:?} of {acked_writes}"
    );
    assert!(leased > 0.0, "no hit was served on a lease");
    for (status, ok) in agree {
        assert_eq!(status, 200);
        assert!(ok, "a replica's list disagrees with the database");
    }
}
