//! Settings, built in layers with the `config` crate: built-in defaults, an optional file
//! (`TASKLANE_CONFIG`, else `./tasklane.toml` if present), then the environment
//! (`TASKLANE_*`, plus the seed's `DATABASE_URL` and `REDIS_URL` and their `*_FILE` forms).

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// A setting that stops start-up, with a one-line message naming the variable.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid settings: {0}")]
    Load(#[from] config::ConfigError),
    #[error("{var}: {reason}")]
    Invalid { var: String, reason: String },
}

/// The longest `TASKLANE_CACHE_TTL_SECS` accepted: a day.
const MAX_CACHE_TTL_SECS: u64 = 86_400;

fn invalid(var: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        var: var.to_owned(),
        reason: reason.into(),
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Which store holds the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// PostgreSQL when a `postgres://` database URL is set, else the embedded SQLite file.
    Auto,
    /// PostgreSQL; start-up fails when no database URL is set (deployments set this).
    Postgres,
    /// The embedded SQLite file.
    Sqlite,
}

/// Every setting, with its default. Environment names are `TASKLANE_` plus the field name in
/// capitals (e.g. `TASKLANE_DB_POOL_SIZE`), except the two URLs, which keep the seed's names.
#[derive(Clone, Deserialize)]
pub struct Settings {
    /// `host:port` to listen on.
    pub listen: String,
    /// `auto`, `postgres` or `sqlite`.
    pub store: StoreKind,
    /// The SQLite file of the embedded store (its folder is created).
    pub sqlite_path: String,
    /// PostgreSQL URL, or `sqlite:<path>` (`DATABASE_URL` or the file named by
    /// `DATABASE_URL_FILE`).
    #[serde(skip)]
    pub database_url: Option<SecretString>,
    /// Redis URL (`REDIS_URL` or `REDIS_URL_FILE`); without one, lists are not cached.
    #[serde(skip)]
    pub redis_url: Option<SecretString>,
    pub db_pool_size: usize,
    /// Text searches PostgreSQL runs at once (the rest wait their turn for up to
    /// `db_wait_timeout_ms`); 0 means half the pool. At most `db_pool_size`.
    pub db_search_slots: usize,
    pub db_wait_timeout_ms: u64,
    pub db_connect_timeout_ms: u64,
    pub db_query_timeout_ms: u64,
    /// How long start-up keeps retrying an unreachable database.
    pub startup_timeout_secs: u64,
    /// The time one request may spend on cache work in total.
    pub cache_timeout_ms: u64,
    pub cache_ttl_secs: u64,
    pub cache_key_prefix: String,
    pub cache_pool_size: usize,
    pub cache_breaker_threshold: u32,
    pub cache_breaker_cooldown_ms: u64,
    /// Bytes of Redis entries each process keeps as local copies (0: none). A copy is served
    /// only after Redis confirms its generation is still current, or on a lease (below).
    pub cache_local_bytes: usize,
    /// How long a lease on the generation lasts (0: none). While a process holds one, it
    /// serves its local copies without asking Redis, and every write waits until each lease
    /// holder has taken in its bump or the lease has ended, past the cache budget if need be
    /// (docs/ARCHITECTURE.md, "Leases"). At most half of `cache_timeout_ms`; the same on every
    /// replica.
    pub cache_lease_ms: u64,
    /// Whether an update writes itself through into the cached unfiltered list pages (stored
    /// under the new generation in the same step as the bump) instead of leaving them to miss.
    pub cache_write_through: bool,
    pub log_format: LogFormat,
    /// A `tracing` filter; `RUST_LOG` wins when set.
    pub log: String,
    /// Comma-separated origins allowed by CORS; empty means CORS is off.
    pub cors_origins: String,
    /// After SIGTERM, readiness answers 503 while requests are still served for this long, so
    /// load balancers stop sending new ones; then the listener closes.
    pub drain_delay_ms: u64,
    /// How long in-flight requests get to finish once the listener is closed.
    pub shutdown_timeout_secs: u64,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// The longest a request body may take to arrive once the headers are in (408 after that),
    /// so that a client trickling its body cannot keep a request open.
    pub body_timeout_ms: u64,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may hold passwords: only say whether they are set.
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("db_pool_size", &self.db_pool_size)
            .field("cache_key_prefix", &self.cache_key_prefix)
            .field("log_format", &self.log_format)
            .finish_non_exhaustive()
    }
}

const DEFAULTS: &[(&str, &str)] = &[
    ("listen", "127.0.0.1:5000"),
    ("store", "auto"),
    ("sqlite_path", "data/tasklane.db"),
    ("db_pool_size", "8"),
    ("db_search_slots", "0"),
    ("db_wait_timeout_ms", "500"),
    ("db_connect_timeout_ms", "500"),
    ("db_query_timeout_ms", "1000"),
    ("startup_timeout_secs", "30"),
    ("cache_timeout_ms", "100"),
    ("cache_ttl_secs", "60"),
    ("cache_key_prefix", "tasklane"),
    ("cache_pool_size", "4"),
    ("cache_breaker_threshold", "3"),
    ("cache_breaker_cooldown_ms", "1000"),
    ("cache_local_bytes", "8388608"),
    ("cache_lease_ms", "50"),
    ("cache_write_through", "true"),
    ("log_format", "pretty"),
    ("log", "info"),
    ("cors_origins", ""),
    ("drain_delay_ms", "1000"),
    ("shutdown_timeout_secs", "5"),
    ("workers", "0"),
    ("body_timeout_ms", "10000"),
];

impl Settings {
    /// Loads the settings from the process environment.
    ///
    /// # Errors
    /// A malformed value, naming the variable.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::load(|name| std::env::var(name).ok())
    }

    /// Loads the settings with `env` standing in for the process environment (tests).
    ///
    /// # Errors
    /// A malformed value, naming the variable.
    pub fn load(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder.set_default(*key, *value)?;
        }
        builder = match env("TASKLANE_CONFIG") {
            Some(path) => builder.add_source(config::File::with_name(&path).required(true)),
            None => builder.add_source(config::File::with_name("tasklane").required(false)),
        };
        for (key, _) in DEFAULTS {
            let var = format!("TASKLANE_{}", key.to_ascii_uppercase());
            if let Some(value) = env(&var) {
                builder = builder.set_override(*key, value)?;
            }
        }
        let mut settings: Settings = builder.build()?.try_deserialize().map_err(|e| match &e {
            config::ConfigError::Type { key: Some(key), .. } => invalid(
                &format!("TASKLANE_{}", key.to_ascii_uppercase()),
                e.to_string(),
            ),
            _ => SettingsError::Load(e),
        })?;
        settings.database_url = secret_var(&env, "DATABASE_URL", "DATABASE_URL_FILE")?;
        settings.redis_url = secret_var(&env, "REDIS_URL", "REDIS_URL_FILE")?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        self.listen_addr()?;
        if let Some(url) = &self.database_url {
            let url = url.expose_secret();
            if sqlite_path_of(url).is_none()
                && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
            {
                return Err(invalid(
                    "DATABASE_URL",
                    "must be a postgres://, postgresql:// or sqlite: URL",
                ));
            }
        }
        if let Some(url) = &self.redis_url {
            let url = url.expose_secret();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid("REDIS_URL", "must be a redis:// or rediss:// URL"));
            }
        }
        if self.db_pool_size == 0 {
            return Err(invalid("TASKLANE_DB_POOL_SIZE", "must be at least 1"));
        }
        if self.db_search_slots > self.db_pool_size {
            return Err(invalid(
                "TASKLANE_DB_SEARCH_SLOTS",
                "must be at most TASKLANE_DB_POOL_SIZE (each running search holds a connection)",
            ));
        }
        if self.cache_pool_size == 0 {
            return Err(invalid("TASKLANE_CACHE_POOL_SIZE", "must be at least 1"));
        }
        if self.cache_lease_ms.saturating_mul(2) > self.cache_timeout_ms {
            return Err(invalid(
                "TASKLANE_CACHE_LEASE_MS",
                "must be at most half of TASKLANE_CACHE_TIMEOUT_MS (a write may wait out a lease)",
            ));
        }
        if !(1..=MAX_CACHE_TTL_SECS).contains(&self.cache_ttl_secs) {
            return Err(invalid(
                "TASKLANE_CACHE_TTL_SECS",
                format!(
                    "must be between 1 and {MAX_CACHE_TTL_SECS} (a day): it bounds how long a \
                     replica whose invalidation failed may serve what that write changed"
                ),
            ));
        }
        if self.body_timeout_ms == 0 {
            return Err(invalid("TASKLANE_BODY_TIMEOUT_MS", "must be at least 1"));
        }
        Ok(())
    }

    /// The listen address, resolved.
    ///
    /// # Errors
    /// When `TASKLANE_LISTEN` is not a `host:port` that resolves.
    pub fn listen_addr(&self) -> Result<SocketAddr, SettingsError> {
        self.listen
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| invalid("TASKLANE_LISTEN", "must be host:port, e.g. 127.0.0.1:5000"))
    }

    /// The SQLite file named by a `sqlite:` database URL, if that is what is set.
    pub fn sqlite_url_path(&self) -> Option<String> {
        self.database_url
            .as_ref()
            .and_then(|u| sqlite_path_of(u.expose_secret()))
    }

    pub fn cors_origins(&self) -> Vec<String> {
        self.cors_origins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn cache_timeout(&self) -> Duration {
        Duration::from_millis(self.cache_timeout_ms)
    }

    /// The text searches PostgreSQL may run at once: as set, or half the pool.
    pub fn search_slots(&self) -> usize {
        match self.db_search_slots {
            0 => tasklane_postgres::default_search_slots(self.db_pool_size),
            n => n,
        }
    }

    /// The HTTP worker threads: as set, or one per core (actix-web's own default). The
    /// PostgreSQL pool has a shard for each.
    pub fn http_workers(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
}

/// `sqlite:data/x.db`, `sqlite://data/x.db` and `sqlite:///abs/x.db` name a file; a query
/// string (`?mode=rwc`) is ignored.
fn sqlite_path_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty()).then(|| path.to_owned())
}

/// Reads a secret from `var`, or from the file named by `file_var` (Docker secrets). Setting
/// both is an error; a trailing newline in the file is ignored.
fn secret_var(
    env: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    file_var: &'static str,
) -> Result<Option<SecretString>, SettingsError> {
    let direct = env(var).filter(|v| !v.is_empty());
    let file = env(file_var).filter(|v| !v.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(invalid(
            var,
            format!("set either {var} or {file_var}, not both"),
        )),
        (Some(value), None) => Ok(Some(SecretString::from(value))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| invalid(file_var, format!("cannot read {path}: {e}")))?;
            let value = text.trim_end_matches(['\n', '\r']).to_owned();
            if value.is_empty() {
                return Err(invalid(file_var, format!("{path} is empty")));
            }
            Ok(Some(SecretString::from(value)))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_apply() {
        let s = load(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.listen, "127.0.0.1:5000");
        assert_eq!(s.cache_timeout(), Duration::from_millis(100));
        assert_eq!(s.body_timeout(), Duration::from_secs(10));
        assert!(s.database_url.is_none());
        assert!(s.cors_origins().is_empty());
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = load(&[
            ("TASKLANE_LISTEN", "0.0.0.0:8080"),
            ("TASKLANE_DB_POOL_SIZE", "3"),
            ("TASKLANE_LOG_FORMAT", "json"),
            (
                "TASKLANE_CORS_ORIGINS",
                "https://a.example, https://b.example",
            ),
            ("DATABASE_URL", "postgres://u:p@db:5432/taskdb"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.listen, "0.0.0.0:8080");
        assert_eq!(s.db_pool_size, 3);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.cors_origins().len(), 2);
        assert!(s.database_url.is_some());
    }

    #[test]
    fn a_malformed_url_names_the_variable_and_hides_the_value() {
        let e = load(&[("DATABASE_URL", "mysql://user:hunter2@x/y")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("DATABASE_URL:"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = load(&[("REDIS_URL", "localhost:6379")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("REDIS_URL:"), "{e}");
        let e = load(&[("TASKLANE_LISTEN", "nonsense")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("TASKLANE_LISTEN:"), "{e}");
    }

    #[test]
    fn the_cache_ttl_is_bounded() {
        for bad in ["0", "86401", "18446744073709551615"] {
            let e = load(&[("TASKLANE_CACHE_TTL_SECS", bad)])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.starts_with("TASKLANE_CACHE_TTL_SECS:"), "{bad}: {e}");
        }
        for good in ["1", "60", "86400"] {
            assert!(load(&[("TASKLANE_CACHE_TTL_SECS", good)]).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_secret_can_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("tasklane-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("db_url");
        std::fs::write(&path, "postgres://u:p@db/taskdb\n").unwrap_or_else(|e| panic!("{e}"));
        let s = load(&[("DATABASE_URL_FILE", path.to_str().unwrap_or_default())])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.database_url
                .as_ref()
                .map(|u| u.expose_secret().to_owned()),
            Some("postgres://u:p@db/taskdb".to_owned())
        );
        let both = load(&[
            ("DATABASE_URL_FILE", path.to_str().unwrap_or_default()),
            ("DATABASE_URL", "postgres://x@y/z"),
        ]);
        assert!(both.is_err());
        let missing = load(&[("DATABASE_URL_FILE", "/nonexistent/secret")]);
        assert!(missing
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .starts_with("DATABASE_URL_FILE:"));
    }

    #[test]
    fn sqlite_urls_name_a_file() {
        assert_eq!(sqlite_path_of("sqlite:data/x.db"), Some("data/x.db".into()));
        assert_eq!(
            sqlite_path_of("sqlite://data/x.db"),
            Some("data/x.db".into())
        );
        assert_eq!(
            sqlite_path_of("sqlite:///var/x.db?mode=rwc"),
            Some("/var/x.db".into())
        );
        assert_eq!(sqlite_path_of("sqlite:"), None);
        assert_eq!(sqlite_path_of("postgres://x"), None);
        let s = load(&[("DATABASE_URL", "sqlite:/tmp/t.db")]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.sqlite_url_path(), Some("/tmp/t.db".into()));
        assert_eq!(
            load(&[("TASKLANE_STORE", "postgres")])
                .map(|s| s.store)
                .ok(),
            Some(StoreKind::Postgres)
        );
        assert!(load(&[("TASKLANE_STORE", "mysql")]).is_err());
    }

    #[test]
    fn a_bad_number_is_refused() {
        assert!(load(&[("TASKLANE_DB_POOL_SIZE", "lots")]).is_err());
        assert!(load(&[("TASKLANE_DB_POOL_SIZE", "0")]).is_err());
        assert!(load(&[("TASKLANE_BODY_TIMEOUT_MS", "0")]).is_err());
        // A lease a write could not wait out within the cache budget.
        let e = load(&[("TASKLANE_CACHE_LEASE_MS", "51")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("TASKLANE_CACHE_LEASE_MS:"), "{e}");
        assert!(load(&[
            ("TASKLANE_CACHE_LEASE_MS", "150"),
            ("TASKLANE_CACHE_TIMEOUT_MS", "300")
        ])
        .is_ok());
        assert!(load(&[("TASKLANE_CACHE_LEASE_MS", "0")]).is_ok());
        assert_eq!(
            load(&[("TASKLANE_BODY_TIMEOUT_MS", "2000")])
                .map(|s| s.body_timeout())
                .ok(),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn http_workers_are_as_set_or_one_per_core() {
        let set = load(&[("TASKLANE_WORKERS", "3")]).map(|s| s.http_workers());
        assert_eq!(set.ok(), Some(3));
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let default = load(&[]).map(|s| s.http_workers());
        assert_eq!(default.ok(), Some(cores));
    }

    #[test]
    fn search_slots_are_half_the_pool_unless_set_and_never_more_than_the_pool() {
        let slots = |vars: &[(&str, &str)]| load(vars).map(|s| s.search_slots());
        assert_eq!(slots(&[]).ok(), Some(4));
        assert_eq!(slots(&[("TASKLANE_DB_POOL_SIZE", "3")]).ok(), Some(1));
        assert_eq!(slots(&[("TASKLANE_DB_SEARCH_SLOTS", "6")]).ok(), Some(6));
        assert_eq!(
            slots(&[
                ("TASKLANE_DB_POOL_SIZE", "1"),
                ("TASKLANE_DB_SEARCH_SLOTS", "1")
            ])
            .ok(),
            Some(1)
        );
        let too_many = load(&[("TASKLANE_DB_SEARCH_SLOTS", "9")]).unwrap_err();
        assert!(
            too_many.to_string().contains("TASKLANE_DB_SEARCH_SLOTS"),
            "{too_many}"
        );
        assert!(load(&[("TASKLANE_DB_SEARCH_SLOTS", "-1")]).is_err());
    }
}
