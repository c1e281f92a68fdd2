//! The resilience suite (issue 6, "Faults"): the real `tasklane` binary under load while its
//! PostgreSQL or Redis is killed, hung, restarted or starved, each test with a private
//! PostgreSQL cluster ([`tasklane_testkit::pg_cluster`]) and `redis-server` of its own, and the
//! project's TCP fault proxy ([`tasklane_testkit::proxy`]) in between where the mode of failure
//! matters. Loopback only; every loop is bounded in time and count.
//!
//! Each test prints its figures and asserts correctness (no failed request, no lost write, no
//! stale read) and the hang bounds (2 s, 5 s, 8 s); latency ratios are printed, not asserted.
//!
//! `scripts/test.sh` (and so CI) runs them after the other suites, one at a time, so that the
//! parallel run of everything else does not skew their timings; `just resilience` runs them
//! alone. See `docs/RELIABILITY.md`.

// A test that cannot set up or whose assumption breaks should fail loudly.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod harness;
mod pg_faults;
mod redis_faults;
mod shutdown;
mod stale_cache;
