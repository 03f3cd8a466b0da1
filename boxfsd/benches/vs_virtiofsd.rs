//! boxfs against virtiofsd, through the same vhost-user load generator, and against the host
//! syscall floor.
//!
//! `scripts/bench.sh` (or `cargo bench --bench vs_virtiofsd`) starts `boxfsd` serving a host
//! directory (PassthroughFs), `boxfsd` serving an in-memory filesystem (MemFs) and `virtiofsd`
//! serving a copy of the same directory, connects the test VMM of `tests/vmm/` to each (real
//! virtqueues in memfd guest memory, EVENT_IDX, one request queue of 1024), and drives the same
//! FUSE workloads against each in alternating rounds; the same operations as plain syscalls on
//! the host copy give the floor. It prints one table: ops/s, MB/s, p50/p99 latency per
//! operation and depth, the median above the target's own "null" row (a request with an
//! opcode FUSE never assigned, answered `ENOSYS` by the daemon without backend work: the
//! transport floor, so each row reads as floor + backend cost), and the ratios
//! boxfs/virtiofsd (throughput) and boxfs/host (latency).
//!
//! Knobs (environment): `BOXFS_BENCH_SECS` (seconds per run, default 2), `BOXFS_BENCH_ROUNDS`
//! (default 3), `BOXFS_BENCH_DEPTH` (operations in flight, a comma-separated list, default
//! `1,8`: every workload runs at each, one table row per depth), `BOXFS_BENCH_CACHE`
//! (`--cache` of both daemons, default `auto`), `VIRTIOFSD` (path; default from `PATH`, the row
//! is skipped when there is none or it is `none`), `BOXFS_BENCH_ONLY` (comma-separated workload names),
//! `BOXFS_BENCH_BOXFSD_ARGS` (extra `boxfsd` flags, e.g. `--dispatch none`),
//! `BOXFS_BENCH_BOXFSD` (another `boxfsd` binary, or a wrapper script that profiles it),
//! `BOXFS_BENCH_BASELINE` (a second `boxfsd` binary, e.g. a build before a change: adds a
//! `base-passthrough` target, alternated with the others in every round),
//! `BOXFS_BENCH_TARGETS` (comma-separated target names to keep, e.g.
//! `boxfs-passthrough,base-passthrough`),
//!
//! Besides `boxfs-passthrough` and `boxfs-memfs`, a `boxfs-volume` target serves the same
//! host directory as a `dir` volume of a VolumeFs (`--volume /vol=dir:...`, the dataset
//! under `/vol`); a closing summary gives the mount table's cost against serving the
//! directory plainly (issue 16: at most 5 % on lookup+getattr and 4 KiB reads).
//! A `boxfs-fleet` target serves the same host directory as the one `--device` of a
//! fleet-mode boxfsd (issue 19: within 5 % of `boxfs-passthrough` on every row).
//! `BOXFS_BENCH_QUEUES` (request-queue counts, comma-separated, default `1`: with `1,2` the
//! boxfsd targets offer 2 request queues (`--request-queues 2`) and every boxfs row also runs
//! on 2 queues, one load-generator thread per queue, each keeping `depth` operations in flight
//! on its own queue; virtiofsd offers one request queue and runs on 1 only).
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a smoke test: a small dataset,
//! a few operations of every workload against both boxfsd backends, every reply checked.
//!
//! Hostile mode (`--hostile`, or `BOXFS_BENCH_HOSTILE=1`) instead plays a guest that breaks
//! the FUSE and virtio rules against `boxfsd --keep-serving` on both backends and checks every
//! answer: requests before FUSE_INIT get EIO (FORGET comes back unused), descriptor chains
//! with a writable descriptor before a readable one, a `next` out of range or a loop come back
//! unused and unserved, a second INIT ends the previous session (its handles and node ids stop
//! working), and a reconnecting VMM starts before INIT. It prints one line per check and fails
//! if any check does.

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    CreateIn, EntryOut, ForgetIn, GetattrIn, MkdirIn, OpenIn, OpenOut, ReadIn, ReleaseIn, WriteIn,
};
use vm_memory::ByteValued;
use vmm::{op, request, FuseClient, Malformed, Reply, Seg, Vmm, VmmConfig, OUT_HEADER};

const ROOT: u64 = 1;
const RMDIR: u32 = 11;

/// Dataset dimensions.
#[derive(Clone, Copy)]
struct Sizes {
    small_files: usize,
    cached_file: u64,
    big_file: u64,
    dir_entries: usize,
}

const FULL: Sizes = Sizes {
    small_files: 1000,
    cached_file: 16 << 20,
    big_file: 256 << 20,
    dir_entries: 10_000,
};

const SMOKE: Sizes = Sizes {
    small_files: 50,
    cached_file: 1 << 20,
    big_file: 4 << 20,
    dir_entries: 300,
};

const MIB: u64 = 1 << 20;

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Prepares the host dataset under `root`.
fn host_dataset(root: &Path, s: Sizes) {
    let small = root.join("small");
    std::fs::create_dir_all(&small).expect("mkdir small");
    for i in 0..s.small_files {
        std::fs::write(small.join(format!("f{i:05}")), [7u8; 4096]).expect("small file");
    }
    let chunk = vec![0x5au8; MIB as usize];
    for (name, size) in [("cached", s.cached_file), ("big", s.big_file)] {
        let mut f = std::fs::File::create(root.join(name)).expect("create");
        for _ in 0..size / MIB {
            std::io::Write::write_all(&mut f, &chunk).expect("fill");
        }
    }
    std::fs::File::create(root.join("wbig"))
        .and_then(|f| f.set_len(s.big_file))
        .expect("wbig");
    let d = root.join("d10k");
    std::fs::create_dir_all(&d).expect("mkdir d10k");
    for i in 0..s.dir_entries {
        std::fs::write(d.join(format!("e{i:05}")), b"").expect("entry");
    }
    std::fs::create_dir_all(root.join("scratch")).expect("scratch");
}

/// The same dataset created through FUSE (for MemFs).
fn fuse_dataset(c: &mut FuseClient, s: Sizes) {
    let small = c.mkdir(ROOT, "small", 0o755).expect("mkdir small").nodeid;
    for i in 0..s.small_files {
        let (e, o) = c
            .create(
                small,
                &format!("f{i:05}"),
                0o644 | libc::S_IFREG,
                libc::O_RDWR as u32,
            )
            .expect("create small");
        c.write(e.nodeid, o.fh, 0, &[7u8; 4096])
            .expect("write small");
        c.release(e.nodeid, o.fh).expect("release");
    }
    let chunk = vec![0x5au8; MIB as usize];
    for (name, size) in [("cached", s.cached_file), ("big", s.big_file)] {
        let (e, o) = c
            .create(ROOT, name, 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
            .expect("create");
        for i in 0..size / MIB {
            c.write(e.nodeid, o.fh, i * MIB, &chunk).expect("fill");
        }
        c.release(e.nodeid, o.fh).expect("release");
    }
    let (e, o) = c
        .create(ROOT, "wbig", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .expect("create wbig");
    c.release(e.nodeid, o.fh).expect("release");
    let d = c.mkdir(ROOT, "d10k", 0o755).expect("mkdir d10k").nodeid;
    for i in 0..s.dir_entries {
        let (e, o) = c
            .create(
                d,
                &format!("e{i:05}"),
                0o644 | libc::S_IFREG,
                libc::O_RDWR as u32,
            )
            .expect("create entry");
        c.release(e.nodeid, o.fh).expect("release");
    }
    c.mkdir(ROOT, "scratch", 0o755).expect("mkdir scratch");
}

/// Node ids and handles the workloads use, looked up once per target.
#[derive(Clone, Copy)]
struct Nodes {
    small: u64,
    cached: u64,
    big: u64,
    big_fh: u64,
    wbig: u64,
    wbig_fh: u64,
    d10k: u64,
    scratch: u64,
}

/// The dataset's nodes under the directory `top` (the root, or a volume's mount point).
fn nodes(c: &mut FuseClient, top: u64) -> Nodes {
    let small = c.lookup(top, "small").expect("small").nodeid;
    let cached = c.lookup(top, "cached").expect("cached").nodeid;
    let big = c.lookup(top, "big").expect("big").nodeid;
    let big_fh = c.open(big, libc::O_RDONLY as u32).expect("open big").fh;
    let wbig = c.lookup(top, "wbig").expect("wbig").nodeid;
    let wbig_fh = c.open(wbig, libc::O_RDWR as u32).expect("open wbig").fh;
    let d10k = c.lookup(top, "d10k").expect("d10k").nodeid;
    let scratch = c.lookup(top, "scratch").expect("scratch").nodeid;
    Nodes {
        small,
        cached,
        big,
        big_fh,
        wbig,
        wbig_fh,
        d10k,
        scratch,
    }
}

/// The workloads, in table order.
const WORKLOADS: [&str; 9] = [
    "lookup+getattr",
    "open/read4k/close",
    "seqread 1MiB",
    "seqwrite 1MiB",
    "create+write4k+unlink",
    "readdirplus 10k",
    "mkdir+rmdir",
    "null",
    "getattr",
];

/// The "null" workload: one request that crosses the virtqueue like any other and does no
/// backend work. It carries an opcode FUSE never assigned, which both daemons parse, find
/// unknown and answer with `ENOSYS` without calling their filesystem: the transport floor
/// (virtqueue round trip, FUSE header parsing, reply) that every other row includes.
const NULL: usize = 7;
const NULL_OPCODE: u32 = 7;
/// GETATTR of one file the daemon already holds (the pure metadata round trip).
const GETATTR: usize = 8;

/// Per-slot progress of one multi-request operation.
#[derive(Clone, Default)]
struct Slot {
    step: u32,
    node: u64,
    fh: u64,
    name: String,
    entries: usize,
}

/// A workload as a per-slot state machine over FUSE requests.
struct Machine<'a> {
    kind: usize,
    /// Which load-generator thread runs this machine (names it creates are unique per lane).
    lane: usize,
    n: Nodes,
    s: Sizes,
    counter: u64,
    rng: u64,
    payload: &'a [u8],
    /// Guest address of a copy of `payload` the load generator wrote once (a guest's
    /// page-cache pages): seqwrite's WRITEs point at it instead of copying 1 MiB per request.
    payload_at: Option<u64>,
    slots: Vec<Slot>,
}

impl<'a> Machine<'a> {
    /// A fresh machine of the same workload for load-generator thread `lane`.
    fn fork(&self, lane: usize) -> Machine<'a> {
        Machine {
            kind: self.kind,
            lane,
            n: self.n,
            s: self.s,
            counter: 0,
            rng: self.rng ^ (lane as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            payload: self.payload,
            payload_at: None,
            slots: Vec::new(),
        }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64: deterministic and cheap.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// First request of a new operation in `slot`.
    fn begin(&mut self, slot: usize, u: u64) -> Vec<Seg> {
        self.counter += 1;
        let k = self.counter;
        self.slots[slot] = Slot::default();
        match self.kind {
            0 => {
                let name = cstr(&format!("f{:05}", k % self.s.small_files as u64));
                vec![
                    Seg::R(request(op::LOOKUP, u, self.n.small, &[&name])),
                    Seg::W(256),
                ]
            }
            1 => {
                let o = OpenIn {
                    flags: libc::O_RDONLY as u32,
                    ..Default::default()
                };
                vec![
                    Seg::R(request(op::OPEN, u, self.n.cached, &[o.as_slice()])),
                    Seg::W(64),
                ]
            }
            2 => {
                let off = (k * MIB) % self.s.big_file;
                read_req(u, self.n.big, self.n.big_fh, off, MIB as u32)
            }
            3 => {
                let off = (k * MIB) % self.s.big_file;
                let w = WriteIn {
                    fh: self.n.wbig_fh,
                    offset: off,
                    size: self.payload.len() as u32,
                    ..Default::default()
                };
                match self.payload_at {
                    Some(at) => {
                        // The header and WriteIn, then the data in a descriptor of its own,
                        // as a Linux guest lays out a WRITE; `len` counts the data too.
                        let mut req = request(op::WRITE, u, self.n.wbig, &[w.as_slice()]);
                        let total = (req.len() + self.payload.len()) as u32;
                        req[..4].copy_from_slice(&total.to_le_bytes());
                        vec![
                            Seg::R(req),
                            Seg::Guest(at, self.payload.len() as u32),
                            Seg::W(64),
                        ]
                    }
                    None => vec![
                        Seg::R(request(
                            op::WRITE,
                            u,
                            self.n.wbig,
                            &[w.as_slice(), self.payload],
                        )),
                        Seg::W(64),
                    ],
                }
            }
            4 => {
                let name = format!("c{}_{slot}_{k}", self.lane);
                let ci = CreateIn {
                    flags: libc::O_RDWR as u32,
                    mode: 0o644 | libc::S_IFREG,
                    umask: 0,
                    fuse_flags: 0,
                };
                let req = request(
                    op::CREATE,
                    u,
                    self.n.scratch,
                    &[ci.as_slice(), &cstr(&name)],
                );
                self.slots[slot].name = name;
                vec![Seg::R(req), Seg::W(256)]
            }
            5 => {
                let o = OpenIn::default();
                vec![
                    Seg::R(request(op::OPENDIR, u, self.n.d10k, &[o.as_slice()])),
                    Seg::W(64),
                ]
            }
            NULL => vec![Seg::R(request(NULL_OPCODE, u, ROOT, &[])), Seg::W(64)],
            GETATTR => {
                let g = GetattrIn::default();
                vec![
                    Seg::R(request(op::GETATTR, u, self.n.cached, &[g.as_slice()])),
                    Seg::W(256),
                ]
            }
            _ => {
                let name = format!("m{}_{slot}_{k}", self.lane);
                let m = MkdirIn {
                    mode: 0o755,
                    umask: 0,
                };
                let req = request(op::MKDIR, u, self.n.scratch, &[m.as_slice(), &cstr(&name)]);
                self.slots[slot].name = name;
                vec![Seg::R(req), Seg::W(256)]
            }
        }
    }

    /// Next request of the operation in `slot` after `reply`; `None` when it is complete.
    /// Forgets (which have no reply) are returned through `forget`.
    fn step(
        &mut self,
        slot: usize,
        body: &[u8],
        u: u64,
        forget: &mut Option<u64>,
    ) -> Option<Vec<Seg>> {
        let st = self.slots[slot].step;
        self.slots[slot].step += 1;
        match (self.kind, st) {
            (0, 0) => {
                let e: EntryOut = vmm::obj(body);
                let g = GetattrIn::default();
                Some(vec![
                    Seg::R(request(op::GETATTR, u, e.nodeid, &[g.as_slice()])),
                    Seg::W(256),
                ])
            }
            (1, 0) => {
                let o: OpenOut = vmm::obj(body);
                self.slots[slot].fh = o.fh;
                let off = (self.rand() % (self.s.cached_file / 4096)) * 4096;
                Some(read_req(u, self.n.cached, o.fh, off, 4096))
            }
            (1, 1) => Some(release_req(
                op::RELEASE,
                u,
                self.n.cached,
                self.slots[slot].fh,
            )),
            (4, 0) => {
                let e: EntryOut = vmm::obj(body);
                let o: OpenOut = vmm::obj(&body[std::mem::size_of::<EntryOut>()..]);
                self.slots[slot].node = e.nodeid;
                self.slots[slot].fh = o.fh;
                let w = WriteIn {
                    fh: o.fh,
                    size: 4096,
                    ..Default::default()
                };
                Some(vec![
                    Seg::R(request(
                        op::WRITE,
                        u,
                        e.nodeid,
                        &[w.as_slice(), &self.payload[..4096]],
                    )),
                    Seg::W(64),
                ])
            }
            (4, 1) => {
                let sl = &self.slots[slot];
                Some(release_req(op::RELEASE, u, sl.node, sl.fh))
            }
            (4, 2) => {
                let name = cstr(&self.slots[slot].name);
                Some(vec![
                    Seg::R(request(op::UNLINK, u, self.n.scratch, &[&name])),
                    Seg::W(64),
                ])
            }
            (4, 3) => {
                *forget = Some(self.slots[slot].node);
                None
            }
            (5, 0) => {
                let o: OpenOut = vmm::obj(body);
                self.slots[slot].fh = o.fh;
                Some(readdirplus_req(u, self.n.d10k, o.fh, 0))
            }
            (5, _) => {
                let entries = vmm::parse_direntplus(body);
                let sl = &mut self.slots[slot];
                match entries.last() {
                    Some(last) => {
                        sl.entries += entries.len();
                        let off = last.off;
                        let fh = sl.fh;
                        Some(readdirplus_req(u, self.n.d10k, fh, off))
                    }
                    None if sl.fh != u64::MAX => {
                        // `.` and `..` are listed too.
                        assert_eq!(sl.entries, self.s.dir_entries + 2, "entries listed");
                        let fh = sl.fh;
                        sl.fh = u64::MAX;
                        Some(release_req(op::RELEASEDIR, u, self.n.d10k, fh))
                    }
                    None => None,
                }
            }
            (6, 0) => {
                let e: EntryOut = vmm::obj(body);
                self.slots[slot].node = e.nodeid;
                let name = cstr(&self.slots[slot].name);
                Some(vec![
                    Seg::R(request(RMDIR, u, self.n.scratch, &[&name])),
                    Seg::W(64),
                ])
            }
            (6, 1) => {
                *forget = Some(self.slots[slot].node);
                None
            }
            _ => None,
        }
    }
}

fn read_req(u: u64, node: u64, fh: u64, offset: u64, size: u32) -> Vec<Seg> {
    let r = ReadIn {
        fh,
        offset,
        size,
        ..Default::default()
    };
    vec![
        Seg::R(request(op::READ, u, node, &[r.as_slice()])),
        Seg::W(OUT_HEADER + size),
    ]
}

fn readdirplus_req(u: u64, node: u64, fh: u64, offset: u64) -> Vec<Seg> {
    let r = ReadIn {
        fh,
        offset,
        size: 4096,
        ..Default::default()
    };
    vec![
        Seg::R(request(op::READDIRPLUS, u, node, &[r.as_slice()])),
        Seg::W(OUT_HEADER + 4096),
    ]
}

fn release_req(opcode: u32, u: u64, node: u64, fh: u64) -> Vec<Seg> {
    let r = ReleaseIn {
        fh,
        ..Default::default()
    };
    vec![
        Seg::R(request(opcode, u, node, &[r.as_slice()])),
        Seg::W(64),
    ]
}

/// Result of one timed run.
#[derive(Default, Clone)]
struct Run {
    ops: u64,
    secs: f64,
    lat: Vec<Duration>,
}

/// How a load-generator thread reaches the device: the client itself (one thread), or a
/// client shared by one thread per request queue.
trait Port {
    fn unique(&mut self) -> u64;
    /// Writes `data` into guest memory once; its address (see [`Machine::payload_at`]).
    fn guest_copy(&mut self, data: &[u8]) -> u64;
    /// Returns memory from [`guest_copy`](Self::guest_copy).
    fn guest_free(&mut self, at: u64, len: usize);
    fn submit(&mut self, q: usize, segs: &[Seg]) -> u16;
    /// Waits (up to 60 s) for completions on `q` and appends every one reaped to `out`.
    fn completions(&mut self, q: usize, out: &mut Vec<vmm::Completion>);
    /// FORGET on the hiprio queue, waiting for the chain to come back.
    fn forget(&mut self, node: u64);
}

impl Port for FuseClient {
    fn unique(&mut self) -> u64 {
        self.next_unique()
    }
    fn guest_copy(&mut self, data: &[u8]) -> u64 {
        let at = self.vmm.alloc(data.len() as u64);
        self.vmm.write_mem(at, data);
        at
    }
    fn guest_free(&mut self, at: u64, len: usize) {
        self.vmm.free(at, len as u64);
    }
    fn submit(&mut self, q: usize, segs: &[Seg]) -> u16 {
        self.vmm.submit(q, segs)
    }
    fn completions(&mut self, q: usize, out: &mut Vec<vmm::Completion>) {
        out.push(
            self.vmm
                .wait_any(q, Duration::from_secs(60))
                .expect("the daemon did not answer within 60 s"),
        );
        while let Some(more) = self.vmm.wait_any(q, Duration::ZERO) {
            out.push(more);
        }
    }
    fn forget(&mut self, node: u64) {
        send_forget(self, node);
    }
}

/// A client shared by several threads, each driving its own request queue. The lock is held
/// only to submit and reap (microseconds); each thread sleeps on its own queue's call eventfd
/// with the lock released.
struct Shared<'a>(&'a std::sync::Mutex<&'a mut FuseClient>);

impl<'a> Shared<'a> {
    fn lock(&self) -> std::sync::MutexGuard<'a, &'a mut FuseClient> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps until `fd` (a call eventfd) fires or `ms` passes, and consumes the event.
    fn sleep_on(fd: std::os::fd::RawFd, ms: i32) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into `v` from a non-blocking eventfd; failure (EAGAIN) is fine.
        unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    }
}

impl Port for Shared<'_> {
    fn unique(&mut self) -> u64 {
        self.lock().next_unique()
    }
    fn guest_copy(&mut self, data: &[u8]) -> u64 {
        self.lock().guest_copy(data)
    }
    fn guest_free(&mut self, at: u64, len: usize) {
        self.lock().guest_free(at, len)
    }
    fn submit(&mut self, q: usize, segs: &[Seg]) -> u16 {
        self.lock().vmm.submit(q, segs)
    }
    fn completions(&mut self, q: usize, out: &mut Vec<vmm::Completion>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let fd = {
                let mut c = self.lock();
                while let Some(more) = c.vmm.wait_any(q, Duration::ZERO) {
                    out.push(more);
                }
                c.vmm.call_fd(q)
            };
            if !out.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer within 60 s"
            );
            // Only this thread consumes this queue's call events: no wake-up is lost.
            Self::sleep_on(fd, 20);
        }
    }
    fn forget(&mut self, node: u64) {
        let head = {
            let mut c = self.lock();
            let u = c.next_unique();
            let f = ForgetIn { nlookup: 1 };
            c.vmm
                .submit(0, &[Seg::R(request(op::FORGET, u, node, &[f.as_slice()]))])
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let fd = {
                let mut c = self.lock();
                if c.vmm.wait(0, head, Duration::ZERO).is_some() {
                    return;
                }
                c.vmm.call_fd(0)
            };
            assert!(Instant::now() < deadline, "forget not returned");
            // The hiprio queue's call events are shared by every thread: sleep briefly only.
            Self::sleep_on(fd, 1);
        }
    }
}

/// Drives `m` on `queues` request queues of `c` at once, one thread per queue, each with
/// `depth` operations in flight; the runs are merged (operations summed, latencies pooled).
fn drive_queues(
    c: &mut FuseClient,
    m: &Machine,
    queues: usize,
    depth: usize,
    dur: Duration,
    max_ops: u64,
) -> Run {
    if queues == 1 {
        let q = c.queue;
        let mut m = m.fork(0);
        return drive(c, q, &mut m, depth, dur, max_ops);
    }
    let shared = std::sync::Mutex::new(c);
    let runs: Vec<Run> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..queues)
            .map(|lane| {
                let mut m = m.fork(lane);
                let shared = &shared;
                scope.spawn(move || {
                    let mut port = Shared(shared);
                    drive(&mut port, 1 + lane, &mut m, depth, dur, max_ops)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("load-generator thread panicked"))
            .collect()
    });
    let mut all = Run::default();
    for r in runs {
        all.ops += r.ops;
        all.secs = all.secs.max(r.secs);
        all.lat.extend(r.lat);
    }
    all
}

/// Drives `kind` on queue `q` of `c` with `depth` operations in flight, for `dur` or `max_ops`.
fn drive<P: Port>(
    c: &mut P,
    q: usize,
    m: &mut Machine,
    depth: usize,
    dur: Duration,
    max_ops: u64,
) -> Run {
    m.slots = vec![Slot::default(); depth];
    // seqwrite's data is in guest memory once, as a guest's dirty pages are.
    if m.kind == 3 {
        m.payload_at = Some(c.guest_copy(m.payload));
    }
    let mut heads: HashMap<u16, usize> = HashMap::new();
    let mut started = vec![Instant::now(); depth];
    let start = Instant::now();
    let mut run = Run::default();
    let mut begun = 0u64;
    for (slot, t0) in started.iter_mut().enumerate() {
        if begun == max_ops {
            break;
        }
        let u = c.unique();
        let segs = m.begin(slot, u);
        *t0 = Instant::now();
        heads.insert(c.submit(q, &segs), slot);
        begun += 1;
    }
    let mut batch = Vec::new();
    while !heads.is_empty() {
        // Claim every completion reaped so far before submitting again: the test VMM recycles
        // a completed chain's descriptors at once, so a new request may get the head of a
        // completion not yet claimed.
        c.completions(q, &mut batch);
        let claimed: Vec<(usize, vmm::Completion)> = batch
            .drain(..)
            .map(|comp| {
                let slot = heads
                    .remove(&comp.head)
                    .expect("completion of an unknown chain");
                (slot, comp)
            })
            .collect();
        for (slot, comp) in claimed {
            let reply = Reply::parse(&comp).expect("reply without a FUSE header");
            let expected = if m.kind == NULL { -libc::ENOSYS } else { 0 };
            if reply.header.error != expected {
                panic!(
                    "{}: step {} failed with errno {}",
                    WORKLOADS[m.kind], m.slots[slot].step, -reply.header.error
                );
            }
            let u = c.unique();
            let mut forget = None;
            match m.step(slot, &reply.body, u, &mut forget) {
                Some(segs) => {
                    heads.insert(c.submit(q, &segs), slot);
                }
                None => {
                    if let Some(node) = forget {
                        c.forget(node);
                    }
                    run.lat.push(started[slot].elapsed());
                    run.ops += 1;
                    if begun < max_ops && start.elapsed() < dur {
                        let u = c.unique();
                        let segs = m.begin(slot, u);
                        started[slot] = Instant::now();
                        heads.insert(c.submit(q, &segs), slot);
                        begun += 1;
                    }
                }
            }
        }
    }
    run.secs = start.elapsed().as_secs_f64();
    if let Some(at) = m.payload_at.take() {
        c.guest_free(at, m.payload.len());
    }
    run
}

/// FORGET on the hiprio queue (no reply; the chain comes back with length 0).
fn send_forget(c: &mut FuseClient, node: u64) {
    let u = c.next_unique();
    let f = ForgetIn { nlookup: 1 };
    let head = c
        .vmm
        .submit(0, &[Seg::R(request(op::FORGET, u, node, &[f.as_slice()]))]);
    c.vmm
        .wait(0, head, Duration::from_secs(60))
        .expect("forget not returned");
}

/// A daemon under test plus the VMM connected to it.
struct Target {
    name: &'static str,
    child: Child,
    client: FuseClient,
    nodes: Nodes,
    _dir: tempfile::TempDir,
}

impl Drop for Target {
    fn drop(&mut self) {
        // SIGTERM first, so a wrapper (strace, perf) around the daemon can write its report.
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(program: &Path, args: &[String], sock: &Path, queues: usize) -> (Child, FuseClient) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{} exited early: {st}", program.display());
        }
        assert!(
            Instant::now() < deadline,
            "{} made no socket",
            program.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let cfg = VmmConfig {
        mem_size: 256 << 20,
        queue_size: 1024,
        queues: Some(1 + queues),
        // A load generator: it needs each reply's header and small bodies, not the 1 MiB a
        // READ returns (copying every reply out took longer than the daemon's own copy, so
        // seqread measured the load generator), and it does not pre-zero reply buffers.
        reply_cap: 64 << 10,
        zero_reply_buffers: false,
        ..Default::default()
    };
    let vmm = Vmm::connect(sock, cfg).expect("connect the VMM");
    let mut client = FuseClient::new(vmm);
    client.timeout = Duration::from_secs(60);
    client.init().expect("FUSE INIT");
    (child, client)
}

/// Where a boxfsd target's dataset lives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Serve {
    /// A host directory (`--shared-dir`, PassthroughFs).
    Dir,
    /// An in-memory filesystem (`--memfs-size`), filled through FUSE.
    Mem,
    /// The same host directory as a `dir` volume of a VolumeFs (`--volume /vol=dir:...`):
    /// the mount table's cost against `Dir`.
    Volume,
    /// The same host directory as the one device of a fleet-mode boxfsd (`--device
    /// id=..,socket=..,shared-dir=..`): the fleet event loop's cost against `Dir`.
    Fleet,
}

fn boxfsd(
    name: &'static str,
    serve: Serve,
    s: Sizes,
    cache: &str,
    queues: usize,
    program: Option<PathBuf>,
) -> Target {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("boxfsd.sock");
    let mut args: Vec<String> = if serve == Serve::Fleet {
        Vec::new()
    } else {
        vec!["--socket-path".into(), sock.display().to_string()]
    };
    args.extend([
        "--cache".into(),
        cache.into(),
        "--log-level".into(),
        "error".into(),
        "--request-queues".into(),
        queues.to_string(),
    ]);
    if let Ok(extra) = std::env::var("BOXFS_BENCH_BOXFSD_ARGS") {
        args.extend(extra.split_whitespace().map(String::from));
    }
    match serve {
        Serve::Mem => args.extend(["--memfs-size".into(), "2G".into()]),
        Serve::Dir | Serve::Volume | Serve::Fleet => {
            let share = dir.path().join("share");
            host_dataset(&share, s);
            // A volume or a fleet device gets the descriptor cache that `--shared-dir`
            // sizes for itself (theirs defaults to 1024: a process may serve many), so the
            // comparisons with the plain daemon measure the mount table and the fleet's event
            // loops, not a smaller cache.
            let cache = plain_fd_cache_size();
            if serve == Serve::Volume {
                args.extend([
                    "--volume".into(),
                    format!("/vol=dir:{},fd-cache-size={cache}", share.display()),
                ]);
            } else if serve == Serve::Fleet {
                args.extend([
                    "--device".into(),
                    format!(
                        "id=bench,socket={},shared-dir={},fd-cache-size={cache}",
                        sock.display(),
                        share.display()
                    ),
                ]);
            } else {
                args.extend(["--shared-dir".into(), share.display().to_string()]);
            }
        }
    }
    let program = program
        .or_else(|| std::env::var_os("BOXFS_BENCH_BOXFSD").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_boxfsd")));
    let (child, mut client) = connect(&program, &args, &sock, queues);
    if serve == Serve::Mem {
        fuse_dataset(&mut client, s);
    }
    let top = match serve {
        Serve::Volume => client.lookup(ROOT, "vol").expect("volume /vol").nodeid,
        _ => ROOT,
    };
    let nodes = nodes(&mut client, top);
    Target {
        name,
        child,
        client,
        nodes,
        _dir: dir,
    }
}

/// The descriptor cache `boxfsd --shared-dir` gives itself: a quarter of the open-file limit
/// (it raises the soft limit to the hard one it inherits), 1024 to 65536.
fn plain_fd_cache_size() -> u64 {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    (hard / 4).clamp(1024, 65_536)
}

fn virtiofsd(program: &Path, s: Sizes, cache: &str) -> Target {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("virtiofsd.sock");
    let share = dir.path().join("share");
    host_dataset(&share, s);
    let args: Vec<String> = vec![
        "--socket-path".into(),
        sock.display().to_string(),
        "--shared-dir".into(),
        share.display().to_string(),
        "--cache".into(),
        cache.into(),
        "--sandbox".into(),
        "none".into(),
        "--log-level".into(),
        "error".into(),
    ];
    let (child, mut client) = connect(program, &args, &sock, 1);
    let nodes = nodes(&mut client, ROOT);
    Target {
        name: "virtiofsd",
        child,
        client,
        nodes,
        _dir: dir,
    }
}

/// The same operations as host syscalls on a host copy of the dataset.
struct Host {
    root: tempfile::TempDir,
    small: OwnedFd,
    scratch: OwnedFd,
    big: std::fs::File,
    wbig: std::fs::File,
    s: Sizes,
}

fn open_dir(p: &Path) -> OwnedFd {
    std::fs::File::open(p).expect("open dir").into()
}

impl Host {
    fn new(s: Sizes) -> Host {
        let root = tempfile::tempdir().expect("tempdir");
        host_dataset(root.path(), s);
        Host {
            small: open_dir(&root.path().join("small")),
            scratch: open_dir(&root.path().join("scratch")),
            big: std::fs::File::open(root.path().join("big")).expect("big"),
            wbig: std::fs::OpenOptions::new()
                .write(true)
                .open(root.path().join("wbig"))
                .expect("wbig"),
            root,
            s,
        }
    }

    fn run(&self, kind: usize, dur: Duration, max_ops: u64) -> Run {
        use std::os::unix::fs::FileExt;
        let mut run = Run::default();
        let mut buf = vec![0u8; MIB as usize];
        let payload = vec![0xa5u8; MIB as usize];
        let cached =
            CString::new(self.root.path().join("cached").as_os_str().as_bytes()).expect("path");
        let d10k = self.root.path().join("d10k");
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let start = Instant::now();
        let mut k = 0u64;
        while k < max_ops && start.elapsed() < dur {
            k += 1;
            let t = Instant::now();
            match kind {
                0 => {
                    let name = CString::new(format!("f{:05}", k % self.s.small_files as u64))
                        .expect("name");
                    // SAFETY: an all-zero `stat` is a valid value.
                    let mut st: libc::stat = unsafe { std::mem::zeroed() };
                    // SAFETY: `st` is a valid out-buffer and `name` is NUL-terminated.
                    let r = unsafe {
                        libc::fstatat(
                            self.small.as_raw_fd(),
                            name.as_ptr(),
                            &mut st,
                            libc::AT_SYMLINK_NOFOLLOW,
                        )
                    };
                    assert_eq!(r, 0);
                }
                1 => {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let off = (rng % (self.s.cached_file / 4096)) * 4096;
                    // SAFETY: plain open/pread/close on a path we own; the buffer is large enough.
                    unsafe {
                        let fd = libc::open(cached.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                        assert!(fd >= 0);
                        let n = libc::pread(fd, buf.as_mut_ptr().cast(), 4096, off as i64);
                        assert_eq!(n, 4096);
                        libc::close(fd);
                    }
                }
                2 => {
                    let off = (k * MIB) % self.s.big_file;
                    self.big.read_exact_at(&mut buf, off).expect("pread");
                }
                3 => {
                    let off = (k * MIB) % self.s.big_file;
                    self.wbig.write_all_at(&payload, off).expect("pwrite");
                }
                4 => {
                    let name = CString::new(format!("c{k}")).expect("name");
                    // SAFETY: plain openat/write/close/unlinkat on a directory fd we own.
                    unsafe {
                        let fd = libc::openat(
                            self.scratch.as_raw_fd(),
                            name.as_ptr(),
                            libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC,
                            0o644,
                        );
                        assert!(fd >= 0);
                        assert_eq!(libc::write(fd, payload.as_ptr().cast(), 4096), 4096);
                        libc::close(fd);
                        assert_eq!(
                            libc::unlinkat(self.scratch.as_raw_fd(), name.as_ptr(), 0),
                            0
                        );
                    }
                }
                5 => {
                    let mut n = 0;
                    for e in std::fs::read_dir(&d10k).expect("read_dir") {
                        let e = e.expect("entry");
                        e.metadata().expect("stat");
                        n += 1;
                    }
                    assert_eq!(n, self.s.dir_entries);
                }
                GETATTR => {
                    // SAFETY: an all-zero `stat` is a valid value.
                    let mut st: libc::stat = unsafe { std::mem::zeroed() };
                    // SAFETY: `st` is a valid out-buffer and `cached` is NUL-terminated.
                    let r = unsafe { libc::stat(cached.as_ptr(), &mut st) };
                    assert_eq!(r, 0);
                }
                _ => {
                    let name = CString::new(format!("m{k}")).expect("name");
                    // SAFETY: plain mkdirat/unlinkat on a directory fd we own.
                    unsafe {
                        assert_eq!(
                            libc::mkdirat(self.scratch.as_raw_fd(), name.as_ptr(), 0o755),
                            0
                        );
                        assert_eq!(
                            libc::unlinkat(
                                self.scratch.as_raw_fd(),
                                name.as_ptr(),
                                libc::AT_REMOVEDIR
                            ),
                            0
                        );
                    }
                }
            }
            run.lat.push(t.elapsed());
            run.ops += 1;
        }
        run.secs = start.elapsed().as_secs_f64();
        run
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn find_virtiofsd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VIRTIOFSD") {
        // `VIRTIOFSD=none` (or empty): boxfs rows only, e.g. to profile boxfsd.
        if p.is_empty() || p == "none" {
            return None;
        }
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
}

/// Aggregate of the rounds of one (workload, target).
#[derive(Default)]
struct Agg {
    rates: Vec<f64>,
    lat: Vec<Duration>,
}

impl Agg {
    fn add(&mut self, r: Run) {
        if r.secs > 0.0 {
            self.rates.push(r.ops as f64 / r.secs);
        }
        self.lat.extend(r.lat);
    }

    fn rate(&self) -> f64 {
        let mut v = self.rates.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    fn pct(&mut self, p: f64) -> Duration {
        self.lat.sort();
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.lat.len() - 1) as f64 * p).round() as usize;
        self.lat[i]
    }
}

/// Starts `boxfsd --keep-serving` on a MemFs or a host directory; returns the daemon, its
/// socket and the directory holding both.
fn hostile_daemon(memfs: bool) -> (Child, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("boxfsd.sock");
    let mut args: Vec<String> = vec![
        "--socket-path".into(),
        sock.display().to_string(),
        "--keep-serving".into(),
        "--log-level".into(),
        "error".into(),
    ];
    if let Ok(extra) = std::env::var("BOXFS_BENCH_BOXFSD_ARGS") {
        args.extend(extra.split_whitespace().map(String::from));
    }
    if memfs {
        args.extend(["--memfs-size".into(), "64M".into()]);
    } else {
        let share = dir.path().join("share");
        std::fs::create_dir_all(&share).expect("share");
        args.extend(["--shared-dir".into(), share.display().to_string()]);
    }
    let program = std::env::var_os("BOXFS_BENCH_BOXFSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_boxfsd")));
    let mut child = Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    // The VMM's connect retries until the socket is there; a daemon that exits early makes it
    // fail.
    if let Ok(Some(st)) = child.try_wait() {
        panic!("boxfsd exited early: {st}");
    }
    (child, sock, dir)
}

/// A VMM attached to `sock`, without FUSE_INIT.
fn hostile_attach(sock: &Path) -> FuseClient {
    let vmm = Vmm::connect(sock, VmmConfig::default()).expect("connect the VMM");
    let mut c = FuseClient::new(vmm);
    c.timeout = Duration::from_secs(60);
    c
}

/// The hostile guest of the module documentation against one daemon; returns (check, passed).
fn hostile_checks(memfs: bool) -> Vec<(String, bool)> {
    let (mut child, sock, _dir) = hostile_daemon(memfs);
    let mut out = Vec::new();
    let mut check = |name: &str, ok: bool| out.push((name.to_string(), ok));

    let mut c = hostile_attach(&sock);
    check(
        "GETATTR before INIT gets EIO",
        c.getattr(ROOT).err() == Some(libc::EIO),
    );
    check(
        "MKDIR before INIT gets EIO",
        c.mkdir(ROOT, "early", 0o755).err() == Some(libc::EIO),
    );
    let u = c.next_unique();
    let f = ForgetIn { nlookup: 1 };
    let head = c
        .vmm
        .submit(0, &[Seg::R(request(op::FORGET, u, ROOT, &[f.as_slice()]))]);
    let forget = c.vmm.wait(0, head, Duration::from_secs(60));
    check(
        "FORGET before INIT comes back unused",
        forget.is_some_and(|d| d.len == 0),
    );
    check("INIT", c.init().is_ok());
    check(
        "nothing was created before INIT",
        c.lookup(ROOT, "early").err() == Some(libc::ENOENT),
    );

    let q = c.queue;
    for (i, kind) in Malformed::ALL.into_iter().enumerate() {
        let name = format!("bad{i}");
        let u = c.next_unique();
        let m = MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        let req = request(op::MKDIR, u, ROOT, &[m.as_slice(), &cstr(&name)]);
        let head = c.vmm.submit_malformed(q, kind, &req, 256);
        let done = c.vmm.wait(q, head, Duration::from_secs(60));
        check(
            &format!("{kind:?} chain comes back unused"),
            done.is_some_and(|d| d.len == 0),
        );
        check(
            &format!("{kind:?} chain is not served"),
            c.lookup(ROOT, &name).err() == Some(libc::ENOENT),
        );
    }

    // A session with an unlinked-but-open file, then INIT again.
    let created = c.create(ROOT, "gone", 0o644 | libc::S_IFREG, libc::O_RDWR as u32);
    check("CREATE", created.is_ok());
    if let Ok((e, o)) = created {
        check("WRITE", c.write(e.nodeid, o.fh, 0, b"data").is_ok());
        check("UNLINK", c.unlink(ROOT, "gone").is_ok());
        check("a second INIT is answered", c.init().is_ok());
        check(
            "the old session's handle no longer reads",
            c.read(e.nodeid, o.fh, 0, 4).is_err(),
        );
        check(
            "the old session's node id no longer works",
            c.getattr(e.nodeid).is_err(),
        );
    }
    check("the new session serves", c.getattr(ROOT).is_ok());

    // The guest reboots: the next VMM starts before INIT.
    drop(c);
    let mut c = hostile_attach(&sock);
    check(
        "after a reconnect, GETATTR before INIT gets EIO",
        c.getattr(ROOT).err() == Some(libc::EIO),
    );
    check("INIT after a reconnect", c.init().is_ok());
    drop(c);

    check(
        "the daemon is still running",
        matches!(child.try_wait(), Ok(None)),
    );
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    out
}

fn hostile() {
    let mut failed = 0;
    for (name, memfs) in [("boxfs-memfs", true), ("boxfs-passthrough", false)] {
        for (check, ok) in hostile_checks(memfs) {
            println!("{name:<18} {:<4} {check}", if ok { "ok" } else { "FAIL" });
            failed += usize::from(!ok);
        }
    }
    assert_eq!(failed, 0, "{failed} hostile checks failed");
}

fn main() {
    if std::env::args().any(|a| a == "--hostile")
        || std::env::var("BOXFS_BENCH_HOSTILE").is_ok_and(|v| v == "1")
    {
        hostile();
        return;
    }
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes = if bench { FULL } else { SMOKE };
    let secs = if bench {
        env_u64("BOXFS_BENCH_SECS", 2)
    } else {
        60
    };
    let rounds = if bench {
        env_u64("BOXFS_BENCH_ROUNDS", 3)
    } else {
        1
    };
    let max_ops = if bench { u64::MAX } else { 8 };
    let depths: Vec<usize> = std::env::var("BOXFS_BENCH_DEPTH")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .filter_map(|d| d.trim().parse::<usize>().ok())
        .map(|d| d.clamp(1, 64))
        .collect();
    let depths = if depths.is_empty() {
        vec![1, 8]
    } else {
        depths
    };
    let cache = std::env::var("BOXFS_BENCH_CACHE").unwrap_or_else(|_| "auto".into());
    let only: Option<Vec<String>> = std::env::var("BOXFS_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let dur = Duration::from_secs(secs);
    let mut queue_counts: Vec<usize> = std::env::var("BOXFS_BENCH_QUEUES")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .filter_map(|d| d.trim().parse::<usize>().ok())
        .map(|d| d.clamp(1, 16))
        .collect();
    if queue_counts.is_empty() {
        queue_counts.push(1);
    }
    let max_queues = queue_counts.iter().copied().max().unwrap_or(1);

    eprintln!("preparing datasets ...");
    let mut targets = vec![
        boxfsd(
            "boxfs-passthrough",
            Serve::Dir,
            sizes,
            &cache,
            max_queues,
            None,
        ),
        boxfsd("boxfs-memfs", Serve::Mem, sizes, &cache, max_queues, None),
        boxfsd(
            "boxfs-volume",
            Serve::Volume,
            sizes,
            &cache,
            max_queues,
            None,
        ),
        boxfsd("boxfs-fleet", Serve::Fleet, sizes, &cache, max_queues, None),
    ];
    if let Some(base) = std::env::var_os("BOXFS_BENCH_BASELINE").filter(|b| !b.is_empty()) {
        // Another boxfsd build serving the same dataset, alternated with the others: a
        // before/after comparison of a change within one run.
        targets.push(boxfsd(
            "base-passthrough",
            Serve::Dir,
            sizes,
            &cache,
            max_queues,
            Some(PathBuf::from(base)),
        ));
    }
    if bench {
        match find_virtiofsd() {
            Some(p) => targets.push(virtiofsd(&p, sizes, &cache)),
            None => eprintln!(
                "virtiofsd not found (set VIRTIOFSD or run scripts/bench.sh): row skipped"
            ),
        }
    }
    if let Ok(keep) = std::env::var("BOXFS_BENCH_TARGETS") {
        let keep: Vec<&str> = keep.split(',').map(str::trim).collect();
        targets.retain(|t| keep.contains(&t.name));
    }
    let host = Host::new(sizes);
    let payload = vec![0xa5u8; MIB as usize];

    let names: Vec<String> = targets.iter().map(|t| t.name.to_string()).collect();
    // (workload, target, depth, queues); the host floor runs one operation at a time (depth 0).
    let mut results: HashMap<(usize, String, usize, usize), Agg> = HashMap::new();
    for round in 0..rounds {
        for kind in 0..WORKLOADS.len() {
            if let Some(only) = &only {
                if !only.iter().any(|o| o == WORKLOADS[kind]) {
                    continue;
                }
            }
            // Alternate the order of targets between rounds to cancel drift.
            let n = targets.len();
            for &nq in &queue_counts {
                for &depth in &depths {
                    for i in 0..n {
                        let t = &mut targets[(i + round as usize + kind) % n];
                        if nq > 1 && t.name == "virtiofsd" {
                            // virtiofsd offers a single request queue.
                            continue;
                        }
                        let m = Machine {
                            kind,
                            lane: 0,
                            n: t.nodes,
                            s: sizes,
                            counter: 0,
                            rng: 0x2545_f491_4f6c_dd1d,
                            payload: &payload,
                            payload_at: None,
                            slots: Vec::new(),
                        };
                        let r = drive_queues(&mut t.client, &m, nq, depth, dur, max_ops);
                        assert!(r.ops > 0, "{}: no operation completed", t.name);
                        results
                            .entry((kind, t.name.to_string(), depth, nq))
                            .or_default()
                            .add(r);
                    }
                }
            }
            if kind != NULL {
                let r = host.run(kind, dur, max_ops);
                results
                    .entry((kind, "host".to_string(), 0, 1))
                    .or_default()
                    .add(r);
            }
        }
    }
    if !bench {
        println!(
            "vs_virtiofsd smoke test: every workload completed on {}",
            names.join(", ")
        );
        // The smoke run (`cargo test`) also plays the hostile guest.
        hostile();
        return;
    }

    println!(
        "\nrounds={rounds} secs/run={secs} depths={depths:?} queues={queue_counts:?} cache={cache} \
         cores={} (virtiofsd: {})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if names.iter().any(|n| n == "virtiofsd") {
            "yes"
        } else {
            "absent"
        }
    );
    println!(
        "{:<22} {:<18} {:>5} {:>2} {:>10} {:>9} {:>10} {:>10} {:>10} {:>8} {:>9}",
        "workload",
        "target",
        "depth",
        "q",
        "ops/s",
        "MB/s",
        "p50 µs",
        "p99 µs",
        "p50-null",
        "×vfsd",
        "×host p50"
    );
    // The floor of each target at each depth: its "null" row's median.
    let mut floor: HashMap<(String, usize, usize), Duration> = HashMap::new();
    for &nq in &queue_counts {
        for &depth in &depths {
            for t in &names {
                if let Some(a) = results.get_mut(&(NULL, t.clone(), depth, nq)) {
                    floor.insert((t.clone(), depth, nq), a.pct(0.5));
                }
            }
        }
    }
    let mut scaling: Vec<String> = Vec::new();
    for (kind, wname) in WORKLOADS.iter().enumerate() {
        let host_p50 = results
            .get_mut(&(kind, "host".to_string(), 0, 1))
            .map(|a| a.pct(0.5));
        let mut rows: Vec<(String, usize, usize)> = Vec::new();
        for &nq in &queue_counts {
            for &depth in &depths {
                rows.extend(names.iter().map(|t| (t.clone(), depth, nq)));
            }
        }
        rows.push(("host".into(), 0, 1));
        for (t, depth, nq) in rows {
            // virtiofsd has one request queue: a multi-queue row is compared with nothing.
            let vfsd = results
                .get(&(kind, "virtiofsd".to_string(), depth, nq))
                .map(Agg::rate);
            if nq > 1 {
                let one = results.get(&(kind, t.clone(), depth, 1)).map(Agg::rate);
                let many = results.get(&(kind, t.clone(), depth, nq)).map(Agg::rate);
                if let (Some(one), Some(many)) = (one, many) {
                    if one > 0.0 {
                        scaling.push(format!(
                            "{wname:<22} {t:<18} depth {depth} per queue: {nq} queues {many:.0} \
                             ops/s vs 1 queue {one:.0} ops/s = {:.2}x",
                            many / one
                        ));
                    }
                }
            }
            let Some(a) = results.get_mut(&(kind, t.clone(), depth, nq)) else {
                continue;
            };
            let rate = a.rate();
            let p50 = a.pct(0.5);
            let p99 = a.pct(0.99);
            let bytes = match kind {
                1 | 4 => 4096.0,
                2 | 3 => MIB as f64,
                _ => 0.0,
            };
            let mbs = if bytes > 0.0 {
                format!("{:.1}", rate * bytes / 1e6)
            } else {
                "-".into()
            };
            let vs = match (t != "virtiofsd" && t != "host", vfsd) {
                (true, Some(v)) if v > 0.0 => format!("{:.2}", rate / v),
                _ => "-".into(),
            };
            let vh = match (t.as_str() != "host", host_p50) {
                (true, Some(h)) if !h.is_zero() => {
                    format!("{:.1}", p50.as_secs_f64() / h.as_secs_f64())
                }
                _ => "-".into(),
            };
            // Backend cost: the row's median above the target's own transport floor.
            let above = match floor.get(&(t.clone(), depth, nq)) {
                Some(f) if kind != NULL => {
                    format!("{:.1}", (p50.as_secs_f64() - f.as_secs_f64()) * 1e6)
                }
                _ => "-".into(),
            };
            let shown_depth = if depth == 0 {
                "-".to_string()
            } else {
                depth.to_string()
            };
            let shown_q = if depth == 0 {
                "-".to_string()
            } else {
                nq.to_string()
            };
            println!(
                "{:<22} {:<18} {:>5} {:>2} {:>10.0} {:>9} {:>10.1} {:>10.1} {:>10} {:>8} {:>9}",
                wname,
                t,
                shown_depth,
                shown_q,
                rate,
                mbs,
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6,
                above,
                vs,
                vh
            );
        }
    }
    // The mount table's cost: the same directory through a VolumeFs volume against served
    // plainly, per workload and depth (issue 16's target: at most 5 % on lookup+getattr and
    // 4 KiB reads); and the fleet event loop's, one `--device` against the single-device
    // daemon (issue 19's target: within 5 % on every row).
    for (other, short, title) in [
        (
            "boxfs-volume",
            "volume",
            "mount-table overhead (boxfs-volume against boxfs-passthrough, same directory):",
        ),
        (
            "boxfs-fleet",
            "fleet",
            "fleet-mode overhead (boxfs-fleet, one --device, against boxfs-passthrough):",
        ),
    ] {
        let mut overhead: Vec<String> = Vec::new();
        for (kind, wname) in WORKLOADS.iter().enumerate() {
            for &depth in &depths {
                let key = |t: &str| (kind, t.to_string(), depth, 1);
                let (Some(v), Some(p)) = (
                    results.get(&key(other)).map(Agg::rate),
                    results.get(&key("boxfs-passthrough")).map(Agg::rate),
                ) else {
                    continue;
                };
                if v > 0.0 && p > 0.0 {
                    let v50 = results.get_mut(&key(other)).map(|a| a.pct(0.5));
                    let p50 = results
                        .get_mut(&key("boxfs-passthrough"))
                        .map(|a| a.pct(0.5));
                    let lat = match (v50, p50) {
                        (Some(v50), Some(p50)) if !p50.is_zero() => format!(
                            "p50 {:.1} vs {:.1} µs ({:+.1} %)",
                            v50.as_secs_f64() * 1e6,
                            p50.as_secs_f64() * 1e6,
                            (v50.as_secs_f64() / p50.as_secs_f64() - 1.0) * 100.0
                        ),
                        _ => String::new(),
                    };
                    overhead.push(format!(
                        "{wname:<22} depth {depth}: {short} {v:.0} vs plain {p:.0} ops/s \
                         ({:+.1} % throughput), {lat}",
                        (v / p - 1.0) * 100.0
                    ));
                }
            }
        }
        if !overhead.is_empty() {
            println!("\n{title}");
            for line in overhead {
                println!("{line}");
            }
        }
    }
    if !scaling.is_empty() {
        println!("\nqueue scaling (each queue driven by its own load-generator thread):");
        for line in scaling {
            println!("{line}");
        }
    }
}
