//! Which host file an inode number belongs to *now*.
//!
//! A host inode number is unique only among live files: once a file is deleted and its last
//! descriptor closed, the next file may get the same number (ext4 and xfs hand freed numbers
//! out again at once). An inode whose descriptor was evicted from the cache therefore records
//! a fingerprint of its host file when first seen, and a file found later with the same
//! (device, inode, mount) is the same file only if its fingerprint matches.
//!
//! The fingerprint is, in order of preference:
//!
//! * the file handle (`name_to_handle_at`, allowed unprivileged; only *opening* a handle
//!   needs privileges). Handles carry the inode's generation number, which changes when a
//!   number is reused (ext4, xfs, btrfs, tmpfs, …). Filesystems without exportable handles
//!   are asked for an identification-only handle (`AT_HANDLE_FID`, Linux 6.5).
//! * the birth time (`statx` `STATX_BTIME`) where the filesystem has no handles but records
//!   one; it tells files apart unless both were created within one clock tick.
//! * nothing (neither is available): same number, same file.
//!
//! On macOS the fingerprint is the birth time (`st_birthtime`).

use std::os::fd::RawFd;

/// A host file's identity beyond its inode number; see the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fingerprint {
    /// Nothing could be learned: files with the same number are taken to be the same.
    Unknown,
    /// Handle type followed by the handle bytes.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Handle(Box<[u8]>),
    /// Birth time (seconds, nanoseconds).
    Birth(i64, u32),
}

impl Fingerprint {
    /// Whether `self` and `other` may be the same file: `false` only when both are known,
    /// of the same kind, and differ.
    pub fn same(&self, other: &Fingerprint) -> bool {
        match (self, other) {
            (Fingerprint::Handle(a), Fingerprint::Handle(b)) => a == b,
            (Fingerprint::Birth(a, b), Fingerprint::Birth(c, d)) => (a, b) == (c, d),
            _ => true,
        }
    }
}

/// The fingerprint of the file `fd` refers to (any descriptor, `O_PATH` included).
#[cfg(target_os = "linux")]
pub(crate) fn fingerprint(fd: RawFd) -> Fingerprint {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set once the kernel rejected `AT_HANDLE_FID` (before Linux 6.5).
    static NO_FID: AtomicBool = AtomicBool::new(false);

    if let Some(h) = handle(fd, 0) {
        return h;
    }
    if !NO_FID.load(Ordering::Relaxed) {
        match handle_result(fd, libc::AT_HANDLE_FID) {
            Ok(h) => return h,
            Err(libc::EINVAL) => NO_FID.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
    }
    // SAFETY: `fd` is an open descriptor for the duration of this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    use rustix::fs::{statx, AtFlags, StatxFlags};
    match statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BTIME) {
        Ok(stx) if stx.stx_mask & StatxFlags::BTIME.bits() != 0 => {
            Fingerprint::Birth(stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec)
        }
        _ => Fingerprint::Unknown,
    }
}

#[cfg(target_os = "linux")]
fn handle(fd: RawFd, flags: i32) -> Option<Fingerprint> {
    handle_result(fd, flags).ok()
}

/// `name_to_handle_at(fd, "", AT_EMPTY_PATH | flags)`, or the errno.
#[cfg(target_os = "linux")]
fn handle_result(fd: RawFd, flags: i32) -> Result<Fingerprint, i32> {
    const MAX: usize = libc::MAX_HANDLE_SZ as usize;
    /// `struct file_handle` with room for the largest handle.
    #[repr(C)]
    struct Buf {
        bytes: libc::c_uint,
        kind: libc::c_int,
        data: [u8; MAX],
    }
    let mut buf = Buf {
        bytes: MAX as libc::c_uint,
        kind: 0,
        data: [0; MAX],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` starts with the `file_handle` header and has `handle_bytes` bytes of
    // room after it; the empty path with `AT_EMPTY_PATH` names `fd` itself.
    let r = unsafe {
        libc::name_to_handle_at(
            fd,
            c"".as_ptr(),
            (&mut buf as *mut Buf).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH | flags,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    let len = (buf.bytes as usize).min(MAX);
    let mut v = Vec::with_capacity(4 + len);
    v.extend_from_slice(&buf.kind.to_ne_bytes());
    v.extend_from_slice(&buf.data[..len]);
    Ok(Fingerprint::Handle(v.into_boxed_slice()))
}

/// Other platforms (macOS): the birth time, which every macOS filesystem records.
#[cfg(not(target_os = "linux"))]
pub(crate) fn fingerprint(fd: RawFd) -> Fingerprint {
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `st` a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Fingerprint::Unknown;
    }
    Fingerprint::Birth(st.st_birthtime as i64, st.st_birthtime_nsec as u32)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_recreated_file_differs_and_the_same_file_matches() {
        let dir = std::env::temp_dir().join(format!("boxfs-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let p = dir.join("f");
        std::fs::write(&p, b"1").expect("write");
        let a = std::fs::File::open(&p).expect("open");
        let b = std::fs::File::open(&p).expect("open");
        let fa = fingerprint(a.as_raw_fd());
        assert!(fa.same(&fingerprint(b.as_raw_fd())));
        assert_ne!(fa, Fingerprint::Unknown, "/tmp supports file handles");
        drop((a, b));
        std::fs::remove_file(&p).expect("rm");
        std::fs::write(&p, b"2").expect("write");
        let c = std::fs::File::open(&p).expect("open");
        assert!(!fa.same(&fingerprint(c.as_raw_fd())));
        assert!(Fingerprint::Unknown.same(&fa));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
