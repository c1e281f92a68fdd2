//! The seed tutorial's Verification section, request for request (same methods, paths, bodies
//! and content type), with the answers the seed intends.

use crate::helpers::{body, header, spawn_app};
use reqwest::Method;

#[tokio::test]
async fn the_seed_verification_requests_work_unchanged() {
    let app = spawn_app().await;

    // curl http://localhost:5000/api/health
    let res = app.get("/api/health").await;
    assert_eq!(res.status(), 200);
    let health = body(res).await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["database"], "connected");
    assert_eq!(health["cache"], "connected");
    assert!(health["timestamp"].as_str().is_some_and(|t| !t.is_empty()));

    // curl http://localhost:5000/api/tasks
    let res = app.get("/api/tasks").await;
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await, serde_json::json!([]));

    // curl -X POST .../api/tasks -H "Content-Type: application/json" -d '{...}'
    let res = app
        .send(
            app.request(Method::POST, "/api/tasks")
                .header("Content-Type", "application/json")
                .body(r#"{"title":"New Task","description":"Test task","status":"todo"}"#),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(header(&res, "location").as_deref(), Some("/api/tasks/1"));
    let created = body(res).await;
    assert_eq!(created["id"], 1);
    assert_eq!(created["title"], "New Task");
    assert_eq!(created["description"], "Test task");
    assert_eq!(created["status"], "todo");

    // curl -X PUT .../api/tasks/1 -H "Content-Type: application/json" -d '{"title":"Updated Task","status":"done"}'
    let res = app
        .send(
            app.request(Method::PUT, "/api/tasks/1")
                .header("Content-Type", "application/json")
                .body(r#"{"title":"Updated Task","status":"done"}"#),
        )
        .await;
    assert_eq!(res.status(), 200);
    let updated = body(res).await;
    assert_eq!(updated["title"], "Updated Task");
    assert_eq!(updated["status"], "done");
    // The seed's PUT would have wiped the description; absent fields keep their value here.
    assert_eq!(updated["description"], "Test task");
    assert_ne!(updated["updated_at"], created["updated_at"]);

    // The list shows the change at once (the seed's cache is invalidated; ours is too).
    let list = body(app.get("/api/tasks").await).await;
    assert_eq!(list[0]["title"], "Updated Task");

    // curl -X DELETE http://localhost:5000/api/tasks/1
    let res = app.send(app.request(Method::DELETE, "/api/tasks/1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        body(res).await,
        serde_json::json!({"message": "Task deleted"})
    );
    assert_eq!(
        body(app.get("/api/tasks").await).await,
        serde_json::json!([])
    );
}

#[tokio::test]
async fn the_seed_pages_mark_done_request_works() {
    // The seed's page sends only {"status":"done"} and gets a 500 from the seed.
    let app = spawn_app().await;
    let task = app.create("Buy milk").await;
    let res = app
        .put_json(
            &format!("/api/tasks/{}", task["id"]),
            &serde_json::json!({"status": "done"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let done = body(res).await;
    assert_eq!(done["status"], "done");
    assert_eq!(done["title"], "Buy milk");
    assert_eq!(done["description"], "d");
    assert_eq!(done["version"], 2);
}
