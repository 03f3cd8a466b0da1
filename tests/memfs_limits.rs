//! MemFs capacity and inode limits, exact space accounting, and per-inode memory overhead.
//!
//! Every expected charge is computed from the documented rule (`boxfs::memfs::cost`): each
//! inode, name and xattr is charged a fixed overhead plus the heap size of its bytes; a file's
//! data within its first 4 KiB is charged the heap size of an exact buffer, beyond that a
//! whole page per allocated page. Heap sizes come in 16-byte steps, so "one more byte" below
//! means one more step.

// libc's mode and statvfs field types differ per platform, so casts that are no-ops on Linux
// are needed elsewhere.
#![allow(clippy::unnecessary_cast)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::ffi::CString;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use boxfs::memfs::{cost, MemFs};
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{stat64, statvfs64, Context, CreateIn, FileSystem, GetxattrReply, SetattrValid};
use boxfs::{ListxattrReply, ROOT_ID};

// ---------------------------------------------------------------------------------------------
// A counting allocator: net bytes allocated by the current thread (so tests running in
// parallel in this binary do not disturb each other's measurements).

struct Counting;

thread_local! {
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    // `try_with`: allocations during thread teardown must not panic.
    let _ = NET_BYTES.try_with(|n| n.set(n.get() + delta));
}

// SAFETY: every call is forwarded unchanged to `System`; only a thread-local counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn net_bytes() -> i64 {
    NET_BYTES.with(Cell::get)
}

// ---------------------------------------------------------------------------------------------
// A tiny typed layer over the FileSystem API.

const PAGE: u64 = 4096;
const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
const RENAME_WHITEOUT: u32 = 4;

fn c(name: &[u8]) -> CString {
    CString::new(name).expect("test names have no NUL")
}

/// The errno of a result (`None` for success).
fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// Deterministic bytes for file `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9E37_79B9)) as u8 | 1)
        .collect()
}

/// What the documented rule charges for a file with a small buffer of `small` bytes or the
/// `pages` allocated.
fn file_charge(small: u64, pages: &BTreeSet<u64>) -> u64 {
    cost::data(small, pages.len() as u64)
}

/// The data charge of `len` bytes written densely from offset 0.
fn dense(len: u64) -> u64 {
    if len <= cost::SMALL_FILE_MAX {
        cost::heap(len)
    } else {
        len.div_ceil(PAGE) * PAGE
    }
}

/// The charge of a file named `name_len` bytes holding `len` bytes written from offset 0.
fn file_cost(name_len: usize, len: usize) -> u64 {
    cost::INODE + cost::name(name_len as u64) + dense(len as u64)
}

/// The longest data that, written densely into an empty file, costs at most `room`.
fn longest_fitting(room: u64) -> u64 {
    if room >= 2 * PAGE {
        room / PAGE * PAGE
    } else if room >= cost::heap(cost::SMALL_FILE_MAX) {
        cost::SMALL_FILE_MAX
    } else if room >= 32 {
        room / 16 * 16 - 16
    } else {
        0
    }
}

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct T {
    fs: MemFs,
    ctx: Context,
}

impl T {
    fn new(capacity: u64, max_inodes: u64) -> T {
        T {
            fs: MemFs::builder()
                .capacity(capacity)
                .max_inodes(max_inodes)
                .build()
                .expect("MemFs builds"),
            ctx: Context::new(),
        }
    }

    fn used(&self) -> u64 {
        self.fs.usage().bytes_used
    }

    fn inodes(&self) -> u64 {
        self.fs.usage().inodes_used
    }

    fn statfs(&self) -> statvfs64 {
        self.fs.statfs(&self.ctx, ROOT_ID).expect("statfs")
    }

    /// Free bytes as statfs reports them.
    fn statfs_free(&self) -> u64 {
        let st = self.statfs();
        st.f_bfree as u64 * st.f_frsize as u64
    }

    fn create(&self, parent: u64, name: &[u8]) -> io::Result<(u64, u64)> {
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let (e, fh, _, _) = self.fs.create(&self.ctx, parent, &c(name), args)?;
        Ok((e.inode, fh.expect("MemFs returns handles")))
    }

    fn open(&self, ino: u64) -> u64 {
        let (fh, _, _) = self
            .fs
            .open(&self.ctx, ino, libc::O_RDWR as u32, 0)
            .expect("open");
        fh.expect("MemFs returns handles")
    }

    fn release(&self, ino: u64, fh: u64) {
        self.fs
            .release(&self.ctx, ino, 0, fh, false, false, None)
            .expect("release");
    }

    fn write(&self, ino: u64, fh: u64, off: u64, data: &[u8]) -> io::Result<usize> {
        let mut r = MemReader::copied(data);
        let n = self.fs.write(
            &self.ctx,
            ino,
            fh,
            &mut r,
            data.len() as u32,
            off,
            None,
            false,
            0,
            0,
        )?;
        assert_eq!(n, data.len(), "a write is never shortened");
        Ok(n)
    }

    fn read(&self, ino: u64, fh: u64, off: u64, size: u32) -> Vec<u8> {
        let mut w = MemWriter::new(size as usize);
        let n = self
            .fs
            .read(&self.ctx, ino, fh, &mut w, size, off, None, 0)
            .expect("read");
        let v = w.into_inner();
        assert_eq!(n, v.len());
        v
    }

    /// The whole content of `ino`.
    fn contents(&self, ino: u64) -> Vec<u8> {
        let fh = self.open(ino);
        let size = self.size(ino);
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let chunk = self.read(ino, fh, out.len() as u64, 1 << 20);
            assert!(!chunk.is_empty(), "short read before EOF");
            out.extend_from_slice(&chunk);
        }
        self.release(ino, fh);
        out
    }

    /// Creates `name` holding `data`; the handle is released.
    fn put(&self, parent: u64, name: &[u8], data: &[u8]) -> u64 {
        let (ino, fh) = self.create(parent, name).expect("create");
        if !data.is_empty() {
            self.write(ino, fh, 0, data).expect("write");
        }
        self.release(ino, fh);
        ino
    }

    fn getattr(&self, ino: u64) -> io::Result<stat64> {
        self.fs.getattr(&self.ctx, ino, None).map(|(st, _)| st)
    }

    fn size(&self, ino: u64) -> u64 {
        self.getattr(ino).expect("getattr").st_size as u64
    }

    fn truncate(&self, ino: u64, size: u64) -> io::Result<()> {
        // SAFETY: stat64 is a plain C struct; all-zero bytes are a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_size = size as _;
        self.fs
            .setattr(&self.ctx, ino, st, None, SetattrValid::SIZE)
            .map(|_| ())
    }

    fn punch(&self, ino: u64, fh: u64, off: u64, len: u64) -> io::Result<()> {
        let mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
        self.fs.fallocate(&self.ctx, ino, fh, mode, off, len)
    }

    /// Unlinks `name` and drops the guest's reference, as the kernel does for a closed file.
    fn remove(&self, parent: u64, name: &[u8], ino: u64) {
        self.fs.unlink(&self.ctx, parent, &c(name)).expect("unlink");
        self.fs.forget(&self.ctx, ino, 1);
    }

    fn xattr(&self, ino: u64, name: &[u8]) -> Option<Vec<u8>> {
        match self.fs.getxattr(&self.ctx, ino, &c(name), 1 << 16) {
            Ok(GetxattrReply::Value(v)) => Some(v),
            Ok(GetxattrReply::Count(_)) => panic!("asked for the value"),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => None,
            Err(e) => panic!("getxattr: {e}"),
        }
    }

    fn xattr_names(&self, ino: u64) -> Vec<u8> {
        match self
            .fs
            .listxattr(&self.ctx, ino, 1 << 16)
            .expect("listxattr")
        {
            ListxattrReply::Names(n) => n,
            ListxattrReply::Count(_) => panic!("asked for the names"),
        }
    }

    /// Asserts the free room is exactly `n` bytes: the counters say so, and written into an
    /// empty file, the longest data that fits by the rule fits while one byte more is
    /// refused with no effect. The probe is cleaned up afterwards. `probe` is an open, empty
    /// file whose (already charged) name makes no difference.
    fn assert_room(&self, probe: (u64, u64), n: u64) {
        let (ino, fh) = probe;
        assert_eq!(self.size(ino), 0);
        let before = self.used();
        assert_eq!(before + n, self.fs.usage().capacity, "room by the counters");
        let fits = longest_fitting(n);
        let data = vec![0x5a; fits as usize + 1];
        assert_eq!(errno(self.write(ino, fh, 0, &data)), Some(libc::ENOSPC));
        assert_eq!(self.size(ino), 0, "a refused write changes nothing");
        assert_eq!(self.used(), before);
        if fits > 0 {
            self.write(ino, fh, 0, &data[..fits as usize])
                .expect("the longest data that fits");
        }
        assert_eq!(self.used(), before + dense(fits));
        self.truncate(ino, 0).expect("truncate probe");
        assert_eq!(self.used(), before);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Many small files.

#[test]
fn small_files_fill_exactly_to_capacity() {
    const CAP: u64 = 1_000_000;
    let t = T::new(CAP, 1 << 20);
    assert_eq!(t.statfs_free(), CAP / PAGE * PAGE);
    let sizes = [0usize, 1, 100, 4095, 4096, 4097, 10_000, 123, 8192];

    // A pad file of 16 bytes: appending k × 16 bytes to it costs exactly k × 16.
    let pad = t.put(ROOT_ID, b"pad", &[1; 16]);
    let mut expected = file_cost(3, 16);
    assert_eq!(t.used(), expected);
    // (name, data, ino)
    let mut files: Vec<(Vec<u8>, Vec<u8>, u64)> = Vec::new();
    for i in 0u64.. {
        let name = format!("{}{i}", "n".repeat(i as usize % 7 + 1)).into_bytes();
        let data = pattern(i, sizes[i as usize % sizes.len()]);
        let cost = file_cost(name.len(), data.len());
        // Leave between 1 and 2 KiB for the last file and the pad.
        if expected + cost + 1024 > CAP {
            break;
        }
        let ino = t.put(ROOT_ID, &name, &data);
        expected += cost;
        assert_eq!(
            t.used(),
            expected,
            "file {i}: charge is inode + name + data"
        );
        files.push((name, data, ino));
    }
    assert!(files.len() > 100, "many files: {}", files.len());
    // Fill the remainder exactly: empty files, then the pad.
    for k in 0.. {
        if CAP - expected < 2048 {
            break;
        }
        let name = format!("z{k}").into_bytes();
        let ino = t.put(ROOT_ID, &name, b"");
        expected += file_cost(name.len(), 0);
        files.push((name, Vec::new(), ino));
    }
    let rem = CAP - expected;
    assert!(rem.is_multiple_of(16) && rem < 2048, "{rem}");
    let pad_fh = t.open(pad);
    t.write(pad, pad_fh, 16, &vec![2; rem as usize])
        .expect("pad");
    assert_eq!(t.used(), CAP, "filled exactly");
    assert_eq!(t.statfs_free(), 0);
    assert_eq!(t.statfs().f_bavail, 0);
    let inodes = t.inodes();

    // At the limit: one more byte of anything is ENOSPC and changes nothing.
    let pad_len = 16 + rem;
    assert_eq!(
        errno(t.write(pad, pad_fh, pad_len, b"+")),
        Some(libc::ENOSPC)
    );
    assert_eq!(t.size(pad), pad_len);
    // Growing by truncate allocates nothing (the new tail is a hole): allowed and free.
    t.truncate(pad, pad_len + 1).expect("sparse growth");
    assert_eq!(t.used(), CAP);
    t.truncate(pad, pad_len).expect("back");
    // Overwriting allocated bytes needs no space.
    let (zname, zdata, zino) = files
        .iter()
        .find(|f| f.1.len() == 4097)
        .expect("a 4097")
        .clone();
    let fh = t.open(zino);
    let over = pattern(4242, zdata.len());
    t.write(zino, fh, 0, &over).expect("overwrite in place");
    t.write(zino, fh, 0, &zdata).expect("overwrite back");
    t.release(zino, fh);
    let (ename, _, eino) = files
        .iter()
        .find(|f| f.1.is_empty())
        .expect("an empty file");
    let fh = t.open(*eino);
    assert_eq!(errno(t.write(*eino, fh, 0, b"x")), Some(libc::ENOSPC));
    assert_eq!(t.size(*eino), 0);
    t.release(*eino, fh);
    assert_eq!(errno(t.create(ROOT_ID, b"y")), Some(libc::ENOSPC));
    assert_eq!(
        errno(t.fs.mkdir(&t.ctx, ROOT_ID, &c(b"y"), 0o755, 0)),
        Some(libc::ENOSPC)
    );
    assert_eq!(
        errno(t.fs.symlink(&t.ctx, &c(b"t"), ROOT_ID, &c(b"y"))),
        Some(libc::ENOSPC)
    );
    assert_eq!(
        errno(t.fs.link(&t.ctx, *eino, ROOT_ID, &c(b"y"))),
        Some(libc::ENOSPC)
    );
    assert_eq!(
        errno(t.fs.setxattr(&t.ctx, *eino, &c(b"user.a"), b"", 0)),
        Some(libc::ENOSPC)
    );
    let longer = "a-name-longer-than-sixteen-bytes";
    assert!(cost::name(longer.len() as u64) > cost::name(ename.len() as u64));
    assert_eq!(
        errno(t.fs.rename(
            &t.ctx,
            ROOT_ID,
            &c(ename),
            ROOT_ID,
            &c(longer.as_bytes()),
            0
        )),
        Some(libc::ENOSPC)
    );
    assert_eq!(
        errno(t.fs.lookup(&t.ctx, ROOT_ID, &c(b"y"))),
        Some(libc::ENOENT)
    );
    t.fs.lookup(&t.ctx, ROOT_ID, &c(ename))
        .expect("failed rename left the name");
    t.fs.forget(&t.ctx, *eino, 1);
    assert_eq!(t.used(), CAP);
    assert_eq!(t.inodes(), inodes);

    // Freeing a file frees exactly its charge; the same file fits again, one byte more does
    // not.
    t.remove(ROOT_ID, &zname, zino);
    assert_eq!(t.used(), CAP - file_cost(zname.len(), zdata.len()));
    assert_eq!(errno(t.getattr(zino)), Some(libc::EBADF), "evicted");
    let ino = t.put(ROOT_ID, &zname, &zdata);
    assert_eq!(t.used(), CAP);
    let fh = t.open(ino);
    assert_eq!(
        errno(t.write(ino, fh, 2 * PAGE, b"!")),
        Some(libc::ENOSPC),
        "a new page"
    );
    t.release(ino, fh);
    if let Some(f) = files.iter_mut().find(|f| f.0 == zname) {
        f.2 = ino;
    }

    // Unlinking some files frees exactly their charge; the same data fits again.
    let victims = 10..60;
    let freed: u64 = files[victims.clone()]
        .iter()
        .map(|(n, d, _)| file_cost(n.len(), d.len()))
        .sum();
    for (name, _, ino) in &files[victims.clone()] {
        t.remove(ROOT_ID, name, *ino);
    }
    assert_eq!(t.used(), CAP - freed);
    assert_eq!(t.statfs_free(), freed / PAGE * PAGE);
    for f in &mut files[victims] {
        f.2 = t.put(ROOT_ID, &f.0, &f.1);
    }
    assert_eq!(t.used(), CAP, "usage returns exactly to the full value");
    assert_eq!(errno(t.create(ROOT_ID, b"y")), Some(libc::ENOSPC));
    assert_eq!(t.inodes(), inodes);
    t.release(pad, pad_fh);

    for (name, data, ino) in &files {
        assert_eq!(&t.contents(*ino), data, "{}", String::from_utf8_lossy(name));
    }
}

// ---------------------------------------------------------------------------------------------
// 2. One big file, xattrs, symlinks, the inode limit.

#[test]
fn one_big_file_fills_capacity_minus_its_name() {
    const PAGES: u64 = 768;
    // Room for the inode, its name and 768 pages, plus less than a page.
    let cap = file_cost(3, 0) + PAGES * PAGE + 1234;
    let t = T::new(cap, 16);
    let name = b"big";
    let (ino, fh) = t.create(ROOT_ID, name).expect("create");
    let len = PAGES * PAGE - 100;
    let data = pattern(7, len as usize);
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        t.write(ino, fh, (i << 20) as u64, chunk).expect("write");
    }
    assert_eq!(t.used(), cap - 1234);
    assert_eq!(t.statfs_free(), 0);
    assert_eq!(t.size(ino), len);

    // Bytes within the last allocated page cost nothing more.
    t.write(ino, fh, len, &[5; 100])
        .expect("within the last page");
    assert_eq!(t.used(), cap - 1234);
    t.truncate(ino, len).expect("back");
    // One more page, by write, is refused with no effect.
    assert_eq!(
        errno(t.write(ino, fh, PAGES * PAGE, b"!")),
        Some(libc::ENOSPC)
    );
    // A write straddling into a new page is refused whole, not shortened.
    let tail = vec![0xEE; 200];
    assert_eq!(errno(t.write(ino, fh, len - 99, &tail)), Some(libc::ENOSPC));
    assert_eq!(t.size(ino), len);
    assert_eq!(t.used(), cap - 1234);
    assert_eq!(t.read(ino, fh, len - 99, 99), &data[len as usize - 99..]);
    // Rewriting the last 100 bytes in place needs nothing.
    t.write(ino, fh, len - 100, &tail[..100]).expect("in place");
    t.write(ino, fh, len - 100, &data[len as usize - 100..])
        .expect("in place");

    // Freeing a page makes room for exactly one page.
    t.truncate(ino, len - PAGE).expect("shrink");
    assert_eq!(t.used(), cap - 1234 - PAGE);
    t.write(ino, fh, len - PAGE, &data[(len - PAGE) as usize..])
        .expect("exactly fits");
    assert_eq!(t.used(), cap - 1234);
    assert_eq!(
        errno(t.write(ino, fh, PAGES * PAGE, b"!")),
        Some(libc::ENOSPC)
    );
    t.release(ino, fh);
    assert_eq!(t.contents(ino), data);

    // Deleting it returns everything but the root.
    t.remove(ROOT_ID, name, ino);
    assert_eq!(t.used(), 0);
    assert_eq!(t.inodes(), 1);
}

#[test]
fn xattrs_fill_exactly_to_capacity() {
    const CAP: u64 = 40_000;
    let t = T::new(CAP, 16);
    let fname = b"x";
    let (ino, fh) = t.create(ROOT_ID, fname).expect("create");
    t.release(ino, fh);
    let xcost = |n: &[u8], v: &[u8]| cost::xattr(n.len() as u64, v.len() as u64);
    let mut expected = file_cost(1, 0);
    let mut attrs = Vec::new();
    for i in 0.. {
        let n = format!("user.attr{i}").into_bytes();
        let v = pattern(i, (i * 37 % 300) as usize);
        // Leave at least 1 KiB for the last one.
        if expected + xcost(&n, &v) + 1024 > CAP {
            break;
        }
        t.fs.setxattr(&t.ctx, ino, &c(&n), &v, 0).expect("setxattr");
        expected += xcost(&n, &v);
        assert_eq!(t.used(), expected, "xattr {i}: overhead + name + value");
        attrs.push((n, v));
    }
    // Exactly fill with one last attribute: a value whose heap size is the rest.
    let n = b"user.last".to_vec();
    let room = CAP - expected;
    assert!(room.is_multiple_of(16) && room >= 1024, "{room}");
    let v = pattern(77, (room - xcost(&n, b"") - 16) as usize);
    assert_eq!(xcost(&n, &v), room);
    t.fs.setxattr(&t.ctx, ino, &c(&n), &v, 0).expect("setxattr");
    attrs.push((n, v));
    assert_eq!(t.used(), CAP);
    assert_eq!(t.statfs_free(), 0);
    let names = t.xattr_names(ino);

    // One more byte: a value one byte longer, or a new one-byte-named attribute.
    let (ln, lv) = attrs.last().expect("attrs").clone();
    let mut longer = lv.clone();
    longer.push(0);
    assert_eq!(
        errno(t.fs.setxattr(&t.ctx, ino, &c(&ln), &longer, 0)),
        Some(libc::ENOSPC)
    );
    assert_eq!(
        t.xattr(ino, &ln).as_deref(),
        Some(&lv[..]),
        "value unchanged"
    );
    assert_eq!(
        errno(t.fs.setxattr(&t.ctx, ino, &c(b"u"), b"", 0)),
        Some(libc::ENOSPC)
    );
    assert_eq!(t.xattr(ino, b"u"), None);
    assert_eq!(t.xattr_names(ino), names);
    assert_eq!(t.used(), CAP);

    // A shorter value frees exactly the difference; the longer one then fits exactly.
    t.fs.setxattr(&t.ctx, ino, &c(&ln), &lv[..lv.len() - 16], 0)
        .expect("shrink value");
    assert_eq!(t.used(), CAP - 16);
    let mut plus17 = lv.clone();
    plus17.push(1);
    assert_eq!(
        errno(t.fs.setxattr(&t.ctx, ino, &c(&ln), &plus17, 0)),
        Some(libc::ENOSPC)
    );
    t.fs.setxattr(&t.ctx, ino, &c(&ln), &lv, 0)
        .expect("back to the old value");
    assert_eq!(t.used(), CAP);

    // Removal frees exactly its charge; the same attribute fits again, a longer one not.
    let (rn, rv) = attrs[3].clone();
    t.fs.removexattr(&t.ctx, ino, &c(&rn)).expect("removexattr");
    assert_eq!(t.used(), CAP - xcost(&rn, &rv));
    let mut rv1 = rv.clone();
    rv1.extend_from_slice(&[9; 16]);
    assert_eq!(
        errno(t.fs.setxattr(&t.ctx, ino, &c(&rn), &rv1, 0)),
        Some(libc::ENOSPC)
    );
    assert_eq!(t.xattr(ino, &rn), None, "a refused create leaves nothing");
    t.fs.setxattr(&t.ctx, ino, &c(&rn), &rv, 0)
        .expect("fits again");
    assert_eq!(t.used(), CAP);
    for (n, v) in &attrs {
        assert_eq!(t.xattr(ino, n).as_deref(), Some(&v[..]));
    }

    // Deleting the file returns every xattr byte.
    t.remove(ROOT_ID, fname, ino);
    assert_eq!(t.used(), 0);
}

#[test]
fn symlinks_fill_exactly_to_capacity() {
    const CAP: u64 = 40_000;
    let t = T::new(CAP, 1 << 16);
    let lcost = |name: &[u8], target: &[u8]| {
        cost::INODE + cost::name(name.len() as u64) + cost::heap(target.len() as u64)
    };
    let mut links = Vec::new();
    let mut expected = 0;
    for i in 0u64.. {
        let name = format!("l{i}").into_bytes();
        let target = format!("/some/where/{}", "t".repeat((i * 13 % 200) as usize)).into_bytes();
        // Leave at least 2 KiB for the last one.
        if expected + lcost(&name, &target) + 2048 > CAP {
            break;
        }
        let e =
            t.fs.symlink(&t.ctx, &c(&target), ROOT_ID, &c(&name))
                .expect("symlink");
        expected += lcost(&name, &target);
        assert_eq!(t.used(), expected, "symlink {i}: inode + name + target");
        links.push((name, target, e.inode));
    }
    let room = CAP - expected;
    let target = vec![b'q'; (room - lcost(b"L", b"") - 16) as usize];
    assert_eq!(lcost(b"L", &target), room);
    // A target one byte too long is refused; the exact one fits.
    let mut too_long = target.clone();
    too_long.push(b'q');
    assert_eq!(
        errno(t.fs.symlink(&t.ctx, &c(&too_long), ROOT_ID, &c(b"L"))),
        Some(libc::ENOSPC)
    );
    assert_eq!(
        errno(t.fs.lookup(&t.ctx, ROOT_ID, &c(b"L"))),
        Some(libc::ENOENT)
    );
    let e =
        t.fs.symlink(&t.ctx, &c(&target), ROOT_ID, &c(b"L"))
            .expect("exact fit");
    links.push((b"L".to_vec(), target, e.inode));
    assert_eq!(t.used(), CAP);
    assert_eq!(t.statfs_free(), 0);
    assert_eq!(
        errno(t.fs.symlink(&t.ctx, &c(b"a"), ROOT_ID, &c(b"M"))),
        Some(libc::ENOSPC)
    );

    // Unlinking frees its charge exactly; the same link fits again.
    let (name, target, ino) = links[5].clone();
    t.remove(ROOT_ID, &name, ino);
    assert_eq!(t.used(), CAP - lcost(&name, &target));
    let e =
        t.fs.symlink(&t.ctx, &c(&target), ROOT_ID, &c(&name))
            .expect("fits again");
    links[5].2 = e.inode;
    assert_eq!(t.used(), CAP);
    for (_, target, ino) in &links {
        assert_eq!(&t.fs.readlink(&t.ctx, *ino).expect("readlink"), target);
    }
}

#[test]
fn inode_limit() {
    const MAX: u64 = 6;
    let t = T::new(1 << 20, MAX);
    let check_statfs = |t: &T| {
        let st = t.statfs();
        assert_eq!(st.f_files as u64, MAX);
        assert_eq!(st.f_ffree as u64, MAX - t.inodes());
        assert_eq!(st.f_favail as u64, MAX - t.inodes());
    };
    assert_eq!(t.inodes(), 1, "the root");
    check_statfs(&t);
    let (f, fh) = t.create(ROOT_ID, b"f").expect("create");
    t.release(f, fh);
    let d =
        t.fs.mkdir(&t.ctx, ROOT_ID, &c(b"d"), 0o755, 0)
            .expect("mkdir")
            .inode;
    t.fs.symlink(&t.ctx, &c(b"f"), d, &c(b"s"))
        .expect("symlink");
    t.fs.mknod(&t.ctx, d, &c(b"p"), libc::S_IFIFO as u32 | 0o644, 0, 0)
        .expect("mknod");
    check_statfs(&t);
    let (g, gh) = t.create(d, b"g").expect("create the last inode");
    t.release(g, gh);
    assert_eq!(t.inodes(), MAX);
    assert_eq!(t.fs.inode_count() as u64, MAX);
    check_statfs(&t);
    assert_eq!(t.statfs().f_ffree, 0);

    let bytes = t.used();
    let full = |t: &T| {
        assert_eq!(errno(t.create(d, b"n")), Some(libc::ENOSPC));
        assert_eq!(
            errno(t.fs.mkdir(&t.ctx, d, &c(b"n"), 0o755, 0)),
            Some(libc::ENOSPC)
        );
        assert_eq!(
            errno(t.fs.symlink(&t.ctx, &c(b"f"), d, &c(b"n"))),
            Some(libc::ENOSPC)
        );
        for mode in [libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR] {
            assert_eq!(
                errno(t.fs.mknod(&t.ctx, d, &c(b"n"), mode as u32 | 0o644, 0, 0)),
                Some(libc::ENOSPC)
            );
        }
        assert_eq!(errno(t.fs.lookup(&t.ctx, d, &c(b"n"))), Some(libc::ENOENT));
        assert_eq!(t.used(), bytes, "refused creations charge nothing");
        assert_eq!(t.inodes(), MAX);
    };
    full(&t);

    // A hard link needs no inode.
    t.fs.link(&t.ctx, f, d, &c(b"h")).expect("link");
    assert_eq!(t.inodes(), MAX);
    t.fs.unlink(&t.ctx, d, &c(b"h")).expect("unlink");
    t.fs.forget(&t.ctx, f, 1);
    assert_eq!(t.inodes(), MAX, "f still has a name");

    // Deleting one frees one.
    t.remove(ROOT_ID, b"f", f);
    assert_eq!(t.inodes(), MAX - 1);
    check_statfs(&t);
    let n =
        t.fs.mkdir(&t.ctx, d, &c(b"n"), 0o755, 0)
            .expect("room for one");
    assert_eq!(t.inodes(), MAX);
    check_statfs(&t);
    t.fs.rmdir(&t.ctx, d, &c(b"n")).expect("rmdir");
    t.fs.forget(&t.ctx, n.inode, 1);
    assert_eq!(t.inodes(), MAX - 1);
    let (n, nh) = t.create(d, b"n").expect("room for one");
    t.release(n, nh);
    let bytes = t.used();
    assert_eq!(errno(t.create(d, b"m")), Some(libc::ENOSPC));
    assert_eq!(t.used(), bytes);
    check_statfs(&t);
}

// ---------------------------------------------------------------------------------------------
// 3. Freed space is returned exactly.

#[test]
fn freed_space_is_returned_exactly() {
    const CAP: u64 = 1 << 20;
    let t = T::new(CAP, 64);
    let probe = t.create(ROOT_ID, b"p").expect("probe");
    let base = t.used();
    assert_eq!(base, file_cost(1, 0));
    t.assert_room(probe, CAP - base);

    // Truncate: a dense file of 5 pages + 100 bytes.
    let (ino, fh) = t.create(ROOT_ID, b"f").expect("create");
    let fbase = base + file_cost(1, 0);
    let size = 5 * PAGE + 100;
    let data = pattern(3, size as usize);
    t.write(ino, fh, 0, &data).expect("write");
    assert_eq!(t.used(), fbase + 6 * PAGE);
    for (new, pages) in [
        (5 * PAGE + 10, 6),
        (4 * PAGE + 1, 5),
        (4 * PAGE, 4),
        (3 * PAGE - 1, 3),
        (1, 1),
        (0, 0),
    ] {
        t.truncate(ino, new).expect("truncate");
        assert_eq!(t.used(), fbase + pages * PAGE, "truncate to {new}");
        t.assert_room(probe, CAP - fbase - pages * PAGE);
    }
    // Truncating up adds a hole: nothing more is charged.
    t.write(ino, fh, 0, &data[..100]).expect("write");
    assert_eq!(t.used(), fbase + cost::heap(100));
    t.truncate(ino, 10 * PAGE).expect("grow");
    assert_eq!(t.used(), fbase + cost::heap(100));
    assert_eq!(t.read(ino, fh, 100, 10), vec![0; 10], "zeroes past old EOF");
    t.truncate(ino, 0).expect("truncate");
    assert_eq!(t.used(), fbase);

    // Punch hole: 8 dense pages + 500 bytes (9 pages).
    let size = 8 * PAGE + 500;
    let data = pattern(4, size as usize);
    t.write(ino, fh, 0, &data).expect("write");
    let mut used = fbase + 9 * PAGE;
    assert_eq!(t.used(), used);
    // Within one page: zeroes, frees nothing.
    t.punch(ino, fh, 10, 100).expect("punch");
    assert_eq!(t.used(), used);
    // Two whole pages (2 and 3) plus partial edges: frees exactly two pages.
    t.punch(ino, fh, 2 * PAGE - 7, 2 * PAGE + 20)
        .expect("punch");
    used -= 2 * PAGE;
    assert_eq!(t.used(), used);
    // Punching an existing hole again frees nothing more.
    t.punch(ino, fh, 2 * PAGE, 2 * PAGE).expect("punch");
    assert_eq!(t.used(), used);
    // Through EOF: frees pages 7 and 8.
    t.punch(ino, fh, 7 * PAGE, 10 * PAGE).expect("punch");
    used -= 2 * PAGE;
    assert_eq!(t.used(), used);
    assert_eq!(t.size(ino), size, "KEEP_SIZE");
    t.assert_room(probe, CAP - used);
    let mut model = data.clone();
    model[10..110].fill(0);
    model[(2 * PAGE - 7) as usize..(4 * PAGE + 13) as usize].fill(0);
    model[(7 * PAGE) as usize..].fill(0);
    assert_eq!(t.read(ino, fh, 0, size as u32 + 10), model);
    // Filling the holes again costs exactly what was freed.
    t.write(ino, fh, 0, &data).expect("refill");
    assert_eq!(t.used(), fbase + 9 * PAGE);
    t.truncate(ino, 0).expect("truncate");
    t.release(ino, fh);

    // Xattr removal.
    t.fs.setxattr(&t.ctx, ino, &c(b"user.k"), &[1; 1000], 0)
        .expect("setxattr");
    assert_eq!(t.used(), fbase + cost::xattr(6, 1000));
    t.fs.removexattr(&t.ctx, ino, &c(b"user.k"))
        .expect("removexattr");
    assert_eq!(t.used(), fbase);
    t.assert_room(probe, CAP - fbase);

    // Unlink of an open file: the name is freed at once, the inode and data only after the
    // last handle is released (and the guest forgot the inode), and it stays readable
    // meanwhile.
    let len = 3 * PAGE + 33;
    let data = pattern(5, len as usize);
    let fh1 = t.open(ino);
    t.write(ino, fh1, 0, &data).expect("write");
    let fh2 = t.open(ino);
    let inodes = t.inodes();
    t.fs.unlink(&t.ctx, ROOT_ID, &c(b"f")).expect("unlink");
    let held = base + cost::INODE + 4 * PAGE;
    assert_eq!(t.used(), held, "name freed, inode and data kept");
    t.fs.forget(&t.ctx, ino, 1);
    assert_eq!(t.used(), held, "still open");
    assert_eq!(t.inodes(), inodes);
    assert_eq!(t.read(ino, fh2, 0, len as u32), data);
    // Still writable (and charged) while open.
    t.write(ino, fh2, 4 * PAGE, &[1; 100])
        .expect("write to unlinked");
    assert_eq!(t.used(), held + PAGE);
    t.release(ino, fh2);
    assert_eq!(t.used(), held + PAGE, "another handle is still open");
    assert_eq!(t.read(ino, fh1, 4 * PAGE, 200), vec![1; 100]);
    t.release(ino, fh1);
    assert_eq!(t.used(), base, "last handle gone: everything returned");
    assert_eq!(t.inodes(), inodes - 1);
    assert_eq!(errno(t.getattr(ino)), Some(libc::EBADF));
    t.assert_room(probe, CAP - base);

    // The other order: released first, then unlinked and forgotten.
    let (ino, fh) = t.create(ROOT_ID, b"g").expect("create");
    t.write(ino, fh, 0, &data).expect("write");
    t.release(ino, fh);
    t.fs.unlink(&t.ctx, ROOT_ID, &c(b"g")).expect("unlink");
    assert_eq!(
        t.used(),
        base + cost::INODE + 4 * PAGE,
        "the guest still knows the inode"
    );
    t.fs.forget(&t.ctx, ino, 1);
    assert_eq!(t.used(), base);
    t.assert_room(probe, CAP - base);
}

// ---------------------------------------------------------------------------------------------
// 4. Sparse files.

#[test]
fn sparse_file_charges_only_written_pages() {
    const CAP: u64 = 1 << 20;
    let t = T::new(CAP, 16);
    let (ino, fh) = t.create(ROOT_ID, b"s").expect("create");
    let base = file_cost(1, 0);
    t.truncate(ino, 1 << 30)
        .expect("a 1 GiB file fits in 1 MiB");
    assert_eq!(t.size(ino), 1 << 30);
    assert_eq!(
        t.used(),
        base,
        "an empty sparse file costs only its inode and name"
    );
    let data = pattern(6, PAGE as usize);
    t.write(ino, fh, 512 << 20, &data).expect("write 4 KiB");
    assert_eq!(t.used(), base + PAGE);
    assert_eq!(t.getattr(ino).expect("getattr").st_blocks, 8);
    // The last page, and one unaligned write over two pages.
    t.write(ino, fh, (1 << 30) - PAGE, &data).expect("write");
    assert_eq!(t.used(), base + 2 * PAGE);
    t.write(ino, fh, (100 << 20) + 10, &data).expect("write");
    assert_eq!(t.used(), base + 4 * PAGE);
    assert_eq!(t.size(ino), 1 << 30);
    assert_eq!(t.read(ino, fh, 512 << 20, PAGE as u32), data);
    assert_eq!(t.read(ino, fh, (512 << 20) - 100, 100), vec![0; 100]);
    // Extending by a write far past EOF charges only the new page.
    t.write(ino, fh, 4 << 30, &data[..10])
        .expect("write past EOF");
    assert_eq!(t.used(), base + 5 * PAGE);
    assert_eq!(t.size(ino), (4 << 30) + 10);
    t.release(ino, fh);
    // The capacity is a real limit for the data that is written.
    let probe = t.create(ROOT_ID, b"p").expect("probe");
    t.assert_room(probe, CAP - t.used());
    t.release(probe.0, probe.1);
}

// ---------------------------------------------------------------------------------------------
// 5. Racing writers.

/// What one thread knows about one region of a file (only it writes there).
struct Region {
    base: u64,
    shadow: Vec<u8>,
    /// Pages (absolute indexes) allocated by acknowledged writes, minus truncated ones.
    pages: BTreeSet<u64>,
    /// Own file only: the small buffer's length while the file has no pages.
    small: u64,
    /// A region of the shared file (written by several threads: it ends up with pages, and
    /// page 0 is allocated if anyone wrote into it).
    shared: bool,
    /// End of the furthest acknowledged write (or the size set by truncate, own file only).
    end: u64,
}

impl Region {
    fn new(base: u64, len: u64, shared: bool) -> Region {
        Region {
            base,
            shadow: vec![0; len as usize],
            pages: BTreeSet::new(),
            small: 0,
            shared,
            end: 0,
        }
    }

    fn wrote(&mut self, rel: u64, data: &[u8]) {
        let off = self.base + rel;
        let end = off + data.len() as u64;
        self.shadow[rel as usize..rel as usize + data.len()].copy_from_slice(data);
        if !self.shared && self.pages.is_empty() && end <= cost::SMALL_FILE_MAX {
            self.small = self.small.max(end);
        } else {
            if self.small > 0 {
                // The small buffer moves to page 0.
                self.pages.insert(0);
                self.small = 0;
            }
            self.pages.extend(off / PAGE..end.div_ceil(PAGE));
        }
        self.end = self.end.max(end);
    }

    /// Own file only (base 0): truncate to `size`.
    fn truncated(&mut self, size: u64) {
        if size < self.end {
            self.shadow[size as usize..].fill(0);
            self.pages.retain(|&p| p < size.div_ceil(PAGE));
            self.small = self.small.min(size);
        }
        self.end = size;
    }

    /// Checks what the file holds in this region (`got` is a read of `[base, base + len)`).
    fn check(&self, got: &[u8], what: &str) {
        let len = (self.end.saturating_sub(self.base) as usize).min(self.shadow.len());
        assert!(got.len() >= len, "{what}: acknowledged bytes past EOF");
        assert!(got[..len] == self.shadow[..len], "{what}: content differs");
        assert!(got[len..].iter().all(|&b| b == 0), "{what}: stray bytes");
    }
}

#[test]
fn racing_writers_never_exceed_capacity() {
    const THREADS: u64 = 8;
    const REGION: u64 = 512 << 10;
    const OPS: usize = 300;
    // 8 threads × (own file + own region of the shared file) × 512 KiB = 8 MiB of demand.
    const CAP: u64 = 6 << 20;
    let t = T::new(CAP, 64);
    let shared_name = b"shared";
    let (shared, sfh) = t.create(ROOT_ID, shared_name).expect("create");
    let mut names = file_cost(shared_name.len(), 0);
    let own: Vec<(u64, u64)> = (0..THREADS)
        .map(|i| {
            let name = format!("own{i}");
            names += file_cost(name.len(), 0);
            t.create(ROOT_ID, name.as_bytes()).expect("create")
        })
        .collect();
    let oversize = vec![7u8; CAP as usize + 1];
    let sizes = [1u64, 7, 512, 4095, 4096, 4097, 20_000, 65_536, 200_000];
    let finished = AtomicUsize::new(0);
    let checks = AtomicU64::new(0);

    struct Done<'a>(&'a AtomicUsize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Release);
        }
    }

    let results: Vec<(Region, Region, u64, u64)> =
        std::thread::scope(|s| {
            let t = &t;
            s.spawn(|| {
                // The monitor: usage never exceeds the capacity, at any moment.
                while finished.load(Ordering::Acquire) < THREADS as usize {
                    let u = t.fs.usage();
                    assert!(u.bytes_used <= CAP, "usage {} > capacity", u.bytes_used);
                    let st = t.statfs();
                    assert!(st.f_bfree as u64 * st.f_frsize as u64 <= CAP);
                    checks.fetch_add(1, Ordering::Relaxed);
                    std::thread::yield_now();
                }
            });
            let workers: Vec<_> =
                (0..THREADS)
                    .map(|i| {
                        let (oino, ofh) = own[i as usize];
                        let oversize = &oversize;
                        let finished = &finished;
                        s.spawn(move || {
                            let _done = Done(finished);
                            let mut rng = Rng(i + 1);
                            let mut mine = Region::new(0, REGION, false);
                            let mut sh = Region::new(i * REGION, REGION, true);
                            let (mut ok, mut enospc) = (0u64, 0u64);
                            let mut attempt =
                                |ino: u64, fh: u64, r: &mut Region, rel: u64, d: &[u8]| match t
                                    .write(ino, fh, r.base + rel, d)
                                {
                                    Ok(_) => {
                                        r.wrote(rel, d);
                                        ok += 1;
                                    }
                                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => enospc += 1,
                                    Err(e) => panic!("write: {e}"),
                                };
                            for op in 0..OPS {
                                let len = sizes[rng.below(sizes.len() as u64) as usize];
                                let rel = rng.below(REGION - len + 1);
                                let data = pattern(rng.next(), len as usize);
                                match rng.below(10) {
                                    0..=3 => attempt(oino, ofh, &mut mine, rel, &data),
                                    4..=7 => attempt(shared, sfh, &mut sh, rel, &data),
                                    8 => {
                                        let size = rng.below(REGION);
                                        match t.truncate(oino, size) {
                                            Ok(()) => mine.truncated(size),
                                            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {}
                                            Err(e) => panic!("truncate: {e}"),
                                        }
                                    }
                                    _ => {
                                        let got = t.read(oino, ofh, 0, REGION as u32);
                                        mine.check(&got, "own file, mid-race");
                                        let got = t.read(shared, sfh, sh.base, REGION as u32);
                                        sh.check(&got, "shared file, mid-race");
                                    }
                                }
                                if op % 50 == 25 {
                                    // Can never fit.
                                    let off = rng.below(REGION);
                                    assert_eq!(
                                        errno(t.write(oino, ofh, off, oversize)),
                                        Some(libc::ENOSPC)
                                    );
                                }
                            }
                            // Then try to fill both regions: total demand exceeds the capacity.
                            for k in 0..REGION / (64 << 10) {
                                let rel = k * (64 << 10);
                                let data = pattern(rng.next(), 64 << 10);
                                attempt(oino, ofh, &mut mine, rel, &data);
                                attempt(shared, sfh, &mut sh, rel, &data);
                            }
                            (mine, sh, ok, enospc)
                        })
                    })
                    .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker"))
                .collect()
        });
    assert!(checks.load(Ordering::Relaxed) > 0);

    let u = t.fs.usage();
    assert!(u.bytes_used <= CAP);
    let acked: u64 = results.iter().map(|r| r.2).sum();
    let refused: u64 = results.iter().map(|r| r.3).sum();
    assert!(acked > 0);
    assert!(
        refused > 0,
        "demand exceeded capacity: some writes must fail"
    );

    // Every acknowledged byte reads back, and the usage is exactly what the rule says.
    let mut expected = names;
    let mut shared_pages = BTreeSet::new();
    let mut shared_end = 0;
    for (i, (mine, sh, _, _)) in results.iter().enumerate() {
        let (oino, ofh) = own[i];
        assert_eq!(t.size(oino), mine.end, "own file {i} size");
        mine.check(&t.read(oino, ofh, 0, REGION as u32), "own file");
        sh.check(&t.read(shared, sfh, sh.base, REGION as u32), "shared file");
        expected += file_charge(mine.small, &mine.pages);
        shared_pages.extend(sh.pages.iter().copied());
        shared_end = u64::max(shared_end, sh.end);
        t.release(oino, ofh);
    }
    assert_eq!(t.size(shared), shared_end);
    assert!(
        shared_pages.iter().any(|&p| p > 0),
        "the shared file has pages"
    );
    expected += file_charge(0, &shared_pages);
    assert_eq!(
        u.bytes_used, expected,
        "accounting matches the acknowledged writes"
    );
    t.release(shared, sfh);
    println!("racing writers: {acked} writes acknowledged, {refused} refused with ENOSPC");
}

// ---------------------------------------------------------------------------------------------
// 6. Memory overhead per inode.

/// Net heap bytes per empty file: the inode itself, its slot in the inode table, and its
/// directory entry (the name map and the readdir cookie index, each holding a copy of the
/// name). The bound is the documented one (`src/memfs/mod.rs`).
#[test]
fn per_inode_overhead() {
    const N: u64 = 10_000;
    const NAME_LEN: usize = 16;
    let t = T::new(1 << 30, 1 << 20);
    let dir =
        t.fs.mkdir(&t.ctx, ROOT_ID, &c(b"d"), 0o755, 0)
            .expect("mkdir")
            .inode;
    // Warm up the handle table so its first allocations are not counted.
    for i in 0..256 {
        let name = format!("w{i}");
        let (ino, fh) = t.create(ROOT_ID, name.as_bytes()).expect("create");
        t.release(ino, fh);
        t.remove(ROOT_ID, name.as_bytes(), ino);
    }
    let names: Vec<CString> = (0..N)
        .map(|i| c(format!("file-{i:011}").as_bytes()))
        .collect();
    assert!(names.iter().all(|n| n.as_bytes().len() == NAME_LEN));
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };

    let before = net_bytes();
    for name in &names {
        let (e, fh, _, _) = t.fs.create(&t.ctx, dir, name, args).expect("create");
        t.fs.release(&t.ctx, e.inode, 0, fh.expect("handle"), false, false, None)
            .expect("release");
    }
    let after = net_bytes();

    assert_eq!(t.inodes(), N + 2);
    let per_inode = (after - before) as f64 / N as f64;
    // The documented figure (src/memfs/mod.rs): under 288 bytes plus the name; and what
    // an empty file is charged covers it.
    let bound = 288.0 + NAME_LEN as f64;
    assert!(bound < (cost::INODE + cost::name(NAME_LEN as u64)) as f64);
    println!(
        "per-inode overhead: {per_inode:.1} bytes ({N} empty files, {NAME_LEN}-byte names; \
         bound {bound})"
    );
    assert!(
        per_inode < bound,
        "per-inode overhead {per_inode:.1} bytes exceeds {bound}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rename: regressions found while writing these tests (`src/memfs/dir_ops.rs`, `do_rename`).

#[test]
fn rename_charges_only_the_growth_of_names() {
    // Names of 16 bytes or less cost the same; 17 to 32 bytes, 16 more.
    let short = |ch: u8, n: usize| vec![ch; n];
    let cap = file_cost(16, 1000);
    let t = T::new(cap, 16);
    let data = pattern(1, 1000);
    let ino = t.put(ROOT_ID, &short(b'a', 16), &data);
    assert_eq!(t.used(), cap);
    let rename = |from: &[u8], to: &[u8], flags: u32| {
        t.fs.rename(&t.ctx, ROOT_ID, &c(from), ROOT_ID, &c(to), flags)
    };
    // Full: a name that costs the same needs nothing; a costlier one is refused whole.
    rename(&short(b'a', 16), &short(b'b', 16), 0).expect("same cost fits at the limit");
    assert_eq!(t.used(), cap);
    rename(&short(b'b', 16), &short(b'c', 2), 0).expect("shorter");
    assert_eq!(t.used(), cap);
    assert_eq!(
        errno(rename(&short(b'c', 2), &short(b'd', 17), 0)),
        Some(libc::ENOSPC)
    );
    assert_eq!(t.used(), cap);
    assert_eq!(
        t.fs.lookup(&t.ctx, ROOT_ID, &c(&short(b'c', 2)))
            .expect("kept")
            .inode,
        ino
    );
    t.fs.forget(&t.ctx, ino, 1);
    // Freeing 16 bytes of data makes room for the costlier name, exactly.
    t.truncate(ino, 1000 - 16).expect("truncate");
    assert_eq!(t.used(), cap - 16);
    rename(&short(b'c', 2), &short(b'd', 17), 0).expect("exactly fits");
    assert_eq!(t.used(), cap);
    let dname = short(b'd', 17);

    // Over an existing file: the old name and the replaced file are freed.
    t.truncate(ino, 100).expect("truncate");
    let other = t.put(ROOT_ID, b"o", b"12345");
    let used = t.used();
    rename(b"o", &dname, 0).expect("rename over");
    assert_eq!(t.used(), used - cost::name(1), "the old name");
    t.fs.forget(&t.ctx, ino, 1);
    assert_eq!(
        t.used(),
        used - cost::name(1) - cost::INODE - cost::heap(100),
        "the replaced file, once forgotten"
    );
    assert_eq!(t.contents(other), b"12345");

    // A whiteout keeps the old name (charged once) and takes an inode.
    let before = t.fs.usage();
    rename(&dname, b"ee", RENAME_WHITEOUT).expect("whiteout");
    let after = t.fs.usage();
    assert_eq!(
        after.bytes_used,
        before.bytes_used + cost::name(2) + cost::INODE,
        "the new name and the whiteout's inode"
    );
    assert_eq!(after.inodes_used, before.inodes_used + 1);
    let wo = t.fs.lookup(&t.ctx, ROOT_ID, &c(&dname)).expect("whiteout");
    t.fs.unlink(&t.ctx, ROOT_ID, &c(&dname)).expect("unlink");
    t.fs.forget(&t.ctx, wo.inode, 1);
    t.remove(ROOT_ID, b"ee", other);
    assert_eq!(t.used(), 0, "everything returned");
    assert_eq!(t.inodes(), 1);
}

#[test]
fn rename_onto_the_sources_own_directory_is_enotempty() {
    // `a/b/x` → `a/b`: `a/b` is the source's parent. This used to deadlock (the parent's
    // entries were locked twice). The guest kernel refuses it itself; a hostile one may not.
    let fs = std::sync::Arc::new(MemFs::builder().build().expect("MemFs builds"));
    let ctx = Context::new();
    let a = fs
        .mkdir(&ctx, ROOT_ID, &c(b"a"), 0o755, 0)
        .expect("mkdir")
        .inode;
    let b = fs.mkdir(&ctx, a, &c(b"b"), 0o755, 0).expect("mkdir").inode;
    fs.mkdir(&ctx, b, &c(b"x"), 0o755, 0).expect("mkdir");
    let (tx, rx) = std::sync::mpsc::channel();
    let fs2 = fs.clone();
    // A thread, so that a regression fails the test instead of hanging it.
    std::thread::spawn(move || {
        let r = fs2.rename(&Context::new(), b, &c(b"x"), a, &c(b"b"), 0);
        let _ = tx.send(errno(r));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("rename returned (no deadlock)");
    assert_eq!(r, Some(libc::ENOTEMPTY));
    fs.lookup(&ctx, b, &c(b"x")).expect("x untouched");
}

#[test]
fn rename_over_a_directory_races_with_creating_in_it() {
    // `rename(s, d)` over an empty directory `d` racing with `mknod(d/child)`: one of them
    // must fail. Both used to succeed now and then, leaving `child` inside a deleted
    // directory, its name and inode charged forever. The creator starts after a delay that
    // sweeps over the rename's duration, round by round.
    const ROUNDS: u64 = 20_000;
    let t = T::new(1 << 20, 1 << 20);
    let d_ino = AtomicU64::new(0);
    let start = std::sync::Barrier::new(3);
    let end = std::sync::Barrier::new(3);
    let renamed = AtomicUsize::new(0);
    let created = AtomicU64::new(0);
    let failure = std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..ROUNDS {
                start.wait();
                let r = t.fs.rename(&t.ctx, ROOT_ID, &c(b"s"), ROOT_ID, &c(b"d"), 0);
                renamed.store(usize::from(r.is_ok()), Ordering::Release);
                end.wait();
            }
        });
        s.spawn(|| {
            for round in 0..ROUNDS {
                start.wait();
                for _ in 0..round % 200 {
                    std::hint::spin_loop();
                }
                let d = d_ino.load(Ordering::Acquire);
                let mode = libc::S_IFIFO as u32 | 0o644;
                let r = t.fs.mknod(&t.ctx, d, &c(b"child"), mode, 0, 0);
                created.store(r.map_or(0, |e| e.inode), Ordering::Release);
                end.wait();
            }
        });
        // Never panics while the others wait at a barrier: the first failure is kept, and
        // the remaining rounds only step the barriers.
        let mut failure = None;
        for round in 0..ROUNDS {
            if failure.is_none() {
                let s = t.fs.mkdir(&t.ctx, ROOT_ID, &c(b"s"), 0o755, 0);
                let d = t.fs.mkdir(&t.ctx, ROOT_ID, &c(b"d"), 0o755, 0);
                match (s, d) {
                    (Ok(s), Ok(d)) => {
                        d_ino.store(d.inode, Ordering::Release);
                        start.wait();
                        end.wait();
                        failure = check_round(&t, round, s.inode, d.inode, &renamed, &created);
                        continue;
                    }
                    (s, d) => failure = Some(format!("round {round}: mkdir {s:?} {d:?}")),
                }
            }
            start.wait();
            end.wait();
        }
        failure
    });
    assert_eq!(failure, None);
}

/// Checks one round of the rename/create race and cleans up after it.
fn check_round(
    t: &T,
    round: u64,
    s: u64,
    d: u64,
    renamed: &AtomicUsize,
    created: &AtomicU64,
) -> Option<String> {
    let renamed = renamed.load(Ordering::Acquire) == 1;
    let child = created.load(Ordering::Acquire);
    if renamed && child != 0 {
        return Some(format!(
            "round {round}: rename over d and a create in d both succeeded"
        ));
    }
    let mut errs = Vec::new();
    if child != 0 {
        errs.push(t.fs.unlink(&t.ctx, d, &c(b"child")));
        t.fs.forget(&t.ctx, child, 1);
    }
    errs.push(t.fs.rmdir(&t.ctx, ROOT_ID, &c(b"d")));
    if !renamed {
        errs.push(t.fs.rmdir(&t.ctx, ROOT_ID, &c(b"s")));
    }
    t.fs.forget(&t.ctx, s, 1);
    t.fs.forget(&t.ctx, d, 1);
    if let Some(e) = errs.into_iter().find_map(Result::err) {
        return Some(format!("round {round}: cleanup: {e}"));
    }
    if (t.used(), t.inodes()) != (0, 1) {
        return Some(format!("round {round}: leaked {:?}", t.fs.usage()));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Handles: a guest that never releases cannot grow the handle table without bound.

#[test]
fn handle_limit_gives_enfile_and_a_release_makes_room() {
    let fs = MemFs::builder().max_handles(8).build().expect("build");
    let ctx = Context::new();
    let args = |flags: i32| CreateIn {
        flags: flags as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = fs
        .create(&ctx, ROOT_ID, &c(b"f"), args(libc::O_RDWR))
        .expect("create");
    let mut fhs = vec![fh.expect("handle")];
    for _ in 1..8 {
        let (fh, _, _) = fs
            .open(&ctx, e.inode, libc::O_RDONLY as u32, 0)
            .expect("open");
        fhs.push(fh.expect("handle"));
    }
    let err = |r: io::Result<()>| r.err().and_then(|e| e.raw_os_error());
    assert_eq!(
        err(fs.open(&ctx, e.inode, libc::O_RDONLY as u32, 0).map(|_| ())),
        Some(libc::ENFILE)
    );
    assert_eq!(
        err(fs
            .create(&ctx, ROOT_ID, &c(b"g"), args(libc::O_RDWR))
            .map(|_| ())),
        Some(libc::ENFILE)
    );
    assert!(
        fs.lookup(&ctx, ROOT_ID, &c(b"g")).is_err(),
        "a create refused for lack of handles leaves no file"
    );
    let last = fhs.pop().expect("a handle");
    fs.release(&ctx, e.inode, 0, last, false, false, None)
        .expect("release");
    assert!(fs.open(&ctx, e.inode, libc::O_RDONLY as u32, 0).is_ok());
}
