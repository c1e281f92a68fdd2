//! The `TaskCache` contract on Redis: each case on the machine's shared Redis, under a key
//! prefix of its own that is deleted afterwards.

use std::sync::Arc;
use tasklane_domain::TaskCache;
use tasklane_redis::{RedisSettings, RedisTaskCache};
use tasklane_testkit::redis::{shared_redis_url, SharedPrefix};

tasklane_testkit::cache_contract!(async {
    let prefix = SharedPrefix::new();
    let cache = RedisTaskCache::new(RedisSettings {
        url: shared_redis_url(),
        key_prefix: prefix.to_string(),
        ..RedisSettings::default()
    })
    .unwrap_or_else(|e| panic!("the Redis settings are invalid: {e:?}"));
    let cache: Arc<dyn TaskCache> = Arc::new(cache);
    (cache, prefix)
});
