//! getattr, setattr (ownership, mode, size, times), access and statfs.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use super::config::HostPermissions;
use super::handles::{Handle, HandleKind};
use super::inode_store::{InodeData, Override};
use super::override_stat::{OverrideStat, OVERRIDE_KEY};
use super::platform::{self, HostStat};
use super::resolve::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use super::PassthroughFs;
use crate::{errno, stat64, statvfs64, Context, SetattrValid};

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

/// Clears setuid, and setgid when group-executable (what Linux does on write/chown).
pub(crate) fn kill_priv(mode: u32) -> u32 {
    let mut m = mode & !S_ISUID;
    if m & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP {
        m &= !S_ISGID;
    }
    m
}

impl PassthroughFs {
    /// The open file handle `fh` if it belongs to `inode`.
    pub(crate) fn file_handle(&self, inode: u64, fh: u64) -> io::Result<Arc<Handle>> {
        let h = self
            .handles
            .get(fh)
            .ok_or_else(|| self.handles.missing(fh, inode))?;
        if h.inode.id != inode || !matches!(h.kind, HandleKind::File(_)) {
            return Err(errno(libc::EBADF));
        }
        Ok(h)
    }

    /// Host `stat` of `inode`, through the open handle when one is given (works after
    /// unlink).
    pub(crate) fn host_stat(
        &self,
        inode: &Arc<InodeData>,
        fh: Option<u64>,
    ) -> io::Result<HostStat> {
        // A handle must be one of this inode's open files (EBADF otherwise, as every backend
        // answers).
        if let Some(fh) = fh {
            if let HandleKind::File(f) = &self.file_handle(inode.id, fh)?.kind {
                return platform::fstat(f.as_raw_fd());
            }
        }
        let fd = self.fd_of(inode)?;
        platform::fstat(fd.as_raw_fd())
    }

    pub(crate) fn do_getattr(&self, inode: u64, fh: Option<u64>) -> io::Result<(stat64, Duration)> {
        let inode = self.inode(inode)?;
        let hs = match self.host_stat(&inode, fh) {
            Ok(hs) => hs,
            // Removed by the guest and kept without a descriptor: its last known attributes.
            Err(e) => (*inode.removed.lock()).ok_or(e)?,
        };
        Ok((self.attr(&inode, &hs)?, self.cfg.attr_timeout))
    }

    /// Writes a new guest ownership record for `inode` (whose descriptor is `fd`) and
    /// updates the cache. Caller holds `inode.meta`.
    pub(crate) fn store_override(
        &self,
        inode: &InodeData,
        fd: i32,
        meta: &mut Override,
        new: OverrideStat,
    ) -> io::Result<()> {
        if inode.host_type == S_IFLNK {
            // Real host symlinks cannot carry user xattrs: only no-op changes succeed.
            return Err(errno(libc::EPERM));
        }
        let value = new.to_value();
        set_override_xattr(fd, value.as_bytes())?;
        if self.cfg.host_permissions == HostPermissions::Mirror {
            let old_perm = match meta {
                Override::Present(o) => o.mode & 0o7777,
                _ => u32::MAX,
            };
            if old_perm != new.mode & 0o7777 {
                let host = self
                    .cfg
                    .host_create_mode(inode.host_type == S_IFDIR, new.mode);
                platform::chmod_inode(fd, host)?;
            }
        }
        *meta = Override::Present(new);
        Ok(())
    }

    /// Clears setuid/setgid of `inode` after a write or truncate by a non-root user.
    pub(crate) fn kill_priv_of(&self, inode: &Arc<InodeData>) -> io::Result<()> {
        let mut meta = inode.meta.lock();
        let Override::Present(o) = *meta else {
            return Ok(());
        };
        let killed = kill_priv(o.mode);
        if killed == o.mode {
            return Ok(());
        }
        let fd = self.fd_of(inode)?;
        self.store_override(
            inode,
            fd.as_raw_fd(),
            &mut meta,
            OverrideStat { mode: killed, ..o },
        )
    }

    pub(crate) fn do_setattr(
        &self,
        ctx: &Context,
        id: u64,
        attr: stat64,
        fh: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        if self.cfg.readonly {
            return Err(errno(libc::EROFS));
        }
        let inode = self.inode(id)?;
        let handle = fh.map(|fh| self.file_handle(id, fh)).transpose()?;
        let fd = self.fd_of(&inode)?;
        let hs = platform::fstat(fd.as_raw_fd())?;

        #[cfg(target_os = "linux")]
        let kill_flag = valid.contains(SetattrValid::KILL_SUIDGID);
        #[cfg(not(target_os = "linux"))]
        let kill_flag = false;

        let owner_change = valid.intersects(SetattrValid::UID | SetattrValid::GID);
        if owner_change || valid.contains(SetattrValid::MODE) || kill_flag {
            let mut meta = inode.meta.lock();
            let cur = self.guest_meta(&inode, *meta, Some(&hs))?;
            let mut new = cur;
            if valid.contains(SetattrValid::UID) {
                new.uid = attr.st_uid;
            }
            if valid.contains(SetattrValid::GID) {
                new.gid = attr.st_gid;
            }
            if valid.contains(SetattrValid::MODE) {
                new.mode = cur.file_type() | (attr.st_mode as u32 & 0o7777);
            } else if (owner_change && cur.file_type() != S_IFDIR) || kill_flag {
                new.mode = kill_priv(new.mode);
            }
            if new != cur || (owner_change && *meta == Override::Absent) {
                if inode.host_type == S_IFLNK && new == cur {
                    // Nothing to record for a host symlink.
                } else {
                    self.store_override(&inode, fd.as_raw_fd(), &mut meta, new)?;
                }
            }
        }

        if valid.contains(SetattrValid::SIZE) {
            let t = self.guest_type(&inode)?;
            if t == S_IFDIR {
                return Err(errno(libc::EISDIR));
            }
            if t != S_IFREG {
                return Err(errno(libc::EINVAL));
            }
            let new_size = u64::try_from(attr.st_size).map_err(|_| errno(libc::EINVAL))?;
            let truncate = || match handle.as_ref().map(|h| &h.kind) {
                Some(HandleKind::File(f)) if f.set_len(new_size).is_ok() => Ok(()),
                _ => platform::truncate_inode(fd.as_raw_fd(), new_size),
            };
            let res = match &self.quota {
                None => truncate(),
                Some(q) => {
                    // Measured, charged and changed as one step (see `quota.rs`).
                    let _excl = inode.resize.write();
                    let old_size = platform::fstat(fd.as_raw_fd())?.st.st_size as u64;
                    let reserved = new_size.saturating_sub(old_size);
                    q.reserve(reserved)?;
                    let res = truncate();
                    let after = if res.is_ok() { new_size } else { old_size };
                    q.settle(reserved, old_size, after);
                    res
                }
            };
            res?;
            if ctx.uid != 0 && !valid.contains(SetattrValid::MODE) {
                self.kill_priv_of(&inode)?;
            }
        }

        if valid.intersects(
            SetattrValid::ATIME
                | SetattrValid::MTIME
                | SetattrValid::ATIME_NOW
                | SetattrValid::MTIME_NOW,
        ) {
            let ts = |set: bool, now: bool, sec: i64, nsec: i64| libc::timespec {
                tv_sec: if now || !set { 0 } else { sec as _ },
                tv_nsec: if now {
                    libc::UTIME_NOW
                } else if set {
                    nsec as _
                } else {
                    libc::UTIME_OMIT
                },
            };
            let times = [
                ts(
                    valid.contains(SetattrValid::ATIME),
                    valid.contains(SetattrValid::ATIME_NOW),
                    attr.st_atime as i64,
                    attr.st_atime_nsec as i64,
                ),
                ts(
                    valid.contains(SetattrValid::MTIME),
                    valid.contains(SetattrValid::MTIME_NOW),
                    attr.st_mtime as i64,
                    attr.st_mtime_nsec as i64,
                ),
            ];
            if inode.host_type == S_IFLNK {
                let path = inode.path.lock().clone();
                let Some((parent, name)) = path else {
                    return Err(errno(libc::ESTALE));
                };
                let pfd = self.fd_of(&parent)?;
                platform::utimens_at(pfd.as_raw_fd(), &name, &times)?;
            } else {
                platform::utimens_inode(fd.as_raw_fd(), &times)?;
            }
        }

        let hs = platform::fstat(fd.as_raw_fd())?;
        Ok((self.attr(&inode, &hs)?, self.cfg.attr_timeout))
    }

    pub(crate) fn do_access(&self, ctx: &Context, id: u64, mask: u32) -> io::Result<()> {
        let inode = self.inode(id)?;
        let hs = self.host_stat(&inode, None)?;
        let st = self.attr(&inode, &hs)?;
        let mode = st.st_mode as u32;
        let mask = mask & 7;
        if mask & 2 != 0 && self.cfg.readonly {
            return Err(errno(libc::EROFS));
        }
        if ctx.uid == 0 {
            // Root may do anything except execute a file no one may execute.
            if mask & 1 != 0 && mode & S_IFMT != S_IFDIR && mode & 0o111 == 0 {
                return Err(errno(libc::EACCES));
            }
            return Ok(());
        }
        let bits = if ctx.uid == st.st_uid {
            (mode >> 6) & 7
        } else if ctx.gid == st.st_gid {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        if bits & mask == mask {
            Ok(())
        } else {
            Err(errno(libc::EACCES))
        }
    }

    pub(crate) fn do_statfs(&self, id: u64) -> io::Result<statvfs64> {
        let inode = self.inode(id)?;
        let fd = self.fd_of(&inode)?;
        let mut st = platform::statvfs(fd.as_raw_fd())?;
        if let Some(q) = &self.quota {
            let frsize = (st.f_frsize as u64).max(1);
            let total = q.limit / frsize;
            let free = q.limit.saturating_sub(q.used()) / frsize;
            st.f_blocks = total as _;
            st.f_bfree = (st.f_bfree as u64).min(free) as _;
            st.f_bavail = (st.f_bavail as u64).min(free) as _;
        }
        if self.cfg.readonly {
            st.f_flag |= libc::ST_RDONLY as libc::c_ulong;
        }
        Ok(st)
    }
}

/// Writes the override xattr, temporarily granting the owner write access if the host file
/// is read-only to its owner (the daemon), as user xattrs need write permission.
pub(crate) fn set_override_xattr(fd: i32, value: &[u8]) -> io::Result<()> {
    match platform::set_xattr(fd, OVERRIDE_KEY, value, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            let hs = platform::fstat(fd)?;
            let me = platform::euid();
            let mode = hs.st.st_mode as u32 & 0o7777;
            if hs.st.st_uid != me || mode & 0o200 != 0 {
                return Err(e);
            }
            platform::chmod_inode(fd, mode | 0o200)?;
            let r = platform::set_xattr(fd, OVERRIDE_KEY, value, 0);
            let _ = platform::chmod_inode(fd, mode);
            r
        }
        r => r,
    }
}
