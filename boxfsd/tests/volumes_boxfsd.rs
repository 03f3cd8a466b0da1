//! `boxfsd --volume`: one device serving a table of volumes (dir, memfs, file, virtual), under
//! the default sandbox, through the test VMM.
#![cfg(target_os = "linux")]

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use boxfs::ROOT_ID;
use fuse_backend_rs::abi::fuse_abi::{InitIn, InitIn2, InitOut, RenameIn, ATTR_SUBMOUNT};
use vm_memory::ByteValued;
use vmm::{obj, op, FuseClient, GUEST_INIT_FLAGS};

/// Bounds how long a broken daemon can stall the suite (not a timing assertion).
const HANG_GUARD: Duration = Duration::from_secs(120);
const FUSE_SUBMOUNTS: u32 = 1 << 27;
const FUSE_RENAME: u32 = 12;

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

fn spawn(args: &[&str]) -> Child {
    boxfsd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn boxfsd")
}

fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + HANG_GUARD;
    while !boxfs::vhost::socket_listening(path) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("boxfsd exited early: {status}");
        }
        assert!(Instant::now() < deadline, "boxfsd did not create {path:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("boxfsd did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// FUSE_INIT offering submounts; returns the daemon's flags.
fn init_with_submounts(c: &mut FuseClient) -> u32 {
    let init = InitIn {
        major: 7,
        minor: 38,
        max_readahead: 128 << 10,
        flags: GUEST_INIT_FLAGS | FUSE_SUBMOUNTS | (1 << 30),
    };
    let init2 = InitIn2::default();
    let b = c
        .call(op::INIT, 0, &[init.as_slice(), init2.as_slice()], 256)
        .expect("init");
    let mut out = [0u8; size_of::<InitOut>()];
    let n = b.len().min(out.len());
    out[..n].copy_from_slice(&b[..n]);
    obj::<InitOut>(&out).flags
}

fn rename(c: &mut FuseClient, from: u64, old: &str, to: u64, new: &str) -> Result<(), i32> {
    let r = RenameIn { newdir: to };
    let o = format!("{old}\0");
    let n = format!("{new}\0");
    c.call(
        FUSE_RENAME,
        from,
        &[r.as_slice(), o.as_bytes(), n.as_bytes()],
        64,
    )
    .map(|_| ())
}

fn read_all(c: &mut FuseClient, ino: u64) -> Vec<u8> {
    let fh = c.open(ino, libc::O_RDONLY as u32).expect("open").fh;
    let data = c.read(ino, fh, 0, 1 << 16).expect("read");
    c.release(ino, fh).expect("release");
    data
}

struct Fixture {
    dir: tempfile::TempDir,
    sock: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    std::fs::create_dir_all(work.join(".git")).expect("mkdir");
    std::fs::write(work.join("hello.txt"), b"work data").expect("write");
    std::fs::write(work.join(".git/config"), b"secret").expect("write");
    std::fs::write(dir.path().join("app.conf"), b"key=value\n").expect("write");
    std::fs::write(dir.path().join("init"), b"#!/bin/sh\necho hi\n").expect("write");
    std::fs::create_dir(dir.path().join("run")).expect("mkdir");
    let sock = dir.path().join("boxfsd.sock");
    Fixture { dir, sock }
}

fn p(f: &Fixture, rel: &str) -> String {
    f.dir.path().join(rel).to_str().expect("utf-8").to_owned()
}

#[test]
fn one_device_serves_every_volume_at_its_path() {
    let f = fixture();
    let vols = [
        format!("/work=dir:{},hide=.git/", p(&f, "work")),
        "/tmp=memfs:8M".to_string(),
        "/ro=memfs:1M,ro".to_string(),
        format!("/etc/app.conf=file:{},ro", p(&f, "app.conf")),
        format!("/init.krun=virtual:{},mode=0755", p(&f, "init")),
    ];
    let mut args = vec![
        "--socket-path".to_string(),
        f.sock.to_str().expect("utf-8").to_owned(),
        "--runtime-dir".into(),
        p(&f, "run"),
    ];
    for v in &vols {
        args.push("--volume".into());
        args.push(v.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The default sandbox (namespace + seccomp kill) stays on.
    let mut child = spawn(&args);
    wait_for(&f.sock, &mut child);
    {
        let mut c = FuseClient::connect(&f.sock).expect("connect");
        let flags = init_with_submounts(&mut c);
        assert_ne!(flags & FUSE_SUBMOUNTS, 0, "submounts accepted");

        // Every mount point is listed in the default in-memory root.
        let mut names: Vec<String> = c
            .list(ROOT_ID)
            .expect("list /")
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        assert_eq!(names, ["etc", "init.krun", "ro", "tmp", "work"]);

        // dir volume: a submount, its file, its hidden name.
        let work = c.lookup(ROOT_ID, "work").expect("work");
        assert_ne!(
            work.attr.flags & ATTR_SUBMOUNT,
            0,
            "volume root is a submount"
        );
        let hello = c.lookup(work.nodeid, "hello.txt").expect("hello.txt");
        assert_eq!(read_all(&mut c, hello.nodeid), b"work data");
        assert_eq!(c.lookup(work.nodeid, ".git").unwrap_err(), libc::ENOENT);
        let listed: Vec<String> = c
            .list(work.nodeid)
            .expect("list /work")
            .into_iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        assert!(!listed.iter().any(|n| n == ".git"), "{listed:?}");

        // memfs volume; rename across volumes is EXDEV.
        let tmp = c.lookup(ROOT_ID, "tmp").expect("tmp");
        assert_ne!(tmp.attr.flags & ATTR_SUBMOUNT, 0);
        let (x, o) = c
            .create(tmp.nodeid, "x", 0o644, libc::O_RDWR as u32)
            .expect("create in /tmp");
        c.release(x.nodeid, o.fh).expect("release");
        assert_eq!(
            rename(&mut c, tmp.nodeid, "x", work.nodeid, "x").unwrap_err(),
            libc::EXDEV
        );
        assert_eq!(
            rename(&mut c, work.nodeid, "hello.txt", ROOT_ID, "h").unwrap_err(),
            libc::EXDEV
        );
        assert!(!f.dir.path().join("work/x").exists());

        // ro volume.
        let ro = c.lookup(ROOT_ID, "ro").expect("ro");
        assert_eq!(c.mkdir(ro.nodeid, "d", 0o755).unwrap_err(), libc::EROFS);

        // file volume, under a parent the daemon made in the root.
        let etc = c.lookup(ROOT_ID, "etc").expect("etc");
        let conf = c.lookup(etc.nodeid, "app.conf").expect("app.conf");
        assert_eq!(conf.attr.mode & libc::S_IFMT, libc::S_IFREG);
        assert_eq!(read_all(&mut c, conf.nodeid), b"key=value\n");

        // virtual file: its bytes and its mode, not writable.
        let init = c.lookup(ROOT_ID, "init.krun").expect("init.krun");
        assert_eq!(init.attr.mode & libc::S_IFMT, libc::S_IFREG);
        assert_eq!(init.attr.mode & 0o7777, 0o755);
        assert_eq!(read_all(&mut c, init.nodeid), b"#!/bin/sh\necho hi\n");
        assert!(c.open(init.nodeid, libc::O_WRONLY as u32).is_err());
    }
    assert!(
        wait_exit(&mut child).success(),
        "clean exit, not a seccomp kill"
    );
}

#[test]
fn volume_spec_errors_are_clear() {
    let f = fixture();
    let s = f.sock.to_str().expect("utf-8");
    let err = |args: &[&str]| {
        let o = run(args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, e) = err(&["--socket-path", s, "--volume", "/work=nfs:/x"]);
    assert_eq!(code, Some(2));
    assert!(e.contains("unknown volume kind `nfs`"), "{e}");
    let (code, e) = err(&["--socket-path", s, "--volume", "/tmp=memfs:lots"]);
    assert_eq!(code, Some(2));
    assert!(e.contains("memfs size `lots`"), "{e}");
    let (code, e) = err(&["--socket-path", s, "--volume", "/w=dir:/nonexistent/boxfs"]);
    assert_eq!(code, Some(1));
    assert!(e.contains("/nonexistent/boxfs"), "{e}");
    let (code, e) = err(&[
        "--socket-path",
        s,
        "--volume",
        "/=memfs:1M",
        "--memfs-size",
        "1M",
    ]);
    assert_eq!(code, Some(1));
    assert!(e.contains("give one"), "{e}");
    let (code, e) = err(&[
        "--socket-path",
        s,
        "--volume",
        "/a=memfs:1M",
        "--volume",
        "/a=memfs:1M",
    ]);
    assert_eq!(code, Some(1));
    assert!(e.contains("given twice"), "{e}");
    assert!(!f.sock.exists(), "no socket left behind");
}

#[test]
fn shorthand_is_the_root_of_the_table() {
    let f = fixture();
    let s = f.sock.to_str().expect("utf-8");
    let work = p(&f, "work");
    let mut child = spawn(&[
        "--socket-path",
        s,
        "--shared-dir",
        &work,
        "--volume",
        "/scratch=memfs:1M",
    ]);
    wait_for(&f.sock, &mut child);
    {
        let mut c = FuseClient::connect(&f.sock).expect("connect");
        c.init().expect("init");
        let hello = c
            .lookup(ROOT_ID, "hello.txt")
            .expect("root is the shared dir");
        assert_eq!(read_all(&mut c, hello.nodeid), b"work data");
        c.lookup(ROOT_ID, "scratch").expect("volume in it");
        // The mount point was not created on the host (it is virtual in the listing).
        assert!(!f.dir.path().join("work/scratch").exists());
    }
    assert!(wait_exit(&mut child).success());
}

/// One HTTP/1.1 request over the API socket: (status, body).
fn http(api: &Path, method: &str, target: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(api).expect("connect api");
    s.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read reply");
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad reply {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn api_attaches_and_detaches_while_the_guest_runs() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let api = f.dir.path().join("api.sock");
    let s = f.sock.to_str().expect("utf-8");
    let mut child = spawn(&[
        "--socket-path",
        s,
        "--api-socket",
        api.to_str().expect("utf-8"),
        "--volume",
        "/tmp=memfs:1M",
        "--volume",
        &format!("/etc/app.conf=file:{},ro", p(&f, "app.conf")),
        "--runtime-dir",
        &p(&f, "run"),
    ]);
    wait_for(&f.sock, &mut child);
    let mode = std::fs::metadata(&api)
        .expect("api socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the API socket is private");
    {
        let mut c = FuseClient::connect(&f.sock).expect("connect");
        init_with_submounts(&mut c);
        let (st, body) = http(&api, "GET", "/volumes", "");
        assert_eq!(st, 200, "{body}");
        let rows: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(rows[0]["path"], "/etc/app.conf");
        assert_eq!(rows[0]["kind"], "file");
        assert_eq!(rows[0]["readonly"], true);
        assert_eq!(rows[1]["path"], "/tmp");
        assert_eq!(rows[1]["kind"], "memfs");
        assert_eq!(c.lookup(ROOT_ID, "data").unwrap_err(), libc::ENOENT);

        // Attach: visible at the guest's next lookup.
        let (st, body) = http(
            &api,
            "PUT",
            "/volumes",
            r#"{"path":"/data","kind":"memfs","size":"1M"}"#,
        );
        assert_eq!(st, 201, "{body}");
        let row: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(row["path"], "/data");
        assert_eq!(row["kind"], "memfs");
        assert_eq!(row["source"], "1M");
        let data = c.lookup(ROOT_ID, "data").expect("attached volume");
        assert_ne!(data.attr.flags & ATTR_SUBMOUNT, 0);
        let (st, body) = http(
            &api,
            "PUT",
            "/volumes",
            r#"{"path":"/data","kind":"memfs","size":"1M"}"#,
        );
        assert_eq!(st, 409, "{body}");
        assert!(body.contains("\"error\""), "{body}");
        let (st, _) = http(
            &api,
            "PUT",
            "/volumes",
            r#"{"path":"/token","kind":"virtual","content":"s3cret","mode":"0400"}"#,
        );
        assert_eq!(st, 201);
        let token = c.lookup(ROOT_ID, "token").expect("virtual volume");
        assert_eq!(token.attr.mode & 0o7777, 0o400);
        assert_eq!(read_all(&mut c, token.nodeid), b"s3cret");
        // A host directory cannot be opened from inside the sandbox: a clear 4xx.
        let work = p(&f, "work");
        let (st, body) = http(
            &api,
            "PUT",
            "/volumes",
            &format!(r#"{{"path":"/w","kind":"dir","source":"{work}"}}"#),
        );
        assert_eq!(st, 403, "{body}");
        assert!(body.contains("--sandbox none"), "{body}");
        // Missing parents of a mount point are made in the in-memory root.
        let (st, body) = http(
            &api,
            "PUT",
            "/volumes",
            r#"{"path":"/opt/agent/token","kind":"virtual","content":"t"}"#,
        );
        assert_eq!(st, 201, "{body}");
        let opt = c.lookup(ROOT_ID, "opt").expect("opt");
        let agent = c.lookup(opt.nodeid, "agent").expect("agent");
        let token2 = c.lookup(agent.nodeid, "token").expect("token");
        assert_eq!(read_all(&mut c, token2.nodeid), b"t");
        // A file volume from the command line detaches inside the sandbox too.
        let etc = c.lookup(ROOT_ID, "etc").expect("etc");
        c.lookup(etc.nodeid, "app.conf").expect("app.conf");
        let (st, body) = http(&api, "DELETE", "/volumes?path=/etc/app.conf", "");
        assert_eq!(st, 204, "{body}");
        assert_eq!(c.lookup(etc.nodeid, "app.conf").unwrap_err(), libc::ENOENT);
        let (st, body) = http(&api, "PUT", "/volumes", r#"{"path":"/x","kind":"nfs"}"#);
        assert_eq!(st, 400, "{body}");

        // Busy detach: 409, nothing changes.
        let (file, o) = c
            .create(data.nodeid, "open", 0o644, libc::O_RDWR as u32)
            .expect("create");
        let (st, body) = http(&api, "DELETE", "/volumes?path=/data", "");
        assert_eq!(st, 409, "{body}");
        assert!(body.contains("busy"), "{body}");
        c.lookup(ROOT_ID, "data").expect("still attached");
        c.write(file.nodeid, o.fh, 0, b"x").expect("still writable");
        c.release(file.nodeid, o.fh).expect("release");
        // Closed: the detach goes through and the volume disappears, cached nodes go stale.
        let (st, body) = http(&api, "DELETE", "/volumes?path=%2Fdata", "");
        assert_eq!(st, 204, "{body}");
        assert_eq!(c.lookup(ROOT_ID, "data").unwrap_err(), libc::ENOENT);
        assert!(
            c.getattr(file.nodeid).is_err(),
            "cached node of a detached volume"
        );
        let (st, _) = http(&api, "DELETE", "/volumes?path=/data", "");
        assert_eq!(st, 404);
        // Forced detach with an open file.
        let tmp = c.lookup(ROOT_ID, "tmp").expect("tmp");
        let (f2, o2) = c
            .create(tmp.nodeid, "f", 0o644, libc::O_RDWR as u32)
            .expect("create");
        let (st, _) = http(&api, "DELETE", "/volumes?path=/tmp", "");
        assert_eq!(st, 409);
        let (st, _) = http(&api, "DELETE", "/volumes?path=/tmp&force=true", "");
        assert_eq!(st, 204);
        assert!(c.read(f2.nodeid, o2.fh, 0, 16).is_err(), "handle ended");
        let (st, body) = http(&api, "GET", "/volumes", "");
        assert_eq!(st, 200);
        let rows: serde_json::Value = serde_json::from_str(&body).expect("json");
        let paths: Vec<&str> = rows
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["path"].as_str().expect("path"))
            .collect();
        assert_eq!(paths, ["/opt/agent/token", "/token"], "{body}");
    }
    assert!(
        wait_exit(&mut child).success(),
        "clean exit, not a seccomp kill"
    );
}

#[test]
fn api_attaches_host_directories_unsandboxed() {
    let f = fixture();
    let api = f.dir.path().join("api.sock");
    let mut child = spawn(&[
        "--socket-path",
        f.sock.to_str().expect("utf-8"),
        "--api-socket",
        api.to_str().expect("utf-8"),
        "--sandbox",
        "none",
    ]);
    wait_for(&f.sock, &mut child);
    {
        let mut c = FuseClient::connect(&f.sock).expect("connect");
        c.init().expect("init");
        let work = p(&f, "work");
        let (st, body) = http(
            &api,
            "PUT",
            "/volumes",
            &format!(
                r#"{{"path":"/w","kind":"dir","source":"{work}","readonly":true,"hide":[".git"]}}"#
            ),
        );
        assert_eq!(st, 201, "{body}");
        let w = c.lookup(ROOT_ID, "w").expect("w");
        let hello = c.lookup(w.nodeid, "hello.txt").expect("hello");
        assert_eq!(read_all(&mut c, hello.nodeid), b"work data");
        assert_eq!(c.lookup(w.nodeid, ".git").unwrap_err(), libc::ENOENT);
        assert_eq!(c.mkdir(w.nodeid, "d", 0o755).unwrap_err(), libc::EROFS);
        let (st, body) = http(&api, "GET", "/volumes", "");
        assert_eq!(st, 200);
        assert!(
            body.contains(&work) && body.contains("\"readonly\":true"),
            "{body}"
        );
    }
    assert!(wait_exit(&mut child).success());
    assert!(!api.exists(), "API socket removed at exit");
}

/// Spawns the daemon with stdout piped and reads its first stdout line.
fn spawn_first_line(
    args: &[&str],
) -> (Child, std::io::BufReader<std::process::ChildStdout>, String) {
    use std::io::{BufRead, BufReader};
    let mut child = boxfsd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn boxfsd");
    let out = child.stdout.take().expect("stdout");
    let mut out = BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line).expect("read plan");
    (child, out, line)
}

#[test]
fn plan_json_for_the_device() {
    let f = fixture();
    let s = f.sock.to_str().expect("utf-8");
    let (mut child, _out, line) = spawn_first_line(&[
        "--socket-path",
        s,
        "--tag",
        "sandbox",
        "--plan",
        "json",
        "--volume",
        "/work=memfs:1M,ro",
        "--volume",
        "/tmp=memfs:1M",
    ]);
    let plan: serde_json::Value = serde_json::from_str(&line).expect("one line of JSON");
    assert_eq!(plan["kind"], "device");
    assert_eq!(plan["tag"], "sandbox");
    assert_eq!(plan["fstype"], "virtiofs");
    assert_eq!(plan["mount_point"], "/");
    assert_eq!(plan["options"], serde_json::json!(["rw"]));
    assert_eq!(
        plan["kernel_cmdline"],
        "rootfstype=virtiofs root=sandbox rw"
    );
    let vols = plan["volumes"].as_array().expect("volumes");
    assert_eq!(vols.len(), 2);
    assert!(vols
        .iter()
        .any(|v| v["path"] == "/work" && v["kind"] == "memfs" && v["readonly"] == true));
    // Printed once the socket listens: the tag is the device's.
    let c = FuseClient::connect(&f.sock).expect("connect");
    assert_eq!(c.vmm.tag().as_deref(), Some("sandbox"));
    drop(c);
    assert!(wait_exit(&mut child).success());

    // A mount point elsewhere: no kernel command line; sh form mounts the tag there.
    let (mut child, mut out, line) = spawn_first_line(&[
        "--socket-path",
        s,
        "--plan",
        "sh",
        "--mount-point",
        "/mnt/sandbox",
        "--memfs-size",
        "1M",
    ]);
    assert_eq!(line, "#!/bin/sh\n");
    let mut script = String::new();
    while !script.ends_with("# end of plan\n") {
        use std::io::BufRead;
        assert_ne!(out.read_line(&mut script).expect("read"), 0, "{script}");
    }
    assert!(script.contains("mkdir -p '/mnt/sandbox'\n"), "{script}");
    assert!(
        script.contains("mount -t virtiofs -o rw \"${BOXFS_TAG:?"),
        "{script}"
    );
    assert!(!script.contains("rootfstype"), "{script}");
    drop(FuseClient::connect(&f.sock).expect("connect"));
    assert!(wait_exit(&mut child).success());
}

#[test]
fn plan_json_for_a_shared_file() {
    let f = fixture();
    let (mut child, _out, line) = spawn_first_line(&[
        "--socket-path",
        f.sock.to_str().expect("utf-8"),
        "--shared-file",
        &p(&f, "app.conf"),
        "--guest-path",
        "/etc/app/app.conf",
        "--readonly",
        "--runtime-dir",
        &p(&f, "run"),
        "--plan",
        "json",
    ]);
    let plan: serde_json::Value = serde_json::from_str(&line).expect("one line of JSON");
    assert_eq!(plan["kind"], "file");
    let tag = plan["tag"].as_str().expect("tag").to_owned();
    assert!(tag.starts_with("fm_"), "{tag}");
    assert_eq!(plan["mounts"][0]["destination"], "/etc/app/app.conf");
    assert_eq!(plan["mounts"][0]["file_name"], "app.conf");
    assert_eq!(plan["mounts"][0]["readonly"], true);
    let ops: Vec<&str> = plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["op"].as_str().expect("op"))
        .collect();
    assert_eq!(ops.first(), Some(&"mount_share"));
    assert!(ops.contains(&"bind_mount"), "{ops:?}");
    assert_eq!(ops.last(), Some(&"detach_share"));
    assert_eq!(plan["steps"][0]["tag"], tag.as_str());
    let c = FuseClient::connect(&f.sock).expect("connect");
    assert_eq!(c.vmm.tag().as_deref(), Some(tag.as_str()));
    drop(c);
    assert!(wait_exit(&mut child).success());
}

#[test]
fn overlay_root_gets_the_mount_points_parents_in_its_upper() {
    let f = fixture();
    let lower = f.dir.path().join("lower");
    std::fs::create_dir_all(lower.join("bin")).expect("mkdir");
    std::fs::write(lower.join("bin/sh"), b"lower file").expect("write");
    let s = f.sock.to_str().expect("utf-8");
    let root = format!(
        "/=overlay:lower={},upper=memfs:4M",
        lower.to_str().expect("utf-8")
    );
    let conf = format!("/etc/app.conf=file:{},ro", p(&f, "app.conf"));
    let nested = format!("/srv/ov=overlay:lower={},upper=memfs:1M", p(&f, "work"));
    let run = p(&f, "run");
    let mut child = spawn(&[
        "--socket-path",
        s,
        "--runtime-dir",
        &run,
        "--volume",
        &root,
        "--volume",
        &conf,
        "--volume",
        &nested,
    ]);
    wait_for(&f.sock, &mut child);
    {
        let mut c = FuseClient::connect(&f.sock).expect("connect");
        init_with_submounts(&mut c);
        let bin = c.lookup(ROOT_ID, "bin").expect("bin from the lower layer");
        let sh = c.lookup(bin.nodeid, "sh").expect("sh");
        assert_eq!(read_all(&mut c, sh.nodeid), b"lower file");
        let etc = c.lookup(ROOT_ID, "etc").expect("etc made in the upper");
        let conf = c.lookup(etc.nodeid, "app.conf").expect("app.conf");
        assert_eq!(read_all(&mut c, conf.nodeid), b"key=value\n");
        let srv = c.lookup(ROOT_ID, "srv").expect("srv");
        let ov = c.lookup(srv.nodeid, "ov").expect("overlay volume");
        assert_ne!(ov.attr.flags & ATTR_SUBMOUNT, 0);
        let hello = c.lookup(ov.nodeid, "hello.txt").expect("hello");
        assert_eq!(read_all(&mut c, hello.nodeid), b"work data");
        // Writes go to the volume's in-memory upper, never to the host lower.
        let (n, o) = c
            .create(ov.nodeid, "new", 0o644, libc::O_RDWR as u32)
            .expect("create in the overlay volume");
        c.write(n.nodeid, o.fh, 0, b"up").expect("write");
        c.release(n.nodeid, o.fh).expect("release");
        assert!(!f.dir.path().join("work/new").exists());
    }
    assert!(!lower.join("etc").exists(), "the lower layer is untouched");
    assert!(wait_exit(&mut child).success());
}

/// The guest kernel makes a submount's mount-point inode with generation 0 and drops (and so
/// unmounts) a dentry whose READDIRPLUS entry has another generation: a mount point must
/// carry generation 0 in lookups and listings alike, or every `ls` of its parent unmounts the
/// volume under the guest's processes (seen as EXDEV and ctime failures in pjdfstest).
#[test]
fn mount_points_have_generation_zero_when_announced_as_submounts() {
    let f = fixture();
    let s = f.sock.to_str().expect("utf-8");
    let mut child = spawn(&[
        "--socket-path",
        s,
        "--volume",
        "/tmp=memfs:1M",
        "--volume",
        "/scratch=memfs:1M",
    ]);
    wait_for(&f.sock, &mut child);
    {
        let mut c = FuseClient::connect(&f.sock).expect("connect");
        init_with_submounts(&mut c);
        let tmp = c.lookup(ROOT_ID, "tmp").expect("tmp");
        assert_ne!(tmp.attr.flags & ATTR_SUBMOUNT, 0);
        assert_eq!(tmp.generation, 0, "lookup of a submount");
        let listed = c.list(ROOT_ID).expect("readdirplus /");
        let e = listed
            .iter()
            .find(|e| e.name == b"tmp")
            .expect("tmp listed");
        assert_eq!(e.entry.nodeid, tmp.nodeid);
        assert_ne!(e.entry.attr.flags & ATTR_SUBMOUNT, 0);
        assert_eq!(e.entry.generation, 0, "readdirplus of a submount");
    }
    assert!(wait_exit(&mut child).success());
}

/// Each volume keeps its own limits: `quota=`, `max-handles=` on a dir volume, `max-inodes=`
/// on a memfs volume; the other volume of the same device is not limited by them.
#[test]
fn volumes_keep_their_own_limits() {
    let f = fixture();
    let s = f.sock.to_str().expect("utf-8");
    let work = format!("/w=dir:{},quota=8K,max-handles=2", p(&f, "work"));
    let mut child = spawn(&[
        "--socket-path",
        s,
        "--volume",
        &work,
        "--volume",
        "/m=memfs:4M,max-inodes=4",
        "--volume",
        "/free=memfs:4M",
    ]);
    wait_for(&f.sock, &mut child);
    let mut c = FuseClient::connect(&f.sock).expect("connect");
    c.init().expect("init");
    let w = c.lookup(ROOT_ID, "w").expect("lookup /w").nodeid;
    let m = c.lookup(ROOT_ID, "m").expect("lookup /m").nodeid;
    let free = c.lookup(ROOT_ID, "free").expect("lookup /free").nodeid;
    let rw = (libc::O_RDWR | libc::O_CREAT) as u32;

    // quota=8K on /w (hello.txt holds 9 bytes already): the write that passes it is ENOSPC.
    let (e, o) = c.create(w, "big", 0o644, rw).expect("create in /w");
    assert_eq!(c.write(e.nodeid, o.fh, 0, &[7u8; 4096]), Ok(4096));
    assert_eq!(
        c.write(e.nodeid, o.fh, 4096, &[7u8; 8192]),
        Err(libc::ENOSPC)
    );
    // max-handles=2: this handle and one more; a third is ENFILE.
    let (e2, o2) = c.create(w, "second", 0o644, rw).expect("second handle");
    assert_eq!(
        c.create(w, "third", 0o644, rw).map(|_| ()),
        Err(libc::ENFILE)
    );
    c.release(e.nodeid, o.fh).expect("release");
    c.release(e2.nodeid, o2.fh).expect("release");
    // ... and the limit is /w's alone: /free takes a third open file at once.
    let mut held = Vec::new();
    for i in 0..3 {
        let (e, o) = c
            .create(free, &format!("f{i}"), 0o644, rw)
            .expect("create in /free");
        held.push((e.nodeid, o.fh));
    }
    for (ino, fh) in held {
        c.release(ino, fh).expect("release");
    }

    // max-inodes=4 on /m: the root and three files; the fourth file is ENOSPC.
    for i in 0..3 {
        let (e, o) = c
            .create(m, &format!("n{i}"), 0o644, rw)
            .expect("create in /m");
        c.release(e.nodeid, o.fh).expect("release");
    }
    assert_eq!(c.create(m, "n3", 0o644, rw).map(|_| ()), Err(libc::ENOSPC));
    assert!(
        c.mkdir(free, "d", 0o755).is_ok(),
        "/free is not limited by /m"
    );

    drop(c);
    assert!(wait_exit(&mut child).success());

    let o = run(&[
        "--socket-path",
        s,
        "--volume",
        &format!("/f=file:{},quota=1M", p(&f, "app.conf")),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&["--socket-path", s, "--volume", "/m=memfs:1M,quota=1M"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
