//! Lookup, inode registration, descriptor re-resolution and guest attributes.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::fd_cache::SharedFd;
use super::identity::{self, Fingerprint};
use super::inode_store::{InodeData, InodeKey, Override};
use super::override_stat::{OverrideStat, OVERRIDE_KEY};
use super::platform::{self, HostStat};
use super::{is_internal, PassthroughFs};
use crate::{errno, stat64, Entry};

pub(crate) use crate::abi::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

#[cfg(target_os = "linux")]
pub(crate) const ENOXATTR: i32 = libc::ENODATA;
#[cfg(not(target_os = "linux"))]
pub(crate) const ENOXATTR: i32 = libc::ENOATTR;

/// Reads the override xattr of a host file or directory (`host_type` = its `S_IFMT`).
pub(crate) fn read_override(fd: RawFd, host_type: u32) -> io::Result<Override> {
    if host_type != S_IFREG && host_type != S_IFDIR {
        return Ok(Override::Absent);
    }
    let mut buf = [0u8; 128];
    match platform::get_xattr(fd, OVERRIDE_KEY, &mut buf) {
        Ok(n) => Ok(match OverrideStat::parse(&buf[..n], host_type) {
            Ok(o) => Override::Present(o),
            Err(_) => Override::Malformed,
        }),
        Err(e) => match e.raw_os_error() {
            Some(c) if c == ENOXATTR => Ok(Override::Absent),
            Some(libc::ERANGE) => Ok(Override::Malformed),
            Some(libc::ENOTSUP | libc::EACCES | libc::EPERM) => Ok(Override::Absent),
            _ => Err(e),
        },
    }
}

/// Guest type of a directory entry from its override xattr (`DT_UNKNOWN` if unreadable).
pub(crate) fn guest_dtype_at(dir: RawFd, name: &[u8]) -> u32 {
    let mut buf = [0u8; 128];
    match platform::get_xattr_at(dir, name, OVERRIDE_KEY, &mut buf) {
        Ok(n) => match OverrideStat::parse(&buf[..n], S_IFREG) {
            Ok(o) => o.file_type() >> 12,
            Err(_) => libc::DT_UNKNOWN as u32,
        },
        Err(e) if e.raw_os_error() == Some(ENOXATTR) => libc::DT_REG as u32,
        Err(_) => libc::DT_UNKNOWN as u32,
    }
}

/// Sums the sizes of regular files under `root`, never following symlinks. Depth-first
/// with one open descriptor per level, so wide trees do not exhaust descriptors.
pub(crate) fn measure_tree(root: RawFd) -> io::Result<u64> {
    fn scan(dir: RawFd, total: &mut u64) -> io::Result<Vec<CString>> {
        let mut stream = platform::DirStream::open(dir)?;
        let mut subdirs = Vec::new();
        stream.for_each_from(0, 32 * 1024, &mut |e| {
            if e.name == b"." || e.name == b".." {
                return Ok(true);
            }
            let Ok(name) = CString::new(e.name) else {
                return Ok(true);
            };
            if let Ok(hs) = platform::stat_at(dir, &name) {
                let t = hs.st.st_mode as u32 & S_IFMT;
                if t == S_IFREG {
                    *total = total.saturating_add(hs.st.st_size as u64);
                } else if t == S_IFDIR {
                    subdirs.push(name);
                }
            }
            Ok(true)
        })?;
        Ok(subdirs)
    }
    let mut total = 0u64;
    let top = platform::reopen(root, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let pending = scan(top.as_raw_fd(), &mut total)?;
    let mut stack: Vec<(OwnedFd, Vec<CString>)> = vec![(top, pending)];
    while let Some((dir, pending)) = stack.last_mut() {
        let Some(name) = pending.pop() else {
            stack.pop();
            continue;
        };
        let Ok(fd) = platform::open_beneath(
            dir.as_raw_fd(),
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        ) else {
            continue;
        };
        let sub = scan(fd.as_raw_fd(), &mut total)?;
        stack.push((fd, sub));
    }
    Ok(total)
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl PassthroughFs {
    /// The inode with guest number `id`.
    pub(crate) fn inode(&self, id: u64) -> io::Result<Arc<InodeData>> {
        self.inodes.get(id).ok_or_else(|| errno(libc::EBADF))
    }

    /// Runs an operation that opens descriptors; on `EMFILE`/`ENFILE` evicts half of the
    /// descriptor cache and retries once. The error stays what the host said.
    pub(crate) fn with_fd_retry<T>(&self, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match f() {
            Err(e) if is_fd_exhaustion(&e) => {
                self.fds.shrink();
                f()
            }
            r => r,
        }
    }

    /// The inode's descriptor: pinned, cached, or re-resolved from its parent with its
    /// identity verified (`ESTALE` if the name now refers to something else).
    pub(crate) fn fd_of(&self, inode: &Arc<InodeData>) -> io::Result<SharedFd> {
        if let Some(fd) = inode.pinned.lock().clone() {
            return Ok(fd);
        }
        if let Some(fd) = self.fds.get(inode.serial) {
            return Ok(fd);
        }
        // Walk up to the nearest ancestor with a descriptor, then back down.
        let mut chain: Vec<(Arc<InodeData>, Arc<InodeData>, CString)> = Vec::new();
        let mut cur = inode.clone();
        let mut base = loop {
            let Some((parent, name)) = cur.path.lock().clone() else {
                // Pinned-or-root inodes have no path; anything else here lost its name: the
                // guest removed it (gone), or the host replaced it (stale).
                if let Some(fd) = cur.pinned.lock().clone() {
                    break fd;
                }
                if cur.removed.lock().is_some() {
                    return Err(errno(libc::ENOENT));
                }
                return Err(errno(libc::ESTALE));
            };
            chain.push((cur.clone(), parent.clone(), name));
            if let Some(fd) = parent.pinned.lock().clone() {
                break fd;
            }
            if let Some(fd) = self.fds.get(parent.serial) {
                break fd;
            }
            cur = parent;
        };
        while let Some((node, _parent, name)) = chain.pop() {
            // The inode exists; only its remembered name is gone: that is a stale handle,
            // not a missing file.
            let fd = self
                .with_fd_retry(|| platform::open_inode(base.as_raw_fd(), &name))
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => errno(libc::ESTALE),
                    _ => e,
                })?;
            let hs = platform::fstat(fd.as_raw_fd())?;
            // Same number is not enough: the file may be a new one that got the number of
            // the deleted original.
            if key_of(&hs) != node.key || !node.fp.same(&identity::fingerprint(fd.as_raw_fd())) {
                return Err(errno(libc::ESTALE));
            }
            let fd = Arc::new(fd);
            if self
                .inodes
                .get(node.id)
                .is_some_and(|cur| Arc::ptr_eq(&cur, &node))
            {
                self.fds.insert(node.serial, fd.clone());
            }
            base = fd;
        }
        Ok(base)
    }

    /// Looks `name` up in `parent`, adding one lookup to the result.
    pub(crate) fn do_lookup(&self, parent: u64, name: &CStr) -> io::Result<Entry> {
        let bytes = crate::name::validate(name)?;
        let p = self.inode(parent)?;
        if p.host_type != S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        if is_internal(bytes) {
            return Err(errno(libc::ENOENT));
        }
        let pfd = self.fd_of(&p)?;
        self.lookup_at(&p, pfd.as_raw_fd(), name)
    }

    /// Looks `name` up in directory descriptor `dirfd` of inode `parent`.
    pub(crate) fn lookup_at(
        &self,
        parent: &Arc<InodeData>,
        dirfd: RawFd,
        name: &CStr,
    ) -> io::Result<Entry> {
        // Fast path: a name that leads to an inode the guest already holds needs one `statx`
        // (one validated component, never following a symlink) instead of open + stat +
        // close, provided the file is the inode's: certainly so while the inode's
        // descriptor is open (no other file can have its number then), otherwise if the
        // name's fingerprint is the inode's (the number may have gone to a new file).
        if let Ok(hs) = platform::stat_at(dirfd, name) {
            let key = key_of(&hs);
            if let Some(inode) = self.inodes.get_by_key(&key) {
                let same = !gone(&inode)
                    && (self.holds_fd(&inode)
                        || identity::fingerprint_at(dirfd, name, &inode.fp)
                            .is_some_and(|f| inode.fp.same(&f)));
                if same && self.inodes.add_lookup_if_current(&key, &inode) {
                    if inode.pinned.lock().is_none() {
                        let mut path = inode.path.lock();
                        let same = path
                            .as_ref()
                            .is_some_and(|(p, n)| p.id == parent.id && n.as_c_str() == name);
                        if !same {
                            *path = Some((parent.clone(), name.to_owned()));
                            inode.removed.lock().take();
                        }
                    }
                    return self.entry(&inode, &hs);
                }
            }
        }
        let fd = self.with_fd_retry(|| platform::open_inode(dirfd, name))?;
        let hs = platform::fstat(fd.as_raw_fd())?;
        let (inode, _) = self.register(parent, name, fd, &hs, None)?;
        self.entry(&inode, &hs)
    }

    /// Adds one lookup of the host object `fd` (found as `name` in `parent`), creating its
    /// inode if new. `known` is an override the caller just wrote.
    ///
    /// The override xattr is read when an inode is first seen and then cached while the
    /// guest holds the inode (all guest changes go through the cache); a host-side change
    /// of the xattr is picked up once the guest has forgotten the inode.
    pub(crate) fn register(
        &self,
        parent: &Arc<InodeData>,
        name: &CStr,
        fd: OwnedFd,
        hs: &HostStat,
        known: Option<Override>,
    ) -> io::Result<(Arc<InodeData>, bool)> {
        let key = key_of(hs);
        let path = Some((parent.clone(), name.to_owned()));
        let fd = Arc::new(fd);
        // An inode already registered with this key is this file if its descriptor is open
        // (two open files never share a number) or its fingerprint matches; otherwise it is
        // a deleted file whose number the host gave to this one.
        let mut fp: Option<Fingerprint> = None;
        let mut stale = None;
        if let Some(existing) = self.inodes.get_by_key(&key) {
            let same = !gone(&existing)
                && (self.holds_fd(&existing)
                    || existing
                        .fp
                        .same(fp.get_or_insert_with(|| identity::fingerprint(fd.as_raw_fd()))));
            if !same {
                stale = Some(existing);
            } else if self.inodes.add_lookup_if_current(&key, &existing) {
                if let Some(o) = known {
                    *existing.meta.lock() = o;
                }
                self.attach(&existing, path, fd);
                return Ok((existing, false));
            }
        }
        if self.inodes.len() >= self.cfg.max_inodes {
            return Err(errno(libc::ENFILE));
        }
        let host_type = hs.st.st_mode as u32 & S_IFMT;
        let ovr = match known {
            Some(o) => o,
            None => read_override(fd.as_raw_fd(), host_type)?,
        };
        let fp = fp.unwrap_or_else(|| identity::fingerprint(fd.as_raw_fd()));
        let (inode, created) = self.inodes.insert(key, stale.as_ref(), |id| InodeData {
            id,
            serial: super::inode_store::next_serial(),
            key,
            fp,
            host_type,
            lookups: AtomicU64::new(0),
            path: Mutex::new(path.clone()),
            pinned: Mutex::new(None),
            meta: Mutex::new(ovr),
            open_handles: AtomicU64::new(0),
            writers: AtomicU64::new(0),
            removed: Mutex::new(None),
            resize: RwLock::new(()),
            orphan: Mutex::new(None),
            cache_stamp: Mutex::new(None),
        });
        if let Some(old) = stale {
            // The guest's old inode keeps its number until forgotten; with neither a path
            // nor a descriptor every use of it answers `ESTALE`.
            old.path.lock().take();
            self.fds.remove(old.serial);
        }
        if !created {
            if let Some(o) = known {
                *inode.meta.lock() = o;
            }
        }
        self.attach(&inode, path, fd);
        Ok((inode, created))
    }

    /// Records where `inode` was just found and caches its descriptor (unless pinned).
    fn attach(&self, inode: &Arc<InodeData>, path: super::inode_store::InodePath, fd: SharedFd) {
        if inode.pinned.lock().is_none() {
            *inode.path.lock() = path;
            inode.removed.lock().take();
            self.fds.insert(inode.serial, fd);
        }
    }

    /// Whether a descriptor of `inode` is open (pinned or cached), which keeps its host
    /// inode number from being given to another file.
    fn holds_fd(&self, inode: &InodeData) -> bool {
        inode.pinned.lock().is_some() || self.fds.get(inode.serial).is_some()
    }

    /// Releases every inode (but the root) and handle the guest holds, as an unmount does,
    /// closing their descriptors.
    pub(crate) fn do_destroy(&self) {
        let handles = self.handles.take_all();
        let gone = self.inodes.drain();
        for d in &gone {
            if d.pinned.lock().take().is_some() {
                self.pins.fetch_sub(1, Ordering::Relaxed);
            }
            // Children hold their parents through their paths: cut the chains.
            d.path.lock().take();
        }
        self.fds.clear();
        // Closed (and unlinked files credited to the quota) outside every lock.
        drop(handles);
        drop(gone);
    }

    /// Drops `count` lookups of `id`, freeing the inode at zero.
    pub(crate) fn do_forget(&self, id: u64, count: u64) {
        if let Some(d) = self.inodes.forget(id, count) {
            self.fds.remove(d.serial);
            if d.pinned.lock().take().is_some() {
                self.pins.fetch_sub(1, Ordering::Relaxed);
            }
            d.path.lock().take();
        }
    }

    /// Takes one of the pin budget's slots for a removed inode (`false` when all are taken);
    /// the caller pins with [`pin`](Self::pin) or gives it back with
    /// [`unreserve_pin`](Self::unreserve_pin).
    pub(crate) fn reserve_pin(&self) -> bool {
        self.pins
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.pin_budget).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a slot taken by [`reserve_pin`](Self::reserve_pin) and not used.
    pub(crate) fn unreserve_pin(&self) {
        self.pins.fetch_sub(1, Ordering::Relaxed);
    }

    /// Keeps the inode's current descriptor open until the guest forgets it (its name just
    /// went away), in a slot taken with [`reserve_pin`](Self::reserve_pin).
    pub(crate) fn pin(&self, inode: &Arc<InodeData>, fd: SharedFd) {
        let old = inode.pinned.lock().replace(fd);
        if old.is_some() {
            // Already pinned: one slot per inode.
            self.unreserve_pin();
        }
        inode.path.lock().take();
        self.fds.remove(inode.serial);
    }

    /// Lets go of the descriptor of an inode whose name the guest just removed, keeping its
    /// last known attributes (`hs`, taken before the removal) for `getattr`. The descriptor is
    /// closed here, in the request that removed the name (unless another request is using it
    /// at this moment), so the host's cost of freeing the inode is paid by that request.
    pub(crate) fn forsake(&self, inode: &Arc<InodeData>, hs: &HostStat) {
        let mut last = *hs;
        last.st.st_nlink = if inode.host_type == S_IFDIR {
            0
        } else {
            last.st.st_nlink.saturating_sub(1)
        };
        *inode.removed.lock() = Some(last);
        inode.path.lock().take();
        let fd = self.fds.remove(inode.serial);
        drop(fd);
    }

    /// The guest-visible attributes of `inode` given its host `stat`.
    pub(crate) fn attr(&self, inode: &InodeData, hs: &HostStat) -> io::Result<stat64> {
        let ovr = *inode.meta.lock();
        let mut st = self.attr_with(ovr, hs)?;
        st.st_ino = inode.id as _;
        Ok(st)
    }

    pub(crate) fn attr_with(&self, ovr: Override, hs: &HostStat) -> io::Result<stat64> {
        let mut st = hs.st;
        match ovr {
            Override::Malformed => return Err(errno(libc::EIO)),
            Override::Present(o) => {
                st.st_uid = o.uid;
                st.st_gid = o.gid;
                st.st_mode = o.mode as _;
                st.st_rdev = o.rdev as _;
            }
            Override::Absent => {
                st.st_uid = self.cfg.default_uid;
                st.st_gid = self.cfg.default_gid;
                if st.st_mode as u32 & S_IFMT == S_IFLNK {
                    st.st_mode = (S_IFLNK | 0o777) as _;
                }
            }
        }
        Ok(st)
    }

    /// Guest ownership/mode/type of `inode` (the override, or what it shows without one).
    pub(crate) fn guest_meta(
        &self,
        inode: &InodeData,
        ovr: Override,
        hs: Option<&HostStat>,
    ) -> io::Result<OverrideStat> {
        match ovr {
            Override::Present(o) => Ok(o),
            Override::Malformed => Err(errno(libc::EIO)),
            Override::Absent => {
                let mode = match hs {
                    Some(hs) => hs.st.st_mode as u32,
                    None => inode.host_type | 0o755,
                };
                let mode = if mode & S_IFMT == S_IFLNK {
                    S_IFLNK | 0o777
                } else {
                    mode
                };
                Ok(OverrideStat {
                    uid: self.cfg.default_uid,
                    gid: self.cfg.default_gid,
                    mode: mode & (S_IFMT | 0o7777),
                    rdev: 0,
                })
            }
        }
    }

    /// The guest file type (`S_IFMT` bits) of `inode`.
    pub(crate) fn guest_type(&self, inode: &InodeData) -> io::Result<u32> {
        match *inode.meta.lock() {
            Override::Present(o) => Ok(o.file_type()),
            Override::Malformed => Err(errno(libc::EIO)),
            Override::Absent => Ok(inode.host_type),
        }
    }

    /// An `Entry` for `inode`.
    pub(crate) fn entry(&self, inode: &InodeData, hs: &HostStat) -> io::Result<Entry> {
        let attr = match self.attr(inode, hs) {
            Ok(a) => a,
            Err(e) => {
                self.do_forget(inode.id, 1);
                return Err(e);
            }
        };
        Ok(Entry {
            inode: inode.id,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: self.cfg.attr_timeout,
            entry_timeout: self.cfg.entry_timeout,
        })
    }
}

/// Whether the guest removed the last name of `inode` (it keeps no descriptor then): a file
/// found later with its number is another file, even where fingerprints are unknown.
fn gone(inode: &InodeData) -> bool {
    inode
        .removed
        .lock()
        .as_ref()
        .is_some_and(|r| r.st.st_nlink == 0)
}

/// Host identity from a `stat`.
pub(crate) fn key_of(hs: &HostStat) -> InodeKey {
    InodeKey {
        dev: hs.st.st_dev as u64,
        ino: hs.st.st_ino as u64,
        mnt_id: hs.mnt_id,
    }
}
