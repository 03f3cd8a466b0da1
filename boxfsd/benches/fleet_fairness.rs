//! Fleet fairness (issue 19): device B's GETATTR latency alone and while device A floods at
//! full depth, in one fleet-mode boxfsd (`--fleet-threads`, default 2 loops) and, as the
//! control, with each device on threads of its own (`--fleet-threads 0`, what one process
//! per VM gives). Target: B's p99 while A floods ≤ 2× its p99 alone.
//!
//! `cargo bench -p boxfsd --bench fleet_fairness`. Environment:
//! * `FLEET_FAIRNESS_ROUNDS` (default 5): rounds, fleet and control interleaved;
//! * `FLEET_FAIRNESS_N` (default 5000): B's GETATTRs per measurement;
//! * `FLEET_FAIRNESS_DEPTH` (default 128): A's requests in flight;
//! * `FLEET_FAIRNESS_FLOOD_SCHED` = `nice` (default), `idle` or `normal`: the flooding
//!   CLIENT's scheduling (nice 19, `SCHED_IDLE`, or as everything else). `idle` and `nice`
//!   emulate a guest whose vCPUs have cores of their own, on a machine where the test VMM
//!   would otherwise take a core from the daemon; the daemon and B's client always run at
//!   normal priority. Each line reports A's throughput during B's measurement: a starved
//!   flood (a few ops/s) makes that line's ratio meaningless.
//! * `FLEET_FAIRNESS_LOOPS` (default 2): the fleet's event loops;
//! * `FLEET_FAIRNESS_BOXFSD`: another `boxfsd` binary (e.g. a build before a change).
//!
//! B's measurement alternates chunks alone and under the flood (the flood drained between),
//! so that load from outside the benchmark weighs on both alike. Prints one line per
//! measurement and the medians; asserts nothing (timing is not a test).
//! Without `--bench` (as `cargo test --all-targets` runs it): one small round, the flooding
//! client at normal priority, as a smoke test.

#[path = "../../tests/vmm/mod.rs"]
mod vmm;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxfs::ROOT_ID;
use fuse_backend_rs::abi::fuse_abi::GetattrIn;
use vm_memory::ByteValued;
use vmm::{op, request, FuseClient, Seg, Vmm, VmmConfig};

const GUARD: Duration = Duration::from_secs(120);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn daemon(dir: &Path, loops: usize) -> Daemon {
    let mut args = vec!["--fleet-threads".to_owned(), loops.to_string()];
    for id in ["a", "b"] {
        args.push("--device".into());
        args.push(format!(
            "id={id},socket={},memfs-size=64M",
            dir.join(format!("{id}.sock")).display()
        ));
    }
    args.extend(["--log-level".into(), "warn".into()]);
    let d = Daemon(
        Command::new(
            std::env::var_os("FLEET_FAIRNESS_BOXFSD")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_boxfsd").into()),
        )
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn boxfsd"),
    );
    let deadline = Instant::now() + GUARD;
    while !dir.join("a.sock").exists() || !dir.join("b.sock").exists() {
        assert!(Instant::now() < deadline, "boxfsd did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    d
}

fn client(path: &Path) -> FuseClient {
    let mut c = FuseClient::new(Vmm::connect(path, VmmConfig::default()).expect("connect"));
    c.timeout = GUARD;
    c.init().expect("init");
    c
}

fn latencies(c: &mut FuseClient, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            c.getattr(ROOT_ID).expect("getattr");
            t.elapsed()
        })
        .collect()
}

fn pct(v: &[Duration], p: usize) -> Duration {
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[derive(Clone, Copy, PartialEq)]
enum Sched {
    Idle,
    Nice,
    Normal,
}

/// Applies `sched` to the calling thread.
fn set_sched(sched: Sched) {
    let r = match sched {
        Sched::Normal => 0,
        Sched::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sets the calling thread's policy; `param` lives for the call.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) }
        }
        // SAFETY: on Linux, PRIO_PROCESS with 0 is the calling thread; no memory is passed.
        Sched::Nice => unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) },
    };
    assert_eq!(r, 0, "scheduling: {}", std::io::Error::last_os_error());
}

/// The flood's controls: `stop` ends it, `pause` makes it drain and wait (`paused` says it
/// has nothing in flight); `done` counts completions.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    pause: AtomicBool,
    paused: AtomicBool,
    done: AtomicU64,
}

/// Keeps `depth` GETATTRs in flight on A until stopped.
fn flood(mut c: FuseClient, depth: usize, sched: Sched, ctl: &Control) {
    set_sched(sched);
    let mut unique = 1u64 << 32;
    let g = GetattrIn::default();
    while !ctl.stop.load(Ordering::Relaxed) {
        if ctl.pause.load(Ordering::Acquire) {
            while c.vmm.in_flight(1) > 0 {
                c.vmm.wait_any(1, GUARD).expect("the flood's requests");
            }
            ctl.paused.store(true, Ordering::Release);
            while ctl.pause.load(Ordering::Acquire) && !ctl.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_micros(200));
            }
            ctl.paused.store(false, Ordering::Release);
            continue;
        }
        while c.vmm.in_flight(1) < depth {
            unique += 2;
            c.vmm.submit(
                1,
                &[
                    Seg::R(request(op::GETATTR, unique, ROOT_ID, &[g.as_slice()])),
                    Seg::W(256),
                ],
            );
        }
        if c.vmm.wait_any(1, GUARD).is_some() {
            ctl.done.fetch_add(1, Ordering::Relaxed);
        }
    }
    while c.vmm.in_flight(1) > 0 {
        c.vmm.wait_any(1, GUARD).expect("the flood's last requests");
    }
}

/// Chunks of B's measurement, alone and flooded alternately, so that load from outside
/// the benchmark weighs on both alike.
const CHUNKS: usize = 10;

/// (B's p50 and p99 alone, while A floods), A's ops/s while B was measured under the flood.
fn measure(loops: usize, n: usize, depth: usize, sched: Sched) -> ([Duration; 4], f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let _d = daemon(dir.path(), loops);
    let mut b = client(&dir.path().join("b.sock"));
    latencies(&mut b, n / 10);
    let a = client(&dir.path().join("a.sock"));
    let ctl = Arc::new(Control::default());
    ctl.pause.store(true, Ordering::Release);
    let c = ctl.clone();
    let t = std::thread::spawn(move || flood(a, depth, sched, &c));
    let (mut alone, mut flooded) = (Vec::new(), Vec::new());
    let (mut a_ops, mut a_time) = (0, Duration::ZERO);
    for _ in 0..CHUNKS {
        let deadline = Instant::now() + GUARD;
        while !ctl.paused.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "the flood does not drain");
            std::thread::sleep(Duration::from_micros(200));
        }
        alone.extend(latencies(&mut b, n / CHUNKS));
        ctl.pause.store(false, Ordering::Release);
        // The flood is under way (a queue's worth served) before measuring.
        let d = ctl.done.load(Ordering::Relaxed);
        let deadline = Instant::now() + GUARD;
        while ctl.done.load(Ordering::Relaxed) < d + 2 * depth as u64 {
            assert!(Instant::now() < deadline, "the flood makes no progress");
            std::thread::sleep(Duration::from_micros(200));
        }
        let (d0, t0) = (ctl.done.load(Ordering::Relaxed), Instant::now());
        flooded.extend(latencies(&mut b, n / CHUNKS));
        a_ops += ctl.done.load(Ordering::Relaxed) - d0;
        a_time += t0.elapsed();
        ctl.pause.store(true, Ordering::Release);
    }
    ctl.stop.store(true, Ordering::Relaxed);
    t.join().expect("flood");
    alone.sort();
    flooded.sort();
    (
        [
            pct(&alone, 50),
            pct(&alone, 99),
            pct(&flooded, 50),
            pct(&flooded, 99),
        ],
        a_ops as f64 / a_time.as_secs_f64(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Without `--bench` (`cargo test --all-targets`): a smoke run, one small round.
    let bench = std::env::args().any(|a| a == "--bench");
    let rounds = if bench {
        env("FLEET_FAIRNESS_ROUNDS", 5)
    } else {
        1
    };
    let n = if bench {
        env("FLEET_FAIRNESS_N", 5000)
    } else {
        200
    };
    let depth = env("FLEET_FAIRNESS_DEPTH", 128);
    let loops = env("FLEET_FAIRNESS_LOOPS", 2);
    let (sched, sched_name) = match std::env::var("FLEET_FAIRNESS_FLOOD_SCHED").as_deref() {
        _ if !bench => (Sched::Normal, "normal priority"),
        Ok("normal") => (Sched::Normal, "normal priority"),
        Ok("idle") => (Sched::Idle, "SCHED_IDLE"),
        _ => (Sched::Nice, "nice 19"),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "fleet fairness: {cores} cores, B {n} GETATTRs one at a time (normal priority), A at \
         depth {depth} from a client thread at {}, {rounds} rounds",
        sched_name
    );
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        for (i, (name, l)) in [("fleet", loops), ("own threads", 0)]
            .into_iter()
            .enumerate()
        {
            let ([p50a, p99a, p50f, p99f], rate) = measure(l, n, depth, sched);
            let ratio = p99f.as_secs_f64() / p99a.as_secs_f64();
            ratios[i].push(ratio);
            eprintln!(
                "round {r} {name}: B alone p50 {p50a:?} p99 {p99a:?}; A flooding p50 {p50f:?} \
                 p99 {p99f:?} (A {rate:.0} ops/s); p99 ratio {ratio:.2}"
            );
        }
    }
    let [f, o] = ratios;
    eprintln!(
        "fleet fairness: median p99 ratio fleet {:.2} (range {:.2}-{:.2}), own threads {:.2} \
         (range {:.2}-{:.2})",
        median(f.clone()),
        f.iter().copied().fold(f64::MAX, f64::min),
        f.iter().copied().fold(0.0, f64::max),
        median(o.clone()),
        o.iter().copied().fold(f64::MAX, f64::min),
        o.iter().copied().fold(0.0, f64::max),
    );
}
