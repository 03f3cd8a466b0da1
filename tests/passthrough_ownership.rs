//! Ownership virtualization: guest uid/gid/mode/type/rdev live in
//! `user.containers.override_stat`; host ownership and (by default) host modes never change.

#[allow(dead_code, clippy::unnecessary_cast, clippy::wrong_self_convention)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use boxfs::passthrough::{HostPermissions, PassthroughFs, SymlinkMode};
use boxfs::{FileSystem, GetxattrReply, ListxattrReply, SetattrValid};
use harness::*;

const KEY: &str = "user.containers.override_stat";

fn get_xattr(p: &Path, name: &str) -> Option<String> {
    let cp = CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let cn = CString::new(name).expect("name");
    let mut buf = vec![0u8; 256];
    // SAFETY: valid strings and buffer.
    let n =
        unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(String::from_utf8(buf).expect("utf8"))
}

fn set_xattr(p: &Path, name: &str, value: &str) {
    let cp = CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let cn = CString::new(name).expect("name");
    // SAFETY: valid strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {}", std::io::Error::last_os_error());
}

fn fs_for(dir: &Path, perms: HostPermissions) -> PassthroughFs {
    PassthroughFs::builder(dir)
        .default_owner(123, 456)
        .host_permissions(perms)
        .build()
        .expect("build")
}

fn me() -> (u32, u32) {
    // SAFETY: no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

#[test]
fn guest_chown_chmod_never_touch_host_ownership() {
    let dir = passthrough_common::tempdir();
    let fs = fs_for(dir.path(), HostPermissions::Private);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context {
            uid: 1000,
            gid: 1000,
            pid: 1,
        },
    };
    let (e, fh) = h.create(ROOT, "f", 0o644).expect("create");
    h.release(e.inode, fh);
    assert_eq!((e.attr.st_uid, e.attr.st_gid), (1000, 1000));
    let host = dir.path().join("f");
    assert_eq!(
        get_xattr(&host, KEY).as_deref(),
        Some("1000:1000:0644:file")
    );
    let md = std::fs::metadata(&host).expect("stat");
    assert_eq!((md.uid(), md.gid()), me());
    assert_eq!(md.permissions().mode() & 0o7777, 0o600, "private host mode");

    let root = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let st = root.chown(e.inode, 0, 42).expect("chown");
    assert_eq!((st.st_uid, st.st_gid), (0, 42));
    let st = root.chmod(e.inode, 0o4755).expect("chmod");
    assert_eq!(st.st_mode & 0o7777, 0o4755);
    assert_eq!(get_xattr(&host, KEY).as_deref(), Some("0:42:04755:file"));
    let md2 = std::fs::metadata(&host).expect("stat");
    assert_eq!(
        (md2.uid(), md2.gid(), md2.mode()),
        (md.uid(), md.gid(), md.mode())
    );

    // chown clears setuid; a write by a non-root user clears it too.
    let st = root.chown(e.inode, 1000, 42).expect("chown");
    assert_eq!(st.st_mode & 0o7777, 0o755);
    root.chmod(e.inode, 0o6775).expect("chmod");
    let user = H {
        fs: &fs,
        ctx: boxfs::Context {
            uid: 1000,
            gid: 1000,
            pid: 1,
        },
    };
    let fh = user.open(e.inode, libc::O_WRONLY).expect("open");
    user.write(e.inode, fh, 0, b"x").expect("write");
    user.release(e.inode, fh);
    assert_eq!(user.getattr(e.inode).st_mode & 0o7777, 0o0775);

    // Directories: new ones are 0700 on the host, guest mode in the xattr.
    let d = h.mkdir(ROOT, "dir", 0o2755).expect("mkdir");
    assert_eq!(d.attr.st_mode & 0o7777, 0o2755);
    let dmd = std::fs::metadata(dir.path().join("dir")).expect("stat");
    assert_eq!(dmd.permissions().mode() & 0o7777, 0o700);
    // setgid directory: children inherit its group, subdirectories the bit.
    root.chown(d.inode, 1000, 77).expect("chown dir");
    let sub = h.mkdir(d.inode, "sub", 0o755).expect("mkdir sub");
    assert_eq!(sub.attr.st_gid, 77);
    assert_ne!(sub.attr.st_mode & 0o2000, 0);
    let (sf, sfh) = h.create(d.inode, "file", 0o644).expect("create");
    h.release(sf.inode, sfh);
    assert_eq!(sf.attr.st_gid, 77);
}

#[test]
fn mirror_mode_mirrors_permission_bits_only() {
    let dir = passthrough_common::tempdir();
    let fs = fs_for(dir.path(), HostPermissions::Mirror);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let ino = h.put(ROOT, "f", b"data");
    h.chmod(ino, 0o4750).expect("chmod");
    h.chown(ino, 5, 5).expect("chown");
    let md = std::fs::metadata(dir.path().join("f")).expect("stat");
    assert_eq!(
        md.permissions().mode() & 0o7777,
        0o750,
        "no setuid on the host"
    );
    assert_eq!((md.uid(), md.gid()), me());
    h.chmod(ino, 0o000).expect("chmod");
    let md = std::fs::metadata(dir.path().join("f")).expect("stat");
    assert_eq!(
        md.permissions().mode() & 0o777,
        0o600,
        "the daemon keeps read/write"
    );
    assert_eq!(h.get(ino), b"data");
}

#[test]
fn special_files_are_host_regular_files() {
    let dir = passthrough_common::tempdir();
    let fs = fs_for(dir.path(), HostPermissions::Private);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let rdev = 4 << 8 | 64; // char 4:64 in the kernel's encoding
    let cases = [
        ("fifo", libc::S_IFIFO | 0o640, 0, "0:0:0640:pipe"),
        ("sock", libc::S_IFSOCK | 0o755, 0, "0:0:0755:socket"),
        ("chr", libc::S_IFCHR | 0o620, rdev, "0:0:0620:char-4-64"),
        (
            "blk",
            libc::S_IFBLK | 0o660,
            8 << 8 | 1,
            "0:0:0660:block-8-1",
        ),
    ];
    for (name, mode, rdev, want) in cases {
        let e = h.mknod(ROOT, name, mode, rdev).expect("mknod");
        assert_eq!(mode_of(&e.attr), mode, "{name}");
        assert_eq!(e.attr.st_rdev as u32, rdev, "{name}");
        let host = dir.path().join(name);
        assert!(std::fs::symlink_metadata(&host)
            .expect("stat")
            .file_type()
            .is_file());
        assert_eq!(get_xattr(&host, KEY).as_deref(), Some(want));
        // Look it up again from scratch: type and rdev come back from the xattr.
        let again = fs_for(dir.path(), HostPermissions::Private);
        let e2 = again.lookup(&h.ctx, ROOT, &c(name)).expect("lookup");
        assert_eq!(mode_of(&e2.attr), mode);
        assert_eq!(e2.attr.st_rdev as u32, rdev);
    }
}

#[test]
fn virtualized_symlinks_can_be_chowned() {
    let dir = passthrough_common::tempdir();
    let fs = fs_for(dir.path(), HostPermissions::Private);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context {
            uid: 7,
            gid: 8,
            pid: 1,
        },
    };
    let e = h.symlink("some/target", ROOT, "l").expect("symlink");
    assert_eq!(mode_of(&e.attr), libc::S_IFLNK | 0o777);
    assert_eq!((e.attr.st_uid, e.attr.st_gid), (7, 8));
    assert_eq!(e.attr.st_size, 11);
    let host = dir.path().join("l");
    assert_eq!(std::fs::read(&host).expect("read"), b"some/target");
    assert_eq!(get_xattr(&host, KEY).as_deref(), Some("7:8:0777:symlink"));
    let root = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let st = root.chown(e.inode, 0, 0).expect("lchown");
    assert_eq!((st.st_uid, st.st_gid), (0, 0));
    assert_eq!(
        fs.readlink(&h.ctx, e.inode).expect("readlink"),
        b"some/target"
    );
    // Host symlink mode: a real symlink owned by the default owner.
    let fs2 = PassthroughFs::builder(dir.path())
        .symlinks(SymlinkMode::Host)
        .default_owner(123, 456)
        .build()
        .expect("build");
    let e = fs2
        .symlink(&h.ctx, &c("t2"), ROOT, &c("real"))
        .expect("symlink");
    assert!(std::fs::symlink_metadata(dir.path().join("real"))
        .expect("stat")
        .file_type()
        .is_symlink());
    assert_eq!((e.attr.st_uid, e.attr.st_gid), (123, 456));
    let h2 = H {
        fs: &fs2,
        ctx: boxfs::Context::new(),
    };
    assert_eq!(errno(h2.chown(e.inode, 1, 1)), libc::EPERM);
    assert!(
        h2.chown(e.inode, 123, 456).is_ok(),
        "no-op chown of a host symlink"
    );
}

#[test]
fn host_files_and_both_wild_formats() {
    let dir = passthrough_common::tempdir();
    let p = dir.path();
    std::fs::write(p.join("plain"), b"x").expect("write");
    std::fs::set_permissions(p.join("plain"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    std::fs::write(p.join("krun"), b"x").expect("write");
    set_xattr(&p.join("krun"), KEY, "1000:1001:0100755");
    std::fs::write(p.join("krun_noty"), b"x").expect("write");
    set_xattr(&p.join("krun_noty"), KEY, "2:3:04711");
    std::fs::create_dir(p.join("krun_dir")).expect("mkdir");
    set_xattr(&p.join("krun_dir"), KEY, "0:0:040755");
    std::fs::write(p.join("cs_blk"), b"").expect("write");
    set_xattr(&p.join("cs_blk"), KEY, "0:6:0660:block-8-1");
    std::fs::write(p.join("bad"), b"").expect("write");
    set_xattr(&p.join("bad"), KEY, "root:0:0644");
    std::fs::write(p.join("contradiction"), b"").expect("write");
    set_xattr(&p.join("contradiction"), KEY, "0:0:0755:dir");
    let fs = fs_for(p, HostPermissions::Private);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };

    let e = h.lookup(ROOT, "plain").expect("lookup");
    assert_eq!((e.attr.st_uid, e.attr.st_gid), (123, 456), "default owner");
    assert_eq!(mode_of(&e.attr), libc::S_IFREG | 0o640, "host mode");
    let e = h.lookup(ROOT, "krun").expect("lookup");
    assert_eq!(
        (e.attr.st_uid, e.attr.st_gid, mode_of(&e.attr)),
        (1000, 1001, libc::S_IFREG | 0o755)
    );
    let e = h.lookup(ROOT, "krun_noty").expect("lookup");
    assert_eq!(mode_of(&e.attr), libc::S_IFREG | 0o4711);
    let e = h.lookup(ROOT, "krun_dir").expect("lookup");
    assert_eq!(mode_of(&e.attr), libc::S_IFDIR | 0o755);
    let e = h.lookup(ROOT, "cs_blk").expect("lookup");
    assert_eq!(mode_of(&e.attr), libc::S_IFBLK | 0o660);
    assert_eq!(e.attr.st_rdev, 8 << 8 | 1);
    // Malformed values are EIO for that file, and stay as they were.
    assert_eq!(errno(h.lookup(ROOT, "bad")), libc::EIO);
    assert_eq!(errno(h.lookup(ROOT, "contradiction")), libc::EIO);
    assert_eq!(
        get_xattr(&p.join("bad"), KEY).as_deref(),
        Some("root:0:0644")
    );
    // chmod of a host file without the xattr writes one with the default owner.
    let ino = h.ino(ROOT, "plain");
    h.chmod(ino, 0o600).expect("chmod");
    assert_eq!(
        get_xattr(&p.join("plain"), KEY).as_deref(),
        Some("123:456:0600:file")
    );
    assert_eq!(
        std::fs::metadata(p.join("plain"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o640,
        "host mode untouched"
    );
}

#[test]
fn override_key_is_invisible_and_untouchable() {
    let dir = passthrough_common::tempdir();
    let fs = fs_for(dir.path(), HostPermissions::Private);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let ino = h.put(ROOT, "f", b"x");
    let key = c(KEY);
    fs.setxattr(&h.ctx, ino, &c("user.other"), b"v", 0)
        .expect("other xattrs pass");
    match fs.listxattr(&h.ctx, ino, 4096).expect("list") {
        ListxattrReply::Names(n) => {
            assert!(
                !n.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
                "key listed"
            );
            assert!(n.windows(10).any(|w| w == b"user.other"));
        }
        ListxattrReply::Count(_) => panic!("names expected"),
    }
    match fs.listxattr(&h.ctx, ino, 0).expect("count") {
        ListxattrReply::Count(n) => assert_eq!(n as usize, "user.other\0".len()),
        ListxattrReply::Names(_) => panic!("count expected"),
    }
    assert_eq!(errno(fs.getxattr(&h.ctx, ino, &key, 256)), libc::EACCES);
    assert_eq!(
        errno(fs.setxattr(&h.ctx, ino, &key, b"0:0:0777:file", 0)),
        libc::EPERM
    );
    assert_eq!(errno(fs.removexattr(&h.ctx, ino, &key)), libc::EPERM);
    match fs.getxattr(&h.ctx, ino, &c("user.other"), 16).expect("get") {
        GetxattrReply::Value(v) => assert_eq!(v, b"v"),
        GetxattrReply::Count(_) => panic!("value expected"),
    }
    assert_eq!(
        get_xattr(&dir.path().join("f"), KEY).as_deref(),
        Some("0:0:0644:file"),
        "unchanged"
    );
}

#[test]
fn hard_links_share_one_inode() {
    let dir = passthrough_common::tempdir();
    let fs = fs_for(dir.path(), HostPermissions::Private);
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let ino = h.put(ROOT, "a", b"x");
    let l = h.link(ino, ROOT, "b").expect("link");
    assert_eq!(l.inode, ino);
    assert_eq!(l.attr.st_nlink, 2);
    h.chown(ino, 9, 9).expect("chown");
    assert_eq!(h.lookup(ROOT, "b").expect("lookup").attr.st_uid, 9);
    // Host-made hard links are the same inode too.
    std::fs::hard_link(dir.path().join("a"), dir.path().join("c")).expect("link");
    assert_eq!(h.ino(ROOT, "c"), ino);
    assert_eq!(h.getattr(ino).st_ino, ino, "st_ino is the inode number");
    let _ = SetattrValid::empty();
}
