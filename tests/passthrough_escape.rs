//! Confinement: nothing a guest sends reaches outside the shared directory.
//!
//! Layout: `outer/canary` and `outer/victim/f` hold secrets; `outer/share` is served. Every
//! test ends by checking the canary's content and its (deliberately ancient) atime.

#[allow(dead_code, clippy::unnecessary_cast, clippy::wrong_self_convention)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use std::ffi::CString;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use boxfs::passthrough::PassthroughFs;
use boxfs::{FileSystem, ROOT_ID};
use harness::*;

const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-SHARE";
const OLD_ATIME: i64 = 946_684_800; // 2000-01-01

struct World {
    _outer: tempfile::TempDir,
    outer: PathBuf,
    share: PathBuf,
    fs: Arc<PassthroughFs>,
}

fn set_old_atime(p: &Path) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let times = [
        libc::timespec {
            tv_sec: OLD_ATIME as _,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    // SAFETY: valid path and two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0);
}

fn world(cache: usize) -> World {
    let outer = passthrough_common::tempdir();
    let o = outer.path().to_path_buf();
    std::fs::write(o.join("canary"), SECRET).expect("canary");
    std::fs::create_dir(o.join("victim")).expect("victim");
    std::fs::write(o.join("victim/f"), SECRET).expect("victim/f");
    std::fs::write(o.join("victim/marker"), b"").expect("victim/marker");
    let share = o.join("share");
    std::fs::create_dir(&share).expect("share");
    std::fs::create_dir(share.join("d")).expect("d");
    std::fs::write(share.join("d/f"), b"inside").expect("d/f");
    // Host-made symlinks pointing out of the share, including magic links.
    symlink("../canary", share.join("rel_out")).expect("symlink");
    symlink(o.join("canary"), share.join("abs_out")).expect("symlink");
    symlink(o.join("victim"), share.join("dir_out")).expect("symlink");
    symlink("/proc/self/root", share.join("magic_root")).expect("symlink");
    symlink("/proc/self/cwd", share.join("magic_cwd")).expect("symlink");
    set_old_atime(&o.join("canary"));
    set_old_atime(&o.join("victim/f"));
    let fs = PassthroughFs::builder(&share)
        .fd_cache_size(cache)
        .build()
        .expect("build");
    World {
        _outer: outer,
        outer: o,
        share,
        fs: Arc::new(fs),
    }
}

impl World {
    fn h(&self) -> H<'_> {
        H {
            fs: &*self.fs,
            ctx: boxfs::Context::new(),
        }
    }

    /// The canaries are untouched: same content, never read (atime), never replaced.
    fn check_canaries(&self) {
        for p in [self.outer.join("canary"), self.outer.join("victim/f")] {
            let md = std::fs::symlink_metadata(&p).expect("canary still exists");
            assert_eq!(md.atime(), OLD_ATIME, "{} was read", p.display());
            assert!(md.file_type().is_file());
            // Reading it here updates atime, so this is the last check.
            assert_eq!(std::fs::read(&p).expect("read canary"), SECRET);
        }
        let outer_names: Vec<_> = std::fs::read_dir(&self.outer)
            .expect("outer")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            outer_names.len(),
            3,
            "nothing created next to the share: {outer_names:?}"
        );
    }
}

fn never_secret(data: &[u8]) {
    assert!(
        !data.windows(SECRET.len()).any(|w| w == SECRET),
        "secret leaked"
    );
}

#[test]
fn crafted_names_are_refused_by_every_operation() {
    let w = world(64);
    let h = w.h();
    let f = h.ino(ROOT, "d");
    let file = h.ino(f, "f");
    for bad in [
        "..",
        "../canary",
        "/",
        "/etc/passwd",
        "a/../../canary",
        ".",
        "",
        "d/../../canary",
    ] {
        assert_ne!(errno(h.lookup(ROOT, bad)), 0, "lookup {bad:?}");
        assert_ne!(errno(h.lookup(f, bad)), 0, "lookup in d {bad:?}");
        assert_ne!(errno(h.create(ROOT, bad, 0o644)), 0, "create {bad:?}");
        assert_ne!(errno(h.mkdir(ROOT, bad, 0o755)), 0, "mkdir {bad:?}");
        assert_ne!(
            errno(h.mknod(ROOT, bad, libc::S_IFIFO | 0o644, 0)),
            0,
            "mknod {bad:?}"
        );
        assert_ne!(errno(h.symlink("x", ROOT, bad)), 0, "symlink {bad:?}");
        assert_ne!(errno(h.link(file, ROOT, bad)), 0, "link {bad:?}");
        assert_ne!(
            errno(h.rename(f, "f", ROOT, bad, 0)),
            0,
            "rename to {bad:?}"
        );
        assert_ne!(
            errno(h.rename(ROOT, bad, ROOT, "x", 0)),
            0,
            "rename from {bad:?}"
        );
        assert_ne!(errno(h.unlink(ROOT, bad)), 0, "unlink {bad:?}");
        assert_ne!(errno(h.rmdir(ROOT, bad)), 0, "rmdir {bad:?}");
    }
    assert_eq!(h.get(file), b"inside");
    w.check_canaries();
}

#[test]
fn host_symlinks_out_of_the_share_are_never_followed() {
    let w = world(64);
    let h = w.h();
    for name in ["rel_out", "abs_out", "dir_out", "magic_root", "magic_cwd"] {
        let e = h
            .lookup(ROOT, name)
            .expect("a symlink is visible as a symlink");
        assert_eq!(mode_of(&e.attr) & libc::S_IFMT, libc::S_IFLNK, "{name}");
        assert_ne!(
            e.attr.st_size as usize,
            SECRET.len(),
            "{name}: stat of the target"
        );
        // Opening, listing, reading through or writing to it all fail.
        assert_ne!(errno(h.open(e.inode, libc::O_RDONLY)), 0, "{name} open");
        assert_ne!(
            errno(h.open(e.inode, libc::O_RDWR | libc::O_TRUNC)),
            0,
            "{name} open trunc"
        );
        assert_ne!(errno(w.fs.opendir(&h.ctx, e.inode, 0)), 0, "{name} opendir");
        for child in ["canary", "f", "etc", "victim", "share"] {
            assert_ne!(errno(h.lookup(e.inode, child)), 0, "{name}/{child}");
            assert_ne!(
                errno(h.create(e.inode, child, 0o644)),
                0,
                "{name}/{child} create"
            );
            assert_ne!(
                errno(h.mkdir(e.inode, child, 0o755)),
                0,
                "{name}/{child} mkdir"
            );
        }
        assert_ne!(errno(h.truncate(e.inode, 0)), 0, "{name} truncate");
        assert_ne!(
            errno(w.fs.setxattr(&h.ctx, e.inode, &c("user.x"), b"1", 0)),
            0,
            "{name} setxattr"
        );
        // chmod/chown of a host symlink are refused rather than applied to the target.
        assert_ne!(errno(h.chown(e.inode, 1, 1)), 0, "{name} chown");
        let target = w.fs.readlink(&h.ctx, e.inode).expect("readlink");
        never_secret(&target);
        // utimens on the link itself, never the target.
        h.setattr(
            e.inode,
            |st| st.st_mtime = 12345,
            boxfs::SetattrValid::MTIME,
        )
        .expect("utimens of the link");
        // Hard-linking the symlink keeps a symlink (never the target).
        let l = h.link(e.inode, ROOT, &format!("{name}.hl")).expect("link");
        assert_eq!(mode_of(&l.attr) & libc::S_IFMT, libc::S_IFLNK);
    }
    // A guest-made symlink with an escaping target is only text.
    let s = h
        .symlink("../../canary", ROOT, "guest_link")
        .expect("symlink");
    assert_ne!(errno(h.open(s.inode, libc::O_RDONLY)), 0);
    assert_eq!(
        w.fs.readlink(&h.ctx, s.inode).expect("readlink"),
        b"../../canary"
    );
    // Listing the share never lists the outer directory.
    let names: Vec<_> = h.list(ROOT, 1 << 16).into_iter().map(|l| l.name).collect();
    assert!(!names.iter().any(|n| n == b"canary" || n == b"victim"));
    w.check_canaries();
}

#[test]
fn directory_swapped_for_symlink_while_walking() {
    // A tiny descriptor cache forces re-resolution by name while the host races.
    let w = world(16);
    let stop = Arc::new(AtomicBool::new(false));
    let share = w.share.clone();
    let victim = w.outer.join("victim");
    let swapper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::rename(share.join("d"), share.join("d.real"));
                let _ = symlink(&victim, share.join("d"));
                std::thread::yield_now();
                let _ = std::fs::remove_file(share.join("d"));
                let _ = std::fs::rename(share.join("d.real"), share.join("d"));
                std::thread::sleep(std::time::Duration::from_micros(200));
                n += 1;
            }
            n
        })
    };
    let h = w.h();
    // Filler inodes keep evicting `d` from the descriptor cache.
    let fillers: Vec<u64> = (0..40)
        .map(|i| h.put(ROOT, &format!("fill{i}"), b"x"))
        .collect();
    let mut inside_reads = 0;
    for round in 0..3000 {
        for &f in fillers.iter().skip(round % 20).take(20) {
            let _ = h.try_getattr(f);
        }
        let Ok(d) = h.lookup(ROOT, "d") else { continue };
        let _ = h.try_getattr(d.inode);
        if let Ok(f) = h.lookup(d.inode, "f") {
            if let Ok(fh) = h.open(f.inode, libc::O_RDWR) {
                if let Ok(data) = h.read(f.inode, fh, 0, 64) {
                    never_secret(&data);
                    inside_reads += 1;
                }
                let _ = h.write(f.inode, fh, 0, b"inside");
                h.release(f.inode, fh);
            }
            let _ = h.truncate(f.inode, 6);
            let _ = h.chown(f.inode, 7, 7);
            let _ = w.fs.setxattr(&h.ctx, f.inode, &c("user.t"), b"v", 0);
            let _ = h.create(d.inode, &format!("new{round}"), 0o644);
            let _ = h.unlink(d.inode, "gone");
            h.forget(f.inode, 1);
        }
        if let Ok((Some(dh), _)) = w.fs.opendir(&h.ctx, d.inode, 0) {
            let _ = w.fs.readdir(&h.ctx, d.inode, dh, 4096, 0, &mut |e| {
                assert_ne!(e.name, b"marker", "listed the victim directory");
                Ok(1)
            });
            let _ = w.fs.releasedir(&h.ctx, d.inode, 0, dh);
        }
        h.forget(d.inode, 1);
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    assert!(swaps > 10, "the race actually ran ({swaps} swaps)");
    assert!(inside_reads > 0);
    // Nothing was created in the victim directory.
    let mut victim_names: Vec<_> = std::fs::read_dir(w.outer.join("victim"))
        .expect("victim")
        .map(|e| e.expect("entry").file_name())
        .collect();
    victim_names.sort();
    assert_eq!(victim_names, ["f", "marker"]);
    // The canary in the victim dir has no xattr set by the guest.
    w.check_canaries();
}

#[test]
fn magic_links_in_the_share_do_not_resolve() {
    let w = world(64);
    let h = w.h();
    let root_attr = h.getattr(ROOT_ID);
    for name in ["magic_root", "magic_cwd"] {
        let e = h.lookup(ROOT, name).expect("lookup");
        assert_eq!(mode_of(&e.attr) & libc::S_IFMT, libc::S_IFLNK);
        assert_ne!(e.inode, ROOT_ID);
        assert_ne!(e.attr.st_ino, root_attr.st_ino);
        assert_eq!(errno(h.lookup(e.inode, "etc")), libc::ENOTDIR);
    }
    w.check_canaries();
}
