//! New names: create, mkdir, mknod, symlink, link. They always land in A, in the copy of
//! the parent directory (made on demand), replacing a whiteout if there is one.

use std::ffi::CStr;
use std::io;
use std::sync::Arc;

use super::node::{Layer, Layers, Node};
use super::policy::Op;
use super::whiteout::{OPAQUE_XATTR, WORK_DIR};
use super::{DualFs, Handle};
use crate::{errno, name, Context, CreateIn, Entry, OpenOptions, ROOT_ID};

impl DualFs {
    /// Checks a new name under `parent`; returns (parent node, A directory inode, whether a
    /// whiteout was removed to make room).
    fn prepare_new(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
    ) -> io::Result<(Arc<Node>, u64, bool)> {
        name::validate(name)?;
        let parent = self.dir_node(parent)?;
        self.check(Op::Create, &parent, Some(name))?;
        if parent.id == ROOT_ID && name == WORK_DIR {
            return Err(errno(libc::EPERM));
        }
        let probe = self.probe(ctx, &parent, name, false)?;
        if probe.exists() {
            return Err(errno(libc::EEXIST));
        }
        let whiteout = probe.whiteout();
        drop(probe);
        let pa = self.copy_up(&parent, None)?;
        if whiteout {
            self.a().unlink(ctx, pa, name)?;
        }
        Ok((parent, pa, whiteout))
    }

    /// Puts back a whiteout removed by `prepare_new` when the creation failed.
    fn restore_whiteout(&self, pa: u64, name: &CStr, whiteout: bool) {
        if whiteout {
            let _ = self.make_whiteout(pa, name);
        }
    }

    /// Registers a new A entry as a guest inode with one guest reference.
    fn adopt(&self, parent: &Arc<Node>, name: &CStr, mut e: Entry) -> Entry {
        let kind = e.attr.st_mode as u32 & libc::S_IFMT as u32;
        let a = e.inode;
        let (node, new) = self.shared.find_or_insert((Layer::A, a), |id| {
            Node::new(
                id,
                kind,
                self.shared.clone(),
                Layers {
                    a: Some(a),
                    b: None,
                },
                Some((parent.clone(), name.to_owned())),
            )
        });
        if !new {
            self.a().forget(&Context::new(), a, 1);
        }
        self.nodes.inc(&node, 1);
        e.inode = node.id;
        let mut e = self.cache.entry(e);
        Self::fix_attr(&mut e.attr, node.id);
        e
    }

    pub(super) fn do_mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let (parent, pa, whiteout) = self.prepare_new(ctx, parent, name)?;
        let e = match self.a().mkdir(ctx, pa, name, mode, umask) {
            Ok(e) => e,
            Err(err) => {
                self.restore_whiteout(pa, name, whiteout);
                return Err(err);
            }
        };
        if whiteout {
            // A deleted B directory may lie below: the new directory must not merge with it.
            if let Err(err) = self
                .a()
                .setxattr(&Context::new(), e.inode, OPAQUE_XATTR, b"y", 0)
            {
                let _ = self.a().rmdir(ctx, pa, name);
                self.a().forget(ctx, e.inode, 1);
                self.restore_whiteout(pa, name, whiteout);
                return Err(err);
            }
        }
        Ok(self.adopt(&parent, name, e))
    }

    pub(super) fn do_mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let (parent, pa, whiteout) = self.prepare_new(ctx, parent, name)?;
        match self.a().mknod(ctx, pa, name, mode, rdev, umask) {
            Ok(e) => Ok(self.adopt(&parent, name, e)),
            Err(err) => {
                self.restore_whiteout(pa, name, whiteout);
                Err(err)
            }
        }
    }

    pub(super) fn do_symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let (parent, pa, whiteout) = self.prepare_new(ctx, parent, name)?;
        match self.a().symlink(ctx, linkname, pa, name) {
            Ok(e) => Ok(self.adopt(&parent, name, e)),
            Err(err) => {
                self.restore_whiteout(pa, name, whiteout);
                Err(err)
            }
        }
    }

    pub(super) fn do_create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        name::validate(name)?;
        let pnode = self.dir_node(parent)?;
        if args.flags & libc::O_EXCL as u32 == 0 {
            // An existing name is opened, as open(O_CREAT) without O_EXCL does.
            self.check(Op::Lookup, &pnode, Some(name))?;
            match self.lookup_child(ctx, &pnode, name) {
                Ok(e) => {
                    let node = self.node(e.inode)?;
                    if node.is_dir() {
                        self.nodes.dec(&node, 1);
                        return Err(errno(libc::EISDIR));
                    }
                    let flags = args.flags & !(libc::O_CREAT as u32);
                    return match self.do_open(ctx, &node, flags, args.fuse_flags) {
                        Ok((fh, opts)) => {
                            let (attr, _) = self.top_attr(ctx, &node)?;
                            let mut e = e;
                            e.attr = attr;
                            Ok((e, Some(fh), opts, None))
                        }
                        Err(err) => {
                            self.nodes.dec(&node, 1);
                            Err(err)
                        }
                    };
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        let (parent, pa, whiteout) = self.prepare_new(ctx, parent, name)?;
        let mut a_args = args;
        a_args.flags |= libc::O_EXCL as u32;
        let (e, fh, opts, _) = match self.a().create(ctx, pa, name, a_args) {
            Ok(r) => r,
            Err(err) => {
                self.restore_whiteout(pa, name, whiteout);
                return Err(err);
            }
        };
        let a_ino = e.inode;
        let e = self.adopt(&parent, name, e);
        let node = self.node(e.inode)?;
        let fh = self.insert_handle(Handle::File {
            _node: node,
            layer: Layer::A,
            ino: a_ino,
            fh: fh.unwrap_or(0),
            flags: args.flags,
        });
        Ok((e, Some(fh), opts, None))
    }

    pub(super) fn do_link(
        &self,
        ctx: &Context,
        inode: u64,
        newparent: u64,
        newname: &CStr,
    ) -> io::Result<Entry> {
        let node = self.node(inode)?;
        if node.is_dir() {
            name::validate(newname)?;
            return Err(errno(libc::EPERM));
        }
        self.check(Op::Link, &node, None)?;
        let (parent, pa, whiteout) = self.prepare_new(ctx, newparent, newname)?;
        let a = match self.copy_up(&node, Some(Op::Link)) {
            Ok(a) => a,
            Err(err) => {
                self.restore_whiteout(pa, newname, whiteout);
                return Err(err);
            }
        };
        let mut e = match self.a().link(ctx, a, pa, newname) {
            Ok(e) => e,
            Err(err) => {
                self.restore_whiteout(pa, newname, whiteout);
                return Err(err);
            }
        };
        let _ = parent;
        self.a().forget(ctx, e.inode, 1);
        self.nodes.inc(&node, 1);
        e.inode = node.id;
        let mut e = self.cache.entry(e);
        Self::fix_attr(&mut e.attr, node.id);
        Ok(e)
    }
}
