//! Device state for snapshots and migration (`VHOST_USER_PROTOCOL_F_DEVICE_STATE`).
//!
//! QEMU (8.2 and later) stops the vrings, hands the back end one end of a pipe with
//! `SET_DEVICE_STATE_FD` and reads (saving) or writes (loading) the device state through it,
//! then asks `CHECK_DEVICE_STATE` whether that worked. The transfer runs on a thread of its
//! own, so the vhost-user message loop answers at once and QEMU can read or write the pipe
//! while the state is produced or consumed.
//!
//! # The stream
//!
//! ```text
//! "BOXFSDEV"  u32 format version       (unframed preamble)
//! frames:     u32 len, len bytes, u32 crc32(sequence number, len, bytes)   (len 1 ..= 1 MiB)
//! end:        u32 0, u64 payload bytes, u32 crc32(sequence number, 0, payload bytes)
//! ```
//!
//! All integers little-endian. The frames' payload is the device header followed by the
//! filesystem's own state ([`DynFileSystem::save_state`](crate::DynFileSystem::save_state)):
//!
//! ```text
//! u32 header length (bytes that follow, 21 in version 1)
//! u8  FUSE session initialised (INIT answered)     u32 FUSE major   u32 FUSE minor
//! u32 max_readahead   u64 the INIT flags the guest offered (flags | flags2 << 32)
//! ```
//!
//! The destination replays the filesystem's `init` with the guest's flags (so it negotiates
//! the same options) and loads the filesystem state; its FUSE session then counts as
//! initialised, and the guest goes on without a new INIT. The checksums are checked before
//! any payload byte reaches the filesystem; a truncated stream lacks its end frame. A stream
//! that fails to load (corrupt, truncated, a newer format version, a filesystem that cannot
//! load it) makes `CHECK_DEVICE_STATE` fail and leaves the device refusing every request
//! (`EIO`) until the VMM disconnects: never a half-restored session.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuse_backend_rs::api::filesystem::FsOptions;
use parking_lot::Mutex;
use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};
use vhost_user_backend::{VringMutex, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as VirtQueError;

use super::backend::{DeviceCore, Gm};
use super::session::InitParams;

/// A virtqueue whose stop (`GET_VRING_BASE`) waits for the requests already taken from it.
///
/// vhost-user-backend answers `GET_VRING_BASE` with the queue's next available index as soon
/// as it has marked the queue not ready; a request taken before that may still be served on a
/// vring thread or in the worker pool. Its reply (and used-ring entry) would then land after
/// the VMM read the queue state, and for a migration after the VMM's last pass over guest
/// memory: the destination would never answer it. So the stop waits (up to
/// [`DRAIN_TIMEOUT`]) until every request taken from this queue was answered.
#[derive(Clone)]
pub(crate) struct QuiescingVring {
    inner: VringMutex<Gm>,
    /// Requests taken from this queue and not answered yet.
    inflight: Arc<AtomicUsize>,
}

impl QuiescingVring {
    /// `n` requests were taken from the queue (call with the queue locked).
    pub(crate) fn taken(&self, n: usize) {
        self.inflight.fetch_add(n, Ordering::AcqRel);
    }

    /// One request was answered (its used-ring entry written).
    pub(crate) fn answered(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }

    fn wait_idle(&self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.inflight.load(Ordering::Acquire) != 0 {
            if Instant::now() >= deadline {
                tracing::warn!(
                    "a request taken from a stopped queue is still not answered after 60 s"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl<'a> VringStateGuard<'a, Gm> for QuiescingVring {
    type G = <VringMutex<Gm> as VringStateGuard<'a, Gm>>::G;
}

impl<'a> VringStateMutGuard<'a, Gm> for QuiescingVring {
    type G = <VringMutex<Gm> as VringStateMutGuard<'a, Gm>>::G;
}

impl VringT<Gm> for QuiescingVring {
    fn new(mem: Gm, max_queue_size: u16) -> Result<Self, VirtQueError> {
        Ok(QuiescingVring {
            inner: VringMutex::new(mem, max_queue_size)?,
            inflight: Arc::default(),
        })
    }
    fn get_ref(&self) -> <Self as VringStateGuard<'_, Gm>>::G {
        self.inner.get_ref()
    }
    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, Gm>>::G {
        self.inner.get_mut()
    }
    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.inner.add_used(desc_index, len)
    }
    fn signal_used_queue(&self) -> io::Result<()> {
        self.inner.signal_used_queue()
    }
    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
    }
    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }
    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }
    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled)
    }
    fn set_queue_info(&self, desc: u64, avail: u64, used: u64) -> Result<(), VirtQueError> {
        self.inner.set_queue_info(desc, avail, used)
    }
    fn queue_next_avail(&self) -> u16 {
        // GET_VRING_BASE: the queue is not ready any more (nothing new is taken); wait for
        // what was taken before. Without the queue lock: the workers need it to answer.
        self.wait_idle();
        self.inner.queue_next_avail()
    }
    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }
    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }
    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }
    fn set_queue_size(&self, num: u16) {
        self.inner.set_queue_size(num)
    }
    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }
    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready)
    }
    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file)
    }
    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }
    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file)
    }
    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file)
    }
}

/// Magic at the start of every device-state stream.
const MAGIC: &[u8; 8] = b"BOXFSDEV";
/// Format version this build writes (and the newest it reads).
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Largest frame payload.
const MAX_FRAME: usize = 1 << 20;
/// Bytes of the version-1 device header after its length field.
const HEADER_V1_LEN: u32 = 1 + 4 + 4 + 4 + 8;
/// How long a save waits for requests already taken from the queues to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The result of the last state transfer, for [`DeviceStats`](super::DeviceStats) and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTransfer {
    /// `true` for a save, `false` for a load.
    pub save: bool,
    /// Bytes of the stream (preamble, frames and end frame).
    pub bytes: u64,
    /// From `SET_DEVICE_STATE_FD` to the end of the transfer.
    pub duration: Duration,
}

enum Job {
    Save(JoinHandle<io::Result<StateTransfer>>),
    Load(JoinHandle<io::Result<StateTransfer>>),
}

/// The state transfer of a device: at most one at a time.
#[derive(Default)]
pub(crate) struct StateSlot {
    job: Mutex<Option<Job>>,
    last: Mutex<Option<StateTransfer>>,
}

impl StateSlot {
    pub(crate) fn last(&self) -> Option<StateTransfer> {
        *self.last.lock()
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// `SET_DEVICE_STATE_FD`: starts saving into or loading from `file` on a thread of its own.
pub(crate) fn set_fd(
    core: &Arc<DeviceCore>,
    direction: VhostTransferStateDirection,
    phase: VhostTransferStatePhase,
    file: File,
) -> io::Result<Option<File>> {
    if phase != VhostTransferStatePhase::STOPPED {
        return Err(errno(libc::EINVAL));
    }
    let mut slot = core.state.job.lock();
    if let Some(old) = slot.take() {
        // A transfer nobody checked (the VMM gave up on it): let it end first.
        let (Job::Save(h) | Job::Load(h)) = old;
        let _ = h.join();
    }
    let core2 = Arc::clone(core);
    let started = Instant::now();
    let job = match direction {
        VhostTransferStateDirection::SAVE => Job::Save(spawn("boxfs-state-save", move || {
            save(&core2, file, started)
        })?),
        VhostTransferStateDirection::LOAD => Job::Load(spawn("boxfs-state-load", move || {
            load(&core2, file, started)
        })?),
    };
    *slot = Some(job);
    Ok(None)
}

fn spawn(
    name: &str,
    f: impl FnOnce() -> io::Result<StateTransfer> + Send + 'static,
) -> io::Result<JoinHandle<io::Result<StateTransfer>>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

/// `CHECK_DEVICE_STATE`: waits for the transfer to end and reports how it went.
pub(crate) fn check(core: &DeviceCore) -> io::Result<()> {
    let job = core
        .state
        .job
        .lock()
        .take()
        .ok_or_else(|| io::Error::other("no device state transfer to check"))?;
    let (save, handle) = match job {
        Job::Save(h) => (true, h),
        Job::Load(h) => (false, h),
    };
    let result = handle
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the state transfer thread panicked")));
    match result {
        Ok(t) => {
            tracing::info!(
                bytes = t.bytes,
                ms = t.duration.as_secs_f64() * 1e3,
                "device state {}",
                if save { "saved" } else { "loaded" }
            );
            *core.state.last.lock() = Some(t);
            Ok(())
        }
        Err(e) => {
            if save {
                tracing::warn!("saving the device state failed: {e}");
            } else {
                tracing::error!(
                    "loading the device state failed, the device refuses requests: {e}"
                );
            }
            Err(e)
        }
    }
}

/// Waits until no request taken from a queue is still being served (the VMM stopped the
/// queues before asking for the state; requests already taken finish first).
fn drain(core: &DeviceCore) -> io::Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while core.inflight.load(Ordering::Acquire) != 0 {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "requests still in flight after 60 s; cannot save the device state",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn save(core: &DeviceCore, file: File, started: Instant) -> io::Result<StateTransfer> {
    drain(core)?;
    let session = &core.session;
    let _guard = session.lock_transitions();
    let init = if session.initialized() {
        session.init_params()
    } else {
        None
    };
    let mut out = FrameWriter::new(file);
    write_preamble(&mut out.inner)?;
    out.write_all(&encode_header(init))?;
    session.fs().save_state(&mut out)?;
    let bytes = out.finish()?;
    Ok(StateTransfer {
        save: true,
        bytes,
        duration: started.elapsed(),
    })
}

fn load(core: &DeviceCore, file: File, started: Instant) -> io::Result<StateTransfer> {
    let session = &core.session;
    let guard = session.lock_transitions();
    if session.initialized() {
        // A guest already mounted this device: its session is not ours to replace.
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "the device already serves a FUSE session; load the state into a fresh device",
        ));
    }
    // Until the load is known to be good, nothing is served.
    session.poison();
    let mut input = FrameReader::new(BufReader::with_capacity(1 << 16, file));
    let result = (|| {
        read_preamble(&mut input.inner)?;
        let init = decode_header(&mut input)?;
        let fs = session.fs();
        if let Some(p) = &init {
            fs.init(FsOptions::from_bits_truncate(p.capable))?;
        }
        fs.load_state(&mut input)?;
        let bytes = input.finish()?;
        Ok((init, bytes))
    })();
    match result {
        Ok((init, bytes)) => {
            session.restore_locked(&guard, init);
            Ok(StateTransfer {
                save: false,
                bytes,
                duration: started.elapsed(),
            })
        }
        Err(e) => Err(e),
    }
}

/// Writes `fs`'s state as a device-state stream without a FUSE session (what
/// `boxfsd --snapshot-file` writes and `--memfs-from` reads): the same versioned, checksummed
/// format a VMM gets, with "no session" in its header. Returns the bytes written.
///
/// The filesystem may be in use meanwhile; what each backend's `save_state` guarantees then
/// applies (MemFs: each inode is consistent as of the moment it is written). Pause the guest
/// for a point-in-time snapshot.
pub fn save_snapshot(fs: &dyn crate::DynFileSystem, out: &mut dyn Write) -> io::Result<u64> {
    write_preamble(out)?;
    let mut frames = FrameWriter::new(out);
    frames.write_all(&encode_header(None))?;
    fs.save_state(&mut frames)?;
    frames.finish()
}

/// Loads a stream [`save_snapshot`] (or a device-state save) wrote into `fs`, a filesystem
/// no guest uses yet, and ends the saved session if there was one (the filesystem's
/// `destroy` drops the lookups and handles it carried, keeping the content). All or nothing:
/// a corrupt, truncated or newer-version stream is an error and the filesystem's
/// `load_state` leaves it as it was. Returns the bytes read.
pub fn load_snapshot(fs: &dyn crate::DynFileSystem, input: &mut dyn Read) -> io::Result<u64> {
    read_preamble(input)?;
    let mut frames = FrameReader::new(input);
    let init = decode_header(&mut frames)?;
    fs.load_state(&mut frames)?;
    let bytes = frames.finish()?;
    let _ = init;
    fs.destroy();
    Ok(bytes)
}

fn write_preamble(w: &mut (impl Write + ?Sized)) -> io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes())
}

fn read_preamble(r: &mut (impl Read + ?Sized)) -> io::Result<()> {
    let mut p = [0u8; 12];
    r.read_exact(&mut p).map_err(truncated)?;
    if &p[..8] != MAGIC {
        return Err(invalid("not a boxfs device state (bad magic)"));
    }
    let version = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(invalid(&format!(
            "device state format version {version}; this build reads 1 to {FORMAT_VERSION}"
        )));
    }
    Ok(())
}

fn encode_header(init: Option<InitParams>) -> Vec<u8> {
    let mut h = Vec::with_capacity(4 + HEADER_V1_LEN as usize);
    h.extend_from_slice(&HEADER_V1_LEN.to_le_bytes());
    let p = init.unwrap_or_default();
    h.push(u8::from(init.is_some()));
    h.extend_from_slice(&p.major.to_le_bytes());
    h.extend_from_slice(&p.minor.to_le_bytes());
    h.extend_from_slice(&p.max_readahead.to_le_bytes());
    h.extend_from_slice(&p.capable.to_le_bytes());
    h
}

fn decode_header(r: &mut (impl Read + ?Sized)) -> io::Result<Option<InitParams>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(truncated)?;
    let len = u32::from_le_bytes(len);
    // A newer version may append fields; version 1 has exactly these.
    if !(HEADER_V1_LEN..=4096).contains(&len) {
        return Err(invalid(&format!("device header of {len} bytes")));
    }
    let mut h = vec![0u8; len as usize];
    r.read_exact(&mut h).map_err(truncated)?;
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let mut cap = [0u8; 8];
    cap.copy_from_slice(&h[13..21]);
    let p = InitParams {
        major: u32_at(1),
        minor: u32_at(5),
        max_readahead: u32_at(9),
        capable: u64::from_le_bytes(cap),
    };
    match h[0] {
        0 => Ok(None),
        1 if p.major == fuse_backend_rs::abi::fuse_abi::KERNEL_VERSION => Ok(Some(p)),
        1 => Err(invalid(&format!(
            "FUSE major version {} in the state",
            p.major
        ))),
        b => Err(invalid(&format!("session flag {b}"))),
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn truncated(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "device state stream truncated",
        )
    } else {
        e
    }
}

fn frame_crc(seq: u64, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Cuts what is written into checksummed frames of at most [`MAX_FRAME`] bytes.
pub(crate) struct FrameWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
    seq: u64,
    payload: u64,
    written: u64,
}

impl<W: Write> FrameWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        FrameWriter {
            inner,
            buf: Vec::with_capacity(MAX_FRAME),
            seq: 0,
            payload: 0,
            written: 12,
        }
    }

    fn flush_frame(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let len = self.buf.len() as u32;
        let crc = frame_crc(self.seq, len, &self.buf);
        self.inner.write_all(&len.to_le_bytes())?;
        self.inner.write_all(&self.buf)?;
        self.inner.write_all(&crc.to_le_bytes())?;
        self.seq += 1;
        self.payload += u64::from(len);
        self.written += 8 + u64::from(len);
        self.buf.clear();
        Ok(())
    }

    /// Writes the last frame and the end frame; returns the bytes of the whole stream.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        self.flush_frame()?;
        let total = self.payload.to_le_bytes();
        let crc = frame_crc(self.seq, 0, &total);
        self.inner.write_all(&0u32.to_le_bytes())?;
        self.inner.write_all(&total)?;
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.flush()?;
        Ok(self.written + 16)
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = MAX_FRAME - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_FRAME {
            self.flush_frame()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Frames are cut at MAX_FRAME or at the end only, so a stream does not depend on
        // how the filesystem flushes.
        Ok(())
    }
}

/// Reads the payload of a framed stream, checking every frame before handing out its bytes.
pub(crate) struct FrameReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
    seq: u64,
    payload: u64,
    read: u64,
    ended: bool,
    /// The length field of the next frame, read ahead.
    lookahead: Option<u32>,
}

impl<R: Read> FrameReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            pos: 0,
            seq: 0,
            payload: 0,
            read: 12,
            ended: false,
            lookahead: None,
        }
    }

    fn read_len(&mut self) -> io::Result<u32> {
        let mut len = [0u8; 4];
        self.inner.read_exact(&mut len).map_err(truncated)?;
        Ok(u32::from_le_bytes(len))
    }

    /// Reads and checks the end frame (its length field already read), and that nothing
    /// follows it.
    fn read_end(&mut self) -> io::Result<()> {
        let mut end = [0u8; 12];
        self.inner.read_exact(&mut end).map_err(truncated)?;
        let total = &end[..8];
        let crc = u32::from_le_bytes([end[8], end[9], end[10], end[11]]);
        if crc != frame_crc(self.seq, 0, total) {
            return Err(invalid("device state end frame checksum mismatch"));
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(total);
        if u64::from_le_bytes(t) != self.payload {
            return Err(invalid("device state length mismatch"));
        }
        let mut extra = [0u8; 1];
        if self.inner.read(&mut extra)? != 0 {
            return Err(invalid("data after the end of the device state stream"));
        }
        self.read += 16;
        self.ended = true;
        Ok(())
    }

    /// Reads the next frame; `false` at the end frame.
    ///
    /// The length of the frame after it is read ahead, and if that is the end frame it is
    /// checked at once: the last payload bytes are handed out only once the whole stream
    /// checked out, so a filesystem never completes a load from a truncated stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        let len = match self.lookahead.take() {
            Some(len) => len,
            None => self.read_len()?,
        };
        if len == 0 {
            self.read_end()?;
            return Ok(false);
        }
        if len as usize > MAX_FRAME {
            return Err(invalid(&format!("device state frame of {len} bytes")));
        }
        self.buf.resize(len as usize, 0);
        self.inner.read_exact(&mut self.buf).map_err(truncated)?;
        let mut crc = [0u8; 4];
        self.inner.read_exact(&mut crc).map_err(truncated)?;
        if u32::from_le_bytes(crc) != frame_crc(self.seq, len, &self.buf) {
            return Err(invalid(&format!(
                "device state frame {} checksum mismatch",
                self.seq
            )));
        }
        self.seq += 1;
        self.payload += u64::from(len);
        self.read += 8 + u64::from(len);
        self.pos = 0;
        match self.read_len()? {
            0 => self.read_end()?,
            next => self.lookahead = Some(next),
        }
        Ok(true)
    }

    /// Checks that the payload was consumed to its end frame and nothing follows; returns
    /// the bytes of the whole stream.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        if self.pos < self.buf.len() || self.next_frame()? {
            return Err(invalid(
                "the filesystem state ended before the device state stream",
            ));
        }
        Ok(self.read)
    }
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.buf.len() {
            if !self.next_frame()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_preamble(&mut out).expect("ok");
        let mut w = FrameWriter::new(&mut out);
        w.write_all(payload).expect("ok");
        let n = w.finish().expect("ok");
        assert_eq!(n as usize, out.len());
        out
    }

    fn read_all(s: &[u8]) -> io::Result<Vec<u8>> {
        let mut r = FrameReader::new(s);
        read_preamble(&mut r.inner)?;
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        r.finish()?;
        Ok(v)
    }

    #[test]
    fn round_trip_over_several_frames() {
        let payload: Vec<u8> = (0..(3 * MAX_FRAME + 17)).map(|i| (i * 7) as u8).collect();
        let s = stream(&payload);
        assert_eq!(read_all(&s).expect("ok"), payload);
        assert_eq!(read_all(&stream(b"")).expect("ok"), b"");
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let payload: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let s = stream(&payload);
        for cut in 0..s.len() {
            assert!(read_all(&s[..cut]).is_err(), "truncated at {cut} accepted");
        }
        for i in 0..s.len() {
            let mut c = s.clone();
            c[i] ^= 0x10;
            assert!(read_all(&c).is_err(), "flip at byte {i} accepted");
        }
        let mut longer = s.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err(), "trailing byte accepted");
    }

    #[test]
    fn newer_version_is_rejected() {
        let mut s = stream(b"x");
        s[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let e = read_all(&s).expect_err("must fail");
        assert!(e.to_string().contains("version"), "{e}");
    }

    #[test]
    fn header_round_trips() {
        let p = InitParams {
            major: 7,
            minor: 41,
            max_readahead: 131072,
            capable: 0x1234_5678_9abc,
        };
        for init in [None, Some(p)] {
            let h = encode_header(init);
            assert_eq!(decode_header(&mut &h[..]).expect("ok"), init);
        }
    }
}
