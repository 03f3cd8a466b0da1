//! The few host calls file mounts make directly (through `rustix`; the rest goes through
//! `std` and PassthroughFs), and the only platform-specific code of the module. The host calls
//! are POSIX and available on Linux and macOS alike: the crash sweep uses `flock` rather than
//! `/proc`, and `EXDEV` is detected from `linkat` itself (no `statfs` comparison), so they need
//! no fallback. The host file's directory is pinned with `O_PATH` on Linux, with a plain
//! read-only directory descriptor elsewhere.
//! The Linux-only items are a FUSE protocol flag (`readdirplus`, absent on macOS) and the
//! Linux value of `ENOTSUP` for the guest.

// Stat field types differ per platform.
#![allow(clippy::unnecessary_cast)]

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use super::staging::Source;
use crate::FsOptions;

/// `ENOTSUP` as the Linux guest knows it. (The other errnos the single-file filesystem
/// answers itself — EPERM, ENOENT, EBADF, EACCES, ENOTDIR, EISDIR, EINVAL, EROFS — have the same
/// numbers on macOS.)
#[cfg(target_os = "linux")]
pub(crate) const ENOTSUP: i32 = libc::ENOTSUP;
/// `ENOTSUP` as the Linux guest knows it (macOS's own value differs).
#[cfg(not(target_os = "linux"))]
pub(crate) const ENOTSUP: i32 = 95;

/// `opts` without READDIRPLUS (the single-file filesystem serves plain READDIR only).
#[cfg(target_os = "linux")]
pub(crate) fn without_readdirplus(opts: FsOptions) -> FsOptions {
    opts - (FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO)
}

/// `opts` unchanged: the macOS protocol has no READDIRPLUS.
#[cfg(not(target_os = "linux"))]
pub(crate) fn without_readdirplus(opts: FsOptions) -> FsOptions {
    opts
}

/// Takes an exclusive `flock` on `file`. With `wait == false` returns `Ok(false)` instead of
/// blocking when another open file description holds it (also one in this process).
pub(crate) fn lock_exclusive(file: &File, wait: bool) -> io::Result<bool> {
    let op = if wait {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(Errno::WOULDBLOCK) if !wait => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The real user id of this process (names the default runtime directory).
pub(crate) fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Opens the directory `path` to resolve names in it later (`O_PATH` on Linux: no read
/// permission needed, and the descriptor allows nothing but lookups).
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    #[cfg(target_os = "linux")]
    let how = OFlags::PATH;
    #[cfg(not(target_os = "linux"))]
    let how = OFlags::RDONLY;
    Ok(rustix::fs::open(
        path,
        how | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// What the final name `name` in `dir` is, without following a symlink there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A symbolic link (never followed).
    Symlink,
    /// Anything else (directory, FIFO, device, socket).
    Other,
}

/// `(kind, identity)` of `name` in `dir`, not following a symlink at `name`.
pub(crate) fn stat_at(dir: &OwnedFd, name: &OsStr) -> io::Result<(Kind, Source)> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok((kind_of(&st), source_of(&st)))
}

/// `(kind, identity)` of an open file.
pub(crate) fn fstat(file: &File) -> io::Result<(Kind, Source)> {
    let st = rustix::fs::fstat(file)?;
    Ok((kind_of(&st), source_of(&st)))
}

fn kind_of(st: &rustix::fs::Stat) -> Kind {
    match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

fn source_of(st: &rustix::fs::Stat) -> Source {
    Source {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        size: st.st_size as u64,
        mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
    }
}

/// Hard-links `name` in `dir` to the new name `dst` in `dst_dir`, never following a symlink at
/// `name` (a symlink there would be linked itself; callers check what they linked).
pub(crate) fn link_at(
    dir: &OwnedFd,
    name: &OsStr,
    dst_dir: &OwnedFd,
    dst: &OsStr,
) -> io::Result<()> {
    rustix::fs::linkat(dir, name, dst_dir, dst, AtFlags::empty())?;
    Ok(())
}

/// Creates the new file `name` in `dir` (mode 0600) for writing.
pub(crate) fn create_at(dir: &OwnedFd, name: &OsStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// Renames `from` to `to`, both in `dir`, replacing `to`.
pub(crate) fn rename_in(dir: &OwnedFd, from: &OsStr, to: &OsStr) -> io::Result<()> {
    rustix::fs::renameat(dir, from, dir, to)?;
    Ok(())
}

/// Removes `name` from `dir` (a directory when `is_dir`).
pub(crate) fn unlink_at(dir: &OwnedFd, name: &OsStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    rustix::fs::unlinkat(dir, name, flags)?;
    Ok(())
}

/// The names in the directory `dir` (without `.` and `..`), with whether each is a directory.
pub(crate) fn list_dir(dir: &OwnedFd) -> io::Result<Vec<(OsString, bool)>> {
    let mut names = Vec::new();
    // `dir` may be an `O_PATH` descriptor, which cannot be read: open it afresh for reading.
    let readable = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for entry in rustix::fs::Dir::new(readable)? {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        names.push((
            name.to_os_string(),
            entry.file_type() == FileType::Directory,
        ));
    }
    Ok(names)
}

/// Opens `name` in `dir` for reading, refusing a symlink there (`ELOOP`) and never blocking
/// on a FIFO.
pub(crate) fn open_at_nofollow(dir: &OwnedFd, name: &OsStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}
