//! Copy-up: making a B entry (and its parent directories) exist in A, through the trait.
//!
//! The copy is built under [`WORK_DIR`] in A with a unique name and renamed into place once
//! complete (data, xattrs, ownership, mode, times), so the guest and a restarted daemon only
//! ever see no copy or a complete one. A failed copy is removed from the staging directory;
//! leftovers of a crash are removed when the next DualFs is built over the same A.

use std::ffi::{CStr, CString};
use std::io;
use std::sync::Arc;

use super::node::{Layer, Node};
use super::policy::{LowerWrite, Op};
use super::whiteout::{is_private_xattr, WORK_DIR};
use super::DualFs;
use crate::zero_copy::{MemReader, MemWriter};
use crate::{
    errno, stat64, Context, CreateIn, DirEntry, DynFileSystem, Entry, GetxattrReply,
    ListxattrReply, SetattrValid, ROOT_ID,
};

/// Bytes moved per read/write during a copy.
const CHUNK: usize = 1 << 20;
use crate::abi::{SEEK_DATA, SEEK_HOLE};

/// Looks up or creates [`WORK_DIR`] in A and empties it. `None` if A is read-only.
pub(super) fn prepare_work_dir(a: &dyn DynFileSystem) -> io::Result<Option<u64>> {
    let ctx = Context::new();
    let ino = match a.lookup(&ctx, ROOT_ID, WORK_DIR) {
        Ok(e) => e.inode,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            match a.mkdir(&ctx, ROOT_ID, WORK_DIR, 0o700, 0) {
                Ok(e) => e.inode,
                Err(e) if e.raw_os_error() == Some(libc::EROFS) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    empty_dir(a, &ctx, ino)?;
    Ok(Some(ino))
}

/// Removes everything inside A directory `ino` (staging leftovers).
fn empty_dir(a: &dyn DynFileSystem, ctx: &Context, ino: u64) -> io::Result<()> {
    let (fh, _) = a.opendir(ctx, ino, 0)?;
    let fh = fh.unwrap_or(0);
    let mut names = Vec::new();
    let mut cookie = 0;
    let res = loop {
        let mut n = 0;
        let r = a.readdir(ctx, ino, fh, 1 << 16, cookie, &mut |d: DirEntry| {
            n += 1;
            cookie = d.offset;
            if d.name != b"." && d.name != b".." {
                names.push(d.name.to_vec());
            }
            Ok(1)
        });
        if r.is_err() || n == 0 {
            break r;
        }
    };
    let _ = a.releasedir(ctx, ino, 0, fh);
    res?;
    for name in names {
        let Ok(c) = CString::new(name) else { continue };
        let Ok(e) = a.lookup(ctx, ino, &c) else {
            continue;
        };
        let is_dir = e.attr.st_mode as u32 & libc::S_IFMT as u32 == libc::S_IFDIR as u32;
        if is_dir {
            let r = empty_dir(a, ctx, e.inode);
            a.forget(ctx, e.inode, 1);
            r?;
            a.rmdir(ctx, ino, &c)?;
        } else {
            a.forget(ctx, e.inode, 1);
            a.unlink(ctx, ino, &c)?;
        }
    }
    Ok(())
}

fn kind_of(st: &stat64) -> u32 {
    st.st_mode as u32 & libc::S_IFMT as u32
}

impl DualFs {
    /// Makes `node` exist in A and returns its A inode. `op` is the guest operation that
    /// needs it (checked against the policy), `None` for parent directories made on demand.
    pub(super) fn copy_up(&self, node: &Arc<Node>, op: Option<Op>) -> io::Result<u64> {
        if let Some(a) = node.layers().a {
            return Ok(a);
        }
        if let Some(op) = op {
            if let LowerWrite::Refuse(e) = self.policy.lower_write(op, &self.path(node, None)) {
                return Err(errno(e));
            }
        }
        let (parent, name) = node.parent_and_name().ok_or_else(|| errno(libc::EIO))?;
        let pa = self.copy_up(&parent, None)?;
        let _once = node.copy_lock.lock();
        if let Some(a) = node.layers().a {
            return Ok(a);
        }
        let b = node.layers().b.ok_or_else(|| errno(libc::EIO))?;
        let ctx = Context::new();
        let (st, _) = self.b().getattr(&ctx, b, None)?;
        let nlink = st.st_nlink as u64;
        let linked = if kind_of(&st) != libc::S_IFDIR as u32 && nlink > 1 {
            self.hardlinks.lock().get(&b).copied()
        } else {
            None
        };
        // The copy must not show as a change of the parent: its times are put back after.
        let parent_times = self.a().getattr(&ctx, pa, None).ok().map(|(st, _)| st);
        let a_ino = match linked {
            // Another name of a file already copied: link to the copy.
            Some(first) => match self.a().link(&ctx, first, pa, &name) {
                Ok(e) => e.inode,
                Err(_) => self.copy_object(&ctx, b, &st, pa, &name)?,
            },
            None => self.copy_object(&ctx, b, &st, pa, &name)?,
        };
        if let Some(pt) = parent_times {
            let _ = self.a().setattr(
                &ctx,
                pa,
                pt,
                None,
                SetattrValid::ATIME | SetattrValid::MTIME,
            );
        }
        // A copied directory is not opaque: it stays merged with B's.
        node.layers.write().a = Some(a_ino);
        self.shared.alias((Layer::A, a_ino), node);
        self.shared.set_origin(a_ino, node.id);
        if linked.is_none() && kind_of(&st) != libc::S_IFDIR as u32 && nlink > 1 {
            if let Ok(e) = self.a().lookup(&ctx, pa, &name) {
                match self.hardlinks.lock().entry(b) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        self.a().forget(&ctx, e.inode, 1);
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(e.inode);
                    }
                }
            }
        }
        Ok(a_ino)
    }

    /// Gives the name `name` under `parent` of an already copied-up multiply-linked file a
    /// link in A to the copy. Returns the copy's attributes.
    pub(super) fn link_up(
        &self,
        node: &Arc<Node>,
        parent: &Arc<Node>,
        name: &CStr,
    ) -> io::Result<stat64> {
        let a = match node.layers().a {
            Some(a) => a,
            None => {
                // Copied through another node that is gone: relink by the map.
                let b = node.layers().b.ok_or_else(|| errno(libc::EIO))?;
                let first = self
                    .hardlinks
                    .lock()
                    .get(&b)
                    .copied()
                    .ok_or_else(|| errno(libc::ENOENT))?;
                let pa = self.copy_up(parent, None)?;
                let ctx = Context::new();
                let _once = node.copy_lock.lock();
                if let Some(a) = node.layers().a {
                    return Ok(self.a().getattr(&ctx, a, None)?.0);
                }
                let e = self.a().link(&ctx, first, pa, name)?;
                node.layers.write().a = Some(e.inode);
                self.shared.alias((Layer::A, e.inode), node);
                return Ok(e.attr);
            }
        };
        let pa = self.copy_up(parent, None)?;
        let ctx = Context::new();
        let e = self.a().link(&ctx, a, pa, name)?;
        self.a().forget(&ctx, e.inode, 1);
        Ok(e.attr)
    }

    /// Builds a copy of B inode `b` in the staging directory and renames it to `name` in A
    /// directory `pa`. Returns the copy's A inode (one lookup reference, owned by the caller).
    fn copy_object(
        &self,
        ctx: &Context,
        b: u64,
        st: &stat64,
        pa: u64,
        name: &CStr,
    ) -> io::Result<u64> {
        let work = self.work_dir()?;
        let stage = CString::new(format!("cu-{:016x}", rand::random::<u64>()))
            .map_err(|_| errno(libc::EIO))?;
        let kind = kind_of(st);
        let e = self.build_staged(ctx, b, st, work, &stage)?;
        let res = self
            .finish_staged(ctx, b, st, &e, kind)
            .and_then(|()| self.a().rename(ctx, work, &stage, pa, name, 0));
        if let Err(err) = res {
            if kind == libc::S_IFDIR as u32 {
                let _ = self.a().rmdir(ctx, work, &stage);
            } else {
                let _ = self.a().unlink(ctx, work, &stage);
            }
            self.a().forget(ctx, e.inode, 1);
            return Err(err);
        }
        Ok(e.inode)
    }

    /// Creates the staged object with its content.
    fn build_staged(
        &self,
        ctx: &Context,
        b: u64,
        st: &stat64,
        work: u64,
        stage: &CStr,
    ) -> io::Result<Entry> {
        let kind = kind_of(st);
        let a = self.a();
        if kind == libc::S_IFDIR as u32 {
            return a.mkdir(ctx, work, stage, 0o700, 0);
        }
        if kind == libc::S_IFLNK as u32 {
            let target = self.b().readlink(ctx, b)?;
            let target = CString::new(target).map_err(|_| errno(libc::EIO))?;
            return a.symlink(ctx, &target, work, stage);
        }
        if kind != libc::S_IFREG as u32 {
            return a.mknod(ctx, work, stage, st.st_mode as u32, st.st_rdev as u32, 0);
        }
        let args = CreateIn {
            flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
            mode: libc::S_IFREG as u32 | 0o600,
            umask: 0,
            fuse_flags: 0,
        };
        let (e, afh, _, _) = a.create(ctx, work, stage, args)?;
        let afh = afh.unwrap_or(0);
        let res = match self.b().open(ctx, b, libc::O_RDONLY as u32, 0) {
            Ok((bfh, _, _)) => {
                let bfh = bfh.unwrap_or(0);
                let r = self.copy_data(ctx, b, bfh, e.inode, afh, st);
                let _ = self
                    .b()
                    .release(ctx, b, libc::O_RDONLY as u32, bfh, false, false, None);
                r
            }
            Err(err) => Err(err),
        };
        let rel = a.release(ctx, e.inode, libc::O_RDWR as u32, afh, true, false, None);
        let res = res.and(rel);
        if let Err(err) = res {
            let _ = a.unlink(ctx, work, stage);
            a.forget(ctx, e.inode, 1);
            return Err(err);
        }
        Ok(e)
    }

    /// Streams the data of B file `b` into A file `a`, leaving holes where B has holes (or
    /// all-zero chunks), and sets the final size.
    fn copy_data(
        &self,
        ctx: &Context,
        b: u64,
        bfh: u64,
        a: u64,
        afh: u64,
        st: &stat64,
    ) -> io::Result<()> {
        let size = st.st_size as u64;
        let mut off = 0u64;
        while off < size {
            let data = match self.b().lseek(ctx, b, bfh, off, SEEK_DATA) {
                Ok(d) => d,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
                Err(_) => off,
            };
            if data >= size {
                break;
            }
            let hole = match self.b().lseek(ctx, b, bfh, data, SEEK_HOLE) {
                Ok(h) if h > data => h.min(size),
                _ => size,
            };
            let mut pos = data;
            while pos < hole {
                let n = ((hole - pos) as usize).min(CHUNK);
                let mut w = MemWriter::new(n);
                let got = self.b().read(ctx, b, bfh, &mut w, n as u32, pos, None, 0)?;
                if got == 0 {
                    break;
                }
                let mut buf = w.into_inner();
                if buf.iter().any(|&x| x != 0) {
                    let got = got.min(buf.len());
                    self.write_all(ctx, a, afh, &mut buf[..got], pos)?;
                }
                pos += got as u64;
            }
            if pos < hole {
                break;
            }
            off = hole;
        }
        // Only the size is applied (`SetattrValid::SIZE`); B's attributes fill the rest.
        let mut sz = *st;
        sz.st_size = size as _;
        self.a()
            .setattr(ctx, a, sz, Some(afh), SetattrValid::SIZE)?;
        Ok(())
    }

    fn write_all(
        &self,
        ctx: &Context,
        a: u64,
        afh: u64,
        mut buf: &mut [u8],
        mut pos: u64,
    ) -> io::Result<()> {
        while !buf.is_empty() {
            let len = buf.len();
            let mut r = MemReader::new(&mut *buf);
            let n = self
                .a()
                .write(ctx, a, afh, &mut r, len as u32, pos, None, false, 0, 0)?;
            drop(r);
            if n == 0 {
                return Err(errno(libc::EIO));
            }
            // A backend claiming more than it was given is broken: fail the copy, never panic.
            let rest = std::mem::take(&mut buf);
            buf = rest.get_mut(n..).ok_or_else(|| errno(libc::EIO))?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Copies xattrs, ownership, mode and times onto the staged object.
    fn finish_staged(
        &self,
        ctx: &Context,
        b: u64,
        st: &stat64,
        e: &Entry,
        kind: u32,
    ) -> io::Result<()> {
        let a = self.a();
        if kind == libc::S_IFREG as u32 || kind == libc::S_IFDIR as u32 {
            self.copy_xattrs(ctx, b, e.inode)?;
        }
        // B's attributes; each setattr below applies only the fields it names.
        let attr: stat64 = *st;
        let (cur, _) = a.getattr(ctx, e.inode, None)?;
        if cur.st_uid != st.st_uid || cur.st_gid != st.st_gid {
            match a.setattr(
                ctx,
                e.inode,
                attr,
                None,
                SetattrValid::UID | SetattrValid::GID,
            ) {
                Ok(_) => {}
                // Host symlinks cannot change owner on some backends.
                Err(err)
                    if kind == libc::S_IFLNK as u32 && err.raw_os_error() == Some(libc::EPERM) => {}
                Err(err) => return Err(err),
            }
        }
        if kind != libc::S_IFLNK as u32 {
            a.setattr(ctx, e.inode, attr, None, SetattrValid::MODE)?;
        }
        match a.setattr(
            ctx,
            e.inode,
            attr,
            None,
            SetattrValid::ATIME | SetattrValid::MTIME,
        ) {
            Ok(_) => Ok(()),
            Err(err) if kind == libc::S_IFLNK as u32 => {
                let _ = err;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn copy_xattrs(&self, ctx: &Context, b: u64, a: u64) -> io::Result<()> {
        let names = match self.b().listxattr(ctx, b, 1 << 16) {
            Ok(ListxattrReply::Names(n)) => n,
            Ok(ListxattrReply::Count(_)) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        for name in names.split(|&c| c == 0).filter(|n| !n.is_empty()) {
            if is_private_xattr(name) {
                continue;
            }
            let Ok(cname) = CString::new(name) else {
                continue;
            };
            let value = match self.b().getxattr(ctx, b, &cname, 1 << 16) {
                Ok(GetxattrReply::Value(v)) => v,
                Ok(GetxattrReply::Count(_)) => continue,
                Err(e) if name.starts_with(b"user.") => return Err(e),
                Err(_) => continue,
            };
            match self.a().setxattr(ctx, a, &cname, &value, 0) {
                Ok(()) => {}
                Err(e) if name.starts_with(b"user.") => return Err(e),
                // security.*, trusted.*, system.* may be refused by an unprivileged A.
                Err(e) => tracing::debug!("copy-up: xattr {:?} not copied: {e}", cname),
            }
        }
        Ok(())
    }
}
