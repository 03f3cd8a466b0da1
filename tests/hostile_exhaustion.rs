//! Resource exhaustion by a hostile guest, through the test VMM against PassthroughFs: lookups
//! without FORGET keep host descriptors bounded by the fd cache, and open handles without
//! RELEASE run into the process's descriptor limit, which the guest sees as `EMFILE` while the
//! device keeps serving.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::sync::Arc;

use boxfs::passthrough::PassthroughFs;
use boxfs::vhost::FsDevice;
use boxfs::{DynFileSystem, ROOT_ID};
use vmm::FuseClient;

const FD_CACHE: usize = 64;
const NAMES: usize = 20_000;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn lookups_without_forget_and_handles_without_release_stay_bounded() {
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
