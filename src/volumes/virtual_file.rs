//! [`VirtualFile`]: read-only bytes served as a filesystem whose root is a regular file.

// Casts between libc integer types differ per platform (u16 vs u32 modes).
#![allow(clippy::unnecessary_cast)]

use std::ffi::CStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    errno, stat64, statvfs64, Context, CreateIn, DirEntry, Entry, FileSystem, FsOptions,
    GetxattrReply, ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
    ROOT_ID,
};

/// A read-only file from memory: an init binary, a generated `/etc/hosts`, a token.
///
/// Its root node ([`ROOT_ID`]) is the file itself, so attached to a
/// [`VolumeFs`](super::VolumeFs) it appears at its path as a regular file. The guest can read
/// and execute it; every change (write, truncate, chmod, xattrs) is `EROFS`, and it cannot be
/// removed or renamed (its mount point is `EBUSY`).
///
/// ```
/// use boxfs::volumes::VirtualFile;
/// use boxfs::{Context, FileSystem, ROOT_ID};
///
/// let f = VirtualFile::from_bytes(b"127.0.0.1 localhost\n".to_vec()).mode(0o644);
/// let (st, _) = f.getattr(&Context::new(), ROOT_ID, None)?;
/// assert_eq!(st.st_size, 20);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct VirtualFile {
    data: Arc<[u8]>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    timeout: Duration,
}

impl std::fmt::Debug for VirtualFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualFile")
            .field("len", &self.data.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish_non_exhaustive()
    }
}

impl VirtualFile {
    /// A file with these bytes, mode 0444, owned by root.
    pub fn from_bytes(data: impl Into<Arc<[u8]>>) -> Self {
        let mtime = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        VirtualFile {
            data: data.into(),
            mode: 0o444,
            uid: 0,
            gid: 0,
            mtime,
            timeout: Duration::from_secs(86400),
        }
    }

    /// A file with the content of host file `path`, read now (later changes of the host file
    /// are not seen). The mode is the host file's permission bits.
    pub fn from_host_file(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path)?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file", path.display()),
            ));
        }
        let data = std::fs::read(path)?;
        use std::os::unix::fs::MetadataExt;
        let mut f = VirtualFile::from_bytes(data);
        f.mode = meta.mode() & 0o7777;
        f.mtime = meta.mtime();
        Ok(f)
    }

    /// Permission bits (`0o7777`), for example 0755 for an init binary.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }

    /// Owner shown to the guest.
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    fn stat(&self) -> stat64 {
        // SAFETY: stat64 is a plain C struct; all-zero is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_ino = ROOT_ID as _;
        st.st_mode = (libc::S_IFREG as u32 | self.mode) as _;
        st.st_nlink = 1;
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        st.st_size = self.data.len() as _;
        st.st_blksize = 4096;
        st.st_blocks = self.data.len().div_ceil(512) as _;
        st.st_mtime = self.mtime as _;
        st.st_ctime = self.mtime as _;
        st.st_atime = self.mtime as _;
        st
    }

    fn check(inode: u64) -> io::Result<()> {
        if inode == ROOT_ID {
            Ok(())
        } else {
            Err(errno(libc::ESTALE))
        }
    }
}

impl FileSystem for VirtualFile {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, _capable: FsOptions) -> io::Result<FsOptions> {
        Ok(FsOptions::empty())
    }

    fn lookup(&self, _ctx: &Context, parent: u64, _name: &CStr) -> io::Result<Entry> {
        Self::check(parent)?;
        Err(errno(libc::ENOTDIR))
    }

    fn forget(&self, _ctx: &Context, _inode: u64, _count: u64) {}

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        Self::check(inode)?;
        Ok((self.stat(), self.timeout))
    }

    fn setattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _attr: stat64,
        _handle: Option<u64>,
        _valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        Self::check(inode)?;
        Err(errno(libc::EROFS))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        Self::check(inode)?;
        Err(errno(libc::EINVAL))
    }

    fn symlink(&self, _: &Context, _: &CStr, parent: u64, _: &CStr) -> io::Result<Entry> {
        Self::check(parent)?;
        Err(errno(libc::ENOTDIR))
    }

    fn mknod(&self, _: &Context, p: u64, _: &CStr, _: u32, _: u32, _: u32) -> io::Result<Entry> {
        Self::check(p)?;
        Err(errno(libc::ENOTDIR))
    }

    fn mkdir(&self, _: &Context, p: u64, _: &CStr, _: u32, _: u32) -> io::Result<Entry> {
        Self::check(p)?;
        Err(errno(libc::ENOTDIR))
    }

    fn unlink(&self, _: &Context, p: u64, _: &CStr) -> io::Result<()> {
        Self::check(p)?;
        Err(errno(libc::ENOTDIR))
    }

    fn rmdir(&self, _: &Context, p: u64, _: &CStr) -> io::Result<()> {
        Self::check(p)?;
        Err(errno(libc::ENOTDIR))
    }

    fn rename(&self, _: &Context, p: u64, _: &CStr, _: u64, _: &CStr, _: u32) -> io::Result<()> {
        Self::check(p)?;
        Err(errno(libc::ENOTDIR))
    }

    fn link(&self, _: &Context, inode: u64, _: u64, _: &CStr) -> io::Result<Entry> {
        Self::check(inode)?;
        Err(errno(libc::ENOTDIR))
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        Self::check(inode)?;
        let f = flags as i32;
        if (f & libc::O_ACCMODE) != libc::O_RDONLY || (f & libc::O_TRUNC) != 0 {
            return Err(errno(libc::EROFS));
        }
        Ok((None, OpenOptions::KEEP_CACHE, None))
    }

    fn create(
        &self,
        _: &Context,
        parent: u64,
        _: &CStr,
        _: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        Self::check(parent)?;
        Err(errno(libc::ENOTDIR))
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        Self::check(inode)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.data.len());
        let end = start.saturating_add(size as usize).min(self.data.len());
        w.write_all(&self.data[start..end])?;
        Ok(end - start)
    }

    fn write(
        &self,
        _: &Context,
        inode: u64,
        _: u64,
        _: &mut dyn ZeroCopyReader,
        _: u32,
        _: u64,
        _: Option<u64>,
        _: bool,
        _: u32,
        _: u32,
    ) -> io::Result<usize> {
        Self::check(inode)?;
        Err(errno(libc::EROFS))
    }

    fn flush(&self, _: &Context, inode: u64, _: u64, _: u64) -> io::Result<()> {
        Self::check(inode)
    }

    fn fsync(&self, _: &Context, inode: u64, _: bool, _: u64) -> io::Result<()> {
        Self::check(inode)
    }

    fn fallocate(&self, _: &Context, inode: u64, _: u64, _: u32, _: u64, _: u64) -> io::Result<()> {
        Self::check(inode)?;
        Err(errno(libc::EROFS))
    }

    fn release(
        &self,
        _: &Context,
        inode: u64,
        _: u32,
        _: u64,
        _: bool,
        _: bool,
        _: Option<u64>,
    ) -> io::Result<()> {
        Self::check(inode)
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        Self::check(inode)?;
        // SAFETY: statvfs64 is a plain C struct; all-zero is a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        st.f_bsize = 4096;
        st.f_frsize = 4096;
        st.f_blocks = self.data.len().div_ceil(4096) as _;
        st.f_files = 1;
        st.f_namemax = 255;
        Ok(st)
    }

    fn setxattr(&self, _: &Context, inode: u64, _: &CStr, _: &[u8], _: u32) -> io::Result<()> {
        Self::check(inode)?;
        Err(errno(libc::EROFS))
    }

    fn getxattr(&self, _: &Context, inode: u64, _: &CStr, _: u32) -> io::Result<GetxattrReply> {
        Self::check(inode)?;
        Err(errno(libc::ENODATA))
    }

    fn listxattr(&self, _: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        Self::check(inode)?;
        Ok(if size == 0 {
            ListxattrReply::Count(0)
        } else {
            ListxattrReply::Names(Vec::new())
        })
    }

    fn removexattr(&self, _: &Context, inode: u64, _: &CStr) -> io::Result<()> {
        Self::check(inode)?;
        Err(errno(libc::EROFS))
    }

    fn opendir(&self, _: &Context, inode: u64, _: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        Self::check(inode)?;
        Err(errno(libc::ENOTDIR))
    }

    fn readdir(
        &self,
        _: &Context,
        inode: u64,
        _: u64,
        _: u32,
        _: u64,
        _: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        Self::check(inode)?;
        Err(errno(libc::ENOTDIR))
    }

    fn readdirplus(
        &self,
        _: &Context,
        inode: u64,
        _: u64,
        _: u32,
        _: u64,
        _: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        Self::check(inode)?;
        Err(errno(libc::ENOTDIR))
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        Self::check(inode)?;
        if mask & libc::W_OK as u32 != 0 {
            return Err(errno(libc::EROFS));
        }
        let bits = if ctx.uid == 0 {
            if mask & libc::X_OK as u32 != 0 && self.mode & 0o111 == 0 {
                return Err(errno(libc::EACCES));
            }
            return Ok(());
        } else if ctx.uid == self.uid {
            (self.mode >> 6) & 7
        } else if ctx.gid == self.gid {
            (self.mode >> 3) & 7
        } else {
            self.mode & 7
        };
        if bits & mask & 7 == mask & 7 {
            Ok(())
        } else {
            Err(errno(libc::EACCES))
        }
    }

    fn lseek(&self, _: &Context, inode: u64, _: u64, offset: u64, whence: u32) -> io::Result<u64> {
        Self::check(inode)?;
        let len = self.data.len() as u64;
        match whence as i32 {
            libc::SEEK_SET | libc::SEEK_CUR => Ok(offset),
            libc::SEEK_END => Ok(len),
            #[cfg(target_os = "linux")]
            libc::SEEK_DATA if offset < len => Ok(offset),
            #[cfg(target_os = "linux")]
            libc::SEEK_HOLE if offset < len => Ok(len),
            _ => Err(errno(libc::ENXIO)),
        }
    }
}

/// Device state: not carried yet (the default hooks answer `EOPNOTSUPP`).
impl crate::DynFileSystem for VirtualFile {}
