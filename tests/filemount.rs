//! Single-file volumes (`boxfs::filemount`): staging, confinement to the one file, write-through,
//! virtual chmod/chown, cleanup on drop, read-only, EXDEV handling and host atomic replace.
#![cfg(target_os = "linux")]

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boxfs::filemount::{
    FileMount, FileMountOptions, FileMounts, Placement, Step, FILE_INODE, STAGING_BASE,
};
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{stat64, Context, DynFileSystem, SetattrValid, ROOT_ID};

fn ctx() -> Context {
    Context::new()
}

fn cs(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(-1)
}

/// Opens the file through the filesystem and reads it whole.
fn read_all(fs: &Arc<dyn DynFileSystem>) -> Vec<u8> {
    let e = fs.lookup(&ctx(), ROOT_ID, &name_of(fs)).expect("lookup");
    let (h, _, _) = fs
        .open(&ctx(), e.inode, libc::O_RDONLY as u32, 0)
        .expect("open");
    let h = h.expect("handle");
    let data = read_handle(fs, h);
    fs.release(&ctx(), e.inode, 0, h, false, false, None)
        .expect("release");
    data
}

fn read_handle(fs: &Arc<dyn DynFileSystem>, h: u64) -> Vec<u8> {
    let mut w = MemWriter::new(1 << 20);
    fs.read(&ctx(), FILE_INODE, h, &mut w, 1 << 20, 0, None, 0)
        .expect("read");
    w.into_inner()
}

fn write_all(fs: &Arc<dyn DynFileSystem>, data: &[u8]) {
    let (h, _, _) = fs
        .open(
            &ctx(),
            FILE_INODE,
            (libc::O_WRONLY | libc::O_TRUNC) as u32,
            0,
        )
        .expect("open for writing");
    let h = h.expect("handle");
    let mut r = MemReader::copied(data);
    let n = fs
        .write(
            &ctx(),
            FILE_INODE,
            h,
            &mut r,
            data.len() as u32,
            0,
            None,
            false,
            0,
            0,
        )
        .expect("write");
    assert_eq!(n, data.len());
    fs.release(&ctx(), FILE_INODE, 0, h, true, false, None)
        .expect("release");
}

/// The one name listed in the root besides `.` and `..`.
fn name_of(fs: &Arc<dyn DynFileSystem>) -> CString {
    let names = list(fs);
    let file: Vec<&Vec<u8>> = names
        .iter()
        .filter(|n| n.as_slice() != b"." && n.as_slice() != b"..")
        .collect();
    assert_eq!(file.len(), 1, "{names:?}");
    CString::new(file[0].clone()).unwrap()
}

fn list(fs: &Arc<dyn DynFileSystem>) -> Vec<Vec<u8>> {
    let (h, _) = fs.opendir(&ctx(), ROOT_ID, 0).expect("opendir");
    let h = h.unwrap_or(0);
    let mut names = Vec::new();
    fs.readdir(&ctx(), ROOT_ID, h, 1 << 16, 0, &mut |e| {
        if e.name != b"." && e.name != b".." {
            assert_eq!(e.ino, FILE_INODE, "the file's readdir inode");
        }
        names.push(e.name.to_vec());
        Ok(1)
    })
    .expect("readdir");
    fs.releasedir(&ctx(), ROOT_ID, 0, h).expect("releasedir");
    names.sort();
    names
}

fn attr(fs: &Arc<dyn DynFileSystem>) -> stat64 {
    fs.getattr(&ctx(), FILE_INODE, None).expect("getattr").0
}

struct Setup {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Setup {
    fn new(content: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.conf");
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        // A sibling that must never be visible through the share.
        std::fs::write(dir.path().join("secret"), "sibling").unwrap();
        Setup { dir, file }
    }

    fn opts(&self) -> FileMountOptions {
        FileMountOptions::new().runtime_dir(self.dir.path().join("run"))
    }
}

/// Replaces `path` the way editors do: write a temporary file, rename it over.
fn replace_atomically(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn staging_directory_is_fresh_private_and_holds_a_hard_link() {
    let s = Setup::new("hello\n");
    let a = FileMount::stage(&s.file, "/etc/app.conf", &s.opts()).unwrap();
    let b = FileMount::stage(&s.file, "/etc/app.conf", &s.opts()).unwrap();
    assert_ne!(a.tag(), b.tag());
    assert_ne!(a.staging_dir(), b.staging_dir());
    for m in [&a, &b] {
        assert_eq!(
            m.staging_dir().file_name().unwrap().to_str().unwrap(),
            m.tag().as_str(),
            "the staging directory is named by the random tag"
        );
        let mode = std::fs::metadata(m.staging_dir()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let share_mode = std::fs::metadata(m.share_dir()).unwrap().mode() & 0o777;
        assert_eq!(share_mode, 0o700);
        let entries: Vec<String> = std::fs::read_dir(m.share_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(entries, ["app.conf"], "only the file, under its own name");
        let staged = std::fs::metadata(m.share_dir().join("app.conf")).unwrap();
        let host = std::fs::metadata(&s.file).unwrap();
        assert_eq!((staged.dev(), staged.ino()), (host.dev(), host.ino()));
        assert_eq!(m.placement(), Placement::Linked);
    }
}

#[test]
fn dropping_the_mount_removes_its_directory_only() {
    let s = Setup::new("keep me\n");
    let a = FileMount::stage(&s.file, "/etc/a", &s.opts()).unwrap();
    let b = FileMount::stage(&s.file, "/etc/b", &s.opts()).unwrap();
    let (da, db) = (a.staging_dir().to_path_buf(), b.staging_dir().to_path_buf());
    drop(a);
    assert!(!da.exists(), "a's staging directory removed");
    assert!(db.exists(), "b's staging directory untouched");
    drop(b);
    assert!(!db.exists());
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), "keep me\n");
    let left: Vec<_> = std::fs::read_dir(s.dir.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("fm_"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn only_the_one_file_is_visible_and_nothing_can_be_created() {
    let s = Setup::new("x");
    let m = FileMount::stage(&s.file, "/etc/app.conf", &s.opts()).unwrap();
    let fs = m.fs();
    assert_eq!(
        list(&fs),
        [b".".to_vec(), b"..".to_vec(), b"app.conf".to_vec()]
    );
    for name in ["secret", "owner.lock", "share", ".boxfs-internal-x"] {
        assert_eq!(
            errno(fs.lookup(&ctx(), ROOT_ID, &cs(name))),
            libc::ENOENT,
            "{name}"
        );
    }
    // The guest kernel resolves `..` itself; asked anyway, nothing outside is returned.
    for name in ["..", ".", "../secret", "app.conf/..", "a/b"] {
        assert_eq!(
            errno(fs.lookup(&ctx(), ROOT_ID, &cs(name))),
            libc::EINVAL,
            "{name}"
        );
    }
    assert_eq!(
        errno(fs.lookup(&ctx(), FILE_INODE, &cs("x"))),
        libc::ENOTDIR
    );
    assert_eq!(errno(fs.lookup(&ctx(), 99, &cs("x"))), libc::ENOENT);
    assert_eq!(
        errno(fs.mkdir(&ctx(), ROOT_ID, &cs("d"), 0o755, 0)),
        libc::EACCES
    );
    assert_eq!(
        errno(fs.unlink(&ctx(), ROOT_ID, &cs("app.conf"))),
        libc::EACCES
    );
    assert_eq!(
        errno(fs.rename(&ctx(), ROOT_ID, &cs("app.conf"), ROOT_ID, &cs("y"), 0)),
        libc::EACCES
    );
    assert_eq!(
        errno(fs.symlink(&ctx(), &cs("/etc/passwd"), ROOT_ID, &cs("l"))),
        libc::EACCES
    );
    assert_eq!(
        errno(fs.link(&ctx(), FILE_INODE, ROOT_ID, &cs("l"))),
        libc::EACCES
    );
    assert_eq!(
        errno(fs.read(
            &ctx(),
            FILE_INODE,
            12345,
            &mut MemWriter::new(10),
            10,
            0,
            None,
            0
        )),
        libc::EBADF,
        "unknown handle"
    );
    let entries: Vec<_> = std::fs::read_dir(m.share_dir()).unwrap().collect();
    assert_eq!(entries.len(), 1);
    // READDIRPLUS would hand out PassthroughFs inodes: not offered, and refused.
    let opts = fs.init(boxfs::FsOptions::all()).unwrap();
    assert!(!opts.contains(boxfs::FsOptions::DO_READDIRPLUS));
    assert!(fs
        .readdirplus(&ctx(), ROOT_ID, 0, 4096, 0, &mut |_, _| Ok(1))
        .is_err());
}

#[test]
fn guest_writes_reach_the_host_file_and_host_writes_the_guest() {
    let s = Setup::new("host v1\n");
    let m = FileMount::stage(&s.file, "/etc/app.conf", &s.opts()).unwrap();
    let fs = m.fs();
    assert_eq!(read_all(&fs), b"host v1\n");
    write_all(&fs, b"guest wrote this\n");
    assert_eq!(
        std::fs::read_to_string(&s.file).unwrap(),
        "guest wrote this\n"
    );
    std::fs::write(&s.file, "host v2\n").unwrap();
    assert_eq!(read_all(&fs), b"host v2\n");
    assert_eq!(attr(&fs).st_size, 8);
}

#[test]
fn guest_chmod_and_chown_never_touch_the_host_file() {
    let s = Setup::new("x");
    let host_before = std::fs::metadata(&s.file).unwrap();
    let m = FileMount::stage(&s.file, "/etc/app.conf", &s.opts().owner(0, 0)).unwrap();
    let fs = m.fs();
    assert_eq!(attr(&fs).st_mode & 0o7777, 0o640, "host mode shown first");
    let mut a = attr(&fs);
    a.st_mode = (libc::S_IFREG | 0o777) as _;
    a.st_uid = 1234;
    a.st_gid = 5678;
    let valid = SetattrValid::MODE | SetattrValid::UID | SetattrValid::GID;
    let (after, _) = fs.setattr(&ctx(), FILE_INODE, a, None, valid).unwrap();
    assert_eq!(after.st_mode & 0o7777, 0o777);
    assert_eq!((after.st_uid, after.st_gid), (1234, 5678));
    let again = attr(&fs);
    assert_eq!(again.st_mode & 0o7777, 0o777, "kept");
    assert_eq!((again.st_uid, again.st_gid), (1234, 5678));
    let host = std::fs::metadata(&s.file).unwrap();
    assert_eq!(host.mode(), host_before.mode(), "host mode unchanged");
    assert_eq!(
        (host.uid(), host.gid()),
        (host_before.uid(), host_before.gid())
    );
    assert!(
        xattr_names(&s.file).is_empty(),
        "no xattr written on the host file: {:?}",
        xattr_names(&s.file)
    );
    // An unprivileged guest user that is not the owner cannot chmod.
    let user = Context {
        uid: 1000,
        gid: 1000,
        pid: 1,
    };
    a.st_mode = (libc::S_IFREG | 0o600) as _;
    assert_eq!(
        errno(fs.setattr(&user, FILE_INODE, a, None, SetattrValid::MODE)),
        libc::EPERM
    );
    // Nor truncate a file it may not write (mode 0777 above: writable; make it 0644).
    a.st_mode = (libc::S_IFREG | 0o644) as _;
    fs.setattr(&ctx(), FILE_INODE, a, None, SetattrValid::MODE)
        .unwrap();
    a.st_size = 0;
    assert_eq!(
        errno(fs.setattr(&user, FILE_INODE, a, None, SetattrValid::SIZE)),
        libc::EACCES
    );
    assert_eq!(
        errno(fs.open(&user, FILE_INODE, libc::O_WRONLY as u32, 0)),
        libc::EACCES
    );
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), "x");
    // Guest xattrs would land on the host inode: refused.
    assert_eq!(
        errno(fs.setxattr(&ctx(), FILE_INODE, &cs("user.x"), b"1", 0)),
        libc::ENOTSUP
    );
}

fn xattr_names(p: &Path) -> Vec<u8> {
    let c = CString::new(p.to_str().unwrap()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid path, writable buffer of the given length.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(n as usize);
    buf
}

#[test]
fn readonly_mount_refuses_every_write() {
    let s = Setup::new("ro");
    let m = FileMount::stage(&s.file, "/etc/app.conf", &s.opts().readonly(true)).unwrap();
    let fs = m.fs();
    assert_eq!(read_all(&fs), b"ro");
    assert_eq!(
        errno(fs.open(&ctx(), FILE_INODE, libc::O_WRONLY as u32, 0)),
        libc::EROFS
    );
    assert_eq!(
        errno(fs.open(&ctx(), FILE_INODE, libc::O_RDWR as u32, 0)),
        libc::EROFS
    );
    let mut a = attr(&fs);
    a.st_size = 0;
    assert_eq!(
        errno(fs.setattr(&ctx(), FILE_INODE, a, None, SetattrValid::SIZE)),
        libc::EROFS
    );
    assert_eq!(
        errno(fs.setattr(&ctx(), FILE_INODE, a, None, SetattrValid::MODE)),
        libc::EROFS
    );
    assert_eq!(
        errno(fs.mknod(&ctx(), ROOT_ID, &cs("n"), libc::S_IFREG, 0, 0)),
        libc::EROFS
    );
    assert_eq!(
        errno(fs.access(&ctx(), FILE_INODE, libc::W_OK as u32)),
        libc::EROFS
    );
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), "ro");
    let plan = m.plan();
    assert!(plan
        .steps()
        .iter()
        .any(|st| matches!(st, Step::Remount { flags, .. } if flags.contains(&"ro"))));
}

#[test]
fn host_atomic_replace_is_seen_on_the_next_open() {
    let s = Setup::new("version 1\n");
    let m = FileMount::stage(&s.file, "/etc/app.conf", &s.opts()).unwrap();
    let fs = m.fs();
    // A guest handle opened before the replace.
    let (old_h, _, _) = fs
        .open(&ctx(), FILE_INODE, libc::O_RDONLY as u32, 0)
        .unwrap();
    let old_h = old_h.unwrap();
    assert_eq!(read_handle(&fs, old_h), b"version 1\n");

    replace_atomically(&s.file, "version 2, longer\n");
    // The guest's (pinned) inode stays the same and now serves the new file.
    assert_eq!(read_all(&fs), b"version 2, longer\n");
    assert_eq!(attr(&fs).st_size, 18);
    assert_eq!(attr(&fs).st_ino, FILE_INODE);
    // The handle opened before keeps the file it opened, like on the host.
    assert_eq!(read_handle(&fs, old_h), b"version 1\n");
    fs.release(&ctx(), FILE_INODE, 0, old_h, false, false, None)
        .unwrap();
    // Guest writes now go to the new host file.
    write_all(&fs, b"guest after replace\n");
    assert_eq!(
        std::fs::read_to_string(&s.file).unwrap(),
        "guest after replace\n"
    );
    let staged = std::fs::metadata(m.share_dir().join("app.conf")).unwrap();
    let host = std::fs::metadata(&s.file).unwrap();
    assert_eq!(staged.ino(), host.ino(), "re-linked to the new host inode");
    // Twice more, through getattr only (a guest `stat`).
    replace_atomically(&s.file, "v3");
    assert_eq!(attr(&fs).st_size, 2);
    assert_eq!(read_all(&fs), b"v3");
    let entries: Vec<_> = std::fs::read_dir(m.share_dir()).unwrap().collect();
    assert_eq!(entries.len(), 1, "no temporary names left behind");
}

#[test]
fn host_file_removed_without_replacement_keeps_serving() {
    let s = Setup::new("still here");
    let m = FileMount::stage(&s.file, "/etc/app.conf", &s.opts()).unwrap();
    std::fs::remove_file(&s.file).unwrap();
    assert_eq!(read_all(&m.fs()), b"still here");
}

/// Two directories on different filesystems (a tmpfs and the target directory), if this
/// machine has them.
fn two_filesystems() -> (tempfile::TempDir, tempfile::TempDir) {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let mut candidates: Vec<PathBuf> = vec!["/dev/shm".into(), std::env::temp_dir(), target];
    candidates.retain(|p| p.is_dir());
    for (i, a) in candidates.iter().enumerate() {
        for b in &candidates[i + 1..] {
            let (da, db) = (
                std::fs::metadata(a).unwrap().dev(),
                std::fs::metadata(b).unwrap().dev(),
            );
            if da != db {
                let ta = tempfile::Builder::new()
                    .prefix("boxfs-fm-")
                    .tempdir_in(a)
                    .unwrap();
                let tb = tempfile::Builder::new()
                    .prefix("boxfs-fm-")
                    .tempdir_in(b)
                    .unwrap();
                return (ta, tb);
            }
        }
    }
    panic!("this test needs two filesystems (e.g. a tmpfs on /dev/shm): {candidates:?}");
}

#[test]
fn exdev_read_write_fails_clearly_and_never_copies() {
    let (files, runtime) = two_filesystems();
    let file = files.path().join("data.txt");
    std::fs::write(&file, "data").unwrap();
    let rt = runtime.path().join("run");
    let err = FileMount::stage(
        &file,
        "/data.txt",
        &FileMountOptions::new().runtime_dir(&rt),
    )
    .expect_err("read-write across filesystems must fail");
    let msg = err.to_string();
    assert!(msg.contains("different filesystems"), "{msg}");
    assert!(msg.contains("read-only"), "{msg}");
    let left: Vec<_> = std::fs::read_dir(&rt)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("fm_"))
        .collect();
    assert!(left.is_empty(), "the failed mount left {left:?}");
}

#[test]
fn exdev_read_only_serves_a_copy_that_follows_the_host() {
    let (files, runtime) = two_filesystems();
    let file = files.path().join("data.txt");
    std::fs::write(&file, "copy v1").unwrap();
    let opts = FileMountOptions::new()
        .runtime_dir(runtime.path().join("run"))
        .readonly(true);
    let m = FileMount::stage(&file, "/data.txt", &opts).unwrap();
    assert_eq!(m.placement(), Placement::Copied);
    let fs = m.fs();
    assert_eq!(read_all(&fs), b"copy v1");
    // Modified in place: the copy is refreshed.
    std::fs::write(&file, "copy v2, in place").unwrap();
    assert_eq!(read_all(&fs), b"copy v2, in place");
    // Replaced atomically: too.
    replace_atomically(&file, "copy v3");
    assert_eq!(read_all(&fs), b"copy v3");
    assert_eq!(
        errno(fs.open(&ctx(), FILE_INODE, libc::O_RDWR as u32, 0)),
        libc::EROFS
    );
}

#[test]
fn many_mounts_for_one_vm_plan_parents_first() {
    let s = Setup::new("a");
    let b = s.dir.path().join("b.conf");
    std::fs::write(&b, "b").unwrap();
    let mut mounts = FileMounts::new(s.dir.path().join("run")).unwrap();
    mounts
        .add(&b, "/etc/app/conf.d/b.conf", &FileMountOptions::new())
        .unwrap();
    mounts
        .add(
            &s.file,
            "/etc/app.conf",
            &FileMountOptions::new().readonly(true),
        )
        .unwrap();
    let err = mounts
        .add(&b, "/etc//app.conf", &FileMountOptions::new())
        .expect_err("one destination twice");
    assert!(err.to_string().contains("/etc/app.conf"), "{err}");
    assert_eq!(mounts.mounts().len(), 2);
    let plan = mounts.plan().unwrap();
    let dests: Vec<&str> = plan
        .mounts()
        .iter()
        .map(|m| m.destination.as_str())
        .collect();
    assert_eq!(dests, ["/etc/app.conf", "/etc/app/conf.d/b.conf"]);
    let sh = plan.to_sh();
    for m in mounts.mounts() {
        assert!(sh.contains(&format!("{STAGING_BASE}/{}", m.tag())), "{sh}");
    }
    let tags: std::collections::HashSet<_> = mounts.mounts().iter().map(|m| m.tag()).collect();
    assert_eq!(tags.len(), 2);
}
