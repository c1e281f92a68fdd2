//! A lock-free circuit breaker: after enough consecutive failures, calls fail fast for a
//! cool-down, then one probe call decides whether Redis is back.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// The breaker's state, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go to Redis.
    Closed,
    /// Calls fail at once without touching the network, until the cool-down ends.
    Open,
    /// The cool-down is over: one probe call goes to Redis (or is on its way); the others still
    /// fail fast. The probe's success closes the breaker, its failure opens it again.
    HalfOpen,
}

impl BreakerState {
    /// A stable lower-case name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the breaker allows a call to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Go ahead (the breaker is closed).
    Call,
    /// Go ahead as the one probe of a half-open breaker.
    Probe,
    /// Fail fast.
    Reject,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The breaker. Every method is a handful of atomic operations: it sits on the hot path.
///
/// `until` is the end of the current cool-down (or of the current probe's lease), in nanoseconds
/// since `epoch`. A probe re-arms it with compare-and-swap, so exactly one caller wins the probe
/// per cool-down; if that probe is abandoned (its future dropped before it finished), the lease
/// runs out after one more cool-down and the next caller probes instead, so the breaker can never
/// stay half-open for good.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown_nanos: u64,
    epoch: Instant,
    state: AtomicU8,
    until: AtomicU64,
    failures: AtomicU32,
}

impl Breaker {
    /// `threshold` consecutive failures open the breaker (at least 1).
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown_nanos: u64::try_from(cooldown.as_nanos()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            state: AtomicU8::new(CLOSED),
            until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Decides whether a call may go to Redis now.
    pub(crate) fn admit(&self) -> Admission {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Admission::Call;
        }
        let now = self.now();
        let until = self.until.load(Ordering::Acquire);
        if now < until {
            return Admission::Reject;
        }
        let lease = now.saturating_add(self.cooldown_nanos);
        match self
            .until
            .compare_exchange(until, lease, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                self.state.store(HALF_OPEN, Ordering::Release);
                tracing::info!("Redis circuit breaker half-open: probing");
                Admission::Probe
            }
            // Another caller won the probe.
            Err(_) => Admission::Reject,
        }
    }

    /// Redis answered: close the breaker.
    pub(crate) fn on_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Acquire) != CLOSED
            && self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED
        {
            tracing::info!("Redis circuit breaker closed: Redis answers again");
        }
    }

    /// Redis did not answer in time, or the connection failed.
    pub(crate) fn on_failure(&self) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let state = self.state.load(Ordering::Acquire);
        // A failed probe (or any failure while not closed) re-opens at once; a closed breaker
        // opens at the threshold.
        if state != CLOSED || failures >= self.threshold {
            self.until.store(
                self.now().saturating_add(self.cooldown_nanos),
                Ordering::Release,
            );
            if self.state.swap(OPEN, Ordering::AcqRel) != OPEN {
                tracing::warn!(
                    consecutive_failures = failures,
                    "Redis circuit breaker open: cache calls fail fast for the cool-down"
                );
            }
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            HALF_OPEN => BreakerState::HalfOpen,
            _ if self.now() >= self.until.load(Ordering::Acquire) => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_threshold_and_not_before() {
        let b = Breaker::new(3, Duration::from_secs(60));
        b.on_failure();
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admission::Call);
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Reject);
    }

    #[test]
    fn a_success_resets_the_count_of_consecutive_failures() {
        let b = Breaker::new(2, Duration::from_secs(60));
        b.on_failure();
        b.on_success();
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn after_the_cooldown_exactly_one_probe_goes_through() {
        let b = Breaker::new(1, Duration::from_millis(20));
        b.on_failure();
        assert_eq!(b.admit(), Admission::Reject);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Reject);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admission::Call);
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let b = Breaker::new(5, Duration::from_millis(20));
        for _ in 0..5 {
            b.on_failure();
        }
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(), Admission::Probe);
        b.on_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Reject);
    }

    #[test]
    fn an_abandoned_probe_does_not_keep_the_breaker_half_open() {
        let b = Breaker::new(1, Duration::from_millis(20));
        b.on_failure();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(), Admission::Probe);
        // The probe's caller gave up without reporting anything.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(), Admission::Probe);
    }
}
