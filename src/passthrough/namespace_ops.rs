//! unlink, rmdir and rename.

use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
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

/// What becomes of a held inode whose name is being removed; see `doomed`.
enum Doomed {
    /// Keeps this descriptor (a pin slot is reserved for it).
    Pin(Arc<InodeData>, SharedFd),
    /// Keeps no descriptor, only these last known attributes.
    Forsake(Arc<InodeData>, HostStat),
}

impl PassthroughFs {
    /// Parent inode and descriptor for an operation on existing `name`.
    fn prepare_remove(
        &self,
        parent: u64,
        name: &CStr,
    ) -> io::Result<(Arc<InodeData>, super::fd_cache::SharedFd)> {
        self.writable_parent(parent, name, libc::ENOENT)
    }

    /// The known inode that `name` in `parent` (host attributes `hs`) refers to, if its
    /// recorded path is this name (it will lose that path), and what becomes of it.
    ///
    /// A removed directory (it can have no new children) and a removed file the guest has no
    /// handle of and that has no other name need no descriptor: they keep their last known
    /// attributes. A file the guest has open, or that lives on under another name, keeps a
    /// descriptor (opened now, pinned after the removal) while the pin budget lasts.
    fn doomed(&self, parent: &Arc<InodeData>, name: &CStr, hs: &HostStat) -> Option<Doomed> {
        let inode = self.inodes.get_by_key(&key_of(hs))?;
        let same = match &*inode.path.lock() {
            Some((p, n)) => p.id == parent.id && n.as_c_str() == name,
            None => false,
        };
        if !same {
            return None;
        }
        let needs_fd = inode.host_type != S_IFDIR
            && (inode.open_handles.load(Ordering::Relaxed) > 0 || hs.st.st_nlink > 1);
        if needs_fd && self.reserve_pin() {
            match self.fd_of(&inode) {
                Ok(fd) => return Some(Doomed::Pin(inode, fd)),
                Err(_) => self.unreserve_pin(),
            }
        }
        Some(Doomed::Forsake(inode, *hs))
    }

    /// Settles a doomed inode once its name is gone (`removed`) or not (the removal failed).
    fn settle(&self, doomed: Option<Doomed>, removed: bool) {
        match doomed {
            Some(Doomed::Pin(inode, fd)) if removed => self.pin(&inode, fd),
            Some(Doomed::Pin(..)) => self.unreserve_pin(),
            Some(Doomed::Forsake(inode, hs)) if removed => self.forsake(&inode, &hs),
            _ => {}
        }
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
        let res = platform::unlink_at(pfd.as_raw_fd(), name, dir);
        self.settle(doomed, res.is_ok());
        res?;
        self.charge_removed(&hs, orphan);
        Ok(())
    }

    /// With a quota, for the last name of a regular file the guest has open: the inode and
    /// a descriptor of the file, taken before the name goes, so the file stays charged until
    /// the guest lets go of it (it may even grow meanwhile). A file without open handles is
    /// credited at once: nothing can reach it any more.
    fn orphan_of(
        &self,
        dirfd: i32,
        name: &CStr,
        hs: &HostStat,
        doomed: Option<&Doomed>,
    ) -> Option<(Arc<InodeData>, SharedFd)> {
        self.quota.as_ref()?;
        if hs.st.st_mode as u32 & S_IFMT != S_IFREG || hs.st.st_nlink > 1 {
            return None;
        }
        if let Some(Doomed::Pin(inode, fd)) = doomed {
            return Some((inode.clone(), fd.clone()));
        }
        let inode = self.inodes.get_by_key(&key_of(hs))?;
        if inode.open_handles.load(Ordering::Relaxed) == 0 {
            return None;
        }
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
        let res = platform::rename(ofd.as_raw_fd(), oldname, nfd.as_raw_fd(), newname, flags);
        self.settle(target, res.is_ok());
        res?;
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
