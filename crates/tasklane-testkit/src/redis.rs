//! Per-test Redis key prefixes and private `redis-server` instances.
//!
//! Tests that only use Redis share the machine's server, each under its own key prefix, so they
//! run in parallel. Tests that stop, hang or restart Redis get a [`RedisServer`] of their own.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long a started server gets to answer `PING`.
const START_BUDGET: Duration = Duration::from_secs(10);

/// A key prefix no other test uses, e.g. `tasklane-test:6f1c...`.
pub fn unique_prefix() -> String {
    format!("tasklane-test:{}", uuid::Uuid::new_v4().simple())
}

/// The machine's shared Redis: `TASKLANE_TEST_REDIS`, or `redis://127.0.0.1:6379`. Never stop
/// or break it; use a [`RedisServer`] for that.
pub fn shared_redis_url() -> String {
    std::env::var("TASKLANE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Deletes every key under `prefix` (`{prefix}:*`) on the Redis at `url`, so that tests on the
/// shared server leave nothing behind.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn delete_prefix(
    url: &str,
    prefix: &str,
) -> Result<(), deadpool_redis::redis::RedisError> {
    use deadpool_redis::redis;
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{prefix}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A `redis-server` of the test's own, on a free loopback port, keeping nothing on disk. It is
/// killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .finish()
    }
}

impl RedisServer {
    /// Starts a server (`redis-server` from `PATH`) and waits until it answers `PING`.
    ///
    /// # Errors
    /// When no server could be started, or it did not answer in time.
    pub async fn spawn() -> io::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("tasklane-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port: 0,
            dir,
            child: None,
        };
        // The port is free when picked but another process may take it before the server
        // binds it; then try another.
        let mut last_error = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.start().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server again on the same port (after [`RedisServer::stop`]) and waits until it
    /// answers `PING`. Does nothing if it runs.
    ///
    /// # Errors
    /// When it could not be started or did not answer in time.
    pub async fn start(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = self.dir.join("redis.log");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        match self.wait_until_up().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stop().await;
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                Err(io::Error::new(
                    e.kind(),
                    format!("redis-server on port {}: {e}; log: {tail}", self.port),
                ))
            }
        }
    }

    /// Kills the server (`SIGKILL`: no goodbye to clients, as in a crash) and waits for it to
    /// exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error means it had exited already.
            let _ = child.kill().await;
        }
    }

    /// Freezes the server (`SIGSTOP`): connections stay open but nothing is answered, as with a
    /// hung process.
    ///
    /// # Errors
    /// When it does not run or the signal could not be sent.
    pub fn pause(&self) -> io::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a paused server go on (`SIGCONT`).
    ///
    /// # Errors
    /// When it does not run or the signal could not be sent.
    pub fn resume(&self) -> io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> io::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .ok_or_else(|| io::Error::other("redis-server is not running"))?;
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill {signal} {pid}: {status}")))
        }
    }

    async fn wait_until_up(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_BUDGET;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(io::Error::other(format!("exited at start: {status}")));
                }
            }
            let attempt = tokio::time::timeout(Duration::from_millis(500), ping(addr)).await;
            if let Ok(Ok(true)) = attempt {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to PING within {START_BUDGET:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SIGKILL works on a paused process too; tokio reaps it.
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a Redis at `addr` answers `PING` with `PONG`.
async fn ping(addr: SocketAddr) -> io::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"PING\r\n").await?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).await?;
    Ok(&reply == b"+PONG\r\n")
}

/// A loopback port nothing listens on now.
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}
