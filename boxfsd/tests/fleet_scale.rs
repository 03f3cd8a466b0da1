//! Fleet scale: 1,000 devices added through the API to one boxfsd (default sandbox), each
//! connected by a test VMM and serving requests; the thread count does not depend on the
//! number of devices, and removing them all brings descriptors and threads back to baseline.
//! Prints RSS and descriptors per idle device.
#![cfg(target_os = "linux")]

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boxfs::ROOT_ID;
use vmm::{FuseClient, Vmm, VmmConfig};

const HANG_GUARD: Duration = Duration::from_secs(300);
const DEVICES: usize = 1000;
const POOL: usize = 4;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_count(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}"))
        .expect("proc")
        .count()
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn http(api: &Path, method: &str, target: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + HANG_GUARD;
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(api) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("connect api: {e}"),
        }
    };
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
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
    (status, resp)
}

/// Polls until `f() <= want` (released a moment after the API answers).
fn settle(want: usize, f: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let n = f();
        if n <= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_thousand_devices_in_one_process() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().expect("tempdir");
    let api = dir.path().join("api.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_boxfsd"))
        .args([
            "--fleet",
            "--api-socket",
            api.to_str().expect("utf-8"),
            "--socket-dir",
            dir.path().to_str().expect("utf-8"),
            "--thread-pool-size",
            &POOL.to_string(),
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let d = Daemon(child);
    let pid = d.0.id();
    let add = |i: usize| {
        let body = serde_json::json!({"id": format!("vm{i}"),
            "socket": dir.path().join(format!("vm{i}.sock")), "memfs_size": "1M"})
        .to_string();
        let (status, resp) = http(&api, "PUT", "/devices", &body);
        assert_eq!(status, 201, "{resp}");
    };
    let connect = |i: usize| {
        let cfg = VmmConfig {
            mem_size: 8 << 20,
            ..VmmConfig::default()
        };
        let vmm = Vmm::connect(&dir.path().join(format!("vm{i}.sock")), cfg).expect("connect");
        let mut c = FuseClient::new(vmm);
        c.timeout = HANG_GUARD;
        c.init().expect("init");
        c.getattr(ROOT_ID).expect("getattr");
        c
    };
    assert_eq!(http(&api, "GET", "/devices", "").0, 200);
    let (fds0, threads0, rss0) = (proc_count(pid, "fd"), proc_count(pid, "task"), rss_kib(pid));

    // One connected device: the reference.
    add(0);
    let first = connect(0);
    let (fds1, threads1, rss1) = (proc_count(pid, "fd"), proc_count(pid, "task"), rss_kib(pid));

    let mut clients = vec![first];
    for i in 1..DEVICES {
        add(i);
        clients.push(connect(i));
    }
    // Every device still answers, once all are connected.
    for c in &mut clients {
        c.getattr(ROOT_ID).expect("getattr");
    }
    let (fds_n, threads_n, rss_n) = (proc_count(pid, "fd"), proc_count(pid, "task"), rss_kib(pid));
    let per = (DEVICES - 1) as f64;
    eprintln!(
        "fleet scale: {DEVICES} connected devices: threads {threads1} (1 device) -> \
         {threads_n}; fds {fds1} -> {fds_n} ({:.1} per device); RSS {rss1} -> {rss_n} KiB \
         ({:.1} KiB per idle device, MemFs included); {cores} cores, pool {POOL}",
        (fds_n - fds1) as f64 / per,
        (rss_n - rss1) as f64 / per,
    );
    assert!(
        (rss_n.saturating_sub(rss1)) as f64 / per <= 256.0,
        "an idle device costs more than 256 KiB"
    );
    assert_eq!(
        threads_n, threads1,
        "threads depend on the number of devices"
    );
    assert_eq!(threads_n, threads0, "a device costs a thread");
    // The serving threads: the event loops (one per core) and the pool; the rest are the
    // main thread and the API server's.
    let names = thread_names(pid);
    let serving = names.iter().filter(|n| n.starts_with("boxfs-")).count();
    assert_eq!(serving, cores + POOL, "{names:?}");

    drop(clients);
    for i in 0..DEVICES {
        assert_eq!(http(&api, "DELETE", &format!("/devices/vm{i}"), "").0, 204);
    }
    let fds = settle(fds0, || proc_count(pid, "fd"));
    let threads = settle(threads0, || proc_count(pid, "task"));
    eprintln!(
        "fleet scale: all removed: fds {fds0} -> {fds}, threads {threads0} -> {threads}, RSS \
         {rss0} -> {} KiB",
        rss_kib(pid)
    );
    assert!(fds <= fds0, "descriptors leaked: {fds0} -> {fds}");
    assert_eq!(threads, threads0, "threads leaked");
    assert_eq!(
        std::fs::read_dir(dir.path())
            .expect("dir")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path() != api))
            .count(),
        0,
        "sockets removed"
    );
}
