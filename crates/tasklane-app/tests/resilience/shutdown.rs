//! Graceful shutdown under load: `SIGTERM` while 200 requests a second arrive.

use crate::harness::{
    client, ms, private_pg, private_redis, seed_tasks, App, Figures, Recorder, Summary,
};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The request rate of the open-loop load.
const RATE_PER_SEC: u64 = 200;
/// How long the load runs before the signal.
const BEFORE_SIGNAL: Duration = Duration::from_secs(3);
/// The bound on the exit after `SIGTERM`.
const EXIT_WITHIN: Duration = Duration::from_secs(8);

/// Issue 6: "SIGTERM at 200 requests/s: 0 failures among requests accepted before the signal;
/// readiness answers 503 at once; the process exits within 8 s."
///
/// The load is open-loop (a request every 5 ms, whatever the previous ones are doing: four lists
/// for each create), so a slow server cannot slow the load down. Requests sent after the signal
/// are counted by outcome: served during the drain delay, or refused once the listener closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_200_requests_per_second() {
    let mut figures = Figures::new("sigterm_at_200_requests_per_second");
    let (_pg, db_url) = private_pg().await;
    let redis = private_redis().await;
    let mut app = App::spawn(&[
        ("DATABASE_URL", db_url),
        ("REDIS_URL", redis.url()),
        ("TASKLANE_CACHE_KEY_PREFIX", "resilience".to_owned()),
    ])
    .await;
    let _log = app.log_on_panic();
    let client = client();
    seed_tasks(&client, &app, 20).await;
    let list_url = app.url("/api/tasks?limit=20");
    let health_url = app.url("/api/health");
    let base = Arc::new(app.url(""));

    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let (rec, stop, base) = (rec.clone(), stop.clone(), base.clone());
        tokio::spawn(async move {
            let client = crate::harness::client();
            let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SEC));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = Vec::new();
            let mut n = 0u64;
            // At most 20 s of load, whatever happens.
            while !stop.load(Ordering::SeqCst) && n < 20 * RATE_PER_SEC {
                ticks.tick().await;
                n += 1;
                let (rec, client, list_url, base) =
                    (rec.clone(), client.clone(), list_url.clone(), base.clone());
                inflight.push(tokio::spawn(async move {
                    if n % 5 == 0 {
                        let body = json!({ "title": format!("term-{n}") });
                        let req = client
                            .post(format!("{base}/api/tasks"))
                            .header("content-type", "application/json")
                            .body(body.to_string());
                        let _ = rec.send("create", req).await;
                    } else {
                        let _ = rec.send("list", client.get(list_url)).await;
                    }
                }));
            }
            for r in inflight {
                let _ = r.await;
            }
        })
    };
    // Readiness, every 10 ms, on fresh connections.
    let poller = {
        let (rec, stop) = (rec.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) && samples.len() < 5_000 {
                let client = crate::harness::client();
                let at = rec.now();
                let status = crate::harness::exchange(client.get(&health_url))
                    .await
                    .ok()
                    .map(|r| r.status);
                samples.push((at, status));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            samples
        })
    };

    crate::harness::sleep_until(rec.t0, BEFORE_SIGNAL).await;
    app.sigterm();
    let signalled = rec.now();
    let deadline = Instant::now() + EXIT_WITHIN + Duration::from_secs(2);
    let status = loop {
        if let Some(status) = app.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let exited_after = rec.now() - signalled;
    // A little more load against the closed port, then stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    generator.await.unwrap();
    let samples = poller.await.unwrap();

    let all = rec.all();
    let before: Vec<_> = all.iter().filter(|r| r.at < signalled).collect();
    let after: Vec<_> = all.iter().filter(|r| r.at >= signalled).collect();
    let before_summary = Summary::of(before.iter().copied());
    let rate = before.len() as f64 / signalled.as_secs_f64();
    let after_ok = after.iter().filter(|r| r.ok()).count();
    let after_refused = after
        .iter()
        .filter(|r| r.error.as_deref() == Some("connect"))
        .count();
    let after_5xx = after
        .iter()
        .filter(|r| r.status.is_some_and(|s| s >= 500))
        .count();
    let after_other = after.len() - after_ok - after_refused - after_5xx;
    let other_examples: Vec<String> = after
        .iter()
        .filter(|r| !r.ok() && r.status.is_none() && r.error.as_deref() != Some("connect"))
        .take(3)
        .map(|r| format!("sent +{:?}: {}", r.at - signalled, r.describe()))
        .collect();
    let last_ok_after = after
        .iter()
        .filter(|r| r.ok())
        .map(|r| r.at - signalled)
        .max();
    let first_503 = samples
        .iter()
        .find(|(at, s)| *at >= signalled && *s == Some(503))
        .map(|(at, _)| *at - signalled);
    let first_after = samples
        .iter()
        .find(|(at, _)| *at >= signalled)
        .map(|(_, s)| *s);
    let ready_after_503 = first_503.map_or(0, |t| {
        samples
            .iter()
            .filter(|(at, s)| *at >= signalled + t && *s == Some(200))
            .count()
    });

    figures.set("rate_before_signal_per_s", (rate * 10.0).round() / 10.0);
    figures.set("before_signal", before_summary.to_json());
    figures.set("after_signal_sent", after.len());
    figures.set("after_signal_served_2xx", after_ok);
    figures.set("after_signal_refused", after_refused);
    figures.set("after_signal_5xx", after_5xx);
    figures.set("after_signal_other_errors", after_other);
    figures.set("after_signal_other_errors_examples", json!(other_examples));
    figures.set(
        "last_2xx_sent_after_signal_ms",
        json!(last_ok_after.map(ms)),
    );
    figures.set("readiness_first_after_signal", json!(first_after.flatten()));
    figures.set("readiness_503_after_ms", json!(first_503.map(ms)));
    figures.set("readiness_200_after_first_503", ready_after_503);
    figures.set("exited_after_ms", ms(exited_after));
    figures.set("exit_status", json!(status.map(|s| s.to_string())));
    figures.emit();

    let failures: Vec<String> = before
        .iter()
        .filter(|r| !r.ok())
        .take(5)
        .map(|r| r.describe())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests sent before the signal failed, e.g. {failures:?}",
        before_summary.failed,
        before.len()
    );
    assert!(
        rate > 0.8 * RATE_PER_SEC as f64,
        "the load fell short: {rate:.0}/s"
    );
    let first_503 = first_503.expect("readiness never answered 503 after SIGTERM");
    assert!(
        first_503 < Duration::from_millis(500),
        "readiness 503 after {first_503:?}"
    );
    assert_eq!(
        ready_after_503, 0,
        "readiness went back to 200 while draining"
    );
    let status = status.expect("still running 10 s after SIGTERM");
    assert!(
        exited_after <= EXIT_WITHIN,
        "exited {exited_after:?} after SIGTERM"
    );
    assert!(status.success(), "exit status {status}");
    assert_eq!(after_5xx, 0, "5xx answers while draining");
}
