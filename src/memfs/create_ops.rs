//! Operations that make new names: create, mknod, mkdir, symlink, link.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::cost;
use super::data::FileData;
use super::node::{Body, DirNode, Meta, Node};
use super::{Handle, MemFs};
use crate::{errno, name, Context, CreateIn, Entry, OpenOptions};

use crate::abi::{S_IFDIR, S_IFMT};
const O_EXCL: u32 = libc::O_EXCL as u32;

/// What kind of inode to make.
pub(super) enum NewKind<'a> {
    File,
    Dir,
    Symlink(&'a [u8]),
    Special { rdev: u32 },
}

impl MemFs {
    /// Links a new inode of `kind` as `name` in `parent`, charging the name, the inode and
    /// the symlink target before anything changes. Returns the node, counted once as a guest
    /// reference.
    pub(super) fn make_node(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        kind: NewKind<'_>,
    ) -> io::Result<Arc<Node>> {
        let name = name::validate(name)?;
        let pnode = self.dir_node(parent)?;
        let pdir = pnode.dir().ok_or_else(|| errno(libc::ENOTDIR))?;
        let mut entries = pdir.entries.write();
        if pnode.meta.lock().nlink == 0 {
            // The directory was removed while we waited.
            return Err(errno(libc::ENOENT));
        }
        if entries.get(name).is_some() {
            return Err(errno(libc::EEXIST));
        }
        if !entries.has_room() {
            return Err(errno(libc::ENOSPC));
        }

        let bytes = cost::name(name.len() as u64)
            + match kind {
                NewKind::Symlink(target) => cost::INODE + cost::heap(target.len() as u64),
                NewKind::Dir => cost::DIR_INODE,
                NewKind::File | NewKind::Special { .. } => cost::INODE,
            };
        self.usage.bytes.reserve(bytes)?;
        if let Err(e) = self.usage.inodes.reserve(1) {
            self.usage.bytes.release(bytes);
            return Err(e);
        }

        let (pgid, psgid) = {
            let pm = pnode.meta.lock();
            (pm.gid, pm.mode & libc::S_ISGID as u32 != 0)
        };
        let is_dir = matches!(kind, NewKind::Dir);
        let mut mode = mode;
        if is_dir && psgid {
            mode |= libc::S_ISGID as u32;
        }
        let gid = if psgid { pgid } else { ctx.gid };
        let (rdev, body) = match kind {
            NewKind::File => (0, Body::File(RwLock::new(FileData::default()))),
            NewKind::Dir => (
                0,
                Body::Dir(Box::new(DirNode {
                    parent: AtomicU64::new(parent),
                    entries: RwLock::default(),
                })),
            ),
            NewKind::Symlink(target) => (0, Body::Symlink(target.into())),
            NewKind::Special { rdev } => (rdev, Body::Special),
        };
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(Node::new(
            ino,
            Meta::new(mode, ctx.uid, gid, rdev),
            body,
            self.usage.clone(),
        ));
        node.inc_lookup(1);
        self.nodes.insert(node.clone());
        entries.insert(name, ino);
        let mut pm = pnode.meta.lock();
        if is_dir {
            pm.nlink += 1;
        }
        pm.touch_mc();
        Ok(node)
    }

    pub(super) fn do_create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let mode = libc::S_IFREG as u32 | (args.mode & !args.umask & 0o7777);
        // The handle is reserved first: a create refused for lack of handles leaves no file.
        self.reserve_handle()?;
        let node = match self.make_node(ctx, parent, name, mode, NewKind::File) {
            Ok(node) => node,
            Err(e) => {
                self.unreserve_handle();
                if e.raw_os_error() == Some(libc::EEXIST) && args.flags & O_EXCL == 0 {
                    return self.open_existing(ctx, parent, name, args.flags);
                }
                return Err(e);
            }
        };
        let entry = self.entry_uncounted(&node);
        let fh = self.new_handle(node, args.flags, false);
        Ok((entry, Some(fh), self.open_options(false), None))
    }

    /// `open(O_CREAT)` without `O_EXCL` of a name that exists (another creator won the race):
    /// opens the existing file as Linux does; `EISDIR` for a directory.
    fn open_existing(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        flags: u32,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let entry = self.do_lookup(ctx, parent, name)?;
        let opened = if entry.attr.st_mode as u32 & S_IFMT == S_IFDIR {
            Err(errno(libc::EISDIR))
        } else {
            self.do_open(ctx, entry.inode, flags, 0)
        };
        match opened {
            Ok((fh, opts, _)) => Ok((entry, fh, opts, None)),
            Err(e) => {
                self.do_forget(entry.inode, 1);
                Err(e)
            }
        }
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
        let kind = match mode & S_IFMT {
            m if m == 0 || m == libc::S_IFREG as u32 => NewKind::File,
            x if x == libc::S_IFCHR as u32 || x == libc::S_IFBLK as u32 => {
                NewKind::Special { rdev }
            }
            x if x == libc::S_IFIFO as u32 || x == libc::S_IFSOCK as u32 => {
                NewKind::Special { rdev: 0 }
            }
            S_IFDIR => return Err(errno(libc::EPERM)),
            _ => return Err(errno(libc::EINVAL)),
        };
        let ftype = match mode & S_IFMT {
            0 => libc::S_IFREG as u32,
            t => t,
        };
        let mode = ftype | (mode & !umask & 0o7777);
        let node = self.make_node(ctx, parent, name, mode, kind)?;
        Ok(self.entry_uncounted(&node))
    }

    pub(super) fn do_mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let mode = S_IFDIR | (mode & !umask & 0o7777);
        let node = self.make_node(ctx, parent, name, mode, NewKind::Dir)?;
        Ok(self.entry_uncounted(&node))
    }

    pub(super) fn do_symlink(
        &self,
        ctx: &Context,
        target: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let target = target.to_bytes();
        if target.is_empty() {
            return Err(errno(libc::ENOENT));
        }
        if target.len() >= libc::PATH_MAX as usize {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let mode = libc::S_IFLNK as u32 | 0o777;
        let node = self.make_node(ctx, parent, name, mode, NewKind::Symlink(target))?;
        Ok(self.entry_uncounted(&node))
    }

    pub(super) fn do_link(&self, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let name = name::validate(newname)?;
        let node = self.node(inode)?;
        if node.is_dir() {
            return Err(errno(libc::EPERM));
        }
        let pnode = self.dir_node(newparent)?;
        let pdir = pnode.dir().ok_or_else(|| errno(libc::ENOTDIR))?;
        let mut entries = pdir.entries.write();
        if pnode.meta.lock().nlink == 0 {
            return Err(errno(libc::ENOENT));
        }
        if entries.get(name).is_some() {
            return Err(errno(libc::EEXIST));
        }
        if !entries.has_room() {
            return Err(errno(libc::ENOSPC));
        }
        {
            let mut m = node.meta.lock();
            if m.nlink == 0 {
                return Err(errno(libc::ENOENT));
            }
            if m.nlink == u32::MAX {
                return Err(errno(libc::EMLINK));
            }
            self.usage.bytes.reserve(cost::name(name.len() as u64))?;
            m.nlink += 1;
            m.ctime = super::node::Ts::now();
        }
        entries.insert(name, node.ino);
        pnode.meta.lock().touch_mc();
        Ok(self.entry(&node))
    }

    pub(super) fn do_open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let node = self.node(inode)?;
        let acc = flags & libc::O_ACCMODE as u32;
        let writable = acc == libc::O_WRONLY as u32 || acc == libc::O_RDWR as u32;
        match &node.body {
            super::node::Body::Dir(_) if writable => return Err(errno(libc::EISDIR)),
            super::node::Body::Symlink(_) => return Err(errno(libc::ELOOP)),
            _ => {}
        }
        self.reserve_handle()?;
        if writable && flags & libc::O_TRUNC as u32 != 0 {
            if let Some(data) = node.file() {
                let mut data = data.write();
                if data.size() != 0 {
                    data.set_size(0);
                    let (old, new) = data.recharge();
                    self.usage.bytes.release(old - new);
                    let mut m = node.meta.lock();
                    m.touch_mc();
                    if ctx.uid != 0 {
                        m.kill_suid();
                    }
                }
            }
        }
        let fh = self.new_handle(node, flags, false);
        Ok((Some(fh), self.open_options(false), None))
    }

    /// Releases handle `handle` of `inode` (a directory handle when `dir`).
    pub(super) fn do_release(&self, inode: u64, handle: u64, dir: bool) -> io::Result<()> {
        let h: Arc<Handle> = self
            .handles
            .remove_if(handle, |h| h.node.ino == inode && h.dir == dir)
            .ok_or_else(|| errno(libc::EBADF))?;
        self.unreserve_handle();
        // Dropping the handle may drop the last reference of an unlinked inode, which
        // returns its charges.
        drop(h);
        Ok(())
    }
}
