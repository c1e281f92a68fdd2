//! Shared bumps: the writes of this process that finish while a bump of the cache generation is
//! on its way wait for it to end, and then share one bump between them.
//!
//! Every acknowledged write must be followed by a bump sent after its store write committed
//! (docs/ARCHITECTURE.md, "Generations"): a bump sent after several writes committed does that
//! for each of them, as theirs would have. So at most one bump per process is on its way at a
//! time; the writes that finish meanwhile queue, and when it ends they are the next *group*:
//! its first member (the *leader*) sends one bump for all of them, with the pages of all their
//! updates written through, and every member returns once the bump is made (or has failed, and
//! is owed). A lone write sends its bump at once, as before.
//!
//! Writers go away (the client disconnects and the request's future is dropped), so:
//! - a leader that goes away before its group's bump is made leaves each member to bump alone;
//! - a waiting member that goes away stays in its group (its write committed, so its change is
//!   still made, with the others'); one chosen to lead that goes away before it started passes
//!   the group on to another member, or back to the queue for the next writer to take.
//!
//! No runtime is needed: waiters are woken through their `Waker`s, so the domain stays free of
//! tokio. Lock order: the queue, then a member's ticket.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// The queue of writes waiting for the bump on its way.
pub(crate) struct Bumps<C> {
    queue: Mutex<Queue<C>>,
}

impl<C> Default for Bumps<C> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                busy: false,
                waiting: Vec::new(),
            }),
        }
    }
}

struct Queue<C> {
    /// A group is being led (or a leader has been chosen and not yet started).
    busy: bool,
    /// The writes that finished after the group on its way was formed: the next group.
    waiting: Vec<Member<C>>,
}

/// One write in a queue or a group: its change, and where its writer waits.
struct Member<C> {
    change: C,
    ticket: Arc<Ticket<C>>,
}

struct Ticket<C> {
    state: Mutex<TicketState<C>>,
}

enum TicketState<C> {
    /// Waiting for its group's bump (or to be chosen to lead).
    Queued(Option<Waker>),
    /// Chosen to lead this group (itself included), not yet taken by its writer.
    Lead(Vec<Member<C>>),
    /// Leading its group.
    Leading,
    /// Its group's bump was made (or failed and is owed).
    Done,
    /// Its group's leader went away before the bump was made: bump alone, for this change.
    Orphaned(C),
    /// Its writer went away; its change is still made with its group's.
    Gone,
}

// Every critical section leaves its value consistent, so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_queued<C>(member: &Member<C>) -> bool {
    matches!(*lock(&member.ticket.state), TicketState::Queued(_))
}

/// What a write does after its store write: lead a group at once, or wait.
pub(crate) enum Turn<'a, C> {
    Lead(Group<'a, C>),
    Wait(Wait<'a, C>),
}

/// How a wait ended.
pub(crate) enum Waited<'a, C> {
    /// The group's bump was made (or failed and is owed): return.
    Done,
    /// This write leads the next group: make its bump, then [`Group::finish`].
    Lead(Group<'a, C>),
    /// The leader went away before the bump was made: bump alone, for this change (the one
    /// this write joined with; `None` only if the queue lost track of it, when a plain bump is
    /// the safe one).
    Orphaned(Option<C>),
}

impl<C> Bumps<C> {
    /// Queues a write whose store write has finished, with `change` (what its bump must cover).
    pub(crate) fn join(&self, change: C) -> Turn<'_, C> {
        let ticket = Arc::new(Ticket {
            state: Mutex::new(TicketState::Queued(None)),
        });
        let member = Member {
            change,
            ticket: Arc::clone(&ticket),
        };
        let mut queue = lock(&self.queue);
        if queue.busy {
            queue.waiting.push(member);
            return Turn::Wait(Wait {
                bumps: self,
                ticket,
                finished: false,
            });
        }
        queue.busy = true;
        // Writes left by writers that went away ride along.
        let mut members = std::mem::take(&mut queue.waiting);
        members.push(member);
        *lock(&ticket.state) = TicketState::Leading;
        Turn::Lead(Group {
            bumps: self,
            members,
            me: ticket,
            finished: false,
        })
    }

    /// The group on its way has ended: the writes waiting are the next group.
    fn hand_off(&self) {
        let waker = next_group(&mut lock(&self.queue));
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Makes the writes waiting the next group, led by the first of them whose writer is still
/// there, and answers the waker to wake; none waiting (or none still there): not busy.
fn next_group<C>(queue: &mut Queue<C>) -> Option<Waker> {
    let Some(first) = queue.waiting.iter().position(is_queued) else {
        queue.busy = false;
        return None;
    };
    choose(std::mem::take(&mut queue.waiting), first)
}

/// Makes `group[leader]` lead `group`; answers its waker.
fn choose<C>(group: Vec<Member<C>>, leader: usize) -> Option<Waker> {
    let ticket = Arc::clone(&group[leader].ticket);
    let mut state = lock(&ticket.state);
    match std::mem::replace(&mut *state, TicketState::Lead(group)) {
        TicketState::Queued(waker) => waker,
        _ => None,
    }
}

/// A group being led: the leader makes one bump covering [`Group::changes`], then calls
/// [`Group::finish`]. Dropped without it (the leader went away), its members bump alone.
pub(crate) struct Group<'a, C> {
    bumps: &'a Bumps<C>,
    members: Vec<Member<C>>,
    me: Arc<Ticket<C>>,
    finished: bool,
}

impl<C> Group<'_, C> {
    /// What the group's bump must cover, in the order the writes joined.
    pub(crate) fn changes(&self) -> impl Iterator<Item = &C> {
        self.members.iter().map(|m| &m.change)
    }

    /// The bump was made (or failed and is owed): every member returns.
    pub(crate) fn finish(mut self) {
        self.finished = true;
    }
}

impl<C> Drop for Group<'_, C> {
    fn drop(&mut self) {
        let mut wakers = Vec::with_capacity(self.members.len());
        for member in std::mem::take(&mut self.members) {
            if Arc::ptr_eq(&member.ticket, &self.me) {
                continue;
            }
            let mut state = lock(&member.ticket.state);
            if let TicketState::Queued(waker) = &mut *state {
                wakers.extend(waker.take());
                *state = if self.finished {
                    TicketState::Done
                } else {
                    // Its change goes back to it: it bumps for that alone.
                    TicketState::Orphaned(member.change)
                };
            }
        }
        *lock(&self.me.state) = TicketState::Done;
        for waker in wakers {
            waker.wake();
        }
        self.bumps.hand_off();
    }
}

/// A write waiting for its group's bump, or to lead the next group.
pub(crate) struct Wait<'a, C> {
    bumps: &'a Bumps<C>,
    ticket: Arc<Ticket<C>>,
    finished: bool,
}

impl<'a, C> Future for Wait<'a, C> {
    type Output = Waited<'a, C>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Waited<'a, C>> {
        let this = &mut *self;
        let mut state = lock(&this.ticket.state);
        let waited = match std::mem::replace(&mut *state, TicketState::Done) {
            TicketState::Queued(waker) => {
                let waker = match waker {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *state = TicketState::Queued(Some(waker));
                return Poll::Pending;
            }
            TicketState::Lead(members) => {
                *state = TicketState::Leading;
                Waited::Lead(Group {
                    bumps: this.bumps,
                    members,
                    me: Arc::clone(&this.ticket),
                    finished: false,
                })
            }
            TicketState::Done => Waited::Done,
            TicketState::Orphaned(change) => Waited::Orphaned(Some(change)),
            // Leading and Gone cannot be seen here (this future is the only one to set them, and
            // it returns when it does); bumping alone is safe whatever happened.
            TicketState::Leading | TicketState::Gone => Waited::Orphaned(None),
        };
        drop(state);
        this.finished = true;
        Poll::Ready(waited)
    }
}

impl<C> Drop for Wait<'_, C> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let waker = {
            let mut queue = lock(&self.bumps.queue);
            let mut state = lock(&self.ticket.state);
            let TicketState::Lead(mut group) = std::mem::replace(&mut *state, TicketState::Gone)
            else {
                // Queued (its change stays in its queue or group), or already over.
                return;
            };
            drop(state);
            // Chosen to lead and gone before it started: another member leads, or the group
            // goes back to the front of the queue for the next writer.
            if let Some(next) = group.iter().position(is_queued) {
                choose(group, next)
            } else {
                group.append(&mut queue.waiting);
                queue.waiting = group;
                next_group(&mut queue)
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn flag() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(false.into()));
        (Arc::clone(&flag), Waker::from(flag))
    }

    fn woken(flag: &Flag) -> bool {
        flag.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn poll<'a>(wait: &mut Wait<'a, u32>, waker: &Waker) -> Poll<Waited<'a, u32>> {
        Pin::new(wait).poll(&mut Context::from_waker(waker))
    }

    fn lead<'a>(turn: Turn<'a, u32>) -> Group<'a, u32> {
        match turn {
            Turn::Lead(group) => group,
            Turn::Wait(_) => panic!("expected to lead"),
        }
    }

    fn wait<'a>(turn: Turn<'a, u32>) -> Wait<'a, u32> {
        match turn {
            Turn::Wait(wait) => wait,
            Turn::Lead(_) => panic!("expected to wait"),
        }
    }

    fn changes(group: &Group<'_, u32>) -> Vec<u32> {
        group.changes().copied().collect()
    }

    #[test]
    fn a_lone_write_leads_at_once_and_the_next_does_too() {
        let bumps = Bumps::default();
        let group = lead(bumps.join(1));
        assert_eq!(changes(&group), [1]);
        group.finish();
        let group = lead(bumps.join(2));
        assert_eq!(changes(&group), [2]);
    }

    #[test]
    fn writes_that_finish_during_a_bump_share_the_next_one() {
        let bumps = Bumps::default();
        let first = lead(bumps.join(1));
        let mut a = wait(bumps.join(2));
        let mut b = wait(bumps.join(3));
        let (a_flag, a_waker) = flag();
        let (b_flag, b_waker) = flag();
        assert!(poll(&mut a, &a_waker).is_pending());
        assert!(poll(&mut b, &b_waker).is_pending());
        first.finish();
        // The first waiting write leads both; the other waits for that bump.
        assert!(woken(&a_flag) && !woken(&b_flag));
        let Poll::Ready(Waited::Lead(group)) = poll(&mut a, &a_waker) else {
            panic!("a leads the next group");
        };
        assert_eq!(changes(&group), [2, 3]);
        // A write that finishes now waits for the bump after that one.
        let mut c = wait(bumps.join(4));
        assert!(poll(&mut c, &a_waker).is_pending());
        assert!(poll(&mut b, &b_waker).is_pending());
        group.finish();
        assert!(woken(&b_flag));
        assert!(matches!(poll(&mut b, &b_waker), Poll::Ready(Waited::Done)));
        let Poll::Ready(Waited::Lead(group)) = poll(&mut c, &a_waker) else {
            panic!("c leads the group after");
        };
        assert_eq!(changes(&group), [4]);
        group.finish();
        assert!(matches!(bumps.join(5), Turn::Lead(_)));
    }

    #[test]
    fn a_leader_that_goes_away_leaves_its_members_to_bump_alone() {
        let bumps = Bumps::default();
        let first = lead(bumps.join(1));
        let mut a = wait(bumps.join(2));
        let mut b = wait(bumps.join(3));
        let (_, waker) = flag();
        drop(first);
        let Poll::Ready(Waited::Lead(group)) = poll(&mut a, &waker) else {
            panic!("a leads");
        };
        // a's group was formed after the first one ended: its bump covers it. Now a goes away
        // before its bump is made: b bumps alone.
        drop(group);
        assert!(matches!(
            poll(&mut b, &waker),
            Poll::Ready(Waited::Orphaned(Some(3)))
        ));
        // And the queue is free again.
        assert!(matches!(bumps.join(4), Turn::Lead(_)));
    }

    #[test]
    fn a_waiting_write_that_goes_away_is_still_covered() {
        let bumps = Bumps::default();
        let first = lead(bumps.join(1));
        let a = wait(bumps.join(2));
        let mut b = wait(bumps.join(3));
        let (_, waker) = flag();
        assert!(poll(&mut b, &waker).is_pending());
        drop(a);
        first.finish();
        let Poll::Ready(Waited::Lead(group)) = poll(&mut b, &waker) else {
            panic!("b leads: a is gone");
        };
        assert_eq!(changes(&group), [2, 3]);
    }

    #[test]
    fn a_chosen_leader_that_goes_away_passes_the_group_on() {
        let bumps = Bumps::default();
        let first = lead(bumps.join(1));
        let a = wait(bumps.join(2));
        let mut b = wait(bumps.join(3));
        let (b_flag, waker) = flag();
        assert!(poll(&mut b, &waker).is_pending());
        first.finish();
        // a was chosen, and goes away before it took the group.
        drop(a);
        assert!(woken(&b_flag));
        let Poll::Ready(Waited::Lead(group)) = poll(&mut b, &waker) else {
            panic!("b leads instead");
        };
        assert_eq!(changes(&group), [2, 3]);
    }

    #[test]
    fn a_chosen_leader_alone_that_goes_away_leaves_its_change_to_the_next_writer() {
        let bumps = Bumps::default();
        let first = lead(bumps.join(1));
        let a = wait(bumps.join(2));
        first.finish();
        drop(a);
        // Nobody left to lead: the queue is free, and the next writer's bump covers 2 too.
        let group = lead(bumps.join(3));
        assert_eq!(changes(&group), [2, 3]);
    }
}
