//! opendir, readdir, readdirplus, fsyncdir and releasedir.
//!
//! Offsets are the host's directory cookies, so a listing resumes exactly where the previous
//! reply stopped even while entries are added or removed. Nothing is snapshotted: memory per
//! open directory is one descriptor and a 32 KiB buffer during a call. Internal scratch
//! files are skipped; `..` of the root reports the root itself.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use parking_lot::Mutex;

use super::handles::{Handle, HandleKind};
use super::platform::{self, DirStream};
use super::resolve::{guest_dtype_at, S_IFDIR};
use super::{is_internal, PassthroughFs};
use crate::{errno, DirEntry, Entry, OpenOptions, ROOT_ID};

impl PassthroughFs {
    pub(crate) fn do_opendir(
        &self,
        id: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let inode = self.inode(id)?;
        if self.guest_type(&inode)? != S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        self.handles.check_room()?;
        let fd = self.fd_of(&inode)?;
        let stream =
            self.with_fd_retry(|| DirStream::open(std::os::fd::AsRawFd::as_raw_fd(&*fd)))?;
        let opts = self.open_cache_options(&inode, std::os::fd::AsRawFd::as_raw_fd(&*fd), true);
        let fh = self.handles.insert(Handle {
            inode,
            kind: HandleKind::Dir(Mutex::new(stream)),
            flags: 0,
        });
        Ok((Some(fh), opts))
    }

    fn dir_handle(&self, id: u64, fh: u64) -> io::Result<Arc<Handle>> {
        let h = self
            .handles
            .get(fh)
            .ok_or_else(|| self.handles.missing(fh, id))?;
        if h.inode.id != id || !matches!(h.kind, HandleKind::Dir(_)) {
            return Err(errno(libc::EBADF));
        }
        Ok(h)
    }

    /// Shared walk: calls `emit(dirent, is_dot)` per visible entry until it returns false.
    fn walk_dir(
        &self,
        id: u64,
        fh: u64,
        host_bytes: usize,
        offset: u64,
        emit: &mut dyn FnMut(RawFd, DirEntry<'_>, bool) -> io::Result<bool>,
    ) -> io::Result<()> {
        let h = self.dir_handle(id, fh)?;
        let HandleKind::Dir(stream) = &h.kind else {
            return Err(errno(libc::EBADF));
        };
        let mut stream = stream.lock();
        let self_ino = h.inode.id;
        let is_root = h.inode.id == ROOT_ID;
        let root_host_ino = self.inodes.get(ROOT_ID).map(|r| r.key.ino).unwrap_or(0);
        let dfd = stream.fd();
        stream.for_each_from(offset, host_bytes, &mut |e| {
            if is_internal(e.name) {
                return Ok(true);
            }
            let dot = e.name == b"." || e.name == b"..";
            let ino = if e.name == b"." || (is_root && e.name == b"..") {
                self_ino
            } else if e.ino == root_host_ino {
                ROOT_ID
            } else {
                e.ino
            };
            let d = DirEntry {
                ino,
                offset: e.off,
                type_: e.typ as u32,
                name: e.name,
            };
            emit(dfd, d, dot)
        })
    }

    pub(crate) fn do_readdir(
        &self,
        id: u64,
        fh: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // A FUSE dirent is about as long as the host's: read about what fits in the reply.
        self.walk_dir(id, fh, size as usize, offset, &mut |stream, mut d, _dot| {
            if d.type_ == libc::DT_REG as u32 {
                d.type_ = guest_dtype_at(stream, d.name);
            }
            Ok(add_entry(d)? > 0)
        })
    }

    pub(crate) fn do_readdirplus(
        &self,
        id: u64,
        fh: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let parent = self.inode(id)?;
        let mut added = 0usize;
        // A READDIRPLUS entry is about five times a host dirent (it carries the attributes).
        self.walk_dir(
            id,
            fh,
            size as usize / 4,
            offset,
            &mut |stream, mut d, dot| {
                if dot {
                    let mut e = Entry::default();
                    e.attr.st_ino = d.ino as _;
                    e.attr.st_mode = libc::S_IFDIR as _;
                    d.type_ = libc::DT_DIR as u32;
                    let n = add_entry(d, e)?;
                    added += 1;
                    return Ok(n > 0);
                }
                let Ok(name) = CString::new(d.name) else {
                    return Ok(true);
                };
                let entry = match self.lookup_at(&parent, stream, &name) {
                    Ok(e) => e,
                    // Removed since it was listed, or unreadable: skip it.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EIO)) => {
                        return Ok(true)
                    }
                    Err(e) if added == 0 => return Err(e),
                    Err(_) => return Ok(false),
                };
                d.type_ = (entry.attr.st_mode as u32 & libc::S_IFMT as u32) >> 12;
                let ino = entry.inode;
                let n = match add_entry(d, entry) {
                    Ok(n) => n,
                    Err(e) => {
                        self.do_forget(ino, 1);
                        return Err(e);
                    }
                };
                if n == 0 {
                    self.do_forget(ino, 1);
                    return Ok(false);
                }
                added += 1;
                Ok(true)
            },
        )
    }

    pub(crate) fn do_fsyncdir(&self, id: u64, datasync: bool, fh: u64) -> io::Result<()> {
        let h = self.dir_handle(id, fh)?;
        let HandleKind::Dir(stream) = &h.kind else {
            return Err(errno(libc::EBADF));
        };
        let fd = stream.lock().fd();
        // The descriptor stays open: `h` keeps the handle, and with it the stream, alive.
        platform::sync(fd, datasync)
    }

    pub(crate) fn do_releasedir(&self, id: u64, fh: u64) -> io::Result<()> {
        if self.handles.release_dead(fh, id) {
            return Ok(());
        }
        self.dir_handle(id, fh)?;
        self.handles.remove(fh);
        Ok(())
    }
}
