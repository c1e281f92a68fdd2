//! `Idempotency-Key` on `POST /api/tasks`: a retried create returns the first response and
//! creates nothing; a key reused with another body is 422; a duplicate sent while the first is
//! running is 409 or the first response, never a second task.

use crate::helpers::{body, header, id_of, spawn_app, TestApp};
use reqwest::{Method, Response};
use serde_json::{json, Value};

async fn post_keyed(app: &TestApp, key: &str, task: &Value) -> Response {
    app.send(
        app.request(Method::POST, "/api/tasks")
            .header("Idempotency-Key", key)
            .json(task),
    )
    .await
}

/// What a client sees of a create: status, body, `Location`, `ETag`, `Idempotent-Replayed`.
async fn seen(res: Response) -> (u16, Value, Option<String>, Option<String>, Option<String>) {
    let status = res.status().as_u16();
    let location = header(&res, "location");
    let etag = header(&res, "etag");
    let replayed = header(&res, "idempotent-replayed");
    (status, body(res).await, location, etag, replayed)
}

#[tokio::test]
async fn a_retried_create_returns_the_first_response_and_creates_nothing() {
    let app = spawn_app().await;
    let task =
        json!({"title": "Pay rent", "description": "before the 5th", "status": "in_progress"});

    let (status, first, location, etag, replayed) =
        seen(post_keyed(&app, "retry-7f3a", &task).await).await;
    assert_eq!(status, 201);
    assert_eq!(replayed, None, "the first response is no replay");
    assert_eq!(
        location.as_deref(),
        Some(format!("/api/tasks/{}", id_of(&first)).as_str())
    );
    assert_eq!(etag.as_deref(), Some("\"v1\""));

    for _ in 0..2 {
        let (status, again, again_location, again_etag, replayed) =
            seen(post_keyed(&app, "retry-7f3a", &task).await).await;
        assert_eq!(status, 201);
        assert_eq!(again, first);
        assert_eq!(again_location, location);
        assert_eq!(again_etag, etag);
        assert_eq!(replayed.as_deref(), Some("true"));
    }
    // Defaults filled in or spelled out: the same request.
    let (status, again, ..) = seen(
        post_keyed(
            &app,
            "retry-7f3a",
            &json!({"status": "in_progress", "title": "Pay rent", "description": "before the 5th", "id": 99}),
        )
        .await,
    )
    .await;
    assert_eq!((status, &again), (201, &first));

    assert_eq!(app.count_tasks().await, 1);
    assert_eq!(app.list("").await, [first]);
}

#[tokio::test]
async fn a_key_reused_with_a_different_body_is_422_and_creates_nothing() {
    let app = spawn_app().await;
    let (status, first, ..) = seen(post_keyed(&app, "k-1", &json!({"title": "first"})).await).await;
    assert_eq!(status, 201);

    for other in [
        json!({"title": "second"}),
        json!({"title": "first", "description": "more"}),
        json!({"title": "first", "status": "done"}),
    ] {
        let res = post_keyed(&app, "k-1", &other).await;
        assert_eq!(res.status(), 422, "{other}");
        let err = body(res).await;
        assert_eq!(err["code"], "idempotency_key_reused");
        assert_eq!(err["field"], "Idempotency-Key");
    }
    assert_eq!(app.count_tasks().await, 1);
    assert_eq!(app.list("").await, [first]);
}

#[tokio::test]
async fn concurrent_duplicates_create_one_task() {
    let app = spawn_app().await;
    let task = json!({"title": "exactly once"});

    let answers = futures_util::future::join_all(
        (0..10).map(|_| async { seen(post_keyed(&app, "dup-42", &task).await).await }),
    )
    .await;

    let created: Vec<&Value> = answers
        .iter()
        .filter(|(status, ..)| *status == 201)
        .map(|(_, body, ..)| body)
        .collect();
    assert!(!created.is_empty(), "{answers:?}");
    for (status, body, _, _, replayed) in &answers {
        match status {
            201 => assert_eq!(body, created[0]),
            409 => {
                assert_eq!(body["code"], "idempotency_key_in_flight");
                assert_eq!(replayed, &None);
            }
            other => panic!("a duplicate got {other}: {body}"),
        }
    }
    let firsts = answers
        .iter()
        .filter(|(status, _, _, _, replayed)| *status == 201 && replayed.is_none())
        .count();
    assert_eq!(firsts, 1, "{answers:?}");
    let in_flight = answers.iter().filter(|(status, ..)| *status == 409).count();
    println!(
        "10 concurrent duplicates: 1 created, {} replayed, {in_flight} in flight",
        created.len() - 1
    );

    assert_eq!(app.count_tasks().await, 1);
    // Settled: a retry now gets the first response.
    let (status, again, _, _, replayed) = seen(post_keyed(&app, "dup-42", &task).await).await;
    assert_eq!((status, &again), (201, created[0]));
    assert_eq!(replayed.as_deref(), Some("true"));
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_400_and_creates_nothing() {
    let app = spawn_app().await;
    let task = json!({"title": "t"});
    let long = "k".repeat(256);
    for bad in ["", "has space", long.as_str()] {
        let res = post_keyed(&app, bad, &task).await;
        assert_eq!(res.status(), 400, "{bad:?}");
        let err = body(res).await;
        assert_eq!(err["code"], "invalid_idempotency_key", "{bad:?}");
        assert!(
            err["error"]
                .as_str()
                .is_some_and(|m| m.contains("Idempotency-Key")),
            "{err}"
        );
    }
    // Not ASCII, and given twice.
    let res = app
        .send(
            app.request(Method::POST, "/api/tasks")
                .header(
                    "Idempotency-Key",
                    reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
                )
                .json(&task),
        )
        .await;
    assert_eq!(res.status(), 400);
    let res = app
        .send(
            app.request(Method::POST, "/api/tasks")
                .header("Idempotency-Key", "a")
                .header("Idempotency-Key", "b")
                .json(&task),
        )
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(app.count_tasks().await, 0);

    // The longest key is fine.
    let res = post_keyed(&app, &"k".repeat(255), &task).await;
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn a_replay_after_the_task_was_changed_or_deleted_is_the_original_response() {
    let app = spawn_app().await;
    let task = json!({"title": "original", "description": "as created"});
    let (status, first, location, etag, _) = seen(post_keyed(&app, "gone", &task).await).await;
    assert_eq!(status, 201);
    let path = location.clone().unwrap_or_default();

    let res = app.put_json(&path, &json!({"title": "renamed"})).await;
    assert_eq!(res.status(), 200);
    let (status, again, _, again_etag, replayed) =
        seen(post_keyed(&app, "gone", &task).await).await;
    assert_eq!((status, &again), (201, &first));
    assert_eq!(again_etag, etag, "the first response's ETag, v1");
    assert_eq!(replayed.as_deref(), Some("true"));

    assert_eq!(app.delete(&path).await.status(), 200);
    let (status, again, again_location, _, replayed) =
        seen(post_keyed(&app, "gone", &task).await).await;
    assert_eq!((status, &again), (201, &first));
    assert_eq!(again_location, location);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(
        app.get(&path).await.status(),
        404,
        "the replay brings nothing back"
    );
    assert_eq!(app.count_tasks().await, 0);
}

#[tokio::test]
async fn without_a_key_every_create_is_new() {
    let app = spawn_app().await;
    let first = app.create("same").await;
    let second = app.create("same").await;
    assert_ne!(id_of(&first), id_of(&second));
    assert_eq!(app.count_tasks().await, 2);
}

#[tokio::test]
async fn the_openapi_document_describes_the_idempotency_key() {
    let app = spawn_app().await;
    let doc = body(app.get("/api/openapi.json").await).await;
    let create = &doc["paths"]["/api/tasks"]["post"];
    let params = create["parameters"].as_array().cloned().unwrap_or_default();
    let key = params
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap_or_else(|| panic!("no Idempotency-Key parameter: {create}"));
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], false);
    assert_eq!(key["schema"]["maxLength"], 255);
    for status in ["201", "400", "409", "422"] {
        assert!(create["responses"][status].is_object(), "no {status}");
    }
    assert!(create["responses"]["201"]["headers"]["Idempotent-Replayed"].is_object());
}
