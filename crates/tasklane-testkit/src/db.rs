//! Per-test PostgreSQL databases cloned from a migrated template.
//!
//! [`TestDb::new`] gives each test its own database, `CREATE DATABASE ... TEMPLATE` of a template
//! migrated once per schema (named after [`tasklane_postgres::schema_fingerprint`]), so tests run
//! in parallel, in threads or in processes (nextest), without seeing each other's rows. The
//! database is dropped when the `TestDb` is.
//!
//! The server is the one at `TASKLANE_TEST_PG` (a `postgres://` URL of a role that may create
//! databases; default `postgres://postgres@127.0.0.1:5432/postgres`). Set `TASKLANE_TEST_KEEP_DB=1`
//! to keep the database of a test that fails, for a look with psql.
//!
//! Templates of older schemas are left in place (another checkout may still use them); drop
//! `tasklane_tpl_*` databases by hand to reclaim the space.

// A test helper that cannot set up has nothing better to do than fail the test, loudly.
#![allow(clippy::panic, clippy::expect_used)]

use std::time::{Duration, Instant};
use tasklane_postgres::{build_pool, migrate, PgSettings, PgTaskRepository, Pool};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// The environment variable naming the PostgreSQL server tests use.
pub const TEST_PG_VAR: &str = "TASKLANE_TEST_PG";
/// Where tests find PostgreSQL when [`TEST_PG_VAR`] is not set.
pub const DEFAULT_TEST_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The advisory lock key under which one process builds the template while others wait:
/// "tl-tmpl" in ASCII. Held on the admin database.
const TEMPLATE_LOCK: i64 = 0x0074_6c2d_746d_706c;

/// How long to keep retrying an operation PostgreSQL refuses because another session is briefly
/// connected to the database involved (SQLSTATE 55006).
const BUSY_RETRY_FOR: Duration = Duration::from_secs(15);

/// The admin URL: [`TEST_PG_VAR`] or [`DEFAULT_TEST_PG`].
pub fn admin_url() -> String {
    std::env::var(TEST_PG_VAR).unwrap_or_else(|_| DEFAULT_TEST_PG.to_owned())
}

/// The TCP address of the test server (from [`admin_url`]), for a fault proxy to point at.
pub fn admin_addr() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let config: tokio_postgres::Config = admin_url()
        .parse()
        .unwrap_or_else(|e| panic!("{TEST_PG_VAR}: {e}"));
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("{TEST_PG_VAR}: cannot resolve {host}:{port}"))
}

/// Settings for tests: a small pool and timeouts generous enough for a loaded two-core machine
/// running many tests at once, yet short enough that a hang fails the test in seconds.
pub fn pg_settings(url: impl Into<String>) -> PgSettings {
    PgSettings {
        url: url.into(),
        pool_size: 4,
        // Two shards, as on a two-core server: every test goes through the sharded pool.
        shards: 2,
        wait_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        recycle_timeout: Duration::from_secs(2),
        query_timeout: Duration::from_secs(10),
    }
}

/// A database of its own for one test, dropped with this value.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDb {
    /// A fresh database with the current schema (all migrations applied) and no rows.
    ///
    /// # Panics
    /// When PostgreSQL cannot be reached or refuses to create the database.
    pub async fn new() -> TestDb {
        let admin_url = admin_url();
        let admin = connect(&admin_url).await;
        let template = ensure_template(&admin, &admin_url).await;
        Self::create(admin, admin_url, &template).await
    }

    /// A fresh database with no schema at all (cloned from `template0`): for testing migrations.
    ///
    /// # Panics
    /// As [`TestDb::new`].
    pub async fn empty() -> TestDb {
        let admin_url = admin_url();
        let admin = connect(&admin_url).await;
        Self::create(admin, admin_url, "template0").await
    }

    async fn create(admin: Client, admin_url: String, template: &str) -> TestDb {
        let name = format!("tasklane_test_{}", uuid::Uuid::new_v4().simple());
        retry_while_busy(
            &admin,
            &format!(
                "CREATE DATABASE {} TEMPLATE {}",
                ident(&name),
                ident(template)
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("could not create test database {name}: {e}"));
        TestDb {
            url: with_dbname(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `postgres://` URL of this database, e.g. for `DATABASE_URL`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// [`pg_settings`] for this database.
    pub fn settings(&self) -> PgSettings {
        pg_settings(self.url())
    }

    /// A pool on this database with [`pg_settings`], proven to connect.
    ///
    /// # Panics
    /// When it cannot connect.
    pub async fn pool(&self) -> Pool {
        pool_on(&self.settings()).await
    }

    /// A repository on this database, with [`pg_settings`]'s query timeout.
    ///
    /// # Panics
    /// When it cannot connect.
    pub async fn repository(&self) -> PgTaskRepository {
        let settings = self.settings();
        PgTaskRepository::new(pool_on(&settings).await, settings.query_timeout)
    }

    /// A plain connection of its own, outside any pool: to look at tables directly, or to hold
    /// a lock while the code under test waits for it.
    ///
    /// # Panics
    /// When it cannot connect.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The statements of this database's sessions that wait on a lock, as the server sees them
    /// now, sorted.
    ///
    /// # Panics
    /// When it cannot connect.
    pub async fn lock_waits(&self) -> Vec<String> {
        lock_waits(&connect(&self.url).await).await
    }

    /// Polls (every 20 ms, for at most 5 s, then panics) [`TestDb::lock_waits`] until `ready`
    /// holds of them, and returns them.
    ///
    /// # Panics
    /// When it cannot connect, or `ready` still does not hold after 5 s.
    pub async fn until_lock_waits(&self, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
        let observer = connect(&self.url).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let waiting = lock_waits(&observer).await;
            if ready(&waiting) {
                return waiting;
            }
            assert!(
                Instant::now() < deadline,
                "still waiting on locks: {waiting:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What waits on a lock in `observer`'s database. `observer` must not be in a transaction (the
/// session holding the lock is): inside one, `pg_stat_activity` is a snapshot taken at its first
/// read, so a statement that starts waiting later would never show.
async fn lock_waits(observer: &Client) -> Vec<String> {
    observer
        .query(
            "SELECT query FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
             ORDER BY query",
            &[],
        )
        .await
        .expect("read pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

impl TestDb {
    /// Drops the database now, ending every session on it: the test's server then finds its
    /// database gone, as if PostgreSQL had lost it, while the shared server stays up.
    ///
    /// # Panics
    /// When the admin connection fails.
    pub async fn drop_now(&self) {
        let admin = connect(&self.admin_url).await;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(&self.name)
            ))
            .await
            .expect("drop the test database");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("TASKLANE_TEST_KEEP_DB").is_some() {
            eprintln!("keeping test database {} for inspection", self.name);
            return;
        }
        // Drop may run inside a test's runtime, where blocking on a future would stall it or
        // panic: the DROP runs on a thread of its own, with a runtime of its own. WITH (FORCE)
        // ends the sessions the test's pools still hold.
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&self.name));
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let admin = try_connect(&admin_url).await?;
                admin.batch_execute(&sql).await.map_err(|e| e.to_string())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("dropping test database {} panicked", self.name),
        }
    }
}

/// Makes sure the template of the current schema exists, and returns its name.
///
/// Many test processes may get here at once. The template is built under another name and only
/// renamed once fully migrated, so its existence means it is ready; building is serialized by an
/// advisory lock that PostgreSQL releases if the builder dies. Nobody may connect to the finished
/// template, so cloning it never fails because someone is "accessing" it.
async fn ensure_template(admin: &Client, admin_url: &str) -> String {
    let fingerprint = tasklane_postgres::schema_fingerprint();
    let short = fingerprint.get(..16).unwrap_or(&fingerprint);
    let template = format!("tasklane_tpl_{short}");
    if database_exists(admin, &template).await {
        return template;
    }

    admin
        .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK])
        .await
        .expect("could not take the template lock");
    if !database_exists(admin, &template).await {
        let building = format!("tasklane_tplbuild_{short}");
        // A builder that died half-way leaves its database behind: start over.
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(&building)
            ))
            .await
            .expect("could not drop a half-built template");
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {} TEMPLATE template0",
                ident(&building)
            ))
            .await
            .expect("could not create the template database");

        let pool = build_pool(&pg_settings(with_dbname(admin_url, &building)))
            .expect("the test database URL is malformed");
        migrate(&pool)
            .await
            .unwrap_or_else(|e| panic!("migrating the template failed: {}", error_chain(&e)));
        pool.close();

        // The migration's connection is closed, but its server process may take a moment to go
        // away; the rename waits for that.
        retry_while_busy(
            admin,
            &format!(
                "ALTER DATABASE {} RENAME TO {}",
                ident(&building),
                ident(&template)
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("could not rename the template: {e}"));
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                ident(&template)
            ))
            .await
            .expect("could not close the template to connections");
    }
    admin
        .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK])
        .await
        .expect("could not release the template lock");
    template
}

async fn database_exists(admin: &Client, name: &str) -> bool {
    admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&name],
        )
        .await
        .and_then(|row| row.try_get(0))
        .expect("could not list databases")
}

/// Runs `sql`, retrying for a while when PostgreSQL says another session is using the database
/// it names (a template being cloned, or a closed connection whose server process is exiting).
async fn retry_while_busy(admin: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    let deadline = Instant::now() + BUSY_RETRY_FOR;
    loop {
        match admin.batch_execute(sql).await {
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

async fn pool_on(settings: &PgSettings) -> Pool {
    let pool = build_pool(settings).expect("the test database URL is malformed");
    if let Err(e) = pool.get().await {
        panic!(
            "could not connect to the test database: {}",
            error_chain(&e)
        );
    }
    pool
}

async fn connect(url: &str) -> Client {
    try_connect(url).await.unwrap_or_else(|e| {
        panic!(
            "could not connect to PostgreSQL at {TEST_PG_VAR} (default {DEFAULT_TEST_PG}); \
             is it running? {e}"
        )
    })
}

/// Connects outside any pool; the connection lives on a task of the current runtime until the
/// client is dropped.
async fn try_connect(url: &str) -> Result<Client, String> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| format!("{TEST_PG_VAR} is not a valid postgres:// URL"))?;
    config.connect_timeout(Duration::from_secs(5));
    config.application_name("tasklane-testkit");
    let (client, connection) = config.connect(NoTls).await.map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        // Ends with an error when the server terminates the session (a forced DROP DATABASE):
        // expected, and nothing to report.
        let _ = connection.await;
    });
    Ok(client)
}

/// The error and its causes on one line: tokio-postgres puts the useful part in the source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Quotes an identifier for SQL. The names here are generated, but quoting costs nothing.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The same `postgres://` URL naming another database: the path is replaced, and a `dbname`
/// query parameter (which would win over the path) is dropped.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("{TEST_PG_VAR} must be a postgres:// URL"));
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or_default();
    let mut out = format!("{scheme}://{authority}/{dbname}");
    let kept: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.is_empty() && !pair.starts_with("dbname="))
        .collect();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_dbname_replaces_only_the_database() {
        assert_eq!(
            with_dbname("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_dbname("postgresql://u:p%2Fw@h", "t1"),
            "postgresql://u:p%2Fw@h/t1"
        );
        assert_eq!(
            with_dbname(
                "postgres://h/db?sslmode=disable&dbname=x&connect_timeout=3",
                "t1"
            ),
            "postgres://h/t1?sslmode=disable&connect_timeout=3"
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
