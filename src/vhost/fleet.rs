//! The fleet server: many virtio-fs devices served by a fixed set of event-loop threads.
//!
//! [`FsDevice::serve`](super::FsDevice::serve) gives each device its own threads (an accept
//! thread, and per connection a vring thread per queue from `vhost-user-backend`). A
//! [`Fleet`] instead registers every device's listening socket, its VMM's vhost-user socket
//! and its virtqueues' kick eventfds in one epoll set, served by
//! [`FleetBuilder::threads`] event-loop threads (default: one per core), and hands the
//! requests that can block for long (FSYNC, FSYNCDIR, SETLKW, FALLOCATE) to one bounded worker
//! pool. An idle device, connected or not, costs no thread.
//!
//! * Each event is delivered to one thread at a time (`EPOLLONESHOT`), so a device's socket
//!   or queue is never served by two threads at once; different devices and queues proceed in
//!   parallel.
//! * Fairness: a queue is served at most [`FleetBuilder::budget`] requests per turn; a queue
//!   with more waiting kicks itself and goes to the back of the ready list, behind every other
//!   device's work. A device takes at most all event loops but one for its request queues
//!   at once (a multi-queue device flooding every queue leaves a loop to the others); its
//!   other ready queues wait, without spinning, until one of its turns ends. Likewise a
//!   device has at most all pool workers but one busy with (or queued for) its slow
//!   requests; the rest wait in its own backlog, not in the pool's queue ahead of the
//!   other devices' requests.
//! * Rate limit: a device may have a token bucket of requests per second
//!   ([`FleetDeviceOptions::ops_per_sec`]); out of tokens, its queues wait for a timer.
//! * Isolation: a request whose filesystem panics is answered `EIO` and the device keeps
//!   serving; a VMM that disconnects, or sends a malformed message, ends its own connection
//!   only. A frontend message is read with a 1 s receive timeout, so a VMM that sends half a
//!   message stalls one event-loop thread for at most that long.
//!
//! # Ceilings
//!
//! Whatever the number of devices and however hard their guests flood them:
//!
//! * **Threads:** [`FleetBuilder::threads`] event loops + [`FleetBuilder::pool_size`]
//!   workers, started by [`FleetBuilder::build`]; adding, connecting, flooding or removing a
//!   device starts none.
//! * **Descriptors** the fleet holds for a device: its listening socket and the descriptor of
//!   the socket's directory (2, from [`Fleet::add`]); with a VMM connected, the connection,
//!   one per guest memory region and a kick and a call eventfd per virtqueue (a one-region
//!   guest with one request queue: 6 more); a rate-limit timer if the device has a limit (1).
//!   On top come the backend's own: none for a MemFs; for a host directory (PassthroughFs) its
//!   root, at most `fd_cache_size` cached inode descriptors and one per open handle (at most
//!   `max_handles`); and the few a request being served holds for a moment, per serving thread.
//!
//! `boxfsd/tests/fleet_bounds.rs` samples both while four devices are flooded at 40 requests
//! in flight each.
//!
//! The fleet offers what a single device offers, except memory slots
//! (`CONFIGURE_MEM_SLOTS`: the VMM sends whole memory tables) and the per-device polling
//! option.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{BackendReqHandler, Error as VuError, VhostUserBackendReqHandlerMut};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::backend::{config_space, DeviceCore};
use super::pool::Pool;
use super::request::{self, Chain, Mem, Outcome};
use super::{conn, BoundSocket, DeviceStats, FsDevice};
use crate::{Error, Result};

type VuResult<T> = vhost::vhost_user::Result<T>;
type Handler = BackendReqHandler<std::sync::Mutex<ConnHandler>>;

/// Default requests served from one queue per turn.
pub const DEFAULT_BUDGET: usize = 32;
/// How long an event-loop thread waits for the rest of a frontend message.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(1);

const KIND_LISTENER: u64 = 0;
const KIND_FRONTEND: u64 = 1;
const KIND_TIMER: u64 = 2;
const KIND_KICK: u64 = 8;
const STOP_TOKEN: u64 = u64::MAX;

fn token(key: u64, kind: u64) -> u64 {
    (key << 8) | kind
}

/// Configures a [`Fleet`]; made by [`Fleet::builder`].
#[must_use]
#[derive(Debug, Clone)]
pub struct FleetBuilder {
    threads: usize,
    pool_size: usize,
    budget: usize,
}

/// Options of one device of a fleet.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct FleetDeviceOptions {
    /// Most requests per second the device serves (a token bucket holding one second's
    /// worth); `None`: no limit.
    pub ops_per_sec: Option<u64>,
    /// Most data bytes per second (READ and WRITE sizes; a token bucket holding one second's
    /// worth, a request may take it into debt); `None`: no limit.
    pub bytes_per_sec: Option<u64>,
}

impl FleetDeviceOptions {
    /// No limit.
    pub fn new() -> FleetDeviceOptions {
        FleetDeviceOptions::default()
    }

    /// Limits the device to `n` requests per second (at least 1).
    pub fn ops_per_sec(mut self, n: u64) -> Self {
        self.ops_per_sec = Some(n.max(1));
        self
    }

    /// Limits the device to `n` data bytes (read and written) per second (at least 1).
    pub fn bytes_per_sec(mut self, n: u64) -> Self {
        self.bytes_per_sec = Some(n.max(1));
        self
    }
}

impl FleetBuilder {
    /// Event-loop threads (default: one per core; at least 1).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }

    /// Workers for slow requests shared by every device (default
    /// [`DEFAULT_THREAD_POOL_SIZE`](super::DEFAULT_THREAD_POOL_SIZE); 0 serves them on the
    /// event loops).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Requests served from one queue before the next ready queue gets its turn (default
    /// [`DEFAULT_BUDGET`]; at least 1).
    pub fn budget(mut self, n: usize) -> Self {
        self.budget = n.max(1);
        self
    }

    /// Starts the event loops and the pool.
    pub fn build(self) -> Result<Fleet> {
        let epoll = Epoll::new().map_err(|e| Error::io("creating the fleet epoll", e))?;
        let stop = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)
            .map_err(|e| Error::io("creating the fleet stop event", e))?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, STOP_TOKEN),
            )
            .map_err(|e| Error::io("registering the fleet stop event", e))?;
        let pool = match self.pool_size {
            0 => None,
            n => Some(Pool::new(n).map_err(|e| Error::io("starting the worker pool", e))?),
        };
        let inner = Arc::new(Inner {
            epoll,
            stop,
            devices: RwLock::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            pool,
            budget: self.budget,
            // One loop always stays free for the other devices.
            per_device: self.threads.saturating_sub(1).max(1),
            // And one worker.
            pool_share: self.pool_size.saturating_sub(1).max(1),
            threads: Mutex::new(Vec::new()),
        });
        for i in 0..self.threads {
            let w = Arc::downgrade(&inner);
            let t = std::thread::Builder::new()
                .name(format!("boxfs-fleet-{i}"))
                .spawn(move || event_loop(&w))
                .map_err(|e| Error::io("starting a fleet event loop", e))?;
            inner.threads.lock().push(t);
        }
        Ok(Fleet { inner })
    }
}

/// Many devices served by a fixed set of threads; see the [module documentation](self).
/// Dropping it stops every device.
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    epoll: Epoll,
    stop: EventFd,
    devices: RwLock<HashMap<u64, Arc<Dev>>>,
    next_key: AtomicU64,
    pool: Option<Pool>,
    budget: usize,
    /// Most event loops serving one device's request queues at once.
    per_device: usize,
    /// Most of one device's slow requests in the pool (queued or running) at once.
    pool_share: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// One device of the fleet.
struct Dev {
    key: u64,
    fleet: Weak<Inner>,
    core: Arc<DeviceCore>,
    listener: UnixListener,
    socket_file: Mutex<Option<conn::SocketFile>>,
    /// The VMM's vhost-user connection.
    conn: Mutex<Option<Handler>>,
    /// What the event loops need of the connection.
    ctx: RwLock<Option<Arc<ConnCtx>>>,
    stopped: AtomicBool,
    limiter: Option<Limiter>,
    /// Which event loops serve the device's request queues.
    turns: Mutex<Turns>,
    /// The device's slow requests: how many are in the pool, and those waiting for one of
    /// them to finish.
    slow: Mutex<(usize, std::collections::VecDeque<SlowJob>)>,
}

type SlowJob = Box<dyn FnOnce() + Send + 'static>;

/// The device's share of the event loops: a multi-queue device flooding on every queue
/// takes at most [`Inner::per_device`] loops; its other ready queues wait (their kick
/// descriptors left disarmed, nothing spinning) until one of its turns ends.
#[derive(Default)]
struct Turns {
    /// Request-queue turns running.
    active: usize,
    /// Request queues that became ready while the device had its share.
    deferred: Vec<usize>,
}

/// Connection state shared by the frontend handler and the event loops.
struct ConnCtx {
    vrings: Vec<Vring>,
    mem: RwLock<Option<Arc<Mem>>>,
    event_idx: AtomicBool,
}

struct Vring {
    queue: Mutex<Queue>,
    kick: Mutex<Option<Arc<File>>>,
    call: Mutex<Option<File>>,
    enabled: AtomicBool,
}

/// A token bucket: `rate` tokens a second, holding at most one second's worth.
struct Bucket {
    rate: u64,
    level: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Mutex<Bucket> {
        Mutex::new(Bucket {
            rate,
            level: rate as f64,
            last: Instant::now(),
        })
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let rate = self.rate as f64;
        self.level = (self.level + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
    }

    /// How long until the bucket holds `tokens` (a small batch, so the device wakes up
    /// at most ~500 times a second).
    fn wait_for(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((tokens - self.level) / self.rate as f64).max(1e-6))
    }
}

/// A device's rate limits: requests per second and data bytes per second.
struct Limiter {
    ops: Option<Mutex<Bucket>>,
    bytes: Option<Mutex<Bucket>>,
    timer: Mutex<TimerFd>,
    /// Request tokens handed out so far.
    granted: AtomicU64,
    /// Byte tokens handed out so far (READ and WRITE sizes).
    bytes_granted: AtomicU64,
}

impl Limiter {
    fn new(ops: Option<u64>, bytes: Option<u64>) -> std::io::Result<Option<Limiter>> {
        if ops.is_none() && bytes.is_none() {
            return Ok(None);
        }
        let timer = TimerFd::new()?;
        // Non-blocking: a timer re-armed between its event and the read must not block the
        // event loop until the new expiry.
        // SAFETY: F_SETFL on a descriptor this function owns; no memory is passed.
        if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Some(Limiter {
            ops: ops.map(|r| Bucket::new(r.max(1))),
            bytes: bytes.map(|r| Bucket::new(r.max(1))),
            timer: Mutex::new(timer),
            granted: AtomicU64::new(0),
            bytes_granted: AtomicU64::new(0),
        }))
    }

    /// Takes up to `want` request tokens; returns how many were taken and, when none, how
    /// long until the next few.
    fn take(&self, want: usize) -> (usize, Duration) {
        let Some(ops) = &self.ops else {
            return (want, Duration::ZERO);
        };
        let mut b = ops.lock();
        b.refill();
        let n = (b.level.floor() as usize).min(want);
        b.level -= n as f64;
        self.granted.fetch_add(n as u64, Ordering::Relaxed);
        let batch = (b.rate / 500).clamp(1, want.max(1) as u64) as f64;
        let wait = if n == 0 {
            b.wait_for(batch)
        } else {
            Duration::ZERO
        };
        (n, wait)
    }

    /// Returns request tokens taken for requests that were not there.
    fn give_back(&self, n: usize) {
        if let (Some(ops), true) = (&self.ops, n > 0) {
            ops.lock().level += n as f64;
            self.granted.fetch_sub(n as u64, Ordering::Relaxed);
        }
    }

    /// `None` if the byte bucket (if any) is positive: the next request may go (its size is
    /// charged afterwards, possibly into debt); otherwise how long until it is.
    fn bytes_wait(&self) -> Option<Duration> {
        let mut b = self.bytes.as_ref()?.lock();
        b.refill();
        if b.level > 0.0 {
            return None;
        }
        let batch = (b.rate / 500).max(1) as f64;
        Some(b.wait_for(batch))
    }

    fn charge_bytes(&self, n: u64) {
        if let (Some(bytes), true) = (&self.bytes, n > 0) {
            bytes.lock().level -= n as f64;
            self.bytes_granted.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Data bytes a READ or WRITE request moves (the `size` of its `ReadIn`/`WriteIn`, both at
/// offset 16 after the 40-byte header); 0 for anything else or what cannot be read.
fn data_bytes(chain: &Chain, mem: &Mem) -> u64 {
    use vm_memory::{Address, Bytes};
    let Some(first) = chain.clone().readable().next() else {
        return 0;
    };
    if first.len() < 60 {
        return 0;
    }
    let read = |off: u64| {
        first
            .addr()
            .checked_add(off)
            .and_then(|at| mem.read_obj::<u32>(at).ok())
            .map(u32::from_le)
    };
    match read(4) {
        Some(15 | 16) => read(56).map_or(0, u64::from),
        _ => 0,
    }
}

/// A device served by a [`Fleet`]: stop it, read its counters. Dropping it does not stop
/// the device (the fleet owns it); [`stop`](Self::stop) does.
pub struct FleetDeviceHandle {
    fleet: Weak<Inner>,
    dev: Arc<Dev>,
}

impl Fleet {
    /// Starts configuring a fleet.
    pub fn builder() -> FleetBuilder {
        FleetBuilder {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pool_size: super::DEFAULT_THREAD_POOL_SIZE,
            budget: DEFAULT_BUDGET,
        }
    }

    /// Serves `device` on `socket`. The device's own worker pool and polling settings are
    /// not used: the fleet's pool serves slow requests; build it with `thread_pool_size(0)`
    /// so it starts no thread of its own.
    pub fn add(
        &self,
        device: FsDevice,
        socket: BoundSocket,
        options: FleetDeviceOptions,
    ) -> Result<FleetDeviceHandle> {
        let (listener, file) = socket
            .take()
            .ok_or_else(|| Error::InvalidConfig("socket already served".into()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("configuring the listening socket", e))?;
        let limiter = Limiter::new(options.ops_per_sec, options.bytes_per_sec)
            .map_err(|e| Error::io("creating a rate-limit timer", e))?;
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let dev = Arc::new(Dev {
            key,
            fleet: Arc::downgrade(&self.inner),
            core: Arc::clone(&device.core),
            listener,
            socket_file: Mutex::new(Some(file)),
            conn: Mutex::new(None),
            ctx: RwLock::new(None),
            stopped: AtomicBool::new(false),
            limiter,
            turns: Mutex::new(Turns::default()),
            slow: Mutex::new((0, std::collections::VecDeque::new())),
        });
        self.inner.devices.write().insert(key, Arc::clone(&dev));
        let mut fds = vec![(dev.listener.as_raw_fd(), KIND_LISTENER)];
        if let Some(l) = &dev.limiter {
            fds.push((l.timer.lock().as_raw_fd(), KIND_TIMER));
        }
        for (fd, kind) in fds {
            if let Err(e) = self.inner.register(fd, token(key, kind)) {
                self.inner.remove(&dev);
                return Err(Error::io("registering a device socket", e));
            }
        }
        Ok(FleetDeviceHandle {
            fleet: Arc::downgrade(&self.inner),
            dev,
        })
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.inner.devices.read().len()
    }

    /// Whether the fleet serves no device.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let devs: Vec<Arc<Dev>> = self.inner.devices.read().values().cloned().collect();
        for d in devs {
            self.inner.remove(&d);
        }
        let _ = self.inner.stop.write(1);
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        if let Some(p) = &self.inner.pool {
            p.shutdown();
        }
    }
}

impl FleetDeviceHandle {
    /// Stops the device: disconnects its VMM, ends the guest's session (releasing what it
    /// held), and removes its socket file.
    pub fn stop(&self) {
        match self.fleet.upgrade() {
            Some(inner) => inner.remove(&self.dev),
            None => self.dev.shut(None),
        }
    }

    /// Whether the device was stopped.
    pub fn is_finished(&self) -> bool {
        self.dev.stopped.load(Ordering::Acquire)
    }

    /// Request counters so far.
    pub fn stats(&self) -> DeviceStats {
        let c = &self.dev.core.counters;
        DeviceStats {
            requests: c.requests.load(Ordering::Relaxed),
            error_replies: c.error_replies.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
            offloaded: c.offloaded.load(Ordering::Relaxed),
        }
    }

    /// Rate-limit tokens granted so far (requests admitted under the limit); `None` without
    /// a request limit.
    pub fn tokens_granted(&self) -> Option<u64> {
        let l = self.dev.limiter.as_ref()?;
        l.ops.as_ref()?;
        Some(l.granted.load(Ordering::Relaxed))
    }

    /// Data bytes admitted under the byte limit so far; `None` without a byte limit.
    pub fn bytes_granted(&self) -> Option<u64> {
        let l = self.dev.limiter.as_ref()?;
        l.bytes.as_ref()?;
        Some(l.bytes_granted.load(Ordering::Relaxed))
    }
}

impl Inner {
    fn register(&self, fd: RawFd, data: u64) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN | EventSet::ONE_SHOT, data),
        )
    }

    fn rearm(&self, fd: RawFd, data: u64) {
        // Fails only if the descriptor was unregistered meanwhile (device or queue gone).
        let _ = self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(EventSet::IN | EventSet::ONE_SHOT, data),
        );
    }

    fn unregister(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    fn remove(&self, dev: &Arc<Dev>) {
        self.devices.write().remove(&dev.key);
        dev.shut(Some(self));
    }

    /// Ends the device's connection: unregisters its descriptors and ends the guest session.
    fn disconnect(&self, dev: &Dev) {
        let ctx = dev.ctx.write().take();
        if let Some(ctx) = ctx {
            for v in &ctx.vrings {
                if let Some(k) = v.kick.lock().take() {
                    self.unregister(k.as_raw_fd());
                }
            }
        }
        let conn = dev.conn.lock().take();
        if let Some(c) = conn {
            self.unregister(c.as_raw_fd());
            drop(c);
            dev.core.session.end();
            tracing::info!("VMM disconnected");
            if !dev.stopped.load(Ordering::Acquire) {
                // The next VMM, if one waits in the backlog.
                self.rearm(dev.listener.as_raw_fd(), token(dev.key, KIND_LISTENER));
            }
        }
    }
}

impl Dev {
    fn shut(&self, inner: Option<&Inner>) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(inner) = inner {
            inner.unregister(self.listener.as_raw_fd());
            if let Some(l) = &self.limiter {
                inner.unregister(l.timer.lock().as_raw_fd());
            }
            inner.disconnect(self);
        }
        if let Some(f) = self.socket_file.lock().take() {
            f.remove();
        }
    }
}

fn event_loop(inner: &Weak<Inner>) {
    let mut events = [EpollEvent::default(); 1];
    loop {
        let Some(fleet) = inner.upgrade() else { return };
        let n = match fleet.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("fleet event loop: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            if !handle(&fleet, ev.data(), false) {
                return;
            }
        }
    }
}

/// Serves one event; `false` for the stop event. `nested`: called from within a queue's turn
/// (see [`kick`]).
fn handle(fleet: &Inner, data: u64, nested: bool) -> bool {
    if data == STOP_TOKEN {
        return false;
    }
    let dev = fleet.devices.read().get(&(data >> 8)).cloned();
    let Some(dev) = dev else { return true };
    let kind = data & 0xff;
    // Requests catch their own panics; this keeps the loop alive regardless.
    let r = catch_unwind(AssertUnwindSafe(|| match kind {
        KIND_LISTENER => accept(fleet, &dev),
        KIND_FRONTEND => frontend(fleet, &dev),
        KIND_TIMER => timer(fleet, &dev),
        k => kick(fleet, &dev, (k - KIND_KICK) as usize, nested),
    }));
    if r.is_err() {
        tracing::error!(
            "fleet: an event handler panicked; device {} goes on",
            dev.key
        );
    }
    true
}

/// Accepts the device's VMM. One connection at a time: the listener stays disarmed while a
/// VMM is attached, so the next one waits in the backlog (as with a single device) and is
/// accepted when the current one leaves.
fn accept(fleet: &Inner, dev: &Arc<Dev>) {
    let tok = token(dev.key, KIND_LISTENER);
    let mut conn = dev.conn.lock();
    if conn.is_some() || dev.stopped.load(Ordering::Acquire) {
        return;
    }
    let stream = loop {
        match dev.listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(false).is_ok()
                    && stream.set_read_timeout(Some(MESSAGE_TIMEOUT)).is_ok()
                {
                    break stream;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::warn!("accepting a VMM connection: {e}");
                }
                fleet.rearm(dev.listener.as_raw_fd(), tok);
                return;
            }
        }
    };
    let nq = 1 + dev.core.request_queues;
    let Ok(size) = u16::try_from(dev.core.queue_size) else {
        return;
    };
    let ctx = Arc::new(ConnCtx {
        vrings: (0..nq)
            .filter_map(|_| {
                Some(Vring {
                    queue: Mutex::new(Queue::new(size).ok()?),
                    kick: Mutex::new(None),
                    call: Mutex::new(None),
                    enabled: AtomicBool::new(false),
                })
            })
            .collect(),
        mem: RwLock::new(None),
        event_idx: AtomicBool::new(false),
    });
    let handler = ConnHandler {
        dev: Arc::downgrade(dev),
        ctx: Arc::clone(&ctx),
        mappings: Vec::new(),
        features: 0,
        protocol: 0,
        negotiated: false,
    };
    let h = BackendReqHandler::from_stream(stream, Arc::new(std::sync::Mutex::new(handler)));
    if let Err(e) = fleet.register(h.as_raw_fd(), token(dev.key, KIND_FRONTEND)) {
        tracing::warn!("registering a VMM connection: {e}");
        fleet.rearm(dev.listener.as_raw_fd(), tok);
        return;
    }
    *dev.ctx.write() = Some(ctx);
    *conn = Some(h);
}

fn frontend(fleet: &Inner, dev: &Dev) {
    let result = {
        let mut conn = dev.conn.lock();
        let Some(h) = conn.as_mut() else { return };
        match h.handle_request() {
            Ok(()) => {
                fleet.rearm(h.as_raw_fd(), token(dev.key, KIND_FRONTEND));
                return;
            }
            Err(e) => e,
        }
    };
    match result {
        VuError::Disconnected | VuError::PartialMessage | VuError::SocketBroken(_) => {}
        e => tracing::warn!("VMM connection ended: {e}"),
    }
    fleet.disconnect(dev);
}

fn timer(fleet: &Inner, dev: &Dev) {
    if let Some(l) = &dev.limiter {
        let mut t = l.timer.lock();
        let _ = t.wait();
        fleet.rearm(t.as_raw_fd(), token(dev.key, KIND_TIMER));
    }
    // Tokens again: let every queue try.
    if let Some(ctx) = dev.ctx.read().clone() {
        for v in ctx.vrings.iter().skip(1) {
            if let Some(k) = v.kick.lock().as_ref() {
                let _ = (&**k).write(&1u64.to_ne_bytes());
            }
        }
    }
}

/// Serves queue `q` of `dev`, one budget per turn. When a turn ends with requests still
/// waiting, the fleet's other ready work comes first: one event from the ready list is served
/// right here (another device's queue gets its own turn of one budget), then the next turn
/// of `q` follows, on the same thread. (Handing `q` back to the epoll set instead, as a
/// nested turn does, woke another loop thread every budget and moved the queue between
/// threads.)
fn kick(fleet: &Inner, dev: &Arc<Dev>, q: usize, nested: bool) {
    let Some(ctx) = dev.ctx.read().clone() else {
        return;
    };
    let Some(v) = ctx.vrings.get(q) else { return };
    let Some(k) = v.kick.lock().clone() else {
        return;
    };
    let _turn = if q == 0 {
        None
    } else {
        match Turn::start(fleet, dev, q) {
            Some(t) => Some(t),
            None => return,
        }
    };
    let mut buf = [0u8; 8];
    let _ = (&*k).read(&mut buf);
    while process_queue(fleet, dev, &ctx, q) {
        let mut ready = [EpollEvent::default(); 1];
        let current = |d: &Dev| d.ctx.read().as_ref().is_some_and(|c| Arc::ptr_eq(c, &ctx));
        let yielded = nested
            || dev.stopped.load(Ordering::Acquire)
            || !current(dev)
            || (matches!(fleet.epoll.wait(0, &mut ready), Ok(1))
                && !handle(fleet, ready[0].data(), true));
        if yielded {
            // Budget spent with more waiting: back of the ready list (a nested turn, a
            // stopped or reconnected device, a stopping fleet).
            let _ = (&*k).write(&1u64.to_ne_bytes());
            break;
        }
    }
    fleet.rearm(k.as_raw_fd(), token(dev.key, KIND_KICK + q as u64));
}

/// A request-queue turn of a device, counted in its [`Turns`].
struct Turn<'a> {
    fleet: &'a Inner,
    dev: &'a Dev,
}

impl<'a> Turn<'a> {
    /// Starts a turn of `q`, or (`None`) defers `q` if the device already has its share of
    /// the loops: its kick stays unread and its descriptor disarmed until a turn ends.
    fn start(fleet: &'a Inner, dev: &'a Dev, q: usize) -> Option<Turn<'a>> {
        let mut t = dev.turns.lock();
        if t.active >= fleet.per_device {
            if !t.deferred.contains(&q) {
                t.deferred.push(q);
            }
            return None;
        }
        t.active += 1;
        Some(Turn { fleet, dev })
    }
}

impl Drop for Turn<'_> {
    /// Ends the turn (however it ends): the queues that waited for it go to the back of the
    /// ready list (their kicks are still pending).
    fn drop(&mut self) {
        let deferred = {
            let mut t = self.dev.turns.lock();
            t.active = t.active.saturating_sub(1);
            std::mem::take(&mut t.deferred)
        };
        // The queues of the device's current connection: this turn may have outlived its
        // own (a request blocked in the filesystem when its VMM left), and the queues that
        // waited for it are the next connection's.
        let ctx = self.dev.ctx.read().clone();
        for d in deferred {
            let kick = ctx
                .as_ref()
                .and_then(|c| c.vrings.get(d))
                .and_then(|v| v.kick.lock().clone());
            if let Some(k) = kick {
                self.fleet
                    .rearm(k.as_raw_fd(), token(self.dev.key, KIND_KICK + d as u64));
            }
        }
    }
}

/// Serves up to one budget of `q`'s requests; `true` if some are left for the next turn.
fn process_queue(fleet: &Inner, dev: &Arc<Dev>, ctx: &Arc<ConnCtx>, q: usize) -> bool {
    let Some(mem) = ctx.mem.read().clone() else {
        return false;
    };
    let v = &ctx.vrings[q];
    if !v.enabled.load(Ordering::Acquire) {
        return false;
    }
    let event_idx = ctx.event_idx.load(Ordering::Acquire);
    let mut served = 0;
    loop {
        let mut room = fleet.budget - served;
        if q != 0 {
            if let Some(l) = &dev.limiter {
                let (n, wait) = l.take(room);
                if n == 0 {
                    let _ = l.timer.lock().reset(wait, None);
                    return false;
                }
                room = n;
            }
        }
        let limiter = dev.limiter.as_ref().filter(|_| q != 0);
        let mut bytes_blocked = None;
        let chains: Vec<Chain> = {
            let mut queue = v.queue.lock();
            if !queue.ready() {
                return false;
            }
            if event_idx && queue.disable_notification(&*mem).is_err() {
                return false;
            }
            let mut chains = Vec::new();
            while chains.len() < room {
                if let Some(wait) = limiter.and_then(Limiter::bytes_wait) {
                    bytes_blocked = Some(wait);
                    break;
                }
                let Some(chain) = queue.pop_descriptor_chain(Arc::clone(&mem)) else {
                    break;
                };
                if let Some(l) = limiter {
                    l.charge_bytes(data_bytes(&chain, &mem));
                }
                chains.push(chain);
            }
            chains
        };
        if let Some(l) = limiter {
            // Give back the request tokens of requests that were not there.
            l.give_back(room - chains.len());
            if let (Some(wait), true) = (bytes_blocked, chains.is_empty()) {
                let _ = l.timer.lock().reset(wait, None);
                return false;
            }
        }
        let got = chains.len();
        served += got;
        // Several requests at once: the guest keeps them in flight, and bulk data among them
        // is worth a worker (see `dispatch`).
        let busy = got > 1;
        for chain in chains {
            dispatch(fleet, dev, ctx, q, &mem, chain, busy);
        }
        if served >= fleet.budget {
            return true;
        }
        if got > 0 && got == room {
            // The limiter capped this round; try for more.
            continue;
        }
        if !event_idx {
            if got == 0 {
                return false;
            }
            continue;
        }
        // Idle. As a single device does (`FsDeviceBuilder::poll`), look for the guest's next
        // request a little while before re-arming notifications: a guest issuing requests one
        // after the other sends it within microseconds of the reply, and with EVENT_IDX it
        // then costs neither its kick nor an epoll wake-up (without this, ~30 µs more per
        // request at depth 1 than the single-device daemon). Only after a turn that served
        // something, and within the turn's budget, so an idle device still costs nothing
        // and a busy one still yields to the others.
        if q != 0 && served > 0 && !dev.core.poll.is_zero() && poll_for_work(v, &mem, dev) {
            continue;
        }
        match v.queue.lock().enable_notification(&*mem) {
            Ok(true) => continue,
            _ => return false,
        }
    }
}

/// Spins for up to the device's poll time waiting for new requests on `v`; `true` if some
/// arrived. Notifications stay as they are (the caller re-arms them and re-checks the queue
/// before sleeping, so nothing is missed).
fn poll_for_work(v: &Vring, mem: &Mem, dev: &Dev) -> bool {
    let pending = || {
        let q = v.queue.lock();
        q.avail_idx(mem, Ordering::Acquire)
            .map(|avail| avail.0 != q.next_avail())
            .unwrap_or(false)
    };
    let deadline = Instant::now() + dev.core.poll;
    while Instant::now() < deadline && v.enabled.load(Ordering::Acquire) {
        if pending() {
            return true;
        }
        // Give the core away to any other runnable thread (the guest's vCPU, another loop
        // thread) while polling; with nothing else to run this returns at once.
        std::thread::yield_now();
    }
    false
}

fn dispatch(
    fleet: &Inner,
    dev: &Arc<Dev>,
    ctx: &Arc<ConnCtx>,
    q: usize,
    mem: &Arc<Mem>,
    chain: Chain,
    busy: bool,
) {
    let Some(pool) = fleet.pool.as_ref().filter(|_| q != 0) else {
        return serve(&dev.core, &ctx.vrings[q], mem, chain);
    };
    let may_block = request::may_block(&chain, mem);
    // Bulk data (READ/WRITE of 64 KiB or more) with other requests taken at the same time
    // goes to a worker too, as a single device's `--dispatch slow` does: the copies run in
    // parallel while the loop goes on (a fleet device copying on its loop served seqread at 8
    // in flight 23 % slower than a single device).
    let bulk = !may_block && busy && request::is_bulk(&chain, mem);
    if !may_block && !bulk {
        return serve(&dev.core, &ctx.vrings[q], mem, chain);
    }
    // A device has at most `pool_share` requests in the pool (one worker always stays for the
    // others). Further requests that may block wait in its own backlog, not in the pool's
    // queue in front of other devices' requests; further bulk requests are served here (a
    // copy does not block).
    {
        let mut slow = dev.slow.lock();
        if slow.0 >= fleet.pool_share {
            if bulk {
                drop(slow);
                return serve(&dev.core, &ctx.vrings[q], mem, chain);
            }
            dev.core.counters.offloaded.fetch_add(1, Ordering::Relaxed);
            slow.1.push_back(slow_job(dev, ctx, mem, q, chain));
            return;
        }
        slow.0 += 1;
    }
    dev.core.counters.offloaded.fetch_add(1, Ordering::Relaxed);
    if let Err(job) = pool.submit(slow_job(dev, ctx, mem, q, chain)) {
        job();
    }
}

/// A request for the pool: served on a worker, then the device's next waiting slow request
/// takes its place.
fn slow_job(dev: &Arc<Dev>, ctx: &Arc<ConnCtx>, mem: &Arc<Mem>, q: usize, chain: Chain) -> SlowJob {
    let (ctx, mem, d) = (Arc::clone(ctx), Arc::clone(mem), Arc::clone(dev));
    Box::new(move || {
        // However the request ends, the device's next slow request takes its place.
        let _next = NextSlow(&d);
        serve(&d.core, &ctx.vrings[q], &mem, chain);
    })
}

/// Ends one of the device's slow requests in the pool: submits the next from its backlog
/// in its place.
struct NextSlow<'a>(&'a Arc<Dev>);

impl Drop for NextSlow<'_> {
    fn drop(&mut self) {
        let next = {
            let mut slow = self.0.slow.lock();
            let next = slow.1.pop_front();
            if next.is_none() {
                slow.0 = slow.0.saturating_sub(1);
            }
            next
        };
        if let Some(job) = next {
            let refused = match fleet_of(self.0).as_ref().and_then(|f| f.pool.as_ref()) {
                Some(pool) => pool.submit(job).err(),
                None => Some(job),
            };
            // The pool is shutting down: serve it and the rest of the backlog here, one
            // after the other (their own ends find the backlog empty).
            if let Some(job) = refused {
                let rest = std::mem::take(&mut self.0.slow.lock().1);
                job();
                for job in rest {
                    job();
                }
            }
        }
    }
}

fn serve(core: &DeviceCore, v: &Vring, mem: &Mem, chain: Chain) {
    let head = chain.head_index();
    let probe = core
        .metrics
        .as_ref()
        .map(|_| super::metrics::Probe::start(&chain, mem));
    let outcome = request::process(&core.server, &core.session, mem, chain);
    if let (Some(m), Some(p)) = (&core.metrics, probe) {
        p.finish(m, mem, outcome);
    }
    core.counters.requests.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Outcome::Served { .. } => {}
        Outcome::ErrorReply { .. } => {
            core.counters.error_replies.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Dropped { reason } => {
            core.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("dropped descriptor chain {head}: {reason}");
        }
    }
    let mut queue = v.queue.lock();
    if queue.add_used(mem, head, outcome.used_len()).is_err() {
        return;
    }
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Some(call) = v.call.lock().as_ref() {
            let _ = (&*call).write(&1u64.to_ne_bytes());
        }
    }
}

/// The vhost-user frontend requests of one connection.
struct ConnHandler {
    dev: Weak<Dev>,
    ctx: Arc<ConnCtx>,
    /// (VMM address, size, guest address) of each memory region.
    mappings: Vec<(u64, u64, u64)>,
    features: u64,
    protocol: u64,
    negotiated: bool,
}

fn invalid(what: &'static str) -> VuError {
    VuError::InvalidOperation(what)
}

impl ConnHandler {
    fn dev(&self) -> VuResult<Arc<Dev>> {
        self.dev.upgrade().ok_or(VuError::Disconnected)
    }

    fn vring(&self, index: u32) -> VuResult<&Vring> {
        self.ctx
            .vrings
            .get(index as usize)
            .ok_or(VuError::InvalidParam)
    }

    fn gpa(&self, va: u64) -> VuResult<u64> {
        self.mappings
            .iter()
            .find(|(vmm, size, _)| va >= *vmm && va - vmm < *size)
            .map(|(vmm, _, gpa)| va - vmm + gpa)
            .ok_or(VuError::InvalidParam)
    }

    fn offered(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }
}

fn split(addr: u64) -> (Option<u32>, Option<u32>) {
    (Some(addr as u32), Some((addr >> 32) as u32))
}

impl VhostUserBackendReqHandlerMut for ConnHandler {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        for v in &self.ctx.vrings {
            v.enabled.store(false, Ordering::Release);
            v.queue.lock().reset();
        }
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.offered())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.offered() != 0 {
            return Err(VuError::InvalidParam);
        }
        self.features = features;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        self.ctx.event_idx.store(event_idx, Ordering::Release);
        for v in &self.ctx.vrings {
            v.queue.lock().set_event_idx(event_idx);
        }
        // Without protocol features the rings start enabled.
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for v in &self.ctx.vrings {
                v.enabled.store(true, Ordering::Release);
            }
        }
        if !self.negotiated {
            self.negotiated = true;
            let dev = self.dev()?;
            dev.core
                .counters
                .connections
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!("VMM connected");
        }
        Ok(())
    }

    fn set_mem_table(&mut self, ctx: &[VhostUserMemoryRegion], files: Vec<File>) -> VuResult<()> {
        let mut regions = Vec::with_capacity(ctx.len());
        let mut mappings = Vec::with_capacity(ctx.len());
        for (region, file) in ctx.iter().zip(files) {
            let r = GuestRegionMmap::new(
                region.mmap_region(file)?,
                GuestAddress(region.guest_phys_addr),
            )
            .ok_or(VuError::InvalidParam)?;
            mappings.push((region.user_addr, region.memory_size, region.guest_phys_addr));
            regions.push(r);
        }
        let mem = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| VuError::ReqHandlerError(std::io::Error::other(e)))?;
        *self.ctx.mem.write() = Some(Arc::new(mem));
        self.mappings = mappings;
        Ok(())
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        let max = self.dev()?.core.queue_size as u32;
        if num == 0 || num > max || !num.is_power_of_two() {
            return Err(VuError::InvalidParam);
        }
        self.vring(index)?.queue.lock().set_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let (d, u, a) = (self.gpa(descriptor)?, self.gpa(used)?, self.gpa(available)?);
        let mut q = self.vring(index)?.queue.lock();
        let (lo, hi) = split(d);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(u);
        q.set_used_ring_address(lo, hi);
        let (lo, hi) = split(a);
        q.set_avail_ring_address(lo, hi);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let mut q = self.vring(index)?.queue.lock();
        q.set_next_avail(base as u16);
        q.set_next_used(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let dev = self.dev()?;
        let v = self.vring(index)?;
        if let Some(k) = v.kick.lock().take() {
            if let Some(fleet) = fleet_of(&dev) {
                fleet.unregister(k.as_raw_fd());
            }
        }
        v.enabled.store(false, Ordering::Release);
        let mut q = v.queue.lock();
        q.set_ready(false);
        let next = q.next_avail();
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let dev = self.dev()?;
        let v = self.vring(u32::from(index))?;
        let fleet = fleet_of(&dev).ok_or(VuError::Disconnected)?;
        if let Some(old) = v.kick.lock().take() {
            fleet.unregister(old.as_raw_fd());
        }
        let Some(fd) = fd else {
            return Ok(());
        };
        {
            let mem = self.ctx.mem.read().clone();
            let mut q = v.queue.lock();
            // (`is_valid` looks at a ready queue only.)
            q.set_ready(true);
            let valid = mem.as_deref().is_some_and(|m| q.is_valid(m));
            q.set_ready(valid);
        }
        let kick = Arc::new(fd);
        // The vring holds the descriptor before epoll arms it: an event that fires at once
        // (the guest kicked already) finds it there. (The other way round, a loop took the
        // event, found no descriptor and left it disarmed: the queue was never served again.)
        *v.kick.lock() = Some(Arc::clone(&kick));
        if let Err(e) = fleet.register(
            kick.as_raw_fd(),
            token(dev.key, KIND_KICK + u64::from(index)),
        ) {
            v.kick.lock().take();
            return Err(VuError::ReqHandlerError(e));
        }
        // Requests queued before the kick descriptor came are served now.
        let _ = (&*kick).write(&1u64.to_ne_bytes());
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        *self.vring(u32::from(index))?.call.lock() = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VuResult<()> {
        self.vring(u32::from(index)).map(|_| ())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        let mut f = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
        if self.dev()?.core.tag.is_some() {
            f |= VhostUserProtocolFeatures::CONFIG;
        }
        Ok(f)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.ctx.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        let v = self.vring(index)?;
        v.enabled.store(enable, Ordering::Release);
        if enable {
            // A kick taken while the ring was still disabled was consumed without serving
            // anything, and the guest does not kick twice for one request: look again.
            if let Some(k) = v.kick.lock().as_ref() {
                let _ = (&**k).write(&1u64.to_ne_bytes());
            }
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        let dev = self.dev()?;
        let Some(tag) = &dev.core.tag else {
            return Err(invalid("no config space without a tag"));
        };
        let rq = u32::try_from(dev.core.request_queues).unwrap_or(u32::MAX);
        let config = config_space(tag, rq);
        let size = (size as usize).min(256);
        let mut out: Vec<u8> = config
            .iter()
            .skip(offset as usize)
            .take(size)
            .copied()
            .collect();
        out.resize(size, 0);
        Ok(out)
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> VuResult<()> {
        Err(invalid("the virtio-fs config space is read-only"))
    }

    fn set_gpu_socket(&mut self, _: vhost::vhost_user::GpuBackend) -> VuResult<()> {
        Err(invalid("not a GPU"))
    }

    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> VuResult<File> {
        Err(invalid("no shared objects"))
    }

    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        Err(invalid("no inflight tracking"))
    }

    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> VuResult<()> {
        Err(invalid("no inflight tracking"))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(invalid("memory slots not offered"))
    }

    fn add_mem_region(&mut self, _: &VhostUserSingleMemoryRegion, _: File) -> VuResult<()> {
        Err(invalid("memory slots not offered"))
    }

    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(invalid("memory slots not offered"))
    }

    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> VuResult<Option<File>> {
        Err(invalid("no device state transfer in a fleet"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(invalid("no device state transfer in a fleet"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(invalid("no shared memory regions"))
    }

    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> VuResult<()> {
        Err(invalid("no dirty-page logging"))
    }
}

/// The fleet a device belongs to, while it exists.
fn fleet_of(dev: &Dev) -> Option<Arc<Inner>> {
    dev.fleet.upgrade()
}
