//! A sharded `u64`-keyed map, so unrelated inodes and handles never contend on one lock.

use rustc_hash::FxHashMap as HashMap;

use parking_lot::RwLock;

const SHARDS: usize = 64;

/// `u64 → T` split over [`SHARDS`] independently locked hash maps.
pub(crate) struct ShardedMap<T> {
    shards: Box<[RwLock<HashMap<u64, T>>]>,
}

impl<T: Clone> ShardedMap<T> {
    pub(crate) fn new() -> Self {
        ShardedMap {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
        }
    }

    fn shard(&self, key: u64) -> &RwLock<HashMap<u64, T>> {
        // Keys are sequential counters, so the low bits spread them evenly.
        &self.shards[(key as usize) % SHARDS]
    }

    pub(crate) fn get(&self, key: u64) -> Option<T> {
        self.shard(key).read().get(&key).cloned()
    }

    pub(crate) fn insert(&self, key: u64, value: T) {
        self.shard(key).write().insert(key, value);
    }

    pub(crate) fn remove(&self, key: u64) -> Option<T> {
        self.shard(key).write().remove(&key)
    }

    /// Removes `key` only if `pred` holds for its value, deciding under the shard's lock.
    pub(crate) fn remove_if(&self, key: u64, pred: impl FnOnce(&T) -> bool) -> Option<T> {
        let mut shard = self.shard(key).write();
        if shard.get(&key).is_some_and(pred) {
            shard.remove(&key)
        } else {
            None
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}
