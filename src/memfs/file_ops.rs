//! Data operations on open files: read, write, fallocate, lseek.

use std::io;

use parking_lot::RwLock;

use super::data::{FileData, PageReader, PageWriter, MAX_FILE_SIZE};
use super::node::{Node, Ts};
use super::MemFs;
use crate::{errno, Context, ZeroCopyReader, ZeroCopyWriter};

use crate::abi::WRITE_KILL_PRIV;

use crate::abi::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE};
use crate::abi::{SEEK_CUR, SEEK_DATA, SEEK_END, SEEK_HOLE, SEEK_SET};

fn access_mode(flags: u32) -> u32 {
    flags & libc::O_ACCMODE as u32
}

fn readable(flags: u32) -> bool {
    access_mode(flags) != libc::O_WRONLY as u32
}

fn writable(flags: u32) -> bool {
    let a = access_mode(flags);
    a == libc::O_WRONLY as u32 || a == libc::O_RDWR as u32
}

/// The data of a regular file: `EISDIR` for a directory, `other` for anything else.
fn file_data(node: &Node, other: i32) -> io::Result<&RwLock<FileData>> {
    node.file()
        .ok_or_else(|| errno(if node.is_dir() { libc::EISDIR } else { other }))
}

impl MemFs {
    pub(super) fn do_read(
        &self,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
    ) -> io::Result<usize> {
        let h = self.file_handle(inode, handle)?;
        if !readable(h.flags) {
            return Err(errno(libc::EBADF));
        }
        let data = file_data(&h.node, libc::EINVAL)?;
        let data = data.read();
        let want = u64::from(size).min(data.size().saturating_sub(offset)) as usize;
        let mut done = 0usize;
        while done < want {
            match w.write_from(&mut PageReader(&data), want - done, offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        drop(data);
        // relatime: update atime when it is older than the last change or a day old.
        let mut m = h.node.meta.lock();
        let now = Ts::now();
        if m.atime <= m.mtime || m.atime <= m.ctime || now.sec - m.atime.sec >= 86_400 {
            m.atime = now;
        }
        Ok(done)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn do_write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let h = self.file_handle(inode, handle)?;
        if !writable(h.flags) {
            return Err(errno(libc::EBADF));
        }
        let data = file_data(&h.node, libc::EINVAL)?;
        let mut data = data.write();
        let offset = if h.flags & libc::O_APPEND as u32 != 0 {
            data.size()
        } else {
            offset
        };
        let len = u64::from(size);
        let end = offset.checked_add(len).ok_or_else(|| errno(libc::EFBIG))?;
        if end > MAX_FILE_SIZE {
            return Err(errno(libc::EFBIG));
        }
        if len == 0 {
            return Ok(0);
        }
        // Reserve the whole write up front: a write that does not fit writes nothing.
        let expected = data.charge_after_alloc(offset, len, false);
        let reserved = expected.saturating_sub(data.charged());
        self.usage.bytes.reserve(reserved)?;
        let mut done = 0usize;
        let mut failure = None;
        {
            let mut sink = PageWriter {
                data: &mut data,
                limit: end,
            };
            while (done as u64) < len {
                match r.read_to(&mut sink, len as usize - done, offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        let (old, new) = data.recharge();
        // What was reserved but not used (a short copy from the guest) goes back.
        self.usage
            .bytes
            .release((old + reserved).saturating_sub(new));
        drop(data);
        if done > 0 {
            let mut m = h.node.meta.lock();
            m.touch_mc();
            if fuse_flags & WRITE_KILL_PRIV != 0 || ctx.uid != 0 {
                m.kill_suid();
            }
        }
        match failure {
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    pub(super) fn do_fallocate(
        &self,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let h = self.file_handle(inode, handle)?;
        if !writable(h.flags) {
            return Err(errno(libc::EBADF));
        }
        if length == 0 || offset > i64::MAX as u64 || length > i64::MAX as u64 {
            return Err(errno(libc::EINVAL));
        }
        let end = offset
            .checked_add(length)
            .ok_or_else(|| errno(libc::EFBIG))?;
        if end > MAX_FILE_SIZE {
            return Err(errno(libc::EFBIG));
        }
        let data = file_data(&h.node, libc::ENODEV)?;
        let keep = mode & FALLOC_FL_KEEP_SIZE != 0;
        let mut data = data.write();
        match mode & !FALLOC_FL_KEEP_SIZE {
            0 => {
                let expected = data.charge_after_alloc(offset, length, keep);
                let reserved = expected.saturating_sub(data.charged());
                self.usage.bytes.reserve(reserved)?;
                data.allocate(offset, length, keep);
                let (old, new) = data.recharge();
                self.usage
                    .bytes
                    .release((old + reserved).saturating_sub(new));
            }
            FALLOC_FL_PUNCH_HOLE if keep => {
                data.punch_hole(offset, length);
                let (old, new) = data.recharge();
                self.usage.bytes.release(old.saturating_sub(new));
            }
            FALLOC_FL_ZERO_RANGE => {
                let grow = !keep && end > data.size();
                let reserved = if grow {
                    data.charge_after_truncate(end)
                        .saturating_sub(data.charged())
                } else {
                    0
                };
                self.usage.bytes.reserve(reserved)?;
                data.punch_hole(offset, length);
                if grow {
                    data.set_size(end);
                }
                let (old, new) = data.recharge();
                self.usage
                    .bytes
                    .release((old + reserved).saturating_sub(new));
            }
            _ => return Err(errno(libc::EOPNOTSUPP)),
        }
        drop(data);
        h.node.meta.lock().touch_mc();
        Ok(())
    }

    pub(super) fn do_lseek(
        &self,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let h = self.file_handle(inode, handle)?;
        let Some(data) = h.node.file() else {
            return Err(errno(libc::EINVAL));
        };
        let data = data.read();
        let result = match whence {
            SEEK_SET => Some(offset),
            SEEK_CUR => None,
            SEEK_END => data.size().checked_add_signed(offset as i64),
            SEEK_DATA => Some(data.seek_data(offset)?),
            SEEK_HOLE => Some(data.seek_hole(offset)?),
            _ => None,
        };
        match result {
            Some(o) if o <= i64::MAX as u64 => Ok(o),
            _ => Err(errno(libc::EINVAL)),
        }
    }
}
