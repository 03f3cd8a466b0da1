//! Bounded descriptors: 200 000 host files served with `RLIMIT_NOFILE` = 4096, and
//! descriptor exhaustion reported as `EMFILE`, never as a phantom `ENOENT`.

#[allow(dead_code, clippy::unnecessary_cast, clippy::wrong_self_convention)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::sync::Mutex;

use boxfs::passthrough::PassthroughFs;
use harness::*;

/// The tests in this binary share the process descriptor table.
static SERIAL: Mutex<()> = Mutex::new(());

fn limit_fds(n: u64) {
    passthrough_common::unprivileged();
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain syscall with a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn two_hundred_thousand_files_with_4096_descriptors() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    limit_fds(4096);
    // tmpfs (with user xattrs) when there is one: creating 200 000 files is I/O bound.
    let dir = passthrough_common::fast_tempdir();
    let t0 = std::time::Instant::now();
    const DIRS: usize = 200;
    const PER: usize = 1000;
    for d in 0..DIRS {
        let dp = dir.path().join(format!("d{d}"));
        std::fs::create_dir(&dp).expect("mkdir");
        for f in 0..PER {
            std::fs::write(dp.join(format!("f{f}")), format!("{d}/{f}")).expect("write");
        }
    }
    eprintln!("host tree created in {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    let fs = PassthroughFs::builder(dir.path()).build().expect("build");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let mut inodes = Vec::with_capacity(DIRS * PER);
    let mut dirs = Vec::with_capacity(DIRS);
    let mut max_fds = 0;
    for d in 0..DIRS {
        let di = h.ino(ROOT, &format!("d{d}"));
        dirs.push(di);
        for f in 0..PER {
            let e = h.lookup(di, &format!("f{f}")).expect("lookup");
            assert_eq!(
                h.getattr(e.inode).st_size as usize,
                format!("{d}/{f}").len()
            );
            let fh = h.open(e.inode, libc::O_RDONLY).expect("open");
            assert_eq!(
                h.read(e.inode, fh, 0, 64).expect("read"),
                format!("{d}/{f}").as_bytes()
            );
            h.release(e.inode, fh);
            inodes.push(e.inode);
        }
        max_fds = max_fds.max(open_fds());
    }
    eprintln!("first walk in {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    assert!(max_fds < 4096, "descriptors stayed bounded ({max_fds})");
    assert!(fs.cached_fds() <= 1024);
    assert_eq!(fs.inode_count(), 1 + DIRS + DIRS * PER);
    // Walk everything again: nearly every inode was evicted and is re-resolved by name.
    for (i, &ino) in inodes.iter().enumerate().step_by(7) {
        let st = h.getattr(ino);
        assert_eq!(st.st_ino, ino);
        let fh = h.open(ino, libc::O_RDONLY).expect("reopen evicted inode");
        let want = format!("{}/{}", i / PER, i % PER);
        assert_eq!(h.read(ino, fh, 0, 64).expect("read"), want.as_bytes());
        h.release(ino, fh);
    }
    eprintln!("second walk in {:?}", t0.elapsed());
    // Forgetting everything reclaims every inode.
    for &ino in &inodes {
        h.forget(ino, 1);
    }
    for &d in &dirs {
        h.forget(d, 1);
    }
    assert_eq!(fs.inode_count(), 1);
    assert_eq!(fs.cached_fds(), 0);
}

#[test]
fn exhaustion_is_emfile_not_enoent() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    limit_fds(4096);
    let dir = passthrough_common::tempdir();
    std::fs::write(dir.path().join("f"), b"x").expect("write");
    let fs = PassthroughFs::builder(dir.path()).build().expect("build");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    // Fill the descriptor table.
    let mut held = Vec::new();
    loop {
        // SAFETY: dup of stdin-or-any valid fd; failures end the loop.
        let fd = unsafe { libc::dup(2) };
        if fd < 0 {
            break;
        }
        held.push(fd);
    }
    assert_eq!(errno(h.lookup(ROOT, "f")), libc::EMFILE);
    assert_eq!(errno(h.create(ROOT, "g", 0o644)), libc::EMFILE);
    for fd in held {
        // SAFETY: closing descriptors this test opened.
        unsafe { libc::close(fd) };
    }
    let ino = h.ino(ROOT, "f");
    assert_eq!(h.get(ino), b"x");
}
