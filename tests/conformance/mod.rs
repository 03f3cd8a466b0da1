//! The conformance suite: POSIX behaviour written once against `&dyn DynFileSystem` and run
//! for every backend configuration.
//!
//! A backend plugs in with one line in its own test file:
//!
//! ```ignore
//! #[macro_use]
//! mod conformance;
//! conformance_suite!(|| conformance::Fixture::new(MyFs::builder().build().unwrap()));
//! ```
#![allow(dead_code)]

pub mod harness;

use std::collections::{BTreeSet, HashSet};

use boxfs::SetattrValid;
pub use harness::Fixture;
use harness::*;

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;
const S_IFMT: u32 = libc::S_IFMT;

/// Instantiates every conformance test for the backend that `$make` builds.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@each $make;
            lookup_forget_refcounts, create_write_read, sparse_reads_zeroes, truncate_shrinks_and_zero_extends,
            fallocate_modes, seek_data_and_hole, mkdir_rmdir, unlink_and_open_after_unlink,
            rename_basic_and_overwrite, rename_noreplace_and_exchange, rename_directory_rules,
            hard_links_share_inode, symlink_readlink, mknod_special_files, setattr_chmod_chown_utimens,
            chown_clears_setuid, xattr_flags_and_sizes, readdir_large_resumed, readdirplus_counts_lookups,
            readdir_stable_under_mutation, statfs_reports_limits, bad_names_rejected_everywhere,
            errno_paths, create_without_excl_opens_existing, concurrent_writers_keep_every_byte,
            handles_belong_to_their_inode, posix_acl_xattr_not_silently_ignored
        );
    };
    (@each $make:expr; $($t:ident),* $(,)?) => {
        $(
            #[test]
            fn $t() {
                let fx = ($make)();
                conformance::$t(&fx);
            }
        )*
    };
}

pub fn lookup_forget_refcounts(fx: &Fixture) {
    let h = fx.h();
    let ino = h.put(ROOT, "f", b"x");
    let e1 = h.lookup(ROOT, "f").expect("lookup");
    let e2 = h.lookup(ROOT, "f").expect("lookup");
    assert_eq!(e1.inode, ino);
    assert_eq!(e2.inode, ino, "inode numbers are stable across lookups");
    // create counted one reference, the two lookups two more: forgetting two keeps it alive.
    h.forget(ino, 2);
    assert_eq!(h.getattr(ino).st_size, 1);
    // Unlinked and fully forgotten: the inode number is no longer valid.
    h.unlink(ROOT, "f").expect("unlink");
    assert!(h.try_getattr(ino).is_ok(), "still referenced once");
    h.forget(ino, 1);
    assert!(
        h.try_getattr(ino).is_err(),
        "forgotten unlinked inode is gone"
    );
    // Forgetting more than was looked up, or an unknown inode, is harmless.
    h.forget(ino, 100);
    h.forget(u64::MAX, 1);
    assert_eq!(errno(h.lookup(ROOT, "f")), libc::ENOENT);
}

pub fn create_write_read(fx: &Fixture) {
    let h = fx.h();
    let (e, fh) = h.create(ROOT, "file", 0o640).expect("create");
    assert_eq!(mode_of(&e.attr) & S_IFMT, libc::S_IFREG);
    assert_eq!(mode_of(&e.attr) & 0o7777, 0o640);
    assert_eq!(h.write(e.inode, fh, 0, b"hello").expect("write"), 5);
    assert_eq!(h.write(e.inode, fh, 10, b"world").expect("write"), 5);
    assert_eq!(
        h.read(e.inode, fh, 0, 100).expect("read"),
        b"hello\0\0\0\0\0world"
    );
    assert_eq!(h.read(e.inode, fh, 3, 4).expect("read"), b"lo\0\0");
    assert!(h.read(e.inode, fh, 15, 10).expect("read at EOF").is_empty());
    assert!(h
        .read(e.inode, fh, u64::MAX - 1, 10)
        .expect("read far")
        .is_empty());
    assert_eq!(h.getattr(e.inode).st_size, 15);
    h.release(e.inode, fh);
    // A 1 MiB pattern round-trips through many pages.
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let ino = h.put(ROOT, "big", &big);
    assert_eq!(h.get(ino), big);
    // Read-only handles refuse writes, write-only handles refuse reads.
    let ro = h.open(ino, libc::O_RDONLY).expect("open ro");
    assert_eq!(errno(h.write(ino, ro, 0, b"x")), libc::EBADF);
    h.release(ino, ro);
    let wo = h.open(ino, libc::O_WRONLY).expect("open wo");
    assert_eq!(errno(h.read(ino, wo, 0, 1)), libc::EBADF);
    h.release(ino, wo);
    // O_TRUNC empties the file.
    let t = h
        .open(ino, libc::O_RDWR | libc::O_TRUNC)
        .expect("open trunc");
    h.release(ino, t);
    assert_eq!(h.getattr(ino).st_size, 0);
}

pub fn sparse_reads_zeroes(fx: &Fixture) {
    let h = fx.h();
    let (e, fh) = h.create(ROOT, "sparse", 0o644).expect("create");
    let far = 1u64 << 30;
    h.write(e.inode, fh, far, b"end").expect("write far");
    assert_eq!(h.getattr(e.inode).st_size as u64, far + 3);
    assert_eq!(
        h.read(e.inode, fh, 4096 * 7, 16).expect("read hole"),
        vec![0; 16]
    );
    assert_eq!(h.read(e.inode, fh, far - 2, 5).expect("read"), b"\0\0end");
    h.release(e.inode, fh);
}

pub fn truncate_shrinks_and_zero_extends(fx: &Fixture) {
    let h = fx.h();
    let (e, fh) = h.create(ROOT, "t", 0o644).expect("create");
    h.write(e.inode, fh, 0, &[7u8; 10000]).expect("write");
    assert_eq!(h.truncate(e.inode, 100).expect("shrink").st_size, 100);
    assert_eq!(h.truncate(e.inode, 5000).expect("grow").st_size, 5000);
    let data = h.read(e.inode, fh, 0, 6000).expect("read");
    assert_eq!(data.len(), 5000);
    assert!(data[..100].iter().all(|&b| b == 7));
    assert!(
        data[100..].iter().all(|&b| b == 0),
        "bytes past a shrink read back as zero"
    );
    h.release(e.inode, fh);
    let d = h.mkdir(ROOT, "d", 0o755).expect("mkdir");
    assert_eq!(errno(h.truncate(d.inode, 0)), libc::EISDIR);
}

pub fn fallocate_modes(fx: &Fixture) {
    let h = fx.h();
    let (e, fh) = h.create(ROOT, "fa", 0o644).expect("create");
    let fs = fx.fs.as_ref();
    fs.fallocate(&h.ctx, e.inode, fh, 0, 0, 8192)
        .expect("fallocate");
    assert_eq!(h.getattr(e.inode).st_size, 8192);
    fs.fallocate(&h.ctx, e.inode, fh, 1, 8192, 8192)
        .expect("keep size");
    assert_eq!(h.getattr(e.inode).st_size, 8192, "KEEP_SIZE keeps the size");
    h.write(e.inode, fh, 0, &[1u8; 8192]).expect("write");
    fs.fallocate(&h.ctx, e.inode, fh, 3, 100, 4000)
        .expect("punch hole");
    let data = h.read(e.inode, fh, 0, 8192).expect("read");
    assert!(data[..100].iter().all(|&b| b == 1));
    assert!(
        data[100..4100].iter().all(|&b| b == 0),
        "punched range reads zero"
    );
    assert!(data[4100..].iter().all(|&b| b == 1));
    assert_eq!(h.getattr(e.inode).st_size, 8192);
    assert_eq!(
        errno(fs.fallocate(&h.ctx, e.inode, fh, 2, 0, 10)),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(fs.fallocate(&h.ctx, e.inode, fh, 0, 0, 0)),
        libc::EINVAL
    );
    h.release(e.inode, fh);
}

pub fn seek_data_and_hole(fx: &Fixture) {
    let h = fx.h();
    let (e, fh) = h.create(ROOT, "holes", 0o644).expect("create");
    let mb = 1u64 << 20;
    h.write(e.inode, fh, mb, &[9u8; 4096]).expect("write");
    let fs = fx.fs.as_ref();
    let data = fs.lseek(&h.ctx, e.inode, fh, 0, 3).expect("SEEK_DATA");
    let hole = fs.lseek(&h.ctx, e.inode, fh, 0, 4).expect("SEEK_HOLE");
    // A filesystem may report the leading hole as data, never the reverse.
    assert!(data <= mb, "data at or before the written block");
    assert!(hole == 0 || hole >= mb + 4096);
    assert_eq!(
        fs.lseek(&h.ctx, e.inode, fh, mb, 4)
            .expect("hole after data"),
        mb + 4096
    );
    assert_eq!(
        errno(fs.lseek(&h.ctx, e.inode, fh, mb + 4096, 3)),
        libc::ENXIO
    );
    h.release(e.inode, fh);
}

pub fn mkdir_rmdir(fx: &Fixture) {
    let h = fx.h();
    let nlink0 = h.getattr(ROOT).st_nlink;
    let d = h.mkdir(ROOT, "dir", 0o750).expect("mkdir");
    assert_eq!(mode_of(&d.attr) & S_IFMT, libc::S_IFDIR);
    assert_eq!(mode_of(&d.attr) & 0o7777, 0o750);
    assert_eq!(d.attr.st_nlink, 2);
    assert_eq!(
        h.getattr(ROOT).st_nlink,
        nlink0 + 1,
        "a subdirectory links its parent"
    );
    assert_eq!(errno(h.mkdir(ROOT, "dir", 0o755)), libc::EEXIST);
    h.put(d.inode, "inner", b"1");
    assert_eq!(errno(h.rmdir(ROOT, "dir")), libc::ENOTEMPTY);
    assert_eq!(errno(h.unlink(ROOT, "dir")), libc::EISDIR);
    assert_eq!(errno(h.rmdir(d.inode, "inner")), libc::ENOTDIR);
    h.unlink(d.inode, "inner").expect("unlink");
    h.rmdir(ROOT, "dir").expect("rmdir");
    assert_eq!(h.getattr(ROOT).st_nlink, nlink0);
    assert_eq!(errno(h.lookup(ROOT, "dir")), libc::ENOENT);
    assert_eq!(errno(h.rmdir(ROOT, "dir")), libc::ENOENT);
    // Creating inside a removed directory fails.
    assert!(h.create(d.inode, "ghost", 0o644).is_err());
}

pub fn unlink_and_open_after_unlink(fx: &Fixture) {
    let h = fx.h();
    let (e, fh) = h.create(ROOT, "tmp", 0o644).expect("create");
    h.write(e.inode, fh, 0, b"still here").expect("write");
    h.unlink(ROOT, "tmp").expect("unlink");
    assert_eq!(errno(h.lookup(ROOT, "tmp")), libc::ENOENT);
    assert_eq!(errno(h.unlink(ROOT, "tmp")), libc::ENOENT);
    assert_eq!(
        h.read(e.inode, fh, 0, 64).expect("read after unlink"),
        b"still here"
    );
    h.write(e.inode, fh, 10, b"!").expect("write after unlink");
    assert_eq!(h.read(e.inode, fh, 0, 64).expect("read"), b"still here!");
    assert_eq!(h.getattr(e.inode).st_nlink, 0);
    h.release(e.inode, fh);
    assert!(!h.names(ROOT).contains(&"tmp".to_string()));
}

pub fn rename_basic_and_overwrite(fx: &Fixture) {
    let h = fx.h();
    let a = h.put(ROOT, "a", b"A");
    let b = h.put(ROOT, "b", b"B");
    let d = h.mkdir(ROOT, "d", 0o755).expect("mkdir").inode;
    h.rename(ROOT, "a", d, "a2", 0).expect("rename across dirs");
    assert_eq!(errno(h.lookup(ROOT, "a")), libc::ENOENT);
    assert_eq!(h.ino(d, "a2"), a);
    h.rename(d, "a2", ROOT, "b", 0).expect("rename over file");
    assert_eq!(h.ino(ROOT, "b"), a);
    assert_eq!(h.get(a), b"A");
    assert_eq!(h.names(d), Vec::<String>::new());
    // The replaced inode lost its name.
    let _ = b;
    // Renaming a name onto itself (or another link of the same inode) changes nothing.
    h.link(a, ROOT, "b-link").expect("link");
    h.rename(ROOT, "b", ROOT, "b-link", 0)
        .expect("rename onto same inode");
    assert_eq!(h.ino(ROOT, "b"), a);
    assert_eq!(h.ino(ROOT, "b-link"), a);
    assert_eq!(errno(h.rename(ROOT, "missing", ROOT, "x", 0)), libc::ENOENT);
}

pub fn rename_noreplace_and_exchange(fx: &Fixture) {
    let h = fx.h();
    let x = h.put(ROOT, "x", b"X");
    let y = h.put(ROOT, "y", b"Y");
    assert_eq!(
        errno(h.rename(ROOT, "x", ROOT, "y", RENAME_NOREPLACE)),
        libc::EEXIST
    );
    assert_eq!(h.get(h.ino(ROOT, "y")), b"Y");
    h.rename(ROOT, "x", ROOT, "z", RENAME_NOREPLACE)
        .expect("noreplace to free name");
    h.rename(ROOT, "z", ROOT, "y", RENAME_EXCHANGE)
        .expect("exchange");
    assert_eq!(h.ino(ROOT, "y"), x);
    assert_eq!(h.ino(ROOT, "z"), y);
    let d = h.mkdir(ROOT, "dx", 0o755).expect("mkdir").inode;
    h.rename(ROOT, "dx", ROOT, "z", RENAME_EXCHANGE)
        .expect("exchange dir and file");
    assert_eq!(h.ino(ROOT, "z"), d);
    assert_eq!(h.ino(ROOT, "dx"), y);
    assert_eq!(
        errno(h.rename(ROOT, "y", ROOT, "nope", RENAME_EXCHANGE)),
        libc::ENOENT
    );
    assert_eq!(
        errno(h.rename(ROOT, "y", ROOT, "z", RENAME_EXCHANGE | RENAME_NOREPLACE)),
        libc::EINVAL
    );
}

pub fn rename_directory_rules(fx: &Fixture) {
    let h = fx.h();
    let p = h.mkdir(ROOT, "p", 0o755).expect("mkdir").inode;
    let c = h.mkdir(p, "c", 0o755).expect("mkdir").inode;
    assert_eq!(
        errno(h.rename(ROOT, "p", c, "p", 0)),
        libc::EINVAL,
        "into own subtree"
    );
    h.put(ROOT, "f", b"");
    assert_eq!(errno(h.rename(ROOT, "p", ROOT, "f", 0)), libc::ENOTDIR);
    assert_eq!(errno(h.rename(ROOT, "f", ROOT, "p", 0)), libc::EISDIR);
    let q = h.mkdir(ROOT, "q", 0o755).expect("mkdir").inode;
    h.put(q, "busy", b"");
    assert_eq!(errno(h.rename(ROOT, "p", ROOT, "q", 0)), libc::ENOTEMPTY);
    let root_links = h.getattr(ROOT).st_nlink;
    h.rename(p, "c", ROOT, "c", 0).expect("move dir up");
    assert_eq!(h.getattr(ROOT).st_nlink, root_links + 1);
    assert_eq!(h.getattr(p).st_nlink, 2);
    // `..` of the moved directory now names the root.
    let dotdot = h
        .list(c, 4096)
        .into_iter()
        .find(|l| l.name == b"..")
        .expect("..");
    assert_eq!(dotdot.ino, ROOT);
    h.rmdir(ROOT, "p").expect("p is empty now");
    h.mkdir(ROOT, "e", 0o755).expect("mkdir");
    h.rename(ROOT, "c", ROOT, "e", 0)
        .expect("replace empty dir");
    assert_eq!(h.ino(ROOT, "e"), c);
}

pub fn hard_links_share_inode(fx: &Fixture) {
    let h = fx.h();
    let ino = h.put(ROOT, "orig", b"shared");
    let d = h.mkdir(ROOT, "d", 0o755).expect("mkdir").inode;
    let e = h.link(ino, d, "alias").expect("link");
    assert_eq!(e.inode, ino);
    assert_eq!(e.attr.st_nlink, 2);
    assert_eq!(h.getattr(ino).st_nlink, 2);
    assert_eq!(errno(h.link(ino, d, "alias")), libc::EEXIST);
    assert_eq!(errno(h.link(d, ROOT, "dirlink")), libc::EPERM);
    h.unlink(ROOT, "orig").expect("unlink");
    assert_eq!(h.getattr(ino).st_nlink, 1);
    assert_eq!(h.get(h.ino(d, "alias")), b"shared");
}

pub fn symlink_readlink(fx: &Fixture) {
    let h = fx.h();
    let e = h.symlink("../some/where", ROOT, "ln").expect("symlink");
    assert_eq!(mode_of(&e.attr) & S_IFMT, libc::S_IFLNK);
    assert_eq!(e.attr.st_size, 13);
    assert_eq!(
        fx.fs.readlink(&h.ctx, e.inode).expect("readlink"),
        b"../some/where"
    );
    let f = h.put(ROOT, "plain", b"");
    assert_eq!(errno(fx.fs.readlink(&h.ctx, f)), libc::EINVAL);
    assert_eq!(errno(h.symlink("x", ROOT, "ln")), libc::EEXIST);
    let entry = h.lookup(ROOT, "ln").expect("lookup");
    assert_eq!(mode_of(&entry.attr) & S_IFMT, libc::S_IFLNK);
}

pub fn mknod_special_files(fx: &Fixture) {
    let h = fx.h();
    let cases = [
        ("fifo", libc::S_IFIFO | 0o644, 0u32),
        ("sock", libc::S_IFSOCK | 0o600, 0),
        ("chr", libc::S_IFCHR | 0o620, (1 << 8) | 3),
        ("blk", libc::S_IFBLK | 0o660, (8 << 8) | 1),
    ];
    for (name, mode, rdev) in cases {
        let e = h.mknod(ROOT, name, mode, rdev).expect("mknod");
        let st = h.getattr(e.inode);
        assert_eq!(mode_of(&st), mode, "{name} mode");
        if mode & S_IFMT == libc::S_IFCHR || mode & S_IFMT == libc::S_IFBLK {
            assert_eq!(st.st_rdev, u64::from(rdev), "{name} rdev");
        }
        let listed = h
            .list(ROOT, 4096)
            .into_iter()
            .find(|l| l.name == name.as_bytes())
            .expect("listed");
        assert_eq!(listed.dtype, (mode & S_IFMT) >> 12, "{name} d_type");
    }
    assert_eq!(
        errno(h.mknod(ROOT, "fifo", libc::S_IFIFO | 0o644, 0)),
        libc::EEXIST
    );
}

pub fn setattr_chmod_chown_utimens(fx: &Fixture) {
    let h = fx.h();
    let ino = h.put(ROOT, "m", b"data");
    let st = h.chmod(ino, 0o4711).expect("chmod");
    assert_eq!(mode_of(&st) & 0o7777, 0o4711);
    assert_eq!(mode_of(&st) & S_IFMT, libc::S_IFREG, "chmod keeps the type");
    let st = h.chown(ino, 1234, 5678).expect("chown");
    assert_eq!((st.st_uid, st.st_gid), (1234, 5678));
    let st = h.getattr(ino);
    assert_eq!((st.st_uid, st.st_gid), (1234, 5678), "ownership persists");
    let st = h
        .setattr(
            ino,
            |st| {
                st.st_atime = 1_000_000_000;
                st.st_atime_nsec = 5;
                st.st_mtime = 1_200_000_000;
                st.st_mtime_nsec = 7;
            },
            SetattrValid::ATIME | SetattrValid::MTIME,
        )
        .expect("utimens");
    assert_eq!((st.st_atime, st.st_atime_nsec), (1_000_000_000, 5));
    assert_eq!((st.st_mtime, st.st_mtime_nsec), (1_200_000_000, 7));
    let before = h.getattr(ino);
    let st = h
        .setattr(ino, |_| {}, SetattrValid::MTIME_NOW)
        .expect("utimens now");
    assert!(
        st.st_mtime > before.st_mtime,
        "UTIME_NOW sets the current time"
    );
    assert!(st.st_ctime >= before.st_ctime);
    // Ownership of a file created by a user comes from the request context.
    let (e, fh) = h
        .with_user(1000, 100)
        .create(ROOT, "mine", 0o600)
        .expect("create as user");
    assert_eq!((e.attr.st_uid, e.attr.st_gid), (1000, 100));
    fx.h().release(e.inode, fh);
}

pub fn chown_clears_setuid(fx: &Fixture) {
    let h = fx.h();
    let ino = h.put(ROOT, "suid", b"#!");
    h.chmod(ino, 0o6755).expect("chmod");
    let st = h.chown(ino, 1, 1).expect("chown");
    assert_eq!(
        mode_of(&st) & 0o7777,
        0o0755,
        "chown clears setuid and group-exec setgid"
    );
    // A write by an unprivileged user clears setuid too.
    h.chmod(ino, 0o4777).expect("chmod");
    let u = fx.h().with_user(1, 1);
    let fh = u.open(ino, libc::O_WRONLY).expect("open");
    u.write(ino, fh, 0, b"x").expect("write");
    u.release(ino, fh);
    assert_eq!(mode_of(&h.getattr(ino)) & 0o7777, 0o0777);
}

pub fn xattr_flags_and_sizes(fx: &Fixture) {
    let h = fx.h();
    let fs = fx.fs.as_ref();
    let ino = h.put(ROOT, "x", b"");
    let name = c("user.test");
    fs.setxattr(&h.ctx, ino, &name, b"value1", 0).expect("set");
    assert_eq!(
        errno(fs.setxattr(&h.ctx, ino, &name, b"v", 1)),
        libc::EEXIST,
        "XATTR_CREATE"
    );
    assert_eq!(
        errno(fs.setxattr(&h.ctx, ino, &c("user.none"), b"v", 2)),
        libc::ENODATA,
        "XATTR_REPLACE"
    );
    fs.setxattr(&h.ctx, ino, &name, b"value22", 2)
        .expect("replace");
    match fs.getxattr(&h.ctx, ino, &name, 0).expect("size query") {
        boxfs::GetxattrReply::Count(n) => assert_eq!(n, 7),
        _ => panic!("size 0 must return the length"),
    }
    assert_eq!(errno(fs.getxattr(&h.ctx, ino, &name, 3)), libc::ERANGE);
    match fs.getxattr(&h.ctx, ino, &name, 64).expect("get") {
        boxfs::GetxattrReply::Value(v) => assert_eq!(v, b"value22"),
        _ => panic!("expected a value"),
    }
    fs.setxattr(&h.ctx, ino, &c("user.other"), b"", 0)
        .expect("empty value");
    let names = match fs.listxattr(&h.ctx, ino, 1024).expect("list") {
        boxfs::ListxattrReply::Names(n) => n,
        _ => panic!("expected names"),
    };
    let mut listed: Vec<&[u8]> = names.split(|&b| b == 0).filter(|s| !s.is_empty()).collect();
    listed.retain(|n| n.starts_with(b"user."));
    listed.sort();
    assert_eq!(listed, vec![&b"user.other"[..], &b"user.test"[..]]);
    match fs.listxattr(&h.ctx, ino, 0).expect("list size") {
        boxfs::ListxattrReply::Count(n) => assert_eq!(n as usize, names.len()),
        _ => panic!("size 0 must return the length"),
    }
    assert_eq!(errno(fs.listxattr(&h.ctx, ino, 3)), libc::ERANGE);
    fs.removexattr(&h.ctx, ino, &name).expect("remove");
    assert_eq!(errno(fs.getxattr(&h.ctx, ino, &name, 64)), libc::ENODATA);
    assert_eq!(errno(fs.removexattr(&h.ctx, ino, &name)), libc::ENODATA);
    // Directories carry xattrs too.
    let d = h.mkdir(ROOT, "xd", 0o755).expect("mkdir").inode;
    fs.setxattr(&h.ctx, d, &c("user.dir"), b"1", 0)
        .expect("set on dir");
}

pub fn readdir_large_resumed(fx: &Fixture) {
    let h = fx.h();
    let d = h.mkdir(ROOT, "big", 0o755).expect("mkdir").inode;
    let n = 2000;
    let mut expected = BTreeSet::new();
    for i in 0..n {
        let name = format!("entry-{i:05}-{}", "x".repeat(i % 40));
        h.put(d, &name, b"");
        expected.insert(name);
    }
    // A small buffer forces hundreds of resumed calls.
    let listed = h.list(d, 512);
    let mut seen = HashSet::new();
    for l in &listed {
        assert!(
            seen.insert(l.name.clone()),
            "duplicate entry {:?}",
            String::from_utf8_lossy(&l.name)
        );
    }
    let names: BTreeSet<String> = listed
        .iter()
        .filter(|l| l.name != b"." && l.name != b"..")
        .map(|l| String::from_utf8_lossy(&l.name).into_owned())
        .collect();
    assert_eq!(names, expected, "every entry exactly once");
    assert!(seen.contains(&b"."[..]) && seen.contains(&b".."[..]));
    for l in &listed {
        if l.name != b"." && l.name != b".." {
            assert_eq!(l.dtype, libc::DT_REG as u32);
        }
    }
}

pub fn readdirplus_counts_lookups(fx: &Fixture) {
    let h = fx.h();
    let d = h.mkdir(ROOT, "plus", 0o755).expect("mkdir").inode;
    for i in 0..50 {
        h.put(d, &format!("f{i}"), &vec![1u8; i]);
    }
    let listed = h.list_plus(d, 1024);
    let real: Vec<_> = listed
        .iter()
        .filter(|(l, _)| l.name != b"." && l.name != b"..")
        .collect();
    assert_eq!(real.len(), 50);
    for (l, e) in &real {
        assert_eq!(e.inode, l.ino, "entry and dirent agree");
        let i: usize = String::from_utf8_lossy(&l.name[1..])
            .parse()
            .expect("index");
        assert_eq!(e.attr.st_size as usize, i, "attributes come with the entry");
    }
    // Each entry counted one reference: unlink, forget it once (plus the create's), and the
    // inode is gone; had readdirplus not counted, the second forget would be a no-op anyway,
    // so check the reverse: before the forget the inode must still be valid.
    let (l, _) = real[0];
    let name = String::from_utf8_lossy(&l.name).into_owned();
    h.unlink(d, &name).expect("unlink");
    h.forget(l.ino, 1); // the create's reference
    assert!(
        h.try_getattr(l.ino).is_ok(),
        "readdirplus reference keeps the inode"
    );
    h.forget(l.ino, 1);
    assert!(h.try_getattr(l.ino).is_err());
}

pub fn readdir_stable_under_mutation(fx: &Fixture) {
    let h = fx.h();
    let d = h.mkdir(ROOT, "mut", 0o755).expect("mkdir").inode;
    for i in 0..300 {
        h.put(d, &format!("n{i:03}"), b"");
    }
    let (first, off) = h.list_from(d, 600, 0, 3);
    assert!(!first.is_empty());
    let first_names: HashSet<Vec<u8>> = first.iter().map(|l| l.name.clone()).collect();
    // Remove one already listed and one not yet listed; add new names.
    let listed_real = first
        .iter()
        .find(|l| l.name != b"." && l.name != b"..")
        .expect("a real entry");
    let gone_listed = String::from_utf8_lossy(&listed_real.name).into_owned();
    let unlisted: Vec<String> = (0..300)
        .map(|i| format!("n{i:03}"))
        .filter(|n| !first_names.contains(n.as_bytes()))
        .collect();
    let gone_unlisted = unlisted[unlisted.len() / 2].clone();
    h.unlink(d, &gone_listed).expect("unlink");
    h.unlink(d, &gone_unlisted).expect("unlink");
    for i in 0..20 {
        h.put(d, &format!("new{i}"), b"");
    }
    let (rest, _) = h.list_from(d, 600, off, usize::MAX);
    let mut all: Vec<Vec<u8>> = first.iter().map(|l| l.name.clone()).collect();
    all.extend(rest.iter().map(|l| l.name.clone()));
    let mut seen = HashSet::new();
    for n in &all {
        assert!(
            seen.insert(n.clone()),
            "entry listed twice: {}",
            String::from_utf8_lossy(n)
        );
    }
    for n in &unlisted {
        if *n != gone_unlisted {
            assert!(seen.contains(n.as_bytes()), "entry skipped: {n}");
        }
    }
    assert!(
        !rest.iter().any(|l| l.name == gone_unlisted.as_bytes()),
        "removed entry listed"
    );
}

pub fn statfs_reports_limits(fx: &Fixture) {
    let h = fx.h();
    let st = fx.fs.statfs(&h.ctx, ROOT).expect("statfs");
    assert_eq!(st.f_namemax, 255);
    assert!(st.f_bsize > 0 && st.f_frsize > 0);
    assert!(st.f_bfree <= st.f_blocks && st.f_bavail <= st.f_blocks);
    assert!(st.f_ffree <= st.f_files);
}

pub fn bad_names_rejected_everywhere(fx: &Fixture) {
    let h = fx.h();
    let fs = fx.fs.as_ref();
    let f = h.put(ROOT, "victim", b"v");
    let long = "n".repeat(256);
    for (bad, want) in [
        ("..", libc::EINVAL),
        (".", libc::EINVAL),
        ("a/b", libc::EINVAL),
        ("/etc", libc::EINVAL),
        ("", libc::EINVAL),
        (long.as_str(), libc::ENAMETOOLONG),
    ] {
        let n = c(bad);
        assert_eq!(errno(fs.lookup(&h.ctx, ROOT, &n)), want, "lookup {bad:?}");
        assert_eq!(errno(h.create(ROOT, bad, 0o644)), want, "create {bad:?}");
        assert_eq!(errno(h.mkdir(ROOT, bad, 0o755)), want, "mkdir {bad:?}");
        assert_eq!(
            errno(h.mknod(ROOT, bad, libc::S_IFIFO | 0o644, 0)),
            want,
            "mknod {bad:?}"
        );
        assert_eq!(errno(h.symlink("t", ROOT, bad)), want, "symlink {bad:?}");
        assert_eq!(errno(h.link(f, ROOT, bad)), want, "link {bad:?}");
        assert_eq!(
            errno(h.rename(ROOT, "victim", ROOT, bad, 0)),
            want,
            "rename to {bad:?}"
        );
        assert_eq!(
            errno(h.rename(ROOT, bad, ROOT, "x", 0)),
            want,
            "rename from {bad:?}"
        );
        assert_eq!(errno(h.unlink(ROOT, bad)), want, "unlink {bad:?}");
        assert_eq!(errno(h.rmdir(ROOT, bad)), want, "rmdir {bad:?}");
    }
    assert_eq!(
        h.get(h.ino(ROOT, "victim")),
        b"v",
        "nothing happened to the victim"
    );
    let max = "m".repeat(255);
    h.put(ROOT, &max, b"ok");
    assert_eq!(
        h.ino(ROOT, &max),
        h.lookup(ROOT, &max).expect("lookup").inode
    );
}

pub fn errno_paths(fx: &Fixture) {
    let h = fx.h();
    assert_eq!(errno(h.lookup(ROOT, "absent")), libc::ENOENT);
    let f = h.put(ROOT, "file", b"");
    assert_eq!(
        errno(h.create_flags(ROOT, "file", 0o644, libc::O_RDWR | libc::O_EXCL)),
        libc::EEXIST
    );
    assert_eq!(errno(h.lookup(f, "child")), libc::ENOTDIR);
    assert_eq!(errno(h.mkdir(f, "child", 0o755)), libc::ENOTDIR);
    assert_eq!(errno(h.create(f, "child", 0o644)), libc::ENOTDIR);
    assert_eq!(errno(fx.fs.opendir(&h.ctx, f, 0)), libc::ENOTDIR);
    // Bogus inode and handle numbers are errors, never panics.
    assert!(h.try_getattr(u64::MAX).is_err());
    assert!(h.lookup(0xdead_beef, "x").is_err());
    assert!(h.read(f, 0xdead_beef, 0, 10).is_err());
    assert!(h.write(f, 0xdead_beef, 0, b"x").is_err());
    let d = h.mkdir(ROOT, "dd", 0o755).expect("mkdir").inode;
    assert_eq!(errno(h.open(d, libc::O_RDWR)), libc::EISDIR);
}

pub fn create_without_excl_opens_existing(fx: &Fixture) {
    let h = fx.h();
    let f = h.put(ROOT, "file", b"kept");
    // A lost O_CREAT race: the name exists, no O_EXCL: the existing file is opened.
    let (e, fh) = h
        .create_flags(ROOT, "file", 0o600, libc::O_RDWR)
        .expect("create existing without O_EXCL");
    assert_eq!(e.inode, f);
    assert_eq!(h.read(f, fh, 0, 10).expect("read"), b"kept");
    h.release(f, fh);
    // With O_TRUNC it is truncated, as open(O_CREAT|O_TRUNC) does.
    let (e, fh) = h
        .create_flags(ROOT, "file", 0o600, libc::O_RDWR | libc::O_TRUNC)
        .expect("create existing with O_TRUNC");
    assert_eq!(e.inode, f);
    h.release(f, fh);
    assert_eq!(h.getattr(f).st_size, 0);
    let d = h.mkdir(ROOT, "dir", 0o755).expect("mkdir").inode;
    assert_eq!(
        errno(h.create_flags(ROOT, "dir", 0o644, libc::O_RDONLY)),
        libc::EISDIR
    );
    assert_eq!(h.lookup(ROOT, "dir").expect("dir").inode, d);
}

pub fn concurrent_writers_keep_every_byte(fx: &Fixture) {
    let fs = fx.fs.clone();
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let fs = fs.clone();
            std::thread::spawn(move || {
                let h = H {
                    fs: &*fs,
                    ctx: boxfs::Context::new(),
                };
                let (e, fh) = h.create(ROOT, &format!("w{t}"), 0o644).expect("create");
                for i in 0..64u64 {
                    let block = vec![t.wrapping_mul(31).wrapping_add(i as u8); 4096];
                    assert_eq!(h.write(e.inode, fh, i * 4096, &block).expect("write"), 4096);
                }
                h.release(e.inode, fh);
                e.inode
            })
        })
        .collect();
    let inos: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let h = fx.h();
    for (t, ino) in inos.into_iter().enumerate() {
        let data = h.get(ino);
        assert_eq!(data.len(), 64 * 4096);
        for (i, chunk) in data.chunks(4096).enumerate() {
            let want = (t as u8).wrapping_mul(31).wrapping_add(i as u8);
            assert!(chunk.iter().all(|&b| b == want), "thread {t} block {i}");
        }
    }
}

/// A handle passed with GETATTR or SETATTR, or used to read or write, must be an open file of
/// the inode the request names: every backend answers `EBADF` otherwise, and never a handle it
/// never opened.
pub fn handles_belong_to_their_inode(fx: &Fixture) {
    let h = fx.h();
    let (a, fa) = h.create(ROOT, "a", 0o644).expect("create a");
    let (b, fb) = h.create(ROOT, "b", 0o644).expect("create b");
    assert_eq!(h.write(a.inode, fa, 0, b"aaaa").expect("write a"), 4);
    let ctx = &h.ctx;
    // Its own handle works.
    let (st, _) =
        h.fs.getattr(ctx, a.inode, Some(fa))
            .expect("getattr own handle");
    assert_eq!(st.st_size, 4);
    // Another file's handle, and a handle never opened, do not.
    for bad in [fb, fa.wrapping_add(fb).wrapping_add(1 << 40)] {
        let r = h.fs.getattr(ctx, a.inode, Some(bad));
        assert_eq!(errno(r), libc::EBADF, "getattr with handle {bad}");
        // SAFETY: stat64 is a plain C struct; all-zero is valid.
        let mut st: boxfs::stat64 = unsafe { std::mem::zeroed() };
        st.st_size = 1;
        let r =
            h.fs.setattr(ctx, a.inode, st, Some(bad), SetattrValid::SIZE);
        assert_eq!(errno(r), libc::EBADF, "setattr with handle {bad}");
        assert_eq!(
            errno(h.read(a.inode, bad, 0, 4)),
            libc::EBADF,
            "read with {bad}"
        );
        assert_eq!(
            errno(h.write(a.inode, bad, 0, b"x")),
            libc::EBADF,
            "write with {bad}"
        );
    }
    // Nothing changed through the foreign handles.
    assert_eq!(h.get(a.inode), b"aaaa");
    assert_eq!(h.getattr(b.inode).st_size, 0);
    h.release(a.inode, fa);
    h.release(b.inode, fb);
}

/// A POSIX access ACL set through `system.posix_acl_access` (what `cp -a`, via gnulib's
/// `acl_set_fd`, does after creating each file with a restrictive mode) must either be refused
/// (`EOPNOTSUPP`: the caller then falls back to `chmod`) or take effect on the mode. A backend
/// that stores it as an opaque xattr leaves every copy with its creation mode (0600/0700), as
/// the real-guest workloads found for MemFs.
pub fn posix_acl_xattr_not_silently_ignored(fx: &Fixture) {
    let h = fx.h();
    let fs = fx.fs.as_ref();
    let ino = h.put(ROOT, "acl", b"x");
    h.chmod(ino, 0o600).expect("chmod");
    // The ACL equivalent of mode 0644: version 2, then (tag, perm, id) for user::rw-,
    // group::r--, other::r-- (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_OTHER; id undefined).
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 6u16), (0x04, 4), (0x20, 4)] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    match fs.setxattr(&h.ctx, ino, &c("system.posix_acl_access"), &acl, 0) {
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP),
            "a refused ACL must say EOPNOTSUPP (callers fall back to chmod on it)"
        ),
        Ok(()) => assert_eq!(
            mode_of(&h.getattr(ino)) & 0o7777,
            0o644,
            "an accepted access ACL must set the mode"
        ),
    }
    let d = h.mkdir(ROOT, "acl-dir", 0o700).expect("mkdir").inode;
    match fs.setxattr(&h.ctx, d, &c("system.posix_acl_access"), &acl, 0) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP)),
        Ok(()) => assert_eq!(mode_of(&h.getattr(d)) & 0o7777, 0o644),
    }
}
