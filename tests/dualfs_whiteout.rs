//! Whiteouts and opaque directories: deletions of B entries hide them, are stored in A in
//! the overlayfs format, stay hidden from the guest, and survive a restart over the same
//! directories.

mod dualfs_common;
#[allow(dead_code, clippy::unnecessary_cast)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::os::unix::fs::FileTypeExt;

use boxfs::dualfs::ReadBackendBWriteBackendA;
use boxfs::{Context, DynFileSystem, ListxattrReply, ROOT_ID};
use dualfs_common::*;
use harness::{c, errno, H};

fn h(fs: &dyn DynFileSystem) -> H<'_> {
    H {
        fs,
        ctx: Context::new(),
    }
}

fn prepare(dir: &std::path::Path) {
    for f in ["f1", "f2"] {
        std::fs::write(dir.join(f), f.as_bytes()).expect("write");
    }
    std::fs::create_dir_all(dir.join("dir1")).expect("mkdir");
    std::fs::write(dir.join("dir1/x"), b"x").expect("write");
    std::fs::write(dir.join("dir1/y"), b"y").expect("write");
    std::fs::create_dir_all(dir.join("dir2")).expect("mkdir");
    std::fs::write(dir.join("dir2/z"), b"z").expect("write");
}

fn names(fs: &dyn DynFileSystem, dir: u64) -> Vec<String> {
    h(fs).names(dir)
}

#[test]
fn deletions_persist_across_restart() {
    let lower = tempdir();
    prepare(lower.path());
    let before = snapshot(lower.path());
    let upper = tempdir();
    {
        let fs = dual(
            rw(upper.path()),
            ro(lower.path()),
            ReadBackendBWriteBackendA,
        );
        let g = h(&*fs);
        g.unlink(ROOT_ID, "f1").expect("unlink B file");
        assert_eq!(errno(g.lookup(ROOT_ID, "f1")), libc::ENOENT);
        assert_eq!(errno(g.unlink(ROOT_ID, "f1")), libc::ENOENT);
        let dir2 = g.ino(ROOT_ID, "dir2");
        assert_eq!(errno(g.rmdir(ROOT_ID, "dir2")), libc::ENOTEMPTY);
        g.unlink(dir2, "z").expect("unlink");
        g.rmdir(ROOT_ID, "dir2").expect("rmdir merged-empty B dir");
        // A new directory over the deleted one is opaque: B's old content stays hidden.
        let new2 = g.mkdir(ROOT_ID, "dir2", 0o755).expect("mkdir").inode;
        assert!(names(&*fs, new2).is_empty());
        g.put(new2, "fresh", b"new");
        let dir1 = g.ino(ROOT_ID, "dir1");
        g.unlink(dir1, "x").expect("unlink in B dir");
        assert_eq!(names(&*fs, dir1), vec!["y"]);
        assert_eq!(names(&*fs, ROOT_ID), vec!["dir1", "dir2", "f2"]);
        // Private metadata is invisible and reserved.
        assert_eq!(
            errno(fs.getxattr(&g.ctx, new2, &c("user.overlay.opaque"), 64)),
            libc::ENODATA
        );
        assert_eq!(
            errno(fs.setxattr(&g.ctx, new2, &c("user.overlay.opaque"), b"n", 0)),
            libc::EPERM
        );
        assert_eq!(
            errno(fs.removexattr(&g.ctx, new2, &c("user.overlay.opaque"))),
            libc::EPERM
        );
        match fs.listxattr(&g.ctx, new2, 4096).expect("listxattr") {
            ListxattrReply::Names(n) => assert!(!String::from_utf8_lossy(&n).contains("overlay")),
            ListxattrReply::Count(_) => panic!("expected names"),
        }
        // A 0/0 character device (a whiteout in overlayfs's device form) is an ordinary
        // device to DualFs: the guest can make it, and it hides nothing.
        let chr = g
            .mknod(ROOT_ID, "chr00", libc::S_IFCHR | 0o644, 0)
            .expect("mknod 0/0 char device");
        assert_eq!(chr.attr.st_mode & libc::S_IFMT, libc::S_IFCHR);
        assert_eq!(chr.attr.st_rdev, 0);
        assert!(names(&*fs, ROOT_ID).contains(&"chr00".to_string()));
        g.unlink(ROOT_ID, "chr00").expect("unlink chr00");
        // An empty file of the guest's in a directory holding whiteouts is listed: only the
        // whiteout xattr makes a whiteout.
        g.put(ROOT_ID, "empty", b"");
        assert!(names(&*fs, ROOT_ID).contains(&"empty".to_string()));
        g.unlink(ROOT_ID, "empty").expect("unlink empty");
    }
    // The deletions are in A on the host: whiteouts (empty files carrying
    // user.overlay.whiteout) and an opaque directory.
    assert!(upper.path().join("f1").exists());
    assert!(!std::fs::symlink_metadata(upper.path().join("f1"))
        .expect("stat")
        .file_type()
        .is_dir());
    // Restart over the same directories.
    let fs = dual(
        rw(upper.path()),
        ro(lower.path()),
        ReadBackendBWriteBackendA,
    );
    let g = h(&*fs);
    assert_eq!(names(&*fs, ROOT_ID), vec!["dir1", "dir2", "f2"]);
    assert_eq!(errno(g.lookup(ROOT_ID, "f1")), libc::ENOENT);
    let dir2 = g.ino(ROOT_ID, "dir2");
    assert_eq!(names(&*fs, dir2), vec!["fresh"]);
    assert_eq!(errno(g.lookup(dir2, "z")), libc::ENOENT);
    let dir1 = g.ino(ROOT_ID, "dir1");
    assert_eq!(names(&*fs, dir1), vec!["y"]);
    // A name can be reused over its whiteout; that survives a restart too.
    g.put(ROOT_ID, "f1", b"again");
    drop(fs);
    let fs = dual(
        rw(upper.path()),
        ro(lower.path()),
        ReadBackendBWriteBackendA,
    );
    let g = h(&*fs);
    assert_eq!(g.get(g.ino(ROOT_ID, "f1")), b"again");
    g.unlink(ROOT_ID, "f1").expect("unlink upper over B");
    assert_eq!(
        errno(g.lookup(ROOT_ID, "f1")),
        libc::ENOENT,
        "B's f1 stays hidden"
    );
    assert_eq!(snapshot(lower.path()), before, "B unchanged");
    let _ = std::fs::symlink_metadata(upper.path().join("f1"))
        .expect("whiteout again")
        .file_type()
        .is_char_device();
}

#[test]
fn rmdir_of_b_dir_and_recreate_in_memfs() {
    let lower = tempdir();
    prepare(lower.path());
    let before = snapshot(lower.path());
    let a: std::sync::Arc<dyn DynFileSystem> =
        std::sync::Arc::new(boxfs::memfs::MemFs::builder().build().expect("MemFs"));
    let fs = dual(a, ro(lower.path()), ReadBackendBWriteBackendA);
    let g = h(&*fs);
    let dir1 = g.ino(ROOT_ID, "dir1");
    g.unlink(dir1, "x").expect("unlink");
    g.unlink(dir1, "y").expect("unlink");
    g.rmdir(ROOT_ID, "dir1").expect("rmdir");
    assert_eq!(errno(g.lookup(ROOT_ID, "dir1")), libc::ENOENT);
    g.mkdir(ROOT_ID, "dir1", 0o700).expect("mkdir again");
    assert!(names(&*fs, g.ino(ROOT_ID, "dir1")).is_empty());
    // A whiteout inside a directory does not keep it from being removed.
    g.rmdir(ROOT_ID, "dir1").expect("rmdir again");
    assert_eq!(names(&*fs, ROOT_ID), vec!["dir2", "f1", "f2"]);
    assert_eq!(snapshot(lower.path()), before);
}
