//! Attribute operations: setattr, readlink, statfs, access.

use std::io;
use std::time::Duration;

use super::data::MAX_FILE_SIZE;
use super::node::{Body, Ts};
use super::{platform, MemFs};
use crate::{errno, stat64, statvfs64, Context, SetattrValid};

const BLOCK: u64 = 4096;

fn ts_of(sec: i64, nsec: i64) -> Ts {
    Ts {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

impl MemFs {
    pub(super) fn do_setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        // A handle, when given, must be one opened on `inode` (it keeps an unlinked file
        // reachable for ftruncate).
        let node = match handle {
            Some(fh) => self.any_handle(inode, fh)?.node.clone(),
            None => self.node(inode)?,
        };
        if valid.contains(SetattrValid::SIZE) {
            let size = attr.st_size as u64;
            let data = match &node.body {
                Body::File(d) => d,
                Body::Dir(_) => return Err(errno(libc::EISDIR)),
                _ => return Err(errno(libc::EINVAL)),
            };
            if attr.st_size < 0 {
                return Err(errno(libc::EINVAL));
            }
            if size > MAX_FILE_SIZE {
                return Err(errno(libc::EFBIG));
            }
            let mut data = data.write();
            let expected = data.charge_after_truncate(size);
            let reserved = expected.saturating_sub(data.charged());
            self.usage.bytes.reserve(reserved)?;
            data.set_size(size);
            let (old, new) = data.recharge();
            self.usage
                .bytes
                .release((old + reserved).saturating_sub(new));
            drop(data);
            let mut m = node.meta.lock();
            m.touch_mc();
            if platform::kill_suidgid(valid) {
                m.kill_suid();
            }
        }

        let mut m = node.meta.lock();
        let now = Ts::now();
        let mut changed = valid.contains(SetattrValid::SIZE);
        if valid.contains(SetattrValid::MODE) {
            m.mode = (m.mode & libc::S_IFMT as u32) | (attr.st_mode as u32 & 0o7777);
            changed = true;
        }
        let chown = valid.intersects(SetattrValid::UID | SetattrValid::GID);
        if valid.contains(SetattrValid::UID) {
            m.uid = attr.st_uid;
        }
        if valid.contains(SetattrValid::GID) {
            m.gid = attr.st_gid;
        }
        if chown {
            changed = true;
            // chown clears set-user-ID (and group-exec set-group-ID) of non-directories,
            // unless the same request sets the mode explicitly.
            if !valid.contains(SetattrValid::MODE) || platform::kill_suidgid(valid) {
                m.kill_suid();
            }
        }
        if valid.contains(SetattrValid::ATIME_NOW) {
            m.atime = now;
            changed = true;
        } else if valid.contains(SetattrValid::ATIME) {
            m.atime = ts_of(attr.st_atime as i64, attr.st_atime_nsec as i64);
            changed = true;
        }
        if valid.contains(SetattrValid::MTIME_NOW) {
            m.mtime = now;
            changed = true;
        } else if valid.contains(SetattrValid::MTIME) {
            m.mtime = ts_of(attr.st_mtime as i64, attr.st_mtime_nsec as i64);
            changed = true;
        }
        if platform::sets_ctime(valid) {
            m.ctime = ts_of(attr.st_ctime as i64, attr.st_ctime_nsec as i64);
        } else if changed {
            m.ctime = now;
        }
        let _ = ctx;
        drop(m);
        Ok((node.stat(), self.timeout()))
    }

    pub(super) fn do_readlink(&self, inode: u64) -> io::Result<Vec<u8>> {
        match &self.node(inode)?.body {
            Body::Symlink(t) => Ok(t.to_vec()),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    pub(super) fn do_statfs(&self) -> statvfs64 {
        // SAFETY: `statvfs64` is a plain C struct for which all-zero bytes are a valid value.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        let cap = self.usage.bytes.limit();
        let free = cap.saturating_sub(self.usage.bytes.used());
        let inodes = self.usage.inodes.limit();
        let ifree = inodes.saturating_sub(self.usage.inodes.used());
        st.f_bsize = BLOCK as _;
        st.f_frsize = BLOCK as _;
        st.f_blocks = (cap / BLOCK) as _;
        st.f_bfree = (free / BLOCK) as _;
        st.f_bavail = (free / BLOCK) as _;
        st.f_files = inodes as _;
        st.f_ffree = ifree as _;
        st.f_favail = ifree as _;
        st.f_namemax = crate::name::NAME_MAX as _;
        st
    }

    pub(super) fn do_access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let node = self.node(inode)?;
        let m = node.meta.lock();
        let mask = mask & 0o7;
        if mask == 0 {
            return Ok(());
        }
        let mode = m.mode;
        if ctx.uid == 0 {
            // Root may read and write anything, and execute if anyone may (or a directory).
            let is_dir = mode & libc::S_IFMT as u32 == libc::S_IFDIR as u32;
            if mask & libc::X_OK as u32 != 0 && !is_dir && mode & 0o111 == 0 {
                return Err(errno(libc::EACCES));
            }
            return Ok(());
        }
        let bits = if ctx.uid == m.uid {
            (mode >> 6) & 0o7
        } else if ctx.gid == m.gid {
            (mode >> 3) & 0o7
        } else {
            mode & 0o7
        };
        if bits & mask == mask {
            Ok(())
        } else {
            Err(errno(libc::EACCES))
        }
    }
}
