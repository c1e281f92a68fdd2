//! The list: order, keyset pages with `Link`, the status filter and text search.

use crate::helpers::{body, header, id_of, spawn_app, spawn_app_with, Options};
use serde_json::{json, Value};

/// Follows `rel="next"` links from `first` and returns every task seen, page by page.
async fn walk(app: &crate::helpers::TestApp, first: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(path) = next.take() {
        let res = app.get(&path).await;
        assert_eq!(res.status(), 200, "{path}");
        next = header(&res, "link").map(|link| {
            assert!(link.ends_with("; rel=\"next\""), "{link}");
            let url = link
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or_default()
                .to_owned();
            assert!(url.starts_with("/api/tasks?"), "relative link: {url}");
            url
        });
        pages.push(body(res).await.as_array().cloned().unwrap_or_default());
        assert!(pages.len() < 100, "runaway paging");
    }
    pages
}

#[tokio::test]
async fn the_list_is_newest_first_and_pages_cover_everything_once() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..23 {
        ids.push(id_of(&app.create(&format!("task {i}")).await));
    }
    ids.reverse();

    let all = app.list("").await;
    assert_eq!(all.iter().map(id_of).collect::<Vec<_>>(), ids);

    let pages = walk(&app, "/api/tasks?limit=5").await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![5, 5, 5, 5, 3]
    );
    let seen: Vec<i64> = pages.iter().flatten().map(id_of).collect();
    assert_eq!(seen, ids);

    // A page boundary exactly at the end gives no Link.
    let pages = walk(&app, "/api/tasks?limit=23").await;
    assert_eq!(pages.len(), 1);

    // A task created while paging shows up in neither the earlier nor the later pages twice.
    let res = app.get("/api/tasks?limit=10").await;
    let link = header(&res, "link").unwrap_or_default();
    app.create("late").await;
    let url = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default();
    let second = body(app.get(url).await).await;
    assert_eq!(
        second
            .as_array()
            .map(|p| p.iter().map(id_of).collect::<Vec<_>>()),
        Some(ids[10..20].to_vec())
    );
}

#[tokio::test]
async fn ties_on_created_at_are_broken_by_id() {
    let app = spawn_app().await;
    // Tasks created in one transaction share created_at (now() is the transaction's start).
    let ids: Vec<i64> = app.insert_same_instant(&["a", "b", "c", "d"]).await;
    let pages = walk(&app, "/api/tasks?limit=3").await;
    let seen: Vec<i64> = pages.iter().flatten().map(id_of).collect();
    let mut expected = ids.clone();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn status_filter_and_search_combine_and_page() {
    let app = spawn_app().await;
    for (title, description, status) in [
        ("Write the ÉCOLE report", "", "todo"),
        ("Call mum", "about the école trip", "done"),
        ("50% off sale", "", "todo"),
        ("5000 offers", "", "todo"),
        ("snake_case names", "", "in_progress"),
        ("snakeXcase names", "", "in_progress"),
        ("Nothing relevant", "at all", "done"),
    ] {
        let res = app
            .post_json(
                "/api/tasks",
                &json!({"title": title, "description": description, "status": status}),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    let titles = |v: Vec<Value>| {
        v.iter()
            .map(|t| t["title"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        titles(app.list("&q=%C3%A9cole").await),
        vec!["Call mum", "Write the ÉCOLE report"],
        "case-insensitive, Unicode-aware, title or description"
    );
    assert_eq!(
        titles(app.list("&q=%C3%A9cole&status=done").await),
        vec!["Call mum"]
    );
    assert_eq!(
        titles(app.list("&q=50%25").await),
        vec!["50% off sale"],
        "% is literal"
    );
    assert_eq!(
        titles(app.list("&q=e_c").await),
        vec!["snake_case names"],
        "_ is literal"
    );
    assert_eq!(titles(app.list("&status=in_progress").await).len(), 2);
    assert_eq!(
        titles(app.list("&q=nothing%20matches%20this").await).len(),
        0
    );

    let pages = walk(&app, "/api/tasks?status=todo&limit=1").await;
    assert_eq!(pages.len(), 3);
    assert!(pages.iter().flatten().all(|t| t["status"] == "todo"));
    let pages = walk(&app, "/api/tasks?q=names&limit=1").await;
    assert_eq!(pages.iter().flatten().count(), 2);
}

/// With one search slot taken by a search stuck on the server, another search is told 503 with
/// `Retry-After` once the wait timeout is over, without ever reaching PostgreSQL, and
/// `/metrics` shows the queue; the stuck one answers 200 once it can run.
#[tokio::test]
async fn a_search_past_its_slots_is_503_with_retry_after_and_the_running_one_completes() {
    let app = spawn_app_with(Options {
        redis_url: None,
        extra: vec![
            ("TASKLANE_DB_POOL_SIZE", "4".into()),
            ("TASKLANE_DB_SEARCH_SLOTS", "1".into()),
            ("TASKLANE_DB_WAIT_TIMEOUT_MS", "400".into()),
        ],
    })
    .await;
    let wanted = app.create("find the needle").await;
    let blocker = app.db.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap_or_else(|e| panic!("lock: {e}"));

    let stuck = {
        let (client, url) = (app.client.clone(), app.url("/api/tasks?q=NEEDLE"));
        tokio::spawn(async move { client.get(url).send().await })
    };
    // Until the server shows the search waiting on the lock.
    let waiting = app.db.until_lock_waits(|w| !w.is_empty()).await;
    assert!(
        waiting.len() == 1 && waiting[0].contains("LIKE"),
        "{waiting:?}"
    );

    let started = std::time::Instant::now();
    let res = app.get("/api/tasks?q=needle").await;
    let took = started.elapsed();
    assert_eq!(res.status(), 503);
    assert_eq!(header(&res, "retry-after").as_deref(), Some("1"));
    assert_eq!(body(res).await["code"], "unavailable");
    assert!(
        took >= std::time::Duration::from_millis(400),
        "took {took:?}"
    );
    assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        app.db.lock_waits().await,
        waiting,
        "it never reached PostgreSQL"
    );

    let metrics = app.get("/metrics").await.text().await.unwrap_or_default();
    assert!(
        metrics.contains("\ntasklane_db_search_slots 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\ntasklane_db_searches_running 1\n"),
        "{metrics}"
    );

    // Once the lock goes, the search that held the slot answers, and the slot is free again.
    blocker
        .batch_execute("ROLLBACK")
        .await
        .unwrap_or_else(|e| panic!("unlock: {e}"));
    let res = stuck
        .await
        .unwrap_or_else(|e| panic!("join: {e}"))
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(res.status(), 200);
    let found: Value = res.json().await.unwrap_or_else(|e| panic!("json: {e}"));
    assert_eq!(found, json!([wanted]));
    assert_eq!(app.list("&q=needle").await, vec![wanted]);
}
