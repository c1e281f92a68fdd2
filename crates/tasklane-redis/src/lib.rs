//! The [`TaskCache`] port on Redis: a generation-checked cache of list pages.
//!
//! Keys, for a prefix `p`:
//! - `p:gen`: the generation, a decimal integer. Not versioned, so every release bumps and
//!   checks the same one.
//! - `p:v{SCHEMA}:list:{key}`: an entry, the 8-byte big-endian generation it was computed under
//!   followed by the caller's opaque bytes, with a TTL.
//!
//! A lookup is one round trip (`MGET gen entry`) and hits only when the entry's generation is
//! the current one, so a value computed before a write can never be served after that write's
//! bump. A bump that writes an update through ([`TaskCache::bump_generation_replacing`]) is one
//! Lua script ([`BUMP_REPLACING`]), so that no lookup sees the new generation without the
//! entries it replaces. An entry this process has already read or written is kept as a local
//! copy (see [`local`]), and then the round trip is a `GET gen` alone: the same check, without
//! the page. Every call gives up at its deadline; a circuit breaker stops calling a Redis that keeps
//! failing and probes it again after a cool-down.

mod breaker;
mod connection;
mod entry;
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
use local::LocalCopies;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tasklane_domain::{CacheError, CacheLookup, Generation, Replacement, TaskCache};

/// How to reach Redis and how to use it.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[user][:password@]host[:port][/db]`. May hold a password: never logged.
    pub url: String,
    /// Every key starts with `{key_prefix}:`, e.g. `tasklane`.
    pub key_prefix: String,
    /// How long entries live.
    pub ttl: Duration,
    /// The size of the deadpool pool the connections come from. The cache holds one
    /// multiplexed connection per thread that uses it (one per actix worker), each taken out of
    /// that pool for good, and makes at most one new connection at a time.
    pub pool_size: usize,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker fails calls fast before it lets one probe through.
    pub breaker_cooldown: Duration,
    /// The bytes of local copies of entries this process keeps (0: none); see [`local`].
    pub local_copy_bytes: usize,
}

/// The default budget for local copies: 8 MiB.
pub const DEFAULT_LOCAL_COPY_BYTES: usize = 8 << 20;

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
}

impl RedisCacheError {
    /// Whether this says Redis is unreachable or unwell, as opposed to a bug or a reply that
    /// makes no sense. Only these count as breaker failures.
    fn is_unavailable(&self) -> bool {
        match self {
            Self::NoTimeLeft | Self::Timeout | Self::BreakerOpen | Self::Connect(_) => true,
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

/// The bump with replacements, atomic because Redis runs a script alone.
///
/// `KEYS[1]` is the generation, `KEYS[2..]` the entries. `ARGV[1]` is a random generation, set
/// first if there is none (as a plain bump does); then, for the entry in `KEYS[k]`, `ARGV[3k-4]`
/// is the generation expected before the bump (decimal), `ARGV[3k-3]` the entry it must hold
/// (tag and payload) and `ARGV[3k-2]` the entry to store instead, tagged with the next
/// generation. Generations are compared as the strings Redis holds: they reach 2^62, beyond
/// what a Lua number holds exactly. Answers the generation after the bump and, per entry, the
/// replaced entry's remaining TTL in ms (as `PTTL` answers) or -3 when it was not replaced.
const BUMP_REPLACING: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local before = redis.call('GET', KEYS[1])
local held = {}
for k = 2, #KEYS do
  held[k] = before == ARGV[3 * k - 4] and redis.call('GET', KEYS[k]) == ARGV[3 * k - 3]
end
redis.call('INCR', KEYS[1])
local ttls = {}
for k = 2, #KEYS do
  if held[k] then
    redis.call('SET', KEYS[k], ARGV[3 * k - 2], 'KEEPTTL')
    ttls[k - 1] = redis.call('PTTL', KEYS[k])
  else
    ttls[k - 1] = -3
  end
end
return {redis.call('GET', KEYS[1]), ttls}
";

/// The [`TaskCache`] on Redis. Cheap to share behind an `Arc`; makes no connection until used.
pub struct RedisTaskCache {
    conn: SharedConnection,
    breaker: Breaker,
    keys: Keys,
    ttl: Duration,
    ttl_millis: u64,
    local: LocalCopies,
    /// The SHA1 of [`BUMP_REPLACING`], once Redis has told it (`SCRIPT LOAD`).
    script_sha: Mutex<Option<String>>,
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
        let pool = Pool::builder(manager)
            .max_size(s.pool_size)
            .build()
            .map_err(SetupError::Pool)?;
        Ok(Self {
            conn: SharedConnection::new(pool),
            breaker: Breaker::new(s.breaker_threshold, s.breaker_cooldown),
            keys: Keys::new(&s.key_prefix),
            ttl: s.ttl,
            ttl_millis: u64::try_from(s.ttl.as_millis()).unwrap_or(u64::MAX),
            local: LocalCopies::new(s.local_copy_bytes),
            script_sha: Mutex::new(None),
        })
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
        let deadline = tokio::time::Instant::from_std(deadline);
        if deadline <= tokio::time::Instant::now() {
            // The caller's budget is spent: not Redis's fault, so not a breaker failure.
            return Err(RedisCacheError::NoTimeLeft);
        }
        if self.breaker.admit() == Admission::Reject {
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

    /// Sets the generation to a random value: only when there is none (`only_if_missing`), or
    /// unconditionally to replace one that is not a number. Either way no entry in Redis can
    /// look current afterwards.
    async fn seed_generation(
        &self,
        only_if_missing: bool,
        deadline: Instant,
    ) -> Result<(), RedisCacheError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.generation())
            .arg(entry::random_generation());
        if only_if_missing {
            cmd.arg("NX");
        } else {
            // Every copy's generation is now stale.
            self.local.clear(None);
        }
        self.call::<Value>(Request::Cmd(&cmd), deadline).await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "redis.lookup", skip(self, deadline))]
    async fn lookup_inner(
        &self,
        key: &str,
        deadline: Instant,
    ) -> Result<CacheLookup, RedisCacheError> {
        let sent = Instant::now();
        if let Some((copied_under, payload)) = self.local.get(key, sent) {
            let mut cmd = redis::cmd("GET");
            cmd.arg(self.keys.generation());
            let generation: Option<Vec<u8>> = self.call(Request::Cmd(&cmd), deadline).await?;
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
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.entry(key))
            .arg(entry::encode(generation, value))
            .arg("PX")
            .arg(self.ttl_millis);
        self.call::<Value>(Request::Cmd(&cmd), deadline).await?;
        // Redis started the entry's TTL after `sent`: the copy expires no later.
        self.local
            .put(key, generation, value.clone(), sent + self.ttl);
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "redis.bump_generation", skip_all)]
    async fn bump_inner(&self, deadline: Instant) -> Result<(), RedisCacheError> {
        // `INCR` of a missing key would start at 1, which entries of an earlier life of the key
        // may carry; so a missing generation is first seeded at random, in the same transaction.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.keys.generation())
            .arg(entry::random_generation())
            .arg("NX")
            .ignore()
            .cmd("INCR")
            .arg(self.keys.generation());
        match self.call::<(u64,)>(Request::Pipe(&pipe), deadline).await {
            Ok((latest,)) => {
                // Every copy's generation is now stale.
                self.local.clear(Some(Generation(latest)));
                Ok(())
            }
            Err(e) if !e.is_unavailable() => {
                // The key holds something `INCR` refuses (not a number, or at the end of the
                // range). Replacing it with a random generation invalidates just as well, and
                // must not fail, or the caller's debt could never be paid.
                tracing::warn!(error = %e, "could not increment the cache generation; replacing it");
                self.seed_generation(false, deadline).await
            }
            Err(e) => Err(e),
        }
    }

    #[tracing::instrument(
        level = "debug",
        name = "redis.bump_generation_replacing",
        skip_all,
        fields(entries = replacements.len())
    )]
    async fn bump_replacing_inner(
        &self,
        replacements: &[Replacement],
        deadline: Instant,
    ) -> Result<Vec<bool>, RedisCacheError> {
        let sent = Instant::now();
        let known_sha = self
            .script_sha
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let sha = match known_sha {
            Some(sha) => sha,
            None => {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(BUMP_REPLACING);
                let sha: String = self.call(Request::Cmd(&load), deadline).await?;
                *self
                    .script_sha
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(sha.clone());
                sha
            }
        };
        let mut reply = self
            .call::<(Vec<u8>, Vec<i64>)>(
                Request::Ordered(&self.replacing_cmd("EVALSHA", &sha, replacements)),
                deadline,
            )
            .await;
        if matches!(&reply, Err(RedisCacheError::Command(e))
            if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // Redis restarted or its scripts were flushed: `EVAL` loads it again (same SHA1).
            reply = self
                .call(
                    Request::Ordered(&self.replacing_cmd("EVAL", BUMP_REPLACING, replacements)),
                    deadline,
                )
                .await;
        }
        match reply {
            Ok((latest, ttls)) => {
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
                Ok(made)
            }
            Err(e) if !e.is_unavailable() => {
                // As for a plain bump: a generation `INCR` refuses is replaced at random.
                tracing::warn!(error = %e, "could not increment the cache generation; replacing it");
                self.seed_generation(false, deadline).await?;
                Ok(vec![false; replacements.len()])
            }
            Err(e) => Err(e),
        }
    }

    /// The script call: `EVALSHA sha ...` or `EVAL script ...`.
    fn replacing_cmd(&self, verb: &str, script: &str, replacements: &[Replacement]) -> redis::Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script)
            .arg(1 + replacements.len())
            .arg(self.keys.generation());
        for r in replacements {
            cmd.arg(self.keys.entry(&r.key));
        }
        cmd.arg(entry::random_generation());
        for r in replacements {
            let next = Generation(r.expected_generation.0.wrapping_add(1));
            cmd.arg(r.expected_generation.0)
                .arg(entry::encode(r.expected_generation, &r.expected_value))
                .arg(entry::encode(next, &r.value));
        }
        cmd
    }

    #[tracing::instrument(level = "debug", name = "redis.ping", skip_all)]
    async fn ping_inner(&self, deadline: Instant) -> Result<(), RedisCacheError> {
        self.call::<Value>(Request::Cmd(&redis::cmd("PING")), deadline)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl TaskCache for RedisTaskCache {
    async fn lookup(&self, key: &str, deadline: Instant) -> Result<CacheLookup, CacheError> {
        Ok(self.lookup_inner(key, deadline).await?)
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

    async fn bump_generation(&self, deadline: Instant) -> Result<(), CacheError> {
        Ok(self.bump_inner(deadline).await?)
    }

    async fn bump_generation_replacing(
        &self,
        replacements: &[Replacement],
        deadline: Instant,
    ) -> Result<Vec<bool>, CacheError> {
        Ok(self.bump_replacing_inner(replacements, deadline).await?)
    }

    async fn ping(&self, deadline: Instant) -> Result<(), CacheError> {
        Ok(self.ping_inner(deadline).await?)
    }
}
