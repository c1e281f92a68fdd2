//! Limits on what one client can make the server hold (issue 6, hostile input): the size of a
//! body, the size of a page, and time. Headers or a body trickled one byte a second are cut off
//! by a deadline, and meanwhile the server, on a single worker, answers everyone else at once.

use crate::helpers::{body, spawn_app_with, Options, TestApp};
use reqwest::{Client, Method};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The body deadline these tests run with (the default is 10 s).
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// actix's deadline for the head of a connection's first request (startup.rs).
const HEAD_TIMEOUT: Duration = tasklane_app::startup::CLIENT_REQUEST_TIMEOUT;
/// Scheduling slack on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(1500);

/// One worker: if a slow client held it, nobody else would get an answer.
async fn one_worker_app() -> TestApp {
    spawn_app_with(Options {
        extra: vec![
            ("TASKLANE_WORKERS", "1".to_owned()),
            (
                "TASKLANE_BODY_TIMEOUT_MS",
                BODY_TIMEOUT.as_millis().to_string(),
            ),
        ],
        ..Options::default()
    })
    .await
}

fn socket_address(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// What a raw connection got back, and when the server was done with it.
struct CutOff {
    response: String,
    after: Duration,
}

/// Sends `head` at once and then `slow` one byte a second, reading all the while. Returns when
/// the server has answered (a complete response head) or closed the connection, or after
/// `give_up` (then `after` is `give_up`).
async fn trickle(address: &str, head: &[u8], slow: &[u8], give_up: Duration) -> CutOff {
    let started = Instant::now();
    let stream = TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let (mut reader, mut writer) = stream.into_split();
    let write = async {
        if writer.write_all(head).await.is_ok() {
            for byte in slow {
                tokio::time::sleep(Duration::from_secs(1)).await;
                // A refused write means the server has closed the connection; the reader sees it.
                if writer.write_all(&[*byte]).await.is_err() {
                    break;
                }
            }
        }
        std::future::pending::<()>().await;
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                // The response head is in; give its body a moment to follow.
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), reader.read(&mut buf)).await;
                break;
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let outcome = tokio::time::timeout(give_up, async {
        tokio::select! {
            response = read => response,
            () = write => unreachable!("the writer never finishes"),
        }
    })
    .await;
    match outcome {
        Ok(response) => CutOff {
            response,
            after: started.elapsed(),
        },
        Err(_) => CutOff {
            response: String::new(),
            after: give_up,
        },
    }
}

/// Sends a request every 200 ms on a fresh connection until `until`; returns the slowest answer
/// and how many there were. Every answer must be a success.
async fn meanwhile(app: &TestApp, until: Duration) -> (Duration, usize) {
    // No pooled connections: each request needs a new connection accepted by the worker.
    let client = Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    let mut n = 0;
    while started.elapsed() < until {
        n += 1;
        let sent = Instant::now();
        let res = if n % 2 == 0 {
            client
                .post(app.url("/api/tasks"))
                .json(&serde_json::json!({"title": format!("prompt {n}")}))
                .send()
                .await
        } else {
            client.get(app.url("/api/tasks?limit=5")).send().await
        }
        .unwrap_or_else(|e| panic!("request {n} failed while slow clients trickle: {e}"));
        assert!(res.status().is_success(), "request {n}: {}", res.status());
        slowest = slowest.max(sent.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (slowest, answered)
}

#[tokio::test]
async fn trickled_headers_and_bodies_are_cut_off_without_holding_the_worker() {
    let app = one_worker_app().await;
    let address = socket_address(&app);

    // (a) The request head, one byte a second: actix's head deadline answers 408 and closes.
    let slow_head = trickle(
        &address,
        b"GET /api/tasks HTTP/1.1\r\nHost: tasklane\r\n",
        b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        HEAD_TIMEOUT + SLACK * 2,
    );
    // (b) A create whose body comes one byte a second: the body deadline answers 408.
    let json = br#"{"title":"slow loris","description":"one byte a second"}"#;
    let slow_body_head = format!(
        "POST /api/tasks HTTP/1.1\r\nHost: tasklane\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        json.len()
    );
    let slow_body = trickle(
        &address,
        slow_body_head.as_bytes(),
        json,
        BODY_TIMEOUT + SLACK * 2,
    );
    // (c) Meanwhile everyone else, on new connections to the same single worker.
    let others = meanwhile(&app, HEAD_TIMEOUT);

    let (head, body_cut, (slowest, answered)) = tokio::join!(slow_head, slow_body, others);

    println!(
        "slow client figures: headers cut off after {:.1} s ({}), body cut off after {:.1} s ({}), \
         {answered} other requests meanwhile, slowest {} ms",
        head.after.as_secs_f64(),
        head.response.lines().next().unwrap_or("closed without an answer"),
        body_cut.after.as_secs_f64(),
        body_cut.response.lines().next().unwrap_or("closed without an answer"),
        slowest.as_millis(),
    );
    assert!(
        head.after < HEAD_TIMEOUT + SLACK,
        "the trickled head was not cut off: {:?}",
        head.after
    );
    assert!(
        head.response.is_empty() || head.response.starts_with("HTTP/1.1 408"),
        "{}",
        head.response
    );
    assert!(
        body_cut.after < BODY_TIMEOUT + SLACK,
        "the trickled body was not cut off: {:?}",
        body_cut.after
    );
    assert!(
        body_cut.after >= BODY_TIMEOUT - Duration::from_millis(100),
        "cut off before the body deadline: {:?}",
        body_cut.after
    );
    assert!(
        body_cut.response.starts_with("HTTP/1.1 408"),
        "{}",
        body_cut.response
    );
    assert!(body_cut.response.contains("\"code\":\"request_timeout\""));
    assert!(body_cut
        .response
        .to_ascii_lowercase()
        .contains("connection: close"));
    assert!(answered >= 10, "only {answered} requests answered");
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited {slowest:?} behind the slow clients"
    );
    // The slow create stored nothing; the prompt ones did.
    let titles: Vec<String> = app
        .list("")
        .await
        .iter()
        .filter_map(|t| t["title"].as_str().map(str::to_owned))
        .collect();
    assert!(!titles.iter().any(|t| t == "slow loris"), "{titles:?}");
    assert!(
        titles.iter().any(|t| t.starts_with("prompt ")),
        "{titles:?}"
    );
}

/// Sends a chunked body of `total` bytes in 64 KiB chunks (no Content-Length, so the server
/// must count as it reads), reading concurrently; returns the response head.
async fn chunked_upload(address: &str, total: usize) -> String {
    let stream = TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let (mut reader, mut writer) = stream.into_split();
    let write = async {
        let head = "POST /api/tasks HTTP/1.1\r\nHost: tasklane\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'z'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if writer.write_all(&frame).await.is_err() {
                return;
            }
            sent += chunk.len();
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
    };
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let (_, response) =
        tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(write, read) })
            .await
            .unwrap_or_else(|_| panic!("no answer to a 1 MiB chunked upload within 10 s"));
    response
}

#[tokio::test]
async fn a_mebibyte_body_is_413_and_a_huge_page_is_400() {
    let app = one_worker_app().await;

    // Declared up front: refused before it is read.
    let res = app
        .send(
            app.request(Method::POST, "/api/tasks")
                .header("Content-Type", "application/json")
                .body(vec![b'z'; 1024 * 1024]),
        )
        .await;
    assert_eq!(res.status(), 413);
    let err: Value = body(res).await;
    assert_eq!(err["code"], "payload_too_large");

    // Not declared (chunked): refused once the count passes 64 KiB.
    let response = chunked_upload(&socket_address(&app), 1024 * 1024).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");

    let res = app.get("/api/tasks?limit=100000").await;
    assert_eq!(res.status(), 400);
    let err: Value = body(res).await;
    assert_eq!(err["code"], "invalid_limit");
    let res = app.get("/api/tasks?limit=500").await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.count_tasks().await, 0);
}
