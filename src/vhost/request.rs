//! One virtqueue request: validate the descriptor chain, hand it to the FUSE server, and make
//! sure the guest gets an answer (or the chain back) whatever the request looks like.
//!
//! `fuse_backend_rs::api::server::Server` 0.14 returns `Err` without writing any reply for many
//! malformed requests (short bodies, names without NUL, reply buffers too small to encode the
//! answer, INIT with `INIT_EXT` but no `InitIn2`, ...), and it evaluates an unchecked
//! `Opcode::from(u32)` for every request. This module therefore checks every request before the
//! server sees it and writes an error reply itself when the server gives up:
//!
//! * the chain cannot be mapped (descriptors outside guest memory, bad indirect tables) or is
//!   shorter than a `fuse_in_header`: the chain is returned with a used length of 0 ("dropped"),
//!   because there is no `unique` to answer;
//! * unknown opcodes get `ENOSYS` before the server sees them;
//! * a header whose `len` is smaller than the header or larger than the readable bytes, a WRITE
//!   whose payload is shorter than its `size`, a READ or xattr request whose reply buffer cannot
//!   hold `size` bytes, or a reply buffer too small for a fixed-size reply all get `EINVAL`
//!   before the filesystem runs (so no side effect happens that the guest cannot learn about);
//! * a RENAME2 with flags other than `RENAME_NOREPLACE`, `RENAME_EXCHANGE` and
//!   `RENAME_WHITEOUT` gets `EINVAL`, as `renameat2` would answer (the server would silently
//!   drop the unknown bits and rename);
//! * a FORGET or BATCH_FORGET whose body is shorter than it claims is dropped (they have no
//!   reply);
//! * if the server still fails, or the filesystem panics, the request gets `EINVAL` (decode
//!   errors) or `EIO` (anything else).
//!
//! Before any of that, a chain that breaks the virtio rules is returned unused (used length 0):
//! a device-readable descriptor after a device-writable one, a `next` index past the
//! descriptor table, a chain longer than the table (a loop), or a broken indirect table. And
//! the FUSE session is enforced ([`super::session`]): a request before FUSE_INIT gets `EIO`
//! (or is dropped if it expects no reply), and INIT and DESTROY start and end the session.

use std::io::Write;
use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, BatchForgetIn, BmapOut, EntryOut, ForgetIn, ForgetOne, GetxattrIn, GetxattrOut,
    InHeader, InitIn, InitIn2, Kstatfs, LkOut, LseekOut, OpenOut, OutHeader, PollOut, ReadIn,
    Rename2In, WriteIn, WriteOut,
};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::session::{InitParams, Session};
use crate::SharedFs;

/// The dirty-page bitmap of guest memory: what the device writes is logged for the VMM
/// while it migrates the guest (`VHOST_F_LOG_ALL`), nothing otherwise.
pub(crate) type Log = vhost_user_backend::bitmap::BitmapMmapRegion;
/// Guest memory as the device sees it.
pub(crate) type Mem = GuestMemoryMmap<Log>;
/// A descriptor chain holding its own snapshot of guest memory, so it can move to a worker and
/// survive a memory-table update.
pub(crate) type Chain = DescriptorChain<Arc<Mem>>;

// FUSE opcodes (include/uapi/linux/fuse.h).
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const SYMLINK: u32 = 6;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const LINK: u32 = 13;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const GETXATTR: u32 = 22;
const LISTXATTR: u32 = 23;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const GETLK: u32 = 31;
const CREATE: u32 = 35;
const INTERRUPT: u32 = 36;
const BMAP: u32 = 37;
const DESTROY: u32 = 38;
const POLL: u32 = 40;
const NOTIFY_REPLY: u32 = 41;
const BATCH_FORGET: u32 = 42;
const READDIRPLUS: u32 = 44;
const RENAME2: u32 = 45;
const LSEEK: u32 = 46;

/// `FUSE_INIT_EXT`: the INIT body carries a second flags word (`InitIn2`).
const INIT_EXT: u32 = 1 << 30;

const IN_HEADER: usize = size_of::<InHeader>();
const OUT_HEADER: usize = size_of::<OutHeader>();

/// Whether `fuse_backend_rs` 0.14's server dispatches this opcode. Everything else is answered
/// with `ENOSYS` here, which also keeps the server's unchecked `Opcode::from` away from values
/// that are not enum variants (0, 7, 19).
fn dispatched(opcode: u32) -> bool {
    // 47 COPY_FILE_RANGE is not dispatched; 48/49 SETUPMAPPING/REMOVEMAPPING need a DAX window,
    // which this device does not offer.
    matches!(opcode, 1..=6 | 8..=18 | 20..=46)
}

/// Opcodes the guest expects no reply for.
fn no_reply(opcode: u32) -> bool {
    matches!(opcode, FORGET | BATCH_FORGET | INTERRUPT | NOTIFY_REPLY)
}

const FSYNC: u32 = 20;
const FSYNCDIR: u32 = 30;
const SETLKW: u32 = 33;
const FALLOCATE: u32 = 43;

/// Whether the request in `chain` is of a kind that can block for long on the host (data
/// syncs, blocking locks, allocation), judged from its opcode alone. Unreadable chains are
/// "fast": they are dropped or answered without touching the filesystem.
///
/// FLUSH and RELEASE (sent on every `close` in the guest) are *not* in the set: they are a
/// `close` on the host, fast on local filesystems, and handing them to a worker costs more
/// than they take (`benches/vs_virtiofsd.rs`: open/read 4 KiB/close 24k ops/s with them
/// offloaded, 37k served inline, on a 2-core host).
pub(crate) fn may_block(chain: &Chain, mem: &Mem) -> bool {
    use vm_memory::{Address, Bytes};
    let Some(first) = chain.clone().readable().next() else {
        return false;
    };
    if first.len() < 8 {
        return false;
    }
    let Some(at) = first.addr().checked_add(4) else {
        return false;
    };
    match mem.read_obj::<u32>(at) {
        Ok(op) => matches!(u32::from_le(op), FSYNC | FSYNCDIR | SETLKW | FALLOCATE),
        Err(_) => false,
    }
}

/// READ and WRITE requests of at least this many bytes are "bulk": with several requests in
/// flight they are worth a hand-off to a worker (a 1 MiB copy takes tens of microseconds, the
/// hand-off a few), so the vring thread keeps popping requests while they run.
pub(crate) const BULK_BYTES: u32 = 64 * 1024;

/// Whether the request in `chain` is a READ or WRITE of at least [`BULK_BYTES`], judged from
/// its header and the size field of its body. Unreadable or short chains are not bulk (they
/// are dropped or answered without touching the filesystem).
pub(crate) fn is_bulk(chain: &Chain, mem: &Mem) -> bool {
    // The FUSE header is 40 bytes; `size` is at byte 16 of both ReadIn and WriteIn.
    use std::io::Read as _;
    const SIZE_AT: usize = IN_HEADER + 16;
    let Ok(mut r) = Reader::from_descriptor_chain(mem, chain.clone()) else {
        return false;
    };
    let mut head = [0u8; SIZE_AT + 4];
    if r.read_exact(&mut head).is_err() {
        return false;
    }
    let op = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let size = u32::from_le_bytes([
        head[SIZE_AT],
        head[SIZE_AT + 1],
        head[SIZE_AT + 2],
        head[SIZE_AT + 3],
    ]);
    matches!(op, READ | WRITE) && size >= BULK_BYTES
}

/// What happened to one chain; the used length goes back to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The server answered (or the request needs no answer); `used` bytes were written.
    Served { used: u32 },
    /// The device answered with this errno itself (malformed request or server failure).
    ErrorReply { used: u32, errno: i32 },
    /// The chain is returned unanswered (nothing identifies the request, or no reply buffer).
    Dropped { reason: &'static str },
}

impl Outcome {
    /// Bytes written into the chain's device-writable buffers.
    pub(crate) fn used_len(self) -> u32 {
        match self {
            Outcome::Served { used } | Outcome::ErrorReply { used, .. } => used,
            Outcome::Dropped { .. } => 0,
        }
    }
}

/// Checks the virtio rules (virtio 1.2, 2.7.4 and 2.7.5.3) that virtio-queue 0.17 does not
/// enforce. Its iterator silently ends a chain at a `next` index past the table, at a loop
/// (after as many descriptors as the table has), at a nested or misaligned indirect table, or
/// where the lengths overflow, and it accepts device-readable descriptors after writable ones.
/// Such a chain must not be served as if it were whole: the last descriptor the iterator
/// yields still says `NEXT`.
fn chain_violation(chain: &Chain) -> Option<&'static str> {
    let mut writable_seen = false;
    let mut open_end = false;
    for desc in chain.clone() {
        if desc.is_write_only() {
            writable_seen = true;
        } else if writable_seen {
            return Some("device-readable descriptor after a device-writable one");
        }
        open_end = desc.has_next();
    }
    if open_end {
        return Some(
            "descriptor chain broken: `next` out of range, a loop, or a bad indirect table",
        );
    }
    None
}

/// Serves one descriptor chain. Never panics, whatever the guest put in the chain.
pub(crate) fn process(
    server: &Server<SharedFs>,
    session: &Session,
    mem: &Mem,
    chain: Chain,
) -> Outcome {
    if let Some(reason) = chain_violation(&chain) {
        return Outcome::Dropped { reason };
    }
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(_) => {
            return Outcome::Dropped {
                reason: "readable descriptors outside guest memory",
            }
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(_) => {
            return Outcome::Dropped {
                reason: "writable descriptors outside guest memory",
            }
        }
    };
    let readable = reader.available_bytes();
    let writable = writer.available_bytes();

    let mut peek = reader.clone();
    let header: InHeader = match peek.read_obj() {
        Ok(h) => h,
        Err(_) => {
            return Outcome::Dropped {
                reason: "request shorter than a FUSE header",
            }
        }
    };
    let opcode = header.opcode;
    let reply = |errno: i32| error_reply(mem, &chain, header.unique, errno, opcode);

    let len = header.len as usize;
    if len < IN_HEADER || len > readable {
        return reply(libc::EINVAL);
    }
    if session.unusable() {
        // A device-state load failed (or is under way): nothing is served.
        if no_reply(opcode) {
            return Outcome::Dropped {
                reason: "request to a device whose state failed to load",
            };
        }
        return reply(libc::EIO);
    }
    if opcode != INIT && !session.initialized() {
        if no_reply(opcode) {
            return Outcome::Dropped {
                reason: "request before FUSE_INIT that expects no reply",
            };
        }
        return reply(libc::EIO);
    }
    if !dispatched(opcode) {
        return reply(libc::ENOSYS);
    }
    // Bytes of the request after the header, as the header claims them (and as present).
    let body = len - IN_HEADER;

    match check(opcode, body, &mut peek, writable) {
        Check::Ok => {}
        Check::Reject(errno) => return reply(errno),
        Check::Drop(reason) => return Outcome::Dropped { reason },
    }

    // INIT and DESTROY start and end the session; they wait for each other and for the end
    // of a session whose VMM left.
    let init = match opcode {
        INIT => peek_init(&reader),
        _ => None,
    };
    let major = init.map(|p| p.major);
    let transition = match opcode {
        INIT => Some(session.begin_init()),
        DESTROY => Some(session.begin_destroy()),
        _ => None,
    };

    let writer = fuse_backend_rs::transport::Writer::from(writer);
    let result = catch_unwind(AssertUnwindSafe(|| {
        server.handle_message(reader, writer, None, None)
    }));
    if let Some(t) = transition {
        if opcode == INIT {
            // The server calls the filesystem's `init` only for major version 7 (it answers
            // a newer major with its own version, an older one with EPROTO); a successful
            // answer carries a body, an error answer is a bare header.
            let fs_init = major == Some(fuse_backend_rs::abi::fuse_abi::KERNEL_VERSION);
            let accepted = matches!(result, Ok(Ok(n)) if n > OUT_HEADER);
            t.init_done(fs_init, accepted, init);
        } else {
            t.destroy_done();
        }
    }
    match result {
        Ok(Ok(n)) => {
            // DESTROY writes its reply but the server reports 0 bytes.
            let n = if opcode == DESTROY && n == 0 && writable >= OUT_HEADER {
                OUT_HEADER
            } else {
                n
            };
            Outcome::Served {
                used: u32::try_from(n.min(writable)).unwrap_or(u32::MAX),
            }
        }
        Ok(Err(e)) => {
            use fuse_backend_rs::Error as E;
            let errno = match e {
                E::DecodeMessage(_)
                | E::InvalidCString(_)
                | E::InvalidHeaderLength
                | E::InvalidXattrSize(_)
                | E::InvalidMessage(_)
                | E::MissingParameter => libc::EINVAL,
                _ => libc::EIO,
            };
            tracing::debug!(
                opcode,
                unique = header.unique,
                error = %e,
                "request failed in the FUSE server"
            );
            reply(errno)
        }
        Err(_) => {
            tracing::error!(
                opcode,
                unique = header.unique,
                "filesystem panicked while serving a request; answered EIO"
            );
            reply(libc::EIO)
        }
    }
}

/// The parameters of the INIT request `r` holds (positioned at the header).
fn peek_init(r: &Reader<'_, Log>) -> Option<InitParams> {
    let mut r = r.clone();
    r.read_obj::<InHeader>().ok()?;
    let i = r.read_obj::<InitIn>().ok()?;
    let mut capable = u64::from(i.flags);
    if i.flags & INIT_EXT != 0 {
        if let Ok(i2) = r.read_obj::<InitIn2>() {
            capable |= u64::from(i2.flags2) << 32;
        }
    }
    Some(InitParams {
        major: i.major,
        minor: i.minor,
        max_readahead: i.max_readahead,
        capable,
    })
}

enum Check {
    Ok,
    Reject(i32),
    Drop(&'static str),
}

/// Per-opcode validation of the body and the reply buffer. `r` is positioned after the header.
fn check(opcode: u32, body: usize, r: &mut Reader<'_, Log>, writable: usize) -> Check {
    fn read<T: ByteValued>(r: &mut Reader<'_, Log>, body: usize) -> Option<T> {
        if body < size_of::<T>() {
            return None;
        }
        r.read_obj::<T>().ok()
    }

    let need = |n: usize| {
        if writable >= n {
            Check::Ok
        } else {
            Check::Reject(libc::EINVAL)
        }
    };

    if no_reply(opcode) {
        return match opcode {
            FORGET if body < size_of::<ForgetIn>() => Check::Drop("FORGET body too short"),
            BATCH_FORGET => match read::<BatchForgetIn>(r, body) {
                None => Check::Drop("BATCH_FORGET body too short"),
                Some(b) => {
                    let room = body - size_of::<BatchForgetIn>();
                    match (b.count as usize).checked_mul(size_of::<ForgetOne>()) {
                        Some(n) if n <= room => Check::Ok,
                        _ => Check::Drop("BATCH_FORGET count exceeds its payload"),
                    }
                }
            },
            _ => Check::Ok,
        };
    }

    if writable < OUT_HEADER {
        return Check::Drop("no room for a reply header");
    }

    let entry = OUT_HEADER + size_of::<EntryOut>();
    match opcode {
        LOOKUP | MKNOD | MKDIR | SYMLINK | LINK => need(entry),
        GETATTR | SETATTR => need(OUT_HEADER + size_of::<AttrOut>()),
        OPEN | OPENDIR => need(OUT_HEADER + size_of::<OpenOut>()),
        CREATE => need(entry + size_of::<OpenOut>()),
        STATFS => need(OUT_HEADER + size_of::<Kstatfs>()),
        GETLK => need(OUT_HEADER + size_of::<LkOut>()),
        BMAP => need(OUT_HEADER + size_of::<BmapOut>()),
        LSEEK => need(OUT_HEADER + size_of::<LseekOut>()),
        POLL => need(OUT_HEADER + size_of::<PollOut>()),
        READ | READDIR | READDIRPLUS => match read::<ReadIn>(r, body) {
            None => Check::Reject(libc::EINVAL),
            Some(ri) => need(OUT_HEADER.saturating_add(ri.size as usize)),
        },
        RENAME2 => match read::<Rename2In>(r, body) {
            None => Check::Reject(libc::EINVAL),
            Some(ri)
                if ri.flags
                    & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT)
                    != 0 =>
            {
                Check::Reject(libc::EINVAL)
            }
            Some(_) => Check::Ok,
        },
        WRITE => match read::<WriteIn>(r, body) {
            None => Check::Reject(libc::EINVAL),
            Some(wi) => {
                if body - size_of::<WriteIn>() < wi.size as usize {
                    Check::Reject(libc::EINVAL)
                } else {
                    need(OUT_HEADER + size_of::<WriteOut>())
                }
            }
        },
        GETXATTR | LISTXATTR => match read::<GetxattrIn>(r, body) {
            None => Check::Reject(libc::EINVAL),
            Some(gi) if gi.size == 0 => need(OUT_HEADER + size_of::<GetxattrOut>()),
            Some(gi) => need(OUT_HEADER.saturating_add(gi.size as usize)),
        },
        INIT => match read::<InitIn>(r, body) {
            None => Check::Reject(libc::EINVAL),
            Some(ii) => {
                if ii.flags & INIT_EXT != 0 && body < size_of::<InitIn>() + size_of::<InitIn2>() {
                    // fuse-backend-rs 0.14 would fail to decode this without replying.
                    return Check::Reject(libc::EINVAL);
                }
                // The server trims its reply for old minors: 8 bytes below 7.5, 24 below 7.23.
                let out = match ii.minor {
                    0..=4 => 8,
                    5..=22 => 24,
                    _ => size_of::<fuse_backend_rs::abi::fuse_abi::InitOut>(),
                };
                need(OUT_HEADER + out)
            }
        },
        _ => Check::Ok,
    }
}

/// Answers the request with `-errno`, or drops it if there is nowhere to write the answer.
fn error_reply(mem: &Mem, chain: &Chain, unique: u64, errno: i32, opcode: u32) -> Outcome {
    if no_reply(opcode) {
        return Outcome::Dropped {
            reason: "malformed request that expects no reply",
        };
    }
    let mut w = match VirtioFsWriter::new(mem, chain.clone()) {
        Ok(w) => w,
        Err(_) => {
            return Outcome::Dropped {
                reason: "writable descriptors outside guest memory",
            }
        }
    };
    let header = OutHeader {
        len: OUT_HEADER as u32,
        error: -errno,
        unique,
    };
    match w.write_all(header.as_slice()) {
        Ok(()) => Outcome::ErrorReply {
            used: OUT_HEADER as u32,
            errno,
        },
        Err(_) => Outcome::Dropped {
            reason: "no room for a reply header",
        },
    }
}
