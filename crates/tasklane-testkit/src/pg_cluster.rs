//! A private PostgreSQL cluster for fault tests: `initdb` into a temporary folder, a server on a
//! free loopback port, and the means to stop, restart, hang and resume it without touching the
//! machine's shared server (port 5432) or any other test.
//!
//! - The binaries are those of the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout),
//!   or of `TASKLANE_PG_BIN` when set, or of `PATH`.
//! - `initdb` and `postgres` refuse to run as root. When the tests run as root, the folder is
//!   given to the `postgres` user and both run under it through `setpriv` (which `exec`s, so the
//!   child process *is* the postmaster and its pid is ours to signal).
//! - The cluster is throw-away: trust authentication for the `postgres` role, `fsync=off`, the
//!   Unix socket inside the temporary folder, listening on 127.0.0.1 only.
//! - [`PgCluster::pause`] freezes the postmaster *and* its children with `SIGSTOP`. Stopping only
//!   the postmaster is not a hang: every backend (each a child that has called `setsid`, so not
//!   in the postmaster's process group) keeps answering its open connection, and only new
//!   connections stall. With the children frozen too, queries on open connections hang as well.
//! - Dropping the value shuts the server down (immediate mode, so that PostgreSQL removes its
//!   shared memory) and deletes the folder. A test process killed before that (a nextest
//!   timeout) leaves its folder behind with its pid in it; the next [`PgCluster::spawn`] finds
//!   such leftovers and removes them, server included. The postmaster also gets `SIGKILL` when
//!   the thread that started it ends (`PR_SET_PDEATHSIG`), so start and restart it from the
//!   test's own thread or a runtime worker, not from a short-lived `spawn_blocking` thread.

// A test helper that cannot set up has nothing better to do than fail the test, loudly.
#![allow(clippy::panic, clippy::expect_used)]

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// How long a started server gets to accept connections.
const START_BUDGET: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is killed.
const STOP_BUDGET: Duration = Duration::from_secs(10);
/// The prefix of the temporary folders, for the leftover sweep.
const DIR_PREFIX: &str = "tasklane-pgcluster-";
/// The user the server runs as when the tests run as root.
const SERVICE_USER: &str = "postgres";

/// A PostgreSQL cluster of the test's own. See the module documentation.
pub struct PgCluster {
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    /// Run the binaries as [`SERVICE_USER`] (we are root).
    as_service_user: bool,
    port: u16,
    child: Option<Child>,
    paused: bool,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster")
            .field("root", &self.root)
            .field("port", &self.port)
            .field("running", &self.child.is_some())
            .field("paused", &self.paused)
            .finish()
    }
}

impl PgCluster {
    /// Creates a cluster in a new temporary folder and starts it on a free port.
    ///
    /// # Errors
    /// When the binaries are missing, `initdb` fails, or the server does not come up.
    pub async fn spawn() -> io::Result<Self> {
        sweep_leftovers();
        let root = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&root)?;
        // The folder is ours: its owner says who we are.
        let as_service_user = fs::metadata(&root)?.uid() == 0;
        let mut cluster = Self {
            data: root.join("data"),
            socket_dir: root.join("sock"),
            log: root.join("postgres.log"),
            bin: pg_bin_dir()?,
            root,
            as_service_user,
            port: 0,
            child: None,
            paused: false,
        };
        fs::write(
            cluster.root.join("owner.pid"),
            std::process::id().to_string(),
        )?;
        fs::create_dir_all(&cluster.socket_dir)?;
        if as_service_user {
            chown_to_service_user(&cluster.root)?;
        }
        cluster.initdb()?;
        // A port picked free may be taken before the server binds it: then try another.
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.start().await {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("postgres did not start")))
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_service_user {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid",
                SERVICE_USER,
                "--regid",
                SERVICE_USER,
                "--init-groups",
                "--pdeathsig",
                "KILL",
            ])
            .arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn initdb(&self) -> io::Result<()> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let conf = format!(
            "\n# tasklane-testkit: a throw-away cluster for fault tests\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 32MB\n\
             max_connections = 100\n\
             log_min_messages = warning\n\
             log_connections = off\n",
            self.socket_dir.display()
        );
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))?;
        io::Write::write_all(&mut file, conf.as_bytes())
    }

    /// The port the server listens on (it keeps it across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:{port}`, e.g. a [`crate::proxy::FaultProxy`] target.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `postgres://postgres@127.0.0.1:{port}/{db}`.
    pub fn url(&self, db: &str) -> String {
        url_at(self.port, db)
    }

    /// The postmaster's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The last `lines` lines of the server's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts the server (after [`PgCluster::stop`]) on the same port and data, and waits until
    /// it accepts connections. Does nothing if it runs.
    ///
    /// # Errors
    /// When it could not be started or did not come up in time.
    pub async fn start(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for the test runner is not meant for it.
            .process_group(0)
            .spawn()?;
        self.child = Some(child);
        self.paused = false;
        match self.wait_until_up().await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.kill();
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "postgres on port {}: {e}; log: {}",
                        self.port,
                        self.log_tail(5).replace('\n', " | ")
                    ),
                ))
            }
        }
    }

    async fn wait_until_up(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + START_BUDGET;
        let url = self.url("postgres");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    return Err(io::Error::other(format!("exited at start: {status}")));
                }
            }
            if let Ok(client) = try_connect(&url, Duration::from_millis(500)).await {
                // The server that answers must be this one: a port found free can be handed to
                // another test's cluster too, and then this one fails to bind it (and exits,
                // maybe after the other one answered).
                // A query that fails says nothing either way: ask again.
                if let Ok(row) = client.query_one("SHOW data_directory", &[]).await {
                    let theirs: String = row.get(0);
                    if Path::new(&theirs) == self.data {
                        return Ok(());
                    }
                    return Err(io::Error::other(format!(
                        "port {} is another server's (data directory {theirs})",
                        self.port
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not accepting connections within {START_BUDGET:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A fast shutdown, as `pg_ctl stop -m fast` does it (`SIGINT` to the postmaster): open
    /// sessions are ended, the server checkpoints and exits. Waits for it to exit (killing it
    /// after a bound). A paused server is resumed first.
    pub async fn stop(&mut self) {
        self.shutdown("-INT").await;
    }

    /// A crash: `SIGKILL` to the postmaster and its children; the next start recovers from the
    /// WAL.
    pub async fn kill_now(&mut self) {
        if let Some(pid) = self.pid() {
            signal_children(pid, "-KILL");
        }
        self.kill();
    }

    /// [`PgCluster::stop`] then [`PgCluster::start`].
    ///
    /// # Errors
    /// As [`PgCluster::start`].
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        self.start().await
    }

    async fn shutdown(&mut self, signal: &str) {
        let Some(pid) = self.pid() else { return };
        if self.paused {
            let _ = self.resume();
        }
        let _ = send_signal(pid, signal);
        let deadline = Instant::now() + STOP_BUDGET;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if !matches!(child.try_wait(), Ok(None)) {
                    self.child = None;
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        signal_children(pid, "-KILL");
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Freezes the server: `SIGSTOP` to the postmaster (no new connections are served), then to
    /// each of its children (the backends: queries on open connections hang too). TCP
    /// connections still open at the kernel level, as with a hung host.
    ///
    /// # Errors
    /// When the server does not run or the signal could not be sent.
    pub fn pause(&mut self) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("postgres is not running"))?;
        // The postmaster first, so that it forks no child we would miss.
        send_signal(pid, "-STOP")?;
        signal_children(pid, "-STOP");
        self.paused = true;
        Ok(())
    }

    /// Lets a paused server go on (`SIGCONT` to its children, then to the postmaster).
    ///
    /// # Errors
    /// When the server does not run or the signal could not be sent.
    pub fn resume(&mut self) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("postgres is not running"))?;
        signal_children(pid, "-CONT");
        send_signal(pid, "-CONT")?;
        self.paused = false;
        Ok(())
    }

    /// A connection of its own to database `db`, outside any pool (to create databases, look at
    /// `pg_stat_activity`, or hold a lock).
    ///
    /// # Errors
    /// When it cannot connect within 5 s.
    pub async fn client(&self, db: &str) -> io::Result<Client> {
        try_connect(&self.url(db), Duration::from_secs(5)).await
    }

    /// Creates an empty database `name` (from `template0`) and returns its URL.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses.
    pub async fn create_database(&self, name: &str) -> io::Result<String> {
        let admin = self.client("postgres").await?;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{}\" TEMPLATE template0",
                name.replace('"', "\"\"")
            ))
            .await
            .map_err(|e| io::Error::other(format!("CREATE DATABASE {name}: {e}")))?;
        Ok(self.url(name))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            if self.paused {
                signal_children(pid, "-CONT");
                let _ = send_signal(pid, "-CONT");
            }
            // Immediate shutdown: the children are told to quit at once, and the postmaster
            // removes its shared memory on the way out.
            let _ = send_signal(pid, "-QUIT");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                match self.child.as_mut().map(Child::try_wait) {
                    Some(Ok(None)) => std::thread::sleep(Duration::from_millis(10)),
                    _ => break,
                }
            }
            signal_children(pid, "-KILL");
            self.kill();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn url_at(port: u16, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{db}")
}

async fn try_connect(url: &str, timeout: Duration) -> io::Result<Client> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| io::Error::other(format!("bad URL {url}: {e}")))?;
    config.connect_timeout(timeout);
    config.application_name("tasklane-testkit");
    let (client, connection) = tokio::time::timeout(timeout, config.connect(NoTls))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
        .map_err(|e| io::Error::other(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn send_signal(pid: u32, signal: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill {signal} {pid}: {status}")))
    }
}

/// Signals every child of `parent` (`pkill -P`); no children is not an error.
fn signal_children(parent: u32, signal: &str) {
    let _ = Command::new("pkill")
        .arg(signal)
        .arg("-P")
        .arg(parent.to_string())
        .status();
}

/// The folder of the PostgreSQL binaries: `TASKLANE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` holding `initdb`, else the folder of `initdb` on `PATH`.
fn pg_bin_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TASKLANE_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no initdb: install PostgreSQL's server package or set TASKLANE_PG_BIN",
            )
        })
}

/// Gives `dir` to the service user (`chown -R`), so that `initdb` can write into it.
fn chown_to_service_user(dir: &Path) -> io::Result<()> {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{SERVICE_USER}:"))
        .arg(dir)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "chown -R {SERVICE_USER} {}: {status}",
            dir.display()
        )))
    }
}

/// Removes the clusters of test processes that died without dropping theirs: the owner's pid is
/// in `owner.pid`, the server's in `data/postmaster.pid`.
fn sweep_leftovers() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(DIR_PREFIX) {
            continue;
        }
        let root = entry.path();
        let owner: Option<u32> = fs::read_to_string(root.join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        // A folder without an owner may be one being created right now: leave it.
        let Some(owner) = owner else { continue };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let postmaster: Option<u32> = fs::read_to_string(root.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
        if let Some(pid) = postmaster {
            let is_postgres = fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.contains(&*root.to_string_lossy()));
            if is_postgres {
                signal_children(pid, "-KILL");
                let _ = send_signal(pid, "-KILL");
            }
        }
        let _ = fs::remove_dir_all(&root);
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    async fn select_one(url: &str) -> io::Result<i32> {
        let client = try_connect(url, Duration::from_secs(2)).await?;
        let row = tokio::time::timeout(Duration::from_secs(2), client.query_one("SELECT 1", &[]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "query hung"))?
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(row.get(0))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cluster_finds_its_port_taken_by_another_instead_of_using_that_one() {
        let mut ours = PgCluster::spawn().await.unwrap();
        ours.stop().await;
        // Another test's cluster gets the port meanwhile.
        let mut theirs = PgCluster::spawn().await.unwrap();
        theirs.stop().await;
        theirs.port = ours.port;
        theirs.start().await.unwrap();

        // Refused either way: the other one answered before ours exited (usually), or after.
        let e = ours.start().await.unwrap_err().to_string();
        assert!(
            e.contains("is another server's") || e.contains("exited at start"),
            "{e}"
        );
        assert!(ours.child.is_none());
        assert_eq!(select_one(&theirs.url("postgres")).await.unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_private_cluster_starts_stops_pauses_and_goes_away() {
        let mut pg = PgCluster::spawn().await.unwrap();
        assert_ne!(pg.port(), 5432);
        let url = pg.create_database("probe").await.unwrap();
        assert_eq!(select_one(&url).await.unwrap(), 1);

        // Paused: an open session's query hangs, and so does a new connection.
        let open = pg.client("probe").await.unwrap();
        pg.pause().unwrap();
        let hung =
            tokio::time::timeout(Duration::from_millis(500), open.query_one("SELECT 1", &[])).await;
        assert!(
            hung.is_err(),
            "a query on an open session answered while paused"
        );
        let hung = tokio::time::timeout(
            Duration::from_millis(500),
            try_connect(&url, Duration::from_secs(5)),
        )
        .await;
        assert!(hung.is_err(), "a new connection succeeded while paused");
        pg.resume().unwrap();
        let row = tokio::time::timeout(Duration::from_secs(2), open.query_one("SELECT 1", &[]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);

        // Stopped: refused at once; restarted: the data is still there.
        pg.stop().await;
        assert!(!pg.is_running());
        assert!(select_one(&url).await.is_err());
        pg.start().await.unwrap();
        assert_eq!(select_one(&url).await.unwrap(), 1);
        pg.restart().await.unwrap();
        assert_eq!(select_one(&url).await.unwrap(), 1);

        let root = pg.root.clone();
        let pid = pg.pid().unwrap();
        drop(pg);
        assert!(!root.exists(), "the folder is removed");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(" Z ")),
            "the server is gone"
        );
    }
}
