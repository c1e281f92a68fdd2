//! Bad input: always a clear 4xx naming what is wrong, never a 5xx, never anything stored.

use crate::helpers::{body, header, spawn_app};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn bad_bodies_are_refused_with_the_right_status_and_store_nothing() {
    let app = spawn_app().await;
    let existing = app.create("keep me").await;
    let item = format!("/api/tasks/{}", existing["id"]);

    let long_title = "é".repeat(256);
    let long_description = "x".repeat(10_001);
    // (body, status, code, field)
    let cases: Vec<(String, u16, &str, Option<&str>)> = vec![
        ("{".into(), 400, "invalid_json", None),
        ("not json".into(), 400, "invalid_json", None),
        ("[1,2]".into(), 400, "invalid_json", None),
        ("\"title\"".into(), 400, "invalid_json", None),
        ("null".into(), 400, "invalid_json", None),
        ("{}".into(), 422, "validation_failed", Some("title")),
        (
            json!({"title": ""}).to_string(),
            422,
            "validation_failed",
            Some("title"),
        ),
        (
            json!({"title": "   \t"}).to_string(),
            422,
            "validation_failed",
            Some("title"),
        ),
        (
            json!({"title": 5}).to_string(),
            422,
            "validation_failed",
            Some("title"),
        ),
        (
            json!({"title": null}).to_string(),
            422,
            "validation_failed",
            Some("title"),
        ),
        (
            json!({"title": ["a"]}).to_string(),
            422,
            "validation_failed",
            Some("title"),
        ),
        (
            json!({"title": long_title}).to_string(),
            422,
            "validation_failed",
            Some("title"),
        ),
        (
            json!({"title": "a\u{0}b"}).to_string(),
            422,
            "validation_failed",
            Some("title"),
        ),
        (
            json!({"title": "ok", "description": long_description}).to_string(),
            422,
            "validation_failed",
            Some("description"),
        ),
        (
            json!({"title": "ok", "description": "nul\u{0}"}).to_string(),
            422,
            "validation_failed",
            Some("description"),
        ),
        (
            json!({"title": "ok", "description": 3}).to_string(),
            422,
            "validation_failed",
            Some("description"),
        ),
        (
            json!({"title": "ok", "status": "finished"}).to_string(),
            422,
            "validation_failed",
            Some("status"),
        ),
        (
            json!({"title": "ok", "status": null}).to_string(),
            422,
            "validation_failed",
            Some("status"),
        ),
        (
            json!({"title": "ok", "status": 1}).to_string(),
            422,
            "validation_failed",
            Some("status"),
        ),
        (
            json!({"title": "ok", "colour": "red"}).to_string(),
            422,
            "validation_failed",
            Some("colour"),
        ),
    ];
    for (raw, status, code, field) in &cases {
        let res = app
            .send(
                app.request(Method::POST, "/api/tasks")
                    .header("Content-Type", "application/json")
                    .body(raw.clone()),
            )
            .await;
        assert_eq!(res.status().as_u16(), *status, "POST {raw:.80}");
        let err = body(res).await;
        assert_eq!(err["code"], *code, "POST {raw:.80}: {err}");
        assert!(err["error"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(err["field"].as_str(), *field, "POST {raw:.80}: {err}");
    }
    // The same bodies as updates (except that a missing title is fine there).
    for (raw, status, code, field) in cases.iter().filter(|c| c.0 != "{}") {
        let res = app
            .send(
                app.request(Method::PUT, &item)
                    .header("Content-Type", "application/json")
                    .body(raw.clone()),
            )
            .await;
        assert_eq!(res.status().as_u16(), *status, "PUT {raw:.80}");
        let err = body(res).await;
        assert_eq!(err["code"], *code, "PUT {raw:.80}: {err}");
        assert_eq!(err["field"].as_str(), *field, "PUT {raw:.80}: {err}");
    }

    assert_eq!(app.count_tasks().await, 1, "nothing was stored");
    let after = body(app.get(&item).await).await;
    assert_eq!(after, existing, "nothing was changed");
}

#[tokio::test]
async fn exactly_at_the_limits_is_accepted() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/api/tasks",
            &json!({"title": "🦀".repeat(255), "description": "ß".repeat(10_000)}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let task = body(res).await;
    assert_eq!(task["title"].as_str().map(|t| t.chars().count()), Some(255));
}

#[tokio::test]
async fn oversized_bodies_are_413_and_non_json_bodies_415() {
    let app = spawn_app().await;
    let huge = json!({"title": "x", "description": "y".repeat(70 * 1024)}).to_string();
    let res = app
        .send(
            app.request(Method::POST, "/api/tasks")
                .header("Content-Type", "application/json")
                .body(huge),
        )
        .await;
    assert_eq!(res.status(), 413);
    assert_eq!(body(res).await["code"], "payload_too_large");

    let mib = "z".repeat(1024 * 1024);
    let res = app
        .send(
            app.request(Method::POST, "/api/tasks")
                .header("Content-Type", "application/json")
                .body(mib),
        )
        .await;
    assert_eq!(res.status(), 413);

    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut rb = app
            .request(Method::POST, "/api/tasks")
            .body(r#"{"title":"x"}"#);
        if let Some(ct) = ct {
            rb = rb.header("Content-Type", ct);
        }
        let res = app.send(rb).await;
        assert_eq!(res.status(), 415, "{ct:?}");
        assert_eq!(body(res).await["code"], "unsupported_media_type");
    }
    assert_eq!(app.count_tasks().await, 0);
}

#[tokio::test]
async fn bad_list_parameters_are_400() {
    let app = spawn_app().await;
    for (qs, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=501", "invalid_limit"),
        ("limit=100000", "invalid_limit"),
        ("limit=-5", "invalid_limit"),
        ("limit=ten", "invalid_limit"),
        ("cursor=garbage", "invalid_cursor"),
        ("cursor=YzEueC4y", "invalid_cursor"),
        ("status=finished", "invalid_status"),
        ("status=DONE", "invalid_status"),
        ("limit=5&limit=6", "invalid_query"),
    ] {
        let res = app.get(&format!("/api/tasks?{qs}")).await;
        assert_eq!(res.status(), 400, "{qs}");
        let err: Value = body(res).await;
        assert_eq!(err["code"], code, "{qs}");
        assert!(header_is_json(&err));
    }
    let res = app.get(&format!("/api/tasks?q={}", "a".repeat(300))).await;
    assert_eq!(res.status(), 400);
}

fn header_is_json(err: &Value) -> bool {
    err["error"].is_string()
}

#[tokio::test]
async fn unicode_and_hostile_text_round_trips_exactly() {
    let app = spawn_app().await;
    let title = "<img src=x onerror=alert(1)> '; DROP TABLE tasks; -- 🦀 \u{202e}";
    let res = app.post_json("/api/tasks", &json!({"title": title})).await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some("application/json")
    );
    let task = body(res).await;
    assert_eq!(task["title"], title);
    let list = app.list("").await;
    assert_eq!(list[0]["title"], title);
}
