//! Write-through of updates into the hot list pages.
//!
//! Without it, every write bumps the generation and every list entry misses until a reader has
//! read its page from the store again and stored it: under a steady stream of writes, most
//! reads of a hot list miss (the benchmark's 90/10 mix: 13-18% hits). An update cannot change
//! which tasks an unfiltered page holds (their order is `created_at, id`, which never change), only
//! the updated task's row, and the update's answer is that row. So for the unfiltered pages this
//! process has read from the store (its *heads*), an update computes the next page itself, and
//! the cache stores it under the new generation in the same atomic step as the bump
//! ([`TaskCache::bump_generation_replacing`]): readers never see the new generation without it.
//!
//! Why the replaced page is as good as one read from the store after the bump. The head was read
//! from the store after its generation `g` became current, so it holds every write whose bump
//! made `g` or an earlier generation current. The bump to `g + 1` is this update's (the cache
//! refuses the replacement unless the generation was still `g`), so the only write a reader of
//! `g + 1` may not miss beyond those is this one, which the patch applies. Writes committed but
//! not yet bumped need not be there (they are not acknowledged yet), and when the head already
//! holds a newer version of the row (a later write to the same task, read by chance) it is kept.
//! The cache also refuses unless its entry holds exactly the bytes the head was rendered to, so a
//! chain of replacements never builds on a page it did not store: if another bump, a page stored
//! by another reader or another replica came between, the entry is left to miss as before.
//!
//! Heads are chained within the process: an update takes the head as the previous update left
//! it (its generation one on, speculatively), so that updates in flight together each replace in
//! turn, as long as their bumps reach the cache in that order. A replacement that is refused
//! drops the head it made; the next read from the store records a new one.
//!
//! Creates and deletes change which tasks a page holds, and filtered pages (status, text) may
//! gain or lose the updated task: for those the bump is a plain one and the pages miss.
//!
//! [`TaskCache::bump_generation_replacing`]: crate::ports::TaskCache::bump_generation_replacing

use crate::ports::{Generation, Replacement};
use crate::query::{ListQuery, Page};
use crate::task::Task;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Renders a list page as it is cached: the same function the readers use on a miss, so that a
/// replaced entry is byte for byte what a read from the store would have stored.
pub type ListRenderer = Arc<dyn Fn(&ListQuery, &Page) -> Bytes + Send + Sync>;

/// At most this many heads are kept (the pages most recently read from the store). Each update
/// replaces them all in one round trip.
const MAX_HEADS: usize = 4;
/// A page rendered larger than this is not kept as a head: every update would send it twice
/// (the expected bytes and the new ones).
const MAX_HEAD_BYTES: usize = 64 << 10;

/// An unfiltered page this process has read from the store (or computed by a replacement), the
/// generation it is good for, and the bytes it was rendered to.
#[derive(Clone)]
struct Head {
    query: ListQuery,
    generation: Generation,
    page: Page,
    bytes: Bytes,
    /// When it was recorded, to keep the most recent ones.
    seq: u64,
}

/// The heads, by cache key.
#[derive(Default)]
pub(crate) struct Heads {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    heads: HashMap<String, Head>,
    seq: u64,
}

/// Whether updates can be written through into this query's page.
pub(crate) fn can_write_through(query: &ListQuery) -> bool {
    query.status.is_none() && query.search.is_none()
}

/// The page after the updates `tasks`: each one's row replaced, unless the page holds a newer
/// version of it already (or a newer update among `tasks`) or does not hold it at all.
fn patched(page: &Page, tasks: &[&Task]) -> Page {
    let mut next = page.clone();
    for task in tasks {
        if let Some(row) = next.tasks.iter_mut().find(|t| t.id == task.id) {
            if row.version < task.version {
                *row = (*task).clone();
            }
        }
    }
    next
}

impl Heads {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the map consistent, so a poisoned one is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a page read from the store under `generation` (the one its reader missed under),
    /// rendered to `bytes`, when updates can be written through into it.
    pub(crate) fn record(
        &self,
        key: &str,
        query: &ListQuery,
        generation: Generation,
        page: &Page,
        bytes: &Bytes,
    ) {
        if !can_write_through(query) || bytes.len() > MAX_HEAD_BYTES {
            return;
        }
        let mut inner = self.lock();
        if inner
            .heads
            .get(key)
            .is_some_and(|h| h.generation >= generation)
        {
            // A replacement (or a later read) got further already.
            return;
        }
        if !inner.heads.contains_key(key) && inner.heads.len() >= MAX_HEADS {
            let oldest = inner
                .heads
                .iter()
                .min_by_key(|(_, h)| h.seq)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                inner.heads.remove(&oldest);
            }
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.heads.insert(
            key.to_owned(),
            Head {
                query: query.clone(),
                generation,
                page: page.clone(),
                bytes: bytes.clone(),
                seq,
            },
        );
    }

    /// The replacements for the updates `tasks` (covered by one bump), one per head; each head
    /// moves on to the page it replaces with, one generation on (speculatively: see
    /// [`Heads::refused`]).
    pub(crate) fn advance(&self, tasks: &[&Task], render: &ListRenderer) -> Vec<Replacement> {
        let mut inner = self.lock();
        let mut replacements = Vec::with_capacity(inner.heads.len());
        for (key, head) in &mut inner.heads {
            let Some(next_generation) = head.generation.0.checked_add(1).map(Generation) else {
                continue;
            };
            let page = patched(&head.page, tasks);
            let bytes = render(&head.query, &page);
            replacements.push(Replacement {
                key: key.clone(),
                expected_generation: head.generation,
                expected_value: std::mem::replace(&mut head.bytes, bytes.clone()),
                value: bytes,
            });
            head.generation = next_generation;
            head.page = page;
        }
        replacements
    }

    /// The cache refused `replacement`: drops the head it made, unless another update has
    /// moved that head on since (its own replacement, expecting this one's bytes, is refused
    /// too and drops it then).
    pub(crate) fn refused(&self, replacement: &Replacement) {
        let mut inner = self.lock();
        if inner.heads.get(&replacement.key).is_some_and(|h| {
            Some(h.generation)
                == replacement
                    .expected_generation
                    .0
                    .checked_add(1)
                    .map(Generation)
                && h.bytes == replacement.value
        }) {
            inner.heads.remove(&replacement.key);
        }
    }

    /// The generation moved on without a replacement (a plain bump), or whether it did is
    /// unknown: no head can be replaced any more.
    pub(crate) fn clear(&self) {
        self.lock().heads.clear();
    }

    #[cfg(test)]
    pub(crate) fn generations(&self) -> Vec<(String, Generation)> {
        let mut v: Vec<_> = self
            .lock()
            .heads
            .iter()
            .map(|(k, h)| (k.clone(), h.generation))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{Limit, SearchText};
    use crate::task::{Description, Status, TaskId, Title, Version};
    use chrono::{TimeDelta, Utc};

    fn task(id: i64, version: i64, title: &str) -> Task {
        let at = Utc::now() - TimeDelta::seconds(id);
        Task {
            id: TaskId::new(id).unwrap_or_else(|| unreachable!()),
            title: Title::new(title.to_owned()).unwrap_or_else(|_| unreachable!()),
            description: Description::default(),
            status: Status::Todo,
            created_at: at,
            updated_at: at,
            version: Version::new(version),
        }
    }

    fn page(tasks: Vec<Task>) -> Page {
        Page { tasks, next: None }
    }

    /// Renders the titles and versions, enough to tell pages apart.
    fn renderer() -> ListRenderer {
        Arc::new(|_q: &ListQuery, p: &Page| {
            let s: Vec<String> = p
                .tasks
                .iter()
                .map(|t| format!("{}@{}", t.title.as_str(), t.version.get()))
                .collect();
            Bytes::from(s.join(","))
        })
    }

    fn recorded(key: &str, generation: u64, tasks: Vec<Task>) -> Heads {
        let heads = Heads::default();
        let p = page(tasks);
        let bytes = renderer()(&ListQuery::default(), &p);
        heads.record(
            key,
            &ListQuery::default(),
            Generation(generation),
            &p,
            &bytes,
        );
        heads
    }

    #[test]
    fn only_unfiltered_queries_are_written_through() {
        assert!(can_write_through(&ListQuery::default()));
        assert!(can_write_through(&ListQuery {
            limit: Limit::new(5).unwrap_or_else(|_| unreachable!()),
            ..Default::default()
        }));
        assert!(!can_write_through(&ListQuery {
            status: Some(Status::Done),
            ..Default::default()
        }));
        assert!(!can_write_through(&ListQuery {
            search: SearchText::new("x").ok().flatten(),
            ..Default::default()
        }));
        let heads = Heads::default();
        let filtered = ListQuery {
            status: Some(Status::Done),
            ..Default::default()
        };
        heads.record("f", &filtered, Generation(1), &page(vec![]), &Bytes::new());
        assert!(heads.generations().is_empty());
    }

    #[test]
    fn an_update_replaces_its_row_and_moves_the_head_one_generation_on() {
        let heads = recorded("k", 7, vec![task(2, 1, "b"), task(1, 1, "a")]);
        let r = heads.advance(&[&task(1, 2, "A")], &renderer());
        assert_eq!(
            r,
            vec![Replacement {
                key: "k".into(),
                expected_generation: Generation(7),
                expected_value: Bytes::from("b@1,a@1"),
                value: Bytes::from("b@1,A@2"),
            }]
        );
        assert_eq!(heads.generations(), vec![("k".into(), Generation(8))]);
        // The next update builds on the page this one made.
        let r = heads.advance(&[&task(2, 5, "B")], &renderer());
        assert_eq!(r[0].expected_generation, Generation(8));
        assert_eq!(r[0].expected_value, Bytes::from("b@1,A@2"));
        assert_eq!(r[0].value, Bytes::from("B@5,A@2"));
    }

    #[test]
    fn updates_sharing_a_bump_are_all_in_its_page_and_the_newest_version_wins() {
        let heads = recorded("k", 7, vec![task(2, 1, "b"), task(1, 1, "a")]);
        // In the order their writes joined: task 1's two updates (combined in one UPDATE, say)
        // in either order, and task 2's.
        let r = heads.advance(
            &[&task(1, 3, "A3"), &task(2, 2, "B"), &task(1, 2, "A2")],
            &renderer(),
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].expected_generation, Generation(7));
        assert_eq!(r[0].value, Bytes::from("B@2,A3@3"));
        assert_eq!(heads.generations(), vec![("k".into(), Generation(8))]);
    }

    #[test]
    fn a_task_not_on_the_page_or_older_than_its_row_leaves_the_page_as_it_is() {
        let heads = recorded("k", 7, vec![task(2, 3, "b")]);
        let r = heads.advance(&[&task(9, 2, "x")], &renderer());
        assert_eq!(r[0].value, Bytes::from("b@3"));
        let r = heads.advance(&[&task(2, 2, "older")], &renderer());
        assert_eq!(r[0].value, Bytes::from("b@3"));
        assert_eq!(r[0].expected_generation, Generation(8));
    }

    #[test]
    fn a_refused_replacement_drops_its_head_unless_another_moved_it_on() {
        let heads = recorded("k", 7, vec![task(1, 1, "a")]);
        let first = heads.advance(&[&task(1, 2, "a")], &renderer()).remove(0);
        let second = heads.advance(&[&task(1, 3, "a")], &renderer()).remove(0);
        heads.refused(&first);
        assert_eq!(heads.generations(), vec![("k".into(), Generation(9))]);
        heads.refused(&second);
        assert!(heads.generations().is_empty());
    }

    #[test]
    fn a_read_older_than_the_head_does_not_replace_it_and_the_oldest_head_goes_first() {
        let heads = recorded("k", 7, vec![task(1, 1, "a")]);
        let p = page(vec![]);
        heads.record("k", &ListQuery::default(), Generation(6), &p, &Bytes::new());
        assert_eq!(heads.generations(), vec![("k".into(), Generation(7))]);
        heads.record("k", &ListQuery::default(), Generation(9), &p, &Bytes::new());
        assert_eq!(heads.generations(), vec![("k".into(), Generation(9))]);
        for key in ["l", "m", "n", "o"] {
            heads.record(key, &ListQuery::default(), Generation(9), &p, &Bytes::new());
        }
        let keys: Vec<String> = heads.generations().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["l", "m", "n", "o"]);
        heads.clear();
        assert!(heads.generations().is_empty());
    }

    #[test]
    fn a_page_too_large_is_not_kept() {
        let heads = Heads::default();
        let big = Bytes::from(vec![b'x'; MAX_HEAD_BYTES + 1]);
        heads.record(
            "k",
            &ListQuery::default(),
            Generation(1),
            &page(vec![]),
            &big,
        );
        assert!(heads.generations().is_empty());
    }
}
