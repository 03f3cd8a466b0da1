//! The one platform-specific place of MemFs: FUSE protocol flags that only the Linux ABI of
//! fuse-backend-rs defines.

use crate::{FsOptions, SetattrValid};

/// Init flags MemFs asks for (intersected with what the kernel offers).
pub(super) fn wanted_options(writeback: bool) -> FsOptions {
    // Not ATOMIC_O_TRUNC: the guest truncates with SETATTR after its own checks of the open
    // (an O_TRUNC open it refuses, ETXTBSY, must leave the file alone).
    let common = FsOptions::ASYNC_READ | FsOptions::BIG_WRITES;
    #[cfg(target_os = "linux")]
    let common = common
        | FsOptions::DO_READDIRPLUS
        | FsOptions::READDIRPLUS_AUTO
        | FsOptions::PARALLEL_DIROPS
        | FsOptions::MAX_PAGES;
    #[cfg(target_os = "linux")]
    let common = if writeback {
        common | FsOptions::WRITEBACK_CACHE
    } else {
        common
    };
    #[cfg(not(target_os = "linux"))]
    let _ = writeback;
    common
}

/// Whether a setattr asks to clear setuid/setgid (`FATTR_KILL_SUIDGID`, Linux only).
pub(super) fn kill_suidgid(valid: SetattrValid) -> bool {
    #[cfg(target_os = "linux")]
    {
        valid.contains(SetattrValid::KILL_SUIDGID)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = valid;
        false
    }
}

/// Whether a setattr sets ctime explicitly (`FATTR_CTIME`, Linux only).
pub(super) fn sets_ctime(valid: SetattrValid) -> bool {
    #[cfg(target_os = "linux")]
    {
        valid.contains(SetattrValid::CTIME)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = valid;
        false
    }
}
