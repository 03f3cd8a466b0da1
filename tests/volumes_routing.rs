//! VolumeFs routing: longest prefix, nested mount points, mount points over existing names,
//! EXDEV, per-volume statfs, submount announcements, file volumes, nesting.

// statvfs field types differ per platform.
#![allow(clippy::unnecessary_cast)]

mod passthrough_common;

use std::ffi::CString;
use std::sync::Arc;

use boxfs::filemount::{FileMount, FileMountOptions};
use boxfs::memfs::MemFs;
use boxfs::passthrough::PassthroughFs;
use boxfs::volumes::{VirtualFile, VolumeError, VolumeFs, VolumeOptions};
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{
    Context, CreateIn, DirEntry, DynFileSystem, Entry, FileSystem, FsOptions, SizeExt, ROOT_ID,
};

fn c(s: &str) -> CString {
    CString::new(s).expect("name")
}

fn errno<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn memfs() -> Arc<dyn DynFileSystem> {
    Arc::new(MemFs::builder().build().expect("MemFs builds"))
}

fn memfs_sized(mib: u64) -> Arc<dyn DynFileSystem> {
    Arc::new(
        MemFs::builder()
            .capacity(mib.mib())
            .build()
            .expect("MemFs builds"),
    )
}

fn ctx() -> Context {
    Context::new()
}

fn put(fs: &dyn DynFileSystem, dir: u64, name: &str, data: &[u8]) -> u64 {
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = fs.create(&ctx(), dir, &c(name), args).expect("create");
    let fh = fh.unwrap_or(0);
    let mut r = MemReader::copied(data);
    fs.write(
        &ctx(),
        e.inode,
        fh,
        &mut r,
        data.len() as u32,
        0,
        None,
        false,
        0,
        0,
    )
    .expect("write");
    fs.release(&ctx(), e.inode, 0, fh, false, false, None)
        .expect("release");
    e.inode
}

fn get(fs: &dyn DynFileSystem, ino: u64) -> Vec<u8> {
    let (fh, _, _) = fs
        .open(&ctx(), ino, libc::O_RDONLY as u32, 0)
        .expect("open");
    let fh = fh.unwrap_or(0);
    let mut w = MemWriter::new(1 << 16);
    fs.read(&ctx(), ino, fh, &mut w, 1 << 16, 0, None, 0)
        .expect("read");
    fs.release(&ctx(), ino, 0, fh, false, false, None)
        .expect("release");
    w.into_inner()
}

fn lookup(fs: &dyn DynFileSystem, dir: u64, name: &str) -> std::io::Result<Entry> {
    fs.lookup(&ctx(), dir, &c(name))
}

/// Names and inode numbers listed by READDIR (and, checked to agree, READDIRPLUS).
fn list(fs: &dyn DynFileSystem, dir: u64) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let (fh, _) = fs.opendir(&ctx(), dir, 0).expect("opendir");
    let fh = fh.unwrap_or(0);
    let mut off = 0;
    loop {
        let mut batch = Vec::new();
        // Two entries per call: every listing is resumed from its offsets.
        fs.readdir(&ctx(), dir, fh, 4096, off, &mut |d: DirEntry| {
            if batch.len() == 2 {
                return Ok(0);
            }
            batch.push((
                String::from_utf8_lossy(d.name).into_owned(),
                d.ino,
                d.offset,
            ));
            Ok(1)
        })
        .expect("readdir");
        let Some(last) = batch.last() else { break };
        off = last.2;
        out.extend(batch.into_iter().map(|(n, i, _)| (n, i)));
    }
    let mut plus = Vec::new();
    let mut off = 0;
    loop {
        let mut batch = Vec::new();
        fs.readdirplus(&ctx(), dir, fh, 4096, off, &mut |d: DirEntry, e: Entry| {
            if batch.len() == 2 {
                return Ok(0);
            }
            batch.push((
                String::from_utf8_lossy(d.name).into_owned(),
                d.ino,
                d.offset,
                e,
            ));
            Ok(1)
        })
        .expect("readdirplus");
        let Some(last) = batch.last() else { break };
        off = last.2;
        for (n, i, _, e) in batch {
            if n != "." && n != ".." {
                assert_eq!(e.inode, i, "readdirplus entry and dirent agree for {n}");
                fs.forget(&ctx(), e.inode, 1);
            }
            plus.push((n, i));
        }
    }
    fs.releasedir(&ctx(), dir, 0, fh).expect("releasedir");
    assert_eq!(out, plus, "readdir and readdirplus list the same");
    out.sort();
    out
}

fn names(fs: &dyn DynFileSystem, dir: u64) -> Vec<String> {
    list(fs, dir)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != "." && n != "..")
        .collect()
}

#[test]
fn mount_points_appear_in_lookups_and_listings() {
    let root = memfs();
    put(&*root, ROOT_ID, "rootfile", b"r");
    let vfs = VolumeFs::new(root);
    let work = memfs();
    put(&*work, ROOT_ID, "w", b"work data");
    vfs.attach("/work", work, VolumeOptions::new())
        .expect("attach");
    assert_eq!(names(&vfs, ROOT_ID), ["rootfile", "work"]);
    let w = lookup(&vfs, ROOT_ID, "work").expect("mount point");
    assert_eq!(w.attr.st_mode & libc::S_IFMT, libc::S_IFDIR);
    let listed = list(&vfs, ROOT_ID);
    assert!(listed.contains(&("work".into(), w.inode)), "{listed:?}");
    let f = lookup(&vfs, w.inode, "w").expect("lookup in volume");
    assert_eq!(get(&vfs, f.inode), b"work data");
    // `..` of the volume root names the directory the volume is mounted in.
    let dotdot = list(&vfs, w.inode)
        .into_iter()
        .find(|(n, _)| n == "..")
        .expect("..");
    assert_eq!(dotdot.1, ROOT_ID);
    // The volume's data is not the root's.
    assert_eq!(errno(lookup(&vfs, ROOT_ID, "w")), libc::ENOENT);
}

#[test]
fn longest_prefix_wins_whatever_the_attach_order() {
    for order in [["/a", "/a/b"], ["/a/b", "/a"]] {
        let root = memfs();
        // The root backend has its own /a/b, which the volumes must hide.
        let ra = root
            .mkdir(&ctx(), ROOT_ID, &c("a"), 0o755, 0)
            .expect("mkdir");
        let rb = root
            .mkdir(&ctx(), ra.inode, &c("b"), 0o755, 0)
            .expect("mkdir");
        put(&*root, rb.inode, "from-root", b"root");
        let vfs = VolumeFs::new(root);
        let a = memfs();
        put(&*a, ROOT_ID, "from-a", b"a");
        let b = memfs();
        put(&*b, ROOT_ID, "from-b", b"b");
        for p in order {
            let fs = if p == "/a" { a.clone() } else { b.clone() };
            vfs.attach(p, fs, VolumeOptions::new()).expect("attach");
        }
        let va = lookup(&vfs, ROOT_ID, "a").expect("a");
        assert_eq!(names(&vfs, va.inode), ["b", "from-a"], "order {order:?}");
        let vb = lookup(&vfs, va.inode, "b").expect("b");
        assert_eq!(names(&vfs, vb.inode), ["from-b"], "order {order:?}");
        let f = lookup(&vfs, vb.inode, "from-b").expect("file");
        assert_eq!(get(&vfs, f.inode), b"b");
        assert_ne!(va.inode >> 52, vb.inode >> 52, "distinct slots");
    }
}

#[test]
fn nested_mount_point_parent_must_exist() {
    let vfs = VolumeFs::new(memfs());
    let err = vfs
        .attach("/no/such/dir", memfs(), VolumeOptions::new())
        .unwrap_err();
    assert!(matches!(err, VolumeError::Io { .. }), "{err}");
    for bad in ["", "rel", "/", "/a//b", "/a/./b", "/a/../b", "/a/"] {
        assert!(
            matches!(
                vfs.attach(bad, memfs(), VolumeOptions::new()),
                Err(VolumeError::InvalidPath(_))
            ),
            "{bad:?}"
        );
    }
    vfs.attach("/x", memfs(), VolumeOptions::new())
        .expect("attach");
    assert!(matches!(
        vfs.attach("/x", memfs(), VolumeOptions::new()),
        Err(VolumeError::Exists(_))
    ));
}

#[test]
fn mount_point_shadows_an_existing_name() {
    let root = memfs();
    let etc = root
        .mkdir(&ctx(), ROOT_ID, &c("etc"), 0o755, 0)
        .expect("mkdir");
    put(&*root, etc.inode, "shadowed", b"root's");
    let vfs = VolumeFs::new(root);
    let vol = memfs();
    put(&*vol, ROOT_ID, "hosts", b"127.0.0.1");
    vfs.attach("/etc", vol, VolumeOptions::new())
        .expect("attach");
    let e = lookup(&vfs, ROOT_ID, "etc").expect("etc");
    assert_ne!(e.inode, etc.inode);
    assert_eq!(names(&vfs, e.inode), ["hosts"]);
    let listed = list(&vfs, ROOT_ID);
    let etcs: Vec<_> = listed.iter().filter(|(n, _)| n == "etc").collect();
    assert_eq!(
        etcs,
        [&("etc".to_string(), e.inode)],
        "listed once, as the volume"
    );
    // The mount point cannot be removed, replaced or created over.
    assert_eq!(errno(vfs.rmdir(&ctx(), ROOT_ID, &c("etc"))), libc::EBUSY);
    assert_eq!(errno(vfs.unlink(&ctx(), ROOT_ID, &c("etc"))), libc::EBUSY);
    assert_eq!(
        errno(vfs.mkdir(&ctx(), ROOT_ID, &c("etc"), 0o755, 0)),
        libc::EEXIST
    );
    let d = vfs
        .mkdir(&ctx(), ROOT_ID, &c("d"), 0o755, 0)
        .expect("mkdir");
    assert_eq!(
        errno(vfs.rename(&ctx(), ROOT_ID, &c("d"), ROOT_ID, &c("etc"), 0)),
        libc::EBUSY
    );
    assert_eq!(
        errno(vfs.rename(&ctx(), ROOT_ID, &c("etc"), ROOT_ID, &c("e2"), 0)),
        libc::EBUSY
    );
    let _ = d;
}

#[test]
fn rename_and_link_across_volumes_are_exdev() {
    let vfs = VolumeFs::new(memfs());
    vfs.attach("/a", memfs(), VolumeOptions::new()).expect("a");
    vfs.attach("/b", memfs(), VolumeOptions::new()).expect("b");
    let a = lookup(&vfs, ROOT_ID, "a").expect("a").inode;
    let b = lookup(&vfs, ROOT_ID, "b").expect("b").inode;
    let f = put(&vfs, a, "f", b"data");
    assert_eq!(
        errno(vfs.rename(&ctx(), a, &c("f"), b, &c("f"), 0)),
        libc::EXDEV
    );
    assert_eq!(
        errno(vfs.rename(&ctx(), a, &c("f"), ROOT_ID, &c("f"), 0)),
        libc::EXDEV
    );
    assert_eq!(errno(vfs.link(&ctx(), f, b, &c("l"))), libc::EXDEV);
    assert_eq!(errno(vfs.link(&ctx(), f, ROOT_ID, &c("l"))), libc::EXDEV);
    // Within one volume both work.
    vfs.rename(&ctx(), a, &c("f"), a, &c("g"), 0)
        .expect("rename within");
    vfs.link(&ctx(), f, a, &c("h")).expect("link within");
    assert_eq!(names(&vfs, a), ["g", "h"]);
    assert_eq!(names(&vfs, b), Vec::<String>::new());
}

#[test]
fn statfs_answers_for_the_volume_of_the_inode() {
    let vfs = VolumeFs::new(memfs_sized(64));
    vfs.attach("/small", memfs_sized(8), VolumeOptions::new())
        .expect("attach");
    let small = lookup(&vfs, ROOT_ID, "small").expect("small").inode;
    let f = put(&vfs, small, "f", b"x");
    let root_st = vfs.statfs(&ctx(), ROOT_ID).expect("statfs");
    let vol_st = vfs.statfs(&ctx(), small).expect("statfs");
    let file_st = vfs.statfs(&ctx(), f).expect("statfs");
    let bytes = |s: &boxfs::statvfs64| s.f_blocks as u64 * s.f_frsize as u64;
    assert_eq!(bytes(&root_st), 64 << 20);
    assert_eq!(bytes(&vol_st), 8 << 20);
    assert_eq!(bytes(&file_st), 8 << 20);
}

#[cfg(target_os = "linux")]
#[test]
fn volume_roots_are_submounts_iff_the_guest_accepted_them() {
    use fuse_backend_rs::abi::fuse_abi::ATTR_SUBMOUNT;
    for offered in [true, false] {
        let vfs = VolumeFs::new(memfs());
        vfs.attach("/v", memfs(), VolumeOptions::new())
            .expect("attach");
        let mut capable = FsOptions::ASYNC_READ | FsOptions::DO_READDIRPLUS;
        if offered {
            capable |= FsOptions::SUBMOUNTS;
        }
        let want = vfs.init(capable).expect("init");
        assert_eq!(want.contains(FsOptions::SUBMOUNTS), offered);
        let v = lookup(&vfs, ROOT_ID, "v").expect("v");
        assert_eq!(
            v.attr_flags & ATTR_SUBMOUNT != 0,
            offered,
            "lookup, offered={offered}"
        );
        // Entries that are not volume roots never carry the flag.
        let d = vfs
            .mkdir(&ctx(), v.inode, &c("d"), 0o755, 0)
            .expect("mkdir");
        assert_eq!(d.attr_flags & ATTR_SUBMOUNT, 0);
        let plain = vfs
            .mkdir(&ctx(), ROOT_ID, &c("plain"), 0o755, 0)
            .expect("mkdir");
        assert_eq!(plain.attr_flags & ATTR_SUBMOUNT, 0);
        // The mount point's readdirplus entry carries it too.
        let (fh, _) = vfs.opendir(&ctx(), ROOT_ID, 0).expect("opendir");
        let mut flags = None;
        vfs.readdirplus(&ctx(), ROOT_ID, fh.unwrap_or(0), 4096, 0, &mut |d, e| {
            if d.name == b"v" {
                flags = Some(e.attr_flags);
            }
            Ok(1)
        })
        .expect("readdirplus");
        vfs.releasedir(&ctx(), ROOT_ID, 0, fh.unwrap_or(0))
            .expect("releasedir");
        assert_eq!(flags.map(|f| f & ATTR_SUBMOUNT != 0), Some(offered));
        // A volume attached after INIT is announced the same way.
        vfs.attach("/later", memfs(), VolumeOptions::new())
            .expect("attach");
        let l = lookup(&vfs, ROOT_ID, "later").expect("later");
        assert_eq!(l.attr_flags & ATTR_SUBMOUNT != 0, offered);
    }
    // Announcing can be turned off.
    let vfs = VolumeFs::new(memfs()).announce_submounts(false);
    vfs.attach("/v", memfs(), VolumeOptions::new())
        .expect("attach");
    let want = vfs.init(FsOptions::SUBMOUNTS).expect("init");
    assert!(!want.contains(FsOptions::SUBMOUNTS));
    assert_eq!(
        lookup(&vfs, ROOT_ID, "v").expect("v").attr_flags & ATTR_SUBMOUNT,
        0
    );
}

#[test]
fn virtual_file_at_a_file_path() {
    let root = memfs();
    root.mkdir(&ctx(), ROOT_ID, &c("sbin"), 0o755, 0)
        .expect("mkdir");
    let vfs = VolumeFs::new(root);
    let init = VirtualFile::from_bytes(b"#!/bin/sh\necho hi\n".to_vec()).mode(0o755);
    vfs.attach("/init.krun", Arc::new(init.clone()), VolumeOptions::new())
        .expect("attach");
    vfs.attach("/sbin/init", Arc::new(init), VolumeOptions::new())
        .expect("attach at a nested file path");
    let e = lookup(&vfs, ROOT_ID, "init.krun").expect("lookup");
    assert_eq!(e.attr.st_mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(e.attr.st_mode & 0o7777, 0o755);
    assert_eq!(get(&vfs, e.inode), b"#!/bin/sh\necho hi\n");
    let listed = list(&vfs, ROOT_ID);
    assert!(listed.contains(&("init.krun".into(), e.inode)));
    // Not writable, not removable, not a directory.
    assert_eq!(
        errno(vfs.open(&ctx(), e.inode, libc::O_WRONLY as u32, 0)),
        libc::EROFS
    );
    // SAFETY: stat64 is a plain C struct; all-zero is valid.
    let st: boxfs::stat64 = unsafe { std::mem::zeroed() };
    assert_eq!(
        errno(vfs.setattr(&ctx(), e.inode, st, None, boxfs::SetattrValid::MODE)),
        libc::EROFS
    );
    assert_eq!(
        errno(vfs.unlink(&ctx(), ROOT_ID, &c("init.krun"))),
        libc::EBUSY
    );
    assert_eq!(
        errno(vfs.rename(&ctx(), ROOT_ID, &c("init.krun"), ROOT_ID, &c("x"), 0)),
        libc::EBUSY
    );
    assert_eq!(errno(lookup(&vfs, e.inode, "x")), libc::ENOTDIR);
    assert_eq!(
        errno(vfs.mkdir(&ctx(), e.inode, &c("x"), 0o755, 0)),
        libc::ENOTDIR
    );
    let sbin = lookup(&vfs, ROOT_ID, "sbin").expect("sbin").inode;
    let nested = lookup(&vfs, sbin, "init").expect("nested file volume");
    assert_eq!(nested.attr.st_mode & 0o7777, 0o755);
    assert_ne!(nested.inode, e.inode, "each file volume is its own node");
}

#[test]
fn host_file_volume_through_root_name() {
    let dir = passthrough_common::tempdir();
    std::fs::write(dir.path().join("app.conf"), b"key=value").expect("write");
    std::fs::write(dir.path().join("other"), b"not served").expect("write");
    let pt = PassthroughFs::builder(dir.path()).build().expect("builds");
    let root = memfs();
    root.mkdir(&ctx(), ROOT_ID, &c("etc"), 0o755, 0)
        .expect("mkdir");
    let vfs = VolumeFs::new(root);
    vfs.attach(
        "/etc/app.conf",
        Arc::new(pt),
        VolumeOptions::new().root_name(&c("app.conf")),
    )
    .expect("attach");
    let etc = lookup(&vfs, ROOT_ID, "etc").expect("etc").inode;
    assert_eq!(names(&vfs, etc), ["app.conf"]);
    let f = lookup(&vfs, etc, "app.conf").expect("file");
    assert_eq!(f.attr.st_mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(get(&vfs, f.inode), b"key=value");
    // Writable (the volume is not read-only) and confined: the file has no names below it.
    let (fh, _, _) = vfs
        .open(&ctx(), f.inode, libc::O_WRONLY as u32, 0)
        .expect("open rw");
    let mut r = MemReader::copied(b"KEY");
    vfs.write(
        &ctx(),
        f.inode,
        fh.unwrap_or(0),
        &mut r,
        3,
        0,
        None,
        false,
        0,
        0,
    )
    .expect("write");
    vfs.release(&ctx(), f.inode, 0, fh.unwrap_or(0), false, false, None)
        .expect("release");
    assert_eq!(
        std::fs::read(dir.path().join("app.conf")).expect("read"),
        b"KEY=value"
    );
    assert_eq!(errno(lookup(&vfs, f.inode, "other")), libc::ENOTDIR);
}

#[test]
fn single_file_mount_as_a_volume() {
    let dir = passthrough_common::tempdir();
    let host = dir.path().join("app.conf");
    std::fs::write(&host, b"v1").expect("write");
    let run = passthrough_common::tempdir();
    let m = FileMount::stage(
        &host,
        "/etc/app.conf",
        &FileMountOptions::new().runtime_dir(run.path()),
    )
    .expect("stage");
    let root = memfs();
    root.mkdir(&ctx(), ROOT_ID, &c("etc"), 0o755, 0)
        .expect("mkdir");
    let vfs = VolumeFs::new(root);
    vfs.attach(
        "/etc/app.conf",
        m.fs(),
        VolumeOptions::new().root_name(&c("app.conf")),
    )
    .expect("attach");
    let etc = lookup(&vfs, ROOT_ID, "etc").expect("etc").inode;
    let f = lookup(&vfs, etc, "app.conf").expect("file");
    assert_eq!(f.attr.st_mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(get(&vfs, f.inode), b"v1");
    // The host replaces the file atomically: the volume follows it.
    std::fs::write(dir.path().join("new"), b"v2!").expect("write");
    std::fs::rename(dir.path().join("new"), &host).expect("rename");
    let f2 = lookup(&vfs, etc, "app.conf").expect("file");
    assert_eq!(f2.inode, f.inode, "one fixed node");
    assert_eq!(get(&vfs, f.inode), b"v2!");
}

#[test]
fn mount_point_owner_and_mode() {
    let vfs = VolumeFs::new(memfs());
    vfs.attach(
        "/home",
        memfs(),
        VolumeOptions::new().owner(1000, 1000).mode(0o700),
    )
    .expect("attach");
    let h = lookup(&vfs, ROOT_ID, "home").expect("home");
    assert_eq!(h.attr.st_mode & 0o7777, 0o700);
    assert_eq!((h.attr.st_uid, h.attr.st_gid), (1000, 1000));
    let (st, _) = vfs.getattr(&ctx(), h.inode, None).expect("getattr");
    assert_eq!(st.st_mode & 0o7777, 0o700);
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);
    let mut other = ctx();
    other.uid = 1001;
    other.gid = 1001;
    assert_eq!(
        errno(vfs.access(&other, h.inode, libc::R_OK as u32)),
        libc::EACCES
    );
    let mut owner = ctx();
    owner.uid = 1000;
    owner.gid = 1000;
    vfs.access(
        &owner,
        h.inode,
        (libc::R_OK | libc::W_OK | libc::X_OK) as u32,
    )
    .expect("owner may");
}

#[test]
fn a_volumefs_nests_inside_a_volumefs() {
    let inner = VolumeFs::new(memfs());
    inner
        .attach("/x", memfs(), VolumeOptions::new())
        .expect("inner attach");
    let inner: Arc<dyn DynFileSystem> = Arc::new(inner);
    let outer = VolumeFs::new(memfs());
    outer
        .attach("/n", inner, VolumeOptions::new())
        .expect("outer attach");
    outer
        .attach("/m", memfs(), VolumeOptions::new())
        .expect("m");
    let n = lookup(&outer, ROOT_ID, "n").expect("n").inode;
    let x = lookup(&outer, n, "x").expect("x");
    let f = put(&outer, x.inode, "f", b"deep");
    assert_eq!(get(&outer, f), b"deep");
    assert_eq!(names(&outer, x.inode), ["f"]);
    let again = lookup(&outer, x.inode, "f").expect("f");
    assert_eq!(again.inode, f, "stable ids through two tables");
    let m = lookup(&outer, ROOT_ID, "m").expect("m").inode;
    assert_eq!(
        errno(outer.rename(&ctx(), x.inode, &c("f"), m, &c("f"), 0)),
        libc::EXDEV
    );
    // The inner table's EXDEV holds too (inner root vs inner volume).
    assert_eq!(
        errno(outer.rename(&ctx(), x.inode, &c("f"), n, &c("f"), 0)),
        libc::EXDEV
    );
    // Forgetting every reference drops the mapping: the id is stale afterwards.
    outer.unlink(&ctx(), x.inode, &c("f")).expect("unlink");
    outer.forget(&ctx(), f, 2);
    assert_eq!(errno(outer.getattr(&ctx(), f, None)), libc::ESTALE);
}

#[test]
fn virtual_file_from_a_host_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = passthrough_common::tempdir();
    let p = dir.path().join("init");
    std::fs::write(&p, b"\x7fELF...").expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let f = VirtualFile::from_host_file(&p).expect("host file");
    assert!(
        VirtualFile::from_host_file(dir.path()).is_err(),
        "a directory is refused"
    );
    let vfs = VolumeFs::new(memfs());
    vfs.attach("/init.krun", Arc::new(f), VolumeOptions::new())
        .expect("attach");
    let e = lookup(&vfs, ROOT_ID, "init.krun").expect("lookup");
    assert_eq!(e.attr.st_mode & 0o7777, 0o755);
    assert_eq!(get(&vfs, e.inode), b"\x7fELF...");
    vfs.access(&ctx(), e.inode, libc::X_OK as u32)
        .expect("executable");
    assert_eq!(
        errno(vfs.access(&ctx(), e.inode, libc::W_OK as u32)),
        libc::EROFS
    );
    assert_eq!(
        errno(vfs.setxattr(&ctx(), e.inode, &c("user.x"), b"v", 0)),
        libc::EROFS
    );
}

/// VolumeFs takes the caching settings every backend has and imposes them on every volume's
/// answers; unset, each backend's own pass through.
#[test]
fn cache_settings_apply_to_every_volume() {
    use boxfs::{CachePolicy, OpenOptions};
    use std::time::Duration;
    let mem = |policy| -> Arc<dyn DynFileSystem> {
        Arc::new(
            boxfs::memfs::MemFs::builder()
                .cache_policy(policy)
                .build()
                .expect("memfs"),
        )
    };
    let ctx = Context::new();
    let observe = |vfs: &VolumeFs| {
        let e = vfs
            .lookup(&ctx, ROOT_ID, &CString::new("v").unwrap())
            .expect("lookup the volume root");
        let (_, attr) = vfs.getattr(&ctx, e.inode, None).expect("getattr");
        let (fh, opts) = vfs.opendir(&ctx, e.inode, 0).expect("opendir");
        vfs.releasedir(&ctx, e.inode, 0, fh.unwrap_or(0))
            .expect("releasedir");
        (e.entry_timeout, attr, opts)
    };
    let plain = VolumeFs::new(mem(CachePolicy::Always));
    plain
        .attach("/v", mem(CachePolicy::Always), VolumeOptions::new())
        .expect("attach");
    let day = CachePolicy::Always.timeout();
    let (entry, attr, opts) = observe(&plain);
    assert_eq!((entry, attr), (day, day));
    assert!(opts.contains(OpenOptions::KEEP_CACHE));

    let never = VolumeFs::new(mem(CachePolicy::Always)).cache_policy(CachePolicy::Never);
    never
        .attach("/v", mem(CachePolicy::Always), VolumeOptions::new())
        .expect("attach");
    let (entry, attr, opts) = observe(&never);
    assert_eq!((entry, attr), (Duration::ZERO, Duration::ZERO));
    assert!(!opts.contains(OpenOptions::KEEP_CACHE), "{opts:?}");
}
