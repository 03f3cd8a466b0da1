//! Offline snapshots of an in-memory share (issue 18): `boxfsd --snapshot-file` writes the
//! share's state on SIGUSR1 and on the API's `PUT /snapshot`, from inside the default sandbox
//! (private mount namespace, seccomp kill); `--memfs-from` starts a new daemon with that
//! content; a corrupt snapshot makes the start fail.
#![cfg(target_os = "linux")]

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boxfs::ROOT_ID;
use vmm::FuseClient;

/// Bounds how long a broken daemon can stall the suite; not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_boxfsd"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn boxfsd")
}

/// Waits for `path`: a socket until it listens (its file exists a moment before), any other
/// file until it exists.
fn wait_for(path: &Path, child: &mut Child) {
    use std::os::unix::fs::FileTypeExt;
    let ready = |p: &Path| match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_socket() => boxfs::vhost::socket_listening(p),
        Ok(_) => true,
        Err(_) => false,
    };
    let deadline = Instant::now() + HANG_GUARD;
    while !ready(path) {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(e) = child.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("boxfsd exited early: {status}\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(e) = child.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            return (status, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("boxfsd did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The guest's work: a file with data, a directory, a file in it.
fn fill(c: &mut FuseClient) {
    c.init().expect("init");
    let (e, o) = c
        .create(ROOT_ID, "hello.txt", 0o640, libc::O_RDWR as u32)
        .expect("create");
    c.write(e.nodeid, o.fh, 0, b"kept in memory\n")
        .expect("write");
    let d = c.mkdir(ROOT_ID, "dir", 0o755).expect("mkdir");
    let (e2, o2) = c.create(d.nodeid, "inner", 0o600, 0).expect("create inner");
    c.release(e2.nodeid, o2.fh).expect("release");
    // hello.txt stays open: a snapshot of a share in use.
}

/// Checks what `fill` made, on a fresh daemon.
fn check(c: &mut FuseClient) {
    c.init().expect("init");
    let e = c.lookup(ROOT_ID, "hello.txt").expect("hello.txt restored");
    assert_eq!(e.attr.mode & 0o7777, 0o640);
    let o = c.open(e.nodeid, libc::O_RDONLY as u32).expect("open");
    assert_eq!(
        c.read(e.nodeid, o.fh, 0, 4096).expect("read"),
        b"kept in memory\n"
    );
    let d = c.lookup(ROOT_ID, "dir").expect("dir restored");
    assert_eq!(d.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    c.lookup(d.nodeid, "inner").expect("dir/inner restored");
}

fn restored_daemon(dir: &Path, from: &Path) -> (Child, PathBuf) {
    let sock = dir.join("restored.sock");
    let mut d = spawn(&[
        "--socket-path",
        sock.to_str().unwrap(),
        "--memfs-size",
        "64M",
        "--memfs-from",
        from.to_str().unwrap(),
    ]);
    wait_for(&sock, &mut d);
    (d, sock)
}

#[test]
fn sigusr1_writes_a_snapshot_that_memfs_from_restores() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let snap = dir.path().join("snaps").join("scratch.state");
    std::fs::create_dir(snap.parent().unwrap()).unwrap();
    // Default sandbox and seccomp: the snapshot is written through the directory descriptor
    // opened before the daemon confined itself.
    let mut d = spawn(&[
        "--socket-path",
        sock.to_str().unwrap(),
        "--memfs-size",
        "64M",
        "--snapshot-file",
        snap.to_str().unwrap(),
    ]);
    wait_for(&sock, &mut d);
    let mut c = FuseClient::connect(&sock).expect("connect");
    fill(&mut c);
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(d.id() as i32, libc::SIGUSR1) }, 0);
    // The file appears only complete (renamed into place after fsync).
    wait_for(&snap, &mut d);
    drop(c);
    let (status, err) = wait_exit(&mut d);
    assert!(status.success(), "daemon: {status}\n{err}");
    assert!(err.contains("snapshot written to"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(snap.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("scratch.state")]);

    let (mut d2, sock2) = restored_daemon(dir.path(), &snap);
    let mut c = FuseClient::connect(&sock2).expect("connect");
    check(&mut c);
    drop(c);
    let (status, err) = wait_exit(&mut d2);
    assert!(status.success(), "{err}");
    assert!(err.contains("restored the in-memory filesystem"), "{err}");
}

fn api(api: &Path, method: &str, target: &str, body: &str) -> (u16, String) {
    // The socket file exists from bind(), a moment before listen().
    let deadline = Instant::now() + HANG_GUARD;
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(api) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect {}: {e}", api.display()),
        }
    };
    s.set_read_timeout(Some(HANG_GUARD)).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

#[test]
fn api_put_snapshot_writes_named_snapshots_in_the_snapshot_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let api_sock = dir.path().join("api.sock");
    let default = dir.path().join("default.state");
    let mut d = spawn(&[
        "--socket-path",
        sock.to_str().unwrap(),
        "--api-socket",
        api_sock.to_str().unwrap(),
        "--memfs-size",
        "64M",
        "--snapshot-file",
        default.to_str().unwrap(),
    ]);
    wait_for(&sock, &mut d);
    wait_for(&api_sock, &mut d);
    let mut c = FuseClient::connect(&sock).expect("connect");
    fill(&mut c);

    let (status, resp) = api(&api_sock, "PUT", "/snapshot", r#"{"path":"named.state"}"#);
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("\"bytes\""), "{resp}");
    assert!(dir.path().join("named.state").is_file());
    for bad in [
        r#"{"path":"../x"}"#,
        r#"{"path":"/tmp/x"}"#,
        r#"{"path":""}"#,
    ] {
        let (status, resp) = api(&api_sock, "PUT", "/snapshot", bad);
        assert_eq!(status, 400, "{bad}: {resp}");
    }
    let (status, resp) = api(&api_sock, "PUT", "/snapshot", r#"{"nope":1}"#);
    assert_eq!(status, 400, "{resp}");
    let (status, resp) = api(&api_sock, "PUT", "/snapshot", "");
    assert_eq!(status, 200, "{resp}");
    assert!(default.is_file());
    drop(c);
    let (status, err) = wait_exit(&mut d);
    assert!(status.success(), "{err}");

    for snap in [dir.path().join("named.state"), default] {
        let (mut d2, sock2) = restored_daemon(dir.path(), &snap);
        let mut c = FuseClient::connect(&sock2).expect("connect");
        check(&mut c);
        drop(c);
        let (status, err) = wait_exit(&mut d2);
        assert!(status.success(), "{err}");
    }
}

#[test]
fn api_snapshot_without_snapshot_file_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let api_sock = dir.path().join("api.sock");
    let mut d = spawn(&[
        "--socket-path",
        sock.to_str().unwrap(),
        "--api-socket",
        api_sock.to_str().unwrap(),
        "--memfs-size",
        "64M",
    ]);
    wait_for(&api_sock, &mut d);
    let (status, resp) = api(&api_sock, "PUT", "/snapshot", "");
    assert_eq!(status, 404, "{resp}");
    let _ = d.kill();
    let _ = d.wait();
}

/// Writes a snapshot with SIGUSR1 and returns its bytes.
fn snapshot_bytes(dir: &Path) -> Vec<u8> {
    let sock = dir.join("s.sock");
    let snap = dir.join("s.state");
    let mut d = spawn(&[
        "--socket-path",
        sock.to_str().unwrap(),
        "--memfs-size",
        "64M",
        "--snapshot-file",
        snap.to_str().unwrap(),
    ]);
    wait_for(&sock, &mut d);
    let mut c = FuseClient::connect(&sock).expect("connect");
    fill(&mut c);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.id() as i32, libc::SIGUSR1) };
    wait_for(&snap, &mut d);
    drop(c);
    wait_exit(&mut d);
    std::fs::read(&snap).unwrap()
}

#[test]
fn memfs_from_rejects_corrupt_and_truncated_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let good = snapshot_bytes(dir.path());
    let mut flipped = good.clone();
    let at = good.len() / 2;
    flipped[at] ^= 0x40;
    let truncated = good[..good.len() - 3].to_vec();
    for (name, bytes) in [("flipped", flipped), ("truncated", truncated)] {
        let file = dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        let sock = dir.path().join(format!("{name}.sock"));
        let mut d = spawn(&[
            "--socket-path",
            sock.to_str().unwrap(),
            "--memfs-size",
            "64M",
            "--memfs-from",
            file.to_str().unwrap(),
        ]);
        let (status, err) = wait_exit(&mut d);
        assert_eq!(status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("--memfs-from"), "{name}: {err}");
        assert!(!sock.exists(), "{name}: socket left behind");
    }
}

#[test]
fn memfs_from_needs_memfs_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_boxfsd"))
        .args([
            "--socket-path",
            dir.path().join("x.sock").to_str().unwrap(),
            "--shared-dir",
            dir.path().to_str().unwrap(),
            "--memfs-from",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--memfs-size"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
