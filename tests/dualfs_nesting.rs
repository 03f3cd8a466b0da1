//! DualFs nests: DualFs(A, DualFs(B, C)) is a three-layer overlay (one writable layer over
//! two read-only ones).

mod dualfs_common;
#[allow(dead_code, clippy::unnecessary_cast)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::sync::Arc;

use boxfs::dualfs::ReadBackendBWriteBackendA;
use boxfs::memfs::MemFs;
use boxfs::{Context, DynFileSystem, ROOT_ID};
use dualfs_common::*;
use harness::{errno, H};

fn h(fs: &dyn DynFileSystem) -> H<'_> {
    H {
        fs,
        ctx: Context::new(),
    }
}

#[test]
fn three_layer_overlay() {
    // C: the base image on the host.
    let base = tempdir();
    std::fs::write(base.path().join("base"), b"c").expect("write");
    std::fs::write(base.path().join("shadowed"), b"c").expect("write");
    std::fs::write(base.path().join("gone"), b"c").expect("write");
    std::fs::create_dir(base.path().join("etc")).expect("mkdir");
    std::fs::write(base.path().join("etc/c1"), b"c1").expect("write");
    let before = snapshot(base.path());
    // B: a layer over C, built through a DualFs over a MemFs, then frozen.
    let b_mem: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().build().expect("MemFs"));
    {
        let build = dual(b_mem.clone(), ro(base.path()), ReadBackendBWriteBackendA);
        let g = h(&*build);
        let s = g.ino(ROOT_ID, "shadowed");
        let fh = g.open(s, libc::O_WRONLY | libc::O_TRUNC).expect("open");
        g.write(s, fh, 0, b"b").expect("write");
        g.release(s, fh);
        g.unlink(ROOT_ID, "gone").expect("whiteout in B");
        let etc = g.ino(ROOT_ID, "etc");
        g.put(etc, "b1", b"b1");
    }
    let inner = dual(b_mem.clone(), ro(base.path()), ReadBackendBWriteBackendA);
    // A: the writable top.
    let a: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().build().expect("MemFs"));
    let fs = dual(a, inner, ReadBackendBWriteBackendA);
    let g = h(&*fs);
    assert_eq!(g.names(ROOT_ID), vec!["base", "etc", "shadowed"]);
    assert_eq!(g.get(g.ino(ROOT_ID, "base")), b"c");
    assert_eq!(g.get(g.ino(ROOT_ID, "shadowed")), b"b");
    assert_eq!(errno(g.lookup(ROOT_ID, "gone")), libc::ENOENT);
    let etc = g.ino(ROOT_ID, "etc");
    assert_eq!(g.names(etc), vec!["b1", "c1"]);
    // Writes land in A only.
    let c1 = g.ino(etc, "c1");
    let fh = g.open(c1, libc::O_WRONLY).expect("open");
    g.write(c1, fh, 0, b"A").expect("write");
    g.release(c1, fh);
    assert_eq!(g.get(c1), b"A1");
    g.unlink(ROOT_ID, "base").expect("unlink");
    g.put(etc, "a1", b"a1");
    assert_eq!(g.names(ROOT_ID), vec!["etc", "shadowed"]);
    assert_eq!(g.names(etc), vec!["a1", "b1", "c1"]);
    // B (the MemFs layer) is unchanged by the top's activity.
    let hb = h(&*b_mem);
    assert_eq!(
        errno(hb.lookup(ROOT_ID, "base")),
        libc::ENOENT,
        "never copied into B"
    );
    let b_etc = hb.ino(ROOT_ID, "etc");
    assert_eq!(errno(hb.lookup(b_etc, "c1")), libc::ENOENT);
    assert_eq!(errno(hb.lookup(b_etc, "a1")), libc::ENOENT);
    assert_eq!(snapshot(base.path()), before, "C unchanged");
}
