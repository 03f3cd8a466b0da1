//! Faults: `boxfsd` killed with SIGKILL in the middle of guest writes and of a DualFs
//! copy-up, then restarted on the same directories. Every write the guest saw acknowledged
//! with an fsync is there, no partial copy-up is visible, whiteouts survive.
#![cfg(target_os = "linux")]

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boxfs::ROOT_ID;
use fuse_backend_rs::abi::fuse_abi::{OpenIn, WriteIn};
use vm_memory::ByteValued;
use vmm::{op, request, FuseClient, Seg};

const MIB: usize = 1 << 20;

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_boxfsd"))
        .args(args)
        .args(["--log-level", "error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn boxfsd")
}

/// Waits for the daemon's socket (polling the file system, bounded by a deadline).
fn connect(sock: &Path, child: &mut Child) -> FuseClient {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("boxfsd exited early: {st}");
        }
        if sock.exists() {
            if let Ok(c) = FuseClient::connect(sock) {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "boxfsd did not start");
        std::thread::yield_now();
    }
}

fn kill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

fn block(i: usize) -> Vec<u8> {
    (0..MIB).map(|j| (i * 131 + j % 251) as u8).collect()
}

#[test]
fn fsynced_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let share = tempfile::tempdir().expect("share");
    let sock: PathBuf = dir.path().join("fs.sock");
    let s = sock.to_str().expect("utf-8");
    let d = share.path().to_str().expect("utf-8");
    let mut child = spawn(&[
        "--socket-path",
        s,
        "--shared-dir",
        d,
        "--thread-pool-size",
        "2",
    ]);
    let mut c = connect(&sock, &mut child);
    let (f, o) = c
        .create(ROOT_ID, "data", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .expect("create");
    let acked = 8;
    for i in 0..acked {
        c.write(f.nodeid, o.fh, (i * MIB) as u64, &block(i))
            .expect("write");
        c.fsync(f.nodeid, o.fh).expect("fsync");
    }
    // More writes in flight, unacknowledged, when the daemon dies.
    for i in acked..acked + 8 {
        let w = WriteIn {
            fh: o.fh,
            offset: (i * MIB) as u64,
            size: MIB as u32,
            ..Default::default()
        };
        let u = c.next_unique();
        let q = c.queue;
        c.vmm.submit(
            q,
            &[
                Seg::R(request(op::WRITE, u, f.nodeid, &[w.as_slice(), &block(i)])),
                Seg::W(64),
            ],
        );
    }
    kill(&mut child);
    drop(c);

    // Restart over the same directory (the stale socket file is replaced).
    let mut child = spawn(&["--socket-path", s, "--shared-dir", d]);
    let mut c = connect(&sock, &mut child);
    let e = c.lookup(ROOT_ID, "data").expect("file survives");
    assert!(e.attr.size >= (acked * MIB) as u64);
    let o = c.open(e.nodeid, libc::O_RDONLY as u32).expect("open");
    for i in 0..acked {
        let got = c
            .read(e.nodeid, o.fh, (i * MIB) as u64, MIB as u32)
            .expect("read");
        assert!(got == block(i), "fsynced block {i} lost or corrupt");
    }
    c.release(e.nodeid, o.fh).expect("release");
    drop(c);
    kill(&mut child);
}

#[test]
fn a_killed_copy_up_leaves_no_partial_file_and_whiteouts_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lower = tempfile::tempdir().expect("lower");
    let upper = tempfile::tempdir().expect("upper");
    let big: Vec<u8> = (0..64 * MIB).map(|j| (j % 253) as u8).collect();
    std::fs::write(lower.path().join("big"), &big).expect("lower big");
    std::fs::write(lower.path().join("doomed"), b"delete me").expect("lower doomed");
    let sock: PathBuf = dir.path().join("fs.sock");
    let s = sock.to_str().expect("utf-8");
    let args = [
        "--socket-path",
        s,
        "--lower",
        lower.path().to_str().expect("utf-8"),
        "--upper",
        upper.path().to_str().expect("utf-8"),
    ];
    let mut child = spawn(&args);
    let mut c = connect(&sock, &mut child);
    let doomed = c.call(op::UNLINK, ROOT_ID, &[b"doomed\0"], 64);
    assert_eq!(doomed.map(|_| ()), Ok(()), "unlink leaves a whiteout");
    let e = c.lookup(ROOT_ID, "big").expect("lookup big");
    // Opening for writing copies the 64 MiB file up; the daemon dies while it copies (or
    // just after: both must leave a consistent upper directory).
    let open = OpenIn {
        flags: libc::O_RDWR as u32,
        fuse_flags: 0,
    };
    let u = c.next_unique();
    let q = c.queue;
    c.vmm.submit(
        q,
        &[
            Seg::R(request(op::OPEN, u, e.nodeid, &[open.as_slice()])),
            Seg::W(64),
        ],
    );
    let work = upper.path().join(".boxfs-dualfs-work");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let staging = std::fs::read_dir(&work)
            .map(|d| d.count() > 0)
            .unwrap_or(false);
        if staging || upper.path().join("big").exists() || Instant::now() > deadline {
            break;
        }
        std::thread::yield_now();
    }
    kill(&mut child);
    drop(c);

    // Whatever the upper holds now, the guest never sees a partial file.
    if let Ok(m) = std::fs::metadata(upper.path().join("big")) {
        assert_eq!(
            m.len(),
            big.len() as u64,
            "a partial copy is visible in the upper"
        );
    }
    let mut child = spawn(&args);
    let mut c = connect(&sock, &mut child);
    assert_eq!(
        c.lookup(ROOT_ID, "doomed").map(|_| ()),
        Err(libc::ENOENT),
        "the whiteout survives the crash"
    );
    let e = c.lookup(ROOT_ID, "big").expect("lookup big");
    assert_eq!(e.attr.size, big.len() as u64);
    let o = c.open(e.nodeid, libc::O_RDONLY as u32).expect("open");
    for chunk in 0..64 {
        let off = chunk * MIB;
        let got = c
            .read(e.nodeid, o.fh, off as u64, MIB as u32)
            .expect("read");
        assert!(got[..] == big[off..off + MIB], "chunk {chunk} differs");
    }
    c.release(e.nodeid, o.fh).expect("release");
    // The staging leftovers were swept at restart.
    assert_eq!(
        std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0),
        0,
        "staging directory not emptied"
    );
    // The lower layer is untouched.
    assert_eq!(std::fs::read(lower.path().join("big")).expect("lower"), big);
    assert!(lower.path().join("doomed").exists());
    drop(c);
    kill(&mut child);
}
