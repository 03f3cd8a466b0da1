//! `DualFs`: two backends under one mount, combined by a dispatch [`Policy`].
//!
//! Backend **A** is the writable side, backend **B** usually a read-only host directory or
//! image; with the default policy ([`ReadBackendBWriteBackendA`]) the pair behaves like a
//! kernel overlayfs with A as the upper and B as the lower layer. DualFs knows its backends
//! only through [`DynFileSystem`], so any backend fits on either side, DualFs included:
//! `DualFs(A, DualFs(B, C))` is a three-layer overlay.
//!
//! * **Inodes.** DualFs keeps its own inode table: guest inode -> (A inode, B inode). Guest
//!   ids are distinct across backends and stable while the guest holds an inode (also across
//!   a copy-up); hard links inside one backend share a guest inode. Each guest inode holds one
//!   lookup reference on its backend inodes and returns it when the guest forgets it, so
//!   memory follows what the guest holds.
//! * **Copy-up** (mutation of a B entry) goes through backend A's trait only: the object is
//!   built in a hidden staging directory in A (data streamed in 1 MiB chunks, holes found
//!   with `SEEK_DATA`/`SEEK_HOLE` and all-zero chunks skipped so sparse files stay sparse,
//!   every xattr, ownership, mode, times; symlink targets; device numbers), then renamed into
//!   place, so a crash never leaves a partial file visible. Parent directories are copied up
//!   on demand. A file is copied once even when many requests race for it (a per-inode lock);
//!   different files copy in parallel. A second name of a multiply-linked B file becomes a
//!   hard link to the copy.
//! * **Whiteouts and opaque directories** are stored in A in the overlayfs format (see
//!   [`WORK_DIR`], [`OPAQUE_XATTR`] and the module `whiteout` docs below); when A is a
//!   persistent backend (PassthroughFs) deletions survive a restart.
//! * **Listings** of merged directories return every name once (A's entries first, then B's
//!   entries that A neither has nor whites out) with stable offsets: a listing resumed from
//!   any offset, through any handle, neither repeats nor skips entries. Nothing is
//!   snapshotted; entries are read from the backends in batches.
//! * **Removals are all-or-nothing.** Removing or renaming an A entry that hides a B entry
//!   replaces it with a whiteout in one step: the whiteout is made in the staging directory
//!   first, then renamed over the file, or exchanged with the directory or the renamed entry
//!   (`RENAME_EXCHANGE`, the effect of the kernel's `RENAME_WHITEOUT`). A full A (`ENOSPC`)
//!   fails the operation before anything the guest can see changed; the B entry never shows
//!   through. Backend A must support `RENAME_EXCHANGE` (MemFs and PassthroughFs do).
//! * **Sessions.** [`FileSystem::destroy`] (unmount, VMM disconnect, a new INIT) releases every
//!   handle and guest inode, as the kernel does on unmount; see its documentation for what
//!   survives.
//! * Renaming a directory that has B content fails with `EXDEV` (as overlayfs without
//!   `redirect_dir`); files rename across backends (copy-up, then rename in A).
//! * `statfs` reports A. Errors from A (`ENOSPC` of a full MemFs) reach the guest unchanged;
//!   B is never written.
//!
//! # Format in A
//!
//! * whiteout: an empty regular file with the xattr `user.overlay.whiteout` at the name it
//!   hides;
//! * opaque directory: xattr `user.overlay.opaque` = `y`;
//! * every `user.overlay.*` xattr is hidden from and reserved against the guest;
//! * [`WORK_DIR`] at the root of A: staging area, hidden, emptied at build.
//!
//! ```
//! use boxfs::dualfs::{DualFs, ReadBackendBWriteBackendA};
//! use boxfs::memfs::MemFs;
//! use boxfs::{Context, DynFileSystem, FileSystem, ROOT_ID};
//! use std::sync::Arc;
//!
//! let lower: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().build()?);
//! let ctx = Context::new();
//! lower.mkdir(&ctx, ROOT_ID, c"etc", 0o755, 0)?;
//! let upper: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().build()?);
//! let fs = DualFs::builder()
//!     .backend_a(upper)
//!     .backend_b(lower)
//!     .policy(ReadBackendBWriteBackendA)
//!     .build()?;
//! let etc = fs.lookup(&ctx, ROOT_ID, c"etc")?;
//! fs.mkdir(&ctx, etc.inode, c"new", 0o755, 0)?; // `etc` is copied up to A first
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// libc's mode and device types differ per platform (`mode_t` is u16 on macOS).
#![allow(clippy::unnecessary_cast)]

mod copy_up;
mod create_ops;
mod dir_ops;
mod file_ops;
mod metadata;
mod node;
mod policy;
mod state;
mod whiteout;
mod xattr_ops;

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

pub use policy::{
    policy_by_name, BackendAFallbackToBackendBRead, BackendAOnly, GuestPath, Listing, LowerWrite,
    MergeReadsBackendAPrecedence, Op, Policy, ReadBackendBWriteBackendA, Visibility,
};
pub use whiteout::{OPAQUE_XATTR, PRIVATE_XATTR_PREFIX, WORK_DIR};

use crate::cache::CacheOverride;
use crate::{
    errno, stat64, statvfs64, CachePolicy, Context, CreateIn, DirEntry, DynFileSystem, Entry,
    Error, FileLock, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions, Result,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use node::{Layer, Layers, Node, NodeTable, Shared};

const SHARDS: usize = 16;

/// An open file or directory of the guest.
pub(crate) enum Handle {
    File {
        /// Keeps the guest inode (and its backend inodes) alive while the file is open.
        _node: Arc<Node>,
        layer: Layer,
        ino: u64,
        fh: u64,
        /// Open flags (writes through a read-only handle fail with `EBADF`).
        flags: u32,
    },
    Dir {
        node: Arc<Node>,
        a: Option<(u64, u64)>,
        b: Option<(u64, u64)>,
    },
}

/// Two backends under one mount; see the [module documentation](self).
pub struct DualFs {
    shared: Arc<Shared>,
    policy: Box<dyn Policy>,
    nodes: NodeTable,
    handles: Vec<RwLock<HashMap<u64, Arc<Handle>>>>,
    next_fh: AtomicU64,
    /// Inode of [`WORK_DIR`] in A (`None` if A is read-only); looked up again after
    /// `destroy`.
    work: Mutex<Option<u64>>,
    /// B inode -> A inode of copied-up multiply-linked files (holding one A reference each),
    /// so further names of the same B file become links to the copy.
    hardlinks: Mutex<HashMap<u64, u64>>,
    /// Guest caching imposed on the layers' answers (none by default).
    cache: CacheOverride,
}

/// Builds a [`DualFs`]; see [`DualFs::builder`].
#[derive(Default)]
pub struct DualFsBuilder {
    a: Option<Arc<dyn DynFileSystem>>,
    b: Option<Arc<dyn DynFileSystem>>,
    policy: Option<Box<dyn Policy>>,
    cache: CacheOverride,
}

impl std::fmt::Debug for DualFsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DualFsBuilder")
            .field("a", &self.a.is_some())
            .field("b", &self.b.is_some())
            .field("policy", &self.policy)
            .finish()
    }
}

impl DualFsBuilder {
    /// Backend A: the writable side (creations, copies, whiteouts). Required.
    pub fn backend_a(mut self, fs: Arc<dyn DynFileSystem>) -> Self {
        self.a = Some(fs);
        self
    }

    /// Backend B: the side that is read (and never written). Required.
    pub fn backend_b(mut self, fs: Arc<dyn DynFileSystem>) -> Self {
        self.b = Some(fs);
        self
    }

    /// The dispatch policy (default [`ReadBackendBWriteBackendA`]).
    pub fn policy(mut self, policy: impl Policy + 'static) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// The dispatch policy, boxed (for policies chosen at run time, see [`policy_by_name`]).
    pub fn boxed_policy(mut self, policy: Box<dyn Policy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Guest caching policy for the merged view: its open flags and (unless
    /// [`timeouts`](Self::timeouts) is called) its entry and attribute timeouts replace what the
    /// layers answer. Default: each layer's own settings pass through.
    pub fn cache_policy(mut self, policy: CachePolicy) -> Self {
        self.cache.policy = Some(policy);
        self
    }

    /// Explicit entry and attribute timeouts for every entry and attribute reply, overriding
    /// the cache policy's and the layers'.
    pub fn timeouts(mut self, entry: Duration, attr: Duration) -> Self {
        self.cache.timeouts = Some((entry, attr));
        self
    }

    /// Offer (or refuse) the guest a writeback cache, whatever the layers ask for. Only safe
    /// when nothing but this mount changes the layers. Default: what both layers accept.
    pub fn writeback(mut self, on: bool) -> Self {
        self.cache.writeback = Some(on);
        self
    }

    /// Creates the filesystem: prepares (or empties) the staging directory in A and reads
    /// whether A's root is opaque.
    ///
    /// Fails with [`Error::InvalidConfig`] if a backend is missing, and with [`Error::Io`]
    /// if the staging directory cannot be prepared in a writable A.
    pub fn build(self) -> Result<DualFs> {
        let a = self
            .a
            .ok_or_else(|| Error::InvalidConfig("DualFs needs backend A".into()))?;
        let b = self
            .b
            .ok_or_else(|| Error::InvalidConfig("DualFs needs backend B".into()))?;
        let policy = self
            .policy
            .unwrap_or_else(|| Box::new(ReadBackendBWriteBackendA));
        let shared = Arc::new(Shared::new(a, b));
        let ctx = Context::new();
        let (root_attr, _) = shared
            .a
            .getattr(&ctx, ROOT_ID, None)
            .map_err(|e| Error::io("reading the root of backend A", e))?;
        let kind = root_attr.st_mode as u32 & libc::S_IFMT as u32;
        if kind != libc::S_IFDIR as u32 {
            return Err(Error::InvalidConfig(
                "backend A's root is not a directory".into(),
            ));
        }
        let mut layers = Layers {
            a: Some(ROOT_ID),
            b: Some(ROOT_ID),
        };
        let root = Arc::new(Node::new(
            ROOT_ID,
            libc::S_IFDIR as u32,
            shared.clone(),
            Layers::default(),
            None,
        ));
        let probe = GuestPath {
            node: &root,
            name: None,
        };
        if policy.visibility(&probe) == Visibility::AOnly || dir_ops::is_opaque(&*shared.a, ROOT_ID)
        {
            layers.b = None;
        }
        *root.layers.write() = layers;
        shared.alias((Layer::A, ROOT_ID), &root);
        if layers.b.is_some() {
            shared.alias((Layer::B, ROOT_ID), &root);
        }
        let nodes = NodeTable::new();
        nodes.inc(&root, 1);
        let work = copy_up::prepare_work_dir(&*shared.a)
            .map_err(|e| Error::io("preparing the DualFs staging directory in backend A", e))?;
        Ok(DualFs {
            shared,
            policy,
            nodes,
            handles: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            next_fh: AtomicU64::new(1),
            work: Mutex::new(work),
            hardlinks: Mutex::new(HashMap::new()),
            cache: self.cache,
        })
    }
}

impl DualFs {
    /// A builder: set both backends, optionally a policy, then [`build`](DualFsBuilder::build).
    pub fn builder() -> DualFsBuilder {
        DualFsBuilder::default()
    }

    /// The dispatch policy in use.
    pub fn policy(&self) -> &dyn Policy {
        &*self.policy
    }

    /// Number of guest inodes in the inode table (the root included).
    pub fn inode_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of open files and directories.
    pub fn handle_count(&self) -> usize {
        self.handles.iter().map(|s| s.read().len()).sum()
    }

    /// The staging directory in A (`EROFS` if A is read-only).
    fn work_dir(&self) -> io::Result<u64> {
        (*self.work.lock()).ok_or_else(|| errno(libc::EROFS))
    }

    /// See `DynFileSystem::negative_timeout` for DualFs (in `state.rs`).
    fn negative_timeout_impl(&self) -> Duration {
        match self.cache.imposed_timeouts() {
            Some((entry, _)) => entry,
            None => self.a().negative_timeout().min(self.b().negative_timeout()),
        }
    }

    fn a(&self) -> &dyn DynFileSystem {
        &*self.shared.a
    }

    fn b(&self) -> &dyn DynFileSystem {
        &*self.shared.b
    }

    fn node(&self, id: u64) -> io::Result<Arc<Node>> {
        self.nodes.get(id).ok_or_else(|| errno(libc::EBADF))
    }

    fn dir_node(&self, id: u64) -> io::Result<Arc<Node>> {
        let n = self.node(id)?;
        if n.is_dir() {
            Ok(n)
        } else {
            Err(errno(libc::ENOTDIR))
        }
    }

    fn path<'a>(&self, node: &'a Node, name: Option<&'a [u8]>) -> GuestPath<'a> {
        GuestPath { node, name }
    }

    /// Runs the policy's check hook, if it has one.
    fn check(&self, op: Op, node: &Node, name: Option<&CStr>) -> io::Result<()> {
        if self.policy.has_checks() {
            self.policy
                .check(op, &self.path(node, name.map(|n| n.to_bytes())))?;
        }
        Ok(())
    }

    fn handle_shard(&self, fh: u64) -> &RwLock<HashMap<u64, Arc<Handle>>> {
        &self.handles[(fh as usize) % SHARDS]
    }

    fn insert_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handle_shard(fh).write().insert(fh, Arc::new(h));
        fh
    }

    fn handle(&self, fh: u64) -> io::Result<Arc<Handle>> {
        self.handle_shard(fh)
            .read()
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))
    }

    /// Checks that `fh` is an open file of guest inode `node` (`EBADF` otherwise), as every
    /// backend does for a handle passed with GETATTR or SETATTR.
    fn own_file(&self, fh: u64, node: u64) -> io::Result<()> {
        match &*self.handle(fh)? {
            Handle::File { _node, .. } if _node.id == node => Ok(()),
            _ => Err(errno(libc::EBADF)),
        }
    }

    /// The open file `fh` of guest inode `inode`: (layer, backend inode, backend handle);
    /// `EBADF` for a handle of another inode.
    fn file(&self, inode: u64, fh: u64) -> io::Result<(Layer, u64, u64)> {
        match &*self.handle(fh)? {
            Handle::File {
                _node,
                layer,
                ino,
                fh,
                ..
            } if _node.id == inode => Ok((*layer, *ino, *fh)),
            _ => Err(errno(libc::EBADF)),
        }
    }

    /// The open file `fh` of guest inode `inode` for a modification: `EBADF` if it was opened
    /// read-only or belongs to another inode.
    fn writable_file(&self, inode: u64, fh: u64) -> io::Result<(Layer, u64, u64)> {
        match &*self.handle(fh)? {
            Handle::File { _node, .. } if _node.id != inode => Err(errno(libc::EBADF)),
            Handle::File { flags, .. }
                if flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 =>
            {
                Err(errno(libc::EBADF))
            }
            Handle::File { layer, ino, fh, .. } => Ok((*layer, *ino, *fh)),
            Handle::Dir { .. } => Err(errno(libc::EBADF)),
        }
    }

    /// Rewrites backend attributes for the guest: inode number of `node`.
    fn fix_attr(st: &mut stat64, id: u64) {
        st.st_ino = id as _;
    }

    /// Attributes of `node` from its top layer.
    fn top_attr(&self, ctx: &Context, node: &Node) -> io::Result<(stat64, Duration)> {
        let (layer, ino) = node.layers().top().ok_or_else(|| errno(libc::EIO))?;
        let (mut st, t) = self.shared.fs(layer).getattr(ctx, ino, None)?;
        Self::fix_attr(&mut st, node.id);
        Ok((st, t))
    }
}

impl std::fmt::Debug for DualFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DualFs")
            .field("policy", &self.policy.name())
            .field("inodes", &self.nodes.len())
            .finish()
    }
}

impl Drop for DualFs {
    fn drop(&mut self) {
        let ctx = Context::new();
        for (_, a) in self.hardlinks.get_mut().drain() {
            self.shared.a.forget(&ctx, a, 1);
        }
        if let Some(w) = *self.work.get_mut() {
            self.shared.a.forget(&ctx, w, 1);
        }
    }
}

impl FileSystem for DualFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let a = self.a().init(capable)?;
        let b = self.b().init(capable)?;
        Ok(self.cache.init(a & b, capable))
    }

    /// Ends the guest session (unmount, disconnect, a new INIT), as the kernel does on
    /// unmount: every open file and directory is released on its backend, every guest
    /// inode but the root is forgotten (giving back the backend lookups it held), then both
    /// backends are destroyed and the staging directory in A is looked up again (and
    /// emptied).
    ///
    /// What survives: the root, and nothing else. The copy-up bookkeeping (the guest ids
    /// copies inherited from their B originals, and the B -> A map that turns further names
    /// of a multiply-linked B file into links to its copy) is keyed by backend inode
    /// numbers, which a backend may reuse for other files once its own `destroy` dropped
    /// them; it is given back and cleared. A new session holds no inode of the old one, so
    /// it needs no continuity of ids; a B file with several names whose copy was made in an
    /// earlier session gets a separate copy for its other names (as overlayfs without its
    /// inode index).
    ///
    /// Must not run concurrently with other requests (the device calls it with its queues
    /// stopped).
    fn destroy(&self) {
        let ctx = Context::new();
        for shard in &self.handles {
            let drained: Vec<Arc<Handle>> = shard.write().drain().map(|(_, h)| h).collect();
            for h in drained {
                match &*h {
                    Handle::File {
                        layer,
                        ino,
                        fh,
                        flags,
                        ..
                    } => {
                        let _ = self
                            .shared
                            .fs(*layer)
                            .release(&ctx, *ino, *flags, *fh, false, true, None);
                    }
                    Handle::Dir { a, b, .. } => {
                        if let Some((ino, fh)) = a {
                            let _ = self.a().releasedir(&ctx, *ino, 0, *fh);
                        }
                        if let Some((ino, fh)) = b {
                            let _ = self.b().releasedir(&ctx, *ino, 0, *fh);
                        }
                    }
                }
            }
        }
        // Dropping the nodes gives their backend lookups back (children first, as each
        // holds its parent).
        self.nodes.clear_except_root();
        for (_, a) in self.hardlinks.lock().drain() {
            self.a().forget(&ctx, a, 1);
        }
        self.shared.clear_origins();
        let work = self.work.lock().take();
        if let Some(w) = work {
            self.a().forget(&ctx, w, 1);
        }
        self.a().destroy();
        self.b().destroy();
        if work.is_some() {
            match copy_up::prepare_work_dir(self.a()) {
                Ok(w) => *self.work.lock() = w,
                Err(e) => tracing::error!(
                    "DualFs: cannot prepare the staging directory after destroy ({e}); \
                     writes that need it fail with EROFS"
                ),
            }
        }
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.do_lookup(ctx, parent, name)
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        if let Some(n) = self.nodes.get(inode) {
            self.nodes.dec(&n, count);
        }
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.forget(ctx, inode, count);
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let node = self.node(inode)?;
        if let Some(fh) = handle {
            self.own_file(fh, node.id)?;
        }
        self.check(Op::Read, &node, None)?;
        let (st, timeout) = self.top_attr(ctx, &node)?;
        Ok((st, self.cache.attr(timeout)))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let (st, timeout) = self.do_setattr(ctx, inode, attr, handle, valid)?;
        Ok((st, self.cache.attr(timeout)))
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let node = self.node(inode)?;
        self.check(Op::Read, &node, None)?;
        let (layer, ino) = node.layers().top().ok_or_else(|| errno(libc::EIO))?;
        self.shared.fs(layer).readlink(ctx, ino)
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
        inode: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.do_mknod(ctx, inode, name, mode, rdev, umask)
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

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.do_remove(ctx, parent, name, false)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.do_remove(ctx, parent, name, true)
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

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.do_link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let node = self.node(inode)?;
        let (fh, opts) = self.do_open(ctx, &node, flags, fuse_flags)?;
        Ok((Some(fh), self.cache.open(opts, false), None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let (e, fh, opts, passthrough) = self.do_create(ctx, parent, name, args)?;
        Ok((
            self.cache.entry(e),
            fh,
            self.cache.open(opts, false),
            passthrough,
        ))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let (layer, ino, fh) = self.file(inode, handle)?;
        self.shared
            .fs(layer)
            .read(ctx, ino, fh, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let (layer, ino, fh) = self.writable_file(inode, handle)?;
        self.shared.fs(layer).write(
            ctx,
            ino,
            fh,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        let (layer, ino, fh) = self.file(inode, handle)?;
        self.shared.fs(layer).flush(ctx, ino, fh, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let (layer, ino, fh) = self.file(inode, handle)?;
        self.shared.fs(layer).fsync(ctx, ino, datasync, fh)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        // Like Linux: `EBADF` for a handle not open for writing.
        let (layer, ino, fh) = self.writable_file(inode, handle)?;
        self.shared
            .fs(layer)
            .fallocate(ctx, ino, fh, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let (layer, ino, fh) = self.file(inode, handle)?;
        self.handle_shard(handle).write().remove(&handle);
        self.shared
            .fs(layer)
            .release(ctx, ino, flags, fh, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        self.a().statfs(ctx, ROOT_ID)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.do_setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.do_getxattr(ctx, inode, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.do_listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.do_removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let (fh, opts) = self.do_opendir(ctx, inode, flags)?;
        Ok((fh, self.cache.open(opts, true)))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(ctx, inode, handle, offset, &mut |d, _e| add_entry(d), false)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(ctx, inode, handle, offset, add_entry, true)
    }

    fn fsyncdir(&self, ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        match &*self.handle(handle)? {
            Handle::Dir {
                a: Some((ino, fh)), ..
            } => self.a().fsyncdir(ctx, *ino, datasync, *fh),
            Handle::Dir { .. } => Ok(()),
            Handle::File { .. } => Err(errno(libc::EBADF)),
        }
    }

    fn releasedir(&self, ctx: &Context, _inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        let h = self.handle(handle)?;
        let Handle::Dir { a, b, .. } = &*h else {
            return Err(errno(libc::EBADF));
        };
        self.handle_shard(handle).write().remove(&handle);
        // Both sides are released whatever the other answers; the first error is reported.
        let ra = match a {
            Some((ino, fh)) => self.a().releasedir(ctx, *ino, flags, *fh),
            None => Ok(()),
        };
        let rb = match b {
            Some((ino, fh)) => self.b().releasedir(ctx, *ino, flags, *fh),
            None => Ok(()),
        };
        ra.and(rb)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let node = self.node(inode)?;
        let (layer, ino) = node.layers().top().ok_or_else(|| errno(libc::EIO))?;
        let mut mask = mask;
        if layer == Layer::B && mask & libc::W_OK as u32 != 0 {
            // Writing a B entry means writing its copy: B's own answer (`EROFS` for a
            // read-only B) does not apply; the policy's does.
            if let LowerWrite::Refuse(e) =
                self.policy.lower_write(Op::Write, &self.path(&node, None))
            {
                return Err(errno(e));
            }
            mask &= !(libc::W_OK as u32);
            if mask == 0 {
                mask = libc::F_OK as u32;
            }
        }
        self.shared.fs(layer).access(ctx, ino, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let (layer, ino, fh) = self.file(inode, handle)?;
        self.shared.fs(layer).lseek(ctx, ino, fh, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        let (layer, ino, fh) = self.file(inode, handle)?;
        self.shared
            .fs(layer)
            .getlk(ctx, ino, fh, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        let (layer, ino, fh) = self.file(inode, handle)?;
        self.shared
            .fs(layer)
            .setlk(ctx, ino, fh, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        let (layer, ino, fh) = self.file(inode, handle)?;
        self.shared
            .fs(layer)
            .setlkw(ctx, ino, fh, owner, lock, flags)
    }
}
