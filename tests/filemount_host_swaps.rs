//! File mounts when the host swaps the file for something the daemon cannot link, cannot read,
//! or for a symlink (issue 14, section 2): the guest gets the new content (writes refused) or
//! `EIO`, never the old content silently, and never what a symlink points to.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boxfs::filemount::{FileMount, FileMountOptions, Placement, FILE_INODE};
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{stat64, Context, DynFileSystem, SetattrValid, ROOT_ID};

const NOBODY: u32 = 65534;

fn ctx() -> Context {
    Context::new()
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(-1)
}

fn open(fs: &Arc<dyn DynFileSystem>, flags: i32) -> std::io::Result<u64> {
    let (h, _, _) = fs.open(&ctx(), FILE_INODE, flags as u32, 0)?;
    Ok(h.expect("handle"))
}

fn read_handle(fs: &Arc<dyn DynFileSystem>, h: u64) -> Vec<u8> {
    let mut w = MemWriter::new(1 << 16);
    fs.read(&ctx(), FILE_INODE, h, &mut w, 1 << 16, 0, None, 0)
        .expect("read");
    w.into_inner()
}

/// What a guest `cat` gets: the content, or the errno of lookup/open.
fn cat(fs: &Arc<dyn DynFileSystem>, name: &str) -> Result<Vec<u8>, i32> {
    let name = CString::new(name).unwrap();
    fs.lookup(&ctx(), ROOT_ID, &name)
        .map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    let h = open(fs, libc::O_RDONLY).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    let data = read_handle(fs, h);
    fs.release(&ctx(), FILE_INODE, 0, h, false, false, None)
        .expect("release");
    Ok(data)
}

fn getattr(fs: &Arc<dyn DynFileSystem>) -> std::io::Result<stat64> {
    fs.getattr(&ctx(), FILE_INODE, None).map(|(st, _)| st)
}

fn truncate(fs: &Arc<dyn DynFileSystem>) -> std::io::Result<()> {
    // SAFETY: stat64 is a plain C struct; all-zero is a valid value.
    let st: stat64 = unsafe { std::mem::zeroed() };
    fs.setattr(&ctx(), FILE_INODE, st, None, SetattrValid::SIZE)
        .map(|_| ())
}

fn write(fs: &Arc<dyn DynFileSystem>, data: &[u8]) -> std::io::Result<()> {
    let h = open(fs, libc::O_WRONLY | libc::O_TRUNC)?;
    let mut r = MemReader::copied(data);
    let n = fs.write(
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
    )?;
    assert_eq!(n, data.len());
    fs.release(&ctx(), FILE_INODE, 0, h, true, false, None)
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
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(dir.path().join("secret"), "sibling secret").unwrap();
        Setup { dir, file }
    }

    fn stage(&self, readonly: bool) -> FileMount {
        let opts = FileMountOptions::new()
            .runtime_dir(self.dir.path().join("run"))
            .readonly(readonly);
        FileMount::stage(&self.file, "/etc/app.conf", &opts).expect("stage")
    }
}

/// Replaces `path` by rename with a new file of `content`, owned by `owner`, mode `mode`.
fn replace(path: &Path, content: &str, owner: Option<u32>, mode: u32) {
    let tmp = path.with_extension("tmp-edit");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    if let Some(uid) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(uid)).unwrap();
    }
    std::fs::rename(&tmp, path).unwrap();
}

/// Fails unless this process can reproduce an unprivileged daemon that may read but not
/// hard-link another user's file: it must be root (to make such a file) and the kernel must
/// enforce `protected_hardlinks`.
fn require_protected_hardlinks() {
    let enforced =
        std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").is_ok_and(|v| v.trim() == "1");
    // Not a skip: a run that cannot reproduce the condition must not count as a pass.
    assert!(
        rustix::process::geteuid().is_root() && enforced,
        "needs root and fs.protected_hardlinks=1 to make a file the daemon can read but not link"
    );
}

/// Runs `f` on a thread without the capabilities that let root link or read any file
/// (`CAP_FOWNER`, `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`), as an unprivileged daemon
/// runs. Capabilities are per thread, so other tests are unaffected.
fn as_unprivileged_daemon<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut caps = capabilities(None).expect("capget");
            caps.effective -= CapabilitySet::FOWNER
                | CapabilitySet::DAC_OVERRIDE
                | CapabilitySet::DAC_READ_SEARCH;
            set_capabilities(None, caps).expect("capset");
            f()
        })
        .join()
        .expect("thread")
    })
}

/// Regression: the host replaced the file by rename with another user's file, which the
/// unprivileged daemon can read but not hard-link (`protected_hardlinks`). The daemon logged
/// "cannot follow the replaced host file" and the guest kept reading the old content. Now
/// the guest reads the new content, with writes refused (`EACCES`), until the host file can
/// be linked again.
#[test]
fn replacement_that_cannot_be_linked_is_served_read_only_never_stale() {
    require_protected_hardlinks();
    let s = Setup::new("old content\n");
    let m = s.stage(false);
    let fs = m.fs();
    assert_eq!(cat(&fs, "app.conf").unwrap(), b"old content\n");
    // A handle opened for writing before the swap keeps its file, as on the host.
    let before = open(&fs, libc::O_RDWR).expect("open rw");

    replace(&s.file, "new content, other owner\n", Some(NOBODY), 0o644);
    as_unprivileged_daemon(|| {
        assert_eq!(
            cat(&fs, "app.conf"),
            Ok(b"new content, other owner\n".to_vec()),
            "the new content, never the old one"
        );
        assert_eq!(getattr(&fs).expect("getattr").st_size, 25);
        assert_eq!(m.placement(), Placement::Copied);
        assert_eq!(errno(open(&fs, libc::O_RDWR)), libc::EACCES);
        assert_eq!(errno(open(&fs, libc::O_WRONLY)), libc::EACCES);
        assert_eq!(errno(truncate(&fs)), libc::EACCES);
        assert_eq!(
            errno(fs.access(&ctx(), FILE_INODE, libc::W_OK as u32)),
            libc::EACCES
        );
        assert_eq!(read_handle(&fs, before), b"old content\n");
    });
    fs.release(&ctx(), FILE_INODE, 0, before, false, false, None)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&s.file).unwrap(),
        "new content, other owner\n",
        "the host file was never written"
    );

    // The host puts back a file the daemon may link: writable again.
    replace(&s.file, "linkable again\n", None, 0o644);
    as_unprivileged_daemon(|| {
        assert_eq!(cat(&fs, "app.conf"), Ok(b"linkable again\n".to_vec()));
        assert_eq!(m.placement(), Placement::Linked);
        write(&fs, b"guest write\n").expect("write");
    });
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), "guest write\n");
}

/// A replacement the daemon can neither link nor read: the guest gets `EIO` (not the old
/// content) until the host path names a servable file again.
#[test]
fn replacement_that_cannot_be_read_answers_eio() {
    require_protected_hardlinks();
    for readonly in [false, true] {
        let s = Setup::new("old content\n");
        let m = s.stage(readonly);
        let fs = m.fs();
        assert_eq!(cat(&fs, "app.conf").unwrap(), b"old content\n");
        replace(&s.file, "unreadable\n", Some(NOBODY), 0o600);
        as_unprivileged_daemon(|| {
            assert_eq!(cat(&fs, "app.conf"), Err(libc::EIO), "readonly {readonly}");
            assert_eq!(errno(getattr(&fs)), libc::EIO);
            assert_eq!(errno(open(&fs, libc::O_RDONLY)), libc::EIO);
        });
        replace(&s.file, "readable again\n", None, 0o644);
        as_unprivileged_daemon(|| {
            assert_eq!(cat(&fs, "app.conf"), Ok(b"readable again\n".to_vec()));
        });
    }
}

/// Regression: every refresh resolved the host path with `stat`/`link` that follow
/// symlinks, so a symlink swapped in after staging (through another share of the directory,
/// say) made the mount serve whatever file it pointed to. Now only the final name is looked
/// at, without following a symlink there: the guest gets `EIO`, never the target's content.
#[test]
fn symlink_swapped_in_after_staging_is_refused() {
    for readonly in [false, true] {
        let s = Setup::new("the file\n");
        let m = s.stage(readonly);
        let fs = m.fs();
        assert_eq!(cat(&fs, "app.conf").unwrap(), b"the file\n");
        let link = s.dir.path().join("evil-link");
        std::os::unix::fs::symlink(s.dir.path().join("secret"), &link).unwrap();
        std::fs::rename(&link, &s.file).unwrap();
        for _ in 0..2 {
            assert_eq!(cat(&fs, "app.conf"), Err(libc::EIO), "readonly {readonly}");
            assert_eq!(errno(getattr(&fs)), libc::EIO);
            assert_eq!(errno(open(&fs, libc::O_RDONLY)), libc::EIO);
            assert_eq!(
                errno(fs.getxattr(&ctx(), FILE_INODE, c"user.x", 64).map(|_| ())),
                libc::EIO
            );
        }
        // Nothing of the target was staged.
        let staged = std::fs::read(m.share_dir().join("app.conf")).unwrap();
        assert_eq!(staged, b"the file\n");
        // A regular file again: served again.
        replace(&s.file, "regular again\n", None, 0o644);
        assert_eq!(cat(&fs, "app.conf"), Ok(b"regular again\n".to_vec()));
        // A symlink to a directory, or a directory, is refused the same way.
        std::fs::remove_file(&s.file).unwrap();
        std::fs::create_dir(&s.file).unwrap();
        assert_eq!(cat(&fs, "app.conf"), Err(libc::EIO));
    }
}

/// A symlink given at staging is resolved then, once: the mount serves its target's
/// directory entry and follows replacements of that file.
#[test]
fn symlink_given_at_staging_is_resolved_once() {
    let s = Setup::new("target\n");
    let link = s.dir.path().join("link.conf");
    std::os::unix::fs::symlink("app.conf", &link).unwrap();
    let opts = FileMountOptions::new().runtime_dir(s.dir.path().join("run"));
    let m = FileMount::stage(&link, "/etc/link.conf", &opts).expect("stage");
    let fs = m.fs();
    assert_eq!(cat(&fs, "link.conf"), Ok(b"target\n".to_vec()));
    replace(&s.file, "target v2\n", None, 0o644);
    assert_eq!(cat(&fs, "link.conf"), Ok(b"target v2\n".to_vec()));
}
