//! open, read, write, flush, fsync, fallocate, lseek, release and readlink.
//!
//! Reads and writes go straight between the host descriptor and the request's buffers with
//! `preadv`/`pwritev` ([`crate::FileReadWriteVolatile`] for `std::fs::File`); the handle table
//! lock is released before the syscall, so one slow file never blocks another.

use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd};

use super::handles::{Handle, HandleKind};
use super::inode_store::InodeData;
use super::platform;
use super::resolve::{S_IFDIR, S_IFLNK, S_IFREG};
use super::PassthroughFs;
use crate::{errno, CachePolicy, Context, OpenOptions, ZeroCopyReader, ZeroCopyWriter};

use crate::abi::{
    FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
    WRITE_KILL_PRIV,
};

/// Borrows an open `File` as the `&mut File` the volatile I/O traits want, without taking
/// ownership of the descriptor.
fn borrow_file(f: &File) -> ManuallyDrop<File> {
    // SAFETY: the descriptor stays open for as long as `f` is borrowed, and `ManuallyDrop`
    // guarantees the alias is never closed.
    ManuallyDrop::new(unsafe { File::from_raw_fd(f.as_raw_fd()) })
}

impl PassthroughFs {
    /// `FOPEN_NOFLUSH` for a file open of `inode`, unless the guest caches writes or another
    /// handle of the inode is open for writing: `close` then needs no FLUSH round trip. A
    /// flush has nothing to do here: without the writeback cache every write reached the host
    /// file before `write(2)` returned (its errors with it), and the guest kernel keeps POSIX
    /// locks itself (this backend answers `ENOSYS` to GETLK/SETLK), so no lock owner needs
    /// releasing. Dirty pages of a shared mapping are written back by the guest kernel at
    /// `msync`/`munmap`; while a writer has the file open, other opens keep the FLUSH, whose
    /// writeback sends the writer's dirty pages in large WRITEs rather than page by page when
    /// the next open drops the cache.
    pub(crate) fn no_flush(&self, inode: &InodeData) -> OpenOptions {
        if self.cfg.writeback
            || cfg!(not(target_os = "linux"))
            || inode.writers.load(std::sync::atomic::Ordering::Relaxed) > 0
        {
            return OpenOptions::empty();
        }
        // SAFETY: `OpenOptions` is a plain `u32` of FUSE open flags that the server copies
        // into the reply unchanged; bit 5 is `FOPEN_NOFLUSH` of the FUSE ABI (7.35), which
        // fuse-backend-rs 0.14 does not name. No invariant rests on the set of named bits.
        unsafe { OpenOptions::from_bits_unchecked(crate::abi::FOPEN_NOFLUSH) }
    }

    /// Open flags for an open of `inode` (host descriptor `fd`): the cache policy's, plus
    /// under [`CachePolicy::Auto`] `KEEP_CACHE` (and `CACHE_DIR` for a directory) when the
    /// host file did not change since the guest's previous open (see `page_cache.rs`).
    pub(crate) fn open_cache_options(
        &self,
        inode: &InodeData,
        fd: std::os::fd::RawFd,
        is_dir: bool,
    ) -> OpenOptions {
        let mut opts = self.cfg.cache_policy.open_options(is_dir);
        if !is_dir {
            opts |= self.no_flush(inode);
        }
        if self.cfg.cache_policy != CachePolicy::Auto {
            return opts;
        }
        let keep = match platform::fstat(fd) {
            Ok(hs) => super::page_cache::keep(&inode.cache_stamp, &hs.st),
            Err(_) => {
                inode.cache_stamp.lock().take();
                false
            }
        };
        match (keep, is_dir) {
            (false, _) => opts,
            (true, false) => opts | OpenOptions::KEEP_CACHE,
            #[cfg(target_os = "linux")]
            (true, true) => opts | OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR,
            #[cfg(not(target_os = "linux"))]
            (true, true) => opts | OpenOptions::KEEP_CACHE,
        }
    }

    /// Host open flags for a guest open: access mode plus the flags that matter for I/O.
    pub(crate) fn io_flags(&self, flags: i32) -> i32 {
        let mut f = flags
            & (libc::O_ACCMODE | libc::O_APPEND | libc::O_TRUNC | libc::O_SYNC | libc::O_DSYNC);
        if self.cfg.writeback {
            // The guest page cache may read back pages of write-only files and does append
            // itself.
            if f & libc::O_ACCMODE == libc::O_WRONLY {
                f = (f & !libc::O_ACCMODE) | libc::O_RDWR;
            }
            f &= !libc::O_APPEND;
        }
        f | libc::O_CLOEXEC
    }

    pub(crate) fn do_open(
        &self,
        ctx: &Context,
        id: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let flags = flags as i32;
        let inode = self.inode(id)?;
        match self.guest_type(&inode)? {
            S_IFREG => {}
            S_IFDIR => return Err(errno(libc::EISDIR)),
            S_IFLNK => return Err(errno(libc::ELOOP)),
            _ => return Err(errno(libc::ENXIO)),
        }
        self.handles.check_room()?;
        let truncate = flags & libc::O_TRUNC != 0;
        if self.cfg.readonly && (flags & libc::O_ACCMODE != libc::O_RDONLY || truncate) {
            return Err(errno(libc::EROFS));
        }
        let fd = self.fd_of(&inode)?;
        let io_flags = self.io_flags(flags);
        let file = match &self.quota {
            Some(q) if truncate => {
                let _excl = inode.resize.write();
                let old_size = platform::fstat(fd.as_raw_fd())?.st.st_size as u64;
                let file = self.with_fd_retry(|| platform::reopen(fd.as_raw_fd(), io_flags))?;
                q.release(old_size);
                file
            }
            _ => self.with_fd_retry(|| platform::reopen(fd.as_raw_fd(), io_flags))?,
        };
        if truncate && ctx.uid != 0 {
            self.kill_priv_of(&inode)?;
        }
        let opts = self.open_cache_options(&inode, file.as_raw_fd(), false);
        let fh = self.handles.insert(Handle {
            inode,
            kind: HandleKind::File(File::from(file)),
            flags: io_flags,
        });
        Ok((Some(fh), opts, None))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_read(
        &self,
        id: u64,
        fh: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        let h = self.file_handle(id, fh)?;
        let HandleKind::File(f) = &h.kind else {
            return Err(errno(libc::EBADF));
        };
        if offset >= i64::MAX as u64 {
            return Ok(0);
        }
        let size = (size as u64).min(i64::MAX as u64 - offset) as usize;
        let mut file = borrow_file(f);
        w.write_from(&mut *file, size, offset)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_write(
        &self,
        ctx: &Context,
        id: u64,
        fh: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        if self.cfg.readonly {
            return Err(errno(libc::EROFS));
        }
        let h = self.file_handle(id, fh)?;
        let HandleKind::File(f) = &h.kind else {
            return Err(errno(libc::EBADF));
        };
        if !matches!(offset.checked_add(size as u64), Some(end) if end <= i64::MAX as u64) {
            return Err(errno(libc::EFBIG));
        }
        if ctx.uid != 0 || fuse_flags & WRITE_KILL_PRIV != 0 {
            self.kill_priv_of(&h.inode)?;
        }
        let Some(q) = &self.quota else {
            let mut file = borrow_file(f);
            return r.read_to(&mut *file, size as usize, offset);
        };
        let append = h.flags & libc::O_APPEND != 0;
        let end_of = |cur: u64| {
            let start = if append { cur } else { offset };
            start.saturating_add(size as u64)
        };
        // A write inside the file changes no size: it runs alongside other such writes,
        // holding off truncation. One that may extend the file measures, charges and writes
        // alone, so two extending writes never both charge the same growth.
        let shared = h.inode.resize.read();
        let cur = platform::fstat(f.as_raw_fd())?.st.st_size as u64;
        if end_of(cur) <= cur {
            let mut file = borrow_file(f);
            let res = r.read_to(&mut *file, size as usize, offset);
            drop(shared);
            return res;
        }
        drop(shared);
        let _excl = h.inode.resize.write();
        let cur = platform::fstat(f.as_raw_fd())?.st.st_size as u64;
        let reserved = end_of(cur).saturating_sub(cur);
        q.reserve(reserved)?;
        let mut file = borrow_file(f);
        let res = r.read_to(&mut *file, size as usize, offset);
        let after = match platform::fstat(f.as_raw_fd()) {
            Ok(hs) => hs.st.st_size as u64,
            // Assume the worst: everything reserved was used.
            Err(_) => cur + reserved,
        };
        q.settle(reserved, cur, after);
        res
    }

    pub(crate) fn do_fsync(&self, id: u64, datasync: bool, fh: u64) -> io::Result<()> {
        let h = self.file_handle(id, fh)?;
        let HandleKind::File(f) = &h.kind else {
            return Err(errno(libc::EBADF));
        };
        if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        }
    }

    pub(crate) fn do_fallocate(
        &self,
        id: u64,
        fh: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        if self.cfg.readonly {
            return Err(errno(libc::EROFS));
        }
        let h = self.file_handle(id, fh)?;
        let HandleKind::File(f) = &h.kind else {
            return Err(errno(libc::EBADF));
        };
        let Some(q) = &self.quota else {
            return platform::fallocate(f.as_raw_fd(), mode, offset, length);
        };
        let _excl = h.inode.resize.write();
        let before = platform::fstat(f.as_raw_fd())?.st.st_size as u64;
        let end = offset.saturating_add(length);
        let reserved = if mode & FALLOC_FL_INSERT_RANGE != 0 {
            length
        } else if mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_PUNCH_HOLE) != 0 {
            0
        } else if mode & FALLOC_FL_KEEP_SIZE != 0 {
            // Space allocated past the end is invisible in the apparent size the quota
            // counts, and could fill the host disk uncharged.
            if end > before {
                return Err(errno(libc::EOPNOTSUPP));
            }
            0
        } else {
            end.saturating_sub(before)
        };
        q.reserve(reserved)?;
        let res = platform::fallocate(f.as_raw_fd(), mode, offset, length);
        let after = match platform::fstat(f.as_raw_fd()) {
            Ok(hs) => hs.st.st_size as u64,
            Err(_) if res.is_err() => before,
            Err(_) => before.saturating_add(reserved),
        };
        q.settle(reserved, before, after);
        res
    }

    pub(crate) fn do_lseek(&self, id: u64, fh: u64, offset: u64, whence: u32) -> io::Result<u64> {
        let h = self.file_handle(id, fh)?;
        let HandleKind::File(f) = &h.kind else {
            return Err(errno(libc::EBADF));
        };
        platform::lseek(f.as_raw_fd(), offset, whence)
    }

    pub(crate) fn do_release(&self, id: u64, fh: u64) -> io::Result<()> {
        if self.handles.release_dead(fh, id) {
            return Ok(());
        }
        self.file_handle(id, fh)?;
        self.handles.remove(fh);
        Ok(())
    }

    pub(crate) fn do_readlink(&self, id: u64) -> io::Result<Vec<u8>> {
        let inode = self.inode(id)?;
        if self.guest_type(&inode)? != S_IFLNK {
            return Err(errno(libc::EINVAL));
        }
        let fd = self.fd_of(&inode)?;
        if inode.host_type == S_IFLNK {
            return platform::readlink_inode(fd.as_raw_fd());
        }
        let file =
            File::from(self.with_fd_retry(|| platform::reopen(fd.as_raw_fd(), libc::O_RDONLY))?);
        let mut buf = vec![0u8; 4096];
        let mut n = 0;
        while n < buf.len() {
            let got = std::os::unix::fs::FileExt::read_at(&file, &mut buf[n..], n as u64)?;
            if got == 0 {
                break;
            }
            n += got;
        }
        buf.truncate(n);
        Ok(buf)
    }
}
