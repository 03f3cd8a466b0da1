//! [`VolumeFs`]: one filesystem made of a root backend and a table of volumes mounted at guest
//! paths, attached and detached while the guest runs.
//!
//! A sandbox needs several things from the host at once (a root filesystem, a workspace, a
//! scratch `/tmp`, a few config files, an init binary). `VolumeFs` serves them all through one
//! device: each request is dispatched to the volume its node belongs to, and mount points
//! appear in their parent directory (in lookups and listings, whether or not the parent
//! backend has such a name; a mount point shadows an existing name).
//!
//! * **Isolation.** Node ids and handles are namespaced per volume (see below); a crafted id
//!   never reaches another volume or the successor of a detached one (`ESTALE`, `EBADF`).
//!   `rename` and `link` across volumes answer `EXDEV`, `statfs` answers for the volume of the
//!   inode.
//! * **Submounts.** When the guest accepted `FUSE_SUBMOUNTS` at INIT, every volume root is
//!   announced with `FUSE_ATTR_SUBMOUNT`: the guest gives the volume its own superblock and
//!   `st_dev`, so `find -xdev`, `du -x` and `mv` see the boundaries.
//! * **Options** ([`VolumeOptions`]): read-only (`EROFS`), owner and mode of the mount point,
//!   hide patterns (`.git/`, `.ssh`, `*.pem`): hidden names are not listed, are `ENOENT` on
//!   lookup and removal, and `EACCES` as the target of a create, link or rename.
//! * **Runtime changes.** [`VolumeFs::attach`] makes a volume visible at the guest's next
//!   lookup. [`VolumeFs::detach`] refuses ([`VolumeError::Busy`]) while the guest has files or
//!   directories open in the volume, unless forced; nodes the guest merely caches answer
//!   `ESTALE` afterwards, and a forced detach ends the open handles the same way. The detached
//!   backend's session is ended (`destroy`), which frees everything it held for the guest.
//! * **File volumes.** A volume's root may be a regular file: a [`VirtualFile`], or any
//!   backend with [`VolumeOptions::root_name`] naming the file in the backend's root (for
//!   example the file of a [`SingleFileFs`](crate::filemount::SingleFileFs)). It appears at
//!   its path (`/etc/app.conf`, `/init.krun`) as that file.
//!
//! A directory with mount points is listed from a snapshot taken when the guest starts
//! reading it (offset 0): mount points attached or detached while the guest reads such a
//! directory, or a directory gaining its first or losing its last mount point meanwhile, may
//! make that one listing show an entry twice or miss one, as a concurrent rename would.
//!
//! Node ids: `slot (12 bits) | generation (12 bits) | local id (40 bits)`. Slot 0 is the root
//! backend, whose ids below 2^39 pass unchanged (so [`ROOT_ID`] is the root's root). A volume's
//! ids below 2^39 are encoded directly; larger ones (a nested `VolumeFs`, DualFs's derived
//! ids) go through a per-volume map with reference counts. Handles use the same layout. The
//! table is read through an atomic snapshot: requests take no lock.
//!
//! INIT is forwarded to every backend (and to volumes attached later with the same
//! capabilities); the root backend's answer is the device's, plus `SUBMOUNTS` when offered.
//!
//! ```
//! use boxfs::memfs::MemFs;
//! use boxfs::volumes::{DetachMode, VirtualFile, VolumeFs, VolumeOptions};
//! use boxfs::{Context, DynFileSystem, FileSystem, ROOT_ID};
//! use std::ffi::CString;
//! use std::sync::Arc;
//!
//! let root: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().build()?);
//! let vfs = VolumeFs::new(root);
//! let tmp: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().build()?);
//! vfs.attach("/tmp", tmp, VolumeOptions::new())?;
//! let init = Arc::new(VirtualFile::from_bytes(b"#!/bin/sh\n".to_vec()).mode(0o755));
//! vfs.attach("/init.krun", init, VolumeOptions::new())?;
//!
//! let ctx = Context::new();
//! let tmp_dir = vfs.lookup(&ctx, ROOT_ID, &CString::new("tmp")?)?;
//! let file = vfs.mkdir(&ctx, tmp_dir.inode, &CString::new("scratch")?, 0o755, 0)?;
//! let init = vfs.lookup(&ctx, ROOT_ID, &CString::new("init.krun")?)?;
//! assert_eq!(init.attr.st_mode & 0o7777, 0o755);
//! // Renames across volumes are EXDEV, like across mounts.
//! let err = vfs
//!     .rename(&ctx, tmp_dir.inode, &CString::new("scratch")?, ROOT_ID, &CString::new("s")?, 0)
//!     .unwrap_err();
//! assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
//!
//! vfs.detach("/tmp", DetachMode::Normal)?;
//! // The guest's cached node of the detached volume is stale now.
//! assert_eq!(
//!     vfs.getattr(&ctx, file.inode, None).unwrap_err().raw_os_error(),
//!     Some(libc::ESTALE)
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Casts between libc integer types differ per platform (u16 vs u32 modes).
#![allow(clippy::unnecessary_cast)]

mod fs_impl;
mod hook;
mod ids;
mod pattern;
mod state;
mod virtual_file;

pub use hook::{Answer, Hook, HookFs, Op, Request, Verdict};
pub use virtual_file::VirtualFile;

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::{Context, DynFileSystem, FsOptions, ROOT_ID};
use ids::{Overflow, MAX_GEN, SLOTS};
use pattern::Pattern;

/// Options of one volume.
#[derive(Clone, Debug, Default)]
pub struct VolumeOptions {
    readonly: bool,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    hide: Vec<String>,
    root_name: Option<CString>,
}

impl VolumeOptions {
    /// Default options: writable, the backend's own root owner and mode, nothing hidden.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every mutation of the volume answers `EROFS` (and opening for writing).
    pub fn readonly(mut self, ro: bool) -> Self {
        self.readonly = ro;
        self
    }

    /// The owner the mount point shows (the backend's root keeps its own).
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }

    /// The permission bits (`0o7777`) the mount point shows.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode & 0o7777);
        self
    }

    /// Hides a name: one component with `*` and `?` wildcards (`*.pem`), hidden in every
    /// directory of the volume, or only in its root with a leading `/` (`/secret`). A trailing
    /// `/` (`.git/`) is accepted; the name is hidden whatever its type.
    pub fn hide(mut self, pattern: impl Into<String>) -> Self {
        self.hide.push(pattern.into());
        self
    }

    /// Serves the entry `name` of the backend's root as the volume's root instead of the
    /// backend's root itself: a file volume at a file path (the file of a single-file mount).
    pub fn root_name(mut self, name: &CStr) -> Self {
        self.root_name = Some(name.to_owned());
        self
    }

    /// Whether the volume is read-only.
    pub fn is_readonly(&self) -> bool {
        self.readonly
    }
}

/// How [`VolumeFs::detach`] treats a volume the guest has files or directories open in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetachMode {
    /// Refuse with [`VolumeError::Busy`].
    Normal,
    /// Detach anyway: the open handles answer `EBADF`, their nodes `ESTALE`.
    Force,
}

/// Why attaching or detaching a volume failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// The guest path is not absolute and normalized, or is `/` (the root backend's place).
    #[error("invalid volume path {0:?}: absolute, no `.`/`..`/empty components, not `/`")]
    InvalidPath(String),
    /// A volume is already attached at the path.
    #[error("a volume is already attached at {0}")]
    Exists(String),
    /// No volume is attached at the path.
    #[error("no volume is attached at {0}")]
    NotFound(String),
    /// The guest has files or directories open in the volume (and the detach was not forced).
    #[error("volume {path} is busy: {open} open files or directories")]
    Busy {
        /// The volume's path.
        path: String,
        /// Open handles.
        open: u64,
    },
    /// Another volume is mounted below this one; detach it first.
    #[error("volume {path} has volumes mounted below it ({child})")]
    HasChildren {
        /// The volume's path.
        path: String,
        /// One volume below it.
        child: String,
    },
    /// Every slot of the mount table is in use or retired.
    #[error("the mount table is full")]
    TableFull,
    /// An invalid option (for example a hide pattern).
    #[error("invalid volume option: {0}")]
    InvalidOption(String),
    /// The mount point's parent directory or the volume root could not be resolved.
    #[error("{path}: {source}")]
    Io {
        /// The volume's path.
        path: String,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// One attached volume (slot 0: the root backend).
pub(crate) struct Volume {
    slot: usize,
    gen: u16,
    tag: u64,
    path: String,
    fs: Arc<dyn DynFileSystem>,
    opts: VolumeOptions,
    hide: Vec<Pattern>,
    /// Backend id of the volume's root node.
    root: u64,
    /// Whether the root is a directory.
    root_is_dir: bool,
    /// Every node id goes through `nodes`, so only ids handed out are accepted (volumes with
    /// hide patterns: a backend may answer for ids of hidden nodes never looked up).
    mapped_only: bool,
    nodes: Overflow,
    handles: Overflow,
    /// Guest handles open in the volume (files and directories).
    open: AtomicU64,
    /// Set while a detach decides: new opens are refused.
    closing: AtomicBool,
}

/// A mount point inside a directory.
struct Mount {
    name: Vec<u8>,
    vol: Arc<Volume>,
}

/// An immutable snapshot of the mount table.
#[derive(Default)]
pub(crate) struct Table {
    /// Indexed by slot.
    slots: Vec<Option<Arc<Volume>>>,
    /// (slot, backend directory id) → the mount points in that directory.
    mounts: FxHashMap<(usize, u64), Vec<Mount>>,
    /// Volume slot → the directory it is mounted in (slot, backend id), for `..`.
    up: FxHashMap<usize, (usize, u64)>,
}

impl Table {
    #[inline]
    fn volume(&self, slot: usize, gen: u16) -> Option<&Arc<Volume>> {
        match self.slots.get(slot) {
            Some(Some(v)) if v.gen == gen => Some(v),
            _ => None,
        }
    }

    #[inline]
    fn mount(&self, slot: usize, dir: u64, name: &[u8]) -> Option<&Arc<Volume>> {
        if self.mounts.is_empty() {
            return None;
        }
        self.mounts
            .get(&(slot, dir))?
            .iter()
            .find(|m| m.name == name)
            .map(|m| &m.vol)
    }
}

/// A built table, the backend lookups it holds, and the volumes whose mount point's parent
/// did not resolve.
type Built = (Table, Vec<(Arc<Volume>, u64)>, Vec<(String, io::Error)>);

/// The control plane's state (attach, detach, init, destroy), behind one mutex that requests
/// never take.
struct Control {
    /// Last generation given to each slot (0: never used).
    gens: Vec<u16>,
    /// Attached volumes by path (not the root).
    volumes: BTreeMap<String, Arc<Volume>>,
    /// Backend lookups the table holds on mount-point directories: (volume, backend id).
    held: Vec<(Arc<Volume>, u64)>,
    /// The capabilities the guest offered at INIT, once it did.
    capable: Option<FsOptions>,
}

/// A root backend plus a table of volumes at guest paths; see the
/// [module documentation](self).
pub struct VolumeFs {
    table: ArcSwap<Table>,
    control: Mutex<Control>,
    root: Arc<Volume>,
    /// The guest accepted submounts at INIT and announcing them is enabled.
    submounts: AtomicBool,
    announce: bool,
    /// Guest caching imposed on every volume's answers (none by default).
    pub(crate) cache: crate::cache::CacheOverride,
    /// Merged listings of directories with mount points, by guest handle.
    listings: Mutex<FxHashMap<u64, Arc<Vec<fs_impl::Listed>>>>,
    /// Set once a merged listing was made: `releasedir` looks in `listings` only then.
    has_listings: AtomicBool,
}

impl std::fmt::Debug for VolumeFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeFs")
            .field("volumes", &self.volumes())
            .finish_non_exhaustive()
    }
}

/// One row of [`VolumeFs::volumes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Guest path.
    pub path: String,
    /// Read-only volume.
    pub readonly: bool,
    /// Guest handles open in the volume.
    pub open_handles: u64,
    /// Whether the mount point currently resolves (its parent directory exists).
    pub reachable: bool,
}

#[allow(clippy::too_many_arguments)]
fn new_volume(
    slot: usize,
    gen: u16,
    path: String,
    fs: Arc<dyn DynFileSystem>,
    opts: VolumeOptions,
    hide: Vec<Pattern>,
    root: u64,
    root_is_dir: bool,
) -> Volume {
    Volume {
        slot,
        gen,
        tag: ids::tag(slot, gen),
        path,
        fs,
        opts,
        mapped_only: !hide.is_empty(),
        hide,
        root,
        root_is_dir,
        nodes: Overflow::default(),
        handles: Overflow::default(),
        open: AtomicU64::new(0),
        closing: AtomicBool::new(false),
    }
}

/// Checks a guest path and splits it into components.
fn components(path: &str) -> Result<Vec<&str>, VolumeError> {
    let bad = || VolumeError::InvalidPath(path.to_owned());
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    if rest.is_empty() {
        return Err(bad());
    }
    let comps: Vec<&str> = rest.split('/').collect();
    for c in &comps {
        if c.is_empty() || *c == "." || *c == ".." || c.len() > 255 || c.contains('\0') {
            return Err(bad());
        }
    }
    Ok(comps)
}

/// Whether a backend attribute is a directory.
fn is_dir(mode: u32) -> bool {
    mode & libc::S_IFMT as u32 == libc::S_IFDIR as u32
}

impl VolumeFs {
    /// A `VolumeFs` serving `root` at `/`, with no volume yet. Submounts are announced when
    /// the guest accepts them.
    pub fn new(root: Arc<dyn DynFileSystem>) -> VolumeFs {
        let root = Arc::new(new_volume(
            0,
            0,
            "/".into(),
            root,
            VolumeOptions::new(),
            Vec::new(),
            ROOT_ID,
            true,
        ));
        let mut slots = vec![None; 1];
        slots[0] = Some(root.clone());
        VolumeFs {
            table: ArcSwap::from_pointee(Table {
                slots,
                ..Table::default()
            }),
            control: Mutex::new(Control {
                gens: vec![0; 1],
                volumes: BTreeMap::new(),
                held: Vec::new(),
                capable: None,
            }),
            root,
            submounts: AtomicBool::new(false),
            announce: true,
            cache: crate::cache::CacheOverride::default(),
            listings: Mutex::new(FxHashMap::default()),
            has_listings: AtomicBool::new(false),
        }
    }

    /// Makes `table` the current table.
    fn publish(&self, table: Table) {
        self.table.store(Arc::new(table));
    }

    /// Whether volume roots are announced as submounts (when the guest accepts them; default
    /// `true`). Without, all volumes share the guest's one `st_dev`.
    pub fn announce_submounts(mut self, on: bool) -> Self {
        self.announce = on;
        self
    }

    /// Guest caching policy for every volume: its open flags and (unless
    /// [`timeouts`](Self::timeouts) is called) its entry and attribute timeouts replace what
    /// the volumes' backends answer. Default: each backend's own settings pass through.
    pub fn cache_policy(mut self, policy: crate::CachePolicy) -> Self {
        self.cache.policy = Some(policy);
        self
    }

    /// Explicit entry and attribute timeouts for every entry and attribute reply.
    pub fn timeouts(mut self, entry: Duration, attr: Duration) -> Self {
        self.cache.timeouts = Some((entry, attr));
        self
    }

    /// Offer (or refuse) the guest a writeback cache, whatever the backends ask for. Only safe
    /// when nothing but this mount changes what the volumes serve. Default: the root
    /// backend's answer.
    pub fn writeback(mut self, on: bool) -> Self {
        self.cache.writeback = Some(on);
        self
    }

    /// The attached volumes, by path.
    pub fn volumes(&self) -> Vec<VolumeInfo> {
        let c = self.control.lock();
        let t = self.table.load();
        c.volumes
            .values()
            .map(|v| VolumeInfo {
                path: v.path.clone(),
                readonly: v.opts.readonly,
                open_handles: v.open.load(Ordering::Relaxed),
                reachable: t.up.contains_key(&v.slot),
            })
            .collect()
    }

    /// Attaches `fs` at the guest path `path` (absolute, normalized, not `/`). The mount
    /// point's parent directory must exist (in the root backend or in another volume); the
    /// guest sees the volume at its next lookup of the path.
    pub fn attach(
        &self,
        path: &str,
        fs: Arc<dyn DynFileSystem>,
        opts: VolumeOptions,
    ) -> Result<(), VolumeError> {
        components(path)?;
        let hide = opts
            .hide
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| VolumeError::InvalidOption(e.to_string()))?;
        let mut c = self.control.lock();
        if c.volumes.contains_key(path) {
            return Err(VolumeError::Exists(path.into()));
        }
        let slot = (1..SLOTS)
            .find(|&s| {
                c.gens.get(s).is_none_or(|&g| g < MAX_GEN)
                    && !c.volumes.values().any(|v| v.slot == s)
            })
            .ok_or(VolumeError::TableFull)?;
        let io_err = |source| VolumeError::Io {
            path: path.into(),
            source,
        };
        if let Some(capable) = c.capable {
            fs.init(capable).map_err(io_err)?;
        }
        let (root, root_is_dir) = volume_root(&*fs, &opts).map_err(io_err)?;
        if c.gens.len() <= slot {
            c.gens.resize(slot + 1, 0);
        }
        let gen = c.gens[slot] + 1;
        let vol = Arc::new(new_volume(
            slot,
            gen,
            path.into(),
            fs,
            opts,
            hide,
            root,
            root_is_dir,
        ));
        let mut volumes = c.volumes.clone();
        volumes.insert(path.into(), vol.clone());
        let (table, held, unresolved) = self.build(&volumes);
        if let Some((_, e)) = unresolved.into_iter().find(|(p, _)| p == path) {
            release_held(held);
            release_root(&vol);
            return Err(io_err(e));
        }
        c.gens[slot] = gen;
        c.volumes = volumes;
        self.publish(table);
        release_held(std::mem::replace(&mut c.held, held));
        Ok(())
    }

    /// Detaches the volume at `path`. With [`DetachMode::Normal`] a volume the guest has
    /// files or directories open in is left attached ([`VolumeError::Busy`]). The guest's
    /// cached nodes of the volume answer `ESTALE` from now on, its handles `EBADF`; the
    /// backend's session is ended with `destroy`.
    pub fn detach(&self, path: &str, mode: DetachMode) -> Result<(), VolumeError> {
        let mut c = self.control.lock();
        let vol = c
            .volumes
            .get(path)
            .cloned()
            .ok_or_else(|| VolumeError::NotFound(path.into()))?;
        let below = format!("{path}/");
        if let Some(child) = c.volumes.keys().find(|p| p.starts_with(&below)) {
            return Err(VolumeError::HasChildren {
                path: path.into(),
                child: child.clone(),
            });
        }
        // Opens register before they reach the backend and look at `closing` after: with
        // both sides sequentially consistent, either the open sees `closing` (and backs out)
        // or this sees the open.
        vol.closing.store(true, Ordering::SeqCst);
        let open = vol.open.load(Ordering::SeqCst);
        if open > 0 && mode == DetachMode::Normal {
            vol.closing.store(false, Ordering::SeqCst);
            return Err(VolumeError::Busy {
                path: path.into(),
                open,
            });
        }
        let mut volumes = c.volumes.clone();
        volumes.remove(path);
        let (table, held, _) = self.build(&volumes);
        c.volumes = volumes;
        self.publish(table);
        release_held(std::mem::replace(&mut c.held, held));
        self.listings
            .lock()
            .retain(|&h, _| ids::split(h).0 != vol.slot);
        release_root(&vol);
        vol.fs.destroy();
        Ok(())
    }

    /// Builds the table for `volumes` (plus the root): resolves each mount point's parent
    /// directory, shorter paths first, through the volumes already placed. Returns the table,
    /// the backend lookups it holds, and the volumes whose parent did not resolve.
    fn build(&self, volumes: &BTreeMap<String, Arc<Volume>>) -> Built {
        let ctx = Context::new();
        let mut table = Table::default();
        let max = volumes.values().map(|v| v.slot).max().unwrap_or(0);
        table.slots = vec![None; max + 1];
        table.slots[0] = Some(self.root.clone());
        let mut held = Vec::new();
        let mut unresolved = Vec::new();
        let mut order: Vec<&Arc<Volume>> = volumes.values().collect();
        order.sort_by_key(|v| (v.path.matches('/').count(), v.path.clone()));
        for vol in order {
            table.slots[vol.slot] = Some(vol.clone());
            let comps: Vec<&str> = vol.path[1..].split('/').collect();
            let Some((last, dirs)) = comps.split_last() else {
                continue;
            };
            let mut cur = self.root.clone();
            let mut dir = ROOT_ID;
            let mut failed = None;
            for comp in dirs {
                if let Some(m) = table.mount(cur.slot, dir, comp.as_bytes()) {
                    if !m.root_is_dir {
                        failed = Some(crate::errno(libc::ENOTDIR));
                        break;
                    }
                    let m = m.clone();
                    dir = m.root;
                    cur = m;
                    continue;
                }
                let name = match CString::new(*comp) {
                    Ok(n) => n,
                    Err(_) => {
                        failed = Some(crate::errno(libc::EINVAL));
                        break;
                    }
                };
                match cur.fs.lookup(&ctx, dir, &name) {
                    Ok(e) => {
                        held.push((cur.clone(), e.inode));
                        if !is_dir(e.attr.st_mode as u32) {
                            failed = Some(crate::errno(libc::ENOTDIR));
                            break;
                        }
                        dir = e.inode;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                unresolved.push((vol.path.clone(), e));
                continue;
            }
            table.up.insert(vol.slot, (cur.slot, dir));
            let list = table.mounts.entry((cur.slot, dir)).or_default();
            list.retain(|m| m.name != last.as_bytes());
            list.push(Mount {
                name: last.as_bytes().to_vec(),
                vol: vol.clone(),
            });
        }
        (table, held, unresolved)
    }

    /// INIT for every backend; remembers the capabilities for volumes attached later.
    fn init_all(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut c = self.control.lock();
        c.capable = Some(capable);
        let want = self.root.fs.init(capable)?;
        for v in c.volumes.values() {
            v.fs.init(capable)?;
        }
        let sub = submounts_flag();
        let on = self.announce && !sub.is_empty() && capable.contains(sub);
        self.submounts.store(on, Ordering::Release);
        let want = self.cache.init(want, capable);
        // Volumes attached later may not clear privileges themselves (a MemFs keeps a
        // `security.capability` xattr across writes), and INIT is not negotiated again: the
        // guest kernel keeps that duty whatever the root backend offers.
        #[cfg(target_os = "linux")]
        let want = want - FsOptions::HANDLE_KILLPRIV_V2;
        Ok(if on { want | sub } else { want })
    }

    /// Ends the session: every backend's `destroy`, then every volume is placed again under
    /// a new generation (the guest's old ids are stale; the next session starts clean).
    fn destroy_all(&self) {
        let mut c = self.control.lock();
        self.listings.lock().clear();
        release_held(std::mem::take(&mut c.held));
        let old: Vec<Arc<Volume>> = c.volumes.values().cloned().collect();
        for v in &old {
            v.closing.store(true, Ordering::SeqCst);
            v.fs.destroy();
        }
        self.root.fs.destroy();
        let mut volumes = BTreeMap::new();
        for v in old {
            let slot = v.slot;
            let gen = c.gens[slot];
            if gen >= MAX_GEN {
                tracing::error!("VolumeFs: slot of {} exhausted, volume dropped", v.path);
                continue;
            }
            match volume_root(&*v.fs, &v.opts) {
                Ok((root, root_is_dir)) => {
                    c.gens[slot] = gen + 1;
                    let nv = new_volume(
                        slot,
                        gen + 1,
                        v.path.clone(),
                        v.fs.clone(),
                        v.opts.clone(),
                        v.hide.clone(),
                        root,
                        root_is_dir,
                    );
                    volumes.insert(v.path.clone(), Arc::new(nv));
                }
                Err(e) => tracing::error!("VolumeFs: volume {} lost its root: {e}", v.path),
            }
        }
        let (table, held, _) = self.build(&volumes);
        c.volumes = volumes;
        c.held = held;
        self.publish(table);
    }
}

/// The FUSE `SUBMOUNTS` capability (none on macOS).
fn submounts_flag() -> FsOptions {
    #[cfg(target_os = "linux")]
    {
        FsOptions::SUBMOUNTS
    }
    #[cfg(not(target_os = "linux"))]
    {
        FsOptions::empty()
    }
}

/// Finds a volume's root node: the backend's root, or its entry `root_name` (one lookup held).
fn volume_root(fs: &dyn DynFileSystem, opts: &VolumeOptions) -> io::Result<(u64, bool)> {
    let ctx = Context::new();
    match &opts.root_name {
        Some(name) => {
            let e = fs.lookup(&ctx, ROOT_ID, name)?;
            Ok((e.inode, is_dir(e.attr.st_mode as u32)))
        }
        None => {
            let (st, _) = fs.getattr(&ctx, ROOT_ID, None)?;
            Ok((ROOT_ID, is_dir(st.st_mode as u32)))
        }
    }
}

/// Gives back the lookup a `root_name` volume holds on its root.
fn release_root(v: &Volume) {
    if v.opts.root_name.is_some() {
        v.fs.forget(&Context::new(), v.root, 1);
    }
}

fn release_held(held: Vec<(Arc<Volume>, u64)>) {
    let ctx = Context::new();
    for (v, ino) in held {
        v.fs.forget(&ctx, ino, 1);
    }
}
