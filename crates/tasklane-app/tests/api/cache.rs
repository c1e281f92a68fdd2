//! The list cache under concurrency: writers and readers together, and every acknowledged
//! write is visible in the next list read.

use crate::helpers::{body, header, id_of, spawn_app, spawn_app_with, Options};
use reqwest::Method;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_list_read_misses_an_acknowledged_write() {
    let app = Arc::new(spawn_app().await);
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));

    // Readers keep the cache hot (and racing the writers' invalidations).
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (app, done, reads) = (app.clone(), done.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let res = app.get("/api/tasks?limit=500").await;
                assert_eq!(res.status(), 200);
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let mut writers = Vec::new();
    for w in 0..4 {
        let app = app.clone();
        writers.push(tokio::spawn(async move {
            let mut stale = 0u32;
            for i in 0..15 {
                // Create, then read: the new task must be there.
                let task = app.create(&format!("w{w}-{i}")).await;
                let id = id_of(&task);
                let list = app.list("").await;
                if !list.iter().any(|t| id_of(t) == id) {
                    stale += 1;
                }
                // Update, then read: the new status must be there.
                let res = app
                    .send(
                        app.request(Method::PATCH, &format!("/api/tasks/{id}"))
                            .json(&json!({"status": "done"})),
                    )
                    .await;
                assert_eq!(res.status(), 200);
                let list = app.list("").await;
                if !list.iter().any(|t| id_of(t) == id && t["status"] == "done") {
                    stale += 1;
                }
                // Every other task is deleted again, then must be gone.
                if i % 2 == 0 {
                    assert_eq!(app.delete(&format!("/api/tasks/{id}")).await.status(), 200);
                    let list = app.list("").await;
                    if list.iter().any(|t| id_of(t) == id) {
                        stale += 1;
                    }
                }
            }
            stale
        }));
    }
    let mut stale_reads = 0;
    for w in writers {
        stale_reads += w.await.unwrap_or(u32::MAX);
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.await.is_ok(), "a reader failed");
    }
    println!(
        "stale-cache race: {} concurrent list reads, {stale_reads} stale reads after acknowledged writes",
        reads.load(Ordering::Relaxed)
    );
    assert_eq!(stale_reads, 0);

    // The cache and the database agree at the end.
    let cached = app.list("").await;
    let counts = body(app.get("/api/tasks/counts").await).await;
    assert_eq!(cached.len() as u64, counts["total"].as_u64().unwrap_or(0));
    assert_eq!(cached.len(), 4 * 7);
    assert!(cached.iter().all(|t| t["status"] == "done"));
}

/// An update is written through into the cached page its readers read: the next read of that
/// page is a hit and shows the update, byte for byte what a read from the store gives. With
/// write-through off, the same read misses (and shows the update too).
#[tokio::test]
async fn an_update_is_written_through_into_the_cached_page() {
    for write_through in [true, false] {
        let app = spawn_app_with(Options {
            extra: vec![("TASKLANE_CACHE_WRITE_THROUGH", write_through.to_string())],
            ..Options::default()
        })
        .await;
        let a = id_of(&app.create("a").await);
        app.create("b").await;
        // A miss: read from the store and stored; the page updates are written through into.
        assert_eq!(app.get("/api/tasks").await.status(), 200);
        let (hits, misses) = (
            app.metric("tasklane_cache_hits_total").await,
            app.metric("tasklane_cache_misses_total").await,
        );

        let res = app
            .put_json(&format!("/api/tasks/{a}"), &json!({"title": "a2"}))
            .await;
        assert_eq!(res.status(), 200);
        let after = app.get("/api/tasks").await;
        assert_eq!(after.status(), 200);
        let etag = header(&after, "etag");
        let cached = after.bytes().await.unwrap_or_default();

        let hit = app.metric("tasklane_cache_hits_total").await - hits;
        let missed = app.metric("tasklane_cache_misses_total").await - misses;
        let replaced = app.metric("tasklane_cache_replaced_total").await;
        if write_through {
            assert_eq!(
                (hit, missed, replaced),
                (1.0, 0.0, 1.0),
                "written through: a hit"
            );
        } else {
            assert_eq!(
                (hit, missed, replaced),
                (0.0, 1.0, 0.0),
                "a plain bump: a miss"
            );
        }
        let tasks: serde_json::Value = serde_json::from_slice(&cached).unwrap_or_default();
        assert!(
            tasks.as_array().is_some_and(|t| t
                .iter()
                .any(|t| id_of(t) == a && t["title"] == "a2" && t["version"] == 2)),
            "the update is on the page: {tasks}"
        );
        // Another page size: another entry, read from the store now. Same tasks, same bytes.
        let fresh = app.get("/api/tasks?limit=99").await;
        assert_eq!(header(&fresh, "etag"), etag);
        assert_eq!(fresh.bytes().await.unwrap_or_default(), cached);
    }
}
