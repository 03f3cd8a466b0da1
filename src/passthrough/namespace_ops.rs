//! unlink, rmdir and rename.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::fd_cache::SharedFd;
use super::identity;
use super::inode_store::InodeData;
use super::platform::{self, HostStat};
use super::quota::OrphanCharge;
use super::resolve::{key_of, S_IFDIR, S_IFMT, S_IFREG};
use super::PassthroughFs;
use crate::errno;

use crate::abi::{RENAME_EXCHANGE, RENAME_NOREPLACE};

impl PassthroughFs {
    /// Parent inode and descriptor for an operation on existing `name`.
    fn prepare_remove(
        &self,
        parent: u64,
        name: &CStr,
    ) -> io::Result<(Arc<InodeData>, super::fd_cache::SharedFd)> {
        self.writable_parent(parent, name, libc::ENOENT)
    }

    /// The known inode that `name` in `parent` refers to, if its recorded path is this name
    /// (it will lose that path): its descriptor is opened now so it can be pinned later.
    fn doomed(
        &self,
        parent: &Arc<InodeData>,
        name: &CStr,
        hs: &HostStat,
    ) -> Option<(Arc<InodeData>, super::fd_cache::SharedFd)> {
        let inode = self.inodes.get_by_key(&key_of(hs))?;
        let same = match &*inode.path.lock() {
            Some((p, n)) => p.id == parent.id && n.as_c_str() == name,
            None => false,
        };
        if !same {
            return None;
        }
        let fd = self.fd_of(&inode).ok()?;
        Some((inode, fd))
    }

    fn remove(&self, parent: u64, name: &CStr, dir: bool) -> io::Result<()> {
        let (p, pfd) = self.prepare_remove(parent, name)?;
        let hs = platform::stat_at(pfd.as_raw_fd(), name)?;
        let is_dir = hs.st.st_mode as u32 & S_IFMT == S_IFDIR;
        if dir && !is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        if !dir && is_dir {
            return Err(errno(libc::EISDIR));
        }
        let doomed = self.doomed(&p, name, &hs);
        let orphan = self.orphan_of(pfd.as_raw_fd(), name, &hs, doomed.as_ref());
        platform::unlink_at(pfd.as_raw_fd(), name, dir)?;
        if let Some((inode, fd)) = doomed {
            self.pin(&inode, fd);
        }
        self.charge_removed(&hs, orphan);
        Ok(())
    }

    /// With a quota, for the last name of a regular file the guest holds: the inode and a
    /// descriptor of the file, taken before the name goes, so the file stays charged until
    /// the guest lets go of it (it may even grow meanwhile).
    fn orphan_of(
        &self,
        dirfd: i32,
        name: &CStr,
        hs: &HostStat,
        doomed: Option<&(Arc<InodeData>, SharedFd)>,
    ) -> Option<(Arc<InodeData>, SharedFd)> {
        self.quota.as_ref()?;
        if hs.st.st_mode as u32 & S_IFMT != S_IFREG || hs.st.st_nlink > 1 {
            return None;
        }
        if let Some((inode, fd)) = doomed {
            return Some((inode.clone(), fd.clone()));
        }
        let inode = self.inodes.get_by_key(&key_of(hs))?;
        let fd = platform::open_inode(dirfd, name).ok()?;
        let now = platform::fstat(fd.as_raw_fd()).ok()?;
        if key_of(&now) != inode.key || !inode.fp.same(&identity::fingerprint(fd.as_raw_fd())) {
            return None;
        }
        Some((inode, Arc::new(fd)))
    }

    /// Settles the quota after the name `hs` was removed (by unlink or rename over it): an
    /// orphan the guest holds stays charged until it goes, anything else whose last name
    /// this was is credited now.
    fn charge_removed(&self, hs: &HostStat, orphan: Option<(Arc<InodeData>, SharedFd)>) {
        let Some(q) = &self.quota else {
            return;
        };
        if let Some((inode, fd)) = orphan {
            let mut slot = inode.orphan.lock();
            if slot.is_none() {
                *slot = Some(OrphanCharge::new(q.clone(), fd));
                return;
            }
        }
        if hs.st.st_mode as u32 & S_IFMT == S_IFREG && hs.st.st_nlink <= 1 {
            q.release(hs.st.st_size as u64);
        }
    }

    pub(crate) fn do_unlink(&self, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove(parent, name, false)
    }

    pub(crate) fn do_rmdir(&self, parent: u64, name: &CStr) -> io::Result<()> {
        self.remove(parent, name, true)
    }

    pub(crate) fn do_rename(
        &self,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        crate::name::validate(oldname)?;
        crate::name::validate(newname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(errno(libc::EINVAL));
        }
        let (op, ofd) = self.prepare_remove(olddir, oldname)?;
        let (np, nfd) = self.prepare_remove(newdir, newname)?;
        let old_hs = platform::stat_at(ofd.as_raw_fd(), oldname)?;
        let new_hs = platform::stat_at(nfd.as_raw_fd(), newname).ok();
        let moved = self.inodes.get_by_key(&key_of(&old_hs));
        let target = match (&new_hs, flags & RENAME_EXCHANGE != 0) {
            (Some(hs), false) if key_of(hs) != key_of(&old_hs) => self.doomed(&np, newname, hs),
            _ => None,
        };
        let orphan = match (&new_hs, flags & RENAME_EXCHANGE != 0) {
            (Some(hs), false) if key_of(hs) != key_of(&old_hs) => {
                self.orphan_of(nfd.as_raw_fd(), newname, hs, target.as_ref())
            }
            _ => None,
        };
        let exchanged = match (&new_hs, flags & RENAME_EXCHANGE != 0) {
            (Some(hs), true) => self.inodes.get_by_key(&key_of(hs)),
            _ => None,
        };
        platform::rename(ofd.as_raw_fd(), oldname, nfd.as_raw_fd(), newname, flags)?;
        if let Some((inode, fd)) = target {
            self.pin(&inode, fd);
        }
        if let Some(hs) = &new_hs {
            if flags & RENAME_EXCHANGE == 0 && key_of(hs) != key_of(&old_hs) {
                self.charge_removed(hs, orphan);
            }
        }
        if let Some(inode) = moved {
            let mut path = inode.path.lock();
            if path.is_some() {
                *path = Some((np.clone(), newname.to_owned()));
            }
        }
        if let Some(inode) = exchanged {
            let mut path = inode.path.lock();
            if path.is_some() {
                *path = Some((op.clone(), oldname.to_owned()));
            }
        }
        Ok(())
    }
}
