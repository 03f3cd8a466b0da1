//! Socket plumbing: binding the listening socket safely, waiting for a connection or a stop
//! request, and finding the connection `vhost-user-backend` accepted so it can be shut down.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

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
        // SAFETY: all-zero is a valid `stat`.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `dir` is an open directory, `name` NUL-terminated, `st` a valid out-pointer.
        let r = unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                self.name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 && st.st_dev == self.dev && st.st_ino == self.ino {
            // SAFETY: as above; removes only the socket file this device created.
            unsafe { libc::unlinkat(dir.as_raw_fd(), self.name.as_ptr(), 0) };
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
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: listener,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two initialised pollfd structs for the duration of
        // the call, and its length is passed correctly.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents != 0 {
            return Ok(Wake::Stop);
        }
        if fds[1].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "listening socket failed",
            ));
        }
        if fds[1].revents & libc::POLLIN != 0 {
            return Ok(Wake::Connection);
        }
    }
}

/// The raw `sockaddr_un` bytes of a socket's local address.
fn local_name(fd: RawFd) -> Option<Vec<u8>> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is writable for `len` bytes and `len` is a valid in/out length.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_un).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    if rc != 0 || addr.sun_family != libc::AF_UNIX as libc::sa_family_t {
        return None;
    }
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_un>());
    // SAFETY: the kernel filled the first `len` bytes of `addr`, which is that large.
    let bytes = unsafe {
        std::slice::from_raw_parts((&addr as *const libc::sockaddr_un).cast::<u8>(), len)
    };
    Some(bytes.to_vec())
}

fn is_listening(fd: RawFd) -> bool {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut val as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    rc != 0 || val != 0
}

/// Finds the connection accepted on `listener` (a socket of this process with the listener's
/// local address that is not itself listening) and returns a duplicate of it.
///
/// `vhost-user-backend` keeps the accepted stream to itself; shutting down the duplicate is the
/// only way to make its request loop return when the device is stopped while a VMM is attached.
/// Connections are accepted one at a time and closed before the next accept, so at most one such
/// socket exists.
pub(crate) fn find_connection(listener: &UnixListener) -> Option<OwnedFd> {
    let want = local_name(listener.as_raw_fd())?;
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
        if is_listening(fd) || local_name(fd).as_deref() != Some(&want[..]) {
            continue;
        }
        // SAFETY: F_DUPFD_CLOEXEC on an fd number has no memory-safety preconditions; a failure
        // (the fd was closed meanwhile) is reported as -1.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        // Re-check through the duplicate: the number may have been reused in between.
        if is_listening(dup) || local_name(dup).as_deref() != Some(&want[..]) {
            // SAFETY: `dup` is a descriptor this function just created and owns.
            unsafe { libc::close(dup) };
            continue;
        }
        // SAFETY: `dup` is a fresh descriptor owned by nobody else.
        return Some(unsafe { OwnedFd::from_raw_fd(dup) });
    }
    None
}

fn parse_fd(name: &OsStr) -> Option<RawFd> {
    std::str::from_utf8(name.as_bytes()).ok()?.parse().ok()
}

/// Shuts a connected socket down in both directions, waking any thread blocked reading it.
pub(crate) fn shutdown(fd: &OwnedFd) {
    // SAFETY: `fd` is a valid open descriptor for the duration of the call.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}
