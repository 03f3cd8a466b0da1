//! Worker-model benchmark of the vhost-user device: the same FUSE requests through real
//! virtqueues (the test VMM of `tests/vmm/`) with requests served on the vring thread or by
//! worker pools, on MemFs, at several queue depths. It is the measurement behind the default
//! [`Dispatch::SlowToPool`] (see `src/vhost/mod.rs`, "Worker model").
//!
//! `cargo bench --bench vhost_dispatch -- --warm-up-time 1 --measurement-time 3`
//!
//! Each iteration is one completed request; with a depth of `d`, `d` requests are kept in
//! flight, so the reported time per iteration is the inverse of the throughput.

#[path = "../tests/vmm/mod.rs"]
mod vmm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxfs::memfs::MemFs;
use boxfs::vhost::{DeviceHandle, Dispatch, FsDevice};
use boxfs::{DynFileSystem, SizeExt, ROOT_ID};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fuse_backend_rs::abi::fuse_abi::{GetattrIn, ReadIn, WriteIn};
use vm_memory::ByteValued;
use vmm::{op, request, FuseClient, Seg, OUT_HEADER};

const FILE_SIZE: u64 = 8 << 20;

/// Completes `iters` requests keeping `depth` in flight; returns the elapsed time.
fn pump(
    c: &mut FuseClient,
    depth: usize,
    iters: u64,
    make: &mut dyn FnMut(u64) -> Vec<Seg>,
) -> Duration {
    let q = c.queue;
    let start = Instant::now();
    let mut submitted = 0u64;
    while submitted < iters.min(depth as u64) {
        let u = c.next_unique();
        c.vmm.submit(q, &make(u));
        submitted += 1;
    }
    let mut done = 0u64;
    while done < iters {
        let comp = c
            .vmm
            .wait_any(q, Duration::from_secs(30))
            .expect("completion");
        assert!(comp.len >= OUT_HEADER, "short reply");
        done += 1;
        if submitted < iters {
            let u = c.next_unique();
            c.vmm.submit(q, &make(u));
            submitted += 1;
        }
    }
    start.elapsed()
}

struct Setup {
    _dir: tempfile::TempDir,
    handle: DeviceHandle,
    client: FuseClient,
    file: u64,
    fh: u64,
}

fn start(pool: usize, dispatch: Dispatch) -> Setup {
    let fs: Arc<dyn DynFileSystem> =
        Arc::new(MemFs::builder().capacity(512.mib()).build().expect("memfs"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("bench.sock");
    let handle = FsDevice::builder(fs)
        .thread_pool_size(pool)
        .dispatch(dispatch)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let mut client = FuseClient::connect(&path).expect("connect");
    let (f, o) = client
        .create(ROOT_ID, "data", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .expect("create");
    let block = vec![0x5au8; 1 << 20];
    for i in 0..FILE_SIZE >> 20 {
        client.write(f.nodeid, o.fh, i << 20, &block).expect("fill");
    }
    Setup {
        _dir: dir,
        handle,
        client,
        file: f.nodeid,
        fh: o.fh,
    }
}

fn benches(cr: &mut Criterion) {
    let modes = [
        ("vring-thread", 0usize, Dispatch::VringThread),
        ("slow-to-pool-4", 4, Dispatch::SlowToPool),
        ("adaptive-4", 4, Dispatch::Adaptive),
        ("pool-4", 4, Dispatch::Pool),
    ];
    let mut g = cr.benchmark_group("vhost_dispatch");
    for (name, pool, dispatch) in modes {
        let mut s = start(pool, dispatch);
        let (file, fh) = (s.file, s.fh);
        let getattr = GetattrIn::default();
        for depth in [1usize, 32] {
            g.bench_function(BenchmarkId::new(format!("getattr_qd{depth}"), name), |b| {
                b.iter_custom(|iters| {
                    pump(&mut s.client, depth, iters, &mut |u| {
                        vec![
                            Seg::R(request(op::GETATTR, u, ROOT_ID, &[getattr.as_slice()])),
                            Seg::W(256),
                        ]
                    })
                })
            });
        }
        let mut off = 0u64;
        g.bench_function(BenchmarkId::new("read4k_qd32", name), |b| {
            b.iter_custom(|iters| {
                pump(&mut s.client, 32, iters, &mut |u| {
                    off = (off + 4096) % FILE_SIZE;
                    let r = ReadIn {
                        fh,
                        offset: off,
                        size: 4096,
                        ..Default::default()
                    };
                    vec![
                        Seg::R(request(op::READ, u, file, &[r.as_slice()])),
                        Seg::W(OUT_HEADER + 4096),
                    ]
                })
            })
        });
        let payload = vec![0xa5u8; 64 << 10];
        let mut woff = 0u64;
        g.bench_function(BenchmarkId::new("write64k_qd16", name), |b| {
            b.iter_custom(|iters| {
                pump(&mut s.client, 16, iters, &mut |u| {
                    woff = (woff + (64 << 10)) % FILE_SIZE;
                    let w = WriteIn {
                        fh,
                        offset: woff,
                        size: payload.len() as u32,
                        ..Default::default()
                    };
                    vec![
                        Seg::R(request(op::WRITE, u, file, &[w.as_slice(), &payload])),
                        Seg::W(64),
                    ]
                })
            })
        });
        drop(s.client);
        s.handle.stop().expect("stop");
    }
    g.finish();
}

criterion_group!(dispatch, benches);
criterion_main!(dispatch);
