//! A TCP fault proxy for resilience tests: it sits between the code under test and PostgreSQL
//! or Redis, on loopback, and misbehaves on demand.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and forwards every connection to a target.
//! [`FaultProxy::set_mode`] switches what it does, at once, for new and for open connections:
//!
//! | [`Mode`] | new connections | open connections |
//! |---|---|---|
//! | `Pass` | forwarded | forwarded |
//! | `Refuse { cut_existing }` | closed at once (FIN) | kept, or closed (FIN) when `cut_existing` |
//! | `Blackhole` | accepted and held; nothing is forwarded, no upstream connection is made | held; nothing is forwarded in either direction |
//! | `Latency(d)` | forwarded, each chunk `d` late | each chunk, in each direction, `d` late |
//! | `Reset` | reset at once (RST) | reset (RST) |
//!
//! A blackhole stalls rather than loses data: what was read before or during it is delivered
//! once the mode changes back, as TCP would after a network partition heals. The kernel still
//! completes the handshake of a new connection (the proxy's listener has a backlog), so a client
//! sees its `connect` succeed and then silence, which is what a hung server looks like too.
//!
//! Latency is added per chunk from the moment the chunk was read, and chunks are pipelined: a
//! stream of small writes is delayed by `d`, not by `d` per write.
//!
//! The proxy runs on a thread and a runtime of its own, so it keeps forwarding whatever the test
//! does with its own runtime (blocking calls included); dropping the [`FaultProxy`] stops it and
//! closes every connection.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// What the proxy does with connections; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Close new connections at once; with `cut_existing`, close the open ones too.
    Refuse { cut_existing: bool },
    /// Forward nothing, in either direction, until the mode changes.
    Blackhole,
    /// Forward each chunk this long after it was read.
    Latency(Duration),
    /// Reset (RST) open connections and every new one.
    Reset,
}

/// How long the proxy waits for the target to accept a connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest chunk read at once.
const CHUNK: usize = 16 * 1024;
/// Chunks read but not yet written, per direction, before the reader stops reading.
const IN_FLIGHT_CHUNKS: usize = 64;

#[derive(Debug, Default)]
struct Counters {
    total: AtomicU64,
    open: AtomicU64,
    refused: AtomicU64,
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.open.fetch_add(1, Ordering::SeqCst);
        Self(counters.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running proxy; stopped, with every connection closed, when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("mode", &self.mode())
            .field("open", &self.connections_open())
            .field("total", &self.connections_total())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy in [`Mode::Pass`] on a free loopback port, forwarding to `target`.
    ///
    /// # Errors
    /// When no port could be bound or the proxy's thread could not start.
    pub fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let (shutdown, shutdown_rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            accept_loop(listener, target, mode_rx, thread_counters, shutdown_rx)
                                .await;
                        }
                        Err(e) => eprintln!("fault proxy on {addr}: {e}"),
                    }
                });
                // Dropping the runtime here cancels every connection task, closing its sockets.
            })?;
        Ok(Self {
            addr,
            target,
            mode,
            counters,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// Where clients connect: `127.0.0.1:{port}`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Switches the mode; open connections follow at once.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Connections open now (accepted and not yet closed, refused ones excluded).
    pub fn connections_open(&self) -> u64 {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since start, refused and reset ones included.
    pub fn connections_total(&self) -> u64 {
        self.counters.total.load(Ordering::SeqCst)
    }

    /// Connections closed or reset at once on arrival, because of [`Mode::Refuse`] or
    /// [`Mode::Reset`].
    pub fn connections_refused(&self) -> u64 {
        self.counters.refused.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of file descriptors or the like: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        counters.total.fetch_add(1, Ordering::SeqCst);
        let current = *mode.borrow();
        match current {
            Mode::Refuse { .. } => {
                counters.refused.fetch_add(1, Ordering::SeqCst);
                drop(client);
            }
            Mode::Reset => {
                counters.refused.fetch_add(1, Ordering::SeqCst);
                reset(client);
            }
            Mode::Pass | Mode::Blackhole | Mode::Latency(_) => {
                tokio::spawn(serve(client, target, mode.clone(), counters.clone()));
            }
        }
    }
}

/// Closes a socket with an RST instead of a FIN: `SO_LINGER` 0, then close.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// How a connection ended.
enum End {
    /// Both directions finished (or one failed, which ends both).
    Done { failed: bool },
    /// [`Mode::Reset`]: reset both sides.
    Reset,
    /// [`Mode::Refuse`] with `cut_existing`: close both sides.
    Cut,
}

/// Resolves when the mode says open connections must end.
async fn killed(mut mode: watch::Receiver<Mode>) -> End {
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Reset => return End::Reset,
            Mode::Refuse { cut_existing: true } => return End::Cut,
            _ => {}
        }
        if mode.changed().await.is_err() {
            // The proxy is shutting down.
            return End::Cut;
        }
    }
}

/// Waits while the mode is a blackhole. `false` when the proxy is shutting down.
async fn wait_out_blackhole(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        let current = *mode.borrow_and_update();
        if current != Mode::Blackhole {
            return true;
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

async fn serve(
    mut client: TcpStream,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    let _open = OpenGuard::new(&counters);
    let _ = client.set_nodelay(true);

    // A connection that arrives in a blackhole is held, unconnected, until the mode changes.
    let connect = async {
        let mut waiting = mode.clone();
        if !wait_out_blackhole(&mut waiting).await {
            return None;
        }
        tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(target))
            .await
            .ok()
            .and_then(Result::ok)
    };
    let upstream = tokio::select! {
        end = killed(mode.clone()) => {
            if matches!(end, End::Reset) {
                reset(client);
            }
            return;
        }
        upstream = connect => upstream,
    };
    let Some(mut upstream) = upstream else {
        // The target refused: tell the client the same way.
        reset(client);
        return;
    };
    let _ = upstream.set_nodelay(true);

    let end = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let both = async {
            let outcome = tokio::try_join!(
                pump(client_read, upstream_write, mode.clone()),
                pump(upstream_read, client_write, mode.clone()),
            );
            End::Done {
                failed: outcome.is_err(),
            }
        };
        tokio::select! {
            end = both => end,
            end = killed(mode.clone()) => end,
        }
    };
    match end {
        End::Reset | End::Done { failed: true } => {
            // A reset on either side is passed on as a reset.
            reset(client);
            reset(upstream);
        }
        End::Cut | End::Done { failed: false } => {}
    }
}

/// Copies one direction, chunk by chunk, obeying the mode: a blackhole stops both reading and
/// writing; latency holds each chunk until `d` after it was read. The end of the input is passed
/// on as a half-close.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mode: watch::Receiver<Mode>,
) -> io::Result<()> {
    let (chunks_tx, mut chunks) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let mut read_mode = mode.clone();
    let read = async move {
        let chunks_tx = chunks_tx;
        let mut buf = vec![0u8; CHUNK];
        loop {
            if !wait_out_blackhole(&mut read_mode).await {
                return Ok(());
            }
            let n = from.read(&mut buf).await?;
            if n == 0 {
                // Dropping the sender lets the writer finish and half-close.
                return Ok(());
            }
            let chunk = buf.get(..n).unwrap_or_default().to_vec();
            if chunks_tx.send((Instant::now(), chunk)).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut write_mode = mode;
    let write = async move {
        while let Some((read_at, chunk)) = chunks.recv().await {
            if !wait_out_blackhole(&mut write_mode).await {
                return Ok(());
            }
            let current = *write_mode.borrow();
            if let Mode::Latency(delay) = current {
                tokio::time::sleep_until(read_at + delay).await;
            }
            // The mode may have turned to a blackhole during the delay.
            if !wait_out_blackhole(&mut write_mode).await {
                return Ok(());
            }
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// An echo server on loopback; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Sends `msg` and reads the echo, within `within`.
    async fn echo(stream: &mut TcpStream, msg: &[u8], within: Duration) -> io::Result<Vec<u8>> {
        stream.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(within, stream.read_exact(&mut got))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo in time"))??;
        Ok(got)
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Reads until EOF or an error, within a bound: `Ok(bytes)` on EOF.
    async fn read_to_end(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "still open"))??;
        Ok(out)
    }

    /// Connects and reads until the peer closes. A reset the proxy sends straight after
    /// accepting can reach the client before `connect` has returned, so it may surface from
    /// either call; both count as the connection being reset.
    async fn connect_and_read_to_end(addr: SocketAddr) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(addr).await?;
        read_to_end(&mut stream).await
    }

    #[tokio::test]
    async fn pass_forwards_both_ways_and_counts_connections() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            echo(&mut a, b"ping", Duration::from_secs(2)).await.unwrap(),
            b"ping"
        );
        assert_eq!(
            echo(&mut b, b"pong", Duration::from_secs(2)).await.unwrap(),
            b"pong"
        );
        assert_eq!(proxy.connections_total(), 2);
        assert_eq!(proxy.connections_open(), 2);
        drop(a);
        wait_for("one connection to close", || proxy.connections_open() == 1).await;
        // A large transfer arrives whole.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            echo(&mut b, &big, Duration::from_secs(5)).await.unwrap(),
            big
        );
    }

    #[tokio::test]
    async fn latency_delays_each_direction_without_adding_up() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        echo(&mut s, b"warm", Duration::from_secs(2)).await.unwrap();
        let delay = Duration::from_millis(100);
        proxy.set_mode(Mode::Latency(delay));
        let started = Instant::now();
        echo(&mut s, b"slow", Duration::from_secs(2)).await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= 2 * delay,
            "a round trip crosses the proxy twice: {took:?}"
        );
        // Ten writes in a row are pipelined: about one round trip of delay, not ten.
        let started = Instant::now();
        for _ in 0..10 {
            s.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut got = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        let took = started.elapsed();
        assert!(took < 10 * delay, "delays added up: {took:?}");
        proxy.set_mode(Mode::Pass);
        let started = Instant::now();
        echo(&mut s, b"fast", Duration::from_secs(2)).await.unwrap();
        assert!(started.elapsed() < delay, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn blackhole_stalls_open_and_new_connections_then_delivers() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        echo(&mut open, b"before", Duration::from_secs(2))
            .await
            .unwrap();
        proxy.set_mode(Mode::Blackhole);
        let stalled = echo(&mut open, b"during", Duration::from_millis(300)).await;
        assert_eq!(stalled.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // A new connection is accepted but nothing comes back.
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        let stalled = echo(&mut new, b"hello", Duration::from_millis(300)).await;
        assert_eq!(stalled.unwrap_err().kind(), io::ErrorKind::TimedOut);
        proxy.set_mode(Mode::Pass);
        // What was sent during the blackhole arrives now, in order.
        let mut got = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(2), open.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"during");
        let mut got = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(2), new.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn refuse_closes_new_connections_and_optionally_the_open_ones() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        echo(&mut open, b"a", Duration::from_secs(2)).await.unwrap();
        proxy.set_mode(Mode::Refuse {
            cut_existing: false,
        });
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(read_to_end(&mut new).await.unwrap(), b"");
        assert_eq!(proxy.connections_refused(), 1);
        // The open connection still works.
        echo(&mut open, b"b", Duration::from_secs(2)).await.unwrap();
        proxy.set_mode(Mode::Refuse { cut_existing: true });
        assert_eq!(read_to_end(&mut open).await.unwrap(), b"");
        wait_for("no open connections", || proxy.connections_open() == 0).await;
        proxy.set_mode(Mode::Pass);
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        echo(&mut again, b"c", Duration::from_secs(2))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn reset_resets_open_and_new_connections() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        echo(&mut open, b"a", Duration::from_secs(2)).await.unwrap();
        proxy.set_mode(Mode::Reset);
        let err = read_to_end(&mut open).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        let err = connect_and_read_to_end(proxy.addr()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        wait_for("no open connections", || proxy.connections_open() == 0).await;
    }

    #[tokio::test]
    async fn a_target_that_is_down_resets_the_client() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = FaultProxy::start(port).unwrap();
        let err = connect_and_read_to_end(proxy.addr()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let proxy = FaultProxy::start(echo_server().await).unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        echo(&mut s, b"a", Duration::from_secs(2)).await.unwrap();
        let addr = proxy.addr();
        drop(proxy);
        assert!(read_to_end(&mut s).await.is_ok());
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
