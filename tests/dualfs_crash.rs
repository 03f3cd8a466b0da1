//! A copy-up that fails midway (a failing write in A, or a "crash" where nothing can be
//! cleaned up) never leaves a partial file visible, and a restart removes the leftovers.

mod dualfs_common;
#[allow(dead_code, clippy::unnecessary_cast)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::sync::atomic::Ordering;

use boxfs::dualfs::ReadBackendBWriteBackendA;
use boxfs::{Context, DynFileSystem, ROOT_ID};
use dualfs_common::*;
use harness::{errno, H};

fn h(fs: &dyn DynFileSystem) -> H<'_> {
    H {
        fs,
        ctx: Context::new(),
    }
}

fn content() -> Vec<u8> {
    (0..(3usize << 20) + 17)
        .map(|i| (i % 239) as u8 | 1)
        .collect()
}

fn work_entries(upper: &std::path::Path) -> usize {
    std::fs::read_dir(upper.join(".boxfs-dualfs-work"))
        .expect("work dir")
        .count()
}

#[test]
fn failed_write_leaves_no_partial_file() {
    let lower = tempdir();
    std::fs::create_dir(lower.path().join("d")).expect("mkdir");
    std::fs::write(lower.path().join("d/big"), content()).expect("write");
    let before = snapshot(lower.path());
    let upper = tempdir();
    let (a, faults) = Faulty::wrap(rw(upper.path()));
    let fs = dual(a, ro(lower.path()), ReadBackendBWriteBackendA);
    let g = h(&*fs);
    let d = g.ino(ROOT_ID, "d");
    let big = g.ino(d, "big");
    // The third 1 MiB chunk fails.
    faults.writes_left.store(2, Ordering::SeqCst);
    assert_eq!(errno(g.open(big, libc::O_WRONLY)), libc::EIO);
    assert!(
        !upper.path().join("d/big").exists(),
        "no partial copy in place"
    );
    assert_eq!(work_entries(upper.path()), 0, "the failed copy was removed");
    assert_eq!(g.get(big), content(), "the guest still sees B's file");
    // Once A works again the copy-up succeeds.
    faults.writes_left.store(-1, Ordering::SeqCst);
    let fh = g.open(big, libc::O_WRONLY).expect("open");
    g.write(big, fh, 0, b"!").expect("write");
    g.release(big, fh);
    let mut want = content();
    want[0] = b'!';
    assert_eq!(
        std::fs::read(upper.path().join("d/big")).expect("read"),
        want
    );
    assert_eq!(snapshot(lower.path()), before);
}

#[test]
fn crash_before_rename_is_invisible_and_cleaned_on_restart() {
    let lower = tempdir();
    std::fs::write(lower.path().join("big"), content()).expect("write");
    let before = snapshot(lower.path());
    let upper = tempdir();
    {
        let (a, faults) = Faulty::wrap(rw(upper.path()));
        let fs = dual(a, ro(lower.path()), ReadBackendBWriteBackendA);
        let g = h(&*fs);
        let big = g.ino(ROOT_ID, "big");
        // The daemon "dies" between the complete copy and its rename: nothing is cleaned.
        faults.fail_rename.store(true, Ordering::SeqCst);
        faults.fail_unlink.store(true, Ordering::SeqCst);
        assert_eq!(errno(g.open(big, libc::O_RDWR)), libc::EIO);
        assert_eq!(
            work_entries(upper.path()),
            1,
            "the staged copy is left behind"
        );
        assert!(!upper.path().join("big").exists());
        assert_eq!(
            g.names(ROOT_ID),
            vec!["big".to_string()],
            "staging is hidden"
        );
        assert_eq!(g.get(big), content());
    }
    // Restart: the leftovers go, the file is B's, and copy-up works.
    let fs = dual(
        rw(upper.path()),
        ro(lower.path()),
        ReadBackendBWriteBackendA,
    );
    assert_eq!(work_entries(upper.path()), 0);
    let g = h(&*fs);
    let big = g.ino(ROOT_ID, "big");
    assert_eq!(g.get(big), content());
    let fh = g.open(big, libc::O_RDWR).expect("open");
    g.release(big, fh);
    assert_eq!(
        std::fs::read(upper.path().join("big")).expect("read"),
        content()
    );
    assert_eq!(snapshot(lower.path()), before);
}
