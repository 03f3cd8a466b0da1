//! `SingleFileFs::destroy` ends the guest session like an unmount: every handle the guest held
//! is released (its descriptor closed), and the mount serves the next session.
//!
//! One test in its own binary: it counts this process's open descriptors.
#![cfg(target_os = "linux")]

use boxfs::filemount::{FileMount, FileMountOptions, FILE_INODE};
use boxfs::zero_copy::MemWriter;
use boxfs::{Context, FsOptions, ROOT_ID};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("fds").count()
}

/// Regression (issue 14, section 4): destroy forgot the guest's handles without releasing
/// them, so every reconnect leaked their descriptors in PassthroughFs.
#[test]
fn hundred_sessions_leave_no_handle_or_descriptor_behind() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.conf");
    std::fs::write(&file, "content\n").unwrap();
    let opts = FileMountOptions::new().runtime_dir(dir.path().join("run"));
    let m = FileMount::stage(&file, "/etc/app.conf", &opts).expect("stage");
    let fs = m.fs();
    let single = m.single_file_fs().clone();
    let ctx = Context::new();
    let mut after_first = None;
    for cycle in 0..100 {
        fs.init(FsOptions::empty()).expect("init");
        let e = fs.lookup(&ctx, ROOT_ID, c"app.conf").expect("lookup");
        assert_eq!(e.inode, FILE_INODE);
        for flags in [libc::O_RDONLY, libc::O_RDWR, libc::O_WRONLY] {
            let (h, _, _) = fs.open(&ctx, FILE_INODE, flags as u32, 0).expect("open");
            if flags == libc::O_RDONLY {
                let mut w = MemWriter::new(64);
                fs.read(&ctx, FILE_INODE, h.expect("handle"), &mut w, 64, 0, None, 0)
                    .expect("read");
                assert_eq!(w.into_inner(), b"content\n");
            }
        }
        // The host replaces the file while the guest holds handles on the old one: they
        // keep the old file (until destroy releases them), the mount follows the new one.
        let tmp = dir.path().join("edit.tmp");
        std::fs::write(&tmp, "content\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        fs.getattr(&ctx, FILE_INODE, None).expect("getattr");
        let (dh, _) = fs.opendir(&ctx, ROOT_ID, 0).expect("opendir");
        assert!(dh.is_some());
        assert_eq!(single.handle_count(), 3);
        fs.destroy();
        assert_eq!(single.handle_count(), 0, "cycle {cycle}");
        let now = open_fds();
        match after_first {
            None => after_first = Some(now),
            Some(first) => assert_eq!(now, first, "cycle {cycle}: descriptors leaked"),
        }
    }
    // The next session works.
    fs.init(FsOptions::empty()).expect("init");
    fs.lookup(&ctx, ROOT_ID, c"app.conf").expect("lookup");
    let (h, _, _) = fs
        .open(&ctx, FILE_INODE, libc::O_RDONLY as u32, 0)
        .expect("open");
    fs.release(&ctx, FILE_INODE, 0, h.expect("handle"), false, false, None)
        .expect("release");
}
