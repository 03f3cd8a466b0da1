//! In-memory [`ZeroCopyReader`] and [`ZeroCopyWriter`]s.
//!
//! The vhost transport moves data between backends and guest memory through these traits.
//! The types here do the same with ordinary buffers, so that tests, benchmarks, an embedding
//! runtime or a composing backend (copy-up in an overlay) can call `read` and `write` on any
//! [`DynFileSystem`](crate::DynFileSystem) directly.
//!
//! ```
//! use boxfs::memfs::MemFs;
//! use boxfs::zero_copy::{MemReader, MemWriter};
//! use boxfs::{Context, CreateIn, FileSystem, ROOT_ID};
//! use std::ffi::CString;
//!
//! let fs = MemFs::builder().build()?;
//! let ctx = Context::new();
//! let args = CreateIn { flags: libc::O_RDWR as u32, mode: 0o644, umask: 0, fuse_flags: 0 };
//! let (entry, fh, _, _) = fs.create(&ctx, ROOT_ID, &CString::new("f")?, args)?;
//! let fh = fh.expect("MemFs returns handles");
//! let mut src = MemReader::new(b"hello");
//! fs.write(&ctx, entry.inode, fh, &mut src, 5, 0, None, false, 0, 0)?;
//! let mut dst = MemWriter::new(16);
//! fs.read(&ctx, entry.inode, fh, &mut dst, 16, 0, None, 0)?;
//! assert_eq!(dst.as_slice(), b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;

use crate::{FileReadWriteVolatile, FileVolatileSlice, ZeroCopyReader, ZeroCopyWriter};

/// A [`ZeroCopyReader`] over a byte slice: the data a `write` request carries.
pub struct MemReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> MemReader<'a> {
    /// A reader that yields `data` once.
    pub fn new(data: &'a [u8]) -> Self {
        MemReader { data, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}

impl io::Read for MemReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.remaining());
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ZeroCopyReader for MemReader<'_> {
    fn read_to(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let n = count.min(self.remaining());
        if n == 0 {
            return Ok(0);
        }
        let src = &self.data[self.pos..self.pos + n];
        // SAFETY: the slice covers `n` initialised bytes borrowed for this call; the
        // `write_at_volatile` side only reads from it, so the shared borrow is never written.
        let slice = unsafe { FileVolatileSlice::from_raw_ptr(src.as_ptr() as *mut u8, n) };
        let done = f.write_at_volatile(slice, off)?;
        self.pos += done.min(n);
        Ok(done)
    }
}

/// A [`ZeroCopyWriter`] into an owned buffer of bounded size: the reply of a `read` request.
pub struct MemWriter {
    buf: Vec<u8>,
    limit: usize,
}

impl MemWriter {
    /// A writer that accepts at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MemWriter {
            buf: Vec::new(),
            limit,
        }
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// Consumes the writer, returning the bytes written.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    /// Empties the buffer so the writer can be reused (the limit stays).
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

impl io::Write for MemWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.available_bytes());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for MemWriter {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let n = count.min(self.available_bytes());
        if n == 0 {
            return Ok(0);
        }
        let start = self.buf.len();
        self.buf.resize(start + n, 0);
        let dst = &mut self.buf[start..];
        // SAFETY: `dst` is an exclusively borrowed, initialised region of `n` bytes that outlives
        // the call.
        let slice = unsafe { FileVolatileSlice::from_mut_slice(dst) };
        let got = f.read_at_volatile(slice, off);
        let got = match got {
            Ok(g) => g.min(n),
            Err(e) => {
                self.buf.truncate(start);
                return Err(e);
            }
        };
        self.buf.truncate(start + got);
        Ok(got)
    }

    fn available_bytes(&self) -> usize {
        self.limit.saturating_sub(self.buf.len())
    }
}
