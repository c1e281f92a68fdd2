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

/// A key prefix of a test's own ([`unique_prefix`]) on the machine's shared Redis
/// ([`shared_redis_url`]), whose keys are deleted when it is dropped: also when the test fails,
/// so that no run leaves keys behind there (the generation and the lease registry have no TTL,
/// and would stay for good). Declare it before whatever writes under it (a cache, a server), so
/// that it is dropped after them.
pub struct SharedPrefix {
    prefix: String,
}

impl SharedPrefix {
    #[allow(clippy::new_without_default)] // each one is new: `default` would read as a constant
    pub fn new() -> Self {
        Self {
            prefix: unique_prefix(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.prefix
    }
}

impl std::fmt::Debug for SharedPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)
    }
}

impl std::fmt::Display for SharedPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)
    }
}

impl std::ops::Deref for SharedPrefix {
    type Target = str;

    fn deref(&self) -> &str {
        &self.prefix
    }
}

impl Drop for SharedPrefix {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime, where blocking on a future would stall it:
        // the deletion gets a thread and a runtime of its own.
        let prefix = self.prefix.clone();
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(delete_prefix(&shared_redis_url(), &prefix))
                .map_err(|e| e.to_string())
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not delete the keys under {}: {e}", self.prefix),
            Err(_) => eprintln!("deleting the keys under {} panicked", self.prefix),
        }
    }
}

/// Deletes every key under `prefix` (`{prefix}:*`) on the Redis at `url`, so that tests on the
/// shared server leave nothing behind ([`SharedPrefix`] does it when dropped).
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
    /// answers (itself: the process answering on the port must be this server). Does nothing if
    /// it runs.
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
    /// hung process. Returns once every thread of it has stopped: `kill` returns as soon as the
    /// signal is sent, and a server busy on the other core answered two more commands after
    /// that once (in CI).
    ///
    /// # Errors
    /// When it does not run, the signal could not be sent, or it has not stopped within 5 s.
    pub fn pause(&self) -> io::Result<()> {
        self.signal("-STOP")?;
        let pid = self.pid()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid)? {
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "redis-server {pid} did not stop within 5 s of SIGSTOP"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Lets a paused server go on (`SIGCONT`).
    ///
    /// # Errors
    /// When it does not run or the signal could not be sent.
    pub fn resume(&self) -> io::Result<()> {
        self.signal("-CONT")
    }

    fn pid(&self) -> io::Result<u32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .ok_or_else(|| io::Error::other("redis-server is not running"))
    }

    fn signal(&self, signal: &str) -> io::Result<()> {
        let pid = self.pid()?;
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
            // The server that answers must be this one: a port found free can be handed to
            // another test's server too, and then this one fails to bind it (and exits, maybe
            // after the other one answered).
            let attempt = tokio::time::timeout(Duration::from_millis(500), process_id(addr)).await;
            if let Ok(Ok(Some(pid))) = attempt {
                if Some(pid) == self.child.as_ref().and_then(Child::id) {
                    return Ok(());
                }
                return Err(io::Error::other(format!(
                    "port {} is another redis-server's (pid {pid})",
                    self.port
                )));
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

/// The process id a Redis at `addr` gives in `INFO server`, once it answers.
async fn process_id(addr: SocketAddr) -> io::Result<Option<u32>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"INFO server\r\n").await?;
    // A bulk string: `$<length>\r\n<text>\r\n`.
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        let Some((head, body)) = text.split_once("\r\n") else {
            continue;
        };
        let Some(length) = head.strip_prefix('$').and_then(|l| l.parse::<usize>().ok()) else {
            // An error reply (`-LOADING ...` while it starts), or not Redis.
            return Ok(None);
        };
        if body.len() < length {
            continue;
        }
        return Ok(body.lines().find_map(|line| {
            line.strip_prefix("process_id:")
                .and_then(|pid| pid.trim().parse().ok())
        }));
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Whether every thread of process `pid` is stopped (state `T`, or `t` when traced).
fn all_threads_stopped(pid: u32) -> io::Result<bool> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        // The state follows the `)` that ends the command name (which may hold spaces).
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if !matches!(state, Some('T' | 't')) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_server_finds_its_port_taken_by_another_instead_of_using_that_one() {
        let mut ours = RedisServer::spawn().await.unwrap();
        ours.stop().await;
        // Another test's server gets the port meanwhile.
        let mut theirs = RedisServer::spawn().await.unwrap();
        theirs.stop().await;
        theirs.port = ours.port;
        theirs.start().await.unwrap();

        // Refused either way: the other one answered before ours exited (usually), or after.
        let e = ours.start().await.unwrap_err().to_string();
        assert!(
            e.contains("is another redis-server's") || e.contains("exited at start"),
            "{e}"
        );
        assert!(ours.child.is_none());
        // The other one still answers, and pausing it stops every thread of it.
        assert!(
            process_id(SocketAddr::from((Ipv4Addr::LOCALHOST, theirs.port)))
                .await
                .unwrap()
                .is_some()
        );
        theirs.pause().unwrap();
        theirs.resume().unwrap();
    }

    /// The names of the keys under `pattern` on the shared Redis.
    async fn keys(pattern: &str) -> Vec<String> {
        use deadpool_redis::redis;
        let client = redis::Client::open(shared_redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut found: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            found.extend(page);
            if next == 0 {
                return found;
            }
            cursor = next;
        }
    }

    /// Writes what a cache leaves under `prefix` (a generation, a lease registry, an entry
    /// whose name holds spaces, as a search's does) and a key of a neighbouring prefix.
    async fn write_keys(prefix: &str) {
        use deadpool_redis::redis;
        let client = redis::Client::open(shared_redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::pipe()
            .set(format!("{prefix}:gen"), 7)
            .hset(format!("{prefix}:leases"), "replica", 1)
            .set(format!("{prefix}:v1:list:q=two words"), "page")
            .set(format!("{prefix}x:gen"), 1)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_shared_prefix_deletes_its_keys_and_only_its_keys_when_dropped() {
        let prefix = SharedPrefix::new();
        let name = prefix.to_string();
        write_keys(&name).await;
        assert_eq!(keys(&format!("{name}:*")).await.len(), 3);
        drop(prefix);
        assert_eq!(keys(&format!("{name}:*")).await, Vec::<String>::new());
        assert_eq!(keys(&format!("{name}x:*")).await.len(), 1);
        delete_prefix(&shared_redis_url(), &format!("{name}x"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_shared_prefix_deletes_its_keys_when_its_test_panics() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let failed = tokio::spawn(async move {
            let prefix = SharedPrefix::new();
            write_keys(&prefix).await;
            tx.send(prefix.to_string()).unwrap();
            panic!("the test fails");
        })
        .await;
        assert!(failed.unwrap_err().is_panic());
        let name = rx.await.unwrap();
        assert_eq!(keys(&format!("{name}:*")).await, Vec::<String>::new());
        delete_prefix(&shared_redis_url(), &format!("{name}x"))
            .await
            .unwrap();
    }
}
