//! `boxfs::sandbox`: the seccomp allow-list kills on forbidden calls and arguments and lets the
//! serving calls through; the namespace leaves only `/proc` reachable by path.
//!
//! Each case runs in a child process (this test binary re-executed with `--exact sandbox_child`
//! and the case in `BOXFS_SANDBOX_CASE`), since a filter or a namespace cannot be undone.
#![cfg(target_os = "linux")]

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};

use boxfs::sandbox::{self, Seccomp};

const CASE: &str = "BOXFS_SANDBOX_CASE";

/// Runs `case` in a child process and returns how it ended and what it printed.
fn run_case(case: &str) -> (ExitStatus, String) {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args(["--exact", "sandbox_child", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CASE, case)
        .output()
        .expect("run the child");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status, text)
}

fn assert_killed(case: &str) {
    let (status, out) = run_case(case);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{case}: expected death by SIGSYS, got {status:?}:\n{out}"
    );
    assert!(
        !out.contains("survived"),
        "{case}: the forbidden call returned:\n{out}"
    );
}

#[test]
fn forbidden_call_kills() {
    assert_killed("unshare");
}

#[test]
fn clone_with_namespace_flags_kills() {
    assert_killed("clone-newuser");
}

#[test]
fn ioctl_outside_the_list_kills() {
    assert_killed("ioctl-fionread");
}

#[test]
fn prctl_outside_the_list_kills() {
    assert_killed("prctl-dumpable");
}

#[test]
fn mknod_of_a_device_kills() {
    assert_killed("mknod-chr");
}

#[test]
fn serving_calls_pass_the_filter() {
    let (status, out) = run_case("allowed");
    assert!(
        status.success() && out.contains("allowed: ok"),
        "{status:?}:\n{out}"
    );
}

#[test]
fn namespace_leaves_only_proc() {
    let (status, out) = run_case("namespace");
    assert!(
        status.success() && out.contains("namespace: ok"),
        "{status:?}:\n{out}"
    );
}

#[test]
fn allow_list_is_listed() {
    let calls: Vec<_> = sandbox::allowed_syscalls().collect();
    for name in ["openat2", "statx", "getdents64", "renameat2", "epoll_pwait"] {
        assert!(calls.iter().any(|c| c.name == name), "{name} missing");
    }
    for name in ["clone", "ioctl", "prctl", "mknodat"] {
        let c = calls.iter().find(|c| c.name == name).expect(name);
        assert!(c.filtered, "{name} should have its arguments filtered");
    }
    for name in ["unshare", "mount", "setns", "ptrace", "execve", "bpf"] {
        assert!(!calls.iter().any(|c| c.name == name), "{name} allowed");
    }
    assert_eq!("kill".parse::<Seccomp>().ok(), Some(Seccomp::Kill));
    assert!("sometimes".parse::<Seccomp>().is_err());
}

/// The child side of every case. Refuses to run (fails) without a case, so running ignored
/// tests by hand cannot make it pass vacuously.
#[test]
#[ignore = "runs in a child process started by the other tests"]
fn sandbox_child() {
    let case = std::env::var(CASE).expect("BOXFS_SANDBOX_CASE names the case to run");
    if case == "namespace" {
        child_namespace();
        return;
    }
    // Made before the filter: a serving process creates no directories by path.
    let dir = tempfile::tempdir().expect("tempdir");
    sandbox::install_seccomp(Seccomp::Kill).expect("install the filter");
    match case.as_str() {
        // SAFETY (all below): raw calls with valid arguments; the filter is expected to kill
        // the process before they run.
        "unshare" => {
            let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            println!("survived unshare: {r}");
        }
        "clone-newuser" => {
            let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong;
            let r =
                unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
            if r == 0 {
                // A child, had the filter failed: leave at once.
                unsafe { libc::_exit(0) };
            }
            println!("survived clone: {r}");
        }
        "ioctl-fionread" => {
            let mut n: libc::c_int = 0;
            let r = unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
            println!("survived ioctl: {r}");
        }
        "prctl-dumpable" => {
            let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
            println!("survived prctl: {r}");
        }
        "mknod-chr" => {
            let path = std::ffi::CString::new(
                dir.path().join("dev").into_os_string().into_encoded_bytes(),
            )
            .expect("path");
            let r =
                unsafe { libc::mknodat(libc::AT_FDCWD, path.as_ptr(), libc::S_IFCHR | 0o600, 0) };
            println!("survived mknodat: {r}");
        }
        "allowed" => child_allowed(dir.path()),
        other => panic!("unknown case {other}"),
    }
}

/// What a serving process does: threads (named), files, xattrs, sockets set non-blocking, FIFOs.
fn child_allowed(dir: &std::path::Path) {
    use std::io::{Read, Write};
    let path = dir.join("f");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(b"hello"))
        .expect("write");
    let worker = std::thread::Builder::new()
        .name("boxfs-worker".into())
        .spawn(move || {
            let mut s = String::new();
            std::fs::File::open(&path)
                .and_then(|mut f| f.read_to_string(&mut s))
                .expect("read");
            s
        })
        .expect("spawn a thread");
    assert_eq!(worker.join().expect("join"), "hello");
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).expect("FIONBIO");
    let fifo =
        std::ffi::CString::new(dir.join("p").into_os_string().into_encoded_bytes()).expect("path");
    // SAFETY: a valid path; a FIFO is on the mknodat allow-list.
    let r = unsafe { libc::mknodat(libc::AT_FDCWD, fifo.as_ptr(), libc::S_IFIFO | 0o600, 0) };
    assert_eq!(r, 0, "mknodat FIFO: {}", std::io::Error::last_os_error());
    println!("allowed: ok");
}

fn child_namespace() {
    let keep = std::fs::File::open(env!("CARGO_MANIFEST_DIR")).expect("open a directory");
    match sandbox::enter_namespace() {
        Ok(()) => {}
        Err(boxfs::Error::Unsupported(why)) => {
            panic!("user namespaces unavailable here: {why}");
        }
        Err(e) => panic!("enter_namespace: {e}"),
    }
    let names: Vec<_> = std::fs::read_dir("/")
        .expect("read /")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["proc"], "the new root holds only /proc");
    assert!(std::fs::metadata(env!("CARGO_MANIFEST_DIR")).is_err());
    // Descriptors opened before still work, through /proc/self/fd.
    use std::os::fd::AsRawFd;
    let via_proc = format!("/proc/self/fd/{}/Cargo.toml", keep.as_raw_fd());
    assert!(std::fs::metadata(via_proc).is_ok());
    assert!(std::fs::create_dir("/x").is_err(), "the root is read-only");
    println!("namespace: ok");
}
