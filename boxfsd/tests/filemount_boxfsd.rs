//! `boxfsd --shared-file`: stages one host file, prints the random tag and the guest plan, serves
//! only that file to the test VMM, and removes its staging directory when it exits.
#![cfg(target_os = "linux")]

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use boxfs::filemount::Tag;
use boxfs::ROOT_ID;
use fuse_backend_rs::abi::fuse_abi::SetattrIn;
use vm_memory::ByteValued;
use vmm::{op, FuseClient};

/// How long a step may take before the test calls it a hang. Not a timing assertion: a loaded
/// machine may be slow, so this only bounds how long a broken daemon can stall the suite.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn boxfsd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_boxfsd"))
}

fn run(args: &[&str]) -> Output {
    boxfsd()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run boxfsd")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts the daemon and reads what it prints: the tag line and the plan (through
/// `# end of plan`). The daemon prints them once its socket listens.
fn spawn_file_share(args: &[&str]) -> (Child, Tag, String) {
    spawn_file_share_with(boxfsd(), args)
}

fn spawn_file_share_with(mut cmd: Command, args: &[&str]) -> (Child, Tag, String) {
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn boxfsd");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let tag_line = match lines.next() {
        Some(Ok(l)) => l,
        other => panic!("no tag line: {other:?}; status {:?}", child.wait()),
    };
    let tag = Tag::parse(&tag_line).unwrap_or_else(|| panic!("not a tag: {tag_line:?}"));
    let mut plan = String::new();
    for line in lines.by_ref() {
        let line = line.expect("read plan");
        plan.push_str(&line);
        plan.push('\n');
        if line == "# end of plan" {
            break;
        }
    }
    assert!(plan.ends_with("# end of plan\n"), "{plan}");
    (child, tag, plan)
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("boxfsd did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn staging_dirs(rt: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(rt)
        .map(|d| {
            d.map(|e| e.expect("entry").path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("fm_"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

struct Setup {
    dir: tempfile::TempDir,
    file: PathBuf,
    rt: PathBuf,
    sock: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("app.conf");
    std::fs::write(&file, "from the host\n").expect("file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(dir.path().join("secret"), "sibling").expect("sibling");
    let rt = dir.path().join("run");
    let sock = dir.path().join("boxfsd.sock");
    Setup {
        dir,
        file,
        rt,
        sock,
    }
}

fn chmod(c: &mut FuseClient, ino: u64, mode: u32) -> Result<(), i32> {
    let s = SetattrIn {
        valid: 1, // FATTR_MODE
        mode: libc::S_IFREG | mode,
        ..Default::default()
    };
    c.call(op::SETATTR, ino, &[s.as_slice()], 256).map(|_| ())
}

#[test]
fn shared_file_prints_tag_and_plan_and_serves_only_that_file() {
    let s = setup();
    // Debris of a crashed daemon: swept at start.
    let stale = s.rt.join("fm_00000000000000aa");
    std::fs::create_dir_all(stale.join("share")).expect("stale dir");
    let (mut child, tag, plan) = spawn_file_share(&[
        "--socket-path",
        s.sock.to_str().unwrap(),
        "--shared-file",
        s.file.to_str().unwrap(),
        "--guest-path",
        "/etc/app.conf",
        "--runtime-dir",
        s.rt.to_str().unwrap(),
        "--cache",
        "never",
        "--thread-pool-size",
        "0",
    ]);
    let staging = format!("/run/boxfs-filemount/{tag}");
    assert!(plan.starts_with("#!/bin/sh\n"), "{plan}");
    assert!(
        plan.contains(&format!(
            "mount -t virtiofs -o nosuid,nodev '{tag}' '{staging}'"
        )),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "mount --bind '{staging}/app.conf' '/etc/app.conf'"
        )),
        "{plan}"
    );
    assert!(plan.contains(&format!("umount -l '{staging}'")), "{plan}");
    assert!(!stale.exists(), "the dead daemon's directory was swept");
    assert_eq!(staging_dirs(&s.rt), [s.rt.join(tag.as_str())]);
    {
        let mut c = FuseClient::connect(&s.sock).expect("connect");
        assert_eq!(c.vmm.tag().as_deref(), Some(tag.as_str()));
        assert_eq!(c.lookup(ROOT_ID, "secret").err(), Some(libc::ENOENT));
        assert_eq!(c.lookup(ROOT_ID, "owner.lock").err(), Some(libc::ENOENT));
        assert_eq!(c.mkdir(ROOT_ID, "d", 0o755).err(), Some(libc::EACCES));
        let e = c.lookup(ROOT_ID, "app.conf").expect("lookup the file");
        let o = c.open(e.nodeid, libc::O_RDWR as u32).expect("open");
        assert_eq!(
            c.read(e.nodeid, o.fh, 0, 100).expect("read"),
            b"from the host\n"
        );
        c.truncate(e.nodeid, 0).expect("truncate");
        c.write(e.nodeid, o.fh, 0, b"from the guest\n")
            .expect("write");
        c.release(e.nodeid, o.fh).expect("release");
        chmod(&mut c, e.nodeid, 0o777).expect("chmod");
        assert_eq!(
            c.getattr(e.nodeid).expect("getattr").attr.mode & 0o7777,
            0o777
        );
    }
    assert!(wait_exit(&mut child, HANG_GUARD).success());
    assert_eq!(
        std::fs::read_to_string(&s.file).unwrap(),
        "from the guest\n"
    );
    assert_eq!(
        std::fs::metadata(&s.file).unwrap().mode() & 0o7777,
        0o644,
        "guest chmod leaves the host mode alone"
    );
    assert!(staging_dirs(&s.rt).is_empty(), "staging directory removed");
    assert!(!s.sock.exists());
    drop(s.dir);
}

#[test]
fn readonly_shared_file_refuses_writes() {
    let s = setup();
    let (mut child, _tag, plan) = spawn_file_share(&[
        "--socket-path",
        s.sock.to_str().unwrap(),
        "--shared-file",
        s.file.to_str().unwrap(),
        "--runtime-dir",
        s.rt.to_str().unwrap(),
        "--readonly",
    ]);
    // Default guest path: the host path.
    assert!(
        plan.contains(&format!(
            "mount -o remount,bind,ro,nosuid,nodev '{}'",
            s.file.display()
        )),
        "{plan}"
    );
    {
        let mut c = FuseClient::connect(&s.sock).expect("connect");
        let e = c.lookup(ROOT_ID, "app.conf").expect("lookup");
        assert_eq!(
            c.open(e.nodeid, libc::O_RDWR as u32).err(),
            Some(libc::EROFS)
        );
        assert_eq!(c.truncate(e.nodeid, 0).err(), Some(libc::EROFS));
        let o = c.open(e.nodeid, libc::O_RDONLY as u32).expect("open");
        assert_eq!(
            c.read(e.nodeid, o.fh, 0, 100).expect("read"),
            b"from the host\n"
        );
        c.release(e.nodeid, o.fh).expect("release");
    }
    assert!(wait_exit(&mut child, HANG_GUARD).success());
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), "from the host\n");
    assert!(staging_dirs(&s.rt).is_empty());
}

#[test]
fn shared_file_errors() {
    let s = setup();
    let sock = s.sock.to_str().unwrap();
    let file = s.file.to_str().unwrap();
    // Usage errors (status 2).
    for args in [
        &["--shared-file", file, "--shared-dir", "/tmp"][..],
        &["--shared-file", file, "--tag", "mine"][..],
        &["--memfs-size", "1M", "--guest-path", "/x"][..],
        &["--memfs-size", "1M", "--runtime-dir", "/tmp"][..],
        &["--memfs-size", "1M", "--readonly"][..],
    ] {
        let mut all = vec!["--socket-path", sock];
        all.extend_from_slice(args);
        let o = run(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let rt = s.rt.to_str().unwrap();
    let missing = s.dir.path().join("missing.conf");
    let o = run(&[
        "--socket-path",
        sock,
        "--shared-file",
        missing.to_str().unwrap(),
        "--runtime-dir",
        rt,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.conf"), "{}", stderr(&o));
    let o = run(&[
        "--socket-path",
        sock,
        "--shared-file",
        file,
        "--runtime-dir",
        rt,
        "--guest-path",
        "relative/path",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not absolute"), "{}", stderr(&o));
    // Read-write with the runtime directory on another filesystem: refused, never a copy.
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && std::fs::metadata(shm).unwrap().dev() != std::fs::metadata(&s.file).unwrap().dev()
    {
        let other = tempfile::tempdir_in(shm).expect("tmpfs dir");
        let o = run(&[
            "--socket-path",
            sock,
            "--shared-file",
            file,
            "--runtime-dir",
            other.path().to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("different filesystems"),
            "{}",
            stderr(&o)
        );
        assert!(staging_dirs(other.path()).is_empty());
    }
    assert!(!s.sock.exists());
}

/// Issue 14, section 2, through the daemon: the host swaps the shared file for a root-owned
/// file the unprivileged daemon can read but not hard-link (`protected_hardlinks`), then for a
/// symlink to a sibling, then for a regular file again. The guest reads the new content with
/// writes refused (it used to keep reading the old content), then gets `EIO` (it used to read
/// the sibling), then the new file. The root-owned step needs root (to make the file and run
/// the daemon as another user) and `protected_hardlinks`; without them the test fails rather
/// than pass without reproducing the condition.
#[test]
fn host_swaps_never_serve_stale_content_or_a_symlink_target() {
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let s = setup();
    assert!(
        rustix::process::geteuid().is_root()
            && std::fs::read_to_string("/proc/sys/fs/protected_hardlinks")
                .is_ok_and(|v| v.trim() == "1"),
        "the root-owned replacement step needs root and fs.protected_hardlinks=1"
    );
    // The daemon runs as nobody and owns the directory and the file; its binary is copied
    // where it may execute it.
    let bin = s.dir.path().join("boxfsd");
    std::fs::copy(env!("CARGO_BIN_EXE_boxfsd"), &bin).expect("copy boxfsd");
    for p in [s.dir.path(), &s.file, &s.dir.path().join("secret")] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let mut cmd = Command::new(&bin);
    cmd.uid(NOBODY).gid(NOBODY);
    let (mut child, _tag, _plan) = spawn_file_share_with(
        cmd,
        &[
            "--socket-path",
            s.sock.to_str().unwrap(),
            "--shared-file",
            s.file.to_str().unwrap(),
            "--runtime-dir",
            s.rt.to_str().unwrap(),
            "--cache",
            "never",
            "--thread-pool-size",
            "0",
        ],
    );
    let swap_in = |content: Option<&str>, owner: Option<u32>| {
        let tmp = s.dir.path().join("swap.tmp");
        match content {
            Some(c) => {
                std::fs::write(&tmp, c).unwrap();
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
                if let Some(id) = owner {
                    std::os::unix::fs::chown(&tmp, Some(id), Some(id)).unwrap();
                }
            }
            None => std::os::unix::fs::symlink(s.dir.path().join("secret"), &tmp).unwrap(),
        }
        std::fs::rename(&tmp, &s.file).unwrap();
    };
    let owner = Some(NOBODY);
    {
        let mut c = FuseClient::connect(&s.sock).expect("connect");
        let cat = |c: &mut FuseClient| -> Result<Vec<u8>, i32> {
            let e = c.lookup(ROOT_ID, "app.conf")?;
            let o = c.open(e.nodeid, libc::O_RDONLY as u32)?;
            let data = c.read(e.nodeid, o.fh, 0, 100);
            c.release(e.nodeid, o.fh).expect("release");
            data
        };
        assert_eq!(cat(&mut c), Ok(b"from the host\n".to_vec()));
        let ino = c.lookup(ROOT_ID, "app.conf").expect("lookup").nodeid;

        {
            swap_in(Some("root-owned\n"), None);
            assert_eq!(
                cat(&mut c),
                Ok(b"root-owned\n".to_vec()),
                "the replacement, never the old content"
            );
            assert_eq!(c.open(ino, libc::O_RDWR as u32).err(), Some(libc::EACCES));
            assert_eq!(c.truncate(ino, 0).err(), Some(libc::EACCES));
        }

        swap_in(None, None);
        assert_eq!(cat(&mut c), Err(libc::EIO), "never the symlink's target");
        assert_eq!(c.getattr(ino).err(), Some(libc::EIO));
        assert_eq!(c.open(ino, libc::O_RDONLY as u32).err(), Some(libc::EIO));

        swap_in(Some("restored\n"), owner);
        assert_eq!(cat(&mut c), Ok(b"restored\n".to_vec()));
        let o = c.open(ino, libc::O_RDWR as u32).expect("writable again");
        c.write(ino, o.fh, 0, b"RESTORED\n").expect("write");
        c.release(ino, o.fh).expect("release");
    }
    assert!(wait_exit(&mut child, HANG_GUARD).success());
    assert_eq!(std::fs::read_to_string(&s.file).unwrap(), "RESTORED\n");
    assert_eq!(
        std::fs::read_to_string(s.dir.path().join("secret")).unwrap(),
        "sibling"
    );
    assert!(staging_dirs(&s.rt).is_empty());
}
