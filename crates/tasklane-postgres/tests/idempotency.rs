//! Idempotent creates across replicas, on the machine's real PostgreSQL: what another
//! connection's open transaction does to a create with the same key. (The behaviour every store
//! shares is in the port contract suite.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};
use tasklane_domain::{
    Description, Idempotency, IdempotencyKey, NewTask, RepoError, Status, StatusCounts,
    TaskRepository, Title,
};
use tasklane_testkit::db::TestDb;

fn new_task(title: &str) -> NewTask {
    NewTask {
        title: Title::new(title).unwrap(),
        description: Description::default(),
        status: Status::Todo,
    }
}

fn idempotency(key: &str, new: &NewTask) -> Idempotency {
    Idempotency::for_create(IdempotencyKey::new(key).unwrap(), new)
}

/// Another replica's create of `key`, begun on `client` and not committed: its key row and its
/// task, as the adapter writes them. Returns the task's id.
async fn begin_create_elsewhere(client: &tokio_postgres::Client, key: &str, new: &NewTask) -> i64 {
    client.batch_execute("BEGIN").await.unwrap();
    let fingerprint = idempotency(key, new).fingerprint;
    client
        .execute(
            "INSERT INTO task_idempotency_keys \
             (key, fingerprint, title, description, status, task_created_at) \
             VALUES ($1, $2, $3, '', 'todo', now())",
            &[
                &key,
                &fingerprint.as_bytes().as_slice(),
                &new.title.as_str(),
            ],
        )
        .await
        .unwrap();
    let id: i64 = client
        .query_one(
            "INSERT INTO tasks (title) VALUES ($1) RETURNING id",
            &[&new.title.as_str()],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "UPDATE task_idempotency_keys SET task_id = $2 WHERE key = $1",
            &[&key, &id],
        )
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn a_key_held_by_an_open_transaction_elsewhere_is_in_flight_within_a_second() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let other = db.client().await;
    let new = new_task("held elsewhere");
    begin_create_elsewhere(&other, "held", &new).await;

    let started = Instant::now();
    let outcome = repo
        .create(new.clone(), Some(idempotency("held", &new)))
        .await;
    let took = started.elapsed();

    assert!(
        matches!(outcome, Err(RepoError::IdempotencyKeyInFlight)),
        "{outcome:?}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    println!("in flight after {took:?}");

    // The other replica gives up: the key is free, and this create goes through.
    other.batch_execute("ROLLBACK").await.unwrap();
    let created = repo
        .create(new.clone(), Some(idempotency("held", &new)))
        .await
        .unwrap();
    assert!(!created.replayed);
    assert_eq!(
        repo.counts().await.unwrap(),
        StatusCounts {
            todo: 1,
            ..StatusCounts::default()
        }
    );
}

#[tokio::test]
async fn a_key_committed_elsewhere_while_waiting_is_replayed() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let other = db.client().await;
    let new = new_task("committed elsewhere");
    let id = begin_create_elsewhere(&other, "soon", &new).await;

    let commit = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        other.batch_execute("COMMIT").await.unwrap();
    };
    let (outcome, ()) = tokio::join!(
        repo.create(new.clone(), Some(idempotency("soon", &new))),
        commit
    );

    // The create waited for the other transaction, saw its committed key, and wrote nothing.
    // (On a machine too loaded to commit within the claim's 100 ms, it says "in flight".)
    match outcome {
        Ok(created) => {
            assert!(created.replayed);
            assert_eq!(created.task.id.get(), id);
        }
        Err(RepoError::IdempotencyKeyInFlight) => {}
        Err(e) => panic!("{e:?}"),
    }
    let created = repo
        .create(new.clone(), Some(idempotency("soon", &new)))
        .await
        .unwrap();
    assert!(created.replayed);
    assert_eq!(created.task.id.get(), id);
    assert_eq!(repo.counts().await.unwrap().todo, 1);
}

/// Only the claim of the key runs under the short lock timeout: once the key is this create's,
/// the rest of its transaction waits for locks as any write does.
#[tokio::test]
async fn only_the_claim_of_the_key_has_the_short_lock_timeout() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let other = db.client().await;
    // Every counter row locked: the create's insert into tasks must wait for them.
    other
        .batch_execute("BEGIN; SELECT * FROM task_status_counts FOR UPDATE")
        .await
        .unwrap();
    let release = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        other.batch_execute("COMMIT").await.unwrap();
    };
    let new = new_task("waits for the counters");

    let started = Instant::now();
    let (outcome, ()) = tokio::join!(
        repo.create(new.clone(), Some(idempotency("patient", &new))),
        release
    );

    let created = outcome.unwrap();
    assert!(!created.replayed);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(repo.counts().await.unwrap().todo, 1);
}
