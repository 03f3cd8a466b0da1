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

use std::ffi::CStr;
use std::os::fd::RawFd;

/// Handle bytes kept exactly (ext4, xfs, tmpfs and btrfs handles fit); longer handles are
/// kept as a 128-bit digest.
const HANDLE_BYTES: usize = 20;

/// A host file's identity beyond its inode number; see the [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fingerprint {
    /// Nothing could be learned: files with the same number are taken to be the same.
    Unknown,
    /// Handle type, length and bytes (or digest, past [`HANDLE_BYTES`]).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Handle(i32, u8, [u8; HANDLE_BYTES]),
    /// Birth time (seconds, nanoseconds).
    Birth(i64, u32),
}

impl Fingerprint {
    /// Whether `self` and `other` may be the same file: `false` only when both are known,
    /// of the same kind, and differ.
    pub fn same(&self, other: &Fingerprint) -> bool {
        match (self, other) {
            (Fingerprint::Handle(..), Fingerprint::Handle(..)) => self == other,
            (Fingerprint::Birth(a, b), Fingerprint::Birth(c, d)) => (a, b) == (c, d),
            _ => true,
        }
    }
}

/// The fingerprint of the file `fd` refers to (any descriptor, `O_PATH` included).
#[cfg(target_os = "linux")]
pub(crate) fn fingerprint(fd: RawFd) -> Fingerprint {
    if let Some(h) = handle_at(fd, c"", libc::AT_EMPTY_PATH) {
        return h;
    }
    birth_at(fd, c"", libc::AT_EMPTY_PATH).unwrap_or(Fingerprint::Unknown)
}

/// The fingerprint of `name` in directory `dir` (a symlink itself, not its target), of the
/// same kind as `like`, without opening it; `None` if it cannot be had.
#[cfg(target_os = "linux")]
pub(crate) fn fingerprint_at(dir: RawFd, name: &CStr, like: &Fingerprint) -> Option<Fingerprint> {
    match like {
        Fingerprint::Unknown => Some(Fingerprint::Unknown),
        Fingerprint::Handle(..) => handle_at(dir, name, 0),
        Fingerprint::Birth(..) => birth_at(dir, name, libc::AT_SYMLINK_NOFOLLOW),
    }
}

/// A file handle, or an identification-only one where the filesystem cannot export
/// handles.
#[cfg(target_os = "linux")]
fn handle_at(dir: RawFd, name: &CStr, flags: i32) -> Option<Fingerprint> {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set once the kernel rejected `AT_HANDLE_FID` (before Linux 6.5).
    static NO_FID: AtomicBool = AtomicBool::new(false);

    match handle_result(dir, name, flags) {
        Ok(h) => return Some(h),
        Err(libc::EOPNOTSUPP) if !NO_FID.load(Ordering::Relaxed) => {}
        Err(_) => return None,
    }
    match handle_result(dir, name, flags | libc::AT_HANDLE_FID) {
        Ok(h) => Some(h),
        Err(e) => {
            if e == libc::EINVAL {
                NO_FID.store(true, Ordering::Relaxed);
            }
            None
        }
    }
}

/// The birth time, where the filesystem records one.
#[cfg(target_os = "linux")]
fn birth_at(dir: RawFd, name: &CStr, flags: i32) -> Option<Fingerprint> {
    use rustix::fs::{statx, AtFlags, StatxFlags};
    // SAFETY: `dir` is an open descriptor for the duration of this call.
    let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir) };
    let flags = AtFlags::from_bits_truncate(flags as _);
    match statx(dir, name, flags, StatxFlags::BTIME) {
        Ok(stx) if stx.stx_mask & StatxFlags::BTIME.bits() != 0 => Some(Fingerprint::Birth(
            stx.stx_btime.tv_sec,
            stx.stx_btime.tv_nsec,
        )),
        _ => None,
    }
}

/// `name_to_handle_at(dir, name, flags)`, or the errno.
#[cfg(target_os = "linux")]
fn handle_result(dir: RawFd, name: &CStr, flags: i32) -> Result<Fingerprint, i32> {
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
    // SAFETY: `name` is NUL-terminated; `buf` starts with the `file_handle` header and has
    // `handle_bytes` bytes of room after it. Without `AT_SYMLINK_FOLLOW` a symlink is not
    // followed.
    let r = unsafe {
        libc::name_to_handle_at(
            dir,
            name.as_ptr(),
            (&mut buf as *mut Buf).cast::<libc::file_handle>(),
            &mut mount_id,
            flags,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    let len = (buf.bytes as usize).min(MAX);
    let mut out = [0u8; HANDLE_BYTES];
    if len <= HANDLE_BYTES {
        out[..len].copy_from_slice(&buf.data[..len]);
    } else {
        use std::hash::{Hash, Hasher};
        for (i, part) in out.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (i, &buf.data[..len]).hash(&mut h);
            let d = h.finish().to_ne_bytes();
            part.copy_from_slice(&d[..part.len()]);
        }
    }
    Ok(Fingerprint::Handle(
        buf.kind,
        len.min(u8::MAX as usize) as u8,
        out,
    ))
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

/// The fingerprint of `name` in directory `dir` (never following a symlink), of the same
/// kind as `like`; `None` if it cannot be had.
#[cfg(not(target_os = "linux"))]
pub(crate) fn fingerprint_at(dir: RawFd, name: &CStr, like: &Fingerprint) -> Option<Fingerprint> {
    if *like == Fingerprint::Unknown {
        return Some(Fingerprint::Unknown);
    }
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` a valid out-pointer.
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        return None;
    }
    Some(Fingerprint::Birth(
        st.st_birthtime as i64,
        st.st_birthtime_nsec as u32,
    ))
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
        let d = std::fs::File::open(&dir).expect("open dir");
        let by_name = fingerprint_at(d.as_raw_fd(), c"f", &fa).expect("by name");
        assert!(by_name.same(&fingerprint(c.as_raw_fd())));
        assert!(!by_name.same(&fa));
        assert!(Fingerprint::Unknown.same(&fa));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
