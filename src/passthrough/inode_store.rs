//! Inode table: guest inode numbers ↔ host identities, lookup counts, paths for
//! re-resolution and the cached ownership override.

use rustc_hash::FxHashMap as HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::fd_cache::SharedFd;
use super::identity::Fingerprint;
use super::override_stat::OverrideStat;
use super::platform::HostStat;
use super::quota::OrphanCharge;

/// Host identity of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct InodeKey {
    pub dev: u64,
    pub ino: u64,
    pub mnt_id: u64,
}

/// The ownership override as last read from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Override {
    /// No xattr: default owner and host mode.
    Absent,
    /// A valid override.
    Present(OverrideStat),
    /// The xattr is malformed: every attribute request fails with `EIO`.
    Malformed,
}

/// Where an inode was last seen: parent inode and name. `None` for the root and for inodes
/// whose descriptor is pinned because their last known name went away.
pub(crate) type InodePath = Option<(Arc<InodeData>, CString)>;

/// A fresh [`InodeData::serial`].
pub(crate) fn next_serial() -> u64 {
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// One inode the guest knows about.
pub(crate) struct InodeData {
    /// Guest inode number (FUSE node id). Node ids are host inode numbers where free, so a
    /// forgotten inode's id can come back for another file.
    pub id: u64,
    /// Never reused for another inode of this process: the key of the descriptor cache, so
    /// a descriptor cached for a forgotten inode can never be taken for the new inode that
    /// got its node id.
    pub serial: u64,
    /// Host identity.
    pub key: InodeKey,
    /// Tells the host file from a later one with the same `key` (see `identity.rs`).
    pub fp: Fingerprint,
    /// `S_IFMT` bits of the host object (fixed for its lifetime).
    pub host_type: u32,
    /// Outstanding lookups.
    pub lookups: AtomicU64,
    /// Path for re-resolution after the descriptor was evicted from the cache.
    pub path: Mutex<InodePath>,
    /// A descriptor that is never evicted: the root, and removed files the guest still has
    /// open or that have other names (at most the pin budget of them, see `pin`).
    pub pinned: Mutex<Option<SharedFd>>,
    /// Open guest handles of this inode (each holds its own descriptor).
    pub open_handles: AtomicU64,
    /// Those of `open_handles` open for writing.
    pub writers: AtomicU64,
    /// The last known host attributes of an inode whose name the guest removed and that
    /// keeps no descriptor (removed directories, files without open handles): `getattr`
    /// without a handle is served from them, everything else answers `ENOENT`.
    pub removed: Mutex<Option<HostStat>>,
    /// Cached ownership override; also serialises read-modify-write of it.
    pub meta: Mutex<Override>,
    /// With a quota: held shared by writes that do not change the file's size, exclusively
    /// by everything that may (extending writes, truncation, fallocate), so measuring the
    /// size, charging and changing it is one step.
    pub resize: RwLock<()>,
    /// With a quota: the charge of a file the guest unlinked while it had it open, credited
    /// when the last reference to this inode (lookup or open handle) goes.
    pub orphan: Mutex<Option<OrphanCharge>>,
    /// What the guest's last open saw of the host file (see `page_cache.rs`).
    pub cache_stamp: Mutex<Option<super::page_cache::Stamp>>,
}

/// Start of the node ids used when the host inode number is taken or unusable.
const PRIVATE_IDS: u64 = 1 << 62;

struct Inner {
    by_id: HashMap<u64, Arc<InodeData>>,
    by_key: HashMap<InodeKey, u64>,
}

/// All inodes with a non-zero lookup count.
pub(crate) struct InodeStore {
    inner: RwLock<Inner>,
    next: AtomicU64,
}

impl InodeStore {
    pub fn new(root: Arc<InodeData>) -> Self {
        let mut by_id = HashMap::default();
        let mut by_key = HashMap::default();
        by_key.insert(root.key, root.id);
        let next = PRIVATE_IDS;
        by_id.insert(root.id, root);
        InodeStore {
            inner: RwLock::new(Inner { by_id, by_key }),
            next: AtomicU64::new(next),
        }
    }

    pub fn get(&self, id: u64) -> Option<Arc<InodeData>> {
        self.inner.read().by_id.get(&id).cloned()
    }

    /// The inode with host identity `key`, without touching its lookup count.
    pub fn get_by_key(&self, key: &InodeKey) -> Option<Arc<InodeData>> {
        let g = self.inner.read();
        g.by_key.get(key).and_then(|id| g.by_id.get(id)).cloned()
    }

    /// Adds one lookup to `inode` if it is still the inode of `key`.
    pub fn add_lookup_if_current(&self, key: &InodeKey, inode: &Arc<InodeData>) -> bool {
        let g = self.inner.read();
        // The same object, not merely the same number: a forgotten inode's number may
        // already belong to a new inode of the same file.
        let current = g.by_key.get(key) == Some(&inode.id)
            && g.by_id
                .get(&inode.id)
                .is_some_and(|d| Arc::ptr_eq(d, inode));
        if current {
            inode.lookups.fetch_add(1, Ordering::Relaxed);
        }
        current
    }

    /// Inserts a new inode for `key` built by `make(id)`, with one lookup, and returns it
    /// with `true`. If `key` already belongs to an inode other than `stale`, that one gets a
    /// lookup and is returned with `false` instead (another request registered the same
    /// file first). `stale` (a previous file whose inode number the host reused) keeps its
    /// node id until the guest forgets it but is no longer found by `key`.
    ///
    /// A new inode's number is the host inode number when that is free (so the guest's
    /// `st_ino`, directory entries and FUSE node ids agree and stay stable), otherwise one
    /// from a private range above 2^62.
    pub fn insert(
        &self,
        key: InodeKey,
        stale: Option<&Arc<InodeData>>,
        make: impl FnOnce(u64) -> InodeData,
    ) -> (Arc<InodeData>, bool) {
        let mut g = self.inner.write();
        if let Some(&id) = g.by_key.get(&key) {
            if stale
                .is_none_or(|s| s.id != id || !g.by_id.get(&id).is_some_and(|d| Arc::ptr_eq(d, s)))
            {
                if let Some(d) = g.by_id.get(&id) {
                    d.lookups.fetch_add(1, Ordering::Relaxed);
                    return (d.clone(), false);
                }
            }
            g.by_key.remove(&key);
        }
        let mut id = key.ino;
        if id <= fuse_backend_rs::api::filesystem::ROOT_ID
            || id >= PRIVATE_IDS
            || g.by_id.contains_key(&id)
        {
            loop {
                id = self.next.fetch_add(1, Ordering::Relaxed);
                if !g.by_id.contains_key(&id) {
                    break;
                }
            }
        }
        let d = Arc::new(make(id));
        d.lookups.store(1, Ordering::Relaxed);
        g.by_key.insert(key, id);
        g.by_id.insert(id, d.clone());
        (d, true)
    }

    /// Subtracts `count` lookups; returns the inode if it was removed.
    pub fn forget(&self, id: u64, count: u64) -> Option<Arc<InodeData>> {
        let mut g = self.inner.write();
        let d = g.by_id.get(&id)?;
        let cur = d.lookups.load(Ordering::Relaxed);
        let new = cur.saturating_sub(count);
        d.lookups.store(new, Ordering::Relaxed);
        if new > 0 || id == fuse_backend_rs::api::filesystem::ROOT_ID {
            return None;
        }
        let d = g.by_id.remove(&id)?;
        if g.by_key.get(&d.key) == Some(&id) {
            g.by_key.remove(&d.key);
        }
        Some(d)
    }

    /// Removes every inode but the root (the guest let go of everything) and returns them.
    pub fn drain(&self) -> Vec<Arc<InodeData>> {
        let root = fuse_backend_rs::api::filesystem::ROOT_ID;
        let mut g = self.inner.write();
        let Inner { by_id, by_key } = &mut *g;
        by_key.retain(|_, id| *id == root);
        let mut gone = Vec::with_capacity(by_id.len().saturating_sub(1));
        by_id.retain(|id, d| {
            if *id == root {
                true
            } else {
                gone.push(d.clone());
                false
            }
        });
        gone
    }

    /// Every inode the guest holds, the root included (for a state snapshot).
    pub fn all(&self) -> Vec<Arc<InodeData>> {
        self.inner.read().by_id.values().cloned().collect()
    }

    /// The next private node id (for a state snapshot).
    pub fn next_private(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Installs restored inodes (the root's entry is kept), keeping their node ids. Only
    /// inodes whose host file was found again (`by_key`) are found by identity; the others
    /// keep their number and answer `ESTALE`. Called on a table holding only the root.
    pub fn restore(&self, inodes: Vec<(Arc<InodeData>, bool)>, next_private: u64) {
        let root = fuse_backend_rs::api::filesystem::ROOT_ID;
        let mut g = self.inner.write();
        for (d, found) in inodes {
            if d.id == root {
                continue;
            }
            if found && !g.by_key.contains_key(&d.key) {
                g.by_key.insert(d.key, d.id);
            }
            g.by_id.insert(d.id, d);
        }
        let next = self.next.load(Ordering::Relaxed).max(next_private);
        self.next.store(next, Ordering::Relaxed);
    }

    /// Number of inodes known (including the root).
    pub fn len(&self) -> usize {
        self.inner.read().by_id.len()
    }
}
