//! Arbitrary FUSE messages through the device's request path (`request::process`, then
//! fuse-backend-rs's `Server`) over MemFs, PassthroughFs on a temp dir, DualFs (MemFs over a
//! read-only PassthroughFs) and VolumeFs (volumes with hidden names, a read-only one, a file).
//!
//! One input is a backend choice and a sequence of messages sent in order to a fresh backend
//! (after a normal INIT). Inode numbers and handles the replies hand out are remembered, and a
//! message can refer to them (as its nodeid, or patched into its body), so sequences reach past
//! LOOKUP/CREATE/OPEN into READ, WRITE, SETATTR, READDIR, xattrs and RELEASE.
//!
//! Checked: nothing panics or hangs, every request that expects a reply gets one whose header
//! carries the request's `unique` and the used length, requests without reply get none, and the
//! canary file outside the share keeps its content, mode and times.
#![no_main]

use std::mem::size_of;

use arbitrary::Arbitrary;
use boxfs::vhost::fuzzing::FuzzOutcome;
use boxfs_fuzz::{harness, init_request, request, serve, Backend, Guest, Kind};
use fuse_backend_rs::abi::fuse_abi::{EntryOut, OpenOut, OutHeader};
use libfuzzer_sys::fuzz_target;
use vm_memory::ByteValued;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Id {
    Root,
    /// The n-th id a reply handed out (inode or handle), modulo how many there are.
    Known(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
struct Msg {
    opcode: u8,
    nodeid: Id,
    /// Remembered ids written into the body at `8 * offset`.
    patches: Vec<(u8, Id)>,
    body: Vec<u8>,
    /// Lie about the header's `len` (otherwise it is exact).
    bad_len: Option<u32>,
    /// Split the request into this many readable descriptors (at most 4).
    split: u8,
    /// Reply buffer size (0: none); split in two descriptors when `reply_split`.
    reply: u16,
    reply_split: bool,
    /// Run as uid 1000 instead of root.
    user: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    backend: u8,
    msgs: Vec<Msg>,
}

/// FORGET, INTERRUPT and BATCH_FORGET never get a reply. (NOTIFY_REPLY, 41, gets `ENOSYS`
/// from fuse-backend-rs when the guest offers a reply buffer; virtio-fs guests never send it.)
const NO_REPLY: [u32; 3] = [2, 36, 42];

thread_local! {
    static GUEST: Guest = Guest::new();
}

fn resolve(id: Id, known: &[u64]) -> u64 {
    match id {
        Id::Root => 1,
        Id::Known(n) if !known.is_empty() => known[usize::from(n) % known.len()],
        Id::Known(_) => 1,
        Id::Raw(v) => v,
    }
}

fn remember(opcode: u32, body: &[u8], known: &mut Vec<u64>) {
    let entry = size_of::<EntryOut>();
    let ids: &[(usize, bool)] = match opcode {
        // LOOKUP, SYMLINK, MKNOD, MKDIR, LINK: entry.nodeid
        1 | 6 | 8 | 9 | 13 => &[(0, true)],
        // OPEN, OPENDIR: open.fh
        14 | 27 => &[(0, false)],
        // CREATE: entry.nodeid, then open.fh
        35 => &[(0, true), (entry, false)],
        _ => &[],
    };
    for &(at, is_entry) in ids {
        let v = if is_entry {
            body.get(at..at + entry)
                .and_then(EntryOut::from_slice)
                .map(|e| e.nodeid)
        } else {
            body.get(at..at + size_of::<OpenOut>())
                .and_then(OpenOut::from_slice)
                .map(|o| o.fh)
        };
        if let Some(v) = v {
            if known.len() < 64 {
                known.push(v);
            }
        }
    }
}

fuzz_target!(|input: Input| {
    if input.msgs.len() > 64 {
        return;
    }
    let backend = Backend::new(Kind::from_byte(input.backend));
    let h = harness(&backend);
    GUEST.with(|guest| {
        let (out, _) = serve(guest, &h, &[&init_request()], &[256]);
        assert!(
            matches!(out, Some(FuzzOutcome::Served { .. })),
            "INIT: {out:?}"
        );
        let mut known: Vec<u64> = Vec::new();
        for (i, m) in input.msgs.iter().enumerate() {
            if m.body.len() > 60_000 {
                return;
            }
            let opcode = u32::from(m.opcode);
            let mut body = m.body.clone();
            for &(off, id) in &m.patches {
                let at = usize::from(off) * 8;
                if at + 8 <= body.len() {
                    body[at..at + 8].copy_from_slice(&resolve(id, &known).to_le_bytes());
                }
            }
            let unique = 100 + i as u64;
            let uid = if m.user { 1000 } else { 0 };
            let mut req = request(opcode, unique, resolve(m.nodeid, &known), uid, &body);
            if let Some(len) = m.bad_len {
                req[..4].copy_from_slice(&len.to_le_bytes());
            }
            let pieces = usize::from(m.split % 4) + 1;
            let step = req.len().div_ceil(pieces).max(1);
            let readable: Vec<&[u8]> = req.chunks(step).collect();
            let reply = u32::from(m.reply);
            let writable: Vec<u32> = match (reply, m.reply_split) {
                (0, _) => vec![],
                (r, true) if r > 1 => vec![r / 2, r - r / 2],
                (r, _) => vec![r],
            };
            let (out, data) = serve(guest, &h, &readable, &writable);
            let Some(out) = out else { continue };
            match out {
                FuzzOutcome::Dropped => {}
                FuzzOutcome::Served { used } | FuzzOutcome::ErrorReply { used, .. } => {
                    if NO_REPLY.contains(&opcode) {
                        assert_eq!(used, 0, "opcode {opcode} expects no reply: {out:?}");
                        continue;
                    }
                    assert!(
                        used as usize >= size_of::<OutHeader>(),
                        "short reply {out:?}"
                    );
                    let hdr =
                        *OutHeader::from_slice(&data[..size_of::<OutHeader>()]).expect("header");
                    assert_eq!(hdr.unique, unique, "reply to another request: {out:?}");
                    assert_eq!(hdr.len, used, "header len vs used length: {out:?}");
                    assert!(hdr.error <= 0 && hdr.error > -4096, "errno {}", hdr.error);
                    if hdr.error == 0 {
                        remember(opcode, &data[size_of::<OutHeader>()..], &mut known);
                    }
                }
            }
        }
    });
    backend.check_canary();
});
