//! ETags, `If-None-Match` (304) and `If-Match` (412): no lost updates between two tabs.

use crate::helpers::{body, header, spawn_app, spawn_app_with, Options, TestApp};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn if_none_match_gives_304_until_the_task_changes() {
    let app = spawn_app().await;
    let task = app.create("cached").await;
    let path = format!("/api/tasks/{}", task["id"]);
    let res = app.get(&path).await;
    let etag = header(&res, "etag").unwrap_or_default();
    assert_eq!(etag, "\"v1\"");

    let res = app
        .send(
            app.request(Method::GET, &path)
                .header("If-None-Match", &etag),
        )
        .await;
    assert_eq!(res.status(), 304);
    assert_eq!(header(&res, "etag").as_deref(), Some(etag.as_str()));

    app.put_json(&path, &json!({"title": "changed"})).await;
    let res = app
        .send(
            app.request(Method::GET, &path)
                .header("If-None-Match", &etag),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "etag").as_deref(), Some("\"v2\""));
}

/// A conditional GET with the task's current ETag.
async fn revalidate(app: &TestApp, path: &str, etag: &str) -> reqwest::Response {
    app.send(app.request(Method::GET, path).header("If-None-Match", etag))
        .await
}

#[tokio::test]
async fn a_revalidation_is_answered_from_the_cached_version_until_any_replica_writes() {
    // Counted outcomes: a cache call slower than the default 100 ms budget on a loaded machine
    // would read the store instead and be counted as a miss.
    let generous = || vec![("TASKLANE_CACHE_TIMEOUT_MS", "5000".to_owned())];
    let app = spawn_app_with(Options {
        extra: generous(),
        ..Options::default()
    })
    .await;
    let replica = app.spawn_replica(generous()).await;
    let task = app.create("polled").await;
    let path = format!("/api/tasks/{}", task["id"]);

    // The first revalidation reads the database and caches the version; the next ones are
    // answered from it.
    let res = revalidate(&app, &path, "\"v1\"").await;
    assert_eq!(res.status(), 304);
    assert_eq!(
        app.metric("tasklane_cache_revalidation_misses_total").await,
        1.0
    );
    for _ in 0..3 {
        let res = revalidate(&app, &path, "W/\"v1\"").await;
        assert_eq!(res.status(), 304);
        assert_eq!(header(&res, "etag").as_deref(), Some("\"v1\""));
    }
    assert_eq!(
        app.metric("tasklane_cache_revalidation_hits_total").await,
        3.0
    );
    assert_eq!(
        app.metric("tasklane_cache_revalidation_misses_total").await,
        1.0
    );

    // A write acknowledged by the other replica: the cached version is not served again.
    let res = replica.put_json(&path, &json!({"title": "changed"})).await;
    assert_eq!(res.status(), 200);
    let res = revalidate(&app, &path, "\"v1\"").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "etag").as_deref(), Some("\"v2\""));
    assert_eq!(body(res).await["title"], "changed");

    // The new version is cached in turn; a client with another tag gets the task.
    assert_eq!(revalidate(&app, &path, "\"v2\"").await.status(), 304);
    assert_eq!(revalidate(&app, &path, "\"v2\"").await.status(), 304);
    assert_eq!(
        app.metric("tasklane_cache_revalidation_hits_total").await,
        5.0
    );
    let res = revalidate(&app, &path, "\"v1\", \"v7\"").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "etag").as_deref(), Some("\"v2\""));
    assert_eq!(revalidate(&app, &path, "*").await.status(), 304);

    // Deleted by the other replica: gone here too, whatever tag is sent.
    assert_eq!(replica.delete(&path).await.status(), 200);
    assert_eq!(revalidate(&app, &path, "\"v2\"").await.status(), 404);
    assert_eq!(revalidate(&app, &path, "*").await.status(), 404);
}

#[tokio::test]
async fn a_revalidation_without_a_cache_reads_the_database() {
    let app = spawn_app_with(Options {
        redis_url: None,
        ..Options::default()
    })
    .await;
    let task = app.create("uncached").await;
    let path = format!("/api/tasks/{}", task["id"]);
    assert_eq!(revalidate(&app, &path, "\"v1\"").await.status(), 304);
    app.put_json(&path, &json!({"status": "done"})).await;
    let res = revalidate(&app, &path, "\"v1\"").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "etag").as_deref(), Some("\"v2\""));
    assert_eq!(
        app.metric("tasklane_cache_revalidation_hits_total").await,
        0.0
    );
}

#[tokio::test]
async fn lists_carry_an_etag_that_changes_with_their_content() {
    let app = spawn_app().await;
    app.create("one").await;
    let res = app.get("/api/tasks").await;
    let etag = header(&res, "etag").unwrap_or_default();
    assert!(etag.starts_with('"'));
    let res = app
        .send(
            app.request(Method::GET, "/api/tasks")
                .header("If-None-Match", &etag),
        )
        .await;
    assert_eq!(res.status(), 304);
    app.create("two").await;
    let res = app
        .send(
            app.request(Method::GET, "/api/tasks")
                .header("If-None-Match", &etag),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await.as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn if_match_stops_the_second_tab_from_overwriting_the_first() {
    let app = spawn_app().await;
    let task = app.create("shared").await;
    let path = format!("/api/tasks/{}", task["id"]);
    let etag = header(&app.get(&path).await, "etag").unwrap_or_default();

    // Tab one saves.
    let res = app
        .send(
            app.request(Method::PATCH, &path)
                .header("If-Match", &etag)
                .json(&json!({"title": "tab one"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    // Tab two, still holding the old ETag, is refused, and nothing is written.
    for method in [Method::PUT, Method::PATCH] {
        let res = app
            .send(
                app.request(method, &path)
                    .header("If-Match", &etag)
                    .json(&json!({"title": "tab two"})),
            )
            .await;
        assert_eq!(res.status(), 412);
        assert_eq!(body(res).await["code"], "precondition_failed");
    }
    let res = app
        .send(app.request(Method::DELETE, &path).header("If-Match", &etag))
        .await;
    assert_eq!(res.status(), 412);
    let now = body(app.get(&path).await).await;
    assert_eq!(now["title"], "tab one");
    assert_eq!(now["version"], 2);

    // Weak tags and junk never match; `*` matches any existing task.
    for tag in ["W/\"v2\"", "junk", "\"v99\""] {
        let res = app
            .send(
                app.request(Method::PUT, &path)
                    .header("If-Match", tag)
                    .json(&json!({"title": "x"})),
            )
            .await;
        assert_eq!(res.status(), 412, "{tag}");
    }
    let res = app
        .send(
            app.request(Method::PUT, &path)
                .header("If-Match", "*")
                .json(&json!({"status": "done"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .send(
            app.request(Method::DELETE, &path)
                .header("If-Match", "\"v3\""),
        )
        .await;
    assert_eq!(res.status(), 200);
    // On a task that does not exist, If-Match cannot turn a 404 into a 412.
    let res = app
        .send(
            app.request(Method::DELETE, &path)
                .header("If-Match", "\"v3\""),
        )
        .await;
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn concurrent_conditional_updates_let_exactly_one_win() {
    let app = spawn_app().await;
    let task = app.create("race").await;
    let path = format!("/api/tasks/{}", task["id"]);
    let mut handles = Vec::new();
    for i in 0..10 {
        let rb = app
            .request(Method::PUT, &path)
            .header("If-Match", "\"v1\"")
            .json(&json!({"title": format!("writer {i}")}));
        handles.push(tokio::spawn(async move {
            rb.send().await.map(|r| r.status().as_u16())
        }));
    }
    let mut statuses = Vec::new();
    for h in handles {
        statuses.push(h.await.ok().and_then(Result::ok).unwrap_or(0));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        9,
        "{statuses:?}"
    );
    assert_eq!(body(app.get(&path).await).await["version"], 2);
}
