//! Shared setup for the DualFs test binaries: prepared lower directories, stacks, a backend
//! wrapper that injects faults, and a snapshot of host trees.
#![allow(dead_code, clippy::too_many_arguments)]

use std::ffi::CStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use boxfs::dualfs::{DualFs, Policy};
use boxfs::passthrough::PassthroughFs;
use boxfs::{
    stat64, statvfs64, Context, CreateIn, DirEntry, DynFileSystem, Entry, FileSystem, FsOptions,
    GetxattrReply, ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

pub use crate::passthrough_common::tempdir;

/// A read-only PassthroughFs over `dir`.
pub fn ro(dir: &Path) -> Arc<dyn DynFileSystem> {
    Arc::new(
        PassthroughFs::builder(dir)
            .readonly(true)
            .build()
            .expect("PassthroughFs builds"),
    )
}

/// A writable PassthroughFs over `dir`.
pub fn rw(dir: &Path) -> Arc<dyn DynFileSystem> {
    Arc::new(
        PassthroughFs::builder(dir)
            .build()
            .expect("PassthroughFs builds"),
    )
}

pub fn dual(
    a: Arc<dyn DynFileSystem>,
    b: Arc<dyn DynFileSystem>,
    policy: impl Policy + 'static,
) -> Arc<dyn DynFileSystem> {
    Arc::new(
        DualFs::builder()
            .backend_a(a)
            .backend_b(b)
            .policy(policy)
            .build()
            .expect("DualFs builds"),
    )
}

/// A snapshot of a host tree: (relative path, kind, content or link target, xattrs).
pub type Snapshot = Vec<(String, String, Vec<u8>, Vec<(String, Vec<u8>)>)>;

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf.truncate(n as usize);
    let mut out = Vec::new();
    for name in buf.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = std::ffi::CString::new(name).expect("name");
        let mut v = vec![0u8; 65536];
        // SAFETY: valid strings and buffer.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if m >= 0 {
            v.truncate(m as usize);
            out.push((String::from_utf8_lossy(name).into_owned(), v));
        }
    }
    out.sort();
    out
}

/// Every path, type, content and xattr under `dir`, sorted.
pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            let rel = p.strip_prefix(dir).expect("prefix").display().to_string();
            let ft = e.file_type().expect("file type");
            let x = xattrs(&p);
            if ft.is_dir() {
                out.push((rel, "dir".into(), Vec::new(), x));
                stack.push(p);
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&p).expect("readlink");
                out.push((rel, "link".into(), t.display().to_string().into_bytes(), x));
            } else {
                out.push((rel, "file".into(), std::fs::read(&p).expect("read"), x));
            }
        }
    }
    out.sort();
    out
}

/// Faults a [`Faulty`] backend injects.
#[derive(Default)]
pub struct Faults {
    /// Writes left before every further write fails with `EIO` (negative: never).
    pub writes_left: AtomicI64,
    /// Fail every rename with `EIO`.
    pub fail_rename: AtomicBool,
    /// Fail every unlink and rmdir with `EIO` (so a failed copy cannot clean up, as after a
    /// crash).
    pub fail_unlink: AtomicBool,
    /// Number of `create` calls seen.
    pub creates: AtomicU64,
    /// Fail every releasedir with `EIO` (after releasing the directory in the backend).
    pub fail_releasedir: AtomicBool,
    /// Number of `opendir` calls that succeeded.
    pub opendirs: AtomicU64,
    /// Number of `releasedir` calls seen.
    pub releasedirs: AtomicU64,
    /// Number of `fallocate` calls seen.
    pub fallocates: AtomicU64,
}

/// A backend wrapper that forwards everything and injects [`Faults`].
pub struct Faulty {
    pub inner: Arc<dyn DynFileSystem>,
    pub faults: Arc<Faults>,
}

impl Faulty {
    pub fn wrap(inner: Arc<dyn DynFileSystem>) -> (Arc<dyn DynFileSystem>, Arc<Faults>) {
        let faults = Arc::new(Faults {
            writes_left: AtomicI64::new(-1),
            ..Faults::default()
        });
        (
            Arc::new(Faulty {
                inner,
                faults: faults.clone(),
            }),
            faults,
        )
    }
}

fn eio<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::EIO))
}

impl FileSystem for Faulty {
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
    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }
    fn symlink(&self, ctx: &Context, l: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.inner.symlink(ctx, l, parent, name)
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
        self.inner.mknod(ctx, parent, name, mode, rdev, umask)
    }
    fn mkdir(
        &self,
        ctx: &Context,
        p: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.inner.mkdir(ctx, p, name, mode, umask)
    }
    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        if self.faults.fail_unlink.load(Ordering::SeqCst) {
            return eio();
        }
        self.inner.unlink(ctx, parent, name)
    }
    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        if self.faults.fail_unlink.load(Ordering::SeqCst) {
            return eio();
        }
        self.inner.rmdir(ctx, parent, name)
    }
    fn rename(
        &self,
        ctx: &Context,
        od: u64,
        on: &CStr,
        nd: u64,
        nn: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        if self.faults.fail_rename.load(Ordering::SeqCst) {
            return eio();
        }
        self.inner.rename(ctx, od, on, nd, nn, flags)
    }
    fn link(&self, ctx: &Context, inode: u64, np: u64, nn: &CStr) -> io::Result<Entry> {
        self.inner.link(ctx, inode, np, nn)
    }
    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        ff: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.inner.open(ctx, inode, flags, ff)
    }
    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.faults.creates.fetch_add(1, Ordering::SeqCst);
        self.inner.create(ctx, parent, name, args)
    }
    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        h: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        off: u64,
        lo: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner.read(ctx, inode, h, w, size, off, lo, flags)
    }
    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        h: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        off: u64,
        lo: Option<u64>,
        dw: bool,
        flags: u32,
        ff: u32,
    ) -> io::Result<usize> {
        if self.faults.writes_left.load(Ordering::SeqCst) == 0 {
            return eio();
        }
        let _ = self
            .faults
            .writes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 0).then(|| n - 1)
            });
        self.inner
            .write(ctx, inode, h, r, size, off, lo, dw, flags, ff)
    }
    fn flush(&self, ctx: &Context, inode: u64, h: u64, lo: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, h, lo)
    }
    fn fsync(&self, ctx: &Context, inode: u64, ds: bool, h: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, ds, h)
    }
    fn fallocate(&self, ctx: &Context, i: u64, h: u64, m: u32, o: u64, l: u64) -> io::Result<()> {
        self.faults.fallocates.fetch_add(1, Ordering::SeqCst);
        self.inner.fallocate(ctx, i, h, m, o, l)
    }
    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        h: u64,
        flush: bool,
        fr: bool,
        lo: Option<u64>,
    ) -> io::Result<()> {
        self.inner.release(ctx, inode, flags, h, flush, fr, lo)
    }
    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }
    fn setxattr(&self, ctx: &Context, i: u64, n: &CStr, v: &[u8], f: u32) -> io::Result<()> {
        self.inner.setxattr(ctx, i, n, v, f)
    }
    fn getxattr(&self, ctx: &Context, i: u64, n: &CStr, s: u32) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, i, n, s)
    }
    fn listxattr(&self, ctx: &Context, i: u64, s: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, i, s)
    }
    fn removexattr(&self, ctx: &Context, i: u64, n: &CStr) -> io::Result<()> {
        self.inner.removexattr(ctx, i, n)
    }
    fn opendir(&self, ctx: &Context, i: u64, f: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        let r = self.inner.opendir(ctx, i, f)?;
        self.faults.opendirs.fetch_add(1, Ordering::SeqCst);
        Ok(r)
    }
    fn readdir(
        &self,
        ctx: &Context,
        i: u64,
        h: u64,
        s: u32,
        o: u64,
        add: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdir(ctx, i, h, s, o, add)
    }
    fn releasedir(&self, ctx: &Context, i: u64, f: u32, h: u64) -> io::Result<()> {
        self.faults.releasedirs.fetch_add(1, Ordering::SeqCst);
        self.inner.releasedir(ctx, i, f, h)?;
        if self.faults.fail_releasedir.load(Ordering::SeqCst) {
            return eio();
        }
        Ok(())
    }
    fn destroy(&self) {
        self.inner.destroy()
    }
    fn access(&self, ctx: &Context, i: u64, m: u32) -> io::Result<()> {
        self.inner.access(ctx, i, m)
    }
    fn lseek(&self, ctx: &Context, i: u64, h: u64, o: u64, w: u32) -> io::Result<u64> {
        self.inner.lseek(ctx, i, h, o, w)
    }
}

impl boxfs::DynFileSystem for Faulty {}
