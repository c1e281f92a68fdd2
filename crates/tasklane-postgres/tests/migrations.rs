//! `migrate` against the machine's real PostgreSQL: idempotent, safe when replicas start at once,
//! refusing a schema whose applied files were edited, and upgrading a database that holds tasks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tasklane_domain::{Description, NewTask, Status, StatusCounts, TaskRepository, Title};
use tasklane_postgres::{migrate, migrations, MigrateError, PgTaskRepository};
use tasklane_testkit::db::TestDb;

/// The ledger as the database holds it: (version, name, checksum), in order.
async fn ledger(db: &TestDb) -> Vec<(i32, String, String)> {
    db.client()
        .await
        .query(
            "SELECT version, name, checksum FROM _tasklane_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn embedded() -> Vec<(i32, String, String)> {
    migrations()
        .iter()
        .map(|m| (m.version, m.name.to_owned(), m.checksum()))
        .collect()
}

#[tokio::test]
async fn a_current_database_has_nothing_left_to_apply() {
    let db = TestDb::new().await;
    let pool = db.pool().await;

    assert_eq!(migrate(&pool).await.unwrap(), 0);
    assert_eq!(migrate(&pool).await.unwrap(), 0);
    assert_eq!(ledger(&db).await, embedded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_a_fresh_database_at_once_all_succeed_and_apply_each_file_once() {
    let db = TestDb::empty().await;
    // Four "replicas", each with a pool of its own, start together.
    let mut pools = Vec::new();
    for _ in 0..4 {
        pools.push(db.pool().await);
    }

    let outcomes = futures_util::future::join_all(pools.iter().map(migrate)).await;

    let applied: Vec<usize> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        applied.iter().sum::<usize>(),
        migrations().len(),
        "{applied:?}"
    );
    assert_eq!(
        applied.iter().filter(|&&n| n > 0).count(),
        1,
        "one replica applies everything, the others find it done: {applied:?}"
    );
    assert_eq!(ledger(&db).await, embedded());

    // The schema works.
    let repo = PgTaskRepository::new(db.pool().await, db.settings().query_timeout);
    repo.create(
        NewTask {
            title: Title::new("after migrating").unwrap(),
            description: Description::default(),
            status: Status::Done,
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        repo.counts().await.unwrap(),
        StatusCounts {
            done: 1,
            ..StatusCounts::default()
        }
    );
}

#[tokio::test]
async fn migrating_leaves_no_connection_or_lock_behind_in_the_pool() {
    let db = TestDb::empty().await;
    let pool = db.pool().await;

    migrate(&pool).await.unwrap();

    // The migration's connection (which held the advisory lock) was closed, not pooled: another
    // session can take the lock at once.
    let locked: bool = db
        .client()
        .await
        .query_one(
            "SELECT pg_try_advisory_lock(x'7461736b6c616e65'::bigint)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(locked);
    assert_eq!(migrate(&pool).await.unwrap(), 0);
}

#[tokio::test]
async fn a_migration_edited_after_it_was_applied_is_refused() {
    let db = TestDb::new().await;
    let first = migrations()[0];
    db.client()
        .await
        .execute(
            "UPDATE _tasklane_migrations SET checksum = 'edited' WHERE version = $1",
            &[&first.version],
        )
        .await
        .unwrap();

    let outcome = migrate(&db.pool().await).await;

    match outcome {
        Err(MigrateError::Changed {
            name,
            recorded,
            embedded,
        }) => {
            assert_eq!(name, first.name);
            assert_eq!(recorded, "edited");
            assert_eq!(embedded, first.checksum());
        }
        other => panic!("expected Changed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_migration_recorded_by_a_newer_release_is_tolerated() {
    let db = TestDb::new().await;
    db.client()
        .await
        .execute(
            "INSERT INTO _tasklane_migrations (version, name, checksum) \
             VALUES (9999, '9999_from_the_future', 'x')",
            &[],
        )
        .await
        .unwrap();

    assert_eq!(migrate(&db.pool().await).await.unwrap(), 0);
}

/// An upgrade: a database at the previous release's schema (0001-0002), holding tasks, is
/// migrated by this build. Only 0003 to 0006 run; 0003 fills the lower-cased copies of the tasks
/// that were already there, so that searching them works at once (and still matches what ILIKE
/// does), and the counts the old triggers kept are still right and still kept.
#[tokio::test]
async fn upgrading_a_database_with_tasks_lets_search_find_them() {
    let db = TestDb::empty().await;
    let client = db.client().await;
    let previous: Vec<_> = migrations().iter().filter(|m| m.version <= 2).collect();
    assert_eq!(previous.len(), 2);
    let ledger_sql = "CREATE TABLE _tasklane_migrations (version INTEGER PRIMARY KEY, \
                      name TEXT NOT NULL, checksum TEXT NOT NULL, \
                      applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";
    // The ledger as `migrate` creates it (it only adds it when missing).
    client.batch_execute(ledger_sql).await.unwrap();
    for m in &previous {
        client.batch_execute(m.sql).await.unwrap();
        client
            .execute(
                "INSERT INTO _tasklane_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[&m.version, &m.name, &m.checksum()],
            )
            .await
            .unwrap();
    }
    client
        .batch_execute(
            "INSERT INTO tasks (title, description) VALUES \
             ('ÉCOLE visit', ''), ('Buy milk', 'near the École'), ('İstanbul trip', ''), \
             ('Unrelated', 'nothing')",
        )
        .await
        .unwrap();

    assert_eq!(
        migrate(&db.pool().await).await.unwrap(),
        4,
        "only 0003 to 0006"
    );
    assert_eq!(ledger(&db).await, embedded());

    let repo = PgTaskRepository::new(db.pool().await, db.settings().query_timeout);
    let titles = |text: &'static str| {
        let repo = repo.clone();
        async move {
            let query = tasklane_domain::ListQuery {
                search: tasklane_domain::SearchText::new(text).unwrap(),
                ..tasklane_domain::ListQuery::default()
            };
            let mut t: Vec<String> = repo
                .list(&query)
                .await
                .unwrap()
                .tasks
                .into_iter()
                .map(|t| t.title.as_str().to_owned())
                .collect();
            t.sort();
            t
        }
    };
    assert_eq!(titles("école").await, ["Buy milk", "ÉCOLE visit"]);
    assert_eq!(titles("ISTANBUL").await, ["İstanbul trip"]);
    assert_eq!(titles("nothing").await, ["Unrelated"]);
    // The copies are PostgreSQL's own lower(), the same function ILIKE applies.
    let same: bool = client
        .query_one(
            "SELECT bool_and(title_folded = lower(title) AND description_folded = lower(description) \
             AND description_head = left(lower(description), 300)) FROM tasks",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(same);

    // Counted when inserted under 0001's triggers; moved by 0005's.
    let counts = || async {
        let row = client
            .query_one(
                "SELECT (SELECT sum(n) FROM task_status_counts WHERE status = 'todo')::bigint, \
                 (SELECT sum(n) FROM task_status_counts WHERE status = 'done')::bigint",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    };
    assert_eq!(counts().await, (4, 0));
    client
        .batch_execute("UPDATE tasks SET status = 'done' WHERE title = 'Unrelated'")
        .await
        .unwrap();
    assert_eq!(counts().await, (3, 1));
}
