//! Fleet bounds under load: while several devices of one fleet-mode boxfsd (host directories
//! and MemFs) are flooded at 40 requests in flight each (MKDIR/RMDIR, CREATE/FSYNC/RELEASE/
//! UNLINK, GETATTR; FSYNC goes to the worker pool), the daemon's descriptors and threads,
//! sampled from `/proc/PID/fd` and `/proc/PID/task` until every flooding client is done, stay
//! under the ceilings documented on `boxfs::vhost::Fleet`.
#![cfg(target_os = "linux")]

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxfs::ROOT_ID;
use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, FsyncIn, GetattrIn, MkdirIn, OpenOut, ReleaseIn,
};
use vm_memory::ByteValued;
use vmm::{obj, op, request, FuseClient, Reply, Seg, Vmm, VmmConfig};

/// Bounds how long a broken daemon can stall the suite (not a timing assertion).
const HANG_GUARD: Duration = Duration::from_secs(300);
/// FUSE_RMDIR (not in the test VMM's list).
const RMDIR: u32 = 11;
/// Requests each flooding client keeps in flight.
const DEPTH: usize = 40;
/// Rounds of the seven-request cycle per slot.
const ROUNDS: usize = 80;
const LOOPS: usize = 2;
const POOL: usize = 2;
/// `PassthroughFsBuilder::fd_cache_size`'s default (boxfsd's `--fd-cache-size` is for a
/// single device).
const FD_CACHE: usize = 1024;
const MAX_HANDLES: usize = 64;
/// Descriptors a request being served may hold for a moment (`PassthroughFsBuilder::
/// fd_cache_size`: "the few that each request being served holds"), per serving thread.
const PER_REQUEST: usize = 4;

struct Daemon(Child);

/// Counts a flooding client out when it ends.
struct Done(Arc<AtomicUsize>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn count(pid: u32, what: &str) -> usize {
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

fn wait_for(d: &mut Daemon, path: &Path) {
    let deadline = Instant::now() + HANG_GUARD;
    while !boxfs::vhost::socket_listening(path) {
        if let Ok(Some(status)) = d.0.try_wait() {
            panic!("boxfsd exited early: {status}");
        }
        assert!(Instant::now() < deadline, "boxfsd did not create {path:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One slot's place in its cycle: MKDIR, RMDIR, CREATE, FSYNC, RELEASE, UNLINK, GETATTR.
#[derive(Clone, Copy, Default)]
struct Slot {
    step: usize,
    round: usize,
    /// The file CREATE made: (node id, handle).
    file: (u64, u64),
}

/// The request of `slot`'s current step; every other directory is kept (its inode stays
/// held by the "guest", so a host directory's descriptor cache fills up and evicts).
fn next_request(id: usize, slot: &Slot, unique: u64) -> Vec<Seg> {
    let dir = format!("d{id}-{}", slot.round);
    let file = format!("f{id}");
    let (ino, fh) = slot.file;
    let req = match slot.step {
        0 => {
            let m = MkdirIn {
                mode: 0o755,
                umask: 0,
            };
            request(op::MKDIR, unique, ROOT_ID, &[m.as_slice(), &cstr(&dir)])
        }
        1 if slot.round.is_multiple_of(2) => request(RMDIR, unique, ROOT_ID, &[&cstr(&dir)]),
        1 => request(
            op::GETATTR,
            unique,
            ROOT_ID,
            &[GetattrIn::default().as_slice()],
        ),
        2 => {
            let c = CreateIn {
                flags: libc::O_RDWR as u32,
                mode: 0o100644,
                umask: 0,
                fuse_flags: 0,
            };
            request(op::CREATE, unique, ROOT_ID, &[c.as_slice(), &cstr(&file)])
        }
        3 => {
            let f = FsyncIn {
                fh,
                ..Default::default()
            };
            request(op::FSYNC, unique, ino, &[f.as_slice()])
        }
        4 => {
            let r = ReleaseIn {
                fh,
                flags: libc::O_RDWR as u32,
                ..Default::default()
            };
            request(op::RELEASE, unique, ino, &[r.as_slice()])
        }
        5 => request(op::UNLINK, unique, ROOT_ID, &[&cstr(&file)]),
        _ => request(
            op::GETATTR,
            unique,
            ROOT_ID,
            &[GetattrIn::default().as_slice()],
        ),
    };
    vec![Seg::R(req), Seg::W(512)]
}

/// Runs `ROUNDS` cycles on each of `DEPTH` slots, all in flight at once; every request must
/// succeed. Returns the requests completed.
fn flood(mut vmm: Vmm) -> u64 {
    let mut slots = [Slot::default(); DEPTH];
    let mut by_head = std::collections::HashMap::new();
    let mut unique = 100u64;
    for (id, slot) in slots.iter().enumerate() {
        unique += 2;
        by_head.insert(vmm.submit(1, &next_request(id, slot, unique)), id);
    }
    let mut done = 0;
    while !by_head.is_empty() {
        // Every completion already reaped, before submitting again (a reaped chain's head
        // is free for the next submission).
        let first = vmm
            .wait_any(1, HANG_GUARD)
            .expect("a flood request never completed");
        let mut batch = vec![first];
        while let Some(c) = vmm.wait_any(1, Duration::ZERO) {
            batch.push(c);
        }
        let batch: Vec<_> = batch
            .into_iter()
            .map(|c| (by_head.remove(&c.head).expect("a completion of ours"), c))
            .collect();
        for (id, c) in batch {
            done += 1;
            let slot = &mut slots[id];
            let body = Reply::parse(&c)
                .expect("a FUSE reply")
                .result()
                .unwrap_or_else(|e| panic!("step {} of slot {id} failed: errno {e}", slot.step));
            if slot.step == 2 {
                let e: EntryOut = obj(&body);
                let o: OpenOut = obj(&body[size_of::<EntryOut>()..]);
                slot.file = (e.nodeid, o.fh);
            }
            slot.step += 1;
            if slot.step == 7 {
                slot.step = 0;
                slot.round += 1;
                if slot.round == ROUNDS {
                    continue;
                }
            }
            unique += 2;
            by_head.insert(vmm.submit(1, &next_request(id, slot, unique)), id);
        }
    }
    done
}

#[test]
fn descriptors_and_threads_stay_bounded_during_a_flood() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = [
        "--fleet-threads",
        &LOOPS.to_string(),
        "--thread-pool-size",
        &POOL.to_string(),
        "--log-level",
        "warn",
    ]
    .map(String::from)
    .to_vec();
    let mut socks = Vec::new();
    let mut shares = 0;
    for i in 0..4 {
        let sock = dir.path().join(format!("vm{i}.sock"));
        let backend = if i % 2 == 0 {
            let share = dir.path().join(format!("share{i}"));
            std::fs::create_dir(&share).expect("mkdir share");
            shares += 1;
            format!("shared-dir={},max-handles={MAX_HANDLES}", share.display())
        } else {
            "memfs-size=64M".to_owned()
        };
        args.push("--device".into());
        args.push(format!("id=vm{i},socket={},{backend}", sock.display()));
        socks.push(sock);
    }
    let child = Command::new(env!("CARGO_BIN_EXE_boxfsd"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn boxfsd");
    let mut d = Daemon(child);
    let pid = d.0.id();
    for s in &socks {
        wait_for(&mut d, s);
    }
    // A thread takes its name once it runs, which may be after the sockets appear: wait until
    // the event loops and the pool have all started before taking the baseline.
    let serving = |names: &[String]| names.iter().filter(|n| n.starts_with("boxfs-")).count();
    let deadline = Instant::now() + HANG_GUARD;
    while serving(&thread_names(pid)) < LOOPS + POOL {
        assert!(Instant::now() < deadline, "boxfsd's threads did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (fds_listening, threads0) = (count(pid, "fd"), count(pid, "task"));
    let names = thread_names(pid);
    assert_eq!(
        serving(&names),
        LOOPS + POOL,
        "the serving threads are the event loops and the pool: {names:?}"
    );

    // Connect every device (INIT and one GETATTR): the per-device constant.
    let cfg = VmmConfig {
        mem_size: 16 << 20,
        ..VmmConfig::default()
    };
    let vmms: Vec<Vmm> = socks
        .iter()
        .map(|s| {
            let mut c = FuseClient::new(Vmm::connect(s, cfg.clone()).expect("connect"));
            c.timeout = HANG_GUARD;
            c.init().expect("init");
            c.getattr(ROOT_ID).expect("getattr");
            c.vmm
        })
        .collect();
    let fds_connected = count(pid, "fd");
    // A connected device's descriptors (documented on `Fleet`): its VMM's connection, one per
    // guest memory region (the test VMM has one), a kick and a call eventfd per virtqueue
    // (hiprio and one request queue).
    let per_device = 1 + 1 + 2 * 2;
    assert_eq!(fds_connected - fds_listening, socks.len() * per_device);

    // The ceilings (documented on `Fleet`): threads do not grow at all; descriptors grow by
    // at most each host directory's descriptor cache and open handles, and the few each
    // serving thread holds for a moment.
    let thread_ceiling = threads0;
    let fd_ceiling = fds_listening
        + socks.len() * per_device
        + shares * (FD_CACHE + MAX_HANDLES)
        + (LOOPS + POOL) * PER_REQUEST;

    let running = Arc::new(AtomicUsize::new(vmms.len()));
    let clients: Vec<_> = vmms
        .into_iter()
        .map(|vmm| {
            let running = running.clone();
            std::thread::spawn(move || {
                // Counts the client out however it ends (a failed request panics).
                let _done = Done(running);
                flood(vmm)
            })
        })
        .collect();
    let (mut max_fds, mut max_threads, mut samples) = (0, 0, 0u64);
    let deadline = Instant::now() + HANG_GUARD;
    while running.load(Ordering::Acquire) > 0 {
        assert!(Instant::now() < deadline, "the flood did not finish");
        max_fds = max_fds.max(count(pid, "fd"));
        max_threads = max_threads.max(count(pid, "task"));
        samples += 1;
        // The sampling period (the flood's end is what the loop waits for).
        std::thread::sleep(Duration::from_millis(1));
    }
    let requests: u64 = clients
        .into_iter()
        .map(|t| t.join().expect("flood client"))
        .sum();
    assert_eq!(requests, (socks.len() * DEPTH * ROUNDS * 7) as u64);
    eprintln!(
        "fleet bounds: {} devices ({shares} host directories, fd cache {FD_CACHE}, \
         max handles {MAX_HANDLES}), {LOOPS} loops, pool {POOL}, {DEPTH} in flight each, \
         {requests} requests; fds listening {fds_listening}, connected {fds_connected} \
         ({per_device} per device), max during the flood {max_fds} (ceiling {fd_ceiling}); \
         threads {threads0}, max during the flood {max_threads} (ceiling {thread_ceiling}); \
         {samples} samples",
        socks.len()
    );
    assert!(samples > 0, "sampled during the flood");
    assert!(
        max_threads <= thread_ceiling,
        "threads {max_threads} exceed {thread_ceiling}"
    );
    assert!(
        max_fds <= fd_ceiling,
        "descriptors {max_fds} exceed {fd_ceiling}"
    );
    // The host directories' descriptor caches were exercised: each holds more directories
    // than its cache and handles together.
    const { assert!(DEPTH * ROUNDS / 2 > FD_CACHE + MAX_HANDLES + 256) };
}
