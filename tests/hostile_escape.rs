//! The escape catalogue: raw FUSE requests a malicious guest kernel could send, through the
//! vhost-user device (test VMM) to a PassthroughFs on a temp dir. Each test asserts the errno
//! (Linux's) and that the canary outside the share is untouched: content, mode, link count,
//! mtime and ctime (atime depends on the host's mount options), and that nothing appeared next
//! to it.
//!
//! Layout: `outer/canary` (the secret), `outer/share` (served) with `d/f`, `f`, and
//! `outer/share/hl`, a hard link the host planted to `outer/linked` (a second file outside).
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boxfs::passthrough::PassthroughFs;
use boxfs::vhost::{DeviceHandle, FsDevice};
use boxfs::{DynFileSystem, ROOT_ID};
use fuse_backend_rs::abi::fuse_abi::{
    BatchForgetIn, EntryOut, FallocateIn, ForgetOne, GetxattrIn, LinkIn, LseekIn, MkdirIn, MknodIn,
    ReadIn, Rename2In, RenameIn, SetxattrIn, WriteIn,
};
use vm_memory::ByteValued;
use vmm::{op, request, FuseClient, Reply, Seg, OUT_HEADER};

const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-SHARE\n";
const LINKED: &[u8] = b"linked from inside by the host\n";

const SYMLINK: u32 = 6;
const RMDIR: u32 = 11;
const RENAME: u32 = 12;
const LINK: u32 = 13;
const GETXATTR: u32 = 22;
const LISTXATTR: u32 = 23;
const REMOVEXATTR: u32 = 24;
const FALLOCATE: u32 = 43;
const RENAME2: u32 = 45;
const LSEEK: u32 = 46;

/// What the canary looked like before the test.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    content: Vec<u8>,
    mode: u32,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::symlink_metadata(p).expect("canary metadata");
    Stamp {
        content: std::fs::read(p).expect("canary content"),
        mode: m.mode(),
        nlink: m.nlink(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    }
}

struct World {
    _outer: tempfile::TempDir,
    outer: PathBuf,
    share: PathBuf,
    canary: Stamp,
    linked: Stamp,
    c: FuseClient,
    handle: DeviceHandle,
    /// Requests the test dropped on purpose (malformed, no reply possible).
    drops: u64,
    _sock: tempfile::TempDir,
}

fn world() -> World {
    let outer = tempfile::tempdir().expect("tempdir");
    let o = outer.path().to_path_buf();
    std::fs::write(o.join("canary"), SECRET).expect("canary");
    std::fs::write(o.join("linked"), LINKED).expect("linked");
    let share = o.join("share");
    std::fs::create_dir(&share).expect("share");
    std::fs::create_dir(share.join("d")).expect("d");
    std::fs::write(share.join("d/f"), b"inside").expect("d/f");
    std::fs::write(share.join("f"), b"0123456789").expect("f");
    std::fs::hard_link(o.join("linked"), share.join("hl")).expect("hard link");
    let canary = stamp(&o.join("canary"));
    let linked = stamp(&o.join("linked"));
    let fs: Arc<dyn DynFileSystem> = Arc::new(
        PassthroughFs::builder(&share)
            .fd_cache_size(16)
            .build()
            .expect("passthrough"),
    );
    let sock = tempfile::tempdir().expect("socket dir");
    let path = sock.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .thread_pool_size(0)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let c = FuseClient::connect(&path).expect("connect");
    World {
        _outer: outer,
        outer: o,
        share,
        canary,
        linked,
        c,
        handle,
        drops: 0,
        _sock: sock,
    }
}

impl World {
    /// The canary and the hard-linked file are untouched, nothing new exists outside the
    /// share, and the device still serves.
    fn check(&mut self) {
        assert_eq!(stamp(&self.outer.join("canary")), self.canary, "canary");
        assert_eq!(stamp(&self.outer.join("linked")), self.linked, "linked");
        let mut names: Vec<String> = std::fs::read_dir(&self.outer)
            .expect("outer")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["canary", "linked", "share"], "outside the share");
        assert_eq!(
            self.c.getattr(ROOT_ID).expect("still serving").attr.ino,
            ROOT_ID
        );
        assert_eq!(self.handle.stats().dropped, self.drops, "requests dropped");
    }

    fn call(&mut self, opcode: u32, nodeid: u64, parts: &[&[u8]]) -> Result<Vec<u8>, i32> {
        self.c.call(opcode, nodeid, parts, 4096)
    }

    fn errno(&mut self, opcode: u32, nodeid: u64, parts: &[&[u8]]) -> i32 {
        match self.call(opcode, nodeid, parts) {
            Ok(_) => 0,
            Err(e) => e,
        }
    }

    fn ino(&mut self, parent: u64, name: &str) -> u64 {
        self.c.lookup(parent, name).expect("lookup").nodeid
    }

    fn open_rw(&mut self, ino: u64) -> u64 {
        self.c.open(ino, libc::O_RDWR as u32).expect("open").fh
    }
}

fn name(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    v.push(0);
    v
}

/// Crafted names: `..`, `.`, empty, absolute, with a slash, over-long.
fn crafted() -> Vec<(Vec<u8>, i32)> {
    vec![
        (name(b".."), libc::EINVAL),
        (name(b"."), libc::EINVAL),
        (name(b""), libc::EINVAL),
        (name(b"/etc/passwd"), libc::EINVAL),
        (name(b"a/b"), libc::EINVAL),
        (name(b"../canary"), libc::EINVAL),
        (name(b"d/../../canary"), libc::EINVAL),
        (name(&[b'x'; 256]), libc::ENAMETOOLONG),
        (name(&[b'x'; 4096]), libc::ENAMETOOLONG),
    ]
}

#[test]
fn crafted_names_are_refused_by_every_operation() {
    let mut w = world();
    let d = w.ino(ROOT_ID, "d");
    let f = w.ino(ROOT_ID, "f");
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let mknod = MknodIn {
        mode: libc::S_IFREG | 0o644,
        ..Default::default()
    };
    let create = boxfs::CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let link = LinkIn { oldnodeid: f };
    let rename = RenameIn { newdir: ROOT_ID };
    let ok = name(b"f");
    for (n, want) in crafted() {
        let shown = String::from_utf8_lossy(&n[..n.len().min(20)]).into_owned();
        for parent in [ROOT_ID, d] {
            let cases: Vec<(&str, u32, Vec<&[u8]>)> = vec![
                ("lookup", op::LOOKUP, vec![&n]),
                ("mkdir", op::MKDIR, vec![mkdir.as_slice(), &n]),
                ("mknod", op::MKNOD, vec![mknod.as_slice(), &n]),
                ("create", op::CREATE, vec![create.as_slice(), &n]),
                ("symlink", SYMLINK, vec![&n, b"/etc/passwd\0"]),
                ("link", LINK, vec![link.as_slice(), &n]),
                ("unlink", op::UNLINK, vec![&n]),
                ("rmdir", RMDIR, vec![&n]),
                ("rename from", RENAME, vec![rename.as_slice(), &n, &ok]),
            ];
            for (what, opcode, parts) in cases {
                assert_eq!(
                    w.errno(opcode, parent, &parts),
                    want,
                    "{what} {shown:?} under {parent}"
                );
            }
            // Renaming a real file to a crafted name.
            let to = RenameIn { newdir: parent };
            assert_eq!(
                w.errno(RENAME, ROOT_ID, &[to.as_slice(), &ok, &n]),
                want,
                "rename to {shown:?}"
            );
        }
    }
    // A NUL inside the length: the name ends at the first NUL (as the kernel's strings do),
    // the rest is ignored, and nothing outside is reached.
    let e = w.c.lookup(ROOT_ID, "f").expect("f");
    let got = w
        .call(op::LOOKUP, ROOT_ID, &[b"f\0/../../canary\0"])
        .expect("lookup");
    assert_eq!(vmm::obj::<EntryOut>(&got).nodeid, e.nodeid);
    assert_eq!(
        w.errno(op::LOOKUP, ROOT_ID, &[b"..\0f\0"]),
        libc::EINVAL,
        "`..` then junk"
    );
    // No NUL at all within the length.
    assert_eq!(w.errno(op::LOOKUP, ROOT_ID, &[b"canary"]), libc::EINVAL);
    assert!(std::fs::read_dir(&w.share).expect("share").all(|e| !e
        .expect("entry")
        .file_name()
        .to_string_lossy()
        .contains('/')));
    w.check();
}

#[test]
fn bogus_and_recycled_inodes_and_handles() {
    let mut w = world();
    for ino in [0, 2, 3, 999, 1 << 32, 1 << 63, u64::MAX - 1, u64::MAX] {
        let e = w.c.getattr(ino).expect_err("bogus inode");
        assert!(e == libc::ENOENT || e == libc::EBADF, "getattr {ino}: {e}");
        let e = w.c.lookup(ino, "f").expect_err("bogus parent");
        assert!(
            e == libc::ENOENT || e == libc::EBADF,
            "lookup in {ino}: {e}"
        );
        let e =
            w.c.open(ino, libc::O_RDONLY as u32)
                .expect_err("bogus open");
        assert!(e == libc::ENOENT || e == libc::EBADF, "open {ino}: {e}");
    }
    let f = w.ino(ROOT_ID, "f");
    for fh in [0, 1, 12345, 1 << 40, u64::MAX] {
        assert_eq!(
            w.c.read(f, fh, 0, 16).unwrap_err(),
            libc::EBADF,
            "read fh {fh}"
        );
        assert_eq!(
            w.c.write(f, fh, 0, b"x").unwrap_err(),
            libc::EBADF,
            "write fh {fh}"
        );
    }
    // A handle after RELEASE is gone; another file's handle does not work on this inode's
    // behalf beyond its own file.
    let fh = w.open_rw(f);
    assert_eq!(w.c.read(f, fh, 0, 4).expect("read"), b"0123");
    w.c.release(f, fh).expect("release");
    assert_eq!(w.c.read(f, fh, 0, 4).unwrap_err(), libc::EBADF, "released");
    assert_eq!(
        w.c.write(f, fh, 0, b"x").unwrap_err(),
        libc::EBADF,
        "released"
    );
    assert_eq!(
        w.c.release(f, fh).unwrap_err(),
        libc::EBADF,
        "double release"
    );
    // An inode after FORGET (all its lookups) is gone; a new lookup works.
    let d = w.ino(ROOT_ID, "d");
    w.c.forget(d, 1);
    let e = w.c.getattr(d).expect_err("forgotten inode");
    assert!(e == libc::ENOENT || e == libc::EBADF, "forgotten: {e}");
    let e = w.c.lookup(d, "f").expect_err("forgotten parent");
    assert!(
        e == libc::ENOENT || e == libc::EBADF,
        "forgotten parent: {e}"
    );
    let d2 = w.ino(ROOT_ID, "d");
    assert_eq!(w.c.lookup(d2, "f").expect("lookup again").attr.size, 6);
    // Forgetting more than was looked up, or an unknown inode, is harmless.
    w.c.forget(d2, u64::MAX);
    w.c.forget(424242, 1);
    w.check();
}

#[test]
fn forget_storms() {
    let mut w = world();
    let f = w.ino(ROOT_ID, "f");
    // Forget of the root, with absurd counts: the root stays.
    w.c.forget(ROOT_ID, u64::MAX);
    w.c.batch_forget(&[(ROOT_ID, u64::MAX), (ROOT_ID, 1)]);
    assert_eq!(w.c.getattr(ROOT_ID).expect("root").attr.ino, ROOT_ID);
    // 65 000 forgets in one request (about 1 MiB), of bogus and real inodes.
    let items: Vec<(u64, u64)> = (0..65_000u64)
        .map(|i| match i % 4 {
            0 => (f, 1),
            1 => (i.wrapping_mul(0x9e37_79b9_7f4a_7c15), u64::MAX),
            2 => (ROOT_ID, 1),
            _ => (u64::MAX - i, 0),
        })
        .collect();
    w.c.batch_forget(&items);
    assert_eq!(w.handle.stats().dropped, 0);
    // 100 000 (1.6 MiB) is more than fuse-backend-rs accepts in one BATCH_FORGET: the whole
    // request is dropped (the guest only loses its own forgets), and the device keeps serving.
    let items: Vec<(u64, u64)> = (0..100_000u64).map(|i| (i, u64::MAX)).collect();
    w.c.batch_forget(&items);
    assert_eq!(w.handle.stats().dropped, 1);
    // A count far beyond the payload is dropped as malformed (no reply either way).
    let b = BatchForgetIn {
        count: u32::MAX,
        dummy: 0,
    };
    let one = ForgetOne {
        nodeid: ROOT_ID,
        nlookup: u64::MAX,
    };
    let unique = w.c.next_unique();
    let req = request(op::BATCH_FORGET, unique, 0, &[b.as_slice(), one.as_slice()]);
    let head = w.c.vmm.submit(0, &[Seg::R(req)]);
    let done = w.c.vmm.wait(0, head, w.c.timeout).expect("completed");
    assert_eq!(done.len, 0);
    // Everything still resolves.
    assert_eq!(w.c.lookup(ROOT_ID, "f").expect("f").attr.size, 10);
    assert_eq!(
        w.c.list(ROOT_ID).expect("list").len(),
        5,
        ". .. d f hl and nothing else"
    );
    // The two malformed BATCH_FORGETs above were dropped on purpose.
    w.drops = 2;
    w.check();
}

#[test]
fn hard_link_planted_by_the_host_does_not_open_other_paths() {
    let mut w = world();
    let hl = w.c.lookup(ROOT_ID, "hl").expect("hl");
    // The host linked it: serving its content is the host's decision.
    let fh = w.c.open(hl.nodeid, libc::O_RDONLY as u32).expect("open").fh;
    assert_eq!(w.c.read(hl.nodeid, fh, 0, 100).expect("read"), LINKED);
    w.c.release(hl.nodeid, fh).expect("release");
    // But the inode leads nowhere else: not a directory, no parent, no neighbours.
    for n in ["..", "canary", "."] {
        let e = w.c.lookup(hl.nodeid, n).expect_err("lookup under a file");
        assert!(e == libc::ENOTDIR || e == libc::EINVAL, "lookup {n}: {e}");
    }
    assert_eq!(w.c.opendir(hl.nodeid).unwrap_err(), libc::ENOTDIR);
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    assert_eq!(
        w.errno(op::MKDIR, hl.nodeid, &[mkdir.as_slice(), b"x\0"]),
        libc::ENOTDIR
    );
    // Renaming it within the share moves only the name in the share.
    let r = RenameIn { newdir: ROOT_ID };
    w.call(RENAME, ROOT_ID, &[r.as_slice(), b"hl\0", b"hl2\0"])
        .expect("rename");
    assert!(w.share.join("hl2").exists() && !w.share.join("hl").exists());
    // The rename touched the inode's ctime (it is the linked file); account for it.
    w.linked = stamp(&w.outer.join("linked"));
    assert_eq!(w.linked.content, LINKED);
    w.check();
}

#[test]
fn directory_renamed_under_open_handles() {
    let mut w = world();
    let d = w.ino(ROOT_ID, "d");
    let dfh = w.c.opendir(d).expect("opendir").fh;
    let f = w.ino(d, "f");
    let ffh = w.open_rw(f);
    // The guest renames the directory away: the handles and inodes follow it.
    let r = RenameIn { newdir: ROOT_ID };
    w.call(RENAME, ROOT_ID, &[r.as_slice(), b"d\0", b"e\0"])
        .expect("rename");
    assert_eq!(w.c.read(f, ffh, 0, 100).expect("read"), b"inside");
    let names: Vec<Vec<u8>> =
        w.c.readdirplus(d, dfh, 0, 4096)
            .expect("readdir")
            .into_iter()
            .map(|e| e.name)
            .collect();
    assert!(names.contains(&b"f".to_vec()), "{names:?}");
    assert_eq!(w.c.lookup(d, "f").expect("lookup").nodeid, f);
    // The host renames it too: the guest's inode and handles follow the directory (as with
    // virtiofsd), and `..` from it still leads nowhere.
    std::fs::rename(w.share.join("e"), w.share.join("d2")).expect("host rename");
    assert_eq!(w.c.lookup(d, "..").unwrap_err(), libc::EINVAL);
    assert_eq!(w.c.write(f, ffh, 0, b"INSIDE").expect("write"), 6);
    assert_eq!(std::fs::read(w.share.join("d2/f")).expect("f"), b"INSIDE");
    // Removed from under the handle: reads of the open file still work, lookups fail.
    std::fs::remove_file(w.share.join("d2/f")).expect("host unlink");
    std::fs::remove_dir(w.share.join("d2")).expect("host rmdir");
    assert_eq!(w.c.read(f, ffh, 0, 100).expect("read"), b"INSIDE");
    assert_eq!(w.c.lookup(d, "f").unwrap_err(), libc::ENOENT);
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    assert_eq!(
        w.errno(op::MKDIR, d, &[mkdir.as_slice(), b"x\0"]),
        libc::ENOENT,
        "mkdir in a removed directory"
    );
    w.c.release(f, ffh).expect("release");
    w.c.releasedir(d, dfh).expect("releasedir");
    w.check();
}

fn setxattr(w: &mut World, ino: u64, name: &[u8], value: &[u8]) -> i32 {
    let s = SetxattrIn {
        size: value.len() as u32,
        flags: 0,
    };
    let mut n = name.to_vec();
    n.push(0);
    w.errno(op::SETXATTR, ino, &[s.as_slice(), &n, value])
}

#[test]
fn huge_xattr_names_and_values() {
    let mut w = world();
    let f = w.ino(ROOT_ID, "f");
    assert_eq!(setxattr(&mut w, f, b"user.ok", b"v"), 0);
    // Names: Linux allows 255 bytes; longer is ERANGE.
    let long = [b"user.".as_slice(), &[b'n'; 251]].concat();
    assert_eq!(long.len(), 256);
    assert_eq!(
        setxattr(&mut w, f, &long, b"v"),
        libc::ERANGE,
        "256-byte name"
    );
    let longer = [b"user.".as_slice(), &[b'n'; 8000]].concat();
    assert_eq!(
        setxattr(&mut w, f, &longer, b"v"),
        libc::ERANGE,
        "8 KiB name"
    );
    assert_eq!(setxattr(&mut w, f, b"", b"v"), libc::EINVAL, "empty name");
    // Values: Linux's limit is 64 KiB; beyond it E2BIG.
    let big = vec![0x5a; 65_537];
    assert_eq!(
        setxattr(&mut w, f, b"user.big", &big),
        libc::E2BIG,
        "64 KiB + 1"
    );
    let huge = vec![0x5a; 1 << 20];
    assert_eq!(
        setxattr(&mut w, f, b"user.big", &huge),
        libc::E2BIG,
        "1 MiB"
    );
    // A size field that disagrees with the payload is malformed.
    let s = SetxattrIn {
        size: u32::MAX,
        flags: 0,
    };
    assert_eq!(
        w.errno(op::SETXATTR, f, &[s.as_slice(), b"user.x\0", b"v"]),
        libc::EINVAL
    );
    // GETXATTR/LISTXATTR asking for more than the reply buffer holds.
    let g = GetxattrIn {
        size: u32::MAX,
        padding: 0,
    };
    assert_eq!(
        w.errno(GETXATTR, f, &[g.as_slice(), b"user.ok\0"]),
        libc::EINVAL
    );
    assert_eq!(w.errno(LISTXATTR, f, &[g.as_slice()]), libc::EINVAL);
    // And a small buffer for a larger value is ERANGE.
    let g = GetxattrIn {
        size: 1,
        padding: 0,
    };
    assert_eq!(
        w.errno(
            op::SETXATTR,
            f,
            &[
                SetxattrIn { size: 5, flags: 0 }.as_slice(),
                b"user.five\0",
                b"12345"
            ]
        ),
        0
    );
    assert_eq!(
        w.errno(GETXATTR, f, &[g.as_slice(), b"user.five\0"]),
        libc::ERANGE
    );
    let long_name = [long.as_slice(), b"\0"].concat();
    let g = GetxattrIn {
        size: 100,
        padding: 0,
    };
    assert_eq!(
        w.errno(GETXATTR, f, &[g.as_slice(), &long_name]),
        libc::ERANGE
    );
    assert_eq!(w.errno(REMOVEXATTR, f, &[&long_name]), libc::ERANGE);
    // The daemon's ownership xattr is not the guest's to read or forge.
    let own = b"user.containers.override_stat";
    let e = setxattr(&mut w, f, own, b"0:0:0100755");
    assert!(e == libc::EPERM || e == libc::EACCES, "forging {e}");
    w.check();
}

fn read_raw(
    w: &mut World,
    ino: u64,
    fh: u64,
    offset: u64,
    size: u32,
    out: u32,
) -> Result<Vec<u8>, i32> {
    let r = ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    };
    w.c.call(op::READ, ino, &[r.as_slice()], out)
}

#[test]
fn offsets_near_the_end_of_u64() {
    let mut w = world();
    let f = w.ino(ROOT_ID, "f");
    let fh = w.open_rw(f);
    // Reads past the largest file size return 0 bytes, like a read past the end of file (the
    // backends' documented choice, pinned by the conformance suite; Linux's pread would say
    // EINVAL for offsets that are negative as off_t, which a guest kernel never sends).
    for off in [i64::MAX as u64, 1 << 63, u64::MAX - 15, u64::MAX] {
        assert_eq!(
            w.c.read(f, fh, off, 16).expect("read"),
            b"",
            "read at {off:#x}"
        );
    }
    // Writes ending beyond the largest file size are EFBIG.
    for off in [
        i64::MAX as u64 - 1,
        i64::MAX as u64,
        1 << 63,
        u64::MAX - 1,
        u64::MAX,
    ] {
        assert_eq!(
            w.c.write(f, fh, off, b"xy").unwrap_err(),
            libc::EFBIG,
            "write at {off:#x}"
        );
    }
    // FALLOCATE: offset + length past the maximum is EFBIG, negative values EINVAL.
    let fa = |offset: u64, length: u64| FallocateIn {
        fh,
        offset,
        length,
        mode: 0,
        padding: 0,
    };
    for (off, len, want) in [
        (i64::MAX as u64, 1, libc::EFBIG),
        (1, i64::MAX as u64, libc::EFBIG),
        (u64::MAX, 1, libc::EINVAL),
        (0, u64::MAX, libc::EINVAL),
        (0, 0, libc::EINVAL),
    ] {
        assert_eq!(
            w.errno(FALLOCATE, f, &[fa(off, len).as_slice()]),
            want,
            "fallocate {off:#x}+{len:#x}"
        );
    }
    // LSEEK: SEEK_DATA past the end is ENXIO; negative offsets EINVAL (SEEK_SET) or ENXIO.
    let ls = |offset: u64, whence: i32| LseekIn {
        fh,
        offset,
        whence: whence as u32,
        padding: 0,
    };
    for (off, whence, want) in [
        (u64::MAX, libc::SEEK_SET, libc::EINVAL),
        (i64::MAX as u64, libc::SEEK_DATA, libc::ENXIO),
        (u64::MAX, libc::SEEK_DATA, libc::ENXIO),
        (u64::MAX, libc::SEEK_HOLE, libc::ENXIO),
        (0, 77, libc::EINVAL),
    ] {
        assert_eq!(
            w.errno(LSEEK, f, &[ls(off, whence).as_slice()]),
            want,
            "lseek {off:#x} whence {whence}"
        );
    }
    // The file is unchanged.
    assert_eq!(w.c.read(f, fh, 0, 100).expect("read"), b"0123456789");
    assert_eq!(w.c.getattr(f).expect("getattr").attr.size, 10);
    w.c.release(f, fh).expect("release");
    w.check();
}

#[test]
fn zero_and_two_gib_reads_and_writes() {
    let mut w = world();
    let f = w.ino(ROOT_ID, "f");
    let fh = w.open_rw(f);
    assert_eq!(w.c.read(f, fh, 0, 0).expect("0-byte read"), b"");
    assert_eq!(w.c.write(f, fh, 3, b"").expect("0-byte write"), 0);
    // 2 GiB: the reply buffer cannot hold it, the payload is not there.
    assert_eq!(
        read_raw(&mut w, f, fh, 0, 1 << 31, 4096).unwrap_err(),
        libc::EINVAL,
        "2 GiB read into a 4 KiB buffer"
    );
    let wi = WriteIn {
        fh,
        offset: 0,
        size: 1 << 31,
        ..Default::default()
    };
    assert_eq!(
        w.errno(op::WRITE, f, &[wi.as_slice(), b"only a few bytes"]),
        libc::EINVAL,
        "2 GiB write with a 16-byte payload"
    );
    let wi = WriteIn {
        fh,
        offset: 0,
        size: u32::MAX,
        ..Default::default()
    };
    assert_eq!(w.errno(op::WRITE, f, &[wi.as_slice()]), libc::EINVAL);
    // A header len of 2 GiB over a short chain.
    let unique = w.c.next_unique();
    let mut req = request(op::GETATTR, unique, f, &[&[0u8; 16]]);
    req[..4].copy_from_slice(&(1u32 << 31).to_le_bytes());
    let head = w.c.vmm.submit(1, &[Seg::R(req), Seg::W(256)]);
    let done = w.c.vmm.wait(1, head, w.c.timeout).expect("completed");
    let reply = Reply::parse(&done).expect("reply");
    assert_eq!(reply.header.error, -libc::EINVAL);
    // A 16 MiB read is served in full (as far as the file goes).
    assert_eq!(
        read_raw(&mut w, f, fh, 0, 16 << 20, OUT_HEADER + (16 << 20)).expect("read"),
        b"0123456789"
    );
    assert_eq!(w.c.read(f, fh, 0, 100).expect("read"), b"0123456789");
    w.c.release(f, fh).expect("release");
    w.check();
}

#[test]
fn readdir_with_absurd_offsets() {
    let mut w = world();
    let dfh = w.c.opendir(ROOT_ID).expect("opendir").fh;
    let all = w.c.readdirplus(ROOT_ID, dfh, 0, 8192).expect("readdir");
    assert_eq!(all.len(), 5, ". .. d f hl");
    for off in [
        1 << 31,
        1 << 32,
        i64::MAX as u64,
        1 << 63,
        u64::MAX - 1,
        u64::MAX,
    ] {
        // On ext4 the offsets are hash cookies, so a large one may still name a position:
        // whatever comes back is a (possibly empty) part of the real listing. Offsets that are
        // negative as off_t are EINVAL, as the host's lseek says.
        match w.c.readdirplus(ROOT_ID, dfh, off, 4096) {
            Ok(got) => {
                for e in got {
                    assert!(
                        all.iter().any(|a| a.name == e.name && a.ino == e.ino),
                        "readdirplus at {off:#x} returned {:?}",
                        String::from_utf8_lossy(&e.name)
                    );
                }
            }
            Err(e) => assert!(
                e == libc::EINVAL && off > i64::MAX as u64,
                "readdirplus at {off:#x}: {e}"
            ),
        }
        let r = ReadIn {
            fh: dfh,
            offset: off,
            size: 4096,
            ..Default::default()
        };
        match w
            .c
            .call(op::READDIR, ROOT_ID, &[r.as_slice()], OUT_HEADER + 4096)
        {
            Ok(got) => assert!(got.len() <= 4096, "readdir at {off:#x}"),
            Err(e) => assert!(
                e == libc::EINVAL && off > i64::MAX as u64,
                "readdir at {off:#x}: {e}"
            ),
        }
    }
    // Offsets handed out earlier still resume correctly afterwards.
    let first = all[0].off;
    let rest = w.c.readdirplus(ROOT_ID, dfh, first, 8192).expect("resume");
    assert_eq!(rest.len(), all.len() - 1);
    // A directory handle used on a file, a file handle used as a directory handle.
    let f = w.ino(ROOT_ID, "f");
    let ffh = w.open_rw(f);
    let e =
        w.c.readdirplus(f, ffh, 0, 4096)
            .expect_err("readdir of a file");
    assert!(e == libc::ENOTDIR || e == libc::EBADF, "{e}");
    let e =
        w.c.readdirplus(ROOT_ID, ffh, 0, 4096)
            .expect_err("file handle");
    assert!(e == libc::EBADF || e == libc::ENOTDIR, "{e}");
    w.c.release(f, ffh).expect("release");
    w.c.releasedir(ROOT_ID, dfh).expect("releasedir");
    w.check();
}

#[test]
fn rename2_with_crafted_names_or_unknown_flags() {
    let mut w = world();
    let d = w.ino(ROOT_ID, "d");
    // Exchanging a name in the share with a crafted one.
    let r = Rename2In {
        newdir: ROOT_ID,
        flags: libc::RENAME_EXCHANGE,
        padding: 0,
    };
    assert_eq!(
        w.errno(RENAME2, d, &[r.as_slice(), b"f\0", b"..\0"]),
        libc::EINVAL
    );
    // Unknown flags are EINVAL (fuse-backend-rs would mask them off and rename).
    let r = Rename2In {
        newdir: ROOT_ID,
        flags: 0x8000_0000,
        padding: 0,
    };
    assert_eq!(
        w.errno(RENAME2, d, &[r.as_slice(), b"f\0", b"g\0"]),
        libc::EINVAL
    );
    // Moving a directory into itself.
    let r = Rename2In {
        newdir: d,
        flags: 0,
        padding: 0,
    };
    assert_eq!(
        w.errno(RENAME2, ROOT_ID, &[r.as_slice(), b"d\0", b"x\0"]),
        libc::EINVAL
    );
    w.check();
}

/// The host swaps a shared directory for a symlink pointing outside the share while the guest
/// walks it, opens, reads and writes through it (with a descriptor cache of 16, so the
/// daemon keeps re-resolving `d` by name): the guest only ever sees the inside file, and the
/// outside directory is untouched.
#[test]
fn host_swaps_a_directory_for_a_symlink_while_the_guest_walks_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut w = world();
    let victim = w.outer.join("victim");
    std::fs::create_dir(&victim).expect("victim dir");
    std::fs::write(victim.join("f"), SECRET).expect("victim file");
    let victim_before = stamp(&victim.join("f"));
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, share, victim) = (stop.clone(), w.share.clone(), victim.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::rename(share.join("d"), share.join("d.real"));
                let _ = std::os::unix::fs::symlink(&victim, share.join("d"));
                std::thread::yield_now();
                let _ = std::fs::remove_file(share.join("d"));
                let _ = std::fs::rename(share.join("d.real"), share.join("d"));
                swaps += 1;
            }
            swaps
        })
    };
    // Fillers keep `d` out of the descriptor cache.
    let fillers: Vec<u64> = (0..24)
        .map(|i| {
            let (e, o) =
                w.c.create(
                    ROOT_ID,
                    &format!("fill{i}"),
                    0o644 | libc::S_IFREG,
                    libc::O_RDWR as u32,
                )
                .expect("filler");
            w.c.release(e.nodeid, o.fh).expect("release");
            e.nodeid
        })
        .collect();
    let mut inside = 0;
    for round in 0..1500 {
        for &f in fillers.iter().skip(round % 8).take(16) {
            let _ = w.c.getattr(f);
        }
        let Ok(d) = w.c.lookup(ROOT_ID, "d") else {
            continue;
        };
        if let Ok(f) = w.c.lookup(d.nodeid, "f") {
            if let Ok(o) = w.c.open(f.nodeid, libc::O_RDWR as u32) {
                if let Ok(data) = w.c.read(f.nodeid, o.fh, 0, 64) {
                    assert!(
                        !data.windows(6).any(|x| x == b"SECRET"),
                        "read the outside file through the swapped directory"
                    );
                    inside += 1;
                }
                let _ = w.c.write(f.nodeid, o.fh, 0, b"inside");
                let _ = w.c.release(f.nodeid, o.fh);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    assert!(
        swaps > 0 && inside > 0,
        "the race ran ({swaps} swaps, {inside} inside reads)"
    );
    assert_eq!(
        stamp(&victim.join("f")),
        victim_before,
        "outside file touched"
    );
    std::fs::remove_dir_all(&victim).expect("cleanup");
    w.check();
}
