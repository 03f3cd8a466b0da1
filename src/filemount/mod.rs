//! Single-file volumes: serve one host file to a guest, which mounts it at any path.
//!
//! virtio-fs shares directories, but users mount single files (`--volume
//! /host/app.conf:/etc/app.conf`). [`FileMount::stage`] prepares one such mount:
//!
//! * a fresh **staging directory** `<runtime dir>/fm_<tag>/share/` (mode 0700; `mkdir` fails
//!   rather than reuse an existing one, so nothing previously staged can appear in it), holding
//!   the file under its own name as a **hard link** to the host file;
//! * a random **tag** `fm_<16 hex digits>` ([`Tag`], 64 random bits, never derived from a path);
//! * the **filesystem** to serve under the tag: a [`SingleFileFs`] around a
//!   [`PassthroughFs`] rooted at the staging directory, with
//!   the mount's options (read-only, cache policy, guest owner);
//! * the **guest mount plan** ([`GuestPlan`]): mount the tag on a staging path, bind-mount the
//!   file onto its destination, remount with the requested flags, detach the share (rendered as
//!   an `sh` script with [`GuestPlan::to_sh`]).
//!
//! [`FileMounts`] stages many files for one VM, sweeps directories left by crashed processes
//! when it is created ([`sweep`]), and plans them all at once (parents first, one mount per
//! destination). Dropping a [`FileMount`] removes its staging directory.
//!
//! # Design decisions
//!
//! * **No hard link possible (`EXDEV`: the runtime directory is on another filesystem; also
//!   `EPERM` from `protected_hardlinks`, `EMLINK`).** A read-only mount falls back to a private
//!   copy, re-copied when the host file changes ([`Placement::Copied`]). A read-write mount
//!   fails with an error that names the cause and the fix (put the runtime directory on the
//!   file's filesystem, or mount read-only): a copy would silently lose the guest's writes, and
//!   serving the host path directly would need a second, unconfined I/O path next to
//!   PassthroughFs's. Linking is attempted first in every case, so a copy is used only when
//!   needed.
//! * **Host editors replacing the file by rename.** The guest's bind mount pins the file's
//!   dentry, so the guest-visible inode must never change. [`SingleFileFs`] shows one fixed
//!   inode and re-links the staged name to the current host file whenever the host path names
//!   a different inode (checked with one `stat` on `lookup`, `open` and `getattr`); the guest
//!   sees the new content on its next open, within the attribute cache timeout. The guest
//!   never silently reads stale content: a replacement that cannot be hard-linked (another
//!   owner with `protected_hardlinks`) is served as a private copy with writes refused
//!   (`EACCES`), and one that cannot be served at all answers `EIO`.
//! * **Symlinks.** Symlinks in the path given at staging are resolved then, once. The file's
//!   directory is then held open and only its final name is looked at again, without
//!   following a symlink: a symlink put there later (through another share of the directory,
//!   say) is refused — logged, and `EIO` to the guest — never followed.
//! * **Guest chmod/chown** change metadata held by [`SingleFileFs`] in memory for the mount's
//!   lifetime — never the host file's mode or owner, and never an xattr on the host inode
//!   (which a hard link shares with the user's file).
//! * **Crash sweep** by `flock`: the staging process holds a lock on `fm_<tag>/owner.lock`;
//!   the kernel releases it when the process dies, so the sweep removes exactly the directories
//!   no living process owns (see [`sweep`]).
//!
//! Read-write mounts need the runtime directory on the host file's filesystem (for the hard
//! link) and, like any read-write PassthroughFs, user xattr support there (PassthroughFs probes
//! for it when it starts).
//!
//! ```
//! use boxfs::filemount::{FileMount, FileMountOptions, FILE_INODE};
//! use boxfs::{Context, DynFileSystem, ROOT_ID};
//!
//! let dir = tempfile::tempdir()?;
//! let file = dir.path().join("app.conf");
//! std::fs::write(&file, "key = value\n")?;
//! let opts = FileMountOptions::new().runtime_dir(dir.path().join("run")).readonly(true);
//! let mount = FileMount::stage(&file, "/etc/app.conf", &opts)?;
//! let fs = mount.fs();
//! let e = fs.lookup(&Context::new(), ROOT_ID, c"app.conf")?;
//! assert_eq!(e.inode, FILE_INODE);
//! assert_eq!(fs.lookup(&Context::new(), ROOT_ID, c"other").unwrap_err().raw_os_error(),
//!            Some(libc::ENOENT));
//! let script = mount.plan().to_sh();
//! assert!(script.contains(mount.tag().as_str()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod plan;
mod single;
mod staging;
mod sweep;
mod sys;
mod tag;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use plan::{normalize_guest_path, GuestMount, GuestPlan, PlanError, Step, STAGING_BASE};
pub use single::{SingleFileFs, FILE_INODE};
pub use staging::Placement;
pub use sweep::{sweep, SweepReport};
pub use tag::{Tag, TAG_PREFIX};

use crate::passthrough::{HostPermissions, PassthroughFs};
use crate::{CachePolicy, DynFileSystem, Error, Result};
use staging::{place, HostFile, PlaceError, Staging};

/// Options of one file mount; see [`FileMount::stage`].
#[derive(Clone, Debug)]
pub struct FileMountOptions {
    runtime_dir: PathBuf,
    readonly: bool,
    nosuid: bool,
    nodev: bool,
    noexec: bool,
    cache_policy: CachePolicy,
    owner: (u32, u32),
    mode: Option<u32>,
}

impl Default for FileMountOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl FileMountOptions {
    /// Defaults: read-write, `nosuid` and `nodev` (as container runtimes mount volumes),
    /// executable, [`CachePolicy::Auto`], guest owner `0:0`, guest mode the host file's
    /// permission bits, runtime directory [`default_runtime_dir`].
    pub fn new() -> Self {
        FileMountOptions {
            runtime_dir: default_runtime_dir(),
            readonly: false,
            nosuid: true,
            nodev: true,
            noexec: false,
            cache_policy: CachePolicy::Auto,
            owner: (0, 0),
            mode: None,
        }
    }

    /// Directory under which staging directories are created (created 0700 if missing). For
    /// read-write mounts it must be on the host file's filesystem.
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = dir.into();
        self
    }

    /// Serve the file read-only (backend `EROFS`, and `ro` in the guest plan).
    pub fn readonly(mut self, on: bool) -> Self {
        self.readonly = on;
        self
    }

    /// `nosuid` in the guest plan (default on).
    pub fn nosuid(mut self, on: bool) -> Self {
        self.nosuid = on;
        self
    }

    /// `nodev` in the guest plan (default on).
    pub fn nodev(mut self, on: bool) -> Self {
        self.nodev = on;
        self
    }

    /// `noexec` in the guest plan (default off).
    pub fn noexec(mut self, on: bool) -> Self {
        self.noexec = on;
        self
    }

    /// Guest caching policy; its timeout bounds how long the guest may see a file the host
    /// replaced (default [`CachePolicy::Auto`]).
    pub fn cache_policy(mut self, p: CachePolicy) -> Self {
        self.cache_policy = p;
        self
    }

    /// Initial guest owner of the file (default `0:0`).
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = (uid, gid);
        self
    }

    /// Initial guest permission bits (default: the host file's).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode & 0o7777);
        self
    }

    /// The runtime directory in use.
    pub fn get_runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }
}

/// `$XDG_RUNTIME_DIR/boxfs-filemount` if set, else `<temp dir>/boxfs-filemount-<uid>`.
pub fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("boxfs-filemount"),
        _ => std::env::temp_dir().join(format!("boxfs-filemount-{}", sys::uid())),
    }
}

fn ensure_runtime_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::path(dir, e)),
    }
}

/// One staged file mount; see the [module documentation](self). Dropping it removes the
/// staging directory (the filesystem keeps answering, with errors, if it is still served).
#[derive(Debug)]
pub struct FileMount {
    tag: Tag,
    host_file: PathBuf,
    guest: GuestMount,
    fs: Arc<SingleFileFs>,
    // Last: dropped after the filesystem handle above.
    staging: Staging,
}

impl FileMount {
    /// Stages `host_file` for the guest path `guest_path` (absolute) in a fresh staging
    /// directory under the options' runtime directory.
    ///
    /// Errors: the host file is missing or not a regular file, its name is not UTF-8, the guest
    /// path is not absolute (or has `.`/`..`), the runtime directory cannot be created, or —
    /// read-write only — no hard link can be made ([`Error::Unsupported`], naming the fix).
    pub fn stage(
        host_file: impl AsRef<Path>,
        guest_path: &str,
        options: &FileMountOptions,
    ) -> Result<FileMount> {
        let host_file = host_file.as_ref().to_path_buf();
        let destination =
            normalize_guest_path(guest_path).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let meta = std::fs::metadata(&host_file).map_err(|e| Error::path(&host_file, e))?;
        if !meta.is_file() {
            return Err(Error::path(
                &host_file,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        let name_os = host_file
            .file_name()
            .ok_or_else(|| Error::InvalidConfig(format!("{}: no file name", host_file.display())))?
            .to_os_string();
        let file_name = name_os
            .to_str()
            .ok_or_else(|| {
                Error::InvalidConfig(format!("{}: file name is not UTF-8", host_file.display()))
            })?
            .to_owned();
        plan::check_file_name(&file_name).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        if file_name
            .as_bytes()
            .starts_with(crate::passthrough::INTERNAL_PREFIX)
        {
            return Err(Error::InvalidConfig(format!(
                "{}: names starting with .boxfs-internal- are reserved",
                host_file.display()
            )));
        }
        let rt = &options.runtime_dir;
        ensure_runtime_dir(rt)?;

        // A fresh directory; a tag collision (or leftover) just draws another tag.
        let (tag, staging) = loop {
            let tag = Tag::random();
            match Staging::create(rt, &tag) {
                Ok(s) => break (tag, s),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::path(rt, e)),
            }
        };
        let allow_copy = options.readonly;
        // Symlinks in the given path are resolved here, once; the file's directory is then
        // pinned and only its final name is looked at again (a symlink there is refused).
        let host = HostFile::resolve(&host_file).map_err(|e| Error::path(&host_file, e))?;
        let (placement, source) = match place(&host, staging.share_fd(), &name_os, allow_copy) {
            Ok(p) => p,
            Err(PlaceError::NoLink(e)) => {
                let why = if e.raw_os_error() == Some(libc::EXDEV) {
                    format!(
                        "{} and the runtime directory {} are on different filesystems",
                        host_file.display(),
                        rt.display()
                    )
                } else {
                    format!(
                        "cannot hard-link {} into {}: {e}",
                        host_file.display(),
                        rt.display()
                    )
                };
                return Err(Error::Unsupported(format!(
                    "{why}; a read-write file mount writes through a hard link and never \
                     serves a copy: use a runtime directory on the file's filesystem, or \
                     mount the file read-only"
                )));
            }
            Err(PlaceError::Io(e)) => return Err(Error::path(&host_file, e)),
            Err(PlaceError::Symlink | PlaceError::NotFile) => {
                return Err(Error::path(
                    &host_file,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "replaced by something other than a regular file while staging",
                    ),
                ))
            }
        };
        let inner = PassthroughFs::builder(staging.share())
            .readonly(options.readonly)
            .cache_policy(options.cache_policy)
            .default_owner(options.owner.0, options.owner.1)
            .host_permissions(HostPermissions::Private)
            .fd_cache_size(16)
            .build()?;
        let inner: Arc<dyn DynFileSystem> = Arc::new(inner);
        use std::os::unix::fs::PermissionsExt;
        let fs = SingleFileFs::new(single::Parts {
            inner,
            host_path: host_file.clone(),
            host,
            share: staging.share().to_path_buf(),
            share_fd: Arc::clone(staging.share_fd()),
            name_os,
            readonly: options.readonly,
            allow_copy,
            placement,
            source,
            owner: options.owner,
            mode: options.mode.unwrap_or(meta.permissions().mode() & 0o7777),
        })
        .map_err(|e| Error::io("looking up the staged file", e))?;
        let guest = GuestMount {
            tag: tag.clone(),
            file_name,
            destination,
            readonly: options.readonly,
            nosuid: options.nosuid,
            nodev: options.nodev,
            noexec: options.noexec,
        };
        Ok(FileMount {
            tag,
            host_file,
            guest,
            fs: Arc::new(fs),
            staging,
        })
    }

    /// The tag to serve [`fs`](Self::fs) under.
    pub fn tag(&self) -> &Tag {
        &self.tag
    }

    /// The filesystem to serve under the tag.
    pub fn fs(&self) -> Arc<dyn DynFileSystem> {
        self.fs.clone()
    }

    /// The filesystem as its concrete type.
    pub fn single_file_fs(&self) -> &Arc<SingleFileFs> {
        &self.fs
    }

    /// The host file.
    pub fn host_file(&self) -> &Path {
        &self.host_file
    }

    /// The host directory served to the guest (`<runtime dir>/fm_<tag>/share`).
    pub fn share_dir(&self) -> &Path {
        self.staging.share()
    }

    /// The whole staging directory (`<runtime dir>/fm_<tag>`), removed on drop.
    pub fn staging_dir(&self) -> &Path {
        self.staging.dir()
    }

    /// How the file is placed in the staging directory right now.
    pub fn placement(&self) -> Placement {
        self.fs.placement()
    }

    /// The mount as the guest sees it.
    pub fn guest_mount(&self) -> &GuestMount {
        &self.guest
    }

    /// The guest plan of this one mount.
    pub fn plan(&self) -> GuestPlan {
        // `stage` validated the destination and the file name.
        GuestPlan::from_checked(vec![self.guest.clone()])
    }
}

/// The file mounts of one VM, sharing one runtime directory.
///
/// ```
/// use boxfs::filemount::{FileMountOptions, FileMounts};
///
/// let dir = tempfile::tempdir()?;
/// for name in ["a.conf", "b.conf"] {
///     std::fs::write(dir.path().join(name), name)?;
/// }
/// let mut mounts = FileMounts::new(dir.path().join("run"))?;
/// let ro = FileMountOptions::new().readonly(true);
/// mounts.add(dir.path().join("b.conf"), "/etc/app/b.conf", &ro)?;
/// mounts.add(dir.path().join("a.conf"), "/etc/a.conf", &ro)?;
/// assert!(mounts.add(dir.path().join("a.conf"), "/etc/a.conf", &ro).is_err());
/// let plan = mounts.plan()?;
/// assert_eq!(plan.mounts()[0].destination, "/etc/a.conf");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FileMounts {
    runtime_dir: PathBuf,
    mounts: Vec<FileMount>,
    swept: SweepReport,
}

impl FileMounts {
    /// Uses `runtime_dir` (created 0700 if missing) and sweeps staging directories that dead
    /// processes left in it.
    pub fn new(runtime_dir: impl Into<PathBuf>) -> Result<FileMounts> {
        let runtime_dir = runtime_dir.into();
        ensure_runtime_dir(&runtime_dir)?;
        let swept = sweep(&runtime_dir)?;
        if !swept.removed.is_empty() {
            tracing::info!(
                "removed {} stale file-mount staging director{} from {}",
                swept.removed.len(),
                if swept.removed.len() == 1 { "y" } else { "ies" },
                runtime_dir.display()
            );
        }
        Ok(FileMounts {
            runtime_dir,
            mounts: Vec::new(),
            swept,
        })
    }

    /// Stages one more file (the options' runtime directory is replaced by this set's). Fails
    /// for a destination that is already taken, or one that would nest inside another file.
    pub fn add(
        &mut self,
        host_file: impl AsRef<Path>,
        guest_path: &str,
        options: &FileMountOptions,
    ) -> Result<&FileMount> {
        let dest =
            normalize_guest_path(guest_path).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let mut all: Vec<GuestMount> = self.mounts.iter().map(|m| m.guest.clone()).collect();
        let mut probe = all.first().cloned().unwrap_or_else(|| GuestMount {
            tag: Tag::random(),
            file_name: "f".into(),
            destination: String::new(),
            readonly: false,
            nosuid: false,
            nodev: false,
            noexec: false,
        });
        probe.destination = dest;
        all.push(probe);
        GuestPlan::new(&all).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let opts = options.clone().runtime_dir(self.runtime_dir.clone());
        let m = FileMount::stage(host_file, guest_path, &opts)?;
        self.mounts.push(m);
        let last = self.mounts.len() - 1;
        Ok(&self.mounts[last])
    }

    /// The staged mounts, in the order they were added.
    pub fn mounts(&self) -> &[FileMount] {
        &self.mounts
    }

    /// The plan mounting all of them, parents first.
    pub fn plan(&self) -> std::result::Result<GuestPlan, PlanError> {
        let all: Vec<GuestMount> = self.mounts.iter().map(|m| m.guest.clone()).collect();
        GuestPlan::new(&all)
    }

    /// What the sweep at creation removed and left alone.
    pub fn swept(&self) -> &SweepReport {
        &self.swept
    }

    /// The runtime directory.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }
}
