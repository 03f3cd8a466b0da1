//! PassthroughFs against the host system calls each operation needs: the in-process half of the
//! "backend cost ≤ 2× the raw host syscalls" target (the device half is row − null row in
//! `scripts/bench.sh`).
//!
//! Every group has two functions:
//! - `boxfs`: the operation through the FUSE operation API (no transport);
//! - `syscalls`: the smallest sequence of host calls a passthrough needs for the same operation,
//!   made directly (rustix): for example `getattr` is one `fstat` of a held descriptor, and
//!   `lookup` is `openat(O_PATH)`, `fstat` and `close`.
//!
//! The ratio of the two is the backend's overhead over the kernel's own cost.
//!
//! `cargo bench --bench syscall_floor -- --warm-up-time 1 --measurement-time 3`

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use boxfs::passthrough::PassthroughFs;
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{Context, CreateIn, FileSystem, ROOT_ID};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rustix::fs::{Mode, OFlags, CWD};

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

const BIG: usize = 2_000;

fn setup() -> (tempfile::TempDir, PassthroughFs, OwnedFd) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f"), vec![7u8; 1 << 20]).expect("write");
    std::fs::create_dir(dir.path().join("big")).expect("mkdir");
    for i in 0..BIG {
        std::fs::write(dir.path().join(format!("big/e{i:05}")), b"").expect("write");
    }
    let fs = PassthroughFs::builder(dir.path()).build().expect("build");
    let root = rustix::fs::open(
        dir.path(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open root");
    (dir, fs, root)
}

/// `openat(O_PATH | O_NOFOLLOW)`, `fstat`, `close`: what a lookup of a name needs.
fn lookup_calls(dir: impl AsFd, name: &CString) -> rustix::fs::Stat {
    let fd = rustix::fs::openat(
        dir,
        name.as_c_str(),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("openat");
    rustix::fs::fstat(&fd).expect("fstat")
}

fn benches(cr: &mut Criterion) {
    let (dir, fs, root) = setup();
    let ctx = Context::new();
    let name = c("f");
    let ino = fs.lookup(&ctx, ROOT_ID, &name).expect("lookup").inode;
    let path_fd = rustix::fs::openat(
        &root,
        name.as_c_str(),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("openat");
    let file = rustix::fs::open(
        dir.path().join("f"),
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open");

    let mut g = cr.benchmark_group("lookup");
    g.bench_function("boxfs", |b| {
        b.iter(|| {
            let e = fs.lookup(&ctx, ROOT_ID, &name).expect("lookup");
            fs.forget(&ctx, e.inode, 1);
        })
    });
    g.bench_function("syscalls", |b| b.iter(|| lookup_calls(&root, &name)));
    g.finish();

    let mut g = cr.benchmark_group("getattr");
    g.bench_function("boxfs", |b| {
        b.iter(|| fs.getattr(&ctx, ino, None).expect("getattr"))
    });
    g.bench_function("syscalls", |b| {
        b.iter(|| rustix::fs::fstat(&path_fd).expect("fstat"))
    });
    g.finish();

    let (fh, _, _) = fs.open(&ctx, ino, libc::O_RDWR as u32, 0).expect("open");
    let fh = fh.expect("handle");
    for (label, size, offset) in [("read_4k", 4096usize, 8192u64), ("read_1m", 1 << 20, 0)] {
        let mut g = cr.benchmark_group(label);
        g.throughput(Throughput::Bytes(size as u64));
        let mut w = MemWriter::new(size);
        g.bench_function("boxfs", |b| {
            b.iter(|| {
                w.clear();
                fs.read(&ctx, ino, fh, &mut w, size as u32, offset, None, 0)
                    .expect("read")
            })
        });
        let mut buf = vec![0u8; size];
        g.bench_function("syscalls", |b| {
            b.iter(|| rustix::io::pread(&file, &mut buf[..], offset).expect("pread"))
        });
        g.finish();
    }
    let mut g = cr.benchmark_group("write_1m");
    g.throughput(Throughput::Bytes(1 << 20));
    let mut data = vec![3u8; 1 << 20];
    g.bench_function("boxfs", |b| {
        b.iter(|| {
            let mut r = MemReader::new(&mut data);
            fs.write(&ctx, ino, fh, &mut r, 1 << 20, 0, None, false, 0, 0)
                .expect("write")
        })
    });
    let data = vec![3u8; 1 << 20];
    g.bench_function("syscalls", |b| {
        b.iter(|| rustix::io::pwrite(&file, &data, 0).expect("pwrite"))
    });
    g.finish();
    fs.release(&ctx, ino, 0, fh, false, false, None)
        .expect("release");

    let cname = c("new");
    let mut g = cr.benchmark_group("create_unlink");
    g.bench_function("boxfs", |b| {
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
    let dir_fd = rustix::fs::open(
        dir.path(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("open dir");
    g.bench_function("syscalls", |b| {
        b.iter(|| {
            let fd = rustix::fs::openat(
                &dir_fd,
                cname.as_c_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .expect("create");
            rustix::fs::fstat(&fd).expect("fstat");
            drop(fd);
            rustix::fs::unlinkat(&dir_fd, cname.as_c_str(), rustix::fs::AtFlags::empty())
                .expect("unlink");
        })
    });
    g.finish();

    let big = fs.lookup(&ctx, ROOT_ID, &c("big")).expect("lookup").inode;
    let big_path = dir.path().join("big");
    let mut g = cr.benchmark_group("readdirplus");
    g.throughput(Throughput::Elements(BIG as u64));
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("boxfs", BIG), |b| {
        b.iter(|| {
            let (dh, _) = fs.opendir(&ctx, big, 0).expect("opendir");
            let dh = dh.expect("handle");
            let mut off = 0;
            let mut inos = Vec::with_capacity(BIG + 2);
            loop {
                let mut got = 0;
                fs.readdirplus(&ctx, big, dh, 4096, off, &mut |d, e| {
                    // About what one 4 KiB reply of a guest holds.
                    if got == 25 {
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
    g.bench_function(BenchmarkId::new("syscalls", BIG), |b| {
        b.iter(|| {
            let d = rustix::fs::openat(
                CWD,
                &big_path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .expect("opendir");
            let mut n = 0usize;
            let mut entries = rustix::fs::Dir::read_from(&d).expect("dir");
            while let Some(entry) = entries.read() {
                let entry = entry.expect("getdents");
                let name = entry.file_name();
                if name.to_bytes() == b"." || name.to_bytes() == b".." {
                    continue;
                }
                let fd = rustix::fs::openat(
                    &d,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .expect("openat");
                rustix::fs::fstat(&fd).expect("fstat");
                n += 1;
            }
            assert_eq!(n, BIG);
        })
    });
    g.finish();
}

criterion_group!(syscall_floor, benches);
criterion_main!(syscall_floor);
