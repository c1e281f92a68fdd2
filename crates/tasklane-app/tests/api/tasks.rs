//! Create, read, update (PUT and PATCH), delete, counts, and the headers every answer carries.

use crate::helpers::{body, header, id_of, spawn_app, spawn_app_with, Options};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn create_applies_defaults_and_answers_201_with_location_and_etag() {
    let app = spawn_app().await;
    let res = app
        .post_json("/api/tasks", &json!({"title": "Only a title"}))
        .await;
    assert_eq!(res.status(), 201);
    let id_location = header(&res, "location");
    let etag = header(&res, "etag");
    let task = body(res).await;
    assert_eq!(id_location, Some(format!("/api/tasks/{}", task["id"])));
    assert_eq!(etag.as_deref(), Some("\"v1\""));
    assert_eq!(task["description"], "");
    assert_eq!(task["status"], "todo");
    assert_eq!(task["version"], 1);
    assert_eq!(task["created_at"], task["updated_at"]);
    let created = chrono::DateTime::parse_from_rfc3339(task["created_at"].as_str().unwrap_or(""));
    assert!(
        created.is_ok(),
        "created_at is RFC 3339: {}",
        task["created_at"]
    );

    let res = app.get(&format!("/api/tasks/{}", task["id"])).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, task);
}

#[tokio::test]
async fn put_and_patch_change_only_the_given_fields_and_move_version_and_updated_at() {
    let app = spawn_app().await;
    let task = app.create("Original").await;
    let path = format!("/api/tasks/{}", task["id"]);

    let res = app
        .send(
            app.request(Method::PATCH, &path)
                .header("Content-Type", "application/merge-patch+json")
                .body(r#"{"description":"new words"}"#),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "etag").as_deref(), Some("\"v2\""));
    let patched = body(res).await;
    assert_eq!(patched["title"], "Original");
    assert_eq!(patched["description"], "new words");
    assert_eq!(patched["version"], 2);
    assert!(patched["updated_at"].as_str() > task["updated_at"].as_str());

    // A client can GET, edit and PUT the whole object back: read-only fields are ignored.
    let mut whole = patched.clone();
    whole["title"] = json!("Renamed");
    whole["id"] = json!(999);
    whole["version"] = json!(77);
    let res = app.put_json(&path, &whole).await;
    assert_eq!(res.status(), 200);
    let put = body(res).await;
    assert_eq!(put["id"], task["id"]);
    assert_eq!(put["title"], "Renamed");
    assert_eq!(put["version"], 3);
    assert_eq!(put["created_at"], task["created_at"]);

    // A null description means "".
    let res = app.put_json(&path, &json!({"description": null})).await;
    assert_eq!(body(res).await["description"], "");

    // An empty patch still counts as a change.
    let res = app.put_json(&path, &json!({})).await;
    assert_eq!(body(res).await["version"], 5);
}

#[tokio::test]
async fn delete_then_everything_about_the_task_is_404() {
    let app = spawn_app().await;
    let task = app.create("Doomed").await;
    let path = format!("/api/tasks/{}", task["id"]);
    let res = app.delete(&path).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, json!({"message": "Task deleted"}));
    for res in [
        app.get(&path).await,
        app.delete(&path).await,
        app.put_json(&path, &json!({"status": "done"})).await,
    ] {
        assert_eq!(res.status(), 404);
        let err = body(res).await;
        assert_eq!(err["error"], "Task not found");
        assert_eq!(err["code"], "task_not_found");
    }
}

#[tokio::test]
async fn ids_that_name_no_task_are_404() {
    let app = spawn_app().await;
    for id in [
        "abc",
        "-1",
        "0",
        "1.5",
        "99999999999999999999",
        "%20",
        "12abc",
        "%2F",
        "1%2F2",
        "%2B1",
        "+1",
    ] {
        let res = app.get(&format!("/api/tasks/{id}")).await;
        assert_eq!(res.status(), 404, "GET {id}");
        assert_eq!(body(res).await["code"], "task_not_found");
        let res = app
            .put_json(&format!("/api/tasks/{id}"), &json!({"title": "x"}))
            .await;
        assert_eq!(res.status(), 404, "PUT {id}");
        let res = app.delete(&format!("/api/tasks/{id}")).await;
        assert_eq!(res.status(), 404, "DELETE {id}");
    }
    let res = app.get("/api/nothing-here").await;
    assert_eq!(res.status(), 404);
    assert_eq!(body(res).await["code"], "not_found");
}

#[tokio::test]
async fn percent_encoded_digits_name_the_task() {
    // The request line is decoded before routing, so an id's digits may arrive encoded.
    let app = spawn_app().await;
    let id = id_of(&app.create("encoded").await);
    let encoded: String = id
        .to_string()
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect();
    let res = app.get(&format!("/api/tasks/{encoded}")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await["id"], id);
    let res = app
        .put_json(&format!("/api/tasks/{encoded}"), &json!({"title": "y"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await["title"], "y");
}

#[tokio::test]
async fn counts_follow_every_write() {
    let app = spawn_app().await;
    let a = app.create("a").await;
    let b = app.create("b").await;
    app.post_json("/api/tasks", &json!({"title": "c", "status": "done"}))
        .await;
    let counts = body(app.get("/api/tasks/counts").await).await;
    assert_eq!(
        counts,
        json!({"todo": 2, "in_progress": 0, "done": 1, "total": 3})
    );

    app.put_json(
        &format!("/api/tasks/{}", id_of(&a)),
        &json!({"status": "in_progress"}),
    )
    .await;
    app.delete(&format!("/api/tasks/{}", id_of(&b))).await;
    let counts = body(app.get("/api/tasks/counts").await).await;
    assert_eq!(
        counts,
        json!({"todo": 0, "in_progress": 1, "done": 1, "total": 2})
    );
}

#[tokio::test]
async fn every_api_answer_carries_the_security_headers_and_a_request_id() {
    let app = spawn_app().await;
    for res in [
        app.get("/api/tasks").await,
        app.get("/api/tasks/424242").await,
        app.get("/api/health").await,
        app.post_json("/api/tasks", &json!({})).await,
    ] {
        assert_eq!(header(&res, "cache-control").as_deref(), Some("no-cache"));
        assert_eq!(
            header(&res, "x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(
            header(&res, "referrer-policy").as_deref(),
            Some("no-referrer")
        );
        assert_eq!(header(&res, "x-frame-options").as_deref(), Some("DENY"));
        assert!(header(&res, "content-security-policy").is_some());
        assert!(header(&res, "x-request-id").is_some_and(|id| id.len() >= 16));
    }
    // A caller's plain request id is kept; a hostile one is replaced.
    let res = app
        .send(
            app.request(Method::GET, "/api/tasks")
                .header("X-Request-Id", "trace-123"),
        )
        .await;
    assert_eq!(header(&res, "x-request-id").as_deref(), Some("trace-123"));
    let res = app
        .send(
            app.request(Method::GET, "/api/tasks")
                .header("X-Request-Id", "<script>alert(1)</script>"),
        )
        .await;
    assert_ne!(
        header(&res, "x-request-id").as_deref(),
        Some("<script>alert(1)</script>")
    );
}

/// A 304 repeats what a cache needs (RFC 9110 section 15.4.5) and not the security headers:
/// the response the client holds has them, and it keeps them. The same for the page.
#[tokio::test]
async fn a_304_carries_only_what_a_cache_needs() {
    let app = spawn_app().await;
    let task = app.create("held").await;
    for path in [
        format!("/api/tasks/{}", task["id"]),
        "/api/tasks".to_owned(),
        "/".to_owned(),
    ] {
        let held = app.get(&path).await;
        assert_eq!(held.status(), 200, "{path}");
        assert_eq!(
            held.headers()
                .get_all("content-security-policy")
                .iter()
                .count(),
            1,
            "{path}"
        );
        let etag = header(&held, "etag").unwrap_or_default();
        let res = app
            .send(
                app.request(Method::GET, &path)
                    .header("If-None-Match", &etag),
            )
            .await;
        assert_eq!(res.status(), 304, "{path}");
        assert_eq!(header(&res, "etag"), Some(etag), "{path}");
        assert_eq!(header(&res, "cache-control").as_deref(), Some("no-cache"));
        assert!(header(&res, "x-request-id").is_some_and(|id| id.len() >= 16));
        for name in [
            "x-content-type-options",
            "referrer-policy",
            "x-frame-options",
            "content-security-policy",
        ] {
            assert_eq!(header(&res, name), None, "{path}: {name}");
        }
    }
}

#[tokio::test]
async fn unknown_methods_are_405_with_allow() {
    let app = spawn_app().await;
    let cases = [
        ("TRACE", "/api/tasks", "GET, HEAD, POST"),
        ("DELETE", "/api/tasks", "GET, HEAD, POST"),
        ("POST", "/api/tasks/1", "GET, HEAD, PUT, PATCH, DELETE"),
        ("PUT", "/api/health", "GET, HEAD"),
        ("POST", "/api/tasks/counts", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let res = app.send(app.request(method.clone(), path)).await;
        assert_eq!(res.status(), 405, "{method} {path}");
        assert_eq!(
            header(&res, "allow").as_deref(),
            Some(allow),
            "{method} {path}"
        );
        assert_eq!(body(res).await["code"], "method_not_allowed");
    }
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_listed() {
    let app = spawn_app().await;
    let preflight = |app: &crate::helpers::TestApp| {
        app.request(Method::OPTIONS, "/api/tasks")
            .header("Origin", "https://evil.example")
            .header("Access-Control-Request-Method", "POST")
    };
    let res = app.send(preflight(&app)).await;
    assert!(header(&res, "access-control-allow-origin").is_none());
    let res = app
        .send(
            app.request(Method::GET, "/api/tasks")
                .header("Origin", "https://evil.example"),
        )
        .await;
    assert!(header(&res, "access-control-allow-origin").is_none());

    let app = spawn_app_with(Options {
        extra: vec![("TASKLANE_CORS_ORIGINS", "https://ok.example".into())],
        ..Options::default()
    })
    .await;
    let res = app
        .send(
            app.request(Method::OPTIONS, "/api/tasks")
                .header("Origin", "https://ok.example")
                .header("Access-Control-Request-Method", "POST"),
        )
        .await;
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some("https://ok.example")
    );
    let res = app.send(preflight(&app)).await;
    assert!(header(&res, "access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let app = spawn_app().await;
    let res = app.get("/api/openapi.json").await;
    assert_eq!(res.status(), 200);
    let doc = body(res).await;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/api/health", &["get"][..]),
        ("/api/health/live", &["get"]),
        ("/api/tasks", &["get", "post"]),
        ("/api/tasks/counts", &["get"]),
        ("/api/tasks/{id}", &["get", "put", "patch", "delete"]),
        ("/api/openapi.json", &["get"]),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{m} {path} missing");
        }
    }
    for code in ["201", "400", "413", "415", "422"] {
        assert!(
            paths["/api/tasks"]["post"]["responses"][code].is_object(),
            "{code}"
        );
    }
    assert!(paths["/api/tasks/{id}"]["put"]["responses"]["412"].is_object());
}

#[tokio::test]
async fn head_works_where_get_does_and_sends_no_body() {
    let app = spawn_app().await;
    app.create("x").await;
    let res = app.send(app.request(Method::HEAD, "/api/tasks")).await;
    assert_eq!(res.status(), 200);
    assert!(header(&res, "etag").is_some());
    assert!(res.bytes().await.map(|b| b.is_empty()).unwrap_or(false));
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_report_cache_pool_and_breaker() {
    let app = spawn_app().await;
    app.create("m").await;
    for _ in 0..3 {
        app.list("").await;
    }
    app.get("/api/tasks/987654").await;
    app.get("/no/such/thing/at/all").await;
    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(header(&res, "content-type").is_some_and(|c| c.starts_with("text/plain")));
    let text = res.text().await.unwrap_or_default();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert_eq!(
        value(r#"tasklane_http_requests_total{method="GET",route="/api/tasks",status="200"}"#),
        3.0
    );
    assert_eq!(
        value(r#"tasklane_http_requests_total{method="POST",route="/api/tasks",status="201"}"#),
        1.0
    );
    assert_eq!(
        value(r#"tasklane_http_requests_total{method="GET",route="/api/tasks/{id}",status="404"}"#),
        1.0
    );
    assert!(text.contains(r#"route="unmatched""#));
    assert!(text.contains("tasklane_http_request_duration_seconds_bucket"));
    assert_eq!(value("tasklane_cache_misses_total"), 1.0);
    assert_eq!(value("tasklane_cache_hits_total"), 2.0);
    assert_eq!(value("tasklane_cache_errors_total"), 0.0);
    assert!(value("tasklane_db_pool_max") >= 1.0);
    assert_eq!(value("tasklane_db_pool_waiting"), 0.0);
    // Half the pool by default; nothing searched just now.
    assert_eq!(
        value("tasklane_db_search_slots"),
        (value("tasklane_db_pool_max") / 2.0).floor().max(1.0)
    );
    assert_eq!(value("tasklane_db_searches_running"), 0.0);
    assert_eq!(value("tasklane_db_searches_waiting"), 0.0);
    // One client, one update at a time: nothing to combine.
    assert_eq!(value("tasklane_db_updates_waiting"), 0.0);
    assert_eq!(value("tasklane_db_updates_combined_total"), 0.0);
    // One list read at a time: nothing to join.
    assert_eq!(value("tasklane_db_lists_joined_total"), 0.0);
    assert_eq!(
        value(r#"tasklane_cache_breaker_state{state="closed"}"#),
        1.0
    );
}
