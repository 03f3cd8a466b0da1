//! Linux and FUSE ABI values the guest's requests carry, defined once for every backend.
//!
//! The guest is Linux whatever the host, so these are the Linux values on every host. The file
//! type bits and `SEEK_SET`/`SEEK_CUR`/`SEEK_END` are the same on every Unix and come from
//! `libc`; the others differ on some hosts (or are missing there), so they are written out once
//! and, on Linux hosts, checked against `libc` and `fuse-backend-rs` at compile time.

// `mode_t` and the `SEEK_*` types differ between hosts: the casts are not no-ops everywhere.
#![allow(clippy::unnecessary_cast)]

/// File type mask of `st_mode`.
pub(crate) const S_IFMT: u32 = libc::S_IFMT as u32;
/// Regular file.
pub(crate) const S_IFREG: u32 = libc::S_IFREG as u32;
/// Directory.
pub(crate) const S_IFDIR: u32 = libc::S_IFDIR as u32;
/// Symbolic link.
pub(crate) const S_IFLNK: u32 = libc::S_IFLNK as u32;
/// FIFO.
pub(crate) const S_IFIFO: u32 = libc::S_IFIFO as u32;
/// Socket.
pub(crate) const S_IFSOCK: u32 = libc::S_IFSOCK as u32;
/// Character device.
pub(crate) const S_IFCHR: u32 = libc::S_IFCHR as u32;
/// Block device.
pub(crate) const S_IFBLK: u32 = libc::S_IFBLK as u32;

/// `renameat2` flag: fail if the target exists.
pub(crate) const RENAME_NOREPLACE: u32 = 1;
/// `renameat2` flag: swap source and target.
pub(crate) const RENAME_EXCHANGE: u32 = 2;
/// `renameat2` flag: leave a whiteout at the source.
pub(crate) const RENAME_WHITEOUT: u32 = 4;

/// `lseek` whence values.
pub(crate) const SEEK_SET: u32 = libc::SEEK_SET as u32;
/// See [`SEEK_SET`].
pub(crate) const SEEK_CUR: u32 = libc::SEEK_CUR as u32;
/// See [`SEEK_SET`].
pub(crate) const SEEK_END: u32 = libc::SEEK_END as u32;
/// See [`SEEK_SET`] (macOS numbers it 4).
pub(crate) const SEEK_DATA: u32 = 3;
/// See [`SEEK_SET`] (macOS numbers it 3).
pub(crate) const SEEK_HOLE: u32 = 4;

/// `fallocate` mode bits.
pub(crate) const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
/// See [`FALLOC_FL_KEEP_SIZE`].
pub(crate) const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
/// See [`FALLOC_FL_KEEP_SIZE`].
pub(crate) const FALLOC_FL_COLLAPSE_RANGE: u32 = 0x08;
/// See [`FALLOC_FL_KEEP_SIZE`].
pub(crate) const FALLOC_FL_ZERO_RANGE: u32 = 0x10;
/// See [`FALLOC_FL_KEEP_SIZE`].
pub(crate) const FALLOC_FL_INSERT_RANGE: u32 = 0x20;

/// `setxattr` flag: fail if the attribute exists (macOS numbers it 2).
pub(crate) const XATTR_CREATE: u32 = 1;
/// `setxattr` flag: fail unless the attribute exists (macOS numbers it 4).
pub(crate) const XATTR_REPLACE: u32 = 2;

/// `FOPEN_NOFLUSH` in an open reply's flags (FUSE 7.35): `close` sends no FLUSH.
pub(crate) const FOPEN_NOFLUSH: u32 = 1 << 5;

/// `FUSE_WRITE_KILL_SUIDGID` (`WRITE_KILL_PRIV`) in a FUSE write's flags.
pub(crate) const WRITE_KILL_PRIV: u32 = 4;

#[cfg(target_os = "linux")]
const _: () = {
    assert!(RENAME_NOREPLACE == libc::RENAME_NOREPLACE);
    assert!(RENAME_EXCHANGE == libc::RENAME_EXCHANGE);
    assert!(RENAME_WHITEOUT == libc::RENAME_WHITEOUT);
    assert!(SEEK_DATA == libc::SEEK_DATA as u32);
    assert!(SEEK_HOLE == libc::SEEK_HOLE as u32);
    assert!(FALLOC_FL_KEEP_SIZE == libc::FALLOC_FL_KEEP_SIZE as u32);
    assert!(FALLOC_FL_PUNCH_HOLE == libc::FALLOC_FL_PUNCH_HOLE as u32);
    assert!(FALLOC_FL_ZERO_RANGE == libc::FALLOC_FL_ZERO_RANGE as u32);
    assert!(FALLOC_FL_COLLAPSE_RANGE == libc::FALLOC_FL_COLLAPSE_RANGE as u32);
    assert!(FALLOC_FL_INSERT_RANGE == libc::FALLOC_FL_INSERT_RANGE as u32);
    assert!(XATTR_CREATE == libc::XATTR_CREATE as u32);
    assert!(XATTR_REPLACE == libc::XATTR_REPLACE as u32);
    assert!(WRITE_KILL_PRIV == fuse_backend_rs::abi::fuse_abi::WRITE_KILL_PRIV);
};
