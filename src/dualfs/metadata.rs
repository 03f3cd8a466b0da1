//! Attributes: getattr answers from the top layer; setattr copies a B entry up first.

use std::io;
use std::time::Duration;

use super::node::Layer;
use super::policy::Op;
use super::DualFs;
use crate::{stat64, Context, SetattrValid};

impl DualFs {
    pub(super) fn do_setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let node = self.node(inode)?;
        if let Some(fh) = handle {
            self.own_file(fh, node.id)?;
        }
        self.check(Op::SetAttr, &node, None)?;
        let a = self.copy_up(&node, Some(Op::SetAttr))?;
        // A handle on the copy is passed on; one on B's original is not (it is read-only).
        let fh = match handle.map(|h| self.file(node.id, h)) {
            Some(Ok((Layer::A, ino, fh))) if ino == a => Some(fh),
            _ => None,
        };
        let (mut st, t) = self.a().setattr(ctx, a, attr, fh, valid)?;
        Self::fix_attr(&mut st, node.id);
        Ok((st, t))
    }
}
