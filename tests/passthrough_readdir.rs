//! Directory listings: guest types, hidden internal files, resumable offsets, `..` of the root.

#[allow(dead_code)]
#[path = "conformance/harness.rs"]
mod harness;
mod passthrough_common;

use boxfs::passthrough::{PassthroughFs, INTERNAL_PREFIX};
use boxfs::ROOT_ID;
use harness::*;

#[test]
fn listings_show_guest_types_and_hide_internal_files() {
    let dir = passthrough_common::tempdir();
    let internal = format!("{}scratch", String::from_utf8_lossy(INTERNAL_PREFIX));
    std::fs::write(dir.path().join(&internal), b"").expect("write");
    let fs = PassthroughFs::builder(dir.path()).build().expect("build");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    h.put(ROOT, "file", b"x");
    h.mkdir(ROOT, "dir", 0o755).expect("mkdir");
    h.symlink("target", ROOT, "link").expect("symlink");
    h.mknod(ROOT, "fifo", libc::S_IFIFO | 0o644, 0)
        .expect("mknod");
    h.mknod(ROOT, "chr", libc::S_IFCHR | 0o644, 0x0101)
        .expect("mknod");
    let listed = h.list(ROOT, 4096);
    let find = |n: &str| {
        listed
            .iter()
            .find(|l| l.name == n.as_bytes())
            .unwrap_or_else(|| panic!("{n} listed"))
            .clone()
    };
    assert_eq!(find("file").dtype, libc::DT_REG as u32);
    assert_eq!(find("dir").dtype, libc::DT_DIR as u32);
    assert_eq!(find("link").dtype, libc::DT_LNK as u32);
    assert_eq!(find("fifo").dtype, libc::DT_FIFO as u32);
    assert_eq!(find("chr").dtype, libc::DT_CHR as u32);
    assert_eq!(find(".").ino, ROOT_ID);
    assert_eq!(find("..").ino, ROOT_ID, "`..` of the root stays inside");
    assert_eq!(find("file").ino, h.ino(ROOT, "file"));
    assert!(!listed.iter().any(|l| l.name.starts_with(INTERNAL_PREFIX)));
    assert_eq!(errno(h.lookup(ROOT, &internal)), libc::ENOENT);
    assert_eq!(errno(h.create(ROOT, &internal, 0o644)), libc::EPERM);
    // readdirplus agrees and hides it too.
    let plus = h.list_plus(ROOT, 4096);
    assert_eq!(plus.len(), listed.len());
    for (l, e) in &plus {
        if l.name != b"." && l.name != b".." {
            assert_eq!(e.inode, l.ino);
            assert_eq!(e.attr.st_ino, l.ino);
        }
    }
}

#[test]
fn every_offset_resumes_exactly() {
    let dir = passthrough_common::tempdir();
    for i in 0..300 {
        std::fs::write(dir.path().join(format!("e{i:03}")), b"").expect("write");
    }
    let fs = PassthroughFs::builder(dir.path()).build().expect("build");
    let h = H {
        fs: &fs,
        ctx: boxfs::Context::new(),
    };
    let all = h.list(ROOT, 1 << 20);
    assert_eq!(all.len(), 302);
    for (i, l) in all.iter().enumerate().step_by(17) {
        let (rest, _) = h.list_from(ROOT, 1 << 20, l.offset, 1);
        assert_eq!(rest, all[i + 1..].to_vec(), "resume after entry {i}");
    }
    // Small buffers: one entry per call still visits everything once.
    let (tiny, _) = h.list_from(ROOT, 40, 0, 10_000);
    assert_eq!(tiny, all);
}
