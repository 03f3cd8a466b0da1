//! Shared helpers of the volume tests: a wrapper that serves a subtree of a filesystem as its
//! root, so suites written against `ROOT_ID` run inside a volume of a `VolumeFs`.
#![allow(dead_code)]

use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use boxfs::{
    stat64, statvfs64, Context, CreateIn, DirEntry, DynFileSystem, Entry, FileSystem, FsOptions,
    GetxattrReply, ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
    ROOT_ID,
};

/// Serves node `root` of `fs` as [`ROOT_ID`]: requests naming `ROOT_ID` go to `root`, and
/// replies naming `root` name `ROOT_ID`. Everything else passes unchanged.
pub struct Rerooted {
    pub fs: Arc<dyn DynFileSystem>,
    pub root: u64,
    /// Keeps whatever the filesystem needs alive (temp dirs).
    pub _guard: Box<dyn std::any::Any + Send + Sync>,
}

impl Rerooted {
    fn i(&self, x: u64) -> u64 {
        if x == ROOT_ID {
            self.root
        } else {
            x
        }
    }
    fn o(&self, x: u64) -> u64 {
        if x == self.root {
            ROOT_ID
        } else {
            x
        }
    }
    fn e(&self, mut e: Entry) -> Entry {
        e.inode = self.o(e.inode);
        e
    }
}

impl FileSystem for Rerooted {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.fs.init(capable)
    }
    fn destroy(&self) {
        self.fs.destroy()
    }
    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.fs.lookup(ctx, self.i(parent), name).map(|e| self.e(e))
    }
    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.fs.forget(ctx, self.i(inode), count)
    }
    fn getattr(&self, ctx: &Context, inode: u64, h: Option<u64>) -> io::Result<(stat64, Duration)> {
        self.fs.getattr(ctx, self.i(inode), h)
    }
    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        h: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.fs.setattr(ctx, self.i(inode), attr, h, valid)
    }
    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.fs.readlink(ctx, self.i(inode))
    }
    fn symlink(&self, ctx: &Context, l: &CStr, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.fs
            .symlink(ctx, l, self.i(parent), name)
            .map(|e| self.e(e))
    }
    fn mknod(&self, ctx: &Context, p: u64, n: &CStr, m: u32, r: u32, u: u32) -> io::Result<Entry> {
        self.fs.mknod(ctx, self.i(p), n, m, r, u).map(|e| self.e(e))
    }
    fn mkdir(&self, ctx: &Context, p: u64, n: &CStr, m: u32, u: u32) -> io::Result<Entry> {
        self.fs.mkdir(ctx, self.i(p), n, m, u).map(|e| self.e(e))
    }
    fn unlink(&self, ctx: &Context, p: u64, n: &CStr) -> io::Result<()> {
        self.fs.unlink(ctx, self.i(p), n)
    }
    fn rmdir(&self, ctx: &Context, p: u64, n: &CStr) -> io::Result<()> {
        self.fs.rmdir(ctx, self.i(p), n)
    }
    fn rename(&self, ctx: &Context, a: u64, n: &CStr, b: u64, m: &CStr, f: u32) -> io::Result<()> {
        self.fs.rename(ctx, self.i(a), n, self.i(b), m, f)
    }
    fn link(&self, ctx: &Context, inode: u64, p: u64, n: &CStr) -> io::Result<Entry> {
        self.fs
            .link(ctx, self.i(inode), self.i(p), n)
            .map(|e| self.e(e))
    }
    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        ff: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.fs.open(ctx, self.i(inode), flags, ff)
    }
    fn create(
        &self,
        ctx: &Context,
        p: u64,
        n: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.fs
            .create(ctx, self.i(p), n, args)
            .map(|(e, h, o, x)| (self.e(e), h, o, x))
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
        self.fs.read(ctx, self.i(inode), h, w, size, off, lo, flags)
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
        d: bool,
        flags: u32,
        ff: u32,
    ) -> io::Result<usize> {
        self.fs
            .write(ctx, self.i(inode), h, r, size, off, lo, d, flags, ff)
    }
    fn flush(&self, ctx: &Context, inode: u64, h: u64, lo: u64) -> io::Result<()> {
        self.fs.flush(ctx, self.i(inode), h, lo)
    }
    fn fsync(&self, ctx: &Context, inode: u64, d: bool, h: u64) -> io::Result<()> {
        self.fs.fsync(ctx, self.i(inode), d, h)
    }
    fn fallocate(&self, ctx: &Context, i: u64, h: u64, m: u32, o: u64, l: u64) -> io::Result<()> {
        self.fs.fallocate(ctx, self.i(i), h, m, o, l)
    }
    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        h: u64,
        fl: bool,
        fr: bool,
        lo: Option<u64>,
    ) -> io::Result<()> {
        self.fs.release(ctx, self.i(inode), flags, h, fl, fr, lo)
    }
    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.fs.statfs(ctx, self.i(inode))
    }
    fn setxattr(&self, ctx: &Context, i: u64, n: &CStr, v: &[u8], f: u32) -> io::Result<()> {
        self.fs.setxattr(ctx, self.i(i), n, v, f)
    }
    fn getxattr(&self, ctx: &Context, i: u64, n: &CStr, s: u32) -> io::Result<GetxattrReply> {
        self.fs.getxattr(ctx, self.i(i), n, s)
    }
    fn listxattr(&self, ctx: &Context, i: u64, s: u32) -> io::Result<ListxattrReply> {
        self.fs.listxattr(ctx, self.i(i), s)
    }
    fn removexattr(&self, ctx: &Context, i: u64, n: &CStr) -> io::Result<()> {
        self.fs.removexattr(ctx, self.i(i), n)
    }
    fn opendir(&self, ctx: &Context, i: u64, f: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        self.fs.opendir(ctx, self.i(i), f)
    }
    fn readdir(
        &self,
        ctx: &Context,
        i: u64,
        h: u64,
        size: u32,
        off: u64,
        add: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.fs.readdir(ctx, self.i(i), h, size, off, &mut |mut d| {
            d.ino = self.o(d.ino);
            add(d)
        })
    }
    fn readdirplus(
        &self,
        ctx: &Context,
        i: u64,
        h: u64,
        size: u32,
        off: u64,
        add: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.fs
            .readdirplus(ctx, self.i(i), h, size, off, &mut |mut d, e| {
                d.ino = self.o(d.ino);
                add(d, self.e(e))
            })
    }
    fn fsyncdir(&self, ctx: &Context, i: u64, d: bool, h: u64) -> io::Result<()> {
        self.fs.fsyncdir(ctx, self.i(i), d, h)
    }
    fn releasedir(&self, ctx: &Context, i: u64, f: u32, h: u64) -> io::Result<()> {
        self.fs.releasedir(ctx, self.i(i), f, h)
    }
    fn access(&self, ctx: &Context, i: u64, mask: u32) -> io::Result<()> {
        self.fs.access(ctx, self.i(i), mask)
    }
    fn lseek(&self, ctx: &Context, i: u64, h: u64, off: u64, whence: u32) -> io::Result<u64> {
        self.fs.lseek(ctx, self.i(i), h, off, whence)
    }
}

impl boxfs::DynFileSystem for Rerooted {}
