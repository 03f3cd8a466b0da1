//! Read-only shares, the byte quota, open-after-unlink and statfs.

#[allow(dead_code, clippy::unnecessary_cast, clippy::wrong_self_convention)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use boxfs::passthrough::PassthroughFs;
use boxfs::{CreateIn, FileSystem, SetattrValid};
use harness::*;

#[test]
fn readonly_refuses_every_mutation_with_erofs() {
    let dir = passthrough_common::tempdir();
    std::fs::write(dir.path().join("f"), b"data").expect("write");
    std::fs::create_dir(dir.path().join("d")).expect("mkdir");
    let fs = PassthroughFs::builder(dir.path())
        .readonly(true)
        .build()
        .expect("build");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let f = h.ino(ROOT, "f");
    let d = h.ino(ROOT, "d");
    let rofs = libc::EROFS;
    assert_eq!(errno(h.create(ROOT, "new", 0o644)), rofs);
    let args = CreateIn {
        flags: libc::O_RDONLY as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    assert_eq!(errno(fs.create(&h.ctx, ROOT, &c("f"), args)), rofs);
    assert_eq!(errno(h.mkdir(ROOT, "nd", 0o755)), rofs);
    assert_eq!(errno(h.mknod(ROOT, "p", libc::S_IFIFO | 0o644, 0)), rofs);
    assert_eq!(errno(h.symlink("t", ROOT, "s")), rofs);
    assert_eq!(errno(h.link(f, ROOT, "l")), rofs);
    assert_eq!(errno(h.unlink(ROOT, "f")), rofs);
    assert_eq!(errno(h.rmdir(ROOT, "d")), rofs);
    assert_eq!(errno(h.rename(ROOT, "f", ROOT, "g", 0)), rofs);
    assert_eq!(errno(h.open(f, libc::O_WRONLY)), rofs);
    assert_eq!(errno(h.open(f, libc::O_RDWR)), rofs);
    assert_eq!(errno(h.open(f, libc::O_RDONLY | libc::O_TRUNC)), rofs);
    assert_eq!(errno(h.chmod(f, 0o777)), rofs);
    assert_eq!(errno(h.chown(f, 1, 1)), rofs);
    assert_eq!(errno(h.truncate(f, 0)), rofs);
    assert_eq!(
        errno(h.setattr(f, |st| st.st_mtime = 1, SetattrValid::MTIME)),
        rofs
    );
    assert_eq!(errno(fs.setxattr(&h.ctx, f, &c("user.x"), b"1", 0)), rofs);
    assert_eq!(errno(fs.removexattr(&h.ctx, f, &c("user.x"))), rofs);
    let fh = h.open(f, libc::O_RDONLY).expect("read-only open works");
    assert_eq!(h.read(f, fh, 0, 16).expect("read"), b"data");
    assert_eq!(errno(h.write(f, fh, 0, b"x")), rofs);
    assert_eq!(errno(fs.fallocate(&h.ctx, f, fh, 0, 0, 100)), rofs);
    h.release(f, fh);
    let st = fs.statfs(&h.ctx, ROOT).expect("statfs");
    assert_ne!(st.f_flag & libc::ST_RDONLY, 0);
    assert_eq!(std::fs::read(dir.path().join("f")).expect("read"), b"data");
    assert!(dir.path().join("d").is_dir());
    let _ = d;
}

#[test]
fn quota_limits_growth_with_enospc() {
    let dir = passthrough_common::tempdir();
    std::fs::write(dir.path().join("existing"), vec![1u8; 100_000]).expect("write");
    let quota = 1 << 20;
    let fs = PassthroughFs::builder(dir.path())
        .quota_bytes(Some(quota))
        .build()
        .expect("build");
    assert_eq!(fs.quota_used(), Some(100_000), "existing data is measured");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let (e, fh) = h.create(ROOT, "f", 0o644).expect("create");
    let chunk = vec![7u8; 256 * 1024];
    for i in 0..3 {
        h.write(e.inode, fh, i * chunk.len() as u64, &chunk)
            .expect("fits");
    }
    assert_eq!(
        errno(h.write(e.inode, fh, 3 * chunk.len() as u64, &chunk)),
        libc::ENOSPC
    );
    // Overwriting in place does not grow the share.
    h.write(e.inode, fh, 0, &chunk).expect("overwrite");
    assert_eq!(errno(h.truncate(e.inode, quota)), libc::ENOSPC);
    assert_eq!(
        errno(fs.fallocate(&h.ctx, e.inode, fh, 0, 0, quota)),
        libc::ENOSPC
    );
    let st = fs.statfs(&h.ctx, ROOT).expect("statfs");
    assert_eq!(st.f_blocks * st.f_frsize, quota - quota % st.f_frsize);
    assert!(st.f_bavail * st.f_frsize <= quota - 3 * chunk.len() as u64 - 100_000);
    // Shrinking and unlinking give space back.
    h.truncate(e.inode, 0).expect("truncate");
    h.write(e.inode, fh, 0, &chunk).expect("fits again");
    h.release(e.inode, fh);
    h.unlink(ROOT, "existing").expect("unlink");
    assert_eq!(fs.quota_used(), Some(chunk.len() as u64));
    // Symlink targets count too, and mknod is free.
    h.symlink("t", ROOT, "s").expect("symlink");
    h.mknod(ROOT, "p", libc::S_IFIFO | 0o644, 0).expect("mknod");
}

#[test]
fn open_after_unlink_survives_descriptor_eviction() {
    let dir = passthrough_common::tempdir();
    let fs = PassthroughFs::builder(dir.path())
        .fd_cache_size(16)
        .build()
        .expect("build");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let (e, fh) = h.create(ROOT, "doomed", 0o644).expect("create");
    h.write(e.inode, fh, 0, b"still here").expect("write");
    h.unlink(ROOT, "doomed").expect("unlink");
    // Evict everything from the descriptor cache.
    for i in 0..64 {
        h.put(ROOT, &format!("f{i}"), b"x");
    }
    assert!(fs.cached_fds() <= 16);
    let st = h.getattr(e.inode);
    assert_eq!(st.st_nlink, 0);
    assert_eq!(st.st_size, 10);
    assert_eq!(h.read(e.inode, fh, 0, 64).expect("read"), b"still here");
    h.chmod(e.inode, 0o600).expect("chmod after unlink");
    h.release(e.inode, fh);
    h.forget(e.inode, 1);
    assert!(h.try_getattr(e.inode).is_err());
}

#[test]
fn renamed_directories_keep_their_children_reachable() {
    let dir = passthrough_common::tempdir();
    let fs = PassthroughFs::builder(dir.path())
        .fd_cache_size(16)
        .build()
        .expect("build");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let a = h.mkdir(ROOT, "a", 0o755).expect("mkdir").inode;
    let b = h.mkdir(a, "b", 0o755).expect("mkdir").inode;
    let f = h.put(b, "f", b"deep");
    h.rename(ROOT, "a", ROOT, "z", 0).expect("rename");
    for i in 0..64 {
        h.put(ROOT, &format!("f{i}"), b"x");
    }
    assert_eq!(h.get(f), b"deep", "re-resolved through the renamed parent");
    // A host-side replacement is detected, never silently served.
    std::fs::rename(dir.path().join("z/b/f"), dir.path().join("z/b/f.old")).expect("mv");
    std::fs::write(dir.path().join("z/b/f"), b"impostor").expect("write");
    for i in 0..64 {
        h.getattr(h.ino(ROOT, &format!("f{i}")));
    }
    assert_eq!(errno(h.try_getattr(f)), libc::ESTALE);
}
