//! Per-policy routing: what each built-in policy shows and where mutations go, and a custom
//! policy that routes by subtree and denies an operation.

mod dualfs_common;
#[allow(dead_code, clippy::unnecessary_cast)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::io;
use std::path::Path;

use boxfs::dualfs::{
    policy_by_name, BackendAFallbackToBackendBRead, BackendAOnly, DualFs, GuestPath,
    MergeReadsBackendAPrecedence, Op, Policy, ReadBackendBWriteBackendA, Visibility,
};
use boxfs::{Context, DynFileSystem, ROOT_ID};
use dualfs_common::*;
use harness::{errno, H};

fn h(fs: &dyn DynFileSystem) -> H<'_> {
    H {
        fs,
        ctx: Context::new(),
    }
}

fn prepare(lower: &Path, upper: &Path) {
    std::fs::write(lower.join("b-only"), b"B").expect("write");
    std::fs::write(lower.join("both"), b"B-both").expect("write");
    std::fs::create_dir_all(lower.join("dir/sub")).expect("mkdir");
    std::fs::write(lower.join("dir/b-inner"), b"bi").expect("write");
    std::fs::create_dir_all(lower.join("tmp")).expect("mkdir");
    std::fs::write(lower.join("tmp/b-tmp"), b"bt").expect("write");
    std::fs::create_dir_all(lower.join("etc")).expect("mkdir");
    std::fs::write(lower.join("etc/passwd"), b"root").expect("write");
    // A's side, written through a PassthroughFs so it carries the usual metadata.
    let a = rw(upper);
    let g = h(&*a);
    g.put(ROOT_ID, "a-only", b"A");
    g.put(ROOT_ID, "both", b"A-both");
    let d = g.mkdir(ROOT_ID, "dir", 0o755).expect("mkdir").inode;
    g.put(d, "a-inner", b"ai");
}

struct Setup {
    lower: tempfile::TempDir,
    upper: tempfile::TempDir,
    before: Snapshot,
}

fn setup() -> Setup {
    let lower = tempdir();
    let upper = tempdir();
    prepare(lower.path(), upper.path());
    let before = snapshot(lower.path());
    Setup {
        lower,
        upper,
        before,
    }
}

impl Setup {
    fn fs(&self, p: impl Policy + 'static) -> std::sync::Arc<dyn DynFileSystem> {
        dual(rw(self.upper.path()), ro(self.lower.path()), p)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(snapshot(self.lower.path()), self.before, "B unchanged");
        }
    }
}

#[test]
fn default_policy_merges_and_copies_up() {
    let s = setup();
    let fs = s.fs(ReadBackendBWriteBackendA);
    let g = h(&*fs);
    assert_eq!(
        g.names(ROOT_ID),
        vec!["a-only", "b-only", "both", "dir", "etc", "tmp"]
    );
    assert_eq!(g.get(g.ino(ROOT_ID, "both")), b"A-both", "A wins");
    let dir = g.ino(ROOT_ID, "dir");
    assert_eq!(g.names(dir), vec!["a-inner", "b-inner", "sub"]);
    let b = g.ino(ROOT_ID, "b-only");
    let fh = g.open(b, libc::O_WRONLY | libc::O_APPEND).expect("open");
    g.write(b, fh, 1, b"+").expect("write");
    g.release(b, fh);
    assert_eq!(
        std::fs::read(s.upper.path().join("b-only")).expect("copy"),
        b"B+"
    );
    assert_eq!(g.get(b), b"B+");
    // New names go to A, inside copies of B directories.
    let sub = g.ino(dir, "sub");
    g.put(sub, "new", b"n");
    assert!(s.upper.path().join("dir/sub/new").exists());
    // File rename across backends: copy-up, then rename in A, the old name whited out.
    let etc = g.ino(ROOT_ID, "etc");
    g.rename(etc, "passwd", ROOT_ID, "moved", 0)
        .expect("rename B file");
    assert_eq!(g.get(g.ino(ROOT_ID, "moved")), b"root");
    assert_eq!(errno(g.lookup(etc, "passwd")), libc::ENOENT);
    assert!(g.names(etc).is_empty());
    // A directory with B content cannot move (no redirects): EXDEV.
    assert_eq!(
        errno(g.rename(ROOT_ID, "dir", ROOT_ID, "dir2", 0)),
        libc::EXDEV
    );
    assert_eq!(errno(g.rename(ROOT_ID, "tmp", etc, "tmp", 0)), libc::EXDEV);
    // A directory with only A content can.
    let fresh = g.mkdir(ROOT_ID, "fresh", 0o755).expect("mkdir").inode;
    g.put(fresh, "x", b"x");
    g.rename(ROOT_ID, "fresh", etc, "fresh", 0)
        .expect("rename A dir");
    assert_eq!(g.names(g.ino(etc, "fresh")), vec!["x"]);
    // Moving an A directory onto a deleted B directory's name keeps B's content hidden.
    let tmp = g.ino(ROOT_ID, "tmp");
    g.unlink(tmp, "b-tmp").expect("unlink");
    g.rmdir(ROOT_ID, "tmp").expect("rmdir");
    g.rename(etc, "fresh", ROOT_ID, "tmp", 0)
        .expect("rename onto whiteout");
    assert_eq!(g.names(g.ino(ROOT_ID, "tmp")), vec!["x"]);
}

#[test]
fn a_only_policy_hides_b() {
    let s = setup();
    let fs = s.fs(BackendAOnly);
    let g = h(&*fs);
    assert_eq!(g.names(ROOT_ID), vec!["a-only", "both", "dir"]);
    assert_eq!(errno(g.lookup(ROOT_ID, "b-only")), libc::ENOENT);
    assert_eq!(g.names(g.ino(ROOT_ID, "dir")), vec!["a-inner"]);
    g.put(ROOT_ID, "b-only", b"shadow");
    assert_eq!(g.get(g.ino(ROOT_ID, "b-only")), b"shadow");
}

#[test]
fn fallback_policy_lists_top_layer_and_reads_b_by_name() {
    let s = setup();
    let fs = s.fs(BackendAFallbackToBackendBRead);
    let g = h(&*fs);
    // A has the root and `dir`: their listings are A's.
    assert_eq!(g.names(ROOT_ID), vec!["a-only", "both", "dir"]);
    let dir = g.ino(ROOT_ID, "dir");
    assert_eq!(g.names(dir), vec!["a-inner"]);
    // Names only in B are still found, and read from B.
    assert_eq!(g.get(g.ino(dir, "b-inner")), b"bi");
    let etc = g.ino(ROOT_ID, "etc");
    assert_eq!(g.names(etc), vec!["passwd"], "B-only directory lists B");
    // Mutations go to A with copy-up.
    let p = g.ino(etc, "passwd");
    g.truncate(p, 2).expect("truncate");
    assert_eq!(
        std::fs::read(s.upper.path().join("etc/passwd")).expect("copy"),
        b"ro"
    );
}

#[test]
fn merge_reads_policy_keeps_b_entries_read_only() {
    let s = setup();
    let fs = s.fs(MergeReadsBackendAPrecedence);
    let g = h(&*fs);
    assert_eq!(
        g.names(ROOT_ID),
        vec!["a-only", "b-only", "both", "dir", "etc", "tmp"]
    );
    let b = g.ino(ROOT_ID, "b-only");
    assert_eq!(g.get(b), b"B");
    assert_eq!(errno(g.open(b, libc::O_WRONLY)), libc::EROFS);
    assert_eq!(errno(g.truncate(b, 0)), libc::EROFS);
    assert_eq!(errno(g.unlink(ROOT_ID, "b-only")), libc::EROFS);
    assert_eq!(
        errno(g.rename(ROOT_ID, "b-only", ROOT_ID, "x", 0)),
        libc::EROFS
    );
    // A's entries and new names are fully writable, also inside B directories.
    let both = g.ino(ROOT_ID, "both");
    g.truncate(both, 1).expect("truncate A file");
    let etc = g.ino(ROOT_ID, "etc");
    g.put(etc, "new", b"n");
    assert_eq!(g.names(etc), vec!["new", "passwd"]);
    g.unlink(ROOT_ID, "a-only").expect("unlink A file");
}

/// B is invisible under /tmp, and nothing under /etc can be removed.
#[derive(Debug)]
struct Custom;

impl Policy for Custom {
    fn name(&self) -> &str {
        "custom"
    }
    fn visibility(&self, path: &GuestPath<'_>) -> Visibility {
        if path.starts_with(b"/tmp") {
            Visibility::AOnly
        } else {
            Visibility::AThenB
        }
    }
    fn check(&self, op: Op, path: &GuestPath<'_>) -> io::Result<()> {
        if op == Op::Remove && path.starts_with(b"/etc/") {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
    fn has_checks(&self) -> bool {
        true
    }
}

#[test]
fn custom_policy_routes_by_subtree_and_denies() {
    let s = setup();
    let fs = s.fs(Custom);
    let g = h(&*fs);
    assert_eq!(
        errno(g.lookup(ROOT_ID, "tmp")),
        libc::ENOENT,
        "/tmp hidden from B"
    );
    let tmp = g.mkdir(ROOT_ID, "tmp", 0o1777).expect("mkdir").inode;
    assert!(g.names(tmp).is_empty());
    let etc = g.ino(ROOT_ID, "etc");
    assert_eq!(errno(g.unlink(etc, "passwd")), libc::EPERM);
    assert_eq!(g.get(g.ino(etc, "passwd")), b"root");
    g.unlink(ROOT_ID, "b-only").expect("allowed elsewhere");
}

#[test]
fn policies_by_name_and_builder_errors() {
    for name in [
        "read-b-write-a",
        "a-only",
        "a-fallback-b",
        "merge-reads-a-precedence",
    ] {
        assert_eq!(policy_by_name(name).expect("known").name(), name);
    }
    assert!(policy_by_name("nope").is_none());
    assert!(DualFs::builder().build().is_err());
    let s = setup();
    let only_a = DualFs::builder().backend_a(rw(s.upper.path())).build();
    assert!(only_a.is_err(), "B is required");
    // The default policy is the overlay one.
    let fs = DualFs::builder()
        .backend_a(rw(s.upper.path()))
        .backend_b(ro(s.lower.path()))
        .build()
        .expect("builds");
    assert_eq!(fs.policy().name(), "read-b-write-a");
}
