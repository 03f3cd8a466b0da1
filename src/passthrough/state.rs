//! Device state of a [`PassthroughFs`]: which host files the guest holds under which node
//! ids, with their lookup counts, and its open files and directories. File data stays on the
//! host: source and destination must serve the same directory.
//!
//! # What is carried
//!
//! * Every inode the guest holds (and the ancestors its recorded path goes through): node
//!   id, lookup count, host identity (device, inode number, and the file handle or birth
//!   time fingerprint of `identity.rs`), host file type, and **its path relative to the share
//!   root**, recorded as the chain of (parent, name) components the backend already keeps to
//!   re-open evicted descriptors. Records come in depth-first order, each name relative to
//!   its parent record.
//! * Every open handle: number, inode, host open flags, file or directory.
//! * The counters for private node ids and handle numbers.
//!
//! # Restoring
//!
//! Each path is resolved again from the share root one validated component at a time with
//! the same confined opens every lookup uses (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
//! | RESOLVE_NO_MAGICLINKS)` on Linux): a name that is empty, `.`, `..`, contains `/` or is
//! one of the backend's internal names is refused and fails the whole load (such a stream
//! was crafted, not saved). The file found must have the recorded device, inode number, type
//! and fingerprint (the mount id is not compared: it differs in another mount namespace).
//! Node ids and handle numbers keep their values; handles are re-opened with their flags
//! (never truncating or creating).
//!
//! A file that is missing or is not the recorded one becomes a per-inode error: its node id
//! answers `ESTALE` (as an inode whose file the host replaced does today), and so do the
//! inodes below it and its open handles (until the guest releases them). Everything else
//! restores, and the load succeeds. The same holds for inodes the guest had removed but still held
//! (unlinked while open): their data was only reachable through a descriptor, which cannot
//! be carried.
//!
//! **Renamed files:** the path carried is the name under which the guest last saw the inode
//! (lookups, creations and the guest's own renames update it). A file the *host* renamed
//! behind the guest's back is looked for under its old name, is not found there (or another
//! file is), and answers `ESTALE`: never another file in its place.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::handles::{Handle, HandleKind};
use super::identity::{self, Fingerprint};
use super::inode_store::{InodeData, InodeKey, Override};
use super::platform::{self, DirStream};
use super::resolve::{key_of, read_override, S_IFDIR, S_IFREG};
use super::{is_internal, PassthroughFs};
use crate::state::{
    invalid, Decoder, Encoder, StateError, StateErrorKind, StateReader, StateWriter,
};
use crate::ROOT_ID;

/// Backend kind in the stream header.
pub(crate) const KIND: &str = "passthrough";

/// Counters: next private node id, next handle number.
const T_COUNTERS: u16 = 1;
/// One inode (see [`save_inode`]).
const T_INODE: u16 = 2;
/// One open handle of the inode just before it.
const T_HANDLE: u16 = 3;

/// No parent record: the root, or an inode with no known name.
const NO_PARENT: u64 = u64::MAX;

fn put_fp(e: &mut Encoder, fp: &Fingerprint) {
    match fp {
        Fingerprint::Unknown => {
            e.u8(0);
        }
        Fingerprint::Handle(kind, len, bytes) => {
            e.u8(1).u32(*kind as u32).u8(*len).bytes(bytes);
        }
        Fingerprint::Birth(sec, nsec) => {
            e.u8(2).i64(*sec).u32(*nsec);
        }
    }
}

fn get_fp(d: &mut Decoder<'_>) -> io::Result<Fingerprint> {
    Ok(match d.u8()? {
        0 => Fingerprint::Unknown,
        1 => {
            let kind = d.u32()? as i32;
            let len = d.u8()?;
            let bytes = d
                .bytes()?
                .try_into()
                .map_err(|_| invalid("file handle fingerprint of the wrong size"))?;
            Fingerprint::Handle(kind, len, bytes)
        }
        2 => Fingerprint::Birth(d.i64()?, d.u32()?),
        t => return Err(invalid(format!("unknown fingerprint kind {t}"))),
    })
}

/// One inode to save: where it hangs and what it holds.
struct Saved {
    data: Arc<InodeData>,
    in_table: bool,
    parent: Option<usize>,
    name: Option<CString>,
    children: Vec<usize>,
}

fn key_ptr(d: &Arc<InodeData>) -> usize {
    Arc::as_ptr(d) as usize
}

impl PassthroughFs {
    /// Writes the inodes and handles the guest holds; see the [module documentation](self).
    pub(crate) fn save_state_impl(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut w = StateWriter::new(out, KIND)?;
        let (handles, next_fh) = self.handles.snapshot();
        let mut e = Encoder::new();
        e.u64(self.inodes.next_private()).u64(next_fh);
        w.record(T_COUNTERS, e.as_slice())?;

        // Every held inode, every inode an open handle keeps, and their ancestors.
        let mut saved: Vec<Saved> = Vec::new();
        let mut index: HashMap<usize, usize> = HashMap::new();
        let mut todo: Vec<(Arc<InodeData>, bool)> =
            self.inodes.all().into_iter().map(|d| (d, true)).collect();
        todo.extend(handles.iter().map(|(_, h)| (h.inode.clone(), false)));
        while let Some((d, in_table)) = todo.pop() {
            if let Some(&i) = index.get(&key_ptr(&d)) {
                saved[i].in_table |= in_table;
                continue;
            }
            let path = d.path.lock().clone();
            index.insert(key_ptr(&d), saved.len());
            let name = path.as_ref().map(|(_, n)| n.clone());
            saved.push(Saved {
                data: d,
                in_table,
                parent: None,
                name,
                children: Vec::new(),
            });
            if let Some((parent, _)) = path {
                todo.push((parent, false));
            }
        }
        for i in 0..saved.len() {
            let parent = saved[i]
                .data
                .path
                .lock()
                .as_ref()
                .and_then(|(p, _)| index.get(&key_ptr(p)).copied());
            saved[i].parent = parent;
            if let Some(p) = parent {
                saved[p].children.push(i);
            }
        }
        let mut by_inode: HashMap<usize, Vec<(u64, Arc<Handle>)>> = HashMap::new();
        for (fh, h) in handles {
            by_inode.entry(key_ptr(&h.inode)).or_default().push((fh, h));
        }
        // Depth-first from the root, then from every inode without a known name.
        let mut tops: Vec<usize> = (0..saved.len())
            .filter(|&i| saved[i].parent.is_none())
            .collect();
        tops.sort_unstable_by_key(|&i| (saved[i].data.id != ROOT_ID, saved[i].data.id));
        if tops.first().is_none_or(|&i| saved[i].data.id != ROOT_ID) {
            return Err(io::Error::other("passthrough state: the root is not held"));
        }
        let mut refs: HashMap<usize, u64> = HashMap::new();
        let mut emitted = vec![false; saved.len()];
        for top in tops {
            let mut stack = vec![top];
            while let Some(i) = stack.pop() {
                if std::mem::replace(&mut emitted[i], true) {
                    continue;
                }
                let s = &saved[i];
                let parent_ref = s.parent.and_then(|p| refs.get(&p).copied());
                refs.insert(i, refs.len() as u64);
                save_inode(&mut w, &mut e, s, parent_ref)?;
                for (fh, h) in by_inode.get(&key_ptr(&s.data)).into_iter().flatten() {
                    e.clear()
                        .u64(*fh)
                        .u8(matches!(h.kind, HandleKind::Dir(_)) as u8)
                        .u32(h.flags as u32);
                    w.record(T_HANDLE, e.as_slice())?;
                }
                let mut kids = s.children.clone();
                kids.sort_unstable_by_key(|&k| std::cmp::Reverse(saved[k].data.id));
                stack.extend(kids);
            }
        }
        w.finish()?;
        Ok(())
    }

    /// Restores the inodes and handles of a saved state; see the
    /// [module documentation](self).
    pub(crate) fn load_state_impl(&self, input: &mut dyn io::Read) -> io::Result<()> {
        let mut r = StateReader::new(input, KIND)?;
        let built = match r.version() {
            1 => self.load_v1(&mut r)?,
            v => {
                return Err(StateError::io(
                    StateErrorKind::Version,
                    format!("PassthroughFs cannot read format version {v}"),
                ))
            }
        };
        let root = self.inode(ROOT_ID)?;
        self.do_destroy();
        root.lookups.store(built.root_lookups, Ordering::Relaxed);
        self.inodes.restore(built.inodes, built.next_private);
        self.handles
            .restore(built.handles, built.dead, built.next_fh);
        if built.stale > 0 {
            tracing::warn!(
                stale = built.stale,
                "device state: inodes whose host file is missing or changed answer ESTALE"
            );
        }
        Ok(())
    }

    fn load_v1(&self, r: &mut StateReader<'_>) -> io::Result<Built> {
        let root = self.inode(ROOT_ID)?;
        let root_fd = self.fd_of(&root)?;
        let mut counters = None;
        let mut refs: Vec<Arc<InodeData>> = Vec::new();
        // File descriptors of the directories on the current depth-first path.
        let mut path: Vec<(u64, Option<Arc<OwnedFd>>)> = Vec::new();
        let mut last: Option<(Arc<InodeData>, Option<Arc<OwnedFd>>)> = None;
        let mut b = Built {
            inodes: Vec::new(),
            handles: Vec::new(),
            dead: Vec::new(),
            root_lookups: 1,
            next_private: 0,
            next_fh: 1,
            stale: 0,
        };
        let mut ids: HashMap<u64, ()> = HashMap::new();
        let mut fhs: HashMap<u64, ()> = HashMap::new();
        while let Some(rec) = r.next_record()? {
            let mut d = rec.decoder();
            match rec.tag {
                T_COUNTERS => {
                    if counters.is_some() {
                        return Err(invalid("counters twice"));
                    }
                    counters = Some((d.u64()?, d.u64()?));
                }
                T_INODE => {
                    let rec = InodeRec::decode(&mut d)?;
                    let me = refs.len() as u64;
                    if me == 0 {
                        if rec.id != ROOT_ID || rec.parent != NO_PARENT || !rec.in_table {
                            return Err(invalid("the first inode is not the root"));
                        }
                        b.root_lookups = rec.lookups.max(1);
                        path.push((0, Some(root_fd.clone())));
                        refs.push(root.clone());
                        last = Some((root.clone(), Some(root_fd.clone())));
                        continue;
                    }
                    if rec.in_table {
                        if rec.id == 0 || rec.id == ROOT_ID || ids.insert(rec.id, ()).is_some() {
                            return Err(invalid(format!("node id {} invalid or repeated", rec.id)));
                        }
                        if ids.len() + 1 > self.cfg.max_inodes {
                            return Err(StateError::io(
                                StateErrorKind::Limit,
                                "more inodes than this PassthroughFs may hold",
                            ));
                        }
                    }
                    let (data, fd) = self.restore_inode(&rec, me, &refs, &mut path)?;
                    if data.path.lock().is_none() {
                        b.stale += 1;
                    }
                    let dir_fd = fd.clone().filter(|_| data.host_type == S_IFDIR);
                    path.push((me, dir_fd));
                    refs.push(data.clone());
                    if rec.in_table {
                        b.inodes.push((data.clone(), fd.is_some()));
                    }
                    last = Some((data, fd));
                }
                T_HANDLE => {
                    let fh = d.u64()?;
                    let dir = d.u8()? != 0;
                    let flags = d.u32()? as i32;
                    let Some((inode, fd)) = &last else {
                        return Err(invalid("handle before any inode"));
                    };
                    if fh == 0 || fhs.insert(fh, ()).is_some() {
                        return Err(invalid(format!("handle {fh} invalid or repeated")));
                    }
                    if fhs.len() > self.handles.limit() {
                        return Err(StateError::io(
                            StateErrorKind::Limit,
                            "more open handles than this PassthroughFs may hold",
                        ));
                    }
                    match reopen_handle(inode, fd.as_deref(), dir, flags) {
                        Some(h) => b.handles.push((fh, h)),
                        None => b.dead.push((fh, inode.id)),
                    }
                }
                t => return Err(invalid(format!("unknown PassthroughFs record tag {t}"))),
            }
            d.end()?;
        }
        let (next_private, next_fh) = counters.ok_or_else(|| invalid("no counters"))?;
        if refs.is_empty() {
            return Err(invalid("no root"));
        }
        if fhs.keys().any(|&fh| fh >= next_fh) {
            return Err(invalid("a handle number lies beyond its counter"));
        }
        b.next_private = next_private;
        b.next_fh = next_fh;
        Ok(b)
    }

    /// Builds the inode of record `rec`, finding its file again below its parent's
    /// descriptor; without a verified file it keeps no path (and answers `ESTALE`).
    fn restore_inode(
        &self,
        rec: &InodeRec,
        me: u64,
        refs: &[Arc<InodeData>],
        path: &mut Vec<(u64, Option<Arc<OwnedFd>>)>,
    ) -> io::Result<(Arc<InodeData>, Option<Arc<OwnedFd>>)> {
        let mut found: Option<(Arc<InodeData>, CString, Arc<OwnedFd>)> = None;
        if rec.parent != NO_PARENT {
            let name =
                CString::new(rec.name.clone()).map_err(|_| invalid("a name with a NUL byte"))?;
            if crate::name::validate(&name).is_err() || is_internal(&rec.name) {
                return Err(invalid(format!(
                    "name {:?} would leave the share or is not a guest name",
                    String::from_utf8_lossy(&rec.name)
                )));
            }
            if rec.parent >= me {
                return Err(invalid("a parent after its child"));
            }
            while path.last().is_some_and(|(r, _)| *r != rec.parent) {
                path.pop();
            }
            let Some((_, parent_fd)) = path.last() else {
                return Err(invalid("inodes are not in depth-first order"));
            };
            let parent = refs
                .get(rec.parent as usize)
                .cloned()
                .ok_or_else(|| invalid("unknown parent"))?;
            if let (Some(pfd), false) = (parent_fd, rec.lost) {
                if let Ok(fd) = self.with_fd_retry(|| platform::open_inode(pfd.as_raw_fd(), &name))
                {
                    found = Some((parent, name, Arc::new(fd)));
                }
            }
        } else if !rec.lost {
            return Err(invalid("an inode with neither a parent nor the lost mark"));
        }
        let mut key = InodeKey {
            dev: rec.dev,
            ino: rec.ino,
            mnt_id: 0,
        };
        let mut meta = Override::Absent;
        let mut verified = None;
        if let Some((parent, name, fd)) = found {
            if let Ok(hs) = platform::fstat(fd.as_raw_fd()) {
                let now = key_of(&hs);
                let host_type = hs.st.st_mode as u32 & super::resolve::S_IFMT;
                if now.dev == rec.dev
                    && now.ino == rec.ino
                    && host_type == rec.host_type
                    && rec.fp.same(&identity::fingerprint(fd.as_raw_fd()))
                {
                    if let Ok(o) = read_override(fd.as_raw_fd(), host_type) {
                        key = now;
                        meta = o;
                        verified = Some(((parent, name), fd));
                    }
                }
            }
        }
        let (path_now, fd) = match verified {
            Some((p, fd)) => (Some(p), Some(fd)),
            None => (None, None),
        };
        let data = Arc::new(InodeData {
            id: rec.id,
            serial: super::inode_store::next_serial(),
            key,
            fp: rec.fp.clone(),
            host_type: rec.host_type,
            lookups: AtomicU64::new(rec.lookups),
            path: Mutex::new(path_now),
            pinned: Mutex::new(None),
            meta: Mutex::new(meta),
            open_handles: AtomicU64::new(0),
            writers: AtomicU64::new(0),
            removed: Mutex::new(None),
            resize: RwLock::new(()),
            orphan: Mutex::new(None),
            cache_stamp: Mutex::new(None),
        });
        Ok((data, fd))
    }
}

/// Re-opens a saved handle on a verified inode's descriptor; `None` if the inode was not
/// found again or the open fails (the handle then answers `ESTALE`).
fn reopen_handle(
    inode: &Arc<InodeData>,
    fd: Option<&OwnedFd>,
    dir: bool,
    flags: i32,
) -> Option<Handle> {
    let fd = fd?;
    if dir {
        if inode.host_type != S_IFDIR {
            return None;
        }
        let stream = DirStream::open(fd.as_raw_fd()).ok()?;
        return Some(Handle {
            inode: inode.clone(),
            kind: HandleKind::Dir(Mutex::new(stream)),
            flags: 0,
        });
    }
    if inode.host_type != S_IFREG {
        return None;
    }
    // Re-opening never creates or truncates.
    let flags = (flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL)) | libc::O_CLOEXEC;
    let file = platform::reopen(fd.as_raw_fd(), flags).ok()?;
    Some(Handle {
        inode: inode.clone(),
        kind: HandleKind::File(File::from(file)),
        flags,
    })
}

/// What a load built, ready to be installed.
struct Built {
    /// Inodes for the table, and whether their file was found again.
    inodes: Vec<(Arc<InodeData>, bool)>,
    handles: Vec<(u64, Handle)>,
    /// Handles not re-opened (their file was not found again): number, node id.
    dead: Vec<(u64, u64)>,
    root_lookups: u64,
    next_private: u64,
    next_fh: u64,
    /// Inodes whose file was not found again.
    stale: usize,
}

/// One saved inode.
struct InodeRec {
    id: u64,
    in_table: bool,
    lookups: u64,
    /// No known name (removed by the guest, or already stale): cannot be found again.
    lost: bool,
    parent: u64,
    name: Vec<u8>,
    dev: u64,
    ino: u64,
    host_type: u32,
    fp: Fingerprint,
}

impl InodeRec {
    fn decode(d: &mut Decoder<'_>) -> io::Result<InodeRec> {
        Ok(InodeRec {
            id: d.u64()?,
            in_table: d.u8()? != 0,
            lookups: d.u64()?,
            lost: d.u8()? != 0,
            parent: d.u64()?,
            name: d.bytes()?.to_vec(),
            dev: d.u64()?,
            ino: d.u64()?,
            host_type: d.u32()?,
            fp: get_fp(d)?,
        })
    }
}

/// Writes one inode record: id, in-table flag, lookups, lost flag, parent record (or
/// [`NO_PARENT`]), name, device, inode number, host type, fingerprint.
fn save_inode(
    w: &mut StateWriter<'_>,
    e: &mut Encoder,
    s: &Saved,
    parent_ref: Option<u64>,
) -> io::Result<()> {
    let d = &s.data;
    let lost = d.id != ROOT_ID && parent_ref.is_none();
    e.clear()
        .u64(d.id)
        .u8(s.in_table as u8)
        .u64(d.lookups.load(Ordering::Relaxed))
        .u8(lost as u8)
        .u64(parent_ref.unwrap_or(NO_PARENT))
        .bytes(s.name.as_ref().map_or(&[][..], |n| n.as_bytes()))
        .u64(d.key.dev)
        .u64(d.key.ino)
        .u32(d.host_type);
    put_fp(e, &d.fp);
    w.record(T_INODE, e.as_slice())
}
