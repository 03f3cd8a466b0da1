//! Host-side changes behind the guest's back: a file replaced (new inode, possibly the same
//! inode number) or rewritten by the host is what the guest sees on its next lookup and open.

#[allow(dead_code)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use boxfs::FileSystem;
use harness::*;

#[test]
fn a_host_replaced_file_is_served_on_the_next_lookup() {
    let dir = passthrough_common::fast_tempdir();
    // A tiny fd cache so the guest's inode loses its descriptor as in a large share.
    let fs = passthrough_common::builder(dir.path())
        .fd_cache_size(1)
        .build()
        .expect("build");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let path = dir.path().join("conf");
    std::fs::write(&path, b"old").expect("write");
    let first = h.lookup(ROOT, "conf").expect("lookup");
    let fh = h.open(first.inode, libc::O_RDONLY).expect("open");
    assert_eq!(h.read(first.inode, fh, 0, 16).expect("read"), b"old");
    h.release(first.inode, fh);

    for round in 0..20 {
        // An editor's atomic replace: write a new file, rename it over the old name.
        let new = format!("new content {round}");
        let tmp = dir.path().join("conf.tmp");
        std::fs::write(&tmp, new.as_bytes()).expect("write tmp");
        std::fs::rename(&tmp, &path).expect("rename over");
        // Evict the guest inode's descriptor by touching another inode.
        h.lookup(ROOT, ".").ok();
        let e = h.lookup(ROOT, "conf").expect("lookup after replace");
        let fh = h.open(e.inode, libc::O_RDONLY).expect("open after replace");
        assert_eq!(
            h.read(e.inode, fh, 0, 64).expect("read"),
            new.as_bytes(),
            "round {round}"
        );
        assert_eq!(h.getattr(e.inode).st_size as usize, new.len());
        h.release(e.inode, fh);
        fs.forget(&h.ctx, e.inode, 1);
    }
}

#[test]
fn a_host_deleted_and_recreated_file_is_the_new_one() {
    let dir = passthrough_common::fast_tempdir();
    let fs = passthrough_common::builder(dir.path())
        .fd_cache_size(1)
        .build()
        .expect("build");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let path = dir.path().join("f");
    for round in 0..20u32 {
        std::fs::write(&path, round.to_le_bytes()).expect("write");
        // The guest still holds every earlier inode (no forget): the host may reuse their
        // numbers, and the lookup must still serve the current file.
        let e = h.lookup(ROOT, "f").expect("lookup");
        let fh = h.open(e.inode, libc::O_RDONLY).expect("open");
        assert_eq!(
            h.read(e.inode, fh, 0, 8).expect("read"),
            round.to_le_bytes()
        );
        h.release(e.inode, fh);
        std::fs::remove_file(&path).expect("remove");
    }
}
