//! The vhost-user virtio-fs device through a real vhost-user socket, driven by the test VMM:
//! FUSE operations, malformed descriptor chains, the worker pool, stop and reconnect.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use boxfs::memfs::MemFs;
use boxfs::vhost::{DeviceHandle, Dispatch, FsDevice};
use boxfs::{DynFileSystem, SizeExt, ROOT_ID};
use fuse_backend_rs::abi::fuse_abi::{
    BatchForgetIn, ForgetOne, GetattrIn, InitIn, ReadIn, WriteIn,
};
use vhost::VhostBackend;
use vm_memory::ByteValued;
use vmm::testfs::{Gate, TestFs, PANIC_INODE};
use vmm::{
    op, request, FuseClient, Next, RawDesc, Reply, Seg, Vmm, VmmConfig, F_INDIRECT, F_NEXT,
    F_WRITE, OUT_HEADER,
};

const T: Duration = Duration::from_secs(5);

fn memfs() -> Arc<dyn DynFileSystem> {
    Arc::new(MemFs::builder().capacity(256.mib()).build().expect("memfs"))
}

struct Dev {
    _dir: tempfile::TempDir,
    path: PathBuf,
    handle: DeviceHandle,
}

fn start_with(fs: Arc<dyn DynFileSystem>, pool: usize, keep: bool) -> Dev {
    start_dispatch(fs, pool, Dispatch::Pool, keep)
}

fn start_dispatch(fs: Arc<dyn DynFileSystem>, pool: usize, dispatch: Dispatch, keep: bool) -> Dev {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .tag("boxfs-test")
        .request_queues(2)
        .thread_pool_size(pool)
        .dispatch(dispatch)
        .keep_serving(keep)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    Dev {
        _dir: dir,
        path,
        handle,
    }
}

fn client(path: &Path) -> FuseClient {
    FuseClient::connect(path).expect("connect")
}

fn basic_ops(pool: usize, dispatch: Dispatch) {
    let dev = start_dispatch(memfs(), pool, dispatch, false);
    let mut c = client(&dev.path);
    assert_eq!(c.vmm.tag().as_deref(), Some("boxfs-test"));
    assert_eq!(c.vmm.device_queues, 3);
    let cfg = c.vmm.config.clone().expect("config space");
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 2);

    let root = c.getattr(ROOT_ID).expect("getattr root");
    assert_eq!(root.attr.mode & libc::S_IFMT, libc::S_IFDIR);

    let dir = c.mkdir(ROOT_ID, "d", 0o755).expect("mkdir");
    let (f, fh) = c
        .create(
            dir.nodeid,
            "f.txt",
            0o644 | libc::S_IFREG,
            libc::O_RDWR as u32,
        )
        .expect("create");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for (i, chunk) in data.chunks(64 << 10).enumerate() {
        let n = c
            .write(f.nodeid, fh.fh, (i * (64 << 10)) as u64, chunk)
            .expect("write");
        assert_eq!(n as usize, chunk.len());
    }
    let back = c.read(f.nodeid, fh.fh, 0, 256 << 10).expect("read");
    assert_eq!(back, data);
    let part = c.read(f.nodeid, fh.fh, 1000, 10).expect("read part");
    assert_eq!(part, &data[1000..1010]);
    assert_eq!(
        c.getattr(f.nodeid).expect("getattr").attr.size,
        data.len() as u64
    );
    assert_eq!(c.truncate(f.nodeid, 10).expect("truncate").attr.size, 10);
    c.fsync(f.nodeid, fh.fh).expect("fsync");
    c.release(f.nodeid, fh.fh).expect("release");

    let found = c.lookup(dir.nodeid, "f.txt").expect("lookup");
    assert_eq!(found.nodeid, f.nodeid);
    assert_eq!(c.lookup(dir.nodeid, "missing").unwrap_err(), libc::ENOENT);

    for i in 0..100 {
        let (e, o) = c
            .create(
                dir.nodeid,
                &format!("n{i:03}"),
                0o644 | libc::S_IFREG,
                libc::O_RDWR as u32,
            )
            .expect("create many");
        c.release(e.nodeid, o.fh).expect("release");
    }
    let names: Vec<String> = c
        .list(dir.nodeid)
        .expect("readdirplus")
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(names.len(), 101, "{names:?}");
    assert!(names.contains(&"f.txt".to_string()));

    let st = c.statfs(ROOT_ID).expect("statfs");
    assert!(st.bsize > 0);
    c.forget(found.nodeid, 1);
    c.batch_forget(&[(f.nodeid, 1), (dir.nodeid, 1)]);
    assert_eq!(c.getattr(ROOT_ID).expect("still serving").attr.ino, ROOT_ID);
    // The second request queue works too.
    c.queue = 2;
    assert_eq!(c.getattr(ROOT_ID).expect("queue 2").attr.ino, ROOT_ID);
    drop(c);
    dev.handle
        .wait()
        .expect("device ends when the VMM disconnects");
    assert!(!dev.path.exists(), "socket file removed");
}

#[test]
fn fuse_operations_on_vring_threads() {
    basic_ops(0, Dispatch::VringThread);
}

#[test]
fn fuse_operations_on_worker_pool() {
    basic_ops(3, Dispatch::Pool);
}

#[test]
fn fuse_operations_slow_requests_to_pool() {
    basic_ops(2, Dispatch::SlowToPool);
}

#[test]
fn fuse_operations_adaptive() {
    basic_ops(2, Dispatch::Adaptive);
}

#[test]
fn no_event_idx_and_no_reply_ack() {
    let dev = start_with(memfs(), 2, false);
    let vmm = Vmm::connect(
        &dev.path,
        VmmConfig {
            event_idx: false,
            reply_ack: false,
            ..Default::default()
        },
    )
    .expect("connect");
    let mut c = FuseClient::new(vmm);
    c.init().expect("init");
    for _ in 0..50 {
        c.getattr(ROOT_ID).expect("getattr");
    }
}

/// Asserts the device answers a normal request after whatever came before.
fn still_serving(c: &mut FuseClient) {
    let a = c.getattr(ROOT_ID).expect("device still serving");
    assert_eq!(a.attr.ino, ROOT_ID);
}

fn expect_dropped(c: &mut FuseClient, head: u16) {
    let done = c.vmm.wait(c.queue, head, T).expect("chain returned");
    assert_eq!(done.len, 0, "chain should be returned unanswered");
}

fn expect_errno(c: &mut FuseClient, head: u16, errno: i32) {
    let done = c.vmm.wait(c.queue, head, T).expect("chain returned");
    let r = Reply::parse(&done).expect("error reply");
    assert_eq!(r.header.error, -errno, "reply {r:?}");
    assert_eq!(r.header.len, OUT_HEADER);
    assert_eq!(done.len, OUT_HEADER);
}

fn getattr_req(c: &mut FuseClient) -> Vec<u8> {
    let u = c.next_unique();
    request(op::GETATTR, u, ROOT_ID, &[GetattrIn::default().as_slice()])
}

#[test]
fn malformed_chains_are_answered_or_dropped() {
    for (pool, dispatch) in [
        (0, Dispatch::VringThread),
        (2, Dispatch::Pool),
        (2, Dispatch::SlowToPool),
        (2, Dispatch::Adaptive),
    ] {
        malformed(pool, dispatch);
    }
}

fn malformed(pool: usize, dispatch: Dispatch) {
    let dev = start_dispatch(memfs(), pool, dispatch, false);
    let mut c = client(&dev.path);
    let q = c.queue;
    let outside = c.vmm.mem_size() + 0x1000;

    // Header shorter than a fuse_in_header.
    let h = c.vmm.submit(q, &[Seg::R(vec![1; 10]), Seg::W(256)]);
    expect_dropped(&mut c, h);
    still_serving(&mut c);

    // Header claims more bytes than the chain holds.
    let mut req = getattr_req(&mut c);
    req[0..4].copy_from_slice(&4096u32.to_le_bytes());
    let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(256)]);
    expect_errno(&mut c, h, libc::EINVAL);
    // ... or less than the header itself.
    let mut req = getattr_req(&mut c);
    req[0..4].copy_from_slice(&8u32.to_le_bytes());
    let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(256)]);
    expect_errno(&mut c, h, libc::EINVAL);
    still_serving(&mut c);

    // A request that needs a reply but has no reply buffer.
    let req = getattr_req(&mut c);
    let h = c.vmm.submit(q, &[Seg::R(req)]);
    expect_dropped(&mut c, h);

    // GETATTR whose reply buffer is smaller than the reply (virtiofsd exits on this one).
    let req = getattr_req(&mut c);
    let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(40)]);
    expect_errno(&mut c, h, libc::EINVAL);
    // ... and a reply buffer smaller than a reply header.
    let req = getattr_req(&mut c);
    let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(8)]);
    expect_dropped(&mut c, h);
    still_serving(&mut c);

    // Readable descriptor outside guest memory.
    let reply = c.vmm.alloc(256);
    let h = c.vmm.submit_raw(
        q,
        &[
            RawDesc {
                addr: outside,
                len: 48,
                flags: F_NEXT,
                next: Next::Pos(1),
            },
            RawDesc {
                addr: reply,
                len: 256,
                flags: F_WRITE,
                next: Next::None,
            },
        ],
    );
    expect_dropped(&mut c, h);
    // Descriptor straddling the end of guest memory.
    let h = c.vmm.submit_raw(
        q,
        &[
            RawDesc {
                addr: c.vmm.mem_size() - 16,
                len: 48,
                flags: F_NEXT,
                next: Next::Pos(1),
            },
            RawDesc {
                addr: reply,
                len: 256,
                flags: F_WRITE,
                next: Next::None,
            },
        ],
    );
    expect_dropped(&mut c, h);
    // Writable descriptor outside guest memory.
    let req = getattr_req(&mut c);
    let r = c.vmm.alloc_bytes(&req);
    let h = c.vmm.submit_raw(
        q,
        &[
            RawDesc {
                addr: r,
                len: req.len() as u32,
                flags: F_NEXT,
                next: Next::Pos(1),
            },
            RawDesc {
                addr: u64::MAX - 100,
                len: 256,
                flags: F_WRITE,
                next: Next::None,
            },
        ],
    );
    expect_dropped(&mut c, h);
    still_serving(&mut c);

    // `next` pointing past the descriptor table: the chain ends early, without a reply buffer.
    let req = getattr_req(&mut c);
    let r = c.vmm.alloc_bytes(&req);
    let h = c.vmm.submit_raw(
        q,
        &[RawDesc {
            addr: r,
            len: req.len() as u32,
            flags: F_NEXT,
            next: Next::Index(0xfff0),
        }],
    );
    expect_dropped(&mut c, h);
    // A descriptor loop.
    let req = getattr_req(&mut c);
    let r = c.vmm.alloc_bytes(&req);
    let h = c.vmm.submit_raw(
        q,
        &[
            RawDesc {
                addr: r,
                len: req.len() as u32,
                flags: F_NEXT,
                next: Next::Pos(1),
            },
            RawDesc {
                addr: r,
                len: req.len() as u32,
                flags: F_NEXT,
                next: Next::Pos(0),
            },
        ],
    );
    // The looping chain breaks the virtio rules: it comes back unused.
    expect_dropped(&mut c, h);
    still_serving(&mut c);

    // An avail-ring entry naming a descriptor past the table: nothing to return, no crash.
    c.vmm.publish_raw_head(q, 0xffff);
    still_serving(&mut c);

    // Indirect tables: a good one is served...
    let req = getattr_req(&mut c);
    let r = c.vmm.alloc_bytes(&req);
    let w = c.vmm.alloc(256);
    let table = c.vmm.write_table(&[
        RawDesc {
            addr: r,
            len: req.len() as u32,
            flags: F_NEXT,
            next: Next::Pos(1),
        },
        RawDesc {
            addr: w,
            len: 256,
            flags: F_WRITE,
            next: Next::None,
        },
    ]);
    let h = c.vmm.submit_raw(
        q,
        &[RawDesc {
            addr: table,
            len: 32,
            flags: F_INDIRECT,
            next: Next::None,
        }],
    );
    let done = c.vmm.wait(q, h, T).expect("indirect chain served");
    assert_eq!(done.len, OUT_HEADER + 104);
    let got = c.vmm.read_mem(w, 16);
    assert_eq!(
        i32::from_le_bytes(got[4..8].try_into().unwrap()),
        0,
        "no error"
    );
    // ... a table whose length is not a multiple of 16 ...
    let h = c.vmm.submit_raw(
        q,
        &[RawDesc {
            addr: table,
            len: 30,
            flags: F_INDIRECT,
            next: Next::None,
        }],
    );
    expect_dropped(&mut c, h);
    // ... a table outside guest memory ...
    let h = c.vmm.submit_raw(
        q,
        &[RawDesc {
            addr: outside,
            len: 32,
            flags: F_INDIRECT,
            next: Next::None,
        }],
    );
    expect_dropped(&mut c, h);
    // ... a nested indirect table ...
    let nested = c.vmm.write_table(&[RawDesc {
        addr: table,
        len: 32,
        flags: F_INDIRECT,
        next: Next::None,
    }]);
    let h = c.vmm.submit_raw(
        q,
        &[RawDesc {
            addr: nested,
            len: 16,
            flags: F_INDIRECT,
            next: Next::None,
        }],
    );
    expect_dropped(&mut c, h);
    // ... and a table whose entries point outside it.
    let bad = c.vmm.write_table(&[RawDesc {
        addr: r,
        len: req.len() as u32,
        flags: F_NEXT,
        next: Next::Index(200),
    }]);
    let h = c.vmm.submit_raw(
        q,
        &[RawDesc {
            addr: bad,
            len: 16,
            flags: F_INDIRECT,
            next: Next::None,
        }],
    );
    expect_dropped(&mut c, h);
    // A huge indirect length.
    let h = c.vmm.submit_raw(
        q,
        &[RawDesc {
            addr: table,
            len: 0xffff_fff0,
            flags: F_INDIRECT,
            next: Next::None,
        }],
    );
    expect_dropped(&mut c, h);
    still_serving(&mut c);

    // Names without a NUL terminator.
    let u = c.next_unique();
    let req = request(op::LOOKUP, u, ROOT_ID, &[b"no-nul"]);
    let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(256)]);
    expect_errno(&mut c, h, libc::EINVAL);
    let u = c.next_unique();
    let req = request(
        op::MKDIR,
        u,
        ROOT_ID,
        &[
            &[0o755u32.to_le_bytes(), 0u32.to_le_bytes()].concat(),
            b"dir",
        ],
    );
    let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(256)]);
    expect_errno(&mut c, h, libc::EINVAL);
    assert_eq!(
        c.lookup(ROOT_ID, "dir").unwrap_err(),
        libc::ENOENT,
        "nothing created"
    );
    still_serving(&mut c);

    // BATCH_FORGET whose count exceeds its payload (hiprio queue, no reply).
    let b = BatchForgetIn {
        count: 1_000_000,
        dummy: 0,
    };
    let one = ForgetOne {
        nodeid: ROOT_ID,
        nlookup: 1,
    };
    let u = c.next_unique();
    let req = request(op::BATCH_FORGET, u, 0, &[b.as_slice(), one.as_slice()]);
    let h = c.vmm.submit(0, &[Seg::R(req)]);
    let done = c.vmm.wait(0, h, T).expect("batch forget returned");
    assert_eq!(done.len, 0);
    let b = BatchForgetIn {
        count: u32::MAX,
        dummy: 0,
    };
    let u = c.next_unique();
    let req = request(op::BATCH_FORGET, u, 0, &[b.as_slice()]);
    let h = c.vmm.submit(0, &[Seg::R(req)]);
    assert_eq!(c.vmm.wait(0, h, T).expect("returned").len, 0);
    // FORGET with no body.
    let u = c.next_unique();
    let req = request(op::FORGET, u, ROOT_ID, &[]);
    let h = c.vmm.submit(0, &[Seg::R(req)]);
    assert_eq!(c.vmm.wait(0, h, T).expect("returned").len, 0);
    still_serving(&mut c);

    // READ and WRITE at offsets near 2^64.
    let (f, o) = c
        .create(ROOT_ID, "big", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .expect("create");
    for off in [u64::MAX, u64::MAX - 4095, i64::MAX as u64, 1u64 << 63] {
        let r = c.write(f.nodeid, o.fh, off, &[7u8; 4096]);
        assert!(r.is_err(), "write at {off:#x} must fail, got {r:?}");
        match c.read(f.nodeid, o.fh, off, 4096) {
            Ok(d) => assert!(d.is_empty()),
            Err(e) => assert!(
                e == libc::EINVAL || e == libc::EFBIG || e == libc::EOVERFLOW,
                "{e}"
            ),
        }
    }
    // WRITE whose size exceeds its payload; READ whose size exceeds the reply buffer.
    let w = WriteIn {
        fh: o.fh,
        offset: 0,
        size: 1 << 20,
        ..Default::default()
    };
    let u = c.next_unique();
    let req = request(op::WRITE, u, f.nodeid, &[w.as_slice(), &[1u8; 100]]);
    let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(64)]);
    expect_errno(&mut c, h, libc::EINVAL);
    let rd = ReadIn {
        fh: o.fh,
        offset: 0,
        size: 1 << 20,
        ..Default::default()
    };
    let u = c.next_unique();
    let req = request(op::READ, u, f.nodeid, &[rd.as_slice()]);
    let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(64)]);
    expect_errno(&mut c, h, libc::EINVAL);
    assert_eq!(
        c.getattr(f.nodeid).expect("getattr").attr.size,
        0,
        "nothing written"
    );
    still_serving(&mut c);

    // Unknown opcodes (0, 7 and 19 are holes in fuse-backend-rs's opcode enum).
    for opcode in [0u32, 7, 19, 47, 48, 49, 50, 1000, u32::MAX] {
        let u = c.next_unique();
        let req = request(opcode, u, ROOT_ID, &[&[0u8; 64]]);
        let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(256)]);
        expect_errno(&mut c, h, libc::ENOSYS);
    }

    // INIT with INIT_EXT but without the second flags word.
    let init = InitIn {
        major: 7,
        minor: 38,
        max_readahead: 0,
        flags: 1 << 30,
    };
    let u = c.next_unique();
    let req = request(op::INIT, u, 0, &[init.as_slice()]);
    let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(256)]);
    expect_errno(&mut c, h, libc::EINVAL);
    // INIT with a truncated body.
    let u = c.next_unique();
    let req = request(op::INIT, u, 0, &[&[7, 0, 0, 0]]);
    let h = c.vmm.submit(q, &[Seg::R(req), Seg::W(256)]);
    expect_errno(&mut c, h, libc::EINVAL);

    // Zero-length descriptors around a valid request.
    let req = getattr_req(&mut c);
    let r = c.vmm.alloc_bytes(&req);
    let w = c.vmm.alloc(256);
    let h = c.vmm.submit_raw(
        q,
        &[
            RawDesc {
                addr: r,
                len: 0,
                flags: F_NEXT,
                next: Next::Pos(1),
            },
            RawDesc {
                addr: r,
                len: req.len() as u32,
                flags: F_NEXT,
                next: Next::Pos(2),
            },
            RawDesc {
                addr: w,
                len: 0,
                flags: F_WRITE | F_NEXT,
                next: Next::Pos(3),
            },
            RawDesc {
                addr: w,
                len: 256,
                flags: F_WRITE,
                next: Next::None,
            },
        ],
    );
    let done = c.vmm.wait(q, h, T).expect("served");
    assert_eq!(done.len, OUT_HEADER + 104);

    still_serving(&mut c);
    let stats = dev.handle.stats();
    assert!(stats.dropped >= 10, "{stats:?}");
    assert!(stats.error_replies >= 10, "{stats:?}");
}

#[test]
fn a_panicking_filesystem_gets_eio_and_the_device_survives() {
    let fs: Arc<dyn DynFileSystem> = Arc::new(TestFs {
        inner: memfs(),
        fsync_gate: None,
    });
    for pool in [0, 1] {
        let dev = start_with(fs.clone(), pool, false);
        let mut c = client(&dev.path);
        assert_eq!(c.statfs(PANIC_INODE).unwrap_err(), libc::EIO);
        assert_eq!(c.statfs(PANIC_INODE).unwrap_err(), libc::EIO);
        still_serving(&mut c);
    }
}

/// A device over a [`TestFs`] whose fsyncs wait at a gate, a client, and one FSYNC submitted
/// and known to be blocked in the filesystem. Returns the chain head of the FSYNC.
fn blocked_fsync(pool: usize, dispatch: Dispatch) -> (Dev, FuseClient, Arc<Gate>, u16) {
    let gate = Arc::new(Gate::default());
    let fs: Arc<dyn DynFileSystem> = Arc::new(TestFs {
        inner: memfs(),
        fsync_gate: Some(gate.clone()),
    });
    let dev = start_dispatch(fs, pool, dispatch, false);
    let mut c = client(&dev.path);
    let (f, o) = c
        .create(ROOT_ID, "f", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .expect("create");
    let u = c.next_unique();
    let fsync = request(
        op::FSYNC,
        u,
        f.nodeid,
        &[&[o.fh.to_le_bytes().as_slice(), &[0u8; 8]].concat()],
    );
    let q = c.queue;
    let slow = c.vmm.submit(q, &[Seg::R(fsync), Seg::W(64)]);
    gate.wait_entered(1, T);
    (dev, c, gate, slow)
}

/// Whether a GETATTR submitted behind a blocked FSYNC on the same queue is answered before
/// the FSYNC, judged by the order in which the device returns the two chains (no timing).
/// With `expect_pass` the GETATTR is awaited while the FSYNC is still blocked; otherwise the
/// FSYNC is let through at once.
fn getattr_passes_blocked_fsync(pool: usize, dispatch: Dispatch, expect_pass: bool) -> bool {
    let (_dev, mut c, gate, slow) = blocked_fsync(pool, dispatch);
    let q = c.queue;
    let req = getattr_req(&mut c);
    let fast = c.vmm.submit(q, &[Seg::R(req), Seg::W(256)]);
    let fast_done = if expect_pass {
        let done = c
            .vmm
            .wait(q, fast, T)
            .expect("getattr answered while the fsync is blocked");
        gate.open();
        done
    } else {
        gate.open();
        c.vmm.wait(q, fast, T).expect("getattr")
    };
    let slow_done = c.vmm.wait(q, slow, T).expect("fsync");
    fast_done.seq < slow_done.seq
}

#[test]
fn slow_to_pool_offloads_only_syncs_locks_and_fallocate() {
    let dev = start_dispatch(memfs(), 2, Dispatch::SlowToPool, false);
    let mut c = client(&dev.path);
    let (f, o) = c
        .create(ROOT_ID, "f", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .expect("create");
    c.write(f.nodeid, o.fh, 0, b"data").expect("write");
    c.release(f.nodeid, o.fh).expect("release");
    for _ in 0..10 {
        let o = c.open(f.nodeid, libc::O_RDONLY as u32).expect("open");
        assert_eq!(c.read(f.nodeid, o.fh, 0, 4).expect("read"), b"data");
        c.release(f.nodeid, o.fh).expect("release");
    }
    // Open, read and close (RELEASE) are all served on the vring thread.
    assert_eq!(dev.handle.stats().offloaded, 0);
    let o = c.open(f.nodeid, libc::O_RDWR as u32).expect("open");
    c.fsync(f.nodeid, o.fh).expect("fsync");
    assert_eq!(dev.handle.stats().offloaded, 1, "FSYNC goes to the pool");
    c.release(f.nodeid, o.fh).expect("release");
    assert_eq!(dev.handle.stats().offloaded, 1);
}

#[test]
fn a_slow_request_does_not_stall_the_queue_with_a_worker_pool() {
    assert!(
        getattr_passes_blocked_fsync(2, Dispatch::default(), true),
        "slow-to-pool"
    );
    assert!(
        getattr_passes_blocked_fsync(2, Dispatch::Pool, true),
        "pool"
    );
    // Without workers the FSYNC holds the queue's only thread: the GETATTR comes back after
    // it.
    assert!(
        !getattr_passes_blocked_fsync(2, Dispatch::VringThread, false),
        "vring thread"
    );
    assert!(
        !getattr_passes_blocked_fsync(0, Dispatch::default(), false),
        "pool size 0"
    );
}

#[test]
fn stop_disconnects_an_attached_vmm_and_removes_the_socket() {
    for pool in [0, 2] {
        let dev = start_with(memfs(), pool, false);
        let mut c = client(&dev.path);
        still_serving(&mut c);
        dev.handle.stop().expect("stop");
        assert!(!dev.path.exists());
        assert!(dev.handle.is_finished());
        // The VMM's connection is closed: its next vhost-user message fails ...
        assert!(c.vmm.frontend().get_features().is_err());
        // ... and nothing is left to answer the guest's next request.
        let req = getattr_req(&mut c);
        let h = c.vmm.submit(c.queue, &[Seg::R(req), Seg::W(256)]);
        assert!(c.vmm.wait(c.queue, h, Duration::ZERO).is_none());
    }
}

#[test]
fn stop_before_any_connection() {
    let dev = start_with(memfs(), 1, false);
    assert!(dev.path.exists());
    dev.handle.stop().expect("stop");
    assert!(!dev.path.exists());
    drop(dev.handle);
}

#[test]
fn keep_serving_accepts_reconnects_and_keeps_the_data() {
    let dev = start_with(memfs(), 1, true);
    {
        let mut c = client(&dev.path);
        let (f, o) = c
            .create(
                ROOT_ID,
                "persist",
                0o644 | libc::S_IFREG,
                libc::O_RDWR as u32,
            )
            .expect("create");
        c.write(f.nodeid, o.fh, 0, b"kept").expect("write");
        c.release(f.nodeid, o.fh).expect("release");
    }
    {
        // Reconnecting works: the device kept serving after the first VMM left.
        let mut c = client(&dev.path);
        let e = c
            .lookup(ROOT_ID, "persist")
            .expect("lookup after reconnect");
        let o = c.open(e.nodeid, libc::O_RDONLY as u32).expect("open");
        assert_eq!(c.read(e.nodeid, o.fh, 0, 100).expect("read"), b"kept");
    }
    assert_eq!(dev.handle.stats().connections, 2);
    dev.handle.stop().expect("stop");
    assert!(!dev.path.exists());
}

#[test]
fn socket_path_in_use_stale_or_not_a_socket() {
    let dev = start_with(memfs(), 0, false);
    let err = FsDevice::builder(memfs())
        .build()
        .unwrap()
        .serve(&dev.path)
        .err()
        .expect("second device on the same socket must fail");
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(dev.path.exists(), "the first device's socket is untouched");
    dev.handle.stop().unwrap();

    // A stale socket (nothing listening) is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let h = FsDevice::builder(memfs())
        .build()
        .unwrap()
        .serve(&stale)
        .expect("replace stale");
    let mut c = client(&stale);
    still_serving(&mut c);
    drop(c);
    h.wait().unwrap();

    // A regular file is never replaced.
    let file = dir.path().join("file");
    std::fs::write(&file, b"precious").unwrap();
    let err = FsDevice::builder(memfs())
        .build()
        .unwrap()
        .serve(&file)
        .err()
        .expect("not a socket");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
}

#[test]
fn builder_rejects_bad_configuration() {
    let bad = [
        FsDevice::builder(memfs()).tag("").build(),
        FsDevice::builder(memfs()).tag("x".repeat(37)).build(),
        FsDevice::builder(memfs()).request_queues(0).build(),
        FsDevice::builder(memfs()).request_queues(64).build(),
        FsDevice::builder(memfs()).queue_size(1000).build(),
    ];
    for b in bad {
        assert!(b.is_err());
    }
    assert!(FsDevice::builder(memfs())
        .tag("x".repeat(36))
        .build()
        .is_ok());
}

#[test]
fn memory_table_updates() {
    let dev = start_with(memfs(), 2, false);
    let mut c = client(&dev.path);
    // Re-sending the memory table (as a VMM does on hotplug) keeps the device working.
    c.vmm.resend_mem_table().expect("set_mem_table again");
    still_serving(&mut c);
    // A region added later (CONFIGURE_MEM_SLOTS) can hold request buffers.
    let base = c.vmm.add_region(4 << 20).expect("add_mem_region");
    let req = getattr_req(&mut c);
    c.vmm.write_mem(base, &req);
    let h = c.vmm.submit_raw(
        c.queue,
        &[
            RawDesc {
                addr: base,
                len: req.len() as u32,
                flags: F_NEXT,
                next: Next::Pos(1),
            },
            RawDesc {
                addr: base + 4096,
                len: 256,
                flags: F_WRITE,
                next: Next::None,
            },
        ],
    );
    let done = c
        .vmm
        .wait(c.queue, h, T)
        .expect("served from the new region");
    assert_eq!(done.len, OUT_HEADER + 104);
    let hdr = c.vmm.read_mem(base + 4096, 16);
    assert_eq!(i32::from_le_bytes(hdr[4..8].try_into().unwrap()), 0);
    still_serving(&mut c);
    // After REM_MEM_REG, buffers there are outside guest memory for the device: dropped.
    let (head_buf, reply_buf) = (base, base + 4096);
    c.vmm.remove_region(base).expect("remove_mem_region");
    let h = c.vmm.submit_raw(
        c.queue,
        &[
            RawDesc {
                addr: head_buf,
                len: 48,
                flags: F_NEXT,
                next: Next::Pos(1),
            },
            RawDesc {
                addr: reply_buf,
                len: 256,
                flags: F_WRITE,
                next: Next::None,
            },
        ],
    );
    expect_dropped(&mut c, h);
    still_serving(&mut c);
}

#[test]
fn without_a_tag_the_config_space_is_not_offered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notag.sock");
    let handle = FsDevice::builder(memfs())
        .build()
        .unwrap()
        .serve(&path)
        .unwrap();
    let mut c = client(&path);
    assert!(c.vmm.config.is_none());
    assert_eq!(c.vmm.device_queues, 2);
    still_serving(&mut c);
    drop(c);
    handle.wait().unwrap();
}

#[test]
fn serve_on_a_listener_the_caller_owns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("owned.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let handle = FsDevice::builder(memfs())
        .build()
        .unwrap()
        .serve_listener(listener)
        .unwrap();
    assert!(handle.socket_path().is_none());
    let mut c = client(&path);
    still_serving(&mut c);
    drop(c);
    handle.wait().unwrap();
    assert!(
        path.exists(),
        "a caller-owned socket file is left to the caller"
    );
}

#[test]
fn many_requests_in_flight() {
    let dev = start_with(memfs(), 2, false);
    let mut c = client(&dev.path);
    let q = c.queue;
    let mut heads = Vec::new();
    for _ in 0..120 {
        let req = getattr_req(&mut c);
        heads.push(c.vmm.submit(q, &[Seg::R(req), Seg::W(256)]));
    }
    let mut n = 0;
    while n < heads.len() {
        let done = c.vmm.wait_any(q, T).expect("completion");
        let r = Reply::parse(&done).expect("reply");
        assert_eq!(r.header.error, 0);
        n += 1;
    }
    still_serving(&mut c);
}

#[test]
fn stop_does_not_hang_on_a_request_blocked_in_the_filesystem() {
    let (dev, _c, gate, _slow) = blocked_fsync(1, Dispatch::SlowToPool);
    // The FSYNC never finishes until the gate opens: stop gives up waiting for it (the test
    // fails, rather than hangs, if stop does not return).
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = Arc::new(dev.handle);
    let stopper = {
        let handle = handle.clone();
        std::thread::spawn(move || {
            let _ = tx.send(handle.stop().is_ok());
        })
    };
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(60)),
        Ok(true),
        "stop hung"
    );
    stopper.join().expect("stopper");
    assert!(handle.is_finished());
    assert!(!dev.path.exists());
    gate.open();
}

#[test]
fn adaptive_dispatch_keeps_serving_when_every_worker_is_busy() {
    // The only worker is blocked in an FSYNC: a burst of requests is served on the vring
    // thread instead of queueing behind it, all while the FSYNC is still blocked.
    let (_dev, mut c, gate, slow) = blocked_fsync(1, Dispatch::Adaptive);
    let q = c.queue;
    let mut heads = Vec::new();
    for _ in 0..8 {
        let req = getattr_req(&mut c);
        heads.push(c.vmm.submit(q, &[Seg::R(req), Seg::W(256)]));
    }
    for h in heads {
        c.vmm
            .wait(q, h, T)
            .expect("getattr answered while the worker is blocked");
    }
    gate.open();
    c.vmm.wait(q, slow, T).expect("fsync");
}

/// Back-to-back requests from a guest that honours EVENT_IDX: a polling device finds each
/// next request itself, so the guest does not need to kick it. The poll period is longer than
/// the test, so the device is known to be polling throughout (state, not timing): its
/// `avail_event` stays where it was and the guest (the test VMM decides as Linux does) sends
/// no kick at all. Disconnecting ends the poll at once.
#[test]
fn polling_serves_back_to_back_requests_without_kicks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fs.sock");
    let handle = FsDevice::builder(memfs())
        .thread_pool_size(0)
        .poll(Duration::from_secs(3600))
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let mut c = client(&path);
    let before = c.vmm.kicks;
    for _ in 0..20 {
        still_serving(&mut c);
    }
    assert_eq!(
        c.vmm.kicks - before,
        0,
        "kicks for back-to-back requests while the device polls"
    );
    drop(c);
    handle.stop().expect("stop");
}
