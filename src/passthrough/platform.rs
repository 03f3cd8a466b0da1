//! The one platform-specific place: confined opens, re-opens, stat, xattrs and directory
//! streams.
//!
//! Linux: inodes are `O_PATH | O_NOFOLLOW` descriptors opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (falling back to `openat(O_NOFOLLOW)` on
//! kernels without `openat2`), one validated component at a time. They are re-opened for I/O
//! and xattrs through `/proc/self/fd/N`, a magic link bound to the open file itself: no host
//! rename or symlink swap can redirect it.
//!
//! Other Unix (macOS): inodes are `O_RDONLY | O_SYMLINK | O_NONBLOCK` descriptors opened with
//! `openat` one component at a time, and re-opened by the path the kernel reports
//! (`F_GETPATH`) with `O_NOFOLLOW`, verifying that the result is the same object. Host errno
//! values are translated to Linux ones for the guest.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::stat64;

/// A host `stat` plus the mount id (0 where the platform has none).
#[derive(Clone, Copy)]
pub(crate) struct HostStat {
    pub st: stat64,
    pub mnt_id: u64,
}

/// One raw directory entry.
pub(crate) struct RawDirent<'a> {
    pub ino: u64,
    /// Offset of the *next* entry (resume point).
    pub off: u64,
    /// `DT_*` type as the host reports it.
    pub typ: u8,
    pub name: &'a [u8],
}

fn last() -> io::Error {
    io::Error::last_os_error()
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(last())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(last())
    } else {
        Ok(r as usize)
    }
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(fd)?;
    // SAFETY: `fd` was just returned by a successful open call and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Guest (Linux) xattr flags.
const LINUX_XATTR_CREATE: u32 = 1;
const LINUX_XATTR_REPLACE: u32 = 2;

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::OnceLock;

    /// Flags of the descriptor that represents an inode.
    pub(crate) const INODE_FLAGS: i32 = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;

    static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
    static PROC_FD: OnceLock<OwnedFd> = OnceLock::new();

    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    const RESOLVE_BENEATH: u64 = 0x08;

    /// Checks that re-opening through `/proc/self/fd` is possible.
    pub(crate) fn init() -> io::Result<()> {
        if PROC_FD.get().is_some() {
            return Ok(());
        }
        // SAFETY: the path is a valid NUL-terminated string.
        let fd = owned(unsafe {
            libc::open(
                c"/proc/self/fd".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        let _ = PROC_FD.set(fd);
        Ok(())
    }

    fn proc_fd() -> io::Result<RawFd> {
        use std::os::fd::AsRawFd;
        PROC_FD
            .get()
            .map(|f| f.as_raw_fd())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// `/proc/self/fd/N` as a NUL-terminated string on the stack (no allocation: this is on
    /// the path of every xattr call and of the ownership read of every new inode).
    struct ProcPath {
        buf: [u8; 32],
    }

    impl ProcPath {
        fn as_ptr(&self) -> *const libc::c_char {
            self.buf.as_ptr().cast()
        }
    }

    fn proc_path(fd: RawFd) -> ProcPath {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
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
            buf[PREFIX.len() + i] = *d;
        }
        // The rest of `buf` is zero: the string is NUL-terminated (14 + 10 < 32).
        ProcPath { buf }
    }

    /// Opens `name` (one validated component) beneath directory `dir`, never following a
    /// symlink or magic link.
    pub(crate) fn open_beneath(
        dir: RawFd,
        name: &CStr,
        flags: i32,
        mode: u32,
    ) -> io::Result<OwnedFd> {
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let how = OpenHow {
                flags: flags as u64,
                mode: if flags & libc::O_CREAT != 0 {
                    mode as u64
                } else {
                    0
                },
                resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
            };
            for _ in 0..8 {
                // SAFETY: `name` is NUL-terminated and `how` is a valid `open_how` of the size
                // passed; the kernel only reads them.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_openat2,
                        dir,
                        name.as_ptr(),
                        &how as *const OpenHow,
                        std::mem::size_of::<OpenHow>(),
                    )
                };
                if r >= 0 {
                    return owned(r as libc::c_int);
                }
                let e = last();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => continue,
                    Some(libc::ENOSYS) => {
                        NO_OPENAT2.store(true, Ordering::Relaxed);
                        break;
                    }
                    _ => return Err(e),
                }
            }
            if !NO_OPENAT2.load(Ordering::Relaxed) {
                return Err(io::Error::from_raw_os_error(libc::EAGAIN));
            }
        }
        // SAFETY: `name` is NUL-terminated; O_NOFOLLOW keeps a final symlink unfollowed and the
        // name has no `/`, so nothing outside `dir` can be reached.
        owned(unsafe { libc::openat(dir, name.as_ptr(), flags, mode as libc::c_uint) })
    }

    /// Opens the inode descriptor of `name` beneath `dir`.
    pub(crate) fn open_inode(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
        open_beneath(dir, name, INODE_FLAGS, 0)
    }

    /// A new descriptor with `flags` for the object `fd` refers to.
    pub(crate) fn reopen(fd: RawFd, flags: i32) -> io::Result<OwnedFd> {
        let flags = (flags & !(libc::O_NOFOLLOW | libc::O_CREAT | libc::O_EXCL)) | libc::O_CLOEXEC;
        let name = CString::new(fd.to_string()).unwrap_or_default();
        // SAFETY: `name` is NUL-terminated; the magic link refers to the open file `fd`.
        owned(unsafe { libc::openat(proc_fd()?, name.as_ptr(), flags) })
    }

    #[cfg(target_env = "gnu")]
    fn statx_at(dir: RawFd, name: &CStr, flags: i32) -> io::Result<HostStat> {
        // SAFETY: all-zero is a valid `statx`.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: `name` is NUL-terminated and `stx` is a valid out-pointer.
        cvt(unsafe {
            libc::statx(
                dir,
                name.as_ptr(),
                flags | libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT,
                libc::STATX_BASIC_STATS | libc::STATX_MNT_ID,
                &mut stx,
            )
        })?;
        // SAFETY: all-zero is a valid `stat64`.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
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
        let mnt_id = if stx.stx_mask & libc::STATX_MNT_ID != 0 {
            stx.stx_mnt_id
        } else {
            0
        };
        Ok(HostStat { st, mnt_id })
    }

    #[cfg(not(target_env = "gnu"))]
    fn statx_at(dir: RawFd, name: &CStr, flags: i32) -> io::Result<HostStat> {
        // SAFETY: all-zero is a valid `stat64`.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        // SAFETY: `name` is NUL-terminated and `st` is a valid out-pointer.
        cvt(unsafe {
            libc::fstatat64(
                dir,
                name.as_ptr(),
                &mut st,
                flags | libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(HostStat { st, mnt_id: 0 })
    }

    /// `stat` of the object `fd` refers to (never following a symlink).
    pub(crate) fn fstat(fd: RawFd) -> io::Result<HostStat> {
        statx_at(fd, c"", libc::AT_EMPTY_PATH)
    }

    /// `lstat` of `name` in `dir`.
    pub(crate) fn stat_at(dir: RawFd, name: &CStr) -> io::Result<HostStat> {
        statx_at(dir, name, 0)
    }

    /// Reads xattr `name` of the file or directory `fd` refers to into `buf` (size query when
    /// `buf` is empty).
    pub(crate) fn get_xattr(fd: RawFd, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
        let p = proc_path(fd);
        // SAFETY: both strings are NUL-terminated; `buf` is valid for `buf.len()` bytes.
        cvt_size(unsafe {
            libc::getxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })
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

    /// Reads xattr `xname` of entry `name` of directory `dir` without following a symlink
    /// (`getxattrat(2)` on Linux 6.13+, else through the directory's `/proc/self/fd` link).
    pub(crate) fn get_xattr_at(
        dir: RawFd,
        name: &[u8],
        xname: &CStr,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if let (Some(nr), false) = (SYS_GETXATTRAT, NO_GETXATTRAT.load(Ordering::Relaxed)) {
            let cname =
                CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let args = XattrArgs {
                value: buf.as_mut_ptr() as u64,
                size: buf.len() as u32,
                flags: 0,
            };
            // SAFETY: both names are NUL-terminated, `args` describes `buf` (valid for writes
            // of its length) and the size passed is that of `args`.
            let r = unsafe {
                libc::syscall(
                    nr,
                    dir,
                    cname.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    xname.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = last();
            if e.raw_os_error() != Some(libc::ENOSYS) {
                return Err(e);
            }
            NO_GETXATTRAT.store(true, Ordering::Relaxed);
        }
        let mut p = format!("/proc/self/fd/{dir}/").into_bytes();
        p.extend_from_slice(name);
        let p = CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: both strings are NUL-terminated; `buf` is valid for `buf.len()` bytes.
        cvt_size(unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                xname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        })
    }

    /// Sets xattr `name`; `flags` are the Linux `XATTR_CREATE`/`XATTR_REPLACE` bits.
    pub(crate) fn set_xattr(fd: RawFd, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        let p = proc_path(fd);
        let flags = (flags & (LINUX_XATTR_CREATE | LINUX_XATTR_REPLACE)) as i32;
        // SAFETY: both strings are NUL-terminated; `value` is valid for its length.
        cvt(unsafe {
            libc::setxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    /// Lists xattr names (NUL-separated) into `buf` (size query when empty).
    pub(crate) fn list_xattr(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        let p = proc_path(fd);
        // SAFETY: `p` is NUL-terminated; `buf` is valid for `buf.len()` bytes.
        cvt_size(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    /// Removes xattr `name`.
    pub(crate) fn remove_xattr(fd: RawFd, name: &CStr) -> io::Result<()> {
        let p = proc_path(fd);
        // SAFETY: both strings are NUL-terminated.
        cvt(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) }).map(drop)
    }

    /// Creates hard link `newname` in `newdir` to the object `fd` refers to.
    pub(crate) fn link_inode(fd: RawFd, newdir: RawFd, newname: &CStr) -> io::Result<()> {
        let p = proc_path(fd);
        // SAFETY: both strings are NUL-terminated.
        cvt(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                p.as_ptr(),
                newdir,
                newname.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })
        .map(drop)
    }

    /// Target of the host symlink `fd` refers to.
    pub(crate) fn readlink_inode(fd: RawFd) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: the empty path is NUL-terminated and `buf` is valid for its length.
        let n = cvt_size(unsafe {
            libc::readlinkat(fd, c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Changes the host permission bits of the file or directory `fd` refers to.
    pub(crate) fn chmod_inode(fd: RawFd, mode: u32) -> io::Result<()> {
        let p = proc_path(fd);
        // SAFETY: `p` is NUL-terminated.
        cvt(unsafe { libc::fchmodat(libc::AT_FDCWD, p.as_ptr(), mode, 0) }).map(drop)
    }

    /// Truncates the regular file `fd` refers to.
    pub(crate) fn truncate_inode(fd: RawFd, size: u64) -> io::Result<()> {
        let p = proc_path(fd);
        // SAFETY: `p` is NUL-terminated.
        cvt(unsafe { libc::truncate64(p.as_ptr(), size as i64) }).map(drop)
    }

    /// Sets atime/mtime of the file or directory `fd` refers to.
    pub(crate) fn utimens_inode(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
        let p = proc_path(fd);
        // SAFETY: `p` is NUL-terminated and `times` points at two timespecs.
        cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) }).map(drop)
    }

    /// Sets atime/mtime of entry `name` in `dir` without following a symlink.
    pub(crate) fn utimens_at(
        dir: RawFd,
        name: &CStr,
        times: &[libc::timespec; 2],
    ) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated and `times` points at two timespecs.
        cvt(unsafe {
            libc::utimensat(
                dir,
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// `statvfs` of the filesystem holding `fd`.
    pub(crate) fn statvfs(fd: RawFd) -> io::Result<crate::statvfs64> {
        // SAFETY: all-zero is a valid `statvfs64`.
        let mut st: crate::statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out-pointer.
        cvt(unsafe { libc::fstatvfs64(fd, &mut st) })?;
        Ok(st)
    }

    /// `fallocate`.
    pub(crate) fn fallocate(fd: RawFd, mode: u32, offset: u64, len: u64) -> io::Result<()> {
        let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let len = i64::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: plain syscall on a descriptor we own.
        cvt(unsafe { libc::fallocate64(fd, mode as i32, off, len) }).map(drop)
    }

    /// `renameat2` with `RENAME_NOREPLACE`/`RENAME_EXCHANGE` in `flags`.
    pub(crate) fn rename(
        olddir: RawFd,
        old: &CStr,
        newdir: RawFd,
        new: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        // SAFETY: both names are NUL-terminated single components.
        cvt(unsafe { libc::renameat2(olddir, old.as_ptr(), newdir, new.as_ptr(), flags) }).map(drop)
    }

    /// `lseek`.
    pub(crate) fn lseek(fd: RawFd, offset: u64, whence: u32) -> io::Result<u64> {
        // SAFETY: plain syscall on a descriptor we own.
        let r = unsafe { libc::lseek64(fd, offset as i64, whence as i32) };
        if r < 0 {
            Err(last())
        } else {
            Ok(r as u64)
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
            use std::os::fd::AsRawFd;
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
            let fd = self.fd();
            lseek(fd, offset, libc::SEEK_SET as u32)?;
            let mut buf = vec![0u8; host_bytes.clamp(1024, 32 * 1024)];
            loop {
                // SAFETY: `buf` is valid for writes of its length.
                let n =
                    unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
                if n < 0 {
                    return Err(last());
                }
                let n = n as usize;
                if n == 0 {
                    return Ok(());
                }
                let mut pos = 0;
                while pos + 19 <= n {
                    // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name...
                    let rd = |a: usize, len: usize| &buf[pos + a..pos + a + len];
                    let ino = u64::from_ne_bytes(rd(0, 8).try_into().unwrap_or([0; 8]));
                    let off = u64::from_ne_bytes(rd(8, 8).try_into().unwrap_or([0; 8]));
                    let reclen =
                        u16::from_ne_bytes(rd(16, 2).try_into().unwrap_or([0; 2])) as usize;
                    let typ = buf[pos + 18];
                    if reclen < 19 || pos + reclen > n {
                        return Err(io::Error::from_raw_os_error(libc::EIO));
                    }
                    let raw = &buf[pos + 19..pos + reclen];
                    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                    let name = &raw[..len];
                    pos += reclen;
                    if !f(RawDirent {
                        ino,
                        off,
                        typ,
                        name,
                    })? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Host errno to guest (Linux) errno: the identity here.
    pub(crate) fn linux_errno(e: io::Error) -> io::Error {
        e
    }

    #[cfg(test)]
    mod tests {
        use super::proc_path;
        use std::ffi::CStr;

        #[test]
        fn proc_path_formats_every_fd() {
            for fd in [0, 7, 10, 4095, 1_000_000, i32::MAX] {
                let p = proc_path(fd);
                // SAFETY: `proc_path` always NUL-terminates within its buffer.
                let got = unsafe { CStr::from_ptr(p.as_ptr()) };
                assert_eq!(
                    got.to_str().ok(),
                    Some(format!("/proc/self/fd/{fd}").as_str())
                );
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Flags of the descriptor that represents an inode.
    pub(crate) const INODE_FLAGS: i32 =
        libc::O_RDONLY | libc::O_SYMLINK | libc::O_NONBLOCK | libc::O_CLOEXEC;

    const XATTR_NOFOLLOW: i32 = 0x0001;

    pub(crate) fn init() -> io::Result<()> {
        Ok(())
    }

    fn fd_path(fd: RawFd) -> io::Result<CString> {
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: F_GETPATH writes at most PATH_MAX bytes into `buf`.
        cvt(unsafe { libc::fcntl(fd, libc::F_GETPATH, buf.as_mut_ptr()) })?;
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        buf.truncate(len);
        CString::new(buf).map_err(|_| io::Error::from_raw_os_error(libc::EIO))
    }

    pub(crate) fn open_beneath(
        dir: RawFd,
        name: &CStr,
        flags: i32,
        mode: u32,
    ) -> io::Result<OwnedFd> {
        let flags = if flags & libc::O_SYMLINK != 0 {
            flags
        } else {
            flags | libc::O_NOFOLLOW
        };
        // SAFETY: `name` is a NUL-terminated single component.
        owned(unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })
    }

    pub(crate) fn open_inode(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
        open_beneath(dir, name, INODE_FLAGS, 0)
    }

    pub(crate) fn reopen(fd: RawFd, flags: i32) -> io::Result<OwnedFd> {
        let before = fstat(fd)?;
        let p = fd_path(fd)?;
        let flags = (flags & !(libc::O_CREAT | libc::O_EXCL)) | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `p` is NUL-terminated.
        let new = owned(unsafe { libc::open(p.as_ptr(), flags) })?;
        let after = fstat(new.as_raw_fd())?;
        if before.st.st_dev != after.st.st_dev || before.st.st_ino != after.st.st_ino {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        Ok(new)
    }

    pub(crate) fn fstat(fd: RawFd) -> io::Result<HostStat> {
        // SAFETY: all-zero is a valid `stat`.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out-pointer.
        cvt(unsafe { libc::fstat(fd, &mut st) })?;
        Ok(HostStat { st, mnt_id: 0 })
    }

    pub(crate) fn stat_at(dir: RawFd, name: &CStr) -> io::Result<HostStat> {
        // SAFETY: all-zero is a valid `stat`.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        // SAFETY: `name` is NUL-terminated and `st` a valid out-pointer.
        cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(HostStat { st, mnt_id: 0 })
    }

    pub(crate) fn get_xattr(fd: RawFd, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `name` is NUL-terminated; `buf` is valid for its length.
        cvt_size(unsafe {
            libc::fgetxattr(
                fd,
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                XATTR_NOFOLLOW,
            )
        })
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
        let p = CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: both strings are NUL-terminated; `buf` is valid for its length.
        cvt_size(unsafe {
            libc::getxattr(
                p.as_ptr(),
                xname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                XATTR_NOFOLLOW,
            )
        })
    }

    pub(crate) fn set_xattr(fd: RawFd, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        let mut f = 0;
        if flags & LINUX_XATTR_CREATE != 0 {
            f |= libc::XATTR_CREATE;
        }
        if flags & LINUX_XATTR_REPLACE != 0 {
            f |= libc::XATTR_REPLACE;
        }
        // SAFETY: `name` is NUL-terminated; `value` is valid for its length.
        cvt(unsafe {
            libc::fsetxattr(
                fd,
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
                f | XATTR_NOFOLLOW,
            )
        })
        .map(drop)
    }

    pub(crate) fn list_xattr(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for its length.
        cvt_size(unsafe {
            libc::flistxattr(fd, buf.as_mut_ptr().cast(), buf.len(), XATTR_NOFOLLOW)
        })
    }

    pub(crate) fn remove_xattr(fd: RawFd, name: &CStr) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated.
        cvt(unsafe { libc::fremovexattr(fd, name.as_ptr(), XATTR_NOFOLLOW) }).map(drop)
    }

    pub(crate) fn link_inode(fd: RawFd, newdir: RawFd, newname: &CStr) -> io::Result<()> {
        let p = fd_path(fd)?;
        // SAFETY: both strings are NUL-terminated.
        cvt(unsafe { libc::linkat(libc::AT_FDCWD, p.as_ptr(), newdir, newname.as_ptr(), 0) })
            .map(drop)
    }

    pub(crate) fn readlink_inode(fd: RawFd) -> io::Result<Vec<u8>> {
        let p = fd_path(fd)?;
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: `p` is NUL-terminated and `buf` valid for its length.
        let n =
            cvt_size(unsafe { libc::readlink(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
        buf.truncate(n);
        Ok(buf)
    }

    pub(crate) fn chmod_inode(fd: RawFd, mode: u32) -> io::Result<()> {
        // SAFETY: plain syscall on a descriptor we own.
        cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(drop)
    }

    pub(crate) fn truncate_inode(fd: RawFd, size: u64) -> io::Result<()> {
        let f = reopen(fd, libc::O_WRONLY)?;
        // SAFETY: plain syscall on a descriptor we own.
        cvt(unsafe { libc::ftruncate(f.as_raw_fd(), size as libc::off_t) }).map(drop)
    }

    pub(crate) fn utimens_inode(fd: RawFd, times: &[libc::timespec; 2]) -> io::Result<()> {
        // SAFETY: `times` points at two timespecs.
        cvt(unsafe { libc::futimens(fd, times.as_ptr()) }).map(drop)
    }

    pub(crate) fn utimens_at(
        dir: RawFd,
        name: &CStr,
        times: &[libc::timespec; 2],
    ) -> io::Result<()> {
        // SAFETY: `name` is NUL-terminated and `times` points at two timespecs.
        cvt(unsafe {
            libc::utimensat(
                dir,
                name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    pub(crate) fn statvfs(fd: RawFd) -> io::Result<crate::statvfs64> {
        // SAFETY: all-zero is a valid `statvfs`.
        let mut st: crate::statvfs64 = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid out-pointer.
        cvt(unsafe { libc::fstatvfs(fd, &mut st) })?;
        Ok(st)
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
        let mut f = 0;
        if flags & 1 != 0 {
            f |= libc::RENAME_EXCL;
        }
        if flags & 2 != 0 {
            f |= libc::RENAME_SWAP;
        }
        // SAFETY: both names are NUL-terminated single components.
        cvt(unsafe { libc::renameatx_np(olddir, old.as_ptr(), newdir, new.as_ptr(), f) }).map(drop)
    }

    pub(crate) fn lseek(fd: RawFd, offset: u64, whence: u32) -> io::Result<u64> {
        let whence = match whence {
            3 => libc::SEEK_DATA,
            4 => libc::SEEK_HOLE,
            w => w as i32,
        };
        // SAFETY: plain syscall on a descriptor we own.
        let r = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        if r < 0 {
            Err(last())
        } else {
            Ok(r as u64)
        }
    }

    /// A directory being listed; offsets are `telldir` cookies of this stream.
    pub(crate) struct DirStream {
        dir: *mut libc::DIR,
    }

    // SAFETY: the DIR* is only used through `&mut self`, never concurrently.
    unsafe impl Send for DirStream {}

    impl Drop for DirStream {
        fn drop(&mut self) {
            // SAFETY: `dir` came from fdopendir and is closed once.
            unsafe { libc::closedir(self.dir) };
        }
    }

    impl DirStream {
        pub(crate) fn open(inode_fd: RawFd) -> io::Result<DirStream> {
            use std::os::fd::IntoRawFd;
            let fd = reopen(inode_fd, libc::O_RDONLY | libc::O_DIRECTORY)?.into_raw_fd();
            // SAFETY: `fd` is an open directory descriptor whose ownership passes to the DIR.
            let dir = unsafe { libc::fdopendir(fd) };
            if dir.is_null() {
                let e = last();
                // SAFETY: fdopendir failed, so `fd` is still ours to close.
                unsafe { libc::close(fd) };
                return Err(e);
            }
            Ok(DirStream { dir })
        }

        pub(crate) fn fd(&self) -> RawFd {
            // SAFETY: `dir` is a valid open DIR*.
            unsafe { libc::dirfd(self.dir) }
        }

        /// `host_bytes` is a read-size hint, unused here (`readdir(3)` buffers itself).
        pub(crate) fn for_each_from(
            &mut self,
            offset: u64,
            _host_bytes: usize,
            f: &mut dyn FnMut(RawDirent<'_>) -> io::Result<bool>,
        ) -> io::Result<()> {
            // SAFETY: `dir` is valid; offsets come from telldir on this stream.
            unsafe {
                if offset == 0 {
                    libc::rewinddir(self.dir)
                } else {
                    libc::seekdir(self.dir, offset as libc::c_long)
                }
            }
            loop {
                // SAFETY: `dir` is valid; the entry stays valid until the next readdir.
                let ent = unsafe { libc::readdir(self.dir) };
                if ent.is_null() {
                    return Ok(());
                }
                // SAFETY: `ent` is non-null and valid until the next readdir call.
                let (ino, typ, name) = unsafe {
                    let e = &*ent;
                    (
                        e.d_ino,
                        e.d_type,
                        CStr::from_ptr(e.d_name.as_ptr()).to_bytes().to_vec(),
                    )
                };
                // SAFETY: `dir` is valid.
                let off = unsafe { libc::telldir(self.dir) } as u64;
                if !f(RawDirent {
                    ino,
                    off,
                    typ,
                    name: &name,
                })? {
                    return Ok(());
                }
            }
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
}

pub(crate) use imp::*;
