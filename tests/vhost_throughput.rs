//! Worker-model measurement: requests per second through the vhost-user device with requests
//! served on the vring thread (`thread_pool_size(0)`) or by worker pools of several sizes, on
//! MemFs. Ignored by default; run it optimised:
//!
//! ```text
//! cargo test --release --test vhost_throughput -- --ignored --nocapture
//! ```
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use boxfs::memfs::MemFs;
use boxfs::vhost::{Dispatch, FsDevice};
use boxfs::{DynFileSystem, SizeExt, ROOT_ID};
use fuse_backend_rs::abi::fuse_abi::{GetattrIn, ReadIn, WriteIn};
use vm_memory::ByteValued;
use vmm::{op, request, FuseClient, Seg, OUT_HEADER};

/// Keeps `depth` copies of a request in flight for `dur`; returns completions per second.
fn pump(
    c: &mut FuseClient,
    depth: usize,
    dur: Duration,
    make: &mut dyn FnMut(u64) -> Vec<Seg>,
) -> f64 {
    let q = c.queue;
    for _ in 0..depth {
        let u = c.next_unique();
        c.vmm.submit(q, &make(u));
    }
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < dur {
        let comp = c
            .vmm
            .wait_any(q, Duration::from_secs(5))
            .expect("completion");
        assert!(comp.len >= OUT_HEADER);
        done += 1;
        let u = c.next_unique();
        c.vmm.submit(q, &make(u));
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    while c.vmm.in_flight(q) > 0 {
        c.vmm.wait_any(q, Duration::from_secs(5)).expect("drain");
    }
    rate
}

#[test]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
fn vring_thread_versus_worker_pool() {
    let dur = Duration::from_millis(1500);
    println!(
        "dispatch        | getattr qd1 | getattr qd32 | read4k qd32 | write64k qd16   (requests/s)"
    );
    let modes = [
        ("vring thread", 0usize, Dispatch::VringThread),
        ("slow-to-pool 4", 4, Dispatch::SlowToPool),
        ("adaptive 4", 4, Dispatch::Adaptive),
        ("pool 1", 1, Dispatch::Pool),
        ("pool 2", 2, Dispatch::Pool),
        ("pool 4", 4, Dispatch::Pool),
    ];
    for (name, pool, dispatch) in modes {
        let fs: Arc<dyn DynFileSystem> =
            Arc::new(MemFs::builder().capacity(512.mib()).build().expect("memfs"));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bench.sock");
        let handle = FsDevice::builder(fs)
            .thread_pool_size(pool)
            .dispatch(dispatch)
            .build()
            .expect("build")
            .serve(&path)
            .expect("serve");
        let mut c = FuseClient::connect(&path).expect("connect");
        let (f, o) = c
            .create(ROOT_ID, "data", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
            .expect("create");
        let block = vec![0x5au8; 1 << 20];
        for i in 0..8u64 {
            c.write(f.nodeid, o.fh, i << 20, &block).expect("fill");
        }
        let getattr = GetattrIn::default();
        let mut ga = |u| {
            vec![
                Seg::R(request(op::GETATTR, u, ROOT_ID, &[getattr.as_slice()])),
                Seg::W(256),
            ]
        };
        let g1 = pump(&mut c, 1, dur, &mut ga);
        let g32 = pump(&mut c, 32, dur, &mut ga);
        let mut off = 0u64;
        let mut rd = |u| {
            off = (off + 4096) % (8 << 20);
            let r = ReadIn {
                fh: o.fh,
                offset: off,
                size: 4096,
                ..Default::default()
            };
            vec![
                Seg::R(request(op::READ, u, f.nodeid, &[r.as_slice()])),
                Seg::W(OUT_HEADER + 4096),
            ]
        };
        let r32 = pump(&mut c, 32, dur, &mut rd);
        let payload = vec![0xa5u8; 64 << 10];
        let mut woff = 0u64;
        let mut wr = |u| {
            woff = (woff + (64 << 10)) % (8 << 20);
            let w = WriteIn {
                fh: o.fh,
                offset: woff,
                size: payload.len() as u32,
                ..Default::default()
            };
            vec![
                Seg::R(request(op::WRITE, u, f.nodeid, &[w.as_slice(), &payload])),
                Seg::W(64),
            ]
        };
        let w16 = pump(&mut c, 16, dur, &mut wr);
        println!("{name:<15} | {g1:>11.0} | {g32:>12.0} | {r32:>11.0} | {w16:>14.0}");
        drop(c);
        handle.stop().expect("stop");
    }
}
