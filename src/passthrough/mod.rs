//! A confined host directory served to a guest by an unprivileged daemon.
//!
//! [`PassthroughFs`] serves one host directory. The daemon never follows a symlink or `..`
//! out of it: the root is opened once, and every name is resolved relative to its parent's
//! descriptor one component at a time (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` on Linux, `O_NOFOLLOW` elsewhere). Every name the guest sends is
//! checked with [`crate::name::validate`].
//!
//! Ownership is virtual: guest uid, gid, mode, file type and device number live in the xattr
//! `user.containers.override_stat` (format in [`OverrideStat`]), so `chown`, `chmod` and
//! `mknod` work for the guest without privileges and without touching host ownership. Special
//! files are host regular files; guest symlinks are too by default ([`SymlinkMode`]).
//!
//! Inodes are identified by the host's (device, inode, mount id); hard links share one
//! inode. Descriptors are bounded by a hard ceiling
//! ([`PassthroughFsBuilder::fd_cache_size`]), removed inodes the guest still holds included:
//! inode descriptors live in an LRU cache and an evicted inode is re-opened from its parent
//! by name, verifying its identity (`ESTALE` if the host replaced it). Because the host may
//! give a deleted file's inode number to a new file once nothing holds the old one open, an
//! inode also records its file handle (which carries the generation number; birth time where
//! the filesystem has no handles): a new file with a reused number is served as a new inode,
//! and the guest's old inode answers `ESTALE`.
//!
//! Guest inode numbers are the host's inode numbers where possible, so `st_ino`, directory
//! entries and FUSE node ids agree and stay stable across lookups (inodes on submounts inside
//! the share, or colliding numbers, get private ids above 2^62).
//!
//! # Things to know
//!
//! * The override xattr is read when the guest first looks an inode up and is cached while the
//!   guest holds it; host-side edits of the xattr show after the guest forgets the inode.
//! * If the host renames or replaces a file behind the guest's back, operations on the old inode
//!   fail with `ESTALE` once its descriptor has been evicted; nothing else is ever served in its
//!   place. Host errors such as `EMFILE` are passed through unchanged.
//! * `create` always creates (`EEXIST` for an existing name), like the other backends.
//! * `quota_bytes` charges the apparent size of regular files (symlink targets included),
//!   exactly also under concurrent writes; a file unlinked while open stays charged until the
//!   guest lets go of it. `fallocate(FALLOC_FL_KEEP_SIZE)` past the end of the file, which
//!   allocates space the apparent size does not show, fails with `EOPNOTSUPP` under a quota.
//! * `destroy` (unmount, or a new session) releases every inode and handle the guest held.
//! * Server-side `copy_file_range` is not offered: fuse-backend-rs 0.14 does not dispatch it.
//!
//! ```no_run
//! use boxfs::passthrough::{HostPermissions, PassthroughFs, SymlinkMode};
//! use boxfs::{CachePolicy, Context, FileSystem, ROOT_ID};
//!
//! let fs = PassthroughFs::builder("/srv/share")
//!     .readonly(false)
//!     .cache_policy(CachePolicy::Auto)
//!     .quota_bytes(Some(1 << 30))
//!     .default_owner(0, 0)
//!     .symlinks(SymlinkMode::Virtualized)
//!     .host_permissions(HostPermissions::Private)
//!     .build()?;
//! let (attr, _) = fs.getattr(&Context::new(), ROOT_ID, None)?;
//! assert_eq!(attr.st_mode & libc::S_IFMT, libc::S_IFDIR);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Casts between libc integer types differ per platform (u16 vs u32 modes, i32 vs u64 devices)
// and are needed for macOS even where they are no-ops on Linux.
#![allow(clippy::unnecessary_cast)]

mod config;
mod create_ops;
mod dir_ops;
mod fd_cache;
mod file_ops;
mod fs_impl;
mod handles;
mod identity;
mod inode_store;
mod metadata;
mod namespace_ops;
mod override_stat;
mod page_cache;
mod platform;
mod quota;
mod resolve;
mod state;
mod xattr_ops;

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

pub use config::{HostPermissions, SymlinkMode};
pub use override_stat::{OverrideStat, OVERRIDE_KEY};

use config::Config;
use fd_cache::FdCache;
use handles::HandleTable;
use inode_store::{InodeData, InodeKey, InodeStore};
use quota::Quota;

use crate::{CachePolicy, Error, Result, ROOT_ID};

/// Names starting with this prefix are the backend's own scratch files: hidden from the
/// guest and refused as new names.
pub const INTERNAL_PREFIX: &[u8] = b".boxfs-internal-";

/// Default of [`PassthroughFsBuilder::max_inodes`]: about 200 MiB of daemon memory at most.
pub const DEFAULT_MAX_INODES: usize = 1 << 20;

/// Default of [`PassthroughFsBuilder::max_handles`] (each open handle also holds a host
/// descriptor, so `RLIMIT_NOFILE` bounds them too).
pub const DEFAULT_MAX_HANDLES: usize = 1 << 16;

/// A host directory served to a guest; see the [module documentation](self).
pub struct PassthroughFs {
    cfg: Config,
    root_path: PathBuf,
    inodes: InodeStore,
    fds: FdCache,
    /// Removed inodes holding a pinned descriptor, at most `pin_budget`.
    pins: AtomicUsize,
    pin_budget: usize,
    handles: HandleTable,
    quota: Option<Arc<Quota>>,
}

/// Builder for [`PassthroughFs`]; see [`PassthroughFs::builder`].
#[derive(Clone, Debug)]
pub struct PassthroughFsBuilder {
    root: PathBuf,
    cfg: Config,
    timeouts_set: bool,
}

impl PassthroughFs {
    /// Starts configuring a filesystem serving the host directory `root`.
    ///
    /// Defaults: read-write, [`CachePolicy::Auto`], no quota, default owner `0:0`,
    /// [`SymlinkMode::Virtualized`], [`HostPermissions::Private`], no writeback cache,
    /// 1024 cached inode descriptors.
    pub fn builder(root: impl AsRef<Path>) -> PassthroughFsBuilder {
        let policy = CachePolicy::default();
        PassthroughFsBuilder {
            root: root.as_ref().to_path_buf(),
            cfg: Config {
                readonly: false,
                cache_policy: policy,
                quota_bytes: None,
                default_uid: 0,
                default_gid: 0,
                symlinks: SymlinkMode::default(),
                host_permissions: HostPermissions::default(),
                entry_timeout: policy.timeout(),
                attr_timeout: policy.timeout(),
                writeback: false,
                fd_cache_size: 1024,
                max_inodes: DEFAULT_MAX_INODES,
                max_handles: DEFAULT_MAX_HANDLES,
            },
            timeouts_set: false,
        }
    }

    /// The host directory being served.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Number of inodes the guest currently holds (the root included).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// Number of inode descriptors currently cached (bounded by three quarters of
    /// [`PassthroughFsBuilder::fd_cache_size`]; removed-but-open files' descriptors are not
    /// counted here).
    pub fn cached_fds(&self) -> usize {
        self.fds.len()
    }

    /// Number of files and directories the guest currently has open.
    pub fn open_handles(&self) -> usize {
        self.handles.len()
    }

    /// Bytes charged against the quota, if one is set.
    pub fn quota_used(&self) -> Option<u64> {
        self.quota.as_ref().map(|q| q.used())
    }
}

impl PassthroughFsBuilder {
    /// Refuse every mutation with `EROFS` (default `false`).
    pub fn readonly(mut self, readonly: bool) -> Self {
        self.cfg.readonly = readonly;
        self
    }

    /// Guest caching policy (default [`CachePolicy::Auto`]); also sets the entry and
    /// attribute timeouts unless [`timeouts`](Self::timeouts) is called.
    pub fn cache_policy(mut self, policy: CachePolicy) -> Self {
        self.cfg.cache_policy = policy;
        if !self.timeouts_set {
            self.cfg.entry_timeout = policy.timeout();
            self.cfg.attr_timeout = policy.timeout();
        }
        self
    }

    /// Explicit entry and attribute timeouts, overriding the cache policy's.
    pub fn timeouts(mut self, entry: Duration, attr: Duration) -> Self {
        self.cfg.entry_timeout = entry;
        self.cfg.attr_timeout = attr;
        self.timeouts_set = true;
        self
    }

    /// Limit on the total apparent size of regular files in the share; guest writes that
    /// would exceed it fail with `ENOSPC`, and `statfs` reports it. The existing tree is
    /// measured once at build time; from then on the charge follows every guest change
    /// exactly, concurrent writes included, and a file unlinked while the guest has it open
    /// stays charged until the guest lets go of it. `fallocate(FALLOC_FL_KEEP_SIZE)` past
    /// the end of a file fails with `EOPNOTSUPP` (the space would not show in the apparent
    /// size).
    pub fn quota_bytes(mut self, quota: Option<u64>) -> Self {
        self.cfg.quota_bytes = quota;
        self
    }

    /// Owner shown for host files without the override xattr (default `0:0`).
    pub fn default_owner(mut self, uid: u32, gid: u32) -> Self {
        self.cfg.default_uid = uid;
        self.cfg.default_gid = gid;
        self
    }

    /// How guest symlinks are stored (default [`SymlinkMode::Virtualized`]).
    pub fn symlinks(mut self, mode: SymlinkMode) -> Self {
        self.cfg.symlinks = mode;
        self
    }

    /// What host permission bits guest files get (default [`HostPermissions::Private`]).
    pub fn host_permissions(mut self, p: HostPermissions) -> Self {
        self.cfg.host_permissions = p;
        self
    }

    /// Let the guest use a writeback cache (default `false`). Only safe when nothing on
    /// the host modifies the share concurrently.
    pub fn writeback(mut self, on: bool) -> Self {
        self.cfg.writeback = on;
        self
    }

    /// Maximum number of inode descriptors the backend keeps open for itself (default 1024,
    /// minimum 16): a hard ceiling, whatever the guest does and however late its `FORGET`s
    /// come.
    ///
    /// Three quarters of it is an LRU cache (an evicted inode is re-opened from its parent by
    /// name). The last quarter is for removed files that the guest still has open or that
    /// have other names; past it, such a file keeps no descriptor (its open handles keep
    /// working, `getattr` without a handle answers its last known attributes, and other
    /// operations on it `ENOENT`). Removed directories and removed files without open
    /// handles never keep a descriptor: their last close happens in the `RMDIR`/`UNLINK`
    /// (or `RENAME`) that removed them, and `getattr` answers their last known attributes
    /// with no links.
    ///
    /// On top of the ceiling come one descriptor per open guest file or directory (at most
    /// [`max_handles`](Self::max_handles); two for a file unlinked while open under a
    /// [quota](Self::quota_bytes)) and the few that each request being served holds
    /// for a moment. With `RLIMIT_NOFILE` above `fd_cache_size + max_handles` plus a small
    /// margin, the backend never gets `EMFILE` from its own caching.
    pub fn fd_cache_size(mut self, n: usize) -> Self {
        self.cfg.fd_cache_size = n.max(16);
        self
    }

    /// Most inodes the guest may hold at once (lookups not yet forgotten; default
    /// [`DEFAULT_MAX_INODES`]). Past it, lookups and creations of further inodes fail with
    /// `ENFILE`, bounding the daemon's memory whatever the guest does.
    pub fn max_inodes(mut self, n: usize) -> Self {
        self.cfg.max_inodes = n.max(16);
        self
    }

    /// Most open files and directories at once (default [`DEFAULT_MAX_HANDLES`]). Past it,
    /// `open`, `create` and `opendir` fail with `ENFILE` (requests racing at the limit may
    /// overshoot it by at most the number of requests in flight).
    pub fn max_handles(mut self, n: usize) -> Self {
        self.cfg.max_handles = n.max(1);
        self
    }

    /// Opens the root and checks the host filesystem.
    ///
    /// Fails with [`Error::Path`] if the root cannot be opened or is not a directory, and
    /// with [`Error::Unsupported`] if the host filesystem does not support user xattrs
    /// (checked unless read-only) or `/proc/self/fd` is unavailable on Linux.
    pub fn build(self) -> Result<PassthroughFs> {
        platform::init()
            .map_err(|e| Error::Unsupported(format!("/proc/self/fd is not available: {e}")))?;
        let cpath = CString::new(self.root.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::InvalidConfig("root path contains a NUL byte".into()))?;
        let dir_fd = platform::open_root(&cpath).map_err(|e| Error::path(&self.root, e))?;
        let root_fd = platform::reopen(dir_fd.as_raw_fd(), platform::INODE_FLAGS)
            .map_err(|e| Error::path(&self.root, e))?;
        drop(dir_fd);
        let hs = platform::fstat(root_fd.as_raw_fd()).map_err(|e| Error::path(&self.root, e))?;
        let host_type = hs.st.st_mode as u32 & resolve::S_IFMT;
        if host_type != resolve::S_IFDIR {
            return Err(Error::path(
                &self.root,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        if !self.cfg.readonly {
            probe_xattrs(root_fd.as_raw_fd())?;
        }
        let ovr = resolve::read_override(root_fd.as_raw_fd(), host_type)
            .map_err(|e| Error::path(&self.root, e))?;
        let root_fd = Arc::new(root_fd);
        let root = Arc::new(InodeData {
            id: ROOT_ID,
            serial: inode_store::next_serial(),
            key: InodeKey {
                dev: hs.st.st_dev as u64,
                ino: hs.st.st_ino as u64,
                mnt_id: hs.mnt_id,
            },
            fp: identity::fingerprint(root_fd.as_raw_fd()),
            host_type,
            lookups: AtomicU64::new(1),
            path: Mutex::new(None),
            pinned: Mutex::new(Some(root_fd.clone())),
            meta: Mutex::new(ovr),
            open_handles: AtomicU64::new(0),
            writers: AtomicU64::new(0),
            removed: Mutex::new(None),
            resize: RwLock::new(()),
            orphan: Mutex::new(None),
            cache_stamp: Mutex::new(None),
        });
        let quota = match self.cfg.quota_bytes {
            Some(limit) => {
                let used = resolve::measure_tree(root_fd.as_raw_fd())
                    .map_err(|e| Error::io("measuring the share for its quota", e))?;
                Some(Arc::new(Quota::new(limit, used)))
            }
            None => None,
        };
        let max_handles = self.cfg.max_handles;
        // A quarter of the ceiling for removed-but-open files, the rest for the cache.
        let pin_budget = self.cfg.fd_cache_size / 4;
        Ok(PassthroughFs {
            fds: FdCache::new(self.cfg.fd_cache_size - pin_budget),
            pins: AtomicUsize::new(0),
            pin_budget,
            cfg: self.cfg,
            root_path: self.root,
            inodes: InodeStore::new(root),
            handles: HandleTable::new(max_handles),
            quota,
        })
    }
}

/// Creates, tags and removes a scratch file to check that the host supports user xattrs.
fn probe_xattrs(root: RawFd) -> Result<()> {
    let name = CString::new(format!(
        "{}probe-{:016x}",
        String::from_utf8_lossy(INTERNAL_PREFIX),
        rand::random::<u64>()
    ))
    .map_err(|_| Error::InvalidConfig("probe name".into()))?;
    let fd = platform::open_beneath(
        root,
        &name,
        libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
        0o600,
    )
    .map_err(|e| Error::io("creating the xattr probe file in the share", e))?;
    let res = platform::set_xattr(fd.as_raw_fd(), OVERRIDE_KEY, b"0:0:0600:file", 0);
    // Removes our own scratch file.
    let _ = platform::unlink_at(root, &name, false);
    match res {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::Unsupported(format!(
            "cannot set user xattrs in the share ({e}); mount it with user_xattr or serve it read-only"
        ))),
    }
}

/// Whether `name` is one of the backend's scratch files, hidden from the guest.
pub(crate) fn is_internal(name: &[u8]) -> bool {
    name.starts_with(INTERNAL_PREFIX)
}

impl std::fmt::Debug for PassthroughFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughFs")
            .field("root", &self.root_path)
            .field("readonly", &self.cfg.readonly)
            .field("symlinks", &self.cfg.symlinks)
            .field("inodes", &self.inodes.len())
            .finish()
    }
}
