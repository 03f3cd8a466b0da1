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
//! let mut src = MemReader::copied(b"hello");
//! fs.write(&ctx, entry.inode, fh, &mut src, 5, 0, None, false, 0, 0)?;
//! let mut dst = MemWriter::new(16);
//! fs.read(&ctx, entry.inode, fh, &mut dst, 16, 0, None, 0)?;
//! assert_eq!(dst.as_slice(), b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;

use crate::{FileReadWriteVolatile, FileVolatileSlice, ZeroCopyReader, ZeroCopyWriter};

/// The bytes a [`MemReader`] hands out: borrowed exclusively, or owned.
enum Source<'a> {
    Borrowed(&'a mut [u8]),
    Owned(Box<[u8]>),
}

/// A [`ZeroCopyReader`]: the data a `write` request carries.
///
/// The backend receives the bytes as a [`FileVolatileSlice`], which allows writes, so the
/// reader needs exclusive access to them: either an exclusively borrowed buffer
/// ([`new`](Self::new), no copy; a backend may in principle scribble on it) or its own copy
/// ([`copied`](Self::copied)). No safe code can therefore write through memory that someone
/// else reads as a shared `&[u8]`:
///
/// ```compile_fail
/// # use boxfs::zero_copy::MemReader;
/// let shared: &[u8] = b"read-only";
/// let _r = MemReader::new(shared); // a shared borrow is not enough
/// ```
pub struct MemReader<'a> {
    data: Source<'a>,
    pos: usize,
}

impl<'a> MemReader<'a> {
    /// A reader that yields `data` once, without copying it. The buffer is borrowed
    /// exclusively because the backend is handed a writable view of it.
    pub fn new(data: &'a mut [u8]) -> Self {
        MemReader {
            data: Source::Borrowed(data),
            pos: 0,
        }
    }

    /// A reader that yields a private copy of `data` once (for callers that only hold a
    /// shared borrow).
    pub fn copied(data: &[u8]) -> MemReader<'static> {
        MemReader {
            data: Source::Owned(data.into()),
            pos: 0,
        }
    }

    fn data(&self) -> &[u8] {
        match &self.data {
            Source::Borrowed(b) => b,
            Source::Owned(b) => b,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.data {
            Source::Borrowed(b) => b,
            Source::Owned(b) => b,
        }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.data().len() - self.pos
    }
}

impl io::Read for MemReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.remaining());
        buf[..n].copy_from_slice(&self.data()[self.pos..self.pos + n]);
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
        let pos = self.pos;
        let src = &mut self.bytes_mut()[pos..pos + n];
        // SAFETY: `src` is exclusively borrowed for the whole call (nothing else can read or
        // write it meanwhile), initialised, and `n` bytes long; the slice does not outlive it.
        let slice = unsafe { FileVolatileSlice::from_mut_slice(src) };
        let done = f.write_at_volatile(slice, off)?;
        self.pos += done.min(n);
        Ok(done.min(n))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A (safe) sink that scribbles on the slice it is handed, as any safe
    /// `FileReadWriteVolatile` may.
    struct Scribbler;

    impl FileReadWriteVolatile for Scribbler {
        fn read_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
            Ok(0)
        }
        fn write_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
            Ok(0)
        }
        fn read_at_volatile(&mut self, _slice: FileVolatileSlice, _off: u64) -> io::Result<usize> {
            Ok(0)
        }
        fn write_at_volatile(&mut self, slice: FileVolatileSlice, _off: u64) -> io::Result<usize> {
            let vs = slice.as_volatile_slice();
            vs.copy_from(&vec![b'!'; slice.len()]);
            Ok(slice.len())
        }
    }

    #[test]
    fn a_writing_sink_never_touches_shared_data() {
        // Only the reader's own copy can change: the caller's shared bytes stay as they are.
        let shared: &[u8] = b"constant";
        let mut r = MemReader::copied(shared);
        assert_eq!(r.read_to(&mut Scribbler, 8, 0).ok(), Some(8));
        assert_eq!(shared, b"constant");
        // With an exclusively borrowed buffer the sink may write into it, which is sound.
        let mut buf = *b"mutable!";
        let mut r = MemReader::new(&mut buf);
        assert_eq!(r.read_to(&mut Scribbler, 8, 0).ok(), Some(8));
        assert_eq!(r.remaining(), 0);
        assert_eq!(&buf, b"!!!!!!!!");
    }
}
