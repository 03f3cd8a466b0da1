//! A bounded least-recently-used cache of inode descriptors.
//!
//! Inodes do not own descriptors: a lookup puts the inode's descriptor here, and an inode
//! whose descriptor was evicted is re-resolved from its parent (see `resolve.rs`). Callers
//! get an `Arc`, so an evicted descriptor stays open until the operation using it finishes
//! and is closed outside the cache lock.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

/// Shared, reference-counted host descriptor.
pub(crate) type SharedFd = Arc<OwnedFd>;

/// Shards of a large cache: lookups of different inodes rarely share a lock.
const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    map: FxHashMap<u64, (SharedFd, u64)>,
    order: BTreeMap<u64, u64>,
    tick: u64,
}

/// LRU map from an inode's serial (never reused, unlike node ids) to its descriptor, holding
/// at most `capacity` entries.
///
/// The cache is split into shards by serial, each an exact LRU of `capacity / shards`
/// entries (one shard below 64 entries), so the total never exceeds `capacity` and no single
/// lock serialises every lookup.
pub(crate) struct FdCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

impl FdCache {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let n = if capacity >= 4 * SHARDS { SHARDS } else { 1 };
        FdCache {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity / n,
        }
    }

    fn shard(&self, ino: u64) -> &Mutex<Shard> {
        // Fibonacci hashing spreads sequential inode numbers over the shards.
        let h = ino.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        &self.shards[h as usize % self.shards.len()]
    }

    /// The cached descriptor of `ino`, marking it recently used.
    pub fn get(&self, ino: u64) -> Option<SharedFd> {
        let mut g = self.shard(ino).lock();
        let Shard { map, order, tick } = &mut *g;
        let (fd, stamp) = map.get_mut(&ino)?;
        order.remove(stamp);
        *tick += 1;
        *stamp = *tick;
        order.insert(*tick, ino);
        Some(fd.clone())
    }

    /// Caches `fd` for `ino`, evicting the least recently used entries beyond capacity.
    pub fn insert(&self, ino: u64, fd: SharedFd) {
        let mut evicted = Vec::new();
        {
            let mut g = self.shard(ino).lock();
            let Shard { map, order, tick } = &mut *g;
            *tick += 1;
            if let Some((old, stamp)) = map.insert(ino, (fd, *tick)) {
                order.remove(&stamp);
                evicted.push(old);
            }
            order.insert(*tick, ino);
            while map.len() > self.per_shard {
                let Some((_, victim)) = order.pop_first() else {
                    break;
                };
                if let Some((old, _)) = map.remove(&victim) {
                    evicted.push(old);
                }
            }
        }
        // Closed outside the lock.
        drop(evicted);
    }

    /// Drops the entry of `ino`.
    pub fn remove(&self, ino: u64) -> Option<SharedFd> {
        let mut g = self.shard(ino).lock();
        let (fd, stamp) = g.map.remove(&ino)?;
        g.order.remove(&stamp);
        Some(fd)
    }

    /// Evicts up to half of the entries of every shard (after `EMFILE`/`ENFILE`).
    pub fn shrink(&self) {
        for shard in self.shards.iter() {
            let mut evicted = Vec::new();
            {
                let mut g = shard.lock();
                let n = g.map.len().div_ceil(2);
                for _ in 0..n {
                    let Some((_, victim)) = g.order.pop_first() else {
                        break;
                    };
                    if let Some((old, _)) = g.map.remove(&victim) {
                        evicted.push(old);
                    }
                }
            }
            drop(evicted);
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let old = std::mem::take(&mut *shard.lock());
            // Closed outside the lock.
            drop(old);
        }
    }

    /// Number of cached descriptors.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn fd() -> SharedFd {
        let f = std::fs::File::open("/").expect("open /");
        Arc::new(f.as_fd().try_clone_to_owned().expect("dup"))
    }

    #[test]
    fn evicts_least_recently_used() {
        let c = FdCache::new(2);
        c.insert(1, fd());
        c.insert(2, fd());
        assert!(c.get(1).is_some());
        c.insert(3, fd());
        assert!(c.get(2).is_none());
        assert!(c.get(1).is_some());
        assert!(c.get(3).is_some());
        assert_eq!(c.len(), 2);
        c.shrink();
        assert_eq!(c.len(), 1);
        assert!(c.remove(3).is_some() || c.remove(1).is_some());
    }

    #[test]
    fn sharded_cache_never_exceeds_capacity() {
        let c = FdCache::new(100);
        let f = fd();
        for i in 0..10_000u64 {
            c.insert(i, f.clone());
            assert!(c.len() <= 100);
        }
        // Every shard is full: the bound is reached, not undershot by much.
        assert!(c.len() > 90, "{}", c.len());
        // The most recent insert is always cached.
        assert!(c.get(9_999).is_some());
    }
}
