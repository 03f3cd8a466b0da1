//! The crash sweep: staging directories whose owner is gone are removed, never ones a living
//! process still uses.
//!
//! Ownership is an `flock`: every staging directory `<runtime dir>/fm_<tag>/` holds a file
//! `owner.lock` on which the staging process keeps an exclusive `flock` for the mount's
//! lifetime. The kernel drops that lock when the process dies however it dies (crash,
//! `SIGKILL`, power loss of a host with a persistent runtime dir), so "the lock can be taken" is
//! exactly "no living process owns this directory" — unlike a pid file, it cannot be fooled by
//! pid reuse, and it needs no `/proc`, so it works on macOS too.
//!
//! Creating a staging directory and taking its owner lock is one step under the runtime
//! directory's own lock (`<runtime dir>/.lock`), which the sweep holds too: the sweep never sees
//! a directory between its `mkdir` and its `flock`, so a directory without `owner.lock` is
//! always debris of a crash.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::sys;
use super::tag::TAG_PREFIX;
use crate::{Error, Result};

/// Name of the runtime directory's lock file.
pub(crate) const RUNTIME_LOCK: &str = ".lock";
/// Name of the owner lock inside each staging directory.
pub(crate) const OWNER_LOCK: &str = "owner.lock";

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Staging directories of dead processes that were removed.
    pub removed: Vec<PathBuf>,
    /// Staging directories left alone because a living process holds their owner lock.
    pub in_use: Vec<PathBuf>,
}

/// Opens (creating) and exclusively locks the runtime directory's lock file, waiting for it.
/// The lock is released when the returned file is dropped.
pub(crate) fn runtime_lock(runtime_dir: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(runtime_dir.join(RUNTIME_LOCK))?;
    sys::lock_exclusive(&f, true)?;
    Ok(f)
}

/// Removes the staging directories under `runtime_dir` whose owner process is gone.
///
/// Only entries named `fm_*` are considered; anything else in the runtime directory is left
/// alone. A missing runtime directory is an empty sweep.
///
/// ```
/// use boxfs::filemount::{sweep, FileMount, FileMountOptions};
///
/// let rt = tempfile::tempdir()?;
/// let file = rt.path().join("app.conf");
/// std::fs::write(&file, "x")?;
/// let mount = FileMount::stage(&file, "/etc/app.conf",
///     &FileMountOptions::new().runtime_dir(rt.path().join("run")))?;
/// // The mount's own process is alive: its directory stays.
/// let report = sweep(&rt.path().join("run"))?;
/// assert!(report.removed.is_empty());
/// assert_eq!(report.in_use.len(), 1);
/// drop(mount);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn sweep(runtime_dir: &Path) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    let entries = match std::fs::read_dir(runtime_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(Error::path(runtime_dir, e)),
    };
    let _guard = runtime_lock(runtime_dir).map_err(|e| Error::path(runtime_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::path(runtime_dir, e))?;
        let name = entry.file_name();
        if !name.as_encoded_bytes().starts_with(TAG_PREFIX.as_bytes()) {
            continue;
        }
        let dir = entry.path();
        // Never follow a symlink planted in the runtime directory.
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            _ => continue,
        }
        let lock = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(dir.join(OWNER_LOCK));
        let stale = match &lock {
            Ok(f) => sys::lock_exclusive(f, false).map_err(|e| Error::path(&dir, e))?,
            // Created under the runtime lock together with its directory: missing means the
            // creator died in between (or someone removed it); nobody can own the directory.
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(Error::path(dir.join(OWNER_LOCK), clone_err(e))),
        };
        if stale {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => report.removed.push(dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::path(&dir, e)),
            }
        } else {
            report.in_use.push(dir);
        }
        drop(lock);
    }
    report.removed.sort();
    report.in_use.sort();
    Ok(report)
}

fn clone_err(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}
