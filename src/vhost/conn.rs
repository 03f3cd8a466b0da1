//! Socket plumbing: binding the listening socket safely, waiting for a connection or a stop
//! request, and finding the connection `vhost-user-backend` accepted so it can be shut down.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::AtFlags;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrAny};

use crate::{Error, Result};

/// Borrows a descriptor number for one system call.
///
/// The numbers come from the caller (its listener and stop event, open across the call) or
/// from `/proc/self/fd`, where one may be closed, or closed and reused, meanwhile: the call
/// then fails with `EBADF` or looks at the other object, which `find_connection` guards
/// against by re-checking through a duplicate it owns.
fn borrow_fd<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: the borrow lasts one system call on a descriptor of this process; a number
    // closed meanwhile only makes that call fail.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Removes the socket file at exit, if it is still the one this device bound. It holds its
/// parent directory open, so removal works after the process changed its root (a sandbox).
pub(crate) struct SocketFile {
    path: PathBuf,
    dir: Option<std::os::fd::OwnedFd>,
    name: std::ffi::CString,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn remove(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let Ok(st) = rustix::fs::statat(dir, self.name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
        else {
            return;
        };
        // `stat` field types differ between architectures.
        #[allow(clippy::unnecessary_cast)]
        let same = st.st_dev as u64 == self.dev && st.st_ino as u64 == self.ino;
        if same {
            // Removes only the socket file this device created.
            let _ = rustix::fs::unlinkat(dir, self.name.as_c_str(), AtFlags::empty());
        }
    }
}

/// The directory holding `path` (opened `O_PATH`) and the file name in it.
fn parent_and_name(path: &Path) -> (Option<std::os::fd::OwnedFd>, std::ffi::CString) {
    let name = path
        .file_name()
        .and_then(|n| std::ffi::CString::new(n.as_bytes()).ok())
        .unwrap_or_default();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(parent)
        .ok()
        .map(std::os::fd::OwnedFd::from);
    (dir, name)
}

/// Binds a listening socket at `path`.
///
/// A socket file left behind by a dead daemon (connecting to it is refused) is replaced. A
/// socket something still listens on, or a path that is not a socket, is an error: nothing the
/// user did not create here is ever deleted.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, SocketFile)> {
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let meta = std::fs::symlink_metadata(path).map_err(|e| Error::path(path, e))?;
            if !meta.file_type().is_socket() {
                return Err(Error::path(
                    path,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a socket; refusing to replace it",
                    ),
                ));
            }
            if listed_as_listening(path) {
                return Err(in_use(path));
            }
            // Not found in /proc/net/unix (or it was bound under another spelling of the
            // path): probe. A boxfs device ignores a probe that leaves without negotiating.
            match UnixStream::connect(path) {
                Ok(_) => return Err(in_use(path)),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale socket file");
                    std::fs::remove_file(path).map_err(|e| Error::path(path, e))?;
                    UnixListener::bind(path).map_err(|e| Error::path(path, e))?
                }
                Err(e) => return Err(Error::path(path, e)),
            }
        }
        Err(e) => return Err(Error::path(path, e)),
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::path(path, e))?;
    let (dir, name) = parent_and_name(path);
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            dir,
            name,
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

fn in_use(path: &Path) -> Error {
    Error::path(
        path,
        io::Error::new(
            io::ErrorKind::AddrInUse,
            "socket path in use: another process is listening on it",
        ),
    )
}

/// Whether `/proc/net/unix` lists a listening socket bound at `path` (as given, or absolute),
/// which answers "is this socket in use" without connecting to it.
pub(crate) fn listed_as_listening(path: &Path) -> bool {
    const SO_ACCEPTCON: u32 = 1 << 16;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let given = path.as_os_str().as_bytes();
    let absolute = std::path::absolute(path).ok();
    let absolute = absolute.as_ref().map(|p| p.as_os_str().as_bytes());
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(flags), Some(name)) = (fields.get(3), fields.get(7)) else {
            return false;
        };
        let listening = u32::from_str_radix(flags, 16).is_ok_and(|f| f & SO_ACCEPTCON != 0);
        listening && (name.as_bytes() == given || Some(name.as_bytes()) == absolute)
    })
}

/// What ended a wait for a connection.
pub(crate) enum Wake {
    Connection,
    Stop,
}

/// Waits until `listener` has a pending connection or `stop` becomes readable.
pub(crate) fn wait_for_connection(listener: RawFd, stop: RawFd) -> io::Result<Wake> {
    loop {
        let mut fds = [
            PollFd::from_borrowed_fd(borrow_fd(stop), PollFlags::IN),
            PollFd::from_borrowed_fd(borrow_fd(listener), PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if !fds[0].revents().is_empty() {
            return Ok(Wake::Stop);
        }
        if fds[1]
            .revents()
            .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL)
        {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "listening socket failed",
            ));
        }
        if fds[1].revents().contains(PollFlags::IN) {
            return Ok(Wake::Connection);
        }
    }
}

/// The local address of a Unix socket.
fn local_name(fd: BorrowedFd<'_>) -> Option<SocketAddrAny> {
    rustix::net::getsockname(fd)
        .ok()
        .filter(|a| a.address_family() == AddressFamily::UNIX)
}

/// Whether `fd` is a listening socket (or cannot tell).
fn is_listening(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_acceptconn(fd).unwrap_or(true)
}

/// Finds the connection accepted on `listener` (a socket of this process with the listener's
/// local address that is not itself listening) and returns a duplicate of it.
///
/// `vhost-user-backend` keeps the accepted stream to itself; shutting down the duplicate is the
/// only way to make its request loop return when the device is stopped while a VMM is attached.
/// Connections are accepted one at a time and closed before the next accept, so at most one such
/// socket exists.
pub(crate) fn find_connection(listener: &UnixListener) -> Option<OwnedFd> {
    let want = local_name(listener.as_fd())?;
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(fd) = parse_fd(&name) else { continue };
        if fd == listener.as_raw_fd() {
            continue;
        }
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.as_os_str().as_bytes().starts_with(b"socket:") {
            continue;
        }
        let fd = borrow_fd(fd);
        if is_listening(fd) || local_name(fd).as_ref() != Some(&want) {
            continue;
        }
        // A failure means the fd was closed meanwhile.
        let Ok(dup) = rustix::io::fcntl_dupfd_cloexec(fd, 0) else {
            continue;
        };
        // Re-check through the duplicate: the number may have been reused in between.
        if is_listening(dup.as_fd()) || local_name(dup.as_fd()).as_ref() != Some(&want) {
            continue;
        }
        return Some(dup);
    }
    None
}

fn parse_fd(name: &OsStr) -> Option<RawFd> {
    let fd: RawFd = std::str::from_utf8(name.as_bytes()).ok()?.parse().ok()?;
    (fd >= 0).then_some(fd)
}

/// Shuts a connected socket down in both directions, waking any thread blocked reading it.
pub(crate) fn shutdown(fd: &OwnedFd) {
    let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Both);
}
