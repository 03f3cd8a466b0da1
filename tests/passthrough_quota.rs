//! The byte quota stays exact: concurrent writes extending one file are charged once, and a
//! file unlinked while open is credited when its last user lets go.

#[allow(dead_code)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use boxfs::passthrough::PassthroughFs;
use boxfs::zero_copy::MemReader;
use boxfs::{FileReadWriteVolatile, FileSystem, ZeroCopyReader};
use harness::*;

/// A write payload that runs `hook` when the backend starts copying it into the file, that
/// is after the backend decided what the write costs and before the file changes.
struct HookedReader<'a, F: FnMut()> {
    inner: MemReader<'a>,
    hook: F,
}

impl<F: FnMut()> io::Read for HookedReader<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<F: FnMut()> ZeroCopyReader for HookedReader<'_, F> {
    fn read_to(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        (self.hook)();
        self.inner.read_to(f, count, off)
    }
}

fn hooked_write(
    fs: &PassthroughFs,
    ino: u64,
    fh: u64,
    off: u64,
    data: &[u8],
    hook: impl FnMut(),
) -> io::Result<usize> {
    let mut r = HookedReader {
        inner: MemReader::copied(data),
        hook,
    };
    fs.write(
        &boxfs::Context::new(),
        ino,
        fh,
        &mut r,
        data.len() as u32,
        off,
        None,
        false,
        0,
        0,
    )
}

/// Whether thread `tid` of this process is blocked waiting on a lock (in `futex`).
fn blocked_in_futex(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .is_ok_and(|s| s.split_whitespace().next() == Some(&libc::SYS_futex.to_string()))
}

/// Apparent size of every regular file under `dir` (what the quota counts).
fn bytes_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let md = std::fs::symlink_metadata(e.path()).expect("stat");
        if md.is_dir() {
            total += bytes_on_disk(&e.path());
        } else if md.is_file() {
            total += md.len();
        }
    }
    total
}

fn quota_fs(dir: &Path) -> PassthroughFs {
    passthrough_common::builder(dir)
        .quota_bytes(Some(1 << 30))
        .build()
        .expect("build")
}

const THREADS: u64 = 8;
const ROUNDS: u64 = 100;
const CHUNK: usize = 64 * 1024;

#[test]
fn eight_writers_extending_one_file_are_charged_exactly() {
    let dir = passthrough_common::tempdir();
    let fs = quota_fs(dir.path());
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let (e, fh) = h.create(ROOT, "shared", 0o644).expect("create");
    let (a, afh) = h
        .create_flags(
            ROOT,
            "log",
            0o644,
            libc::O_WRONLY | libc::O_APPEND | libc::O_EXCL,
        )
        .expect("create log");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let fs = &fs;
            s.spawn(move || {
                let h = H {
                    fs,
                    ctx: boxfs::Context::new(),
                };
                let chunk = vec![t as u8; CHUNK];
                for r in 0..ROUNDS {
                    // Interleaved, so nearly every write extends the file.
                    let off = (r * THREADS + t) * CHUNK as u64;
                    assert_eq!(h.write(e.inode, fh, off, &chunk).expect("write"), CHUNK);
                    assert_eq!(
                        h.write(a.inode, afh, 0, &chunk[..100]).expect("append"),
                        100
                    );
                }
            });
        }
    });
    let size = THREADS * ROUNDS * CHUNK as u64;
    assert_eq!(h.getattr(e.inode).st_size as u64, size);
    assert_eq!(h.getattr(a.inode).st_size as u64, THREADS * ROUNDS * 100);
    assert_eq!(fs.quota_used(), Some(bytes_on_disk(dir.path())));
    h.release(e.inode, fh);
    h.release(a.inode, afh);
}

/// Two extending writes in flight at once, made deterministic: the first write holds still
/// just before it changes the file until the second one has either completed or is
/// blocked waiting for it.
#[test]
fn two_extending_writes_in_flight_at_once_are_charged_once() {
    let dir = passthrough_common::tempdir();
    let fs = quota_fs(dir.path());
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let (e, fh) = h.create(ROOT, "f", 0o644).expect("create");
    let first_in = AtomicBool::new(false);
    let second_done = AtomicBool::new(false);
    let second_tid = AtomicI32::new(0);
    let data = vec![9u8; 100_000];
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: gettid has no preconditions.
            second_tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            while !first_in.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            hooked_write(&fs, e.inode, fh, 100_000, &data, || {}).expect("second write");
            second_done.store(true, Ordering::SeqCst);
        });
        hooked_write(&fs, e.inode, fh, 0, &data, || {
            first_in.store(true, Ordering::SeqCst);
            let tid = loop {
                let t = second_tid.load(Ordering::SeqCst);
                if t != 0 {
                    break t;
                }
                std::thread::yield_now();
            };
            while !second_done.load(Ordering::SeqCst) && !blocked_in_futex(tid) {
                std::thread::yield_now();
            }
        })
        .expect("first write");
    });
    assert_eq!(h.getattr(e.inode).st_size, 200_000);
    assert_eq!(fs.quota_used(), Some(200_000));
    h.release(e.inode, fh);
}

#[test]
fn concurrent_truncates_and_writes_stay_exact() {
    let dir = passthrough_common::tempdir();
    let fs = quota_fs(dir.path());
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let (e, fh) = h.create(ROOT, "f", 0o644).expect("create");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let fs = &fs;
            s.spawn(move || {
                let h = H {
                    fs,
                    ctx: boxfs::Context::new(),
                };
                let chunk = vec![1u8; CHUNK];
                for r in 0..ROUNDS {
                    if t % 2 == 0 {
                        h.write(e.inode, fh, ((r + t) % 16) * CHUNK as u64, &chunk)
                            .expect("write");
                    } else {
                        h.truncate(e.inode, ((r * 7 + t) % 64) * 10_000)
                            .expect("truncate");
                    }
                }
            });
        }
    });
    assert_eq!(fs.quota_used(), Some(bytes_on_disk(dir.path())));
    h.release(e.inode, fh);
}

#[test]
fn a_file_unlinked_while_open_is_credited_when_released() {
    let dir = passthrough_common::tempdir();
    std::fs::write(dir.path().join("kept"), vec![0u8; 1000]).expect("write");
    let fs = quota_fs(dir.path());
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    assert_eq!(fs.quota_used(), Some(1000));

    // Released, then forgotten.
    let (e, fh) = h.create(ROOT, "tmp1", 0o644).expect("create");
    h.write(e.inode, fh, 0, &vec![1u8; 100_000]).expect("write");
    h.unlink(ROOT, "tmp1").expect("unlink");
    h.write(e.inode, fh, 100_000, &vec![2u8; 50_000])
        .expect("write after unlink");
    assert_eq!(
        fs.quota_used(),
        Some(1000 + 150_000),
        "an open orphan still occupies its bytes"
    );
    h.release(e.inode, fh);
    h.forget(e.inode, 1);
    assert_eq!(fs.quota_used(), Some(1000));

    // Forgotten, then released (the handle outlives the lookup).
    let (e, fh) = h.create(ROOT, "tmp2", 0o644).expect("create");
    h.unlink(ROOT, "tmp2").expect("unlink");
    h.write(e.inode, fh, 0, &vec![3u8; 70_000])
        .expect("write after unlink");
    h.forget(e.inode, 1);
    assert_eq!(fs.quota_used(), Some(1000 + 70_000));
    h.release(e.inode, fh);
    assert_eq!(fs.quota_used(), Some(1000));

    // Replaced by a rename while open.
    let (e, fh) = h.create(ROOT, "victim", 0o644).expect("create");
    h.write(e.inode, fh, 0, &vec![4u8; 30_000]).expect("write");
    h.put(ROOT, "winner", b"12345");
    h.rename(ROOT, "winner", ROOT, "victim", 0)
        .expect("rename over");
    h.write(e.inode, fh, 30_000, &vec![4u8; 30_000])
        .expect("write after replace");
    h.release(e.inode, fh);
    h.forget(e.inode, 1);
    assert_eq!(fs.quota_used(), Some(bytes_on_disk(dir.path())));
    assert_eq!(fs.quota_used(), Some(1005));

    // Every inode and handle let go at once (unmount).
    let (e, fh) = h.create(ROOT, "tmp3", 0o644).expect("create");
    h.unlink(ROOT, "tmp3").expect("unlink");
    h.write(e.inode, fh, 0, &vec![5u8; 20_000])
        .expect("write after unlink");
    fs.destroy();
    assert_eq!(fs.quota_used(), Some(1005));
}

#[test]
fn fallocate_is_charged_by_what_it_changes() {
    let dir = passthrough_common::tempdir();
    let fs = quota_fs(dir.path());
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let (e, fh) = h.create(ROOT, "f", 0o644).expect("create");
    fs.fallocate(&h.ctx, e.inode, fh, 0, 0, 8192)
        .expect("fallocate");
    assert_eq!(fs.quota_used(), Some(8192));
    // Preallocating past the end without growing the file cannot be counted in apparent
    // size: it is refused rather than left uncharged.
    assert_eq!(
        errno(fs.fallocate(
            &h.ctx,
            e.inode,
            fh,
            libc::FALLOC_FL_KEEP_SIZE as u32,
            0,
            1 << 20
        )),
        libc::EOPNOTSUPP
    );
    // Inside the file it changes nothing the quota counts.
    fs.fallocate(
        &h.ctx,
        e.inode,
        fh,
        libc::FALLOC_FL_KEEP_SIZE as u32,
        0,
        4096,
    )
    .expect("keep-size inside the file");
    match fs.fallocate(
        &h.ctx,
        e.inode,
        fh,
        libc::FALLOC_FL_INSERT_RANGE as u32,
        4096,
        4096,
    ) {
        Ok(()) => assert_eq!(h.getattr(e.inode).st_size, 12288),
        Err(err) => assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP)),
    }
    assert_eq!(fs.quota_used(), Some(bytes_on_disk(dir.path())));
    match fs.fallocate(
        &h.ctx,
        e.inode,
        fh,
        libc::FALLOC_FL_COLLAPSE_RANGE as u32,
        0,
        4096,
    ) {
        Ok(()) => {}
        Err(err) => assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP)),
    }
    assert_eq!(fs.quota_used(), Some(bytes_on_disk(dir.path())));
    h.release(e.inode, fh);
}
