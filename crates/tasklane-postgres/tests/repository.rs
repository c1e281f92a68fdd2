//! `PgTaskRepository` against the machine's real PostgreSQL, each test in a database of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration as TimeDelta, TimeZone, Utc};
use std::time::{Duration, Instant};
use tasklane_domain::{
    Cursor, Description, Limit, ListQuery, NewTask, Precondition, RepoError, SearchText, Status,
    StatusCounts, Task, TaskId, TaskPatch, TaskRepository, Title, Version,
};
use tasklane_postgres::{build_pool, PgTaskRepository};
use tasklane_testkit::db::{pg_settings, TestDb};

fn new_task(title: &str, description: &str, status: Status) -> NewTask {
    NewTask {
        title: Title::new(title).unwrap(),
        description: Description::new(description).unwrap(),
        status,
    }
}

async fn create(repo: &PgTaskRepository, title: &str, status: Status) -> Task {
    create_described(repo, title, "", status).await
}

async fn create_described(
    repo: &PgTaskRepository,
    title: &str,
    description: &str,
    status: Status,
) -> Task {
    repo.create(new_task(title, description, status), None)
        .await
        .unwrap()
        .task
}

fn title_patch(title: &str) -> TaskPatch {
    TaskPatch {
        title: Some(Title::new(title).unwrap()),
        ..TaskPatch::default()
    }
}

fn status_patch(status: Status) -> TaskPatch {
    TaskPatch {
        status: Some(status),
        ..TaskPatch::default()
    }
}

fn at(year: i32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap()
}

/// Sets `created_at` (and `updated_at`, which may not be earlier) behind the repository's back,
/// to make ties and known orders.
async fn set_created_at(db: &TestDb, ids: &[TaskId], when: DateTime<Utc>) {
    let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    db.client()
        .await
        .execute(
            "UPDATE tasks SET created_at = $1, updated_at = $1 WHERE id = ANY($2)",
            &[&when, &ids],
        )
        .await
        .unwrap();
}

/// Every page of `query`, following `next` until it is absent.
async fn all_pages(repo: &PgTaskRepository, mut query: ListQuery) -> Vec<Vec<Task>> {
    let mut pages = Vec::new();
    loop {
        let page = repo.list(&query).await.unwrap();
        assert!(page.tasks.len() <= query.limit.get() as usize);
        let next = page.next;
        pages.push(page.tasks);
        match next {
            Some(cursor) => query.cursor = Some(cursor),
            None => return pages,
        }
        assert!(pages.len() < 1000, "the cursor does not advance");
    }
}

fn ids(tasks: &[Task]) -> Vec<i64> {
    tasks.iter().map(|t| t.id.get()).collect()
}

fn search(text: &str) -> ListQuery {
    ListQuery {
        search: SearchText::new(text).unwrap(),
        ..ListQuery::default()
    }
}

/// The ids of the tasks whose title or description holds `text`, case aside, in the list's
/// order: what a search must find, computed the plainest way (a substring test on every row).
async fn ids_holding(client: &tokio_postgres::Client, text: &str) -> Vec<i64> {
    client
        .query(
            "SELECT id FROM tasks WHERE strpos(lower(title), lower($1)) > 0 \
             OR strpos(lower(description), lower($1)) > 0 ORDER BY created_at DESC, id DESC",
            &[&text],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What a `COUNT(*)` over the table says, to check the counters against.
async fn counted(db: &TestDb) -> StatusCounts {
    let mut counts = StatusCounts::default();
    for row in db
        .client()
        .await
        .query("SELECT status, count(*) FROM tasks GROUP BY status", &[])
        .await
        .unwrap()
    {
        let status: String = row.get(0);
        let n: i64 = row.get(1);
        counts.set(status.parse().unwrap(), u64::try_from(n).unwrap());
    }
    counts
}

fn counts(todo: u64, in_progress: u64, done: u64) -> StatusCounts {
    StatusCounts {
        todo,
        in_progress,
        done,
    }
}

#[tokio::test]
async fn create_stores_version_1_and_get_reads_back_the_same_task() {
    let db = TestDb::new().await;
    let repo = db.repository().await;

    let task = create_described(
        &repo,
        "Learn Docker",
        "Complete Docker tutorial series",
        Status::InProgress,
    )
    .await;

    assert_eq!(task.title.as_str(), "Learn Docker");
    assert_eq!(task.description.as_str(), "Complete Docker tutorial series");
    assert_eq!(task.status, Status::InProgress);
    assert_eq!(task.version, Version::new(1));
    assert_eq!(task.updated_at, task.created_at);
    assert_eq!(repo.get(task.id).await.unwrap(), task);

    // The longest values the domain allows, in multi-byte characters, survive the round trip.
    let long = create_described(&repo, &"é".repeat(255), &"🦀".repeat(10_000), Status::Done).await;
    assert_eq!(repo.get(long.id).await.unwrap(), long);
    assert_eq!(long.title.as_str().chars().count(), 255);
    assert!(long.id.get() > task.id.get());
}

#[tokio::test]
async fn get_of_an_unknown_id_is_not_found() {
    let db = TestDb::new().await;
    let repo = db.repository().await;

    let missing = TaskId::new(i64::MAX).unwrap();
    assert!(matches!(repo.get(missing).await, Err(RepoError::NotFound)));
}

#[tokio::test]
async fn list_is_newest_first_with_ties_broken_by_the_higher_id() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(create(&repo, &format!("task {i}"), Status::Todo).await);
    }
    let t: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    // The three oldest ids are the newest tasks, three to a timestamp: created_at decides first,
    // then the id.
    set_created_at(&db, &t[..3], at(2030)).await;
    set_created_at(&db, &t[3..], at(2020)).await;

    let page = repo.list(&ListQuery::default()).await.unwrap();

    let expected: Vec<i64> = [2, 1, 0, 5, 4, 3].iter().map(|&i| t[i].get()).collect();
    assert_eq!(ids(&page.tasks), expected);
    assert_eq!(page.next, None);
    assert_eq!(page.tasks[0].created_at, at(2030));
}

#[tokio::test]
async fn pages_follow_the_cursor_without_gaps_or_repeats() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let mut created = Vec::new();
    for i in 0..24 {
        created.push(create(&repo, &format!("task {i}"), Status::Todo).await);
    }
    // Four timestamps, six tasks each, interleaved with the ids: plenty of ties at page breaks.
    let years = [2021, 2024, 2022, 2023];
    for (k, year) in years.iter().enumerate() {
        let group: Vec<TaskId> = created.iter().skip(k).step_by(4).map(|t| t.id).collect();
        set_created_at(&db, &group, at(*year)).await;
    }
    let mut expected: Vec<(DateTime<Utc>, i64)> = created
        .iter()
        .enumerate()
        .map(|(i, t)| (at(years[i % 4]), t.id.get()))
        .collect();
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<i64> = expected.into_iter().map(|(_, id)| id).collect();

    for (limit, pages_expected) in [(1, 24), (4, 6), (5, 5), (23, 2), (24, 1), (500, 1)] {
        let query = ListQuery {
            limit: Limit::new(limit).unwrap(),
            ..ListQuery::default()
        };
        let pages = all_pages(&repo, query).await;
        let seen: Vec<i64> = pages.iter().flat_map(|p| ids(p)).collect();
        assert_eq!(seen, expected, "limit {limit}");
        assert_eq!(
            pages.len(),
            pages_expected,
            "limit {limit}: no empty last page"
        );
    }
}

#[tokio::test]
async fn a_cursor_skips_tasks_created_after_it_and_keeps_its_place_after_deletes() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    for i in 0..5 {
        create(&repo, &format!("task {i}"), Status::Todo).await;
    }
    let query = ListQuery {
        limit: Limit::new(2).unwrap(),
        ..ListQuery::default()
    };
    let first = repo.list(&query).await.unwrap();
    let cursor = first.next.unwrap();
    assert_eq!(cursor, Cursor::after(&first.tasks[1]));

    // A newer task and the deletion of the cursor's own task change nothing after the cursor.
    create(&repo, "newer", Status::Todo).await;
    repo.delete(first.tasks[1].id, Precondition::None)
        .await
        .unwrap();
    let rest = all_pages(
        &repo,
        ListQuery {
            cursor: Some(cursor),
            ..query
        },
    )
    .await;
    let rest: Vec<Task> = rest.into_iter().flatten().collect();
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|t| t.id.get() < first.tasks[1].id.get()));
}

#[tokio::test]
async fn the_status_filter_lists_and_pages_only_that_status() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let mut done = Vec::new();
    for i in 0..7 {
        let status = [Status::Todo, Status::Done, Status::InProgress][i % 3];
        let task = create(&repo, &format!("task {i}"), status).await;
        if status == Status::Done {
            done.push(task.id.get());
        }
    }
    done.reverse();

    let pages = all_pages(
        &repo,
        ListQuery {
            status: Some(Status::Done),
            limit: Limit::new(1).unwrap(),
            ..ListQuery::default()
        },
    )
    .await;

    let seen: Vec<i64> = pages.iter().flat_map(|p| ids(p)).collect();
    assert_eq!(seen, done);
    assert!(pages.iter().flatten().all(|t| t.status == Status::Done));
}

#[tokio::test]
async fn search_is_case_insensitive_unicode_aware_and_literal() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let mut made = Vec::new();
    for (title, description, status) in [
        ("ÉCOLE primaire", "", Status::Todo),
        ("Buy milk", "near the école", Status::Done),
        ("100% done", "", Status::Todo),
        ("1000 done", "", Status::Todo),
        ("snake_case", "", Status::Todo),
        ("snakeXcase", "", Status::Todo),
        ("C:\\temp", "", Status::Todo),
        ("C:temp", "", Status::Todo),
        ("Straße", "", Status::Todo),
    ] {
        made.push(create_described(&repo, title, description, status).await);
    }
    let titles = |tasks: Vec<Task>| -> Vec<String> {
        let mut t: Vec<String> = tasks.into_iter().map(|t| t.title.into_inner()).collect();
        t.sort();
        t
    };
    let found = |text: &'static str| {
        let repo = repo.clone();
        async move { titles(repo.list(&search(text)).await.unwrap().tasks) }
    };

    assert_eq!(found("école").await, ["Buy milk", "ÉCOLE primaire"]);
    assert_eq!(found("ÉCOLE").await, ["Buy milk", "ÉCOLE primaire"]);
    assert_eq!(found("MILK").await, ["Buy milk"]);
    assert_eq!(
        found("NEAR THE").await,
        ["Buy milk"],
        "the description is searched too"
    );
    assert_eq!(
        found("STRASSE").await,
        Vec::<String>::new(),
        "no folding beyond case"
    );
    assert_eq!(found("straße").await, ["Straße"]);
    assert_eq!(found("0%").await, ["100% done"], "% is literal");
    assert_eq!(found("%").await, ["100% done"]);
    assert_eq!(found("e_c").await, ["snake_case"], "_ is literal");
    assert_eq!(found("_").await, ["snake_case"]);
    assert_eq!(found("\\t").await, ["C:\\temp"], "\\ is literal");
    assert_eq!(found("nothing like it").await, Vec::<String>::new());

    // Combined with the status filter, and paged.
    let done_ecole = repo
        .list(&ListQuery {
            status: Some(Status::Done),
            ..search("école")
        })
        .await
        .unwrap();
    assert_eq!(titles(done_ecole.tasks), ["Buy milk"]);
    let pages = all_pages(
        &repo,
        ListQuery {
            limit: Limit::new(1).unwrap(),
            ..search("done")
        },
    )
    .await;
    let seen: Vec<i64> = pages.iter().flat_map(|p| ids(p)).collect();
    assert_eq!(seen, vec![made[3].id.get(), made[2].id.get()]);
}

#[tokio::test]
async fn update_changes_only_the_given_fields_and_moves_version_and_updated_at() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let v1 = create_described(&repo, "Build API", "Create RESTful API", Status::Todo).await;

    let v2 = repo
        .update(v1.id, status_patch(Status::Done), Precondition::None)
        .await
        .unwrap();
    assert_eq!(v2.status, Status::Done);
    assert_eq!((&v2.title, &v2.description), (&v1.title, &v1.description));
    assert_eq!(v2.version, Version::new(2));
    assert_eq!(v2.created_at, v1.created_at);
    assert!(v2.updated_at > v1.updated_at);

    let v3 = repo
        .update(
            v1.id,
            TaskPatch {
                title: Some(Title::new("Build the API").unwrap()),
                description: Some(Description::default()),
                status: None,
            },
            Precondition::None,
        )
        .await
        .unwrap();
    assert_eq!(v3.title.as_str(), "Build the API");
    assert_eq!(v3.description.as_str(), "");
    assert_eq!(v3.status, Status::Done);
    assert_eq!(v3.version, Version::new(3));
    assert!(v3.updated_at > v2.updated_at);

    // An empty patch still counts as a change: new version, new updated_at.
    let v4 = repo
        .update(v1.id, TaskPatch::default(), Precondition::None)
        .await
        .unwrap();
    assert_eq!(v4.version, Version::new(4));
    assert!(v4.updated_at > v3.updated_at);
    assert_eq!(repo.get(v1.id).await.unwrap(), v4);
}

#[tokio::test]
async fn updated_at_moves_forward_even_when_the_clock_does_not() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let task = create(&repo, "clock", Status::Todo).await;
    // As if the last write came from a server whose clock was an hour ahead.
    let ahead = task.created_at + TimeDelta::hours(1);
    db.client()
        .await
        .execute(
            "UPDATE tasks SET updated_at = $1 WHERE id = $2",
            &[&ahead, &task.id.get()],
        )
        .await
        .unwrap();

    let updated = repo
        .update(task.id, TaskPatch::default(), Precondition::None)
        .await
        .unwrap();

    assert_eq!(updated.updated_at, ahead + TimeDelta::microseconds(1));
}

#[tokio::test]
async fn update_preconditions_refuse_without_writing() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let v1 = create(&repo, "original", Status::Todo).await;
    let missing = TaskId::new(v1.id.get() + 1000).unwrap();

    let v2 = repo
        .update(
            v1.id,
            title_patch("second"),
            Precondition::Version(v1.version),
        )
        .await
        .unwrap();
    assert_eq!(v2.version, Version::new(2));

    // A stale version, and a condition that can never hold: refused, nothing written.
    for stale in [
        Precondition::Version(v1.version),
        Precondition::Version(Version::new(99)),
        Precondition::Never,
    ] {
        let refused = repo.update(v1.id, status_patch(Status::Done), stale).await;
        assert!(
            matches!(refused, Err(RepoError::PreconditionFailed)),
            "{stale:?}: {refused:?}"
        );
        assert_eq!(repo.get(v1.id).await.unwrap(), v2, "{stale:?}");
    }
    assert_eq!(repo.counts().await.unwrap(), counts(1, 0, 0));

    let v3 = repo
        .update(v1.id, title_patch("third"), Precondition::Exists)
        .await
        .unwrap();
    assert_eq!(v3.version, Version::new(3));

    for any in [
        Precondition::None,
        Precondition::Exists,
        Precondition::Version(Version::new(1)),
        Precondition::Never,
    ] {
        let outcome = repo.update(missing, title_patch("x"), any).await;
        assert!(
            matches!(outcome, Err(RepoError::NotFound)),
            "{any:?}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn delete_honours_preconditions_and_reports_not_found() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let task = create(&repo, "doomed", Status::Done).await;

    for refused in [Precondition::Version(Version::new(2)), Precondition::Never] {
        assert!(matches!(
            repo.delete(task.id, refused).await,
            Err(RepoError::PreconditionFailed)
        ));
        assert_eq!(repo.get(task.id).await.unwrap(), task);
    }

    repo.delete(task.id, Precondition::Version(task.version))
        .await
        .unwrap();

    assert!(matches!(repo.get(task.id).await, Err(RepoError::NotFound)));
    for any in [
        Precondition::None,
        Precondition::Exists,
        Precondition::Version(task.version),
        Precondition::Never,
    ] {
        assert!(
            matches!(repo.delete(task.id, any).await, Err(RepoError::NotFound)),
            "{any:?}"
        );
    }
    assert_eq!(repo.counts().await.unwrap(), StatusCounts::default());
    assert!(repo
        .list(&ListQuery::default())
        .await
        .unwrap()
        .tasks
        .is_empty());

    let other = create(&repo, "kept", Status::Todo).await;
    repo.delete(other.id, Precondition::Exists).await.unwrap();
}

#[tokio::test]
async fn counts_follow_creates_status_changes_and_deletes() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    assert_eq!(repo.counts().await.unwrap(), StatusCounts::default());

    let mut tasks = Vec::new();
    for status in [
        Status::Todo,
        Status::Todo,
        Status::Todo,
        Status::InProgress,
        Status::InProgress,
        Status::Done,
    ] {
        tasks.push(create(&repo, "t", status).await);
    }
    assert_eq!(repo.counts().await.unwrap(), counts(3, 2, 1));

    repo.update(tasks[0].id, status_patch(Status::Done), Precondition::None)
        .await
        .unwrap();
    // Neither a title change nor setting the same status moves a count, or even writes a
    // counter row.
    let client = db.client().await;
    let counter_versions = || async {
        client
            .query_one(
                "SELECT string_agg(xmin::text, ',' ORDER BY status, shard) FROM task_status_counts",
                &[],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    let before = counter_versions().await;
    repo.update(tasks[1].id, title_patch("renamed"), Precondition::None)
        .await
        .unwrap();
    repo.update(
        tasks[3].id,
        status_patch(Status::InProgress),
        Precondition::None,
    )
    .await
    .unwrap();
    assert_eq!(counter_versions().await, before);
    assert_eq!(repo.counts().await.unwrap(), counts(2, 2, 2));

    repo.delete(tasks[5].id, Precondition::None).await.unwrap();
    repo.delete(tasks[4].id, Precondition::None).await.unwrap();
    assert_eq!(repo.counts().await.unwrap(), counts(2, 1, 1));
    assert_eq!(repo.counts().await.unwrap(), counted(&db).await);

    // An UPDATE of many rows at once, run by hand, is counted row by row.
    client
        .batch_execute(
            "UPDATE tasks SET status = CASE status WHEN 'todo' THEN 'done' ELSE 'todo' END",
        )
        .await
        .unwrap();
    assert_eq!(repo.counts().await.unwrap(), counts(2, 0, 2));
    assert_eq!(repo.counts().await.unwrap(), counted(&db).await);
}

#[tokio::test]
async fn counts_are_read_from_the_counters_not_by_scanning_tasks() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    create(&repo, "one", Status::Done).await;
    let client = db.client().await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM task_status_counts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 48, "3 statuses x 16 shards");

    // Bump one shard behind the table's back: counts() must reflect the counters, which it can
    // only do if it reads them (a COUNT(*) over tasks would still say 1).
    client
        .execute(
            "UPDATE task_status_counts SET n = n + 40 WHERE status = 'done' AND shard = 3",
            &[],
        )
        .await
        .unwrap();

    assert_eq!(repo.counts().await.unwrap(), counts(0, 0, 41));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_keep_counts_exact_without_deadlocks() {
    let db = TestDb::new().await;
    let mut settings = db.settings();
    settings.pool_size = 8;
    let repo = PgTaskRepository::new(build_pool(&settings).unwrap(), settings.query_timeout);

    // Eight writers create at once, each on its own connection (so several counter shards).
    let creators = (0..8).map(|w| {
        let repo = repo.clone();
        tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0..20 {
                let status = if (w + i) % 2 == 0 {
                    Status::Todo
                } else {
                    Status::Done
                };
                made.push(create(&repo, &format!("w{w} t{i}"), status).await);
            }
            made
        })
    });
    let mut all: Vec<Task> = Vec::new();
    for made in futures_util::future::join_all(creators).await {
        all.extend(made.unwrap());
    }
    assert_eq!(repo.counts().await.unwrap(), counts(80, 0, 80));
    assert_eq!(repo.counts().await.unwrap(), counted(&db).await);

    // Then opposite moves at once (todo -> done and done -> todo on the same shards), title
    // edits, deletes and more creates: no deadlock, and the counts still match the table.
    let movers = all.chunks(10).enumerate().map(|(k, chunk)| {
        let repo = repo.clone();
        let chunk = chunk.to_vec();
        tokio::spawn(async move {
            for task in chunk {
                let flipped = if task.status == Status::Todo {
                    Status::Done
                } else {
                    Status::Todo
                };
                match k % 4 {
                    0 => repo.delete(task.id, Precondition::None).await.map(drop),
                    1 => repo
                        .update(task.id, title_patch("edited"), Precondition::None)
                        .await
                        .map(drop),
                    _ => repo
                        .update(task.id, status_patch(flipped), Precondition::None)
                        .await
                        .map(drop),
                }
                .unwrap();
                repo.create(new_task("late", "", Status::InProgress), None)
                    .await
                    .unwrap();
            }
        })
    });
    for mover in futures_util::future::join_all(movers).await {
        mover.unwrap();
    }

    let now = repo.counts().await.unwrap();
    assert_eq!(now, counted(&db).await);
    assert_eq!(now.in_progress, 160);
    assert_eq!(now.total(), 160 + 160 - 40);
}

#[tokio::test]
async fn ping_answers_when_the_database_does() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    repo.ping().await.unwrap();
}

#[tokio::test]
async fn a_statement_blocked_past_the_query_timeout_is_unavailable_and_cancelled() {
    let db = TestDb::new().await;
    let task = create(&db.repository().await, "locked", Status::Todo).await;
    let impatient = PgTaskRepository::new(db.pool().await, Duration::from_millis(50));
    assert_eq!(impatient.pool().status().size, 1);

    // Another session holds the row lock the UPDATE needs, for as long as this test wants.
    let blocker = db.client().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM tasks WHERE id = {} FOR UPDATE",
            task.id
        ))
        .await
        .unwrap();

    let started = Instant::now();
    let outcome = impatient
        .update(task.id, title_patch("should not land"), Precondition::None)
        .await;
    let took = started.elapsed();

    assert!(
        matches!(outcome, Err(RepoError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(
        impatient.pool().status().size,
        0,
        "the timed-out connection is not returned to the pool"
    );

    // The server stops waiting too: the UPDATE was cancelled, not left queued behind the lock
    // to land once it is released.
    db.until_lock_waits(<[String]>::is_empty).await;
    blocker.batch_execute("ROLLBACK").await.unwrap();

    assert_eq!(impatient.get(task.id).await.unwrap(), task);
}

#[tokio::test]
async fn an_exhausted_pool_is_unavailable_after_the_wait_timeout() {
    let db = TestDb::new().await;
    let mut settings = db.settings();
    settings.pool_size = 1;
    settings.wait_timeout = Duration::from_millis(100);
    let repo = PgTaskRepository::new(build_pool(&settings).unwrap(), settings.query_timeout);
    let held = repo.pool().get().await.unwrap();

    let started = Instant::now();
    let outcome = repo.ping().await;

    assert!(
        matches!(outcome, Err(RepoError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(held);
    repo.ping().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_quickly() {
    // Nothing listens on port 1: the connection is refused.
    let mut settings = pg_settings("postgres://postgres@127.0.0.1:1/postgres");
    settings.connect_timeout = Duration::from_millis(500);
    let repo = PgTaskRepository::new(build_pool(&settings).unwrap(), settings.query_timeout);
    let started = Instant::now();

    assert!(matches!(repo.ping().await, Err(RepoError::Unavailable(_))));
    assert!(matches!(
        repo.get(TaskId::new(1).unwrap()).await,
        Err(RepoError::Unavailable(_))
    ));
    assert!(matches!(
        repo.list(&ListQuery::default()).await,
        Err(RepoError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_schema_refuses_what_the_domain_refuses_and_a_row_that_slips_by_is_unexpected() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let task = create(&repo, "fine", Status::Todo).await;
    let client = db.client().await;
    let id = task.id.get();

    for bad in [
        "UPDATE tasks SET description = repeat('x', 10001) WHERE id = $1",
        "UPDATE tasks SET title = '   ' WHERE id = $1",
        "UPDATE tasks SET status = 'blocked' WHERE id = $1",
        "UPDATE tasks SET version = 0 WHERE id = $1",
        "UPDATE tasks SET updated_at = created_at - interval '1 second' WHERE id = $1",
    ] {
        let refused = client.execute(bad, &[&id]).await.err();
        assert_eq!(
            refused.as_ref().and_then(|e| e.code()),
            Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
            "{bad}"
        );
    }

    // The schema's blank check trims spaces only; the domain also calls a lone tab blank. Such a
    // row is reported, not served.
    client
        .execute("UPDATE tasks SET title = E'\\t' WHERE id = $1", &[&id])
        .await
        .unwrap();

    let outcome = repo.get(task.id).await;

    assert!(
        matches!(outcome, Err(RepoError::Unexpected(_))),
        "{outcome:?}"
    );
}

/// Another session takes the whole table for itself: every statement on `tasks` waits behind
/// it, on the server, until `ROLLBACK`.
async fn lock_the_table(db: &TestDb) -> tokio_postgres::Client {
    let blocker = db.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    blocker
}

/// The statement a search for `text` sends the server, seen while the table is locked.
async fn search_statement(db: &TestDb, repo: &PgTaskRepository, text: &str) -> String {
    search_statement_with(db, repo, search(text)).await
}

/// What the server is asked for `query`, seen while the table is locked.
async fn search_statement_with(db: &TestDb, repo: &PgTaskRepository, query: ListQuery) -> String {
    let blocker = lock_the_table(db).await;
    let repo = repo.clone();
    let running = tokio::spawn(async move { repo.list(&query).await });
    let waiting = db.until_lock_waits(|w| !w.is_empty()).await;
    blocker.batch_execute("ROLLBACK").await.unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    waiting.into_iter().next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_past_their_slots_wait_in_the_process_and_leave_connections_to_the_rest() {
    let db = TestDb::new().await;
    let mut settings = db.settings();
    settings.pool_size = 4;
    let repo = PgTaskRepository::new(build_pool(&settings).unwrap(), settings.query_timeout)
        .with_search_slots(1);
    let wanted = create(&repo, "find the needle", Status::Todo).await;
    // A sample is taken now, so no search below starts one.
    repo.resample_search_texts().await.unwrap();
    let blocker = lock_the_table(&db).await;

    // Three searches at once: one takes the slot and a connection and waits on the server; the
    // other two wait in the process, holding no connection. (Their texts differ: identical
    // ones waiting would share one statement, see the next test.)
    let searches: Vec<_> = ["NEEDLE", "needle", "Needle"]
        .into_iter()
        .map(|text| {
            let repo = repo.clone();
            tokio::spawn(async move { repo.list(&search(text)).await })
        })
        .collect();
    let waiting = db.until_lock_waits(|w| !w.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while repo.search_slots().waiting < 2 {
        assert!(Instant::now() < deadline, "{:?}", repo.search_slots());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let slots = repo.search_slots();
    assert_eq!((slots.max, slots.running, slots.waiting), (1, 1, 2));
    assert_eq!(waiting.len(), 1, "one search on the server: {waiting:?}");
    assert!(waiting[0].contains("LIKE"), "{waiting:?}");

    // A point read still gets a connection (it waits on the same lock, on the server).
    let get = {
        let repo = repo.clone();
        tokio::spawn(async move { repo.get(wanted.id).await })
    };
    let waiting = db.until_lock_waits(|w| w.len() == 2).await;
    assert_eq!(
        waiting.iter().filter(|q| q.contains("LIKE")).count(),
        1,
        "still one search on the server: {waiting:?}"
    );
    assert_eq!(repo.pool().status().size, 2);

    // Once the lock goes, everything finishes, each search with the right answer.
    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(get.await.unwrap().unwrap(), wanted);
    for found in futures_util::future::join_all(searches).await {
        assert_eq!(found.unwrap().unwrap().tasks, vec![wanted.clone()]);
    }
    let slots = repo.search_slots();
    assert_eq!((slots.running, slots.waiting), (0, 0));
}

/// Identical list reads waiting to start (here for a connection) share one statement, which
/// sees what was written before the last of them arrived; a read whose statement is already on
/// its way is joined by no one (`joined_lists.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_reads_waiting_to_start_share_one_statement_that_sees_writes_before_them() {
    let db = TestDb::new().await;
    let mut settings = db.settings();
    settings.pool_size = 2;
    settings.wait_timeout = Duration::from_secs(10);
    let repo = PgTaskRepository::new(build_pool(&settings).unwrap(), settings.query_timeout)
        .with_search_slots(2);
    let old = create(&repo, "find the needle", Status::Todo).await;
    repo.resample_search_texts().await.unwrap();
    let reading = |query: ListQuery| {
        let repo = repo.clone();
        tokio::spawn(async move { repo.list(&query).await })
    };

    // Every connection taken: the first reads wait for one, open to joining.
    let held = [
        repo.pool().get().await.unwrap(),
        repo.pool().get().await.unwrap(),
    ];
    let search_first = reading(search("needle"));
    let list_first = reading(ListQuery::default());
    let deadline = Instant::now() + Duration::from_secs(5);
    while repo.pool().status().waiting < 2 {
        assert!(Instant::now() < deadline, "{:?}", repo.pool().status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A task written (and committed) after those reads began, before the next ones do.
    db.client()
        .await
        .batch_execute("INSERT INTO tasks (title) VALUES ('another needle')")
        .await
        .unwrap();
    let search_second = reading(search("needle"));
    let list_second = reading(ListQuery::default());
    while repo.joined_lists() < 2 {
        assert!(Instant::now() < deadline, "joined {}", repo.joined_lists());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The later readers wait for no connection of their own.
    assert_eq!(repo.pool().status().waiting, 2);
    drop(held);

    let searched = search_second.await.unwrap().unwrap();
    let listed = list_second.await.unwrap().unwrap();
    assert_eq!(searched.tasks.len(), 2, "{searched:?}");
    assert_eq!(searched.tasks[1], old);
    assert_eq!(searched.tasks[0].title.as_str(), "another needle");
    assert_eq!(listed.tasks, searched.tasks);
    assert_eq!(search_first.await.unwrap().unwrap(), searched);
    assert_eq!(list_first.await.unwrap().unwrap(), listed);
    assert_eq!(repo.joined_lists(), 2);

    // Once a read's statement is on its way, an identical read sends its own.
    let blocker = lock_the_table(&db).await;
    let on_its_way = reading(search("needle"));
    db.until_lock_waits(|w| w.len() == 1).await;
    let next = reading(search("needle"));
    db.until_lock_waits(|w| w.len() == 2).await;
    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(on_its_way.await.unwrap().unwrap(), searched);
    assert_eq!(next.await.unwrap().unwrap(), searched);
    assert_eq!(repo.joined_lists(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_that_waits_past_the_wait_timeout_for_a_slot_is_unavailable() {
    let db = TestDb::new().await;
    let mut settings = db.settings();
    settings.pool_size = 4;
    settings.wait_timeout = Duration::from_millis(200);
    let repo = PgTaskRepository::new(build_pool(&settings).unwrap(), settings.query_timeout)
        .with_search_slots(1);
    let wanted = create(&repo, "find the needle", Status::Todo).await;
    // A sample is taken now, so no search below starts one.
    repo.resample_search_texts().await.unwrap();
    let blocker = lock_the_table(&db).await;

    let first = {
        let repo = repo.clone();
        tokio::spawn(async move { repo.list(&search("needle")).await })
    };
    db.until_lock_waits(|w| w.len() == 1).await;

    let started = Instant::now();
    let second = repo.list(&search("needle")).await;
    let took = started.elapsed();
    match second {
        Err(RepoError::Unavailable(why)) => {
            assert_eq!(why.to_string(), "all 1 search slots stayed busy for 200 ms")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(took >= Duration::from_millis(200), "took {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // It never reached the server.
    assert_eq!(db.lock_waits().await.len(), 1);

    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(first.await.unwrap().unwrap().tasks, vec![wanted.clone()]);
    assert_eq!(
        repo.list(&search("needle")).await.unwrap().tasks,
        vec![wanted]
    );
}

/// A search text with a rare word among words nearly every task holds looks up only the rare
/// word in the trigram indexes (once the texts have been sampled), and finds exactly what the
/// whole text finds: the same tasks, in the same order, page by page, with a status filter too.
#[tokio::test]
async fn a_search_looked_up_by_its_rare_word_finds_what_the_whole_text_finds() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO tasks (title, description, created_at, updated_at) \
             SELECT 'Task ' || g, 'a task like the others', now() - interval '1 hour', \
             now() - interval '1 hour' FROM generate_series(1, 300) AS g",
        )
        .await
        .unwrap();
    let first = create(&repo, "TASK 4242: the report", Status::Done).await;
    let reversed = create(&repo, "4242 task, the other way round", Status::Done).await;
    let second = create_described(&repo, "Call mum", "about task 4242 again", Status::Todo).await;
    let third = create(&repo, "task 4242 too", Status::Done).await;

    // Before any sample, the whole text is looked up; the sample holds every task here.
    assert_eq!(repo.search_probe("task 4242"), None);
    assert_eq!(repo.resample_search_texts().await.unwrap(), 304);
    assert_eq!(repo.search_probe("Task 4242").as_deref(), Some("%4242%"));
    assert_eq!(
        repo.search_probe("task 42"),
        None,
        "no word of 3 characters"
    );

    // What the server is asked, seen while the table is locked: the rare word and a check of
    // the whole text for "task 4242", the whole text's pattern alone for "task 42".
    for (text, by_probe) in [("Task 4242", true), ("task 42", false)] {
        let sent = search_statement(&db, &repo, text).await;
        assert_eq!(sent.contains("strpos("), by_probe, "{text}: {sent}");
        assert!(sent.contains("LIKE lower($1)"), "{sent}");
    }

    let ids = |tasks: &[Task]| tasks.iter().map(|t| t.id).collect::<Vec<_>>();
    let found = repo.list(&search("Task 4242")).await.unwrap();
    assert_eq!(ids(&found.tasks), vec![third.id, second.id, first.id]);
    assert!(!ids(&found.tasks).contains(&reversed.id));

    // Page by page, with and without a status filter.
    let query = ListQuery {
        limit: Limit::new(1).unwrap(),
        ..search("task 4242")
    };
    assert_eq!(
        ids(&all_pages(&repo, query).await.concat()),
        vec![third.id, second.id, first.id]
    );
    let done = repo
        .list(&ListQuery {
            status: Some(Status::Done),
            ..search("TASK 4242")
        })
        .await
        .unwrap();
    assert_eq!(ids(&done.tasks), vec![third.id, first.id]);

    // The rare word alone is not enough: the whole text must be there.
    assert!(repo.search_probe("task 4242 nowhere").is_some());
    assert!(repo
        .list(&search("task 4242 nowhere"))
        .await
        .unwrap()
        .tasks
        .is_empty());
    // `%` and `_` in the text stay literal.
    let literal = create(&repo, "task 4242 at 50%_off", Status::Todo).await;
    assert_eq!(
        ids(&repo.list(&search("task 4242 at 50%_")).await.unwrap().tasks),
        vec![literal.id]
    );
    assert!(repo
        .list(&search("task 4242 at 50%x"))
        .await
        .unwrap()
        .tasks
        .is_empty());
}

/// A search text of words each in many tasks but together in few ("review alpha": one task in
/// ten and one in thirteen) looks up a trigram of each, in order, and finds exactly what the
/// whole text finds: the same tasks, in the same order, page by page.
#[tokio::test]
async fn a_search_looked_up_by_a_trigram_of_each_word_finds_what_the_whole_text_finds() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO tasks (title, description, created_at, updated_at) \
             SELECT 'Task ' || g || ': ' \
               || (ARRAY['review','budget','deploy','invoice','meeting','design','hiring', \
                         'backup','release','audit'])[1 + g % 10] || ' ' \
               || (ARRAY['alpha','bravo','charlie','delta','echo','foxtrot','golf','hotel', \
                         'india','juliet','kilo','lima','mike'])[1 + g / 10 % 13], \
               '', ts, ts FROM generate_series(1, 1300) AS g, \
               LATERAL (SELECT now() - interval '1 hour' + g * interval '1 ms' AS ts) AS t",
        )
        .await
        .unwrap();
    // Both words, but not the text: in the other order, apart, or only across title and
    // description. And the text in a description only.
    for (title, description) in [
        ("alpha review", ""),
        ("review, then alpha", ""),
        ("review", "alpha"),
        ("Call mum", "after the REVIEW ALPHA meeting"),
    ] {
        create_described(&repo, title, description, Status::Todo).await;
    }

    assert_eq!(repo.resample_search_texts().await.unwrap(), 1304);
    assert_eq!(
        repo.search_probe("Review Alpha").as_deref(),
        Some("%Rev%Alp%")
    );
    let expected = ids_holding(&client, "review alpha").await;
    assert_eq!(expected.len(), 11, "ten titles and one description");

    // What the server is asked, seen while the table is locked: the trigrams, every row holding
    // them fetched before the page is taken (not a walk of the list), and the whole text checked.
    let sent = search_statement(&db, &repo, "review alpha").await;
    assert!(
        sent.contains("OFFSET 0") && sent.contains("strpos("),
        "{sent}"
    );

    let query = ListQuery {
        limit: Limit::new(4).unwrap(),
        ..search("Review Alpha")
    };
    assert_eq!(ids(&all_pages(&repo, query).await.concat()), expected);
}

/// A search text the sample says many tasks hold walks the list with a prepared statement,
/// and finds exactly what the whole text's lookup finds: the same tasks, in the same order,
/// page by page, `%`, `_` and `\` literal. A text whose words are common but not together in
/// that order, or one with a status filter, is looked up as before.
#[tokio::test]
async fn a_search_many_tasks_match_walks_the_list_and_finds_what_the_whole_text_finds() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let client = db.client().await;
    // Half the tasks say "budget", the other half `50%_off\` (in the description); every
    // title ends in "north", and none holds "north budget".
    client
        .batch_execute(
            "INSERT INTO tasks (title, description, status, created_at, updated_at) \
             SELECT 'Task ' || g || ': ' || (CASE WHEN g % 2 = 0 THEN 'BUDGET' ELSE 'audit' END) \
               || ' north', CASE WHEN g % 2 = 1 THEN 'at 50%_off\\ now' ELSE '' END, \
               (ARRAY['todo', 'in_progress', 'done'])[1 + g % 3], ts, ts \
             FROM generate_series(1, 400) AS g, \
             LATERAL (SELECT now() - interval '1 hour' + g * interval '1 ms' AS ts) AS t; \
             ANALYZE tasks",
        )
        .await
        .unwrap();
    assert_eq!(repo.resample_search_texts().await.unwrap(), 400);
    let expected = |text: &'static str| ids_holding(&client, text);

    // What the server is asked, seen while the table is locked: the walk for the common texts,
    // the whole text's lookup (planned with its pattern) for the others.
    for (text, walks) in [
        ("Budget", true),
        ("50%_off\\", true),
        ("budget north", true),
        ("north budget", false),
    ] {
        let sent = search_statement(&db, &repo, text).await;
        assert_eq!(
            sent.contains("LIKE (SELECT lower($1::text))"),
            walks,
            "{text}: {sent}"
        );
    }
    let sent = search_statement_with(
        &db,
        &repo,
        ListQuery {
            status: Some(Status::Done),
            ..search("budget")
        },
    )
    .await;
    assert!(sent.contains("LIKE lower($2) ESCAPE"), "{sent}");

    for text in ["budget", "50%_off\\", "50%_OFF\\ NOW", "north budget"] {
        let want = expected(text).await;
        assert_eq!(
            ids(&repo.list(&search(text)).await.unwrap().tasks),
            want[..want.len().min(100)]
        );
        let query = ListQuery {
            limit: Limit::new(7).unwrap(),
            ..search(text)
        };
        assert_eq!(ids(&all_pages(&repo, query).await.concat()), want, "{text}");
    }
    assert_eq!(expected("budget").await.len(), 200);
    assert_eq!(expected("50%_off\\").await.len(), 200);
    // `%` and `_` are literal in a walk too.
    assert!(repo
        .list(&search("50x_off"))
        .await
        .unwrap()
        .tasks
        .is_empty());
    assert!(repo
        .list(&search("50%xoff"))
        .await
        .unwrap()
        .tasks
        .is_empty());
}

/// A description of any valid length is written and read back, however badly it compresses
/// (the list's index carries only its first 300 characters, migration 0006; it carried it whole
/// and refused any of more than about 2,600 bytes), and every search finds a text anywhere in
/// it: in the head the index carries, across its end, or far beyond it, walking the list or not.
#[tokio::test]
async fn a_long_description_is_stored_and_found_wherever_the_text_is() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let client = db.client().await;
    // Digits that do not compress: 9,990 of them, then a word; and one of 10,000 four-byte
    // characters, the longest a description may be.
    let digits: String = (0..999u64)
        .map(|n| format!("{:010}", n.wrapping_mul(2_654_435_761) % 10_000_000_000))
        .collect();
    let long = create_described(&repo, "Long one", &format!("{digits}needle"), Status::Todo).await;
    let wide = create_described(&repo, "Wide one", &"\u{1F600}".repeat(10_000), Status::Done).await;
    assert_eq!(
        repo.get(long.id).await.unwrap().description,
        long.description
    );
    assert_eq!(wide.description.as_str().chars().count(), 10_000);
    let updated = repo
        .update(
            wide.id,
            TaskPatch {
                description: Some(Description::new(format!("{}x", &digits[..9_000])).unwrap()),
                ..TaskPatch::default()
            },
            Precondition::None,
        )
        .await
        .unwrap();
    assert_eq!(updated.description.as_str().len(), 9_001);

    // Many short tasks around them, a third saying "needle" in the title, so that searches for
    // it walk the list (checked below), and a sample that says so.
    client
        .batch_execute(
            "INSERT INTO tasks (title, description) SELECT CASE WHEN g % 3 = 0 \
             THEN 'needle ' || g ELSE 'task ' || g END, 'short' FROM generate_series(1, 300) AS g; \
             ANALYZE tasks",
        )
        .await
        .unwrap();
    repo.resample_search_texts().await.unwrap();
    assert!(search_statement(&db, &repo, "needle")
        .await
        .contains("description_head"));

    let head = &digits[..20]; // in the head
    let across = &digits[290..310]; // across the head's end
    let beyond = format!("{}needle", &digits[digits.len() - 3..]); // at the very end
    for text in [head, across, &beyond, &digits[5_000..5_040], "x"] {
        let want = ids_holding(&client, text).await;
        assert!(!want.is_empty(), "{text}");
        assert_eq!(
            ids(&repo.list(&search(text)).await.unwrap().tasks),
            want,
            "{text}"
        );
    }
    // Walking the list: the page holds the long task found beyond its head.
    let found = ids(&repo.list(&search("needle")).await.unwrap().tasks);
    assert_eq!(found.len(), 100);
    let query = ListQuery {
        limit: Limit::new(50).unwrap(),
        ..search("NEEDLE")
    };
    let all = ids(&all_pages(&repo, query).await.concat());
    assert_eq!(all.len(), 101);
    assert!(all.contains(&long.id.get()));
}

/// The pool's connections run with the query timeout as the server's `statement_timeout` and
/// JIT compilation off (a search's generic plan is estimated costly enough to be compiled, a few
/// milliseconds each run), unless the URL's own options set them.
#[tokio::test]
async fn pooled_connections_have_the_statement_timeout_and_no_jit_unless_the_url_sets_them() {
    let db = TestDb::new().await;
    let settings = |options: Option<&str>| {
        let mut s = db.settings();
        s.query_timeout = Duration::from_millis(1234);
        if let Some(options) = options {
            let sep = if s.url.contains('?') { '&' } else { '?' };
            s.url = format!("{}{sep}options={}", s.url, options.replace(' ', "%20"));
        }
        s
    };
    let shown = |s: tasklane_postgres::PgSettings| async move {
        let pool = build_pool(&s).unwrap();
        let client = pool.get().await.unwrap();
        let row = client
            .query_one(
                "SELECT current_setting('statement_timeout'), current_setting('jit'), \
                 current_setting('application_name')",
                &[],
            )
            .await
            .unwrap();
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
        )
    };
    assert_eq!(
        shown(settings(None)).await,
        ("1234ms".to_owned(), "off".to_owned(), "tasklane".to_owned())
    );
    let (timeout, jit, _) = shown(settings(Some("-c jit=on"))).await;
    assert_eq!((timeout.as_str(), jit.as_str()), ("1234ms", "on"));
    let (timeout, jit, _) = shown(settings(Some("-c statement_timeout=5s"))).await;
    assert_eq!((timeout.as_str(), jit.as_str()), ("5s", "off"));
    // Another JIT setting is not JIT itself.
    let (_, jit, _) = shown(settings(Some("-c jit_above_cost=1000"))).await;
    assert_eq!(jit, "off");
}

/// A search's rows come from the server in primary-key order and are put in the list's: newest
/// first and, among tasks created at the same instant, the highest id first, page by page.
#[tokio::test]
async fn a_search_gives_its_page_in_the_list_order_ties_by_id() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO tasks (title, created_at, updated_at) \
             SELECT 'same ' || g, t, t FROM generate_series(1, 60) AS g, \
             LATERAL (SELECT timestamptz '2026-01-01 00:00:00+00' \
                      + (g % 3) * interval '1 hour' AS t) AS at",
        )
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT id FROM tasks ORDER BY created_at DESC, id DESC",
            &[],
        )
        .await
        .unwrap();
    let expected: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        ids(&repo.list(&search("SAME")).await.unwrap().tasks),
        expected
    );
    let query = ListQuery {
        limit: Limit::new(7).unwrap(),
        ..search("same")
    };
    assert_eq!(ids(&all_pages(&repo, query).await.concat()), expected);
}

/// A database of 20 tasks, "Task 1" to "Task 20", and a repository on it.
async fn twenty_tasks() -> (TestDb, PgTaskRepository) {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO tasks (title) SELECT 'Task ' || g FROM generate_series(1, 20) AS g",
        )
        .await
        .unwrap();
    (db, repo)
}

/// Searches take the sample themselves, in the background, on the first search.
#[tokio::test]
async fn the_first_search_samples_the_texts_in_the_background() {
    let (_db, repo) = twenty_tasks().await;
    assert_eq!(repo.search_probe("task 777"), None);
    assert!(repo
        .list(&search("task 777"))
        .await
        .unwrap()
        .tasks
        .is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while repo.search_probe("task 777").is_none() {
        assert!(Instant::now() < deadline, "no sample was taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sampling never waits behind a lock on the table: it gives up at once, holding nothing, and
/// searches keep the sample they had.
#[tokio::test]
async fn sampling_gives_up_at_once_when_the_table_is_locked() {
    let (db, repo) = twenty_tasks().await;
    repo.resample_search_texts().await.unwrap();
    let blocker = lock_the_table(&db).await;

    let started = Instant::now();
    let outcome = repo.resample_search_texts().await;
    assert!(
        matches!(outcome, Err(RepoError::Unavailable(_))),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(db.lock_waits().await.is_empty());
    assert_eq!(
        repo.search_probe("task 777").as_deref(),
        Some("%777%"),
        "the sample is kept"
    );
    blocker.batch_execute("ROLLBACK").await.unwrap();
}

/// Another session holds the row lock of `id` (an open `FOR UPDATE`) until `ROLLBACK`.
async fn lock_the_row(db: &TestDb, id: TaskId) -> tokio_postgres::Client {
    let blocker = db.client().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM tasks WHERE id = {id} FOR UPDATE"
        ))
        .await
        .unwrap();
    blocker
}

/// A repository (a pool of 4), a task titled "hot", a trigger counting the `UPDATE` statements
/// that change it (into `row_updates`), and another session holding its row lock.
async fn a_locked_task() -> (TestDb, PgTaskRepository, Task, tokio_postgres::Client) {
    let db = TestDb::new().await;
    let mut settings = db.settings();
    settings.pool_size = 4;
    let repo = PgTaskRepository::new(build_pool(&settings).unwrap(), settings.query_timeout);
    let task = create(&repo, "hot", Status::Todo).await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE row_updates (n serial);
             CREATE FUNCTION count_row_update() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO row_updates DEFAULT VALUES; RETURN NULL; END $$;
             CREATE TRIGGER count_row_update AFTER UPDATE ON tasks
               FOR EACH ROW EXECUTE FUNCTION count_row_update();",
        )
        .await
        .unwrap();
    let blocker = lock_the_row(&db, task.id).await;
    (db, repo, task, blocker)
}

/// Starts `repo.update(id, patch, precondition)` in the background.
fn spawn_update(
    repo: &PgTaskRepository,
    id: TaskId,
    patch: TaskPatch,
    precondition: Precondition,
) -> tokio::task::JoinHandle<Result<Task, RepoError>> {
    let repo = repo.clone();
    tokio::spawn(async move { repo.update(id, patch, precondition).await })
}

/// Polls (for at most 5 s) until `count` updates wait in the process for their task.
async fn until_waiting_updates(repo: &PgTaskRepository, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while repo.waiting_updates() != count {
        assert!(
            Instant::now() < deadline,
            "{} updates wait, not {count}",
            repo.waiting_updates()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What `updates` answer, within 5 s (the answers of updates that waited in the process come
/// from whoever ran them: a failure to hand them on would otherwise hang the test).
async fn answered<T>(updates: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::future::join_all(updates),
    )
    .await
    .expect("every update was answered")
    .into_iter()
    .map(Result::unwrap)
    .collect()
}

/// A patch setting some of the fields, by `i`: the status alone, the title and the status,
/// the title alone, or the description, so that the waiters make several batches.
fn varied_patch(i: usize) -> TaskPatch {
    let status = [Status::Todo, Status::InProgress, Status::Done][i % 3];
    let title = Some(Title::new(format!("title {i}")).unwrap());
    match i % 4 {
        0 => status_patch(status),
        1 => TaskPatch {
            title,
            status: Some(status),
            description: None,
        },
        2 => TaskPatch {
            title,
            ..TaskPatch::default()
        },
        _ => TaskPatch {
            description: Some(Description::new(format!("description {i}")).unwrap()),
            ..TaskPatch::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_a_busy_task_wait_in_the_process_and_each_gets_its_own_state() {
    let (db, repo, before, blocker) = a_locked_task().await;

    // The first update goes to the server and waits there for the row.
    let first = spawn_update(&repo, before.id, varied_patch(0), Precondition::None);
    db.until_lock_waits(|w| w.len() == 1).await;

    // The next 24 wait in the process, holding no connection, while it runs.
    let patches: Vec<TaskPatch> = (1..=24).map(varied_patch).collect();
    let rest: Vec<_> = patches
        .iter()
        .map(|patch| {
            let precondition = if patch.title.is_some() {
                Precondition::Exists
            } else {
                Precondition::None
            };
            spawn_update(&repo, before.id, patch.clone(), precondition)
        })
        .collect();
    until_waiting_updates(&repo, 24).await;
    assert_eq!(
        db.lock_waits().await.len(),
        1,
        "only the first is on the server"
    );
    blocker.batch_execute("ROLLBACK").await.unwrap();

    let mut answers = vec![(varied_patch(0), first.await.unwrap().unwrap())];
    for (patch, answer) in patches.into_iter().zip(answered(rest).await) {
        answers.push((patch, answer.unwrap()));
    }
    assert_eq!(answers[0].1.version.get(), before.version.get() + 1);
    assert_eq!(repo.waiting_updates(), 0);
    assert_eq!(repo.combined_updates(), 24);
    // The first, then one statement per set of fields among the 24 (four sets; three when the
    // first to arrive sets the title and the status, which every patch but a description's
    // fits), instead of 24.
    let statements: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM row_updates", &[])
        .await
        .unwrap()
        .get(0);
    assert!((3..=5).contains(&statements), "{statements} statements");

    // Each answer is what applying the updates one at a time, in the order of the versions
    // they got, gives: every version once, `updated_at` strictly increasing.
    answers.sort_by_key(|(_, task)| task.version.get());
    let mut state = before.clone();
    for (patch, answer) in &answers {
        let expected = Task {
            title: patch.title.clone().unwrap_or(state.title.clone()),
            description: patch
                .description
                .clone()
                .unwrap_or(state.description.clone()),
            status: patch.status.unwrap_or(state.status),
            version: Version::new(state.version.get() + 1),
            updated_at: answer.updated_at,
            ..state.clone()
        };
        assert_eq!(answer, &expected, "after {patch:?}");
        assert!(
            answer.updated_at > state.updated_at,
            "{answer:?} after {state:?}"
        );
        state = answer.clone();
    }
    // The last is what is stored, and the counters followed.
    assert_eq!(repo.get(before.id).await.unwrap(), state);
    assert_eq!(repo.counts().await.unwrap(), counted(&db).await);

    // With nothing running, the next update runs at once, alone.
    let next = repo
        .update(before.id, status_patch(Status::Done), Precondition::None)
        .await
        .unwrap();
    assert_eq!(next.version.get(), state.version.get() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_waiting_for_a_task_deleted_meanwhile_are_not_found() {
    let db = TestDb::new().await;
    let repo = db.repository().await;
    let task = create(&repo, "doomed", Status::Todo).await;
    let deleter = db.client().await;
    deleter
        .batch_execute(&format!("BEGIN; DELETE FROM tasks WHERE id = {}", task.id))
        .await
        .unwrap();

    let updates: Vec<_> = (0..4)
        .map(|i| spawn_update(&repo, task.id, varied_patch(i), Precondition::None))
        .collect();
    db.until_lock_waits(|w| w.len() == 1).await;
    until_waiting_updates(&repo, 3).await;
    deleter.batch_execute("COMMIT").await.unwrap();

    for outcome in answered(updates).await {
        assert!(matches!(outcome, Err(RepoError::NotFound)), "{outcome:?}");
    }
    assert_eq!(repo.waiting_updates(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_updates_still_land_when_the_caller_of_the_running_one_goes_away() {
    let (db, repo, before, blocker) = a_locked_task().await;
    let first = spawn_update(&repo, before.id, title_patch("first"), Precondition::None);
    db.until_lock_waits(|w| w.len() == 1).await;
    let statuses = [Status::Done, Status::InProgress, Status::Done];
    let rest: Vec<_> = statuses
        .iter()
        .map(|&status| spawn_update(&repo, before.id, status_patch(status), Precondition::None))
        .collect();
    until_waiting_updates(&repo, 3).await;

    // The first update's caller goes away (a client disconnecting mid-request): its statement
    // is already on the server, and the three that waited for it are taken up at once, to go
    // there as one (on another connection, or queued behind the first statement on its own).
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    until_waiting_updates(&repo, 0).await;
    blocker.batch_execute("ROLLBACK").await.unwrap();

    let mut versions = Vec::new();
    for (status, outcome) in statuses.iter().zip(answered(rest).await) {
        let task = outcome.unwrap();
        assert_eq!(task.status, *status);
        versions.push(task.version.get());
    }
    // Consecutive versions: the three were one UPDATE.
    versions.sort_unstable();
    assert_eq!(versions[2] - versions[0], 2, "{versions:?}");
    // The abandoned statement lands too, before or after them (once it has committed).
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let after = repo.get(before.id).await.unwrap();
        if after.version.get() == before.version.get() + 4 || Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(after.version.get(), before.version.get() + 4);
    assert_eq!(after.title.as_str(), "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_update_never_waits_in_the_process() {
    let (db, repo, before, blocker) = a_locked_task().await;
    let first = spawn_update(
        &repo,
        before.id,
        status_patch(Status::Done),
        Precondition::None,
    );
    db.until_lock_waits(|w| w.len() == 1).await;
    // Its outcome depends on the row as PostgreSQL has it, so it goes there, and waits there.
    let conditional = spawn_update(
        &repo,
        before.id,
        title_patch("only at version 1"),
        Precondition::Version(before.version),
    );
    db.until_lock_waits(|w| w.len() == 2).await;
    assert_eq!(repo.waiting_updates(), 0);
    blocker.batch_execute("ROLLBACK").await.unwrap();

    let first = first.await.unwrap().unwrap();
    match conditional.await.unwrap() {
        // The unconditional one came first, as it queued first for the row.
        Err(RepoError::PreconditionFailed) => {
            assert_eq!(repo.get(before.id).await.unwrap(), first);
        }
        Ok(task) => {
            assert_eq!(task.version.get(), before.version.get() + 1);
            assert_eq!(first.version.get(), before.version.get() + 2);
        }
        Err(e) => panic!("{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_updates_fail_in_bounded_time_and_land_nothing_when_the_row_stays_locked() {
    let db = TestDb::new().await;
    let before = create(&db.repository().await, "stuck", Status::Todo).await;
    let impatient = PgTaskRepository::new(db.pool().await, Duration::from_millis(200));
    let blocker = lock_the_row(&db, before.id).await;

    let started = Instant::now();
    let updates: Vec<_> = (0..4)
        .map(|i| spawn_update(&impatient, before.id, varied_patch(i), Precondition::None))
        .collect();
    // The first times out on the server and is cancelled; the three that waited for it go
    // there as one statement, which times out in turn: each fails as unavailable.
    for outcome in answered(updates).await {
        assert!(
            matches!(outcome, Err(RepoError::Unavailable(_))),
            "{outcome:?}"
        );
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(impatient.waiting_updates(), 0);

    // Nothing landed: the statements were cancelled, not left queued behind the lock.
    db.until_lock_waits(<[String]>::is_empty).await;
    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(db.repository().await.get(before.id).await.unwrap(), before);
}

/// Holds an ACCESS EXCLUSIVE lock on `tasks` (which blocks even reads) until rolled back, and
/// starts a read of `id` that waits behind it, on the repository's connection.
async fn block_reads_behind_a_lock(
    db: &TestDb,
    repo: &PgTaskRepository,
    id: TaskId,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<Task, RepoError>>,
) {
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let first = tokio::spawn({
        let repo = repo.clone();
        async move { repo.get(id).await }
    });
    db.until_lock_waits(|waits| waits.len() == 1).await;
    (locker, first)
}

#[tokio::test]
async fn point_reads_at_the_same_time_share_one_connection() {
    let db = TestDb::new().await;
    let mut settings = db.settings();
    settings.pool_size = 1;
    settings.wait_timeout = Duration::from_millis(200);
    let repo = PgTaskRepository::new(build_pool(&settings).unwrap(), settings.query_timeout);
    let a = create(&repo, "a", Status::Todo).await;
    let b = create(&repo, "b", Status::Done).await;

    // The first read holds the pool's only connection, its query waiting behind the lock.
    let (locker, first) = block_reads_behind_a_lock(&db, &repo, a.id).await;
    // The second one (same thread) sends its query on that connection rather than waiting for
    // the connection to come back, which it would give up on after 200 ms.
    let second = tokio::spawn({
        let repo = repo.clone();
        async move { repo.get(b.id).await }
    });
    tokio::time::sleep(settings.wait_timeout * 2).await;
    assert!(!second.is_finished(), "{:?}", second.await);
    assert_eq!(repo.pool().status().size, 1);

    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), a);
    assert_eq!(second.await.unwrap().unwrap(), b);
    // Back in the pool, ready for anything.
    assert_eq!(repo.pool().status().available, 1);
    repo.update(a.id, title_patch("after"), Precondition::None)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_shared_connection_carries_sixteen_reads_at_most() {
    let db = TestDb::new().await;
    let mut settings = db.settings();
    settings.pool_size = 2;
    settings.shards = 1;
    let repo = PgTaskRepository::new(build_pool(&settings).unwrap(), settings.query_timeout);
    let task = create(&repo, "read", Status::Todo).await;

    let (locker, first) = block_reads_behind_a_lock(&db, &repo, task.id).await;
    let read = || {
        let repo = repo.clone();
        tokio::spawn(async move { repo.get(task.id).await })
    };
    // Fifteen more join the first one's connection; the seventeenth checks out another.
    let mut reads: Vec<_> = (0..16).map(|_| read()).collect();
    db.until_lock_waits(|waits| waits.len() == 2).await;
    assert_eq!(repo.pool().status().size, 2);
    // Later reads join the newest connection.
    reads.extend((0..3).map(|_| read()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(repo.pool().status().size, 2);

    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), task);
    for r in reads {
        assert_eq!(r.await.unwrap().unwrap(), task);
    }
    assert_eq!(repo.pool().status().available, 2);
}

#[tokio::test]
async fn a_shared_read_past_the_query_timeout_takes_its_connection_out_of_the_pool() {
    let db = TestDb::new().await;
    let task = create(&db.repository().await, "locked", Status::Todo).await;
    let impatient = PgTaskRepository::new(db.pool().await, Duration::from_millis(300));
    assert_eq!(impatient.pool().status().size, 1);

    let (locker, first) = block_reads_behind_a_lock(&db, &impatient, task.id).await;
    // Well after the first, so that the first's cancel has reached the server before the second
    // times out (a cancel sent between two statements is lost).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn({
        let repo = impatient.clone();
        async move { repo.get(task.id).await }
    });
    for read in [first, second] {
        let outcome = read.await.unwrap();
        assert!(
            matches!(outcome, Err(RepoError::Unavailable(_))),
            "{outcome:?}"
        );
    }
    assert_eq!(
        impatient.pool().status().size,
        0,
        "the timed-out connection is not returned to the pool"
    );
    // Cancelled on the server too: nothing waits behind the lock any more.
    db.until_lock_waits(<[String]>::is_empty).await;
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(impatient.get(task.id).await.unwrap(), task);
}
