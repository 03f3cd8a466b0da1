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

impl Handle {
    /// Counts this handle in its inode's `open_handles` (and `writers`) by `delta`.
    fn count(&self, delta: i64) {
        let add = |c: &std::sync::atomic::AtomicU64| {
            if delta > 0 {
                c.fetch_add(1, Ordering::Relaxed);
            } else {
                c.fetch_sub(1, Ordering::Relaxed);
            }
        };
        add(&self.inode.open_handles);
        if matches!(self.kind, HandleKind::File(_))
            && self.flags & libc::O_ACCMODE != libc::O_RDONLY
        {
            add(&self.inode.writers);
        }
    }
}

/// Handle number → handle. The lock is held only to find the handle, never across I/O.
pub(crate) struct HandleTable {
    map: RwLock<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
    limit: usize,
    /// Handles of a restored state whose file was not found again: number → node id. They
    /// answer `ESTALE` until the guest releases them.
    dead: Mutex<HashMap<u64, u64>>,
}

impl HandleTable {
    pub fn new(limit: usize) -> Self {
        HandleTable {
            map: RwLock::new(HashMap::default()),
            next: AtomicU64::new(1),
            limit,
            dead: Mutex::new(HashMap::default()),
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
        h.count(1);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.write().insert(id, Arc::new(h));
        id
    }

    pub fn get(&self, id: u64) -> Option<Arc<Handle>> {
        self.map.read().get(&id).cloned()
    }

    pub fn remove(&self, id: u64) -> Option<Arc<Handle>> {
        let h = self.map.write().remove(&id)?;
        h.count(-1);
        Some(h)
    }

    /// Every handle with its number, and the next number (for a state snapshot).
    pub fn snapshot(&self) -> (Vec<(u64, Arc<Handle>)>, u64) {
        let map = self.map.read();
        let mut v: Vec<_> = map.iter().map(|(k, h)| (*k, h.clone())).collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        (v, self.next.load(Ordering::Relaxed))
    }

    /// Installs restored handles under their numbers, and the numbers of handles that could
    /// not be re-opened (`dead`: number, node id); later handles are numbered from `next` on.
    /// Called on an empty table.
    pub fn restore(&self, handles: Vec<(u64, Handle)>, dead: Vec<(u64, u64)>, next: u64) {
        *self.dead.lock() = dead.into_iter().collect();
        let mut map = self.map.write();
        for (id, h) in handles {
            h.count(1);
            map.insert(id, Arc::new(h));
        }
        let next = self.next.load(Ordering::Relaxed).max(next);
        self.next.store(next, Ordering::Relaxed);
    }

    /// The error for handle `fh` of node `inode` that is not in the table: `ESTALE` for a
    /// restored handle whose file was not found again, `EBADF` otherwise.
    pub fn missing(&self, fh: u64, inode: u64) -> std::io::Error {
        let code = if self.dead.lock().get(&fh) == Some(&inode) {
            libc::ESTALE
        } else {
            libc::EBADF
        };
        std::io::Error::from_raw_os_error(code)
    }

    /// Releases a dead handle (see [`missing`](Self::missing)); `true` if it was one.
    pub fn release_dead(&self, fh: u64, inode: u64) -> bool {
        let mut dead = self.dead.lock();
        if dead.get(&fh) == Some(&inode) {
            dead.remove(&fh);
            true
        } else {
            false
        }
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
        self.dead.lock().clear();
        let all = std::mem::take(&mut *self.map.write());
        for h in all.values() {
            h.count(-1);
        }
        all
    }
}
