//! The `TaskRepository` contract on SQLite: each case on a database file of its own, in a
//! temporary folder removed afterwards.

mod common;

use std::sync::Arc;
use tasklane_domain::TaskRepository;

tasklane_testkit::repository_contract!(async {
    let dir = common::TempDir::new();
    let repo = tasklane_sqlite::open(&common::settings(dir.path()))
        .await
        .unwrap_or_else(|e| panic!("could not open the test database: {e:?}"));
    (Arc::new(repo) as Arc<dyn TaskRepository>, dir)
});
