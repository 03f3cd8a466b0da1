//! Hostile requests against a VolumeFs: crafted node ids and handles, `..`, renames and links
//! across volumes, hidden names, read-only volumes, detached volumes.

mod passthrough_common;

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use boxfs::memfs::MemFs;
use boxfs::passthrough::PassthroughFs;
use boxfs::volumes::{DetachMode, Hook, HookFs, Op, Request, VolumeError, VolumeFs, VolumeOptions};
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{Context, CreateIn, DirEntry, DynFileSystem, Entry, FileSystem, ROOT_ID};

fn c(s: &str) -> CString {
    CString::new(s).expect("name")
}

fn errno<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn ctx() -> Context {
    Context::new()
}

fn memfs() -> Arc<dyn DynFileSystem> {
    Arc::new(MemFs::builder().build().expect("MemFs builds"))
}

fn create(fs: &dyn DynFileSystem, dir: u64, name: &str) -> std::io::Result<(u64, u64)> {
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = fs.create(&ctx(), dir, &c(name), args)?;
    Ok((e.inode, fh.unwrap_or(0)))
}

fn put(fs: &dyn DynFileSystem, dir: u64, name: &str, data: &[u8]) -> u64 {
    let (ino, fh) = create(fs, dir, name).expect("create");
    let mut r = MemReader::copied(data);
    fs.write(
        &ctx(),
        ino,
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
    fs.release(&ctx(), ino, 0, fh, false, false, None)
        .expect("release");
    ino
}

fn read(fs: &dyn DynFileSystem, ino: u64, fh: u64) -> std::io::Result<Vec<u8>> {
    let mut w = MemWriter::new(4096);
    fs.read(&ctx(), ino, fh, &mut w, 4096, 0, None, 0)?;
    Ok(w.into_inner())
}

fn lookup(fs: &dyn DynFileSystem, dir: u64, name: &str) -> std::io::Result<Entry> {
    fs.lookup(&ctx(), dir, &c(name))
}

fn names(fs: &dyn DynFileSystem, dir: u64, plus: bool) -> Vec<String> {
    let (fh, _) = fs.opendir(&ctx(), dir, 0).expect("opendir");
    let fh = fh.unwrap_or(0);
    let mut out = Vec::new();
    if plus {
        fs.readdirplus(&ctx(), dir, fh, 1 << 16, 0, &mut |d: DirEntry, e: Entry| {
            if e.inode != 0 {
                fs.forget(&ctx(), e.inode, 1);
            }
            out.push(String::from_utf8_lossy(d.name).into_owned());
            Ok(1)
        })
        .expect("readdirplus");
    } else {
        fs.readdir(&ctx(), dir, fh, 1 << 16, 0, &mut |d: DirEntry| {
            out.push(String::from_utf8_lossy(d.name).into_owned());
            Ok(1)
        })
        .expect("readdir");
    }
    fs.releasedir(&ctx(), dir, 0, fh).expect("releasedir");
    out.retain(|n| n != "." && n != "..");
    out.sort();
    out
}

#[test]
fn crafted_node_ids_never_reach_another_volume() {
    let vfs = VolumeFs::new(memfs());
    vfs.attach("/a", memfs(), VolumeOptions::new()).expect("a");
    vfs.attach("/b", memfs(), VolumeOptions::new()).expect("b");
    let a = lookup(&vfs, ROOT_ID, "a").expect("a").inode;
    let fa = put(&vfs, a, "secret", b"A's secret");
    // Unused slots, generations never given, overflow indices never handed out.
    let slot = |id: u64| id >> 52;
    let gen = |id: u64| (id >> 40) & 0xfff;
    let local = fa & ((1 << 40) - 1);
    for crafted in [
        (100u64 << 52) | (1 << 40) | local,
        (slot(fa) << 52) | ((gen(fa) + 1) << 40) | local,
        (slot(fa) << 52) | (gen(fa) << 40) | (1 << 39) | 7,
        (1 << 39) | 12345,
        u64::MAX,
    ] {
        assert_eq!(
            errno(vfs.getattr(&ctx(), crafted, None)),
            libc::ESTALE,
            "{crafted:#x}"
        );
        assert_eq!(errno(vfs.open(&ctx(), crafted, 0, 0)), libc::ESTALE);
        assert_eq!(errno(lookup(&vfs, crafted, "secret")), libc::ESTALE);
        vfs.forget(&ctx(), crafted, 1);
    }
    // A's file still intact after the forgets of crafted ids.
    assert!(vfs.getattr(&ctx(), fa, None).is_ok());
}

#[test]
fn handles_of_one_volume_are_ebadf_in_another() {
    let vfs = VolumeFs::new(memfs());
    vfs.attach("/a", memfs(), VolumeOptions::new()).expect("a");
    vfs.attach("/b", memfs(), VolumeOptions::new()).expect("b");
    let a = lookup(&vfs, ROOT_ID, "a").expect("a").inode;
    let b = lookup(&vfs, ROOT_ID, "b").expect("b").inode;
    let fa = put(&vfs, a, "fa", b"A");
    let fb = put(&vfs, b, "fb", b"B");
    let (ha, _, _) = vfs.open(&ctx(), fa, libc::O_RDWR as u32, 0).expect("open");
    let ha = ha.expect("namespaced handle");
    let (hb, _, _) = vfs.open(&ctx(), fb, libc::O_RDWR as u32, 0).expect("open");
    let hb = hb.expect("namespaced handle");
    assert_eq!(read(&vfs, fa, ha).expect("own handle"), b"A");
    assert_eq!(errno(read(&vfs, fb, ha)), libc::EBADF);
    assert_eq!(errno(read(&vfs, fa, hb)), libc::EBADF);
    assert_eq!(errno(vfs.getattr(&ctx(), fb, Some(ha))), libc::EBADF);
    let mut r = MemReader::copied(b"X");
    assert_eq!(
        errno(vfs.write(&ctx(), fb, ha, &mut r, 1, 0, None, false, 0, 0)),
        libc::EBADF
    );
    assert_eq!(
        errno(vfs.release(&ctx(), fb, 0, ha, false, false, None)),
        libc::EBADF
    );
    // A root-backend handle number with another volume's inode.
    assert_eq!(errno(read(&vfs, fb, 0)), libc::EBADF);
    vfs.release(&ctx(), fa, 0, ha, false, false, None)
        .expect("release");
    vfs.release(&ctx(), fb, 0, hb, false, false, None)
        .expect("release");
}

#[test]
fn dotdot_never_leaves_a_volume_through_lookup() {
    let dir = passthrough_common::tempdir();
    std::fs::create_dir(dir.path().join("share")).expect("mkdir");
    std::fs::write(dir.path().join("outside"), b"host file").expect("write");
    let pt = PassthroughFs::builder(dir.path().join("share"))
        .build()
        .expect("builds");
    let root = memfs();
    put(&*root, ROOT_ID, "rootfile", b"root");
    let vfs = VolumeFs::new(root);
    vfs.attach("/v", Arc::new(pt), VolumeOptions::new())
        .expect("v");
    let v = lookup(&vfs, ROOT_ID, "v").expect("v").inode;
    let sub = vfs
        .mkdir(&ctx(), v, &c("sub"), 0o755, 0)
        .expect("mkdir")
        .inode;
    for (dir, name) in [
        (v, ".."),
        (v, "."),
        (sub, ".."),
        (v, "../outside"),
        (v, "../rootfile"),
    ] {
        match lookup(&vfs, dir, name) {
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)),
                "{name}: {e}"
            ),
            Ok(e) => panic!("{name} resolved to {:#x}", e.inode),
        }
    }
    assert_eq!(errno(lookup(&vfs, v, "outside")), libc::ENOENT);
    assert_eq!(errno(lookup(&vfs, v, "rootfile")), libc::ENOENT);
}

fn hidden_fixture(opts: VolumeOptions) -> (VolumeFs, u64, tempfile::TempDir) {
    let dir = passthrough_common::tempdir();
    let p = dir.path();
    std::fs::create_dir_all(p.join(".git")).expect("mkdir");
    std::fs::write(p.join(".git/config"), b"[core]").expect("write");
    std::fs::create_dir_all(p.join("sub/.ssh")).expect("mkdir");
    std::fs::write(p.join("sub/.ssh/id_ed25519"), b"PRIVATE").expect("write");
    std::fs::write(p.join("key.pem"), b"PEM").expect("write");
    std::fs::write(p.join("sub/cert.pem"), b"PEM").expect("write");
    std::fs::write(p.join("secret"), b"top").expect("write");
    std::fs::write(p.join("sub/secret"), b"fine").expect("write");
    std::fs::write(p.join("visible"), b"ok").expect("write");
    let pt = PassthroughFs::builder(p).build().expect("builds");
    let vfs = VolumeFs::new(memfs());
    vfs.attach("/w", Arc::new(pt), opts).expect("attach");
    let w = lookup(&vfs, ROOT_ID, "w").expect("w").inode;
    (vfs, w, dir)
}

#[test]
fn hidden_names_cannot_be_looked_up_listed_created_or_renamed_onto() {
    let opts = VolumeOptions::new()
        .hide(".git/")
        .hide(".ssh")
        .hide("*.pem")
        .hide("/secret");
    let (vfs, w, dir) = hidden_fixture(opts);
    let sub = lookup(&vfs, w, "sub").expect("sub").inode;
    for plus in [false, true] {
        assert_eq!(names(&vfs, w, plus), ["sub", "visible"], "plus={plus}");
        assert_eq!(names(&vfs, sub, plus), ["secret"], "plus={plus}");
    }
    for (d, n) in [
        (w, ".git"),
        (sub, ".ssh"),
        (w, "key.pem"),
        (sub, "cert.pem"),
        (w, "secret"),
    ] {
        assert_eq!(errno(lookup(&vfs, d, n)), libc::ENOENT, "lookup {n}");
        assert_eq!(
            errno(vfs.unlink(&ctx(), d, &c(n))),
            libc::ENOENT,
            "unlink {n}"
        );
        assert_eq!(
            errno(vfs.rmdir(&ctx(), d, &c(n))),
            libc::ENOENT,
            "rmdir {n}"
        );
        assert_eq!(
            errno(vfs.rename(&ctx(), d, &c(n), d, &c("moved"), 0)),
            libc::ENOENT,
            "rename {n} away"
        );
    }
    assert!(
        lookup(&vfs, sub, "secret").is_ok(),
        "/secret is anchored at the root"
    );
    // Creating, linking or renaming onto a hidden name.
    assert_eq!(errno(create(&vfs, w, "new.pem")), libc::EACCES);
    assert_eq!(
        errno(vfs.mkdir(&ctx(), sub, &c(".git"), 0o755, 0)),
        libc::EACCES
    );
    assert_eq!(
        errno(vfs.symlink(&ctx(), &c("visible"), w, &c("l.pem"))),
        libc::EACCES
    );
    assert_eq!(
        errno(vfs.mknod(&ctx(), w, &c("secret"), libc::S_IFREG | 0o644, 0, 0)),
        libc::EACCES
    );
    let vis = lookup(&vfs, w, "visible").expect("visible").inode;
    assert_eq!(errno(vfs.link(&ctx(), vis, sub, &c(".ssh"))), libc::EACCES);
    assert_eq!(
        errno(vfs.rename(&ctx(), w, &c("visible"), w, &c("key.pem"), 0)),
        libc::EACCES
    );
    assert_eq!(
        errno(vfs.rename(&ctx(), w, &c("visible"), w, &c(".git"), 0)),
        libc::EACCES
    );
    // Nothing on the host changed.
    assert_eq!(
        std::fs::read(dir.path().join("key.pem")).expect("read"),
        b"PEM"
    );
    assert_eq!(
        std::fs::read(dir.path().join("visible")).expect("read"),
        b"ok"
    );
    assert!(std::fs::read_dir(dir.path().join(".git")).is_ok());
}

#[test]
fn readonly_volumes_answer_erofs() {
    let vol = memfs();
    let f = put(&*vol, ROOT_ID, "f", b"data");
    let _ = f;
    vol.mkdir(&ctx(), ROOT_ID, &c("d"), 0o755, 0)
        .expect("mkdir");
    let vfs = VolumeFs::new(memfs());
    vfs.attach("/ro", vol, VolumeOptions::new().readonly(true))
        .expect("attach");
    let ro = lookup(&vfs, ROOT_ID, "ro").expect("ro").inode;
    let f = lookup(&vfs, ro, "f").expect("f").inode;
    let (fh, _, _) = vfs
        .open(&ctx(), f, libc::O_RDONLY as u32, 0)
        .expect("read-only open");
    assert_eq!(read(&vfs, f, fh.unwrap_or(0)).expect("read"), b"data");
    let mut r = MemReader::copied(b"x");
    assert_eq!(
        errno(vfs.write(&ctx(), f, fh.unwrap_or(0), &mut r, 1, 0, None, false, 0, 0)),
        libc::EROFS
    );
    vfs.release(&ctx(), f, 0, fh.unwrap_or(0), false, false, None)
        .expect("release");
    let e = libc::EROFS;
    assert_eq!(errno(vfs.open(&ctx(), f, libc::O_WRONLY as u32, 0)), e);
    assert_eq!(
        errno(vfs.open(&ctx(), f, (libc::O_RDONLY | libc::O_TRUNC) as u32, 0)),
        e
    );
    assert_eq!(errno(create(&vfs, ro, "new")), e);
    assert_eq!(errno(vfs.mkdir(&ctx(), ro, &c("nd"), 0o755, 0)), e);
    assert_eq!(errno(vfs.symlink(&ctx(), &c("f"), ro, &c("s"))), e);
    assert_eq!(
        errno(vfs.mknod(&ctx(), ro, &c("n"), libc::S_IFREG | 0o644, 0, 0)),
        e
    );
    assert_eq!(errno(vfs.unlink(&ctx(), ro, &c("f"))), e);
    assert_eq!(errno(vfs.rmdir(&ctx(), ro, &c("d"))), e);
    assert_eq!(errno(vfs.rename(&ctx(), ro, &c("f"), ro, &c("g"), 0)), e);
    assert_eq!(errno(vfs.link(&ctx(), f, ro, &c("l"))), e);
    // SAFETY: stat64 is a plain C struct; all-zero is valid.
    let st: boxfs::stat64 = unsafe { std::mem::zeroed() };
    assert_eq!(
        errno(vfs.setattr(&ctx(), f, st, None, boxfs::SetattrValid::SIZE)),
        e
    );
    assert_eq!(errno(vfs.setxattr(&ctx(), f, &c("user.x"), b"v", 0)), e);
    assert_eq!(errno(vfs.removexattr(&ctx(), f, &c("user.x"))), e);
    assert_eq!(errno(vfs.fallocate(&ctx(), f, 0, 0, 0, 10)), e);
    assert_eq!(errno(vfs.access(&ctx(), f, libc::W_OK as u32)), e);
    // The root volume stays writable.
    put(&vfs, ROOT_ID, "rw", b"ok");
}

/// Counts `destroy` calls of the backend it wraps.
#[derive(Default)]
struct Destroys(AtomicU64);

impl Hook for Destroys {
    fn after(&self, req: &Request<'_>, _: Result<(), i32>) {
        if req.op == Op::Destroy {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[test]
fn detach_is_busy_while_open_and_stale_after() {
    let vfs = VolumeFs::new(memfs());
    let destroys = Arc::new(Destroys::default());
    let vol = Arc::new(HookFs::new(memfs()).with_hook(destroys.clone()));
    vfs.attach("/v", vol, VolumeOptions::new()).expect("attach");
    let v = lookup(&vfs, ROOT_ID, "v").expect("v").inode;
    let f = put(&vfs, v, "f", b"old volume");
    let cached = lookup(&vfs, v, "f").expect("cached lookup").inode;
    let (fh, _, _) = vfs.open(&ctx(), f, libc::O_RDONLY as u32, 0).expect("open");
    let fh = fh.unwrap_or(0);
    // An open file: busy, and nothing changes.
    let err = vfs.detach("/v", DetachMode::Normal).unwrap_err();
    assert!(matches!(err, VolumeError::Busy { open: 1, .. }), "{err}");
    assert_eq!(read(&vfs, f, fh).expect("still served"), b"old volume");
    assert_eq!(destroys.0.load(Ordering::SeqCst), 0);
    vfs.release(&ctx(), f, 0, fh, false, false, None)
        .expect("release");
    // An open directory: busy too.
    let (dh, _) = vfs.opendir(&ctx(), v, 0).expect("opendir");
    assert!(matches!(
        vfs.detach("/v", DetachMode::Normal),
        Err(VolumeError::Busy { .. })
    ));
    vfs.releasedir(&ctx(), v, 0, dh.unwrap_or(0))
        .expect("releasedir");
    // Only cached lookups: detaches; they are stale now.
    vfs.detach("/v", DetachMode::Normal).expect("detach");
    assert_eq!(
        destroys.0.load(Ordering::SeqCst),
        1,
        "the volume's session ended"
    );
    assert_eq!(errno(vfs.getattr(&ctx(), cached, None)), libc::ESTALE);
    assert_eq!(errno(vfs.getattr(&ctx(), v, None)), libc::ESTALE);
    assert_eq!(errno(lookup(&vfs, v, "f")), libc::ESTALE);
    assert_eq!(errno(lookup(&vfs, ROOT_ID, "v")), libc::ENOENT);
    assert!(matches!(
        vfs.detach("/v", DetachMode::Normal),
        Err(VolumeError::NotFound(_))
    ));
    // A successor in the same slot never answers for the old ids, even where its own node
    // ids are the same numbers.
    let next = memfs();
    put(&*next, ROOT_ID, "f", b"successor");
    vfs.attach("/v", next, VolumeOptions::new())
        .expect("reattach");
    let v2 = lookup(&vfs, ROOT_ID, "v").expect("v").inode;
    assert_eq!(v2 >> 52, v >> 52, "same slot reused");
    assert_ne!(v2, v, "new generation");
    let f2 = lookup(&vfs, v2, "f").expect("f").inode;
    assert_eq!(f2 & ((1 << 40) - 1), f & ((1 << 40) - 1), "same backend id");
    assert_eq!(errno(vfs.getattr(&ctx(), f, None)), libc::ESTALE);
    assert_eq!(errno(vfs.open(&ctx(), f, 0, 0)), libc::ESTALE);
}

#[test]
fn forced_detach_ends_open_handles_and_frees_the_volume() {
    let vfs = VolumeFs::new(memfs());
    let destroys = Arc::new(Destroys::default());
    let dir = passthrough_common::tempdir();
    let pt: Arc<dyn DynFileSystem> =
        Arc::new(PassthroughFs::builder(dir.path()).build().expect("builds"));
    let vol = Arc::new(HookFs::new(pt).with_hook(destroys.clone()));
    vfs.attach("/v", vol, VolumeOptions::new()).expect("attach");
    let v = lookup(&vfs, ROOT_ID, "v").expect("v").inode;
    let (f, fh) = create(&vfs, v, "f").expect("create");
    let (dh, _) = vfs.opendir(&ctx(), v, 0).expect("opendir");
    let dh = dh.unwrap_or(0);
    vfs.detach("/v", DetachMode::Force).expect("forced");
    assert_eq!(destroys.0.load(Ordering::SeqCst), 1);
    assert_eq!(errno(read(&vfs, f, fh)), libc::ESTALE);
    let mut r = MemReader::copied(b"late");
    assert_eq!(
        errno(vfs.write(&ctx(), f, fh, &mut r, 4, 0, None, false, 0, 0)),
        libc::ESTALE
    );
    assert_eq!(
        errno(vfs.readdir(&ctx(), v, dh, 4096, 0, &mut |_| Ok(1))),
        libc::ESTALE
    );
    // The guest's late releases are accepted.
    vfs.release(&ctx(), f, 0, fh, false, false, None)
        .expect("late release");
    vfs.releasedir(&ctx(), v, 0, dh).expect("late releasedir");
    // The host file was closed by the volume's destroy: nothing written after the detach.
    assert_eq!(std::fs::read(dir.path().join("f")).expect("read"), b"");
    assert_eq!(errno(lookup(&vfs, ROOT_ID, "v")), libc::ENOENT);
    assert!(vfs.volumes().is_empty());
}

#[test]
fn detach_refuses_while_a_volume_is_mounted_below() {
    let vfs = VolumeFs::new(memfs());
    vfs.attach("/a", memfs(), VolumeOptions::new()).expect("a");
    vfs.attach("/a/b", memfs(), VolumeOptions::new())
        .expect("a/b");
    assert!(matches!(
        vfs.detach("/a", DetachMode::Force),
        Err(VolumeError::HasChildren { .. })
    ));
    vfs.detach("/a/b", DetachMode::Normal).expect("inner first");
    vfs.detach("/a", DetachMode::Normal).expect("then outer");
}

#[test]
fn hidden_nodes_cannot_be_reached_by_crafted_ids() {
    // In a MemFs every node has an id whether or not it was looked up: a volume with hide
    // patterns must only accept ids it handed out.
    let vol = memfs();
    let key = put(&*vol, ROOT_ID, "key.pem", b"PRIVATE KEY");
    let vfs = VolumeFs::new(memfs());
    vfs.attach("/v", vol, VolumeOptions::new().hide("*.pem"))
        .expect("attach");
    let v = lookup(&vfs, ROOT_ID, "v").expect("v").inode;
    assert_eq!(errno(lookup(&vfs, v, "key.pem")), libc::ENOENT);
    let tag = v & !((1u64 << 40) - 1);
    for crafted in [
        tag | key,
        tag | (1 << 39) | 1,
        tag | (1 << 39) | 2,
        tag | (1 << 39) | 3,
    ] {
        let r = vfs.open(&ctx(), crafted, libc::O_RDONLY as u32, 0);
        if let Ok((fh, _, _)) = r {
            let data = read(&vfs, crafted, fh.unwrap_or(0)).unwrap_or_default();
            assert_ne!(
                data, b"PRIVATE KEY",
                "hidden file read through {crafted:#x}"
            );
            vfs.release(&ctx(), crafted, 0, fh.unwrap_or(0), false, false, None)
                .expect("release");
        }
        if let Ok((st, _)) = vfs.getattr(&ctx(), crafted, None) {
            assert_ne!(
                st.st_size, 11,
                "hidden file's attributes through {crafted:#x}"
            );
        }
    }
    // Visible names still work.
    put(&vfs, v, "ok", b"fine");
    assert!(lookup(&vfs, v, "ok").is_ok());
}
