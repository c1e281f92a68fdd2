//! Schema migrations: the SQL files of `migrations/postgres/`, embedded in the binary and applied
//! in order, once each, under an advisory lock so that several replicas may start at once.

use crate::pool::{Client, Pool};
use deadpool_postgres::PoolError;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// One embedded migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The file's number: migrations are applied in increasing order.
    pub version: i32,
    /// The file name without `.sql`, e.g. `0001_tasks`.
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// The hex SHA-256 of the SQL, recorded when applied and compared on every later start.
    pub fn checksum(&self) -> String {
        hex(&Sha256::digest(self.sql.as_bytes()))
    }
}

/// Every migration, in the order applied. A unit test checks that this lists exactly the files
/// of `migrations/postgres/`, so a new file cannot be forgotten here.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_tasks",
        sql: include_str!("../../../migrations/postgres/0001_tasks.sql"),
    },
    Migration {
        version: 2,
        name: "0002_idempotency_keys",
        sql: include_str!("../../../migrations/postgres/0002_idempotency_keys.sql"),
    },
    Migration {
        version: 3,
        name: "0003_search_folded",
        sql: include_str!("../../../migrations/postgres/0003_search_folded.sql"),
    },
    Migration {
        version: 4,
        name: "0004_list_index_carries_folded_texts",
        sql: include_str!("../../../migrations/postgres/0004_list_index_carries_folded_texts.sql"),
    },
    Migration {
        version: 5,
        name: "0005_status_counts_follow_rows",
        sql: include_str!("../../../migrations/postgres/0005_status_counts_follow_rows.sql"),
    },
    Migration {
        version: 6,
        name: "0006_list_index_carries_description_heads",
        sql: include_str!(
            "../../../migrations/postgres/0006_list_index_carries_description_heads.sql"
        ),
    },
];

/// The embedded migrations, in order.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

/// A hex digest of every embedded migration (names and contents). Two builds with the same
/// fingerprint create the same schema; tests name their template database after it.
pub fn schema_fingerprint() -> String {
    let mut h = Sha256::new();
    for m in MIGRATIONS {
        h.update(m.name.as_bytes());
        h.update([0]);
        h.update(m.sql.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The advisory lock key that serializes migrations: "tasklane" in ASCII. Advisory locks are
/// scoped to one database, so this excludes only other migrators of the same database.
const LOCK_KEY: i64 = 0x7461_736b_6c61_6e65;

const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS _tasklane_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("could not get a PostgreSQL connection to migrate")]
    Connect(#[source] PoolError),
    #[error("PostgreSQL error while migrating")]
    Database(#[source] tokio_postgres::Error),
    /// A migration failed; its transaction was rolled back, so nothing of it remains.
    #[error("migration {name} failed")]
    Failed {
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A file was edited after it was applied: the database's schema is not what this build's
    /// files say. Restore the file and put the change in a new migration.
    #[error(
        "migration {name} was changed after it was applied (recorded checksum {recorded}, \
         this build has {embedded}); restore it and add a new migration instead"
    )]
    Changed {
        name: &'static str,
        recorded: String,
        embedded: String,
    },
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Database(e)
    }
}

/// Applies every embedded migration the database has not recorded yet, each in its own
/// transaction, and returns how many it applied now (0 when the schema was already current).
///
/// It runs on one connection taken out of the pool for good, under `pg_advisory_lock`: a second
/// replica starting at the same time waits, then finds nothing left to do. Because the connection
/// is closed afterwards, whatever happens (an error, or the caller dropping this future on a
/// timeout), the lock and the session's settings never leak back into the pool. Migrations may
/// legitimately run long, so the connection has no statement timeout; a caller wanting a bound
/// wraps the call in `tokio::time::timeout`.
///
/// Migrations recorded by the database but unknown to this build (a newer release already ran
/// them, as in a rolling upgrade) are tolerated and logged.
///
/// # Errors
/// [`MigrateError::Changed`] when an applied file was edited since, and nothing is applied then;
/// [`MigrateError::Failed`] when a migration fails; `Connect`/`Database` when PostgreSQL does.
#[tracing::instrument(skip(pool))]
pub async fn migrate(pool: &Pool) -> Result<usize, MigrateError> {
    let object = pool.get().await.map_err(MigrateError::Connect)?;
    let mut client = Client::take(object);

    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    client.batch_execute(CREATE_LEDGER).await?;

    let recorded = client
        .query("SELECT version, checksum FROM _tasklane_migrations", &[])
        .await?;
    let mut applied = Vec::with_capacity(recorded.len());
    for row in &recorded {
        let version: i32 = row.try_get(0)?;
        let checksum: String = row.try_get(1)?;
        match MIGRATIONS.iter().find(|m| m.version == version) {
            Some(m) if m.checksum() != checksum => {
                return Err(MigrateError::Changed {
                    name: m.name,
                    recorded: checksum,
                    embedded: m.checksum(),
                });
            }
            Some(_) => applied.push(version),
            None => tracing::warn!(
                version,
                "the database has a migration this build does not know (a newer release?)"
            ),
        }
    }

    let mut count = 0;
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql)
            .await
            .map_err(|source| MigrateError::Failed {
                name: m.name,
                source,
            })?;
        tx.execute(
            "INSERT INTO _tasklane_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &m.checksum()],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(migration = m.name, "applied migration");
        count += 1;
    }

    // Dropping the connection would release the lock too; unlocking first lets a waiting replica
    // go on without waiting for the server to notice the closed socket.
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_list_exactly_the_files_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/postgres");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter_map(|n| n.strip_suffix(".sql").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|m| m.name.to_owned()).collect();
        assert_eq!(listed, files);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.name.get(..4), Some(format!("{:04}", m.version).as_str()));
            assert_eq!(
                usize::try_from(m.version).ok(),
                Some(i + 1),
                "no gaps, no repeats"
            );
        }
    }

    #[test]
    fn fingerprint_is_stable_hex() {
        let f = schema_fingerprint();
        assert_eq!(f.len(), 64);
        assert!(f.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(f, schema_fingerprint());
        assert_ne!(f, MIGRATIONS[0].checksum());
    }
}
