//! Merged listings with stable offsets over two host directories, inode identity and
//! lookup counting, and bogus guest input.

mod dualfs_common;
#[allow(dead_code, clippy::unnecessary_cast)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use boxfs::dualfs::{DualFs, ReadBackendBWriteBackendA};
use boxfs::{Context, DynFileSystem, FileSystem, ROOT_ID};
use dualfs_common::*;
use harness::{errno, H};

fn h(fs: &dyn DynFileSystem) -> H<'_> {
    H {
        fs,
        ctx: Context::new(),
    }
}

#[test]
fn merged_listing_each_name_once_resumable_anywhere() {
    let lower = tempdir();
    let upper = tempdir();
    let big = lower.path().join("big");
    std::fs::create_dir(&big).expect("mkdir");
    for i in 0..600 {
        std::fs::write(big.join(format!("b-{i:04}")), b"b").expect("write");
    }
    let before = snapshot(lower.path());
    let fs = dual(
        rw(upper.path()),
        ro(lower.path()),
        ReadBackendBWriteBackendA,
    );
    let g = h(&*fs);
    let d = g.ino(ROOT_ID, "big");
    let mut expected: BTreeSet<String> = (0..600).map(|i| format!("b-{i:04}")).collect();
    for i in 0..200 {
        g.put(d, &format!("a-{i:04}"), b"a");
        expected.insert(format!("a-{i:04}"));
    }
    for i in (0..600).step_by(6) {
        // Copied up: listed once, from A.
        let ino = g.ino(d, &format!("b-{i:04}"));
        g.truncate(ino, 0).expect("copy-up");
    }
    for i in (1..600).step_by(12) {
        g.unlink(d, &format!("b-{i:04}")).expect("whiteout");
        expected.remove(&format!("b-{i:04}"));
    }
    let full = g.list(d, 512);
    let mut seen = HashSet::new();
    for l in &full {
        assert!(seen.insert(l.name.clone()), "listed twice: {:?}", l.name);
    }
    let names: BTreeSet<String> = full
        .iter()
        .filter(|l| l.name != b"." && l.name != b"..")
        .map(|l| String::from_utf8_lossy(&l.name).into_owned())
        .collect();
    assert_eq!(names, expected);
    // Resuming after any entry, through a fresh handle, gives exactly the rest.
    for k in (0..full.len()).step_by(37) {
        let (rest, _) = g.list_from(d, 4096, full[k].offset, usize::MAX);
        let want: Vec<&[u8]> = full[k + 1..].iter().map(|l| &l.name[..]).collect();
        let got: Vec<&[u8]> = rest.iter().map(|l| &l.name[..]).collect();
        assert_eq!(got, want, "resumed after entry {k}");
    }
    // readdirplus agrees with lookups.
    for (l, e) in g.list_plus(d, 2048) {
        if l.name == b"." || l.name == b".." {
            continue;
        }
        let name = String::from_utf8_lossy(&l.name).into_owned();
        assert_eq!(g.ino(d, &name), e.inode, "{name}");
        g.forget(e.inode, 2);
    }
    // Bogus offsets are errors, not panics.
    let (fh, _) = fs.opendir(&g.ctx, d, 0).expect("opendir");
    let fh = fh.unwrap_or(0);
    assert!(fs
        .readdir(&g.ctx, d, fh, 4096, 12345, &mut |_| Ok(1))
        .is_err());
    assert!(fs
        .readdir(&g.ctx, d, fh, 4096, u64::MAX, &mut |_| Ok(1))
        .is_err());
    fs.releasedir(&g.ctx, d, 0, fh).expect("releasedir");
    assert_eq!(snapshot(lower.path()), before);
}

#[test]
fn inode_numbers_stable_distinct_and_forgotten() {
    let lower = tempdir();
    let upper = tempdir();
    std::fs::write(lower.path().join("f"), b"lower").expect("write");
    std::fs::create_dir(lower.path().join("d")).expect("mkdir");
    let a = rw(upper.path());
    let fs = Arc::new(
        DualFs::builder()
            .backend_a(a)
            .backend_b(ro(lower.path()))
            .build()
            .expect("DualFs"),
    );
    let g = h(&*fs);
    let f = g.ino(ROOT_ID, "f");
    let new = g.put(ROOT_ID, "new", b"upper");
    assert_ne!(f, new, "distinct across backends");
    assert_eq!(g.getattr(f).st_ino, f);
    // Copy-up keeps the guest inode number.
    g.truncate(f, 1).expect("copy-up");
    assert_eq!(g.ino(ROOT_ID, "f"), f);
    assert_eq!(g.getattr(f).st_ino, f);
    let listed = g
        .list(ROOT_ID, 4096)
        .into_iter()
        .find(|l| l.name == b"f")
        .expect("listed");
    assert_eq!(listed.ino, f, "d_ino matches while the inode is held");
    // Forgetting everything drops the inodes (bounded memory).
    let count = fs.inode_count();
    g.forget(f, 3);
    g.forget(new, 1);
    assert_eq!(fs.inode_count(), count - 2);
    assert!(g.try_getattr(f).is_err());
    assert_eq!(fs.handle_count(), 0);
    // Bad input: unknown inodes and handles are errors.
    assert!(g.lookup(0xdead, "x").is_err());
    assert!(g.read(ROOT_ID, 0xdead, 0, 1).is_err());
    assert_eq!(
        errno(fs.releasedir(&g.ctx, ROOT_ID, 0, 0xdead)),
        libc::EBADF
    );
    assert_eq!(
        errno(g.rename(ROOT_ID, "new", ROOT_ID, "x", 0x80)),
        libc::EINVAL
    );
    assert_eq!(
        errno(g.create(ROOT_ID, ".boxfs-dualfs-work", 0o644)),
        libc::EPERM
    );
    assert_eq!(errno(g.lookup(ROOT_ID, ".boxfs-dualfs-work")), libc::ENOENT);
}

#[test]
fn copied_up_inodes_keep_their_number_after_the_guest_forgets_them() {
    let lower = tempdir();
    let upper = tempdir();
    std::fs::write(lower.path().join("file"), b"lower data").expect("write");
    std::fs::create_dir(lower.path().join("dir")).expect("mkdir");
    std::fs::write(lower.path().join("dir/inner"), b"x").expect("write");
    std::fs::create_dir(lower.path().join("dir2")).expect("mkdir");
    let fs = dual(
        rw(upper.path()),
        ro(lower.path()),
        ReadBackendBWriteBackendA,
    );
    let g = h(&*fs);
    // Numbers while everything is only in B.
    let file = g.lookup(ROOT_ID, "file").expect("lookup").inode;
    let dir = g.lookup(ROOT_ID, "dir").expect("lookup").inode;
    let dir2 = g.lookup(ROOT_ID, "dir2").expect("lookup").inode;
    // Copy-ups: a write to the file, a new name in each directory.
    g.truncate(file, 3).expect("truncate copies up");
    g.put(dir, "new", b"n");
    g.put(dir2, "new", b"n");
    assert!(upper.path().join("file").exists() && upper.path().join("dir/new").exists());
    // The guest forgets all of them (as the kernel does under memory pressure)...
    let listed_before: Vec<(Vec<u8>, u64)> = g
        .list(ROOT_ID, 4096)
        .into_iter()
        .map(|e| (e.name, e.ino))
        .collect();
    for ino in [file, dir, dir2] {
        fs.forget(&g.ctx, ino, 64);
    }
    // ...and finds them again with the same numbers, in lookups and in listings.
    assert_eq!(g.lookup(ROOT_ID, "file").expect("lookup").inode, file);
    assert_eq!(g.lookup(ROOT_ID, "dir").expect("lookup").inode, dir);
    assert_eq!(g.lookup(ROOT_ID, "dir2").expect("lookup").inode, dir2);
    assert_eq!(g.getattr(file).st_ino, file);
    let listed_after: Vec<(Vec<u8>, u64)> = g
        .list(ROOT_ID, 4096)
        .into_iter()
        .map(|e| (e.name, e.ino))
        .collect();
    assert_eq!(listed_after, listed_before);
    // A copy that is deleted takes its number with it: a new file of the same name in A is
    // a different inode.
    g.unlink(ROOT_ID, "file").expect("unlink");
    let again = g.put(ROOT_ID, "file", b"new");
    assert_ne!(again, file);
}
