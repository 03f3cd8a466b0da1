//! DualFs device state: an overlay (read-only host lower, MemFs upper) carried to a fresh
//! stack, copy-ups, in-memory-only files, open handles and the held directory included.

mod passthrough_common;
mod state_common;

use std::path::Path;
use std::sync::Arc;

use boxfs::dualfs::{DualFs, ReadBackendBWriteBackendA};
use boxfs::memfs::MemFs;
use boxfs::passthrough::PassthroughFs;
use boxfs::state::StateErrorKind;
use boxfs::{DynFileSystem, FileSystem, ROOT_ID};
use passthrough_common::tempdir;
use state_common::*;

/// A fresh overlay of `lower` (read-only PassthroughFs) under a new MemFs.
fn overlay(lower: &Path) -> DualFs {
    let b: Arc<dyn DynFileSystem> = Arc::new(
        PassthroughFs::builder(lower)
            .readonly(true)
            .build()
            .expect("lower"),
    );
    let a: Arc<dyn DynFileSystem> =
        Arc::new(MemFs::builder().capacity(64 << 20).build().expect("upper"));
    DualFs::builder()
        .backend_a(a)
        .backend_b(b)
        .policy(ReadBackendBWriteBackendA)
        .build()
        .expect("overlay")
}

fn lower_tree() -> tempfile::TempDir {
    let tmp = tempdir();
    std::fs::create_dir(tmp.path().join("etc")).expect("mkdir");
    std::fs::write(tmp.path().join("etc/conf"), b"lower conf").expect("write");
    std::fs::write(tmp.path().join("etc/other"), b"untouched").expect("write");
    std::fs::create_dir(tmp.path().join("lib")).expect("mkdir");
    std::fs::write(tmp.path().join("lib/x"), b"x").expect("write");
    tmp
}

struct Used {
    etc: u64,
    etc_fh: u64,
    conf: u64,
    conf_fh: u64,
    scratch: u64,
    scratch_fh: u64,
}

fn use_overlay(fs: &DualFs) -> Used {
    let etc = lookup(fs, ROOT_ID, "etc").expect("lookup etc");
    let conf = lookup(fs, etc, "conf").expect("lookup conf");
    let (conf_fh, _, _) = fs
        .open(&ctx(), conf, libc::O_RDWR as u32, 0)
        .expect("open conf for writing (copy-up)");
    let conf_fh = conf_fh.expect("handle");
    write_at(fs, conf, conf_fh, 0, b"UPPER").expect("write");
    let (scratch, scratch_fh) = create(fs, ROOT_ID, "scratch");
    write_at(fs, scratch, scratch_fh, 0, b"only in memory").expect("write");
    let work = mkdir(fs, ROOT_ID, "work");
    let (f, fh) = create(fs, work, "notes");
    write_at(fs, f, fh, 0, b"notes").expect("write");
    fs.release(&ctx(), f, 0, fh, false, false, None)
        .expect("release");
    fs.unlink(&ctx(), ROOT_ID, &c("lib")).err(); // a directory: refused, nothing changes
    fs.rmdir(&ctx(), ROOT_ID, &c("lib")).err(); // not empty in the lower: refused
    let (etc_fh, _) = fs.opendir(&ctx(), etc, 0).expect("opendir");
    Used {
        etc,
        etc_fh: etc_fh.expect("dir handle"),
        conf,
        conf_fh,
        scratch,
        scratch_fh,
    }
}

#[test]
fn an_overlay_with_a_memory_upper_carries_over() {
    let lower = lower_tree();
    let src = overlay(lower.path());
    let u = use_overlay(&src);
    let state = save(&src);

    let dst = overlay(lower.path());
    dst.load_state(&mut &state[..]).expect("load_state");
    assert_eq!(dump(&dst), dump(&src));
    for ino in [ROOT_ID, u.etc, u.conf, u.scratch] {
        assert_eq!(attrs(&dst, ino).ok(), attrs(&src, ino).ok(), "inode {ino}");
    }
    assert_eq!(
        read_at(&dst, u.conf, u.conf_fh, 0, 64).ok(),
        Some(b"UPPER conf".to_vec())
    );
    write_at(&dst, u.conf, u.conf_fh, 10, b"!").expect("write through the handle");
    assert_eq!(
        read_at(&dst, u.conf, u.conf_fh, 0, 64).ok(),
        Some(b"UPPER conf!".to_vec())
    );
    assert_eq!(
        read_at(&dst, u.scratch, u.scratch_fh, 0, 64).ok(),
        Some(b"only in memory".to_vec())
    );
    assert_eq!(
        names(&dst, u.etc, u.etc_fh).ok(),
        Some(vec!["conf".to_string(), "other".to_string()])
    );
    // The lower layer was never written.
    assert_eq!(
        std::fs::read(lower.path().join("etc/conf")).expect("host"),
        b"lower conf"
    );
    // The restored overlay keeps working: lookups find the held inodes, new files get
    // fresh ids, forgetting balances.
    assert_eq!(lookup(&dst, u.etc, "conf").ok(), Some(u.conf));
    let (n, nfh) = create(&dst, u.etc, "new");
    assert!(![ROOT_ID, u.etc, u.conf, u.scratch].contains(&n));
    write_at(&dst, n, nfh, 0, b"new").expect("write");
    dst.destroy();
    assert_eq!(dst.inode_count(), 1);
}

#[test]
fn refused_states_leave_a_fresh_overlay_usable_and_unchanged() {
    let lower = lower_tree();
    let src = overlay(lower.path());
    use_overlay(&src);
    let state = save(&src);

    let mut version = state.clone();
    version[8] ^= 0x02;
    let mut corrupt_upper = state.clone();
    let at = state.len() * 3 / 4;
    corrupt_upper[at] ^= 0x20;
    let mut corrupt_tables = state.clone();
    corrupt_tables[40] ^= 0x01;
    // The very last byte: the end record's stream checksum, read after both layers' states.
    let mut corrupt_end = state.clone();
    let last = state.len() - 1;
    corrupt_end[last] ^= 0x01;
    for (name, bad, kind) in [
        ("version", &version[..], StateErrorKind::Corrupt),
        ("tables", &corrupt_tables[..], StateErrorKind::Corrupt),
        ("upper", &corrupt_upper[..], StateErrorKind::Corrupt),
        (
            "truncated",
            &state[..state.len() / 2],
            StateErrorKind::Truncated,
        ),
        (
            "end cut",
            &state[..state.len() - 1],
            StateErrorKind::Truncated,
        ),
        (
            "end record cut",
            &state[..state.len() - 22],
            StateErrorKind::Truncated,
        ),
        ("end corrupt", &corrupt_end[..], StateErrorKind::Corrupt),
    ] {
        let dst = overlay(lower.path());
        let fresh_dump = dump(&dst);
        assert_eq!(
            state_kind(dst.load_state(&mut &bad[..])),
            Some(kind),
            "{name}"
        );
        assert_eq!(dump(&dst), fresh_dump, "{name}: the overlay changed");
        assert_eq!((dst.inode_count(), dst.handle_count()), (1, 0), "{name}");
        let (f, fh) = create(&dst, ROOT_ID, "usable");
        write_at(&dst, f, fh, 0, b"yes").expect("still usable");
    }
}

#[test]
fn a_state_of_another_kind_is_refused() {
    let lower = lower_tree();
    let mem = MemFs::builder().build().expect("memfs");
    let state = save(&mem);
    let dst = overlay(lower.path());
    assert_eq!(
        state_kind(dst.load_state(&mut &state[..])),
        Some(StateErrorKind::Mismatch)
    );
}
