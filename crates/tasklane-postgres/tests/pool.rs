//! The sharded pool against the machine's real PostgreSQL: one pool's capacity and waiting
//! rules across its shards, and each claiming thread served from its own shard first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use deadpool_postgres::{PoolError, TimeoutType};
use std::time::{Duration, Instant};
use tasklane_postgres::{build_pool, Client, Pool, PoolStatus};
use tasklane_testkit::db::TestDb;

async fn pool(db: &TestDb, size: usize, shards: usize, wait: Duration) -> Pool {
    let mut settings = db.settings();
    settings.pool_size = size;
    settings.shards = shards;
    settings.wait_timeout = wait;
    build_pool(&settings).unwrap()
}

async fn take_all(pool: &Pool, n: usize) -> Vec<Client> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(pool.get().await.unwrap());
    }
    held
}

/// A caller asking for a connection, and keeping it, in a task of its own.
fn waiter(pool: &Pool) -> tokio::task::JoinHandle<Result<Client, PoolError>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.get().await })
}

/// Waits (bounded) until `n` callers wait for a connection.
async fn until_waiting(pool: &Pool, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.status().waiting != n {
        assert!(Instant::now() < deadline, "{:?}", pool.status());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_size_is_split_between_the_shards_and_no_shard_is_empty() {
    let db = TestDb::new().await;
    let uneven = pool(&db, 5, 2, Duration::from_millis(100)).await;
    assert_eq!(uneven.shards(), 2);
    let held = take_all(&uneven, 5).await;
    let in_shard = |s| held.iter().filter(|c| c.shard() == s).count();
    assert_eq!((in_shard(0), in_shard(1)), (3, 2));

    // More shards than connections: one connection a shard.
    assert_eq!(
        pool(&db, 3, 8, Duration::from_millis(100)).await.shards(),
        3
    );
    assert_eq!(
        pool(&db, 3, 0, Duration::from_millis(100)).await.shards(),
        1
    );
}

#[tokio::test]
async fn every_connection_of_every_shard_serves_before_anyone_waits_and_then_the_wait_is_bounded() {
    let db = TestDb::new().await;
    let wait = Duration::from_millis(200);
    let pool = pool(&db, 4, 2, wait).await;
    let held = take_all(&pool, 4).await;
    assert_eq!(
        pool.status(),
        PoolStatus {
            max_size: 4,
            size: 4,
            available: 0,
            waiting: 0
        }
    );
    for client in &held {
        client.simple_query("SELECT 1").await.unwrap();
    }

    let started = Instant::now();
    let outcome = pool.get().await;
    assert!(
        matches!(outcome, Err(PoolError::Timeout(TimeoutType::Wait))),
        "{outcome:?}"
    );
    assert!(started.elapsed() >= wait);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(pool.status().waiting, 0);

    // Four server connections, no more, however many shards.
    let monitor = db.client().await;
    let n: i64 = monitor
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
}

#[tokio::test]
async fn a_waiter_gets_a_connection_coming_back_to_any_shard_in_arrival_order() {
    let db = TestDb::new().await;
    let pool = pool(&db, 4, 2, Duration::from_secs(5)).await;
    let mut held = take_all(&pool, 4).await;

    let first = waiter(&pool);
    until_waiting(&pool, 1).await;
    let second = waiter(&pool);
    until_waiting(&pool, 2).await;

    // One connection of shard 1 comes back: the first waiter gets it, the second still waits.
    let from_one = held.iter().position(|c| c.shard() == 1).unwrap();
    drop(held.remove(from_one));
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.shard(), 1);
    until_waiting(&pool, 1).await;
    assert!(!second.is_finished());

    // Then one of shard 0.
    let from_zero = held.iter().position(|c| c.shard() == 0).unwrap();
    drop(held.remove(from_zero));
    assert_eq!(second.await.unwrap().unwrap().shard(), 0);
    assert_eq!(pool.status().waiting, 0);
}

#[tokio::test]
async fn a_connection_taken_out_for_good_makes_room_for_a_new_one_in_its_shard() {
    let db = TestDb::new().await;
    let pool = pool(&db, 2, 2, Duration::from_secs(5)).await;
    let mut held = take_all(&pool, 2).await;
    let waiting = waiter(&pool);
    until_waiting(&pool, 1).await;

    let taken = held.pop().unwrap();
    let shard = taken.shard();
    let kept = Client::take(taken);
    assert_eq!(waiting.await.unwrap().unwrap().shard(), shard);
    // The one taken out is no longer the pool's (which holds the other and the waiter's new
    // one, back in the pool now), and still works.
    kept.simple_query("SELECT 1").await.unwrap();
    let status = pool.status();
    assert_eq!((status.size, status.available), (2, 1));
}

#[tokio::test]
async fn closing_the_pool_ends_the_wait() {
    let db = TestDb::new().await;
    let pool = pool(&db, 2, 2, Duration::from_secs(30)).await;
    let _held = take_all(&pool, 2).await;
    let waiting = waiter(&pool);
    until_waiting(&pool, 1).await;
    pool.close();
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, Err(PoolError::Closed)), "{outcome:?}");
    assert!(matches!(pool.get().await, Err(PoolError::Closed)));
}

/// Each thread that claims a shard (as each HTTP worker does) is served from its own while it
/// has a free connection, and from the other once it has none.
#[test]
fn a_claiming_thread_is_served_from_its_own_shard_first() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (db, pool) = rt.block_on(async {
        let db = TestDb::new().await;
        let pool = pool(&db, 4, 2, Duration::from_millis(200)).await;
        (db, pool)
    });

    let worker = |pool: Pool| {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                pool.claim_thread();
                // Two of its own shard's two, then the other shard's.
                let held = take_all(&pool, 3).await;
                held.iter().map(Client::shard).collect::<Vec<_>>()
            })
        })
    };
    let first = worker(pool.clone()).join().unwrap();
    let second = worker(pool.clone()).join().unwrap();
    assert_eq!(first, [0, 0, 1]);
    assert_eq!(second, [1, 1, 0]);
    rt.block_on(async move {
        drop(pool);
        drop(db);
    });
}

/// A thread that claimed a shard and keeps its runtime running until told to stop.
struct Home {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Home {
    fn claim(pool: &Pool) -> Self {
        let (ready, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let pool = pool.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                pool.claim_thread();
                ready.send(tokio::runtime::Handle::current()).unwrap();
                let _ = stopped.await;
            });
        });
        Self {
            handle: handle.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the thread; its runtime, and every task on it, is gone after this.
    fn stop(mut self) {
        drop(self.stop.take());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// A shard's connections are opened and driven on the runtime of the thread that claimed it,
/// even when a caller on another thread opens them; once that runtime is gone, they are opened
/// on the caller's.
#[tokio::test]
async fn a_shards_connections_live_on_the_thread_that_claimed_it_while_it_runs() {
    let db = TestDb::new().await;
    let pool = pool(&db, 2, 2, Duration::from_secs(5)).await;
    let home = Home::claim(&pool);
    let before = home.handle.metrics().num_alive_tasks();

    // This thread claimed nothing: it takes both, one from each shard.
    let held = take_all(&pool, 2).await;
    let mut shards: Vec<_> = held.iter().map(Client::shard).collect();
    shards.sort_unstable();
    assert_eq!(shards, [0, 1]);
    for client in &held {
        client.simple_query("SELECT 1").await.unwrap();
    }
    // Shard 0's connection is driven by a task on the home runtime; shard 1 has no home.
    assert_eq!(home.handle.metrics().num_alive_tasks(), before + 1);
    drop(held);

    // The home thread stops: shard 0's connection closes with its runtime. The next callers
    // get working connections all the same, shard 0's now opened here.
    home.stop();
    let held = take_all(&pool, 2).await;
    for client in &held {
        client.simple_query("SELECT 1").await.unwrap();
    }
    assert_eq!(pool.status().size, 2);
}

/// A thread outside any runtime may claim a shard (an unexpected caller of the server's factory
/// must not kill a worker): it is served from that shard first, and the shard's connections are
/// opened on their callers' runtimes.
#[tokio::test]
async fn a_thread_outside_any_runtime_can_claim_a_shard() {
    let db = TestDb::new().await;
    let pool = pool(&db, 2, 2, Duration::from_secs(5)).await;
    let claimer = pool.clone();
    std::thread::spawn(move || claimer.claim_thread())
        .join()
        .expect("claiming outside a runtime does not panic");
    let held = take_all(&pool, 2).await;
    for client in &held {
        client.simple_query("SELECT 1").await.unwrap();
    }
}
