//! A host inode number reused by a new file never hands a guest inode the guest still holds
//! (with its cached ownership record) to that new file: the new file is a new inode, the old
//! one answers `ESTALE`.

#[allow(dead_code)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use boxfs::passthrough::PassthroughFs;
use harness::*;

/// Creates files at `path` until the host gives one the inode number `ino` (moving the
/// misses aside). `false` if the host filesystem does not reuse numbers quickly.
fn recreate_with_ino(dir: &Path, path: &Path, ino: u64, data: &[u8]) -> bool {
    for i in 0..256 {
        std::fs::write(path, data).expect("write");
        if std::fs::metadata(path).expect("stat").ino() == ino {
            return true;
        }
        std::fs::rename(path, dir.join(format!("miss{i}"))).expect("rename");
    }
    false
}

/// A temp dir on a filesystem that gives a deleted file's inode number to the next new file
/// (ext4 and xfs do at once; tmpfs since Linux 5.9 never does), found by trying.
fn reusing_tempdir() -> Option<tempfile::TempDir> {
    passthrough_common::unprivileged();
    for base in ["/tmp", "/var/tmp", "/dev/shm"] {
        let Ok(dir) = tempfile::Builder::new()
            .prefix("boxfs-pt-")
            .tempdir_in(base)
        else {
            continue;
        };
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"1").expect("write");
        let ino = std::fs::metadata(&probe).expect("stat").ino();
        std::fs::remove_file(&probe).expect("rm");
        if recreate_with_ino(dir.path(), &probe, ino, b"2") {
            for e in std::fs::read_dir(dir.path()).expect("read_dir") {
                std::fs::remove_file(e.expect("entry").path()).expect("rm");
            }
            return Some(dir);
        }
    }
    // Not a skip: a run that cannot show the defect must not count as a pass.
    panic!("no filesystem at hand reuses inode numbers (tried /tmp, /var/tmp, /dev/shm)");
}

/// A share whose descriptor cache is as small as allowed, so held inodes lose their
/// descriptors, on a filesystem that reuses inode numbers.
fn setup() -> Option<(MutexGuard<'static, ()>, tempfile::TempDir, PassthroughFs)> {
    // One test at a time, so the tests do not take each other's freed numbers.
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = reusing_tempdir()?;
    let fs = passthrough_common::builder(dir.path())
        .fd_cache_size(16)
        .build()
        .expect("build");
    Some((serial, dir, fs))
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Creates `name` owned by 1234:5678 with `data`, then evicts its descriptor by creating
/// more files than the cache holds. Returns its guest inode and host inode number.
fn held_and_evicted(h: &H<'_>, dir: &Path, name: &str, data: &[u8]) -> (u64, u64) {
    let ino = h.put(ROOT, name, data);
    h.chown(ino, 1234, 5678).expect("chown");
    // Held (not forgotten), so they fill the cache.
    for i in 0..40 {
        h.put(ROOT, &format!("pad-{name}-{i}"), b"");
    }
    let host_ino = std::fs::metadata(dir.join(name)).expect("stat").ino();
    (ino, host_ino)
}

#[test]
fn a_new_file_with_a_reused_number_under_the_same_name_is_a_new_inode() {
    let Some((_serial, dir, fs)) = setup() else {
        return;
    };
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let path = dir.path().join("f");
    let (old, host_ino) = held_and_evicted(&h, dir.path(), "f", b"old");
    std::fs::remove_file(&path).expect("host unlink");
    if !recreate_with_ino(dir.path(), &path, host_ino, b"new file") {
        // Another process took the freed number first.
        panic!("the host gave the freed inode number to another file: run again");
    }

    let e = h.lookup(ROOT, "f").expect("lookup the new file");
    assert_ne!(e.inode, old, "the new file took over the held guest inode");
    assert_eq!(
        e.attr.st_uid, 0,
        "the new file inherited the old ownership record"
    );
    assert_eq!(e.attr.st_size, 8);
    assert_eq!(h.get(e.inode), b"new file");
    assert_eq!(errno(h.try_getattr(old)), libc::ESTALE);
    assert_eq!(errno(h.open(old, libc::O_RDONLY)), libc::ESTALE);
    // The old inode goes away when the guest forgets it; the new one stays.
    h.forget(old, 1);
    assert_eq!(h.getattr(e.inode).st_size, 8);
    assert_eq!(h.lookup(ROOT, "f").expect("lookup again").inode, e.inode);
}

#[test]
fn the_old_inode_is_stale_before_the_new_file_is_looked_up() {
    let Some((_serial, dir, fs)) = setup() else {
        return;
    };
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let path = dir.path().join("g");
    let (old, host_ino) = held_and_evicted(&h, dir.path(), "g", b"old");
    std::fs::remove_file(&path).expect("host unlink");
    if !recreate_with_ino(dir.path(), &path, host_ino, b"new file") {
        // Another process took the freed number first.
        panic!("the host gave the freed inode number to another file: run again");
    }
    // Re-resolving the held inode by its remembered name finds a file with its number:
    // still not the same file.
    assert_eq!(errno(h.try_getattr(old)), libc::ESTALE);
    assert_eq!(errno(h.chmod(old, 0o600)), libc::ESTALE);
    let e = h.lookup(ROOT, "g").expect("lookup the new file");
    assert_ne!(e.inode, old);
    assert_eq!(e.attr.st_uid, 0);
    assert_eq!(h.get(e.inode), b"new file");
}

#[test]
fn a_new_file_with_a_reused_number_under_another_name_is_a_new_inode() {
    let Some((_serial, dir, fs)) = setup() else {
        return;
    };
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let (old, host_ino) = held_and_evicted(&h, dir.path(), "a", b"old");
    std::fs::remove_file(dir.path().join("a")).expect("host unlink");
    let path = dir.path().join("b");
    if !recreate_with_ino(dir.path(), &path, host_ino, b"other") {
        // Another process took the freed number first.
        panic!("the host gave the freed inode number to another file: run again");
    }
    let e = h.lookup(ROOT, "b").expect("lookup the new file");
    assert_ne!(e.inode, old, "the new file took over the held guest inode");
    assert_eq!(
        e.attr.st_uid, 0,
        "the new file inherited the old ownership record"
    );
    assert_eq!(h.get(e.inode), b"other");
    assert_eq!(errno(h.try_getattr(old)), libc::ESTALE);
}

#[test]
fn a_guest_created_file_with_a_reused_number_is_a_new_inode() {
    let Some((_serial, dir, fs)) = setup() else {
        return;
    };
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let (old, host_ino) = held_and_evicted(&h, dir.path(), "c", b"old");
    std::fs::remove_file(dir.path().join("c")).expect("host unlink");
    // The guest creates files until the host hands one the freed number.
    let mut reused = None;
    for i in 0..256 {
        let name = format!("new{i}");
        let (e, fh) = h.create(ROOT, &name, 0o644).expect("create");
        h.release(e.inode, fh);
        if std::fs::metadata(dir.path().join(&name))
            .expect("stat")
            .ino()
            == host_ino
        {
            reused = Some((name, e));
            break;
        }
    }
    let Some((name, e)) = reused else {
        // Another process took the freed number first.
        panic!("the host gave the freed inode number to another file: run again");
    };
    assert_ne!(e.inode, old, "{name} took over the held guest inode");
    assert_eq!(
        e.attr.st_uid, 0,
        "{name} inherited the old ownership record"
    );
    assert_eq!(errno(h.try_getattr(old)), libc::ESTALE);
    assert_eq!(h.getattr(e.inode).st_uid, 0);
}
