//! Fleet mode: one boxfsd serving several devices (`--device`, `--config`, `PUT /devices`),
//! under the default sandbox, through the test VMM; removal leaves nothing behind; `/metrics`
//! counts the requests.
#![cfg(target_os = "linux")]

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boxfs::ROOT_ID;
use vhost::VhostBackend;
use vmm::{FuseClient, Vmm, VmmConfig};

/// Bounds how long a broken daemon can stall the suite (not a timing assertion).
const HANG_GUARD: Duration = Duration::from_secs(120);

/// A running daemon, killed when dropped.
struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn spawn(args: &[&str]) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_boxfsd"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn boxfsd");
        Daemon { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `path` exists (the daemon listens there).
    fn wait_for(&mut self, path: &Path) {
        let deadline = Instant::now() + HANG_GUARD;
        while !boxfs::vhost::socket_listening(path) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("boxfsd exited early: {status}");
            }
            assert!(Instant::now() < deadline, "boxfsd did not create {path:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("daemon fds")
            .count()
    }

    fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .expect("daemon tasks")
            .count()
    }

    fn thread_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .expect("daemon tasks")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect();
        v.sort();
        v
    }

    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("daemon status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, and the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "boxfsd did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One HTTP/1.1 request over the API socket: (status, body).
fn http(api: &Path, method: &str, target: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    // The socket file appears between the daemon's bind and listen: retry a refused connect.
    let deadline = Instant::now() + HANG_GUARD;
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(api) {
            Ok(s) => break s,
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("connect api: {e}"),
        }
    };
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

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// Creates `name` in the root, writes `data`, reads it back.
fn write_file(c: &mut FuseClient, name: &str, data: &[u8]) -> u64 {
    let (e, o) = c
        .create(ROOT_ID, name, 0o100644, libc::O_RDWR as u32)
        .expect("create");
    assert_eq!(
        c.write(e.nodeid, o.fh, 0, data).expect("write"),
        data.len() as u32
    );
    assert_eq!(
        c.read(e.nodeid, o.fh, 0, data.len() as u32).expect("read"),
        data
    );
    c.release(e.nodeid, o.fh).expect("release");
    e.nodeid
}

fn tag_of(c: &FuseClient) -> Option<String> {
    c.vmm.tag()
}

#[test]
fn two_devices_in_one_process_are_independent() {
    // The fleet's event loops (the default), and threads of each device's own.
    two_devices(&[]);
    two_devices(&["--fleet-threads", "0"]);
}

fn two_devices(extra: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("mkdir");
    std::fs::write(share.join("host.txt"), b"from the host").expect("write");
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let da = format!("id=a,socket={},memfs-size=8M,tag=scratch", s(&a));
    let db = format!("id=b,socket={},shared-dir={},tag=share", s(&b), s(&share));
    let mut args = vec!["--device", &da, "--device", &db];
    args.extend_from_slice(extra);
    let mut d = Daemon::spawn(&args);
    d.wait_for(&a);
    d.wait_for(&b);
    let mut ca = FuseClient::connect(&a).expect("connect a");
    let mut cb = FuseClient::connect(&b).expect("connect b");
    assert_eq!(tag_of(&ca).as_deref(), Some("scratch"));
    assert_eq!(tag_of(&cb).as_deref(), Some("share"));
    write_file(&mut ca, "only-in-a", b"memfs data");
    assert_eq!(cb.lookup(ROOT_ID, "only-in-a").err(), Some(libc::ENOENT));
    assert_eq!(ca.lookup(ROOT_ID, "host.txt").err(), Some(libc::ENOENT));
    cb.lookup(ROOT_ID, "host.txt")
        .expect("b serves the host directory");
    write_file(&mut cb, "only-in-b", b"host data");
    assert_eq!(
        std::fs::read(share.join("only-in-b")).expect("on the host"),
        b"host data"
    );
    assert_eq!(ca.lookup(ROOT_ID, "only-in-b").err(), Some(libc::ENOENT));
    // One VMM leaving does not disturb the other device (fleet devices keep serving).
    drop(ca);
    cb.getattr(ROOT_ID).expect("b still serves");
    let mut ca = FuseClient::connect(&a).expect("reconnect a");
    ca.getattr(ROOT_ID).expect("a serves its next VMM");
    drop((ca, cb));
    assert!(d.terminate().success());
    assert!(!a.exists() && !b.exists(), "sockets removed at exit");
}

#[test]
fn config_file_in_json_and_toml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let toml = dir.path().join("fleet.toml");
    std::fs::write(
        &toml,
        format!(
            "[[devices]]\nid = \"a\"\nsocket = \"{}\"\nmemfs_size = \"4M\"\ntag = \"ta\"\n\n\
             [[devices]]\nid = \"b\"\nsocket = \"{}\"\nmemfs_size = \"4M\"\n\
             [devices.limits]\nmax_inodes = 3\n",
            s(&a),
            s(&b)
        ),
    )
    .expect("write");
    let json = dir.path().join("fleet.json");
    std::fs::write(
        &json,
        serde_json::json!({"devices": [
            {"id": "a", "socket": a, "memfs_size": "4M", "tag": "ta"},
            {"id": "b", "socket": b, "memfs_size": "4M", "limits": {"max_inodes": 3}},
        ]})
        .to_string(),
    )
    .expect("write");
    for file in [&toml, &json] {
        let mut d = Daemon::spawn(&["--config", s(file)]);
        d.wait_for(&a);
        d.wait_for(&b);
        let ca = FuseClient::connect(&a).expect("connect a");
        assert_eq!(tag_of(&ca).as_deref(), Some("ta"));
        let mut cb = FuseClient::connect(&b).expect("connect b");
        // b's own inode limit: the root and two more.
        cb.mkdir(ROOT_ID, "d1", 0o755).expect("mkdir 1");
        cb.mkdir(ROOT_ID, "d2", 0o755).expect("mkdir 2");
        assert!(cb.mkdir(ROOT_ID, "d3", 0o755).is_err(), "limit of device b");
        drop((ca, cb));
        assert!(d.terminate().success());
    }
    // A bad entry stops the daemon at start, with a message.
    std::fs::write(&json, r#"{"devices":[{"id":"bad id","socket":"/x"}]}"#).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_boxfsd"))
        .args(["--config", s(&json)])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad id"));
}

#[test]
fn api_adds_lists_and_removes_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = dir.path().join("api.sock");
    let sock = dir.path().join("vm1.sock");
    let mut d = Daemon::spawn(&[
        "--fleet",
        "--api-socket",
        s(&api),
        "--socket-dir",
        s(dir.path()),
    ]);
    d.wait_for(&api);
    assert_eq!(http(&api, "GET", "/devices", ""), (200, "[]".into()));
    let body = serde_json::json!({
        "id": "vm1", "socket": sock, "memfs_size": "8M", "tag": "root",
        "limits": {"max_handles": 8}, "ops_per_sec": 100000
    })
    .to_string();
    let (status, created) = http(&api, "PUT", "/devices", &body);
    assert_eq!(status, 201, "{created}");
    let v: serde_json::Value = serde_json::from_str(&created).expect("json");
    assert_eq!(v["id"], "vm1");
    assert_eq!(v["running"], true);
    assert_eq!(http(&api, "PUT", "/devices", &body).0, 409, "duplicate id");
    // Sandboxed: host directories cannot be opened at runtime, sockets only in --socket-dir.
    let host = serde_json::json!({"id": "h", "socket": dir.path().join("h.sock"),
                                  "shared_dir": dir.path()})
    .to_string();
    assert_eq!(http(&api, "PUT", "/devices", &host).0, 403);
    let outside = serde_json::json!({"id": "o", "socket": "/tmp/boxfs-fleet-elsewhere.sock",
                                     "memfs_size": "1M"})
    .to_string();
    assert_eq!(http(&api, "PUT", "/devices", &outside).0, 403);
    assert_eq!(
        http(&api, "PUT", "/devices", r#"{"id":"x","socket":"/a"}"#).0,
        400,
        "no backend"
    );

    let mut c = FuseClient::connect(&sock).expect("connect");
    assert_eq!(tag_of(&c).as_deref(), Some("root"));
    write_file(&mut c, "f", b"0123456789");
    let (status, one) = http(&api, "GET", "/devices/vm1", "");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&one).expect("json");
    assert_eq!(v["connections"], 1);
    assert_eq!(v["bytes_written"], 10);
    assert_eq!(v["bytes_read"], 10);
    assert!(
        v["usage"]["memfs_bytes"].as_u64().is_some_and(|n| n >= 10),
        "{v}"
    );
    assert_eq!(v["limits"]["max_handles"], 8);
    // Rate-limited (timer and all, under the sandbox's seccomp filter): every request took
    // a token.
    assert_eq!(v["ops_per_sec"], 100000);
    assert_eq!(v["tokens_granted"], v["requests"]);
    assert!(v["requests"].as_u64().is_some_and(|n| n >= 5), "{v}");
    let (_, all) = http(&api, "GET", "/devices", "");
    let all: serde_json::Value = serde_json::from_str(&all).expect("json");
    assert_eq!(all.as_array().map(Vec::len), Some(1));

    // A device serving a table of volumes (memfs ones can be made in the sandbox).
    let vsock = dir.path().join("vols.sock");
    let vols = serde_json::json!({"id": "vols", "socket": vsock,
        "volumes": ["/tmp=memfs:1M", "/var/cache=memfs:2M,mode=0700"]})
    .to_string();
    let (status, msg) = http(&api, "PUT", "/devices", &vols);
    assert_eq!(status, 201, "{msg}");
    let hostvol = serde_json::json!({"id": "hv", "socket": dir.path().join("hv.sock"),
        "volumes": [format!("/w=dir:{}", s(dir.path()))]})
    .to_string();
    assert_eq!(http(&api, "PUT", "/devices", &hostvol).0, 403);
    let mut cv = FuseClient::connect(&vsock).expect("connect vols");
    cv.lookup(ROOT_ID, "tmp").expect("volume /tmp");
    let var = cv.lookup(ROOT_ID, "var").expect("parent of /var/cache");
    let cache = cv.lookup(var.nodeid, "cache").expect("volume /var/cache");
    assert_eq!(cache.attr.mode & 0o7777, 0o700);
    assert_eq!(http(&api, "DELETE", "/devices/vols", "").0, 204);
    drop(cv);

    assert_eq!(http(&api, "DELETE", "/devices/vm1", "").0, 204);
    assert!(!sock.exists(), "socket removed");
    // The VMM was disconnected.
    assert!(
        c.vmm.frontend().get_features().is_err(),
        "VMM still connected"
    );
    assert_eq!(http(&api, "GET", "/devices/vm1", "").0, 404);
    assert_eq!(http(&api, "DELETE", "/devices/vm1", "").0, 404);
    // The id and socket can be used again.
    assert_eq!(http(&api, "PUT", "/devices", &body).0, 201);
    FuseClient::connect(&sock)
        .expect("connect again")
        .getattr(ROOT_ID)
        .expect("new device serves");
    assert!(d.terminate().success());
}

/// Polls until `f` is at most `want` (threads and descriptors are released a moment after the
/// API answers: a VMM's vring threads end once they see their exit event).
fn settle(what: &str, want: usize, f: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let n = f();
        if n <= want || Instant::now() > deadline {
            if n > want {
                eprintln!("{what}: {n} > {want}");
            }
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn add_remove_cycles_leak_no_descriptor_or_thread() {
    cycles(&[]);
    cycles(&["--fleet-threads", "0"]);
}

fn cycles(extra: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = dir.path().join("api.sock");
    let sock = dir.path().join("cycle.sock");
    let mut args = vec![
        "--fleet",
        "--api-socket",
        s(&api),
        "--socket-dir",
        s(dir.path()),
    ];
    args.extend_from_slice(extra);
    let mut d = Daemon::spawn(&args);
    d.wait_for(&api);
    let cycle = |i: usize| {
        let body = serde_json::json!({"id": format!("vm{i}"), "socket": sock,
                                      "memfs_size": "1M"})
        .to_string();
        let (status, msg) = http(&api, "PUT", "/devices", &body);
        assert_eq!(status, 201, "{msg}");
        // Every other cycle a VMM connects and makes a request.
        let client = i.is_multiple_of(2).then(|| {
            let mut c = FuseClient::connect(&sock).expect("connect");
            write_file(&mut c, "f", b"x");
            c
        });
        assert_eq!(http(&api, "DELETE", &format!("/devices/vm{i}"), "").0, 204);
        drop(client);
    };
    // The baseline: the daemon with its API and no device.
    assert_eq!(http(&api, "GET", "/devices", "").0, 200);
    let names0 = d.thread_names();
    let fds0 = d.fds();
    let threads0 = d.threads();
    let rss0 = d.rss_kib();
    for i in 0..100 {
        cycle(i);
    }
    let fds = settle("fds", fds0, || d.fds());
    let threads = settle("threads", threads0, || d.threads());
    eprintln!(
        "fleet {extra:?}: 100 add/remove cycles: fds {fds0} -> {fds}, threads {threads0} -> {threads}, \
         RSS {rss0} -> {} KiB",
        d.rss_kib()
    );
    // (The baseline may include the API connection of the GET above, still closing.)
    assert!(fds <= fds0, "descriptors leaked: {fds0} -> {fds}");
    assert_eq!(d.thread_names(), names0);
    assert_eq!(threads, threads0, "threads leaked");
    assert!(d.terminate().success());
}

/// Parses the OpenMetrics text: `name{labels}` -> value (comments skipped).
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().expect("sample value");
        assert!(
            out.insert(key.to_owned(), value).is_none(),
            "duplicate {key}"
        );
    }
    assert!(text.ends_with("# EOF\n"), "OpenMetrics terminator");
    out
}

#[test]
fn metrics_count_the_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = dir.path().join("api.sock");
    let (a, b): (PathBuf, PathBuf) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let mut d = Daemon::spawn(&[
        "--api-socket",
        s(&api),
        "--device",
        &format!("id=a,socket={},memfs-size=8M", s(&a)),
        "--device",
        &format!("id=b,socket={},memfs-size=8M", s(&b)),
    ]);
    d.wait_for(&api);
    let mut c = FuseClient::connect(&a).expect("connect");
    for _ in 0..5 {
        c.getattr(ROOT_ID).expect("getattr");
    }
    // A miss is a negative entry (no error reply); an unlink of it is an ENOENT.
    assert_eq!(c.lookup(ROOT_ID, "missing").err(), Some(libc::ENOENT));
    assert_eq!(c.unlink(ROOT_ID, "missing").err(), Some(libc::ENOENT));
    write_file(&mut c, "f", &[7u8; 100]);
    let (status, text) = http(&api, "GET", "/metrics", "");
    assert_eq!(status, 200);
    if std::env::var_os("FLEET_PRINT_METRICS").is_some() {
        eprintln!("{text}");
    }
    let m = parse_metrics(&text);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in\n{text}"))
    };
    assert_eq!(get("boxfs_devices"), 2.0);
    assert_eq!(
        get(r#"boxfs_requests_total{device="a",opcode="GETATTR"}"#),
        5.0
    );
    assert_eq!(
        get(r#"boxfs_requests_total{device="a",opcode="LOOKUP"}"#),
        1.0
    );
    assert_eq!(
        get(r#"boxfs_requests_total{device="a",opcode="INIT"}"#),
        1.0
    );
    assert_eq!(
        get(r#"boxfs_requests_total{device="a",opcode="CREATE"}"#),
        1.0
    );
    assert_eq!(get(r#"boxfs_errors_total{device="a",errno="2"}"#), 1.0);
    assert_eq!(get(r#"boxfs_read_bytes_total{device="a"}"#), 100.0);
    assert_eq!(get(r#"boxfs_written_bytes_total{device="a"}"#), 100.0);
    assert_eq!(get(r#"boxfs_written_bytes_total{device="b"}"#), 0.0);
    // INIT, 5 GETATTR, LOOKUP, UNLINK, CREATE, WRITE, READ, RELEASE.
    assert_eq!(
        get(r#"boxfs_request_duration_seconds_count{device="a"}"#),
        12.0
    );
    assert_eq!(
        get(r#"boxfs_request_duration_seconds_bucket{le="inf",device="a"}"#),
        12.0
    );
    assert!(get(r#"boxfs_memfs_bytes{device="a"}"#) >= 100.0);
    assert_eq!(get(r#"boxfs_connections_total{device="a"}"#), 1.0);
    assert!(!m
        .keys()
        .any(|k| k.starts_with("boxfs_requests_total{device=\"b\"")));
    drop(c);
    assert!(d.terminate().success());
}

#[test]
fn single_device_command_line_is_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("one.sock");
    let mut d = Daemon::spawn(&["--socket-path", s(&sock), "--memfs-size", "4M"]);
    d.wait_for(&sock);
    let vmm = Vmm::connect(&sock, VmmConfig::default()).expect("connect");
    let mut c = FuseClient::new(vmm);
    c.init().expect("init");
    c.getattr(ROOT_ID).expect("getattr");
    drop(c);
    // Without --keep-serving the single-device daemon ends with its VMM.
    let deadline = Instant::now() + HANG_GUARD;
    while d.child.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "single-device daemon did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // --device and the single-device options do not mix.
    let out = Command::new(env!("CARGO_BIN_EXE_boxfsd"))
        .args([
            "--socket-path",
            s(&sock),
            "--device",
            &format!("id=a,socket={},memfs-size=1M", s(&sock)),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}
