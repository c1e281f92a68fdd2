//! What the SQLite adapter does beyond the port contract: files and folders, migrations, two
//! openers of one file, locks held by another process, the counters, rows that break the
//! domain's rules, and closing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{settings, TempDir};
use rusqlite::Connection;
use std::time::{Duration, Instant};
use tasklane_domain::{
    Description, Limit, ListQuery, NewTask, Precondition, RepoError, Status, StatusCounts, TaskId,
    TaskPatch, TaskRepository, Title,
};
use tasklane_sqlite::{migrate, migrations, open, SqliteError, SqliteSettings};

fn new_task(title: &str, status: Status) -> NewTask {
    NewTask {
        title: Title::new(title).unwrap(),
        description: Description::new("").unwrap(),
        status,
    }
}

/// A plain connection to the file, outside the adapter, to look at it or tamper with it.
fn raw(s: &SqliteSettings) -> Connection {
    let conn = Connection::open(&s.path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

#[tokio::test]
async fn open_creates_the_folder_and_the_file_and_keeps_data_across_reopening() {
    let dir = TempDir::new();
    let s = settings(dir.path());
    assert!(!s.path.parent().unwrap().exists());

    let repo = open(&s).await.unwrap();
    assert!(s.path.is_file());
    assert_eq!(repo.path(), s.path);
    let a = repo
        .create(new_task("kept", Status::Done), None)
        .await
        .unwrap()
        .task;
    let b = repo
        .create(new_task("deleted", Status::Todo), None)
        .await
        .unwrap()
        .task;
    repo.delete(b.id, Precondition::None).await.unwrap();
    repo.close();
    drop(repo);

    let journal: String = raw(&s)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");

    let repo = open(&s).await.unwrap();
    assert_eq!(repo.get(a.id).await.unwrap(), a);
    let c = repo
        .create(new_task("after", Status::Todo), None)
        .await
        .unwrap()
        .task;
    assert!(c.id > b.id, "ids are not reused across reopening");
    assert_eq!(
        repo.counts().await.unwrap(),
        StatusCounts {
            todo: 1,
            in_progress: 0,
            done: 1
        }
    );
}

#[tokio::test]
async fn migrate_applies_once_and_records_checksums() {
    let dir = TempDir::new();
    let s = settings(dir.path());
    assert_eq!(migrate(&s).await.unwrap(), migrations().len());
    assert_eq!(migrate(&s).await.unwrap(), 0);
    let _repo = open(&s).await.unwrap();
    assert_eq!(migrate(&s).await.unwrap(), 0);

    let recorded: Vec<(i64, String, String)> = raw(&s)
        .prepare("SELECT version, name, checksum FROM _tasklane_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<(i64, String, String)> = migrations()
        .iter()
        .map(|m| (m.version, m.name.to_owned(), m.checksum()))
        .collect();
    assert_eq!(recorded, expected);
}

#[tokio::test]
async fn an_applied_migration_that_changed_is_refused() {
    let dir = TempDir::new();
    let s = settings(dir.path());
    migrate(&s).await.unwrap();
    raw(&s)
        .execute(
            "UPDATE _tasklane_migrations SET checksum = 'edited' WHERE version = 1",
            [],
        )
        .unwrap();
    match open(&s).await {
        Err(e @ SqliteError::MigrationChanged { .. }) => {
            assert!(e.to_string().contains("0001_tasks"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        migrate(&s).await,
        Err(SqliteError::MigrationChanged { .. })
    ));
}

#[tokio::test]
async fn opening_a_file_another_connection_is_writing_waits_for_it() {
    let dir = TempDir::new();
    let s = settings(dir.path());
    if let Some(folder) = s.path.parent() {
        std::fs::create_dir_all(folder).unwrap();
    }
    // A file still in SQLite's default journal, with a write transaction open on it (as
    // another opener's would be): turning it to WAL has to wait for the writer, and SQLite does
    // not wait by itself there (no busy handler: it could deadlock).
    let writer = raw(&s);
    writer
        .execute_batch("CREATE TABLE t (x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
        .unwrap();
    let finished = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        writer.execute_batch("COMMIT").unwrap();
    });
    let started = Instant::now();
    let opened = open(&s).await;
    finished.join().unwrap();
    assert!(opened.is_ok(), "{opened:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it did not wait"
    );
    let mode: String = raw(&s)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_openers_of_a_new_file_migrate_it_once() {
    let dir = TempDir::new();
    let s = settings(dir.path());
    let mut openers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let s = s.clone();
        openers.spawn(async move { open(&s).await });
    }
    let mut repos = Vec::new();
    while let Some(opened) = openers.join_next().await {
        repos.push(opened.unwrap().unwrap());
    }
    let applied: i64 = raw(&s)
        .query_row("SELECT count(*) FROM _tasklane_migrations", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(usize::try_from(applied).unwrap(), migrations().len());
    // Each sees the others' writes.
    let task = repos[0]
        .create(new_task("shared", Status::Todo), None)
        .await
        .unwrap()
        .task;
    for repo in &repos {
        assert_eq!(repo.get(task.id).await.unwrap(), task);
    }
}

#[tokio::test]
async fn a_write_lock_held_elsewhere_makes_writes_unavailable_but_not_reads() {
    let dir = TempDir::new();
    let s = SqliteSettings {
        busy_timeout: Duration::from_millis(200),
        ..settings(dir.path())
    };
    let repo = open(&s).await.unwrap();
    let task = repo
        .create(new_task("before", Status::Todo), None)
        .await
        .unwrap()
        .task;

    // Another process (here: another connection) holds SQLite's write lock.
    let other = raw(&s);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let started = Instant::now();
    let outcome = repo.create(new_task("blocked", Status::Todo), None).await;
    assert!(
        matches!(outcome, Err(RepoError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(150), "it waited");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it gave up in time"
    );
    let outcome = repo
        .update(task.id, TaskPatch::default(), Precondition::None)
        .await;
    assert!(matches!(outcome, Err(RepoError::Unavailable(_))));

    // Write-ahead logging: readers do not wait for a writer.
    assert_eq!(repo.get(task.id).await.unwrap(), task);
    assert_eq!(
        repo.list(&Default::default()).await.unwrap().tasks,
        std::slice::from_ref(&task)
    );
    repo.ping().await.unwrap();

    other.execute_batch("ROLLBACK").unwrap();
    repo.create(new_task("after", Status::Todo), None)
        .await
        .unwrap();
    assert_eq!(repo.counts().await.unwrap().todo, 2);
}

/// The contract cannot make ties in `created_at` through the port; here they are made behind
/// the repository's back, with the cursor in the middle of a tie.
#[tokio::test]
async fn ties_in_created_at_are_broken_by_the_higher_id_across_pages() {
    let dir = TempDir::new();
    let s = settings(dir.path());
    let repo = open(&s).await.unwrap();
    let mut made = Vec::new();
    for i in 0..7 {
        made.push(
            repo.create(new_task(&format!("tie {i}"), Status::ALL[i % 3]), None)
                .await
                .unwrap()
                .task
                .id,
        );
    }
    // Three ties: {0, 1, 2} oldest, {3, 4, 5} in the middle, and 6 alone, newest.
    let conn = raw(&s);
    for (ids, at) in [(&made[0..3], 1_000_000_i64), (&made[3..6], 2_000_000)] {
        for id in ids {
            conn.execute(
                "UPDATE tasks SET created_at = ?1, updated_at = ?1 WHERE id = ?2",
                (at, id.get()),
            )
            .unwrap();
        }
    }
    conn.execute(
        "UPDATE tasks SET created_at = 3000000, updated_at = 3000000 WHERE id = ?1",
        [made[6].get()],
    )
    .unwrap();
    let expected: Vec<TaskId> = [6, 5, 4, 3, 2, 1, 0].iter().map(|&i| made[i]).collect();

    for limit in 1..=7 {
        let mut query = ListQuery {
            limit: Limit::new(limit).unwrap(),
            ..ListQuery::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = repo.list(&query).await.unwrap();
            seen.extend(page.tasks.iter().map(|t| t.id));
            match page.next {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
            assert!(seen.len() <= 7, "limit {limit}: {seen:?}");
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
    // Within one status too (the other index).
    let done = repo
        .list(&ListQuery {
            status: Some(Status::Done),
            limit: Limit::new(1).unwrap(),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    let rest = repo
        .list(&ListQuery {
            status: Some(Status::Done),
            cursor: done.next,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(done.tasks[0].id, made[5]);
    assert_eq!(
        rest.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        [made[2]]
    );
}

/// `updated_at` moves forward by at least a microsecond even when the clock is behind the stored
/// value (a clock stepped back, or two writes in one microsecond), as on PostgreSQL.
#[tokio::test]
async fn updated_at_moves_forward_even_when_the_clock_does_not() {
    let dir = TempDir::new();
    let s = settings(dir.path());
    let repo = open(&s).await.unwrap();
    let task = repo
        .create(new_task("ahead", Status::Todo), None)
        .await
        .unwrap()
        .task;
    let ahead = task.updated_at + chrono::Duration::days(1);
    raw(&s)
        .execute(
            "UPDATE tasks SET updated_at = ?1 WHERE id = ?2",
            (ahead.timestamp_micros(), task.id.get()),
        )
        .unwrap();
    let first = repo
        .update(task.id, TaskPatch::default(), Precondition::None)
        .await
        .unwrap();
    assert_eq!(first.updated_at, ahead + chrono::Duration::microseconds(1));
    let second = repo
        .update(task.id, TaskPatch::default(), Precondition::None)
        .await
        .unwrap();
    assert_eq!(second.updated_at, ahead + chrono::Duration::microseconds(2));
    assert_eq!(second.created_at, task.created_at);
}

#[tokio::test]
async fn counts_are_read_from_the_counters_not_by_scanning_tasks() {
    let dir = TempDir::new();
    let s = settings(dir.path());
    let repo = open(&s).await.unwrap();
    repo.create(new_task("one", Status::Todo), None)
        .await
        .unwrap();
    raw(&s)
        .execute(
            "UPDATE task_status_counts SET n = 41 WHERE status = 'done'",
            [],
        )
        .unwrap();
    assert_eq!(
        repo.counts().await.unwrap(),
        StatusCounts {
            todo: 1,
            in_progress: 0,
            done: 41
        }
    );
}

#[tokio::test]
async fn the_schema_refuses_what_the_domain_refuses_and_a_row_that_slips_by_is_unexpected() {
    let dir = TempDir::new();
    let s = settings(dir.path());
    let repo = open(&s).await.unwrap();
    let conn = raw(&s);
    let insert = |title: &str, status: &str, created: i64, updated: i64| {
        conn.execute(
            "INSERT INTO tasks (title, description, status, created_at, updated_at) \
             VALUES (?1, '', ?2, ?3, ?4)",
            (title, status, created, updated),
        )
    };
    let long = "é".repeat(256);
    for (what, outcome) in [
        ("blank title", insert("  ", "todo", 1, 1)),
        ("long title", insert(&long, "todo", 1, 1)),
        ("unknown status", insert("t", "Done", 1, 1)),
        ("updated before created", insert("t", "todo", 2, 1)),
        (
            "text timestamp",
            insert("t", "todo", 1, 1).and_then(|_| {
                conn.execute("UPDATE tasks SET created_at = 'now' WHERE title = 't'", [])
            }),
        ),
    ] {
        assert!(outcome.is_err(), "{what} was stored");
    }
    assert!(insert(&"é".repeat(255), "todo", 1, 1).is_ok());

    // A tab is whitespace to the domain but not to SQLite's trim(): such a row is a bug to
    // report, never a task to serve.
    insert(
        "\t",
        "in_progress",
        1_700_000_000_000_000,
        1_700_000_000_000_000,
    )
    .unwrap();
    let id: i64 = conn
        .query_row("SELECT id FROM tasks WHERE title = '\t'", [], |r| r.get(0))
        .unwrap();
    let outcome = repo.get(TaskId::new(id).unwrap()).await;
    assert!(
        matches!(outcome, Err(RepoError::Unexpected(_))),
        "{outcome:?}"
    );
    assert!(matches!(
        repo.list(&Default::default()).await,
        Err(RepoError::Unexpected(_))
    ));
}

#[tokio::test]
async fn settings_and_files_that_cannot_work_are_refused_clearly() {
    let dir = TempDir::new();
    let base = settings(dir.path());
    for (what, s) in [
        (
            "no path",
            SqliteSettings {
                path: "".into(),
                ..base.clone()
            },
        ),
        (
            "no readers",
            SqliteSettings {
                read_connections: 0,
                ..base.clone()
            },
        ),
        (
            "no busy timeout",
            SqliteSettings {
                busy_timeout: Duration::ZERO,
                ..base.clone()
            },
        ),
    ] {
        assert!(
            matches!(open(&s).await, Err(SqliteError::InvalidSetting(_))),
            "{what}"
        );
    }

    std::fs::create_dir_all(dir.path()).unwrap();
    let not_a_db = dir.path().join("notes.txt");
    std::fs::write(
        &not_a_db,
        "this is not a database, just some text that is long enough",
    )
    .unwrap();
    let outcome = open(&SqliteSettings {
        path: not_a_db.clone(),
        ..base.clone()
    })
    .await;
    assert!(
        matches!(outcome, Err(SqliteError::Open { .. })),
        "{outcome:?}"
    );

    let under_a_file = not_a_db.join("sub").join("tasklane.db");
    let outcome = open(&SqliteSettings {
        path: under_a_file,
        ..base
    })
    .await;
    assert!(
        matches!(outcome, Err(SqliteError::CreateDir { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_closed_repository_is_unavailable() {
    let dir = TempDir::new();
    let repo = open(&settings(dir.path())).await.unwrap();
    repo.close();
    assert!(matches!(repo.ping().await, Err(RepoError::Unavailable(_))));
    assert!(matches!(
        repo.create(new_task("late", Status::Todo), None).await,
        Err(RepoError::Unavailable(_))
    ));
}
