//! The `TaskCache` contract on the in-process cache of the embedded mode: each case on a cache
//! of its own.

use std::sync::Arc;
use tasklane_app::memory_cache::{MemoryCacheSettings, MemoryTaskCache};
use tasklane_domain::TaskCache;

tasklane_testkit::cache_contract!(async {
    let cache: Arc<dyn TaskCache> = Arc::new(MemoryTaskCache::new(MemoryCacheSettings::default()));
    (cache, ())
});
