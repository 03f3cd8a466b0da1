//! [`HookFs`]: a wrapper that shows every request to a [`Hook`] before and after the backend
//! it wraps.
//!
//! A hook can observe (an audit log, per-operation counters), deny a request with an errno
//! ([`Verdict::Deny`]), or answer it itself ([`Verdict::Answer`]) without the backend seeing
//! it. Without a hook, `HookFs` forwards each call after one `Option` check.
//!
//! ```
//! use boxfs::memfs::MemFs;
//! use boxfs::volumes::{Hook, HookFs, Op, Request, Verdict};
//! use boxfs::{Context, DynFileSystem, FileSystem, ROOT_ID};
//! use std::ffi::CString;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! /// Counts lookups; refuses every mkdir.
//! #[derive(Default)]
//! struct Audit(AtomicU64);
//! impl Hook for Audit {
//!     fn before(&self, req: &Request<'_>) -> Verdict {
//!         match req.op {
//!             Op::Mkdir => Verdict::Deny(libc::EPERM),
//!             _ => Verdict::Continue,
//!         }
//!     }
//!     fn after(&self, req: &Request<'_>, _result: Result<(), i32>) {
//!         if req.op == Op::Lookup {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! let audit = Arc::new(Audit::default());
//! let fs = HookFs::new(Arc::new(MemFs::builder().build()?)).with_hook(audit.clone());
//! let ctx = Context::new();
//! let err = fs.mkdir(&ctx, ROOT_ID, &CString::new("d")?, 0o755, 0).unwrap_err();
//! assert_eq!(err.raw_os_error(), Some(libc::EPERM));
//! assert!(fs.lookup(&ctx, ROOT_ID, &CString::new("d")?).is_err());
//! assert_eq!(audit.0.load(Ordering::Relaxed), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    errno, stat64, statvfs64, Context, CreateIn, DirEntry, DynFileSystem, Entry, FileLock,
    FileSystem, FsOptions, GetxattrReply, IoctlData, ListxattrReply, OpenOptions, SetattrValid,
    ZeroCopyReader, ZeroCopyWriter,
};

/// The operation of a [`Request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // One variant per FUSE operation of the same name.
pub enum Op {
    Init,
    Destroy,
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Symlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Link,
    Open,
    Create,
    Read,
    Write,
    Flush,
    Fsync,
    Fallocate,
    Release,
    Statfs,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Opendir,
    Readdir,
    Readdirplus,
    Fsyncdir,
    Releasedir,
    Access,
    Lseek,
    Getlk,
    Setlk,
    Setlkw,
    Ioctl,
    Bmap,
    Poll,
}

/// What a hook sees of one request.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Request<'a> {
    /// The operation.
    pub op: Op,
    /// The caller's credentials.
    pub ctx: &'a Context,
    /// The node (the parent directory for name operations; 0 for `init`/`destroy`).
    pub inode: u64,
    /// The name operated on (lookup, create, remove, link, rename's old name, xattr name).
    pub name: Option<&'a CStr>,
    /// The destination directory of `rename` and `link`.
    pub new_parent: Option<u64>,
    /// The destination name of `rename` and `link`, the target of `symlink`.
    pub new_name: Option<&'a CStr>,
    /// The file or directory handle.
    pub handle: Option<u64>,
    /// Offset of `read`, `write`, `fallocate`, `lseek`, `readdir`.
    pub offset: u64,
    /// Size of `read`, `write`, `fallocate`, the xattr calls, `readdir`.
    pub size: u64,
    /// Open flags, rename flags, access mask, forget count.
    pub flags: u64,
}

impl<'a> Request<'a> {
    fn new(op: Op, ctx: &'a Context, inode: u64) -> Self {
        Request {
            op,
            ctx,
            inode,
            name: None,
            new_parent: None,
            new_name: None,
            handle: None,
            offset: 0,
            size: 0,
            flags: 0,
        }
    }
    fn name(mut self, n: &'a CStr) -> Self {
        self.name = Some(n);
        self
    }
    fn handle(mut self, h: u64) -> Self {
        self.handle = Some(h);
        self
    }
    fn at(mut self, offset: u64, size: u64) -> Self {
        self.offset = offset;
        self.size = size;
        self
    }
    fn flags(mut self, f: u64) -> Self {
        self.flags = f;
        self
    }
    fn to(mut self, parent: u64, name: &'a CStr) -> Self {
        self.new_parent = Some(parent);
        self.new_name = Some(name);
        self
    }
}

/// A hook's decision on a request.
#[derive(Debug)]
pub enum Verdict {
    /// Pass the request to the wrapped backend.
    Continue,
    /// Fail the request with this errno; the backend does not see it.
    Deny(i32),
    /// Answer the request; the backend does not see it. An answer of the wrong kind for the
    /// operation fails it with `EIO`.
    Answer(Answer),
}

/// A reply given by a hook.
#[derive(Debug)]
pub enum Answer {
    /// For `lookup`, `mkdir`, `mknod`, `symlink`, `link` (no backend reference is taken, so
    /// use an inode the guest's forgets cannot harm).
    Entry(Entry),
    /// For `getattr`, `setattr`.
    Attr(stat64, Duration),
    /// For `read` (at most `size` bytes are sent), `readlink`, `getxattr`, `listxattr`.
    Data(Vec<u8>),
    /// Success for the operations without a reply value (`unlink`, `rmdir`, `rename`,
    /// `flush`, `fsync`, `fallocate`, `release`, `setxattr`, `removexattr`, `fsyncdir`,
    /// `releasedir`, `access`, `setlk`, `setlkw`).
    Done,
}

/// Sees the requests of a [`HookFs`].
pub trait Hook: Send + Sync {
    /// Called before the backend; the default lets every request through.
    fn before(&self, req: &Request<'_>) -> Verdict {
        let _ = req;
        Verdict::Continue
    }

    /// Called after the request was served (by the backend, the hook, or denied) with its
    /// outcome. `forget`, `batch_forget`, `init` and `destroy` are observed only: they always
    /// reach the backend.
    fn after(&self, req: &Request<'_>, result: Result<(), i32>) {
        let _ = (req, result);
    }
}

/// A backend wrapped with an optional [`Hook`] that sees every request before and after the
/// backend: it can observe (an audit log, per-operation counters), deny a request with an
/// errno ([`Verdict::Deny`]) or answer it itself ([`Verdict::Answer`]). Without a hook every
/// call is forwarded after one `Option` check. Wrap any backend with it: a volume of a
/// [`VolumeFs`](super::VolumeFs), a layer of a [`DualFs`](crate::dualfs::DualFs).
///
/// ```
/// use boxfs::memfs::MemFs;
/// use boxfs::volumes::{Hook, HookFs, Request, Verdict};
/// use boxfs::{Context, FileSystem, ROOT_ID};
/// use std::sync::Arc;
///
/// /// Refuses every operation on a name (lookups included) to one user.
/// struct NoWritesFor(u32);
/// impl Hook for NoWritesFor {
///     fn before(&self, req: &Request<'_>) -> Verdict {
///         if req.ctx.uid == self.0 && req.name.is_some() {
///             Verdict::Deny(libc::EROFS)
///         } else {
///             Verdict::Continue
///         }
///     }
/// }
/// let fs = HookFs::new(Arc::new(MemFs::builder().build()?)).with_hook(Arc::new(NoWritesFor(1000)));
/// assert!(fs.getattr(&Context::new(), ROOT_ID, None).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct HookFs {
    inner: Arc<dyn DynFileSystem>,
    hook: Option<Arc<dyn Hook>>,
}

impl std::fmt::Debug for HookFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookFs")
            .field("hooked", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl HookFs {
    /// Wraps `inner` without a hook (every call is forwarded).
    pub fn new(inner: Arc<dyn DynFileSystem>) -> Self {
        HookFs { inner, hook: None }
    }

    /// Sets the hook.
    pub fn with_hook(mut self, hook: Arc<dyn Hook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn DynFileSystem> {
        &self.inner
    }
}

fn outcome<T>(r: &io::Result<T>) -> Result<(), i32> {
    match r {
        Ok(_) => Ok(()),
        Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

fn run<T>(
    hook: &dyn Hook,
    req: Request<'_>,
    call: impl FnOnce() -> io::Result<T>,
    answer: impl FnOnce(Answer) -> io::Result<T>,
) -> io::Result<T> {
    let r = match hook.before(&req) {
        Verdict::Continue => call(),
        Verdict::Deny(e) => Err(errno(e)),
        Verdict::Answer(a) => answer(a),
    };
    hook.after(&req, outcome(&r));
    r
}

fn observe(hook: &dyn Hook, req: Request<'_>, call: impl FnOnce()) {
    call();
    hook.after(&req, Ok(()));
}

fn wrong() -> io::Error {
    errno(libc::EIO)
}

fn entry(a: Answer) -> io::Result<Entry> {
    match a {
        Answer::Entry(e) => Ok(e),
        _ => Err(wrong()),
    }
}

fn attr(a: Answer) -> io::Result<(stat64, Duration)> {
    match a {
        Answer::Attr(st, d) => Ok((st, d)),
        _ => Err(wrong()),
    }
}

fn done(a: Answer) -> io::Result<()> {
    match a {
        Answer::Done => Ok(()),
        _ => Err(wrong()),
    }
}

fn none<T>(_: Answer) -> io::Result<T> {
    Err(wrong())
}

/// Calls `$call` directly without a hook, through [`run`] with one.
macro_rules! hooked {
    ($self:ident, $req:expr, $call:expr, $ans:expr) => {
        match &$self.hook {
            None => $call,
            Some(h) => run(&**h, $req, || $call, $ans),
        }
    };
}

impl FileSystem for HookFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let r = self.inner.init(capable);
        if let Some(h) = &self.hook {
            h.after(&Request::new(Op::Init, &Context::new(), 0), outcome(&r));
        }
        r
    }

    fn destroy(&self) {
        match &self.hook {
            None => self.inner.destroy(),
            Some(h) => observe(&**h, Request::new(Op::Destroy, &Context::new(), 0), || {
                self.inner.destroy()
            }),
        }
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        hooked!(
            self,
            Request::new(Op::Lookup, ctx, parent).name(name),
            self.inner.lookup(ctx, parent, name),
            entry
        )
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        match &self.hook {
            None => self.inner.forget(ctx, inode, count),
            Some(h) => observe(
                &**h,
                Request::new(Op::Forget, ctx, inode).flags(count),
                || self.inner.forget(ctx, inode, count),
            ),
        }
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        match &self.hook {
            None => self.inner.batch_forget(ctx, requests),
            Some(h) => {
                for &(inode, count) in &requests {
                    h.after(&Request::new(Op::Forget, ctx, inode).flags(count), Ok(()));
                }
                self.inner.batch_forget(ctx, requests)
            }
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let mut req = Request::new(Op::Getattr, ctx, inode);
        req.handle = handle;
        hooked!(self, req, self.inner.getattr(ctx, inode, handle), attr)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr_in: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let mut req = Request::new(Op::Setattr, ctx, inode).flags(valid.bits() as u64);
        req.handle = handle;
        hooked!(
            self,
            req,
            self.inner.setattr(ctx, inode, attr_in, handle, valid),
            attr
        )
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        hooked!(
            self,
            Request::new(Op::Readlink, ctx, inode),
            self.inner.readlink(ctx, inode),
            |a| match a {
                Answer::Data(d) => Ok(d),
                _ => Err(wrong()),
            }
        )
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let mut req = Request::new(Op::Symlink, ctx, parent).name(name);
        req.new_name = Some(linkname);
        hooked!(
            self,
            req,
            self.inner.symlink(ctx, linkname, parent, name),
            entry
        )
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
        hooked!(
            self,
            Request::new(Op::Mknod, ctx, parent)
                .name(name)
                .flags(mode as u64),
            self.inner.mknod(ctx, parent, name, mode, rdev, umask),
            entry
        )
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        hooked!(
            self,
            Request::new(Op::Mkdir, ctx, parent)
                .name(name)
                .flags(mode as u64),
            self.inner.mkdir(ctx, parent, name, mode, umask),
            entry
        )
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        hooked!(
            self,
            Request::new(Op::Unlink, ctx, parent).name(name),
            self.inner.unlink(ctx, parent, name),
            done
        )
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        hooked!(
            self,
            Request::new(Op::Rmdir, ctx, parent).name(name),
            self.inner.rmdir(ctx, parent, name),
            done
        )
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
        hooked!(
            self,
            Request::new(Op::Rename, ctx, olddir)
                .name(oldname)
                .to(newdir, newname)
                .flags(flags as u64),
            self.inner
                .rename(ctx, olddir, oldname, newdir, newname, flags),
            done
        )
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        hooked!(
            self,
            Request::new(Op::Link, ctx, inode).to(newparent, newname),
            self.inner.link(ctx, inode, newparent, newname),
            entry
        )
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        hooked!(
            self,
            Request::new(Op::Open, ctx, inode).flags(flags as u64),
            self.inner.open(ctx, inode, flags, fuse_flags),
            none
        )
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        hooked!(
            self,
            Request::new(Op::Create, ctx, parent)
                .name(name)
                .flags(args.flags as u64),
            self.inner.create(ctx, parent, name, args),
            none
        )
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
        match &self.hook {
            None => self
                .inner
                .read(ctx, inode, handle, w, size, offset, lock_owner, flags),
            Some(h) => {
                let req = Request::new(Op::Read, ctx, inode)
                    .handle(handle)
                    .at(offset, size as u64);
                let r = match h.before(&req) {
                    Verdict::Continue => self
                        .inner
                        .read(ctx, inode, handle, w, size, offset, lock_owner, flags),
                    Verdict::Deny(e) => Err(errno(e)),
                    Verdict::Answer(Answer::Data(d)) => {
                        let n = d.len().min(size as usize);
                        w.write_all(&d[..n]).map(|_| n)
                    }
                    Verdict::Answer(_) => Err(wrong()),
                };
                h.after(&req, outcome(&r));
                r
            }
        }
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
        hooked!(
            self,
            Request::new(Op::Write, ctx, inode)
                .handle(handle)
                .at(offset, size as u64),
            self.inner.write(
                ctx,
                inode,
                handle,
                r,
                size,
                offset,
                lock_owner,
                delayed_write,
                flags,
                fuse_flags,
            ),
            none
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        hooked!(
            self,
            Request::new(Op::Flush, ctx, inode).handle(handle),
            self.inner.flush(ctx, inode, handle, lock_owner),
            done
        )
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        hooked!(
            self,
            Request::new(Op::Fsync, ctx, inode).handle(handle),
            self.inner.fsync(ctx, inode, datasync, handle),
            done
        )
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
        hooked!(
            self,
            Request::new(Op::Fallocate, ctx, inode)
                .handle(handle)
                .at(offset, length)
                .flags(mode as u64),
            self.inner
                .fallocate(ctx, inode, handle, mode, offset, length),
            done
        )
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
        hooked!(
            self,
            Request::new(Op::Release, ctx, inode).handle(handle),
            self.inner
                .release(ctx, inode, flags, handle, flush, flock_release, lock_owner),
            done
        )
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        hooked!(
            self,
            Request::new(Op::Statfs, ctx, inode),
            self.inner.statfs(ctx, inode),
            none
        )
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        hooked!(
            self,
            Request::new(Op::Setxattr, ctx, inode)
                .name(name)
                .at(0, value.len() as u64)
                .flags(flags as u64),
            self.inner.setxattr(ctx, inode, name, value, flags),
            done
        )
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        hooked!(
            self,
            Request::new(Op::Getxattr, ctx, inode)
                .name(name)
                .at(0, size as u64),
            self.inner.getxattr(ctx, inode, name, size),
            |a| match a {
                Answer::Data(d) if size == 0 => Ok(GetxattrReply::Count(d.len() as u32)),
                Answer::Data(d) if d.len() > size as usize => Err(errno(libc::ERANGE)),
                Answer::Data(d) => Ok(GetxattrReply::Value(d)),
                _ => Err(wrong()),
            }
        )
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        hooked!(
            self,
            Request::new(Op::Listxattr, ctx, inode).at(0, size as u64),
            self.inner.listxattr(ctx, inode, size),
            |a| match a {
                Answer::Data(d) if size == 0 => Ok(ListxattrReply::Count(d.len() as u32)),
                Answer::Data(d) if d.len() > size as usize => Err(errno(libc::ERANGE)),
                Answer::Data(d) => Ok(ListxattrReply::Names(d)),
                _ => Err(wrong()),
            }
        )
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        hooked!(
            self,
            Request::new(Op::Removexattr, ctx, inode).name(name),
            self.inner.removexattr(ctx, inode, name),
            done
        )
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        hooked!(
            self,
            Request::new(Op::Opendir, ctx, inode).flags(flags as u64),
            self.inner.opendir(ctx, inode, flags),
            none
        )
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
        hooked!(
            self,
            Request::new(Op::Readdir, ctx, inode)
                .handle(handle)
                .at(offset, size as u64),
            self.inner
                .readdir(ctx, inode, handle, size, offset, add_entry),
            none
        )
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        hooked!(
            self,
            Request::new(Op::Readdirplus, ctx, inode)
                .handle(handle)
                .at(offset, size as u64),
            self.inner
                .readdirplus(ctx, inode, handle, size, offset, add_entry),
            none
        )
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        hooked!(
            self,
            Request::new(Op::Fsyncdir, ctx, inode).handle(handle),
            self.inner.fsyncdir(ctx, inode, datasync, handle),
            done
        )
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        hooked!(
            self,
            Request::new(Op::Releasedir, ctx, inode).handle(handle),
            self.inner.releasedir(ctx, inode, flags, handle),
            done
        )
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        hooked!(
            self,
            Request::new(Op::Access, ctx, inode).flags(mask as u64),
            self.inner.access(ctx, inode, mask),
            done
        )
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        hooked!(
            self,
            Request::new(Op::Lseek, ctx, inode)
                .handle(handle)
                .at(offset, 0)
                .flags(whence as u64),
            self.inner.lseek(ctx, inode, handle, offset, whence),
            none
        )
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
        hooked!(
            self,
            Request::new(Op::Getlk, ctx, inode).handle(handle),
            self.inner.getlk(ctx, inode, handle, owner, lock, flags),
            none
        )
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
        hooked!(
            self,
            Request::new(Op::Setlk, ctx, inode).handle(handle),
            self.inner.setlk(ctx, inode, handle, owner, lock, flags),
            done
        )
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
        hooked!(
            self,
            Request::new(Op::Setlkw, ctx, inode).handle(handle),
            self.inner.setlkw(ctx, inode, handle, owner, lock, flags),
            done
        )
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        hooked!(
            self,
            Request::new(Op::Ioctl, ctx, inode)
                .handle(handle)
                .flags(cmd as u64),
            self.inner
                .ioctl(ctx, inode, handle, flags, cmd, data, out_size),
            none
        )
    }

    fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64> {
        hooked!(
            self,
            Request::new(Op::Bmap, ctx, inode),
            self.inner.bmap(ctx, inode, block, blocksize),
            none
        )
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        khandle: u64,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        hooked!(
            self,
            Request::new(Op::Poll, ctx, inode).handle(handle),
            self.inner.poll(ctx, inode, handle, khandle, flags, events),
            none
        )
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

/// Device state: the wrapped filesystem's (the hook itself keeps no guest-visible state).
impl crate::DynFileSystem for HookFs {
    fn save_state(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.inner.save_state(out)
    }

    fn load_state(&self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.inner.load_state(input)
    }
}
