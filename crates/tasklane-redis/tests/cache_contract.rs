//! The `TaskCache` contract on Redis: each case on the machine's shared Redis, under a key
//! prefix of its own that is deleted afterwards.

use std::sync::Arc;
use tasklane_domain::TaskCache;
use tasklane_redis::{RedisSettings, RedisTaskCache};
use tasklane_testkit::redis::{delete_prefix, shared_redis_url, unique_prefix};

/// Deletes the prefix's keys when the case ends. The generation key has no TTL, so without this
/// every run would leave keys behind on the shared server.
struct PrefixCleanup(String);

impl Drop for PrefixCleanup {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime, where blocking on a future would stall it: the
        // cleanup gets a thread and a runtime of its own.
        let prefix = self.0.clone();
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(delete_prefix(&shared_redis_url(), &prefix))
                .map_err(|e| e.to_string())
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not delete the keys under {}: {e}", self.0),
            Err(_) => eprintln!("deleting the keys under {} panicked", self.0),
        }
    }
}

tasklane_testkit::cache_contract!(async {
    let prefix = unique_prefix();
    let cache = RedisTaskCache::new(RedisSettings {
        url: shared_redis_url(),
        key_prefix: prefix.clone(),
        ..RedisSettings::default()
    })
    .unwrap_or_else(|e| panic!("the Redis settings are invalid: {e:?}"));
    let cache: Arc<dyn TaskCache> = Arc::new(cache);
    (cache, PrefixCleanup(prefix))
});
