//! Extended attributes: everything passes through except the ownership key, which the guest
//! can neither see (filtered from `listxattr`), read (`EACCES`), write nor remove (`EPERM`).
//! POSIX ACL xattrs are refused (`EOPNOTSUPP`): they would change host permissions, and the
//! guest's permission checks use the virtual mode. As on Linux, `user.*` xattrs exist only on
//! regular files and directories (`EPERM` elsewhere).

use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;

use super::override_stat::OVERRIDE_KEY;
use super::platform;
use super::resolve::{ENOXATTR, S_IFDIR, S_IFLNK, S_IFREG};
use super::PassthroughFs;
use crate::{errno, GetxattrReply, ListxattrReply};

/// Largest xattr value or list Linux handles (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: usize = 65536;

impl PassthroughFs {
    fn xattr_allowed(&self, id: u64, name: &CStr) -> io::Result<()> {
        let bytes = crate::name::validate_xattr(name)?;
        if bytes.starts_with(b"system.posix_acl_") {
            return Err(errno(libc::EOPNOTSUPP));
        }
        let inode = self.inode(id)?;
        let t = self.guest_type(&inode)?;
        if bytes.starts_with(b"user.") && t != S_IFREG && t != S_IFDIR {
            return Err(errno(libc::EPERM));
        }
        if inode.host_type == S_IFLNK {
            return Err(errno(libc::EOPNOTSUPP));
        }
        Ok(())
    }

    pub(crate) fn do_setxattr(
        &self,
        id: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if name == OVERRIDE_KEY {
            return Err(errno(libc::EPERM));
        }
        if self.cfg.readonly {
            return Err(errno(libc::EROFS));
        }
        self.xattr_allowed(id, name)?;
        let inode = self.inode(id)?;
        let fd = self.fd_of(&inode)?;
        platform::set_xattr(fd.as_raw_fd(), name, value, flags)
    }

    pub(crate) fn do_getxattr(&self, id: u64, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        if name == OVERRIDE_KEY {
            return Err(errno(libc::EACCES));
        }
        crate::name::validate_xattr(name)?;
        let inode = self.inode(id)?;
        if inode.host_type == S_IFLNK {
            return Err(errno(ENOXATTR));
        }
        let fd = self.fd_of(&inode)?;
        if size == 0 {
            let n = platform::get_xattr(fd.as_raw_fd(), name, &mut [])?;
            return Ok(GetxattrReply::Count(n as u32));
        }
        let mut buf = vec![0u8; (size as usize).min(XATTR_SIZE_MAX)];
        let n = platform::get_xattr(fd.as_raw_fd(), name, &mut buf)?;
        buf.truncate(n);
        Ok(GetxattrReply::Value(buf))
    }

    pub(crate) fn do_listxattr(&self, id: u64, size: u32) -> io::Result<ListxattrReply> {
        let inode = self.inode(id)?;
        let mut list = Vec::new();
        if inode.host_type == S_IFREG || inode.host_type == S_IFDIR {
            let fd = self.fd_of(&inode)?;
            let mut tries = 0;
            loop {
                let need = platform::list_xattr(fd.as_raw_fd(), &mut [])?;
                list = vec![0u8; need.min(XATTR_SIZE_MAX)];
                match platform::list_xattr(fd.as_raw_fd(), &mut list) {
                    Ok(n) => {
                        list.truncate(n);
                        break;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ERANGE) && tries < 3 => tries += 1,
                    Err(e) => return Err(e),
                }
            }
        }
        let key = OVERRIDE_KEY.to_bytes_with_nul();
        let mut out = Vec::with_capacity(list.len());
        for entry in list.split_inclusive(|&b| b == 0) {
            if entry != key {
                out.extend_from_slice(entry);
            }
        }
        if size == 0 {
            return Ok(ListxattrReply::Count(out.len() as u32));
        }
        if out.len() > size as usize {
            return Err(errno(libc::ERANGE));
        }
        Ok(ListxattrReply::Names(out))
    }

    pub(crate) fn do_removexattr(&self, id: u64, name: &CStr) -> io::Result<()> {
        if name == OVERRIDE_KEY {
            return Err(errno(libc::EPERM));
        }
        if self.cfg.readonly {
            return Err(errno(libc::EROFS));
        }
        self.xattr_allowed(id, name)?;
        let inode = self.inode(id)?;
        let fd = self.fd_of(&inode)?;
        platform::remove_xattr(fd.as_raw_fd(), name)
    }
}
