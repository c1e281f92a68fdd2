//! Helpers shared by the SQLite adapter's test files.

#![allow(dead_code)] // Each test file uses a different part.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tasklane_sqlite::SqliteSettings;

/// A folder of its own under the system's temporary folder, removed with everything in it when
/// dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        Self(std::env::temp_dir().join(format!(
            "tasklane-sqlite-test-{}",
            uuid::Uuid::new_v4().simple()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings for a database in `dir`, in a subfolder that does not exist yet (`open` creates
/// it), with a busy timeout generous enough for a loaded two-core machine.
pub fn settings(dir: &Path) -> SqliteSettings {
    SqliteSettings {
        path: dir.join("data").join("tasklane.db"),
        busy_timeout: Duration::from_secs(10),
        read_connections: 2,
    }
}
