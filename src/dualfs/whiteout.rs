//! The on-disk format of whiteouts and opaque directories in backend A.
//!
//! It follows kernel overlayfs with `userxattr` in its xattr-whiteout form, so an A directory
//! written by DualFs can be inspected with the usual tools and needs no privileges:
//!
//! * **whiteout**: an empty regular file in A, at the name it hides, carrying the xattr
//!   [`WHITEOUT_XATTR`] (`user.overlay.whiteout`). It is made under [`WORK_DIR`] and renamed
//!   into place, so a crash never leaves a half-made whiteout visible. (Kernel overlayfs also
//!   knows 0/0 character devices as whiteouts; DualFs does not use them, because `user.*`
//!   xattrs cannot mark a device node and a guest may create real 0/0 character devices.)
//!   Its parent directory carries `user.overlay.opaque` = `x` (as overlayfs marks directories
//!   with xattr whiteouts), so listings only look for whiteouts where there can be some.
//! * **opaque directory**: a directory in A with the xattr `user.overlay.opaque` = `y`: no
//!   B directory is merged under it.
//! * Every `user.overlay.*` xattr is DualFs metadata: hidden from `listxattr`, `ENODATA` to
//!   `getxattr`, `EPERM` to `setxattr` and `removexattr`.
//! * The staging directory [`WORK_DIR`] at the root of A holds copy-ups and whiteouts in
//!   progress; it is hidden from the guest (lookups, listings, new names) and emptied when a
//!   DualFs is built.

use std::ffi::CStr;

use crate::{stat64, Context, DynFileSystem, Entry};

/// The xattr marking a whiteout (an empty regular file in A).
pub const WHITEOUT_XATTR: &CStr = c"user.overlay.whiteout";

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

/// Whether A's entry `e` is a whiteout: an empty regular file with [`WHITEOUT_XATTR`] (the
/// xattr is only read for empty regular files).
#[allow(clippy::unnecessary_cast)]
pub(crate) fn is_whiteout(a: &dyn DynFileSystem, e: &Entry) -> bool {
    let st: &stat64 = &e.attr;
    (st.st_mode as u32 & libc::S_IFMT as u32) == libc::S_IFREG as u32
        && st.st_size == 0
        && a.getxattr(&Context::new(), e.inode, WHITEOUT_XATTR, 0)
            .is_ok()
}

/// Whether an xattr name is reserved for DualFs.
pub(crate) fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(PRIVATE_XATTR_PREFIX)
}
