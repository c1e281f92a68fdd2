//! What every fault test needs: the real `tasklane` binary as a child process, a recording HTTP
//! client, latency statistics, `/metrics` and `/api/health` readers, and the figures each test
//! prints (and appends to `$TASKLANE_FIGURES_FILE` as one JSON line).

use reqwest::header::HeaderMap;
use reqwest::{Client, RequestBuilder};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tasklane_testkit::pg_cluster::PgCluster;
use tasklane_testkit::redis::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_tasklane");

/// How long a request may take before the client gives up on it. Well above every bound the
/// tests assert (2 s), so that a hang shows as a measured latency, not as a vanished request.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The load duration (30 s), or `TASKLANE_RESILIENCE_LOAD_SECS` for a quicker look.
pub fn load_duration() -> Duration {
    let secs = std::env::var("TASKLANE_RESILIENCE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s >= 6)
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// A private PostgreSQL cluster with an empty `tasklane` database (the server migrates it).
pub async fn private_pg() -> (PgCluster, String) {
    let pg = PgCluster::spawn()
        .await
        .unwrap_or_else(|e| panic!("private PostgreSQL: {e}"));
    let url = pg
        .create_database("tasklane")
        .await
        .unwrap_or_else(|e| panic!("create database: {e}"));
    (pg, url)
}

/// A private `redis-server`.
pub async fn private_redis() -> RedisServer {
    RedisServer::spawn()
        .await
        .unwrap_or_else(|e| panic!("private redis-server: {e}"))
}

/// The `tasklane` binary, running as a child process on a port of its own.
pub struct App {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl App {
    /// Starts `tasklane` with the environment `env` (on top of a minimal one: the listen
    /// address, `warn` logs, PostgreSQL as the store) and waits until readiness answers 200.
    pub async fn spawn(env: &[(&str, String)]) -> App {
        let dir = std::env::temp_dir().join(format!(
            "tasklane-resilience-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let log = dir.join("tasklane.log");
        let port = free_port();
        let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
        // setpriv's parent-death signal: if the test process is killed (a nextest timeout), the
        // server goes with it instead of lingering on its port.
        let mut cmd = if std::path::Path::new("/usr/bin/setpriv").exists() {
            let mut cmd = Command::new("/usr/bin/setpriv");
            cmd.args(["--pdeathsig", "KILL", BIN]);
            cmd
        } else {
            Command::new(BIN)
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TASKLANE_LISTEN", format!("127.0.0.1:{port}"))
            .env("TASKLANE_LOG", "warn")
            .env("TASKLANE_STORE", "postgres")
            .env("TASKLANE_STARTUP_TIMEOUT_SECS", "20")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let mut app = App {
            child: Some(child),
            port,
            dir,
            log,
        };
        app.wait_until_ready().await;
        app
    }

    async fn wait_until_ready(&mut self) {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.try_wait() {
                panic!("tasklane exited at start ({status}): {}", self.log_tail(20));
            }
            if let Ok(res) = client.get(self.url("/api/health")).send().await {
                if res.status().as_u16() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tasklane not ready within 30 s: {}",
                self.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("tasklane is not running"))
    }

    /// Sends `SIGTERM`.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "kill -TERM failed");
    }

    /// The exit status, once it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// A guard for the test's own stack: if the test panics while it is alive, it prints the
    /// end of the server's log (an `App` shared with the load's tasks is dropped later, on
    /// another thread, where the panic is no longer visible).
    pub fn log_on_panic(&self) -> LogOnPanic {
        LogOnPanic(self.log.clone())
    }
}

fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// See [`App::log_on_panic`].
pub struct LogOnPanic(PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- tasklane log (last 40 lines) ---\n{}",
                log_tail(&self.0, 40)
            );
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- tasklane log (last 30 lines) ---\n{}",
                self.log_tail(30)
            );
        }
        if std::env::var_os("TASKLANE_RESILIENCE_KEEP_LOGS").is_some() {
            eprintln!("tasklane log kept: {}", self.log.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// An HTTP client with the [`CLIENT_TIMEOUT`].
pub fn client() -> Client {
    Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(64)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends the request and reads the whole body; an error is the transport's (timeout, refused,
/// reset), as text.
pub async fn exchange(req: RequestBuilder) -> Result<Reply, String> {
    let res = req.send().await.map_err(describe)?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.bytes().await.map_err(describe)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".to_owned()
    } else if e.is_connect() {
        "connect".to_owned()
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

/// One request as the load saw it.
#[derive(Debug, Clone)]
pub struct Rec {
    pub kind: &'static str,
    /// When it was sent, since the recorder's start.
    pub at: Duration,
    pub latency: Duration,
    pub status: Option<u16>,
    pub retry_after: bool,
    pub error: Option<String>,
}

impl Rec {
    /// A 2xx (or a 304).
    pub fn ok(&self) -> bool {
        matches!(self.status, Some(200..=299 | 304))
    }

    /// Sent at or after `from`, before `to` (since the recorder's start).
    pub fn sent_between(&self, from: Duration, to: Duration) -> bool {
        self.at >= from && self.at < to
    }

    pub fn describe(&self) -> String {
        match (&self.status, &self.error) {
            (Some(s), _) => format!("{} {s} after {:?}", self.kind, self.latency),
            (None, Some(e)) => format!("{} error {e} after {:?}", self.kind, self.latency),
            (None, None) => format!("{} ?", self.kind),
        }
    }
}

/// Every request a test's load sent, with its timing.
#[derive(Debug)]
pub struct Recorder {
    pub t0: Instant,
    recs: Mutex<Vec<Rec>>,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            t0: Instant::now(),
            recs: Mutex::new(Vec::with_capacity(64 * 1024)),
        }
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Sends `req`, records it as `kind`, and returns the reply.
    pub async fn send(&self, kind: &'static str, req: RequestBuilder) -> Result<Reply, String> {
        let at = self.now();
        let started = Instant::now();
        let result = exchange(req).await;
        let latency = started.elapsed();
        let rec = Rec {
            kind,
            at,
            latency,
            status: result.as_ref().ok().map(|r| r.status),
            retry_after: result
                .as_ref()
                .is_ok_and(|r| r.headers.contains_key("retry-after")),
            error: result.as_ref().err().cloned(),
        };
        self.recs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(rec);
        result
    }

    pub fn all(&self) -> Vec<Rec> {
        self.recs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Latency statistics of some requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub failed: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of<'a>(recs: impl IntoIterator<Item = &'a Rec>) -> Summary {
        let mut count = 0;
        let mut failed = 0;
        let mut latencies = Vec::new();
        for r in recs {
            count += 1;
            if !r.ok() {
                failed += 1;
            }
            latencies.push(r.latency);
        }
        latencies.sort();
        Summary {
            count,
            failed,
            p50: percentile(&latencies, 0.50),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }

    pub fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "non_2xx": self.failed,
            "p50_ms": ms(self.p50),
            "p99_ms": ms(self.p99),
            "max_ms": ms(self.max),
        })
    }
}

/// The `p` quantile (nearest rank) of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Milliseconds with one decimal, for figures.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The numbers `/metrics` reports, by series (`name` or `name{labels}`).
pub async fn metrics(client: &Client, app: &App) -> HashMap<String, f64> {
    let reply = exchange(client.get(app.url("/metrics")))
        .await
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    String::from_utf8_lossy(&reply.body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The cache's hit and miss counters.
pub async fn cache_counters(client: &Client, app: &App) -> (f64, f64, f64) {
    let m = metrics(client, app).await;
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    (
        get("tasklane_cache_hits_total"),
        get("tasklane_cache_misses_total"),
        get("tasklane_cache_errors_total"),
    )
}

/// A counter without labels, as `/metrics` says (0 when absent).
pub async fn counter(client: &Client, app: &App, name: &str) -> f64 {
    metrics(client, app).await.get(name).copied().unwrap_or(0.0)
}

/// The list pages updates were written through into, as `/metrics` says.
pub async fn cache_replaced(client: &Client, app: &App) -> f64 {
    counter(client, app, "tasklane_cache_replaced_total").await
}

/// The cache hits (list pages, task versions) served on a lease, without a round trip to
/// Redis, as `/metrics` says.
pub async fn cache_lease_hits(client: &Client, app: &App) -> f64 {
    counter(client, app, "tasklane_cache_lease_hits_total").await
}

/// The conditional task reads answered from a cached version, as `/metrics` says.
pub async fn cache_revalidation_hits(client: &Client, app: &App) -> f64 {
    counter(client, app, "tasklane_cache_revalidation_hits_total").await
}

/// The circuit breaker's state, as `/metrics` says.
pub async fn breaker_state(client: &Client, app: &App) -> String {
    let m = metrics(client, app).await;
    ["closed", "open", "half_open"]
        .into_iter()
        .find(|s| m.get(&format!("tasklane_cache_breaker_state{{state=\"{s}\"}}")) == Some(&1.0))
        .unwrap_or("unknown")
        .to_owned()
}

/// `GET /api/health`: the status code and the JSON body (`Null` when there was no answer).
pub async fn health(client: &Client, app: &App) -> (Option<u16>, Value) {
    match exchange(client.get(app.url("/api/health"))).await {
        Ok(reply) => (Some(reply.status), reply.json()),
        Err(_) => (None, Value::Null),
    }
}

/// A `POST /api/tasks` with this JSON body.
pub fn post_task(client: &Client, app: &App, body: &Value) -> RequestBuilder {
    client
        .post(app.url("/api/tasks"))
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// Creates `n` tasks (`seed-0`...), failing the test on any error.
pub async fn seed_tasks(client: &Client, app: &App, n: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let reply = exchange(post_task(
            client,
            app,
            &json!({ "title": format!("seed-{i}") }),
        ))
        .await
        .unwrap_or_else(|e| panic!("seed: {e}"));
        assert_eq!(reply.status, 201, "seed: {:?}", reply.body);
        ids.push(reply.json()["id"].as_i64().unwrap_or_default());
    }
    ids
}

/// Reads every task through the API, following the `Link: rel="next"` headers.
pub async fn list_all(client: &Client, app: &App) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next = Some("/api/tasks?limit=500".to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        pages += 1;
        assert!(pages <= 1000, "more than 1000 pages");
        let reply = exchange(client.get(app.url(&path)))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(reply.status, 200, "GET {path}: {:?}", reply.body);
        if let Value::Array(items) = reply.json() {
            out.extend(items);
        }
        next = reply
            .header("link")
            .and_then(|l| l.split_once('<'))
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(path, _)| path.to_owned());
    }
    out
}

/// What a test measured: printed in a block, and appended to `$TASKLANE_FIGURES_FILE` as one
/// JSON line (`{"test": ..., "figures": {...}}`).
#[derive(Debug)]
pub struct Figures {
    test: &'static str,
    items: serde_json::Map<String, Value>,
}

impl Figures {
    pub fn new(test: &'static str) -> Self {
        Self {
            test,
            items: serde_json::Map::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.items.insert(key.to_owned(), value.into());
    }

    pub fn set_ms(&mut self, key: &str, d: Duration) {
        self.set(key, ms(d));
    }

    /// Prints the figures and appends them to `$TASKLANE_FIGURES_FILE`. Called before the
    /// assertions, so that a failing run still records what it saw.
    pub fn emit(&self) {
        println!("\n=== figures: {} ===", self.test);
        for (k, v) in &self.items {
            println!("  {k:<40} {v}");
        }
        let line = json!({
            "test": self.test,
            "load_secs": load_duration().as_secs(),
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            "figures": self.items,
        });
        println!("FIGURES {line}");
        if let Some(path) = std::env::var_os("TASKLANE_FIGURES_FILE") {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = written {
                eprintln!(
                    "could not append figures to {}: {e}",
                    path.to_string_lossy()
                );
            }
        }
    }
}

/// Sleeps until `t0 + at`.
pub async fn sleep_until(t0: Instant, at: Duration) {
    tokio::time::sleep_until((t0 + at).into()).await;
}

/// Asserts that every request in `recs` that failed did so as a 503 with `Retry-After`, and
/// returns how many did.
pub fn assert_only_503_with_retry_after<'a>(recs: impl IntoIterator<Item = &'a Rec>) -> usize {
    let mut n = 0;
    for r in recs {
        if r.ok() {
            continue;
        }
        assert!(
            r.status == Some(503) && r.retry_after,
            "expected 503 with Retry-After, got {}",
            r.describe()
        );
        n += 1;
    }
    n
}
