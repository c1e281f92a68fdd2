//! The `TaskRepository` contract on PostgreSQL: each case in a database of its own, cloned from
//! the migrated template and dropped afterwards.

use std::sync::Arc;
use tasklane_domain::TaskRepository;
use tasklane_testkit::db::TestDb;

tasklane_testkit::repository_contract!(async {
    let db = TestDb::new().await;
    let repo: Arc<dyn TaskRepository> = Arc::new(db.repository().await);
    (repo, db)
});
