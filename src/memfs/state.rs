//! Device state of a [`MemFs`]: its whole content, streamed in the [`crate::state`] format.
//!
//! The stream carries every inode (ids kept: the guest's node ids stay valid) with its
//! metadata, lookup count, xattrs and body (file data page by page, directory entries with
//! their readdir cookies, symlink targets), every open handle (number, inode, flags, file or
//! directory), and the id counters. Inodes that only an open handle keeps alive (unlinked
//! and forgotten while open) are carried too.
//!
//! * **Saving** walks the inode table and writes each inode while holding only that inode's
//!   locks; file data goes out one 4 KiB page per record, so saving needs memory for one
//!   record, not for the state (a 1 GiB MemFs saves with a few KiB of buffers plus 8 bytes
//!   per inode for the list of inodes).
//! * **Loading** builds the new tables aside, charging them as they grow and refusing a state
//!   that exceeds this MemFs's capacity, inode or handle limits (`ENOSPC`-like
//!   [`StateErrorKind::Limit`]). The stream is then checked as a whole (every directory entry,
//!   handle and parent names an inode that exists, the root is a directory, every directory
//!   reaches the root, counters lie beyond every id) and only then swapped in. On any error
//!   the MemFs is exactly as before.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use thin_vec::ThinVec;

use super::cost;
use super::data::{FileData, PAGE};
use super::node::{Body, DirNode, Meta, Node, Ts};
use super::{Handle, MemFs};
use crate::state::{
    invalid, Decoder, Encoder, StateError, StateErrorKind, StateReader, StateWriter,
};
use crate::ROOT_ID;

/// Backend kind in the stream header.
pub(crate) const KIND: &str = "memfs";

/// Counters: next inode id, next handle number.
const T_COUNTERS: u16 = 1;
/// One inode: id, in-table flag, lookups, metadata, body kind and its fixed part.
const T_NODE: u16 = 2;
/// One xattr of the last inode.
const T_XATTR: u16 = 3;
/// The small-file buffer of the last inode.
const T_SMALL: u16 = 4;
/// One 4 KiB page of the last inode.
const T_PAGE: u16 = 5;
/// One directory entry of the last inode: cookie, inode, name.
const T_DIRENT: u16 = 6;
/// One open handle.
const T_HANDLE: u16 = 7;

const B_FILE: u8 = 0;
const B_DIR: u8 = 1;
const B_SYMLINK: u8 = 2;
const B_SPECIAL: u8 = 3;

fn put_ts(e: &mut Encoder, t: Ts) {
    let Ts { sec, nsec } = t;
    e.i64(sec).u32(nsec);
}

fn get_ts(d: &mut Decoder<'_>) -> io::Result<Ts> {
    let sec = d.i64()?;
    let nsec = d.u32()?;
    if nsec >= 1_000_000_000 {
        return Err(invalid("timestamp nanoseconds out of range"));
    }
    Ok(Ts { sec, nsec })
}

/// Whether `name` is a name a guest could have made (no NUL, `/`, `.` or `..`).
pub(crate) fn valid_name(name: &[u8]) -> bool {
    std::ffi::CString::new(name).is_ok_and(|c| crate::name::validate(&c).is_ok())
}

fn limit(what: &str) -> io::Error {
    StateError::io(
        StateErrorKind::Limit,
        format!("the state's {what} exceed this MemFs's limit"),
    )
}

impl MemFs {
    /// Writes the whole filesystem; see the [module documentation](self).
    pub(crate) fn save_state_impl(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut w = StateWriter::new(out, KIND)?;
        let mut e = Encoder::new();
        e.u64(self.next_ino.load(Ordering::Acquire))
            .u64(self.next_fh.load(Ordering::Acquire));
        w.record(T_COUNTERS, e.as_slice())?;

        let mut handles = self.handles.values();
        handles.sort_unstable_by_key(|h| h.fh);
        let mut nodes: Vec<(Arc<Node>, bool)> =
            self.nodes.values().into_iter().map(|n| (n, true)).collect();
        // Inodes only open handles keep alive (unlinked and forgotten while open).
        let mut extra: HashMap<u64, Arc<Node>> = HashMap::new();
        for h in &handles {
            if self.nodes.get(h.node.ino).is_none() {
                extra.insert(h.node.ino, h.node.clone());
            }
        }
        nodes.extend(extra.into_values().map(|n| (n, false)));
        nodes.sort_unstable_by_key(|(n, _)| n.ino);

        for (node, in_table) in &nodes {
            save_node(&mut w, &mut e, node, *in_table)?;
        }
        for h in &handles {
            e.clear()
                .u64(h.fh)
                .u64(h.node.ino)
                .u32(h.flags)
                .u8(h.dir as u8);
            w.record(T_HANDLE, e.as_slice())?;
        }
        w.finish()?;
        Ok(())
    }

    /// Replaces the whole filesystem with a saved one; see the
    /// [module documentation](self).
    pub(crate) fn load_state_impl(&self, input: &mut dyn io::Read) -> io::Result<()> {
        let mut r = StateReader::new(input, KIND)?;
        // Version 1 is the only one so far; later versions dispatch here.
        let built = match r.version() {
            1 => Loader::new(self).run(&mut r)?,
            v => {
                return Err(StateError::io(
                    StateErrorKind::Version,
                    format!("MemFs cannot read format version {v}"),
                ))
            }
        };
        self.commit(built);
        Ok(())
    }

    /// Swaps a verified state in and drops the old one.
    fn commit(&self, b: Built) {
        let _g = self.rename_lock.lock();
        let old_handles = self.handles.replace_all(b.handles);
        let old_nodes = self.nodes.replace_all(b.table);
        self.next_ino.store(b.next_ino, Ordering::Release);
        self.next_fh.store(b.next_fh, Ordering::Release);
        self.open_handles.store(b.handle_count, Ordering::Release);
        // The old inodes return their charges as they go; the restored state's exact
        // charge (names included) is then set.
        drop(old_handles);
        drop(old_nodes);
        drop(b.all);
        self.usage.bytes.set(b.bytes);
        self.usage.inodes.set(b.inodes);
    }
}

fn save_node(
    w: &mut StateWriter<'_>,
    e: &mut Encoder,
    node: &Node,
    in_table: bool,
) -> io::Result<()> {
    // The data lock before the metadata lock, the order every path follows.
    let file = node.file().map(|f| f.read());
    let dir = node
        .dir()
        .map(|d| (d.parent.load(Ordering::Acquire), d.entries.read()));
    {
        let m = node.meta.lock();
        e.clear()
            .u64(node.ino)
            .u8(in_table as u8)
            .u64(node.lookups.load(Ordering::Acquire))
            .u32(m.mode)
            .u32(m.uid)
            .u32(m.gid)
            .u32(m.nlink)
            .u32(m.rdev);
        put_ts(e, m.atime);
        put_ts(e, m.mtime);
        put_ts(e, m.ctime);
        match (&node.body, &file, &dir) {
            (Body::File(_), Some(f), _) => {
                e.u8(B_FILE).u64(f.size());
            }
            (Body::Dir(_), _, Some((parent, entries))) => {
                e.u8(B_DIR).u64(*parent).u64(entries.next_cookie());
            }
            (Body::Symlink(t), _, _) => {
                e.u8(B_SYMLINK).bytes(t);
            }
            _ => {
                e.u8(B_SPECIAL);
            }
        }
        w.record(T_NODE, e.as_slice())?;
        for (name, value) in m.xattrs.iter() {
            e.clear().bytes(name).bytes(value);
            w.record(T_XATTR, e.as_slice())?;
        }
    }
    if let Some(f) = &file {
        if !f.small_bytes().is_empty() {
            w.record(T_SMALL, f.small_bytes())?;
        }
        for (idx, page) in f.page_iter() {
            e.clear().u64(idx);
            e.0.extend_from_slice(page);
            w.record(T_PAGE, e.as_slice())?;
        }
    }
    if let Some((_, entries)) = &dir {
        for (cookie, name, ino) in entries.iter_from(0) {
            e.clear().u64(cookie).u64(ino).bytes(name);
            w.record(T_DIRENT, e.as_slice())?;
        }
    }
    Ok(())
}

/// A verified state, ready to be swapped in.
struct Built {
    /// Inodes for the inode table.
    table: Vec<Arc<Node>>,
    /// Every restored inode (dropped after the swap: the table and handles keep theirs).
    all: HashMap<u64, Arc<Node>>,
    handles: Vec<Arc<Handle>>,
    handle_count: u64,
    next_ino: u64,
    next_fh: u64,
    /// Exact charges of the restored state.
    bytes: u64,
    inodes: u64,
}

/// Builds a state aside from a stream, charging it as it grows.
struct Loader<'f> {
    fs: &'f MemFs,
    nodes: HashMap<u64, Arc<Node>>,
    in_table: Vec<u64>,
    /// Directory entries to check once every inode is known: (dir, target).
    links: Vec<(u64, u64)>,
    handles: Vec<Arc<Handle>>,
    /// Each directory's next readdir cookie.
    cookies: Vec<(u64, u64)>,
    last: Option<Arc<Node>>,
    counters: Option<(u64, u64)>,
    /// What the restored inodes are charged (added to the usage unchecked as they are
    /// built, so dropping them returns exactly this), and what their names are charged
    /// (added at the swap).
    node_bytes: u64,
    name_bytes: u64,
}

impl<'f> Loader<'f> {
    fn new(fs: &'f MemFs) -> Self {
        Loader {
            fs,
            nodes: HashMap::new(),
            in_table: Vec::new(),
            links: Vec::new(),
            handles: Vec::new(),
            cookies: Vec::new(),
            last: None,
            counters: None,
            node_bytes: 0,
            name_bytes: 0,
        }
    }

    /// Charges `n` more bytes to the state being built, within the capacity.
    fn charge(&mut self, n: u64, names: bool) -> io::Result<()> {
        let total = self
            .node_bytes
            .checked_add(self.name_bytes)
            .and_then(|t| t.checked_add(n))
            .ok_or_else(|| limit("bytes"))?;
        if total > self.fs.usage.bytes.limit() {
            return Err(limit("bytes"));
        }
        if names {
            self.name_bytes += n;
        } else {
            self.fs.usage.bytes.add_unchecked(n);
            self.node_bytes += n;
        }
        Ok(())
    }

    fn run(mut self, r: &mut StateReader<'_>) -> io::Result<Built> {
        while let Some(rec) = r.next_record()? {
            let mut d = rec.decoder();
            match rec.tag {
                T_COUNTERS => {
                    if self.counters.is_some() {
                        return Err(invalid("counters twice"));
                    }
                    self.counters = Some((d.u64()?, d.u64()?));
                }
                T_NODE => self.node(&mut d)?,
                T_XATTR => self.xattr(&mut d)?,
                T_SMALL => {
                    let bytes = d.rest();
                    self.file_op(|f| f.restore_small(bytes), "small-file data")?;
                }
                T_PAGE => {
                    let idx = d.u64()?;
                    let bytes = d.rest();
                    self.file_op(|f| f.restore_page(idx, bytes), "page")?;
                }
                T_DIRENT => self.dirent(&mut d)?,
                T_HANDLE => self.handle(&mut d)?,
                t => return Err(invalid(format!("unknown MemFs record tag {t}"))),
            }
            d.end()?;
        }
        self.finish()
    }

    fn node(&mut self, d: &mut Decoder<'_>) -> io::Result<()> {
        let ino = d.u64()?;
        let in_table = d.u8()? != 0;
        let lookups = d.u64()?;
        let mode = d.u32()?;
        let uid = d.u32()?;
        let gid = d.u32()?;
        let nlink = d.u32()?;
        let rdev = d.u32()?;
        let atime = get_ts(d)?;
        let mtime = get_ts(d)?;
        let ctime = get_ts(d)?;
        let kind = d.u8()?;
        if ino == 0 || self.nodes.contains_key(&ino) {
            return Err(invalid(format!("inode {ino} is invalid or repeated")));
        }
        let fmt = mode & libc::S_IFMT as u32;
        let body = match kind {
            B_FILE if fmt == libc::S_IFREG as u32 => {
                let mut f = FileData::default();
                if !f.restore_size(d.u64()?) {
                    return Err(invalid(format!("inode {ino}: bad file size")));
                }
                Body::File(RwLock::new(f))
            }
            B_DIR if fmt == libc::S_IFDIR as u32 => {
                let parent = d.u64()?;
                let next_cookie = d.u64()?;
                let entries = super::dir::Dir::default();
                // Set once the entries are in (they come in cookie order below it).
                self.cookies.push((ino, next_cookie));
                self.links.push((ino, parent));
                Body::Dir(Box::new(DirNode {
                    parent: AtomicU64::new(parent),
                    entries: RwLock::new(entries),
                }))
            }
            B_SYMLINK if fmt == libc::S_IFLNK as u32 => {
                let target = d.bytes()?;
                if target.is_empty() || target.len() > 4095 || target.contains(&0) {
                    return Err(invalid(format!("inode {ino}: bad symlink target")));
                }
                Body::Symlink(target.into())
            }
            B_SPECIAL
                if [libc::S_IFCHR, libc::S_IFBLK, libc::S_IFIFO, libc::S_IFSOCK]
                    .iter()
                    .any(|t| fmt == *t as u32) =>
            {
                Body::Special
            }
            _ => {
                return Err(invalid(format!(
                    "inode {ino}: mode {mode:o} and body disagree"
                )))
            }
        };
        if ino == ROOT_ID && kind != B_DIR {
            return Err(invalid("the root is not a directory"));
        }
        // Charged as `Node::drop` will return it.
        let inodes = self.nodes.len() as u64 + 1;
        if inodes > self.fs.usage.inodes.limit() {
            return Err(limit("inodes"));
        }
        let meta = Meta {
            mode,
            uid,
            gid,
            nlink,
            rdev,
            atime,
            mtime,
            ctime,
            xattrs: ThinVec::new(),
        };
        let node = Node::new(ino, meta, body, self.fs.usage.clone());
        let base = node.inode_charge()
            + match &node.body {
                Body::Symlink(t) => cost::heap(t.len() as u64),
                _ => 0,
            };
        self.fs.usage.inodes.add_unchecked(1);
        // From here the node returns its charges when dropped: charge them now.
        let node = Arc::new(node);
        self.fs.usage.bytes.add_unchecked(base);
        self.node_bytes += base;
        self.nodes.insert(ino, node.clone());
        self.charge(0, false)?;
        node.inc_lookup(lookups);
        if in_table {
            self.in_table.push(ino);
        }
        self.last = Some(node);
        Ok(())
    }

    fn last(&self, what: &str) -> io::Result<Arc<Node>> {
        self.last
            .clone()
            .ok_or_else(|| invalid(format!("{what} before any inode")))
    }

    fn xattr(&mut self, d: &mut Decoder<'_>) -> io::Result<()> {
        let node = self.last("xattr")?;
        let name = d.bytes()?;
        let value = d.bytes()?;
        if name.is_empty() || name.len() > 255 || name.contains(&0) || value.len() > 65536 {
            return Err(invalid("bad xattr"));
        }
        let mut m = node.meta.lock();
        if m.xattrs.iter().any(|(n, _)| **n == *name) {
            return Err(invalid("repeated xattr"));
        }
        let c = cost::xattr(name.len() as u64, value.len() as u64);
        self.charge(c, false)?;
        m.xattrs.push((name.into(), value.into()));
        Ok(())
    }

    fn file_op(&mut self, op: impl FnOnce(&mut FileData) -> bool, what: &str) -> io::Result<()> {
        let node = self.last(what)?;
        let Some(f) = node.file() else {
            return Err(invalid(format!("{what} for a non-file")));
        };
        let mut f = f.write();
        if !op(&mut f) {
            return Err(invalid(format!("inode {}: bad {what}", node.ino)));
        }
        let (old, new) = f.recharge();
        // Added unchecked by `charge` first (the node returns `new` when dropped), then
        // checked.
        let grow = new.saturating_sub(old);
        self.fs.usage.bytes.add_unchecked(grow);
        self.node_bytes += grow;
        self.charge(0, false)
    }

    fn dirent(&mut self, d: &mut Decoder<'_>) -> io::Result<()> {
        let node = self.last("directory entry")?;
        let cookie = d.u64()?;
        let ino = d.u64()?;
        let name = d.bytes()?;
        if !valid_name(name) {
            return Err(invalid(format!(
                "directory entry {:?} is not a valid name",
                String::from_utf8_lossy(name)
            )));
        }
        let Some(dir) = node.dir() else {
            return Err(invalid("directory entry for a non-directory"));
        };
        self.charge(cost::name(name.len() as u64), true)?;
        if !dir.entries.write().restore_entry(cookie, name, ino) {
            return Err(invalid(format!("inode {}: bad directory entry", node.ino)));
        }
        self.links.push((node.ino, ino));
        Ok(())
    }

    fn handle(&mut self, d: &mut Decoder<'_>) -> io::Result<()> {
        let fh = d.u64()?;
        let ino = d.u64()?;
        let flags = d.u32()?;
        let dir = d.u8()? != 0;
        let node = self
            .nodes
            .get(&ino)
            .cloned()
            .ok_or_else(|| invalid(format!("handle {fh} names unknown inode {ino}")))?;
        if dir != node.is_dir() || fh == 0 || self.handles.iter().any(|h| h.fh == fh) {
            return Err(invalid(format!("handle {fh} is invalid")));
        }
        if self.handles.len() as u64 >= self.fs.max_handles {
            return Err(limit("open handles"));
        }
        self.handles.push(Arc::new(Handle {
            fh,
            node,
            flags,
            dir,
        }));
        Ok(())
    }

    /// Checks the state as a whole.
    fn finish(self) -> io::Result<Built> {
        let (next_ino, next_fh) = self.counters.ok_or_else(|| invalid("no counters"))?;
        let root = self
            .nodes
            .get(&ROOT_ID)
            .ok_or_else(|| invalid("no root inode"))?;
        if !root.is_dir() {
            return Err(invalid("the root is not a directory"));
        }
        if self.nodes.keys().any(|&i| i >= next_ino) || self.handles.iter().any(|h| h.fh >= next_fh)
        {
            return Err(invalid("an id lies beyond its counter"));
        }
        for &(ino, next) in &self.cookies {
            let ok = self
                .nodes
                .get(&ino)
                .and_then(|n| n.dir())
                .is_some_and(|d| d.entries.write().restore_next_cookie(next));
            if !ok {
                return Err(invalid(format!("directory {ino}: bad next cookie")));
            }
        }
        // Every entry and parent names an inode; directory parents are directories.
        for &(from, to) in &self.links {
            if !self.nodes.contains_key(&to) {
                return Err(invalid(format!("inode {from} links unknown inode {to}")));
            }
        }
        // Every directory reaches the root through its parents (no cycles), so the rename
        // loop check and `..` terminate.
        let mut reaches: HashMap<u64, bool> = HashMap::new();
        reaches.insert(ROOT_ID, true);
        for (&ino, node) in &self.nodes {
            if !node.is_dir() {
                continue;
            }
            let mut path = Vec::new();
            let mut cur = ino;
            loop {
                if reaches.contains_key(&cur) {
                    break;
                }
                if path.len() > self.nodes.len() {
                    return Err(invalid(format!("directory {ino} does not reach the root")));
                }
                path.push(cur);
                let parent = self
                    .nodes
                    .get(&cur)
                    .and_then(|n| n.dir())
                    .map(|d| d.parent.load(Ordering::Relaxed))
                    .ok_or_else(|| {
                        invalid(format!("directory {cur} has a non-directory parent"))
                    })?;
                cur = parent;
            }
            for p in path {
                reaches.insert(p, true);
            }
        }
        let table = self
            .in_table
            .iter()
            .filter_map(|i| self.nodes.get(i).cloned())
            .collect::<Vec<_>>();
        if !self.in_table.contains(&ROOT_ID) {
            return Err(invalid("the root is not in the inode table"));
        }
        Ok(Built {
            handle_count: self.handles.len() as u64,
            inodes: self.nodes.len() as u64,
            bytes: self.node_bytes + self.name_bytes,
            table,
            all: self.nodes,
            handles: self.handles,
            next_ino,
            next_fh,
        })
    }
}

const _: () = assert!(PAGE == 4096);
