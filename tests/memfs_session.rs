//! MemFs protocol strictness (handles and node ids are checked the way PassthroughFs checks
//! them) and session teardown (`destroy` releases what the guest held, as an unmount does).

use std::ffi::CString;
use std::io;

use boxfs::memfs::MemFs;
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{
    stat64, Context, CreateIn, DirEntry, Entry, FileSystem, FsOptions, SetattrValid, ROOT_ID,
};

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

fn rw() -> CreateIn {
    CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    }
}

fn fs() -> MemFs {
    MemFs::builder()
        .capacity(1 << 20)
        .max_inodes(1000)
        .build()
        .expect("build")
}

fn zero_stat() -> stat64 {
    // SAFETY: stat64 is a plain C struct; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Creates `name` in the root: (inode, handle), one lookup held.
fn create(fs: &MemFs, name: &str) -> (u64, u64) {
    let (e, fh, _, _) = fs
        .create(&Context::new(), ROOT_ID, &c(name), rw())
        .expect("create");
    (e.inode, fh.expect("handle"))
}

fn write(fs: &MemFs, ino: u64, fh: u64, data: &[u8]) -> io::Result<usize> {
    let mut r = MemReader::copied(data);
    fs.write(
        &Context::new(),
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
}

fn read(fs: &MemFs, ino: u64, fh: u64) -> io::Result<Vec<u8>> {
    let mut w = MemWriter::new(64);
    fs.read(&Context::new(), ino, fh, &mut w, 64, 0, None, 0)?;
    Ok(w.into_inner())
}

fn readdirplus(fs: &MemFs, ino: u64, fh: u64) -> io::Result<usize> {
    let mut n = 0;
    fs.readdirplus(
        &Context::new(),
        ino,
        fh,
        4096,
        0,
        &mut |_d: DirEntry, e: Entry| {
            n += 1;
            if e.inode != 0 {
                fs.forget(&Context::new(), e.inode, 1);
            }
            Ok(1)
        },
    )?;
    Ok(n)
}

fn readdir(fs: &MemFs, ino: u64, fh: u64) -> io::Result<usize> {
    let mut n = 0;
    fs.readdir(&Context::new(), ino, fh, 4096, 0, &mut |_d: DirEntry| {
        n += 1;
        Ok(1)
    })?;
    Ok(n)
}

#[test]
fn readdir_needs_a_directory_handle_opened_on_that_directory() {
    let fs = fs();
    let ctx = Context::new();
    let d = fs
        .mkdir(&ctx, ROOT_ID, &c("d"), 0o755, 0)
        .expect("mkdir")
        .inode;
    let (f, ffh) = create(&fs, "f");
    // Never opened: no handle at all, or a made-up number.
    assert_eq!(errno(readdirplus(&fs, ROOT_ID, 0)), Some(libc::EBADF));
    assert_eq!(errno(readdirplus(&fs, ROOT_ID, 12345)), Some(libc::EBADF));
    assert_eq!(errno(readdir(&fs, ROOT_ID, 0)), Some(libc::EBADF));
    // A file handle is not a directory handle.
    assert_eq!(errno(readdirplus(&fs, f, ffh)), Some(libc::EBADF));
    let (dh, _) = fs.opendir(&ctx, ROOT_ID, 0).expect("opendir");
    let dh = dh.expect("MemFs returns directory handles");
    // The handle of another directory.
    assert_eq!(errno(readdirplus(&fs, d, dh)), Some(libc::EBADF));
    assert_eq!(errno(fs.fsyncdir(&ctx, d, false, dh)), Some(libc::EBADF));
    assert_eq!(errno(fs.releasedir(&ctx, d, 0, dh)), Some(libc::EBADF));
    // The right one works: ., .., d, f.
    assert_eq!(readdirplus(&fs, ROOT_ID, dh).expect("readdirplus"), 4);
    assert_eq!(readdir(&fs, ROOT_ID, dh).expect("readdir"), 4);
    fs.fsyncdir(&ctx, ROOT_ID, false, dh).expect("fsyncdir");
    assert_eq!(fs.usage().open_handles, 2);
    fs.releasedir(&ctx, ROOT_ID, 0, dh).expect("releasedir");
    // Released: gone.
    assert_eq!(errno(readdirplus(&fs, ROOT_ID, dh)), Some(libc::EBADF));
    assert_eq!(
        errno(fs.releasedir(&ctx, ROOT_ID, 0, dh)),
        Some(libc::EBADF)
    );
    assert_eq!(fs.usage().open_handles, 1);
}

#[test]
fn statfs_of_an_unknown_node_id_fails_like_passthrough() {
    let fs = fs();
    let ctx = Context::new();
    fs.statfs(&ctx, ROOT_ID).expect("statfs of the root");
    assert_eq!(errno(fs.statfs(&ctx, 0)), Some(libc::EBADF));
    assert_eq!(errno(fs.statfs(&ctx, 987_654)), Some(libc::EBADF));
    // A forgotten, unlinked inode is gone too.
    let (f, fh) = create(&fs, "f");
    fs.statfs(&ctx, f).expect("statfs of a known file");
    fs.release(&ctx, f, 0, fh, false, false, None)
        .expect("release");
    fs.unlink(&ctx, ROOT_ID, &c("f")).expect("unlink");
    fs.forget(&ctx, f, 1);
    assert_eq!(errno(fs.statfs(&ctx, f)), Some(libc::EBADF));
}

#[test]
fn file_handles_must_belong_to_the_inode_of_the_request() {
    let fs = fs();
    let ctx = Context::new();
    let (a, afh) = create(&fs, "a");
    let (b, bfh) = create(&fs, "b");
    write(&fs, a, afh, b"secret-a").expect("write a");
    // b's handle with a's inode, and the reverse: refused, nothing read or written.
    assert_eq!(errno(read(&fs, a, bfh)), Some(libc::EBADF));
    assert_eq!(errno(write(&fs, b, afh, b"xx")), Some(libc::EBADF));
    let mut st = zero_stat();
    st.st_size = 1;
    assert_eq!(
        errno(fs.setattr(&ctx, b, st, Some(afh), SetattrValid::SIZE)),
        Some(libc::EBADF)
    );
    assert_eq!(errno(fs.getattr(&ctx, b, Some(afh))), Some(libc::EBADF));
    assert_eq!(errno(fs.flush(&ctx, b, afh, 0)), Some(libc::EBADF));
    assert_eq!(errno(fs.fsync(&ctx, b, false, afh)), Some(libc::EBADF));
    assert_eq!(
        errno(fs.fallocate(&ctx, b, afh, 0, 0, 4096)),
        Some(libc::EBADF)
    );
    assert_eq!(errno(fs.lseek(&ctx, b, afh, 0, 0)), Some(libc::EBADF));
    assert_eq!(
        errno(fs.release(&ctx, b, 0, afh, false, false, None)),
        Some(libc::EBADF)
    );
    // A directory handle is no file handle.
    let (dh, _) = fs.opendir(&ctx, ROOT_ID, 0).expect("opendir");
    let dh = dh.expect("handle");
    assert_eq!(errno(read(&fs, ROOT_ID, dh)), Some(libc::EBADF));
    assert_eq!(
        errno(fs.release(&ctx, ROOT_ID, 0, dh, false, false, None)),
        Some(libc::EBADF)
    );
    // Nothing changed: a is intact, b empty, every handle still works.
    assert_eq!(read(&fs, a, afh).expect("read a"), b"secret-a");
    assert_eq!(read(&fs, b, bfh).expect("read b"), b"");
    assert_eq!(fs.getattr(&ctx, a, None).expect("getattr").0.st_size, 8);
    fs.setattr(&ctx, a, st, Some(afh), SetattrValid::SIZE)
        .expect("ftruncate with its own handle");
    assert_eq!(read(&fs, a, afh).expect("read a"), b"s");
    fs.release(&ctx, a, 0, afh, false, false, None)
        .expect("release a");
    fs.release(&ctx, b, 0, bfh, false, false, None)
        .expect("release b");
    fs.releasedir(&ctx, ROOT_ID, 0, dh).expect("releasedir");
    assert_eq!(fs.usage().open_handles, 0);
}

/// What is linked: the usage of a fresh filesystem with the same files.
fn linked_usage(names: &[String], data: &[u8]) -> (u64, u64) {
    let fs = fs();
    for n in names {
        let (ino, fh) = create(&fs, n);
        write(&fs, ino, fh, data).expect("write");
        fs.release(&Context::new(), ino, 0, fh, false, false, None)
            .expect("release");
    }
    (fs.usage().bytes_used, fs.usage().inodes_used)
}

#[test]
fn destroy_releases_the_session_and_keeps_the_tree() {
    let fs = fs();
    let ctx = Context::new();
    let data = vec![7u8; 3000];
    let kept: Vec<String> = (0..4).map(|i| format!("kept{i}")).collect();
    let linked = linked_usage(&kept, &data);
    let mut baseline = None;
    for cycle in 0..100 {
        fs.init(FsOptions::empty()).expect("init");
        // A session: files written and left open, some unlinked while open, some looked up
        // and never forgotten, a directory left open.
        let mut inos = Vec::new();
        for name in &kept {
            let (ino, fh) = match fs.lookup(&ctx, ROOT_ID, &c(name)) {
                Ok(e) => {
                    let (fh, _, _) = fs
                        .open(&ctx, e.inode, libc::O_RDWR as u32, 0)
                        .expect("open");
                    (e.inode, fh.expect("handle"))
                }
                Err(_) => create(&fs, name),
            };
            write(&fs, ino, fh, &data).expect("write");
            inos.push(ino);
        }
        for i in 0..3 {
            let name = format!("gone{cycle}-{i}");
            let (ino, fh) = create(&fs, &name);
            write(&fs, ino, fh, &data).expect("write");
            fs.unlink(&ctx, ROOT_ID, &c(&name))
                .expect("unlink while open");
            // Still readable through the open handle.
            assert_eq!(read(&fs, ino, fh).expect("read").len(), 64);
        }
        let held = format!("held{cycle}");
        let (ino, fh) = create(&fs, &held);
        fs.release(&ctx, ino, 0, fh, false, false, None)
            .expect("release");
        fs.unlink(&ctx, ROOT_ID, &c(&held)).expect("unlink held");
        let (dh, _) = fs.opendir(&ctx, ROOT_ID, 0).expect("opendir");
        assert!(fs.usage().open_handles >= 8);

        fs.destroy();

        let u = fs.usage();
        assert_eq!(u.open_handles, 0, "cycle {cycle}: every handle released");
        assert_eq!(
            (u.bytes_used, u.inodes_used),
            linked,
            "cycle {cycle}: usage is exactly what is linked"
        );
        assert_eq!(
            fs.inode_count() as u64,
            linked.1,
            "cycle {cycle}: held inodes"
        );
        assert_eq!(errno(read(&fs, inos[0], 1)), Some(libc::EBADF));
        assert_eq!(
            errno(readdirplus(&fs, ROOT_ID, dh.unwrap_or(0))),
            Some(libc::EBADF)
        );
        // The tree is intact.
        for name in &kept {
            let e = fs.lookup(&ctx, ROOT_ID, &c(name)).expect("kept file");
            assert_eq!(e.attr.st_size as usize, data.len());
            fs.forget(&ctx, e.inode, 1);
        }
        let now = (u.bytes_used, u.inodes_used, fs.inode_count());
        assert_eq!(
            *baseline.get_or_insert(now),
            now,
            "cycle {cycle}: no growth"
        );
    }
}
