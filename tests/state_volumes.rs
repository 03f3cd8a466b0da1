//! VolumeFs device state: the mount table and every volume's state carried to a destination
//! with the same table; a different table is refused before anything changes.

mod state_common;

use std::sync::Arc;

use boxfs::memfs::MemFs;
use boxfs::state::StateErrorKind;
use boxfs::volumes::{VirtualFile, VolumeFs, VolumeOptions};
use boxfs::{DynFileSystem, ROOT_ID};
use state_common::*;

fn mem() -> Arc<dyn DynFileSystem> {
    Arc::new(MemFs::builder().capacity(16 << 20).build().expect("memfs"))
}

/// A root MemFs with a MemFs at /tmp and a virtual file at /init.
fn volumes(paths: &[&str]) -> VolumeFs {
    let v = VolumeFs::new(mem());
    for p in paths {
        if *p == "/init" {
            let f = Arc::new(VirtualFile::from_bytes(b"#!/bin/sh\n".to_vec()).mode(0o755));
            v.attach(p, f, VolumeOptions::new()).expect("attach file");
        } else {
            v.attach(p, mem(), VolumeOptions::new()).expect("attach");
        }
    }
    v
}

#[test]
fn volumes_and_their_content_carry_over() {
    let src = volumes(&["/tmp", "/init"]);
    let tmp = lookup(&src, ROOT_ID, "tmp").expect("lookup tmp");
    let (f, fh) = create(&src, tmp, "scratch");
    write_at(&src, f, fh, 0, b"volume data").expect("write");
    let (r, rfh) = create(&src, ROOT_ID, "in-root");
    write_at(&src, r, rfh, 0, b"root data").expect("write");
    let init = lookup(&src, ROOT_ID, "init").expect("lookup init");
    let state = save(&src);

    let dst = volumes(&["/tmp", "/init"]);
    dst.load_state(&mut &state[..]).expect("load_state");
    assert_eq!(dump(&dst), dump(&src));
    for ino in [ROOT_ID, tmp, f, r, init] {
        assert_eq!(
            attrs(&dst, ino).ok(),
            attrs(&src, ino).ok(),
            "inode {ino:#x}"
        );
    }
    assert_eq!(
        read_at(&dst, f, fh, 0, 64).ok(),
        Some(b"volume data".to_vec())
    );
    write_at(&dst, f, fh, 0, b"VOLUME").expect("write through the handle");
    assert_eq!(
        read_at(&dst, f, fh, 0, 64).ok(),
        Some(b"VOLUME data".to_vec())
    );
    assert_eq!(
        read_at(&dst, r, rfh, 0, 64).ok(),
        Some(b"root data".to_vec())
    );
    assert_eq!(lookup(&dst, ROOT_ID, "tmp").ok(), Some(tmp));
    let open: Vec<u64> = dst.volumes().iter().map(|v| v.open_handles).collect();
    let want: Vec<u64> = src.volumes().iter().map(|v| v.open_handles).collect();
    assert_eq!(open, want);
}

#[test]
fn a_different_table_is_refused_and_changes_nothing() {
    let src = volumes(&["/tmp", "/init"]);
    let tmp = lookup(&src, ROOT_ID, "tmp").expect("lookup tmp");
    create(&src, tmp, "scratch");
    let state = save(&src);
    for paths in [
        &["/tmp"][..],
        &["/scratch", "/init"][..],
        &["/tmp", "/init", "/x"][..],
    ] {
        let dst = volumes(paths);
        let before = dump(&dst);
        assert_eq!(
            state_kind(dst.load_state(&mut &state[..])),
            Some(StateErrorKind::Mismatch),
            "{paths:?}"
        );
        assert_eq!(dump(&dst), before);
    }
}
