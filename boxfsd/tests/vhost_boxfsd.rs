//! The `boxfsd` daemon: command-line errors, serving both backends to the test VMM, and clean
//! shutdown (VMM disconnect, SIGTERM) with the socket file removed.
#![cfg(target_os = "linux")]

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use boxfs::ROOT_ID;
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

fn spawn(args: &[&str]) -> Child {
    boxfsd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn boxfsd")
}

fn wait_for_socket(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + HANG_GUARD;
    while !boxfs::vhost::socket_listening(path) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("boxfsd exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "boxfsd did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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

fn sock(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("boxfsd.sock")
}

#[test]
fn bad_shared_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir);
    let o = run(&[
        "--socket-path",
        s.to_str().unwrap(),
        "--shared-dir",
        "/nonexistent/boxfs-test",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("shared directory /nonexistent/boxfs-test"),
        "{e}"
    );
    assert!(e.contains("No such file or directory"), "{e}");
    assert!(!s.exists(), "no socket left behind");

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let o = run(&[
        "--socket-path",
        s.to_str().unwrap(),
        "--shared-dir",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    assert!(!s.exists());
}

#[test]
fn usage_errors() {
    // Neither backend.
    let o = run(&["--socket-path", "/tmp/x.sock"]);
    assert_eq!(o.status.code(), Some(2));
    // Both backends.
    let o = run(&[
        "--socket-path",
        "/tmp/x.sock",
        "--shared-dir",
        "/",
        "--memfs-size",
        "1M",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // Bad size and cache policy.
    let o = run(&["--socket-path", "/tmp/x.sock", "--memfs-size", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a size"), "{}", stderr(&o));
    let o = run(&[
        "--socket-path",
        "/tmp/x.sock",
        "--memfs-size",
        "1M",
        "--cache",
        "sometimes",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // Sandboxes other than none and namespace.
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir);
    let o = run(&[
        "--socket-path",
        s.to_str().unwrap(),
        "--memfs-size",
        "1M",
        "--sandbox",
        "chroot",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("none or namespace"), "{}", stderr(&o));
    // Tag too long.
    let long = "t".repeat(37);
    let o = run(&[
        "--socket-path",
        s.to_str().unwrap(),
        "--memfs-size",
        "1M",
        "--tag",
        &long,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tag"), "{}", stderr(&o));
    assert!(!s.exists());
}

#[test]
fn socket_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir);
    let mut first = spawn(&["--socket-path", s.to_str().unwrap(), "--memfs-size", "16M"]);
    wait_for_socket(&s, &mut first);
    let o = run(&["--socket-path", s.to_str().unwrap(), "--memfs-size", "16M"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    assert!(s.exists(), "the running daemon's socket is untouched");
    // The first daemon still serves.
    let mut c = FuseClient::connect(&s).expect("connect");
    c.getattr(ROOT_ID).expect("getattr");
    drop(c);
    assert!(wait_exit(&mut first, HANG_GUARD).success());
}

#[test]
fn memfs_share_exits_cleanly_when_the_vmm_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir);
    let mut child = spawn(&[
        "--socket-path",
        s.to_str().unwrap(),
        "--memfs-size",
        "64M",
        "--tag",
        "scratch",
        "--thread-pool-size",
        "2",
        "--log-level",
        "debug",
    ]);
    wait_for_socket(&s, &mut child);
    {
        let mut c = FuseClient::connect(&s).expect("connect");
        assert_eq!(c.vmm.tag().as_deref(), Some("scratch"));
        let (e, o) = c
            .create(ROOT_ID, "hello", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
            .expect("create");
        c.write(e.nodeid, o.fh, 0, b"hello, guest").expect("write");
        assert_eq!(
            c.read(e.nodeid, o.fh, 0, 64).expect("read"),
            b"hello, guest"
        );
        let st = c.statfs(ROOT_ID).expect("statfs");
        assert!(st.blocks * u64::from(st.bsize) <= 64 << 20);
    }
    let status = wait_exit(&mut child, HANG_GUARD);
    assert!(status.success(), "{status}");
    assert!(!s.exists(), "socket removed");
}

/// Serves a host directory with `extra` flags: the guest reads a host file and creates one
/// (mode 0640, kept in the ownership xattr) that the host sees after the VMM leaves; the
/// daemon exits cleanly and removes its socket. `inspect` looks at the running daemon.
fn shared_dir_round_trip(extra: &[&str], inspect: impl FnOnce(&Child)) {
    let dir = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("host.txt"), b"from the host").unwrap();
    let s = sock(&dir);
    let mut args = vec![
        "--socket-path",
        s.to_str().unwrap(),
        "--shared-dir",
        share.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut child = spawn(&args);
    wait_for_socket(&s, &mut child);
    {
        let mut c = FuseClient::connect(&s).expect("connect");
        inspect(&child);
        let e = c.lookup(ROOT_ID, "host.txt").expect("lookup host file");
        let o = c.open(e.nodeid, libc::O_RDONLY as u32).expect("open");
        assert_eq!(
            c.read(e.nodeid, o.fh, 0, 100).expect("read"),
            b"from the host"
        );
        c.release(e.nodeid, o.fh).expect("release");
        let (g, go) = c
            .create(
                ROOT_ID,
                "guest.txt",
                0o640 | libc::S_IFREG,
                libc::O_RDWR as u32,
            )
            .expect("create (writes the ownership xattr)");
        c.write(g.nodeid, go.fh, 0, b"from the guest")
            .expect("write");
        c.release(g.nodeid, go.fh).expect("release");
        assert_eq!(
            c.getattr(g.nodeid).expect("getattr").attr.mode & 0o777,
            0o640
        );
    }
    assert!(wait_exit(&mut child, HANG_GUARD).success());
    assert_eq!(
        std::fs::read(share.path().join("guest.txt")).unwrap(),
        b"from the guest"
    );
    assert!(!s.exists(), "socket removed");
}

#[test]
fn shared_dir_serves_host_files() {
    shared_dir_round_trip(&["--cache", "never", "--thread-pool-size", "0"], |_| {});
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) with a pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

#[test]
fn sigterm_stops_the_daemon_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir);
    // Idle daemon.
    let mut child = spawn(&["--socket-path", s.to_str().unwrap(), "--memfs-size", "8M"]);
    wait_for_socket(&s, &mut child);
    sigterm(&child);
    assert!(wait_exit(&mut child, HANG_GUARD).success());
    assert!(!s.exists());
    assert_stopped_cleanly(&mut child);

    // Daemon with a VMM attached.
    let mut child = spawn(&[
        "--socket-path",
        s.to_str().unwrap(),
        "--memfs-size",
        "8M",
        "--keep-serving",
    ]);
    wait_for_socket(&s, &mut child);
    let mut c = FuseClient::connect(&s).expect("connect");
    c.getattr(ROOT_ID).expect("getattr");
    sigterm(&child);
    let status = wait_exit(&mut child, HANG_GUARD);
    assert!(status.success(), "{status}");
    assert!(!s.exists());
    assert_stopped_cleanly(&mut child);
}

/// The device itself stopped on the signal, rather than the daemon's fallback exit for a device
/// that does not stop.
fn assert_stopped_cleanly(child: &mut Child) {
    use std::io::Read;
    let mut log = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut log);
    }
    assert!(log.contains("shutting down"), "{log}");
    assert!(!log.contains("did not stop"), "{log}");
}

#[test]
fn keep_serving_survives_a_vmm_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir);
    let mut child = spawn(&[
        "--socket-path",
        s.to_str().unwrap(),
        "--memfs-size",
        "8M",
        "--keep-serving",
    ]);
    wait_for_socket(&s, &mut child);
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    // Descriptors are counted while a VMM is attached and has been served: the daemon
    // accepts a connection only once the previous one is torn down, so every round sees the
    // same state, and a leak shows as a growing count.
    let mut counts = Vec::new();
    for round in 0..6 {
        let mut c = FuseClient::connect(&s).expect("connect (the daemon kept serving)");
        match round {
            0 => {
                c.mkdir(ROOT_ID, "made-before", 0o755).expect("mkdir");
            }
            _ => {
                c.lookup(ROOT_ID, "made-before").expect("still there");
            }
        }
        counts.push(fds(child.id()));
    }
    assert!(
        counts[1..].iter().all(|&n| n == counts[1]),
        "descriptors leak across connections: {counts:?}"
    );
    assert!(child.try_wait().unwrap().is_none(), "still running");
    sigterm(&child);
    assert!(wait_exit(&mut child, HANG_GUARD).success());
    assert!(!s.exists());
}

#[test]
fn serves_an_inherited_listening_socket() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir);
    let listener = std::os::unix::net::UnixListener::bind(&s).unwrap();
    let fd = listener.as_raw_fd();
    // Let the child inherit it.
    // SAFETY: fcntl on a descriptor we own; clearing FD_CLOEXEC has no memory effects.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let mut child = spawn(&["--fd", &fd.to_string(), "--memfs-size", "8M"]);
    drop(listener);
    {
        let mut c = FuseClient::connect(&s).expect("connect");
        c.getattr(ROOT_ID).expect("getattr");
    }
    assert!(wait_exit(&mut child, HANG_GUARD).success());

    let o = run(&["--fd", "999", "--memfs-size", "8M"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--fd 999"), "{}", stderr(&o));
}

#[test]
fn passthrough_options_take_effect() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let share = tempfile::tempdir().unwrap();
    std::fs::write(share.path().join("host.txt"), b"x").unwrap();
    let s = sock(&dir);
    let mut child = spawn(&[
        "--socket-path",
        s.to_str().unwrap(),
        "--shared-dir",
        share.path().to_str().unwrap(),
        "--default-owner",
        "1234:5678",
        "--quota",
        "4K",
        "--host-permissions",
        "mirror",
        "--symlinks",
        "host",
        "--fd-cache-size",
        "16",
        "--thread-pool-size",
        "0",
    ]);
    wait_for_socket(&s, &mut child);
    {
        let mut c = FuseClient::connect(&s).expect("connect");
        let e = c.lookup(ROOT_ID, "host.txt").expect("lookup host file");
        assert_eq!((e.attr.uid, e.attr.gid), (1234, 5678), "--default-owner");
        let (g, go) = c
            .create(ROOT_ID, "g.txt", 0o640 | libc::S_IFREG, libc::O_RDWR as u32)
            .expect("create");
        assert_eq!(c.write(g.nodeid, go.fh, 0, &[7u8; 2048]), Ok(2048));
        // 1 byte already used by host.txt: 2048 more would exceed 4 KiB.
        assert_eq!(
            c.write(g.nodeid, go.fh, 2048, &[7u8; 2048]),
            Err(libc::ENOSPC),
            "--quota"
        );
        c.release(g.nodeid, go.fh).expect("release");
    }
    assert!(wait_exit(&mut child, HANG_GUARD).success());
    let mode = std::fs::metadata(share.path().join("g.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "--host-permissions mirror");
}

#[test]
fn bad_passthrough_option_values_are_usage_errors() {
    let share = tempfile::tempdir().unwrap();
    let d = share.path().to_str().unwrap();
    for args in [
        &["--default-owner", "12"][..],
        &["--default-owner", "a:b"][..],
        &["--symlinks", "weird"][..],
        &["--host-permissions", "open"][..],
        &["--quota", "lots"][..],
    ] {
        let mut all = vec!["--socket-path", "/nonexistent/x.sock", "--shared-dir", d];
        all.extend_from_slice(args);
        let o = run(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(args[0]), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn overlay_serves_lower_and_writes_upper() {
    let dir = tempfile::tempdir().unwrap();
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    std::fs::write(lower.path().join("base.txt"), b"from the lower layer").unwrap();
    std::fs::write(lower.path().join("gone.txt"), b"deleted in the overlay").unwrap();
    let s = sock(&dir);
    let mut child = spawn(&[
        "--socket-path",
        s.to_str().unwrap(),
        "--lower",
        lower.path().to_str().unwrap(),
        "--upper",
        upper.path().to_str().unwrap(),
        "--thread-pool-size",
        "0",
    ]);
    wait_for_socket(&s, &mut child);
    {
        let mut c = FuseClient::connect(&s).expect("connect");
        let e = c.lookup(ROOT_ID, "base.txt").expect("lookup lower file");
        let o = c
            .open(e.nodeid, libc::O_RDWR as u32)
            .expect("open for write");
        c.write(e.nodeid, o.fh, 0, b"FROM")
            .expect("write copies up");
        assert_eq!(
            c.read(e.nodeid, o.fh, 0, 100).expect("read"),
            b"FROM the lower layer"
        );
        c.release(e.nodeid, o.fh).expect("release");
        let unlink = c.call(op::UNLINK, ROOT_ID, &[b"gone.txt\0"], 64);
        assert_eq!(unlink.map(|_| ()), Ok(()));
        assert_eq!(c.lookup(ROOT_ID, "gone.txt").map(|_| ()), Err(libc::ENOENT));
    }
    assert!(wait_exit(&mut child, HANG_GUARD).success());
    // The lower layer is untouched; the upper holds the copy and the whiteout.
    assert_eq!(
        std::fs::read(lower.path().join("base.txt")).unwrap(),
        b"from the lower layer"
    );
    assert!(lower.path().join("gone.txt").exists());
    assert_eq!(
        std::fs::read(upper.path().join("base.txt")).unwrap(),
        b"FROM the lower layer"
    );
    assert_eq!(
        std::fs::metadata(upper.path().join("gone.txt"))
            .unwrap()
            .len(),
        0,
        "whiteout"
    );

    // A bad policy name is a usage error.
    let o = run(&[
        "--socket-path",
        s.to_str().unwrap(),
        "--lower",
        lower.path().to_str().unwrap(),
        "--upper",
        "memfs:64M",
        "--policy",
        "bogus",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--policy bogus"), "{}", stderr(&o));
}

/// A VMM that connects, asks for the features and dies before negotiating (QEMU failing
/// early) ends the daemon like any VMM disconnect; a silent connect-and-close probe does not.
#[test]
fn a_vmm_that_leaves_before_negotiating_ends_the_daemon() {
    use vhost::vhost_user::Frontend;
    use vhost::VhostBackend;
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir);
    let mut child = spawn(&["--socket-path", s.to_str().unwrap(), "--memfs-size", "16M"]);
    wait_for_socket(&s, &mut child);
    // A probe: connect and close without a message. The daemon keeps listening.
    drop(std::os::unix::net::UnixStream::connect(&s).expect("probe"));
    {
        let fe = Frontend::connect(&s, 1).expect("frontend");
        fe.get_features().expect("GET_FEATURES");
    }
    let status = wait_exit(&mut child, HANG_GUARD);
    assert!(status.success(), "{status}");
    assert!(!s.exists(), "socket removed");
}

/// `--sandbox namespace --seccomp kill`: the daemon's root holds nothing but /proc, and it
/// still serves the share (through the descriptors it opened before), xattr-backed ownership
/// included, and removes its socket file at exit (from inside the sandbox).
#[test]
fn namespace_sandbox_serves_with_nothing_else_reachable() {
    shared_dir_round_trip(&["--sandbox", "namespace", "--seccomp", "kill"], |child| {
        let root = std::path::PathBuf::from(format!("/proc/{}/root", child.id()));
        let names: Vec<String> = std::fs::read_dir(&root)
            .expect("read the daemon's root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["proc".to_string()], "sandbox root");
    });
}

/// The daemon's defaults confine it: no `--sandbox` or `--seccomp` flag, and it runs in its own
/// namespace with only `/proc`, `no_new_privs`, and the seccomp filter in force
/// (`tests/sandbox.rs` shows that filter killing a process on a forbidden call).
#[test]
fn confined_by_default() {
    shared_dir_round_trip(&[], |child| {
        let root = std::path::PathBuf::from(format!("/proc/{}/root", child.id()));
        let names: Vec<String> = std::fs::read_dir(&root)
            .expect("read the daemon's root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["proc".to_string()], "sandbox root");
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("daemon status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        assert_eq!(field("NoNewPrivs:").as_deref(), Some("1"), "{status}");
        assert_eq!(
            field("Seccomp:").as_deref(),
            Some("2"),
            "filter mode: {status}"
        );
        // The clone3 -> ENOSYS filter and the allow-list.
        assert_eq!(field("Seccomp_filters:").as_deref(), Some("2"), "{status}");
    });
}

/// `--sandbox none --seccomp none` opts out of both.
#[test]
fn opting_out_of_the_sandbox() {
    shared_dir_round_trip(&["--sandbox", "none", "--seccomp", "none"], |child| {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).expect("daemon status");
        assert!(status.contains("Seccomp:\t0"), "{status}");
        let root = std::path::PathBuf::from(format!("/proc/{}/root", child.id()));
        assert!(root.join("proc").exists() && root.join("tmp").exists());
    });
}

/// Where the kernel refuses the daemon a user namespace (here: started inside a user namespace
/// that maps none of its ids, so it may not make another), the default sandbox fails loudly,
/// names the opt-out, and leaves no socket behind: never a silent unconfined daemon.
#[test]
fn no_user_namespace_is_a_clear_error_naming_the_opt_out() {
    if Command::new("unshare").arg("--version").output().is_err() {
        panic!("util-linux `unshare` is needed (scripts/guest/install-deps.sh installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let s = sock(&dir);
    let o = Command::new("unshare")
        .arg("--user")
        .arg(env!("CARGO_BIN_EXE_boxfsd"))
        .args(["--socket-path", s.to_str().unwrap(), "--memfs-size", "8M"])
        .stdin(Stdio::null())
        .output()
        .expect("run boxfsd in a user namespace");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--sandbox none"), "{err}");
    assert!(!s.exists(), "socket left behind");
}

/// Descriptors of a process, counted in `/proc`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// A single device serving a host directory keeps its inodes' descriptors for more files than
/// the library default of 1024 by default (a quarter of the open-file limit), so a guest walking
/// a tree of a few thousand files is not served by re-opening every one (an LRU smaller than
/// the walk misses on every access); `--fd-cache-size` still bounds it.
#[test]
fn the_shared_directory_cache_follows_the_open_file_limit() {
    const FILES: usize = 1500;
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    for i in 0..FILES {
        std::fs::write(share.join(format!("f{i}")), b"x").unwrap();
    }
    // The daemon raises its soft limit to the hard one it inherits from us.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    let default = (hard / 4).clamp(1024, 65_536) as usize;
    let held_after_walk = |extra: &[&str]| {
        let s = dir.path().join("fd.sock");
        let share = share.to_str().unwrap();
        let mut args = vec![
            "--socket-path",
            s.to_str().unwrap(),
            "--shared-dir",
            share,
            "--sandbox",
            "none",
        ];
        args.extend_from_slice(extra);
        let mut child = spawn(&args);
        wait_for_socket(&s, &mut child);
        let mut c = FuseClient::connect(&s).expect("connect");
        let before = fd_count(child.id());
        for i in 0..FILES {
            c.lookup(ROOT_ID, &format!("f{i}")).expect("lookup");
        }
        let held = fd_count(child.id()) - before;
        drop(c);
        assert!(wait_exit(&mut child, HANG_GUARD).success());
        held
    };
    // The cache keeps three quarters of its size for live inodes (a quarter is for removed
    // files still open).
    let capacity = |n: usize| n - n / 4;
    let held = held_after_walk(&[]);
    assert!(
        held >= capacity(default).min(FILES) - 16 && held <= default,
        "default cache ({default} for a hard limit of {hard}): {held} descriptors held"
    );
    let held = held_after_walk(&["--fd-cache-size", "1024"]);
    assert!(
        held <= capacity(1024),
        "--fd-cache-size 1024: {held} descriptors held"
    );
}
