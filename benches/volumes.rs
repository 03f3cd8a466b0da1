//! The cost of the VolumeFs mount table: lookup+getattr and a 4 KiB read through a volume
//! against the same backend served directly (both called through `dyn DynFileSystem`, as the
//! device calls them).
//!
//! The `device` groups measure the same through the vhost-user device (the test VMM of
//! `tests/vmm/`, one request at a time), which is what a guest sees; the `call` groups call
//! the filesystem directly, where the table's few nanoseconds are the whole difference.
//!
//! `cargo bench --bench volumes -- --warm-up-time 1 --measurement-time 3`

#[path = "../tests/vmm/mod.rs"]
mod vmm;

use std::ffi::CString;
use std::sync::Arc;

use boxfs::memfs::MemFs;
use boxfs::passthrough::PassthroughFs;
use boxfs::vhost::{DeviceHandle, FsDevice};
use boxfs::volumes::{VolumeFs, VolumeOptions};
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{Context, CreateIn, DynFileSystem, SizeExt, ROOT_ID};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const FILE_SIZE: u64 = 1 << 20;

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// Fills `/d/f` (1 MiB) in `fs`.
fn fill(fs: &dyn DynFileSystem) {
    let ctx = Context::new();
    let d = fs.mkdir(&ctx, ROOT_ID, &c("d"), 0o755, 0).expect("mkdir");
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = fs.create(&ctx, d.inode, &c("f"), args).expect("create");
    let chunk: Vec<u8> = (0..FILE_SIZE).map(|i| (i % 251) as u8).collect();
    let mut r = MemReader::copied(&chunk);
    fs.write(
        &ctx,
        e.inode,
        fh.unwrap_or(0),
        &mut r,
        chunk.len() as u32,
        0,
        None,
        false,
        0,
        0,
    )
    .expect("write");
    fs.release(&ctx, e.inode, 0, fh.unwrap_or(0), false, false, None)
        .expect("release");
}

/// The backend served directly, and a VolumeFs serving an identical backend at `/vol`
/// (next to a few other volumes): each with the guest id of the directory `d`.
/// A labelled setup: the filesystem, the guest id of `d`, what must outlive it.
type Setup = (
    &'static str,
    Arc<dyn DynFileSystem>,
    u64,
    Box<dyn std::any::Any>,
);

/// Builds a backend (and what must outlive it).
type Make<'a> = &'a dyn Fn() -> (Arc<dyn DynFileSystem>, Box<dyn std::any::Any>);

fn setups(make: Make<'_>) -> Vec<Setup> {
    let ctx = Context::new();
    let (direct, g1) = make();
    fill(&*direct);
    let d = direct.lookup(&ctx, ROOT_ID, &c("d")).expect("d").inode;
    let (inner, g2) = make();
    fill(&*inner);
    let vfs = VolumeFs::new(Arc::new(MemFs::builder().build().expect("MemFs")));
    for p in ["/tmp", "/work", "/home"] {
        vfs.attach(
            p,
            Arc::new(MemFs::builder().build().expect("MemFs")),
            VolumeOptions::new(),
        )
        .expect("attach");
    }
    vfs.attach("/vol", inner, VolumeOptions::new())
        .expect("attach");
    let vfs: Arc<dyn DynFileSystem> = Arc::new(vfs);
    let vol = vfs.lookup(&ctx, ROOT_ID, &c("vol")).expect("vol").inode;
    let vd = vfs.lookup(&ctx, vol, &c("d")).expect("d").inode;
    vec![("direct", direct, d, g1), ("volume", vfs, vd, g2)]
}

fn bench_backend(crit: &mut Criterion, name: &str, make: Make<'_>) {
    let ctx = Context::new();
    let mut g = crit.benchmark_group(format!("volumes/call/{name}/lookup_getattr"));
    for (label, fs, d, _guard) in setups(make) {
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                let e = fs.lookup(&ctx, d, &c("f")).expect("lookup");
                let st = fs.getattr(&ctx, e.inode, None).expect("getattr");
                fs.forget(&ctx, e.inode, 1);
                st
            })
        });
    }
    g.finish();
    let mut g = crit.benchmark_group(format!("volumes/call/{name}/read_4k"));
    g.throughput(Throughput::Bytes(4096));
    for (label, fs, d, _guard) in setups(make) {
        let f = fs.lookup(&ctx, d, &c("f")).expect("lookup").inode;
        let (fh, _, _) = fs.open(&ctx, f, libc::O_RDONLY as u32, 0).expect("open");
        let fh = fh.unwrap_or(0);
        let mut off = 0u64;
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                let mut w = MemWriter::new(4096);
                let n = fs
                    .read(&ctx, f, fh, &mut w, 4096, off, None, 0)
                    .expect("read");
                off = (off + 4096) % FILE_SIZE;
                n
            })
        });
        fs.release(&ctx, f, 0, fh, false, false, None)
            .expect("release");
    }
    g.finish();
}

fn volumes(crit: &mut Criterion) {
    bench_backend(crit, "memfs", &|| {
        let fs: Arc<dyn DynFileSystem> =
            Arc::new(MemFs::builder().capacity(64.mib()).build().expect("MemFs"));
        (fs, Box::new(()))
    });
    bench_backend(crit, "passthrough", &|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs: Arc<dyn DynFileSystem> = Arc::new(
            PassthroughFs::builder(dir.path())
                .build()
                .expect("PassthroughFs"),
        );
        (fs, Box::new(dir))
    });
}

/// Serves `fs` on a fresh socket; returns the client and the guest id of directory `d`
/// (below `/vol` when `volume`).
fn serve(
    fs: Arc<dyn DynFileSystem>,
    volume: bool,
) -> (tempfile::TempDir, DeviceHandle, vmm::FuseClient, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.sock");
    let handle = FsDevice::builder(fs)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let mut client = vmm::FuseClient::connect(&path).expect("connect");
    let top = if volume {
        client.lookup(ROOT_ID, "vol").expect("vol").nodeid
    } else {
        ROOT_ID
    };
    let d = client.mkdir(top, "d", 0o755).expect("mkdir").nodeid;
    (dir, handle, client, d)
}

fn device(crit: &mut Criterion) {
    let memfs = || -> Arc<dyn DynFileSystem> {
        Arc::new(MemFs::builder().capacity(64.mib()).build().expect("MemFs"))
    };
    let vfs = VolumeFs::new(memfs());
    for p in ["/tmp", "/work", "/home", "/vol"] {
        vfs.attach(p, memfs(), VolumeOptions::new())
            .expect("attach");
    }
    let setups: Vec<(&str, Arc<dyn DynFileSystem>, bool)> =
        vec![("direct", memfs(), false), ("volume", Arc::new(vfs), true)];
    let mut lg = Vec::new();
    for (label, fs, volume) in setups {
        let (dir, handle, mut client, d) = serve(fs, volume);
        let (f, o) = client
            .create(d, "f", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
            .expect("create");
        let block = vec![0x5au8; 1 << 20];
        client.write(f.nodeid, o.fh, 0, &block).expect("fill");
        lg.push((label, dir, handle, client, d, f.nodeid, o.fh));
    }
    let mut g = crit.benchmark_group("volumes/device/memfs/lookup_getattr");
    for (label, _, _, client, d, _, _) in lg.iter_mut() {
        g.bench_function(BenchmarkId::from_parameter(*label), |b| {
            b.iter(|| {
                let e = client.lookup(*d, "f").expect("lookup");
                client.getattr(e.nodeid).expect("getattr")
            })
        });
    }
    g.finish();
    let mut g = crit.benchmark_group("volumes/device/memfs/read_4k");
    g.throughput(Throughput::Bytes(4096));
    for (label, _, _, client, _, f, fh) in lg.iter_mut() {
        let mut off = 0u64;
        g.bench_function(BenchmarkId::from_parameter(*label), |b| {
            b.iter(|| {
                off = (off + 4096) % FILE_SIZE;
                client.read(*f, *fh, off, 4096).expect("read")
            })
        });
    }
    g.finish();
    for (_, _dir, handle, client, ..) in lg {
        drop(client);
        handle.stop().expect("stop");
    }
}

criterion_group!(benches, device, volumes);
criterion_main!(benches);
