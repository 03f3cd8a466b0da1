//! The single-device daemon's request counts: SIGUSR2 logs the requests served so far by
//! opcode (what `scripts/bench-workloads.sh` reads between the guest's steps).
#![cfg(target_os = "linux")]

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use boxfs::ROOT_ID;
use vmm::FuseClient;

/// Bounds how long a broken daemon can stall the test (not a timing assertion).
const HANG_GUARD: Duration = Duration::from_secs(120);

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

#[test]
fn sigusr2_logs_the_requests_by_opcode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("fs.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_boxfsd"))
        .args(["--socket-path"])
        .arg(&sock)
        .args(["--memfs-size", "4M", "--sandbox", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn boxfsd");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    wait_for_socket(&sock, &mut child);
    let mut c = FuseClient::connect(&sock).expect("connect");
    for _ in 0..3 {
        c.getattr(ROOT_ID).expect("getattr");
    }
    assert_eq!(c.lookup(ROOT_ID, "missing").err(), Some(libc::ENOENT));
    // SAFETY: kill(2) with the daemon's pid and a signal number; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR2) }, 0);
    let deadline = Instant::now() + HANG_GUARD;
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx.recv_timeout(left).expect("no request-count line");
        if let Some(i) = l.find("request counts: ") {
            break l[i..].to_owned();
        }
    };
    let (counts, served) = line.rsplit_once(" served_us=").expect("served_us");
    assert_eq!(counts, "request counts: total=5 LOOKUP=1 GETATTR=3 INIT=1");
    served.parse::<u64>().expect("served_us is a number");
    drop(c);
    let _ = child.kill();
    let _ = child.wait();
}
