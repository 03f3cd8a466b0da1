//! Other Unix (macOS): `O_SYMLINK` inode descriptors, re-opened by the path the kernel reports
//! (`F_GETPATH`) and checked to be the same object.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use rustix::fs::{AtFlags, Dir, Mode, OFlags, RenameFlags, SeekFrom, XattrFlags, CWD};

use super::{bfd, dtype, einval, timestamps, HostStat, RawDirent};
use super::{LINUX_XATTR_CREATE, LINUX_XATTR_REPLACE};

/// Flags of the descriptor that represents an inode.
pub(crate) const INODE_FLAGS: i32 =
    libc::O_RDONLY | libc::O_SYMLINK | libc::O_NONBLOCK | libc::O_CLOEXEC;

/// `XATTR_NOFOLLOW` of the macOS xattr calls' `options`.
const XATTR_NOFOLLOW: u32 = 0x0001;

pub(crate) fn init() -> io::Result<()> {
    Ok(())
}

fn fd_path(fd: RawFd) -> io::Result<CString> {
    Ok(rustix::fs::getpath(bfd(fd))?)
}

fn oflags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as _)
}

pub(crate) fn open_beneath(dir: RawFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let flags = if flags & libc::O_SYMLINK != 0 {
        flags
    } else {
        flags | libc::O_NOFOLLOW
    };
    // `name` is a single component.
    Ok(rustix::fs::openat(
        bfd(dir),
        name,
        oflags(flags | libc::O_CLOEXEC),
        Mode::from_bits_retain(mode as _),
    )?)
}

pub(crate) fn reopen(fd: RawFd, flags: i32) -> io::Result<OwnedFd> {
    let before = fstat(fd)?;
    let p = fd_path(fd)?;
    let flags = (flags & !(libc::O_CREAT | libc::O_EXCL)) | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let new = rustix::fs::open(&p, oflags(flags), Mode::empty())?;
    let after = fstat(new.as_raw_fd())?;
    if before.st.st_dev != after.st.st_dev || before.st.st_ino != after.st.st_ino {
        return Err(io::Error::from_raw_os_error(libc::ESTALE));
    }
    Ok(new)
}

pub(crate) fn fstat(fd: RawFd) -> io::Result<HostStat> {
    let st = rustix::fs::fstat(bfd(fd))?;
    Ok(HostStat { st, mnt_id: 0 })
}

pub(crate) fn stat_at(dir: RawFd, name: &CStr) -> io::Result<HostStat> {
    let st = rustix::fs::statat(bfd(dir), name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(HostStat { st, mnt_id: 0 })
}

pub(crate) fn get_xattr(fd: RawFd, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        Ok(rustix::fs::fgetxattr_query(bfd(fd), name)?)
    } else {
        Ok(rustix::fs::fgetxattr(bfd(fd), name, buf)?)
    }
}

pub(crate) fn get_xattr_at(
    dir: RawFd,
    name: &[u8],
    xname: &CStr,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut p = fd_path(dir)?.into_bytes();
    p.push(b'/');
    p.extend_from_slice(name);
    let p = CString::new(p).map_err(|_| einval())?;
    // `lgetxattr` is `getxattr(..., XATTR_NOFOLLOW)` here.
    if buf.is_empty() {
        Ok(rustix::fs::lgetxattr_query(&p, xname)?)
    } else {
        Ok(rustix::fs::lgetxattr(&p, xname, buf)?)
    }
}

pub(crate) fn set_xattr(fd: RawFd, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
    let mut f = XattrFlags::from_bits_retain(XATTR_NOFOLLOW);
    if flags & LINUX_XATTR_CREATE != 0 {
        f |= XattrFlags::CREATE;
    }
    if flags & LINUX_XATTR_REPLACE != 0 {
        f |= XattrFlags::REPLACE;
    }
    Ok(rustix::fs::fsetxattr(bfd(fd), name, value, f)?)
}

pub(crate) fn list_xattr(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    if buf.is_empty() {
        Ok(rustix::fs::flistxattr_query(bfd(fd))?)
    } else {
        Ok(rustix::fs::flistxattr(bfd(fd), buf)?)
    }
}

pub(crate) fn remove_xattr(fd: RawFd, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::fremovexattr(bfd(fd), name)?)
}

pub(crate) fn link_inode(fd: RawFd, newdir: RawFd, newname: &CStr) -> io::Result<()> {
    let p = fd_path(fd)?;
    Ok(rustix::fs::linkat(
        CWD,
        &p,
        bfd(newdir),
        newname,
        AtFlags::empty(),
    )?)
}

pub(crate) fn readlink_inode(fd: RawFd) -> io::Result<Vec<u8>> {
    let p = fd_path(fd)?;
    Ok(rustix::fs::readlinkat(CWD, &p, Vec::with_capacity(256))?.into_bytes())
}

pub(crate) fn chmod_inode(fd: RawFd, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(
        bfd(fd),
        Mode::from_bits_retain(mode as _),
    )?)
}

pub(crate) fn truncate_inode(fd: RawFd, size: u64) -> io::Result<()> {
    let f = reopen(fd, libc::O_WRONLY)?;
    Ok(rustix::fs::ftruncate(&f, size)?)
}

pub(crate) fn utimens_inode(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    Ok(rustix::fs::futimens(bfd(fd), &timestamps(times))?)
}

pub(crate) fn statvfs(fd: RawFd) -> io::Result<crate::statvfs64> {
    let s = rustix::fs::fstatvfs(bfd(fd))?;
    Ok(crate::statvfs64 {
        f_bsize: s.f_bsize as _,
        f_frsize: s.f_frsize as _,
        f_blocks: s.f_blocks as _,
        f_bfree: s.f_bfree as _,
        f_bavail: s.f_bavail as _,
        f_files: s.f_files as _,
        f_ffree: s.f_ffree as _,
        f_favail: s.f_favail as _,
        f_fsid: s.f_fsid as _,
        f_flag: s.f_flag.bits() as _,
        f_namemax: s.f_namemax as _,
    })
}

pub(crate) fn fallocate(_fd: RawFd, _mode: u32, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
}

pub(crate) fn rename(
    olddir: RawFd,
    old: &CStr,
    newdir: RawFd,
    new: &CStr,
    flags: u32,
) -> io::Result<()> {
    // Linux `RENAME_NOREPLACE`/`RENAME_EXCHANGE` to `RENAME_EXCL`/`RENAME_SWAP`.
    let mut f = RenameFlags::empty();
    if flags & 1 != 0 {
        f |= RenameFlags::NOREPLACE;
    }
    if flags & 2 != 0 {
        f |= RenameFlags::EXCHANGE;
    }
    Ok(rustix::fs::renameat_with(
        bfd(olddir),
        old,
        bfd(newdir),
        new,
        f,
    )?)
}

/// `lseek` with the guest's (Linux) `whence`.
pub(crate) fn lseek(fd: RawFd, offset: u64, whence: u32) -> io::Result<u64> {
    let pos = match whence {
        0 => SeekFrom::Start(offset),
        1 => SeekFrom::Current(offset as i64),
        2 => SeekFrom::End(offset as i64),
        3 => SeekFrom::Data(offset),
        4 => SeekFrom::Hole(offset),
        _ => return Err(einval()),
    };
    Ok(rustix::fs::seek(bfd(fd), pos)?)
}

/// An entry read from the stream but not taken by the caller, kept so that the next call
/// (which resumes at it) need not re-read the directory from the start.
struct Held {
    index: u64,
    ino: u64,
    typ: u8,
    name: Vec<u8>,
}

/// `fsync` (macOS has no `fdatasync`; `datasync` asks for no less).
pub(crate) fn sync(fd: RawFd, _datasync: bool) -> io::Result<()> {
    Ok(rustix::fs::fsync(bfd(fd))?)
}

/// A directory being listed; an entry's offset is its position in the stream (1 for the
/// entry after the first), a resume point the caller hands back.
pub(crate) struct DirStream {
    dir: Dir,
    /// The stream's descriptor (`dirfd`), owned by `dir`.
    fd: RawFd,
    /// Position of the entry the next `read` returns.
    pos: u64,
    held: Option<Held>,
}

impl DirStream {
    pub(crate) fn open(inode_fd: RawFd) -> io::Result<DirStream> {
        let dir = Dir::new(reopen(inode_fd, libc::O_RDONLY | libc::O_DIRECTORY)?)?;
        let fd = dir.fd()?.as_raw_fd();
        Ok(DirStream {
            dir,
            fd,
            pos: 0,
            held: None,
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Positions the stream so that the next entry is the one at `offset`; returns the held
    /// entry when that is it.
    fn seek(&mut self, offset: u64) -> io::Result<Option<Held>> {
        if offset == self.pos {
            return Ok(None);
        }
        if let Some(h) = self.held.take() {
            if h.index == offset && h.index + 1 == self.pos {
                return Ok(Some(h));
            }
        }
        self.dir.rewind();
        self.pos = 0;
        while self.pos < offset {
            match self.dir.read() {
                Some(e) => {
                    e?;
                    self.pos += 1;
                }
                None => break,
            }
        }
        Ok(None)
    }

    /// `host_bytes` is a read-size hint, unused here (`readdir(3)` buffers itself).
    pub(crate) fn for_each_from(
        &mut self,
        offset: u64,
        _host_bytes: usize,
        f: &mut dyn FnMut(RawDirent<'_>) -> io::Result<bool>,
    ) -> io::Result<()> {
        if offset == 0 && self.pos != 0 {
            self.held = None;
        }
        if let Some(h) = self.seek(offset)? {
            let more = f(RawDirent {
                ino: h.ino,
                off: h.index + 1,
                typ: h.typ,
                name: &h.name,
            })?;
            if !more {
                self.held = Some(h);
                return Ok(());
            }
        }
        while let Some(e) = self.dir.read() {
            let e = e?;
            let index = self.pos;
            self.pos += 1;
            let h = Held {
                index,
                ino: e.ino(),
                typ: dtype(e.file_type()),
                name: e.file_name().to_bytes().to_vec(),
            };
            let more = f(RawDirent {
                ino: h.ino,
                off: index + 1,
                typ: h.typ,
                name: &h.name,
            })?;
            if !more {
                self.held = Some(h);
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Host errno to guest (Linux) errno.
pub(crate) fn linux_errno(e: io::Error) -> io::Error {
    let Some(code) = e.raw_os_error() else {
        return e;
    };
    let linux = match code {
        libc::EAGAIN => 11,
        libc::EDEADLK => 35,
        libc::ENAMETOOLONG => 36,
        libc::ENOLCK => 37,
        libc::ENOSYS => 38,
        libc::ENOTEMPTY => 39,
        libc::ELOOP => 40,
        libc::ENOATTR => 61,
        libc::ENOTSUP => 95,
        libc::EOVERFLOW => 75,
        libc::EDQUOT => 122,
        libc::ESTALE => 116,
        libc::ETIMEDOUT => 110,
        c if c <= 34 => c,
        _ => 5,
    };
    io::Error::from_raw_os_error(linux)
}
