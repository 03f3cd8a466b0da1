//! The few host calls file mounts make directly (the rest goes through `std` and
//! PassthroughFs), and the only platform-specific code of the module. The host calls are POSIX
//! and available on Linux and macOS alike: the crash sweep uses `flock` rather than `/proc`, and
//! `EXDEV` is detected from `linkat` itself (no `statfs` comparison), so they need no fallback.
//! The Linux-only items are a FUSE protocol flag (`readdirplus`, absent on macOS) and the
//! Linux value of `ENOTSUP` for the guest.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

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

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Takes an exclusive `flock` on `file`. With `wait == false` returns `Ok(false)` instead of
/// blocking when another open file description holds it (also one in this process).
pub(crate) fn lock_exclusive(file: &File, wait: bool) -> io::Result<bool> {
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on a descriptor `file` keeps open; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Hard-links `src` (following a symlink at `src`, so the link names the file itself) to the
/// new name `dst`.
pub(crate) fn link_following(src: &Path, dst: &Path) -> io::Result<()> {
    let s = cpath(src)?;
    let d = cpath(dst)?;
    // SAFETY: both paths are NUL-terminated C strings that outlive the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            s.as_ptr(),
            libc::AT_FDCWD,
            d.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The real user id of this process (names the default runtime directory).
pub(crate) fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() as u32 }
}
