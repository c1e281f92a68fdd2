//! Readiness and liveness, with the database or the cache gone.

use crate::helpers::{body, header, spawn_app, spawn_app_with, Options};
use tasklane_testkit::redis::RedisServer;

#[tokio::test]
async fn liveness_checks_nothing_and_readiness_reports_both_dependencies() {
    let app = spawn_app().await;
    let res = app.get("/api/health/live").await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await["status"], "alive");
    let res = app.get("/api/health").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "cache-control").as_deref(), Some("no-cache"));
}

#[tokio::test]
async fn redis_down_is_degraded_but_ready_and_requests_still_succeed() {
    let mut redis = RedisServer::spawn()
        .await
        .unwrap_or_else(|e| panic!("redis-server: {e}"));
    let app = spawn_app_with(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let first = app.create("before").await;
    assert_eq!(app.list("").await.len(), 1);

    redis.stop().await;

    let res = app.get("/api/health").await;
    assert_eq!(res.status(), 200);
    let health = body(res).await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["cache"], "disconnected");
    assert_eq!(health["database"], "connected");
    // Reads and writes still work, and reads see the writes.
    let second = app.create("during").await;
    let res = app
        .put_json(
            &format!("/api/tasks/{}", first["id"]),
            &serde_json::json!({"status": "done"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let list = app.list("").await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], second["id"]);
    assert_eq!(list[1]["status"], "done");

    // Redis comes back: the writes made while it was away must not be hidden by old entries.
    redis
        .start()
        .await
        .unwrap_or_else(|e| panic!("redis restart: {e}"));
    let third = app.create("after").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen = app.list("").await;
    }
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0]["id"], third["id"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let health = body(app.get("/api/health").await).await;
        if health["cache"] == "connected" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cache never reconnected: {health}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_unreachable_redis_from_the_start_does_not_stop_anything() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().map(|a| a.port()).unwrap_or_default()
    };
    let app = spawn_app_with(Options {
        redis_url: Some(format!("redis://127.0.0.1:{port}/0")),
        ..Options::default()
    })
    .await;
    app.create("x").await;
    assert_eq!(app.list("").await.len(), 1);
    let health = body(app.get("/api/health").await).await;
    assert_eq!(health["status"], "degraded");
}

#[tokio::test]
async fn without_redis_the_cache_is_reported_disabled() {
    let app = spawn_app_with(Options {
        redis_url: None,
        ..Options::default()
    })
    .await;
    app.create("x").await;
    assert_eq!(app.list("").await.len(), 1);
    let health = body(app.get("/api/health").await).await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["cache"], "disabled");
}

#[tokio::test]
async fn database_gone_is_503_with_retry_after_and_never_a_hang() {
    let app = spawn_app().await;
    app.create("x").await;
    // Take this test's own database away (the shared server stays up for everyone else).
    app.db.drop_now().await;

    let started = std::time::Instant::now();
    let res = app.get("/api/health").await;
    assert_eq!(res.status(), 503);
    assert_eq!(header(&res, "retry-after").as_deref(), Some("1"));
    let health = body(res).await;
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["database"], "disconnected");

    let res = app.get("/api/tasks/1").await;
    assert_eq!(res.status(), 503);
    assert_eq!(header(&res, "retry-after").as_deref(), Some("1"));
    let res = app.create_raw("y").await;
    assert_eq!(res.status(), 503);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "three requests took {:?}",
        started.elapsed()
    );
}
