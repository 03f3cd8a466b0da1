//! Namespace operations on existing names: lookup, forget, readdir, unlink, rmdir, rename.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::cost;
use super::node::{Body, Meta, Node, Ts};
use super::MemFs;
use crate::{errno, name, Context, DirEntry, Entry, ROOT_ID};

use crate::abi::{RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT};

impl MemFs {
    pub(super) fn do_lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let name = name::validate(name)?;
        let pnode = self.dir_node(parent)?;
        let pdir = pnode.dir().ok_or_else(|| errno(libc::ENOTDIR))?;
        let entries = pdir.entries.read();
        let link = entries.get(name).ok_or_else(|| errno(libc::ENOENT))?;
        let node = self.nodes.get(link.ino).ok_or_else(|| errno(libc::EIO))?;
        Ok(self.entry(&node))
    }

    pub(super) fn do_forget(&self, inode: u64, count: u64) {
        if let Some(node) = self.nodes.get(inode) {
            if node.dec_lookup(count) == 0 {
                self.maybe_evict(&node);
            }
        }
    }

    /// Lists directory `node` from `offset` (a cookie from a previous call, or 0). With
    /// `plus`, every entry but `.` and `..` counts one guest reference, undone if the buffer
    /// was full.
    pub(super) fn do_readdir(
        &self,
        node: &Node,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
        plus: bool,
    ) -> io::Result<()> {
        let inode = node.ino;
        let dir = node.dir().ok_or_else(|| errno(libc::ENOTDIR))?;
        let entries = dir.entries.read();
        let dtype_dir = libc::DT_DIR as u32;
        if offset < 1 {
            let d = DirEntry {
                ino: inode,
                offset: 1,
                type_: dtype_dir,
                name: b".",
            };
            if add_entry(d, Entry::default())? == 0 {
                return Ok(());
            }
        }
        if offset < 2 {
            let d = DirEntry {
                ino: dir.parent.load(Ordering::Acquire),
                offset: 2,
                type_: dtype_dir,
                name: b"..",
            };
            if add_entry(d, Entry::default())? == 0 {
                return Ok(());
            }
        }
        for (cookie, name, ino) in entries.iter_from(offset) {
            let Some(child) = self.nodes.get(ino) else {
                continue;
            };
            let d = DirEntry {
                ino,
                offset: cookie,
                type_: child.dtype(),
                name,
            };
            let e = if plus {
                self.entry(&child)
            } else {
                Entry::default()
            };
            match add_entry(d, e) {
                Ok(0) => {
                    if plus {
                        child.dec_lookup(1);
                    }
                    break;
                }
                Ok(_) => {}
                Err(err) => {
                    if plus {
                        child.dec_lookup(1);
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    pub(super) fn do_unlink(&self, parent: u64, name: &CStr) -> io::Result<()> {
        let name = name::validate(name)?;
        let pnode = self.dir_node(parent)?;
        let pdir = pnode.dir().ok_or_else(|| errno(libc::ENOTDIR))?;
        let node = {
            let mut entries = pdir.entries.write();
            let link = entries.get(name).ok_or_else(|| errno(libc::ENOENT))?;
            let node = self.nodes.get(link.ino).ok_or_else(|| errno(libc::EIO))?;
            if node.is_dir() {
                return Err(errno(libc::EISDIR));
            }
            entries.remove(name);
            self.usage.bytes.release(cost::name(name.len() as u64));
            {
                let mut m = node.meta.lock();
                m.nlink = m.nlink.saturating_sub(1);
                m.ctime = Ts::now();
            }
            pnode.meta.lock().touch_mc();
            node
        };
        self.maybe_evict(&node);
        Ok(())
    }

    pub(super) fn do_rmdir(&self, parent: u64, name: &CStr) -> io::Result<()> {
        let name = name::validate(name)?;
        let _ns = self.rename_lock.lock();
        let pnode = self.dir_node(parent)?;
        let pdir = pnode.dir().ok_or_else(|| errno(libc::ENOTDIR))?;
        let node = {
            let mut entries = pdir.entries.write();
            let link = entries.get(name).ok_or_else(|| errno(libc::ENOENT))?;
            let node = self.nodes.get(link.ino).ok_or_else(|| errno(libc::EIO))?;
            let cdir = node.dir().ok_or_else(|| errno(libc::ENOTDIR))?;
            let centries = cdir.entries.write();
            if !centries.is_empty() {
                return Err(errno(libc::ENOTEMPTY));
            }
            entries.remove(name);
            self.usage.bytes.release(cost::name(name.len() as u64));
            {
                let mut m = node.meta.lock();
                m.nlink = 0;
                m.ctime = Ts::now();
            }
            drop(centries);
            let mut pm = pnode.meta.lock();
            pm.nlink = pm.nlink.saturating_sub(1);
            pm.touch_mc();
            node
        };
        self.maybe_evict(&node);
        Ok(())
    }

    /// True if `ancestor` is `ino` or one of its ancestors. Parent pointers only change under
    /// `rename_lock`, which the caller holds.
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        // Bounded: a directory tree deeper than the inode count is impossible.
        for _ in 0..=self.nodes.len() {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT_ID {
                return false;
            }
            match self.nodes.get(ino).as_deref().and_then(Node::dir) {
                Some(d) => ino = d.parent.load(Ordering::Acquire),
                None => return false,
            }
        }
        false
    }

    pub(super) fn do_rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT) != 0
            || (flags & RENAME_EXCHANGE != 0 && flags & (RENAME_NOREPLACE | RENAME_WHITEOUT) != 0)
        {
            return Err(errno(libc::EINVAL));
        }
        let oname = name::validate(oldname)?;
        let nname = name::validate(newname)?;
        let _ns = self.rename_lock.lock();
        let p1 = self.dir_node(olddir)?;
        let p2 = self.dir_node(newdir)?;
        let (d1, d2) = match (p1.dir(), p2.dir()) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(errno(libc::ENOTDIR)),
        };
        let same_dir = p1.ino == p2.ino;
        let mut g1 = d1.entries.write();
        let mut g2 = if same_dir {
            None
        } else {
            Some(d2.entries.write())
        };

        let src_link = g1.get(oname).ok_or_else(|| errno(libc::ENOENT))?;
        let src = self
            .nodes
            .get(src_link.ino)
            .ok_or_else(|| errno(libc::EIO))?;
        if p2.meta.lock().nlink == 0 {
            return Err(errno(libc::ENOENT));
        }
        let dst_link = match &g2 {
            Some(g) => g.get(nname),
            None => g1.get(nname),
        };
        let dst = match dst_link {
            Some(l) => Some(self.nodes.get(l.ino).ok_or_else(|| errno(libc::EIO))?),
            None => None,
        };
        if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(errno(libc::EEXIST));
        }
        if flags & RENAME_EXCHANGE != 0 && dst.is_none() {
            return Err(errno(libc::ENOENT));
        }
        if let Some(d) = &dst {
            if d.ino == src.ino {
                // Two names of one inode (or the same name): nothing to do.
                return Ok(());
            }
        }
        if src.is_dir() && !same_dir && self.is_ancestor(src.ino, p2.ino) {
            return Err(errno(libc::EINVAL));
        }
        if flags & RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or_else(|| errno(libc::ENOENT))?;
            if dst.is_dir() && !same_dir && self.is_ancestor(dst.ino, p1.ino) {
                return Err(errno(libc::EINVAL));
            }
            g1.replace(oname, dst.ino);
            match g2.as_mut() {
                Some(g) => g.replace(nname, src.ino),
                None => g1.replace(nname, src.ino),
            };
            if !same_dir {
                if let Some(d) = src.dir() {
                    d.parent.store(p2.ino, Ordering::Release);
                }
                if let Some(d) = dst.dir() {
                    d.parent.store(p1.ino, Ordering::Release);
                }
                let delta = i64::from(src.is_dir()) - i64::from(dst.is_dir());
                adjust_nlink(&mut p1.meta.lock(), -delta);
                adjust_nlink(&mut p2.meta.lock(), delta);
            }
            let now = Ts::now();
            src.meta.lock().ctime = now;
            dst.meta.lock().ctime = now;
            p1.meta.lock().touch_mc();
            if !same_dir {
                p2.meta.lock().touch_mc();
            }
            return Ok(());
        }

        // Plain rename (maybe with NOREPLACE or WHITEOUT).
        // A directory being replaced stays locked until it is unlinked, so that nothing can be
        // created in it after it was found empty.
        let mut dst_entries = None;
        if let Some(d) = &dst {
            match (src.is_dir(), d.is_dir()) {
                (true, false) => return Err(errno(libc::ENOTDIR)),
                (false, true) => return Err(errno(libc::EISDIR)),
                (true, true) => {
                    // The source's own directory (its entries are locked above already)
                    // holds the source, so it is not empty.
                    if d.ino == p1.ino {
                        return Err(errno(libc::ENOTEMPTY));
                    }
                    let entries = d.dir().map(|dd| dd.entries.write());
                    if !entries.as_ref().is_some_and(|e| e.is_empty()) {
                        return Err(errno(libc::ENOTEMPTY));
                    }
                    dst_entries = entries;
                }
                (false, false) => {}
            }
        }
        // A new name in another directory needs room there.
        if dst.is_none() && g2.as_ref().is_some_and(|g| !g.has_room()) {
            return Err(errno(libc::ENOSPC));
        }
        // Reserve everything before changing anything: the growth in charged names. A
        // whiteout takes over the old name, which stays charged.
        let whiteout = flags & RENAME_WHITEOUT != 0;
        let added = if dst.is_some() {
            0
        } else {
            cost::name(nname.len() as u64)
        };
        let removed = if whiteout {
            0
        } else {
            cost::name(oname.len() as u64)
        };
        // The whiteout is a new inode.
        let wo_cost = if whiteout { cost::INODE } else { 0 };
        let name_cost = added.saturating_sub(removed) + wo_cost;
        self.usage.bytes.reserve(name_cost)?;
        if whiteout {
            if let Err(e) = self.usage.inodes.reserve(1) {
                self.usage.bytes.release(name_cost);
                return Err(e);
            }
        }

        g1.remove(oname);
        self.usage.bytes.release(removed.saturating_sub(added));
        let target = g2.as_mut().unwrap_or(&mut g1);
        if dst.is_some() {
            target.replace(nname, src.ino);
        } else {
            target.insert(nname, src.ino);
        }
        let now = Ts::now();
        if let Some(d) = &dst {
            let mut m = d.meta.lock();
            if d.is_dir() {
                m.nlink = 0;
                adjust_nlink(&mut p2.meta.lock(), -1);
            } else {
                m.nlink = m.nlink.saturating_sub(1);
            }
            m.ctime = now;
        }
        if src.is_dir() && !same_dir {
            if let Some(d) = src.dir() {
                d.parent.store(p2.ino, Ordering::Release);
            }
            adjust_nlink(&mut p1.meta.lock(), -1);
            adjust_nlink(&mut p2.meta.lock(), 1);
        }
        if whiteout {
            let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
            let meta = Meta::new(libc::S_IFCHR as u32, ctx.uid, ctx.gid, 0);
            let wo = Arc::new(Node::new(ino, meta, Body::Special, self.usage.clone()));
            self.nodes.insert(wo);
            g1.insert(oname, ino);
        }
        src.meta.lock().ctime = now;
        p1.meta.lock().touch_mc();
        if !same_dir {
            p2.meta.lock().touch_mc();
        }
        drop(dst_entries);
        drop(g1);
        drop(g2);
        if let Some(d) = dst {
            self.maybe_evict(&d);
        }
        Ok(())
    }
}

fn adjust_nlink(m: &mut Meta, delta: i64) {
    m.nlink = (i64::from(m.nlink) + delta).clamp(0, i64::from(u32::MAX)) as u32;
}
