//! Extended attributes: read from the top layer, changed on the copy in A. The
//! `user.overlay.*` names DualFs uses for its own metadata are invisible to the guest.

use std::ffi::CStr;
use std::io;

use super::policy::Op;
use super::whiteout::{is_private_xattr, ENOXATTR};
use super::DualFs;
use crate::{errno, name, Context, GetxattrReply, ListxattrReply};

/// Largest xattr list Linux handles (`XATTR_LIST_MAX`).
const XATTR_LIST_MAX: u32 = 65536;

impl DualFs {
    pub(super) fn do_setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let bytes = name::validate_xattr(name)?;
        if is_private_xattr(bytes) {
            return Err(errno(libc::EPERM));
        }
        let node = self.node(inode)?;
        self.check(Op::Xattr, &node, None)?;
        let a = self.copy_up(&node, Some(Op::Xattr))?;
        self.a().setxattr(ctx, a, name, value, flags)
    }

    pub(super) fn do_removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        let bytes = name::validate_xattr(name)?;
        if is_private_xattr(bytes) {
            return Err(errno(libc::EPERM));
        }
        let node = self.node(inode)?;
        self.check(Op::Xattr, &node, None)?;
        let a = self.copy_up(&node, Some(Op::Xattr))?;
        self.a().removexattr(ctx, a, name)
    }

    pub(super) fn do_getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let bytes = name::validate_xattr(name)?;
        let node = self.node(inode)?;
        if is_private_xattr(bytes) {
            return Err(errno(ENOXATTR));
        }
        self.check(Op::Read, &node, None)?;
        let (layer, ino) = node.layers().top().ok_or_else(|| errno(libc::EIO))?;
        self.shared.fs(layer).getxattr(ctx, ino, name, size)
    }

    pub(super) fn do_listxattr(
        &self,
        ctx: &Context,
        inode: u64,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        let node = self.node(inode)?;
        self.check(Op::Read, &node, None)?;
        let (layer, ino) = node.layers().top().ok_or_else(|| errno(libc::EIO))?;
        let list = match self.shared.fs(layer).listxattr(ctx, ino, XATTR_LIST_MAX)? {
            ListxattrReply::Names(n) => n,
            ListxattrReply::Count(_) => Vec::new(),
        };
        let mut out = Vec::with_capacity(list.len());
        for entry in list.split_inclusive(|&c| c == 0) {
            let bare = entry.strip_suffix(&[0]).unwrap_or(entry);
            if !bare.is_empty() && !is_private_xattr(bare) {
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
}
