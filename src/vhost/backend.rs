//! The `VhostUserBackend`: features, config space, and the virtqueue loop.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use parking_lot::RwLock;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::pool::Pool;
use super::request::{self, Chain, Mem, Outcome};
use super::session::Session;
use super::Dispatch;
use crate::SharedFs;

/// Guest memory shared with the vhost-user handler.
pub(crate) type Gm = GuestMemoryAtomic<Mem>;
/// One virtqueue (its stop waits for the requests taken from it).
pub(crate) type Vring = super::state::QuiescingVring;

/// Length of the tag field in the virtio-fs config space.
pub(crate) const TAG_LEN: usize = 36;

/// Counters shared by every connection of one device.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) error_replies: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) offloaded: AtomicU64,
    /// Requests served per virtqueue (index 0: the hiprio queue), so a multi-queue setup can
    /// show which queues the guest used.
    pub(crate) per_queue: Box<[AtomicU64]>,
}

impl Counters {
    /// Counters for a device with `queues` virtqueues (hiprio included).
    pub(crate) fn new(queues: usize) -> Counters {
        Counters {
            per_queue: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            ..Counters::default()
        }
    }
}

/// What every connection of a device shares.
pub(crate) struct DeviceCore {
    pub(crate) server: Server<SharedFs>,
    pub(crate) session: Session,
    pub(crate) pool: Option<Pool>,
    pub(crate) dispatch: Dispatch,
    /// Requests handed to the pool and not finished yet.
    pub(crate) pooled: AtomicUsize,
    /// Number of workers in the pool (0 without a pool).
    pub(crate) pool_size: usize,
    pub(crate) counters: Counters,
    /// Per-request metrics, when the owner asked for them.
    pub(crate) metrics: Option<Arc<super::RequestMetrics>>,
    pub(crate) tag: Option<String>,
    /// How long a vring thread keeps polling its queue after it ran dry (zero: sleep at
    /// once).
    pub(crate) poll: std::time::Duration,
    pub(crate) request_queues: usize,
    pub(crate) queue_size: usize,
    /// Requests taken from a queue and not answered yet (a state save waits for none).
    pub(crate) inflight: AtomicUsize,
    /// The device-state transfer (snapshots, migration).
    pub(crate) state: super::state::StateSlot,
}

/// The backend of one vhost-user connection.
#[derive(Clone)]
pub(crate) struct FsBackend {
    core: Arc<DeviceCore>,
    conn: Arc<ConnState>,
}

struct ConnState {
    mem: RwLock<Option<Gm>>,
    event_idx: AtomicBool,
    /// The frontend sent SET_FEATURES: the VMM is attached.
    negotiated: AtomicBool,
    /// The frontend sent any vhost-user message (every VMM starts with GET_FEATURES): this is
    /// a VMM session, not a probe that connects and closes.
    contacted: AtomicBool,
    /// The connection is over: vring threads stop polling.
    closing: AtomicBool,
    /// Exit-event descriptors handed to vhost-user-backend, which registers them with
    /// `into_raw_fd` and never closes them; closed by [`FsBackend::close_exit_events`].
    exit_fds: parking_lot::Mutex<Vec<RawFd>>,
}

impl FsBackend {
    pub(crate) fn new(core: Arc<DeviceCore>) -> FsBackend {
        FsBackend {
            core,
            conn: Arc::new(ConnState {
                mem: RwLock::new(None),
                event_idx: AtomicBool::new(false),
                negotiated: AtomicBool::new(false),
                contacted: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                exit_fds: parking_lot::Mutex::new(Vec::new()),
            }),
        }
    }

    /// Closes the exit-event descriptors of this connection's vring threads.
    ///
    /// Call only once those threads have exited (their epoll handlers are gone): the library
    /// leaks these descriptors otherwise, one per queue per connection.
    pub(crate) fn close_exit_events(&self) {
        for fd in std::mem::take(&mut *self.conn.exit_fds.lock()) {
            // SAFETY: `fd` is an eventfd this backend created in `exit_event`; vhost-user-backend
            // took it over with `into_raw_fd` and never closes it, and its only user (the vring
            // thread's epoll loop) has exited, so this is the one and only close.
            unsafe { libc::close(fd) };
        }
    }

    /// Marks the connection as over: a vring thread polling its queue stops polling.
    pub(crate) fn close(&self) {
        self.conn.closing.store(true, Ordering::Release);
    }

    /// Whether the frontend got as far as SET_FEATURES on this connection.
    pub(crate) fn negotiated(&self) -> bool {
        self.conn.negotiated.load(Ordering::Acquire)
    }

    /// Whether the frontend spoke vhost-user at all on this connection (a VMM, even one that
    /// gave up before negotiating, as opposed to a connect-and-close probe).
    pub(crate) fn contacted(&self) -> bool {
        self.conn.contacted.load(Ordering::Acquire)
    }

    fn process_vring(&self, queue: usize, vring: &Vring) {
        let Some(atomic) = self.conn.mem.read().clone() else {
            tracing::debug!(queue, "kick before the memory table was set");
            return;
        };
        let event_idx = self.conn.event_idx.load(Ordering::Acquire);
        loop {
            let mem: Arc<Mem> = atomic.memory().into_inner();
            let chains: Vec<Chain> = {
                let mut state = vring.get_mut();
                if event_idx {
                    if let Err(e) = state.disable_notification() {
                        rate_limited_warn(&self.core, &format!("queue {queue}: {e}"));
                        return;
                    }
                }
                match state.get_queue_mut().iter(Arc::clone(&mem)) {
                    Ok(iter) => {
                        let chains: Vec<Chain> = iter.collect();
                        // Counted while the queue is locked, so a VMM that stopped the queue
                        // (GET_VRING_BASE) and then asks for the state finds them counted.
                        self.core.inflight.fetch_add(chains.len(), Ordering::AcqRel);
                        vring.taken(chains.len());
                        chains
                    }
                    Err(e) => {
                        rate_limited_warn(&self.core, &format!("queue {queue}: {e}"));
                        return;
                    }
                }
            };
            // More than one request waiting means the guest keeps several in flight: let the
            // pool serve them in parallel (Adaptive). A lone request, with nothing in the pool,
            // is served right here.
            let busy = chains.len() > 1;
            for chain in chains {
                if queue == 0 {
                    // The hiprio queue (FORGET, BATCH_FORGET, INTERRUPT) is served on its own
                    // vring thread, never queued in the pool behind requests: however busy the
                    // request queues, the guest's FORGETs are processed as they come. They
                    // are cheap (a removed inode's last close is paid by the request that
                    // removed it).
                    serve_one(&self.core, 0, vring, &mem, chain, event_idx);
                    continue;
                }
                self.dispatch(queue, vring, &mem, chain, event_idx, busy);
            }
            if !event_idx {
                return;
            }
            // Idle. A guest issuing requests one after the other sends the next one within
            // microseconds of our reply: look for it a little while before re-arming
            // notifications. With EVENT_IDX the guest does not kick while our `avail_event`
            // lags behind, so requests found this way cost neither its kick nor our wake-up.
            // (Request queues only: the hiprio queue carries rare FORGETs and INTERRUPTs.)
            if queue != 0 && !self.core.poll.is_zero() && self.poll_for_work(vring, &mem) {
                continue;
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    rate_limited_warn(&self.core, &format!("queue {queue}: {e}"));
                    return;
                }
            }
        }
    }

    /// Spins for up to the configured poll time waiting for new requests on `vring`;
    /// `true` if some arrived. Notifications stay as they are (the caller re-arms them and
    /// re-checks the queue before sleeping, so nothing is missed).
    fn poll_for_work(&self, vring: &Vring, mem: &Mem) -> bool {
        use std::sync::atomic::Ordering as O;
        use virtio_queue::QueueT;
        let pending = || {
            let state = vring.get_ref();
            let q = state.get_queue();
            q.avail_idx(mem, O::Acquire)
                .map(|avail| avail.0 != q.next_avail())
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + self.core.poll;
        while std::time::Instant::now() < deadline && !self.conn.closing.load(O::Relaxed) {
            if pending() {
                return true;
            }
            // Give the core away to any other runnable thread while polling (on a host with
            // few cores the guest's vCPU, or another queue's thread, may be waiting for it):
            // with nothing else to run this returns at once and the poll goes on. A pure spin
            // took ~45% of the daemon's CPU at 8 in flight on 2 queues on a 2-core host
            // (`perf`), time the load that feeds the queue could not run.
            std::thread::yield_now();
        }
        false
    }

    fn dispatch(
        &self,
        queue: usize,
        vring: &Vring,
        mem: &Arc<Mem>,
        chain: Chain,
        event_idx: bool,
        busy: bool,
    ) {
        let offload = match self.core.dispatch {
            Dispatch::VringThread => false,
            Dispatch::Pool => true,
            Dispatch::SlowToPool => {
                // Bulk data (READ/WRITE of 64 KiB or more) while several requests are in
                // flight goes to a free worker too: the vring thread keeps popping and the
                // copies run in parallel (seqread/seqwrite 1 MiB at 8 in flight served one
                // after the other on the vring thread lost to virtiofsd on a 2-core host).
                let pooled = self.core.pooled.load(Ordering::Acquire);
                request::may_block(&chain, mem)
                    || ((busy || pooled > 0)
                        && pooled < self.core.pool_size
                        && request::is_bulk(&chain, mem))
            }
            Dispatch::Adaptive => {
                // Parallelise only while a worker is free: if every worker is stuck (blocking
                // locks), keep serving here so the request that unblocks them gets through.
                let pooled = self.core.pooled.load(Ordering::Acquire);
                request::may_block(&chain, mem)
                    || ((busy || pooled > 0) && pooled < self.core.pool_size)
            }
        };
        match &self.core.pool {
            Some(pool) if offload => {
                let core = Arc::clone(&self.core);
                let vring = vring.clone();
                let mem = Arc::clone(mem);
                self.core.pooled.fetch_add(1, Ordering::AcqRel);
                self.core.counters.offloaded.fetch_add(1, Ordering::Relaxed);
                let job = Box::new(move || {
                    serve_one(&core, queue, &vring, &mem, chain, event_idx);
                    core.pooled.fetch_sub(1, Ordering::AcqRel);
                });
                if let Err(job) = pool.submit(job) {
                    // The pool is shutting down: serve inline rather than lose the request.
                    job();
                }
            }
            _ => serve_one(&self.core, queue, vring, mem, chain, event_idx),
        }
    }
}

fn serve_one(
    core: &DeviceCore,
    queue: usize,
    vring: &Vring,
    mem: &Mem,
    chain: Chain,
    event_idx: bool,
) {
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
    if let Some(n) = core.counters.per_queue.get(queue) {
        n.fetch_add(1, Ordering::Relaxed);
    }
    match outcome {
        Outcome::Served { .. } => {}
        Outcome::ErrorReply { errno, .. } => {
            core.counters.error_replies.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(head, errno, "malformed request answered with an error");
        }
        Outcome::Dropped { reason } => {
            core.counters.dropped.fetch_add(1, Ordering::Relaxed);
            rate_limited_warn(core, &format!("dropped descriptor chain {head}: {reason}"));
        }
    }
    {
        let mut state = vring.get_mut();
        if let Err(e) = state.add_used(head, outcome.used_len()) {
            rate_limited_warn(core, &format!("cannot return descriptor chain {head}: {e}"));
        } else {
            let notify = !event_idx || state.needs_notification().unwrap_or(true);
            if notify {
                if let Err(e) = state.signal_used_queue() {
                    tracing::debug!("cannot signal the guest: {e}");
                }
            }
        }
    }
    vring.answered();
    core.inflight.fetch_sub(1, Ordering::AcqRel);
}

/// Logs guest misbehaviour without letting a hostile guest flood the log: the first 16
/// messages, then one in every 1024.
fn rate_limited_warn(core: &DeviceCore, msg: &str) {
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let n = SEEN.fetch_add(1, Ordering::Relaxed);
    if n < 16 || n.is_multiple_of(1024) {
        tracing::warn!(
            tag = core.tag.as_deref().unwrap_or(""),
            occurrences = n + 1,
            "{msg}"
        );
    }
}

/// The virtio-fs config space: the tag, NUL-padded, and the number of request queues.
pub(crate) fn config_space(tag: &str, request_queues: u32) -> [u8; TAG_LEN + 4] {
    let mut config = [0u8; TAG_LEN + 4];
    let bytes = tag.as_bytes();
    let n = bytes.len().min(TAG_LEN);
    config[..n].copy_from_slice(&bytes[..n]);
    config[TAG_LEN..].copy_from_slice(&request_queues.to_le_bytes());
    config
}

impl VhostUserBackend for FsBackend {
    type Bitmap = super::request::Log;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        1 + self.core.request_queues
    }

    fn max_queue_size(&self) -> usize {
        self.core.queue_size
    }

    fn features(&self) -> u64 {
        // Called for GET_FEATURES and SET_FEATURES only.
        self.conn.contacted.store(true, Ordering::Release);
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            // Migration: what the device writes into guest memory is logged (LOG_SHMFD).
            | VhostUserVirtioFeatures::LOG_ALL.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::DEVICE_STATE;
        // Like virtiofsd: only offer the config space when there is a tag to put in it, so a
        // VMM that takes the tag from its own configuration keeps doing so.
        if self.core.tag.is_some() {
            f |= VhostUserProtocolFeatures::CONFIG;
        }
        f
    }

    fn acked_features(&self, _features: u64) {
        if !self.conn.negotiated.swap(true, Ordering::AcqRel) {
            self.core
                .counters
                .connections
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!("VMM connected");
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        self.conn.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let Some(tag) = &self.core.tag else {
            return Vec::new();
        };
        let request_queues = u32::try_from(self.core.request_queues).unwrap_or(u32::MAX);
        let config = config_space(tag, request_queues);
        // vhost-user limits config messages to 256 bytes; never allocate what the frontend asks.
        let size = (size as usize).min(256);
        let mut out: Vec<u8> = config
            .iter()
            .skip(offset as usize)
            .take(size)
            .copied()
            .collect();
        out.resize(size, 0);
        out
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // The virtio-fs config space is read-only.
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }

    fn set_device_state_fd(
        &self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: std::fs::File,
    ) -> io::Result<Option<std::fs::File>> {
        super::state::set_fd(&self.core, direction, phase, file)
    }

    fn check_device_state(&self) -> io::Result<()> {
        super::state::check(&self.core)
    }

    fn update_memory(&self, mem: Gm) -> io::Result<()> {
        *self.conn.mem.write() = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One vring thread per queue, so a busy request queue never delays the hiprio queue
        // (FORGETs) and request queues proceed in parallel.
        (0..self.num_queues()).map(|i| 1u64 << i).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => {
                self.conn.exit_fds.lock().push(pair.0.as_raw_fd());
                Some(pair)
            }
            Err(e) => {
                tracing::error!("cannot create a vring exit event: {e}");
                None
            }
        }
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        // Errors returned here would end the vring thread for good: log and keep going instead.
        if evset != EventSet::IN {
            tracing::debug!(?evset, "ignoring unexpected vring event");
            return Ok(());
        }
        match vrings.get(usize::from(device_event)) {
            // With one queue per thread, the thread index is the queue index.
            Some(vring) => self.process_vring(thread_id, vring),
            None => tracing::debug!(device_event, "event for an unknown vring"),
        }
        Ok(())
    }
}
