//! Removed inodes the guest still holds stay within the descriptor ceiling
//! (`fd_cache_size`): removed directories and files keep no descriptor, removed files the
//! guest has open keep one only within a quarter of the ceiling, and all of them still answer
//! correctly.

#[allow(dead_code, clippy::unnecessary_cast, clippy::wrong_self_convention)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::sync::Mutex;

use boxfs::passthrough::PassthroughFs;
use boxfs::FileSystem;
use harness::*;

const FD_CACHE: usize = 64;

/// The tests in this binary count the process's descriptors.
static SERIAL: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn fs_of(dir: &std::path::Path, quota: bool) -> PassthroughFs {
    PassthroughFs::builder(dir)
        .fd_cache_size(FD_CACHE)
        .quota_bytes(quota.then_some(1 << 30))
        .build()
        .expect("build")
}

#[test]
fn removed_but_held_inodes_keep_no_descriptor_beyond_the_ceiling() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = passthrough_common::tempdir();
    let fs = fs_of(dir.path(), true);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let base = open_fds();
    const N: usize = 500;
    let mut held = Vec::new();
    for i in 0..N {
        let d = h.mkdir(ROOT, &format!("d{i}"), 0o755).expect("mkdir");
        h.rmdir(ROOT, &format!("d{i}")).expect("rmdir");
        let (f, fh) = h.create(ROOT, &format!("f{i}"), 0o644).expect("create");
        h.write(f.inode, fh, 0, b"data").expect("write");
        h.release(f.inode, fh);
        h.unlink(ROOT, &format!("f{i}")).expect("unlink");
        held.push((d.inode, f.inode));
    }
    let now = open_fds();
    assert!(
        now <= base + FD_CACHE,
        "{N} removed directories and files held: {now} descriptors (base {base})"
    );
    assert_eq!(
        fs.quota_used(),
        Some(0),
        "removed files without handles credited"
    );
    for &(d, f) in held.iter().step_by(50) {
        let st = h.getattr(d);
        assert_eq!(st.st_nlink, 0);
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);
        assert_eq!(errno(h.mkdir(d, "x", 0o755)), libc::ENOENT);
        assert_eq!(errno(h.lookup(d, "x")), libc::ENOENT);
        let st = h.getattr(f);
        assert_eq!((st.st_nlink, st.st_size), (0, 4));
        assert_eq!(errno(h.open(f, libc::O_RDONLY)), libc::ENOENT);
    }
    for (d, f) in held {
        h.forget(d, 1);
        h.forget(f, 1);
    }
    assert_eq!(fs.inode_count(), 1);
}

#[test]
fn files_unlinked_while_open_pin_at_most_a_quarter_of_the_ceiling() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = passthrough_common::tempdir();
    // Without a quota (with one, an open orphan holds a second descriptor for its charge).
    let fs = fs_of(dir.path(), false);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let base = open_fds();
    const N: usize = 200;
    let mut open = Vec::new();
    for i in 0..N {
        let (f, fh) = h.create(ROOT, &format!("f{i}"), 0o644).expect("create");
        h.unlink(ROOT, &format!("f{i}")).expect("unlink");
        h.write(f.inode, fh, 0, &vec![1u8; i + 1])
            .expect("write after unlink");
        open.push((f.inode, fh));
    }
    let now = open_fds();
    assert!(
        now <= base + FD_CACHE + N,
        "{N} open unlinked files: {now} descriptors (base {base}, {N} handles)"
    );
    for (i, &(f, fh)) in open.iter().enumerate() {
        // Through the handle: the file as it is now.
        let (st, _) = fs
            .getattr(&h.ctx, f, Some(fh))
            .expect("getattr with handle");
        assert_eq!(st.st_size as usize, i + 1);
        assert_eq!(h.read(f, fh, 0, 1024).expect("read"), vec![1u8; i + 1]);
        // Without: current (pinned) or last known attributes.
        let st = h.getattr(f);
        assert_eq!(st.st_nlink, 0);
    }
    for (f, fh) in open {
        h.release(f, fh);
        h.forget(f, 1);
    }
    assert_eq!(fs.inode_count(), 1);
    assert!(open_fds() <= base + FD_CACHE);

    // With a quota, open orphans past the pin budget stay charged too, until let go of.
    let qdir = passthrough_common::tempdir();
    let fs = fs_of(qdir.path(), true);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let mut open = Vec::new();
    for i in 0..FD_CACHE {
        let (f, fh) = h.create(ROOT, &format!("f{i}"), 0o644).expect("create");
        h.unlink(ROOT, &format!("f{i}")).expect("unlink");
        h.write(f.inode, fh, 0, &vec![1u8; i + 1])
            .expect("write after unlink");
        open.push((f.inode, fh));
    }
    assert_eq!(fs.quota_used(), Some((1..=FD_CACHE as u64).sum()));
    for (f, fh) in open {
        h.forget(f, 1);
        h.release(f, fh);
    }
    assert_eq!(fs.quota_used(), Some(0));
}

#[test]
fn a_file_keeps_working_after_one_of_its_names_is_removed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = passthrough_common::tempdir();
    let fs = fs_of(dir.path(), true);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let ino = h.put(ROOT, "a", b"linked");
    h.link(ino, ROOT, "b").expect("link");
    h.unlink(ROOT, "a").expect("unlink a");
    assert_eq!(h.getattr(ino).st_nlink, 1);
    assert_eq!(h.get(ino), b"linked");
    assert_eq!(h.ino(ROOT, "b"), ino);
    h.unlink(ROOT, "b").expect("unlink b");
    assert_eq!(h.getattr(ino).st_nlink, 0);
    h.forget(ino, 3);
    assert_eq!(fs.inode_count(), 1);
    assert_eq!(fs.quota_used(), Some(0));
}
