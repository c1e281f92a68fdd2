//! Schema migrations: the SQL files of `migrations/sqlite/`, embedded in the binary and applied
//! in order, once each, inside one `BEGIN IMMEDIATE` transaction, so that two processes opening
//! the same file at once cannot both apply them.

use crate::errors::SqliteError;
use rusqlite::{Connection, TransactionBehavior};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// One embedded migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The file's number: migrations are applied in increasing order.
    pub version: i64,
    /// The file name without `.sql`, e.g. `0001_tasks`.
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// The hex SHA-256 of the SQL, recorded when applied and compared on every later start.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

/// Every migration, in the order applied. A unit test checks that this lists exactly the files
/// of `migrations/sqlite/`, so a new file cannot be forgotten here.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_tasks",
        sql: include_str!("../../../migrations/sqlite/0001_tasks.sql"),
    },
    Migration {
        version: 2,
        name: "0002_idempotency_keys",
        sql: include_str!("../../../migrations/sqlite/0002_idempotency_keys.sql"),
    },
    Migration {
        version: 3,
        name: "0003_search_folded",
        sql: include_str!("../../../migrations/sqlite/0003_search_folded.sql"),
    },
    Migration {
        version: 4,
        name: "0004_list_index_carries_folded_texts",
        sql: include_str!("../../../migrations/sqlite/0004_list_index_carries_folded_texts.sql"),
    },
    Migration {
        version: 5,
        name: "0005_status_counts_follow_rows",
        sql: include_str!("../../../migrations/sqlite/0005_status_counts_follow_rows.sql"),
    },
    Migration {
        version: 6,
        name: "0006_list_index_carries_description_heads",
        sql: include_str!(
            "../../../migrations/sqlite/0006_list_index_carries_description_heads.sql"
        ),
    },
];

/// The embedded migrations, in order.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS _tasklane_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    -- Microseconds since the Unix epoch, UTC.
    applied_at INTEGER NOT NULL
) STRICT";

/// Applies every embedded migration the database has not recorded yet and returns how many it
/// applied now (0 when the schema was already current).
///
/// Everything happens in one `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock before
/// reading the ledger (waiting up to the connection's busy timeout for another process that
/// holds it), so a second process opening the same file waits, then finds nothing left to do.
/// A failure rolls back the whole run, so the schema is never half-migrated.
///
/// Migrations recorded by the database but unknown to this build (a newer release already ran
/// them) are tolerated and logged, as on PostgreSQL.
pub(crate) fn apply(conn: &mut Connection) -> Result<usize, SqliteError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(CREATE_LEDGER)?;

    let recorded: Vec<(i64, String)> = tx
        .prepare("SELECT version, checksum FROM _tasklane_migrations")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut applied = Vec::with_capacity(recorded.len());
    for (version, checksum) in recorded {
        match MIGRATIONS.iter().find(|m| m.version == version) {
            Some(m) if m.checksum() != checksum => {
                return Err(SqliteError::MigrationChanged {
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
        tx.execute_batch(m.sql)
            .map_err(|source| SqliteError::MigrationFailed {
                name: m.name,
                source,
            })?;
        tx.execute(
            "INSERT INTO _tasklane_migrations (version, name, checksum, applied_at) \
             VALUES (?1, ?2, ?3, ?4)",
            (
                m.version,
                m.name,
                m.checksum(),
                chrono::Utc::now().timestamp_micros(),
            ),
        )?;
        count += 1;
    }
    tx.commit()?;
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tracing::info!(migration = m.name, "applied migration");
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_list_exactly_the_files_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/sqlite");
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
    fn the_postgres_and_sqlite_migrations_come_in_pairs() {
        // The two stores must not drift apart: every schema change is made to both.
        let names = |dir: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .filter(|n| n.ends_with(".sql"))
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
        let sqlite = names(&format!("{root}/sqlite"));
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, names(&format!("{root}/postgres")));
    }

    #[test]
    fn applies_once_then_finds_nothing_to_do() -> Result<(), SqliteError> {
        let mut conn = Connection::open_in_memory()?;
        assert_eq!(apply(&mut conn)?, MIGRATIONS.len());
        assert_eq!(apply(&mut conn)?, 0);
        let n: i64 = conn.query_row("SELECT count(*) FROM _tasklane_migrations", [], |r| {
            r.get(0)
        })?;
        assert_eq!(usize::try_from(n).ok(), Some(MIGRATIONS.len()));
        Ok(())
    }

    #[test]
    fn an_edited_applied_migration_is_refused() -> Result<(), SqliteError> {
        let mut conn = Connection::open_in_memory()?;
        apply(&mut conn)?;
        conn.execute(
            "UPDATE _tasklane_migrations SET checksum = 'x' WHERE version = 1",
            [],
        )?;
        assert!(matches!(
            apply(&mut conn),
            Err(SqliteError::MigrationChanged {
                name: "0001_tasks",
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn an_unknown_newer_migration_is_tolerated() -> Result<(), SqliteError> {
        let mut conn = Connection::open_in_memory()?;
        apply(&mut conn)?;
        conn.execute(
            "INSERT INTO _tasklane_migrations VALUES (9999, '9999_future', 'abc', 0)",
            [],
        )?;
        assert_eq!(apply(&mut conn)?, 0);
        Ok(())
    }
}
