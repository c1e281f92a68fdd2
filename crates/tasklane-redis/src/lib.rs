//! The [`TaskCache`] port on Redis: a generation-checked cache of list pages and task versions.
//!
//! Keys, for a prefix `p`:
//! - `p:gen`: the generation, a decimal integer. Not versioned, so every release bumps and
//!   checks the same one.
//! - `p:v{SCHEMA}:{key}`: an entry, the 8-byte big-endian generation it was computed under
//!   followed by the caller's opaque bytes, with a TTL. The domain's keys name what they hold:
//!   `list:...` a rendered list page, `task:{id}:version` a task's version.
//!
//! - `p:leases`, `p:lease-bumps`, `p:lease-acks:{replica}`: the lease registry and channels (see
//!   `lease.rs`).
//!
//! A lookup is one round trip (`MGET gen entry`) and hits only when the entry's generation is
//! the current one, so a value computed before a write can never be served after that write's
//! bump. Every bump is one Lua script (`BUMP`); one that writes an update through
//! ([`TaskCache::bump_generation_replacing`]) stores the entries it replaces in the same script,
//! so that no lookup sees the new generation without them. An entry this process has already
//! read or written is kept as a local copy (see `local.rs`), and then the round trip is a `GET
//! gen` alone: the same check, without the page; or none at all while the process holds a lease
//! on the generation (see `lease.rs`), which every bump's writer waits on before it returns.
//! Every call gives up at its deadline (a bump's wait for lease holders may run up to one lease
//! time past it); a circuit breaker stops calling a Redis that keeps failing and probes it again
//! after a cool-down, except for a write's bump, which is always sent: one not made would leave
//! other replicas serving what it invalidates.

mod breaker;
mod connection;
mod entry;
mod lease;
mod local;

pub use breaker::BreakerState;
pub use entry::SCHEMA;

use async_trait::async_trait;
use breaker::{Admission, Breaker};
use bytes::Bytes;
use connection::SharedConnection;
use deadpool_redis::redis::{self, ErrorKind, FromRedisValue, RedisError, RetryMethod, Value};
use deadpool_redis::{BuildError, Manager, Pool, PoolError};
use entry::Keys;
use lease::Leases;
use local::LocalCopies;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tasklane_domain::{CacheError, CacheLookup, Generation, Replacement, TaskCache};

/// How to reach Redis and how to use it.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user][:password@]host[:port][/db]`. May hold a password: never logged.
    pub url: String,
    /// Every key starts with `{key_prefix}:`, e.g. `tasklane`.
    pub key_prefix: String,
    /// How long entries live at most: each is stored for between nine tenths of this and all of
    /// it, drawn at random, so that entries stored together do not all expire together.
    pub ttl: Duration,
    /// The size of the deadpool pool the connections come from. The cache holds one
    /// multiplexed connection per thread that uses it (one per actix worker), each taken out of
    /// that pool for good, and makes at most one new connection at a time.
    pub pool_size: usize,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker fails calls fast before it lets one probe through.
    pub breaker_cooldown: Duration,
    /// The bytes of local copies of entries this process keeps (0: none); see `local.rs`.
    pub local_copy_bytes: usize,
    /// How long a lease lasts (zero: this process takes none, and checks the generation in
    /// Redis on every hit); see `lease.rs`. A bump may wait this long for a replica that stopped
    /// answering, past the caller's deadline if need be, so it must be well within the callers'
    /// deadlines. Every replica must use the same value.
    pub lease_time: Duration,
}

/// The default budget for local copies: 8 MiB.
pub const DEFAULT_LOCAL_COPY_BYTES: usize = 8 << 20;

/// The default lease time: 50 ms.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_millis(50);

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "tasklane".to_owned(),
            ttl: Duration::from_secs(60),
            pool_size: 4,
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(1),
            local_copy_bytes: DEFAULT_LOCAL_COPY_BYTES,
            lease_time: DEFAULT_LEASE_TIME,
        }
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("ttl", &self.ttl)
            .field("pool_size", &self.pool_size)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("local_copy_bytes", &self.local_copy_bytes)
            .field("lease_time", &self.lease_time)
            .finish()
    }
}

/// Why the cache could not be set up. No variant's text contains the URL (it may hold a
/// password).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The URL does not parse as a Redis URL.
    #[error("the Redis URL is malformed")]
    InvalidUrl(#[source] RedisError),
    /// A setting is out of range.
    #[error("invalid Redis cache setting: {0}")]
    InvalidSetting(&'static str),
    /// The connection pool could not be built.
    #[error("could not build the Redis connection pool")]
    Pool(#[source] BuildError),
}

/// The cause inside a [`CacheError`] from this adapter (reach it with `source()` and
/// `downcast_ref`).
#[derive(Debug, thiserror::Error)]
pub enum RedisCacheError {
    /// The deadline had passed before the call began; Redis was not asked.
    #[error("no time was left for the Redis call")]
    NoTimeLeft,
    /// Redis did not answer before the deadline.
    #[error("Redis did not answer before the deadline")]
    Timeout,
    /// The circuit breaker is open; Redis was not asked.
    #[error("the Redis circuit breaker is open")]
    BreakerOpen,
    /// No connection could be made.
    #[error("could not connect to Redis")]
    Connect(#[source] PoolError),
    /// Redis or the connection to it failed the command.
    #[error("the Redis command failed")]
    Command(#[source] RedisError),
    /// A bump was made, but named a replica's lease running longer than this replica's lease
    /// time (replicas with different lease times), so it may be served on past the wait; see
    /// `lease.rs`.
    #[error("a replica's lease runs longer than this replica's lease time")]
    LeaseTooLong,
}

impl RedisCacheError {
    /// Whether this says Redis is unreachable or unwell, as opposed to a bug or a reply that
    /// makes no sense. Only these count as breaker failures.
    fn is_unavailable(&self) -> bool {
        match self {
            Self::NoTimeLeft | Self::Timeout | Self::BreakerOpen | Self::Connect(_) => true,
            // A setting that differs between replicas, not Redis being unwell.
            Self::LeaseTooLong => false,
            Self::Command(e) => {
                connection_broken(e) || matches!(e.retry_method(), RetryMethod::WaitAndRetry)
            }
        }
    }
}

impl From<RedisCacheError> for CacheError {
    fn from(e: RedisCacheError) -> Self {
        if e.is_unavailable() {
            CacheError::Unavailable(Box::new(e))
        } else {
            CacheError::Unexpected(Box::new(e))
        }
    }
}

/// Whether the connection that returned `e` should be replaced.
fn connection_broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        // A replica after a failover: a new connection may reach the new primary.
        || e.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// The reply to `MGET gen entry`.
type MgetReply = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Whether an open breaker fails a call fast.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Lookups, stores and the rest: an open breaker fails them at once.
    ThroughBreaker,
    /// A write's bump: sent whatever the breaker says (its outcome still counts).
    Always,
}

/// A command or a pipeline, to run on a connection.
#[derive(Clone, Copy)]
enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    /// A command sent on the process's ordered connection: it reaches Redis after every
    /// `Ordered` request sent before it, from any thread.
    Ordered(&'a redis::Cmd),
}

impl Request<'_> {
    async fn run<T: FromRedisValue>(
        self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> Result<T, RedisError> {
        match self {
            Request::Cmd(cmd) | Request::Ordered(cmd) => cmd.query_async(conn).await,
            Request::Pipe(pipe) => pipe.query_async(conn).await,
        }
    }
}

/// Every bump, with or without replacements: atomic because Redis runs a script alone.
///
/// `KEYS[1]` is the generation, `KEYS[2]` the lease registry, `KEYS[3..]` the entries to
/// replace. `ARGV[1]` is a random generation, `ARGV[2]` this replica's id, `ARGV[3]` the bump's
/// sequence number, `ARGV[4]` the lease time (ms), `ARGV[5]` the bump channel; then, for the
/// entry in `KEYS[k]`, `ARGV[3k-3]` is the generation expected before the bump (decimal),
/// `ARGV[3k-2]` the entry it must hold (tag and payload) and `ARGV[3k-1]` the entry to store
/// instead, tagged with the next generation.
///
/// A missing generation is first seeded at random (`INCR` of a missing key would start at 1,
/// which entries of an earlier life of the key may carry), and one that `INCR` would refuse
/// (not a decimal integer, or near the end of the range) is replaced at random: both are
/// resets, which every replica's lease ends on. Generations are compared as the strings Redis
/// holds: they reach 2^62, beyond what a Lua number holds exactly. The new generation is
/// published (see [`lease`]) with the other lease holders and how long their leases have left.
///
/// A registry that is missing (or not a hash) is recreated, marked lost for a lease time.
///
/// Answers `{generation after, ttls, reset, lost ms, holders}`: per entry, the replaced entry's
/// remaining TTL in ms (as `PTTL` answers) or -3 when it was not replaced; reset 1 or 0; how
/// long the registry stays marked lost; and `id, ms, id, ms, ...` of the other holders.
const BUMP: &str = r"
local reset = 0
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then reset = 1 end
local before = redis.call('GET', KEYS[1])
local held = {}
for k = 3, #KEYS do
  held[k] = before == ARGV[3 * k - 3] and redis.call('GET', KEYS[k]) == ARGV[3 * k - 2]
end
if not string.match(before, '^%d+$') or #before > 19
    or (#before == 19 and before >= '9000000000000000000') then
  redis.call('SET', KEYS[1], ARGV[1])
  reset = 1
end
redis.call('INCR', KEYS[1])
local after = redis.call('GET', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = 0
local holders = {}
if redis.call('TYPE', KEYS[2]).ok ~= 'hash' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], '_lost_until', string.format('%d', now + tonumber(ARGV[4])))
  lost = tonumber(ARGV[4])
else
  local fields = redis.call('HGETALL', KEYS[2])
  for i = 1, #fields, 2 do
    local ends = tonumber(fields[i + 1]) or 0
    if fields[i] == '_lost_until' then
      if ends > now then lost = ends - now end
    elseif ends <= now then
      redis.call('HDEL', KEYS[2], fields[i])
    elseif fields[i] ~= ARGV[2] then
      holders[#holders + 1] = fields[i]
      holders[#holders + 1] = string.format('%d', ends - now)
    end
  end
end
redis.call('PUBLISH', ARGV[5], after .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. reset)
local ttls = {}
for k = 3, #KEYS do
  if held[k] then
    redis.call('SET', KEYS[k], ARGV[3 * k - 1], 'KEEPTTL')
    ttls[k - 2] = redis.call('PTTL', KEYS[k])
  else
    ttls[k - 2] = -3
  end
end
return {after, ttls, reset, lost, holders}
";

/// A lease's registration (see [`lease`]). `KEYS[1]` is the generation, `KEYS[2]` the
/// registry; `ARGV[1]` the replica's id, `ARGV[2]` the lease time (ms), `ARGV[3]` the replica's
/// own channel, `ARGV[4]` the registration's token. Registers the lease until now plus the
/// lease time (Redis's clock), marking a registry that had to be recreated as lost for as long,
/// and publishes the marker. Answers the generation (nil when there is none: then no marker).
const LEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = string.format('%d', now + tonumber(ARGV[2]))
if redis.call('TYPE', KEYS[2]).ok ~= 'hash' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], '_lost_until', ends)
end
redis.call('HSET', KEYS[2], ARGV[1], ends)
local g = redis.call('GET', KEYS[1])
if g then redis.call('PUBLISH', ARGV[3], 'L ' .. ARGV[4] .. ' ' .. g) end
return g
";

/// Sets the generation to `ARGV[1]` (only if there is none when `ARGV[2]` is `nx`) and, if it
/// did, publishes a reset on the bump channel `ARGV[3]`. Answers 1 if it set it.
const SEED: &str = r"
local set
if ARGV[2] == 'nx' then
  set = redis.call('SET', KEYS[1], ARGV[1], 'NX')
else
  set = redis.call('SET', KEYS[1], ARGV[1])
end
if set then
  redis.call('PUBLISH', ARGV[3], ARGV[1] .. ' - 0 1')
  return 1
end
return 0
";

/// A Lua script and its SHA1 once Redis has told it (`SCRIPT LOAD`).
struct Script {
    source: &'static str,
    sha: Mutex<Option<String>>,
}

impl Script {
    const fn new(source: &'static str) -> Self {
        Self {
            source,
            sha: Mutex::new(None),
        }
    }

    fn sha(&self) -> Option<String> {
        self.sha
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_sha(&self, sha: String) {
        *self.sha.lock().unwrap_or_else(PoisonError::into_inner) = Some(sha);
    }
}

/// The subscriber, started by the first call that needs it (so that `new` connects nowhere);
/// dropping the sender stops it.
type Subscriber = tokio::sync::oneshot::Sender<()>;

/// The [`TaskCache`] on Redis. Cheap to share behind an `Arc`; makes no connection until used.
pub struct RedisTaskCache {
    conn: SharedConnection,
    breaker: Breaker,
    keys: Keys,
    ttl_millis: u64,
    local: LocalCopies,
    leases: Arc<Leases>,
    /// For the lease subscriber's own connections.
    client: redis::Client,
    subscriber: OnceLock<Subscriber>,
    bump_script: Script,
    lease_script: Script,
    seed_script: Script,
}

impl std::fmt::Debug for RedisTaskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTaskCache")
            .field("generation_key", &self.keys.generation())
            .field("ttl_millis", &self.ttl_millis)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

impl RedisTaskCache {
    /// Checks the settings and builds the pool. Makes no connection: the first call does.
    ///
    /// # Errors
    /// `InvalidUrl` when the URL does not parse, `InvalidSetting` when a number is out of range.
    pub fn new(s: RedisSettings) -> Result<Self, SetupError> {
        if s.key_prefix.is_empty() {
            return Err(SetupError::InvalidSetting("key_prefix must not be empty"));
        }
        if s.ttl < Duration::from_millis(1) {
            return Err(SetupError::InvalidSetting("ttl must be at least 1 ms"));
        }
        if s.pool_size == 0 {
            return Err(SetupError::InvalidSetting("pool_size must be at least 1"));
        }
        if s.breaker_threshold == 0 {
            return Err(SetupError::InvalidSetting(
                "breaker_threshold must be at least 1",
            ));
        }
        let manager = Manager::new(s.url.as_str()).map_err(SetupError::InvalidUrl)?;
        let client = redis::Client::open(s.url.as_str()).map_err(SetupError::InvalidUrl)?;
        let pool = Pool::builder(manager)
            .max_size(s.pool_size)
            .build()
            .map_err(SetupError::Pool)?;
        Ok(Self {
            conn: SharedConnection::new(pool),
            breaker: Breaker::new(s.breaker_threshold, s.breaker_cooldown),
            keys: Keys::new(&s.key_prefix),
            ttl_millis: u64::try_from(s.ttl.as_millis()).unwrap_or(u64::MAX),
            local: LocalCopies::new(s.local_copy_bytes),
            leases: Arc::new(Leases::new(&s.key_prefix, s.lease_time)),
            client,
            subscriber: OnceLock::new(),
            bump_script: Script::new(BUMP),
            lease_script: Script::new(LEASE),
            seed_script: Script::new(SEED),
        })
    }

    /// How many lookups were served on a lease alone, without a round trip to Redis.
    pub fn lease_hits(&self) -> u64 {
        self.leases.hits()
    }

    /// Starts the lease subscriber if it is not running. Every bump needs it (to hear the other
    /// replicas acknowledge), and every lease.
    fn ensure_subscriber(&self) {
        self.subscriber.get_or_init(|| {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            lease::spawn_subscriber(Arc::clone(&self.leases), self.client.clone(), stopped);
            stop
        });
    }

    /// The circuit breaker's state now, for metrics.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Runs one request through the breaker, within the deadline, on the shared connection.
    async fn call<T: FromRedisValue>(
        &self,
        req: Request<'_>,
        deadline: Instant,
    ) -> Result<T, RedisCacheError> {
        self.call_admitted(req, Admit::ThroughBreaker, deadline)
            .await
    }

    /// [`Self::call`], with `admit` saying whether an open breaker fails it fast.
    async fn call_admitted<T: FromRedisValue>(
        &self,
        req: Request<'_>,
        admit: Admit,
        deadline: Instant,
    ) -> Result<T, RedisCacheError> {
        let deadline = tokio::time::Instant::from_std(deadline);
        if deadline <= tokio::time::Instant::now() {
            // The caller's budget is spent: not Redis's fault, so not a breaker failure.
            return Err(RedisCacheError::NoTimeLeft);
        }
        if admit == Admit::ThroughBreaker && self.breaker.admit() == Admission::Reject {
            return Err(RedisCacheError::BreakerOpen);
        }
        let mut used = None;
        let outcome = tokio::time::timeout_at(deadline, self.attempt(req, &mut used)).await;
        let result = match outcome {
            Ok(result) => result,
            Err(_elapsed) => {
                // A hung Redis (or a blackholed socket) would keep this connection's pipe
                // stuck; make a new one next time.
                if let Some(id) = used {
                    self.conn.discard(id);
                }
                Err(RedisCacheError::Timeout)
            }
        };
        match &result {
            Err(e) if e.is_unavailable() => self.breaker.on_failure(),
            // Redis answered, even if with an error.
            _ => self.breaker.on_success(),
        }
        result
    }

    /// The connection `req` goes on: this thread's, or the process's ordered one.
    async fn lease(&self, req: Request<'_>) -> Result<connection::Lease, RedisCacheError> {
        match req {
            Request::Ordered(_) => self.conn.get_ordered().await,
            Request::Cmd(_) | Request::Pipe(_) => self.conn.get().await,
        }
        .map_err(RedisCacheError::Connect)
    }

    /// Sends the request on the shared connection. If that connection turns out to have died
    /// since its last use (Redis restarted, say), it is replaced and the request sent once more:
    /// every request here may safely be repeated (a repeated bump only moves the generation on
    /// further).
    async fn attempt<T: FromRedisValue>(
        &self,
        req: Request<'_>,
        used: &mut Option<u64>,
    ) -> Result<T, RedisCacheError> {
        let mut lease = self.lease(req).await?;
        loop {
            *used = Some(lease.id);
            match req.run(&mut lease.conn).await {
                Ok(v) => return Ok(v),
                Err(e) if connection_broken(&e) => {
                    self.conn.discard(lease.id);
                    if lease.fresh {
                        return Err(RedisCacheError::Command(e));
                    }
                    tracing::debug!(error = %e, "the shared Redis connection broke; reconnecting");
                    lease = self.lease(req).await?;
                    // Whatever happens on this one is the answer.
                    lease.fresh = true;
                }
                Err(e) => return Err(RedisCacheError::Command(e)),
            }
        }
    }

    /// Runs `script` with the keys and arguments `args` adds (their count first): as `EVALSHA`
    /// once Redis has told its SHA1 (`SCRIPT LOAD` first otherwise), and as `EVAL` when Redis
    /// no longer has it (restarted, or its scripts flushed). `ordered` sends it on the ordered
    /// connection; `admit` says whether an open breaker fails it fast.
    async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        ordered: bool,
        admit: Admit,
        args: impl Fn(&mut redis::Cmd),
        deadline: Instant,
    ) -> Result<T, RedisCacheError> {
        let sha = match script.sha() {
            Some(sha) => sha,
            None => {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(script.source);
                let sha: String = self
                    .call_admitted(Request::Cmd(&load), admit, deadline)
                    .await?;
                script.set_sha(sha.clone());
                sha
            }
        };
        let build = |verb: &str, body: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(body);
            args(&mut cmd);
            cmd
        };
        let send = |cmd| {
            if ordered {
                Request::Ordered(cmd)
            } else {
                Request::Cmd(cmd)
            }
        };
        let cmd = build("EVALSHA", &sha);
        let reply = self.call_admitted(send(&cmd), admit, deadline).await;
        if matches!(&reply, Err(RedisCacheError::Command(e))
            if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            let cmd = build("EVAL", script.source);
            return self.call_admitted(send(&cmd), admit, deadline).await;
        }
        reply
    }

    /// Sets the generation to a random value: only when there is none (`only_if_missing`), or
    /// unconditionally to replace one that is not a number. Either way no entry in Redis can
    /// look current afterwards, and every replica's lease ends (a reset: see [`lease`]).
    async fn seed_generation(
        &self,
        only_if_missing: bool,
        deadline: Instant,
    ) -> Result<(), RedisCacheError> {
        if !only_if_missing {
            // Every copy's generation is now stale.
            self.local.clear(None);
        }
        let generation = entry::random_generation();
        let mode = if only_if_missing { "nx" } else { "always" };
        self.eval::<i64>(
            &self.seed_script,
            false,
            Admit::ThroughBreaker,
            |cmd| {
                cmd.arg(1)
                    .arg(self.keys.generation())
                    .arg(generation)
                    .arg(mode)
                    .arg(&self.leases.names.bumps);
            },
            deadline,
        )
        .await?;
        Ok(())
    }

    /// What this process holds of `key`; a hit on a lease is counted.
    fn held(&self, key: &str, now: Instant) -> Held {
        let Some((copied_under, payload)) = self.local.get(key, now) else {
            return Held::Unvouched(None);
        };
        match self.leases.current(now) {
            Some((leased, false)) if leased == copied_under => {
                self.leases.hit();
                Held::Leased(payload)
            }
            _ => Held::Unvouched(Some((copied_under, payload))),
        }
    }

    /// A lookup that asks Redis: the generation for a local copy no lease vouches for, or the
    /// entry itself.
    #[tracing::instrument(
        level = "debug",
        name = "redis.lookup",
        skip(self, copy, sent, deadline)
    )]
    async fn lookup_in_redis(
        &self,
        key: &str,
        copy: Option<(Generation, Bytes)>,
        sent: Instant,
        deadline: Instant,
    ) -> Result<CacheLookup, RedisCacheError> {
        if let Some((copied_under, payload)) = copy {
            // The generation from Redis; taking (or renewing) a lease on the way if this
            // process can and no other lookup is doing so already.
            self.ensure_subscriber();
            let generation: Option<Vec<u8>> = if let Some(token) = self.leases.begin(sent) {
                let reply = self
                    .eval(
                        &self.lease_script,
                        false,
                        Admit::ThroughBreaker,
                        |cmd| {
                            cmd.arg(2)
                                .arg(self.keys.generation())
                                .arg(&self.leases.names.registry)
                                .arg(&self.leases.id)
                                .arg(
                                    u64::try_from(self.leases.time.as_millis()).unwrap_or(u64::MAX),
                                )
                                .arg(self.leases.names.acks(&self.leases.id))
                                .arg(token);
                        },
                        deadline,
                    )
                    .await;
                if !matches!(reply, Ok(Some(_))) {
                    self.leases.abandon(token);
                }
                reply?
            } else {
                let mut cmd = redis::cmd("GET");
                cmd.arg(self.keys.generation());
                self.call(Request::Cmd(&cmd), deadline).await?
            };
            let current = generation.as_deref().and_then(entry::parse_generation);
            if current == Some(copied_under) {
                return Ok(CacheLookup::Hit(payload));
            }
            if let Some(current) = current {
                self.local.saw(current);
            }
            // Stale: a write moved the generation on. Redis may hold a newer entry (another
            // replica's); ask for it the usual way.
            self.local.remove(key);
        }
        let entry_key = self.keys.entry(key);
        let ((generation, raw_entry), ttl_millis): (MgetReply, i64) = if self.local.enabled() {
            // With the entry's remaining TTL, so that a copy outlives it by no time.
            let mut pipe = redis::pipe();
            pipe.cmd("MGET")
                .arg(self.keys.generation())
                .arg(&entry_key)
                .cmd("PTTL")
                .arg(&entry_key);
            self.call(Request::Pipe(&pipe), deadline).await?
        } else {
            let mut cmd = redis::cmd("MGET");
            cmd.arg(self.keys.generation()).arg(&entry_key);
            (self.call(Request::Cmd(&cmd), deadline).await?, -2)
        };
        let Some(generation) = generation else {
            // A fresh or flushed Redis. Starting from a random generation, not 1, means entries
            // that outlived the old generation key cannot look current.
            self.seed_generation(true, deadline).await?;
            return Ok(CacheLookup::Miss(None));
        };
        let Some(current) = entry::parse_generation(&generation) else {
            tracing::warn!("the cache generation key does not hold a number; replacing it");
            self.seed_generation(false, deadline).await?;
            return Ok(CacheLookup::Miss(None));
        };
        self.local.saw(current);
        Ok(match raw_entry.and_then(entry::decode) {
            Some((stored_under, payload)) if stored_under == current => {
                if let Ok(ttl @ 1..) = u64::try_from(ttl_millis) {
                    let expires = sent + Duration::from_millis(ttl);
                    self.local.put(key, current, payload.clone(), expires);
                }
                CacheLookup::Hit(payload)
            }
            // Absent, too short, or from another generation: all the same to the caller.
            _ => CacheLookup::Miss(Some(current)),
        })
    }

    #[tracing::instrument(
        level = "debug",
        name = "redis.store",
        skip(self, value, deadline),
        fields(bytes = value.len())
    )]
    async fn store_inner(
        &self,
        key: &str,
        generation: Generation,
        value: &Bytes,
        deadline: Instant,
    ) -> Result<(), RedisCacheError> {
        // No check of the generation here: an entry stored under an old one is never served.
        let sent = Instant::now();
        let ttl_millis = entry::ttl_millis(self.ttl_millis);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.entry(key))
            .arg(entry::encode(generation, value))
            .arg("PX")
            .arg(ttl_millis);
        self.call::<Value>(Request::Cmd(&cmd), deadline).await?;
        // Redis started the entry's TTL after `sent`: the copy expires no later.
        if let Some(expires) = sent.checked_add(Duration::from_millis(ttl_millis)) {
            self.local.put(key, generation, value.clone(), expires);
        }
        Ok(())
    }

    /// A bump (see [`BUMP`]) replacing `replacements` (none for a plain bump), which returns
    /// once every replica's lease has taken in the new generation or ended (see [`lease`]).
    #[tracing::instrument(
        level = "debug",
        name = "redis.bump_generation",
        skip_all,
        fields(entries = replacements.len())
    )]
    async fn bump_inner(
        &self,
        replacements: &[Replacement],
        admit: Admit,
        deadline: Instant,
    ) -> Result<Vec<bool>, RedisCacheError> {
        self.ensure_subscriber();
        let sent = Instant::now();
        let bump = self.leases.bump();
        let seq = bump.seq;
        // Replacing bumps build on the pages the ones before them stored, so they go in order.
        let reply = self
            .eval::<(Vec<u8>, Vec<i64>, i64, i64, Vec<String>)>(
                &self.bump_script,
                !replacements.is_empty(),
                admit,
                |cmd| self.bump_args(cmd, seq, replacements),
                deadline,
            )
            .await;
        match reply {
            Ok((latest, ttls, reset, lost_ms, holders)) => {
                let answered = Instant::now();
                let latest = entry::parse_generation(&latest);
                // Every copy's generation is now stale; copies of the replaced entries are
                // made below, under the new one.
                self.local.clear(latest);
                let mut made = Vec::with_capacity(replacements.len());
                for (i, r) in replacements.iter().enumerate() {
                    let ttl = ttls.get(i).copied().unwrap_or(-3);
                    made.push(ttl != -3);
                    if let (Some(latest), Ok(ttl @ 1..)) = (latest, u64::try_from(ttl)) {
                        let expires = sent + Duration::from_millis(ttl);
                        self.local.put(&r.key, latest, r.value.clone(), expires);
                    }
                }
                let seen = self.leases.answered(seq, latest, reset != 0);
                bump.wait(
                    lease::parse_holders(&holders, lost_ms),
                    seen,
                    answered,
                    deadline,
                )
                .await
                .map_err(|lease::LeaseTooLong| RedisCacheError::LeaseTooLong)?;
                Ok(made)
            }
            Err(e) if !e.is_unavailable() => {
                // A generation the script cannot move on (a key of another type, say) is
                // replaced at random: that invalidates just as well, and must not fail, or the
                // caller's debt could never be paid.
                tracing::warn!(error = %e, "could not increment the cache generation; replacing it");
                self.seed_generation(false, deadline).await?;
                // The reset ends every lease, but no replica acknowledges one: wait until every
                // lease that may not have read it has ended, past the deadline if need be (at
                // most one lease time, as for any bump: see `lease::Bump::wait`).
                tokio::time::sleep(self.leases.time).await;
                Ok(vec![false; replacements.len()])
            }
            Err(e) => Err(e),
        }
    }

    /// The bump script's keys and arguments.
    fn bump_args(&self, cmd: &mut redis::Cmd, seq: u64, replacements: &[Replacement]) {
        cmd.arg(2 + replacements.len())
            .arg(self.keys.generation())
            .arg(&self.leases.names.registry);
        for r in replacements {
            cmd.arg(self.keys.entry(&r.key));
        }
        cmd.arg(entry::random_generation())
            .arg(&self.leases.id)
            .arg(seq)
            .arg(u64::try_from(self.leases.time.as_millis()).unwrap_or(u64::MAX))
            .arg(&self.leases.names.bumps);
        for r in replacements {
            let next = Generation(r.expected_generation.0.wrapping_add(1));
            cmd.arg(r.expected_generation.0)
                .arg(entry::encode(r.expected_generation, &r.expected_value))
                .arg(entry::encode(next, &r.value));
        }
    }

    #[tracing::instrument(level = "debug", name = "redis.ping", skip_all)]
    async fn ping_inner(&self, deadline: Instant) -> Result<(), RedisCacheError> {
        self.call::<Value>(Request::Cmd(&redis::cmd("PING")), deadline)
            .await?;
        Ok(())
    }
}

/// What this process holds of a key, before any round trip.
enum Held {
    /// A local copy a current lease vouches for: a hit without a round trip.
    Leased(Bytes),
    /// A local copy (and the generation it was made under) that Redis must confirm, or none.
    Unvouched(Option<(Generation, Bytes)>),
}

#[async_trait]
impl TaskCache for RedisTaskCache {
    async fn lookup(&self, key: &str, deadline: Instant) -> Result<CacheLookup, CacheError> {
        let sent = Instant::now();
        match self.held(key, sent) {
            Held::Leased(payload) => Ok(CacheLookup::Hit(payload)),
            // Boxed apart: the round trip's state is some 8 KB, and this future, which every
            // lookup allocates, stays small for the hits above (an allocation of 8 KB is not
            // served from the allocator's per-thread cache).
            Held::Unvouched(copy) => {
                Ok(Box::pin(self.lookup_in_redis(key, copy, sent, deadline)).await?)
            }
        }
    }

    async fn store(
        &self,
        key: &str,
        generation: Generation,
        value: Bytes,
        deadline: Instant,
    ) -> Result<(), CacheError> {
        Ok(self.store_inner(key, generation, &value, deadline).await?)
    }

    // A write's bump is sent even while the breaker fails other calls fast: one not made
    // leaves a debt, and other replicas may serve what it invalidates until it is paid. (An
    // open breaker can be this process's own doing, a stall that made lookups late, while Redis
    // answers the other replicas.) Its outcome still counts for the breaker.
    async fn bump_generation(&self, deadline: Instant) -> Result<(), CacheError> {
        self.bump_inner(&[], Admit::Always, deadline).await?;
        Ok(())
    }

    /// Through the breaker: a reader paying a debt reads the store instead of waiting on a
    /// Redis that is failing.
    async fn pay_owed_bump(&self, deadline: Instant) -> Result<(), CacheError> {
        self.bump_inner(&[], Admit::ThroughBreaker, deadline)
            .await?;
        Ok(())
    }

    async fn bump_generation_replacing(
        &self,
        replacements: &[Replacement],
        deadline: Instant,
    ) -> Result<Vec<bool>, CacheError> {
        Ok(self
            .bump_inner(replacements, Admit::Always, deadline)
            .await?)
    }

    async fn ping(&self, deadline: Instant) -> Result<(), CacheError> {
        Ok(self.ping_inner(deadline).await?)
    }
}
