//! The `TaskRepository` contract: what every task store must do, as seen through the port only.
//! Each case gets a fresh, empty store.

use chrono::{Duration as TimeDelta, Utc};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tasklane_domain::{
    Created, Cursor, Description, Idempotency, IdempotencyKey, Limit, ListQuery, NewTask, Page,
    Precondition, RepoError, SearchText, Status, StatusCounts, Task, TaskId, TaskPatch,
    TaskRepository, Title, Version,
};
use tokio::task::JoinSet;

type Repo = Arc<dyn TaskRepository>;

fn new_task(title: &str, description: &str, status: Status) -> NewTask {
    NewTask {
        title: Title::new(title).expect("a valid title"),
        description: Description::new(description).expect("a valid description"),
        status,
    }
}

async fn create(repo: &Repo, title: &str, description: &str, status: Status) -> Task {
    let created = repo
        .create(new_task(title, description, status), None)
        .await
        .unwrap_or_else(|e| panic!("create {title:?}: {e:?}"));
    assert!(!created.replayed, "a create without a key was a replay");
    created.task
}

/// The idempotency of a create of `new` under `key`, with the usual time to live.
fn idempotency(key: &str, new: &NewTask) -> Idempotency {
    Idempotency::for_create(IdempotencyKey::new(key).expect("a valid key"), new)
}

/// The same, with a time to live of `ttl`.
fn idempotency_for(key: &str, new: &NewTask, ttl: TimeDelta) -> Idempotency {
    Idempotency {
        ttl,
        ..idempotency(key, new)
    }
}

async fn create_keyed(repo: &Repo, key: &str, new: &NewTask) -> Created {
    repo.create(new.clone(), Some(idempotency(key, new)))
        .await
        .unwrap_or_else(|e| panic!("create with key {key:?}: {e:?}"))
}

async fn purge(repo: &Repo, older_than: TimeDelta) -> u64 {
    repo.purge_idempotency_keys(older_than)
        .await
        .unwrap_or_else(|e| panic!("purge keys older than {older_than}: {e:?}"))
}

/// `n` tasks created one after another, titled `{prefix} 0` to `{prefix} n-1`, statuses in turn.
async fn create_n(repo: &Repo, prefix: &str, n: usize) -> Vec<Task> {
    let mut made = Vec::with_capacity(n);
    for i in 0..n {
        let status = Status::ALL[i % Status::ALL.len()];
        made.push(create(repo, &format!("{prefix} {i}"), "", status).await);
    }
    made
}

async fn get(repo: &Repo, id: TaskId) -> Task {
    repo.get(id)
        .await
        .unwrap_or_else(|e| panic!("get {id}: {e:?}"))
}

async fn list(repo: &Repo, query: &ListQuery) -> Page {
    repo.list(query)
        .await
        .unwrap_or_else(|e| panic!("list {query:?}: {e:?}"))
}

async fn update(repo: &Repo, id: TaskId, patch: TaskPatch, precondition: Precondition) -> Task {
    repo.update(id, patch, precondition)
        .await
        .unwrap_or_else(|e| panic!("update {id} under {precondition:?}: {e:?}"))
}

async fn counts(repo: &Repo) -> StatusCounts {
    repo.counts()
        .await
        .unwrap_or_else(|e| panic!("counts: {e:?}"))
}

fn limit(n: u32) -> Limit {
    Limit::new(n).expect("a valid limit")
}

fn query(limit_n: u32) -> ListQuery {
    ListQuery {
        limit: limit(limit_n),
        ..ListQuery::default()
    }
}

fn search(text: &str) -> ListQuery {
    ListQuery {
        search: Some(
            SearchText::new(text)
                .expect("a valid search")
                .expect("not empty"),
        ),
        limit: limit(500),
        ..ListQuery::default()
    }
}

fn title_patch(title: &str) -> TaskPatch {
    TaskPatch {
        title: Some(Title::new(title).expect("a valid title")),
        ..TaskPatch::default()
    }
}

fn status_patch(status: Status) -> TaskPatch {
    TaskPatch {
        status: Some(status),
        ..TaskPatch::default()
    }
}

fn ids(tasks: &[Task]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id).collect()
}

fn counts_of(todo: u64, in_progress: u64, done: u64) -> StatusCounts {
    StatusCounts {
        todo,
        in_progress,
        done,
    }
}

/// The list order: `created_at` descending, ties broken by the higher id first.
fn assert_list_order(tasks: &[Task]) {
    for pair in tasks.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            (a.created_at, a.id) > (b.created_at, b.id),
            "not in (created_at DESC, id DESC) order: {} at {} listed before {} at {}",
            a.id,
            a.created_at,
            b.id,
            b.created_at
        );
    }
}

/// Every page of `query`, following `next` until it is absent, checking each page's shape: at
/// most `limit` tasks, in list order, `next` naming its last task.
async fn all_pages(repo: &Repo, mut query: ListQuery) -> Vec<Vec<Task>> {
    let mut pages = Vec::new();
    loop {
        let page = list(repo, &query).await;
        assert!(page.tasks.len() <= query.limit.get() as usize);
        assert_list_order(&page.tasks);
        if let Some(next) = page.next {
            assert!(!page.tasks.is_empty(), "a next cursor after an empty page");
            assert_eq!(page.tasks.last().map(Cursor::after), Some(next));
        }
        let next = page.next;
        pages.push(page.tasks);
        match next {
            Some(cursor) => query.cursor = Some(cursor),
            None => return pages,
        }
        assert!(pages.len() <= 1000, "the cursor does not advance");
    }
}

fn expect_err<T: std::fmt::Debug>(
    what: &str,
    outcome: Result<T, RepoError>,
    expected: fn(&RepoError) -> bool,
) {
    match outcome {
        Err(e) if expected(&e) => {}
        other => panic!("{what}: got {other:?}"),
    }
}

fn is_not_found(e: &RepoError) -> bool {
    matches!(e, RepoError::NotFound)
}

fn is_precondition_failed(e: &RepoError) -> bool {
    matches!(e, RepoError::PreconditionFailed)
}

fn is_key_reused(e: &RepoError) -> bool {
    matches!(e, RepoError::IdempotencyKeyReused)
}

/// A created task has version 1, `created_at == updated_at` (the time of the write, to the
/// microsecond), and reads back exactly as returned.
pub async fn create_then_get_round_trips(repo: Repo) {
    let before = Utc::now() - TimeDelta::seconds(60);
    let task = create(
        &repo,
        "Learn Docker",
        "Complete Docker tutorial series",
        Status::InProgress,
    )
    .await;
    let after = Utc::now() + TimeDelta::seconds(60);

    assert_eq!(task.title.as_str(), "Learn Docker");
    assert_eq!(task.description.as_str(), "Complete Docker tutorial series");
    assert_eq!(task.status, Status::InProgress);
    assert_eq!(task.version, Version::new(1));
    assert_eq!(task.created_at, task.updated_at);
    assert!(
        before < task.created_at && task.created_at < after,
        "created_at {} is not the time of the write",
        task.created_at
    );
    assert_eq!(
        task.created_at.timestamp_subsec_nanos() % 1_000,
        0,
        "timestamps are kept to the microsecond, as cursors carry them"
    );
    assert_eq!(get(&repo, task.id).await, task);

    let second = create(&repo, "Second", "", Status::Todo).await;
    assert_ne!(second.id, task.id);
    assert_eq!(second.description.as_str(), "");
    assert_eq!(second.version, Version::new(1));
    assert_eq!(get(&repo, second.id).await, second);
    assert_eq!(get(&repo, task.id).await, task);
}

/// `chars` characters of several scripts in an order that does not repeat (xorshift), so that
/// they do not compress: a store that indexed whole descriptions could not hold them.
fn incompressible(chars: usize) -> String {
    let alphabet: Vec<char> = ('a'..='z')
        .chain('0'..='9')
        .chain('α'..='ω')
        .chain(['日', '本', '語', '😀', '🦀'])
        .collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..chars)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[usize::try_from(x % alphabet.len() as u64).unwrap_or_default()]
        })
        .collect()
}

/// Whatever text the domain accepts is stored and read back unchanged: the longest title and
/// description in characters (not bytes), any script, quotes, markup, control characters, text
/// that does not compress.
pub async fn texts_round_trip_exactly(repo: Repo) {
    let cases = [
        ("🦀".repeat(255), "x".repeat(10_000)),
        (incompressible(255), incompressible(10_000)),
        ("Medium".to_owned(), incompressible(3_000)),
        ("é".repeat(255), "日本語".repeat(3_333) + "!"),
        ("  padded  ".to_owned(), " ".to_owned()),
        (
            "quotes ' \" ; -- DROP TABLE tasks".to_owned(),
            "<img src=x onerror=alert(1)>".to_owned(),
        ),
        ("line\nbreak\ttab\r".to_owned(), "% _ \\ \\% \\_".to_owned()),
        (
            "ÉCOLE İ ΣΑΣ ß".to_owned(),
            "\u{1F600}\u{200D}\u{FE0F}".to_owned(),
        ),
    ];
    let mut made = Vec::new();
    for (title, description) in &cases {
        let task = create(&repo, title, description, Status::Todo).await;
        assert_eq!(task.title.as_str(), title);
        assert_eq!(task.description.as_str(), description);
        assert_eq!(get(&repo, task.id).await, task);
        made.push(task);
    }
    let listed = list(&repo, &query(500)).await.tasks;
    for task in &made {
        assert!(listed.contains(task), "{} lists differently", task.id);
    }
}

/// `get` of an id no task has, or had, is `NotFound`.
pub async fn get_of_an_unknown_id_is_not_found(repo: Repo) {
    for raw in [1, 2, i64::MAX] {
        let id = TaskId::new(raw).expect("a positive id");
        expect_err("get in an empty store", repo.get(id).await, is_not_found);
    }
    let task = create(&repo, "Short-lived", "", Status::Todo).await;
    repo.delete(task.id, Precondition::None)
        .await
        .expect("delete");
    expect_err("get after delete", repo.get(task.id).await, is_not_found);
}

/// An id is never handed out twice, not even the highest one after it was deleted.
pub async fn ids_are_never_reused(repo: Repo) {
    let a = create(&repo, "a", "", Status::Todo).await;
    let b = create(&repo, "b", "", Status::Todo).await;
    assert!(b.id > a.id, "ids grow");
    repo.delete(b.id, Precondition::None).await.expect("delete");
    let c = create(&repo, "c", "", Status::Todo).await;
    assert!(
        c.id > b.id,
        "the deleted highest id {} came back as {}",
        b.id,
        c.id
    );
    for t in [&a, &c] {
        repo.delete(t.id, Precondition::None).await.expect("delete");
    }
    let d = create(&repo, "d", "", Status::Todo).await;
    assert!(d.id > c.id, "an emptied store reused id {}", d.id);
}

/// The list is newest first: `created_at` descending, ties broken by the higher id. Tasks
/// created one after another come back in reverse order of creation.
pub async fn list_is_newest_first(repo: Repo) {
    let empty = list(&repo, &ListQuery::default()).await;
    assert!(empty.tasks.is_empty() && empty.next.is_none(), "{empty:?}");

    let made = create_n(&repo, "sequential", 8).await;
    let listed = list(&repo, &ListQuery::default()).await;
    assert!(listed.next.is_none());
    let mut expected = ids(&made);
    expected.reverse();
    assert_eq!(ids(&listed.tasks), expected);
    // The list carries whole tasks, the same as `get` reads.
    for task in &listed.tasks {
        assert_eq!(&get(&repo, task.id).await, task);
    }

    // Tasks created at the same time (possibly in the same microsecond) are still in order.
    let mut set = JoinSet::new();
    for i in 0..10 {
        let repo = Arc::clone(&repo);
        set.spawn(async move { create(&repo, &format!("concurrent {i}"), "", Status::Done).await });
    }
    while let Some(joined) = set.join_next().await {
        joined.expect("a create task panicked");
    }
    let listed = list(&repo, &ListQuery::default()).await;
    assert_eq!(listed.tasks.len(), 18);
    assert_list_order(&listed.tasks);
}

/// Keyset pages cover every task exactly once, in list order; every page but the last is full;
/// `next` is set exactly when more tasks follow (no empty last page, also when the number of
/// tasks is a multiple of the limit).
pub async fn pages_cover_every_task_exactly_once(repo: Repo) {
    create_n(&repo, "paged", 6).await;
    let everything = list(&repo, &query(500)).await.tasks;
    assert_eq!(everything.len(), 6);

    for n in [1_u32, 2, 3, 5, 6, 7, 500] {
        let pages = all_pages(&repo, query(n)).await;
        let per_page = n as usize;
        assert_eq!(pages.len(), 6_usize.div_ceil(per_page), "limit {n}");
        for (i, page) in pages.iter().enumerate() {
            let remaining = 6 - i * per_page;
            assert_eq!(page.len(), remaining.min(per_page), "limit {n}, page {i}");
        }
        let seen: Vec<Task> = pages.into_iter().flatten().collect();
        assert_eq!(seen, everything, "limit {n}");
    }

    // A first page exactly as long as the list: no `next`.
    let page = list(&repo, &query(6)).await;
    assert_eq!(page.tasks.len(), 6);
    assert_eq!(page.next, None);
    // One fewer: a `next`, and behind it exactly the oldest task.
    let page = list(&repo, &query(5)).await;
    let rest = list(
        &repo,
        &ListQuery {
            cursor: page.next,
            ..query(5)
        },
    )
    .await;
    assert_eq!(ids(&rest.tasks), [everything[5].id]);
    assert_eq!(rest.next, None);
}

/// A cursor names a place in the order, not an offset: pages after it neither skip nor repeat
/// tasks when the task it was taken from is deleted, and tasks created since (newer, so before
/// it) do not appear.
pub async fn a_cursor_keeps_its_place_across_writes(repo: Repo) {
    let made = create_n(&repo, "kept", 5).await;
    let first = list(&repo, &query(2)).await;
    assert_eq!(ids(&first.tasks), [made[4].id, made[3].id]);
    let cursor = first.next.expect("more pages");

    repo.delete(made[3].id, Precondition::None)
        .await
        .expect("delete");
    create(&repo, "newer", "", Status::Todo).await;

    let pages = all_pages(
        &repo,
        ListQuery {
            cursor: Some(cursor),
            ..query(2)
        },
    )
    .await;
    let seen: Vec<TaskId> = pages.iter().flat_map(|p| ids(p)).collect();
    assert_eq!(seen, [made[2].id, made[1].id, made[0].id]);
}

/// The status filter lists only that status, in list order, and pages within it.
pub async fn status_filter_lists_and_pages_only_that_status(repo: Repo) {
    let made = create_n(&repo, "mixed", 9).await;
    for status in Status::ALL {
        let mut expected: Vec<TaskId> = made
            .iter()
            .filter(|t| t.status == status)
            .map(|t| t.id)
            .collect();
        expected.reverse();
        let filtered = ListQuery {
            status: Some(status),
            ..query(500)
        };
        let page = list(&repo, &filtered).await;
        assert_eq!(ids(&page.tasks), expected, "{status}");
        assert!(page.tasks.iter().all(|t| t.status == status));

        let pages = all_pages(
            &repo,
            ListQuery {
                limit: limit(1),
                ..filtered
            },
        )
        .await;
        assert_eq!(pages.len(), expected.len(), "{status}");
        let seen: Vec<TaskId> = pages.iter().flat_map(|p| ids(p)).collect();
        assert_eq!(seen, expected, "{status}");
    }

    // A task whose status changes moves from one filter to the other.
    let moved = update(
        &repo,
        made[0].id,
        status_patch(Status::Done),
        Precondition::None,
    )
    .await;
    let done = list(
        &repo,
        &ListQuery {
            status: Some(Status::Done),
            ..query(500)
        },
    )
    .await;
    assert!(done.tasks.contains(&moved));
    let todo = list(
        &repo,
        &ListQuery {
            status: Some(Status::Todo),
            ..query(500)
        },
    )
    .await;
    assert!(!ids(&todo.tasks).contains(&moved.id));
}

fn sorted_titles(tasks: Vec<Task>) -> Vec<String> {
    let mut titles: Vec<String> = tasks.into_iter().map(|t| t.title.into_inner()).collect();
    titles.sort();
    titles
}

/// Search is a case-insensitive substring match over the title or the description. Case is
/// folded character by character (PostgreSQL's `lower()` under a libc locale such as
/// `C.UTF-8`): `'İ'` matches `'i'`, a final `'Σ'` matches `'σ'`, and nothing is folded beyond
/// case (`'ß'` is not `"ss"`). `%`, `_` and `\` match only themselves.
pub async fn search_is_case_insensitive_unicode_aware_and_literal(repo: Repo) {
    for (title, description) in [
        ("ÉCOLE primaire", ""),
        ("Buy milk", "near the école"),
        ("100% done", ""),
        ("1000 done", ""),
        ("snake_case", ""),
        ("snakeXcase", ""),
        ("C:\\temp", ""),
        ("C:temp", ""),
        ("Straße", ""),
        ("İstanbul trip", ""),
        ("ΟΔΟΣ", ""),
    ] {
        create(&repo, title, description, Status::Todo).await;
    }
    let found = |text: &'static str| {
        let repo = Arc::clone(&repo);
        async move { sorted_titles(list(&repo, &search(text)).await.tasks) }
    };
    let none: Vec<String> = Vec::new();

    assert_eq!(found("école").await, ["Buy milk", "ÉCOLE primaire"]);
    assert_eq!(found("ÉCOLE").await, ["Buy milk", "ÉCOLE primaire"]);
    assert_eq!(found("éCoLe").await, ["Buy milk", "ÉCOLE primaire"]);
    assert_eq!(found("MILK").await, ["Buy milk"]);
    assert_eq!(
        found("NEAR THE").await,
        ["Buy milk"],
        "the description is searched too"
    );
    assert_eq!(
        found("istanbul").await,
        ["İstanbul trip"],
        "'İ' lowercases to 'i'"
    );
    assert_eq!(found("İSTANBUL").await, ["İstanbul trip"]);
    assert_eq!(
        found("οδοσ").await,
        ["ΟΔΟΣ"],
        "per-character lowercase: no final sigma"
    );
    assert_eq!(found("ΟΔΟΣ").await, ["ΟΔΟΣ"]);
    assert_eq!(found("straße").await, ["Straße"]);
    assert_eq!(found("STRASSE").await, none, "no folding beyond case");
    assert_eq!(found("0%").await, ["100% done"], "% is literal");
    assert_eq!(found("%").await, ["100% done"]);
    assert_eq!(found("e_c").await, ["snake_case"], "_ is literal");
    assert_eq!(found("_").await, ["snake_case"]);
    assert_eq!(found("\\t").await, ["C:\\temp"], "\\ is literal");
    assert_eq!(found("\\").await, ["C:\\temp"]);
    assert_eq!(found("nothing like it").await, none);
}

/// Search reads the texts as they are now: after a title or a description changes, the new
/// text finds the task and the old one no longer does (PostgreSQL searches lower-cased copies
/// that it keeps beside the texts; this proves they follow every write).
pub async fn search_follows_every_change_of_the_texts(repo: Repo) {
    let task = create(
        &repo,
        "Call the PLUMBER",
        "about the kitchen SINK",
        Status::Todo,
    )
    .await;
    let found = |text: &'static str| {
        let repo = Arc::clone(&repo);
        async move { ids(&list(&repo, &search(text)).await.tasks) }
    };
    assert_eq!(found("plumber").await, [task.id]);
    assert_eq!(found("sink").await, [task.id]);

    update(
        &repo,
        task.id,
        title_patch("Call the ELECTRICIAN"),
        Precondition::None,
    )
    .await;
    assert_eq!(
        found("plumber").await,
        Vec::<TaskId>::new(),
        "the old title"
    );
    assert_eq!(found("electrician").await, [task.id]);
    assert_eq!(
        found("sink").await,
        [task.id],
        "the description is unchanged"
    );

    let description = TaskPatch {
        description: Some(Description::new("about the BATHROOM tap").expect("valid")),
        ..TaskPatch::default()
    };
    update(&repo, task.id, description, Precondition::None).await;
    assert_eq!(
        found("sink").await,
        Vec::<TaskId>::new(),
        "the old description"
    );
    assert_eq!(found("bathroom").await, [task.id]);

    let fetched = repo.get(task.id).await.expect("the task exists");
    assert_eq!(
        fetched.title.as_str(),
        "Call the ELECTRICIAN",
        "case is kept"
    );
    assert_eq!(fetched.description.as_str(), "about the BATHROOM tap");
}

/// Search combines with the status filter, and its results page like the plain list.
pub async fn search_combines_with_status_and_paging(repo: Repo) {
    let mut made = Vec::new();
    for (title, description, status) in [
        ("Report draft", "", Status::Todo),
        ("Weekly report", "", Status::Done),
        ("Groceries", "include the REPORT card", Status::Todo),
        ("Unrelated", "", Status::Todo),
        ("REPORTING tool", "", Status::InProgress),
        ("Final report", "", Status::Todo),
    ] {
        made.push(create(&repo, title, description, status).await);
    }
    let in_order = |picked: &[usize]| -> Vec<TaskId> {
        let mut v: Vec<TaskId> = picked.iter().map(|&i| made[i].id).collect();
        v.reverse();
        v
    };

    let all = list(&repo, &search("report")).await;
    assert_eq!(ids(&all.tasks), in_order(&[0, 1, 2, 4, 5]));

    let todo = ListQuery {
        status: Some(Status::Todo),
        ..search("report")
    };
    assert_eq!(ids(&list(&repo, &todo).await.tasks), in_order(&[0, 2, 5]));

    for n in [1, 2, 3] {
        let pages = all_pages(
            &repo,
            ListQuery {
                limit: limit(n),
                ..todo.clone()
            },
        )
        .await;
        let seen: Vec<TaskId> = pages.iter().flat_map(|p| ids(p)).collect();
        assert_eq!(seen, in_order(&[0, 2, 5]), "limit {n}");
        assert_eq!(pages.len(), 3_usize.div_ceil(n as usize), "limit {n}");
    }
}

/// An update changes only the fields it names, keeps `id` and `created_at`, adds one to the
/// version and moves `updated_at` forward, and reads back as returned.
pub async fn update_changes_only_the_given_fields(repo: Repo) {
    let task = create(&repo, "Title", "Description", Status::Todo).await;

    let v2 = update(
        &repo,
        task.id,
        status_patch(Status::Done),
        Precondition::None,
    )
    .await;
    assert_eq!(
        (v2.id, &v2.title, &v2.description, v2.status),
        (task.id, &task.title, &task.description, Status::Done)
    );
    assert_eq!(v2.version, Version::new(2));
    assert_eq!(v2.created_at, task.created_at);
    assert!(v2.updated_at > task.updated_at);
    assert_eq!(get(&repo, task.id).await, v2);

    let v3 = update(&repo, task.id, title_patch("New title"), Precondition::None).await;
    assert_eq!(v3.title.as_str(), "New title");
    assert_eq!(
        (&v3.description, v3.status),
        (&task.description, Status::Done)
    );
    assert_eq!(v3.version, Version::new(3));

    let v4 = update(
        &repo,
        task.id,
        TaskPatch {
            description: Some(Description::new("").expect("valid")),
            ..TaskPatch::default()
        },
        Precondition::None,
    )
    .await;
    assert_eq!(v4.description.as_str(), "");
    assert_eq!((&v4.title, v4.status), (&v3.title, Status::Done));
    assert_eq!(v4.version, Version::new(4));

    let v5 = update(
        &repo,
        task.id,
        TaskPatch {
            title: Some(Title::new("All").expect("valid")),
            description: Some(Description::new("at once").expect("valid")),
            status: Some(Status::InProgress),
        },
        Precondition::None,
    )
    .await;
    assert_eq!(
        (v5.title.as_str(), v5.description.as_str(), v5.status),
        ("All", "at once", Status::InProgress)
    );
    assert_eq!(v5.version, Version::new(5));
    assert_eq!(v5.created_at, task.created_at);
    assert_eq!(get(&repo, task.id).await, v5);
    assert_eq!(list(&repo, &ListQuery::default()).await.tasks, [v5]);
}

/// `updated_at` moves strictly forward on every update, an empty patch included, even when the
/// updates follow each other within the same microsecond; the version follows one by one.
pub async fn updated_at_moves_strictly_on_every_update(repo: Repo) {
    let task = create(&repo, "Touched", "", Status::Todo).await;
    let mut previous = task.clone();
    for i in 0..10 {
        let next = update(&repo, task.id, TaskPatch::default(), Precondition::None).await;
        assert!(
            next.updated_at > previous.updated_at,
            "update {i}: updated_at {} did not move past {}",
            next.updated_at,
            previous.updated_at
        );
        assert_eq!(next.version, Version::new(previous.version.get() + 1));
        assert_eq!(
            (&next.title, &next.description, next.status, next.created_at),
            (&task.title, &task.description, task.status, task.created_at)
        );
        assert_eq!(next.updated_at.timestamp_subsec_nanos() % 1_000, 0);
        previous = next;
    }
    assert_eq!(get(&repo, task.id).await, previous);
}

/// `Version` must match the stored version; `Exists` only needs the task; `Never` never holds.
/// A refused update writes nothing. A missing task is `NotFound` whatever the precondition.
pub async fn update_preconditions(repo: Repo) {
    let task = create(&repo, "Original", "", Status::Todo).await;

    let v2 = update(
        &repo,
        task.id,
        title_patch("A"),
        Precondition::Version(Version::new(1)),
    )
    .await;
    assert_eq!((v2.title.as_str(), v2.version), ("A", Version::new(2)));

    for (what, precondition) in [
        ("a stale version", Precondition::Version(Version::new(1))),
        ("a future version", Precondition::Version(Version::new(99))),
        ("Never", Precondition::Never),
    ] {
        expect_err(
            what,
            repo.update(
                task.id,
                TaskPatch {
                    title: Some(Title::new("B").expect("valid")),
                    status: Some(Status::Done),
                    ..TaskPatch::default()
                },
                precondition,
            )
            .await,
            is_precondition_failed,
        );
        assert_eq!(get(&repo, task.id).await, v2, "{what}: nothing is written");
    }
    assert_eq!(counts(&repo).await, counts_of(1, 0, 0), "nor counted");

    let v3 = update(&repo, task.id, title_patch("C"), Precondition::Exists).await;
    assert_eq!((v3.title.as_str(), v3.version), ("C", Version::new(3)));
    let v4 = update(
        &repo,
        task.id,
        title_patch("D"),
        Precondition::Version(Version::new(3)),
    )
    .await;
    assert_eq!(v4.version, Version::new(4));

    // NotFound beats PreconditionFailed: whether the condition holds is moot for a missing task.
    let gone = create(&repo, "Gone", "", Status::Todo).await;
    repo.delete(gone.id, Precondition::None)
        .await
        .expect("delete");
    let never_was = TaskId::new(i64::MAX).expect("positive");
    for id in [gone.id, never_was] {
        for precondition in [
            Precondition::None,
            Precondition::Exists,
            Precondition::Version(Version::new(1)),
            Precondition::Version(Version::new(7)),
            Precondition::Never,
        ] {
            expect_err(
                &format!("update of missing {id} under {precondition:?}"),
                repo.update(id, title_patch("X"), precondition).await,
                is_not_found,
            );
        }
    }
    assert_eq!(get(&repo, task.id).await, v4);
}

/// `delete` honours the same preconditions as `update`, writes nothing when refused, and a
/// deleted task is `NotFound` everywhere afterwards.
pub async fn delete_and_its_preconditions(repo: Repo) {
    let a = create(&repo, "a", "", Status::Todo).await;
    let b = create(&repo, "b", "", Status::InProgress).await;
    let c = create(&repo, "c", "", Status::Done).await;
    let c2 = update(&repo, c.id, title_patch("c2"), Precondition::None).await;

    for (what, id, precondition) in [
        (
            "a future version",
            a.id,
            Precondition::Version(Version::new(2)),
        ),
        ("Never", a.id, Precondition::Never),
        (
            "a stale version",
            c.id,
            Precondition::Version(Version::new(1)),
        ),
    ] {
        expect_err(
            what,
            repo.delete(id, precondition).await,
            is_precondition_failed,
        );
    }
    assert_eq!(get(&repo, a.id).await, a, "nothing is deleted on a refusal");
    assert_eq!(get(&repo, c.id).await, c2);
    assert_eq!(counts(&repo).await, counts_of(1, 1, 1));

    repo.delete(a.id, Precondition::Version(Version::new(1)))
        .await
        .expect("delete at the current version");
    repo.delete(b.id, Precondition::Exists)
        .await
        .expect("delete if it exists");
    repo.delete(c.id, Precondition::None)
        .await
        .expect("delete unconditionally");

    for task in [&a, &b, &c] {
        expect_err("get after delete", repo.get(task.id).await, is_not_found);
        for precondition in [
            Precondition::None,
            Precondition::Exists,
            Precondition::Version(Version::new(1)),
            Precondition::Never,
        ] {
            expect_err(
                &format!("delete again under {precondition:?}"),
                repo.delete(task.id, precondition).await,
                is_not_found,
            );
        }
    }
    let left = list(&repo, &ListQuery::default()).await;
    assert!(left.tasks.is_empty() && left.next.is_none());
    assert_eq!(counts(&repo).await, StatusCounts::default());
}

/// The counts per status are exact after every kind of write, and agree with the list.
pub async fn counts_follow_every_write(repo: Repo) {
    assert_eq!(counts(&repo).await, StatusCounts::default());

    let mut made = Vec::new();
    for status in [
        Status::Todo,
        Status::Todo,
        Status::Todo,
        Status::InProgress,
        Status::InProgress,
        Status::Done,
    ] {
        made.push(create(&repo, "counted", "", status).await);
    }
    assert_eq!(counts(&repo).await, counts_of(3, 2, 1));

    update(
        &repo,
        made[0].id,
        status_patch(Status::Done),
        Precondition::None,
    )
    .await;
    assert_eq!(counts(&repo).await, counts_of(2, 2, 2));

    // Writes that change no status change no count.
    update(
        &repo,
        made[0].id,
        title_patch("renamed"),
        Precondition::None,
    )
    .await;
    update(
        &repo,
        made[0].id,
        status_patch(Status::Done),
        Precondition::None,
    )
    .await;
    update(&repo, made[1].id, TaskPatch::default(), Precondition::None).await;
    assert_eq!(counts(&repo).await, counts_of(2, 2, 2));

    repo.delete(made[3].id, Precondition::None)
        .await
        .expect("delete");
    assert_eq!(counts(&repo).await, counts_of(2, 1, 2));

    update(
        &repo,
        made[5].id,
        status_patch(Status::Todo),
        Precondition::None,
    )
    .await;
    update(
        &repo,
        made[4].id,
        status_patch(Status::Todo),
        Precondition::None,
    )
    .await;
    assert_eq!(counts(&repo).await, counts_of(4, 0, 1));

    let counted = counts(&repo).await;
    for status in Status::ALL {
        let listed = list(
            &repo,
            &ListQuery {
                status: Some(status),
                ..query(500)
            },
        )
        .await;
        assert_eq!(listed.tasks.len() as u64, counted.get(status), "{status}");
    }
    assert_eq!(counted.total(), 5);
}

/// Creates at the same time all succeed, with distinct ids, and are all counted.
pub async fn concurrent_creates_get_distinct_ids(repo: Repo) {
    let mut set = JoinSet::new();
    for i in 0..20 {
        let repo = Arc::clone(&repo);
        set.spawn(async move {
            let status = Status::ALL[i % 3];
            repo.create(new_task(&format!("concurrent {i}"), "", status), None)
                .await
                .map(|created| created.task)
        });
    }
    let mut made = Vec::new();
    while let Some(joined) = set.join_next().await {
        made.push(
            joined
                .expect("a create task panicked")
                .unwrap_or_else(|e| panic!("a concurrent create failed: {e:?}")),
        );
    }
    let distinct: HashSet<TaskId> = made.iter().map(|t| t.id).collect();
    assert_eq!(distinct.len(), 20, "ids handed out twice");
    assert!(made.iter().all(|t| t.version == Version::new(1)));

    let counted = counts(&repo).await;
    assert_eq!(counted, counts_of(7, 7, 6));
    let listed = list(&repo, &query(500)).await;
    assert_eq!(
        listed.tasks.iter().map(|t| t.id).collect::<HashSet<_>>(),
        distinct
    );
    assert_list_order(&listed.tasks);
}

/// Of updates racing under the same `Version` precondition exactly one wins; the others are
/// `PreconditionFailed` and lose nothing but their own change (no lost update).
pub async fn concurrent_updates_with_the_same_version_succeed_once(repo: Repo) {
    let task = create(&repo, "Contended", "", Status::Todo).await;
    let mut set = JoinSet::new();
    for i in 0..10 {
        let repo = Arc::clone(&repo);
        let id = task.id;
        set.spawn(async move {
            let outcome = repo
                .update(
                    id,
                    title_patch(&format!("writer {i}")),
                    Precondition::Version(Version::new(1)),
                )
                .await;
            (i, outcome)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined.expect("an update task panicked") {
            (_, Ok(updated)) => winners.push(updated),
            (_, Err(RepoError::PreconditionFailed)) => {}
            (i, Err(e)) => panic!("writer {i}: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let winner = &winners[0];
    assert_eq!(winner.version, Version::new(2));
    assert_eq!(&get(&repo, task.id).await, winner);
}

/// Of deletes racing for one task exactly one succeeds; the others are `NotFound`.
pub async fn concurrent_deletes_succeed_once(repo: Repo) {
    let task = create(&repo, "Doomed", "", Status::InProgress).await;
    let mut set = JoinSet::new();
    for _ in 0..5 {
        let repo = Arc::clone(&repo);
        let id = task.id;
        set.spawn(async move { repo.delete(id, Precondition::None).await });
    }
    let mut deleted = 0;
    while let Some(joined) = set.join_next().await {
        match joined.expect("a delete task panicked") {
            Ok(()) => deleted += 1,
            Err(RepoError::NotFound) => {}
            Err(e) => panic!("a concurrent delete failed: {e:?}"),
        }
    }
    assert_eq!(deleted, 1);
    assert_eq!(counts(&repo).await, StatusCounts::default());
}

/// A create retried with the same key and request returns the first task, marked as a replay,
/// and stores nothing more; the same request without a key is a new task and leaves the key be.
pub async fn a_retried_create_returns_the_first_task_and_stores_nothing(repo: Repo) {
    let new = new_task("Pay rent", "before the 5th", Status::InProgress);
    let first = create_keyed(&repo, "retry-1", &new).await;
    assert!(!first.replayed, "the first create is no replay");
    let task = first.task;
    assert_eq!(
        (&task.title, &task.description, task.status),
        (&new.title, &new.description, new.status)
    );
    assert_eq!(task.version, Version::new(1));
    assert_eq!(task.created_at, task.updated_at);
    assert_eq!(get(&repo, task.id).await, task);

    for attempt in 0..3 {
        let again = create_keyed(&repo, "retry-1", &new).await;
        assert!(again.replayed, "attempt {attempt} was not a replay");
        assert_eq!(again.task, task, "attempt {attempt}");
    }
    assert_eq!(
        counts(&repo).await,
        counts_of(0, 1, 0),
        "nothing more stored"
    );
    assert_eq!(ids(&list(&repo, &query(500)).await.tasks), [task.id]);

    let plain = create(&repo, "Pay rent", "before the 5th", Status::InProgress).await;
    assert_ne!(plain.id, task.id);
    let again = create_keyed(&repo, "retry-1", &new).await;
    assert!(again.replayed);
    assert_eq!(again.task, task);
    assert_eq!(counts(&repo).await, counts_of(0, 2, 0));
}

/// The same key with a different request (whichever field differs) is refused and writes
/// nothing; the key still answers its own request.
pub async fn a_key_reused_with_a_different_request_is_refused(repo: Repo) {
    let new = new_task("Original", "text", Status::Todo);
    let first = create_keyed(&repo, "reused", &new).await.task;

    for other in [
        new_task("Changed", "text", Status::Todo),
        new_task("Original", "other text", Status::Todo),
        new_task("Original", "", Status::Todo),
        new_task("Original", "text", Status::Done),
    ] {
        expect_err(
            &format!("the key reused for {other:?}"),
            repo.create(other.clone(), Some(idempotency("reused", &other)))
                .await,
            is_key_reused,
        );
    }
    assert_eq!(counts(&repo).await, counts_of(1, 0, 0), "nothing written");
    assert_eq!(ids(&list(&repo, &query(500)).await.tasks), [first.id]);

    let again = create_keyed(&repo, "reused", &new).await;
    assert!(again.replayed);
    assert_eq!(again.task, first);
}

/// Different keys are different creates, even of the same request. Keys are compared exactly:
/// case matters.
pub async fn different_keys_create_different_tasks(repo: Repo) {
    let new = new_task("Same request", "", Status::Done);
    let mut made = Vec::new();
    for key in ["key-a", "key-b", "KEY-A"] {
        let created = create_keyed(&repo, key, &new).await;
        assert!(!created.replayed, "{key}");
        made.push(created.task);
    }
    let distinct: HashSet<TaskId> = made.iter().map(|t| t.id).collect();
    assert_eq!(distinct.len(), 3);
    assert_eq!(counts(&repo).await, counts_of(0, 0, 3));
    for (key, task) in ["key-a", "key-b", "KEY-A"].into_iter().zip(&made) {
        let again = create_keyed(&repo, key, &new).await;
        assert!(again.replayed, "{key}");
        assert_eq!(&again.task, task, "{key}");
    }
}

/// A replay answers with the task as it was created (version 1, `updated_at == created_at`),
/// even after the task was changed or deleted, and neither undoes the change nor brings the task
/// back.
pub async fn a_replay_returns_the_task_as_created_even_after_it_changed_or_went(repo: Repo) {
    let new = new_task("Snapshot", "as created", Status::Todo);
    let first = create_keyed(&repo, "snapshot", &new).await.task;
    let changed = update(
        &repo,
        first.id,
        TaskPatch {
            title: Some(Title::new("Renamed").expect("valid")),
            status: Some(Status::Done),
            ..TaskPatch::default()
        },
        Precondition::None,
    )
    .await;
    assert_eq!(changed.version, Version::new(2));

    let replay = create_keyed(&repo, "snapshot", &new).await;
    assert!(replay.replayed);
    assert_eq!(replay.task, first);
    assert_eq!(
        get(&repo, first.id).await,
        changed,
        "the replay changed nothing"
    );

    repo.delete(first.id, Precondition::None)
        .await
        .expect("delete");
    let replay = create_keyed(&repo, "snapshot", &new).await;
    assert!(replay.replayed);
    assert_eq!(replay.task, first);
    expect_err(
        "get after the replay",
        repo.get(first.id).await,
        is_not_found,
    );
    assert_eq!(counts(&repo).await, StatusCounts::default());
}

/// A key older than its time to live counts as absent, for the same request or another: the
/// create makes a new task, and the key then answers with that one.
pub async fn an_expired_key_is_treated_as_new(repo: Repo) {
    let new = new_task("Expiring", "", Status::Todo);
    let first = create_keyed(&repo, "expiring", &new).await.task;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let second = repo
        .create(
            new.clone(),
            Some(idempotency_for(
                "expiring",
                &new,
                TimeDelta::milliseconds(10),
            )),
        )
        .await
        .unwrap_or_else(|e| panic!("create over an expired key: {e:?}"));
    assert!(!second.replayed, "an expired key was replayed");
    assert_ne!(second.task.id, first.id);
    let replay = create_keyed(&repo, "expiring", &new).await;
    assert!(replay.replayed);
    assert_eq!(
        replay.task, second.task,
        "the key now names the second task"
    );

    tokio::time::sleep(Duration::from_millis(50)).await;
    let other = new_task("Another request", "", Status::InProgress);
    let third = repo
        .create(
            other.clone(),
            Some(idempotency_for(
                "expiring",
                &other,
                TimeDelta::milliseconds(10),
            )),
        )
        .await
        .unwrap_or_else(|e| panic!("a different request over an expired key: {e:?}"));
    assert!(!third.replayed);
    assert_eq!(counts(&repo).await, counts_of(2, 1, 0));
    let replay = create_keyed(&repo, "expiring", &other).await;
    assert_eq!(replay.task, third.task);
}

/// Purging removes exactly the keys older than the age given (a negative age: all of them) and
/// never a task; a purged key counts as absent. Purges running at once, as from several
/// replicas, remove each key once.
pub async fn purged_keys_are_forgotten(repo: Repo) {
    let new = new_task("Purged", "", Status::Todo);
    let first = create_keyed(&repo, "purged", &new).await.task;
    assert_eq!(
        purge(&repo, TimeDelta::hours(1)).await,
        0,
        "the key is fresh"
    );
    assert_eq!(create_keyed(&repo, "purged", &new).await.task, first);

    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(purge(&repo, TimeDelta::zero()).await, 1);
    let second = create_keyed(&repo, "purged", &new).await;
    assert!(!second.replayed, "a purged key was replayed");
    assert_ne!(second.task.id, first.id);

    for i in 0..5 {
        create_keyed(&repo, &format!("batch-{i}"), &new).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (a, b, c) = tokio::join!(
        purge(&repo, TimeDelta::zero()),
        purge(&repo, TimeDelta::zero()),
        purge(&repo, TimeDelta::zero()),
    );
    assert_eq!(a + b + c, 6, "each key purged once: {a} + {b} + {c}");
    assert_eq!(purge(&repo, TimeDelta::zero()).await, 0);

    create_keyed(&repo, "fresh", &new).await;
    assert_eq!(purge(&repo, TimeDelta::hours(1)).await, 0);
    assert_eq!(purge(&repo, TimeDelta::minutes(-1)).await, 1);
    assert_eq!(counts(&repo).await, counts_of(8, 0, 0), "the tasks stay");
}

/// Creates racing with the same key store one task. Every answer is that task (created once,
/// or replayed) or says that the key is in flight; no other error, no second task.
pub async fn concurrent_creates_with_the_same_key_store_one_task(repo: Repo) {
    let new = new_task("Exactly once", "", Status::InProgress);
    let mut set = JoinSet::new();
    for _ in 0..10 {
        let repo = Arc::clone(&repo);
        let new = new.clone();
        set.spawn(async move {
            let idempotency = idempotency("race", &new);
            repo.create(new, Some(idempotency)).await
        });
    }
    let (mut created, mut replayed, mut in_flight) = (Vec::new(), Vec::new(), 0);
    while let Some(joined) = set.join_next().await {
        match joined.expect("a create task panicked") {
            Ok(c) if c.replayed => replayed.push(c.task),
            Ok(c) => created.push(c.task),
            Err(RepoError::IdempotencyKeyInFlight) => in_flight += 1,
            Err(e) => panic!("a create with a contended key failed: {e:?}"),
        }
    }
    assert_eq!(
        created.len(),
        1,
        "created {created:?}, replayed {}, in flight {in_flight}",
        replayed.len()
    );
    let task = &created[0];
    for other in &replayed {
        assert_eq!(other, task);
    }
    assert_eq!(counts(&repo).await, counts_of(0, 1, 0));
    assert_eq!(ids(&list(&repo, &query(500)).await.tasks), [task.id]);

    let settled = create_keyed(&repo, "race", &new).await;
    assert!(settled.replayed);
    assert_eq!(&settled.task, task);
}

/// A store that is up answers `ping`.
pub async fn ping_answers(repo: Repo) {
    repo.ping().await.unwrap_or_else(|e| panic!("ping: {e:?}"));
}
