//! Resource exhaustion by a hostile guest, through the test VMM against PassthroughFs: lookups
//! without FORGET keep host descriptors bounded by the fd cache, and open handles without
//! RELEASE run into the process's descriptor limit, which the guest sees as `EMFILE` while the
//! device keeps serving.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::sync::{Arc, Mutex, MutexGuard};

use boxfs::passthrough::PassthroughFs;
use boxfs::vhost::FsDevice;
use boxfs::{DynFileSystem, ROOT_ID};
use vmm::FuseClient;

const FD_CACHE: usize = 64;
const NAMES: usize = 20_000;

/// The tests of this file run one at a time: the first counts the process's descriptors and
/// lowers its descriptor limit to run into it, which would fail whatever another test opened
/// meanwhile.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn lookups_without_forget_and_handles_without_release_stay_bounded() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    for i in 0..NAMES {
        std::fs::File::create(share.join(format!("n{i}"))).expect("create");
    }
    let fs: Arc<dyn DynFileSystem> = Arc::new(
        PassthroughFs::builder(&share)
            .fd_cache_size(FD_CACHE)
            .build()
            .expect("passthrough"),
    );
    let sock = tempfile::tempdir().expect("socket dir");
    let path = sock.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .thread_pool_size(0)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let mut c = FuseClient::connect(&path).expect("connect");
    let base = open_fds();

    // Lookups of every name, never forgotten: descriptors stay within the cache.
    let mut inodes = Vec::with_capacity(NAMES);
    for i in 0..NAMES {
        inodes.push(c.lookup(ROOT_ID, &format!("n{i}")).expect("lookup").nodeid);
    }
    let after = open_fds();
    assert!(
        after <= base + FD_CACHE + 8,
        "{NAMES} lookups left {after} descriptors open (base {base}, cache {FD_CACHE})"
    );
    // Every inode still works (reopened through the share on demand).
    for &ino in inodes.iter().step_by(997) {
        assert_eq!(c.getattr(ino).expect("getattr").attr.size, 0);
    }

    // Open handles without release: each holds a descriptor, up to the process limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let saved = lim;
    let cap = (open_fds() + 300) as libc::rlim_t;
    lim.rlim_cur = cap.min(lim.rlim_max);
    // SAFETY: valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let mut handles = Vec::new();
    let err = loop {
        match c.open(inodes[0], libc::O_RDONLY as u32) {
            Ok(o) => handles.push(o.fh),
            Err(e) => break e,
        }
        assert!(handles.len() <= 1000, "no bound on open handles");
    };
    assert!(
        err == libc::EMFILE || err == libc::ENFILE,
        "open past the limit: {err}"
    );
    assert!(
        handles.len() >= 200,
        "only {} handles before {err}",
        handles.len()
    );
    // The device keeps serving requests that need no new descriptor, and recovers once the
    // guest releases.
    assert_eq!(c.getattr(ROOT_ID).expect("getattr").attr.ino, ROOT_ID);
    for fh in handles.drain(..) {
        c.release(inodes[0], fh).expect("release");
    }
    let fh = c
        .open(inodes[1], libc::O_RDONLY as u32)
        .expect("open after release")
        .fh;
    c.release(inodes[1], fh).expect("release");
    // SAFETY: valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &saved) }, 0);
    assert_eq!(handle.stats().dropped, 0);
    drop(c);
    handle.wait().expect("device ends with the VMM");
}

#[test]
fn inode_and_handle_limits_give_enfile_and_the_device_keeps_serving() {
    let _serial = serial();
    const MAX_INODES: usize = 100;
    const MAX_HANDLES: usize = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    for i in 0..2 * MAX_INODES {
        std::fs::File::create(share.join(format!("n{i}"))).expect("create");
    }
    let fs: Arc<dyn DynFileSystem> = Arc::new(
        PassthroughFs::builder(&share)
            .max_inodes(MAX_INODES)
            .max_handles(MAX_HANDLES)
            .build()
            .expect("passthrough"),
    );
    let sock = tempfile::tempdir().expect("socket dir");
    let path = sock.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .thread_pool_size(0)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let mut c = FuseClient::connect(&path).expect("connect");

    // Inodes: the root counts; past the limit new inodes are refused, known ones still work.
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..2 * MAX_INODES {
        match c.lookup(ROOT_ID, &format!("n{i}")) {
            Ok(e) => held.push(e.nodeid),
            Err(e) => {
                assert_eq!(e, libc::ENFILE, "lookup n{i}");
                refused += 1;
            }
        }
    }
    assert_eq!(held.len(), MAX_INODES - 1, "the root is one of the inodes");
    assert_eq!(refused, MAX_INODES + 1);
    assert!(
        c.lookup(ROOT_ID, "n0").is_ok(),
        "a known inode is still found"
    );
    assert_eq!(
        c.create(ROOT_ID, "new", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
            .map(|_| ()),
        Err(libc::ENFILE)
    );
    assert!(
        !share.join("new").exists(),
        "a refused create leaves nothing"
    );
    // Forgetting frees room.
    c.forget(held[0], 2);
    assert!(c
        .lookup(ROOT_ID, &format!("n{}", 2 * MAX_INODES - 1))
        .is_ok());

    // Handles: past the limit open fails with ENFILE; a release makes room.
    let node = held[1];
    let mut fhs = Vec::new();
    loop {
        match c.open(node, libc::O_RDONLY as u32) {
            Ok(o) => fhs.push(o.fh),
            Err(e) => {
                assert_eq!(e, libc::ENFILE);
                break;
            }
        }
        assert!(fhs.len() <= MAX_HANDLES, "handle limit not enforced");
    }
    assert_eq!(fhs.len(), MAX_HANDLES);
    assert_eq!(c.opendir(ROOT_ID).map(|_| ()), Err(libc::ENFILE));
    c.release(node, fhs[0]).expect("release");
    assert!(c.opendir(ROOT_ID).is_ok(), "room again after a release");
    drop(c);
    handle.stop().expect("stop");
}

/// A guest that fills its whole request queue, over and over, without waiting: every request
/// is answered, nothing is dropped, and the worker pool's backlog is bounded by the queue.
#[test]
fn a_flooded_queue_is_served_completely() {
    let _serial = serial();
    use boxfs::memfs::MemFs;
    use boxfs::SizeExt;
    use fuse_backend_rs::abi::fuse_abi::GetattrIn;
    use vm_memory::ByteValued;
    use vmm::{op, request, Seg, Vmm, VmmConfig};

    let fs: Arc<dyn DynFileSystem> =
        Arc::new(MemFs::builder().capacity(16.mib()).build().expect("memfs"));
    let sock = tempfile::tempdir().expect("socket dir");
    let path = sock.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .thread_pool_size(2)
        .dispatch(boxfs::vhost::Dispatch::Pool)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let queue_size = 256u16;
    let vmm = Vmm::connect(
        &path,
        VmmConfig {
            queue_size,
            ..Default::default()
        },
    )
    .expect("connect");
    let mut c = FuseClient::new(vmm);
    c.init().expect("init");
    let q = c.queue;
    let getattr = GetattrIn::default();
    for _round in 0..8 {
        // A request takes two descriptors: half the ring fills the queue.
        let n = usize::from(queue_size / 2);
        for _ in 0..n {
            let u = c.next_unique();
            c.vmm.submit(
                q,
                &[
                    Seg::R(request(op::GETATTR, u, ROOT_ID, &[getattr.as_slice()])),
                    Seg::W(256),
                ],
            );
        }
        for _ in 0..n {
            let done = c
                .vmm
                .wait_any(q, std::time::Duration::from_secs(30))
                .expect("every flooded request is answered");
            assert!(done.len > 0);
        }
        assert_eq!(c.vmm.in_flight(q), 0);
    }
    let stats = handle.stats();
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.error_replies, 0);
    assert_eq!(c.getattr(ROOT_ID).expect("still serving").attr.ino, ROOT_ID);
    drop(c);
    handle.stop().expect("stop");
}
