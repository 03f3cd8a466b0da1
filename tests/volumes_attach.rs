//! Attach and detach while other threads send requests, and the session cycle (destroy, INIT).

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use boxfs::memfs::MemFs;
use boxfs::volumes::{DetachMode, VolumeFs, VolumeOptions};
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{Context, CreateIn, DynFileSystem, FileSystem, FsOptions, ROOT_ID};

fn c(s: &str) -> CString {
    CString::new(s).expect("name")
}

/// A volume holding one file whose content names the volume.
fn volume(tag: &[u8]) -> Arc<dyn DynFileSystem> {
    let fs = MemFs::builder().build().expect("MemFs builds");
    let ctx = Context::new();
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = fs.create(&ctx, ROOT_ID, &c("id"), args).expect("create");
    let mut r = MemReader::copied(tag);
    fs.write(
        &ctx,
        e.inode,
        fh.unwrap_or(0),
        &mut r,
        tag.len() as u32,
        0,
        None,
        false,
        0,
        0,
    )
    .expect("write");
    fs.release(&ctx, e.inode, 0, fh.unwrap_or(0), false, false, None)
        .expect("release");
    Arc::new(fs)
}

#[test]
fn attach_and_detach_under_concurrent_requests() {
    let vfs = Arc::new(VolumeFs::new(volume(b"root")));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(5));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (vfs, stop, served, start) = (vfs.clone(), stop.clone(), served.clone(), start.clone());
        workers.push(std::thread::spawn(move || {
            let ctx = Context::new();
            start.wait();
            // Keep cached ids across generations on purpose: they must answer errors or the
            // data of the volume they were handed out by, never another's.
            let mut cached: Vec<(u64, Vec<u8>)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (ino, want) in &cached {
                    if let Ok((fh, _, _)) = vfs.open(&ctx, *ino, libc::O_RDONLY as u32, 0) {
                        let fh = fh.unwrap_or(0);
                        let mut w = MemWriter::new(64);
                        if vfs.read(&ctx, *ino, fh, &mut w, 64, 0, None, 0).is_ok() {
                            assert_eq!(&w.into_inner(), want, "a cached id read another volume");
                        }
                        let _ = vfs.release(&ctx, *ino, 0, fh, false, false, None);
                    }
                }
                let Ok(v) = vfs.lookup(&ctx, ROOT_ID, &c("v")) else {
                    continue;
                };
                let Ok(f) = vfs.lookup(&ctx, v.inode, &c("id")) else {
                    continue;
                };
                if let Ok((fh, _, _)) = vfs.open(&ctx, f.inode, libc::O_RDONLY as u32, 0) {
                    let fh = fh.unwrap_or(0);
                    let mut w = MemWriter::new(64);
                    if vfs.read(&ctx, f.inode, fh, &mut w, 64, 0, None, 0).is_ok() {
                        let got = w.into_inner();
                        assert!(got.starts_with(b"gen-"), "{got:?}");
                        if cached.len() < 32 {
                            cached.push((f.inode, got));
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = vfs.release(&ctx, f.inode, 0, fh, false, false, None);
                }
                if let Ok((dh, _)) = vfs.opendir(&ctx, ROOT_ID, 0) {
                    let _ = vfs.readdir(&ctx, ROOT_ID, dh.unwrap_or(0), 4096, 0, &mut |_| Ok(1));
                    let _ = vfs.releasedir(&ctx, ROOT_ID, 0, dh.unwrap_or(0));
                }
                vfs.forget(&ctx, f.inode, 1);
            }
        }));
    }
    start.wait();
    let mut busy = 0;
    for i in 0..300u32 {
        let tag = format!("gen-{i}");
        vfs.attach("/v", volume(tag.as_bytes()), VolumeOptions::new())
            .expect("attach");
        std::thread::yield_now();
        let mode = if i % 2 == 0 {
            DetachMode::Force
        } else {
            DetachMode::Normal
        };
        loop {
            match vfs.detach("/v", mode) {
                Ok(()) => break,
                Err(boxfs::volumes::VolumeError::Busy { .. }) => {
                    busy += 1;
                    std::thread::yield_now();
                }
                Err(e) => panic!("detach: {e}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker panicked");
    }
    assert!(vfs.volumes().is_empty());
    let _ = busy;
    // Still fully usable.
    vfs.attach("/v", volume(b"gen-last"), VolumeOptions::new())
        .expect("attach");
    let ctx = Context::new();
    let v = vfs.lookup(&ctx, ROOT_ID, &c("v")).expect("v");
    assert!(vfs.lookup(&ctx, v.inode, &c("id")).is_ok());
}

#[test]
fn a_new_session_starts_clean() {
    let vfs = VolumeFs::new(volume(b"root"));
    vfs.attach("/v", volume(b"vol"), VolumeOptions::new())
        .expect("attach");
    let ctx = Context::new();
    vfs.init(FsOptions::empty()).expect("init");
    let v = vfs.lookup(&ctx, ROOT_ID, &c("v")).expect("v").inode;
    let f = vfs.lookup(&ctx, v, &c("id")).expect("id").inode;
    let (fh, _, _) = vfs.open(&ctx, f, 0, 0).expect("open");
    vfs.destroy();
    // The old session's ids and handles are stale; the volume is served again under new ids.
    assert_eq!(
        vfs.getattr(&ctx, f, None).unwrap_err().raw_os_error(),
        Some(libc::ESTALE)
    );
    vfs.init(FsOptions::empty()).expect("init again");
    let v2 = vfs.lookup(&ctx, ROOT_ID, &c("v")).expect("v").inode;
    assert_ne!(v2, v);
    let f2 = vfs.lookup(&ctx, v2, &c("id")).expect("id").inode;
    assert_eq!(vfs.getattr(&ctx, f2, None).expect("getattr").0.st_size, 3);
    let mut w = MemWriter::new(8);
    assert!(vfs
        .read(&ctx, f, fh.unwrap_or(0), &mut w, 8, 0, None, 0)
        .is_err());
    // Nothing is open in the new session: a normal detach succeeds.
    vfs.detach("/v", DetachMode::Normal).expect("detach");
}
