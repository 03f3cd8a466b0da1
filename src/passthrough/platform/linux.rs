//! Linux: `openat2`-confined inode descriptors (`O_PATH`), re-opened through
//! `/proc/self/fd/N`.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rustix::fs::{
    AtFlags, FallocateFlags, Mode, OFlags, RawDir, RenameFlags, ResolveFlags, SeekFrom, StatxFlags,
    XattrFlags, CWD,
};
use rustix::io::Errno;

use super::{bfd, dtype, einval, timestamps, HostStat, RawDirent};
use super::{LINUX_XATTR_CREATE, LINUX_XATTR_REPLACE};
use crate::stat64;

/// Flags of the descriptor that represents an inode.
pub(crate) const INODE_FLAGS: i32 = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
static PROC_FD: OnceLock<OwnedFd> = OnceLock::new();

/// Checks that re-opening through `/proc/self/fd` is possible.
pub(crate) fn init() -> io::Result<()> {
    if PROC_FD.get().is_some() {
        return Ok(());
    }
    let fd = rustix::fs::open(
        c"/proc/self/fd",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let _ = PROC_FD.set(fd);
    Ok(())
}

fn proc_fd() -> io::Result<BorrowedFd<'static>> {
    PROC_FD
        .get()
        .map(|f| f.as_fd())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
}

/// `/proc/self/fd/N` as a NUL-terminated string on the stack (no allocation: this is on
/// the path of every xattr call, every re-open and the ownership read of every new inode).
struct ProcPath {
    buf: [u8; 32],
}

const PROC_PREFIX: &[u8] = b"/proc/self/fd/";

impl ProcPath {
    /// The whole path.
    fn path(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf).unwrap_or_default()
    }

    /// Just the descriptor number, relative to `/proc/self/fd`.
    fn name(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf[PROC_PREFIX.len()..]).unwrap_or_default()
    }
}

fn proc_path(fd: RawFd) -> ProcPath {
    let mut buf = [0u8; 32];
    buf[..PROC_PREFIX.len()].copy_from_slice(PROC_PREFIX);
    let mut digits = [0u8; 10];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        buf[PROC_PREFIX.len() + i] = *d;
    }
    // The rest of `buf` is zero: the string is NUL-terminated (14 + 10 < 32).
    ProcPath { buf }
}

fn oflags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as u32)
}

/// Opens `name` (one validated component) beneath directory `dir`, never following a
/// symlink or magic link.
pub(crate) fn open_beneath(dir: RawFd, name: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let dir = bfd(dir);
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        // `openat2` rejects a mode without `O_CREAT`.
        let how_mode = if flags & libc::O_CREAT != 0 {
            Mode::from_bits_retain(mode)
        } else {
            Mode::empty()
        };
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        for _ in 0..8 {
            match rustix::fs::openat2(dir, name, oflags(flags), how_mode, resolve) {
                Ok(fd) => return Ok(fd),
                Err(Errno::AGAIN) => continue,
                Err(Errno::NOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
    }
    // O_NOFOLLOW keeps a final symlink unfollowed and the name has no `/`, so nothing outside
    // `dir` can be reached.
    Ok(rustix::fs::openat(
        dir,
        name,
        oflags(flags),
        Mode::from_bits_retain(mode),
    )?)
}

/// A new descriptor with `flags` for the object `fd` refers to.
pub(crate) fn reopen(fd: RawFd, flags: i32) -> io::Result<OwnedFd> {
    let flags = (flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL)) | libc::O_CLOEXEC;
    let p = proc_path(fd);
    // The magic link refers to the open file `fd`.
    Ok(rustix::fs::openat(
        proc_fd()?,
        p.name(),
        oflags(flags),
        Mode::empty(),
    )?)
}

/// An all-zero `stat64`, filled in field by field.
fn zeroed_stat() -> stat64 {
    // SAFETY: `stat64` is a plain C struct of integers: all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

fn statx_at(dir: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> io::Result<HostStat> {
    let flags = flags | AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_SYNC_AS_STAT;
    let stx = match rustix::fs::statx(
        dir,
        name,
        flags,
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    ) {
        Ok(stx) => stx,
        // Kernels before 4.11.
        Err(Errno::NOSYS) => return stat_fallback(dir, name, flags),
        Err(e) => return Err(e.into()),
    };
    let mut st = zeroed_stat();
    st.st_dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    st.st_ino = stx.stx_ino;
    st.st_mode = stx.stx_mode as u32;
    st.st_nlink = stx.stx_nlink as _;
    st.st_uid = stx.stx_uid;
    st.st_gid = stx.stx_gid;
    st.st_rdev = libc::makedev(stx.stx_rdev_major, stx.stx_rdev_minor);
    st.st_size = stx.stx_size as i64;
    st.st_blksize = stx.stx_blksize as _;
    st.st_blocks = stx.stx_blocks as i64;
    st.st_atime = stx.stx_atime.tv_sec;
    st.st_atime_nsec = stx.stx_atime.tv_nsec as _;
    st.st_mtime = stx.stx_mtime.tv_sec;
    st.st_mtime_nsec = stx.stx_mtime.tv_nsec as _;
    st.st_ctime = stx.stx_ctime.tv_sec;
    st.st_ctime_nsec = stx.stx_ctime.tv_nsec as _;
    let mnt_id = if stx.stx_mask & StatxFlags::MNT_ID.bits() != 0 {
        stx.stx_mnt_id
    } else {
        0
    };
    Ok(HostStat { st, mnt_id })
}

#[cold]
fn stat_fallback(dir: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> io::Result<HostStat> {
    let s = rustix::fs::statat(dir, name, flags & !AtFlags::STATX_SYNC_AS_STAT)?;
    let mut st = zeroed_stat();
    st.st_dev = s.st_dev as _;
    st.st_ino = s.st_ino as _;
    st.st_mode = s.st_mode as _;
    st.st_nlink = s.st_nlink as _;
    st.st_uid = s.st_uid as _;
    st.st_gid = s.st_gid as _;
    st.st_rdev = s.st_rdev as _;
    st.st_size = s.st_size as _;
    st.st_blksize = s.st_blksize as _;
    st.st_blocks = s.st_blocks as _;
    st.st_atime = s.st_atime as _;
    st.st_atime_nsec = s.st_atime_nsec as _;
    st.st_mtime = s.st_mtime as _;
    st.st_mtime_nsec = s.st_mtime_nsec as _;
    st.st_ctime = s.st_ctime as _;
    st.st_ctime_nsec = s.st_ctime_nsec as _;
    Ok(HostStat { st, mnt_id: 0 })
}

/// `stat` of the object `fd` refers to (never following a symlink).
pub(crate) fn fstat(fd: RawFd) -> io::Result<HostStat> {
    statx_at(bfd(fd), c"", AtFlags::EMPTY_PATH)
}

/// `lstat` of `name` in `dir`.
pub(crate) fn stat_at(dir: RawFd, name: &CStr) -> io::Result<HostStat> {
    statx_at(bfd(dir), name, AtFlags::empty())
}

/// Reads xattr `name` of the file or directory `fd` refers to into `buf` (size query when
/// `buf` is empty).
pub(crate) fn get_xattr(fd: RawFd, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let p = proc_path(fd);
    if buf.is_empty() {
        Ok(rustix::fs::getxattr_query(p.path(), name)?)
    } else {
        Ok(rustix::fs::getxattr(p.path(), name, buf)?)
    }
}

#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const SYS_GETXATTRAT: Option<libc::c_long> = Some(464);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
const SYS_GETXATTRAT: Option<libc::c_long> = None;
static NO_GETXATTRAT: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// `getxattrat(dir, name, AT_SYMLINK_NOFOLLOW, xname, buf)` (Linux 6.13+; no wrapper in
/// `rustix` or `libc` yet).
fn getxattrat(nr: libc::c_long, dir: RawFd, name: &CStr, xname: &CStr, buf: &mut [u8]) -> isize {
    let args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len() as u32,
        flags: 0,
    };
    // SAFETY: both names are NUL-terminated, `args` describes `buf` (valid for writes of its
    // length) and the size passed is that of `args`; the kernel writes only into `buf`.
    unsafe {
        libc::syscall(
            nr,
            dir,
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            xname.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        ) as isize
    }
}

/// Reads xattr `xname` of entry `name` of directory `dir` without following a symlink
/// (`getxattrat(2)` on Linux 6.13+, else through the directory's `/proc/self/fd` link).
pub(crate) fn get_xattr_at(
    dir: RawFd,
    name: &[u8],
    xname: &CStr,
    buf: &mut [u8],
) -> io::Result<usize> {
    if let (Some(nr), false) = (SYS_GETXATTRAT, NO_GETXATTRAT.load(Ordering::Relaxed)) {
        let cname = CString::new(name).map_err(|_| einval())?;
        let r = getxattrat(nr, dir, &cname, xname, buf);
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        NO_GETXATTRAT.store(true, Ordering::Relaxed);
    }
    let mut p = format!("/proc/self/fd/{dir}/").into_bytes();
    p.extend_from_slice(name);
    let p = CString::new(p).map_err(|_| einval())?;
    if buf.is_empty() {
        Ok(rustix::fs::lgetxattr_query(&p, xname)?)
    } else {
        Ok(rustix::fs::lgetxattr(&p, xname, buf)?)
    }
}

/// Sets xattr `name`; `flags` are the Linux `XATTR_CREATE`/`XATTR_REPLACE` bits.
pub(crate) fn set_xattr(fd: RawFd, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
    let p = proc_path(fd);
    let flags = XattrFlags::from_bits_retain(flags & (LINUX_XATTR_CREATE | LINUX_XATTR_REPLACE));
    Ok(rustix::fs::setxattr(p.path(), name, value, flags)?)
}

/// Lists xattr names (NUL-separated) into `buf` (size query when empty).
pub(crate) fn list_xattr(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let p = proc_path(fd);
    if buf.is_empty() {
        Ok(rustix::fs::listxattr_query(p.path())?)
    } else {
        Ok(rustix::fs::listxattr(p.path(), buf)?)
    }
}

/// Removes xattr `name`.
pub(crate) fn remove_xattr(fd: RawFd, name: &CStr) -> io::Result<()> {
    let p = proc_path(fd);
    Ok(rustix::fs::removexattr(p.path(), name)?)
}

/// Creates hard link `newname` in `newdir` to the object `fd` refers to.
pub(crate) fn link_inode(fd: RawFd, newdir: RawFd, newname: &CStr) -> io::Result<()> {
    let p = proc_path(fd);
    Ok(rustix::fs::linkat(
        CWD,
        p.path(),
        bfd(newdir),
        newname,
        AtFlags::SYMLINK_FOLLOW,
    )?)
}

/// Target of the host symlink `fd` refers to.
pub(crate) fn readlink_inode(fd: RawFd) -> io::Result<Vec<u8>> {
    let target = rustix::fs::readlinkat(bfd(fd), c"", Vec::with_capacity(256))?;
    Ok(target.into_bytes())
}

/// Changes the host permission bits of the file or directory `fd` refers to.
pub(crate) fn chmod_inode(fd: RawFd, mode: u32) -> io::Result<()> {
    let p = proc_path(fd);
    Ok(rustix::fs::chmodat(
        CWD,
        p.path(),
        Mode::from_bits_retain(mode),
        AtFlags::empty(),
    )?)
}

/// Truncates the regular file `fd` refers to (by path: an `O_PATH` descriptor cannot be
/// truncated, and opening it for writing could block or act on a FIFO or device).
pub(crate) fn truncate_inode(fd: RawFd, size: u64) -> io::Result<()> {
    let p = proc_path(fd);
    // SAFETY: `p` is NUL-terminated; `truncate64` only reads it.
    if unsafe { libc::truncate64(p.path().as_ptr(), size as i64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets atime/mtime of the file or directory `fd` refers to.
pub(crate) fn utimens_inode(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
    let p = proc_path(fd);
    Ok(rustix::fs::utimensat(
        CWD,
        p.path(),
        &timestamps(times),
        AtFlags::empty(),
    )?)
}

/// `statvfs` of the filesystem holding `fd`.
pub(crate) fn statvfs(fd: RawFd) -> io::Result<crate::statvfs64> {
    let s = rustix::fs::fstatvfs(bfd(fd))?;
    // SAFETY: `statvfs64` is a plain C struct of integers: all-zero bytes are a valid value.
    let mut st: crate::statvfs64 = unsafe { std::mem::zeroed() };
    st.f_bsize = s.f_bsize as _;
    st.f_frsize = s.f_frsize as _;
    st.f_blocks = s.f_blocks as _;
    st.f_bfree = s.f_bfree as _;
    st.f_bavail = s.f_bavail as _;
    st.f_files = s.f_files as _;
    st.f_ffree = s.f_ffree as _;
    st.f_favail = s.f_favail as _;
    st.f_fsid = s.f_fsid as _;
    st.f_flag = s.f_flag.bits() as _;
    st.f_namemax = s.f_namemax as _;
    Ok(st)
}

/// `fallocate`.
pub(crate) fn fallocate(fd: RawFd, mode: u32, offset: u64, len: u64) -> io::Result<()> {
    if i64::try_from(offset).is_err() || i64::try_from(len).is_err() {
        return Err(einval());
    }
    Ok(rustix::fs::fallocate(
        bfd(fd),
        FallocateFlags::from_bits_retain(mode),
        offset,
        len,
    )?)
}

/// `renameat2` with `RENAME_NOREPLACE`/`RENAME_EXCHANGE` in `flags`.
pub(crate) fn rename(
    olddir: RawFd,
    old: &CStr,
    newdir: RawFd,
    new: &CStr,
    flags: u32,
) -> io::Result<()> {
    Ok(rustix::fs::renameat_with(
        bfd(olddir),
        old,
        bfd(newdir),
        new,
        RenameFlags::from_bits_retain(flags),
    )?)
}

/// `lseek` with the guest's (Linux) `whence`.
pub(crate) fn lseek(fd: RawFd, offset: u64, whence: u32) -> io::Result<u64> {
    // Negative offsets travel as their two's complement, as in the guest's request.
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

/// `fdatasync` (`datasync`) or `fsync`.
pub(crate) fn sync(fd: RawFd, datasync: bool) -> io::Result<()> {
    if datasync {
        Ok(rustix::fs::fdatasync(bfd(fd))?)
    } else {
        Ok(rustix::fs::fsync(bfd(fd))?)
    }
}

/// A directory being listed; offsets are the host's `d_off` cookies.
pub(crate) struct DirStream {
    fd: OwnedFd,
}

impl DirStream {
    /// Opens a listing of the directory `inode_fd` refers to.
    pub(crate) fn open(inode_fd: RawFd) -> io::Result<DirStream> {
        Ok(DirStream {
            fd: reopen(inode_fd, libc::O_RDONLY | libc::O_DIRECTORY)?,
        })
    }

    /// The listing descriptor.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Calls `f` for entries from `offset` on until it returns `Ok(false)` or the end.
    ///
    /// `host_bytes` sizes each `getdents64` call (clamped to 1–32 KiB): about what the
    /// caller will use, so a listing resumed many times does not re-read the directory
    /// in 32 KiB steps for a 4 KiB reply.
    pub(crate) fn for_each_from(
        &mut self,
        offset: u64,
        host_bytes: usize,
        f: &mut dyn FnMut(RawDirent<'_>) -> io::Result<bool>,
    ) -> io::Result<()> {
        rustix::fs::seek(&self.fd, SeekFrom::Start(offset))?;
        let mut buf = Vec::<u8>::with_capacity(host_bytes.clamp(1024, 32 * 1024));
        let mut dir = RawDir::new(&self.fd, buf.spare_capacity_mut());
        while let Some(entry) = dir.next() {
            let entry = entry?;
            if !f(RawDirent {
                ino: entry.ino(),
                off: entry.next_entry_cookie(),
                typ: dtype(entry.file_type()),
                name: entry.file_name().to_bytes(),
            })? {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Host errno to guest (Linux) errno: the identity here.
pub(crate) fn linux_errno(e: io::Error) -> io::Error {
    e
}

#[cfg(test)]
mod tests {
    use super::proc_path;

    #[test]
    fn proc_path_formats_every_fd() {
        for fd in [0, 7, 10, 4095, 1_000_000, i32::MAX] {
            let p = proc_path(fd);
            assert_eq!(
                p.path().to_str().ok(),
                Some(format!("/proc/self/fd/{fd}").as_str())
            );
            assert_eq!(p.name().to_str().ok(), Some(fd.to_string().as_str()));
        }
    }
}
