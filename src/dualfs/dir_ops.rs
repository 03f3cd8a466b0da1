//! Names: lookup, opendir/readdir (merged, stable offsets), unlink, rmdir, rename.
//!
//! # Directory offsets
//!
//! An offset is a tagged backend cookie, so it can be resumed through any handle without
//! state: `1` and `2` are `.` and `..`; `01 << 62 | c` is A's cookie `c`; `10 << 62 | c` is
//! B's cookie `c`; `11 << 62 | i` is entry `i` of the directory's cookie table, used for the
//! rare backend cookies of 2^62 or more (ext4 hash cookies, a nested DualFs's B phase). A
//! listing walks A (skipping whiteouts), then B (skipping names A has or whites out).

use std::ffi::{CStr, CString};
use std::io;
use std::sync::Arc;

use super::node::{CookieTable, Layer, Layers, Node};
use super::policy::{Listing, LowerWrite, Op, Visibility};
use super::whiteout::{is_whiteout, OPAQUE_XATTR, WHITEOUT_XATTR, WORK_DIR};
use super::{DualFs, Handle};
use crate::{
    errno, name, Context, CreateIn, DirEntry, DynFileSystem, Entry, GetxattrReply, OpenOptions,
    ROOT_ID,
};

use crate::abi::{RENAME_EXCHANGE, RENAME_NOREPLACE};
const TAG_A: u64 = 1 << 62;
const TAG_B: u64 = 2 << 62;
const TAG_TABLE: u64 = 3 << 62;
const TAG_MASK: u64 = 3 << 62;
/// Receives one visible entry of a listing: (name, layer, backend inode, d_type, offset);
/// returns whether to go on.
type Emit<'a> = dyn FnMut(&[u8], Layer, u64, u32, u64) -> io::Result<bool> + 'a;
/// Entries read from a backend per call.
const BATCH: usize = 128;

/// Whether the A directory `ino` is opaque.
pub(super) fn is_opaque(a: &dyn DynFileSystem, ino: u64) -> bool {
    matches!(
        a.getxattr(&Context::new(), ino, OPAQUE_XATTR, 16),
        Ok(GetxattrReply::Value(v)) if v == b"y"
    )
}

/// Whether the A directory `ino` may hold whiteouts (its opaque xattr is `x`, the marker
/// made with the first whiteout, or `y`). Listings look for whiteouts only there.
pub(super) fn has_whiteouts(a: &dyn DynFileSystem, ino: u64) -> bool {
    matches!(
        a.getxattr(&Context::new(), ino, OPAQUE_XATTR, 16),
        Ok(GetxattrReply::Value(v)) if v == b"x" || v == b"y"
    )
}

/// What a name resolves to in each backend. Holds backend lookup references, given back on
/// drop unless taken.
pub(super) struct Probe<'a> {
    fs: &'a DualFs,
    /// A's entry at the name (a whiteout included).
    pub upper: Option<Entry>,
    /// B's entry at the name, if B is visible under the parent (even if A shadows it).
    pub lower: Option<Entry>,
}

impl Probe<'_> {
    pub fn whiteout(&self) -> bool {
        self.upper
            .as_ref()
            .is_some_and(|e| is_whiteout(self.fs.a(), e))
    }

    /// The visible upper entry (not a whiteout).
    pub fn visible_upper(&self) -> Option<&Entry> {
        self.upper.as_ref().filter(|e| !is_whiteout(self.fs.a(), e))
    }

    /// Whether the name is visible to the guest.
    pub fn exists(&self) -> bool {
        self.visible_upper().is_some() || (self.upper.is_none() && self.lower.is_some())
    }

    /// The guest type of the visible entry.
    pub fn kind(&self) -> Option<u32> {
        if let Some(u) = self.visible_upper() {
            return Some(u.attr.st_mode as u32 & libc::S_IFMT as u32);
        }
        if self.upper.is_none() {
            return self
                .lower
                .as_ref()
                .map(|l| l.attr.st_mode as u32 & libc::S_IFMT as u32);
        }
        None
    }
}

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        let ctx = Context::new();
        if let Some(u) = self.upper.take() {
            self.fs.a().forget(&ctx, u.inode, 1);
        }
        if let Some(l) = self.lower.take() {
            self.fs.b().forget(&ctx, l.inode, 1);
        }
    }
}

fn is_dir_attr(e: &Entry) -> bool {
    e.attr.st_mode as u32 & libc::S_IFMT as u32 == libc::S_IFDIR as u32
}

impl DualFs {
    /// Resolves `name` under `parent` in both backends. With `full`, B is consulted even when
    /// A has a non-directory there (to know whether removing A's entry needs a whiteout).
    pub(super) fn probe(
        &self,
        ctx: &Context,
        parent: &Node,
        name: &CStr,
        full: bool,
    ) -> io::Result<Probe<'_>> {
        let mut p = Probe {
            fs: self,
            upper: None,
            lower: None,
        };
        if !parent.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        if parent.id == ROOT_ID && name == WORK_DIR {
            return Ok(p);
        }
        let l = parent.layers();
        if let Some(pa) = l.a {
            match self.a().lookup(ctx, pa, name) {
                Ok(e) => p.upper = Some(e),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        let Some(pb) = l.b else {
            return Ok(p);
        };
        let want_b = match &p.upper {
            None => true,
            Some(u) if is_whiteout(self.a(), u) => full,
            Some(u) if is_dir_attr(u) => full || !is_opaque(self.a(), u.inode),
            Some(_) => full,
        };
        if !want_b
            || self
                .policy
                .visibility(&self.path(parent, Some(name.to_bytes())))
                == Visibility::AOnly
        {
            return Ok(p);
        }
        match self.b().lookup(ctx, pb, name) {
            Ok(e) => p.lower = Some(e),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        Ok(p)
    }

    /// The node for the visible entry of `probe` (taking the backend references it needs),
    /// without counting a guest reference. `ENOENT` if nothing is visible.
    pub(super) fn node_from_probe(
        &self,
        parent: &Arc<Node>,
        name: &CStr,
        probe: &mut Probe<'_>,
    ) -> io::Result<(Arc<Node>, Entry)> {
        let ctx = Context::new();
        if probe.whiteout() {
            return Err(errno(libc::ENOENT));
        }
        if let Some(upper) = probe.upper.take() {
            let kind = upper.attr.st_mode as u32 & libc::S_IFMT as u32;
            // A merged directory: B's directory of the same name, unless A's is opaque.
            let lower = match probe.lower.take() {
                Some(l)
                    if kind == libc::S_IFDIR as u32
                        && is_dir_attr(&l)
                        && !is_opaque(self.a(), upper.inode) =>
                {
                    Some(l)
                }
                other => {
                    probe.lower = other;
                    None
                }
            };
            let (node, new) = self.shared.find_or_insert((Layer::A, upper.inode), |id| {
                Node::new(
                    id,
                    kind,
                    self.shared.clone(),
                    Layers {
                        a: Some(upper.inode),
                        b: lower.as_ref().map(|l| l.inode),
                    },
                    Some((parent.clone(), name.to_owned())),
                )
            });
            if new {
                if let Some(l) = &lower {
                    self.shared.alias((Layer::B, l.inode), &node);
                }
            } else {
                self.a().forget(&ctx, upper.inode, 1);
                if let Some(l) = lower {
                    self.b().forget(&ctx, l.inode, 1);
                }
            }
            let mut e = upper;
            e.inode = node.id;
            Self::fix_attr(&mut e.attr, node.id);
            return Ok((node, self.cache.entry(e)));
        }
        let lower = probe.lower.take().ok_or_else(|| errno(libc::ENOENT))?;
        let kind = lower.attr.st_mode as u32 & libc::S_IFMT as u32;
        let b_ino = lower.inode;
        let nlink = lower.attr.st_nlink as u64;
        let (node, new) = self.shared.find_or_insert((Layer::B, b_ino), |id| {
            Node::new(
                id,
                kind,
                self.shared.clone(),
                Layers {
                    a: None,
                    b: Some(b_ino),
                },
                Some((parent.clone(), name.to_owned())),
            )
        });
        if !new {
            self.b().forget(&ctx, b_ino, 1);
        }
        let mut e = lower;
        if kind != libc::S_IFDIR as u32 && nlink > 1 {
            // Another name of a multiply-linked B file: if the file was copied up, this name
            // becomes a hard link to the copy.
            let copied = node.layers().a.is_some() || self.hardlinks.lock().contains_key(&b_ino);
            if copied {
                if let Ok(st) = self.link_up(&node, parent, name) {
                    e.attr = st;
                }
            }
        }
        e.inode = node.id;
        if let Some(a) = node.layers().a {
            if let Ok((st, _)) = self.a().getattr(&ctx, a, None) {
                e.attr = st;
            }
        }
        Self::fix_attr(&mut e.attr, node.id);
        Ok((node, self.cache.entry(e)))
    }

    /// Resolves `name` and counts one guest reference on the result.
    pub(super) fn lookup_child(
        &self,
        ctx: &Context,
        parent: &Arc<Node>,
        name: &CStr,
    ) -> io::Result<Entry> {
        let mut probe = self.probe(ctx, parent, name, false)?;
        let (node, e) = self.node_from_probe(parent, name, &mut probe)?;
        self.nodes.inc(&node, 1);
        Ok(e)
    }

    pub(super) fn do_lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        name::validate(name)?;
        let parent = self.dir_node(parent)?;
        self.check(Op::Lookup, &parent, Some(name))?;
        self.lookup_child(ctx, &parent, name)
    }

    pub(super) fn do_opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let node = self.dir_node(inode)?;
        self.check(Op::ReadDir, &node, None)?;
        let l = node.layers();
        let listing = self.policy.listing(&self.path(&node, None));
        let mut opts = OpenOptions::empty();
        let a = match l.a {
            Some(ino) => {
                let (fh, o) = self.a().opendir(ctx, ino, flags)?;
                opts = o;
                Some((ino, fh.unwrap_or(0)))
            }
            None => None,
        };
        let b = match l.b {
            Some(ino) if listing == Listing::Merged || a.is_none() => {
                match self.b().opendir(ctx, ino, flags) {
                    Ok((fh, o)) => {
                        if a.is_none() {
                            opts = o;
                        }
                        Some((ino, fh.unwrap_or(0)))
                    }
                    Err(e) => {
                        if let Some((ino, fh)) = a {
                            let _ = self.a().releasedir(ctx, ino, flags, fh);
                        }
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        let fh = self.insert_handle(Handle::Dir { node, a, b });
        Ok((Some(fh), opts))
    }

    /// Encodes a backend cookie as a DualFs offset.
    fn encode(&self, node: &Node, layer: Layer, cookie: u64) -> u64 {
        if cookie < TAG_A {
            return match layer {
                Layer::A => TAG_A | cookie,
                Layer::B => TAG_B | cookie,
            };
        }
        let mut t = node.cookies.lock();
        let t = t.get_or_insert_with(Box::<CookieTable>::default);
        if let Some(i) = t.by_cookie.get(&(layer, cookie)) {
            return TAG_TABLE | *i;
        }
        let i = t.by_index.len() as u64;
        t.by_index.push((layer, cookie));
        t.by_cookie.insert((layer, cookie), i);
        TAG_TABLE | i
    }

    /// Decodes an offset: `None` for the `.`/`..` header phase, else (layer, cookie).
    fn decode(&self, node: &Node, offset: u64) -> io::Result<Option<(Layer, u64)>> {
        match offset & TAG_MASK {
            0 if offset <= 2 => Ok(None),
            0 => Err(errno(libc::EINVAL)),
            TAG_A => Ok(Some((Layer::A, offset & !TAG_MASK))),
            TAG_B => Ok(Some((Layer::B, offset & !TAG_MASK))),
            _ => {
                let t = node.cookies.lock();
                t.as_ref()
                    .and_then(|t| t.by_index.get((offset & !TAG_MASK) as usize).copied())
                    .map(Some)
                    .ok_or_else(|| errno(libc::EINVAL))
            }
        }
    }

    /// Walks the merged listing of `node` from `offset`, calling `emit(name, layer, backend
    /// inode, d_type, offset)` for each visible entry until it returns `false`. `.` and `..`
    /// come first with backend inode 0.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        ctx: &Context,
        node: &Arc<Node>,
        a: Option<(u64, u64)>,
        b: Option<(u64, u64)>,
        offset: u64,
        emit: &mut Emit<'_>,
    ) -> io::Result<()> {
        let start = self.decode(node, offset)?;
        let (mut layer, mut cookie) = match start {
            None => {
                let dt = libc::DT_DIR as u32;
                if offset < 1 && !emit(b".", Layer::A, 0, dt, 1)? {
                    return Ok(());
                }
                if offset < 2 && !emit(b"..", Layer::A, 0, dt, 2)? {
                    return Ok(());
                }
                (Layer::A, 0)
            }
            Some(x) => x,
        };
        loop {
            let handle = match layer {
                Layer::A => a,
                Layer::B => b,
            };
            if let Some((ino, fh)) = handle {
                let fs = self.shared.fs(layer);
                let whiteouts = layer == Layer::A && has_whiteouts(fs, ino);
                loop {
                    let mut batch: Vec<(Vec<u8>, u64, u64, u32)> = Vec::new();
                    fs.readdir(ctx, ino, fh, 1 << 16, cookie, &mut |d: DirEntry| {
                        if batch.len() >= BATCH {
                            return Ok(0);
                        }
                        batch.push((d.name.to_vec(), d.ino, d.offset, d.type_));
                        Ok(1)
                    })?;
                    if batch.is_empty() {
                        break;
                    }
                    for (name, ino_d, off, dtype) in batch {
                        cookie = off;
                        if name == b"." || name == b".." {
                            continue;
                        }
                        if self.hidden(ctx, node, layer, &name, dtype, whiteouts)? {
                            continue;
                        }
                        let enc = self.encode(node, layer, off);
                        if !emit(&name, layer, ino_d, dtype, enc)? {
                            return Ok(());
                        }
                    }
                }
            }
            match layer {
                Layer::A => {
                    layer = Layer::B;
                    cookie = 0;
                }
                Layer::B => return Ok(()),
            }
        }
    }

    /// Whether a backend entry is hidden from the merged listing of `node`.
    /// `whiteouts`: whether the A directory is marked as holding whiteouts.
    fn hidden(
        &self,
        ctx: &Context,
        node: &Node,
        layer: Layer,
        name: &[u8],
        dtype: u32,
        whiteouts: bool,
    ) -> io::Result<bool> {
        let Ok(cname) = CString::new(name) else {
            return Ok(true);
        };
        match layer {
            Layer::A => {
                if node.id == ROOT_ID && cname.as_c_str() == WORK_DIR {
                    return Ok(true);
                }
                let maybe = dtype == libc::DT_REG as u32 || dtype == libc::DT_UNKNOWN as u32;
                if !whiteouts || !maybe {
                    return Ok(false);
                }
                let Some(pa) = node.layers().a else {
                    return Ok(false);
                };
                match self.a().lookup(ctx, pa, &cname) {
                    Ok(e) => {
                        let w = is_whiteout(self.a(), &e);
                        self.a().forget(ctx, e.inode, 1);
                        Ok(w)
                    }
                    Err(_) => Ok(true),
                }
            }
            Layer::B => {
                // Current state, not the state at opendir: a whiteout made meanwhile hides.
                let Some(pa) = node.layers().a else {
                    return Ok(false);
                };
                if node.id == ROOT_ID && cname.as_c_str() == WORK_DIR {
                    return Ok(true);
                }
                match self.a().lookup(ctx, pa, &cname) {
                    Ok(e) => {
                        self.a().forget(ctx, e.inode, 1);
                        Ok(true)
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    pub(super) fn do_readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
        plus: bool,
    ) -> io::Result<()> {
        let h = self.handle(handle)?;
        let Handle::Dir { node, a, b } = &*h else {
            return Err(errno(libc::EBADF));
        };
        if node.id != inode {
            return Err(errno(libc::EBADF));
        }
        let parent_id = node.parent_and_name().map(|(p, _)| p.id).unwrap_or(ROOT_ID);
        self.walk(
            ctx,
            node,
            *a,
            *b,
            offset,
            &mut |name, layer, ino, dtype, off| {
                if name == b"." || name == b".." {
                    let d = DirEntry {
                        ino: if name == b"." { node.id } else { parent_id },
                        offset: off,
                        type_: dtype,
                        name,
                    };
                    return Ok(add_entry(d, Entry::default())? > 0);
                }
                if !plus {
                    let ino = self
                        .shared
                        .find((layer, ino))
                        .map(|n| n.id)
                        .unwrap_or_else(|| self.shared.derive_id((layer, ino)));
                    let d = DirEntry {
                        ino,
                        offset: off,
                        type_: dtype,
                        name,
                    };
                    return Ok(add_entry(d, Entry::default())? > 0);
                }
                let Ok(cname) = CString::new(name) else {
                    return Ok(true);
                };
                let e = match self.lookup_child(ctx, node, &cname) {
                    Ok(e) => e,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(true),
                    Err(e) => return Err(e),
                };
                let id = e.inode;
                let d = DirEntry {
                    ino: id,
                    offset: off,
                    type_: (e.attr.st_mode as u32 & libc::S_IFMT as u32) >> 12,
                    name,
                };
                let undo = || {
                    if let Some(n) = self.nodes.get(id) {
                        self.nodes.dec(&n, 1);
                    }
                };
                match add_entry(d, e) {
                    Ok(0) => {
                        undo();
                        Ok(false)
                    }
                    Ok(_) => Ok(true),
                    Err(err) => {
                        undo();
                        Err(err)
                    }
                }
            },
        )
    }

    /// Whether the merged directory (A inode `a`, B inode `b`) has no visible entry.
    fn merged_empty(&self, ctx: &Context, node: &Arc<Node>) -> io::Result<bool> {
        let l = node.layers();
        let mut a = None;
        let mut b = None;
        let mut result = Ok(true);
        if let Some(ino) = l.a {
            let (fh, _) = self.a().opendir(ctx, ino, 0)?;
            a = Some((ino, fh.unwrap_or(0)));
        }
        if let Some(ino) = l.b {
            match self.b().opendir(ctx, ino, 0) {
                Ok((fh, _)) => b = Some((ino, fh.unwrap_or(0))),
                Err(e) => result = Err(e),
            }
        }
        if result.is_ok() {
            let mut empty = true;
            result = self
                .walk(ctx, node, a, b, 2, &mut |_, _, _, _, _| {
                    empty = false;
                    Ok(false)
                })
                .map(|()| empty);
        }
        if let Some((ino, fh)) = a {
            let _ = self.a().releasedir(ctx, ino, 0, fh);
        }
        if let Some((ino, fh)) = b {
            let _ = self.b().releasedir(ctx, ino, 0, fh);
        }
        result
    }

    /// Removes the whiteouts inside A directory `ino` (before it is removed or replaced).
    fn clear_whiteouts(&self, ctx: &Context, ino: u64) -> io::Result<()> {
        let (fh, _) = self.a().opendir(ctx, ino, 0)?;
        let fh = fh.unwrap_or(0);
        let mut names = Vec::new();
        let mut cookie = 0;
        let res = loop {
            let mut n = 0;
            let r = self
                .a()
                .readdir(ctx, ino, fh, 1 << 16, cookie, &mut |d: DirEntry| {
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
        let _ = self.a().releasedir(ctx, ino, 0, fh);
        res?;
        for name in names {
            let Ok(c) = CString::new(name) else { continue };
            if let Ok(e) = self.a().lookup(ctx, ino, &c) {
                let w = is_whiteout(self.a(), &e);
                self.a().forget(ctx, e.inode, 1);
                if w {
                    self.a().unlink(ctx, ino, &c)?;
                }
            }
        }
        Ok(())
    }

    /// Makes a whiteout in the staging directory, ready to be moved over a name in the A
    /// directory `pa` (which is marked as holding whiteouts first, so that no listing ever
    /// misses it). Nothing the guest can see changes; on failure nothing is left behind.
    pub(super) fn stage_whiteout(&self, pa: u64) -> io::Result<StagedWhiteout<'_>> {
        let ctx = Context::new();
        let a = self.a();
        let work = self.work_dir()?;
        let name = CString::new(format!("wh-{:016x}", rand::random::<u64>()))
            .map_err(|_| errno(libc::EINVAL))?;
        let args = CreateIn {
            flags: (libc::O_WRONLY | libc::O_EXCL) as u32,
            mode: 0o600,
            umask: 0,
            fuse_flags: 0,
        };
        let (e, fh, _, _) = a.create(&ctx, work, &name, args)?;
        if let Some(fh) = fh {
            let _ = a.release(&ctx, e.inode, 0, fh, false, false, None);
        }
        let staged = StagedWhiteout {
            fs: self,
            work,
            name,
            pending: true,
        };
        let marked = if has_whiteouts(a, pa) {
            Ok(())
        } else {
            a.setxattr(&ctx, pa, OPAQUE_XATTR, b"x", 0)
        };
        let made = marked.and_then(|()| a.setxattr(&ctx, e.inode, WHITEOUT_XATTR, b"y", 0));
        a.forget(&ctx, e.inode, 1);
        // On error `staged` is dropped, which removes the file.
        made.map(|()| staged)
    }

    /// Records a whiteout for the free `name` in A directory `pa`.
    ///
    /// The whiteout (an empty file marked with [`WHITEOUT_XATTR`]) is made in the staging
    /// directory and renamed into place, so it appears whole or not at all.
    pub(super) fn make_whiteout(&self, pa: u64, name: &CStr) -> io::Result<()> {
        self.stage_whiteout(pa)?.rename_to(pa, name)
    }

    /// Removes A's directory `pa/name`, which shadows a B entry, replacing it with a whiteout
    /// in one step: the whiteout is made first and exchanged with the directory (the effect
    /// of `RENAME_WHITEOUT`), so a failure (a full A) changes nothing. The directory, now in
    /// the staging area, is then emptied of its whiteouts and removed; should that fail it
    /// is left there (the staging area is emptied when a DualFs is built).
    fn replace_dir_with_whiteout(
        &self,
        ctx: &Context,
        pa: u64,
        name: &CStr,
        up_ino: u64,
    ) -> io::Result<()> {
        let mut w = self.stage_whiteout(pa)?;
        self.a()
            .rename(ctx, w.work, &w.name, pa, name, RENAME_EXCHANGE)?;
        // The staged name now holds the removed directory.
        w.pending = false;
        let removed = self
            .clear_whiteouts(ctx, up_ino)
            .and_then(|()| self.a().rmdir(ctx, w.work, &w.name));
        if let Err(e) = removed {
            tracing::warn!("DualFs: removed directory left in the staging area: {e}");
        }
        Ok(())
    }

    /// unlink (`dir == false`) and rmdir.
    pub(super) fn do_remove(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        dir: bool,
    ) -> io::Result<()> {
        name::validate(name)?;
        let parent = self.dir_node(parent)?;
        self.check(Op::Remove, &parent, Some(name))?;
        let mut probe = self.probe(ctx, &parent, name, true)?;
        let kind = probe.kind().ok_or_else(|| errno(libc::ENOENT))?;
        let is_dir = kind == libc::S_IFDIR as u32;
        if dir && !is_dir {
            return Err(errno(libc::ENOTDIR));
        }
        if !dir && is_dir {
            return Err(errno(libc::EISDIR));
        }
        let lower_exists = probe.lower.is_some();
        if let Some(up) = probe.visible_upper() {
            let up_ino = up.inode;
            let pa = parent.layers().a.ok_or_else(|| errno(libc::EIO))?;
            // With a B entry below, the A entry is replaced by a whiteout in one step (a
            // full A fails before anything changes), never removed first.
            if dir {
                let (node, _) = self.node_from_probe(&parent, name, &mut probe)?;
                if !self.merged_empty(ctx, &node)? {
                    return Err(errno(libc::ENOTEMPTY));
                }
                if lower_exists {
                    self.replace_dir_with_whiteout(ctx, pa, name, up_ino)?;
                } else {
                    self.clear_whiteouts(ctx, up_ino)?;
                    self.a().rmdir(ctx, pa, name)?;
                }
                self.shared.clear_origin(up_ino);
            } else {
                let last = probe.visible_upper().is_some_and(|u| u.attr.st_nlink <= 1);
                if lower_exists {
                    // Renaming the whiteout over the file replaces it atomically.
                    self.stage_whiteout(pa)?.rename_to(pa, name)?;
                } else {
                    self.a().unlink(ctx, pa, name)?;
                }
                if last {
                    self.shared.clear_origin(up_ino);
                }
            }
            return Ok(());
        }
        // Only in B.
        let (node, _) = self.node_from_probe(&parent, name, &mut probe)?;
        if let LowerWrite::Refuse(e) = self
            .policy
            .lower_write(Op::Remove, &self.path(&parent, Some(name.to_bytes())))
        {
            return Err(errno(e));
        }
        if dir && !self.merged_empty(ctx, &node)? {
            return Err(errno(libc::ENOTEMPTY));
        }
        let pa = self.copy_up(&parent, None)?;
        self.make_whiteout(pa, name)
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
        name::validate(oldname)?;
        name::validate(newname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(errno(libc::EINVAL));
        }
        let exchange = flags & RENAME_EXCHANGE != 0;
        let op_ = self.dir_node(olddir)?;
        let np = self.dir_node(newdir)?;
        self.check(Op::Rename, &op_, Some(oldname))?;
        self.check(Op::Rename, &np, Some(newname))?;
        if np.id == ROOT_ID && newname == WORK_DIR {
            return Err(errno(libc::EPERM));
        }
        let mut sp = self.probe(ctx, &op_, oldname, true)?;
        if !sp.exists() {
            return Err(errno(libc::ENOENT));
        }
        let src_lower = sp.lower.is_some();
        let (src, _) = self.node_from_probe(&op_, oldname, &mut sp)?;
        drop(sp);
        let mut dp = self.probe(ctx, &np, newname, true)?;
        let dst_exists = dp.exists();
        let dst_lower = dp.lower.is_some();
        let dst_whiteout = dp.whiteout();
        if flags & RENAME_NOREPLACE != 0 && dst_exists {
            return Err(errno(libc::EEXIST));
        }
        if exchange && !dst_exists {
            return Err(errno(libc::ENOENT));
        }
        let dst = if dst_exists {
            Some(self.node_from_probe(&np, newname, &mut dp)?.0)
        } else {
            None
        };
        drop(dp);
        let has_b = |n: &Node| {
            let l = n.layers();
            l.b.is_some() || l.a.is_none()
        };
        if src.is_dir() && has_b(&src) {
            return Err(errno(libc::EXDEV));
        }
        if let Some(d) = &dst {
            if Arc::ptr_eq(d, &src) {
                return Ok(());
            }
            if exchange && d.is_dir() && has_b(d) {
                return Err(errno(libc::EXDEV));
            }
            if !exchange {
                match (src.is_dir(), d.is_dir()) {
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, true) if !self.merged_empty(ctx, d)? => {
                        return Err(errno(libc::ENOTEMPTY))
                    }
                    _ => {}
                }
            }
        }
        self.copy_up(&src, Some(Op::Rename))?;
        if exchange {
            if let Some(d) = &dst {
                self.copy_up(d, Some(Op::Rename))?;
            }
        }
        let pa_old = self.copy_up(&op_, None)?;
        let pa_new = self.copy_up(&np, None)?;
        // Everything that can fail for lack of room in A comes first: the old name's
        // whiteout is staged, and a directory moving over a B entry is made opaque (it has
        // no B content of its own, so this shows nothing yet).
        let whiteout = if src_lower && !exchange {
            Some(self.stage_whiteout(pa_old)?)
        } else {
            None
        };
        if src.is_dir() && dst_lower && !exchange {
            if let Some(sa) = src.layers().a {
                self.a()
                    .setxattr(&Context::new(), sa, OPAQUE_XATTR, b"y", 0)?;
            }
        }
        // A non-directory simply replaces a whiteout at the new name; a directory cannot.
        let unlinked_whiteout = dst_whiteout && !exchange && src.is_dir();
        if unlinked_whiteout {
            self.a().unlink(ctx, pa_new, newname)?;
        }
        if let Some(d) = &dst {
            if !exchange && d.is_dir() {
                if let Some(da) = d.layers().a {
                    self.clear_whiteouts(ctx, da)?;
                }
            }
        }
        // The guest sees no entry where A has a whiteout: `RENAME_NOREPLACE` (checked above
        // against what the guest sees) must not refuse to replace the whiteout.
        let a_flags = if dst_whiteout && !exchange {
            flags & !RENAME_NOREPLACE
        } else {
            flags
        };
        let res = match whiteout {
            Some(w) => {
                self.rename_leaving_whiteout(ctx, w, pa_old, oldname, pa_new, newname, a_flags)
            }
            None => self
                .a()
                .rename(ctx, pa_old, oldname, pa_new, newname, a_flags),
        };
        if let Err(e) = res {
            if unlinked_whiteout {
                let _ = self.make_whiteout(pa_new, newname);
            }
            return Err(e);
        }
        src.set_parent(np.clone(), newname.to_owned());
        if exchange {
            if let Some(d) = &dst {
                d.set_parent(op_.clone(), oldname.to_owned());
            }
        }
        Ok(())
    }

    /// Renames A's `pa_old/oldname` (which shadows a B entry) to `pa_new/newname`, leaving
    /// the staged whiteout `w` at the old name, all or nothing: the whiteout is exchanged
    /// with the source (which moves to the staging area), then the source is renamed to its
    /// new name; if that fails the exchange is undone.
    #[allow(clippy::too_many_arguments)]
    fn rename_leaving_whiteout(
        &self,
        ctx: &Context,
        mut w: StagedWhiteout<'_>,
        pa_old: u64,
        oldname: &CStr,
        pa_new: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let a = self.a();
        a.rename(ctx, w.work, &w.name, pa_old, oldname, RENAME_EXCHANGE)?;
        match a.rename(ctx, w.work, &w.name, pa_new, newname, flags) {
            Ok(()) => {
                w.pending = false;
                Ok(())
            }
            Err(e) => {
                if let Err(back) = a.rename(ctx, w.work, &w.name, pa_old, oldname, RENAME_EXCHANGE)
                {
                    w.pending = false;
                    tracing::error!(
                        "DualFs: cannot put back {oldname:?} after a failed rename ({e}): {back}; \
                         it is left in the staging area"
                    );
                }
                Err(e)
            }
        }
    }
}

/// A whiteout made in the staging directory and not yet moved into place; removed on drop
/// while `pending`.
pub(super) struct StagedWhiteout<'a> {
    fs: &'a DualFs,
    work: u64,
    name: CString,
    pending: bool,
}

impl StagedWhiteout<'_> {
    /// Moves the whiteout to `pa/name`, replacing a non-directory there (atomically).
    pub(super) fn rename_to(mut self, pa: u64, name: &CStr) -> io::Result<()> {
        self.fs
            .a()
            .rename(&Context::new(), self.work, &self.name, pa, name, 0)?;
        self.pending = false;
        Ok(())
    }
}

impl Drop for StagedWhiteout<'_> {
    fn drop(&mut self) {
        if self.pending {
            let _ = self.fs.a().unlink(&Context::new(), self.work, &self.name);
        }
    }
}
