//! File contents as an exact-size small-file buffer or sparse fixed-size pages, and the
//! zero-copy adapters that move bytes between them and guest memory.
//!
//! Charging rule ([`super::cost`]): a file whose data lies within the first
//! [`SMALL_FILE_MAX`] bytes keeps its written prefix in one exact-size buffer and is charged
//! that buffer's heap size; past that it is charged a full page per allocated page. A 1-byte
//! file costs 32 bytes, a 1 GiB sparse file with one 4 KiB page written (past the first)
//! costs 4 KiB. Pages never exist wholly beyond EOF.

use std::collections::BTreeMap;
use std::io;

use super::cost::{self, SMALL_FILE_MAX};
use crate::{errno, FileReadWriteVolatile, FileVolatileSlice};

/// Page size of file data.
pub(crate) const PAGE: u64 = cost::PAGE;
const PAGE_USIZE: usize = PAGE as usize;
static ZEROES: [u8; PAGE_USIZE] = [0; PAGE_USIZE];

/// The largest file size (as on Linux, offsets must fit in `loff_t`).
pub(crate) const MAX_FILE_SIZE: u64 = i64::MAX as u64;

type Page = [u8; PAGE_USIZE];

fn new_page() -> Box<Page> {
    Box::new([0; PAGE_USIZE])
}

/// `old` resized to exactly `len` bytes (zero-filled when it grows).
fn resized(old: &[u8], len: usize) -> Box<[u8]> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&old[..old.len().min(len)]);
    v.resize(len, 0);
    v.into_boxed_slice()
}

/// The contents of a regular file.
#[derive(Default)]
pub(crate) struct FileData {
    /// Bytes `[0, small.len())` of a file that has no pages (the rest, up to `size`, reads
    /// as zeroes). Empty once the file has pages.
    small: Box<[u8]>,
    pages: BTreeMap<u64, Box<Page>>,
    size: u64,
    /// Bytes currently charged to the capacity for this file.
    charged: u64,
}

impl FileData {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn charged(&self) -> u64 {
        self.charged
    }

    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.small.len() as u64 + self.pages.len() as u64 * PAGE
    }

    fn charge_now(&self) -> u64 {
        cost::data(self.small.len() as u64, self.pages.len() as u64)
    }

    /// The small-file buffer (empty once the file has pages), for a state snapshot.
    pub(crate) fn small_bytes(&self) -> &[u8] {
        &self.small
    }

    /// The allocated pages in order (index, bytes), for a state snapshot.
    pub(crate) fn page_iter(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.pages.iter().map(|(k, p)| (*k, &p[..]))
    }

    /// Restores a snapshot's size (before its data). `false` if it is not a valid size.
    pub(crate) fn restore_size(&mut self, size: u64) -> bool {
        if size > MAX_FILE_SIZE || !self.small.is_empty() || !self.pages.is_empty() {
            return false;
        }
        self.size = size;
        true
    }

    /// Restores a snapshot's small buffer. `false` unless it fits the small-file rule
    /// (no pages, at most [`SMALL_FILE_MAX`] bytes, within the size).
    pub(crate) fn restore_small(&mut self, bytes: &[u8]) -> bool {
        let n = bytes.len() as u64;
        if !self.pages.is_empty() || !self.small.is_empty() || n > SMALL_FILE_MAX || n > self.size {
            return false;
        }
        self.small = bytes.into();
        true
    }

    /// Restores one page of a snapshot. `false` if the page is not a full page, is there
    /// already, lies wholly beyond EOF, or the file has a small buffer.
    pub(crate) fn restore_page(&mut self, idx: u64, bytes: &[u8]) -> bool {
        let Ok(page) = <&Page>::try_from(bytes) else {
            return false;
        };
        if !self.small.is_empty()
            || self.pages.contains_key(&idx)
            || idx.checked_mul(PAGE).is_none_or(|start| start >= self.size)
        {
            return false;
        }
        self.pages.insert(idx, Box::new(*page));
        true
    }

    /// Whether data ending at `end` stays in the small buffer.
    fn stays_small(&self, end: u64) -> bool {
        self.pages.is_empty() && end <= SMALL_FILE_MAX
    }

    /// The charge this file would have once `[off, off + len)` is allocated and the size is
    /// at least `off + len` (or unchanged when `keep_size`, clipping the range at EOF). An
    /// upper bound of the charge after any prefix of that range is written.
    pub(crate) fn charge_after_alloc(&self, off: u64, len: u64, keep_size: bool) -> u64 {
        let end = if keep_size {
            (off + len).min(self.size)
        } else {
            off + len
        };
        if end <= off {
            return self.charge_now();
        }
        if self.stays_small(end) {
            return cost::data((self.small.len() as u64).max(end), 0);
        }
        let first = off / PAGE;
        let last = (end - 1) / PAGE;
        let present = self.pages.range(first..=last).count() as u64;
        let mut n_pages = self.pages.len() as u64 + (last - first + 1 - present);
        if !self.small.is_empty() && first > 0 {
            // The small buffer moves to page 0.
            n_pages += 1;
        }
        cost::data(0, n_pages)
    }

    /// The charge this file would have at `size` bytes.
    pub(crate) fn charge_after_truncate(&self, size: u64) -> u64 {
        if size >= self.size {
            return self.charge_now();
        }
        let held = (self.small.len() as u64).min(size);
        let keep = size.div_ceil(PAGE);
        cost::data(held, self.pages.range(..keep).count() as u64)
    }

    /// Re-derives the charge after a change; returns `(old, new)`.
    pub(crate) fn recharge(&mut self) -> (u64, u64) {
        let old = self.charged;
        self.charged = self.charge_now();
        (old, self.charged)
    }

    /// Moves the small buffer into page 0 (before the file gets pages).
    fn spill(&mut self) {
        if !self.small.is_empty() {
            let mut p = new_page();
            p[..self.small.len()].copy_from_slice(&self.small);
            self.pages.insert(0, p);
            self.small = Box::default();
        }
    }

    /// Grows the small buffer to hold `[0, end)`.
    fn grow_small(&mut self, end: u64) {
        if (self.small.len() as u64) < end {
            self.small = resized(&self.small, end as usize);
        }
    }

    /// Sets the size, freeing data beyond it and zeroing the tail of the last page.
    pub(crate) fn set_size(&mut self, size: u64) {
        if size < self.size {
            if (size as usize) < self.small.len() {
                self.small = resized(&self.small, size as usize);
            }
            let keep = size.div_ceil(PAGE);
            self.pages.split_off(&keep);
            let tail = (size % PAGE) as usize;
            if tail != 0 {
                if let Some(p) = self.pages.get_mut(&(size / PAGE)) {
                    p[tail..].fill(0);
                }
            }
        }
        self.size = size;
    }

    /// Allocates zeroed data over `[off, off + len)` (clipped at EOF when `keep_size`) and
    /// extends the size unless `keep_size`.
    pub(crate) fn allocate(&mut self, off: u64, len: u64, keep_size: bool) {
        let end = if keep_size {
            (off + len).min(self.size)
        } else {
            off + len
        };
        if end > off {
            if self.stays_small(end) {
                self.grow_small(end);
            } else {
                self.spill();
                for idx in off / PAGE..=(end - 1) / PAGE {
                    self.pages.entry(idx).or_insert_with(new_page);
                }
            }
        }
        if !keep_size && end > self.size {
            self.size = end;
        }
    }

    /// Zeroes `[off, off + len)` within EOF, freeing whole pages (or the small buffer's
    /// tail).
    pub(crate) fn punch_hole(&mut self, off: u64, len: u64) {
        let end = off.saturating_add(len).min(self.size);
        if end <= off {
            return;
        }
        if !self.small.is_empty() {
            let held = self.small.len() as u64;
            if off < held {
                if end >= held {
                    self.small = resized(&self.small, off as usize);
                } else {
                    self.small[off as usize..end as usize].fill(0);
                }
            }
            return;
        }
        let first_full = off.div_ceil(PAGE);
        // A hole reaching end-of-file frees the last page too: its bytes past EOF hold nothing.
        let end_full = if end == self.size {
            end.div_ceil(PAGE)
        } else {
            end / PAGE
        };
        if first_full < end_full {
            let doomed: Vec<u64> = self
                .pages
                .range(first_full..end_full)
                .map(|(k, _)| *k)
                .collect();
            for k in doomed {
                self.pages.remove(&k);
            }
        }
        self.zero_partial(off, end.min(first_full * PAGE));
        self.zero_partial((end_full * PAGE).max(off), end);
    }

    /// Zeroes `[off, end)` where both lie within one page.
    fn zero_partial(&mut self, off: u64, end: u64) {
        if end <= off {
            return;
        }
        if let Some(p) = self.pages.get_mut(&(off / PAGE)) {
            let s = (off % PAGE) as usize;
            p[s..s + (end - off) as usize].fill(0);
        }
    }

    /// `SEEK_DATA`: the first offset at or after `off` backed by data.
    pub(crate) fn seek_data(&self, off: u64) -> io::Result<u64> {
        if off >= self.size {
            return Err(errno(libc::ENXIO));
        }
        if !self.small.is_empty() {
            return if off < self.small.len() as u64 {
                Ok(off)
            } else {
                Err(errno(libc::ENXIO))
            };
        }
        self.pages
            .range(off / PAGE..)
            .next()
            .map(|(k, _)| (k * PAGE).max(off))
            .filter(|&o| o < self.size)
            .ok_or_else(|| errno(libc::ENXIO))
    }

    /// `SEEK_HOLE`: the first offset at or after `off` not backed by data (EOF counts).
    pub(crate) fn seek_hole(&self, off: u64) -> io::Result<u64> {
        if off >= self.size {
            return Err(errno(libc::ENXIO));
        }
        if !self.small.is_empty() {
            return Ok(off.max(self.small.len() as u64).min(self.size));
        }
        let mut idx = off / PAGE;
        for (k, _) in self.pages.range(idx..) {
            if *k != idx {
                break;
            }
            idx += 1;
        }
        Ok((idx * PAGE).max(off).min(self.size))
    }

    /// The bytes at `pos`, at most `max` of them (at least one when `max > 0`): a slice of
    /// the small buffer, of a page, or of zeroes for a hole.
    fn chunk_at(&self, pos: u64, max: usize) -> &[u8] {
        if self.pages.is_empty() {
            let held = self.small.len() as u64;
            return if pos < held {
                let s = pos as usize;
                let n = ((held - pos) as usize).min(max);
                &self.small[s..s + n]
            } else {
                &ZEROES[..max.min(PAGE_USIZE)]
            };
        }
        let in_page = (pos % PAGE) as usize;
        let n = (PAGE_USIZE - in_page).min(max);
        match self.pages.get(&(pos / PAGE)) {
            Some(p) => &p[in_page..in_page + n],
            None => &ZEROES[..n],
        }
    }

    /// Copies file bytes at `off` into `dst` (holes read as zeroes), up to EOF.
    fn read_into(&self, dst: &FileVolatileSlice, off: u64) -> usize {
        let want = (dst.len() as u64).min(self.size.saturating_sub(off)) as usize;
        let vs = dst.as_volatile_slice();
        let mut done = 0usize;
        while done < want {
            let src = self.chunk_at(off + done as u64, want - done);
            match vs.subslice(done, src.len()) {
                Ok(part) => part.copy_from(src),
                Err(_) => break,
            }
            done += src.len();
        }
        done
    }

    /// Copies `src` into the file at `off`, allocating data, never past `limit`.
    fn write_from(&mut self, src: &FileVolatileSlice, off: u64, limit: u64) -> usize {
        let want = (src.len() as u64).min(limit.saturating_sub(off)) as usize;
        if want == 0 {
            return 0;
        }
        let vs = src.as_volatile_slice();
        let mut done = 0usize;
        let end = off + want as u64;
        if self.stays_small(end) {
            self.grow_small(end);
            let s = off as usize;
            if let Ok(part) = vs.subslice(0, want) {
                done = part.copy_to(&mut self.small[s..s + want]);
            }
        } else {
            self.spill();
            while done < want {
                let pos = off + done as u64;
                let in_page = (pos % PAGE) as usize;
                let n = (PAGE_USIZE - in_page).min(want - done);
                let page = self.pages.entry(pos / PAGE).or_insert_with(new_page);
                match vs.subslice(done, n) {
                    Ok(part) => {
                        part.copy_to(&mut page[in_page..in_page + n]);
                    }
                    Err(_) => break,
                }
                done += n;
            }
        }
        let end = off + done as u64;
        if end > self.size {
            self.size = end;
        }
        done
    }
}

/// Reads file pages into guest buffers (the `FileReadWriteVolatile` a `ZeroCopyWriter` pulls
/// from).
pub(crate) struct PageReader<'a>(pub(crate) &'a FileData);

impl FileReadWriteVolatile for PageReader<'_> {
    fn read_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
        Err(errno(libc::EINVAL))
    }
    fn write_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
        Err(errno(libc::EBADF))
    }
    fn read_at_volatile(&mut self, slice: FileVolatileSlice, offset: u64) -> io::Result<usize> {
        Ok(self.0.read_into(&slice, offset))
    }
    fn read_vectored_at_volatile(
        &mut self,
        bufs: &[FileVolatileSlice],
        offset: u64,
    ) -> io::Result<usize> {
        let mut done = 0usize;
        for b in bufs {
            let n = self.0.read_into(b, offset + done as u64);
            done += n;
            if n < b.len() {
                break;
            }
        }
        Ok(done)
    }
    fn write_at_volatile(&mut self, _slice: FileVolatileSlice, _offset: u64) -> io::Result<usize> {
        Err(errno(libc::EBADF))
    }
}

/// Writes guest buffers into file pages (the `FileReadWriteVolatile` a `ZeroCopyReader`
/// pushes into), never beyond `limit`, the end of the range the caller reserved capacity for.
pub(crate) struct PageWriter<'a> {
    pub(crate) data: &'a mut FileData,
    pub(crate) limit: u64,
}

impl FileReadWriteVolatile for PageWriter<'_> {
    fn read_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
        Err(errno(libc::EBADF))
    }
    fn write_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
        Err(errno(libc::EINVAL))
    }
    fn read_at_volatile(&mut self, _slice: FileVolatileSlice, _offset: u64) -> io::Result<usize> {
        Err(errno(libc::EBADF))
    }
    fn write_at_volatile(&mut self, slice: FileVolatileSlice, offset: u64) -> io::Result<usize> {
        Ok(self.data.write_from(&slice, offset, self.limit))
    }
    fn write_vectored_at_volatile(
        &mut self,
        bufs: &[FileVolatileSlice],
        offset: u64,
    ) -> io::Result<usize> {
        let mut done = 0usize;
        for b in bufs {
            let n = self.data.write_from(b, offset + done as u64, self.limit);
            done += n;
            if n < b.len() {
                break;
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charge_rule() {
        let mut f = FileData::default();
        assert_eq!(f.charge_after_alloc(0, 10, false), cost::heap(10));
        f.allocate(0, 10, false);
        f.recharge();
        assert_eq!(f.charged(), cost::heap(10));
        // Sparse: one page far away moves the small buffer to page 0.
        assert_eq!(f.charge_after_alloc(1 << 30, 4096, false), 2 * PAGE);
        f.allocate(1 << 30, 4096, false);
        f.recharge();
        assert_eq!(f.charged(), 2 * PAGE);
        assert_eq!(f.charge_after_truncate(5), PAGE);
        f.set_size(5);
        f.recharge();
        assert_eq!(f.charged(), PAGE);
        f.punch_hole(0, 5);
        f.recharge();
        assert_eq!(f.size(), 5);
        assert_eq!(f.charged(), 0);
        assert_eq!(f.seek_hole(0).ok(), Some(0));
    }

    #[test]
    fn small_buffer_is_exact_and_reads_zeroes_beyond() {
        let mut f = FileData::default();
        f.allocate(0, 100, false);
        f.small[..100].fill(7);
        f.set_size(1000);
        assert_eq!(f.small.len(), 100);
        assert_eq!(f.chunk_at(50, 10), &[7u8; 10][..]);
        assert_eq!(f.chunk_at(100, 10), &[0u8; 10][..]);
        f.punch_hole(60, 1000);
        assert_eq!(f.small.len(), 60);
        assert_eq!(f.seek_hole(0).ok(), Some(60));
        f.allocate(0, SMALL_FILE_MAX + 1, false);
        assert!(f.small.is_empty());
        assert_eq!(f.pages[&0][59], 7);
        assert_eq!(f.pages.len(), 2);
    }

    #[test]
    fn punch_hole_frees_whole_pages_and_zeroes_edges() {
        let mut f = FileData::default();
        f.allocate(0, 3 * PAGE, false);
        for p in f.pages.values_mut() {
            p.fill(1);
        }
        f.punch_hole(100, 2 * PAGE);
        assert_eq!(f.pages.len(), 2);
        assert_eq!(f.pages[&0][99], 1);
        assert_eq!(f.pages[&0][100], 0);
        assert_eq!(f.pages[&2][99], 0);
        assert_eq!(f.pages[&2][100], 1);
        assert_eq!(f.seek_hole(0).ok(), Some(PAGE));
        assert_eq!(f.seek_data(PAGE).ok(), Some(2 * PAGE));
    }
}
