//! Write combining for a hot task: unconditional updates of one task that arrive while an
//! update of it is running wait in the process, and then go to PostgreSQL together, as one
//! `UPDATE`.
//!
//! Every update of a row holds the row's lock until its commit is flushed, so the updates of
//! one task run one flush after another however many connections send them: a task that many
//! clients write at once (a board's shared "current sprint" card, the 90/10 mix of the
//! benchmark) is limited to one write per flush. Combined, the updates waiting for one task
//! need one statement, one lock and one flush between them.
//!
//! What each caller gets is what it would have got had the updates of its batch run one after
//! another: the `UPDATE` applies all their patches (the last value of each field wins), steps
//! the version once per update and `updated_at` by one microsecond per update, and each
//! caller's answer is the state after its own patch. For that to be computed from the row the
//! `UPDATE` returns, a batch holds only patches that set no field the first patch of the batch
//! does not set ([`next_batch`]); the others make the next batches (at most one per set of
//! fields). Waiting updates were all in flight together, so any order of them is a valid one,
//! and every intermediate state existed only inside the transaction, which no reader can
//! observe: the history is still linearizable, each update taking effect, in turn, at its
//! batch's commit.
//!
//! An update whose caller went away before its batch was formed is not written (no one waits
//! for its answer); one whose batch fails fails with it, and so do the rest of the waiting
//! updates, at once, rather than each waiting for the same failure. No update waits longer
//! than twice what one update may take on its own (the pool's wait plus the query timeout).
//!
//! Conditional updates (`If-Match` with a version) never wait here: their outcome depends on
//! the row as PostgreSQL has it.

use chrono::TimeDelta;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tasklane_domain::{RepoError, Task, TaskPatch, Version};
use tokio::sync::oneshot;

/// An update waiting for the one running on its task.
pub(crate) struct Waiter {
    pub(crate) patch: TaskPatch,
    pub(crate) reply: oneshot::Sender<Result<Task, RepoError>>,
}

/// The tasks being updated now, each with the updates that wait for it.
#[derive(Default)]
pub(crate) struct Combiner {
    running: Mutex<HashMap<i64, Vec<Waiter>>>,
    /// Updates written with at least one other in one `UPDATE`, since start.
    combined: AtomicU64,
}

impl std::fmt::Debug for Combiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combiner")
            .field("waiting", &self.waiting())
            .finish_non_exhaustive()
    }
}

/// What an update does on arriving.
pub(crate) enum Turn {
    /// No update of the task is running: this one runs now, alone; the caller must call
    /// [`Combiner::next`] for the task when it ends, however it ends.
    Run,
    /// One is running: this one waits for its answer here.
    Wait(oneshot::Receiver<Result<Task, RepoError>>),
}

impl Combiner {
    pub(crate) fn arrive(&self, id: i64, patch: &TaskPatch) -> Turn {
        let mut running = self.lock();
        match running.get_mut(&id) {
            Some(waiting) => {
                let (reply, answer) = oneshot::channel();
                waiting.push(Waiter {
                    patch: patch.clone(),
                    reply,
                });
                Turn::Wait(answer)
            }
            None => {
                running.insert(id, Vec::new());
                Turn::Run
            }
        }
    }

    /// Called when an update of `id` ends: the updates that arrived meanwhile, which the caller
    /// must now run (and call this again after), or `None` when there are none and the task
    /// is no longer being updated.
    pub(crate) fn next(&self, id: i64) -> Option<Vec<Waiter>> {
        let mut running = self.lock();
        let waiting = running.get_mut(&id).map(std::mem::take).unwrap_or_default();
        if waiting.is_empty() {
            running.remove(&id);
            None
        } else {
            Some(waiting)
        }
    }

    /// Gives up on `id`: its waiters are dropped, so each gets an error; the next update of
    /// the task runs again.
    pub(crate) fn abandon(&self, id: i64) {
        let waiting = self.lock().remove(&id);
        drop(waiting);
    }

    /// Counts the updates of a batch of `count` that was written, if it combined any.
    pub(crate) fn record_written(&self, count: usize) {
        if count > 1 {
            self.combined
                .fetch_add(u64::try_from(count).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// How many updates were written with at least one other in one `UPDATE`, since start.
    pub(crate) fn combined(&self) -> u64 {
        self.combined.load(Ordering::Relaxed)
    }

    /// How many updates wait now, over all tasks.
    pub(crate) fn waiting(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Vec<Waiter>>> {
        // The map is left whole by every critical section (none of them can panic midway).
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What an update that waited gets when the run of waiting updates stopped before answering it
/// (a panic, the runtime shutting down): its patch may have been written or not, as with any
/// write that is `Unavailable`.
#[derive(Debug, thiserror::Error)]
#[error("the run of updates of this task that this one waited in stopped before answering it")]
pub(crate) struct Abandoned;

/// What an update gets when the updates of its task ahead of it took longer than its bound:
/// it may still be written, as with any write that is `Unavailable`.
#[derive(Debug, thiserror::Error)]
#[error("waited more than {} ms for the updates of this task ahead of this one", .0.as_millis())]
pub(crate) struct WaitedTooLong(pub(crate) std::time::Duration);

/// Which fields a patch sets: title, description, status.
fn fields(patch: &TaskPatch) -> [bool; 3] {
    [
        patch.title.is_some(),
        patch.description.is_some(),
        patch.status.is_some(),
    ]
}

/// Whether `patch` sets only fields among `allowed`.
fn sets_only(patch: &TaskPatch, allowed: [bool; 3]) -> bool {
    fields(patch)
        .iter()
        .zip(allowed)
        .all(|(&sets, allowed)| !sets || allowed)
}

/// Takes the next batch out of `waiting`: the first waiter, and every other whose patch sets
/// only fields the first one's sets, in their order. Waiters whose caller went away are
/// dropped first. Empty when no waiter is left.
pub(crate) fn next_batch(waiting: &mut Vec<Waiter>) -> Vec<Waiter> {
    waiting.retain(|w| !w.reply.is_closed());
    let Some(first) = waiting.first() else {
        return Vec::new();
    };
    let allowed = fields(&first.patch);
    let (batch, rest) = std::mem::take(waiting)
        .into_iter()
        .partition(|w| sets_only(&w.patch, allowed));
    *waiting = rest;
    batch
}

/// `earlier` then `later`: each field's last value.
fn then(mut earlier: TaskPatch, later: &TaskPatch) -> TaskPatch {
    if let Some(title) = &later.title {
        earlier.title = Some(title.clone());
    }
    if let Some(description) = &later.description {
        earlier.description = Some(description.clone());
    }
    if let Some(status) = later.status {
        earlier.status = Some(status);
    }
    earlier
}

/// The one patch that has the effect of `patches` applied in order.
pub(crate) fn combined<'p>(patches: impl IntoIterator<Item = &'p TaskPatch>) -> TaskPatch {
    patches.into_iter().fold(TaskPatch::default(), then)
}

/// The task after each of `patches`, given the task after all of them (`last`, as the
/// combined `UPDATE` returned it, its version and `updated_at` stepped once per patch). The
/// patches must make one batch ([`next_batch`]): the fields the first one leaves alone are then
/// the same before and after the batch, so `last` has their earlier values too.
pub(crate) fn states(last: &Task, patches: &[TaskPatch]) -> Vec<Task> {
    let count = patches.len();
    let mut applied = TaskPatch::default();
    patches
        .iter()
        .enumerate()
        .map(|(i, patch)| {
            applied = then(std::mem::take(&mut applied), patch);
            let later = i64::try_from(count - 1 - i).unwrap_or(i64::MAX);
            Task {
                id: last.id,
                title: applied.title.clone().unwrap_or_else(|| last.title.clone()),
                description: applied
                    .description
                    .clone()
                    .unwrap_or_else(|| last.description.clone()),
                status: applied.status.unwrap_or(last.status),
                created_at: last.created_at,
                updated_at: last.updated_at - TimeDelta::microseconds(later),
                version: Version::new(last.version.get() - later),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use tasklane_domain::{Description, Status, TaskId, Title};

    fn patch(title: Option<&str>, description: Option<&str>, status: Option<Status>) -> TaskPatch {
        TaskPatch {
            title: title.map(|t| Title::new(t.to_owned()).unwrap()),
            description: description.map(|d| Description::new(d.to_owned()).unwrap()),
            status,
        }
    }

    fn task(title: &str, description: &str, status: Status, version: i64) -> Task {
        let at = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        Task {
            id: TaskId::new(7).unwrap(),
            title: Title::new(title.to_owned()).unwrap(),
            description: Description::new(description.to_owned()).unwrap(),
            status,
            created_at: at - TimeDelta::days(1),
            updated_at: at,
            version: Version::new(version),
        }
    }

    /// Applies `patches` one at a time, as separate updates would.
    fn one_by_one(before: &Task, patches: &[TaskPatch]) -> Vec<Task> {
        let mut task = before.clone();
        patches
            .iter()
            .map(|p| {
                task = Task {
                    title: p.title.clone().unwrap_or(task.title.clone()),
                    description: p.description.clone().unwrap_or(task.description.clone()),
                    status: p.status.unwrap_or(task.status),
                    version: Version::new(task.version.get() + 1),
                    updated_at: task.updated_at + TimeDelta::microseconds(1),
                    ..task.clone()
                };
                task.clone()
            })
            .collect()
    }

    /// A waiter per patch, and the receivers of their answers.
    fn waiting(
        patches: &[&TaskPatch],
    ) -> (Vec<Waiter>, Vec<oneshot::Receiver<Result<Task, RepoError>>>) {
        patches
            .iter()
            .map(|&patch| {
                let (reply, answer) = oneshot::channel();
                let patch = patch.clone();
                (Waiter { patch, reply }, answer)
            })
            .unzip()
    }

    fn patches(waiters: &[Waiter]) -> Vec<TaskPatch> {
        waiters.iter().map(|w| w.patch.clone()).collect()
    }

    #[test]
    fn a_batch_takes_every_patch_that_sets_only_the_first_ones_fields() {
        let status = patch(None, None, Some(Status::Done));
        let other_status = patch(None, None, Some(Status::Todo));
        let title = patch(Some("t"), None, None);
        let both = patch(Some("t"), None, Some(Status::Todo));
        let empty = TaskPatch::default();

        let (mut left, _answers) = waiting(&[]);
        assert!(next_batch(&mut left).is_empty());

        let (mut left, _answers) = waiting(&[&status, &title, &other_status, &empty, &title]);
        let batch = next_batch(&mut left);
        assert_eq!(
            patches(&batch),
            [&status, &other_status, &empty].map(Clone::clone)
        );
        let batch = next_batch(&mut left);
        assert_eq!(patches(&batch), [&title, &title].map(Clone::clone));
        assert!(left.is_empty());
        assert!(next_batch(&mut left).is_empty());

        let (mut left, _answers) = waiting(&[&both, &title, &status, &empty]);
        assert_eq!(next_batch(&mut left).len(), 4);

        let (mut left, _answers) = waiting(&[&empty, &status, &empty]);
        assert_eq!(
            patches(&next_batch(&mut left)),
            [&empty, &empty].map(Clone::clone)
        );
        assert_eq!(
            patches(&next_batch(&mut left)),
            std::slice::from_ref(&status)
        );
    }

    #[test]
    fn a_waiter_whose_caller_went_away_is_not_written() {
        let status = patch(None, None, Some(Status::Done));
        let title = patch(Some("t"), None, None);
        let (mut left, mut answers) = waiting(&[&title, &status, &status]);
        // The first caller went away: its patch neither runs nor decides the batch.
        drop(answers.remove(0));
        assert_eq!(
            patches(&next_batch(&mut left)),
            [&status, &status].map(Clone::clone)
        );
        assert!(left.is_empty());
    }

    #[test]
    fn the_combined_patch_keeps_each_fields_last_value() {
        let patches = [
            patch(Some("a"), Some("x"), Some(Status::Todo)),
            patch(Some("b"), None, Some(Status::Done)),
            patch(None, None, Some(Status::InProgress)),
        ];
        assert_eq!(
            combined(&patches),
            patch(Some("b"), Some("x"), Some(Status::InProgress))
        );
        assert_eq!(combined([]), TaskPatch::default());
    }

    #[test]
    fn each_state_is_what_updating_one_at_a_time_gives() {
        let before = task("before", "kept", Status::Todo, 41);
        let batches = [
            vec![patch(None, None, Some(Status::Done))],
            vec![
                patch(None, None, Some(Status::Done)),
                patch(None, None, Some(Status::InProgress)),
                TaskPatch::default(),
                patch(None, None, Some(Status::Todo)),
            ],
            vec![
                patch(Some("one"), None, Some(Status::Done)),
                patch(Some("two"), None, None),
                patch(None, None, Some(Status::InProgress)),
                patch(Some("three"), None, None),
            ],
            vec![
                patch(Some("a"), Some("b"), Some(Status::Done)),
                patch(None, Some("c"), None),
                TaskPatch::default(),
            ],
        ];
        for patches in batches {
            let refs: Vec<&TaskPatch> = patches.iter().collect();
            let (mut left, _answers) = waiting(&refs);
            assert_eq!(next_batch(&mut left).len(), patches.len(), "{patches:?}");
            let expected = one_by_one(&before, &patches);
            let last = expected.last().unwrap();
            // What the combined UPDATE returns is the combined patch applied once, with the
            // version and time stepped once per patch.
            let [mut returned] = one_by_one(&before, &[combined(&patches)])
                .try_into()
                .unwrap();
            returned.version = last.version;
            returned.updated_at = last.updated_at;
            assert_eq!(&returned, last);
            assert_eq!(states(&returned, &patches), expected, "{patches:?}");
        }
    }

    #[test]
    fn waiters_queue_behind_the_running_update_until_it_ends() {
        let combiner = Combiner::default();
        let status = patch(None, None, Some(Status::Done));
        assert!(matches!(combiner.arrive(1, &status), Turn::Run));
        assert!(matches!(combiner.arrive(2, &status), Turn::Run));
        let Turn::Wait(mut answer) = combiner.arrive(1, &status) else {
            panic!("a second update of task 1 ran");
        };
        assert!(matches!(combiner.arrive(1, &status), Turn::Wait(_)));
        assert_eq!(combiner.waiting(), 2);

        let waiting = combiner.next(1).expect("two waiters");
        assert_eq!(waiting.len(), 2);
        assert_eq!(combiner.waiting(), 0);
        // Task 1 is still being updated (by the waiters' batch): a newcomer waits.
        assert!(matches!(combiner.arrive(1, &status), Turn::Wait(_)));
        assert_eq!(combiner.next(1).map(|w| w.len()), Some(1));
        assert!(combiner.next(1).is_none());
        assert!(matches!(combiner.arrive(1, &status), Turn::Run));

        // Abandoning drops the waiters: each sees its answer will never come.
        drop(waiting);
        assert!(answer.try_recv().is_err());
        let Turn::Wait(mut answer) = combiner.arrive(2, &status) else {
            panic!("a second update of task 2 ran");
        };
        combiner.abandon(2);
        assert!(matches!(
            answer.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(matches!(combiner.arrive(2, &status), Turn::Run));
    }
}
