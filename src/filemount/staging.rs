//! Per-mount staging directories on the host, and placing the file in them.
//!
//! Layout of one mount under the runtime directory:
//!
//! ```text
//! <runtime dir>/fm_<tag>/            0700, created fresh (mkdir fails if it exists)
//!     owner.lock                      flock held by the owning process (see sweep)
//!     share/                          0700, the PassthroughFs root the guest sees
//!         <file name>                 hard link to the host file (or a copy, read-only only)
//! ```
//!
//! The owner lock lives outside `share/`, so the guest never sees it.

use std::ffi::{OsStr, OsString};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::sweep::{runtime_lock, OWNER_LOCK};
use super::sys::{self, Kind};
use super::tag::Tag;
use crate::passthrough::INTERNAL_PREFIX;

/// How the host file was placed in the staging directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Placement {
    /// A hard link: the guest reads and writes the host file's own inode.
    Linked,
    /// A private copy (read-only mounts only, when no hard link could be made, e.g. `EXDEV`):
    /// refreshed from the host file when it changes.
    Copied,
}

/// Identity of the host file a placement came from, to notice when the host changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
}

/// The host file of a mount, resolved once when it is staged: its directory, held open, and
/// its final name, which every later look is made at afresh without following a symlink.
/// A symlink given by the user is resolved at staging; one that appears later is refused.
#[derive(Debug)]
pub(crate) struct HostFile {
    dir: OwnedFd,
    name: OsString,
}

impl HostFile {
    /// Resolves `path` (symlinks included, once) and pins the directory of the file.
    pub(crate) fn resolve(path: &Path) -> io::Result<HostFile> {
        let real = std::fs::canonicalize(path)?;
        let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        };
        Ok(HostFile {
            dir: sys::open_dir(parent)?,
            name: name.to_os_string(),
        })
    }

    /// What the final name is now (a symlink there is reported, not followed).
    pub(crate) fn stat(&self) -> io::Result<(Kind, Source)> {
        sys::stat_at(&self.dir, &self.name)
    }
}

impl Source {
    /// Whether `now` (the host path's current metadata) is still what `self` placed. A hard
    /// link shares the inode, so only a different inode (atomic replace) matters; a copy also
    /// goes stale when the file is modified in place.
    pub(crate) fn unchanged(&self, how: Placement, now: &Source) -> bool {
        let same_inode = self.dev == now.dev && self.ino == now.ino;
        match how {
            Placement::Linked => same_inode,
            Placement::Copied => {
                same_inode
                    && self.size == now.size
                    && self.mtime == now.mtime
                    && self.ctime == now.ctime
            }
        }
    }
}

/// One staging directory, owned (locked) by this process; removed on drop.
///
/// Everything after creation goes through descriptors (the runtime directory, the staging
/// directory and `share/`), never through paths: a daemon that confined itself to a mount
/// namespace without the host's file system still refreshes and removes it.
#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
    share: PathBuf,
    name: OsString,
    runtime_fd: OwnedFd,
    dir_fd: OwnedFd,
    share_fd: Arc<OwnedFd>,
    _owner: File,
}

impl Staging {
    /// Creates `<runtime_dir>/fm_<tag>/` and its `share/`, owned by this process. Fails with
    /// `AlreadyExists` if a directory of that tag exists (the caller draws another tag).
    pub(crate) fn create(runtime_dir: &Path, tag: &Tag) -> io::Result<Staging> {
        let dir = runtime_dir.join(tag.as_str());
        let runtime_fd = sys::open_dir(runtime_dir)?;
        let owner = {
            let _guard = runtime_lock(runtime_dir)?;
            DirBuilder::new().mode(0o700).create(&dir)?;
            let owner = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(dir.join(OWNER_LOCK));
            let owner = match owner {
                Ok(f) => f,
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(e);
                }
            };
            if !sys::lock_exclusive(&owner, false)? {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            owner
        };
        // From here on a failure leaves the directory to the next sweep (the lock dies with
        // `owner`).
        let dir_fd = sys::open_dir(&dir)?;
        let share = dir.join("share");
        DirBuilder::new().mode(0o700).create(&share)?;
        let share_fd = Arc::new(sys::open_dir(&share)?);
        Ok(Staging {
            name: OsString::from(tag.as_str()),
            share,
            dir,
            runtime_fd,
            dir_fd,
            share_fd,
            _owner: owner,
        })
    }

    /// The directory served to the guest.
    pub(crate) fn share(&self) -> &Path {
        &self.share
    }

    /// The directory served to the guest, held open.
    pub(crate) fn share_fd(&self) -> &Arc<OwnedFd> {
        &self.share_fd
    }

    /// The whole staging directory (`fm_<tag>`).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn remove(&self) -> io::Result<()> {
        for (name, is_dir) in sys::list_dir(&self.share_fd)? {
            sys::unlink_at(&self.share_fd, &name, is_dir)?;
        }
        sys::unlink_at(&self.dir_fd, OsStr::new("share"), true)?;
        sys::unlink_at(&self.dir_fd, OsStr::new(OWNER_LOCK), false)?;
        sys::unlink_at(&self.runtime_fd, &self.name, true)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Still holding the owner lock, so a concurrent sweep leaves it to us.
        if let Err(e) = self.remove() {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(
                    "cannot remove staging directory {}: {e}",
                    self.dir.display()
                );
            }
        }
    }
}

/// Why a file could not be placed.
#[derive(Debug)]
pub(crate) enum PlaceError {
    /// No hard link could be made (`EXDEV` and friends) and copying is not allowed.
    NoLink(io::Error),
    /// The host file's name is now a symlink (never followed).
    Symlink,
    /// The host file's name is now something other than a regular file.
    NotFile,
    /// Anything else.
    Io(io::Error),
}

impl From<io::Error> for PlaceError {
    fn from(e: io::Error) -> Self {
        PlaceError::Io(e)
    }
}

fn refuse(kind: Kind) -> Result<(), PlaceError> {
    match kind {
        Kind::File => Ok(()),
        Kind::Symlink => Err(PlaceError::Symlink),
        Kind::Other => Err(PlaceError::NotFile),
    }
}

/// Places the host file in `share` under `name`, atomically replacing what is there: a hard
/// link, or a copy when no link can be made and `allow_copy`. Returns how, and what was
/// placed. A symlink at the host file's name is never followed.
pub(crate) fn place(
    host: &HostFile,
    share: &OwnedFd,
    name: &OsStr,
    allow_copy: bool,
) -> Result<(Placement, Source), PlaceError> {
    refuse(host.stat()?.0)?;
    let mut tmp = OsString::from(String::from_utf8_lossy(INTERNAL_PREFIX).into_owned());
    tmp.push(format!("stage-{:016x}", rand::random::<u64>()));
    let discard = || {
        let _ = sys::unlink_at(share, &tmp, false);
    };
    let placed = match sys::link_at(&host.dir, &host.name, share, &tmp) {
        Ok(()) => {
            // What was actually linked: the name may have changed since it was looked at, and
            // a symlink there is linked as itself, never followed.
            let (kind, source) = sys::stat_at(share, &tmp).inspect_err(|_| discard())?;
            if let Err(e) = refuse(kind) {
                discard();
                return Err(e);
            }
            (Placement::Linked, source)
        }
        Err(e) if is_link_refusal(&e) => {
            if !allow_copy {
                return Err(PlaceError::NoLink(e));
            }
            let src = copy_to(host, share, &tmp).inspect_err(|_| discard())?;
            (Placement::Copied, src)
        }
        Err(e) => return Err(PlaceError::Io(e)),
    };
    if let Err(e) = sys::rename_in(share, &tmp, name) {
        discard();
        return Err(PlaceError::Io(e));
    }
    Ok(placed)
}

/// Errors of `link` that mean "no hard link possible here", as opposed to a broken path.
fn is_link_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EPERM | libc::EACCES | libc::EMLINK | libc::ENOTSUP)
    )
}

/// Copies the host file to the new file `tmp` in `share`; returns the identity of the file
/// copied from.
fn copy_to(host: &HostFile, share: &OwnedFd, tmp: &OsStr) -> Result<Source, PlaceError> {
    let mut src = match sys::open_at_nofollow(&host.dir, &host.name) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(PlaceError::Symlink),
        Err(e) => return Err(PlaceError::Io(e)),
    };
    let (kind, source) = sys::fstat(&src)?;
    refuse(kind)?;
    let mut dst = sys::create_at(share, tmp)?;
    io::copy(&mut src, &mut dst)?;
    Ok(source)
}
