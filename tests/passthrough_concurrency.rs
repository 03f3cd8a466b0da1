//! Many threads looking up, forgetting, reading, chmod-ing and renaming at once, with a tiny
//! descriptor cache so re-resolution races with eviction and forget.

#[allow(dead_code, clippy::unnecessary_cast, clippy::wrong_self_convention)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::sync::Arc;

use boxfs::passthrough::PassthroughFs;
use harness::*;

#[test]
fn threads_hammer_a_small_descriptor_cache() {
    let dir = passthrough_common::tempdir();
    for d in 0..8 {
        std::fs::create_dir(dir.path().join(format!("d{d}"))).expect("mkdir");
        std::fs::write(dir.path().join(format!("d{d}/mine")), b"m").expect("write");
        for f in 0..50 {
            std::fs::write(dir.path().join(format!("d{d}/f{f}")), format!("{d}-{f}"))
                .expect("write");
        }
    }
    let fs = Arc::new(
        PassthroughFs::builder(dir.path())
            .fd_cache_size(16)
            .build()
            .expect("build"),
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let h = H {
                    fs: &*fs,
                    ctx: boxfs::Context::new(),
                };
                for round in 0..30 {
                    // Every thread walks every directory (shared inodes, shared parents).
                    for d in 0..8 {
                        let di = h.ino(ROOT, &format!("d{d}"));
                        for f in (round % 5..50).step_by(5) {
                            let name = format!("f{f}");
                            let e = h.lookup(di, &name).expect("lookup");
                            let fh = h.open(e.inode, libc::O_RDONLY).expect("open");
                            let data = h.read(e.inode, fh, 0, 64).expect("read");
                            assert_eq!(data, format!("{d}-{f}").as_bytes());
                            h.release(e.inode, fh);
                            assert_eq!(h.getattr(e.inode).st_ino, e.inode);
                            h.forget(e.inode, 1);
                        }
                        h.forget(di, 1);
                    }
                    // Each thread also mutates its own directory.
                    let mine = h.ino(ROOT, &format!("d{t}"));
                    let a = "mine".to_string();
                    let tmp = format!("tmp{t}");
                    h.rename(mine, &a, mine, &tmp, 0).expect("rename away");
                    let moved = h.lookup(mine, &tmp).expect("lookup moved");
                    h.chmod(moved.inode, 0o600 + (round as u32 % 8))
                        .expect("chmod");
                    h.rename(mine, &tmp, mine, &a, 0).expect("rename back");
                    assert_eq!(h.getattr(moved.inode).st_mode & 0o7, round as u32 % 8);
                    h.forget(moved.inode, 1);
                    h.forget(mine, 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(fs.inode_count(), 1, "every inode was forgotten and freed");
    assert!(fs.cached_fds() <= 16);
}
