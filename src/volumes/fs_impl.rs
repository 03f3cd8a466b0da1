//! Request dispatch: every operation decodes its node (and handle) to a volume and the
//! volume's own ids, applies the volume's options, and translates the reply back.

// Casts between libc integer types differ per platform (u16 vs u32 modes).
#![allow(clippy::unnecessary_cast)]

use std::ffi::CStr;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::ATTR_SUBMOUNT;

use super::ids::{self, INDIRECT};
use super::{Table, Volume, VolumeFs};
use crate::{
    errno, stat64, statvfs64, Context, CreateIn, DirEntry, Entry, FileLock, FileSystem, FsOptions,
    GetxattrReply, IoctlData, ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader,
    ZeroCopyWriter,
};

/// One entry of a merged listing (a directory with mount points).
pub(crate) struct Listed {
    name: Vec<u8>,
    ino: u64,
    dtype: u32,
    kind: Kind,
}

enum Kind {
    /// `.` or `..`.
    Dot,
    /// An entry of the directory's own backend.
    Plain,
    /// A mount point.
    Mount(Arc<Volume>),
}

impl Volume {
    /// The backend id of a local id.
    #[inline]
    fn inner(&self, local: u64) -> io::Result<u64> {
        if local & INDIRECT == 0 && !self.mapped_only {
            Ok(local)
        } else {
            self.nodes.inner(local)
        }
    }

    /// The guest id of backend id `inner`, counting `refs` references on a mapped id.
    #[inline]
    fn outer(&self, inner: u64, refs: u64) -> io::Result<u64> {
        if inner < INDIRECT && !self.mapped_only {
            Ok(self.tag | inner)
        } else {
            Ok(self.tag | self.nodes.local(inner, refs)?)
        }
    }

    /// The guest id of a backend id in a listing (no reference).
    fn outer_uncounted(&self, inner: u64) -> u64 {
        self.outer(inner, 0).unwrap_or(0)
    }

    #[inline]
    fn hidden(&self, dir: u64, name: &[u8]) -> bool {
        !self.hide.is_empty() && self.hide.iter().any(|p| p.hides(name, dir == self.root))
    }

    #[inline]
    fn writable(&self) -> io::Result<()> {
        if self.opts.readonly {
            Err(errno(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// Whether `inner` is this volume's root as a mount point (not the device root).
    #[inline]
    fn is_mount_root(&self, inner: u64) -> bool {
        self.slot != 0 && inner == self.root
    }

    /// Registers an open before it reaches the backend (see `VolumeFs::detach`).
    fn begin_open(&self) -> io::Result<()> {
        self.open.fetch_add(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return Err(errno(libc::ESTALE));
        }
        Ok(())
    }

    fn end_open(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }

    /// The guest handle for a backend handle.
    fn handle_out(&self, fh: Option<u64>) -> io::Result<Option<u64>> {
        if self.slot == 0 && fh.is_none_or(|h| h < INDIRECT) {
            return Ok(fh);
        }
        let h = fh.unwrap_or(0);
        if h < INDIRECT {
            Ok(Some(self.tag | h))
        } else {
            Ok(Some(self.tag | self.handles.local(h, 1)?))
        }
    }

    /// The backend handle of a guest handle, which must belong to this volume (`EBADF`).
    #[inline]
    fn handle_in(&self, fh: u64) -> io::Result<u64> {
        let (slot, gen, local) = ids::split(fh);
        if slot != self.slot || gen != self.gen {
            return Err(errno(libc::EBADF));
        }
        if local & INDIRECT == 0 {
            Ok(local)
        } else {
            self.handles.inner(local).map_err(|_| errno(libc::EBADF))
        }
    }

    /// Forgets a guest handle's mapping.
    fn handle_done(&self, fh: u64) {
        let local = fh & ids::LOCAL_MASK;
        if local & INDIRECT != 0 {
            self.handles.put(local, 1);
        }
    }

    /// The guest's view of a backend attribute of node `inner` (guest id `outer`).
    #[inline]
    fn patch(&self, inner: u64, outer: u64, st: &mut stat64) {
        if st.st_ino as u64 == inner {
            st.st_ino = outer as _;
        }
        if inner == self.root && self.slot != 0 {
            if let Some((uid, gid)) = self.opts.owner {
                st.st_uid = uid;
                st.st_gid = gid;
            }
            if let Some(mode) = self.opts.mode {
                st.st_mode = ((st.st_mode as u32 & libc::S_IFMT as u32) | mode) as _;
            }
        }
    }
}

/// ENOSYS on an xattr call makes the guest kernel stop sending that call for the whole mount:
/// a volume without xattrs answers `EOPNOTSUPP` instead.
fn xattr_errno<T>(v: &Volume, r: io::Result<T>) -> io::Result<T> {
    match r {
        Err(e) if v.slot != 0 && e.raw_os_error() == Some(libc::ENOSYS) => {
            Err(errno(libc::EOPNOTSUPP))
        }
        r => r,
    }
}

/// Write access in open flags.
fn wants_write(flags: u32) -> bool {
    let f = flags as i32;
    (f & libc::O_ACCMODE) != libc::O_RDONLY || (f & libc::O_TRUNC) != 0
}

/// Decodes a guest node id into its volume and the volume's id.
#[inline]
fn node(t: &Table, id: u64) -> io::Result<(&Arc<Volume>, u64)> {
    let (slot, gen, local) = ids::split(id);
    let v = t.volume(slot, gen).ok_or_else(|| errno(libc::ESTALE))?;
    let inner = v.inner(local)?;
    Ok((v, inner))
}

impl VolumeFs {
    /// The backend entry `e` of volume `v`, with guest ids (one reference counted).
    fn entry_out(&self, ctx: &Context, v: &Volume, mut e: Entry) -> io::Result<Entry> {
        self.entry_fix(ctx, v, &mut e)?;
        Ok(e)
    }

    /// [`Self::entry_out`] in place (the entry is not copied: it is large).
    #[inline]
    fn entry_fix(&self, ctx: &Context, v: &Volume, e: &mut Entry) -> io::Result<()> {
        if e.inode == 0 {
            return Ok(());
        }
        let inner = e.inode;
        let outer = match v.outer(inner, 1) {
            Ok(o) => o,
            Err(err) => {
                v.fs.forget(ctx, inner, 1);
                return Err(err);
            }
        };
        e.inode = outer;
        if let Some((entry, attr)) = self.cache.imposed_timeouts() {
            e.entry_timeout = entry;
            e.attr_timeout = attr;
        }
        v.patch(inner, outer, &mut e.attr);
        if v.is_mount_root(inner) && self.submounts.load(Ordering::Relaxed) {
            e.attr_flags |= ATTR_SUBMOUNT;
        }
        Ok(())
    }

    /// The entry of a volume's root, as its mount point shows it. The table holds the root,
    /// so no backend reference is taken and the guest's forgets of it are not passed on.
    fn root_entry(&self, ctx: &Context, v: &Volume) -> io::Result<Entry> {
        let (attr, timeout) = v.fs.getattr(ctx, v.root, None)?;
        let e = Entry {
            inode: v.root,
            generation: 0,
            attr,
            attr_flags: 0,
            attr_timeout: timeout,
            entry_timeout: timeout,
        };
        let mut e = self.entry_out(ctx, v, e)?;
        // The guest kernel makes a submount's mount-point inode with generation 0 and, in
        // READDIRPLUS, drops a dentry whose entry has another generation as stale — which
        // unmounts the volume under the guest's processes at every listing of its parent. A
        // submount's entry carries generation 0 (its node id holds the volume's generation).
        e.generation = if e.attr_flags & ATTR_SUBMOUNT != 0 {
            0
        } else {
            v.gen as u64
        };
        Ok(e)
    }

    /// A directory about to gain entry `name`: its volume (writable), its backend id; a mount
    /// point there is `EEXIST`, a hidden name `EACCES`.
    fn dir_for_new<'t>(
        &self,
        t: &'t Table,
        parent: u64,
        name: &CStr,
    ) -> io::Result<(&'t Arc<Volume>, u64)> {
        let (v, dir) = node(t, parent)?;
        v.writable()?;
        let n = name.to_bytes();
        if t.mount(v.slot, dir, n).is_some() {
            return Err(errno(libc::EEXIST));
        }
        if v.hidden(dir, n) {
            return Err(errno(libc::EACCES));
        }
        Ok((v, dir))
    }

    /// A directory about to lose entry `name`: a mount point there is `EBUSY`, a hidden
    /// name `ENOENT`.
    fn dir_for_removal<'t>(
        &self,
        t: &'t Table,
        parent: u64,
        name: &CStr,
    ) -> io::Result<(&'t Arc<Volume>, u64)> {
        let (v, dir) = node(t, parent)?;
        let n = name.to_bytes();
        if t.mount(v.slot, dir, n).is_some() {
            return Err(errno(libc::EBUSY));
        }
        if v.hidden(dir, n) {
            return Err(errno(libc::ENOENT));
        }
        v.writable()?;
        Ok((v, dir))
    }

    /// The guest id of the directory a volume is mounted in (`..` of its root).
    fn up_ino(&self, t: &Table, v: &Volume) -> Option<u64> {
        let &(slot, dir) = t.up.get(&v.slot)?;
        let p = t.slots.get(slot)?.as_ref()?;
        Some(p.outer_uncounted(dir))
    }

    /// The guest id for a listed backend entry.
    fn listed_ino(&self, t: &Table, v: &Volume, dir: u64, name: &[u8], ino: u64) -> u64 {
        if name == b"." {
            return v.outer_uncounted(dir);
        }
        if name == b".." && v.is_mount_root(dir) {
            if let Some(up) = self.up_ino(t, v) {
                return up;
            }
        }
        v.outer_uncounted(ino)
    }

    /// Reads a directory with mount points whole, merging them in (a mount point shadows an
    /// entry of the same name) and leaving hidden names out.
    fn merged(
        &self,
        ctx: &Context,
        t: &Table,
        v: &Volume,
        dir: u64,
        fh: u64,
    ) -> io::Result<Vec<Listed>> {
        let mounts = t.mounts.get(&(v.slot, dir));
        let mut out: Vec<Listed> = Vec::new();
        let mut offset = 0;
        loop {
            let mut last = offset;
            v.fs.readdir(ctx, dir, fh, 1 << 20, offset, &mut |d: DirEntry| {
                last = d.offset;
                let shadowed = mounts.is_some_and(|m| m.iter().any(|m| m.name == d.name));
                if !shadowed && !v.hidden(dir, d.name) {
                    let dot = d.name == b"." || d.name == b"..";
                    out.push(Listed {
                        name: d.name.to_vec(),
                        ino: self.listed_ino(t, v, dir, d.name, d.ino),
                        dtype: d.type_,
                        kind: if dot { Kind::Dot } else { Kind::Plain },
                    });
                }
                Ok(1)
            })?;
            if last == offset {
                break;
            }
            offset = last;
        }
        for m in mounts.into_iter().flatten() {
            if v.hidden(dir, &m.name) {
                continue;
            }
            out.push(Listed {
                name: m.name.clone(),
                ino: m.vol.outer_uncounted(m.vol.root),
                dtype: if m.vol.root_is_dir {
                    libc::DT_DIR as u32
                } else {
                    libc::DT_REG as u32
                },
                kind: Kind::Mount(m.vol.clone()),
            });
        }
        Ok(out)
    }

    /// The merged listing of a directory with mount points for guest handle `gfh` (built at
    /// offset 0, kept until `releasedir`).
    #[allow(clippy::too_many_arguments)]
    fn listing(
        &self,
        ctx: &Context,
        t: &Table,
        v: &Volume,
        dir: u64,
        fh: u64,
        gfh: u64,
        offset: u64,
    ) -> io::Result<Arc<Vec<Listed>>> {
        if offset != 0 {
            if let Some(l) = self.listings.lock().get(&gfh) {
                return Ok(l.clone());
            }
        }
        let l = Arc::new(self.merged(ctx, t, v, dir, fh)?);
        self.has_listings.store(true, Ordering::Release);
        self.listings.lock().insert(gfh, l.clone());
        Ok(l)
    }

    #[allow(clippy::too_many_arguments)]
    fn do_readdir(
        &self,
        ctx: &Context,
        inode: u64,
        gfh: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
        plus: bool,
    ) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, dir) = node(t, inode)?;
        let fh = v.handle_in(gfh)?;
        if t.mounts.contains_key(&(v.slot, dir)) {
            let list = self.listing(ctx, t, v, dir, fh, gfh, offset)?;
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            for (i, l) in list.iter().enumerate().skip(start) {
                let d = DirEntry {
                    ino: l.ino,
                    offset: i as u64 + 1,
                    type_: l.dtype,
                    name: &l.name,
                };
                if !plus {
                    if add_entry(d, Entry::default())? == 0 {
                        break;
                    }
                    continue;
                }
                let e = match &l.kind {
                    Kind::Dot => Entry::default(),
                    Kind::Mount(m) => match self.root_entry(ctx, m) {
                        Ok(e) => e,
                        Err(_) => continue,
                    },
                    Kind::Plain => {
                        let Ok(name) = std::ffi::CString::new(l.name.clone()) else {
                            continue;
                        };
                        match v.fs.lookup(ctx, dir, &name) {
                            Ok(e) => self.entry_out(ctx, v, e)?,
                            Err(_) => continue,
                        }
                    }
                };
                let counted = matches!(l.kind, Kind::Plain) && e.inode != 0;
                let ino = e.inode;
                let d = DirEntry {
                    ino: if counted { ino } else { d.ino },
                    ..d
                };
                match add_entry(d, e) {
                    Ok(0) => {
                        if counted {
                            self.forget(ctx, ino, 1);
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        if counted {
                            self.forget(ctx, ino, 1);
                        }
                        return Err(err);
                    }
                }
            }
            return Ok(());
        }
        let mut hidden: Vec<u64> = Vec::new();
        let r = if plus {
            v.fs.readdirplus(ctx, dir, fh, size, offset, &mut |mut d, e| {
                if v.hidden(dir, d.name) {
                    if e.inode != 0 {
                        hidden.push(e.inode);
                    }
                    return Ok(1);
                }
                d.ino = self.listed_ino(t, v, dir, d.name, d.ino);
                if e.inode == 0 {
                    return add_entry(d, e);
                }
                let inner = e.inode;
                let e = self.entry_out(ctx, v, e)?;
                let outer = e.inode;
                d.ino = outer;
                let r = add_entry(d, e);
                if !matches!(r, Ok(n) if n > 0) && inner >= INDIRECT {
                    // The backend takes its own reference back; give back the mapping's.
                    v.nodes.put(outer & ids::LOCAL_MASK, 1);
                }
                r
            })
        } else {
            v.fs.readdir(ctx, dir, fh, size, offset, &mut |mut d| {
                if v.hidden(dir, d.name) {
                    return Ok(1);
                }
                d.ino = self.listed_ino(t, v, dir, d.name, d.ino);
                add_entry(d, Entry::default())
            })
        };
        for ino in hidden {
            v.fs.forget(ctx, ino, 1);
        }
        r
    }
}

impl FileSystem for VolumeFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.init_all(capable)
    }

    fn destroy(&self) {
        self.destroy_all()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, dir) = node(t, parent)?;
        let n = name.to_bytes();
        if v.hidden(dir, n) {
            return Err(errno(libc::ENOENT));
        }
        if let Some(m) = t.mount(v.slot, dir, n) {
            return self.root_entry(ctx, m);
        }
        let mut r = v.fs.lookup(ctx, dir, name);
        if let Ok(e) = &mut r {
            if let Err(err) = self.entry_fix(ctx, v, e) {
                r = Err(err);
            }
        }
        r
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        let guard = self.table.load();
        let t: &Table = &guard;
        let Ok((v, inner)) = node(t, inode) else {
            return;
        };
        if v.is_mount_root(inner) {
            return;
        }
        let local = inode & ids::LOCAL_MASK;
        if local & INDIRECT != 0 {
            v.nodes.put(local, count);
        }
        v.fs.forget(ctx, inner, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.forget(ctx, inode, count);
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        let fh = match handle {
            Some(h) => Some(v.handle_in(h)?),
            None => None,
        };
        let mut r = v.fs.getattr(ctx, inner, fh);
        if let Ok((st, timeout)) = &mut r {
            v.patch(inner, inode, st);
            *timeout = self.cache.attr(*timeout);
        }
        r
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        v.writable()?;
        if v.is_mount_root(inner)
            && ((v.opts.mode.is_some() && valid.contains(SetattrValid::MODE))
                || (v.opts.owner.is_some()
                    && valid.intersects(SetattrValid::UID | SetattrValid::GID)))
        {
            return Err(errno(libc::EPERM));
        }
        let fh = match handle {
            Some(h) => Some(v.handle_in(h)?),
            None => None,
        };
        let (mut st, d) = v.fs.setattr(ctx, inner, attr, fh, valid)?;
        v.patch(inner, inode, &mut st);
        Ok((st, d))
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        v.fs.readlink(ctx, inner)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, dir) = self.dir_for_new(t, parent, name)?;
        let e = v.fs.symlink(ctx, linkname, dir, name)?;
        self.entry_out(ctx, v, e)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, dir) = self.dir_for_new(t, parent, name)?;
        let e = v.fs.mknod(ctx, dir, name, mode, rdev, umask)?;
        self.entry_out(ctx, v, e)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, dir) = self.dir_for_new(t, parent, name)?;
        let e = v.fs.mkdir(ctx, dir, name, mode, umask)?;
        self.entry_out(ctx, v, e)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, dir) = self.dir_for_removal(t, parent, name)?;
        v.fs.unlink(ctx, dir, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, dir) = self.dir_for_removal(t, parent, name)?;
        v.fs.rmdir(ctx, dir, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v1, _) = node(t, olddir)?;
        let (v2, d2) = node(t, newdir)?;
        if !Arc::ptr_eq(v1, v2) {
            return Err(errno(libc::EXDEV));
        }
        let (v, d1) = self.dir_for_removal(t, olddir, oldname)?;
        let new = newname.to_bytes();
        if t.mount(v.slot, d2, new).is_some() {
            return Err(errno(libc::EBUSY));
        }
        if v.hidden(d2, new) {
            return Err(errno(libc::EACCES));
        }
        v.fs.rename(ctx, d1, oldname, d2, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v1, inner) = node(t, inode)?;
        let (v2, _) = node(t, newparent)?;
        if !Arc::ptr_eq(v1, v2) || v1.is_mount_root(inner) {
            return Err(errno(libc::EXDEV));
        }
        let (v, dir) = self.dir_for_new(t, newparent, newname)?;
        let e = v.fs.link(ctx, inner, dir, newname)?;
        self.entry_out(ctx, v, e)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        if wants_write(flags) {
            v.writable()?;
        }
        v.begin_open()?;
        let r = v.fs.open(ctx, inner, flags, fuse_flags);
        match r {
            Ok((fh, o, p)) => match v.handle_out(fh) {
                Ok(h) => Ok((h, self.cache.open(o, false), p)),
                Err(e) => {
                    let _ =
                        v.fs.release(ctx, inner, flags, fh.unwrap_or(0), false, false, None);
                    v.end_open();
                    Err(e)
                }
            },
            Err(e) => {
                v.end_open();
                Err(e)
            }
        }
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, dir) = self.dir_for_new(t, parent, name)?;
        v.begin_open()?;
        let (e, fh, o, p) = match v.fs.create(ctx, dir, name, args) {
            Ok(r) => r,
            Err(e) => {
                v.end_open();
                return Err(e);
            }
        };
        let inner = e.inode;
        let done = self
            .entry_out(ctx, v, e)
            .and_then(|e| v.handle_out(fh).map(|h| (e, h)));
        match done {
            Ok((e, h)) => Ok((e, h, self.cache.open(o, false), p)),
            Err(err) => {
                let _ =
                    v.fs.release(ctx, inner, args.flags, fh.unwrap_or(0), false, false, None);
                v.end_open();
                Err(err)
            }
        }
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        let fh = v.handle_in(handle)?;
        v.fs.read(ctx, inner, fh, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        v.writable()?;
        let fh = v.handle_in(handle)?;
        v.fs.write(
            ctx,
            inner,
            fh,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        let fh = v.handle_in(handle)?;
        v.fs.flush(ctx, inner, fh, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        let fh = v.handle_in(handle)?;
        v.fs.fsync(ctx, inner, datasync, fh)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        v.writable()?;
        let fh = v.handle_in(handle)?;
        v.fs.fallocate(ctx, inner, fh, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        // A handle of a detached volume was ended by the detach.
        let Ok((v, inner)) = node(t, inode) else {
            return Ok(());
        };
        let fh = v.handle_in(handle)?;
        let r =
            v.fs.release(ctx, inner, flags, fh, flush, flock_release, lock_owner);
        v.handle_done(handle);
        v.end_open();
        r
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        v.fs.statfs(ctx, inner)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        v.writable()?;
        xattr_errno(v, v.fs.setxattr(ctx, inner, name, value, flags))
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        xattr_errno(v, v.fs.getxattr(ctx, inner, name, size))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        xattr_errno(v, v.fs.listxattr(ctx, inner, size))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        v.writable()?;
        xattr_errno(v, v.fs.removexattr(ctx, inner, name))
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        v.begin_open()?;
        match v.fs.opendir(ctx, inner, flags) {
            Ok((fh, o)) => match v.handle_out(fh) {
                Ok(h) => Ok((h, self.cache.open(o, true))),
                Err(e) => {
                    let _ = v.fs.releasedir(ctx, inner, flags, fh.unwrap_or(0));
                    v.end_open();
                    Err(e)
                }
            },
            Err(e) => {
                v.end_open();
                Err(e)
            }
        }
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(
            ctx,
            inode,
            handle,
            size,
            offset,
            &mut |d, _| add_entry(d),
            false,
        )
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(ctx, inode, handle, size, offset, add_entry, true)
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        let fh = v.handle_in(handle)?;
        v.fs.fsyncdir(ctx, inner, datasync, fh)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let Ok((v, inner)) = node(t, inode) else {
            return Ok(());
        };
        let fh = v.handle_in(handle)?;
        if self.has_listings.load(Ordering::Acquire) {
            self.listings.lock().remove(&handle);
        }
        let r = v.fs.releasedir(ctx, inner, flags, fh);
        v.handle_done(handle);
        v.end_open();
        r
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        if mask & libc::W_OK as u32 != 0 {
            v.writable()?;
        }
        if v.is_mount_root(inner) && (v.opts.mode.is_some() || v.opts.owner.is_some()) {
            let (mut st, _) = v.fs.getattr(ctx, inner, None)?;
            v.patch(inner, inode, &mut st);
            return check_access(ctx, &st, mask);
        }
        v.fs.access(ctx, inner, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        let fh = v.handle_in(handle)?;
        v.fs.lseek(ctx, inner, fh, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        let fh = v.handle_in(handle)?;
        v.fs.getlk(ctx, inner, fh, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        let fh = v.handle_in(handle)?;
        v.fs.setlk(ctx, inner, fh, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        // Not holding the table snapshot while a lock waits: a blocked lock must not keep a
        // detached volume's table alive.
        let (fs, inner, fh) = {
            let guard = self.table.load();
            let (v, inner) = node(&guard, inode)?;
            (v.fs.clone(), inner, v.handle_in(handle)?)
        };
        fs.setlkw(ctx, inner, fh, owner, lock, flags)
    }

    fn ioctl(
        &self,
        _ctx: &Context,
        inode: u64,
        handle: u64,
        _flags: u32,
        _cmd: u32,
        _data: IoctlData,
        _out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, _) = node(t, inode)?;
        v.handle_in(handle)?;
        // The reply would borrow the volume's backend, which a detach may drop.
        Err(errno(libc::ENOTTY))
    }

    fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> io::Result<u64> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        v.fs.bmap(ctx, inner, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        khandle: u64,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        let guard = self.table.load();
        let t: &Table = &guard;
        let (v, inner) = node(t, inode)?;
        let fh = v.handle_in(handle)?;
        v.fs.poll(ctx, inner, fh, khandle, flags, events)
    }
}

/// The classic owner/group/other permission check against `st` (root passes `R`/`W`, and
/// `X` when any execute bit is set).
fn check_access(ctx: &Context, st: &stat64, mask: u32) -> io::Result<()> {
    let mask = mask & 0o7;
    if mask == 0 {
        return Ok(());
    }
    let mode = st.st_mode as u32;
    if ctx.uid == 0 {
        if mask & 1 != 0 && mode & 0o111 == 0 && !super::is_dir(mode) {
            return Err(errno(libc::EACCES));
        }
        return Ok(());
    }
    let bits = if ctx.uid == st.st_uid {
        (mode >> 6) & 7
    } else if ctx.gid == st.st_gid {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    if bits & mask == mask {
        Ok(())
    } else {
        Err(errno(libc::EACCES))
    }
}

/// Device state: the mount table, the volumes' id maps, and every volume's own state (see
/// `volumes/state.rs`).
impl crate::DynFileSystem for VolumeFs {
    /// Writes the mount table and every volume's state (volumes that cannot carry state get
    /// an empty section).
    fn save_state(&self, out: &mut dyn io::Write) -> io::Result<()> {
        self.save_state_impl(out)
    }

    /// Restores a saved state into a VolumeFs with the same mount table (same paths, slots
    /// and generations); a different table is refused before anything changes.
    fn load_state(&self, input: &mut dyn io::Read) -> io::Result<()> {
        self.load_state_impl(input)
    }
}
