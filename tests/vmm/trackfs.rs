//! A filesystem wrapper that keeps a guest session's books, for the session tests: every
//! lookup the guest holds (lookup, create, mkdir, readdirplus entries) and every open handle,
//! and the calls of `init`, `destroy` and `forget`.
//!
//! Its `destroy` does what the issue asks of every backend: it forgets every lookup and
//! releases every handle the session held in the inner filesystem (so a MemFs inner frees
//! unlinked-but-open files), then calls the inner `destroy`. Node ids and handles the session
//! does not hold are refused with `EBADF`, as a backend that dropped them would, so a test can
//! see that a reset session's ids no longer work.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boxfs::{
    stat64, statvfs64, Context, CreateIn, DirEntry, DynFileSystem, Entry, FileSystem, FsOptions,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};

/// See the module documentation.
pub struct TrackFs {
    pub inner: Arc<dyn DynFileSystem>,
    /// node id -> lookups held by the guest.
    lookups: Mutex<HashMap<u64, u64>>,
    /// handle -> (node id, directory?).
    handles: Mutex<HashMap<u64, (u64, bool)>>,
    pub inits: AtomicU64,
    pub destroys: AtomicU64,
    /// FORGET and BATCH_FORGET entries that reached the filesystem.
    pub forgets: AtomicU64,
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl TrackFs {
    pub fn new(inner: Arc<dyn DynFileSystem>) -> TrackFs {
        TrackFs {
            inner,
            lookups: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            inits: AtomicU64::new(0),
            destroys: AtomicU64::new(0),
            forgets: AtomicU64::new(0),
        }
    }

    /// Node ids the guest holds lookups on (the root excluded).
    pub fn held_inodes(&self) -> usize {
        self.lookups.lock().unwrap().len()
    }

    /// Open file and directory handles.
    pub fn held_handles(&self) -> usize {
        self.handles.lock().unwrap().len()
    }

    pub fn destroys(&self) -> u64 {
        self.destroys.load(Ordering::SeqCst)
    }

    fn node(&self, ino: u64) -> io::Result<()> {
        if ino == ROOT_ID || self.lookups.lock().unwrap().contains_key(&ino) {
            Ok(())
        } else {
            Err(ebadf())
        }
    }

    fn handle(&self, ino: u64, fh: u64) -> io::Result<()> {
        match self.handles.lock().unwrap().get(&fh) {
            Some(&(node, _)) if node == ino => Ok(()),
            _ => Err(ebadf()),
        }
    }

    fn entry(&self, e: io::Result<Entry>) -> io::Result<Entry> {
        let e = e?;
        if e.inode != ROOT_ID {
            *self.lookups.lock().unwrap().entry(e.inode).or_insert(0) += 1;
        }
        Ok(e)
    }

    fn opened(&self, ino: u64, fh: Option<u64>, dir: bool) {
        if let Some(fh) = fh {
            self.handles.lock().unwrap().insert(fh, (ino, dir));
        }
    }

    fn forget_one(&self, ctx: &Context, ino: u64, count: u64) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        let mut l = self.lookups.lock().unwrap();
        if let Some(n) = l.get_mut(&ino) {
            let c = count.min(*n);
            *n -= c;
            if *n == 0 {
                l.remove(&ino);
            }
            drop(l);
            self.inner.forget(ctx, ino, c);
        }
    }
}

impl FileSystem for TrackFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inits.fetch_add(1, Ordering::SeqCst);
        self.inner.init(capable)
    }
    fn destroy(&self) {
        self.destroys.fetch_add(1, Ordering::SeqCst);
        let ctx = Context::new();
        let handles: Vec<_> = self.handles.lock().unwrap().drain().collect();
        for (fh, (ino, dir)) in handles {
            let _ = if dir {
                self.inner.releasedir(&ctx, ino, 0, fh)
            } else {
                self.inner.release(&ctx, ino, 0, fh, false, false, None)
            };
        }
        let lookups: Vec<_> = self.lookups.lock().unwrap().drain().collect();
        for (ino, n) in lookups {
            self.inner.forget(&ctx, ino, n);
        }
        self.inner.destroy();
    }
    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.node(parent)?;
        self.entry(self.inner.lookup(ctx, parent, name))
    }
    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.forget_one(ctx, inode, count)
    }
    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for (ino, n) in requests {
            self.forget_one(ctx, ino, n);
        }
    }
    fn getattr(&self, ctx: &Context, inode: u64, h: Option<u64>) -> io::Result<(stat64, Duration)> {
        self.node(inode)?;
        self.inner.getattr(ctx, inode, h)
    }
    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        h: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.node(inode)?;
        if let Some(fh) = h {
            self.handle(inode, fh)?;
        }
        self.inner.setattr(ctx, inode, attr, h, valid)
    }
    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.node(parent)?;
        self.entry(self.inner.mkdir(ctx, parent, name, mode, umask))
    }
    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.node(parent)?;
        self.inner.unlink(ctx, parent, name)
    }
    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.node(parent)?;
        self.inner.rmdir(ctx, parent, name)
    }
    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.node(inode)?;
        let r = self.inner.open(ctx, inode, flags, fuse_flags)?;
        self.opened(inode, r.0, false);
        Ok(r)
    }
    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.node(parent)?;
        let (e, fh, o, p) = self.inner.create(ctx, parent, name, args)?;
        let e = self.entry(Ok(e))?;
        self.opened(e.inode, fh, false);
        Ok((e, fh, o, p))
    }
    #[allow(clippy::too_many_arguments)]
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
        self.handle(inode, handle)?;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
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
        self.handle(inode, handle)?;
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
        )
    }
    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.handle(inode, handle)?;
        self.inner.flush(ctx, inode, handle, lock_owner)
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
        self.handle(inode, handle)?;
        self.handles.lock().unwrap().remove(&handle);
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }
    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.node(inode)?;
        self.inner.statfs(ctx, inode)
    }
    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.node(inode)?;
        let r = self.inner.opendir(ctx, inode, flags)?;
        self.opened(inode, r.0, true);
        Ok(r)
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
        self.handle(inode, handle)?;
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |d, e| {
                let ino = e.inode;
                let n = add_entry(d, e)?;
                // An entry the server encoded is a lookup the guest now holds (the server
                // skips counting "." and "..", which have inode 0 entries here).
                if n > 0 && ino != 0 && ino != ROOT_ID {
                    *self.lookups.lock().unwrap().entry(ino).or_insert(0) += 1;
                }
                Ok(n)
            })
    }
    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.handle(inode, handle)?;
        self.handles.lock().unwrap().remove(&handle);
        self.inner.releasedir(ctx, inode, flags, handle)
    }
}

impl boxfs::DynFileSystem for TrackFs {}
