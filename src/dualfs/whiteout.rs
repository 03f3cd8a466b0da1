//! The on-disk format of whiteouts and opaque directories in backend A.
//!
//! It is the kernel overlayfs format, so an A directory written by DualFs can be inspected
//! with the usual tools (and, for a host directory, mounted by overlayfs with `userxattr`):
//!
//! * **whiteout**: a character device with device number 0/0 in A, at the name it hides.
//!   Through [`PassthroughFs`](crate::passthrough::PassthroughFs) that is an empty host file
//!   whose ownership xattr says `chr 0:0`, so it survives a daemon restart without
//!   privileges. A guest `mknod` of a 0/0 character device is refused with `EPERM` (it would
//!   be indistinguishable from a whiteout).
//! * **opaque directory**: a directory in A with the xattr `user.overlay.opaque` = `y`: no
//!   B directory is merged under it.
//! * Every `user.overlay.*` xattr is DualFs metadata: hidden from `listxattr`, `ENODATA` to
//!   `getxattr`, `EPERM` to `setxattr` and `removexattr`.
//! * The staging directory [`WORK_DIR`] at the root of A holds copy-ups in progress; it is
//!   hidden from the guest (lookups, listings, new names) and emptied when a DualFs is built.

use std::ffi::CStr;

use crate::stat64;

/// The xattr marking an opaque directory.
pub const OPAQUE_XATTR: &CStr = c"user.overlay.opaque";

/// Prefix of the xattrs DualFs reserves (hidden from the guest).
pub const PRIVATE_XATTR_PREFIX: &[u8] = b"user.overlay.";

/// Name of the staging directory at the root of backend A.
pub const WORK_DIR: &CStr = c".boxfs-dualfs-work";

/// The errno for a missing xattr (`ENODATA` on Linux, `ENOATTR` elsewhere).
#[cfg(target_os = "linux")]
pub(crate) const ENOXATTR: i32 = libc::ENODATA;
/// The errno for a missing xattr (`ENODATA` on Linux, `ENOATTR` elsewhere).
#[cfg(not(target_os = "linux"))]
pub(crate) const ENOXATTR: i32 = libc::ENOATTR;

/// Whether attributes from A describe a whiteout.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn is_whiteout(st: &stat64) -> bool {
    (st.st_mode as u32 & libc::S_IFMT as u32) == libc::S_IFCHR as u32 && st.st_rdev as u64 == 0
}

/// Whether an xattr name is reserved for DualFs.
pub(crate) fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(PRIVATE_XATTR_PREFIX)
}
