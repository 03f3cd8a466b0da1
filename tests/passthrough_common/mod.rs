//! Shared setup for the PassthroughFs test binaries: every binary runs unprivileged.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Once;

use boxfs::passthrough::{PassthroughFs, PassthroughFsBuilder};

/// The uid/gid the tests run as when started as root.
pub const NOBODY: u32 = 65534;

static DROP: Once = Once::new();

/// Drops root privileges for the whole process (all threads) once, so the backend is
/// proven to work as an ordinary user. Call before creating any temp dir.
pub fn unprivileged() {
    DROP.call_once(|| {
        // SAFETY: plain credential syscalls; glibc applies set*id to every thread.
        unsafe {
            if libc::geteuid() == 0 {
                assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
                assert_eq!(libc::setresgid(NOBODY, NOBODY, NOBODY), 0, "setresgid");
                assert_eq!(libc::setresuid(NOBODY, NOBODY, NOBODY), 0, "setresuid");
                // Changing credentials clears the dumpable flag; keep /proc/self usable as
                // for any ordinary user process.
                libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
            }
            assert_ne!(libc::geteuid(), 0, "tests must not run as root");
        }
    });
}

/// A fresh temp dir (owned by the unprivileged user).
pub fn tempdir() -> tempfile::TempDir {
    unprivileged();
    tempfile::Builder::new()
        .prefix("boxfs-pt-")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

/// A fresh temp dir on tmpfs (`/dev/shm`) if it is usable, else under `/tmp`.
pub fn fast_tempdir() -> tempfile::TempDir {
    unprivileged();
    let Ok(dir) = tempfile::Builder::new()
        .prefix("boxfs-pt-")
        .tempdir_in("/dev/shm")
    else {
        return tempdir();
    };
    let p = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: valid strings and buffer.
    let ok = unsafe {
        libc::setxattr(
            p.as_ptr(),
            c"user.probe".as_ptr(),
            b"1".as_ptr().cast(),
            1,
            0,
        )
    } == 0;
    if ok {
        dir
    } else {
        tempdir()
    }
}

/// A builder for `dir` with the test defaults.
pub fn builder(dir: &Path) -> PassthroughFsBuilder {
    PassthroughFs::builder(dir)
}
