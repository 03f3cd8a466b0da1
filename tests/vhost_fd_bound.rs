//! Descriptors stay bounded under metadata churn at depth: mkdir/rmdir and create/unlink with
//! 32 requests in flight, the guest's FORGETs arriving late on the hiprio queue (as a busy
//! guest sends them), while another process creates, syncs and deletes trees on the same host
//! filesystem. The daemon's descriptors never exceed the fd cache size plus the open handles
//! and the descriptors of requests in flight, however many removed inodes the guest still
//! holds (issue 15: boxfsd ran into `EMFILE`); and FORGETs are served while the request queue
//! is stuck.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use boxfs::passthrough::PassthroughFs;
use boxfs::vhost::FsDevice;
use boxfs::{DynFileSystem, ROOT_ID};
use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, EntryOut, GetattrIn, MkdirIn, OpenOut, ReleaseIn,
};
use vm_memory::ByteValued;
use vmm::{obj, op, request, FuseClient, Reply, Seg};

const FD_CACHE: usize = 64;
/// Requests in flight on the request queue.
const DEPTH: usize = 32;
/// Inodes removed but not yet forgotten before the guest's FORGETs catch up.
const FORGET_LAG: usize = 1024;
/// mkdir+rmdir and create+unlink cycles in all.
const CYCLES: usize = 6_000;
const RMDIR: u32 = 11;

/// The tests in this binary share the process descriptor table, which one of them counts.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Metadata-heavy work beside the device: a few thousand files created, synced and deleted,
/// round after round, until `stop`.
fn side_load(dir: &Path, stop: &AtomicBool) -> usize {
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        let tree = dir.join(format!("r{rounds}"));
        std::fs::create_dir(&tree).expect("side mkdir");
        for i in 0..2_000 {
            if i % 256 == 0 && stop.load(Ordering::Relaxed) {
                break;
            }
            std::fs::File::create(tree.join(format!("f{i}"))).expect("side create");
        }
        let d = std::fs::File::open(&tree).expect("side open");
        // SAFETY: syncfs on a descriptor this thread owns.
        unsafe { libc::syncfs(d.as_raw_fd()) };
        drop(d);
        std::fs::remove_dir_all(&tree).expect("side rm -rf");
        rounds += 1;
    }
    rounds
}

/// What a slot of the pipeline does next.
#[derive(Clone, Copy, Debug)]
enum Stage {
    Mkdir,
    Rmdir(u64),
    GetattrRemoved(u64),
    Create,
    /// Created (node, handle); release before the unlink, or after it.
    Release(u64, u64, bool),
    Unlink(u64, Option<u64>),
}

#[test]
fn removed_inodes_keep_descriptors_bounded_at_depth_under_host_metadata_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let share = dir.path().join("share");
    let side = dir.path().join("side");
    std::fs::create_dir(&share).expect("share");
    std::fs::create_dir(&side).expect("side");
    let pfs = Arc::new(
        PassthroughFs::builder(&share)
            .fd_cache_size(FD_CACHE)
            .build()
            .expect("passthrough"),
    );
    let fs: Arc<dyn DynFileSystem> = pfs.clone();
    let sock = tempfile::tempdir().expect("socket dir");
    let path = sock.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let mut c = FuseClient::connect(&path).expect("connect");
    let q = c.queue;
    let base = open_fds();
    // The cache, one handle per file slot, and transient descriptors of requests in flight.
    let ceiling = base + FD_CACHE + DEPTH + 16;

    let stop = Arc::new(AtomicBool::new(false));
    let side_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || side_load(&side, &stop))
    };

    let mut slots: Vec<(Stage, usize)> = (0..DEPTH)
        .map(|s| {
            if s % 2 == 0 {
                (Stage::Mkdir, 0)
            } else {
                (Stage::Create, 0)
            }
        })
        .collect();
    let mut by_head: HashMap<u16, usize> = HashMap::new();
    let mut pending_forgets: Vec<(u64, u64)> = Vec::new();
    let mut started = 0usize;
    let mut max_fds = 0usize;
    let mut removed_getattrs = 0usize;
    let mut dir_cycles = DEPTH / 2;

    let submit = |c: &mut FuseClient, slot: usize, stage: Stage, iter: usize| -> u16 {
        let u = c.next_unique();
        let (req, out) = match stage {
            Stage::Mkdir => {
                let m = MkdirIn {
                    mode: 0o755,
                    umask: 0,
                };
                let n = cstr(&format!("d{slot}_{iter}"));
                (request(op::MKDIR, u, ROOT_ID, &[m.as_slice(), &n]), 256)
            }
            Stage::Rmdir(_) => {
                let n = cstr(&format!("d{slot}_{iter}"));
                (request(RMDIR, u, ROOT_ID, &[&n]), 64)
            }
            Stage::GetattrRemoved(ino) => {
                let g = GetattrIn::default();
                (request(op::GETATTR, u, ino, &[g.as_slice()]), 256)
            }
            Stage::Create => {
                let ci = CreateIn {
                    flags: libc::O_RDWR as u32,
                    mode: 0o644,
                    umask: 0,
                    fuse_flags: 0,
                };
                let n = cstr(&format!("f{slot}_{iter}"));
                (request(op::CREATE, u, ROOT_ID, &[ci.as_slice(), &n]), 512)
            }
            Stage::Release(ino, fh, _) => {
                let r = ReleaseIn {
                    fh,
                    ..Default::default()
                };
                (request(op::RELEASE, u, ino, &[r.as_slice()]), 64)
            }
            Stage::Unlink(..) => {
                let n = cstr(&format!("f{slot}_{iter}"));
                (request(op::UNLINK, u, ROOT_ID, &[&n]), 64)
            }
        };
        c.vmm.submit(q, &[Seg::R(req), Seg::W(out)])
    };

    for (s, &(stage, _)) in slots.iter().enumerate() {
        let head = submit(&mut c, s, stage, 0);
        by_head.insert(head, s);
        started += 1;
    }
    let mut batch = Vec::new();
    while !by_head.is_empty() {
        // Take every completion reaped so far before submitting again: the test VMM recycles
        // a completed chain's descriptors at once.
        batch.push(
            c.vmm
                .wait_any(q, Duration::from_secs(60))
                .expect("every request is answered"),
        );
        while let Some(more) = c.vmm.wait_any(q, Duration::ZERO) {
            batch.push(more);
        }
        let completed: Vec<(usize, vmm::Completion)> = batch
            .drain(..)
            .map(|done| (by_head.remove(&done.head).expect("a request of ours"), done))
            .collect();
        for (s, done) in completed {
            let body = Reply::parse(&done)
                .expect("reply")
                .result()
                .unwrap_or_else(|e| panic!("{:?} failed with errno {e}", slots[s].0));
            let (stage, iter) = slots[s];
            let next = match stage {
                Stage::Mkdir => Some(Stage::Rmdir(obj::<EntryOut>(&body).nodeid)),
                Stage::Rmdir(ino) => Some(Stage::GetattrRemoved(ino)),
                Stage::GetattrRemoved(ino) => {
                    // Served while the guest holds the removed directory: it has no links.
                    assert_eq!(obj::<AttrOut>(&body).attr.nlink, 0);
                    removed_getattrs += 1;
                    pending_forgets.push((ino, 1));
                    None
                }
                Stage::Create => {
                    let e: EntryOut = obj(&body);
                    let o: OpenOut = obj(&body[std::mem::size_of::<EntryOut>()..]);
                    // Every other file slot unlinks while its file is open.
                    Some(if s % 4 == 1 {
                        Stage::Release(e.nodeid, o.fh, false)
                    } else {
                        Stage::Unlink(e.nodeid, Some(o.fh))
                    })
                }
                Stage::Release(ino, _, false) => Some(Stage::Unlink(ino, None)),
                Stage::Release(ino, _, true) => {
                    pending_forgets.push((ino, 1));
                    None
                }
                Stage::Unlink(ino, Some(fh)) => Some(Stage::Release(ino, fh, true)),
                Stage::Unlink(ino, None) => {
                    pending_forgets.push((ino, 1));
                    None
                }
            };
            if pending_forgets.len() >= FORGET_LAG {
                max_fds = max_fds.max(open_fds());
                c.batch_forget(&pending_forgets);
                pending_forgets.clear();
            }
            let (stage, iter) = match next {
                Some(st) => (st, iter),
                None if started < CYCLES => {
                    started += 1;
                    let first = if s % 2 == 0 {
                        dir_cycles += 1;
                        Stage::Mkdir
                    } else {
                        Stage::Create
                    };
                    (first, iter + 1)
                }
                None => continue,
            };
            slots[s] = (stage, iter);
            let head = submit(&mut c, s, stage, iter);
            by_head.insert(head, s);
        }
    }
    max_fds = max_fds.max(open_fds());
    stop.store(true, Ordering::Relaxed);
    let rounds = side_thread.join().expect("side load");
    eprintln!(
        "{CYCLES} cycles at depth {DEPTH} beside {rounds} side rounds: at most {max_fds} \
         descriptors (base {base}, ceiling {ceiling})"
    );
    assert_eq!(removed_getattrs, dir_cycles);
    assert!(
        max_fds <= ceiling,
        "descriptors grew to {max_fds} with {FD_CACHE} cached at most (base {base})"
    );
    c.batch_forget(&pending_forgets);
    assert_eq!(pfs.inode_count(), 1, "every inode forgotten");
    assert_eq!(pfs.open_handles(), 0);
    assert!(open_fds() <= base + FD_CACHE);
    assert_eq!(handle.stats().error_replies, 0);
    drop(c);
    handle.wait().expect("device ends with the VMM");
}

/// FORGETs are served on the hiprio queue as they come, even while every worker is stuck in
/// a request and more requests wait behind it: a removed inode's cleanup never waits for the
/// request queues to drain.
#[test]
fn forgets_are_served_while_the_request_queue_is_stuck() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use boxfs::vhost::Dispatch;
    use vmm::testfs::{Gate, TestFs};

    const T: Duration = Duration::from_secs(10);
    let dir = tempfile::tempdir().expect("tempdir");
    let pfs = Arc::new(
        PassthroughFs::builder(dir.path())
            .fd_cache_size(FD_CACHE)
            .build()
            .expect("passthrough"),
    );
    let gate = Arc::new(Gate::default());
    let fs: Arc<dyn DynFileSystem> = Arc::new(TestFs {
        inner: pfs.clone(),
        fsync_gate: Some(gate.clone()),
    });
    let sock = tempfile::tempdir().expect("socket dir");
    let path = sock.path().join("fs.sock");
    // Every request goes through the one worker.
    let handle = FsDevice::builder(fs)
        .thread_pool_size(1)
        .dispatch(Dispatch::Pool)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let mut c = FuseClient::connect(&path).expect("connect");
    c.timeout = T;
    let (f, o) = c
        .create(ROOT_ID, "f", 0o644, libc::O_RDWR as u32)
        .expect("create");
    assert_eq!(pfs.inode_count(), 2);
    let q = c.queue;
    let mut slow = Vec::new();
    for _ in 0..3 {
        let u = c.next_unique();
        let fsync = request(
            op::FSYNC,
            u,
            f.nodeid,
            &[&[o.fh.to_le_bytes().as_slice(), &[0u8; 8]].concat()],
        );
        slow.push(c.vmm.submit(q, &[Seg::R(fsync), Seg::W(64)]));
    }
    // The worker is stuck in the first fsync; the others wait for it.
    gate.wait_entered(1, T);
    // Answered (and applied) while the request queue cannot move.
    c.forget(f.nodeid, 1);
    assert_eq!(pfs.inode_count(), 1, "the FORGET reached the filesystem");
    assert_eq!(c.vmm.in_flight(q), 3, "the fsyncs are still held");
    gate.open();
    for head in slow {
        let done = c.vmm.wait(q, head, T).expect("fsync answered");
        assert!(Reply::parse(&done).expect("reply").result().is_ok());
    }
    drop(c);
    handle.wait().expect("device ends with the VMM");
}
