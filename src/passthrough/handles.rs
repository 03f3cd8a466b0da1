//! Open files and directories.

use rustc_hash::FxHashMap as HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::inode_store::InodeData;
use super::platform::DirStream;

/// What a handle holds.
pub(crate) enum HandleKind {
    /// An open regular file (I/O uses `pread`/`pwrite`, so it needs no lock).
    File(File),
    /// A directory listing (seek + read, so it is locked per handle).
    Dir(Mutex<DirStream>),
}

/// One open handle.
pub(crate) struct Handle {
    pub inode: Arc<InodeData>,
    pub kind: HandleKind,
    /// Host open flags (`O_APPEND` matters for quota accounting).
    pub flags: i32,
}

/// Handle number → handle. The lock is held only to find the handle, never across I/O.
pub(crate) struct HandleTable {
    map: RwLock<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
    limit: usize,
}

impl HandleTable {
    pub fn new(limit: usize) -> Self {
        HandleTable {
            map: RwLock::new(HashMap::default()),
            next: AtomicU64::new(1),
            limit,
        }
    }

    /// `ENFILE` when the table is full; checked before a handle's file is opened.
    pub fn check_room(&self) -> std::io::Result<()> {
        if self.map.read().len() >= self.limit {
            Err(std::io::Error::from_raw_os_error(libc::ENFILE))
        } else {
            Ok(())
        }
    }

    pub fn insert(&self, h: Handle) -> u64 {
        h.inode.open_handles.fetch_add(1, Ordering::Relaxed);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.write().insert(id, Arc::new(h));
        id
    }

    pub fn get(&self, id: u64) -> Option<Arc<Handle>> {
        self.map.read().get(&id).cloned()
    }

    pub fn remove(&self, id: u64) -> Option<Arc<Handle>> {
        let h = self.map.write().remove(&id)?;
        h.inode.open_handles.fetch_sub(1, Ordering::Relaxed);
        Some(h)
    }

    /// Every handle with its number, and the next number (for a state snapshot).
    pub fn snapshot(&self) -> (Vec<(u64, Arc<Handle>)>, u64) {
        let map = self.map.read();
        let mut v: Vec<_> = map.iter().map(|(k, h)| (*k, h.clone())).collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        (v, self.next.load(Ordering::Relaxed))
    }

    /// Installs restored handles under their numbers; later handles are numbered from
    /// `next` on. Called on an empty table.
    pub fn restore(&self, handles: Vec<(u64, Handle)>, next: u64) {
        let mut map = self.map.write();
        for (id, h) in handles {
            h.inode.open_handles.fetch_add(1, Ordering::Relaxed);
            map.insert(id, Arc::new(h));
        }
        let next = self.next.load(Ordering::Relaxed).max(next);
        self.next.store(next, Ordering::Relaxed);
    }

    /// Most handles open at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    /// Removes every handle and returns them, so they are closed outside the lock.
    pub fn take_all(&self) -> HashMap<u64, Arc<Handle>> {
        let all = std::mem::take(&mut *self.map.write());
        for h in all.values() {
            h.inode.open_handles.fetch_sub(1, Ordering::Relaxed);
        }
        all
    }
}
