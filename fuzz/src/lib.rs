//! Shared pieces of the boxfs fuzz targets: a guest memory with a split virtqueue, the
//! backends under test (each with a canary outside its share), and FUSE request encoding.
//!
//! Guest memory has two regions with a hole between them, so descriptors can point inside
//! memory, into the hole, across a region boundary or past the end:
//!
//! ```text
//! 0x00000 .. 0x10000   region 0: queue (desc 0x0, avail 0x1000, used 0x1800), data from 0x3000
//! 0x10000 .. 0x20000   hole
//! 0x20000 .. 0x30000   region 1: data
//! ```

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boxfs::dualfs::DualFs;
use boxfs::memfs::MemFs;
use boxfs::passthrough::PassthroughFs;
use boxfs::vhost::fuzzing::{FuzzOutcome, QueueLayout, RequestHarness};
use boxfs::{DynFileSystem, SizeExt};
use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn, InitIn2};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

/// Descriptor flags (virtio 1.x, 2.7.5).
pub const F_NEXT: u16 = 1;
/// The device writes into this descriptor.
pub const F_WRITE: u16 = 2;
/// The descriptor is an indirect table.
pub const F_INDIRECT: u16 = 4;

/// Start and length of region 0.
pub const REGION0: (u64, u64) = (0, 0x10000);
/// Start and length of region 1.
pub const REGION1: (u64, u64) = (0x20000, 0x10000);
/// Descriptor table address.
pub const DESC: u64 = 0x0;
/// Available ring address.
pub const AVAIL: u64 = 0x1000;
/// Used ring address.
pub const USED: u64 = 0x1800;
/// First data byte of region 0.
pub const DATA0: u64 = 0x3000;
/// Largest queue size used (the descriptor table area holds 256 descriptors).
pub const MAX_QUEUE: u16 = 256;

/// Guest memory shared by all iterations of a target.
pub struct Guest {
    /// The memory.
    pub mem: Arc<boxfs::vhost::fuzzing::FuzzMemory>,
}

impl Default for Guest {
    fn default() -> Self {
        Self::new()
    }
}

impl Guest {
    /// Maps the two regions.
    pub fn new() -> Guest {
        let mem = boxfs::vhost::fuzzing::FuzzMemory::from_ranges(&[
            (GuestAddress(REGION0.0), REGION0.1 as usize),
            (GuestAddress(REGION1.0), REGION1.1 as usize),
        ])
        .expect("guest memory");
        Guest { mem: Arc::new(mem) }
    }

    /// Zeroes both regions.
    pub fn clear(&self) {
        let zeros = vec![0u8; REGION0.1 as usize];
        for (start, len) in [REGION0, REGION1] {
            self.mem
                .write_slice(&zeros[..len as usize], GuestAddress(start))
                .expect("clear");
        }
    }

    /// Snapshot of both regions.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut v = vec![0u8; (REGION0.1 + REGION1.1) as usize];
        let (a, b) = v.split_at_mut(REGION0.1 as usize);
        self.mem
            .read_slice(a, GuestAddress(REGION0.0))
            .expect("read");
        self.mem
            .read_slice(b, GuestAddress(REGION1.0))
            .expect("read");
        v
    }

    /// Writes `data` at `addr` (ignored where it leaves memory).
    pub fn write(&self, addr: u64, data: &[u8]) {
        let _ = self.mem.write_slice(data, GuestAddress(addr));
    }

    /// Reads `len` bytes at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let _ = self.mem.read_slice(&mut v, GuestAddress(addr));
        v
    }

    /// Writes descriptor `idx` of the table at `table`.
    pub fn write_desc(&self, table: u64, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.write(table + 16 * u64::from(idx), &d);
    }

    /// Publishes `heads` in the available ring (`avail_idx` may lie) and resets the used ring.
    pub fn publish(&self, size: u16, heads: &[u16], avail_idx: u16) {
        self.write(AVAIL, &0u16.to_le_bytes());
        self.write(AVAIL + 2, &avail_idx.to_le_bytes());
        for (i, h) in heads.iter().enumerate().take(usize::from(size)) {
            self.write(AVAIL + 4 + 2 * i as u64, &h.to_le_bytes());
        }
        self.write(USED, &[0u8; 4]);
    }

    /// The used length of used-ring entry `i`.
    pub fn used_len(&self, i: u16) -> u32 {
        self.mem
            .read_obj::<u32>(GuestAddress(USED + 8 + 8 * u64::from(i)))
            .unwrap_or(0)
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(USED + 2))
            .unwrap_or(0)
    }

    /// Whether `[addr, addr+len)` lies in guest memory.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) if len > 0 => self
                .mem
                .check_range(GuestAddress(addr), (end - addr) as usize),
            _ => len == 0 && self.mem.address_in_range(GuestAddress(addr)),
        }
    }
}

/// The queue layout every target uses.
pub fn layout(size: u16, event_idx: bool) -> QueueLayout {
    QueueLayout {
        desc: DESC,
        avail: AVAIL,
        used: USED,
        size,
        event_idx,
    }
}

/// Which backend serves the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An in-memory filesystem.
    Mem,
    /// A writable host directory.
    Passthrough,
    /// MemFs (A, writable) over a read-only PassthroughFs (B).
    Dual,
    /// A VolumeFs: a MemFs root, the host directory at `/host` (with hidden names), a
    /// read-only MemFs at `/host/d/ro` and a virtual file at `/init`.
    Volumes,
}

impl Kind {
    /// Picks a kind from a byte.
    pub fn from_byte(b: u8) -> Kind {
        match b % 4 {
            0 => Kind::Mem,
            1 => Kind::Passthrough,
            2 => Kind::Dual,
            _ => Kind::Volumes,
        }
    }
}

/// A backend under test plus the host directories behind it (removed on drop).
pub struct Backend {
    /// The filesystem.
    pub fs: Arc<dyn DynFileSystem>,
    /// The temporary directory holding `share/` and the canary (host-backed kinds).
    pub dir: Option<tempfile::TempDir>,
    canary: Option<(PathBuf, fs::Metadata)>,
}

/// Content of the canary outside every share.
pub const CANARY: &[u8] = b"canary: the guest must never see or change this\n";

fn tmp_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Lays out `dir/share` with a few entries and `dir/canary` outside it.
fn host_tree(dir: &Path) -> (PathBuf, PathBuf) {
    let share = dir.join("share");
    fs::create_dir(&share).expect("share");
    fs::write(share.join("f"), b"hello from the host\n").expect("f");
    fs::create_dir(share.join("d")).expect("d");
    fs::write(share.join("d/g"), b"nested").expect("g");
    let _ = std::os::unix::fs::symlink("f", share.join("l"));
    let _ = std::os::unix::fs::symlink("../canary", share.join("up"));
    let canary = dir.join("canary");
    fs::write(&canary, CANARY).expect("canary");
    (share, canary)
}

impl Backend {
    /// A fresh backend of `kind`.
    pub fn new(kind: Kind) -> Backend {
        let mem = || -> Arc<dyn DynFileSystem> {
            Arc::new(
                MemFs::builder()
                    .capacity(8.mib())
                    .max_inodes(512)
                    .build()
                    .expect("memfs"),
            )
        };
        match kind {
            Kind::Mem => Backend {
                fs: mem(),
                dir: None,
                canary: None,
            },
            Kind::Passthrough | Kind::Dual | Kind::Volumes => {
                let dir = tempfile::Builder::new()
                    .prefix("boxfs-fuzz")
                    .tempdir_in(tmp_root())
                    .expect("tempdir");
                let (share, canary) = host_tree(dir.path());
                let meta = fs::metadata(&canary).expect("canary metadata");
                let pt = PassthroughFs::builder(&share)
                    .readonly(kind == Kind::Dual)
                    .fd_cache_size(64)
                    .build()
                    .expect("passthrough");
                let fs: Arc<dyn DynFileSystem> = match kind {
                    Kind::Dual => Arc::new(
                        DualFs::builder()
                            .backend_a(mem())
                            .backend_b(Arc::new(pt))
                            .build()
                            .expect("dualfs"),
                    ),
                    Kind::Volumes => {
                        use boxfs::volumes::{VirtualFile, VolumeFs, VolumeOptions};
                        let v = VolumeFs::new(mem());
                        v.attach(
                            "/host",
                            Arc::new(pt),
                            VolumeOptions::new().hide("f").hide("*.pem"),
                        )
                        .expect("host volume");
                        v.attach("/host/d/ro", mem(), VolumeOptions::new().readonly(true))
                            .expect("ro volume");
                        v.attach(
                            "/init",
                            Arc::new(VirtualFile::from_bytes(b"#!/bin/sh\n".to_vec()).mode(0o755)),
                            VolumeOptions::new(),
                        )
                        .expect("virtual file");
                        Arc::new(v)
                    }
                    _ => Arc::new(pt),
                };
                Backend {
                    fs,
                    dir: Some(dir),
                    canary: Some((canary, meta)),
                }
            }
        }
    }

    /// Panics if the canary outside the share changed or anything appeared next to it.
    pub fn check_canary(&self) {
        let (Some(dir), Some((path, before))) = (&self.dir, &self.canary) else {
            return;
        };
        let now = fs::metadata(path).expect("canary is gone");
        assert_eq!(fs::read(path).expect("canary"), CANARY, "canary content");
        assert_eq!(now.mode(), before.mode(), "canary mode");
        assert_eq!(now.mtime(), before.mtime(), "canary mtime");
        assert_eq!(now.mtime_nsec(), before.mtime_nsec(), "canary mtime");
        assert_eq!(now.ctime(), before.ctime(), "canary ctime");
        assert_eq!(now.ctime_nsec(), before.ctime_nsec(), "canary ctime");
        assert_eq!(now.uid(), before.uid(), "canary owner");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("read_dir")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["canary", "share"],
            "nothing created outside the share"
        );
    }
}

/// A server over a backend.
pub fn harness(b: &Backend) -> RequestHarness {
    RequestHarness::new(Arc::clone(&b.fs))
}

/// A FUSE request: header (with `len` set to the real length) plus body.
pub fn request(opcode: u32, unique: u64, nodeid: u64, uid: u32, body: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        uid,
        gid: uid,
        pid: 1,
        ..Default::default()
    };
    let mut v = h.as_slice().to_vec();
    v.extend_from_slice(body);
    v
}

/// The INIT request a Linux 6.x guest sends (with `INIT_EXT`).
pub fn init_request() -> Vec<u8> {
    let init = InitIn {
        major: 7,
        minor: 38,
        max_readahead: 128 << 10,
        flags: 0x1 | 0x8 | 0x400 | 0x800 | 0x2000 | 0x4000 | 0x8000 | (1 << 22) | (1 << 30),
    };
    let mut body = init.as_slice().to_vec();
    body.extend_from_slice(InitIn2::default().as_slice());
    request(26, 1, 0, 0, &body)
}

/// Serves one request laid out as the given readable pieces followed by writable buffers of
/// the given sizes (all in region 0's data area, then region 1). Returns the outcome and the
/// reply bytes (the first `used` bytes of the writable buffers).
pub fn serve(
    guest: &Guest,
    h: &RequestHarness,
    readable: &[&[u8]],
    writable: &[u32],
) -> (Option<FuzzOutcome>, Vec<u8>) {
    let mut at = DATA0;
    let mut descs: Vec<(u64, u32, u16)> = Vec::new();
    let mut place = |len: u64| -> u64 {
        if at + len > REGION0.0 + REGION0.1 && at < REGION1.0 {
            at = REGION1.0;
        }
        let a = at;
        at += (len + 7) & !7;
        a
    };
    for piece in readable {
        let a = place(piece.len() as u64);
        guest.write(a, piece);
        descs.push((a, piece.len() as u32, 0));
    }
    let mut wbufs = Vec::new();
    for &len in writable {
        let a = place(u64::from(len));
        descs.push((a, len, F_WRITE));
        wbufs.push((a, len));
    }
    if descs.is_empty() || descs.len() > usize::from(MAX_QUEUE) {
        return (None, Vec::new());
    }
    let n = descs.len();
    for (i, &(a, len, flags)) in descs.iter().enumerate() {
        let (flags, next) = if i + 1 < n {
            (flags | F_NEXT, (i + 1) as u16)
        } else {
            (flags, 0)
        };
        guest.write_desc(DESC, i as u16, a, len, flags, next);
    }
    guest.publish(MAX_QUEUE, &[0], 1);
    let out = h
        .process_queue(&guest.mem, layout(MAX_QUEUE, false))
        .and_then(|v| v.into_iter().next());
    let used = match out {
        Some(FuzzOutcome::Served { used } | FuzzOutcome::ErrorReply { used, .. }) => used,
        _ => 0,
    };
    let mut data = Vec::new();
    let mut left = used as usize;
    for (a, l) in wbufs {
        if left == 0 {
            break;
        }
        let take = left.min(l as usize);
        data.extend_from_slice(&guest.read(a, take));
        left -= take;
    }
    (out, data)
}

/// A NUL-terminated copy of `name`.
pub fn cstr(name: &str) -> Vec<u8> {
    CString::new(name).expect("name").into_bytes_with_nul()
}
