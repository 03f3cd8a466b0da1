//! Racing copy-ups: many requests for one B file copy it once; different files copy in
//! parallel without interfering.

mod dualfs_common;
#[allow(dead_code, clippy::unnecessary_cast)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};

use boxfs::dualfs::ReadBackendBWriteBackendA;
use boxfs::memfs::MemFs;
use boxfs::{Context, DynFileSystem, ROOT_ID};
use dualfs_common::*;
use harness::H;

const THREADS: usize = 8;
const BLOCK: usize = 4096;

fn original() -> Vec<u8> {
    (0..(3usize << 20)).map(|i| (i % 241) as u8).collect()
}

fn race(upper: Arc<dyn DynFileSystem>) {
    let lower = tempdir();
    std::fs::write(lower.path().join("shared"), original()).expect("write");
    for t in 0..THREADS {
        std::fs::write(lower.path().join(format!("own{t}")), vec![t as u8; 100_000])
            .expect("write");
    }
    let before = snapshot(lower.path());
    let (a, faults) = Faulty::wrap(upper);
    let fs = dual(a, ro(lower.path()), ReadBackendBWriteBackendA);
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let fs = fs.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let g = H {
                    fs: &*fs,
                    ctx: Context::new(),
                };
                let ino = g.ino(ROOT_ID, "shared");
                barrier.wait();
                let fh = g.open(ino, libc::O_RDWR).expect("open for write");
                let block = vec![0xF0 | t as u8; BLOCK];
                g.write(ino, fh, (t * BLOCK) as u64, &block).expect("write");
                g.release(ino, fh);
                // Different files in parallel.
                let own = g.ino(ROOT_ID, &format!("own{t}"));
                let fh = g.open(own, libc::O_WRONLY).expect("open own");
                g.write(own, fh, 0, b"mine").expect("write own");
                g.release(own, fh);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let g = H {
        fs: &*fs,
        ctx: Context::new(),
    };
    assert_eq!(
        faults.creates.load(Ordering::SeqCst),
        (1 + THREADS) as u64,
        "the shared file was copied once (plus one copy per own file)"
    );
    let mut want = original();
    for t in 0..THREADS {
        want[t * BLOCK..(t + 1) * BLOCK].fill(0xF0 | t as u8);
    }
    let got = g.get(g.ino(ROOT_ID, "shared"));
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "every thread's block and the original data intact"
    );
    for t in 0..THREADS {
        let mut want = vec![t as u8; 100_000];
        want[..4].copy_from_slice(b"mine");
        assert_eq!(g.get(g.ino(ROOT_ID, &format!("own{t}"))), want);
    }
    assert_eq!(snapshot(lower.path()), before, "B unchanged");
}

#[test]
fn racing_copy_ups_memfs() {
    race(Arc::new(MemFs::builder().build().expect("MemFs")));
}

#[test]
fn racing_copy_ups_passthrough() {
    let upper = tempdir();
    race(rw(upper.path()));
}
