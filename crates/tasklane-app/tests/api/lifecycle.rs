//! The `tasklane` binary itself: start-up errors, subcommands, and graceful shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tasklane_testkit::db::TestDb;

const BIN: &str = env!("CARGO_BIN_EXE_tasklane");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn tasklane(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TASKLANE_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A raw HTTP/1.1 exchange, so a test can control when each byte is sent.
fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn get(port: u16, path: &str) -> String {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
}

fn wait_until_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && get(port, "/api/health").starts_with("HTTP/1.1 200")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server on {port} never became ready");
}

/// Starts `tasklane` on a free port with `env`, its stdout going to `stdout`, and waits until it
/// is ready.
async fn serve(env: &[(&str, &str)], stdout: Stdio) -> (std::process::Child, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut env = env.to_vec();
    env.push(("TASKLANE_LISTEN", listen.as_str()));
    let child = tasklane(&[], &env)
        .stdout(stdout)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::task::spawn_blocking(move || wait_until_ready(port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (child, port)
}

#[test]
fn a_malformed_url_stops_start_up_with_one_line_naming_the_variable() {
    for (var, value) in [
        ("DATABASE_URL", "mysql://root:hunter2@db/x"),
        ("REDIS_URL", "localhost:hunter2"),
        ("TASKLANE_LISTEN", "not-an-address"),
    ] {
        let out = tasklane(&[], &[(var, value), ("DATABASE_URL_X", "")])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(&format!("tasklane: {var}:")), "{stderr}");
        assert!(!stderr.contains("hunter2"), "secret leaked: {stderr}");
    }
}

#[test]
fn an_unreachable_database_is_retried_for_a_bounded_time_then_start_up_fails() {
    let url = format!("postgres://postgres@127.0.0.1:{}/nothing", free_port());
    let started = Instant::now();
    let out = tasklane(
        &[],
        &[
            ("DATABASE_URL", &url),
            ("TASKLANE_STARTUP_TIMEOUT_SECS", "2"),
        ],
    )
    .output()
    .unwrap_or_else(|e| panic!("{e}"));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not answer within"), "{stderr}");
    assert!(
        took >= Duration::from_millis(1500),
        "gave up too soon: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

#[test]
fn store_postgres_without_a_database_url_is_a_clear_error_not_a_quiet_fallback() {
    let dir = tempdir();
    let out = tasklane(&[], &[("TASKLANE_STORE", "postgres")])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TASKLANE_STORE=postgres"), "{stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(!dir.join("data").exists(), "no embedded file was created");
    let out = tasklane(
        &[],
        &[
            ("TASKLANE_STORE", "sqlite"),
            ("DATABASE_URL", "postgres://x@127.0.0.1/y"),
        ],
    )
    .current_dir(&dir)
    .output()
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("contradicts"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tasklane-lifecycle-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

#[test]
fn with_nothing_configured_it_serves_ui_and_api_from_an_embedded_file() {
    let dir = tempdir();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tasklane(
        &[],
        &[
            ("TASKLANE_LISTEN", listen.as_str()),
            ("TASKLANE_LOG", "info"),
        ],
    )
    .current_dir(&dir)
    .stdout(Stdio::piped())
    .spawn()
    .unwrap_or_else(|e| panic!("{e}"));
    wait_until_ready(port);
    let page = get(port, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'self'"),
        "{page}"
    );
    assert!(page.contains("<title>"), "{page}");
    let created = http(
        port,
        "POST /api/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{\"title\":\"zero\"}",
    );
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    assert!(get(port, "/api/tasks").contains("\"title\":\"zero\""));
    assert!(
        dir.join("data/tasklane.db").exists(),
        "the default file is created"
    );
    let health = get(port, "/api/health");
    assert!(health.contains("\"status\":\"healthy\""), "{health}");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success());
    let mut log = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut log);
    }
    assert!(
        log.contains("embedded SQLite"),
        "the log names the store: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn migrate_and_demo_data_commands() {
    let db = TestDb::new().await;
    let url = db.url();
    let env = [("DATABASE_URL", url.as_str())];
    let out = tasklane(&["migrate"], &env)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = tasklane(&["demo-data"], &env)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("inserted task").count(), 3, "{stdout}");
    assert!(stdout.contains("Learn Docker"));

    // Run again: the tasks exist, nothing is inserted twice.
    let out = tasklane(&["demo-data"], &env)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 tasks exist already"));

    let out = tasklane(&["frobnicate"], &env)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn sigterm_drains_finishes_in_flight_requests_and_exits_in_time() {
    let db = TestDb::new().await;
    let url = db.url();
    let (mut child, port) = serve(
        &[
            ("DATABASE_URL", url.as_str()),
            ("TASKLANE_DRAIN_DELAY_MS", "1500"),
        ],
        Stdio::inherit(),
    )
    .await;
    let listen = format!("127.0.0.1:{port}");

    // The healthcheck subcommand agrees.
    let hc = tasklane(&["healthcheck"], &[("TASKLANE_LISTEN", listen.as_str())])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        hc.status.success(),
        "{}",
        String::from_utf8_lossy(&hc.stdout)
    );

    // A request is in flight: its headers are sent, its body is not yet.
    let body = r#"{"title":"in flight"}"#;
    let mut in_flight = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    in_flight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok();
    write!(
        in_flight,
        "POST /api/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(200));

    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(kill.success());

    // Readiness answers 503 at once.
    std::thread::sleep(Duration::from_millis(100));
    let health = get(port, "/api/health");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("\"draining\""), "{health}");

    // After the drain delay the listener closes, but the in-flight request still completes.
    std::thread::sleep(
        (signalled + Duration::from_millis(2000)).saturating_duration_since(Instant::now()),
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed after the drain delay"
    );
    in_flight
        .write_all(body.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut response = String::new();
    let _ = in_flight.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");

    // The process exits, cleanly, within 8 s of the signal; the listener is closed.
    let deadline = signalled + Duration::from_secs(8);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 8 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("exited {:?} after SIGTERM", signalled.elapsed());
    assert!(status.success(), "{status:?}");
    let hc = tasklane(&["healthcheck"], &[("TASKLANE_LISTEN", listen.as_str())])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(hc.status.code(), Some(1));
}

#[tokio::test]
async fn a_5xx_is_logged_once_with_its_request_id_and_cause_and_the_body_stays_opaque() {
    use tasklane_testkit::proxy::{FaultProxy, Mode};
    let db = TestDb::new().await;
    let proxy =
        FaultProxy::start(tasklane_testkit::db::admin_addr()).unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        proxy.port(),
        db.name()
    );
    let (mut child, port) = serve(
        &[("DATABASE_URL", url.as_str()), ("TASKLANE_LOG", "warn")],
        Stdio::piped(),
    )
    .await;

    // The database goes away: the list is a 503, whose body names no internals.
    proxy.set_mode(Mode::Refuse { cut_existing: true });
    let res = tokio::task::spawn_blocking(move || {
        http(
            port,
            "GET /api/tasks HTTP/1.1\r\nHost: t\r\nX-Request-Id: trace-me-42\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(res.starts_with("HTTP/1.1 503"), "{res}");
    assert!(res.contains("x-request-id: trace-me-42"), "{res}");
    let body = res.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(!body.to_lowercase().contains("postgres"), "{body}");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let mut log = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut log);
    }
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per failed request:\n{log}");
    let line = lines[0];
    for part in [
        "WARN",
        "request_id=trace-me-42",
        "method=GET",
        "path=\"/api/tasks\"",
        "status=503",
        "error=",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }
    assert!(
        !line.contains("\u{1b}["),
        "no colour codes in a log file: {line}"
    );
}
