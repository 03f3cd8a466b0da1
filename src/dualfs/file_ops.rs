//! Opening files: reads go to the top layer; opening a B file for write or with `O_TRUNC`
//! copies it up first. Every other file operation forwards to the handle's backend.

use std::io;
use std::sync::Arc;

use super::node::Node;
use super::policy::Op;
use super::{DualFs, Handle};
use crate::{errno, Context, OpenOptions};

impl DualFs {
    pub(super) fn do_open(
        &self,
        ctx: &Context,
        node: &Arc<Node>,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(u64, OpenOptions)> {
        let acc = flags & libc::O_ACCMODE as u32;
        let writes = acc != libc::O_RDONLY as u32 || flags & libc::O_TRUNC as u32 != 0;
        if node.is_dir() && writes {
            return Err(errno(libc::EISDIR));
        }
        self.check(if writes { Op::Write } else { Op::Read }, node, None)?;
        if writes {
            self.copy_up(node, Some(Op::Write))?;
        }
        let (layer, ino) = node.layers().top().ok_or_else(|| errno(libc::EIO))?;
        let (fh, opts, _) = self.shared.fs(layer).open(ctx, ino, flags, fuse_flags)?;
        let fh = self.insert_handle(Handle::File {
            _node: node.clone(),
            layer,
            ino,
            fh: fh.unwrap_or(0),
            flags,
        });
        Ok((fh, opts))
    }
}
