//! PassthroughFs micro-benchmarks through the FUSE operation API (no transport).
//!
//! `cargo bench --bench passthrough -- --warm-up-time 1 --measurement-time 3`

use std::ffi::CString;

use boxfs::passthrough::PassthroughFs;
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{Context, CreateIn, FileSystem, ROOT_ID};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn setup() -> (tempfile::TempDir, PassthroughFs) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f"), vec![7u8; 1 << 20]).expect("write");
    std::fs::create_dir(dir.path().join("big")).expect("mkdir");
    for i in 0..10_000 {
        std::fs::write(dir.path().join(format!("big/e{i:05}")), b"").expect("write");
    }
    let fs = PassthroughFs::builder(dir.path()).build().expect("build");
    (dir, fs)
}

fn benches(cr: &mut Criterion) {
    let (_dir, fs) = setup();
    let ctx = Context::new();
    let name = c("f");
    let ino = fs.lookup(&ctx, ROOT_ID, &name).expect("lookup").inode;

    cr.bench_function("lookup", |b| {
        b.iter(|| {
            let e = fs.lookup(&ctx, ROOT_ID, &name).expect("lookup");
            fs.forget(&ctx, e.inode, 1);
        })
    });
    cr.bench_function("getattr", |b| {
        b.iter(|| fs.getattr(&ctx, ino, None).expect("getattr"))
    });

    let (fh, _, _) = fs.open(&ctx, ino, libc::O_RDWR as u32, 0).expect("open");
    let fh = fh.expect("handle");
    let mut g = cr.benchmark_group("io");
    g.throughput(Throughput::Bytes(4096));
    let mut w4 = MemWriter::new(4096);
    g.bench_function("read_4k", |b| {
        b.iter(|| {
            w4.clear();
            fs.read(&ctx, ino, fh, &mut w4, 4096, 8192, None, 0)
                .expect("read")
        })
    });
    g.throughput(Throughput::Bytes(1 << 20));
    let mut w1m = MemWriter::new(1 << 20);
    g.bench_function("read_1m", |b| {
        b.iter(|| {
            w1m.clear();
            fs.read(&ctx, ino, fh, &mut w1m, 1 << 20, 0, None, 0)
                .expect("read")
        })
    });
    let mut data = vec![3u8; 1 << 20];
    g.bench_function("write_1m", |b| {
        b.iter(|| {
            let mut r = MemReader::new(&mut data);
            fs.write(&ctx, ino, fh, &mut r, 1 << 20, 0, None, false, 0, 0)
                .expect("write")
        })
    });
    g.finish();
    fs.release(&ctx, ino, 0, fh, false, false, None)
        .expect("release");

    let cname = c("new");
    cr.bench_function("create_unlink", |b| {
        b.iter(|| {
            let args = CreateIn {
                flags: libc::O_RDWR as u32,
                mode: 0o644,
                umask: 0,
                fuse_flags: 0,
            };
            let (e, fh, _, _) = fs.create(&ctx, ROOT_ID, &cname, args).expect("create");
            fs.release(&ctx, e.inode, 0, fh.expect("handle"), false, false, None)
                .expect("release");
            fs.unlink(&ctx, ROOT_ID, &cname).expect("unlink");
            fs.forget(&ctx, e.inode, 1);
        })
    });

    let big = fs.lookup(&ctx, ROOT_ID, &c("big")).expect("lookup").inode;
    let mut g = cr.benchmark_group("readdir");
    g.throughput(Throughput::Elements(10_002));
    g.sample_size(10);
    g.bench_function("readdir_10000", |b| {
        b.iter(|| {
            let (dh, _) = fs.opendir(&ctx, big, 0).expect("opendir");
            let dh = dh.expect("handle");
            let mut off = 0;
            let mut n = 0usize;
            loop {
                let mut got = 0;
                fs.readdir(&ctx, big, dh, 4096, off, &mut |e| {
                    // ~25 entries per 4 KiB reply, like a guest's buffer.
                    if got == 128 {
                        return Ok(0);
                    }
                    got += 1;
                    off = e.offset;
                    Ok(1)
                })
                .expect("readdir");
                if got == 0 {
                    break;
                }
                n += got;
            }
            fs.releasedir(&ctx, big, 0, dh).expect("releasedir");
            assert_eq!(n, 10_002);
        })
    });
    g.bench_function("readdirplus_10000", |b| {
        b.iter(|| {
            let (dh, _) = fs.opendir(&ctx, big, 0).expect("opendir");
            let dh = dh.expect("handle");
            let mut off = 0;
            let mut inos = Vec::with_capacity(10_002);
            loop {
                let mut got = 0;
                fs.readdirplus(&ctx, big, dh, 4096, off, &mut |d, e| {
                    if got == 128 {
                        return Ok(0);
                    }
                    got += 1;
                    off = d.offset;
                    if e.inode != 0 {
                        inos.push(e.inode);
                    }
                    Ok(1)
                })
                .expect("readdirplus");
                if got == 0 {
                    break;
                }
            }
            fs.releasedir(&ctx, big, 0, dh).expect("releasedir");
            for i in inos {
                fs.forget(&ctx, i, 1);
            }
        })
    });
    g.finish();
}

criterion_group!(passthrough, benches);
criterion_main!(passthrough);
