//! The vhost-user virtio-fs device (feature `vhost`, Linux only).
//!
//! [`FsDevice`] serves any [`DynFileSystem`] to a guest: a VMM (QEMU's `vhost-user-fs-pci`,
//! cloud-hypervisor's `--fs`, or anything else speaking vhost-user) connects to a unix socket
//! and gets a virtio-fs device with
//!
//! * a high-priority queue plus a configurable number of request queues (`MQ`),
//! * `EVENT_IDX`, `INDIRECT_DESC`, `REPLY_ACK`, memory-table updates (`SET_MEM_TABLE`,
//!   `ADD_MEM_REG`/`REM_MEM_REG`), and the tag in the config space (`CONFIG`) when a tag is set,
//! * hardened request handling: a descriptor chain the guest malforms gets an error reply or is
//!   returned unanswered, the device never panics or exits because of guest input, and keeps
//!   serving every other request; a chain that breaks the virtio rules (a writable descriptor
//!   before a readable one, a `next` out of range, a loop) is returned unused,
//! * a strict FUSE session: nothing but FUSE_INIT is served before FUSE_INIT (`EIO`), and a
//!   DESTROY, a second INIT or the VMM disconnecting ends the session: the filesystem's
//!   [`destroy`](crate::FileSystem::destroy) releases every lookup and handle the guest held,
//!   as an unmount would, so a rebooted guest or a reconnected VMM starts clean.
//!
//! ```no_run
//! use boxfs::memfs::MemFs;
//! use boxfs::vhost::FsDevice;
//! use boxfs::{DynFileSystem, SizeExt};
//! use std::sync::Arc;
//!
//! let fs: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().capacity(256.mib()).build()?);
//! let device = FsDevice::builder(fs).tag("scratch").request_queues(1).build()?;
//! let handle = device.serve("/run/boxfs/scratch.sock")?;
//! // ... start the VMM with the socket; later:
//! handle.wait()?; // returns when the VMM disconnects (or after `handle.stop()`)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Worker model
//!
//! Each virtqueue has its own thread (from `vhost-user-backend`) that pops descriptor chains.
//! Serving a request on that thread is the cheapest path (no hand-off, no wake-up of another
//! thread): on the benchmark in `benches/vhost_dispatch.rs` it is up to twice as fast as a pool
//! with one request in flight, and on a 2-core host it is as fast as the pools with many in
//! flight more often than not. But it serves one request at a time, so one slow request (an
//! `fsync` on slow storage, a `SETLKW` waiting for a lock) stalls every request behind it. The
//! default, [`Dispatch::SlowToPool`], serves requests on the vring thread except the kinds that
//! can block for long on the host (FSYNC, FSYNCDIR, SETLKW, FALLOCATE), which go
//! to a pool of [`DEFAULT_THREAD_POOL_SIZE`] workers: vring-thread speed, and a slow flush
//! occupies a worker instead of the queue. Bulk reads and writes (64 KiB or more) also go to a
//! free worker while several requests are in flight, so large copies run in parallel. [`Dispatch::Pool`] (virtiofsd with
//! `--thread-pool-size > 0`), [`Dispatch::Adaptive`] and [`Dispatch::VringThread`] (or a pool
//! size of 0; virtiofsd's default) are the alternatives; `docs/attach.md` has the measurements.
//! Whatever the mode, the hiprio queue (FORGET, BATCH_FORGET, INTERRUPT) is served on its own
//! vring thread and never waits in the pool behind requests.
//!
//! # Polling
//!
//! After a request queue runs dry its thread keeps looking at it for
//! [`FsDeviceBuilder::poll`] (default [`DEFAULT_POLL`], 50 µs) before re-arming guest
//! notifications and sleeping. A guest that issues requests back to back (one `stat` after
//! another, a `cp` of small files) sends the next request within microseconds of the reply;
//! with `EVENT_IDX` it does not kick a queue whose `avail_event` lags behind, so such requests
//! cost neither the guest's kick nor the device's wake-up. `benches/vs_virtiofsd.rs` measured
//! lookup+getattr at 27k pairs/s with polling against 11k without (virtiofsd: 10k) on a 2-core
//! VM. The cost is up to one poll period of CPU after each burst, on request queues only.
//!
//! # Snapshots and migration
//!
//! The device offers vhost-user's device-state interface (`VHOST_USER_PROTOCOL_F_DEVICE_STATE`)
//! and dirty-page logging (`VHOST_F_LOG_ALL`), so a VMM can save, restore and live-migrate the
//! guest: with the queues stopped it collects the FUSE session and the filesystem's
//! [`save_state`](crate::DynFileSystem::save_state) in a versioned, checksummed stream, and a
//! device started with the same filesystem configuration loads it and serves the guest on
//! without a new INIT. A stream that does not load leaves the device refusing requests.
//! [`save_snapshot`] and [`load_snapshot`] write and read the same format without a VMM.
//! `docs/attach.md` has the QEMU command lines.
//!
//! # Stopping
//!
//! [`DeviceHandle::stop`] ends the device at any time: it stops accepting, disconnects a VMM
//! that is attached (the guest then sees its filesystem hang, as when a virtiofsd is killed),
//! lets the workers finish requests already taken, and removes the socket file it created.

mod backend;
mod conn;
pub mod fleet;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod metrics;
mod pool;
mod request;
mod session;
mod state;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use parking_lot::Mutex;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use self::backend::{Counters, DeviceCore, FsBackend, TAG_LEN};
use self::pool::Pool;
pub use self::state::{load_snapshot, save_snapshot, StateTransfer};
use crate::{DynFileSystem, Error, Result, SharedFs};

pub use self::fleet::{Fleet, FleetBuilder, FleetDeviceHandle, FleetDeviceOptions};
pub use self::metrics::{Latency, RequestMetrics, LATENCY_BUCKETS_US};

/// Longest tag the virtio-fs config space holds, in bytes of UTF-8.
pub const MAX_TAG_LEN: usize = TAG_LEN;
/// Most request queues a device can have (the hiprio queue makes it 64 in all).
pub const MAX_REQUEST_QUEUES: usize = 63;
/// Largest virtqueue the guest may configure, by default.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;
/// Default of [`FsDeviceBuilder::poll`].
pub const DEFAULT_POLL: std::time::Duration = std::time::Duration::from_micros(50);

/// Default number of request workers (0 would serve requests on the vring threads).
pub const DEFAULT_THREAD_POOL_SIZE: usize = 4;

/// Which requests the worker pool serves (see the [module documentation](self#worker-model)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Dispatch {
    /// Every request is served on its queue's vring thread (what a pool size of 0 means).
    VringThread,
    /// Every request is handed to the worker pool (virtiofsd with `--thread-pool-size > 0`).
    Pool,
    /// Requests that can block for long on the host (FSYNC, FSYNCDIR, SETLKW, FALLOCATE) go
    /// to the pool, and so do bulk data requests (READ or WRITE of 64 KiB or more) while the
    /// guest keeps several in flight and a worker is free, so their copies run in parallel;
    /// everything else (FLUSH and RELEASE included, and a lone bulk request) is served on
    /// the vring thread.
    #[default]
    SlowToPool,
    /// Like `SlowToPool`, and while the guest keeps several requests in flight (the vring
    /// thread finds more than one waiting, or the pool is still busy) requests go to the pool to
    /// be served in parallel, as long as a worker is free; a lone request, or one arriving when
    /// every worker is occupied (say by blocking locks), is served on the vring thread.
    Adaptive,
}

/// A virtio-fs device ready to serve a filesystem; see the [module documentation](self).
pub struct FsDevice {
    core: Arc<DeviceCore>,
    keep_serving: bool,
}

/// Configures an [`FsDevice`]; made by [`FsDevice::builder`].
#[must_use]
pub struct FsDeviceBuilder {
    fs: Arc<dyn DynFileSystem>,
    tag: Option<String>,
    request_queues: usize,
    queue_size: u16,
    thread_pool_size: usize,
    dispatch: Dispatch,
    keep_serving: bool,
    poll: std::time::Duration,
    metrics: Option<Arc<RequestMetrics>>,
}

impl FsDevice {
    /// Starts configuring a device that serves `fs`.
    pub fn builder(fs: Arc<dyn DynFileSystem>) -> FsDeviceBuilder {
        FsDeviceBuilder {
            fs,
            tag: None,
            request_queues: 1,
            queue_size: DEFAULT_QUEUE_SIZE,
            thread_pool_size: DEFAULT_THREAD_POOL_SIZE,
            dispatch: Dispatch::default(),
            keep_serving: false,
            poll: DEFAULT_POLL,
            metrics: None,
        }
    }

    /// Binds a unix socket at `socket_path` and serves VMM connections on it from a background
    /// thread.
    ///
    /// A stale socket file (nothing listens on it) is replaced; a socket another process listens
    /// on, or a path that exists and is not a socket, is an error. The socket file is removed
    /// when the device ends.
    pub fn serve(self, socket_path: impl AsRef<Path>) -> Result<DeviceHandle> {
        self.serve_bound(BoundSocket::bind(socket_path)?)
    }

    /// Serves on a socket bound earlier with [`BoundSocket::bind`] (for example before the
    /// process sandboxed itself); the socket file is removed when the device ends.
    pub fn serve_bound(self, socket: BoundSocket) -> Result<DeviceHandle> {
        let (listener, file) = socket
            .take()
            .ok_or_else(|| Error::InvalidConfig("socket already served".into()))?;
        self.start(listener, Some(file))
    }

    /// Serves VMM connections on a listening socket the caller owns (for example one inherited
    /// from a supervisor). The socket is closed, but no file is removed, when the device ends.
    pub fn serve_listener(self, listener: UnixListener) -> Result<DeviceHandle> {
        self.start(listener, None)
    }

    fn start(self, listener: UnixListener, file: Option<conn::SocketFile>) -> Result<DeviceHandle> {
        listener
            .set_nonblocking(false)
            .map_err(|e| Error::io("configuring the listening socket", e))?;
        let stop_evt = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)
            .map_err(|e| Error::io("creating the stop event", e))?;
        let shared = Arc::new(HandleShared {
            stopping: AtomicBool::new(false),
            stop_evt,
            conn: Mutex::new(None),
            local_addr: listener.local_addr().ok(),
        });
        let socket_path = file.as_ref().map(|f| f.path().to_owned());
        let core = Arc::clone(&self.core);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("boxfs-vhost".into())
            .spawn(move || {
                let result = run(&self, &listener, &thread_shared);
                drop(listener);
                if let Some(pool) = &self.core.pool {
                    pool.shutdown();
                }
                if let Some(file) = &file {
                    file.remove();
                }
                result
            })
            .map_err(|e| Error::io("spawning the device thread", e))?;
        Ok(DeviceHandle {
            shared,
            core,
            thread: Mutex::new(Some(thread)),
            socket_path,
        })
    }
}

impl FsDeviceBuilder {
    /// The tag the guest mounts (`mount -t virtiofs TAG /mnt`), exposed in the config space: at
    /// most [`MAX_TAG_LEN`] bytes of UTF-8. Without a tag the `CONFIG` protocol feature is not
    /// offered and the VMM supplies the tag (QEMU `tag=`, cloud-hypervisor `--fs tag=`).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Number of request queues besides the hiprio queue (1 to [`MAX_REQUEST_QUEUES`];
    /// default 1). The VMM may use fewer.
    pub fn request_queues(mut self, n: usize) -> Self {
        self.request_queues = n;
        self
    }

    /// Largest queue size the guest may configure: a power of two up to 32768 (default
    /// [`DEFAULT_QUEUE_SIZE`]).
    pub fn queue_size(mut self, n: u16) -> Self {
        self.queue_size = n;
        self
    }

    /// Worker threads (default [`DEFAULT_THREAD_POOL_SIZE`]); `0` serves every request on the
    /// vring threads, whatever [`dispatch`](Self::dispatch) says.
    pub fn thread_pool_size(mut self, n: usize) -> Self {
        self.thread_pool_size = n;
        self
    }

    /// Which requests the worker pool serves (default [`Dispatch::SlowToPool`]).
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    /// Keep accepting new VMM connections after one disconnects (default: the device ends when
    /// the first VMM disconnects). The filesystem, and everything in it, is kept across
    /// connections; the guest's session is not: when a VMM disconnects, the filesystem's
    /// `destroy` releases every lookup and handle its guest held, as an unmount would, and the
    /// next VMM's guest starts with a new FUSE_INIT.
    pub fn keep_serving(mut self, yes: bool) -> Self {
        self.keep_serving = yes;
        self
    }

    /// How long a virtqueue thread keeps polling its queue for the guest's next request
    /// before it sleeps (default [`DEFAULT_POLL`]; zero sleeps at once). Polling trades a
    /// little CPU after each burst for lower latency of requests issued back to back; it needs
    /// `EVENT_IDX` (every modern guest negotiates it).
    pub fn poll(mut self, poll: std::time::Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Counts every request (opcode, errno, bytes, latency) in `metrics`: a few relaxed
    /// atomic additions and two clock reads per request.
    pub fn metrics(mut self, metrics: Arc<RequestMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Checks the configuration and starts the worker pool.
    pub fn build(self) -> Result<FsDevice> {
        if let Some(tag) = &self.tag {
            if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.contains('\0') {
                return Err(Error::InvalidConfig(format!(
                    "tag `{tag}` must be 1 to {MAX_TAG_LEN} bytes of UTF-8 without NUL"
                )));
            }
        }
        if !(1..=MAX_REQUEST_QUEUES).contains(&self.request_queues) {
            return Err(Error::InvalidConfig(format!(
                "request queues must be 1 to {MAX_REQUEST_QUEUES}, not {}",
                self.request_queues
            )));
        }
        if !self.queue_size.is_power_of_two() {
            return Err(Error::InvalidConfig(format!(
                "queue size must be a power of two up to 32768, not {}",
                self.queue_size
            )));
        }
        if self.thread_pool_size > 1024 {
            return Err(Error::InvalidConfig(format!(
                "thread pool size {} is unreasonably large (at most 1024)",
                self.thread_pool_size
            )));
        }
        let (pool, dispatch) = match (self.thread_pool_size, self.dispatch) {
            (0, _) | (_, Dispatch::VringThread) => (None, Dispatch::VringThread),
            (n, d) => (
                Some(Pool::new(n).map_err(|e| Error::io("starting the worker pool", e))?),
                d,
            ),
        };
        let pool_size = if pool.is_some() {
            self.thread_pool_size
        } else {
            0
        };
        Ok(FsDevice {
            core: Arc::new(DeviceCore {
                server: Server::new(SharedFs::new(Arc::clone(&self.fs))),
                session: session::Session::new(self.fs, false),
                pool,
                dispatch,
                pooled: Default::default(),
                pool_size,
                counters: Counters::new(1 + self.request_queues),
                metrics: self.metrics,
                tag: self.tag,
                poll: self.poll,
                request_queues: self.request_queues,
                queue_size: usize::from(self.queue_size),
                inflight: Default::default(),
                state: Default::default(),
            }),
            keep_serving: self.keep_serving,
        })
    }
}

/// A listening vhost-user socket bound at a path, not yet served. Binding can happen before
/// the device is built (and before the process confines itself); the socket file is removed
/// when the device serving it ends, through a descriptor of its directory, so this works
/// even once the path is no longer reachable. Dropped without being served, it removes the
/// socket file at once.
pub struct BoundSocket {
    listener: Option<UnixListener>,
    file: Option<conn::SocketFile>,
}

impl BoundSocket {
    /// Binds `path` as [`FsDevice::serve`] does: a stale socket file is replaced; a socket
    /// in use, or a path that is not a socket, is an error.
    pub fn bind(path: impl AsRef<Path>) -> Result<BoundSocket> {
        let (listener, file) = conn::bind(path.as_ref())?;
        Ok(BoundSocket {
            listener: Some(listener),
            file: Some(file),
        })
    }

    /// The path the socket is bound at.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path())
    }

    fn take(mut self) -> Option<(UnixListener, conn::SocketFile)> {
        Some((self.listener.take()?, self.file.take()?))
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        self.listener.take();
        if let Some(file) = self.file.take() {
            file.remove();
        }
    }
}

impl std::fmt::Debug for BoundSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundSocket")
            .field("path", &self.path())
            .finish()
    }
}

/// Whether a listening socket is bound at `path` (a running device or daemon), checked through
/// `/proc/net/unix` first and by connecting only if it is not listed there. A boxfs device
/// ignores such a probe; other daemons (virtiofsd) may take it for their VMM.
pub fn socket_in_use(path: impl AsRef<Path>) -> bool {
    let path = path.as_ref();
    conn::listed_as_listening(path) || UnixStream::connect(path).is_ok()
}

/// Whether `/proc/net/unix` lists a socket bound at `path` (as given, or absolute) that is
/// listening, without connecting to it. A socket file appears when it is bound, a moment
/// before it listens, and a connection in between is refused: a runtime (or a test) that
/// starts a daemon and waits for its socket should wait for this rather than for the file.
///
/// ```no_run
/// # fn main() {
/// while !boxfs::vhost::socket_listening("/run/vm1/fs.sock") {
///     std::thread::sleep(std::time::Duration::from_millis(10));
/// }
/// # }
/// ```
pub fn socket_listening(path: impl AsRef<Path>) -> bool {
    conn::listed_as_listening(path.as_ref())
}

struct HandleShared {
    stopping: AtomicBool,
    stop_evt: EventFd,
    /// A duplicate of the current VMM connection, to shut it down on stop.
    conn: Mutex<Option<OwnedFd>>,
    local_addr: Option<std::os::unix::net::SocketAddr>,
}

/// A running device: wait for it to end, or stop it. Dropping the handle stops the device.
pub struct DeviceHandle {
    shared: Arc<HandleShared>,
    core: Arc<DeviceCore>,
    thread: Mutex<Option<JoinHandle<Result<()>>>>,
    socket_path: Option<PathBuf>,
}

/// Request counters of a device, over all its connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceStats {
    /// Descriptor chains taken from the guest.
    pub requests: u64,
    /// Requests the device answered with an error itself because they were malformed or the
    /// FUSE server could not serve them.
    pub error_replies: u64,
    /// Descriptor chains returned unanswered (unmappable, or too short to identify).
    pub dropped: u64,
    /// VMM connections accepted.
    pub connections: u64,
    /// Requests handed to the worker pool (the rest were served on the vring threads).
    pub offloaded: u64,
}

impl DeviceHandle {
    /// Blocks until the device ends: the VMM disconnected (unless the device keeps serving) or
    /// [`stop`](Self::stop) was called. Returns the error that ended it, if any. Later calls
    /// return `Ok(())` at once.
    pub fn wait(&self) -> Result<()> {
        let thread = self.thread.lock().take();
        match thread {
            Some(t) => t.join().unwrap_or_else(|_| {
                Err(Error::io(
                    "device thread",
                    std::io::Error::other("the device thread panicked"),
                ))
            }),
            None => Ok(()),
        }
    }

    /// Ends the device (disconnecting an attached VMM) and waits until it has ended.
    pub fn stop(&self) -> Result<()> {
        self.request_stop();
        self.wait()
    }

    /// Asks the device to end without waiting; safe to call from any thread, any number of
    /// times.
    pub fn request_stop(&self) {
        let shared = &self.shared;
        if shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = shared.stop_evt.write(1);
        let guard = shared.conn.lock();
        match guard.as_ref() {
            Some(fd) => conn::shutdown(fd),
            None => {
                drop(guard);
                // The device thread may be between its poll and vhost-user-backend's blocking
                // accept; a connection of our own wakes that accept up.
                if let Some(addr) = &shared.local_addr {
                    let _ = UnixStream::connect_addr(addr);
                }
            }
        }
    }

    /// Whether the device has ended.
    pub fn is_finished(&self) -> bool {
        self.thread
            .lock()
            .as_ref()
            .map(|t| t.is_finished())
            .unwrap_or(true)
    }

    /// Request counters so far.
    pub fn stats(&self) -> DeviceStats {
        let c = &self.core.counters;
        DeviceStats {
            requests: c.requests.load(Ordering::Relaxed),
            error_replies: c.error_replies.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
            offloaded: c.offloaded.load(Ordering::Relaxed),
        }
    }

    /// Requests served so far on each virtqueue, indexed by queue: `[0]` is the hiprio queue
    /// (FORGET, BATCH_FORGET, INTERRUPT), `[1..]` the request queues. A guest with several
    /// vCPUs spreads its requests over the request queues (Linux 6.11 and later map queues to
    /// CPUs), and this shows which ones it used.
    pub fn queue_requests(&self) -> Vec<u64> {
        self.core
            .counters
            .per_queue
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// The last device-state transfer (snapshot or migration) that succeeded, with its size
    /// and duration.
    pub fn last_state_transfer(&self) -> Option<StateTransfer> {
        self.core.state.last()
    }

    /// The socket file this device bound, if it was started with [`FsDevice::serve`].
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket_path.as_deref()
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        if !self.is_finished() {
            let _ = self.stop();
        }
    }
}

/// Accepts and serves connections until the VMM leaves (or, with `keep_serving`, until
/// stopped).
fn run(device: &FsDevice, listener: &UnixListener, shared: &HandleShared) -> Result<()> {
    loop {
        match conn::wait_for_connection(listener.as_raw_fd(), shared.stop_evt.as_raw_fd()) {
            Ok(conn::Wake::Stop) => return Ok(()),
            Ok(conn::Wake::Connection) => {}
            Err(e) => return Err(Error::io("waiting for a VMM connection", e)),
        }
        if shared.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        let session = serve_connection(device, listener, shared)?;
        if shared.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        if !session {
            // Someone connected and left without a word (for example another daemon probing
            // whether this socket is in use): not a VMM, keep listening.
            tracing::debug!("connection closed without a vhost-user message; still listening");
            continue;
        }
        if !device.keep_serving {
            return Ok(());
        }
        tracing::info!("waiting for the next VMM connection");
    }
}

/// Serves one connection until it ends; returns whether it was a VMM session (it sent a
/// vhost-user message, even if it left before negotiating) rather than a probe.
fn serve_connection(
    device: &FsDevice,
    listener: &UnixListener,
    shared: &HandleShared,
) -> Result<bool> {
    let backend = FsBackend::new(Arc::clone(&device.core));
    let probe = backend.clone();
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<request::Log>::new());
    let mut daemon =
        VhostUserDaemon::new("boxfs-vhost-conn".into(), backend, mem).map_err(|e| {
            Error::io(
                "creating the vhost-user daemon",
                std::io::Error::other(e.to_string()),
            )
        })?;
    let exit_workers = |daemon: &VhostUserDaemon<FsBackend>| {
        for handler in daemon.get_epoll_handlers() {
            handler.send_exit_event();
        }
    };
    let dup = listener
        .try_clone()
        .map_err(|e| Error::io("duplicating the listening socket", e))?;
    let mut vlistener = Listener::from(dup);
    if let Err(e) = daemon.start(&mut vlistener) {
        exit_workers(&daemon);
        return Err(Error::io(
            "accepting a VMM connection",
            std::io::Error::other(e.to_string()),
        ));
    }
    drop(vlistener);
    tracing::debug!("connection accepted");
    {
        let found = conn::find_connection(listener);
        if found.is_none() {
            tracing::warn!("cannot find the accepted connection; stop() will wait for the VMM");
        }
        let mut guard = shared.conn.lock();
        *guard = found;
        if shared.stopping.load(Ordering::Acquire) {
            if let Some(fd) = guard.as_ref() {
                conn::shutdown(fd);
            }
        }
    }
    let result = daemon.wait();
    // A vring thread polling its queue stops at once rather than at the end of its poll.
    probe.close();
    exit_workers(&daemon);
    shared.conn.lock().take();
    // The vring threads' exit events can be closed once every thread has left its loop (each
    // holds a clone of its epoll handler until then). Usually that is already so once the
    // daemon is dropped; a thread still finishing a request gets a reaper that closes them
    // when it is done, so no connection leaves a descriptor behind, however slow the host.
    let handlers = daemon.get_epoll_handlers();
    drop(daemon);
    let busy = |hs: &[Arc<_>]| hs.iter().any(|h| Arc::strong_count(h) > 1);
    if !busy(&handlers) {
        drop(handlers);
        probe.close_exit_events();
    } else {
        tracing::debug!("a vring thread is still busy; its exit event is closed when it ends");
        let probe = probe.clone();
        let reaper = std::thread::Builder::new()
            .name("boxfs-reaper".into())
            .spawn(move || {
                while busy(&handlers) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                drop(handlers);
                probe.close_exit_events();
            });
        if let Err(e) = reaper {
            tracing::warn!("cannot start a thread to close a connection's exit events: {e}");
        }
    }
    // The guest's FUSE session ends with its VMM: release what it held (an unmount would), so
    // the next VMM starts clean.
    device.core.session.end();
    let session = probe.contacted();
    if probe.negotiated() {
        use vhost::vhost_user::Error as VuError;
        use vhost_user_backend::Error as DaemonError;
        match result {
            Ok(())
            | Err(DaemonError::HandleRequest(
                VuError::Disconnected | VuError::PartialMessage | VuError::SocketBroken(_),
            )) => tracing::info!("VMM disconnected"),
            Err(e) => tracing::warn!("VMM connection ended: {e}"),
        }
    }
    Ok(session)
}
