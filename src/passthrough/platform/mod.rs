//! The one platform-specific place: confined opens, re-opens, stat, xattrs and directory
//! streams. This module holds what both platforms share; `linux.rs` and `macos.rs` hold the
//! rest behind the same function names.
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
//!
//! System calls go through `rustix`; the few it has no wrapper for are hand-written in the
//! platform file, each behind a small safe function.

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use crate::stat64;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
mod macos;
#[cfg(not(target_os = "linux"))]
pub(crate) use macos::*;

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

/// Guest (Linux) `setxattr` flags.
pub(crate) use crate::abi::{
    XATTR_CREATE as LINUX_XATTR_CREATE, XATTR_REPLACE as LINUX_XATTR_REPLACE,
};

/// Borrows a descriptor number the caller holds open.
///
/// The platform functions take `RawFd`s from callers that keep the descriptor (an inode's
/// `OwnedFd`, a handle's file) alive across the call; this turns the number into the borrowed
/// form `rustix` takes, for the duration of one platform call.
fn bfd<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: every caller of the platform functions passes a descriptor it keeps open for
    // the whole call, and the borrow does not outlive that call.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

/// Opens the inode descriptor of `name` beneath `dir`.
pub(crate) fn open_inode(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    open_beneath(dir, name, INODE_FLAGS, 0)
}

/// `timespec` pair (`UTIME_NOW`/`UTIME_OMIT` included) as `rustix` takes it.
fn timestamps(times: &[libc::timespec; 2]) -> Timestamps {
    let ts = |t: &libc::timespec| Timespec {
        tv_sec: t.tv_sec as _,
        tv_nsec: t.tv_nsec as _,
    };
    Timestamps {
        last_access: ts(&times[0]),
        last_modification: ts(&times[1]),
    }
}

/// Sets atime/mtime of entry `name` in `dir` without following a symlink.
pub(crate) fn utimens_at(dir: RawFd, name: &CStr, times: &[libc::timespec; 2]) -> io::Result<()> {
    Ok(rustix::fs::utimensat(
        bfd(dir),
        name,
        &timestamps(times),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// The `DT_*` value of a directory entry's type.
fn dtype(t: FileType) -> u8 {
    match t {
        FileType::RegularFile => libc::DT_REG,
        FileType::Directory => libc::DT_DIR,
        FileType::Symlink => libc::DT_LNK,
        FileType::Fifo => libc::DT_FIFO,
        FileType::Socket => libc::DT_SOCK,
        FileType::CharacterDevice => libc::DT_CHR,
        FileType::BlockDevice => libc::DT_BLK,
        FileType::Unknown => libc::DT_UNKNOWN,
    }
}

/// Opens the share's root directory by its host path (symlinks followed: the path is the
/// host administrator's choice, not the guest's).
pub(crate) fn open_root(path: &CStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Removes entry `name` of `dir` (a directory when `is_dir`).
pub(crate) fn unlink_at(dir: RawFd, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    Ok(rustix::fs::unlinkat(bfd(dir), name, flags)?)
}

/// Creates directory `name` in `dir`.
pub(crate) fn mkdir_at(dir: RawFd, name: &CStr, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(
        bfd(dir),
        name,
        Mode::from_bits_retain(mode as _),
    )?)
}

/// Creates host symlink `name` in `dir` pointing at `target` (stored, never followed).
pub(crate) fn symlink_at(target: &CStr, dir: RawFd, name: &CStr) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, bfd(dir), name)?)
}

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}
