//! Starting the real server for a test, and a small client around it.

use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use tasklane_app::settings::Settings;
use tasklane_app::startup::Application;
use tasklane_testkit::db::TestDb;
use tasklane_testkit::redis::{shared_redis_url, SharedPrefix};

/// A running server with its own database and Redis key prefix.
pub struct TestApp {
    pub address: String,
    pub client: Client,
    pub db: TestDb,
    /// The Redis key prefix its cache uses.
    pub prefix: String,
    /// The prefix's keys, deleted when the server that made the prefix is dropped (a replica
    /// shares them and leaves them to it).
    _keys: Option<SharedPrefix>,
}

/// How a test wants its server.
pub struct Options {
    /// `Some(url)`: that Redis; `None`: no cache at all.
    pub redis_url: Option<String>,
    pub extra: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            redis_url: Some(shared_redis_url()),
            extra: Vec::new(),
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let db = TestDb::new().await;
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("TASKLANE_LISTEN".into(), "127.0.0.1:0".into());
    env.insert("DATABASE_URL".into(), db.url());
    if let Some(url) = options.redis_url {
        env.insert("REDIS_URL".into(), url);
    }
    let replica = options
        .extra
        .iter()
        .any(|(k, _)| *k == "TASKLANE_CACHE_KEY_PREFIX");
    let keys = (!replica).then(SharedPrefix::new);
    if let Some(keys) = &keys {
        env.insert("TASKLANE_CACHE_KEY_PREFIX".into(), keys.to_string());
    }
    env.insert("TASKLANE_WORKERS".into(), "2".into());
    env.insert("TASKLANE_DRAIN_DELAY_MS".into(), "0".into());
    env.insert("TASKLANE_STARTUP_TIMEOUT_SECS".into(), "5".into());
    // Eight tests at once on two cores: opening a connection can take longer than the
    // production default of 500 ms, which would turn a slow machine into a flaky 503. The
    // timeouts themselves are tested by the resilience suite.
    env.insert("TASKLANE_DB_WAIT_TIMEOUT_MS".into(), "5000".into());
    env.insert("TASKLANE_DB_CONNECT_TIMEOUT_MS".into(), "5000".into());
    env.insert("TASKLANE_DB_QUERY_TIMEOUT_MS".into(), "10000".into());
    for (k, v) in options.extra {
        env.insert(k.into(), v);
    }
    let prefix = env["TASKLANE_CACHE_KEY_PREFIX"].clone();
    let settings =
        Settings::load(|name| env.get(name).cloned()).unwrap_or_else(|e| panic!("settings: {e}"));
    tasklane_app::telemetry::init(settings.log_format, "warn");
    let app = Application::build(settings)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_else(|e| panic!("client: {e}")),
        db,
        prefix,
        _keys: keys,
    }
}

impl TestApp {
    /// Another server on the same database and the same Redis keys, with `extra` settings: a
    /// second replica.
    pub async fn spawn_replica(&self, mut extra: Vec<(&'static str, String)>) -> TestApp {
        extra.push(("DATABASE_URL", self.db.url()));
        extra.push(("TASKLANE_CACHE_KEY_PREFIX", self.prefix.clone()));
        spawn_app_with(Options {
            extra,
            ..Options::default()
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn send(&self, rb: RequestBuilder) -> Response {
        rb.send()
            .await
            .unwrap_or_else(|e| panic!("request failed: {e}"))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Response {
        self.send(self.request(Method::PUT, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// A counter or gauge without labels from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Creates a task and returns its JSON, asserting a 201.
    pub async fn create(&self, title: &str) -> Value {
        let res = self
            .post_json("/api/tasks", &json!({"title": title, "description": "d"}))
            .await;
        assert_eq!(res.status(), 201, "create {title}");
        body(res).await
    }

    /// Sends a create without judging the answer.
    pub async fn create_raw(&self, title: &str) -> Response {
        self.post_json("/api/tasks", &json!({"title": title})).await
    }

    /// The first page of the list (limit 500).
    pub async fn list(&self, query: &str) -> Vec<Value> {
        let res = self.get(&format!("/api/tasks?limit=500{query}")).await;
        assert_eq!(res.status(), 200);
        body(res).await.as_array().cloned().unwrap_or_default()
    }

    pub async fn count_tasks(&self) -> u64 {
        let counts = body(self.get("/api/tasks/counts").await).await;
        counts["total"].as_u64().unwrap_or(u64::MAX)
    }
}

impl TestApp {
    /// Inserts tasks in one transaction, so they share `created_at`; returns their ids.
    pub async fn insert_same_instant(&self, titles: &[&str]) -> Vec<i64> {
        let client = self.db.client().await;
        let mut ids = Vec::new();
        client
            .batch_execute("BEGIN")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for title in titles {
            let row = client
                .query_one(
                    "INSERT INTO tasks (title) VALUES ($1) RETURNING id",
                    &[title],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            ids.push(row.get::<_, i64>(0));
        }
        client
            .batch_execute("COMMIT")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ids
    }
}

pub async fn body(res: Response) -> Value {
    let text = res.text().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

pub fn header(res: &Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub fn id_of(task: &Value) -> i64 {
    task["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {task}"))
}
