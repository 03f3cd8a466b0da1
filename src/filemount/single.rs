//! [`SingleFileFs`]: the filesystem served under a file mount's tag.
//!
//! A thin [`DynFileSystem`] wrapper around the [`PassthroughFs`] rooted at the staging
//! directory. It exists for three reasons:
//!
//! * **Confinement to one file.** The root lists only `.`, `..` and the file; every other name
//!   is `ENOENT`, and nothing can be created, removed or renamed (`EACCES`, or `EROFS` for a
//!   read-only mount). PassthroughFs already keeps `..` of the root at the root.
//! * **Following the host path (atomic replace).** The guest bind-mounts the file, which pins its
//!   dentry and so its FUSE node id forever: a new inode would never be looked up. The wrapper
//!   therefore shows the guest one fixed inode ([`FILE_INODE`]) and maps it to whatever the
//!   staged name currently is in PassthroughFs. On each `lookup`, `open` and handle-less
//!   `getattr` it `stat`s the host path; if the host file is a different inode (an editor
//!   replaced it by `rename`) — or, for a copy, was modified — the staged name is re-linked
//!   (re-copied) to the current host file and the fixed inode now serves it. Open handles keep
//!   the file they opened, like on the host. The guest sees the new content on its next open
//!   once its attribute cache expires (the cache policy's timeout; `open` always asks the
//!   daemon, and the first open after a switch drops the guest's cached pages). A host file
//!   that disappears without a replacement keeps being served as it was.
//! * **Never stale, never through a symlink.** The host path is looked at through its pinned
//!   directory, final name only, without following a symlink. When the replacement cannot be
//!   hard-linked (another owner with `protected_hardlinks`, `EMLINK`), a read-write mount
//!   serves a private copy of it with writes refused (`EACCES`: the daemon could not write
//!   that file either, or it could have linked it), so no guest write is ever lost; the
//!   mount is writable again once the host file can be linked. When the replacement cannot
//!   be served at all (unreadable, a symlink, a directory, an I/O error), `lookup`, `open`,
//!   `getattr` and the xattr calls of the file answer `EIO` until the host path names a
//!   servable file again. Each such change is logged once, when it happens. Handles opened
//!   earlier keep the file they opened, as on the host.
//! * **Metadata outside the host file.** Guest `chmod`/`chown` change a mode and owner kept in
//!   memory by this wrapper, never the host file: with a hard link, PassthroughFs's ownership
//!   xattr would land on the user's own inode (an unexpected xattr on their file, and a failure
//!   on files the daemon may write but not tag). The guest metadata lives as long as the mount,
//!   which is the VM's lifetime. Guest `setxattr`/`removexattr` are refused (`ENOTSUP`) for the
//!   same reason; the host file's own user xattrs can be read.

// Casts between libc integer types differ per platform (u16 vs u32 modes).
#![allow(clippy::unnecessary_cast)]

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::staging::{place, HostFile, PlaceError, Placement, Source};
use super::sys;
use crate::{
    errno, stat64, statvfs64, Context, CreateIn, DirEntry, DynFileSystem, Entry, FileLock,
    FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions, SetattrValid,
    ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};

/// The guest-visible inode number of the file (the root is [`ROOT_ID`]).
pub const FILE_INODE: u64 = 2;

use crate::abi::WRITE_KILL_PRIV;

/// Guest-visible owner and permission bits of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    uid: u32,
    gid: u32,
    /// Permission bits only (`0o7777`).
    mode: u32,
}

struct State {
    /// PassthroughFs inode of the staged name (we hold one lookup on it).
    current: u64,
    placement: Placement,
    source: Source,
    /// Open PassthroughFs handle → the PassthroughFs inode it was opened on.
    handles: HashMap<u64, u64>,
    /// Superseded PassthroughFs inodes with open handles → number of open handles.
    retired: HashMap<u64, usize>,
    /// Why the current host file cannot be served (the guest gets `EIO`), if so.
    broken: Option<Broken>,
    /// The host file that could not be served, so it is not tried again until it changes.
    failed: Option<Source>,
    /// The staged file is a copy standing in for a read-write mount's file that could not be
    /// linked: writes are refused (`EACCES`).
    write_refused: bool,
    /// The staged file changed since the last open: the next open drops the guest's cache.
    switched: bool,
}

/// Why the host file cannot be served right now.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Broken {
    /// The host file's name is a symlink now.
    Symlink,
    /// The host file's name is not a regular file now.
    NotFile,
    /// The host file cannot be looked at, linked or copied (the error).
    Unusable(String),
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Symlink => f.write_str("it is a symlink now, which is never followed"),
            Broken::NotFile => f.write_str("it is not a regular file now"),
            Broken::Unusable(e) => write!(f, "it cannot be linked or copied: {e}"),
        }
    }
}

/// The filesystem of one file mount; see the [module documentation](crate::filemount).
pub struct SingleFileFs {
    inner: Arc<dyn DynFileSystem>,
    host_path: PathBuf,
    host: HostFile,
    share: PathBuf,
    share_fd: Arc<OwnedFd>,
    name: CString,
    name_os: OsString,
    readonly: bool,
    allow_copy: bool,
    state: Mutex<State>,
    meta: Mutex<Meta>,
}

impl std::fmt::Debug for SingleFileFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFileFs")
            .field("host_path", &self.host_path)
            .field("share", &self.share)
            .field("readonly", &self.readonly)
            .finish()
    }
}

pub(crate) struct Parts {
    pub inner: Arc<dyn DynFileSystem>,
    pub host_path: PathBuf,
    pub host: HostFile,
    pub share: PathBuf,
    pub share_fd: Arc<OwnedFd>,
    pub name_os: OsString,
    pub readonly: bool,
    pub allow_copy: bool,
    pub placement: Placement,
    pub source: Source,
    pub owner: (u32, u32),
    pub mode: u32,
}

impl SingleFileFs {
    pub(crate) fn new(p: Parts) -> io::Result<SingleFileFs> {
        let name = CString::new(p.name_os.as_encoded_bytes()).map_err(|_| errno(libc::EINVAL))?;
        let entry = p.inner.lookup(&Context::new(), ROOT_ID, &name)?;
        Ok(SingleFileFs {
            inner: p.inner,
            host_path: p.host_path,
            host: p.host,
            share: p.share,
            share_fd: p.share_fd,
            name,
            name_os: p.name_os,
            readonly: p.readonly,
            allow_copy: p.allow_copy,
            state: Mutex::new(State {
                current: entry.inode,
                placement: p.placement,
                source: p.source,
                handles: HashMap::new(),
                retired: HashMap::new(),
                broken: None,
                failed: None,
                write_refused: false,
                switched: false,
            }),
            meta: Mutex::new(Meta {
                uid: p.owner.0,
                gid: p.owner.1,
                mode: p.mode & 0o7777,
            }),
        })
    }

    /// How the file is currently placed in the staging directory.
    pub fn placement(&self) -> Placement {
        self.state.lock().placement
    }

    /// Number of guest handles open on the file.
    pub fn handle_count(&self) -> usize {
        self.state.lock().handles.len()
    }

    /// Re-links (re-copies) the staged name if the host path now names another file; marks
    /// the file unservable when the host path names nothing servable.
    fn refresh(&self) {
        let (kind, now) = match self.host.stat() {
            Ok(k) => k,
            // Gone without a replacement: keep serving what is staged.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                self.set_broken(&mut self.state.lock(), Broken::Unusable(e.to_string()));
                return;
            }
        };
        let mut st = self.state.lock();
        match kind {
            sys::Kind::File => {}
            sys::Kind::Symlink => return self.set_broken(&mut st, Broken::Symlink),
            sys::Kind::Other => return self.set_broken(&mut st, Broken::NotFile),
        }
        if st.broken.is_none() && st.source.unchanged(st.placement, &now) {
            return;
        }
        if st.broken.is_some() && st.failed == Some(now) {
            return; // The same file that could not be served: not tried again.
        }
        // A read-write mount falls back to a copy too, with writes refused.
        let (placement, source) = match place(&self.host, &self.share_fd, &self.name_os, true) {
            Ok(p) => p,
            Err(e) => {
                let why = match e {
                    PlaceError::Symlink => Broken::Symlink,
                    PlaceError::NotFile => Broken::NotFile,
                    PlaceError::NoLink(e) | PlaceError::Io(e) => Broken::Unusable(e.to_string()),
                };
                st.failed = Some(now);
                return self.set_broken(&mut st, why);
            }
        };
        let ctx = Context::new();
        match self.inner.lookup(&ctx, ROOT_ID, &self.name) {
            Ok(e) => {
                let old = std::mem::replace(&mut st.current, e.inode);
                if old == e.inode {
                    self.inner.forget(&ctx, old, 1);
                } else {
                    let open = st.handles.values().filter(|&&i| i == old).count();
                    if open > 0 {
                        st.retired.insert(old, open);
                    } else {
                        self.inner.forget(&ctx, old, 1);
                    }
                }
                st.placement = placement;
                st.source = source;
                st.switched = true;
                st.failed = None;
                let refuse_writes = placement == Placement::Copied && !self.allow_copy;
                if refuse_writes && !st.write_refused {
                    tracing::warn!(
                        "file mount {}: the replaced host file cannot be hard-linked; serving \
                         a copy of it, read-only (writes fail with EACCES) until it can be",
                        self.host_path.display()
                    );
                }
                st.write_refused = refuse_writes;
                if let Some(was) = st.broken.take() {
                    tracing::info!(
                        "file mount {}: serving the host file again (it was unservable: {was})",
                        self.host_path.display()
                    );
                }
            }
            Err(e) => {
                st.failed = Some(now);
                self.set_broken(&mut st, Broken::Unusable(format!("re-staged file: {e}")));
            }
        }
    }

    /// Marks the file unservable, logging the change once.
    fn set_broken(&self, st: &mut State, why: Broken) {
        if st.broken.as_ref() != Some(&why) {
            tracing::warn!(
                "file mount {}: the host file cannot be served, the guest gets EIO: {why}",
                self.host_path.display()
            );
            st.broken = Some(why);
        }
    }

    /// `EIO` while the host file cannot be served.
    fn servable(&self) -> io::Result<()> {
        if self.state.lock().broken.is_some() {
            return Err(errno(libc::EIO));
        }
        Ok(())
    }

    /// `EROFS` for a read-only mount, `EACCES` while a copy stands in for the file.
    fn writable(&self) -> io::Result<()> {
        if self.readonly {
            return Err(errno(libc::EROFS));
        }
        if self.state.lock().write_refused {
            return Err(errno(libc::EACCES));
        }
        Ok(())
    }

    fn current(&self) -> u64 {
        self.state.lock().current
    }

    /// The PassthroughFs inode a guest handle was opened on.
    fn handle_inode(&self, inode: u64, handle: u64) -> io::Result<u64> {
        if inode != FILE_INODE {
            return Err(errno(libc::EBADF));
        }
        self.state
            .lock()
            .handles
            .get(&handle)
            .copied()
            .ok_or_else(|| errno(libc::EBADF))
    }

    fn patch_file(&self, mut st: stat64) -> stat64 {
        let m = *self.meta.lock();
        st.st_ino = FILE_INODE as _;
        st.st_mode = (libc::S_IFREG as u32 | m.mode) as _;
        st.st_uid = m.uid;
        st.st_gid = m.gid;
        st.st_nlink = 1;
        st
    }

    fn patch_root(&self, mut st: stat64) -> stat64 {
        let m = *self.meta.lock();
        st.st_mode = (libc::S_IFDIR as u32 | 0o555) as _;
        st.st_uid = m.uid;
        st.st_gid = m.gid;
        st
    }

    fn file_attr(&self) -> io::Result<(stat64, Duration)> {
        let (st, t) = self.inner.getattr(&Context::new(), self.current(), None)?;
        Ok((self.patch_file(st), t))
    }

    fn file_entry(&self) -> io::Result<Entry> {
        let (attr, t) = self.file_attr()?;
        Ok(Entry {
            inode: FILE_INODE,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: t,
            entry_timeout: t,
        })
    }

    /// The errno for any attempt to change the root directory.
    fn refuse(&self) -> io::Error {
        errno(if self.readonly {
            libc::EROFS
        } else {
            libc::EACCES
        })
    }

    fn check_inode(&self, inode: u64) -> io::Result<()> {
        if inode == ROOT_ID || inode == FILE_INODE {
            Ok(())
        } else {
            Err(errno(libc::ENOENT))
        }
    }

    /// POSIX permission check against the guest metadata (`mask` of `R_OK|W_OK|X_OK`).
    fn permitted(&self, ctx: &Context, mode: u32, uid: u32, gid: u32, mask: u32) -> io::Result<()> {
        let mask = mask & 0o7;
        if mask & libc::W_OK as u32 != 0 && self.readonly {
            return Err(errno(libc::EROFS));
        }
        if ctx.uid == 0 {
            // Root may do anything but execute a file nobody may execute.
            if mask & libc::X_OK as u32 != 0 && mode & 0o111 == 0 {
                return Err(errno(libc::EACCES));
            }
            return Ok(());
        }
        let bits = if ctx.uid == uid {
            (mode >> 6) & 7
        } else if ctx.gid == gid {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        if bits & mask == mask {
            Ok(())
        } else {
            Err(errno(libc::EACCES))
        }
    }

    fn after_release(&self, handle: u64) {
        let mut st = self.state.lock();
        let Some(ino) = st.handles.remove(&handle) else {
            return;
        };
        if let Some(n) = st.retired.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                st.retired.remove(&ino);
                self.inner.forget(&Context::new(), ino, 1);
            }
        }
    }
}

/// The daemon's own context for requests forwarded to PassthroughFs: as root, PassthroughFs
/// never clears setuid bits in its ownership xattr (which would write to the host file); the
/// wrapper does that on its own metadata instead.
fn inner_ctx() -> Context {
    Context::new()
}

impl FileSystem for SingleFileFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let opts = self.inner.init(capable)?;
        // Plain readdir only: readdirplus would hand out PassthroughFs inodes.
        Ok(sys::without_readdirplus(opts))
    }

    /// Ends the guest session: releases every handle the guest still holds, gives back the
    /// staged file's lookup, destroys PassthroughFs, then looks the staged name up again
    /// for the next session. The guest metadata (mode, owner) lives on with the mount.
    fn destroy(&self) {
        let ctx = Context::new();
        let mut st = self.state.lock();
        for (h, ino) in std::mem::take(&mut st.handles) {
            let _ = self.inner.release(&ctx, ino, 0, h, false, true, None);
        }
        for (ino, _) in std::mem::take(&mut st.retired) {
            self.inner.forget(&ctx, ino, 1);
        }
        self.inner.forget(&ctx, st.current, 1);
        self.inner.destroy();
        match self.inner.lookup(&ctx, ROOT_ID, &self.name) {
            Ok(e) => st.current = e.inode,
            Err(e) => {
                let why = Broken::Unusable(format!("staged file lost: {e}"));
                self.set_broken(&mut st, why);
            }
        }
        st.switched = true;
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        if parent == FILE_INODE {
            return Err(errno(libc::ENOTDIR));
        }
        if parent != ROOT_ID {
            return Err(errno(libc::ENOENT));
        }
        // `.` and `..` are EINVAL here (as in PassthroughFs): the guest kernel resolves them
        // itself, so `..` of the root never leaves the root.
        crate::name::validate(name)?;
        if name != self.name.as_c_str() {
            return Err(errno(libc::ENOENT));
        }
        self.refresh();
        self.servable()?;
        self.file_entry()
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        if inode == ROOT_ID {
            self.inner.forget(ctx, ROOT_ID, count);
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
        match inode {
            ROOT_ID => {
                let (st, t) = self.inner.getattr(ctx, ROOT_ID, handle)?;
                Ok((self.patch_root(st), t))
            }
            FILE_INODE => match handle {
                Some(h) => {
                    let ino = self.handle_inode(inode, h)?;
                    let (st, t) = self.inner.getattr(&inner_ctx(), ino, Some(h))?;
                    Ok((self.patch_file(st), t))
                }
                None => {
                    self.refresh();
                    self.servable()?;
                    self.file_attr()
                }
            },
            _ => Err(errno(libc::ENOENT)),
        }
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.check_inode(inode)?;
        if inode == ROOT_ID || self.readonly {
            return Err(self.refuse());
        }
        if handle.is_none() {
            self.servable()?;
        }
        #[cfg(target_os = "linux")]
        let kill = SetattrValid::KILL_SUIDGID;
        #[cfg(not(target_os = "linux"))]
        let kill = SetattrValid::empty();
        let virt = SetattrValid::MODE | SetattrValid::UID | SetattrValid::GID | kill;
        if valid.intersects(virt) {
            let mut m = self.meta.lock();
            let mut new = *m;
            if valid.contains(SetattrValid::UID) && attr.st_uid != m.uid {
                if ctx.uid != 0 {
                    return Err(errno(libc::EPERM));
                }
                new.uid = attr.st_uid;
            }
            if valid.contains(SetattrValid::GID) && attr.st_gid != m.gid {
                if ctx.uid != 0 && ctx.uid != m.uid {
                    return Err(errno(libc::EPERM));
                }
                new.gid = attr.st_gid;
            }
            if valid.contains(SetattrValid::MODE) {
                if ctx.uid != 0 && ctx.uid != m.uid {
                    return Err(errno(libc::EPERM));
                }
                new.mode = attr.st_mode as u32 & 0o7777;
            } else if new.uid != m.uid || new.gid != m.gid || valid.intersects(kill) {
                new.mode &= !(libc::S_ISUID as u32 | libc::S_ISGID as u32);
            }
            *m = new;
        }
        let rest = valid - virt;
        if !rest.is_empty() && handle.is_none() {
            // Size and times would change a stand-in copy, not the host file. (A handle
            // keeps the file it was opened on, writable if it was opened so.)
            self.writable()?;
        }
        if ctx.uid != 0 && !rest.is_empty() {
            // Truncating needs write permission; setting times needs ownership, or write
            // permission when setting them to "now".
            let m = *self.meta.lock();
            let writable = self
                .permitted(ctx, m.mode, m.uid, m.gid, libc::W_OK as u32)
                .is_ok();
            let explicit_times = valid.intersects(SetattrValid::ATIME | SetattrValid::MTIME)
                && !valid.contains(SetattrValid::ATIME_NOW | SetattrValid::MTIME_NOW);
            if valid.contains(SetattrValid::SIZE) && !writable {
                return Err(errno(libc::EACCES));
            }
            if explicit_times && ctx.uid != m.uid {
                return Err(errno(libc::EPERM));
            }
            if valid.intersects(SetattrValid::ATIME | SetattrValid::MTIME)
                && ctx.uid != m.uid
                && !writable
            {
                return Err(errno(libc::EACCES));
            }
        }
        if !rest.is_empty() {
            let ino = match handle {
                Some(h) => self.handle_inode(inode, h)?,
                None => self.current(),
            };
            self.inner.setattr(&inner_ctx(), ino, attr, handle, rest)?;
        }
        match handle {
            Some(h) => self.getattr(ctx, inode, Some(h)),
            None => self.file_attr(),
        }
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.check_inode(inode)?;
        Err(errno(libc::EINVAL))
    }

    fn symlink(&self, _: &Context, _: &CStr, parent: u64, _: &CStr) -> io::Result<Entry> {
        self.check_inode(parent)?;
        Err(self.refuse())
    }

    fn mknod(&self, _: &Context, p: u64, _: &CStr, _: u32, _: u32, _: u32) -> io::Result<Entry> {
        self.check_inode(p)?;
        Err(self.refuse())
    }

    fn mkdir(&self, _: &Context, p: u64, _: &CStr, _: u32, _: u32) -> io::Result<Entry> {
        self.check_inode(p)?;
        Err(self.refuse())
    }

    fn unlink(&self, _: &Context, p: u64, _: &CStr) -> io::Result<()> {
        self.check_inode(p)?;
        Err(self.refuse())
    }

    fn rmdir(&self, _: &Context, p: u64, _: &CStr) -> io::Result<()> {
        self.check_inode(p)?;
        Err(self.refuse())
    }

    fn rename(&self, _: &Context, p: u64, _: &CStr, _: u64, _: &CStr, _: u32) -> io::Result<()> {
        self.check_inode(p)?;
        Err(self.refuse())
    }

    fn link(&self, _: &Context, inode: u64, _: u64, _: &CStr) -> io::Result<Entry> {
        self.check_inode(inode)?;
        Err(self.refuse())
    }

    fn create(
        &self,
        _: &Context,
        parent: u64,
        _: &CStr,
        _: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.check_inode(parent)?;
        Err(self.refuse())
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        match inode {
            FILE_INODE => {}
            ROOT_ID => return Err(errno(libc::EISDIR)),
            _ => return Err(errno(libc::ENOENT)),
        }
        let f = flags as i32;
        let mut mask = match f & libc::O_ACCMODE {
            libc::O_RDONLY => libc::R_OK,
            libc::O_WRONLY => libc::W_OK,
            _ => libc::R_OK | libc::W_OK,
        } as u32;
        if f & libc::O_TRUNC != 0 {
            mask |= libc::W_OK as u32;
        }
        let m = *self.meta.lock();
        self.permitted(ctx, m.mode, m.uid, m.gid, mask)?;
        self.refresh();
        self.servable()?;
        if mask & libc::W_OK as u32 != 0 {
            self.writable()?;
        }
        let mut st = self.state.lock();
        let ino = st.current;
        let (h, mut opts, passthrough) = self.inner.open(&inner_ctx(), ino, flags, fuse_flags)?;
        if let Some(h) = h {
            st.handles.insert(h, ino);
        }
        if std::mem::take(&mut st.switched) {
            // Another file than the guest may have cached: drop its pages.
            opts.remove(OpenOptions::KEEP_CACHE);
        }
        drop(st);
        if f & libc::O_TRUNC != 0 && ctx.uid != 0 {
            self.meta.lock().mode &= !(libc::S_ISUID as u32 | libc::S_ISGID as u32);
        }
        Ok((h, opts, passthrough))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let ino = self.handle_inode(inode, handle)?;
        self.inner.read(
            &inner_ctx(),
            ino,
            handle,
            w,
            size,
            offset,
            lock_owner,
            flags,
        )
    }

    #[allow(clippy::too_many_arguments)]
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
        let ino = self.handle_inode(inode, handle)?;
        if self.readonly {
            return Err(errno(libc::EROFS));
        }
        if ctx.uid != 0 || fuse_flags & WRITE_KILL_PRIV != 0 {
            self.meta.lock().mode &= !(libc::S_ISUID as u32 | libc::S_ISGID as u32);
        }
        self.inner.write(
            &inner_ctx(),
            ino,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags & !WRITE_KILL_PRIV,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        let ino = self.handle_inode(inode, handle)?;
        self.inner.flush(ctx, ino, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let ino = self.handle_inode(inode, handle)?;
        self.inner.fsync(ctx, ino, datasync, handle)
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
        let ino = self.handle_inode(inode, handle)?;
        self.inner.fallocate(ctx, ino, handle, mode, offset, length)
    }

    #[allow(clippy::too_many_arguments)]
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
        let ino = self.handle_inode(inode, handle)?;
        let res = self
            .inner
            .release(ctx, ino, flags, handle, flush, flock_release, lock_owner);
        self.after_release(handle);
        res
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.check_inode(inode)?;
        self.inner.statfs(ctx, ROOT_ID)
    }

    fn setxattr(&self, _: &Context, inode: u64, _: &CStr, _: &[u8], _: u32) -> io::Result<()> {
        self.check_inode(inode)?;
        if self.readonly {
            return Err(errno(libc::EROFS));
        }
        Err(errno(sys::ENOTSUP))
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let ino = match inode {
            ROOT_ID => ROOT_ID,
            FILE_INODE => {
                self.servable()?;
                self.current()
            }
            _ => return Err(errno(libc::ENOENT)),
        };
        self.inner.getxattr(ctx, ino, name, size)
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let ino = match inode {
            ROOT_ID => ROOT_ID,
            FILE_INODE => {
                self.servable()?;
                self.current()
            }
            _ => return Err(errno(libc::ENOENT)),
        };
        self.inner.listxattr(ctx, ino, size)
    }

    fn removexattr(&self, _: &Context, inode: u64, _: &CStr) -> io::Result<()> {
        self.check_inode(inode)?;
        if self.readonly {
            return Err(errno(libc::EROFS));
        }
        Err(errno(sys::ENOTSUP))
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        match inode {
            ROOT_ID => self.inner.opendir(ctx, ROOT_ID, flags),
            FILE_INODE => Err(errno(libc::ENOTDIR)),
            _ => Err(errno(libc::ENOENT)),
        }
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if inode != ROOT_ID {
            return Err(errno(libc::ENOTDIR));
        }
        let name = self.name.as_bytes();
        self.inner
            .readdir(ctx, ROOT_ID, handle, size, offset, &mut |mut e| {
                if e.name == b"." || e.name == b".." {
                    add_entry(e)
                } else if e.name == name {
                    e.ino = FILE_INODE;
                    add_entry(e)
                } else {
                    // Not ours (the staged name's temporary twin while re-linking): skipped,
                    // using no room in the reply.
                    Ok(1)
                }
            })
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        if inode != ROOT_ID {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.fsyncdir(ctx, ROOT_ID, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        if inode != ROOT_ID {
            return Err(errno(libc::ENOTDIR));
        }
        self.inner.releasedir(ctx, ROOT_ID, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let m = *self.meta.lock();
        match inode {
            ROOT_ID => {
                if mask & libc::W_OK as u32 != 0 {
                    return Err(self.refuse());
                }
                self.permitted(ctx, 0o555, m.uid, m.gid, mask)
            }
            FILE_INODE => {
                self.permitted(ctx, m.mode, m.uid, m.gid, mask)?;
                if mask & libc::W_OK as u32 != 0 {
                    self.writable()?;
                }
                Ok(())
            }
            _ => Err(errno(libc::ENOENT)),
        }
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let ino = self.handle_inode(inode, handle)?;
        self.inner.lseek(ctx, ino, handle, offset, whence)
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
        let ino = self.handle_inode(inode, handle)?;
        self.inner.getlk(ctx, ino, handle, owner, lock, flags)
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
        let ino = self.handle_inode(inode, handle)?;
        self.inner.setlk(ctx, ino, handle, owner, lock, flags)
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
        let ino = self.handle_inode(inode, handle)?;
        self.inner.setlkw(ctx, ino, handle, owner, lock, flags)
    }
}

/// Device state: not carried yet (the default hooks answer `EOPNOTSUPP`).
impl crate::DynFileSystem for SingleFileFs {}
