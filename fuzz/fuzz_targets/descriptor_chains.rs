//! Arbitrary descriptor-chain layouts through the device's request path: descriptor tables
//! with arbitrary addresses (inside a region, across the hole between regions, past the end),
//! lengths, flags (NEXT, WRITE, INDIRECT, unknown bits) and next pointers (loops, out of
//! range), indirect tables (nested, empty, misaligned), and an available ring whose heads and
//! index may lie. Buffers can point at well-formed FUSE requests laid in guest memory, so chains
//! also reach the filesystem (a MemFs with one open file).
//!
//! Checked: nothing panics or hangs; every chain popped is answered or dropped (one used-ring
//! entry each); the device writes nothing outside the buffers the guest marked writable and
//! the used ring.
#![no_main]

use std::ffi::CString;
use std::sync::Arc;

use arbitrary::Arbitrary;
use boxfs::memfs::MemFs;
use boxfs::vhost::fuzzing::RequestHarness;
use boxfs::{Context, CreateIn, DynFileSystem, SizeExt, ROOT_ID};
use boxfs_fuzz::{cstr, layout, request, Guest, F_WRITE, REGION0, REGION1, USED};
use fuse_backend_rs::abi::fuse_abi::{
    BatchForgetIn, ForgetIn, ForgetOne, GetattrIn, MkdirIn, OpenIn, ReadIn, WriteIn,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::ByteValued;

/// Where the canned requests live (region 0), each in a 0x400 slot.
const CANNED: u64 = 0x3000;
/// Indirect tables (region 0), each in a 0x400 slot (64 descriptors).
const TABLES: u64 = 0x7000;
/// Free data area (region 0).
const DATA: u64 = 0x9000;
/// The fuzzer's own bytes (region 1).
const BLOB: u64 = REGION1.0;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    Canned(u8),
    Table(u8),
    Data(u16),
    Blob(u16),
    /// Near the end of region 0 (crossing into the hole).
    EndOf0(u8),
    /// Near the end of region 1 (crossing the end of memory).
    EndOf1(u8),
    Hole(u16),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    /// The canned request's length, or the table's length in bytes.
    Exact,
    Small(u8),
    Medium(u16),
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Desc {
    addr: Addr,
    len: Len,
    flags: u16,
    next: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    queue_log: u8,
    event_idx: bool,
    descs: Vec<Desc>,
    tables: Vec<Vec<Desc>>,
    heads: Vec<u16>,
    /// Lie about the available index (otherwise it is the number of heads).
    avail_idx: Option<u16>,
    blob: Vec<u8>,
}

thread_local! {
    static GUEST: Guest = Guest::new();
}

/// Well-formed requests the chains can point at; `ino`/`fh` are an open file's.
fn canned(ino: u64, fh: u64) -> Vec<Vec<u8>> {
    let ctx_body = |parts: &[&[u8]]| parts.concat();
    let mut forget = BatchForgetIn { count: 2, dummy: 0 }.as_slice().to_vec();
    forget.extend_from_slice(
        ForgetOne {
            nodeid: ino,
            nlookup: 1,
        }
        .as_slice(),
    );
    forget.extend_from_slice(
        ForgetOne {
            nodeid: 77,
            nlookup: u64::MAX,
        }
        .as_slice(),
    );
    let write = WriteIn {
        fh,
        offset: 3,
        size: 16,
        ..Default::default()
    };
    let read = ReadIn {
        fh,
        offset: 0,
        size: 64,
        ..Default::default()
    };
    vec![
        request(3, 10, ROOT_ID, 0, GetattrIn::default().as_slice()),
        request(1, 11, ROOT_ID, 0, &cstr("pre")),
        request(
            9,
            12,
            ROOT_ID,
            0,
            &ctx_body(&[
                MkdirIn {
                    mode: 0o755,
                    umask: 0,
                }
                .as_slice(),
                &cstr("dir"),
            ]),
        ),
        request(
            16,
            13,
            ino,
            0,
            &ctx_body(&[write.as_slice(), b"0123456789abcdef"]),
        ),
        request(15, 14, ino, 0, read.as_slice()),
        request(17, 15, ROOT_ID, 0, &[]),
        request(42, 16, 0, 0, &forget),
        request(2, 17, ino, 0, ForgetIn { nlookup: 1 }.as_slice()),
        request(
            27,
            18,
            ROOT_ID,
            0,
            OpenIn {
                flags: 0,
                fuse_flags: 0,
            }
            .as_slice(),
        ),
        request(28, 19, ROOT_ID, 0, read.as_slice()),
        request(18, 20, ino, 0, &fh.to_le_bytes()),
        boxfs_fuzz::init_request(),
    ]
}

struct Placed {
    /// (address, length) of each canned request.
    canned: Vec<(u64, u32)>,
}

fn resolve(d: &Desc, placed: &Placed, tables: &[Vec<Desc>]) -> (u64, u32) {
    let n = placed.canned.len();
    let (addr, exact) = match d.addr {
        Addr::Canned(i) => placed.canned[usize::from(i) % n],
        Addr::Table(i) if !tables.is_empty() => {
            let i = usize::from(i) % tables.len();
            (TABLES + 0x400 * i as u64, 16 * tables[i].len() as u32)
        }
        Addr::Table(_) => (TABLES, 16),
        Addr::Data(off) => (DATA + u64::from(off % 0x7000), 64),
        Addr::Blob(off) => (BLOB + u64::from(off), 64),
        Addr::EndOf0(b) => (REGION0.0 + REGION0.1 - u64::from(b), 64),
        Addr::EndOf1(b) => (REGION1.0 + REGION1.1 - u64::from(b), 64),
        Addr::Hole(off) => (REGION0.0 + REGION0.1 + u64::from(off), 64),
        Addr::Raw(a) => (a, 64),
    };
    let len = match d.len {
        Len::Exact => exact,
        Len::Small(l) => u32::from(l),
        Len::Medium(l) => u32::from(l),
        Len::Raw(l) => l,
    };
    (addr, len)
}

fuzz_target!(|input: Input| {
    let size = 1u16 << (input.queue_log % 9);
    if input.descs.len() > usize::from(size)
        || input.tables.len() > 8
        || input.tables.iter().any(|t| t.len() > 64)
        || input.heads.len() > usize::from(size)
        || input.blob.len() > 0x8000
    {
        return;
    }
    let fs: Arc<dyn DynFileSystem> = Arc::new(
        MemFs::builder()
            .capacity(4.mib())
            .max_inodes(64)
            .build()
            .expect("memfs"),
    );
    let ctx = Context::new();
    let pre = CString::new("pre").expect("name");
    let (entry, fh, _, _) = fs
        .create(
            &ctx,
            ROOT_ID,
            &pre,
            CreateIn {
                flags: libc::O_RDWR as u32,
                mode: 0o644,
                umask: 0,
                fuse_flags: 0,
            },
        )
        .expect("create");
    let h = RequestHarness::new(fs);
    GUEST.with(|guest| {
        guest.clear();
        let mut placed = Placed { canned: Vec::new() };
        for (i, req) in canned(entry.inode, fh.unwrap_or(0)).iter().enumerate() {
            let a = CANNED + 0x400 * i as u64;
            guest.write(a, req);
            placed.canned.push((a, req.len() as u32));
        }
        guest.write(BLOB, &input.blob);
        // Everything the device may write: buffers marked writable anywhere, and the used ring.
        let mut writable: Vec<(u64, u64)> = vec![(USED, 8 + 8 * u64::from(size) + 2)];
        let mut lay = |table: u64, i: usize, d: &Desc| {
            let (addr, len) = resolve(d, &placed, &input.tables);
            guest.write_desc(table, i as u16, addr, len, d.flags, d.next);
            if d.flags & F_WRITE != 0 {
                writable.push((addr, u64::from(len)));
            }
        };
        for (i, d) in input.descs.iter().enumerate() {
            lay(boxfs_fuzz::DESC, i, d);
        }
        for (t, table) in input.tables.iter().enumerate() {
            for (i, d) in table.iter().enumerate() {
                lay(TABLES + 0x400 * t as u64, i, d);
            }
        }
        let avail_idx = input.avail_idx.unwrap_or(input.heads.len() as u16);
        guest.publish(size, &input.heads, avail_idx);
        let before = guest.snapshot();

        let outcomes = h.process_queue(&guest.mem, layout(size, input.event_idx));

        let after = guest.snapshot();
        if let Some(outcomes) = &outcomes {
            assert!(
                outcomes.len() <= usize::from(size),
                "more chains than the queue holds"
            );
            // Heads past the queue size cannot be returned (virtio-queue refuses them): the
            // guest broke the ring, and only its own request is lost.
            let returnable = (0..outcomes.len())
                .filter(|k| {
                    let head = input.heads.get(k % usize::from(size)).copied().unwrap_or(0);
                    head < size
                })
                .count();
            assert_eq!(
                guest.used_idx(),
                returnable as u16,
                "one used entry per chain"
            );
        }
        // The flat snapshot concatenates region 0 and region 1.
        let flat = |gpa: u64| -> Option<usize> {
            if gpa < REGION0.0 + REGION0.1 {
                Some((gpa - REGION0.0) as usize)
            } else if (REGION1.0..REGION1.0 + REGION1.1).contains(&gpa) {
                Some((REGION0.1 + gpa - REGION1.0) as usize)
            } else {
                None
            }
        };
        if before == after {
            return;
        }
        let mut allowed = vec![false; before.len()];
        for &(addr, len) in &writable {
            let end = addr.saturating_add(len);
            for (start, rlen) in [REGION0, REGION1] {
                let (s, e) = (addr.max(start), end.min(start + rlen));
                if s < e {
                    let (fs_, fe) = (flat(s).unwrap_or(0), flat(e - 1).unwrap_or(0) + 1);
                    allowed[fs_..fe].iter_mut().for_each(|b| *b = true);
                }
            }
        }
        for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
            assert!(
                b == a || allowed[i],
                "device wrote outside writable buffers at flat offset {i:#x}"
            );
        }
    });
});
