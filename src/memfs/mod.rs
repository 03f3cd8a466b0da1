//! `MemFs`: a complete in-memory filesystem with hard byte-capacity and inode-count limits.
//!
//! For scratch space and ephemeral guests: nothing touches the host's disk.
//!
//! * **Limits.** Capacity is a hard limit on the bytes charged, and everything a guest can
//!   make is charged what it really occupies in memory ([`cost`]): each inode, each name
//!   (hard links included), each xattr, symlink targets, and file data (an exact-size buffer
//!   for small files, whole 4 KiB pages beyond). No sequence of requests, concurrent or not,
//!   makes the charged total exceed it: every request reserves what it needs before changing anything and fails with `ENOSPC`
//!   otherwise, leaving no partial effect. In particular **a write that does not fit writes
//!   nothing** (it is not shortened). Inodes are limited the same way. Freed space (last link,
//!   last handle and the guest's last reference gone — the kernel forgets an unlinked inode
//!   promptly —, truncate, punch-hole, xattr removal) is returned exactly.
//! * **Sparse files.** Data past the first 4 KiB lives in 4 KiB pages allocated on first
//!   write; a file is charged for its allocated pages. A 1 GiB file with 4 KiB written
//!   (past its first page) costs 4 KiB.
//! * **Memory ceiling.** Because every charge bounds real heap use, the memory a MemFs holds
//!   is at most [`MemFs::memory_ceiling`]: `capacity + capacity / 32` (page bookkeeping) `+
//!   128 × max_handles + 256 KiB`, independent of the inode limit. The daemon's RSS is that
//!   plus its own fixed base (binary, libraries, threads, virtqueue buffers).
//!   `tests/memfs_memory.rs` fills a MemFs every way a guest can and checks the process RSS
//!   against it. The bound is on memory in use: after heavy churn (many small objects
//!   deleted, then large ones made) the C allocator may keep freed memory in its free lists,
//!   so RSS can stay above it until the allocator reuses or trims that memory.
//! * **Concurrency.** Inodes and handles live in sharded maps; each file's data has its own
//!   reader-writer lock, so I/O on different files never shares a lock and reads of one file
//!   run in parallel. Bytes move between pages and guest memory without intermediate copies.
//! * **Permissions** are checked by the guest kernel (virtio-fs mounts use
//!   `default_permissions`); `access` answers from the mode bits.
//! * **Memory per inode.** An empty file with one name allocates about 275 bytes plus its
//!   name (`tests/memfs_limits.rs`, `per_inode_overhead`: the inode with its metadata and
//!   data header ~190, its directory entry ~45 plus the name, its inode-table slot ~14,
//!   allocator headers not counted); it is charged
//!   [`cost::INODE`] + [`cost::name`]`(len)` = 480 + heap(len), which covers allocator
//!   headers and table growth slack.
//!
//! ```
//! use boxfs::memfs::MemFs;
//! use boxfs::{Context, FileSystem, SizeExt, ROOT_ID};
//!
//! let fs = MemFs::builder().capacity(64.mib()).max_inodes(10_000).build()?;
//! let st = fs.statfs(&Context::new(), ROOT_ID)?;
//! assert_eq!(st.f_blocks * st.f_frsize as u64, 64.mib());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// libc's mode and device types differ per platform (`mode_t` is u16 on macOS, u32 on Linux),
// so the casts that are no-ops on Linux are needed elsewhere.
#![allow(clippy::unnecessary_cast)]

mod accounting;
pub mod cost;
mod create_ops;
mod data;
mod dir;
mod dir_ops;
mod file_ops;
mod metadata;
mod node;
mod platform;
mod shards;
mod state;
mod xattr_ops;

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::{
    errno, stat64, statvfs64, CachePolicy, Context, CreateIn, DirEntry, Entry, FileSystem,
    FsOptions, GetxattrReply, ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader,
    ZeroCopyWriter, ROOT_ID,
};
use accounting::Usage;
use node::{Body, DirNode, Meta, Node};
use shards::ShardedMap;

/// An open file or directory: the inode (kept alive while open) and the open flags.
struct Handle {
    fh: u64,
    node: Arc<Node>,
    flags: u32,
    /// Made by `opendir` (only directory operations accept it).
    dir: bool,
}

impl shards::Keyed for Arc<Handle> {
    fn key(&self) -> u64 {
        self.fh
    }
}

impl shards::Keyed for Arc<Node> {
    fn key(&self) -> u64 {
        self.ino
    }
}

/// An in-memory filesystem. See the [module documentation](self).
pub struct MemFs {
    nodes: ShardedMap<Arc<Node>>,
    handles: ShardedMap<Arc<Handle>>,
    next_ino: AtomicU64,
    next_fh: AtomicU64,
    /// Open handles, and their limit (`ENFILE` past it).
    open_handles: AtomicU64,
    max_handles: u64,
    usage: Arc<Usage>,
    cache: CachePolicy,
    /// Entry and attribute timeouts handed to the guest.
    entry_timeout: Duration,
    attr_timeout: Duration,
    /// The guest may keep a writeback cache.
    writeback: bool,
    /// Serialises operations that lock two directories (rename, rmdir).
    rename_lock: Mutex<()>,
}

/// Builds a [`MemFs`].
#[derive(Clone, Debug)]
pub struct MemFsBuilder {
    capacity: u64,
    max_inodes: Option<u64>,
    max_handles: u64,
    cache: CachePolicy,
    timeouts: Option<(Duration, Duration)>,
    writeback: bool,
    root_mode: u32,
    root_uid: u32,
    root_gid: u32,
}

impl Default for MemFsBuilder {
    fn default() -> Self {
        MemFsBuilder {
            capacity: 1 << 30,
            max_inodes: None,
            max_handles: 1 << 16,
            cache: CachePolicy::Always,
            timeouts: None,
            writeback: false,
            root_mode: 0o755,
            root_uid: 0,
            root_gid: 0,
        }
    }
}

impl MemFsBuilder {
    /// Hard limit on charged bytes (default 1 GiB).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// Hard limit on inodes, the root included. The default is what the capacity can hold
    /// at [`cost::INODE`] bytes each, between 16 and 1 048 576 (3 276 for 1 MiB,
    /// 209 715 for 64 MiB), so `statfs` reports a file count that can really be reached.
    /// Memory does not depend on it: every inode is charged to the capacity.
    pub fn max_inodes(mut self, n: u64) -> Self {
        self.max_inodes = Some(n);
        self
    }

    /// Most files open at once (default 65 536); past it `open` and `create` fail with
    /// `ENFILE`, so a guest that never releases cannot grow the handle table without bound.
    pub fn max_handles(mut self, n: u64) -> Self {
        self.max_handles = n.max(1);
        self
    }

    /// Guest cache policy (default [`CachePolicy::Always`]: memory is authoritative); also
    /// sets the entry and attribute timeouts unless [`timeouts`](Self::timeouts) is called.
    ///
    /// Under [`CachePolicy::Auto`] opens answer `KEEP_CACHE` (directories also `CACHE_DIR`)
    /// as under `Always`: the guest is a MemFs's only writer, so its page cache is never
    /// stale, and close-to-open holds trivially. The timeouts stay the policy's.
    pub fn cache_policy(mut self, cache: CachePolicy) -> Self {
        self.cache = cache;
        self
    }

    /// Explicit entry and attribute timeouts, overriding the cache policy's.
    pub fn timeouts(mut self, entry: Duration, attr: Duration) -> Self {
        self.timeouts = Some((entry, attr));
        self
    }

    /// Let the guest use a writeback cache (default `false`): it then keeps dirty pages and
    /// writes them back later, reads pages of files it opened write-only, and appends
    /// itself. Safe here, since nothing but the guest changes a MemFs.
    pub fn writeback(mut self, on: bool) -> Self {
        self.writeback = on;
        self
    }

    /// Permission bits of the root directory (default `0o755`).
    pub fn root_mode(mut self, mode: u32) -> Self {
        self.root_mode = mode & 0o7777;
        self
    }

    /// Owner of the root directory (default `0:0`).
    pub fn root_owner(mut self, uid: u32, gid: u32) -> Self {
        self.root_uid = uid;
        self.root_gid = gid;
        self
    }

    /// Creates the filesystem.
    ///
    /// Fails with [`Error::InvalidConfig`](crate::Error::InvalidConfig) if the capacity is 0
    /// or the inode limit leaves no room for the root.
    pub fn build(self) -> crate::Result<MemFs> {
        if self.capacity == 0 {
            return Err(crate::Error::InvalidConfig(
                "MemFs capacity must be > 0".into(),
            ));
        }
        let max_inodes = self
            .max_inodes
            .unwrap_or_else(|| default_max_inodes(self.capacity));
        if max_inodes < 1 {
            return Err(crate::Error::InvalidConfig(
                "MemFs max_inodes must be >= 1 (the root)".into(),
            ));
        }
        let usage = Arc::new(Usage::new(self.capacity, max_inodes));
        usage
            .inodes
            .reserve(1)
            .map_err(|e| crate::Error::io("reserving the root inode", e))?;
        let meta = Meta::new(
            libc::S_IFDIR as u32 | self.root_mode,
            self.root_uid,
            self.root_gid,
            0,
        );
        let root = Node::new(
            ROOT_ID,
            meta,
            Body::Dir(Box::new(DirNode {
                parent: AtomicU64::new(ROOT_ID),
                entries: RwLock::default(),
            })),
            usage.clone(),
        );
        let nodes = ShardedMap::new();
        nodes.insert(Arc::new(root));
        Ok(MemFs {
            nodes,
            handles: ShardedMap::new(),
            next_ino: AtomicU64::new(ROOT_ID + 1),
            next_fh: AtomicU64::new(1),
            open_handles: AtomicU64::new(0),
            max_handles: self.max_handles,
            usage,
            cache: self.cache,
            entry_timeout: self.timeouts.map_or(self.cache.timeout(), |t| t.0),
            attr_timeout: self.timeouts.map_or(self.cache.timeout(), |t| t.1),
            writeback: self.writeback,
            rename_lock: Mutex::new(()),
        })
    }
}

/// The inode limit when none is set: what `capacity` holds at [`cost::INODE`] bytes each.
fn default_max_inodes(capacity: u64) -> u64 {
    (capacity / cost::INODE).clamp(16, 1 << 20)
}

/// Space and inode usage of a [`MemFs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemFsUsage {
    /// Bytes charged now.
    pub bytes_used: u64,
    /// The byte capacity.
    pub capacity: u64,
    /// Inodes in use, the root included.
    pub inodes_used: u64,
    /// The inode limit.
    pub max_inodes: u64,
    /// Files and directories open now (handles the guest has not released).
    pub open_handles: u64,
}

impl MemFs {
    /// A builder with the defaults: 1 GiB, inodes derived from the capacity (1 048 576 for
    /// 1 GiB), [`CachePolicy::Always`].
    pub fn builder() -> MemFsBuilder {
        MemFsBuilder::default()
    }

    /// Current usage against the limits.
    pub fn usage(&self) -> MemFsUsage {
        MemFsUsage {
            bytes_used: self.usage.bytes.used(),
            capacity: self.usage.bytes.limit(),
            inodes_used: self.usage.inodes.used(),
            max_inodes: self.usage.inodes.limit(),
            open_handles: self.open_handles.load(Ordering::Acquire),
        }
    }

    /// The most heap memory this filesystem can hold, whatever the guest does:
    /// `capacity + capacity / 32 + 128 × max_handles + 256 KiB`.
    ///
    /// Everything a guest makes is charged at least the heap it occupies ([`cost`]), and the
    /// charged total never exceeds the capacity; on top come the page maps' bookkeeping (at
    /// most 128 bytes per 4 KiB page, `capacity / 32`), open handles (not charged, limited by
    /// `max_handles`) and a fixed base. A daemon serving one MemFs has an RSS of at most this
    /// plus its own fixed base.
    pub fn memory_ceiling(&self) -> u64 {
        let cap = self.usage.bytes.limit();
        cap.saturating_add(cap / cost::PAGE_OVERHEAD_DIVISOR)
            .saturating_add(self.max_handles.saturating_mul(cost::HANDLE))
            .saturating_add(cost::BASE)
    }

    /// Number of inodes in the inode table (linked or still known to the guest).
    pub fn inode_count(&self) -> usize {
        self.nodes.len()
    }

    fn node(&self, ino: u64) -> io::Result<Arc<Node>> {
        self.nodes.get(ino).ok_or_else(|| errno(libc::EBADF))
    }

    fn dir_node(&self, ino: u64) -> io::Result<Arc<Node>> {
        let node = self.node(ino)?;
        if node.is_dir() {
            Ok(node)
        } else {
            Err(errno(libc::ENOTDIR))
        }
    }

    /// The open handle `fh` if it was opened on `inode` by `open`/`create` (`dir == false`)
    /// or `opendir` (`dir == true`); `EBADF` otherwise, as PassthroughFs answers.
    fn handle_of(&self, inode: u64, fh: u64, dir: bool) -> io::Result<Arc<Handle>> {
        match self.handles.get(fh) {
            Some(h) if h.node.ino == inode && h.dir == dir => Ok(h),
            _ => Err(errno(libc::EBADF)),
        }
    }

    /// A file handle of `inode` (see [`handle_of`](Self::handle_of)).
    fn file_handle(&self, inode: u64, fh: u64) -> io::Result<Arc<Handle>> {
        self.handle_of(inode, fh, false)
    }

    /// Any handle (file or directory) opened on `inode`; `EBADF` otherwise.
    fn any_handle(&self, inode: u64, fh: u64) -> io::Result<Arc<Handle>> {
        match self.handles.get(fh) {
            Some(h) if h.node.ino == inode => Ok(h),
            _ => Err(errno(libc::EBADF)),
        }
    }

    /// Takes one of the `max_handles` slots (`ENFILE` when none is left).
    fn reserve_handle(&self) -> io::Result<()> {
        self.open_handles
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_handles).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| errno(libc::ENFILE))
    }

    fn unreserve_handle(&self) {
        self.open_handles.fetch_sub(1, Ordering::AcqRel);
    }

    /// Registers a handle in a slot taken with [`reserve_handle`](Self::reserve_handle).
    fn new_handle(&self, node: Arc<Node>, flags: u32, dir: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        // With a writeback cache the guest reads back pages of write-only files and appends
        // itself (at the offsets it sends).
        let flags = if self.writeback && !dir {
            let acc = libc::O_ACCMODE as u32;
            let flags = flags & !(libc::O_APPEND as u32);
            if flags & acc == libc::O_WRONLY as u32 {
                (flags & !acc) | libc::O_RDWR as u32
            } else {
                flags
            }
        } else {
            flags
        };
        self.handles.insert(Arc::new(Handle {
            fh,
            node,
            flags,
            dir,
        }));
        fh
    }

    /// Ends the guest's session as the kernel does on unmount: every open handle is released
    /// and every lookup reference forgotten. Inodes no name links any more (unlinked while
    /// open or held) are freed and their bytes uncharged; the linked tree stays.
    fn end_session(&self) {
        for h in self.handles.drain() {
            self.unreserve_handle();
            drop(h);
        }
        for node in self.nodes.values() {
            node.lookups.store(0, Ordering::Release);
            self.maybe_evict(&node);
        }
    }

    /// The entry for `node`, counting one guest reference.
    fn entry(&self, node: &Node) -> Entry {
        node.inc_lookup(1);
        self.entry_uncounted(node)
    }

    fn entry_uncounted(&self, node: &Node) -> Entry {
        Entry {
            inode: node.ino,
            generation: 0,
            attr: node.stat(),
            attr_flags: 0,
            attr_timeout: self.attr_timeout,
            entry_timeout: self.entry_timeout,
        }
    }

    /// Drops `node` from the inode table once no name links it and the guest forgot it.
    /// Open handles keep it alive; its charges are returned when the last one goes.
    fn maybe_evict(&self, node: &Node) {
        if node.ino == ROOT_ID || node.lookups.load(Ordering::Acquire) != 0 {
            return;
        }
        if node.meta.lock().nlink != 0 {
            return;
        }
        self.nodes.remove_if(node.ino, |n| {
            n.lookups.load(Ordering::Acquire) == 0 && n.meta.lock().nlink == 0
        });
    }

    /// Open flags: the policy's, with `Auto` keeping the guest's caches (the guest is the
    /// only writer, see [`MemFsBuilder::cache_policy`]).
    pub(crate) fn open_options(&self, is_dir: bool) -> crate::OpenOptions {
        match self.cache {
            CachePolicy::Auto => CachePolicy::Always.open_options(is_dir),
            other => other.open_options(is_dir),
        }
    }

    fn timeout(&self) -> Duration {
        self.attr_timeout
    }
}

impl FileSystem for MemFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        Ok(capable & platform::wanted_options(self.writeback))
    }

    /// Ends the guest's session as the kernel does on unmount: releases every open handle
    /// and forgets every lookup reference. Inodes no name links (unlinked while open or
    /// held) are freed and uncharged; the linked tree stays, and `init` starts afresh.
    fn destroy(&self) {
        self.end_session()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.do_lookup(ctx, parent, name)
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.do_forget(inode, count)
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        if let Some(fh) = handle {
            return Ok((self.any_handle(inode, fh)?.node.stat(), self.timeout()));
        }
        Ok((self.node(inode)?.stat(), self.timeout()))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.do_setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.do_readlink(inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.do_symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.do_mknod(ctx, parent, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.do_mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.do_unlink(parent, name)
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.do_rmdir(parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.do_rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.do_link(inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.do_open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.do_create(ctx, parent, name, args)
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        self.do_read(inode, handle, w, size, offset)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.do_write(ctx, inode, handle, r, size, offset, fuse_flags)
    }

    fn flush(&self, _ctx: &Context, inode: u64, handle: u64, _owner: u64) -> io::Result<()> {
        self.file_handle(inode, handle).map(|_| ())
    }

    fn fsync(&self, _ctx: &Context, inode: u64, _ds: bool, handle: u64) -> io::Result<()> {
        self.file_handle(inode, handle).map(|_| ())
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.do_fallocate(inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.do_release(inode, handle, false)
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        // A node id never handed out (or forgotten) is refused, as PassthroughFs does.
        self.node(inode)?;
        Ok(self.do_statfs())
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.do_setxattr(inode, name, value, flags)
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.do_getxattr(inode, name, size)
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.do_listxattr(inode, size)
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.do_removexattr(inode, name)
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let node = self.dir_node(inode)?;
        self.reserve_handle()?;
        let fh = self.new_handle(node, flags, true);
        Ok((Some(fh), self.open_options(true)))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let h = self.handle_of(inode, handle, true)?;
        self.do_readdir(&h.node, offset, &mut |d, _| add_entry(d), false)
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let h = self.handle_of(inode, handle, true)?;
        self.do_readdir(&h.node, offset, add_entry, true)
    }

    fn fsyncdir(&self, _ctx: &Context, inode: u64, _ds: bool, handle: u64) -> io::Result<()> {
        self.handle_of(inode, handle, true).map(|_| ())
    }

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, fh: u64) -> io::Result<()> {
        self.do_release(inode, fh, true)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.do_access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.do_lseek(inode, handle, offset, whence)
    }
}

/// Device state: the whole content, streamed (see `memfs/state.rs` and [`crate::state`]).
impl crate::DynFileSystem for MemFs {
    /// Writes every inode, its data, xattrs and directory entries, every open handle and
    /// the id counters, page by page (one bounded record buffer, whatever the size).
    fn save_state(&self, out: &mut dyn io::Write) -> io::Result<()> {
        self.save_state_impl(out)
    }

    /// Replaces the whole content with a saved one, all or nothing: a state that is
    /// corrupt, truncated, of another version or kind, or larger than this MemFs's capacity,
    /// inode or handle limits is refused and the MemFs stays as it was.
    fn load_state(&self, input: &mut dyn io::Read) -> io::Result<()> {
        self.load_state_impl(input)
    }

    /// The entry timeout: only the guest changes a MemFs, and the guest kernel drops a
    /// cached miss itself when it creates the name.
    fn negative_timeout(&self) -> Duration {
        self.entry_timeout
    }
}
