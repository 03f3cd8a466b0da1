//! `destroy` (unmount, a new session) lets go of every inode and handle the guest held.
//! One test in this binary: it counts the process's open descriptors.

#[allow(dead_code)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::path::Path;

use boxfs::FileSystem;
use harness::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

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

#[test]
fn a_hundred_sessions_leave_nothing_behind() {
    let dir = passthrough_common::tempdir();
    for i in 0..20 {
        std::fs::write(dir.path().join(format!("f{i}")), vec![b'x'; i * 10]).expect("write");
    }
    std::fs::create_dir(dir.path().join("d")).expect("mkdir");
    std::fs::write(dir.path().join("d/inner"), b"inner").expect("write");
    let fs = passthrough_common::builder(dir.path())
        .quota_bytes(Some(1 << 30))
        .fd_cache_size(16)
        .build()
        .expect("build");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let base_fds = open_fds();
    let base_quota = fs.quota_used();
    assert_eq!(base_quota, Some(bytes_on_disk(dir.path())));

    for cycle in 0..100 {
        let init = fs.init(boxfs::FsOptions::empty());
        assert!(init.is_ok(), "cycle {cycle}: init");
        for i in 0..20 {
            let e = h.lookup(ROOT, &format!("f{i}")).expect("lookup");
            // Some lookups counted twice, some files opened twice.
            h.lookup(ROOT, &format!("f{i}")).expect("lookup");
            h.open(e.inode, libc::O_RDONLY).expect("open");
            if i % 3 == 0 {
                h.open(e.inode, libc::O_RDWR).expect("open");
            }
        }
        let d = h.lookup(ROOT, "d").expect("lookup d");
        let dfh = fs.opendir(&h.ctx, d.inode, 0).expect("opendir").0;
        assert!(dfh.is_some());
        h.lookup(d.inode, "inner").expect("lookup inner");
        let rootfh = fs.opendir(&h.ctx, ROOT, 0).expect("opendir root").0;
        assert!(rootfh.is_some());
        // Unlinked-but-open files with data written after the unlink.
        let (e, fh) = h.create(ROOT, "scratch", 0o644).expect("create");
        h.write(e.inode, fh, 0, &[7u8; 3000]).expect("write");
        h.unlink(ROOT, "scratch").expect("unlink");
        h.write(e.inode, fh, 3000, &[7u8; 3000])
            .expect("write after unlink");
        assert!(fs.inode_count() > 20);
        assert!(fs.open_handles() > 20);

        // The session ends without a single forget or release.
        fs.destroy();
        assert_eq!(fs.inode_count(), 1, "cycle {cycle}: only the root stays");
        assert_eq!(fs.open_handles(), 0, "cycle {cycle}: handles");
        assert_eq!(fs.cached_fds(), 0, "cycle {cycle}: cached descriptors");
        assert_eq!(open_fds(), base_fds, "cycle {cycle}: open descriptors");
        assert_eq!(fs.quota_used(), base_quota, "cycle {cycle}: quota");
        // The previous session's numbers mean nothing any more.
        assert_eq!(errno(h.try_getattr(e.inode)), libc::EBADF);
        assert_eq!(errno(h.read(e.inode, fh, 0, 10)), libc::EBADF);
    }
    // The share still works from the root.
    assert_eq!(h.get(h.ino(ROOT, "f3")), vec![b'x'; 30]);
    assert_eq!(fs.quota_used(), Some(bytes_on_disk(dir.path())));
}
