//! The list cache under concurrency: writers and readers together, and every acknowledged
//! write is visible in the next list read.

use crate::helpers::{body, id_of, spawn_app};
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
