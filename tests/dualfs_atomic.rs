//! DualFs removals are all-or-nothing when A is full; releasedir releases both sides;
//! fallocate needs a writable handle; destroy gives back everything the guest held.

mod dualfs_common;
#[allow(dead_code, clippy::unnecessary_cast)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use boxfs::dualfs::{DualFs, ReadBackendBWriteBackendA};
use boxfs::memfs::MemFs;
use boxfs::{Context, DynFileSystem, FileSystem, FsOptions, ROOT_ID};
use dualfs_common::*;
use harness::{c, errno, mode_of, H};

fn h(fs: &dyn DynFileSystem) -> H<'_> {
    H {
        fs,
        ctx: Context::new(),
    }
}

fn memfs(capacity: u64) -> Arc<MemFs> {
    Arc::new(
        MemFs::builder()
            .capacity(capacity)
            .build()
            .expect("MemFs builds"),
    )
}

fn dualfs(a: Arc<dyn DynFileSystem>, b: Arc<dyn DynFileSystem>) -> DualFs {
    DualFs::builder()
        .backend_a(a)
        .backend_b(b)
        .policy(ReadBackendBWriteBackendA)
        .build()
        .expect("DualFs builds")
}

/// Overwrites the start of `name` (a B file) through DualFs, which copies it up.
fn overwrite(fs: &dyn DynFileSystem, name: &str, data: &[u8]) {
    let h = h(fs);
    let ino = h.ino(ROOT_ID, name);
    let fh = h.open(ino, libc::O_RDWR).expect("open");
    h.write(ino, fh, 0, data).expect("write");
    h.release(ino, fh);
}

/// Fills A through DualFs with xattrs on `file`, halving their size down to one byte, so
/// that even the smallest further charge fails with ENOSPC. `n` numbers the xattrs.
fn fill(fs: &dyn DynFileSystem, file: u64, n: &mut u64) {
    let mut size = 1 << 16;
    while size > 0 {
        let name = c(&format!("user.{n}"));
        match fs.setxattr(&Context::new(), file, &name, &vec![7u8; size], 0) {
            Ok(()) => *n += 1,
            Err(err) => {
                assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "filling A");
                size /= 2;
            }
        }
    }
}

/// Regression (issue 14, section 6): unlink, rmdir and rename of A entries that shadow B
/// entries used to remove the A entry and then make the whiteout; with A full the whiteout
/// failed, the B entry reappeared, yet the A entry was gone. Each operation must now either
/// complete or change nothing.
#[test]
fn removals_over_lower_entries_are_all_or_nothing_on_a_full_upper() {
    let lower = memfs(64 << 20);
    let hl = h(&*lower);
    hl.put(ROOT_ID, "f", b"lower-f");
    hl.put(ROOT_ID, "g", b"lower-g");
    hl.put(ROOT_ID, "gone", b"x");
    hl.mkdir(ROOT_ID, "e", 0o755).expect("mkdir");
    let upper = memfs(1 << 20);
    let fs = dualfs(upper.clone(), lower.clone());
    let g = h(&fs);
    // Copies up f, g and e (e with other permissions than below), and marks A's root as
    // holding whiteouts (so no later step needs that).
    // f's copy is empty, so removing it frees less than a whiteout takes.
    let f = g.ino(ROOT_ID, "f");
    g.truncate(f, 0).expect("truncate copies f up");
    g.chmod(f, 0o600).expect("chmod");
    overwrite(&fs, "g", b"upper-g");
    let e = g.ino(ROOT_ID, "e");
    g.chmod(e, 0o700).expect("chmod copies e up");
    g.unlink(ROOT_ID, "gone").expect("unlink a B-only file");

    let (fe, ffh) = g.create(ROOT_ID, "filler", 0o644).expect("create filler");
    g.release(fe.inode, ffh);
    let filler = fe.inode;
    let mut n = 0;

    // unlink
    fill(&fs, filler, &mut n);
    match g.unlink(ROOT_ID, "f") {
        Ok(()) => assert_eq!(errno(g.lookup(ROOT_ID, "f")), libc::ENOENT),
        Err(err) => {
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
            let st = g.getattr(g.ino(ROOT_ID, "f"));
            assert_eq!(
                (mode_of(&st) & 0o7777, st.st_size),
                (0o600, 0),
                "a failed unlink left A's file"
            );
        }
    }
    // rmdir
    fill(&fs, filler, &mut n);
    match g.rmdir(ROOT_ID, "e") {
        Ok(()) => assert_eq!(errno(g.lookup(ROOT_ID, "e")), libc::ENOENT),
        Err(err) => {
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
            let st = g.getattr(g.ino(ROOT_ID, "e"));
            assert_eq!(
                mode_of(&st) & 0o7777,
                0o700,
                "a failed rmdir left A's directory"
            );
        }
    }
    // rename
    fill(&fs, filler, &mut n);
    match g.rename(ROOT_ID, "g", ROOT_ID, "h", 0) {
        Ok(()) => {
            assert_eq!(errno(g.lookup(ROOT_ID, "g")), libc::ENOENT);
            assert_eq!(g.get(g.ino(ROOT_ID, "h")), b"upper-g");
        }
        Err(err) => {
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
            assert_eq!(g.get(g.ino(ROOT_ID, "g")), b"upper-g");
            assert_eq!(errno(g.lookup(ROOT_ID, "h")), libc::ENOENT);
        }
    }

    // With room again, each one completes.
    g.forget(filler, 1);
    g.unlink(ROOT_ID, "filler").expect("unlink filler");
    if g.lookup(ROOT_ID, "f").is_ok() {
        g.unlink(ROOT_ID, "f").expect("unlink f");
    }
    assert_eq!(errno(g.lookup(ROOT_ID, "f")), libc::ENOENT);
    if g.lookup(ROOT_ID, "e").is_ok() {
        g.rmdir(ROOT_ID, "e").expect("rmdir e");
    }
    assert_eq!(errno(g.lookup(ROOT_ID, "e")), libc::ENOENT);
    if g.lookup(ROOT_ID, "g").is_ok() {
        g.rename(ROOT_ID, "g", ROOT_ID, "h", 0).expect("rename g");
    }
    assert_eq!(errno(g.lookup(ROOT_ID, "g")), libc::ENOENT);
    assert_eq!(g.get(g.ino(ROOT_ID, "h")), b"upper-g");
    let mut names = g.names(ROOT_ID);
    names.sort();
    assert_eq!(names, ["h"]);
    // Nothing was left in the staging area.
    let ha = h(&*upper);
    let work = ha.ino(ROOT_ID, ".boxfs-dualfs-work");
    assert!(
        ha.names(work).is_empty(),
        "staging area: {:?}",
        ha.names(work)
    );
}

/// Regression: releasedir returned at A's error before releasing B's directory handle,
/// leaking it for the life of the mount.
#[test]
fn releasedir_releases_b_even_when_a_fails() {
    let (a, fa) = Faulty::wrap(memfs(1 << 20));
    let lower = memfs(1 << 20);
    h(&*lower).mkdir(ROOT_ID, "d", 0o755).expect("mkdir");
    let (b, fb) = Faulty::wrap(lower);
    let fs = dualfs(a, b);
    let (fh, _) = fs.opendir(&Context::new(), ROOT_ID, 0).expect("opendir");
    let fh = fh.expect("handle");
    assert_eq!(fb.opendirs.load(Ordering::SeqCst), 1, "root merges B");
    fa.fail_releasedir.store(true, Ordering::SeqCst);
    let r = fs.releasedir(&Context::new(), ROOT_ID, 0, fh);
    assert_eq!(errno(r), libc::EIO, "A's error is reported");
    assert_eq!(
        fb.releasedirs.load(Ordering::SeqCst),
        1,
        "B's directory handle was released too"
    );
    assert_eq!(fs.handle_count(), 0);
}

/// Regression: fallocate went to the backend through a handle opened read-only (a B file's
/// handle, on a backend that may not check it): Linux answers EBADF.
#[test]
fn fallocate_needs_a_writable_handle() {
    let lower = memfs(1 << 20);
    h(&*lower).put(ROOT_ID, "f", b"data");
    let (b, fb) = Faulty::wrap(lower.clone());
    let fs = dualfs(memfs(1 << 20), b);
    let g = h(&fs);
    let f = g.ino(ROOT_ID, "f");
    let fh = g.open(f, libc::O_RDONLY).expect("open");
    let r = fs.fallocate(&Context::new(), f, fh, 0, 0, 1 << 16);
    assert_eq!(errno(r), libc::EBADF);
    assert_eq!(fb.fallocates.load(Ordering::SeqCst), 0, "B was not asked");
    g.release(f, fh);
    // A writable handle (of the copy in A) may.
    let fh = g.open(f, libc::O_RDWR).expect("open rw");
    fs.fallocate(&Context::new(), f, fh, 0, 0, 1 << 16)
        .expect("fallocate through a writable handle");
    g.release(f, fh);
    assert_eq!(g.getattr(f).st_size, 1 << 16);
}

/// Issue 14, section 4: `destroy` ends the session like an unmount. 100 sessions that each
/// look up, open, create and unlink-while-open files leave the inode table, the handle
/// table and both backends where the first session found them.
#[test]
fn destroy_releases_every_inode_and_handle_of_the_session() {
    let lower = memfs(64 << 20);
    let hl = h(&*lower);
    hl.mkdir(ROOT_ID, "dir", 0o755).expect("mkdir");
    let dir = hl.ino(ROOT_ID, "dir");
    for i in 0..4 {
        hl.put(dir, &format!("b{i}"), b"lower");
    }
    hl.forget(dir, 1);
    let upper = memfs(64 << 20);
    let fs = dualfs(upper.clone(), lower.clone());
    fs.init(FsOptions::empty()).expect("init");
    let counts = |fs: &DualFs| {
        (
            fs.inode_count(),
            fs.handle_count(),
            upper.inode_count(),
            lower.inode_count(),
            upper.usage().bytes_used,
        )
    };
    let (inodes, handles, ..) = counts(&fs);
    assert_eq!((inodes, handles), (1, 0), "only the root");
    let mut after_first = None;
    for cycle in 0..100 {
        let g = h(&fs);
        let dir = g.ino(ROOT_ID, "dir");
        let (dfh, _) = fs.opendir(&g.ctx, dir, 0).expect("opendir");
        assert!(dfh.is_some());
        // Lower files opened read-only; b0 copied up by a write (in the first session).
        for i in 0..4 {
            let f = g.ino(dir, &format!("b{i}"));
            let fh = g.open(f, libc::O_RDONLY).expect("open");
            assert!(!g.read(f, fh, 0, 16).expect("read").is_empty());
        }
        let f = g.ino(dir, "b0");
        let wfh = g.open(f, libc::O_RDWR).expect("open rw");
        g.write(f, wfh, 0, b"upper").expect("write");
        // New files, one unlinked while open.
        let (e, efh) = g
            .create(dir, &format!("new{cycle}"), 0o644)
            .expect("create");
        g.write(e.inode, efh, 0, b"x").expect("write");
        g.unlink(dir, &format!("new{cycle}")).expect("unlink");
        let (u, ufh) = g.create(dir, "unlinked", 0o644).expect("create");
        g.write(u.inode, ufh, 0, &[1u8; 5000]).expect("write");
        g.unlink(dir, "unlinked").expect("unlink open file");
        assert!(fs.inode_count() > 1 && fs.handle_count() >= 8);
        fs.destroy();
        fs.init(FsOptions::empty()).expect("init after destroy");
        let now = counts(&fs);
        assert_eq!(
            (now.0, now.1),
            (1, 0),
            "cycle {cycle}: only the root is left"
        );
        // The first session copied `dir` and `b0` up for good; nothing else may stay.
        match after_first {
            None => after_first = Some(now),
            Some(first) => assert_eq!(now, first, "cycle {cycle}"),
        }
    }
    // The filesystem still works after the last destroy (the staging area is back).
    let g = h(&fs);
    let dir = g.ino(ROOT_ID, "dir");
    g.unlink(dir, "b1").expect("unlink makes a whiteout");
    assert_eq!(errno(g.lookup(dir, "b1")), libc::ENOENT);
    assert_eq!(g.get(g.ino(dir, "b0")), b"upper");
}

/// A rename with `RENAME_NOREPLACE` onto a name whose B entry was deleted (a whiteout in A)
/// replaces the whiteout: the guest sees no entry there. Also for a source with a B entry,
/// which leaves a whiteout behind.
#[test]
fn noreplace_rename_over_a_whiteout() {
    let lower = memfs(1 << 20);
    let hl = h(&*lower);
    for n in ["a", "b", "c"] {
        hl.put(ROOT_ID, n, n.as_bytes());
    }
    let fs = dualfs(memfs(1 << 20), lower);
    let g = h(&fs);
    g.unlink(ROOT_ID, "b").expect("unlink b");
    g.unlink(ROOT_ID, "c").expect("unlink c");
    // A B file (copied up, whiteout left at its old name) onto a whiteout.
    g.rename(ROOT_ID, "a", ROOT_ID, "b", 1)
        .expect("noreplace rename");
    assert_eq!(g.get(g.ino(ROOT_ID, "b")), b"a");
    assert_eq!(errno(g.lookup(ROOT_ID, "a")), libc::ENOENT);
    // An A-only file onto a whiteout.
    let (e, fh) = g.create(ROOT_ID, "new", 0o644).expect("create");
    g.release(e.inode, fh);
    g.rename(ROOT_ID, "new", ROOT_ID, "c", 1)
        .expect("noreplace rename");
    assert_eq!(errno(g.lookup(ROOT_ID, "new")), libc::ENOENT);
    g.lookup(ROOT_ID, "c").expect("c");
    // Onto a visible name: still EEXIST.
    assert_eq!(errno(g.rename(ROOT_ID, "b", ROOT_ID, "c", 1)), libc::EEXIST);
    let mut names = g.names(ROOT_ID);
    names.sort();
    assert_eq!(names, ["b", "c"]);
}

/// The same removals over a host directory as A (PassthroughFs: the whiteout is exchanged with
/// a directory through `renameat2(RENAME_EXCHANGE)`): complete, whiteouts on disk, nothing
/// left in the staging area.
#[test]
fn removals_over_lower_entries_with_a_passthrough_upper() {
    let (lo, up) = (tempdir(), tempdir());
    std::fs::write(lo.path().join("f"), "lower-f").unwrap();
    std::fs::write(lo.path().join("g"), "lower-g").unwrap();
    std::fs::create_dir(lo.path().join("e")).unwrap();
    std::fs::write(lo.path().join("e/x"), "x").unwrap();
    let fs = dualfs(rw(up.path()), ro(lo.path()));
    let g = h(&fs);
    overwrite(&fs, "f", b"upper-f");
    overwrite(&fs, "g", b"upper-g");
    let e = g.ino(ROOT_ID, "e");
    g.unlink(e, "x")
        .expect("unlink e/x (copies e up, whiteout inside)");
    g.unlink(ROOT_ID, "f").expect("unlink f");
    g.rmdir(ROOT_ID, "e").expect("rmdir e");
    g.rename(ROOT_ID, "g", ROOT_ID, "h", 0).expect("rename g");
    let mut names = g.names(ROOT_ID);
    names.sort();
    assert_eq!(names, ["h"]);
    assert_eq!(g.get(g.ino(ROOT_ID, "h")), b"upper-g");
    for n in ["e", "f", "g"] {
        let m = std::fs::symlink_metadata(up.path().join(n)).expect("whiteout on disk");
        assert!(m.is_file() && m.len() == 0, "{n}: whiteout file");
    }
    let work: Vec<_> = std::fs::read_dir(up.path().join(".boxfs-dualfs-work"))
        .unwrap()
        .collect();
    assert!(work.is_empty(), "staging area: {work:?}");
    assert_eq!(std::fs::read(lo.path().join("f")).unwrap(), b"lower-f");
}
