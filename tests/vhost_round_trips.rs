//! Round trips a guest saves under `--cache auto`, through the device (`FsDevice` + the test
//! VMM), with the consistency rule of each (see `boxfs::cache`):
//!
//! * a missing name is a negative entry (node id 0) valid for the entry timeout, so the guest
//!   kernel caches the miss; a name the host creates is found by the next lookup the guest
//!   sends (after that timeout);
//! * PassthroughFs answers `FOPEN_KEEP_CACHE` (and `FOPEN_CACHE_DIR` for a directory) only
//!   when the host file did not change since the guest's previous open, and the previous
//!   open's ctime was settled; any host change (write, chmod, new entry) drops it.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::sync::Arc;
use std::time::Duration;

use boxfs::memfs::MemFs;
use boxfs::passthrough::PassthroughFs;
use boxfs::vhost::{DeviceHandle, FsDevice};
use boxfs::{CachePolicy, Context, DynFileSystem, FileSystem, SizeExt, ROOT_ID};
use vmm::{FuseClient, Vmm, VmmConfig};

const FOPEN_DIRECT_IO: u32 = 1 << 0;
const FOPEN_KEEP_CACHE: u32 = 1 << 1;
const FOPEN_CACHE_DIR: u32 = 1 << 3;

/// A device serving `fs`, with an initialised client.
fn serve(fs: Arc<dyn DynFileSystem>) -> (tempfile::TempDir, DeviceHandle, FuseClient) {
    let sock = tempfile::tempdir().expect("socket dir");
    let path = sock.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let vmm = Vmm::connect(&path, VmmConfig::default()).expect("connect");
    let mut c = FuseClient::new(vmm);
    c.init().expect("INIT");
    (sock, handle, c)
}

fn passthrough(dir: &std::path::Path, policy: CachePolicy) -> Arc<PassthroughFs> {
    Arc::new(
        PassthroughFs::builder(dir)
            .cache_policy(policy)
            .build()
            .expect("passthrough"),
    )
}

#[test]
fn passthrough_miss_is_a_negative_entry_until_the_host_creates_the_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = passthrough(dir.path(), CachePolicy::Auto);
    let (_s, handle, mut c) = serve(fs.clone());

    let miss = c
        .lookup_raw(ROOT_ID, "absent")
        .expect("a negative entry, not ENOENT");
    assert_eq!(miss.nodeid, 0);
    assert_eq!((miss.entry_valid, miss.entry_valid_nsec), (1, 0));
    // Nothing is cached in the daemon: the next lookup after the host created the name
    // finds it.
    std::fs::write(dir.path().join("absent"), b"now here").expect("host write");
    let hit = c.lookup(ROOT_ID, "absent").expect("lookup");
    assert_ne!(hit.nodeid, 0);
    assert_eq!(hit.attr.size, 8);
    // The library API keeps ENOENT (backends nest each other and rely on it).
    let e = fs
        .lookup(&Context::new(), ROOT_ID, c"other")
        .expect_err("ENOENT");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    drop(c);
    handle.stop().expect("stop");
}

#[test]
fn passthrough_never_policy_answers_enoent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_s, handle, mut c) = serve(passthrough(dir.path(), CachePolicy::Never));
    assert_eq!(c.lookup_raw(ROOT_ID, "absent").err(), Some(libc::ENOENT));
    drop(c);
    handle.stop().expect("stop");
}

#[test]
fn memfs_miss_is_a_negative_entry() {
    let fs = Arc::new(
        MemFs::builder()
            .capacity(16.mib())
            .cache_policy(CachePolicy::Auto)
            .build()
            .expect("memfs"),
    );
    let (_s, handle, mut c) = serve(fs);
    let miss = c.lookup_raw(ROOT_ID, "absent").expect("a negative entry");
    assert_eq!(miss.nodeid, 0);
    assert_eq!((miss.entry_valid, miss.entry_valid_nsec), (1, 0));
    // Created by the guest: found.
    let (e, o) = c
        .create(ROOT_ID, "absent", 0o644, libc::O_RDWR as u32)
        .expect("create");
    c.release(e.nodeid, o.fh).expect("release");
    assert_eq!(
        c.lookup(ROOT_ID, "absent").expect("lookup").nodeid,
        e.nodeid
    );
    drop(c);
    handle.stop().expect("stop");
}

/// Opens and releases `ino`, returning the open flags.
fn open_flags(c: &mut FuseClient, ino: u64, dir: bool) -> u32 {
    let o = if dir {
        c.opendir(ino).expect("opendir")
    } else {
        c.open(ino, libc::O_RDONLY as u32).expect("open")
    };
    if dir {
        c.releasedir(ino, o.fh).expect("releasedir");
    } else {
        c.release(ino, o.fh).expect("release");
    }
    o.open_flags
}

/// Waits until the host files' ctimes are settled (`page_cache::SETTLE`, 2 s): the rule is
/// about the host clock, so this is the one wait the test cannot avoid.
fn let_ctimes_settle() {
    std::thread::sleep(Duration::from_millis(2100));
}

#[test]
fn passthrough_keeps_the_cache_of_unchanged_files_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f"), b"data").expect("host write");
    std::fs::create_dir(dir.path().join("d")).expect("host mkdir");
    let_ctimes_settle();
    let (_s, handle, mut c) = serve(passthrough(dir.path(), CachePolicy::Auto));
    let f = c.lookup(ROOT_ID, "f").expect("lookup f").nodeid;
    let d = c.lookup(ROOT_ID, "d").expect("lookup d").nodeid;

    // First open: nothing to keep. Second: unchanged since the first, keep.
    assert_eq!(open_flags(&mut c, f, false) & FOPEN_KEEP_CACHE, 0);
    assert_ne!(open_flags(&mut c, f, false) & FOPEN_KEEP_CACHE, 0);
    assert_eq!(
        open_flags(&mut c, d, true) & (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR),
        0
    );
    assert_eq!(
        open_flags(&mut c, d, true) & (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR),
        FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR
    );

    // The host rewrites the file with the same size: not kept (a host-modified file is never
    // served from a kept cache).
    std::fs::write(dir.path().join("f"), b"DATA").expect("host rewrite");
    assert_eq!(open_flags(&mut c, f, false) & FOPEN_KEEP_CACHE, 0);
    // Its new ctime is not settled yet: still not kept.
    assert_eq!(open_flags(&mut c, f, false) & FOPEN_KEEP_CACHE, 0);
    // A new entry in the directory: not kept.
    std::fs::write(dir.path().join("d/new"), b"").expect("host create");
    assert_eq!(
        open_flags(&mut c, d, true) & (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR),
        0
    );
    // Settled and unchanged again: kept.
    let_ctimes_settle();
    assert_eq!(open_flags(&mut c, f, false) & FOPEN_KEEP_CACHE, 0);
    assert_ne!(open_flags(&mut c, f, false) & FOPEN_KEEP_CACHE, 0);
    // Only a chmod (ctime alone moves): not kept.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("f"), std::fs::Permissions::from_mode(0o640))
        .expect("host chmod");
    assert_eq!(open_flags(&mut c, f, false) & FOPEN_KEEP_CACHE, 0);
    drop(c);
    handle.stop().expect("stop");
}

#[test]
fn passthrough_policies_other_than_auto_are_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f"), b"data").expect("host write");
    let_ctimes_settle();
    for (policy, want) in [
        (CachePolicy::Never, FOPEN_DIRECT_IO),
        (CachePolicy::Always, FOPEN_KEEP_CACHE),
    ] {
        let (_s, handle, mut c) = serve(passthrough(dir.path(), policy));
        let f = c.lookup(ROOT_ID, "f").expect("lookup").nodeid;
        for _ in 0..3 {
            let flags = open_flags(&mut c, f, false);
            assert_eq!(
                flags & (FOPEN_DIRECT_IO | FOPEN_KEEP_CACHE),
                want,
                "{policy}"
            );
        }
        drop(c);
        handle.stop().expect("stop");
    }
}

/// `FUSE_HANDLE_KILLPRIV_V2` (include/uapi/linux/fuse.h).
const HANDLE_KILLPRIV_V2: u32 = 1 << 28;

/// PassthroughFs takes over clearing setuid/setgid (so the guest kernel stops asking for
/// `security.capability` before every write): the flag is accepted, and the duties it implies
/// hold (root's chown and a write flagged `FUSE_WRITE_KILL_SUIDGID` clear setuid).
#[test]
fn passthrough_handles_killpriv_v2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = passthrough(dir.path(), CachePolicy::Auto);
    let (_s, handle, mut c) = serve(fs.clone());
    let out = c
        .init_offering(7, 38, vmm::GUEST_INIT_FLAGS | HANDLE_KILLPRIV_V2)
        .expect("INIT");
    assert_ne!(
        out.flags & HANDLE_KILLPRIV_V2,
        0,
        "INIT flags {:#x}",
        out.flags
    );
    drop(c);
    handle.stop().expect("stop");

    use boxfs::{CreateIn, SetattrValid};
    let ctx = Context::new();
    let suid = |fs: &PassthroughFs, ino: u64| {
        let (st, _) = fs.getattr(&ctx, ino, None).expect("getattr");
        st.st_mode & 0o6000
    };
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o6755,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = fs.create(&ctx, ROOT_ID, c"s", args).expect("create");
    let fh = fh.expect("handle");
    assert_eq!(suid(&fs, e.inode), 0o6000);
    // chown by root clears both (group-executable setgid).
    // SAFETY: `stat64` is a plain C struct for which all-zero bytes are valid.
    let mut attr: boxfs::stat64 = unsafe { std::mem::zeroed() };
    attr.st_uid = 1000;
    fs.setattr(&ctx, e.inode, attr, None, SetattrValid::UID)
        .expect("chown");
    assert_eq!(suid(&fs, e.inode), 0);
    // A write the guest flags FUSE_WRITE_KILL_SUIDGID clears setuid, even by root.
    attr.st_mode = 0o4755;
    fs.setattr(&ctx, e.inode, attr, None, SetattrValid::MODE)
        .expect("chmod");
    assert_eq!(suid(&fs, e.inode), 0o4000);
    let mut data = *b"x";
    let mut r = boxfs::zero_copy::MemReader::new(&mut data);
    fs.write(&ctx, e.inode, fh, &mut r, 1, 0, None, false, 0, 4)
        .expect("write");
    assert_eq!(suid(&fs, e.inode), 0);
}

/// `FOPEN_NOFLUSH` (include/uapi/linux/fuse.h, 7.35).
const FOPEN_NOFLUSH: u32 = 1 << 5;

/// PassthroughFs file opens need no FLUSH at `close` (writes are written through; POSIX locks
/// stay in the guest kernel), unless the guest caches writes; directories never get it.
#[test]
fn passthrough_opens_need_no_flush_without_writeback() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f"), b"data").expect("host write");
    for (writeback, want) in [(false, FOPEN_NOFLUSH), (true, 0)] {
        let fs = Arc::new(
            PassthroughFs::builder(dir.path())
                .writeback(writeback)
                .build()
                .expect("passthrough"),
        );
        let (_s, handle, mut c) = serve(fs);
        let f = c.lookup(ROOT_ID, "f").expect("lookup").nodeid;
        assert_eq!(open_flags(&mut c, f, false) & FOPEN_NOFLUSH, want);
        assert_eq!(open_flags(&mut c, ROOT_ID, true) & FOPEN_NOFLUSH, 0);
        let name = format!("new-{writeback}");
        let (e, o) = c
            .create(ROOT_ID, &name, 0o644, libc::O_RDWR as u32)
            .expect("create");
        assert_eq!(o.open_flags & FOPEN_NOFLUSH, want);
        c.release(e.nodeid, o.fh).expect("release");
        drop(c);
        handle.stop().expect("stop");
    }
}

/// A MemFs under `auto` keeps the guest's page and directory caches across opens (the guest
/// is its only writer); under `never` it still asks for direct I/O.
#[test]
fn memfs_auto_keeps_caches() {
    for (policy, file, dir) in [
        (
            CachePolicy::Auto,
            FOPEN_KEEP_CACHE,
            FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR,
        ),
        (CachePolicy::Never, FOPEN_DIRECT_IO, 0),
    ] {
        let fs = Arc::new(
            MemFs::builder()
                .capacity(16.mib())
                .cache_policy(policy)
                .build()
                .expect("memfs"),
        );
        let (_s, handle, mut c) = serve(fs);
        let (e, o) = c
            .create(ROOT_ID, "f", 0o644, libc::O_RDWR as u32)
            .expect("create");
        assert_eq!(o.open_flags & (FOPEN_KEEP_CACHE | FOPEN_DIRECT_IO), file);
        c.release(e.nodeid, o.fh).expect("release");
        let mask = FOPEN_KEEP_CACHE | FOPEN_DIRECT_IO;
        assert_eq!(open_flags(&mut c, e.nodeid, false) & mask, file, "{policy}");
        let mask = FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR;
        assert_eq!(open_flags(&mut c, ROOT_ID, true) & mask, dir, "{policy}");
        drop(c);
        handle.stop().expect("stop");
    }
}

/// While a handle of the file is open for writing, other opens keep the FLUSH (its
/// writeback batches a writer's dirty shared-mapping pages); without one they need none.
#[test]
fn passthrough_keeps_the_flush_while_a_writer_is_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f"), b"data").expect("host write");
    let (_s, handle, mut c) = serve(passthrough(dir.path(), CachePolicy::Auto));
    let f = c.lookup(ROOT_ID, "f").expect("lookup").nodeid;
    let w = c.open(f, libc::O_RDWR as u32).expect("open for writing");
    assert_ne!(w.open_flags & FOPEN_NOFLUSH, 0, "the writer itself");
    assert_eq!(open_flags(&mut c, f, false) & FOPEN_NOFLUSH, 0, "a reader");
    c.release(f, w.fh).expect("release the writer");
    assert_ne!(
        open_flags(&mut c, f, false) & FOPEN_NOFLUSH,
        0,
        "no writer left"
    );
    drop(c);
    handle.stop().expect("stop");
}
