//! Copy-up of every file type through the default policy: content (sparse stays sparse),
//! xattrs, ownership, mode, times, device numbers, symlink targets, parent directories made
//! on demand, hard-link groups; ENOSPC from A reaches the guest and leaves B untouched.

mod dualfs_common;
#[allow(dead_code, clippy::unnecessary_cast)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use boxfs::dualfs::{BackendAOnly, ReadBackendBWriteBackendA};
use boxfs::memfs::MemFs;
use boxfs::{Context, DynFileSystem, GetxattrReply, ListxattrReply, SetattrValid, ROOT_ID};
use dualfs_common::*;
use harness::{c, errno, H};

fn h(fs: &dyn DynFileSystem) -> H<'_> {
    H {
        fs,
        ctx: Context::new(),
    }
}

fn xattr(fs: &dyn DynFileSystem, ino: u64, name: &str) -> Option<Vec<u8>> {
    match fs.getxattr(&Context::new(), ino, &c(name), 4096) {
        Ok(GetxattrReply::Value(v)) => Some(v),
        _ => None,
    }
}

fn xattr_names(fs: &dyn DynFileSystem, ino: u64) -> Vec<String> {
    match fs.listxattr(&Context::new(), ino, 4096) {
        Ok(ListxattrReply::Names(n)) => {
            let mut v: Vec<String> = n
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            v.sort();
            v
        }
        _ => Vec::new(),
    }
}

const SPARSE_AT: u64 = 64 << 20;

/// Prepares the lower tree through a writable PassthroughFs (so guest ownership, special
/// files and xattrs exist as a guest would have made them).
fn prepare(dir: &std::path::Path) {
    let fs = rw(dir);
    let h = h(&*fs);
    let pattern: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let f = h.put(ROOT_ID, "file", &pattern);
    fs.setxattr(&h.ctx, f, &c("user.color"), b"blue", 0)
        .expect("setxattr");
    h.chown(f, 1234, 5678).expect("chown");
    h.chmod(f, 0o4750).expect("chmod");
    h.setattr(
        f,
        |st| {
            st.st_atime = 1_000_000_000;
            st.st_mtime = 1_100_000_000;
            st.st_mtime_nsec = 42;
        },
        SetattrValid::ATIME | SetattrValid::MTIME,
    )
    .expect("utimens");
    let (e, fh) = h.create(ROOT_ID, "sparse", 0o644).expect("create");
    h.write(e.inode, fh, SPARSE_AT, &[7u8; 4096])
        .expect("write");
    h.release(e.inode, fh);
    let d = h.mkdir(ROOT_ID, "d", 0o750).expect("mkdir").inode;
    h.chown(d, 42, 43).expect("chown dir");
    fs.setxattr(&h.ctx, d, &c("user.d"), b"dv", 0)
        .expect("setxattr dir");
    let sub = h.mkdir(d, "sub", 0o711).expect("mkdir").inode;
    h.put(sub, "deep", b"deep data");
    let ln = h.symlink("target/x", ROOT_ID, "ln").expect("symlink").inode;
    h.chown(ln, 7, 8).expect("lchown");
    h.mknod(ROOT_ID, "fifo", libc::S_IFIFO | 0o640, 0)
        .expect("fifo");
    let chr = h
        .mknod(ROOT_ID, "chr", libc::S_IFCHR | 0o620, (1 << 8) | 3)
        .expect("chr")
        .inode;
    h.chown(chr, 0, 5).expect("chown chr");
    h.mknod(ROOT_ID, "blk", libc::S_IFBLK | 0o660, (8 << 8) | 1)
        .expect("blk");
    h.mknod(ROOT_ID, "sock", libc::S_IFSOCK | 0o600, 0)
        .expect("sock");
    let h1 = h.put(ROOT_ID, "h1", b"hl");
    h.link(h1, ROOT_ID, "h2").expect("link");
}

#[test]
fn copy_up_every_file_type_keeps_metadata() {
    let lower = tempdir();
    prepare(lower.path());
    let before = snapshot(lower.path());
    let upper = tempdir();
    let b = ro(lower.path());
    let fs = dual(rw(upper.path()), b.clone(), ReadBackendBWriteBackendA);
    let g = h(&*fs);
    let hb = h(&*b);
    let names = ["file", "sparse", "d", "ln", "fifo", "chr", "blk", "sock"];
    for name in names {
        let ino = g.ino(ROOT_ID, name);
        let st = g.getattr(ino);
        let kind = st.st_mode & libc::S_IFMT;
        if kind == libc::S_IFREG || kind == libc::S_IFDIR {
            // Setting an xattr is a mutation: it copies the entry up.
            fs.setxattr(&g.ctx, ino, &c("user.new"), b"1", 0)
                .unwrap_or_else(|e| panic!("setxattr {name}: {e}"));
        } else {
            // So is a no-op chown.
            g.chown(ino, st.st_uid, st.st_gid)
                .unwrap_or_else(|e| panic!("chown {name}: {e}"));
        }
    }
    // Directories on the way are made on demand.
    let d = g.ino(ROOT_ID, "d");
    let sub = g.ino(d, "sub");
    let deep = g.ino(sub, "deep");
    let fh = g.open(deep, libc::O_WRONLY).expect("open deep");
    g.write(deep, fh, 0, b"DEEP").expect("write");
    g.release(deep, fh);

    // Look at A alone (B invisible) and compare with B.
    let a_view = dual(rw(upper.path()), b.clone(), BackendAOnly);
    let ha = h(&*a_view);
    for name in names {
        let sa = ha.getattr(ha.ino(ROOT_ID, name));
        let sb = hb.getattr(hb.ino(ROOT_ID, name));
        assert_eq!(sa.st_mode, sb.st_mode, "{name} mode");
        assert_eq!(
            (sa.st_uid, sa.st_gid),
            (sb.st_uid, sb.st_gid),
            "{name} owner"
        );
        assert_eq!(sa.st_rdev, sb.st_rdev, "{name} rdev");
        if name != "d" {
            assert_eq!(sa.st_size, sb.st_size, "{name} size");
        }
        if name != "ln" {
            assert_eq!(
                (sa.st_mtime, sa.st_mtime_nsec),
                (sb.st_mtime, sb.st_mtime_nsec),
                "{name} mtime"
            );
        }
    }
    let fa = ha.ino(ROOT_ID, "file");
    assert_eq!(ha.get(fa), hb.get(hb.ino(ROOT_ID, "file")), "content");
    assert_eq!(ha.getattr(fa).st_mode & 0o7777, 0o4750, "setuid kept");
    assert_eq!(
        xattr(&*a_view, fa, "user.color").as_deref(),
        Some(&b"blue"[..])
    );
    assert_eq!(
        xattr(&*a_view, ha.ino(ROOT_ID, "d"), "user.d").as_deref(),
        Some(&b"dv"[..])
    );
    assert_eq!(
        a_view
            .readlink(&ha.ctx, ha.ino(ROOT_ID, "ln"))
            .expect("readlink"),
        b"target/x"
    );
    let ad = ha.ino(ROOT_ID, "d");
    let asub = ha.ino(ad, "sub");
    assert_eq!(
        ha.getattr(asub).st_mode & 0o7777,
        0o711,
        "parent made on demand"
    );
    assert_eq!(ha.get(ha.ino(asub, "deep")), b"DEEP data");
    // The sparse file stayed sparse on the host.
    let m = std::fs::metadata(upper.path().join("sparse")).expect("stat");
    assert_eq!(m.len(), SPARSE_AT + 4096);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "sparse copy allocates {} blocks",
        m.blocks()
    );
    let sp = g.ino(ROOT_ID, "sparse");
    let fh = g.open(sp, libc::O_RDONLY).expect("open");
    assert_eq!(
        g.read(sp, fh, SPARSE_AT - 2, 4).expect("read"),
        [0, 0, 7, 7]
    );
    g.release(sp, fh);
    // The guest sees the same inode numbers as before the copy-up.
    assert_eq!(g.getattr(deep).st_ino, deep);
    // Nothing is left in the staging area; DualFs's private names stay invisible.
    assert!(!g.names(ROOT_ID).iter().any(|n| n.contains("boxfs-dualfs")));
    assert_eq!(
        std::fs::read_dir(upper.path().join(".boxfs-dualfs-work"))
            .expect("work dir")
            .count(),
        0
    );
    assert!(xattr_names(&*fs, fa)
        .iter()
        .all(|n| !n.starts_with("user.overlay.")));
    assert_eq!(snapshot(lower.path()), before, "B unchanged");
}

#[test]
fn hard_link_group_copies_once() {
    let lower = tempdir();
    prepare(lower.path());
    let before = snapshot(lower.path());
    let upper = tempdir();
    let fs = dual(
        rw(upper.path()),
        ro(lower.path()),
        ReadBackendBWriteBackendA,
    );
    let g = h(&*fs);
    let h1 = g.ino(ROOT_ID, "h1");
    let fh = g.open(h1, libc::O_WRONLY).expect("open");
    g.write(h1, fh, 0, b"X").expect("write");
    g.release(h1, fh);
    // The second name sees the copy and becomes a link to it.
    let h2 = g.ino(ROOT_ID, "h2");
    assert_eq!(h2, h1, "two names, one guest inode");
    assert_eq!(g.get(h2), b"Xl");
    let m1 = std::fs::metadata(upper.path().join("h1")).expect("h1 in A");
    let m2 = std::fs::metadata(upper.path().join("h2")).expect("h2 in A");
    assert_eq!(m1.ino(), m2.ino(), "a hard link in A, not a second copy");
    // Also after the guest forgot the inode.
    g.forget(h1, 2);
    drop(fs);
    let fs = dual(
        rw(upper.path()),
        ro(lower.path()),
        ReadBackendBWriteBackendA,
    );
    let g = h(&*fs);
    assert_eq!(g.get(g.ino(ROOT_ID, "h2")), b"Xl");
    assert_eq!(snapshot(lower.path()), before);
}

#[test]
fn enospc_from_a_reaches_guest_and_leaves_b() {
    let lower = tempdir();
    std::fs::write(lower.path().join("big"), vec![5u8; 4 << 20]).expect("write");
    let before = snapshot(lower.path());
    let a: Arc<dyn DynFileSystem> =
        Arc::new(MemFs::builder().capacity(1 << 20).build().expect("MemFs"));
    let fs = dual(a, ro(lower.path()), ReadBackendBWriteBackendA);
    let g = h(&*fs);
    let big = g.ino(ROOT_ID, "big");
    assert_eq!(errno(g.open(big, libc::O_RDWR)), libc::ENOSPC);
    assert_eq!(g.getattr(big).st_size, 4 << 20, "still B's file");
    assert_eq!(g.get(big), vec![5u8; 4 << 20]);
    assert_eq!(g.names(ROOT_ID), vec!["big".to_string()]);
    // statfs reports A.
    let st = fs.statfs(&g.ctx, ROOT_ID).expect("statfs");
    assert_eq!(st.f_blocks * st.f_frsize, 1 << 20);
    // Small creations still work.
    g.put(ROOT_ID, "small", b"ok");
    assert_eq!(snapshot(lower.path()), before);
}

#[test]
fn truncating_open_and_setattr_copy_up() {
    let lower = tempdir();
    std::fs::write(lower.path().join("t"), b"0123456789").expect("write");
    std::fs::write(lower.path().join("s"), b"abc").expect("write");
    let before = snapshot(lower.path());
    let upper = tempdir();
    let fs = dual(
        rw(upper.path()),
        ro(lower.path()),
        ReadBackendBWriteBackendA,
    );
    let g = h(&*fs);
    let t = g.ino(ROOT_ID, "t");
    let ro_fh = g.open(t, libc::O_RDONLY).expect("open ro");
    assert_eq!(errno(g.write(t, ro_fh, 0, b"x")), libc::EBADF);
    g.release(t, ro_fh);
    let fh = g
        .open(t, libc::O_RDONLY | libc::O_TRUNC)
        .expect("open trunc");
    g.release(t, fh);
    assert_eq!(g.getattr(t).st_size, 0);
    let s = g.ino(ROOT_ID, "s");
    assert_eq!(g.truncate(s, 1).expect("truncate").st_size, 1);
    assert_eq!(g.get(s), b"a");
    assert_eq!(std::fs::read(upper.path().join("s")).expect("read"), b"a");
    assert_eq!(snapshot(lower.path()), before);
}
