//! Port contract suites, written once and run against every adapter of a port, so that the
//! adapters cannot drift apart: [`repository_contract!`](crate::repository_contract) for
//! `TaskRepository` (PostgreSQL, SQLite, any fake) and [`cache_contract!`](crate::cache_contract)
//! for `TaskCache` (Redis, in-process).
//!
//! Each macro expands, in a test file, to a module of one `#[tokio::test]` per contract case, so
//! the test runner lists and reports every case on its own. The argument is an expression of a
//! future, evaluated afresh for every case, that yields a fresh, empty port and a guard kept
//! alive until the case ends (a `TestDb`, a temporary folder, a key-prefix cleanup, or `()`):
//!
//! ```ignore
//! tasklane_testkit::repository_contract!(async {
//!     let db = tasklane_testkit::db::TestDb::new().await;
//!     let repo: Arc<dyn TaskRepository> = Arc::new(db.repository().await);
//!     (repo, db)
//! });
//! ```
//!
//! The expression is expanded inside the generated module, which starts with `use super::*;`, so
//! it may use whatever the test file imports or defines. The test crate needs `tokio` among its
//! dependencies (for `#[tokio::test]`).
//!
//! The cases themselves are plain async functions in [`repository`] and [`cache`], each taking
//! the port; a case fails by panicking, like any test.

// The cases are tests: a failed expectation panics with a message saying what broke.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod cache;
pub mod repository;

/// Expands to a module `repository_contract` of `#[tokio::test]`s, one per case of
/// [`contract::repository`](crate::contract::repository), each on the `TaskRepository` that the
/// factory future yields as `(Arc<dyn TaskRepository>, guard)`.
#[macro_export]
macro_rules! repository_contract {
    ($factory:expr $(,)?) => {
        $crate::repository_contract!(@cases $factory;
            create_then_get_round_trips,
            texts_round_trip_exactly,
            get_of_an_unknown_id_is_not_found,
            ids_are_never_reused,
            list_is_newest_first,
            pages_cover_every_task_exactly_once,
            a_cursor_keeps_its_place_across_writes,
            status_filter_lists_and_pages_only_that_status,
            search_is_case_insensitive_unicode_aware_and_literal,
            search_combines_with_status_and_paging,
            search_follows_every_change_of_the_texts,
            update_changes_only_the_given_fields,
            updated_at_moves_strictly_on_every_update,
            update_preconditions,
            delete_and_its_preconditions,
            counts_follow_every_write,
            concurrent_creates_get_distinct_ids,
            concurrent_updates_with_the_same_version_succeed_once,
            concurrent_deletes_succeed_once,
            a_retried_create_returns_the_first_task_and_stores_nothing,
            a_key_reused_with_a_different_request_is_refused,
            different_keys_create_different_tasks,
            a_replay_returns_the_task_as_created_even_after_it_changed_or_went,
            an_expired_key_is_treated_as_new,
            purged_keys_are_forgotten,
            concurrent_creates_with_the_same_key_store_one_task,
            ping_answers,
        );
    };
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        #[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
        mod repository_contract {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    // The guard lives until the end of the test, after the case has dropped the port.
                    let (repo, _guard) = $factory.await;
                    $crate::contract::repository::$case(repo).await;
                }
            )+
        }
    };
}

/// Expands to a module `cache_contract` of `#[tokio::test]`s, one per case of
/// [`contract::cache`](crate::contract::cache), each on the `TaskCache` that the factory future
/// yields as `(Arc<dyn TaskCache>, guard)`, in a namespace no other test uses.
#[macro_export]
macro_rules! cache_contract {
    ($factory:expr $(,)?) => {
        $crate::cache_contract!(@cases $factory;
            a_fresh_cache_misses_then_has_a_generation,
            a_bump_on_a_fresh_cache_is_fine,
            a_stored_entry_hits_with_the_same_bytes,
            a_bump_invalidates_and_moves_the_generation,
            an_entry_stored_under_an_older_generation_never_hits,
            distinct_keys_do_not_collide,
            ping_answers,
            a_bump_replaces_an_entry_holding_the_expected_bytes,
            a_bump_refuses_a_replacement_of_anything_but_the_expected_entry,
        );
    };
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        #[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
        mod cache_contract {
            #[allow(unused_imports)]
            use super::*;

            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (cache, _guard) = $factory.await;
                    $crate::contract::cache::$case(cache).await;
                }
            )+
        }
    };
}
