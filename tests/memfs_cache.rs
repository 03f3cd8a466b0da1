//! MemFs takes the caching settings every backend has: policy, explicit timeouts, writeback.

use std::ffi::CString;
use std::time::Duration;

use boxfs::memfs::MemFs;
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{CachePolicy, Context, CreateIn, FileSystem, FsOptions, ROOT_ID};

fn create(fs: &MemFs, name: &str, flags: i32) -> (u64, u64, Duration, Duration) {
    let args = CreateIn {
        flags: flags as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = fs
        .create(&Context::new(), ROOT_ID, &CString::new(name).unwrap(), args)
        .expect("create");
    (
        e.inode,
        fh.expect("handle"),
        e.entry_timeout,
        e.attr_timeout,
    )
}

#[test]
fn explicit_timeouts_override_the_policy() {
    let fs = MemFs::builder()
        .cache_policy(CachePolicy::Never)
        .timeouts(Duration::from_secs(5), Duration::from_secs(2))
        .build()
        .unwrap();
    let (ino, _, entry, attr) = create(&fs, "f", libc::O_RDWR);
    assert_eq!(
        (entry, attr),
        (Duration::from_secs(5), Duration::from_secs(2))
    );
    let (_, t) = fs.getattr(&Context::new(), ino, None).unwrap();
    assert_eq!(t, Duration::from_secs(2));
    let plain = MemFs::builder()
        .cache_policy(CachePolicy::Never)
        .build()
        .unwrap();
    let (_, _, entry, attr) = create(&plain, "f", libc::O_RDWR);
    assert_eq!((entry, attr), (Duration::ZERO, Duration::ZERO));
}

#[test]
fn writeback_is_offered_and_lets_the_guest_read_back_and_append_itself() {
    let ctx = Context::new();
    let fs = MemFs::builder().writeback(true).build().unwrap();
    let got = fs.init(FsOptions::all()).unwrap();
    assert!(got.contains(FsOptions::WRITEBACK_CACHE));
    let plain = MemFs::builder().build().unwrap();
    assert!(!plain
        .init(FsOptions::all())
        .unwrap()
        .contains(FsOptions::WRITEBACK_CACHE));

    // A write-only, appending open: the guest's page cache reads pages back through it and
    // writes at the offsets it computed itself.
    let (ino, fh, _, _) = create(&fs, "log", libc::O_WRONLY | libc::O_APPEND);
    let mut r = MemReader::copied(b"abcdef");
    fs.write(&ctx, ino, fh, &mut r, 6, 0, None, false, 0, 0)
        .unwrap();
    let mut r = MemReader::copied(b"XY");
    fs.write(&ctx, ino, fh, &mut r, 2, 1, None, false, 0, 0)
        .unwrap();
    let mut w = MemWriter::new(16);
    let n = fs.read(&ctx, ino, fh, &mut w, 16, 0, None, 0).unwrap();
    assert_eq!(&w.into_inner()[..n], b"aXYdef");

    // Without writeback, the same handle cannot read and appends at the end.
    let (ino, fh, _, _) = create(&plain, "log", libc::O_WRONLY | libc::O_APPEND);
    let mut r = MemReader::copied(b"abcdef");
    plain
        .write(&ctx, ino, fh, &mut r, 6, 0, None, false, 0, 0)
        .unwrap();
    let mut r = MemReader::copied(b"XY");
    plain
        .write(&ctx, ino, fh, &mut r, 2, 1, None, false, 0, 0)
        .unwrap();
    let mut w = MemWriter::new(16);
    let e = plain
        .read(&ctx, ino, fh, &mut w, 16, 0, None, 0)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    let fh2 = plain
        .open(&ctx, ino, libc::O_RDONLY as u32, 0)
        .unwrap()
        .0
        .expect("handle");
    let mut w = MemWriter::new(16);
    let n = plain.read(&ctx, ino, fh2, &mut w, 16, 0, None, 0).unwrap();
    assert_eq!(&w.into_inner()[..n], b"abcdefXY");
}
