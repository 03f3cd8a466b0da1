//! A test VMM: a vhost-user frontend with memfd-backed guest memory and split virtqueues laid out
//! by hand, plus a FUSE client that speaks the virtio-fs protocol through it.
//!
//! Used by the integration tests (`mod vmm;`) and meant to be reused as a load generator:
//! [`Vmm::submit`] and [`Vmm::wait_any`] keep many requests in flight on a queue, and
//! [`FuseClient`] wraps the common FUSE operations. [`RawDesc`] and [`Vmm::submit_raw`] build
//! arbitrary (malformed) descriptor chains.
#![allow(dead_code)]

pub mod testfs;
pub mod trackfs;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, BatchForgetIn, CreateIn, Dirent, EntryOut, ForgetIn, ForgetOne, FsyncIn, GetattrIn,
    InHeader, InitIn, InitIn2, InitOut, Kstatfs, MkdirIn, OpenIn, OpenOut, OutHeader, ReadIn,
    ReleaseIn, SetattrIn, WriteIn, WriteOut,
};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    ByteValued, Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Descriptor flags (virtio 1.x, 2.7.5).
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Bytes of guest memory reserved for the rings (64 KiB per queue, up to 64 queues).
const RING_AREA: u64 = 64 * 0x10000;

/// Options for [`Vmm::connect`].
#[derive(Clone, Debug)]
pub struct VmmConfig {
    /// Guest memory size in bytes.
    pub mem_size: u64,
    /// Queue size of every queue (power of two).
    pub queue_size: u16,
    /// Queues to set up (hiprio + request queues); `None` = as many as the device offers.
    pub queues: Option<usize>,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Ask for REPLY_ACK on every vhost-user message.
    pub reply_ack: bool,
    /// Most bytes of each reply copied out into its [`Completion`] (the device still writes
    /// all of it). A load generator reading 1 MiB at a time needs the header, not the data:
    /// copying every reply out cost more than the daemon's own copy.
    pub reply_cap: usize,
    /// Zero every device-writable buffer before submitting it (a test then sees exactly what
    /// the device wrote); a load generator skips it.
    pub zero_reply_buffers: bool,
}

impl Default for VmmConfig {
    fn default() -> Self {
        VmmConfig {
            mem_size: 64 << 20,
            queue_size: 256,
            queues: None,
            event_idx: true,
            reply_ack: true,
            reply_cap: usize::MAX,
            zero_reply_buffers: true,
        }
    }
}

/// A descriptor for [`Vmm::submit_raw`] and [`Vmm::write_table`].
#[derive(Clone, Copy, Debug)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: Next,
}

/// Where a raw descriptor's `next` points.
#[derive(Clone, Copy, Debug)]
pub enum Next {
    /// No `next` (the flag is whatever `flags` says).
    None,
    /// The descriptor at this position of the same slice.
    Pos(usize),
    /// This literal index (may be out of range on purpose).
    Index(u16),
}

/// Ways [`Vmm::submit_malformed`] breaks the virtio descriptor-chain rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A device-writable descriptor before a device-readable one.
    WritableFirst,
    /// A `next` index past the descriptor table.
    NextOutOfRange,
    /// A chain longer than the queue (a descriptor that is its own `next`).
    Loop,
}

impl Malformed {
    pub const ALL: [Malformed; 3] = [
        Malformed::WritableFirst,
        Malformed::NextOutOfRange,
        Malformed::Loop,
    ];
}

/// One segment of a well-formed request.
#[derive(Clone, Debug)]
pub enum Seg {
    /// Device-readable bytes.
    R(Vec<u8>),
    /// A device-writable buffer of this many bytes.
    W(u32),
    /// Device-readable guest memory the caller allocated and filled ([`Vmm::alloc`],
    /// [`Vmm::write_mem`]) and keeps: it is not freed when the request completes (a guest's
    /// page-cache pages, written by a load generator once rather than for every request).
    Guest(u64, u32),
}

/// A completed request.
#[derive(Clone, Debug)]
pub struct Completion {
    pub head: u16,
    /// Position of this completion in its queue's used ring (0 for the first request the
    /// device completed on that queue): the order in which the device returned chains.
    pub seq: u64,
    /// Used length reported by the device.
    pub len: u32,
    /// The first `len` bytes of the writable buffers, concatenated.
    pub data: Vec<u8>,
}

struct InFlight {
    descs: Vec<u16>,
    bufs: Vec<(u64, u64)>,
    writable: Vec<(u64, u32)>,
}

struct Queue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    kick: EventFd,
    call: EventFd,
    free: Vec<u16>,
    avail_idx: u16,
    used_seen: u16,
    /// Used-ring entries reaped so far.
    reaped: u64,
    inflight: HashMap<u16, InFlight>,
    done: HashMap<u16, Completion>,
}

/// A vhost-user frontend driving one virtio-fs device.
pub struct Vmm {
    fe: Frontend,
    mem: GuestMemoryMmap<()>,
    /// (guest address, size, host address, memfd) of every region.
    regions: Vec<(u64, u64, u64, File)>,
    queues: Vec<Queue>,
    free_mem: Vec<(u64, u64)>,
    /// Virtio features acked.
    pub features: u64,
    /// Protocol features acked.
    pub protocol_features: VhostUserProtocolFeatures,
    /// Queues the device reports (`GET_QUEUE_NUM`).
    pub device_queues: u64,
    /// Raw config space (tag + num_request_queues), if the device offers CONFIG.
    pub config: Option<Vec<u8>>,
    /// Kicks sent (a Linux guest, and so this VMM, skips the kick when the device's
    /// `avail_event` says it is still looking at the queue).
    pub kicks: u64,
    /// [`VmmConfig::reply_cap`].
    reply_cap: usize,
    /// [`VmmConfig::zero_reply_buffers`].
    zero_reply_buffers: bool,
}

fn memfd(size: u64) -> io::Result<File> {
    let name = CString::new("boxfs-test-guest").map_err(io::Error::other)?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

fn vh(e: vhost::Error) -> io::Error {
    io::Error::other(format!("vhost-user: {e}"))
}

impl Vmm {
    /// Connects to the device at `path` (retrying for up to 5 s while it starts) and sets up
    /// memory and queues.
    pub fn connect(path: &Path, cfg: VmmConfig) -> io::Result<Vmm> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let fe = loop {
            match Frontend::connect(path, 64) {
                Ok(fe) => break fe,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(vh(e)),
            }
        };
        Self::setup(fe, cfg)
    }

    fn setup(mut fe: Frontend, cfg: VmmConfig) -> io::Result<Vmm> {
        fe.set_owner().map_err(vh)?;
        let offered = fe.get_features().map_err(vh)?;
        let mut want = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if cfg.event_idx {
            want |= VIRTIO_RING_F_EVENT_IDX;
        }
        let features = offered & want;
        fe.set_features(features).map_err(vh)?;
        let pf = fe.get_protocol_features().map_err(vh)?;
        let pf = pf
            & (VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
                | VhostUserProtocolFeatures::DEVICE_STATE);
        fe.set_protocol_features(pf).map_err(vh)?;
        if cfg.reply_ack && pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let device_queues = if pf.contains(VhostUserProtocolFeatures::MQ) {
            fe.get_queue_num().map_err(vh)?
        } else {
            2
        };
        let config = if pf.contains(VhostUserProtocolFeatures::CONFIG) {
            let buf = [0u8; 40];
            let (_, payload) = fe
                .get_config(0, 40, VhostUserConfigFlags::WRITABLE, &buf)
                .map_err(vh)?;
            Some(payload)
        } else {
            None
        };

        let memfd = memfd(cfg.mem_size)?;
        let region = MmapRegion::<()>::from_file(
            FileOffset::new(memfd.try_clone()?, 0),
            cfg.mem_size as usize,
        )
        .map_err(io::Error::other)?;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| io::Error::other("bad guest region"))?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(io::Error::other)?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(io::Error::other)? as u64;
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: cfg.mem_size,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: memfd.as_raw_fd(),
        }])
        .map_err(vh)?;

        let nq = cfg.queues.unwrap_or(device_queues as usize).min(64);
        let mut queues = Vec::with_capacity(nq);
        let n = u64::from(cfg.queue_size);
        for q in 0..nq {
            let base = q as u64 * 0x10000;
            let desc = base;
            let avail = desc + 16 * n;
            let used = (avail + 6 + 2 * n + 4095) & !4095;
            let queue = Queue {
                size: cfg.queue_size,
                desc,
                avail,
                used,
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
                free: (0..cfg.queue_size).rev().collect(),
                avail_idx: 0,
                used_seen: 0,
                reaped: 0,
                inflight: HashMap::new(),
                done: HashMap::new(),
            };
            fe.set_vring_num(q, cfg.queue_size).map_err(vh)?;
            fe.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: cfg.queue_size,
                    queue_size: cfg.queue_size,
                    flags: 0,
                    desc_table_addr: host + desc,
                    used_ring_addr: host + used,
                    avail_ring_addr: host + avail,
                    log_addr: None,
                },
            )
            .map_err(vh)?;
            fe.set_vring_base(q, 0).map_err(vh)?;
            fe.set_vring_call(q, &queue.call).map_err(vh)?;
            fe.set_vring_kick(q, &queue.kick).map_err(vh)?;
            if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                fe.set_vring_enable(q, true).map_err(vh)?;
            }
            queues.push(queue);
        }

        Ok(Vmm {
            fe,
            mem,
            regions: vec![(0, cfg.mem_size, host, memfd)],
            queues,
            free_mem: vec![(RING_AREA, cfg.mem_size - RING_AREA)],
            features,
            protocol_features: pf,
            device_queues,
            config,
            kicks: 0,
            reply_cap: cfg.reply_cap,
            zero_reply_buffers: cfg.zero_reply_buffers,
        })
    }

    /// Stops every queue as a VMM does before saving the device state (`GET_VRING_BASE`);
    /// returns each queue's next available index.
    pub fn stop_queues(&mut self) -> io::Result<Vec<u32>> {
        (0..self.queues.len())
            .map(|q| self.fe.get_vring_base(q).map_err(vh))
            .collect()
    }

    /// Starts the queues again after [`stop_queues`](Self::stop_queues) (a migration that
    /// failed: the VMM resumes the guest on the source), from the bases it returned, and kicks
    /// each so requests published meanwhile are seen.
    pub fn restart_queues(&mut self, bases: &[u32]) -> io::Result<()> {
        for (q, base) in bases.iter().enumerate() {
            self.fe.set_vring_base(q, *base as u16).map_err(vh)?;
            self.fe
                .set_vring_call(q, &self.queues[q].call)
                .map_err(vh)?;
            self.fe
                .set_vring_kick(q, &self.queues[q].kick)
                .map_err(vh)?;
            self.queues[q].kick.write(1)?;
        }
        Ok(())
    }

    /// Saves the device state as QEMU does (`SET_DEVICE_STATE_FD` with the write end of a
    /// pipe, read to its end, then `CHECK_DEVICE_STATE`). Stop the queues first. `Err` if the
    /// device refuses the transfer or reports it failed.
    pub fn save_state(&mut self) -> io::Result<Vec<u8>> {
        use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};
        let (r, w) = pipe()?;
        let back = self
            .fe
            .set_device_state_fd(
                VhostTransferStateDirection::SAVE,
                VhostTransferStatePhase::STOPPED,
                w,
            )
            .map_err(vh)?;
        if back.is_some() {
            return Err(io::Error::other(
                "the device returned its own state channel",
            ));
        }
        let mut data = Vec::new();
        io::Read::read_to_end(&mut File::from(r), &mut data)?;
        self.fe.check_device_state().map_err(vh)?;
        Ok(data)
    }

    /// Loads a device state as QEMU does on the destination (`SET_DEVICE_STATE_FD` with the
    /// read end of a pipe, `data` written into it, then `CHECK_DEVICE_STATE`).
    pub fn load_state(&mut self, data: &[u8]) -> io::Result<()> {
        use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};
        let (r, w) = pipe()?;
        self.fe
            .set_device_state_fd(
                VhostTransferStateDirection::LOAD,
                VhostTransferStatePhase::STOPPED,
                r,
            )
            .map_err(vh)?;
        let mut w = File::from(w);
        // The device may stop reading early (a stream it rejects): a broken pipe is its
        // answer, reported by CHECK_DEVICE_STATE.
        match io::Write::write_all(&mut w, data) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(e),
        }
        drop(w);
        self.fe.check_device_state().map_err(vh)
    }

    /// Number of queues set up.
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Size of the first (main) guest memory region; addresses at or above it are outside
    /// guest memory unless [`add_region`](Self::add_region) put something there.
    pub fn mem_size(&self) -> u64 {
        self.regions[0].1
    }

    fn region_info(r: &(u64, u64, u64, File)) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: r.0,
            memory_size: r.1,
            userspace_addr: r.2,
            mmap_offset: 0,
            mmap_handle: r.3.as_raw_fd(),
        }
    }

    /// Sends the whole memory table again (SET_MEM_TABLE).
    pub fn resend_mem_table(&mut self) -> io::Result<()> {
        let infos: Vec<_> = self.regions.iter().map(Self::region_info).collect();
        self.fe.set_mem_table(&infos).map_err(vh)
    }

    /// Hot-adds a region of `size` bytes after the existing ones (ADD_MEM_REG); returns its
    /// guest address. The region is not used by the allocator.
    pub fn add_region(&mut self, size: u64) -> io::Result<u64> {
        let last = self.regions.last().map(|r| r.0 + r.1).unwrap_or(0);
        let gpa = (last + (1 << 30) - 1) & !((1 << 30) - 1);
        let file = memfd(size)?;
        let region =
            MmapRegion::<()>::from_file(FileOffset::new(file.try_clone()?, 0), size as usize)
                .map_err(io::Error::other)?;
        let region = GuestRegionMmap::new(region, GuestAddress(gpa))
            .ok_or_else(|| io::Error::other("bad guest region"))?;
        let host = region.as_ptr() as u64;
        self.mem = self
            .mem
            .insert_region(std::sync::Arc::new(region))
            .map_err(io::Error::other)?;
        self.regions.push((gpa, size, host, file));
        let info = Self::region_info(self.regions.last().expect("just pushed"));
        self.fe.add_mem_region(&info).map_err(vh)?;
        Ok(gpa)
    }

    /// Hot-removes the region at guest address `gpa` (REM_MEM_REG).
    pub fn remove_region(&mut self, gpa: u64) -> io::Result<()> {
        let pos = self
            .regions
            .iter()
            .position(|r| r.0 == gpa)
            .ok_or_else(|| io::Error::other("no such region"))?;
        let info = Self::region_info(&self.regions[pos]);
        self.fe.remove_mem_region(&info).map_err(vh)?;
        let (mem, _) = self
            .mem
            .remove_region(GuestAddress(gpa), self.regions[pos].1)
            .map_err(io::Error::other)?;
        self.mem = mem;
        self.regions.remove(pos);
        Ok(())
    }

    /// Writes guest memory.
    pub fn write_mem(&self, addr: u64, data: &[u8]) {
        self.mem
            .write_slice(data, GuestAddress(addr))
            .expect("write guest memory");
    }

    /// The frontend, for sending vhost-user messages directly.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.fe
    }

    /// The kick descriptor of queue `q` (to see whether the device has taken a kick).
    #[allow(dead_code)]
    pub fn kick_fd(&self, q: usize) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.queues[q].kick.as_raw_fd()
    }

    /// The tag from the config space, if offered.
    pub fn tag(&self) -> Option<String> {
        let c = self.config.as_ref()?;
        let end = c[..36].iter().position(|&b| b == 0).unwrap_or(36);
        Some(String::from_utf8_lossy(&c[..end]).into_owned())
    }

    // ---- guest memory ----

    /// Allocates `len` bytes of guest memory (64-byte aligned).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = (len.max(1) + 63) & !63;
        let pos = self
            .free_mem
            .iter()
            .position(|&(_, l)| l >= len)
            .expect("test VMM out of guest memory");
        let (start, l) = self.free_mem[pos];
        if l == len {
            self.free_mem.remove(pos);
        } else {
            self.free_mem[pos] = (start + len, l - len);
        }
        start
    }

    /// Returns memory from [`alloc`](Self::alloc).
    pub fn free(&mut self, start: u64, len: u64) {
        let len = (len.max(1) + 63) & !63;
        let pos = self.free_mem.partition_point(|&(s, _)| s < start);
        self.free_mem.insert(pos, (start, len));
        // Coalesce with neighbours.
        if pos + 1 < self.free_mem.len() {
            let (s, l) = self.free_mem[pos];
            let (ns, nl) = self.free_mem[pos + 1];
            if s + l == ns {
                self.free_mem[pos] = (s, l + nl);
                self.free_mem.remove(pos + 1);
            }
        }
        if pos > 0 {
            let (ps, pl) = self.free_mem[pos - 1];
            let (s, l) = self.free_mem[pos];
            if ps + pl == s {
                self.free_mem[pos - 1] = (ps, pl + l);
                self.free_mem.remove(pos);
            }
        }
    }

    /// Allocates guest memory holding `data` (never freed: for raw chains).
    pub fn alloc_bytes(&mut self, data: &[u8]) -> u64 {
        let a = self.alloc(data.len() as u64);
        self.mem
            .write_slice(data, GuestAddress(a))
            .expect("write guest memory");
        a
    }

    /// Reads guest memory.
    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read guest memory");
        v
    }

    /// Writes an indirect descriptor table into fresh guest memory and returns its address;
    /// `Next::Pos` is relative to the table.
    pub fn write_table(&mut self, descs: &[RawDesc]) -> u64 {
        let mut bytes = Vec::with_capacity(descs.len() * 16);
        for d in descs {
            let next = match d.next {
                Next::None => 0,
                Next::Pos(p) => p as u16,
                Next::Index(i) => i,
            };
            bytes.extend_from_slice(&d.addr.to_le_bytes());
            bytes.extend_from_slice(&d.len.to_le_bytes());
            bytes.extend_from_slice(&d.flags.to_le_bytes());
            bytes.extend_from_slice(&next.to_le_bytes());
        }
        self.alloc_bytes(&bytes)
    }

    // ---- queues ----

    fn write_desc(&self, q: usize, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let qu = &self.queues[q];
        let at = GuestAddress(qu.desc + 16 * u64::from(idx));
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, at).expect("write descriptor");
    }

    /// Publishes `head` in the available ring and kicks the device.
    pub fn publish(&mut self, q: usize, head: u16) {
        let qu = &mut self.queues[q];
        let slot = u64::from(qu.avail_idx % qu.size);
        let (avail, idx) = (qu.avail, qu.avail_idx.wrapping_add(1));
        qu.avail_idx = idx;
        self.mem
            .write_obj(head.to_le(), GuestAddress(avail + 4 + 2 * slot))
            .expect("write avail ring");
        fence(Ordering::SeqCst);
        self.mem
            .write_obj(idx.to_le(), GuestAddress(avail + 2))
            .expect("write avail idx");
        fence(Ordering::SeqCst);
        if self.features & VIRTIO_RING_F_EVENT_IDX != 0 {
            // vring_need_event(avail_event, new, old), as the Linux driver decides.
            let qu = &self.queues[q];
            let at = qu.used + 4 + 8 * u64::from(qu.size);
            let event: u16 =
                u16::from_le(self.mem.read_obj(GuestAddress(at)).expect("avail_event"));
            let old = idx.wrapping_sub(1);
            if idx.wrapping_sub(event).wrapping_sub(1) >= idx.wrapping_sub(old) {
                return;
            }
        }
        self.kicks += 1;
        self.queues[q].kick.write(1).expect("kick");
    }

    /// Publishes an arbitrary avail-ring entry (the head may be out of range) and kicks.
    pub fn publish_raw_head(&mut self, q: usize, head: u16) {
        self.publish(q, head);
    }

    /// Submits a well-formed chain; returns its head index.
    pub fn submit(&mut self, q: usize, segs: &[Seg]) -> u16 {
        let head = self.prepare(q, segs);
        self.publish(q, head);
        head
    }

    /// Submits several well-formed chains at once, as a guest adding a batch does: every
    /// chain is in the available ring before the index moves (once) and the device is kicked
    /// (at most once). Returns their head indexes.
    pub fn submit_many(&mut self, q: usize, reqs: &[Vec<Seg>]) -> Vec<u16> {
        let heads: Vec<u16> = reqs.iter().map(|segs| self.prepare(q, segs)).collect();
        let qu = &self.queues[q];
        let (avail, size, old) = (qu.avail, qu.size, qu.avail_idx);
        for (i, &head) in heads.iter().enumerate() {
            let slot = u64::from(old.wrapping_add(i as u16) % size);
            self.mem
                .write_obj(head.to_le(), GuestAddress(avail + 4 + 2 * slot))
                .expect("write avail ring");
        }
        let idx = old.wrapping_add(heads.len() as u16);
        self.queues[q].avail_idx = idx;
        fence(Ordering::SeqCst);
        self.mem
            .write_obj(idx.to_le(), GuestAddress(avail + 2))
            .expect("write avail idx");
        fence(Ordering::SeqCst);
        self.kicks += 1;
        self.queues[q].kick.write(1).expect("kick");
        heads
    }

    /// Lays out a well-formed chain in the descriptor table without publishing it.
    fn prepare(&mut self, q: usize, segs: &[Seg]) -> u16 {
        let mut bufs = Vec::new();
        let mut writable = Vec::new();
        let mut laid = Vec::new();
        for s in segs {
            match s {
                Seg::R(data) => {
                    let a = self.alloc(data.len() as u64);
                    self.mem
                        .write_slice(data, GuestAddress(a))
                        .expect("write request");
                    bufs.push((a, data.len() as u64));
                    laid.push((a, data.len() as u32, 0u16));
                }
                Seg::W(len) => {
                    let a = self.alloc(u64::from(*len));
                    if self.zero_reply_buffers {
                        let zeros = vec![0u8; *len as usize];
                        self.mem
                            .write_slice(&zeros, GuestAddress(a))
                            .expect("zero reply buffer");
                    }
                    bufs.push((a, u64::from(*len)));
                    writable.push((a, *len));
                    laid.push((a, *len, F_WRITE));
                }
                Seg::Guest(a, len) => laid.push((*a, *len, 0u16)),
            }
        }
        let n = laid.len();
        let descs: Vec<u16> = (0..n)
            .map(|_| {
                self.queues[q]
                    .free
                    .pop()
                    .expect("test VMM out of descriptors")
            })
            .collect();
        for (i, &(a, len, flags)) in laid.iter().enumerate() {
            let (flags, next) = if i + 1 < n {
                (flags | F_NEXT, descs[i + 1])
            } else {
                (flags, 0)
            };
            self.write_desc(q, descs[i], a, len, flags, next);
        }
        let head = descs[0];
        self.queues[q].inflight.insert(
            head,
            InFlight {
                descs,
                bufs,
                writable,
            },
        );
        head
    }

    /// Submits a chain of raw descriptors (buffers are the caller's; nothing is freed).
    /// Returns the head index.
    pub fn submit_raw(&mut self, q: usize, raw: &[RawDesc]) -> u16 {
        let descs: Vec<u16> = (0..raw.len())
            .map(|_| {
                self.queues[q]
                    .free
                    .pop()
                    .expect("test VMM out of descriptors")
            })
            .collect();
        for (i, d) in raw.iter().enumerate() {
            let next = match d.next {
                Next::None => 0,
                Next::Pos(p) => descs[p],
                Next::Index(x) => x,
            };
            self.write_desc(q, descs[i], d.addr, d.len, d.flags, next);
        }
        let head = descs[0];
        // Remember the writable buffers that lie inside guest memory, to read replies.
        let size = self.mem_size();
        let writable = raw
            .iter()
            .filter(|d| d.flags & F_WRITE != 0 && d.addr.saturating_add(u64::from(d.len)) <= size)
            .map(|d| (d.addr, d.len))
            .collect();
        self.queues[q].inflight.insert(
            head,
            InFlight {
                descs,
                bufs: Vec::new(),
                writable,
            },
        );
        self.publish(q, head);
        head
    }

    /// Submits `req` (a whole FUSE request) with a reply buffer of `reply` bytes, in a chain
    /// that breaks the virtio rules as `kind` says. Returns the head index and the reply
    /// buffer's address. A device must return such a chain unused (used length 0).
    pub fn submit_malformed(&mut self, q: usize, kind: Malformed, req: &[u8], reply: u32) -> u16 {
        let r = self.alloc_bytes(req);
        let w = self.alloc(u64::from(reply));
        let rd = RawDesc {
            addr: r,
            len: req.len() as u32,
            flags: 0,
            next: Next::None,
        };
        let wr = RawDesc {
            addr: w,
            len: reply,
            flags: F_WRITE,
            next: Next::None,
        };
        let raw = match kind {
            // The reply buffer first, the request after it.
            Malformed::WritableFirst => vec![
                RawDesc {
                    flags: F_WRITE | F_NEXT,
                    next: Next::Pos(1),
                    ..wr
                },
                rd,
            ],
            // A whole request and reply, and then a `next` past the descriptor table.
            Malformed::NextOutOfRange => vec![
                RawDesc {
                    flags: F_NEXT,
                    next: Next::Pos(1),
                    ..rd
                },
                RawDesc {
                    flags: F_WRITE | F_NEXT,
                    next: Next::Index(0xfff0),
                    ..wr
                },
            ],
            // A whole request and a reply buffer that points back at itself: longer than the
            // queue.
            Malformed::Loop => vec![
                RawDesc {
                    flags: F_NEXT,
                    next: Next::Pos(1),
                    ..rd
                },
                RawDesc {
                    flags: F_WRITE | F_NEXT,
                    next: Next::Pos(1),
                    ..wr
                },
            ],
        };
        self.submit_raw(q, &raw)
    }

    /// Collects new used-ring entries without blocking.
    fn reap(&mut self, q: usize) {
        loop {
            let (used, size, seen, avail) = {
                let qu = &self.queues[q];
                (qu.used, qu.size, qu.used_seen, qu.avail)
            };
            fence(Ordering::SeqCst);
            let idx: u16 = self
                .mem
                .read_obj::<u16>(GuestAddress(used + 2))
                .expect("read used idx");
            if idx == seen {
                return;
            }
            let slot = u64::from(seen % size);
            let id: u32 = self
                .mem
                .read_obj(GuestAddress(used + 4 + 8 * slot))
                .expect("read used elem");
            let len: u32 = self
                .mem
                .read_obj(GuestAddress(used + 8 + 8 * slot))
                .expect("read used elem");
            let seen = seen.wrapping_add(1);
            self.queues[q].used_seen = seen;
            // used_event: ask to be notified for the next entry.
            self.mem
                .write_obj(seen, GuestAddress(avail + 4 + 2 * u64::from(size)))
                .expect("write used_event");
            let head = id as u16;
            let mut data = Vec::new();
            if let Some(fl) = self.queues[q].inflight.remove(&head) {
                let mut left = (len as usize).min(self.reply_cap);
                for &(a, l) in &fl.writable {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(l as usize);
                    data.extend_from_slice(&self.read_mem(a, take));
                    left -= take;
                }
                for &(a, l) in &fl.bufs {
                    self.free(a, l);
                }
                self.queues[q].free.extend(fl.descs);
            }
            let seq = self.queues[q].reaped;
            self.queues[q].reaped += 1;
            self.queues[q].done.insert(
                head,
                Completion {
                    head,
                    seq,
                    len,
                    data,
                },
            );
        }
    }

    fn wait_call(&mut self, q: usize, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.queues[q].call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(20) as i32;
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        let _ = self.queues[q].call.read();
    }

    /// Waits for the completion of `head`.
    pub fn wait(&mut self, q: usize, head: u16, timeout: Duration) -> Option<Completion> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap(q);
            if let Some(c) = self.queues[q].done.remove(&head) {
                return Some(c);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.wait_call(q, deadline - now);
        }
    }

    /// Waits for any completion on queue `q`.
    pub fn wait_any(&mut self, q: usize, timeout: Duration) -> Option<Completion> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap(q);
            if let Some(&head) = self.queues[q].done.keys().next() {
                return self.queues[q].done.remove(&head);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.wait_call(q, deadline - now);
        }
    }

    /// The call eventfd of queue `q` (the device signals completions on it), for callers
    /// that wait for completions themselves, e.g. one thread per queue sharing this VMM
    /// behind a lock that they release while they sleep.
    pub fn call_fd(&self, q: usize) -> std::os::fd::RawFd {
        self.queues[q].call.as_raw_fd()
    }

    /// Requests submitted on `q` and not yet completed.
    pub fn in_flight(&self, q: usize) -> usize {
        self.queues[q].inflight.len()
    }

    /// Submits and waits (5 s).
    pub fn call(&mut self, q: usize, segs: &[Seg]) -> Option<Completion> {
        let head = self.submit(q, segs);
        self.wait(q, head, Duration::from_secs(5))
    }
}

// ---------------------------------------------------------------------------------------------
// FUSE over the test VMM
// ---------------------------------------------------------------------------------------------

/// FUSE opcodes.
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FLUSH: u32 = 25;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const CREATE: u32 = 35;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const READDIRPLUS: u32 = 44;
}

/// Size of `fuse_out_header`.
pub const OUT_HEADER: u32 = size_of::<OutHeader>() as u32;
/// FUSE_INIT flags a Linux 6.1 guest offers (a representative subset).
pub const GUEST_INIT_FLAGS: u32 = 0x1 | 0x8 | 0x400 | 0x800 | 0x2000 | 0x4000 | 0x8000 | (1 << 22);

/// A FUSE reply: the header and the bytes after it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub header: OutHeader,
    pub body: Vec<u8>,
}

impl Reply {
    /// Parses a completion; `None` if it holds no complete header.
    pub fn parse(c: &Completion) -> Option<Reply> {
        if c.data.len() < OUT_HEADER as usize {
            return None;
        }
        let header = *OutHeader::from_slice(&c.data[..OUT_HEADER as usize])?;
        Some(Reply {
            header,
            body: c.data[OUT_HEADER as usize..].to_vec(),
        })
    }

    /// `Ok(body)` or `Err(errno)`.
    pub fn result(self) -> Result<Vec<u8>, i32> {
        if self.header.error != 0 {
            Err(-self.header.error)
        } else {
            Ok(self.body)
        }
    }
}

/// Reads a `T` from the front of `b`.
pub fn obj<T: ByteValued>(b: &[u8]) -> T {
    *T::from_slice(&b[..size_of::<T>()]).expect("reply too short")
}

/// Builds a request header plus body.
pub fn request(opcode: u32, unique: u64, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let h = InHeader {
        len: (size_of::<InHeader>() + body) as u32,
        opcode,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        ..Default::default()
    };
    let mut v = h.as_slice().to_vec();
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

/// A directory entry from READDIRPLUS.
#[derive(Debug, Clone)]
pub struct DirEntryPlus {
    pub name: Vec<u8>,
    pub ino: u64,
    pub off: u64,
    pub typ: u32,
    pub entry: EntryOut,
}

/// A FUSE client on request queue 1 of a [`Vmm`].
pub struct FuseClient {
    pub vmm: Vmm,
    pub unique: u64,
    /// Request queue used.
    pub queue: usize,
    pub timeout: Duration,
}

fn cstr(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

impl FuseClient {
    /// Wraps a VMM; requests go to queue 1 (the first request queue).
    pub fn new(vmm: Vmm) -> FuseClient {
        FuseClient {
            vmm,
            unique: 0,
            queue: 1,
            timeout: Duration::from_secs(10),
        }
    }

    /// Connects and negotiates INIT.
    pub fn connect(path: &Path) -> io::Result<FuseClient> {
        let vmm = Vmm::connect(path, VmmConfig::default())?;
        let mut c = FuseClient::new(vmm);
        c.init().map_err(io::Error::from_raw_os_error)?;
        Ok(c)
    }

    /// Next request id.
    pub fn next_unique(&mut self) -> u64 {
        self.unique += 2;
        self.unique
    }

    /// Sends `opcode` with the given body parts, a reply buffer of `out` bytes (0 = no reply
    /// buffer), and waits for the completion.
    pub fn raw(&mut self, opcode: u32, nodeid: u64, parts: &[&[u8]], out: u32) -> Completion {
        let unique = self.next_unique();
        let req = request(opcode, unique, nodeid, parts);
        let mut segs = vec![Seg::R(req)];
        if out > 0 {
            segs.push(Seg::W(out));
        }
        let q = self.queue;
        let head = self.vmm.submit(q, &segs);
        self.vmm
            .wait(q, head, self.timeout)
            .expect("device did not complete the request")
    }

    /// Sends a request and decodes the reply (`Err(errno)` for error replies).
    pub fn call(
        &mut self,
        opcode: u32,
        nodeid: u64,
        parts: &[&[u8]],
        out: u32,
    ) -> Result<Vec<u8>, i32> {
        let c = self.raw(opcode, nodeid, parts, out);
        let r = Reply::parse(&c).expect("reply without a FUSE header");
        assert_eq!(
            r.header.len, c.len,
            "out header len must match the used length"
        );
        r.result()
    }

    pub fn init(&mut self) -> Result<InitOut, i32> {
        self.init_version(7, 38)
    }

    /// FUSE_INIT with the given protocol version.
    pub fn init_version(&mut self, major: u32, minor: u32) -> Result<InitOut, i32> {
        self.init_offering(major, minor, GUEST_INIT_FLAGS)
    }

    /// FUSE_INIT with the given protocol version, offering `flags` (low 32 bits).
    pub fn init_offering(&mut self, major: u32, minor: u32, flags: u32) -> Result<InitOut, i32> {
        let init = InitIn {
            major,
            minor,
            max_readahead: 128 << 10,
            flags: flags | (1 << 30),
        };
        let init2 = InitIn2::default();
        let b = self.call(op::INIT, 0, &[init.as_slice(), init2.as_slice()], 256)?;
        let mut out = [0u8; size_of::<InitOut>()];
        let n = b.len().min(out.len());
        out[..n].copy_from_slice(&b[..n]);
        Ok(obj(&out))
    }

    /// FUSE_DESTROY (what the kernel sends on unmount).
    pub fn destroy(&mut self) -> Result<(), i32> {
        self.call(op::DESTROY, 0, &[], 64).map(|_| ())
    }

    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<(), i32> {
        let n = cstr(name);
        self.call(op::UNLINK, parent, &[&n], 64).map(|_| ())
    }

    /// LOOKUP as the guest kernel takes it: a negative entry (node id 0, which a backend
    /// answers for a miss it lets the guest cache) is `ENOENT`.
    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        match self.lookup_raw(parent, name) {
            Ok(e) if e.nodeid == 0 => Err(libc::ENOENT),
            r => r,
        }
    }

    /// LOOKUP's reply as sent: a negative entry stays an entry with node id 0.
    pub fn lookup_raw(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let n = cstr(name);
        self.call(op::LOOKUP, parent, &[&n], 256).map(|b| obj(&b))
    }

    pub fn getattr(&mut self, ino: u64) -> Result<AttrOut, i32> {
        let g = GetattrIn::default();
        self.call(op::GETATTR, ino, &[g.as_slice()], 256)
            .map(|b| obj(&b))
    }

    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<AttrOut, i32> {
        let s = SetattrIn {
            valid: 1 << 3, // FATTR_SIZE
            size,
            ..Default::default()
        };
        self.call(op::SETATTR, ino, &[s.as_slice()], 256)
            .map(|b| obj(&b))
    }

    pub fn mkdir(&mut self, parent: u64, name: &str, mode: u32) -> Result<EntryOut, i32> {
        let m = MkdirIn { mode, umask: 0 };
        let n = cstr(name);
        self.call(op::MKDIR, parent, &[m.as_slice(), &n], 256)
            .map(|b| obj(&b))
    }

    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: u32,
    ) -> Result<(EntryOut, OpenOut), i32> {
        let c = CreateIn {
            flags,
            mode,
            umask: 0,
            fuse_flags: 0,
        };
        let n = cstr(name);
        let b = self.call(op::CREATE, parent, &[c.as_slice(), &n], 512)?;
        Ok((obj(&b), obj(&b[size_of::<EntryOut>()..])))
    }

    pub fn open(&mut self, ino: u64, flags: u32) -> Result<OpenOut, i32> {
        let o = OpenIn {
            flags,
            fuse_flags: 0,
        };
        self.call(op::OPEN, ino, &[o.as_slice()], 256)
            .map(|b| obj(&b))
    }

    pub fn opendir(&mut self, ino: u64) -> Result<OpenOut, i32> {
        let o = OpenIn {
            flags: libc::O_RDONLY as u32,
            fuse_flags: 0,
        };
        self.call(op::OPENDIR, ino, &[o.as_slice()], 256)
            .map(|b| obj(&b))
    }

    pub fn read(&mut self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let r = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(op::READ, ino, &[r.as_slice()], OUT_HEADER + size)
    }

    pub fn write(&mut self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let w = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        self.call(op::WRITE, ino, &[w.as_slice(), data], 256)
            .map(|b| obj::<WriteOut>(&b).size)
    }

    pub fn fsync(&mut self, ino: u64, fh: u64) -> Result<(), i32> {
        let f = FsyncIn {
            fh,
            fsync_flags: 0,
            padding: 0,
        };
        self.call(op::FSYNC, ino, &[f.as_slice()], 64).map(|_| ())
    }

    pub fn release(&mut self, ino: u64, fh: u64) -> Result<(), i32> {
        let r = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(op::RELEASE, ino, &[r.as_slice()], 64).map(|_| ())
    }

    pub fn releasedir(&mut self, ino: u64, fh: u64) -> Result<(), i32> {
        let r = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(op::RELEASEDIR, ino, &[r.as_slice()], 64)
            .map(|_| ())
    }

    pub fn statfs(&mut self, ino: u64) -> Result<Kstatfs, i32> {
        self.call(op::STATFS, ino, &[], 256).map(|b| obj(&b))
    }

    /// Sends FORGET on the hiprio queue (no reply expected).
    pub fn forget(&mut self, ino: u64, nlookup: u64) {
        let f = ForgetIn { nlookup };
        let unique = self.next_unique();
        let req = request(op::FORGET, unique, ino, &[f.as_slice()]);
        let head = self.vmm.submit(0, &[Seg::R(req)]);
        let c = self
            .vmm
            .wait(0, head, self.timeout)
            .expect("forget not completed");
        assert_eq!(c.len, 0);
    }

    /// Sends BATCH_FORGET on the hiprio queue.
    pub fn batch_forget(&mut self, items: &[(u64, u64)]) {
        let b = BatchForgetIn {
            count: items.len() as u32,
            dummy: 0,
        };
        let mut body = b.as_slice().to_vec();
        for &(nodeid, nlookup) in items {
            body.extend_from_slice(ForgetOne { nodeid, nlookup }.as_slice());
        }
        let unique = self.next_unique();
        let req = request(op::BATCH_FORGET, unique, 0, &[&body]);
        let head = self.vmm.submit(0, &[Seg::R(req)]);
        let c = self
            .vmm
            .wait(0, head, self.timeout)
            .expect("batch forget not completed");
        assert_eq!(c.len, 0);
    }

    /// One READDIRPLUS call.
    pub fn readdirplus(
        &mut self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<DirEntryPlus>, i32> {
        let r = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let b = self.call(op::READDIRPLUS, ino, &[r.as_slice()], OUT_HEADER + size)?;
        Ok(parse_direntplus(&b))
    }

    /// Lists a whole directory with READDIRPLUS.
    pub fn list(&mut self, ino: u64) -> Result<Vec<DirEntryPlus>, i32> {
        let fh = self.opendir(ino)?.fh;
        let mut all = Vec::new();
        let mut off = 0;
        loop {
            let batch = self.readdirplus(ino, fh, off, 4096)?;
            match batch.last() {
                None => break,
                Some(last) => off = last.off,
            }
            all.extend(batch);
        }
        self.releasedir(ino, fh)?;
        Ok(all)
    }
}

/// Parses a READDIRPLUS reply body.
pub fn parse_direntplus(mut b: &[u8]) -> Vec<DirEntryPlus> {
    let mut out = Vec::new();
    let es = size_of::<EntryOut>();
    let ds = size_of::<Dirent>();
    while b.len() >= es + ds {
        let entry: EntryOut = obj(b);
        let d: Dirent = obj(&b[es..]);
        let name_start = es + ds;
        let name_end = name_start + d.namelen as usize;
        if name_end > b.len() {
            break;
        }
        let name = b[name_start..name_end].to_vec();
        out.push(DirEntryPlus {
            name,
            ino: d.ino,
            off: d.off,
            typ: d.type_,
            entry,
        });
        let total = (name_end + 7) & !7;
        b = &b[total.min(b.len())..];
    }
    out
}
