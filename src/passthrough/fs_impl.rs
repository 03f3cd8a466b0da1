//! The [`FileSystem`] trait, forwarding to the operation files. Host errno values are turned
//! into Linux ones here (a no-op on Linux).

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use super::platform::linux_errno;
use super::PassthroughFs;
use crate::{
    stat64, statvfs64, Context, CreateIn, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply,
    ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

fn m<T>(r: io::Result<T>) -> io::Result<T> {
    r.map_err(linux_errno)
}

impl FileSystem for PassthroughFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        #[cfg(target_os = "linux")]
        let mut want = FsOptions::ASYNC_READ
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO
            // The daemon clears setuid/setgid itself on write (`FUSE_WRITE_KILL_SUIDGID`, or
            // any write by a non-root caller), truncate (`FATTR_KILL_SUIDGID`) and chown, and
            // the host kernel drops a host file's capabilities when the daemon writes or
            // truncates it. So the guest kernel need not ask for `security.capability` before
            // every write (one GETXATTR round trip per write(2) otherwise): it marks the
            // superblock SB_NOSEC and checks an inode once per attribute refresh.
            | FsOptions::HANDLE_KILLPRIV_V2;
        // Not ATOMIC_O_TRUNC: with it the guest sends O_TRUNC inside OPEN and the file is
        // emptied before the guest's own checks of that open (ETXTBSY of a running program);
        // without it the guest truncates with SETATTR once the open is allowed.
        #[cfg(target_os = "linux")]
        if self.cfg.writeback {
            want |= FsOptions::WRITEBACK_CACHE;
        }
        #[cfg(not(target_os = "linux"))]
        let want = FsOptions::ASYNC_READ | FsOptions::BIG_WRITES;
        Ok(capable & want)
    }

    fn destroy(&self) {
        self.do_destroy();
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        m(self.do_lookup(parent, name))
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        self.do_forget(inode, count)
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        m(self.do_getattr(inode, handle))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        m(self.do_setattr(ctx, inode, attr, handle, valid))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        m(self.do_readlink(inode))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        m(self.do_symlink(ctx, linkname, parent, name))
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
        m(self.do_mknod(ctx, inode, name, mode, rdev, umask))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        m(self.do_mkdir(ctx, parent, name, mode, umask))
    }

    fn unlink(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        m(self.do_unlink(parent, name))
    }

    fn rmdir(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        m(self.do_rmdir(parent, name))
    }

    fn rename(
        &self,
        _ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        m(self.do_rename(olddir, oldname, newdir, newname, flags))
    }

    fn link(
        &self,
        _ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        m(self.do_link(inode, newparent, newname))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        m(self.do_open(ctx, inode, flags))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        m(self.do_create(ctx, parent, name, args))
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        m(self.do_read(inode, handle, w, size, offset))
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        m(self.do_write(ctx, inode, handle, r, size, offset, fuse_flags))
    }

    fn flush(&self, _ctx: &Context, inode: u64, handle: u64, _lock_owner: u64) -> io::Result<()> {
        m(self.file_handle(inode, handle).map(drop))
    }

    fn fsync(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        m(self.do_fsync(inode, datasync, handle))
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        m(self.do_fallocate(inode, handle, mode, offset, length))
    }

    fn release(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        m(self.do_release(inode, handle))
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        m(self.do_statfs(inode))
    }

    fn setxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        m(self.do_setxattr(inode, name, value, flags))
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        m(self.do_getxattr(inode, name, size))
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        m(self.do_listxattr(inode, size))
    }

    fn removexattr(&self, _ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        m(self.do_removexattr(inode, name))
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        m(self.do_opendir(inode, flags))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        m(self.do_readdir(inode, handle, size, offset, add_entry))
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        m(self.do_readdirplus(inode, handle, size, offset, add_entry))
    }

    fn fsyncdir(&self, _ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        m(self.do_fsyncdir(inode, datasync, handle))
    }

    fn releasedir(&self, _ctx: &Context, inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        m(self.do_releasedir(inode, handle))
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        m(self.do_access(ctx, inode, mask))
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        m(self.do_lseek(inode, handle, offset, whence))
    }
}

/// Device state: the node ids, lookup counts and open handles the guest holds, each inode
/// identified by its path below the share root and its host identity (see
/// `passthrough/state.rs`). File data stays on the host.
impl crate::DynFileSystem for PassthroughFs {
    /// Writes every held inode (node id, lookups, path, host identity) and open handle.
    fn save_state(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.save_state_impl(out)
    }

    /// Restores a saved state: paths are resolved again confined to the share and verified
    /// by identity; a missing or changed file answers `ESTALE` for its node id alone. A
    /// corrupt, truncated or crafted stream (a name leaving the share) fails the load and
    /// leaves the filesystem as it was.
    fn load_state(&self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.load_state_impl(input)
    }

    /// The entry timeout: a name the host creates shows within it, as a name it removes does.
    fn negative_timeout(&self) -> Duration {
        self.cfg.entry_timeout
    }
}
