//! Protocol strictness of the vhost-user virtio-fs device (issue 14, sections 4 and 8),
//! through a real vhost-user socket and the test VMM: nothing is served before FUSE_INIT, a
//! second INIT, a DESTROY or a reconnecting VMM ends the previous session (the filesystem's
//! `destroy` releases what it held), and descriptor chains that break the virtio rules are
//! returned unused.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use boxfs::memfs::MemFs;
use boxfs::vhost::{DeviceHandle, Dispatch, FsDevice};
use boxfs::{SizeExt, ROOT_ID};
use fuse_backend_rs::abi::fuse_abi::{GetattrIn, MkdirIn};
use vm_memory::ByteValued;
use vmm::trackfs::TrackFs;
use vmm::{op, request, FuseClient, Malformed, Reply, Seg, Vmm, VmmConfig, OUT_HEADER};

const T: Duration = Duration::from_secs(10);

struct Dev {
    _dir: tempfile::TempDir,
    path: PathBuf,
    handle: DeviceHandle,
    track: Arc<TrackFs>,
    mem: Arc<MemFs>,
}

fn start(pool: usize, keep_serving: bool) -> Dev {
    let mem = Arc::new(MemFs::builder().capacity(64.mib()).build().expect("memfs"));
    let track = Arc::new(TrackFs::new(mem.clone()));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fs.sock");
    let handle = FsDevice::builder(track.clone())
        .request_queues(2)
        .thread_pool_size(pool)
        .dispatch(if pool == 0 {
            Dispatch::VringThread
        } else {
            Dispatch::Pool
        })
        .keep_serving(keep_serving)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    Dev {
        _dir: dir,
        path,
        handle,
        track,
        mem,
    }
}

/// A VMM attached to the device, without FUSE_INIT.
fn attach(dev: &Dev) -> FuseClient {
    let mut c = FuseClient::new(Vmm::connect(&dev.path, VmmConfig::default()).expect("connect"));
    c.timeout = T;
    c
}

fn getattr_req(c: &mut FuseClient, ino: u64) -> Vec<u8> {
    let u = c.next_unique();
    request(op::GETATTR, u, ino, &[GetattrIn::default().as_slice()])
}

#[test]
fn requests_before_init_get_eio_and_forgets_are_dropped() {
    let dev = start(2, false);
    let mut c = attach(&dev);

    assert_eq!(c.getattr(ROOT_ID).unwrap_err(), libc::EIO);
    assert_eq!(c.lookup(ROOT_ID, "x").unwrap_err(), libc::EIO);
    assert_eq!(c.mkdir(ROOT_ID, "d", 0o755).unwrap_err(), libc::EIO);
    assert_eq!(c.statfs(ROOT_ID).unwrap_err(), libc::EIO);
    // An opcode no server knows: still "not initialised" first.
    assert_eq!(c.call(100, ROOT_ID, &[], 64).unwrap_err(), libc::EIO);
    // DESTROY of a session that never started.
    assert_eq!(c.destroy().unwrap_err(), libc::EIO);
    assert_eq!(dev.track.destroys(), 0);

    // FORGET and BATCH_FORGET have no answer: they come back unused and never reach the
    // filesystem.
    let dropped = dev.handle.stats().dropped;
    c.forget(ROOT_ID, 1);
    c.batch_forget(&[(ROOT_ID, 1), (2, 1)]);
    assert_eq!(
        dev.track.forgets.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(dev.handle.stats().dropped, dropped + 2);

    // An INIT the server does not complete does not start the session: a newer major gets
    // the server's version back (the kernel then sends INIT again), an older one EPROTO.
    let newer = c.init_version(8, 0).expect("major 8 answered with 7");
    assert_eq!(newer.major, 7);
    assert_eq!(c.getattr(ROOT_ID).unwrap_err(), libc::EIO);
    assert_eq!(c.init_version(6, 0).unwrap_err(), libc::EPROTO);
    assert_eq!(c.getattr(ROOT_ID).unwrap_err(), libc::EIO);
    assert_eq!(dev.track.inits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(dev.handle.stats().dropped, dropped + 2);

    c.init().expect("init");
    assert_eq!(c.getattr(ROOT_ID).expect("getattr").attr.ino, ROOT_ID);
    assert!(c.mkdir(ROOT_ID, "d", 0o755).is_ok());
    assert_eq!(dev.track.destroys(), 0, "a first INIT destroys nothing");
}

/// A session with open files, one of them unlinked, and a directory; returns
/// (file node, file handle, unlinked node, unlinked handle).
fn busy_session(c: &mut FuseClient, data: &[u8]) -> (u64, u64, u64, u64) {
    let (f, fo) = c
        .create(ROOT_ID, "kept", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .expect("create");
    c.write(f.nodeid, fo.fh, 0, data).expect("write");
    let (u, uo) = c
        .create(ROOT_ID, "gone", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .expect("create");
    c.write(u.nodeid, uo.fh, 0, data).expect("write");
    c.unlink(ROOT_ID, "gone").expect("unlink");
    c.mkdir(ROOT_ID, "dir", 0o755).expect("mkdir");
    (f.nodeid, fo.fh, u.nodeid, uo.fh)
}

#[test]
fn a_second_init_resets_the_session() {
    for pool in [0, 2] {
        let dev = start(pool, false);
        let mut c = attach(&dev);
        c.init().expect("init");
        let data = vec![7u8; 256 << 10];
        let (f, fh, u, uh) = busy_session(&mut c, &data);
        assert!(dev.track.held_inodes() >= 3 && dev.track.held_handles() == 2);
        let usage_open = dev.mem.usage().bytes_used;
        let inodes_open = dev.mem.inode_count();

        // The guest mounts again (a fresh mount on the same device).
        c.init().expect("second init");
        assert_eq!(dev.track.destroys(), 1, "the old session was destroyed");
        assert_eq!(dev.track.held_inodes(), 0);
        assert_eq!(dev.track.held_handles(), 0);
        // The unlinked file's data and inode are gone with the session.
        assert!(dev.mem.usage().bytes_used <= usage_open - data.len() as u64);
        assert_eq!(dev.mem.inode_count(), inodes_open - 1);
        // Node ids and handles of the old session no longer work ...
        assert_eq!(c.getattr(f).unwrap_err(), libc::EBADF);
        assert_eq!(c.read(f, fh, 0, 16).unwrap_err(), libc::EBADF);
        assert_eq!(c.read(u, uh, 0, 16).unwrap_err(), libc::EBADF);
        // ... and the filesystem itself is intact.
        let e = c
            .lookup(ROOT_ID, "kept")
            .expect("lookup in the new session");
        let o = c.open(e.nodeid, libc::O_RDONLY as u32).expect("open");
        assert_eq!(c.read(e.nodeid, o.fh, 0, 16).expect("read"), &data[..16]);
        assert_eq!(c.lookup(ROOT_ID, "gone").unwrap_err(), libc::ENOENT);
    }
}

#[test]
fn destroy_ends_the_session() {
    let dev = start(2, false);
    let mut c = attach(&dev);
    c.init().expect("init");
    let (f, _, _, _) = busy_session(&mut c, b"data");
    c.destroy().expect("destroy");
    assert_eq!(dev.track.destroys(), 1);
    assert_eq!(dev.track.held_inodes(), 0);
    assert_eq!(dev.track.held_handles(), 0);
    // After DESTROY nothing is served until the next INIT, and that INIT has nothing left to
    // destroy.
    assert_eq!(c.getattr(ROOT_ID).unwrap_err(), libc::EIO);
    c.init().expect("init");
    assert_eq!(dev.track.destroys(), 1);
    assert_eq!(c.getattr(f).unwrap_err(), libc::EBADF);
    assert!(c.lookup(ROOT_ID, "kept").is_ok());
}

#[test]
fn a_reconnecting_vmm_starts_a_clean_session() {
    let dev = start(2, true);
    let data = vec![1u8; 64 << 10];
    let mut old = None;
    for cycle in 0..3u64 {
        let mut c = attach(&dev);
        // The previous VMM's session ended before this VMM was served: nothing is served
        // before INIT, and the filesystem holds nothing of the previous guest.
        assert_eq!(c.getattr(ROOT_ID).unwrap_err(), libc::EIO);
        assert_eq!(dev.track.destroys(), cycle);
        assert_eq!(dev.track.held_inodes(), 0);
        assert_eq!(dev.track.held_handles(), 0);
        c.init().expect("init");
        if let Some((f, fh)) = old {
            assert_eq!(c.getattr(f).unwrap_err(), libc::EBADF);
            assert_eq!(c.read(f, fh, 0, 4).unwrap_err(), libc::EBADF);
        }
        if cycle > 0 {
            c.unlink(ROOT_ID, "kept").expect("unlink the previous file");
            c.call(11, ROOT_ID, &[b"dir\0"], 64).expect("rmdir");
        }
        let (f, fh, _, _) = busy_session(&mut c, &data);
        old = Some((f, fh));
        // The guest reboots without unmounting: its VMM disconnects.
    }
    assert_eq!(dev.handle.stats().connections, 3);
}

/// Malformed chains carrying a MKDIR: returned unused, and the directory is not created.
fn malformed_chains_are_not_served(pool: usize) {
    let dev = start(pool, false);
    let mut c = attach(&dev);
    c.init().expect("init");
    let q = c.queue;
    for (i, kind) in Malformed::ALL.into_iter().enumerate() {
        let dropped = dev.handle.stats().dropped;
        let name = format!("m{i}\0");
        let u = c.next_unique();
        let mkdir = MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        let req = request(op::MKDIR, u, ROOT_ID, &[mkdir.as_slice(), name.as_bytes()]);
        let h = c.vmm.submit_malformed(q, kind, &req, 256);
        let done = c.vmm.wait(q, h, T).expect("chain returned");
        assert_eq!(done.len, 0, "{kind:?}: chain must come back unused");
        assert_eq!(dev.handle.stats().dropped, dropped + 1, "{kind:?}");
        assert_eq!(
            c.lookup(ROOT_ID, &name[..name.len() - 1]).unwrap_err(),
            libc::ENOENT,
            "{kind:?}: the request must not be served"
        );
        // A GETATTR in the same shape, and the device keeps serving well-formed requests.
        let req = getattr_req(&mut c, ROOT_ID);
        let h = c.vmm.submit_malformed(q, kind, &req, 256);
        assert_eq!(c.vmm.wait(q, h, T).expect("returned").len, 0, "{kind:?}");
        let req = getattr_req(&mut c, ROOT_ID);
        let ok = c.vmm.call(q, &[Seg::R(req), Seg::W(256)]).expect("served");
        let r = Reply::parse(&ok).expect("reply");
        assert_eq!(r.header.error, 0);
        assert!(ok.len > OUT_HEADER);
    }
}

#[test]
fn malformed_chains_are_returned_unused_on_the_vring_thread() {
    malformed_chains_are_not_served(0);
}

#[test]
fn malformed_chains_are_returned_unused_by_the_pool() {
    malformed_chains_are_not_served(2);
}

/// A guest that sends INIT on one queue while requests are in flight on another: every
/// request is answered (served in one session or the other, or EIO in between), every INIT
/// but the first destroys the session before it, and the device keeps serving.
#[test]
fn init_racing_requests_on_another_queue() {
    for pool in [0, 2] {
        let dev = start(pool, false);
        let mut c = attach(&dev);
        assert_eq!(c.vmm.num_queues(), 3);
        c.init().expect("init");
        let inits = 20u64;
        let mut heads = Vec::new();
        for _ in 0..inits {
            for _ in 0..4 {
                let req = getattr_req(&mut c, ROOT_ID);
                heads.push(c.vmm.submit(1, &[Seg::R(req), Seg::W(256)]));
            }
            c.queue = 2;
            c.init().expect("init on the second queue");
            c.queue = 1;
        }
        for h in heads {
            let done = c.vmm.wait(1, h, T).expect("answered");
            let r = Reply::parse(&done).expect("reply");
            assert!(r.header.error == 0 || r.header.error == -libc::EIO, "{r:?}");
        }
        assert_eq!(dev.track.destroys(), inits);
        assert_eq!(c.getattr(ROOT_ID).expect("still serving").attr.ino, ROOT_ID);
    }
}
