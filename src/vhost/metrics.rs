//! Per-device request metrics: plain relaxed atomics written on the request path (no lock, no
//! allocation), read by whoever exports them (`boxfsd`'s `GET /metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use vm_memory::{Address, Bytes};

use super::request::{Chain, Mem, Outcome};

/// Opcode slots: FUSE opcodes are below 64 (CUSE_INIT, 4096, and anything else out of range
/// is counted in slot 0, which no real opcode uses).
const OPCODES: usize = 64;
/// Errno slots: Linux errnos are below 134; anything else is counted in slot 0.
const ERRNOS: usize = 134;
/// Upper bounds of the latency buckets, in microseconds (then +Inf).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000,
];

const READ: u32 = 15;
const WRITE: u32 = 16;
const OUT_HEADER: u64 = 16;

/// Request counters of one device. Attach with
/// [`FsDeviceBuilder::metrics`](super::FsDeviceBuilder::metrics); read at any time.
#[derive(Debug)]
pub struct RequestMetrics {
    opcodes: [AtomicU64; OPCODES],
    errnos: [AtomicU64; ERRNOS],
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_ns: AtomicU64,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            opcodes: std::array::from_fn(|_| AtomicU64::new(0)),
            errnos: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_ns: AtomicU64::new(0),
        }
    }
}

/// A latency histogram read from [`RequestMetrics::latency`].
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    /// `(upper bound in seconds, requests in this bucket alone)` (not cumulative, as
    /// `prometheus-client`'s encoder takes them), the last bound being `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the latencies, in seconds.
    pub sum_seconds: f64,
    /// Number of requests measured.
    pub count: u64,
}

impl RequestMetrics {
    /// Counters at zero.
    pub fn new() -> RequestMetrics {
        RequestMetrics::default()
    }

    /// Requests served so far by FUSE opcode (`0` holds opcodes out of range): nonzero
    /// entries only.
    pub fn requests_by_opcode(&self) -> Vec<(u32, u64)> {
        nonzero(&self.opcodes)
    }

    /// Error replies so far by errno (`0` holds errnos out of range): nonzero entries only.
    pub fn errors_by_errno(&self) -> Vec<(u32, u64)> {
        nonzero(&self.errnos)
    }

    /// Bytes the guest read (READ replies' data).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Bytes the guest wrote (the sizes WRITE replies acknowledged).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// The request latency histogram (time from taking a chain to having its reply written).
    pub fn latency(&self) -> Latency {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.latency.len());
        for (i, b) in self.latency.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            let bound = LATENCY_BUCKETS_US
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            buckets.push((bound, n));
        }
        Latency {
            buckets,
            sum_seconds: self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count,
        }
    }
}

fn nonzero(slots: &[AtomicU64]) -> Vec<(u32, u64)> {
    slots
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((i as u32, n))
        })
        .collect()
}

/// What is remembered of a chain while it is served.
pub(crate) struct Probe {
    opcode: u32,
    /// Guest address and length of the first device-writable descriptor (the reply header).
    reply: Option<(vm_memory::GuestAddress, u32)>,
    start: Instant,
}

impl Probe {
    /// Notes the opcode and the reply buffer of `chain` before it is served. Reads only
    /// guest memory; a chain it cannot read is counted under opcode 0.
    pub(crate) fn start(chain: &Chain, mem: &Mem) -> Probe {
        let opcode = chain
            .clone()
            .readable()
            .next()
            .filter(|d| d.len() >= 8)
            .and_then(|d| d.addr().checked_add(4))
            .and_then(|at| mem.read_obj::<u32>(at).ok())
            .map_or(0, u32::from_le);
        let reply = chain.clone().writable().next().map(|d| (d.addr(), d.len()));
        Probe {
            opcode,
            reply,
            start: Instant::now(),
        }
    }

    /// Counts the served request in `m`.
    pub(crate) fn finish(self, m: &RequestMetrics, mem: &Mem, outcome: Outcome) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let slot = if (self.opcode as usize) < OPCODES {
            self.opcode as usize
        } else {
            0
        };
        m.opcodes[slot].fetch_add(1, Ordering::Relaxed);
        let us = ns / 1000;
        let b = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        m.latency[b].fetch_add(1, Ordering::Relaxed);
        m.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
        let errno = match outcome {
            Outcome::ErrorReply { errno, .. } => errno,
            Outcome::Served { used } if u64::from(used) >= OUT_HEADER => {
                let Some((addr, len)) = self.reply.filter(|(_, l)| u64::from(*l) >= OUT_HEADER)
                else {
                    return;
                };
                let error = addr
                    .checked_add(4)
                    .and_then(|at| mem.read_obj::<i32>(at).ok())
                    .map_or(0, i32::from_le);
                if error < 0 {
                    error.saturating_neg()
                } else {
                    self.count_bytes(m, mem, addr, len, used);
                    0
                }
            }
            _ => 0,
        };
        if errno != 0 {
            let e = usize::try_from(errno).ok().filter(|e| *e < ERRNOS);
            m.errnos[e.unwrap_or(0)].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_bytes(
        &self,
        m: &RequestMetrics,
        mem: &Mem,
        addr: vm_memory::GuestAddress,
        len: u32,
        used: u32,
    ) {
        match self.opcode {
            READ => {
                m.bytes_read
                    .fetch_add(u64::from(used) - OUT_HEADER, Ordering::Relaxed);
            }
            WRITE if u64::from(len) >= OUT_HEADER + 4 && u64::from(used) >= OUT_HEADER + 4 => {
                let size = addr
                    .checked_add(OUT_HEADER)
                    .and_then(|at| mem.read_obj::<u32>(at).ok())
                    .map_or(0, u32::from_le);
                m.bytes_written
                    .fetch_add(u64::from(size), Ordering::Relaxed);
            }
            _ => {}
        }
    }
}
