//! Offline snapshots of an in-memory share: `--snapshot-file FILE` names where SIGUSR1 and the
//! API's `PUT /snapshot` write the share's state, `--memfs-from FILE` starts a MemFs share
//! from such a file.
//!
//! The file is a boxfs device-state stream without a FUSE session
//! ([`boxfs::vhost::save_snapshot`]): versioned and checksummed, with the MemFs's whole
//! content (tree, data, xattrs, ownership). It is written next to its final name and renamed
//! over it once complete and fsynced, so a reader never sees half a snapshot.
//!
//! The daemon is sandboxed by default (a private mount namespace holding only `/proc`, and a
//! seccomp allow-list): the directory of `--snapshot-file` is opened at start, before the
//! sandbox, and every snapshot is created in it through that descriptor (`openat`,
//! `renameat`), so it works however confined the daemon is. `PUT /snapshot` takes
//! `{"path": "NAME"}`, a plain file name in that same directory (no `/`), or no body for the
//! `--snapshot-file` name itself.
//!
//! What is saved is the served filesystem, or, with a volume table (`--volume`,
//! `--api-socket`), its root backend. It may change while it is written (the guest keeps
//! running): each file is consistent as of the moment it is saved. For a point-in-time
//! snapshot, pause the guest first, or let the VMM save the device state (`migrate`).

use std::ffi::{CString, OsStr};
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use boxfs::DynFileSystem;
use rustix::fs::{Mode, OFlags};

/// Where snapshots go, and of what.
struct Snapshotter {
    fs: Arc<dyn DynFileSystem>,
    /// The directory of `--snapshot-file`, opened before the sandbox.
    dir: OwnedFd,
    dir_path: PathBuf,
    /// The file name of `--snapshot-file`.
    name: CString,
    /// One snapshot at a time.
    busy: Mutex<()>,
}

static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();

/// A snapshot that was written.
pub(crate) struct Written {
    pub(crate) path: PathBuf,
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
}

/// Opens the directory of `file` (call before the sandbox) and remembers `fs` as what
/// snapshots save.
pub(crate) fn install(file: &Path, fs: Arc<dyn DynFileSystem>) -> Result<(), String> {
    let name = file
        .file_name()
        .filter(|n| !n.is_empty() && *n != ".." && *n != ".")
        .ok_or_else(|| format!("--snapshot-file {}: not a file name", file.display()))?;
    let dir_path = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = rustix::fs::open(
        &dir_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("--snapshot-file: directory {}: {e}", dir_path.display()))?;
    let name = CString::new(name.as_bytes())
        .map_err(|_| format!("--snapshot-file {}: NUL in the name", file.display()))?;
    SNAPSHOTTER
        .set(Snapshotter {
            fs,
            dir,
            dir_path,
            name,
            busy: Mutex::new(()),
        })
        .map_err(|_| "--snapshot-file: installed twice".to_string())
}

/// Whether `--snapshot-file` was given (snapshots can be written).
pub(crate) fn enabled() -> bool {
    SNAPSHOTTER.get().is_some()
}

/// Writes a snapshot to `name` (a plain file name in the snapshot directory) or to the
/// `--snapshot-file` name.
pub(crate) fn write(name: Option<&str>) -> Result<Written, String> {
    let s = SNAPSHOTTER
        .get()
        .ok_or("no --snapshot-file: snapshots are off")?;
    let name = match name {
        None => s.name.clone(),
        Some(n) => {
            if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
                return Err(format!(
                    "snapshot name `{n}`: a plain file name in {} (no `/`)",
                    s.dir_path.display()
                ));
            }
            CString::new(n).map_err(|_| "NUL in the name".to_string())?
        }
    };
    let _one = s.busy.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let tmp = CString::new(
        [
            b".".as_slice(),
            name.as_bytes(),
            format!(".tmp-{}", std::process::id()).as_bytes(),
        ]
        .concat(),
    )
    .map_err(|_| "NUL in the name".to_string())?;
    let path = s.dir_path.join(OsStr::from_bytes(name.as_bytes()));
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        let _ = rustix::fs::unlinkat(&s.dir, tmp.as_c_str(), rustix::fs::AtFlags::empty());
        format!("snapshot {}: {what}: {e}", path.display())
    };
    let fd = rustix::fs::openat(
        &s.dir,
        tmp.as_c_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| format!("snapshot {}: creating it: {e}", path.display()))?;
    let file = std::fs::File::from(fd);
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let bytes = boxfs::vhost::save_snapshot(&*s.fs, &mut out).map_err(|e| fail("saving", &e))?;
    out.flush().map_err(|e| fail("writing", &e))?;
    drop(out);
    file.sync_all().map_err(|e| fail("fsync", &e))?;
    drop(file);
    rustix::fs::renameat(&s.dir, tmp.as_c_str(), &s.dir, name.as_c_str())
        .map_err(|e| fail("renaming into place", &e))?;
    let _ = rustix::fs::fsync(&s.dir);
    let w = Written {
        path,
        bytes,
        duration: started.elapsed(),
    };
    tracing::info!(
        "snapshot written to {}: {} bytes in {:.1} ms",
        w.path.display(),
        w.bytes,
        w.duration.as_secs_f64() * 1e3
    );
    Ok(w)
}

/// `--memfs-from FILE`: loads a snapshot into `fs` (a fresh MemFs), before the sandbox.
pub(crate) fn restore(fs: &dyn DynFileSystem, file: &Path) -> Result<(), String> {
    let started = Instant::now();
    let f =
        std::fs::File::open(file).map_err(|e| format!("--memfs-from {}: {e}", file.display()))?;
    let mut input = BufReader::with_capacity(1 << 20, f);
    let bytes = boxfs::vhost::load_snapshot(fs, &mut input)
        .map_err(|e| format!("--memfs-from {}: {e}", file.display()))?;
    tracing::info!(
        "restored the in-memory filesystem from {}: {bytes} bytes in {:.1} ms",
        file.display(),
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// Registers the SIGUSR1 handler (call before the sandbox: its seccomp filter comes later,
/// and the signal must not kill the daemon once the snapshot file is set up).
pub(crate) fn signals(enabled: bool) -> Option<signal_hook::iterator::Signals> {
    if !enabled {
        return None;
    }
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1]) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot install the SIGUSR1 handler: {e}");
            None
        }
    }
}

/// Writes a snapshot to the `--snapshot-file` on every SIGUSR1, on a thread of its own.
pub(crate) fn serve_signals(signals: Option<signal_hook::iterator::Signals>) {
    let Some(mut signals) = signals else { return };
    let spawned = std::thread::Builder::new()
        .name("boxfsd-snapshot".into())
        .spawn(move || {
            for _ in signals.forever() {
                if let Err(e) = write(None) {
                    tracing::error!("SIGUSR1: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the snapshot thread: {e}");
    }
}

/// `PUT /snapshot` with `body` (`{"path": "NAME"}`, or empty): the JSON answer, or the HTTP
/// status and message of the error.
pub(crate) fn api_put(body: &[u8]) -> Result<String, (u16, String)> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        path: Option<String>,
    }
    if !enabled() {
        return Err((
            404,
            "no --snapshot-file: snapshots are off for this daemon".into(),
        ));
    }
    let name = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<Body>(body)
            .map_err(|e| (400, format!("body: {e}")))?
            .path
    };
    match write(name.as_deref()) {
        Ok(w) => Ok(serde_json::json!({
            "path": w.path.display().to_string(),
            "bytes": w.bytes,
            "ms": w.duration.as_secs_f64() * 1e3,
        })
        .to_string()),
        Err(e) if e.starts_with("snapshot name") => Err((400, e)),
        Err(e) => Err((500, e)),
    }
}
