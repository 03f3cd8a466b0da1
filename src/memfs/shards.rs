//! A sharded table of values that carry their own `u64` key, so unrelated inodes and handles
//! never contend on one lock.
//!
//! Values are stored without a separate key (`Keyed::key` reads it from the value), which
//! saves 8 bytes per inode over a `HashMap<u64, Arc<Node>>`.

use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;
use parking_lot::RwLock;
use rustc_hash::FxBuildHasher;

const SHARDS: usize = 64;

/// A value stored under its own key (inode or handle number, assigned by MemFs itself).
pub(crate) trait Keyed: Clone {
    /// The value's key.
    fn key(&self) -> u64;
}

fn hash(key: u64) -> u64 {
    let mut h = FxBuildHasher.build_hasher();
    h.write_u64(key);
    h.finish()
}

/// `u64 → T` split over [`SHARDS`] independently locked hash tables.
pub(crate) struct ShardedMap<T> {
    shards: Box<[RwLock<HashTable<T>>]>,
}

impl<T: Keyed> ShardedMap<T> {
    pub(crate) fn new() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
        }
    }

    fn shard(&self, key: u64) -> &RwLock<HashTable<T>> {
        // Keys are sequential counters, so the low bits spread them evenly.
        &self.shards[(key as usize) % SHARDS]
    }

    pub(crate) fn get(&self, key: u64) -> Option<T> {
        self.shard(key)
            .read()
            .find(hash(key), |v| v.key() == key)
            .cloned()
    }

    /// Inserts `value` under its key, replacing an entry with the same key.
    pub(crate) fn insert(&self, value: T) {
        let key = value.key();
        let mut shard = self.shard(key).write();
        match shard.find_mut(hash(key), |v| v.key() == key) {
            Some(slot) => *slot = value,
            None => {
                shard.insert_unique(hash(key), value, |v| hash(v.key()));
            }
        }
    }

    /// Removes `key` only if `pred` holds for its value, deciding under the shard's lock.
    pub(crate) fn remove_if(&self, key: u64, pred: impl FnOnce(&T) -> bool) -> Option<T> {
        let mut shard = self.shard(key).write();
        let entry = shard.find_entry(hash(key), |v| v.key() == key).ok()?;
        if !pred(entry.get()) {
            return None;
        }
        let value = entry.remove().0;
        // Give back a table that emptied out (its slots are part of what an inode is
        // charged); halving at a quarter full keeps this amortised O(1).
        if shard.capacity() > 64 && shard.len() * 4 < shard.capacity() {
            let len = shard.len();
            shard.shrink_to(len * 2, |v| hash(v.key()));
        }
        Some(value)
    }

    /// Removes and returns every value.
    pub(crate) fn drain(&self) -> Vec<T> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(std::mem::take(&mut *shard.write()));
        }
        out
    }

    /// Replaces every value with `values` at once (all shards locked), returning the old ones.
    pub(crate) fn replace_all(&self, values: Vec<T>) -> Vec<T> {
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.write()).collect();
        let mut old = Vec::new();
        for g in guards.iter_mut() {
            old.extend(std::mem::take(&mut **g));
        }
        for v in values {
            let key = v.key();
            let g = &mut guards[(key as usize) % SHARDS];
            match g.find_mut(hash(key), |x| x.key() == key) {
                Some(slot) => *slot = v,
                None => {
                    g.insert_unique(hash(key), v, |x| hash(x.key()));
                }
            }
        }
        old
    }

    /// A snapshot of every value.
    pub(crate) fn values(&self) -> Vec<T> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.read().iter().cloned());
        }
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}
