//! create, mknod, mkdir, symlink and link.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::config::SymlinkMode;
use super::handles::{Handle, HandleKind};
use super::inode_store::{InodeData, Override};
use super::metadata::set_override_xattr;
use super::override_stat::OverrideStat;
use super::platform;
use super::resolve::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use super::{is_internal, PassthroughFs};
use crate::{errno, Context, CreateIn, Entry, OpenOptions};

const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;

/// Longest symlink target Linux accepts (PAGE_SIZE - 1).
const SYMLINK_MAX: usize = 4095;

impl PassthroughFs {
    /// Checks a new name in `parent` and returns the parent inode and descriptor.
    fn prepare_create(
        &self,
        parent: u64,
        name: &CStr,
    ) -> io::Result<(Arc<InodeData>, super::fd_cache::SharedFd)> {
        self.writable_parent(parent, name, libc::EPERM)
    }

    /// Checks a name about to be added to or removed from `parent` and returns the parent
    /// with its descriptor. `internal` is the errno for the daemon's own scratch names
    /// (`EPERM` to create one, `ENOENT` to remove one: they do not exist for the guest).
    pub(super) fn writable_parent(
        &self,
        parent: u64,
        name: &CStr,
        internal: i32,
    ) -> io::Result<(Arc<InodeData>, super::fd_cache::SharedFd)> {
        let bytes = crate::name::validate(name)?;
        if self.cfg.readonly {
            return Err(errno(libc::EROFS));
        }
        let p = self.inode(parent)?;
        if p.host_type != S_IFDIR {
            return Err(errno(libc::ENOTDIR));
        }
        if is_internal(bytes) {
            return Err(errno(internal));
        }
        let pfd = self.fd_of(&p)?;
        Ok((p, pfd))
    }

    /// Owner, group and mode of a new node, as Linux's `inode_init_owner` decides them.
    fn new_owner(
        &self,
        ctx: &Context,
        parent: &InodeData,
        mode: u32,
        umask: u32,
    ) -> io::Result<OverrideStat> {
        let pmeta = self.guest_meta(parent, *parent.meta.lock(), None)?;
        let t = mode & S_IFMT;
        let mut perm = mode & 0o7777 & !(umask & 0o777);
        let mut gid = ctx.gid;
        if pmeta.mode & S_ISGID != 0 {
            gid = pmeta.gid;
            if t == S_IFDIR {
                perm |= S_ISGID;
            } else if perm & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP
                && ctx.uid != 0
                && ctx.gid != gid
            {
                perm &= !S_ISGID;
            }
        }
        Ok(OverrideStat {
            uid: ctx.uid,
            gid,
            mode: t | perm,
            rdev: 0,
        })
    }

    /// Creates a host regular file for a guest node of any non-directory type, writes
    /// `contents` and the override, and registers it. Returns the entry and an `O_RDWR`
    /// descriptor of the new file.
    fn create_node(
        &self,
        parent: &Arc<InodeData>,
        pfd: i32,
        name: &CStr,
        meta: OverrideStat,
        contents: &[u8],
    ) -> io::Result<(Entry, OwnedFd)> {
        if let Some(q) = &self.quota {
            q.reserve(contents.len() as u64)?;
        }
        let host_mode = self.cfg.host_create_mode(false, meta.mode);
        let file = match self.with_fd_retry(|| {
            platform::open_beneath(
                pfd,
                name,
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                host_mode,
            )
        }) {
            Ok(f) => f,
            Err(e) => {
                if let Some(q) = &self.quota {
                    q.release(contents.len() as u64);
                }
                return Err(e);
            }
        };
        let setup = (|| -> io::Result<Entry> {
            if !contents.is_empty() {
                let mut f = File::from(file.try_clone()?);
                f.write_all(contents)?;
            }
            set_override_xattr(file.as_raw_fd(), meta.to_value().as_bytes())?;
            let ifd =
                self.with_fd_retry(|| platform::reopen(file.as_raw_fd(), platform::INODE_FLAGS))?;
            let hs = platform::fstat(ifd.as_raw_fd())?;
            let (inode, _) =
                self.register(parent, name, ifd, &hs, Some(Override::Present(meta)))?;
            self.entry(&inode, &hs)
        })();
        match setup {
            Ok(entry) => Ok((entry, file)),
            Err(e) => {
                // Removes the half-made node we created.
                let _ = platform::unlink_at(pfd, name, false);
                if let Some(q) = &self.quota {
                    q.release(contents.len() as u64);
                }
                Err(e)
            }
        }
    }

    pub(crate) fn do_create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let flags = args.flags as i32;
        let (p, pfd) = self.prepare_create(parent, name)?;
        self.handles.check_room()?;
        let meta = self.new_owner(ctx, &p, S_IFREG | (args.mode & 0o7777), args.umask)?;
        match self.create_node(&p, pfd.as_raw_fd(), name, meta, b"") {
            Ok((entry, file)) => {
                let inode = self.inode(entry.inode)?;
                let io_flags = self.io_flags(flags & !libc::O_TRUNC);
                let file = if io_flags & libc::O_ACCMODE == libc::O_RDWR
                    && io_flags & !(libc::O_ACCMODE | libc::O_CLOEXEC) == 0
                {
                    file
                } else {
                    let ifd = self.fd_of(&inode)?;
                    self.with_fd_retry(|| platform::reopen(ifd.as_raw_fd(), io_flags))?
                };
                let opts = self.cfg.cache_policy.open_options(false) | self.no_flush(&inode);
                let fh = self.handles.insert(Handle {
                    inode,
                    kind: HandleKind::File(File::from(file)),
                    flags: io_flags,
                });
                Ok((entry, Some(fh), opts, None))
            }
            // `open(O_CREAT)` without `O_EXCL` of a name another creator (the host, or a
            // racing guest) made first opens the existing file, as Linux does.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                let entry = self.do_lookup(parent, name)?;
                match self.do_open(ctx, entry.inode, args.flags) {
                    Ok((fh, opts, _)) => Ok((entry, fh, opts, None)),
                    Err(e) => {
                        self.do_forget(entry.inode, 1);
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn do_mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let (p, pfd) = self.prepare_create(parent, name)?;
        let t = mode & S_IFMT;
        let t = if t == 0 { S_IFREG } else { t };
        match t as libc::mode_t {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {}
            libc::S_IFDIR => return Err(errno(libc::EPERM)),
            _ => return Err(errno(libc::EINVAL)),
        }
        let mut meta = self.new_owner(ctx, &p, t | (mode & 0o7777), umask)?;
        if t == libc::S_IFCHR as u32 || t == libc::S_IFBLK as u32 {
            meta.rdev = rdev;
        }
        self.create_node(&p, pfd.as_raw_fd(), name, meta, b"")
            .map(|(e, _)| e)
    }

    pub(crate) fn do_mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let (p, pfd) = self.prepare_create(parent, name)?;
        let meta = self.new_owner(ctx, &p, S_IFDIR | (mode & 0o7777), umask)?;
        let host_mode = self.cfg.host_create_mode(true, meta.mode);
        platform::mkdir_at(pfd.as_raw_fd(), name, host_mode)?;
        let setup = (|| -> io::Result<Entry> {
            let ifd = self.with_fd_retry(|| platform::open_inode(pfd.as_raw_fd(), name))?;
            let hs = platform::fstat(ifd.as_raw_fd())?;
            if hs.st.st_mode as u32 & S_IFMT != S_IFDIR {
                return Err(errno(libc::EIO));
            }
            set_override_xattr(ifd.as_raw_fd(), meta.to_value().as_bytes())?;
            let (inode, _) = self.register(&p, name, ifd, &hs, Some(Override::Present(meta)))?;
            self.entry(&inode, &hs)
        })();
        if setup.is_err() {
            // Removes the directory we just made.
            let _ = platform::unlink_at(pfd.as_raw_fd(), name, true);
        }
        setup
    }

    pub(crate) fn do_symlink(
        &self,
        ctx: &Context,
        target: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        let (p, pfd) = self.prepare_create(parent, name)?;
        let t = target.to_bytes();
        if t.is_empty() {
            return Err(errno(libc::ENOENT));
        }
        if t.len() > SYMLINK_MAX {
            return Err(errno(libc::ENAMETOOLONG));
        }
        match self.cfg.symlinks {
            SymlinkMode::Virtualized => {
                let meta = self.new_owner(ctx, &p, S_IFLNK | 0o777, 0)?;
                let meta = OverrideStat {
                    mode: S_IFLNK | 0o777,
                    ..meta
                };
                self.create_node(&p, pfd.as_raw_fd(), name, meta, t)
                    .map(|(e, _)| e)
            }
            SymlinkMode::Host => {
                platform::symlink_at(target, pfd.as_raw_fd(), name)?;
                let ifd = self.with_fd_retry(|| platform::open_inode(pfd.as_raw_fd(), name))?;
                let hs = platform::fstat(ifd.as_raw_fd())?;
                let (inode, _) = self.register(&p, name, ifd, &hs, Some(Override::Absent))?;
                self.entry(&inode, &hs)
            }
        }
    }

    pub(crate) fn do_link(&self, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        let (p, pfd) = self.prepare_create(newparent, newname)?;
        let src = self.inode(inode)?;
        if src.host_type == S_IFDIR {
            return Err(errno(libc::EPERM));
        }
        let fd = self.fd_of(&src)?;
        platform::link_inode(fd.as_raw_fd(), pfd.as_raw_fd(), newname)?;
        let ifd = self.with_fd_retry(|| platform::open_inode(pfd.as_raw_fd(), newname))?;
        let hs = platform::fstat(ifd.as_raw_fd())?;
        let (inode, _) = self.register(&p, newname, ifd, &hs, None)?;
        self.entry(&inode, &hs)
    }
}
