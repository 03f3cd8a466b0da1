//! The one trait every backend implements, and the adapters that let trait objects be served.

use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    stat64, statvfs64, Context, CreateIn, DirEntry, Entry, FileLock, FileSystem, FsOptions,
    GetxattrReply, IoctlData, ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader,
    ZeroCopyWriter,
};

/// An object-safe filesystem: the FUSE operation set of [`FileSystem`] with `u64` inodes and
/// handles, shareable between threads, plus the device-state hooks of a snapshot.
///
/// Backends are written once against [`FileSystem`], declare themselves with
/// `impl DynFileSystem for MyFs {}` (overriding the state hooks if they can carry their
/// guest-visible state), and are used as `Arc<dyn DynFileSystem>` everywhere: nested inside
/// another backend, or served to a guest. `Box<dyn DynFileSystem>` and [`SharedFs`] implement
/// [`FileSystem`] themselves, so either can be handed to `fuse_backend_rs::api::server::Server`.
pub trait DynFileSystem: FileSystem<Inode = u64, Handle = u64> + Send + Sync {
    /// Writes the guest-visible state of this filesystem (the node ids and handles the guest
    /// holds and, for in-memory backends, the content) to `out`, as a stream: a backend never
    /// builds its whole state as one buffer. Called with the device stopped (no request in
    /// flight).
    ///
    /// The default answers `EOPNOTSUPP`: the backend cannot be snapshotted.
    fn save_state(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let _ = out;
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// Replaces the guest-visible state of this filesystem with a state that
    /// [`save_state`](Self::save_state) wrote, read from `input`. Called with the device
    /// stopped, on a filesystem the guest has not used yet.
    ///
    /// All or nothing: a truncated, corrupt or incompatible stream returns an error and leaves
    /// the filesystem as it was. The default answers `EOPNOTSUPP`.
    fn load_state(&self, input: &mut dyn io::Read) -> io::Result<()> {
        let _ = input;
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    /// How long a guest may cache the absence of a name: when [`SharedFs`] (what a device
    /// serves) gets `ENOENT` from `lookup`, it answers a negative entry (node id 0) with this
    /// entry timeout instead, and the guest kernel asks again only once it expired. The
    /// backend's promise is that a name created behind the guest's back (on the host)
    /// becomes visible within this time, like its positive entries' timeout.
    ///
    /// The default is zero: every miss is a round trip. Layers nested inside another
    /// backend are always asked with `ENOENT` semantics; only the served filesystem's value
    /// counts.
    fn negative_timeout(&self) -> Duration {
        Duration::ZERO
    }
}

impl<T: DynFileSystem> DynFileSystem for Arc<T> {
    fn negative_timeout(&self) -> Duration {
        (**self).negative_timeout()
    }
    fn save_state(&self, out: &mut dyn io::Write) -> io::Result<()> {
        (**self).save_state(out)
    }
    fn load_state(&self, input: &mut dyn io::Read) -> io::Result<()> {
        (**self).load_state(input)
    }
}

impl DynFileSystem for Box<dyn DynFileSystem> {
    fn negative_timeout(&self) -> Duration {
        (**self).negative_timeout()
    }
    fn save_state(&self, out: &mut dyn io::Write) -> io::Result<()> {
        (**self).save_state(out)
    }
    fn load_state(&self, input: &mut dyn io::Read) -> io::Result<()> {
        (**self).load_state(input)
    }
}

impl DynFileSystem for SharedFs {
    fn negative_timeout(&self) -> Duration {
        self.0.negative_timeout()
    }
    fn save_state(&self, out: &mut dyn io::Write) -> io::Result<()> {
        self.0.save_state(out)
    }
    fn load_state(&self, input: &mut dyn io::Read) -> io::Result<()> {
        self.0.load_state(input)
    }
}

/// A cloneable `Arc<dyn DynFileSystem>` that implements [`FileSystem`], so a shared trait
/// object can be served by `fuse_backend_rs::api::server::Server` (which needs a sized type).
///
/// ```
/// use boxfs::{memfs::MemFs, DynFileSystem, SharedFs};
/// use std::sync::Arc;
///
/// let fs: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().build()?);
/// let served = SharedFs::new(fs.clone());
/// let _server = fuse_backend_rs::api::server::Server::new(served);
/// # Ok::<(), boxfs::Error>(())
/// ```
#[derive(Clone)]
pub struct SharedFs(Arc<dyn DynFileSystem>);

impl SharedFs {
    /// Wraps a shared filesystem.
    pub fn new(fs: Arc<dyn DynFileSystem>) -> Self {
        SharedFs(fs)
    }

    /// The wrapped filesystem.
    pub fn inner(&self) -> &Arc<dyn DynFileSystem> {
        &self.0
    }
}

impl From<Arc<dyn DynFileSystem>> for SharedFs {
    fn from(fs: Arc<dyn DynFileSystem>) -> Self {
        SharedFs(fs)
    }
}

/// Implements [`FileSystem`] for a type that dereferences to `dyn DynFileSystem` by forwarding
/// every operation.
macro_rules! forward_filesystem {
    ($ty:ty, $this:ident => $inner:expr, lookup => $lookup:path) => {
        impl FileSystem for $ty {
            type Inode = u64;
            type Handle = u64;

            fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
                let $this = self;
                $inner.init(capable)
            }
            fn destroy(&self) {
                let $this = self;
                $inner.destroy()
            }
            fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
                let $this = self;
                $lookup(&$inner, ctx, parent, name)
            }
            fn forget(&self, ctx: &Context, inode: u64, count: u64) {
                let $this = self;
                $inner.forget(ctx, inode, count)
            }
            fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
                let $this = self;
                $inner.batch_forget(ctx, requests)
            }
            fn getattr(
                &self,
                ctx: &Context,
                inode: u64,
                handle: Option<u64>,
            ) -> io::Result<(stat64, Duration)> {
                let $this = self;
                $inner.getattr(ctx, inode, handle)
            }
            fn setattr(
                &self,
                ctx: &Context,
                inode: u64,
                attr: stat64,
                handle: Option<u64>,
                valid: SetattrValid,
            ) -> io::Result<(stat64, Duration)> {
                let $this = self;
                $inner.setattr(ctx, inode, attr, handle, valid)
            }
            fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
                let $this = self;
                $inner.readlink(ctx, inode)
            }
            fn symlink(
                &self,
                ctx: &Context,
                linkname: &CStr,
                parent: u64,
                name: &CStr,
            ) -> io::Result<Entry> {
                let $this = self;
                $inner.symlink(ctx, linkname, parent, name)
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
                let $this = self;
                $inner.mknod(ctx, inode, name, mode, rdev, umask)
            }
            fn mkdir(
                &self,
                ctx: &Context,
                parent: u64,
                name: &CStr,
                mode: u32,
                umask: u32,
            ) -> io::Result<Entry> {
                let $this = self;
                $inner.mkdir(ctx, parent, name, mode, umask)
            }
            fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
                let $this = self;
                $inner.unlink(ctx, parent, name)
            }
            fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
                let $this = self;
                $inner.rmdir(ctx, parent, name)
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
                let $this = self;
                $inner.rename(ctx, olddir, oldname, newdir, newname, flags)
            }
            fn link(
                &self,
                ctx: &Context,
                inode: u64,
                newparent: u64,
                newname: &CStr,
            ) -> io::Result<Entry> {
                let $this = self;
                $inner.link(ctx, inode, newparent, newname)
            }
            fn open(
                &self,
                ctx: &Context,
                inode: u64,
                flags: u32,
                fuse_flags: u32,
            ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
                let $this = self;
                $inner.open(ctx, inode, flags, fuse_flags)
            }
            fn create(
                &self,
                ctx: &Context,
                parent: u64,
                name: &CStr,
                args: CreateIn,
            ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
                let $this = self;
                $inner.create(ctx, parent, name, args)
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
                let $this = self;
                $inner.read(ctx, inode, handle, w, size, offset, lock_owner, flags)
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
                let $this = self;
                $inner.write(
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
                )
            }
            fn flush(
                &self,
                ctx: &Context,
                inode: u64,
                handle: u64,
                lock_owner: u64,
            ) -> io::Result<()> {
                let $this = self;
                $inner.flush(ctx, inode, handle, lock_owner)
            }
            fn fsync(
                &self,
                ctx: &Context,
                inode: u64,
                datasync: bool,
                handle: u64,
            ) -> io::Result<()> {
                let $this = self;
                $inner.fsync(ctx, inode, datasync, handle)
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
                let $this = self;
                $inner.fallocate(ctx, inode, handle, mode, offset, length)
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
                let $this = self;
                $inner.release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
            }
            fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
                let $this = self;
                $inner.statfs(ctx, inode)
            }
            fn setxattr(
                &self,
                ctx: &Context,
                inode: u64,
                name: &CStr,
                value: &[u8],
                flags: u32,
            ) -> io::Result<()> {
                let $this = self;
                $inner.setxattr(ctx, inode, name, value, flags)
            }
            fn getxattr(
                &self,
                ctx: &Context,
                inode: u64,
                name: &CStr,
                size: u32,
            ) -> io::Result<GetxattrReply> {
                let $this = self;
                $inner.getxattr(ctx, inode, name, size)
            }
            fn listxattr(
                &self,
                ctx: &Context,
                inode: u64,
                size: u32,
            ) -> io::Result<ListxattrReply> {
                let $this = self;
                $inner.listxattr(ctx, inode, size)
            }
            fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
                let $this = self;
                $inner.removexattr(ctx, inode, name)
            }
            fn opendir(
                &self,
                ctx: &Context,
                inode: u64,
                flags: u32,
            ) -> io::Result<(Option<u64>, OpenOptions)> {
                let $this = self;
                $inner.opendir(ctx, inode, flags)
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
                let $this = self;
                $inner.readdir(ctx, inode, handle, size, offset, add_entry)
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
                let $this = self;
                $inner.readdirplus(ctx, inode, handle, size, offset, add_entry)
            }
            fn fsyncdir(
                &self,
                ctx: &Context,
                inode: u64,
                datasync: bool,
                handle: u64,
            ) -> io::Result<()> {
                let $this = self;
                $inner.fsyncdir(ctx, inode, datasync, handle)
            }
            fn releasedir(
                &self,
                ctx: &Context,
                inode: u64,
                flags: u32,
                handle: u64,
            ) -> io::Result<()> {
                let $this = self;
                $inner.releasedir(ctx, inode, flags, handle)
            }
            fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
                let $this = self;
                $inner.access(ctx, inode, mask)
            }
            fn lseek(
                &self,
                ctx: &Context,
                inode: u64,
                handle: u64,
                offset: u64,
                whence: u32,
            ) -> io::Result<u64> {
                let $this = self;
                $inner.lseek(ctx, inode, handle, offset, whence)
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
                let $this = self;
                $inner.getlk(ctx, inode, handle, owner, lock, flags)
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
                let $this = self;
                $inner.setlk(ctx, inode, handle, owner, lock, flags)
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
                let $this = self;
                $inner.setlkw(ctx, inode, handle, owner, lock, flags)
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
                let $this = self;
                $inner.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
            }
            fn bmap(
                &self,
                ctx: &Context,
                inode: u64,
                block: u64,
                blocksize: u32,
            ) -> io::Result<u64> {
                let $this = self;
                $inner.bmap(ctx, inode, block, blocksize)
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
                let $this = self;
                $inner.poll(ctx, inode, handle, khandle, flags, events)
            }
            fn notify_reply(&self) -> io::Result<()> {
                let $this = self;
                $inner.notify_reply()
            }
            fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
                let $this = self;
                $inner.id_remap(ctx)
            }
        }
    };
}

forward_filesystem!(SharedFs, this => (*this.0), lookup => served_lookup);
forward_filesystem!(Box<dyn DynFileSystem>, this => (**this), lookup => plain_lookup);

/// `lookup` of a filesystem used as a layer: a missing name is `ENOENT`.
fn plain_lookup(
    fs: &dyn DynFileSystem,
    ctx: &Context,
    parent: u64,
    name: &CStr,
) -> io::Result<Entry> {
    fs.lookup(ctx, parent, name)
}

/// `lookup` as served to a guest ([`SharedFs`]): a missing name is a negative entry (node id
/// 0) valid for the filesystem's [`negative_timeout`](DynFileSystem::negative_timeout), so
/// the guest kernel caches the miss instead of asking again; `ENOENT` when that is zero.
fn served_lookup(
    fs: &dyn DynFileSystem,
    ctx: &Context,
    parent: u64,
    name: &CStr,
) -> io::Result<Entry> {
    match fs.lookup(ctx, parent, name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            let timeout = fs.negative_timeout();
            if timeout.is_zero() {
                return Err(e);
            }
            Ok(Entry {
                inode: 0,
                generation: 0,
                // SAFETY: `stat64` is a plain C struct for which all-zero bytes are valid.
                attr: unsafe { std::mem::zeroed() },
                attr_flags: 0,
                attr_timeout: Duration::ZERO,
                entry_timeout: timeout,
            })
        }
        r => r,
    }
}
