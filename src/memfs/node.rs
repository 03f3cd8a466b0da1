//! Inodes: metadata, per-type bodies, and the release of their charges when they die.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use thin_vec::ThinVec;

use super::accounting::Usage;
use super::cost;
use super::data::FileData;
use super::dir::Dir;
use crate::{stat64, ROOT_ID};

/// A timestamp as Linux keeps it. Packed to 12 bytes (three per inode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(C, packed(4))]
pub(crate) struct Ts {
    pub(crate) sec: i64,
    pub(crate) nsec: u32,
}

impl Ts {
    pub(crate) fn now() -> Ts {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ts {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        }
    }
}

/// Extended attributes of one inode (name, value), charged to the byte capacity. A thin
/// vector: one pointer in the inode, nothing allocated while there are none.
pub(crate) type Xattrs = ThinVec<(Box<[u8]>, Box<[u8]>)>;

/// The metadata of an inode, guarded by one short-lived lock.
pub(crate) struct Meta {
    /// Type and permission bits (`S_IFMT | 07777`).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) nlink: u32,
    pub(crate) rdev: u32,
    pub(crate) atime: Ts,
    pub(crate) mtime: Ts,
    pub(crate) ctime: Ts,
    pub(crate) xattrs: Xattrs,
}

impl Meta {
    pub(crate) fn new(mode: u32, uid: u32, gid: u32, rdev: u32) -> Meta {
        let now = Ts::now();
        Meta {
            mode,
            uid,
            gid,
            nlink: if mode & libc::S_IFMT as u32 == libc::S_IFDIR as u32 {
                2
            } else {
                1
            },
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            xattrs: ThinVec::new(),
        }
    }

    pub(crate) fn touch_mc(&mut self) {
        let now = Ts::now();
        self.mtime = now;
        self.ctime = now;
    }

    /// What the xattrs are charged ([`cost::xattr`] each).
    pub(crate) fn xattr_bytes(&self) -> u64 {
        self.xattrs
            .iter()
            .map(|(n, v)| cost::xattr(n.len() as u64, v.len() as u64))
            .sum()
    }

    /// Clears set-user-ID, and set-group-ID when group-executable, as Linux does on write
    /// and chown of a non-directory.
    pub(crate) fn kill_suid(&mut self) {
        if self.mode & libc::S_IFMT as u32 == libc::S_IFDIR as u32 {
            return;
        }
        self.mode &= !(libc::S_ISUID as u32);
        if self.mode & libc::S_IXGRP as u32 != 0 {
            self.mode &= !(libc::S_ISGID as u32);
        }
    }
}

/// A directory: its entries, and its parent (for `..` and the rename loop check).
pub(crate) struct DirNode {
    pub(crate) parent: AtomicU64,
    pub(crate) entries: RwLock<Dir>,
}

/// What an inode holds beyond its metadata.
pub(crate) enum Body {
    File(RwLock<FileData>),
    Dir(Box<DirNode>),
    Symlink(Box<[u8]>),
    /// FIFOs, sockets, character and block devices: metadata only.
    Special,
}

/// One inode. Lives in the inode table while the guest knows it or a directory links it,
/// and in open handles until they are released; its charges are returned when it is dropped.
pub(crate) struct Node {
    pub(crate) ino: u64,
    pub(crate) meta: Mutex<Meta>,
    /// References the guest kernel holds (lookups minus forgets).
    pub(crate) lookups: AtomicU64,
    pub(crate) body: Body,
    usage: Arc<Usage>,
}

impl Node {
    pub(crate) fn new(ino: u64, meta: Meta, body: Body, usage: Arc<Usage>) -> Node {
        Node {
            ino,
            meta: Mutex::new(meta),
            lookups: AtomicU64::new(0),
            body,
            usage,
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir(_))
    }

    pub(crate) fn dir(&self) -> Option<&DirNode> {
        match &self.body {
            Body::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub(crate) fn file(&self) -> Option<&RwLock<FileData>> {
        match &self.body {
            Body::File(f) => Some(f),
            _ => None,
        }
    }

    /// The `d_type` of this inode for directory listings.
    pub(crate) fn dtype(&self) -> u32 {
        (self.meta.lock().mode & libc::S_IFMT as u32) >> 12
    }

    /// Adds `n` guest references.
    pub(crate) fn inc_lookup(&self, n: u64) {
        self.lookups.fetch_add(n, Ordering::AcqRel);
    }

    /// Drops up to `n` guest references, returning how many are left.
    pub(crate) fn dec_lookup(&self, n: u64) -> u64 {
        let prev = self
            .lookups
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                Some(l.saturating_sub(n))
            })
            .unwrap_or(0);
        prev.saturating_sub(n)
    }

    /// The attributes the guest sees. Takes the data lock before the metadata lock (the
    /// order every path follows).
    pub(crate) fn stat(&self) -> stat64 {
        let (size, blocks) = match &self.body {
            Body::File(f) => {
                let f = f.read();
                (f.size(), f.allocated_bytes().div_ceil(512))
            }
            Body::Dir(_) => (4096, 8),
            Body::Symlink(t) => (t.len() as u64, 0),
            Body::Special => (0, 0),
        };
        let m = self.meta.lock();
        // SAFETY: `stat64` is a plain C struct for which all-zero bytes are a valid value.
        // (The safe route, fuse-backend-rs's `Attr` conversion or a copied template, costs
        // ~10 % more instructions per GETATTR; this is the hottest metadata path.)
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_ino = self.ino as _;
        st.st_mode = m.mode as _;
        st.st_nlink = m.nlink as _;
        st.st_uid = m.uid;
        st.st_gid = m.gid;
        st.st_rdev = m.rdev as _;
        st.st_size = size as _;
        st.st_blksize = 4096;
        st.st_blocks = blocks as _;
        st.st_atime = m.atime.sec as _;
        st.st_atime_nsec = m.atime.nsec as _;
        st.st_mtime = m.mtime.sec as _;
        st.st_mtime_nsec = m.mtime.nsec as _;
        st.st_ctime = m.ctime.sec as _;
        st.st_ctime_nsec = m.ctime.nsec as _;
        st
    }

    /// What this inode itself is charged ([`cost::INODE`] or [`cost::DIR_INODE`]; the root
    /// is part of the fixed base).
    pub(crate) fn inode_charge(&self) -> u64 {
        match (&self.body, self.ino) {
            (_, ROOT_ID) => 0,
            (Body::Dir(_), _) => cost::DIR_INODE,
            _ => cost::INODE,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut bytes = self.meta.get_mut().xattr_bytes() + self.inode_charge();
        bytes += match &mut self.body {
            Body::File(f) => f.get_mut().charged(),
            Body::Symlink(t) => cost::heap(t.len() as u64),
            Body::Dir(_) | Body::Special => 0,
        };
        self.usage.bytes.release(bytes);
        self.usage.inodes.release(1);
    }
}
