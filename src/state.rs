//! The device-state stream: the common, versioned and checksummed format in which every
//! backend writes its guest-visible state ([`DynFileSystem::save_state`]) and reads it back
//! ([`DynFileSystem::load_state`]).
//!
//! # Format (version 1)
//!
//! All integers are little-endian.
//!
//! ```text
//! header   magic "BOXFSST\0" (8) | version u16 | kind length u8 | kind (ASCII) | crc32 u32
//! record   payload length u32 | tag u16 | crc32(tag ‖ payload) u32 | payload
//! ...
//! end      record with tag END: count u64 (records before it) | crc32 u32 (every byte before it)
//! ```
//!
//! * The header names the backend kind (`"memfs"`, `"passthrough"`, …): a stream is only
//!   loaded by the kind that wrote it.
//! * A payload is at most [`MAX_RECORD`] bytes, so writer and reader each hold one bounded
//!   buffer, never the whole state: large contents (file data) are split into many records.
//! * Every record carries its own CRC-32; the end record carries the number of records and
//!   a CRC-32 of the whole stream before it. A stream that is cut short, has a flipped byte, a
//!   record too many or too few, or an unknown version is rejected with a [`StateError`]
//!   (wrapped in an [`io::Error`]; [`StateError::errno`] gives the errno to report).
//! * A nested stream (a layer's state inside an overlay's) is carried as a run of
//!   [`NESTED_CHUNK`] records ended by a [`NESTED_END`] record ([`StateWriter::nested`],
//!   [`StateReader::nested`]); the nested stream has its own header and end record.
//! * Versions: a reader accepts every version from [`MIN_READ_VERSION`] to [`FORMAT_VERSION`]
//!   and hands [`StateReader::version`] to the backend, which dispatches on it, so a newer
//!   build can load an older state. Record tags below [`RESERVED_TAGS`] belong to the backend
//!   kind named in the header.
//!
//! [`DynFileSystem::save_state`]: crate::DynFileSystem::save_state
//! [`DynFileSystem::load_state`]: crate::DynFileSystem::load_state

use std::fmt;
use std::io::{self, Read, Write};

/// First bytes of every state stream.
pub const MAGIC: [u8; 8] = *b"BOXFSST\0";

/// The format version this build writes.
pub const FORMAT_VERSION: u16 = 1;

/// The oldest format version this build reads.
pub const MIN_READ_VERSION: u16 = 1;

/// Largest record payload, in bytes (1 MiB): the bound on either side's buffer.
pub const MAX_RECORD: usize = 1 << 20;

/// Longest backend kind name in a header.
pub const MAX_KIND: usize = 32;

/// Tags from this value up are the format's own; backends use tags below it.
pub const RESERVED_TAGS: u16 = 0xff00;

/// Tag of a chunk of a nested stream.
pub const NESTED_CHUNK: u16 = 0xfffd;

/// Tag of the record that ends a nested stream.
pub const NESTED_END: u16 = 0xfffe;

/// Tag of the end record.
pub const END: u16 = 0xffff;

/// Payload size of the chunks [`StateWriter::nested`] emits.
const CHUNK: usize = 64 << 10;

/// Why a state stream was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateErrorKind {
    /// Not a state stream (bad magic).
    NotState,
    /// A version this build cannot read.
    Version,
    /// A state written by another backend kind (or a different layout, such as another
    /// volume table).
    Mismatch,
    /// The stream ends early.
    Truncated,
    /// A checksum, length or count does not match: the stream was altered.
    Corrupt,
    /// The records are well-formed but their content is invalid (an impossible value, a
    /// name that would leave the share, a reference to nothing).
    Invalid,
    /// The state does not fit this filesystem's limits (capacity, inodes, handles).
    Limit,
}

/// A rejected state stream: why, and a message for the log. Carried inside the
/// [`io::Error`] that `load_state` returns; see [`StateError::of`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateError {
    /// Why the stream was rejected.
    pub kind: StateErrorKind,
    /// What exactly was wrong.
    pub message: String,
}

impl StateError {
    /// An [`io::Error`] carrying a [`StateError`].
    pub fn io(kind: StateErrorKind, message: impl Into<String>) -> io::Error {
        let io_kind = match kind {
            StateErrorKind::Truncated => io::ErrorKind::UnexpectedEof,
            StateErrorKind::Version => io::ErrorKind::Unsupported,
            StateErrorKind::Limit => io::ErrorKind::StorageFull,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(
            io_kind,
            StateError {
                kind,
                message: message.into(),
            },
        )
    }

    /// The [`StateError`] inside `e`, if `e` is a rejected stream.
    pub fn of(e: &io::Error) -> Option<&StateError> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }

    /// The errno that reports this error: `EBADMSG` for a truncated or corrupt stream,
    /// `EPROTONOSUPPORT` for an unknown version, `ENOSPC` for a state over the limits,
    /// `EINVAL` otherwise.
    pub fn errno(&self) -> i32 {
        match self.kind {
            StateErrorKind::Truncated | StateErrorKind::Corrupt => libc::EBADMSG,
            StateErrorKind::Version => libc::EPROTONOSUPPORT,
            StateErrorKind::Limit => libc::ENOSPC,
            _ => libc::EINVAL,
        }
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device state rejected ({:?}): {}",
            self.kind, self.message
        )
    }
}

impl std::error::Error for StateError {}

/// The errno to report for any error of `save_state`/`load_state`: the [`StateError`]'s, the
/// OS error's, or `EIO`.
pub fn errno_of(e: &io::Error) -> i32 {
    StateError::of(e)
        .map(StateError::errno)
        .or_else(|| e.raw_os_error())
        .unwrap_or(libc::EIO)
}

/// Shorthand for an [`StateErrorKind::Invalid`] error.
pub(crate) fn invalid(message: impl Into<String>) -> io::Error {
    StateError::io(StateErrorKind::Invalid, message)
}

/// Writes a state stream record by record; see the [module documentation](self).
pub struct StateWriter<'a> {
    out: &'a mut dyn Write,
    crc: crc32fast::Hasher,
    count: u64,
    bytes: u64,
    largest: usize,
}

impl<'a> StateWriter<'a> {
    /// Writes the header of a stream for backend `kind` (ASCII, at most [`MAX_KIND`] bytes).
    pub fn new(out: &'a mut dyn Write, kind: &str) -> io::Result<Self> {
        if kind.len() > MAX_KIND || !kind.is_ascii() {
            return Err(invalid(format!(
                "backend kind {kind:?} is not a short ASCII name"
            )));
        }
        let mut header = Vec::with_capacity(16 + kind.len());
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.push(kind.len() as u8);
        header.extend_from_slice(kind.as_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        let mut w = StateWriter {
            out,
            crc: crc32fast::Hasher::new(),
            count: 0,
            bytes: 0,
            largest: 0,
        };
        w.raw(&header)?;
        Ok(w)
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes one record: a backend `tag` (below [`RESERVED_TAGS`]) and its payload (at most
    /// [`MAX_RECORD`] bytes).
    pub fn record(&mut self, tag: u16, payload: &[u8]) -> io::Result<()> {
        if tag >= RESERVED_TAGS {
            return Err(invalid(format!("record tag {tag:#x} is reserved")));
        }
        self.put(tag, payload)
    }

    fn put(&mut self, tag: u16, payload: &[u8]) -> io::Result<()> {
        if payload.len() > MAX_RECORD {
            return Err(invalid(format!(
                "record of {} bytes exceeds {MAX_RECORD}",
                payload.len()
            )));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&tag.to_le_bytes());
        crc.update(payload);
        let mut head = [0u8; 10];
        head[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[4..6].copy_from_slice(&tag.to_le_bytes());
        head[6..].copy_from_slice(&crc.finalize().to_le_bytes());
        self.raw(&head)?;
        self.raw(payload)?;
        self.count += 1;
        self.largest = self.largest.max(payload.len());
        Ok(())
    }

    /// A writer for a nested stream (another filesystem's `save_state`), carried as chunk
    /// records of this stream. Call [`NestedWriter::finish`] when the nested stream is
    /// complete.
    pub fn nested(&mut self) -> NestedWriter<'_, 'a> {
        NestedWriter {
            outer: self,
            buf: Vec::with_capacity(CHUNK),
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// The largest record payload written so far.
    pub fn largest_record(&self) -> usize {
        self.largest
    }

    /// Writes the end record and flushes; returns the stream's total size in bytes.
    pub fn finish(mut self) -> io::Result<u64> {
        let mut end = [0u8; 12];
        end[..8].copy_from_slice(&self.count.to_le_bytes());
        end[8..].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        self.put(END, &end)?;
        self.out.flush()?;
        Ok(self.bytes)
    }
}

/// A nested stream being written into a [`StateWriter`]; see [`StateWriter::nested`].
pub struct NestedWriter<'w, 'a> {
    outer: &'w mut StateWriter<'a>,
    buf: Vec<u8>,
    written: u64,
}

impl NestedWriter<'_, '_> {
    /// Bytes of the nested stream written so far (0: the nested filesystem wrote nothing).
    pub fn bytes(&self) -> u64 {
        self.written
    }

    fn emit(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            let r = self.outer.put(NESTED_CHUNK, &buf);
            self.buf = buf;
            self.buf.clear();
            r?;
        }
        Ok(())
    }

    /// Ends the nested stream.
    pub fn finish(mut self) -> io::Result<()> {
        self.emit()?;
        self.outer.put(NESTED_END, &[])
    }
}

impl Write for NestedWriter<'_, '_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.written += n as u64;
        if self.buf.len() == CHUNK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One record read from a stream.
#[derive(Debug)]
pub struct Record<'r> {
    /// The backend's tag.
    pub tag: u16,
    /// The payload, checksum verified.
    pub payload: &'r [u8],
}

impl<'r> Record<'r> {
    /// A decoder over the payload.
    pub fn decoder(&self) -> Decoder<'r> {
        Decoder(self.payload)
    }
}

/// Reads a state stream record by record, verifying every checksum; see the
/// [module documentation](self).
pub struct StateReader<'a> {
    input: &'a mut dyn Read,
    crc: crc32fast::Hasher,
    count: u64,
    version: u16,
    buf: Vec<u8>,
    ended: bool,
}

fn read_full(input: &mut dyn Read, buf: &mut [u8], what: &str) -> io::Result<()> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            StateError::io(StateErrorKind::Truncated, format!("stream ends in {what}"))
        } else {
            e
        }
    })
}

impl<'a> StateReader<'a> {
    /// Reads and checks the header: magic, a readable version, and backend `kind`.
    pub fn new(input: &'a mut dyn Read, kind: &str) -> io::Result<Self> {
        let mut fixed = [0u8; 11];
        read_full(input, &mut fixed, "the header")?;
        if fixed[..8] != MAGIC {
            return Err(StateError::io(
                StateErrorKind::NotState,
                "not a boxfs device state (bad magic)",
            ));
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        let klen = fixed[10] as usize;
        let mut rest = vec![0u8; klen + 4];
        read_full(input, &mut rest, "the header")?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&fixed);
        crc.update(&rest[..klen]);
        let want = u32::from_le_bytes([rest[klen], rest[klen + 1], rest[klen + 2], rest[klen + 3]]);
        if crc.finalize() != want {
            return Err(StateError::io(
                StateErrorKind::Corrupt,
                "header checksum mismatch",
            ));
        }
        if !(MIN_READ_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(StateError::io(
                StateErrorKind::Version,
                format!(
                    "format version {version}; this build reads {MIN_READ_VERSION} to {FORMAT_VERSION}"
                ),
            ));
        }
        let got = &rest[..klen];
        if got != kind.as_bytes() {
            return Err(StateError::io(
                StateErrorKind::Mismatch,
                format!(
                    "a {:?} state cannot be loaded into a {kind:?} filesystem",
                    String::from_utf8_lossy(got)
                ),
            ));
        }
        let mut stream_crc = crc32fast::Hasher::new();
        stream_crc.update(&fixed);
        stream_crc.update(&rest);
        Ok(StateReader {
            input,
            crc: stream_crc,
            count: 0,
            version,
            buf: Vec::new(),
            ended: false,
        })
    }

    /// The format version of the stream (backends dispatch on it).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Reads the next record into the buffer; returns its tag.
    fn advance(&mut self) -> io::Result<u16> {
        if self.ended {
            return Err(StateError::io(
                StateErrorKind::Corrupt,
                "read past the end record",
            ));
        }
        let mut head = [0u8; 10];
        read_full(self.input, &mut head, "a record header")?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let tag = u16::from_le_bytes([head[4], head[5]]);
        let want = u32::from_le_bytes([head[6], head[7], head[8], head[9]]);
        if len > MAX_RECORD {
            return Err(StateError::io(
                StateErrorKind::Corrupt,
                format!("record of {len} bytes exceeds {MAX_RECORD}"),
            ));
        }
        self.buf.resize(len, 0);
        read_full(self.input, &mut self.buf, "a record")?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[4..6]);
        crc.update(&self.buf);
        if crc.finalize() != want {
            return Err(StateError::io(
                StateErrorKind::Corrupt,
                format!("record {} (tag {tag:#x}) checksum mismatch", self.count),
            ));
        }
        if tag == END {
            if len != 12 {
                return Err(StateError::io(StateErrorKind::Corrupt, "bad end record"));
            }
            let count = u64::from_le_bytes(self.buf[..8].try_into().unwrap_or_default());
            let total = u32::from_le_bytes(self.buf[8..12].try_into().unwrap_or_default());
            if count != self.count || total != self.crc.clone().finalize() {
                return Err(StateError::io(
                    StateErrorKind::Corrupt,
                    format!(
                        "end record says {count} records, {} were read (or the stream checksum differs)",
                        self.count
                    ),
                ));
            }
            self.ended = true;
        } else {
            self.crc.update(&head);
            self.crc.update(&self.buf);
            self.count += 1;
        }
        Ok(tag)
    }

    /// The next backend record, or `None` after a verified end record. A nested stream's
    /// chunks met here are an error (the backend did not expect one).
    pub fn next_record(&mut self) -> io::Result<Option<Record<'_>>> {
        match self.advance()? {
            END => Ok(None),
            tag if tag >= RESERVED_TAGS => Err(StateError::io(
                StateErrorKind::Corrupt,
                format!("unexpected record tag {tag:#x}"),
            )),
            tag => Ok(Some(Record {
                tag,
                payload: &self.buf,
            })),
        }
    }

    /// The next record, which must be a backend record; `what` names it for the error.
    pub fn expect_record(&mut self, what: &str) -> io::Result<Record<'_>> {
        match self.next_record()? {
            Some(r) => Ok(r),
            None => Err(StateError::io(
                StateErrorKind::Corrupt,
                format!("stream ends before {what}"),
            )),
        }
    }

    /// Reads the end record, which must come next.
    pub fn expect_end(&mut self) -> io::Result<()> {
        if self.ended {
            // Already read and verified by a final nested section.
            return Ok(());
        }
        match self.next_record()? {
            None => Ok(()),
            Some(r) => Err(StateError::io(
                StateErrorKind::Corrupt,
                format!("record with tag {:#x} where the end was expected", r.tag),
            )),
        }
    }

    /// A reader for the nested stream that comes next (see [`StateWriter::nested`]). Read it
    /// to its end with the nested filesystem's `load_state`, then call
    /// [`NestedReader::finish`].
    pub fn nested(&mut self) -> NestedReader<'_, 'a> {
        NestedReader {
            outer: self,
            pos: 0,
            len: 0,
            done: false,
            then_end: false,
        }
    }

    /// A reader for the nested stream that ends this stream: the next record after it must
    /// be the end record, and the reader verifies it (count and stream checksum) as soon as
    /// the nested stream's last byte has been read, before handing that byte out. A nested
    /// filesystem's `load_state`, which reads its own end record last and only then commits,
    /// therefore fails (and changes nothing) if anything after it is missing or damaged.
    pub fn nested_final(&mut self) -> NestedReader<'_, 'a> {
        NestedReader {
            outer: self,
            pos: 0,
            len: 0,
            done: false,
            then_end: true,
        }
    }
}

/// A nested stream being read from a [`StateReader`]; see [`StateReader::nested`].
pub struct NestedReader<'r, 'a> {
    outer: &'r mut StateReader<'a>,
    pos: usize,
    len: usize,
    done: bool,
    /// The outer stream's end record follows (see [`StateReader::nested_final`]).
    then_end: bool,
}

impl NestedReader<'_, '_> {
    /// Whether the nested stream is empty (the nested filesystem carried no state). Reads
    /// ahead one record; what it read is still delivered by `read`.
    pub fn is_empty(&mut self) -> io::Result<bool> {
        self.fill()?;
        Ok(self.pos == self.len)
    }

    /// Makes the next chunk current if the current one is used up; at the end, leaves
    /// `pos == len` with `done` set.
    fn fill(&mut self) -> io::Result<()> {
        while self.pos == self.len && !self.done {
            match self.outer.advance()? {
                NESTED_CHUNK => {
                    self.pos = 0;
                    self.len = self.outer.buf.len();
                }
                NESTED_END => {
                    self.done = true;
                    self.pos = 0;
                    self.len = 0;
                    if self.then_end && self.outer.advance()? != END {
                        return Err(StateError::io(
                            StateErrorKind::Corrupt,
                            "records after the last nested state",
                        ));
                    }
                }
                tag => {
                    return Err(StateError::io(
                        StateErrorKind::Corrupt,
                        format!("record tag {tag:#x} inside a nested state"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Checks that the nested stream was read to its [`NESTED_END`] record (nothing of it
    /// left unread).
    pub fn finish(mut self) -> io::Result<()> {
        let mut rest = [0u8; 1];
        match self.read(&mut rest)? {
            0 => Ok(()),
            _ => Err(StateError::io(
                StateErrorKind::Corrupt,
                "nested state has trailing bytes",
            )),
        }
    }
}

impl Read for NestedReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        self.fill()?;
        if self.pos == self.len {
            return Ok(0);
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.outer.buf[self.pos..self.pos + n]);
        self.pos += n;
        if self.then_end && self.pos == self.len {
            // Verify what follows before the last bytes are handed out (see
            // `StateReader::nested_final`).
            self.fill()?;
        }
        Ok(n)
    }
}

/// Builds a record payload.
#[derive(Default, Debug)]
pub struct Encoder(pub Vec<u8>);

impl Encoder {
    /// An empty payload.
    pub fn new() -> Self {
        Encoder(Vec::new())
    }

    /// Clears the payload, keeping its buffer.
    pub fn clear(&mut self) -> &mut Self {
        self.0.clear();
        self
    }

    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends an `i64`.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a length-prefixed (`u32`) byte string.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }

    /// The payload.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

/// Reads a record payload written by an [`Encoder`]; every read past the end is a
/// [`StateErrorKind::Corrupt`] error.
#[derive(Debug)]
pub struct Decoder<'r>(&'r [u8]);

impl<'r> Decoder<'r> {
    /// A decoder over `payload`.
    pub fn new(payload: &'r [u8]) -> Self {
        Decoder(payload)
    }

    fn take(&mut self, n: usize) -> io::Result<&'r [u8]> {
        if self.0.len() < n {
            return Err(StateError::io(
                StateErrorKind::Corrupt,
                "record shorter than its content",
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    /// Reads a byte.
    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a `u32`.
    pub fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a `u64`.
    pub fn u64(&mut self) -> io::Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    /// Reads an `i64`.
    pub fn i64(&mut self) -> io::Result<i64> {
        Ok(self.u64()? as i64)
    }

    /// Reads a length-prefixed byte string.
    pub fn bytes(&mut self) -> io::Result<&'r [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// The bytes not read yet.
    pub fn rest(&mut self) -> &'r [u8] {
        std::mem::take(&mut self.0)
    }

    /// Checks that the whole payload was read.
    pub fn end(&self) -> io::Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(StateError::io(
                StateErrorKind::Corrupt,
                "record longer than its content",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = StateWriter::new(&mut out, "test").expect("header");
        w.record(1, b"hello").expect("record");
        let mut e = Encoder::new();
        e.u64(7).bytes(b"name").u32(9);
        w.record(2, e.as_slice()).expect("record");
        w.finish().expect("end");
        out
    }

    fn read_all(bytes: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let mut input = bytes;
        let mut r = StateReader::new(&mut input, "test")?;
        let mut got = Vec::new();
        while let Some(rec) = r.next_record()? {
            got.push((rec.tag, rec.payload.to_vec()));
        }
        Ok(got)
    }

    fn kind_of(r: io::Result<Vec<(u16, Vec<u8>)>>) -> Option<StateErrorKind> {
        r.err().and_then(|e| StateError::of(&e).map(|s| s.kind))
    }

    #[test]
    fn round_trip() {
        let got = read_all(&sample()).expect("valid stream");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (1, b"hello".to_vec()));
        let mut d = Decoder::new(&got[1].1);
        assert_eq!(d.u64().ok(), Some(7));
        assert_eq!(d.bytes().ok(), Some(&b"name"[..]));
        assert_eq!(d.u32().ok(), Some(9));
        assert!(d.end().is_ok());
        assert!(d.u8().is_err());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let good = sample();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(read_all(&bad).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let good = sample();
        for n in 0..good.len() {
            let k = kind_of(read_all(&good[..n]));
            assert!(
                matches!(
                    k,
                    Some(StateErrorKind::Truncated | StateErrorKind::NotState)
                ),
                "cut at {n}: {k:?}"
            );
        }
    }

    #[test]
    fn version_and_kind_are_checked() {
        let mut bad = sample();
        bad[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        // Fix the header checksum so only the version is wrong.
        let klen = bad[10] as usize;
        let crc = crc32fast::hash(&bad[..11 + klen]);
        bad[11 + klen..15 + klen].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(kind_of(read_all(&bad)), Some(StateErrorKind::Version));
        let e = read_all(&bad).expect_err("error");
        assert_eq!(errno_of(&e), libc::EPROTONOSUPPORT);
        let mut input = &sample()[..];
        let Err(e) = StateReader::new(&mut input, "other") else {
            panic!("a state of another kind was accepted");
        };
        assert_eq!(
            StateError::of(&e).map(|s| s.kind),
            Some(StateErrorKind::Mismatch)
        );
    }

    #[test]
    fn a_dropped_record_is_detected_by_the_count() {
        let good = sample();
        // Header is 8 + 2 + 1 + 4 + 4 ("test") = 19 bytes; the first record is 10 + 5.
        let mut bad = good[..19].to_vec();
        bad.extend_from_slice(&good[19 + 15..]);
        assert_eq!(kind_of(read_all(&bad)), Some(StateErrorKind::Corrupt));
    }

    #[test]
    fn nested_streams_round_trip_in_bounded_chunks() {
        let inner_data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        let mut w = StateWriter::new(&mut out, "outer").expect("header");
        w.record(1, b"before").expect("record");
        {
            let mut n = w.nested();
            let mut iw = StateWriter::new(&mut n, "inner").expect("inner header");
            for part in inner_data.chunks(10_000) {
                iw.record(5, part).expect("inner record");
            }
            iw.finish().expect("inner end");
            n.finish().expect("nested end");
        }
        w.record(2, b"after").expect("record");
        assert!(w.largest_record() <= CHUNK);
        w.finish().expect("end");

        let mut input = &out[..];
        let mut r = StateReader::new(&mut input, "outer").expect("header");
        assert_eq!(r.expect_record("first").map(|x| x.tag).ok(), Some(1));
        let mut got = Vec::new();
        {
            let mut n = r.nested();
            let mut ir = StateReader::new(&mut n, "inner").expect("inner header");
            while let Some(rec) = ir.next_record().expect("inner record") {
                got.extend_from_slice(rec.payload);
            }
            drop(ir);
            n.finish().expect("nested fully read");
        }
        assert_eq!(got, inner_data);
        assert_eq!(r.expect_record("after").map(|x| x.tag).ok(), Some(2));
        r.expect_end().expect("end");
    }

    #[test]
    fn a_final_nested_section_verifies_the_end_before_its_last_byte() {
        let mut out = Vec::new();
        let mut w = StateWriter::new(&mut out, "outer").expect("header");
        {
            let mut n = w.nested();
            let mut iw = StateWriter::new(&mut n, "inner").expect("inner header");
            iw.record(1, b"inner").expect("inner record");
            iw.finish().expect("inner end");
            n.finish().expect("nested end");
        }
        w.finish().expect("end");
        let read_inner = |bytes: &[u8]| -> io::Result<()> {
            let mut input = bytes;
            let mut r = StateReader::new(&mut input, "outer")?;
            {
                let mut n = r.nested_final();
                let mut ir = StateReader::new(&mut n, "inner")?;
                while ir.next_record()?.is_some() {}
            }
            r.expect_end()
        };
        read_inner(&out).expect("intact");
        // Damage after the nested section: the inner reader fails on its own end record,
        // before its filesystem would commit.
        let last = out.len() - 1;
        let mut bad = out.clone();
        bad[last] ^= 1;
        assert_eq!(
            read_inner(&bad)
                .err()
                .and_then(|e| StateError::of(&e).map(|s| s.kind)),
            Some(StateErrorKind::Corrupt)
        );
        assert_eq!(
            read_inner(&out[..out.len() - 22])
                .err()
                .and_then(|e| StateError::of(&e).map(|s| s.kind)),
            Some(StateErrorKind::Truncated)
        );
    }

    #[test]
    fn oversized_records_are_refused_both_ways() {
        let mut out = Vec::new();
        let mut w = StateWriter::new(&mut out, "t").expect("header");
        assert!(w.record(1, &vec![0u8; MAX_RECORD + 1]).is_err());
        assert!(w.record(END, b"").is_err());
        // A length field past the bound is refused before anything is allocated.
        let mut s = sample();
        s[19..23].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(kind_of(read_all(&s)), Some(StateErrorKind::Corrupt));
    }
}
