//! A filesystem wrapper for device tests: forwards the common operations to an inner
//! filesystem, but `fsync` can be held at a [`Gate`] until the test opens it (a "slow disk",
//! with no timing involved) and `statfs` on the inode [`PANIC_INODE`] panics (a buggy
//! backend).

use std::ffi::CStr;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use boxfs::{
    stat64, statvfs64, Context, CreateIn, DirEntry, DynFileSystem, Entry, FileSystem, FsOptions,
    OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

/// `statfs` on this inode panics.
pub const PANIC_INODE: u64 = 0xdead;

/// Where `fsync` waits: the test learns when a request reached the filesystem and decides
/// when it may finish.
#[derive(Default)]
pub struct Gate {
    /// (fsyncs that entered, open)
    state: Mutex<(u32, bool)>,
    cv: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += 1;
        self.cv.notify_all();
        while !s.1 {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until `n` fsyncs have entered the filesystem (at most `timeout`).
    pub fn wait_entered(&self, n: u32, timeout: Duration) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (s, _) = self
            .cv
            .wait_timeout_while(s, timeout, |s| s.0 < n)
            .unwrap_or_else(|e| e.into_inner());
        assert!(s.0 >= n, "fsync never reached the filesystem");
    }

    /// Whether `n` fsyncs entered the filesystem within `timeout` (waits no longer).
    pub fn entered_within(&self, n: u32, timeout: Duration) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (s, _) = self
            .cv
            .wait_timeout_while(s, timeout, |s| s.0 < n)
            .unwrap_or_else(|e| e.into_inner());
        s.0 >= n
    }

    /// Lets every waiting and future fsync through.
    pub fn open(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.cv.notify_all();
    }
}

/// See the module documentation.
pub struct TestFs {
    pub inner: Arc<dyn DynFileSystem>,
    /// `None`: fsync passes straight through.
    pub fsync_gate: Option<Arc<Gate>>,
}

impl FileSystem for TestFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }
    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name)
    }
    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count)
    }
    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }
    fn getattr(&self, ctx: &Context, inode: u64, h: Option<u64>) -> io::Result<(stat64, Duration)> {
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
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }
    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.inner.open(ctx, inode, flags, fuse_flags)
    }
    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.inner.create(ctx, parent, name, args)
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
    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        if let Some(gate) = &self.fsync_gate {
            gate.pass();
        }
        self.inner.fsync(ctx, inode, datasync, handle)
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
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }
    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        if inode == PANIC_INODE {
            panic!("TestFs: statfs on the panic inode");
        }
        self.inner.statfs(ctx, inode)
    }
    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
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
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }
    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }
}

impl boxfs::DynFileSystem for TestFs {}
