//! Leases: serving a local copy without the generation round trip, under the same guarantee.
//!
//! Without a lease, every hit on a local copy first asks Redis for the generation (`GET gen`), so
//! that no copy is served after a write acknowledged by any replica. A lease moves that check
//! to the writers: a replica that holds one is told of every bump before the bump's writer
//! acknowledges its write, and in between serves its copies on what it was told alone.
//!
//! The protocol (docs/ARCHITECTURE.md, "Leases"):
//! - A replica registers in the lease registry (`{prefix}:leases`, a hash of replica id to the
//!   lease's end in Redis's clock) with a script that also reads the generation and publishes it
//!   as a *marker* on the replica's own ack channel. The lease starts when the replica's
//!   subscriber reads the marker: Redis delivers one connection's messages in the order it ran
//!   the commands that published them, so every bump before the registration has been read by
//!   then, and every bump after it will be read after. It ends `9/10` of the lease time after
//!   the script was sent, before Redis's end for it.
//! - Every bump (a script) publishes the new generation on the bump channel and answers which
//!   other replicas hold a lease and for how much longer. Its writer then waits, before it
//!   returns, for each of them to acknowledge (a replica acknowledges a bump after taking in its
//!   generation) or for its lease to end; and for its own subscriber to have read the bump, so
//!   that its own next read knows the new generation.
//! - Anything else that sets the generation (a seed after Redis lost it, a repair of a key that
//!   does not hold a number) publishes a *reset*: every replica drops its lease and takes a new
//!   one. If the registry itself is lost (a flush, an eviction), whoever recreates it marks it
//!   lost for one lease time, and every bump in that time waits it out: the registrations it
//!   held may still be running.
//! - A replica whose subscription breaks drops its lease at once (it may miss bumps until it
//!   subscribes again); one that stops answering is waited for until its lease ends, past the
//!   caller's deadline if need be (a bump that gave up on it would still be acknowledged).
//!
//! So a bump is acknowledged only after every lease that could let a replica serve the older
//! generation has taken in the new one or ended, and a lookup that began after the
//! acknowledgement sees a generation at least as new: the guarantee of the round trip.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tasklane_domain::Generation;
use tokio::sync::Notify;

/// The keys and channels of the protocol, for one key prefix.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The lease registry, a hash.
    pub(crate) registry: String,
    /// Where every bump and reset is published.
    pub(crate) bumps: String,
    /// The prefix of each replica's own channel (acknowledgements and markers).
    ack_prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            registry: format!("{prefix}:leases"),
            bumps: format!("{prefix}:lease-bumps"),
            ack_prefix: format!("{prefix}:lease-acks:"),
        }
    }

    pub(crate) fn acks(&self, replica: &str) -> String {
        format!("{}{replica}", self.ack_prefix)
    }
}

/// A message on the bump channel, as the scripts publish it: `{generation} {writer} {seq}
/// {reset}`, with writer `-` for a reset that no write made.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BumpMessage<'a> {
    pub(crate) generation: Option<Generation>,
    pub(crate) writer: &'a str,
    pub(crate) seq: u64,
    pub(crate) reset: bool,
}

impl<'a> BumpMessage<'a> {
    pub(crate) fn parse(payload: &'a str) -> Option<Self> {
        let mut parts = payload.split(' ');
        let generation = crate::entry::parse_generation(parts.next()?.as_bytes());
        let writer = parts.next()?;
        let seq = parts.next()?.parse().ok()?;
        let reset = parts.next()? == "1";
        Some(Self {
            generation,
            writer,
            seq,
            reset,
        })
    }
}

/// A message on a replica's own channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OwnMessage<'a> {
    /// `A {seq} {holder}`: `holder` took in this replica's bump `seq`.
    Ack { seq: u64, holder: &'a str },
    /// `L {token} {generation}`: the registration `token` ran when the generation was this.
    Marker { token: u64, generation: Generation },
}

impl<'a> OwnMessage<'a> {
    pub(crate) fn parse(payload: &'a str) -> Option<Self> {
        let mut parts = payload.split(' ');
        match parts.next()? {
            "A" => Some(Self::Ack {
                seq: parts.next()?.parse().ok()?,
                holder: parts.next()?,
            }),
            "L" => Some(Self::Marker {
                token: parts.next()?.parse().ok()?,
                generation: crate::entry::parse_generation(parts.next()?.as_bytes())?,
            }),
            _ => None,
        }
    }
}

/// What a bump's script answered about the leases it must wait for.
#[derive(Debug, Default)]
pub(crate) struct Holders {
    /// Other replicas holding a lease, and how long it has left (ms, Redis's clock).
    pub(crate) leases: Vec<(String, u64)>,
    /// How long the registry stays marked lost (ms); 0 when it is not.
    pub(crate) lost_ms: u64,
}

/// A bump named a lease running longer than this process's lease time (see [`Bump::wait`]).
#[derive(Debug)]
pub(crate) struct LeaseTooLong;

/// This process's side of the protocol: its lease, and the bumps waiting for acknowledgements.
#[derive(Debug)]
pub(crate) struct Leases {
    /// This process's replica id: random, so a restarted process is a new replica.
    pub(crate) id: String,
    /// How long a lease lasts in Redis; zero when this process takes none.
    pub(crate) time: Duration,
    pub(crate) names: Names,
    state: Mutex<State>,
    waiters: Mutex<HashMap<u64, Waiter>>,
    next_seq: AtomicU64,
    next_token: AtomicU64,
    hits: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Moves on whenever what this process knows may have a gap: its subscription started or
    /// broke, or a reset came. Anything begun under an older epoch proves nothing.
    epoch: u64,
    subscribed: bool,
    /// The generation after the last bump the subscriber read (exact, in Redis's order).
    known: Option<Generation>,
    /// When the lease ends (this process's clock); none when there is no lease.
    until: Option<Instant>,
    /// A registration sent and not yet confirmed by its marker.
    pending: Option<Pending>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    token: u64,
    sent: Instant,
    epoch: u64,
}

#[derive(Debug)]
struct Waiter {
    acked: HashSet<String>,
    /// Whether this process's lease knows the bump's generation.
    seen: bool,
    /// Whether the bump's answer has been handled ([`Leases::answered`]).
    answered: bool,
    /// The epoch in which the subscriber read the bump, and its generation, if it did before
    /// the answer was handled: the answer's handler then moves the lease on (see
    /// [`Leases::on_bump`]), or the bump's end if the answer never comes (a cancelled call).
    read_in: Option<(u64, Generation)>,
    notify: Arc<Notify>,
}

/// A bump in progress: registered before its script is sent, so that no acknowledgement can
/// arrive before there is somewhere to put it. Unregisters when dropped.
pub(crate) struct Bump<'a> {
    leases: &'a Leases,
    pub(crate) seq: u64,
    epoch: u64,
    subscribed: bool,
    notify: Arc<Notify>,
}

impl Drop for Bump<'_> {
    fn drop(&mut self) {
        let waiter = self.leases.waiters().remove(&self.seq);
        // Read by the subscriber but never answered (the call was cancelled): the lease must
        // still move on, as the subscriber would have moved it.
        if let Some(Waiter {
            answered: false,
            read_in: Some((epoch, generation)),
            ..
        }) = waiter
        {
            let mut state = self.leases.state();
            if state.epoch == epoch {
                state.known = state.known.max(Some(generation));
            }
        }
    }
}

impl Leases {
    pub(crate) fn new(prefix: &str, time: Duration) -> Self {
        Self {
            id: format!("{:016x}", rand::random::<u64>()),
            time,
            names: Names::new(prefix),
            state: Mutex::new(State::default()),
            waiters: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
            next_token: AtomicU64::new(1),
            hits: AtomicU64::new(0),
        }
    }

    // Both locks guard plain data that every holder leaves consistent, so a poisoned one is
    // still usable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<u64, Waiter>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease's generation if this process holds a lease at `now`, and whether it is time to
    /// renew it (past half its time, and no registration in flight).
    pub(crate) fn current(&self, now: Instant) -> Option<(Generation, bool)> {
        let state = self.state();
        let until = state.until.filter(|&u| state.subscribed && u > now)?;
        let known = state.known?;
        let renew = until.saturating_duration_since(now) < self.time / 2
            && state.pending.is_none_or(|p| now >= p.sent + self.time);
        Some((known, renew))
    }

    /// Counts a hit served on the lease alone.
    pub(crate) fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Starts a registration (a lease or its renewal) and returns its token; `None` when this
    /// process takes no leases, is not subscribed, or has one in flight already.
    pub(crate) fn begin(&self, now: Instant) -> Option<u64> {
        if self.time.is_zero() {
            return None;
        }
        let mut state = self.state();
        if !state.subscribed || state.pending.is_some_and(|p| now < p.sent + self.time) {
            return None;
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        state.pending = Some(Pending {
            token,
            sent: now,
            epoch: state.epoch,
        });
        Some(token)
    }

    /// Gives up the registration `token` (its script failed or found no generation).
    pub(crate) fn abandon(&self, token: u64) {
        let mut state = self.state();
        if state.pending.is_some_and(|p| p.token == token) {
            state.pending = None;
        }
    }

    /// The subscriber is subscribed to both channels: nothing before this counts.
    pub(crate) fn subscribed(&self) {
        self.restart(true);
    }

    /// The subscription broke: bumps may go unread, so the lease ends now.
    pub(crate) fn unsubscribed(&self) {
        self.restart(false);
    }

    fn restart(&self, subscribed: bool) {
        {
            let mut state = self.state();
            state.epoch += 1;
            state.subscribed = subscribed;
            state.known = None;
            state.until = None;
            state.pending = None;
        }
        self.wake_all();
    }

    fn wake_all(&self) {
        for waiter in self.waiters().values() {
            waiter.notify.notify_one();
        }
    }

    /// The subscriber read a bump or a reset. Answers whether to acknowledge it to its writer.
    ///
    /// A bump of this process's own, read before its answer was handled, leaves the lease's
    /// generation alone: the answer's handler makes the local copies of the pages it replaced
    /// first, and then moves the lease on ([`Leases::answered`]). Otherwise reads in between
    /// would find the lease ahead of every copy, and each pay a round trip.
    pub(crate) fn on_bump(&self, bump: &BumpMessage<'_>) -> bool {
        let own = bump.writer == self.id;
        if bump.reset || bump.generation.is_none() {
            let mut state = self.state();
            state.epoch += 1;
            state.known = None;
            state.until = None;
            state.pending = None;
        } else {
            let epoch = self.state().epoch;
            if own {
                if let Some(waiter) = self.waiters().get_mut(&bump.seq) {
                    if let (false, Some(generation)) = (waiter.answered, bump.generation) {
                        waiter.read_in = Some((epoch, generation));
                        return false;
                    }
                }
            }
            self.state().known = bump.generation;
        }
        if own {
            if let Some(waiter) = self.waiters().get_mut(&bump.seq) {
                waiter.seen = true;
                waiter.notify.notify_one();
            }
            return false;
        }
        if bump.reset {
            // The epoch moved on: whatever our own bumps wait for is moot.
            self.wake_all();
        }
        bump.writer != "-"
    }

    /// The subscriber read a message on this process's own channel.
    pub(crate) fn on_own(&self, message: &OwnMessage<'_>) {
        match *message {
            OwnMessage::Ack { seq, holder } => {
                if let Some(waiter) = self.waiters().get_mut(&seq) {
                    waiter.acked.insert(holder.to_owned());
                    waiter.notify.notify_one();
                }
            }
            OwnMessage::Marker { token, generation } => {
                let mut state = self.state();
                let Some(pending) = state.pending.filter(|p| p.token == token) else {
                    return;
                };
                state.pending = None;
                if pending.epoch == state.epoch && state.subscribed {
                    state.known = Some(generation);
                    state.until = Some(pending.sent + self.time * 9 / 10);
                }
            }
        }
    }

    /// The answer of this process's bump `seq` has been handled (the local copies of the pages
    /// it replaced are made): it moved the generation to `after` (a reset when `reset`).
    /// Answers whether the lease now knows it, so that the writer need not wait for the
    /// subscriber:
    /// - if the lease's last word was the generation just before it, nothing came between the
    ///   two (only a bump moves a generation on by one), so `after` is exact now;
    /// - if the subscriber has read the bump already (and left it to this call), every message
    ///   before it has been read too, so `after` or anything read since is exact.
    pub(crate) fn answered(&self, seq: u64, after: Option<Generation>, reset: bool) -> bool {
        let read_in = self.waiters().get_mut(&seq).and_then(|w| {
            w.answered = true;
            w.read_in
        });
        let Some(after) = after.filter(|_| !reset) else {
            return false;
        };
        let mut state = self.state();
        if after.0 > 0 && state.known == Some(Generation(after.0 - 1)) {
            state.known = Some(after);
            return true;
        }
        match read_in {
            Some((epoch, _)) if epoch == state.epoch => {
                state.known = state.known.max(Some(after));
                true
            }
            // A gap since (a reset, a new subscription): the lease it would move has ended.
            Some(_) => true,
            None => false,
        }
    }

    /// Registers a bump about to be sent.
    pub(crate) fn bump(&self) -> Bump<'_> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.waiters().insert(
            seq,
            Waiter {
                acked: HashSet::new(),
                seen: false,
                answered: false,
                read_in: None,
                notify: Arc::clone(&notify),
            },
        );
        let state = self.state();
        Bump {
            leases: self,
            seq,
            epoch: state.epoch,
            subscribed: state.subscribed,
            notify,
        }
    }
}

impl Bump<'_> {
    /// Waits, after the bump's script answered at `answered`, until every other holder it named
    /// has acknowledged it or its lease has ended, and the registry's lost mark (if any) has
    /// passed; and, at most until `deadline`, until this process's lease knows it (`seen`, or
    /// its subscriber has read it).
    ///
    /// The caller's deadline does not cut the wait for the other holders short: the write is
    /// acknowledged once this returns, whatever it returns, and a holder that has not taken the
    /// bump in may serve the older generation until its lease ends. No lease (and no lost mark)
    /// runs longer than one lease time after the script ran, so the wait past `deadline` is at
    /// most one lease time, which the settings keep within half of the cache's budget. (This
    /// process's own subscriber being late is no reason to wait past the deadline: its lease is
    /// dropped instead.)
    ///
    /// # Errors
    /// `LeaseTooLong` when the script named a lease (or a lost mark) running longer than this
    /// process's lease time: replicas with different lease times (or none here: then the
    /// deadline is the bound). The wait stops at the bound, and the bump, already made, cannot
    /// be vouched for.
    pub(crate) async fn wait(
        self,
        holders: Holders,
        seen: bool,
        answered: Instant,
        deadline: Instant,
    ) -> Result<(), LeaseTooLong> {
        let leases = self.leases;
        let bound = if leases.time.is_zero() {
            deadline.max(answered)
        } else {
            answered + leases.time
        };
        let mut too_long = false;
        let mut end = |ms: u64| {
            let until = answered + Duration::from_millis(ms);
            too_long |= until > bound;
            until.min(bound)
        };
        let lost_until = end(holders.lost_ms);
        let mut pending: Vec<(String, Instant)> = holders
            .leases
            .into_iter()
            .map(|(id, ms)| (id, end(ms)))
            .collect();
        let outcome = if too_long { Err(LeaseTooLong) } else { Ok(()) };
        let mut wants_seen = !seen && self.subscribed && !leases.time.is_zero();
        loop {
            let now = Instant::now();
            let seen = {
                let waiters = leases.waiters();
                let waiter = waiters.get(&self.seq);
                pending.retain(|(id, until)| {
                    *until > now && !waiter.is_some_and(|w| w.acked.contains(id))
                });
                waiter.is_some_and(|w| w.seen)
            };
            let mut seen = seen || !wants_seen || leases.state().epoch != self.epoch;
            if !seen && now >= deadline {
                // Our own subscriber is behind: our lease cannot vouch for the new generation,
                // so it ends here.
                leases.state().until = None;
                wants_seen = false;
                seen = true;
            }
            if pending.is_empty() && now >= lost_until && seen {
                return outcome;
            }
            // Every time here is still ahead: the pending leases' ends (kept only while ahead),
            // the lost mark's (only while ahead), and the deadline (only while not seen).
            let mut wake = pending.iter().map(|(_, until)| *until).min();
            if now < lost_until {
                wake = Some(wake.map_or(lost_until, |w| w.min(lost_until)));
            }
            if !seen {
                wake = Some(wake.map_or(deadline, |w| w.min(deadline)));
            }
            let Some(wake) = wake else { return outcome };
            let _ = tokio::time::timeout_at(
                tokio::time::Instant::from_std(wake),
                self.notify.notified(),
            )
            .await;
        }
    }
}

/// Parses the bump script's list of holders: id, ms, id, ms, ...
pub(crate) fn parse_holders(flat: &[String], lost_ms: i64) -> Holders {
    Holders {
        leases: flat
            .chunks_exact(2)
            .filter_map(|pair| Some((pair[0].clone(), pair[1].parse().ok()?)))
            .collect(),
        lost_ms: u64::try_from(lost_ms).unwrap_or(0),
    }
}

/// The subscriber: a thread of its own (with a one-thread runtime), so it runs whatever the
/// callers' runtimes do, and stops when the cache is dropped (`stop` is then dropped too).
pub(crate) fn spawn_subscriber(
    leases: Arc<Leases>,
    client: deadpool_redis::redis::Client,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let spawned = std::thread::Builder::new()
        .name("tasklane-redis-leases".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "could not start the lease subscriber; no leases");
                    return;
                }
            };
            runtime.block_on(async move {
                tokio::select! {
                    _ = stop => {}
                    () = subscribe_forever(&leases, &client) => {}
                }
                leases.unsubscribed();
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the lease subscriber thread; no leases");
    }
}

async fn subscribe_forever(leases: &Leases, client: &deadpool_redis::redis::Client) {
    let mut backoff = Duration::from_millis(20);
    loop {
        match subscription(leases, client).await {
            Ok(()) => tracing::debug!("the lease subscription ended; subscribing again"),
            Err(e) => tracing::debug!(error = %e, "the lease subscription failed; retrying"),
        }
        leases.unsubscribed();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// One subscription, until its connection breaks.
async fn subscription(
    leases: &Leases,
    client: &deadpool_redis::redis::Client,
) -> Result<(), deadpool_redis::redis::RedisError> {
    use futures_util::StreamExt;
    let connect = Duration::from_secs(1);
    let timed_out = || {
        deadpool_redis::redis::RedisError::from((
            deadpool_redis::redis::ErrorKind::Io,
            "timed out connecting for the lease subscription",
        ))
    };
    let mut pubsub = tokio::time::timeout(connect, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out())??;
    let own = leases.names.acks(&leases.id);
    tokio::time::timeout(connect, pubsub.subscribe(&[&leases.names.bumps, &own]))
        .await
        .map_err(|_| timed_out())??;
    let mut acks = tokio::time::timeout(connect, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| timed_out())??;
    leases.subscribed();
    let mut messages = pubsub.into_on_message();
    while let Some(msg) = messages.next().await {
        let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
            continue;
        };
        if msg.get_channel_name() == own {
            if let Some(message) = OwnMessage::parse(payload) {
                leases.on_own(&message);
            }
            continue;
        }
        let Some(bump) = BumpMessage::parse(payload) else {
            continue;
        };
        if leases.on_bump(&bump) {
            let mut publish = deadpool_redis::redis::cmd("PUBLISH");
            publish
                .arg(leases.names.acks(bump.writer))
                .arg(format!("A {} {}", bump.seq, leases.id));
            let sent = tokio::time::timeout(
                connect,
                publish.query_async::<deadpool_redis::redis::Value>(&mut acks),
            )
            .await;
            if !matches!(sent, Ok(Ok(_))) {
                // The writer waits until our lease ends instead; drop it so that is soon.
                tracing::debug!("could not acknowledge a bump; ending the subscription");
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bump(generation: u64, writer: &str, seq: u64, reset: bool) -> String {
        format!("{generation} {writer} {seq} {}", u8::from(reset))
    }

    /// Registers and reads the marker at once: a lease on `generation` from `now`.
    fn take_lease(leases: &Leases, now: Instant, generation: u64) {
        let token = leases.begin(now).unwrap();
        leases.on_own(&OwnMessage::Marker {
            token,
            generation: Generation(generation),
        });
    }

    fn leased(time_ms: u64) -> Leases {
        let leases = Leases::new("t", Duration::from_millis(time_ms));
        leases.subscribed();
        leases
    }

    #[test]
    fn messages_parse_and_garbage_does_not() {
        assert_eq!(
            BumpMessage::parse("42 abc 7 0"),
            Some(BumpMessage {
                generation: Some(Generation(42)),
                writer: "abc",
                seq: 7,
                reset: false
            })
        );
        assert_eq!(BumpMessage::parse("42 abc"), None);
        assert_eq!(
            OwnMessage::parse("A 9 def"),
            Some(OwnMessage::Ack {
                seq: 9,
                holder: "def"
            })
        );
        assert_eq!(
            OwnMessage::parse("L 3 17"),
            Some(OwnMessage::Marker {
                token: 3,
                generation: Generation(17)
            })
        );
        assert_eq!(OwnMessage::parse("L 3 x"), None);
        assert_eq!(OwnMessage::parse("Z"), None);
    }

    #[test]
    fn a_lease_starts_at_its_marker_and_follows_bumps() {
        let leases = leased(1000);
        let now = Instant::now();
        assert_eq!(leases.current(now), None);
        let token = leases.begin(now).unwrap();
        // One registration at a time.
        assert_eq!(leases.begin(now), None);
        assert_eq!(leases.current(now), None);
        leases.on_own(&OwnMessage::Marker {
            token,
            generation: Generation(5),
        });
        assert_eq!(leases.current(now), Some((Generation(5), false)));
        let other = bump(6, "someone", 1, false);
        assert!(leases.on_bump(&BumpMessage::parse(&other).unwrap()));
        assert_eq!(leases.current(now), Some((Generation(6), false)));
        // Renewal is due past half the lease, and the lease is gone at 9/10 of it.
        let late = now + Duration::from_millis(600);
        assert_eq!(leases.current(late), Some((Generation(6), true)));
        assert_eq!(leases.current(now + Duration::from_millis(900)), None);
    }

    #[test]
    fn a_marker_from_before_a_gap_starts_no_lease() {
        let leases = leased(1000);
        let now = Instant::now();
        let token = leases.begin(now).unwrap();
        leases.unsubscribed();
        leases.subscribed();
        leases.on_own(&OwnMessage::Marker {
            token,
            generation: Generation(5),
        });
        assert_eq!(leases.current(now), None);
        // A reset ends a lease too.
        take_lease(&leases, now, 5);
        assert!(leases.current(now).is_some());
        let reset = bump(123, "-", 0, true);
        assert!(!leases.on_bump(&BumpMessage::parse(&reset).unwrap()));
        assert_eq!(leases.current(now), None);
    }

    #[test]
    fn an_own_bump_right_after_the_known_generation_is_known_at_once() {
        let leases = leased(1000);
        let now = Instant::now();
        take_lease(&leases, now, 5);
        let first = leases.bump();
        assert!(leases.answered(first.seq, Some(Generation(6)), false));
        assert_eq!(leases.current(now), Some((Generation(6), false)));
        // Another bump came between (its message not read yet): wait for the subscriber.
        let second = leases.bump();
        assert!(!leases.answered(second.seq, Some(Generation(8)), false));
        assert_eq!(leases.current(now), Some((Generation(6), false)));
        // A reset is never known this way.
        let third = leases.bump();
        assert!(!leases.answered(third.seq, Some(Generation(7)), true));
        assert_eq!(leases.current(now), Some((Generation(6), false)));
    }

    #[test]
    fn an_own_bump_read_before_its_answer_moves_the_lease_only_with_the_answer() {
        let leases = leased(1000);
        let now = Instant::now();
        take_lease(&leases, now, 5);
        // Someone else's bump to 6 is not read yet; ours makes 7 and is read at once.
        let ours = leases.bump();
        let message = format!("7 {} {} 0", leases.id, ours.seq);
        assert!(!leases.on_bump(&BumpMessage::parse(&message).unwrap()));
        assert_eq!(leases.current(now), Some((Generation(5), false)));
        // The answer (its copies made) moves the lease on.
        assert!(leases.answered(ours.seq, Some(Generation(7)), false));
        assert_eq!(leases.current(now), Some((Generation(7), false)));
        // Read after its answer: the subscriber moves the lease itself.
        let later = leases.bump();
        assert!(!leases.answered(later.seq, Some(Generation(9)), false));
        let other = bump(8, "someone", 1, false);
        assert!(leases.on_bump(&BumpMessage::parse(&other).unwrap()));
        let message = format!("9 {} {} 0", leases.id, later.seq);
        leases.on_bump(&BumpMessage::parse(&message).unwrap());
        assert_eq!(leases.current(now), Some((Generation(9), false)));
        // Read, and its call cancelled before the answer: the lease moves on all the same.
        let cancelled = leases.bump();
        let message = format!("10 {} {} 0", leases.id, cancelled.seq);
        leases.on_bump(&BumpMessage::parse(&message).unwrap());
        assert_eq!(leases.current(now), Some((Generation(9), false)));
        drop(cancelled);
        assert_eq!(leases.current(now), Some((Generation(10), false)));
    }

    #[test]
    fn no_lease_without_a_subscription_or_with_a_zero_lease_time() {
        let leases = Leases::new("t", Duration::from_millis(1000));
        assert_eq!(leases.begin(Instant::now()), None);
        let off = leased(0);
        assert_eq!(off.begin(Instant::now()), None);
    }

    #[tokio::test]
    async fn a_bump_waits_for_every_holder_and_its_own_subscriber() {
        let leases = Arc::new(leased(1000));
        let bump_ = leases.bump();
        let seq = bump_.seq;
        let answered = Instant::now();
        let deadline = answered + Duration::from_secs(5);
        let holders = parse_holders(&["r1".to_owned(), "900".to_owned()], 0);
        let other = Arc::clone(&leases);
        let acker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            other.on_own(&OwnMessage::Ack { seq, holder: "r1" });
            tokio::time::sleep(Duration::from_millis(20)).await;
            let own = format!("7 {} {seq} 0", other.id);
            other.on_bump(&BumpMessage::parse(&own).unwrap());
        });
        // The answer is handled before the subscriber reads the bump: the writer waits for it.
        assert!(!leases.answered(seq, Some(Generation(7)), false));
        bump_
            .wait(holders, false, answered, deadline)
            .await
            .unwrap();
        assert!(answered.elapsed() >= Duration::from_millis(40));
        // Returned because the subscriber read it (not at the deadline, which drops the lease).
        assert_eq!(leases.state().known, Some(Generation(7)));
        acker.await.unwrap();
        assert!(leases.waiters().is_empty());
    }

    #[tokio::test]
    async fn a_silent_holder_is_waited_for_until_its_lease_ends_even_past_the_deadline() {
        let leases = leased(100);
        let answered = Instant::now();
        let holders = parse_holders(&["r1".to_owned(), "30".to_owned()], 0);
        leases
            .bump()
            .wait(holders, true, answered, answered + Duration::from_secs(5))
            .await
            .unwrap();
        assert!(answered.elapsed() >= Duration::from_millis(30));
        // The deadline comes first: the write is acknowledged when the wait returns, so it
        // returns when the lease has ended, not at the deadline.
        let answered = Instant::now();
        let holders = parse_holders(&["r1".to_owned(), "60".to_owned()], 0);
        leases
            .bump()
            .wait(
                holders,
                true,
                answered,
                answered + Duration::from_millis(10),
            )
            .await
            .unwrap();
        assert!(answered.elapsed() >= Duration::from_millis(60));
        // A lease longer than ours (another setting): waited for one lease time of ours, then
        // the bump cannot be vouched for.
        let answered = Instant::now();
        let holders = parse_holders(&["r1".to_owned(), "5000".to_owned()], 0);
        assert!(leases
            .bump()
            .wait(
                holders,
                true,
                answered,
                answered + Duration::from_millis(10)
            )
            .await
            .is_err());
        let waited = answered.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(2));
        // A process that takes no leases has no lease time to go by: the deadline bounds it.
        let none = leased(0);
        let answered = Instant::now();
        let holders = parse_holders(&["r1".to_owned(), "5000".to_owned()], 0);
        assert!(none
            .bump()
            .wait(
                holders,
                false,
                answered,
                answered + Duration::from_millis(10)
            )
            .await
            .is_err());
        assert!(answered.elapsed() < Duration::from_secs(2));
        // A lost registry is waited out the same way.
        let answered = Instant::now();
        leases
            .bump()
            .wait(
                parse_holders(&[], 25),
                true,
                answered,
                answered + Duration::from_millis(5),
            )
            .await
            .unwrap();
        assert!(answered.elapsed() >= Duration::from_millis(25));
    }

    #[tokio::test]
    async fn a_late_own_subscriber_ends_the_lease_at_the_deadline() {
        let leases = leased(1000);
        take_lease(&leases, Instant::now(), 6);
        let answered = Instant::now();
        leases
            .bump()
            .wait(
                Holders::default(),
                false,
                answered,
                answered + Duration::from_millis(20),
            )
            .await
            .unwrap();
        assert!(answered.elapsed() >= Duration::from_millis(20));
        assert!(leases.current(Instant::now()).is_none());
    }
}
