//! Sessions start clean (issue 14, section 4): a device that keeps serving (`keep_serving`)
//! through 100 VMM reconnects, each guest leaving open files, an unlinked-but-open file and
//! an open directory behind, holds no more inodes, handles, descriptors, MemFs bytes or
//! memory after the 100th than after the 10th.
//!
//! The same cycle runs against MemFs and PassthroughFs wrapped in `TrackFs` (which implements
//! `destroy` by releasing what the session held, and counts what it holds), and against the
//! bare backends, whose own `destroy` must do the same.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boxfs::memfs::MemFs;
use boxfs::passthrough::PassthroughFs;
use boxfs::vhost::FsDevice;
use boxfs::{DynFileSystem, SizeExt, ROOT_ID};
use vmm::trackfs::TrackFs;
use vmm::{FuseClient, Vmm, VmmConfig};

/// Descriptor and RSS figures are per process: the tests of this file run one at a time, each
/// from before it builds its backend (a PassthroughFs holds descriptors from the start, so a test
/// building one while another measures would show as that one's leak).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const CYCLES: usize = 100;
/// Cycles before the baseline is taken (allocator and thread-stack warm-up).
const WARMUP: usize = 10;
/// Bytes written into the unlinked-but-open file of each cycle.
const UNLINKED_BYTES: usize = 256 << 10;
/// Handles each guest leaves open; the backends allow only a few more, so handles that
/// survive their session make a later cycle fail with ENFILE.
const OPEN_PER_CYCLE: usize = 3;
const MAX_HANDLES: usize = 2 * OPEN_PER_CYCLE;

/// What the filesystem and the process hold between sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    /// Inodes the backend holds (MemFs: its inode table; PassthroughFs: inodes it knows).
    inodes: usize,
    /// Bytes a MemFs charges (0 for other backends).
    bytes: u64,
    /// Session bookkeeping of a `TrackFs` wrapper: (inodes, handles).
    tracked: (usize, usize),
    fds: usize,
    rss: u64,
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// One guest: INIT, replace "kept", write an unlinked-but-open file, open the directory, and
/// leave with everything held (a reboot without unmount).
fn guest_session(path: &Path, cycle: usize) {
    let cfg = VmmConfig {
        mem_size: 16 << 20,
        queue_size: 64,
        ..Default::default()
    };
    let mut c = FuseClient::new(Vmm::connect(path, cfg).expect("connect"));
    c.timeout = Duration::from_secs(30);
    c.init().expect("init");
    if c.lookup(ROOT_ID, "kept").is_ok() {
        c.unlink(ROOT_ID, "kept").expect("unlink kept");
    }
    let dir = match c.lookup(ROOT_ID, "dir") {
        Ok(e) => e,
        Err(_) => c.mkdir(ROOT_ID, "dir", 0o755).expect("mkdir"),
    };
    let (f, fo) = c
        .create(ROOT_ID, "kept", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .unwrap_or_else(|e| panic!("cycle {cycle}: create: errno {e}"));
    c.write(f.nodeid, fo.fh, 0, b"kept").expect("write");
    let (g, go) = c
        .create(ROOT_ID, "gone", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .unwrap_or_else(|e| panic!("cycle {cycle}: create: errno {e}"));
    let data = vec![cycle as u8; UNLINKED_BYTES];
    for (i, chunk) in data.chunks(64 << 10).enumerate() {
        c.write(g.nodeid, go.fh, (i * (64 << 10)) as u64, chunk)
            .expect("write");
    }
    c.unlink(ROOT_ID, "gone").expect("unlink gone");
    c.opendir(dir.nodeid)
        .unwrap_or_else(|e| panic!("cycle {cycle}: opendir: errno {e}"));
    assert_eq!(
        c.read(g.nodeid, go.fh, 0, 4).expect("read unlinked"),
        vec![cycle as u8; 4]
    );
    // The VMM goes away with the guest's lookups and handles still held.
}

fn run_cycles(fs: Arc<dyn DynFileSystem>, probe: &dyn Fn() -> (usize, u64, (usize, usize))) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .keep_serving(true)
        .thread_pool_size(2)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let measure = || {
        // A VMM that attaches and sends INIT is served only once the previous session has
        // ended, so what is measured here is what outlived it.
        let mut c = FuseClient::new(Vmm::connect(&path, VmmConfig::default()).expect("connect"));
        c.init().expect("init");
        let (inodes, bytes, tracked) = probe();
        drop(c);
        Held {
            inodes,
            bytes,
            tracked,
            fds: open_fds(),
            rss: rss_bytes(),
        }
    };
    let mut baseline = None;
    for cycle in 0..CYCLES {
        if cycle == WARMUP {
            baseline = Some(measure());
        }
        guest_session(&path, cycle);
    }
    let end = measure();
    let base = baseline.expect("baseline");
    eprintln!("after {WARMUP} cycles: {base:?}\nafter {CYCLES} cycles: {end:?}");
    assert_eq!(end.inodes, base.inodes, "held inodes grew");
    assert_eq!(end.bytes, base.bytes, "MemFs usage grew");
    assert_eq!(
        end.tracked,
        (0, 0),
        "the session's lookups and handles outlived it"
    );
    // A leak of one descriptor, or of one cycle's unlinked file, per cycle would show as 90 or
    // 22 MiB; the slack absorbs a late vring thread's exit event and allocator noise.
    assert!(
        end.fds <= base.fds + 4,
        "descriptors grew: {} -> {}",
        base.fds,
        end.fds
    );
    assert!(
        end.rss <= base.rss + (12 << 20),
        "RSS grew: {} -> {}",
        base.rss,
        end.rss
    );
    assert_eq!(handle.stats().connections as usize, CYCLES + 2);
    handle.stop().expect("stop");
}

fn memfs() -> Arc<MemFs> {
    Arc::new(
        MemFs::builder()
            .capacity(256.mib())
            .max_handles(MAX_HANDLES as u64)
            .build()
            .expect("memfs"),
    )
}

fn passthrough(root: &Path) -> Arc<PassthroughFs> {
    Arc::new(
        PassthroughFs::builder(root)
            .max_handles(MAX_HANDLES)
            .fd_cache_size(8)
            .build()
            .expect("passthrough"),
    )
}

#[test]
fn reconnect_cycles_hold_nothing_memfs_tracked() {
    let _serial = serial();
    let mem = memfs();
    let track = Arc::new(TrackFs::new(mem.clone()));
    let t = track.clone();
    run_cycles(track, &move || {
        (
            mem.inode_count(),
            mem.usage().bytes_used,
            (t.held_inodes(), t.held_handles()),
        )
    });
}

#[test]
fn reconnect_cycles_hold_nothing_passthrough_tracked() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("tempdir");
    let pt = passthrough(root.path());
    let track = Arc::new(TrackFs::new(pt.clone()));
    let t = track.clone();
    run_cycles(track, &move || {
        (pt.inode_count(), 0, (t.held_inodes(), t.held_handles()))
    });
}

#[test]
fn reconnect_cycles_hold_nothing_memfs() {
    let _serial = serial();
    let mem = memfs();
    let m = mem.clone();
    run_cycles(mem, &move || {
        (m.inode_count(), m.usage().bytes_used, (0, 0))
    });
}

#[test]
fn reconnect_cycles_hold_nothing_passthrough() {
    let _serial = serial();
    let root = tempfile::tempdir().expect("tempdir");
    let pt = passthrough(root.path());
    let p = pt.clone();
    run_cycles(pt, &move || (p.inode_count(), 0, (0, p.open_handles())));
}
