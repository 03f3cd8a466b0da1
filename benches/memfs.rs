//! MemFs micro-benchmarks through the FUSE operation API (no transport).
//!
//! Mirrors `benches/passthrough.rs` (same benchmark names) so the two backends compare.
//!
//! `cargo bench --bench memfs -- --warm-up-time 1 --measurement-time 3`

use std::ffi::CString;

use boxfs::memfs::MemFs;
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{stat64, Context, CreateIn, FileSystem, SetattrValid, SizeExt, ROOT_ID};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Size of the file the I/O benchmarks use (all of it resident: MemFs is the cache).
const FILE_SIZE: u64 = 64 << 20;
/// Entries in the directory the listing benchmarks use.
const DIR_ENTRIES: usize = 10_000;
/// Reply buffer per READDIR call: what a guest kernel with large FUSE buffers asks for.
const READDIR_BUDGET: usize = 64 << 10;

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn rw_args() -> CreateIn {
    CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    }
}

/// Bytes a `fuse_dirent` with this name takes in the reply (8-byte aligned).
fn dirent_len(name: &[u8]) -> usize {
    (24 + name.len() + 7) & !7
}

/// Bytes a `fuse_direntplus` takes: a `fuse_entry_out` (128 bytes) plus the dirent.
fn direntplus_len(name: &[u8]) -> usize {
    128 + dirent_len(name)
}

/// SplitMix64, for reproducible random offsets.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A MemFs with `/f` (64 MiB of data) and `/big` (10 000 empty files).
fn setup() -> MemFs {
    let fs = MemFs::builder()
        .capacity(1.gib())
        .max_inodes(100_000)
        .build()
        .expect("build");
    let ctx = Context::new();
    let (e, fh, _, _) = fs
        .create(&ctx, ROOT_ID, &c("f"), rw_args())
        .expect("create");
    let fh = fh.expect("handle");
    let mut chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let len = chunk.len();
    for off in (0..FILE_SIZE).step_by(len) {
        let mut r = MemReader::new(&mut chunk);
        let n = fs
            .write(
                &ctx, e.inode, fh, &mut r, len as u32, off, None, false, 0, 0,
            )
            .expect("write");
        assert_eq!(n, len);
    }
    fs.release(&ctx, e.inode, 0, fh, false, false, None)
        .expect("release");
    fs.forget(&ctx, e.inode, 1);

    let big = fs
        .mkdir(&ctx, ROOT_ID, &c("big"), 0o755, 0)
        .expect("mkdir")
        .inode;
    for i in 0..DIR_ENTRIES {
        let (e, fh, _, _) = fs
            .create(&ctx, big, &c(&format!("e{i:05}")), rw_args())
            .expect("create");
        fs.release(&ctx, e.inode, 0, fh.expect("handle"), false, false, None)
            .expect("release");
        fs.forget(&ctx, e.inode, 1);
    }
    fs.forget(&ctx, big, 1);
    fs
}

fn benches(cr: &mut Criterion) {
    let fs = setup();
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
    let mut rng = 1u64;
    g.bench_function("read_4k", |b| {
        b.iter(|| {
            // A random page of the 64 MiB file.
            let off = next_random(&mut rng) % (FILE_SIZE / 4096) * 4096;
            w4.clear();
            let n = fs
                .read(&ctx, ino, fh, &mut w4, 4096, off, None, 0)
                .expect("read");
            debug_assert_eq!(n, 4096);
            n
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
    // Overwrites allocated pages, as the passthrough benchmark overwrites its file.
    g.bench_function("write_1m", |b| {
        b.iter(|| {
            let mut r = MemReader::new(&mut data);
            fs.write(&ctx, ino, fh, &mut r, 1 << 20, 0, None, false, 0, 0)
                .expect("write")
        })
    });
    // Writes 1 MiB into an emptied file: page allocation and charging included (and the
    // truncate that frees the previous iteration's pages).
    let (e2, fh2, _, _) = fs
        .create(&ctx, ROOT_ID, &c("w"), rw_args())
        .expect("create");
    let (ino2, fh2) = (e2.inode, fh2.expect("handle"));
    // SAFETY: stat64 is a plain C struct; all-zero bytes are a valid value (size 0).
    let zero: stat64 = unsafe { std::mem::zeroed() };
    g.bench_function("write_1m_alloc", |b| {
        b.iter(|| {
            fs.setattr(&ctx, ino2, zero, Some(fh2), SetattrValid::SIZE)
                .expect("truncate");
            let mut r = MemReader::new(&mut data);
            fs.write(&ctx, ino2, fh2, &mut r, 1 << 20, 0, None, false, 0, 0)
                .expect("write")
        })
    });
    g.finish();
    fs.release(&ctx, ino, 0, fh, false, false, None)
        .expect("release");
    fs.release(&ctx, ino2, 0, fh2, false, false, None)
        .expect("release");

    let cname = c("new");
    cr.bench_function("create_unlink", |b| {
        b.iter(|| {
            let (e, fh, _, _) = fs.create(&ctx, ROOT_ID, &cname, rw_args()).expect("create");
            fs.release(&ctx, e.inode, 0, fh.expect("handle"), false, false, None)
                .expect("release");
            fs.unlink(&ctx, ROOT_ID, &cname).expect("unlink");
            fs.forget(&ctx, e.inode, 1);
        })
    });

    let big = fs.lookup(&ctx, ROOT_ID, &c("big")).expect("lookup").inode;
    let mut g = cr.benchmark_group("readdir");
    g.throughput(Throughput::Elements(DIR_ENTRIES as u64 + 2));
    g.sample_size(10);
    g.bench_function("readdir_10000", |b| {
        b.iter(|| {
            let (dh, _) = fs.opendir(&ctx, big, 0).expect("opendir");
            let dh = dh.unwrap_or(0);
            let mut off = 0;
            let mut n = 0usize;
            loop {
                let mut used = 0;
                let mut got = 0;
                fs.readdir(&ctx, big, dh, READDIR_BUDGET as u32, off, &mut |e| {
                    let len = dirent_len(e.name);
                    if used + len > READDIR_BUDGET {
                        return Ok(0);
                    }
                    used += len;
                    got += 1;
                    off = e.offset;
                    Ok(len)
                })
                .expect("readdir");
                if got == 0 {
                    break;
                }
                n += got;
            }
            fs.releasedir(&ctx, big, 0, dh).expect("releasedir");
            assert_eq!(n, DIR_ENTRIES + 2);
        })
    });
    g.bench_function("readdirplus_10000", |b| {
        b.iter(|| {
            let (dh, _) = fs.opendir(&ctx, big, 0).expect("opendir");
            let dh = dh.unwrap_or(0);
            let mut off = 0;
            let mut inos = Vec::with_capacity(DIR_ENTRIES + 2);
            loop {
                let mut used = 0;
                let mut got = 0;
                fs.readdirplus(&ctx, big, dh, READDIR_BUDGET as u32, off, &mut |d, e| {
                    let len = direntplus_len(d.name);
                    if used + len > READDIR_BUDGET {
                        return Ok(0);
                    }
                    used += len;
                    got += 1;
                    off = d.offset;
                    if e.inode != 0 {
                        inos.push(e.inode);
                    }
                    Ok(len)
                })
                .expect("readdirplus");
                if got == 0 {
                    break;
                }
            }
            fs.releasedir(&ctx, big, 0, dh).expect("releasedir");
            assert_eq!(inos.len(), DIR_ENTRIES);
            for i in inos {
                fs.forget(&ctx, i, 1);
            }
        })
    });
    g.finish();
}

criterion_group!(memfs, benches);
criterion_main!(memfs);
