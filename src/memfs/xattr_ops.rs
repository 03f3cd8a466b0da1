//! Extended attributes, in the namespaces the guest uses (`user.`, `trusted.`, `security.`),
//! charged to the byte capacity (name + value). POSIX ACLs (`system.posix_acl_*`) are refused
//! with `EOPNOTSUPP`, as by a Linux filesystem without ACL support: MemFs checks permissions
//! by the mode alone, so a stored ACL would be silently ignored (and `cp -a`, which sets one
//! instead of calling `chmod` when the filesystem accepts it, would leave copies with their
//! creation mode).

use std::ffi::CStr;
use std::io;

use super::cost;
use super::node::Ts;
use super::MemFs;
use crate::{errno, name, GetxattrReply, ListxattrReply};

const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;
/// Largest value Linux accepts (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: usize = 65_536;

/// The name, validated; `EOPNOTSUPP` for the POSIX ACL names (see the module documentation).
fn xattr_name(name: &CStr) -> io::Result<&[u8]> {
    let name = name::validate_xattr(name)?;
    if name.starts_with(b"system.posix_acl_") {
        return Err(errno(libc::EOPNOTSUPP));
    }
    Ok(name)
}

impl MemFs {
    pub(super) fn do_setxattr(
        &self,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let name = xattr_name(name)?;
        if value.len() > XATTR_SIZE_MAX {
            return Err(errno(libc::E2BIG));
        }
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(errno(libc::EINVAL));
        }
        let node = self.node(inode)?;
        let mut m = node.meta.lock();
        // Linux allows user.* only on regular files and directories.
        let fmt = m.mode & libc::S_IFMT as u32;
        if name.starts_with(b"user.") && fmt != libc::S_IFREG as u32 && fmt != libc::S_IFDIR as u32
        {
            return Err(errno(libc::EPERM));
        }
        let pos = m.xattrs.iter().position(|(n, _)| &n[..] == name);
        match (pos, flags) {
            (Some(_), f) if f & XATTR_CREATE != 0 => return Err(errno(libc::EEXIST)),
            (None, f) if f & XATTR_REPLACE != 0 => return Err(errno(libc::ENODATA)),
            _ => {}
        }
        match pos {
            Some(i) => {
                let old = cost::heap(m.xattrs[i].1.len() as u64);
                let new = cost::heap(value.len() as u64);
                if new > old {
                    self.usage.bytes.reserve(new - old)?;
                } else {
                    self.usage.bytes.release(old - new);
                }
                m.xattrs[i].1 = value.into();
            }
            None => {
                self.usage
                    .bytes
                    .reserve(cost::xattr(name.len() as u64, value.len() as u64))?;
                m.xattrs.push((name.into(), value.into()));
            }
        }
        m.ctime = Ts::now();
        Ok(())
    }

    pub(super) fn do_getxattr(
        &self,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let name = xattr_name(name)?;
        let node = self.node(inode)?;
        let m = node.meta.lock();
        let (_, value) = m
            .xattrs
            .iter()
            .find(|(n, _)| &n[..] == name)
            .ok_or_else(|| errno(libc::ENODATA))?;
        if size == 0 {
            return Ok(GetxattrReply::Count(value.len() as u32));
        }
        if (size as usize) < value.len() {
            return Err(errno(libc::ERANGE));
        }
        Ok(GetxattrReply::Value(value.to_vec()))
    }

    pub(super) fn do_listxattr(&self, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let node = self.node(inode)?;
        let m = node.meta.lock();
        let total: usize = m.xattrs.iter().map(|(n, _)| n.len() + 1).sum();
        if size == 0 {
            return Ok(ListxattrReply::Count(total as u32));
        }
        if (size as usize) < total {
            return Err(errno(libc::ERANGE));
        }
        let mut out = Vec::with_capacity(total);
        for (n, _) in &m.xattrs {
            out.extend_from_slice(n);
            out.push(0);
        }
        Ok(ListxattrReply::Names(out))
    }

    pub(super) fn do_removexattr(&self, inode: u64, name: &CStr) -> io::Result<()> {
        let name = xattr_name(name)?;
        let node = self.node(inode)?;
        let mut m = node.meta.lock();
        let i = m
            .xattrs
            .iter()
            .position(|(n, _)| &n[..] == name)
            .ok_or_else(|| errno(libc::ENODATA))?;
        let (n, v) = m.xattrs.swap_remove(i);
        self.usage
            .bytes
            .release(cost::xattr(n.len() as u64, v.len() as u64));
        m.ctime = Ts::now();
        Ok(())
    }
}
