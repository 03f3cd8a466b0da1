//! `boxfsd`: the boxfs vhost-user virtio-fs daemon.
//!
//! Serves a host directory (`--shared-dir`, PassthroughFs), a single host file
//! (`--shared-file`, a file mount) or an in-memory filesystem (`--memfs-size`, MemFs) to one VMM
//! over a vhost-user socket. Flags that virtiofsd also has
//! keep virtiofsd's names, so VMM configurations written for virtiofsd work unchanged.
//!
//! ```text
//! boxfsd --socket-path /tmp/fs.sock --shared-dir /srv/share --tag share
//! boxfsd --socket-path /tmp/scratch.sock --memfs-size 512M --tag scratch
//! boxfsd --socket-path /tmp/conf.sock --shared-file /srv/app.conf --guest-path /etc/app.conf
//! boxfsd --socket-path /tmp/sandbox.sock --tag sandbox --api-socket /run/boxfs/api.sock \
//!     --volume /=overlay:lower=/img/rootfs,upper=memfs:1G --volume /work=dir:/home/u/proj \
//!     --volume /tmp=memfs:256M --volume /init.krun=virtual:/usr/lib/boxfs/init,mode=0755
//! ```
//!
//! With `--volume` (repeatable, see `spec`) one device serves a `boxfs::volumes::VolumeFs`: a
//! root backend and volumes at guest paths. `--api-socket` (see `api`) lists, attaches and
//! detaches volumes at runtime over HTTP/1.1 + JSON. `--plan sh|json` (see `plan`) prints what
//! the guest must mount.
//!
//! With `--shared-file` the daemon stages the file (see `boxfs::filemount`) and, once its socket
//! is listening, prints on stdout the random tag (first line) and then the guest mount plan, an
//! `sh` script ending with the line `# end of plan`. Configure the VMM with that tag and run
//! the script in the guest.
//!
//! The daemon exits with status 0 when the VMM disconnects (unless `--keep-serving`), or on
//! SIGTERM, SIGINT or SIGHUP, after removing its socket file (SIGUSR2 logs the requests
//! served so far by opcode, see `counts`); with status 1 and a message on
//! stderr when it cannot start.

#[cfg(target_os = "linux")]
mod api;
#[cfg(target_os = "linux")]
mod counts;
#[cfg(target_os = "linux")]
mod devices;
#[cfg(target_os = "linux")]
mod metrics;
#[cfg(target_os = "linux")]
mod plan;
#[cfg(target_os = "linux")]
#[cfg(target_os = "linux")]
mod snapshot;
mod spec;

#[cfg(target_os = "linux")]
fn main() {
    std::process::exit(linux::main());
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("boxfsd: vhost-user virtio-fs needs Linux");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::IsTerminal;
    use std::os::fd::{FromRawFd, RawFd};
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::net::UnixListener;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use std::ffi::CString;

    use crate::{api, counts, devices, plan, snapshot, spec};

    use boxfs::filemount::{default_runtime_dir, FileMount, FileMountOptions, FileMounts};
    use boxfs::memfs::MemFs;
    use boxfs::passthrough::{HostPermissions, PassthroughFs, SymlinkMode};
    use boxfs::sandbox::Seccomp;
    use boxfs::vhost::{BoundSocket, DeviceHandle, Dispatch, FsDevice, DEFAULT_THREAD_POOL_SIZE};
    use boxfs::volumes::{VirtualFile, VolumeFs, VolumeOptions};
    use boxfs::{CachePolicy, DynFileSystem, Size};
    use clap::{ArgGroup, Parser};

    /// vhost-user virtio-fs daemon serving a host directory or an in-memory filesystem.
    #[derive(Parser, Debug)]
    #[command(
        name = "boxfsd",
        version,
        about = "vhost-user virtio-fs daemon: serves a host directory or an in-memory \
                 filesystem to a VMM"
    )]
    #[command(group(ArgGroup::new("backend").args(["shared_dir", "shared_file", "memfs_size", "lower"])))]
    #[command(group(ArgGroup::new("table").multiple(true).args(["volume", "api_socket"])))]
    #[command(group(ArgGroup::new("host_backend").args(["shared_dir", "shared_file"])))]
    #[command(group(ArgGroup::new("dir_backend").multiple(true).args(["shared_dir", "lower"])))]
    #[command(group(ArgGroup::new("owned_backend").multiple(true).args(["shared_dir", "shared_file", "lower"])))]
    #[command(group(ArgGroup::new("socket").args(["socket_path", "fd"])))]
    struct Args {
        /// vhost-user socket path the VMM connects to.
        #[arg(long, value_name = "PATH", alias = "socket")]
        socket_path: Option<PathBuf>,

        /// Listening vhost-user socket inherited from the parent, instead of --socket-path.
        #[arg(long, value_name = "FD")]
        fd: Option<RawFd>,

        /// Host directory to share (PassthroughFs). With --volume: the root backend `/`.
        #[arg(long, value_name = "DIR")]
        shared_dir: Option<PathBuf>,

        /// A volume at a guest path, repeatable: `GUEST_PATH=KIND:SPEC[,OPTION...]` with KIND
        /// `dir:PATH`, `memfs:SIZE`, `overlay:lower=DIR,upper=DIR|memfs:SIZE`, `file:PATH` or
        /// `virtual:PATH` (the host file's bytes, read at start, read-only); OPTIONs `ro`,
        /// `mode=OCTAL`, `owner=UID:GID`, `hide=PATTERN` (repeatable). `/=KIND:SPEC` sets the
        /// root backend (default: --shared-dir, --memfs-size or --lower/--upper if given, else
        /// a 16 MiB in-memory root holding the mount points). One device serves them all.
        #[arg(long, value_name = "GUEST_PATH=KIND:SPEC", value_parser = spec::parse_volume,
              conflicts_with = "shared_file")]
        volume: Vec<spec::VolumeSpec>,

        /// Print the guest mount plan on stdout once the socket listens: `sh` (a script ending
        /// with `# end of plan`; the default for --shared-file, after the tag line) or `json`
        /// (one line). For --shared-file the file mount's steps; otherwise the device's one
        /// virtiofs mount (tag, mount point, options, kernel command line for a root on it,
        /// volumes).
        #[arg(long, value_name = "FORMAT")]
        plan: Option<plan::Format>,

        /// Guest mount point of the device in the --plan (default `/`: the guest's root
        /// filesystem). Not with --shared-file.
        #[arg(long, value_name = "PATH", requires = "plan", conflicts_with = "shared_file",
              value_parser = spec::guest_path)]
        mount_point: Option<String>,

        /// Control socket (HTTP/1.1 + JSON, mode 0600) to list, attach and detach volumes at
        /// runtime: the runtime's channel, never to be exposed to the guest.
        #[arg(long, value_name = "PATH", conflicts_with = "shared_file")]
        api_socket: Option<PathBuf>,

        /// A single host file to share (a file mount): staged in a private directory under
        /// --runtime-dir, served under a random tag; the tag and the guest mount plan are
        /// printed on stdout.
        #[arg(long, value_name = "FILE")]
        shared_file: Option<PathBuf>,

        /// Guest path the --shared-file is mounted at (default: the host path).
        #[arg(long, value_name = "PATH", requires = "shared_file")]
        guest_path: Option<String>,

        /// Directory for the staging directories of --shared-file and file volumes (default: $XDG_RUNTIME_DIR/
        /// boxfs-filemount or /tmp/boxfs-filemount-UID). Read-write file mounts need it on the
        /// file's filesystem. Staging directories of dead daemons in it are removed at start.
        #[arg(long, value_name = "DIR")]
        runtime_dir: Option<PathBuf>,

        /// Serve an in-memory filesystem (MemFs) of this capacity instead, e.g. 512M, 2G.
        #[arg(long, value_name = "SIZE")]
        memfs_size: Option<Size>,

        /// Start the in-memory filesystem (--memfs-size) with the content of a snapshot that
        /// --snapshot-file (SIGUSR1, `PUT /snapshot`) wrote.
        #[arg(long, value_name = "FILE")]
        memfs_from: Option<PathBuf>,

        /// Where SIGUSR1 and the API's `PUT /snapshot` write the served filesystem's state
        /// (an in-memory share's whole content); its directory is opened at start, so this
        /// works in the sandbox. `PUT /snapshot {"path":"NAME"}` writes NAME in the same
        /// directory.
        #[arg(long, value_name = "FILE")]
        snapshot_file: Option<PathBuf>,

        /// Overlay: read-only lower host directory (DualFs backend B). Needs --upper.
        #[arg(long, value_name = "DIR", requires = "upper")]
        lower: Option<PathBuf>,

        /// Overlay: writable upper layer (DualFs backend A): a host directory, or
        /// `memfs:SIZE` for an in-memory upper (e.g. `memfs:1G`). Needs --lower.
        #[arg(long, value_name = "DIR|memfs:SIZE", requires = "lower")]
        upper: Option<String>,

        /// Overlay dispatch policy: read-b-write-a (default), a-only, a-fallback-b,
        /// merge-reads-a-precedence.
        #[arg(
            long,
            value_name = "NAME",
            default_value = "read-b-write-a",
            requires = "lower"
        )]
        policy: String,

        /// Most inodes the in-memory filesystem (or in-memory upper layer) may hold.
        #[arg(long, value_name = "N")]
        memfs_max_inodes: Option<u64>,

        /// Share the directory or file read-only.
        #[arg(long, requires = "host_backend")]
        readonly: bool,

        /// Guest caching: never, auto or always.
        #[arg(long, value_name = "POLICY", default_value = "auto")]
        cache: CachePolicy,

        /// Let the guest cache writes (FUSE writeback cache).
        #[arg(long, requires = "dir_backend")]
        writeback: bool,

        /// Limit on the bytes of regular files and symlink targets in the shared directory
        /// (e.g. 10G); writes past it fail with ENOSPC. Default: no limit.
        #[arg(long, value_name = "SIZE", requires = "dir_backend")]
        quota: Option<Size>,

        /// Guest-visible owner `UID:GID` of host files that carry no ownership xattr.
        #[arg(long, value_name = "UID:GID", value_parser = parse_owner, default_value = "0:0",
              requires = "owned_backend")]
        default_owner: (u32, u32),

        /// How guest symlinks are stored on the host: `virtualized` (a small regular file with
        /// the link's owner in the ownership xattr; full POSIX semantics) or `host` (real host
        /// symlinks, owned by the default owner).
        #[arg(long, value_name = "MODE", value_parser = parse_symlinks, default_value = "virtualized",
              requires = "dir_backend")]
        symlinks: SymlinkMode,

        /// Host permission bits of files the guest creates: `private` (0600/0700, never
        /// changed) or `mirror` (the guest's bits, always with owner read/write).
        #[arg(long, value_name = "MODE", value_parser = parse_host_permissions,
              default_value = "private", requires = "dir_backend")]
        host_permissions: HostPermissions,

        /// Most inode descriptors kept open at once, per host directory (an LRU; evicted
        /// inodes are re-opened). Default: with --shared-dir a quarter of the open-file limit
        /// (1024 to 65536), otherwise 1024.
        #[arg(long, value_name = "N", requires = "dir_backend")]
        fd_cache_size: Option<usize>,

        /// Most inodes the guest may hold at once in the shared directory (ENFILE past it).
        #[arg(long, value_name = "N", requires = "dir_backend")]
        max_inodes: Option<usize>,

        /// Most files and directories the guest may hold open at once (ENFILE past it).
        #[arg(long, value_name = "N", requires = "dir_backend")]
        max_handles: Option<usize>,

        /// Request worker threads; 0 serves every request on the virtqueue threads.
        #[arg(long, value_name = "N", default_value_t = DEFAULT_THREAD_POOL_SIZE)]
        thread_pool_size: usize,

        /// Which requests the worker threads serve: `slow` (fsync, fsyncdir, blocking locks,
        /// fallocate; the rest on the virtqueue threads), `adaptive` (slow ones, and all
        /// while several are in flight and a worker is free), `all`, or `none`.
        #[arg(
            long,
            value_name = "WHICH",
            default_value = "slow",
            value_parser = parse_dispatch
        )]
        dispatch: Dispatch,

        /// Microseconds a virtqueue thread keeps polling for the guest's next request before
        /// it sleeps (0: never poll). Lowers the latency of back-to-back requests for a little
        /// CPU after each burst.
        #[arg(long, value_name = "US", default_value_t = boxfs::vhost::DEFAULT_POLL.as_micros() as u64)]
        poll_us: u64,

        /// Tag exposed in the device's config space (at most 36 bytes). Without it the VMM's
        /// tag is used. Not with --shared-file, whose tag is random.
        #[arg(long, value_name = "TAG", conflicts_with = "shared_file")]
        tag: Option<String>,

        /// Number of request queues offered (besides the hiprio queue).
        #[arg(long, value_name = "N", default_value_t = 1)]
        request_queues: usize,

        /// Log level: error, warn, info, debug, trace or off.
        #[arg(long, value_name = "LEVEL", default_value = "info")]
        log_level: String,

        /// Sandbox mode: `namespace` (default): once the shares are open, the daemon moves into
        /// its own mount namespace (and user namespace when not root) whose root holds only
        /// /proc, and sets no_new_privs; or `none` (PassthroughFs still confines every lookup
        /// to the shared directory itself).
        #[arg(long, value_name = "MODE", default_value = "namespace")]
        sandbox: String,

        /// Seccomp filter installed before serving: `kill` (default: a call outside the
        /// allow-list kills the daemon), `log` (such calls are logged by the kernel and run)
        /// or `none`.
        #[arg(long, value_name = "MODE", default_value = "kill")]
        seccomp: Seccomp,

        /// Keep accepting VMM connections after one disconnects.
        #[arg(long)]
        keep_serving: bool,

        /// Group owning the socket file (name or numeric id).
        #[arg(long, value_name = "GROUP", requires = "socket_path")]
        socket_group: Option<String>,

        /// Raise the open-file limit to this (default: the hard limit).
        #[arg(long, value_name = "N")]
        rlimit_nofile: Option<u64>,

        /// Print the capabilities as JSON (as virtiofsd does, for libvirt) and exit.
        #[arg(long)]
        print_capabilities: bool,

        /// Fleet mode: one device of many (repeatable), `id=ID,socket=PATH,` and one backend,
        /// `shared-dir=DIR`, `memfs-size=SIZE` or `lower=DIR,upper=DIR|memfs:SIZE`; options
        /// `tag=TAG`, `readonly`, `quota=SIZE`, `max-inodes=N`, `max-handles=N`. Each device
        /// has its own socket, backend, limits and counters; --api-socket adds and removes
        /// devices at runtime and serves `GET /metrics`.
        #[arg(long, value_name = "SPEC", value_parser = devices::parse_device,
              conflicts_with_all = FLEET_CONFLICTS)]
        device: Vec<devices::DeviceSpec>,

        /// Fleet mode: the devices of a file, JSON `{"devices": [{"id": .., "socket": ..,
        /// "shared_dir": ..}, ...]}` or TOML (`.toml`) `[[devices]]` tables, with the fields
        /// of `PUT /devices`.
        #[arg(long, value_name = "FILE", conflicts_with_all = FLEET_CONFLICTS)]
        config: Option<PathBuf>,

        /// Fleet mode with no device at start: devices are added with `PUT /devices` on the
        /// --api-socket.
        #[arg(long, requires = "api_socket", conflicts_with_all = FLEET_CONFLICTS)]
        fleet: bool,

        /// Fleet mode: event-loop threads serving every device's sockets and queues (default:
        /// one per core); `0` gives each device threads of its own instead. The fleet's
        /// --thread-pool-size workers serve the slow requests of every device.
        #[arg(long, value_name = "N")]
        fleet_threads: Option<usize>,

        /// Fleet mode: directory where devices added at runtime may have their sockets once
        /// the daemon is sandboxed (it is held open; other paths are unreachable then).
        #[arg(long, value_name = "DIR")]
        socket_dir: Option<PathBuf>,

        /// Accepted for virtiofsd compatibility (extended attributes are always on).
        #[arg(long, hide = true)]
        xattr: bool,

        /// Accepted for virtiofsd compatibility (ignored).
        #[arg(long, hide = true)]
        announce_submounts: bool,

        /// Accepted for virtiofsd compatibility (ignored).
        #[arg(long, hide = true, value_name = "MODE")]
        inode_file_handles: Option<String>,
    }

    /// Single-device options that fleet mode replaces with per-device ones.
    const FLEET_CONFLICTS: [&str; 12] = [
        "socket_path",
        "fd",
        "shared_dir",
        "shared_file",
        "memfs_size",
        "lower",
        "upper",
        "volume",
        "plan",
        "tag",
        "keep_serving",
        "readonly",
    ];

    fn parse_dispatch(s: &str) -> Result<Dispatch, String> {
        match s {
            "adaptive" => Ok(Dispatch::Adaptive),
            "slow" => Ok(Dispatch::SlowToPool),
            "all" => Ok(Dispatch::Pool),
            "none" => Ok(Dispatch::VringThread),
            other => Err(format!("`{other}`: expected adaptive, slow, all or none")),
        }
    }

    /// Parses `UID:GID`.
    fn parse_owner(s: &str) -> Result<(u32, u32), String> {
        let (u, g) = s.split_once(':').ok_or("expected UID:GID")?;
        let u = u.parse().map_err(|_| format!("`{u}`: not a uid"))?;
        let g = g.parse().map_err(|_| format!("`{g}`: not a gid"))?;
        Ok((u, g))
    }

    fn parse_symlinks(s: &str) -> Result<SymlinkMode, String> {
        match s {
            "virtualized" => Ok(SymlinkMode::Virtualized),
            "host" => Ok(SymlinkMode::Host),
            other => Err(format!("`{other}`: expected virtualized or host")),
        }
    }

    fn parse_host_permissions(s: &str) -> Result<HostPermissions, String> {
        match s {
            "private" => Ok(HostPermissions::Private),
            "mirror" => Ok(HostPermissions::Mirror),
            other => Err(format!("`{other}`: expected private or mirror")),
        }
    }

    fn init_logging(level: &str) -> Result<(), String> {
        let level = level.to_ascii_lowercase();
        // fuse-backend-rs logs every error reply at `error` level, which a guest could use to
        // flood the log: only show its messages when debugging.
        let fuse = match level.as_str() {
            "debug" | "trace" => "debug",
            "error" | "warn" | "info" | "off" => "off",
            other => return Err(format!("unknown log level `{other}`")),
        };
        let directives = format!("{level},fuse_backend_rs={fuse},vhost_user_backend=warn");
        let filter =
            tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .try_init()
            .map_err(|e| e.to_string())
    }

    fn raise_nofile(want: Option<u64>) {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let lim = getrlimit(Resource::Nofile);
        let max = lim.maximum.unwrap_or(u64::MAX);
        let target = want.unwrap_or(max).min(max);
        if lim.current.is_some_and(|cur| target <= cur) || lim.current.is_none() {
            return;
        }
        let new = Rlimit {
            current: Some(target),
            maximum: lim.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, new) {
            tracing::warn!(
                "cannot raise the open-file limit: {}",
                std::io::Error::from(e)
            );
        }
    }

    fn set_socket_group(path: &Path, group: &str) -> Result<(), String> {
        let gid = match group.parse::<libc::gid_t>() {
            Ok(g) => g,
            Err(_) => {
                let c = std::ffi::CString::new(group).map_err(|_| "bad group name".to_string())?;
                // SAFETY: `c` is a valid C string; the returned pointer is read immediately.
                let gr = unsafe { libc::getgrnam(c.as_ptr()) };
                if gr.is_null() {
                    return Err(format!("unknown group `{group}`"));
                }
                // SAFETY: getgrnam returned a non-null pointer to a valid group entry.
                unsafe { (*gr).gr_gid }
            }
        };
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| format!("{}: cannot set group {group}: {e}", path.display()))
    }

    fn check_shared_dir(dir: &Path) -> Result<(), String> {
        let meta = std::fs::metadata(dir)
            .map_err(|e| format!("shared directory {}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err(format!(
                "shared directory {}: not a directory",
                dir.display()
            ));
        }
        std::fs::read_dir(dir).map_err(|e| format!("shared directory {}: {e}", dir.display()))?;
        Ok(())
    }

    /// A staged single-file share: the mounts (dropping them removes the staging directory),
    /// the tag and the guest plan.
    struct FileShare {
        mounts: FileMounts,
        tag: String,
        plan: String,
    }

    fn stage_file(args: &Args, file: &Path) -> Result<FileShare, String> {
        let guest = match &args.guest_path {
            Some(g) => g.clone(),
            None => std::path::absolute(file)
                .ok()
                .and_then(|p| p.to_str().map(str::to_owned))
                .ok_or_else(|| {
                    format!(
                        "shared file {}: give --guest-path (the host path is not UTF-8)",
                        file.display()
                    )
                })?,
        };
        let rt = args.runtime_dir.clone().unwrap_or_else(default_runtime_dir);
        let mut mounts =
            FileMounts::new(&rt).map_err(|e| format!("runtime directory {}: {e}", rt.display()))?;
        let opts = FileMountOptions::new()
            .readonly(args.readonly)
            .cache_policy(args.cache)
            .owner(args.default_owner.0, args.default_owner.1);
        let mount = mounts
            .add(file, &guest, &opts)
            .map_err(|e| format!("shared file {}: {e}", file.display()))?;
        let tag = mount.tag().to_string();
        tracing::info!(
            "staged {} in {} ({:?})",
            file.display(),
            mount.share_dir().display(),
            mount.placement()
        );
        let gp = mounts
            .plan()
            .map_err(|e| format!("shared file {}: {e}", file.display()))?;
        let plan = match args.plan {
            Some(plan::Format::Json) => format!("{}\n", plan::file_json(&gp)),
            Some(plan::Format::Sh) | None => format!("{tag}\n{}", gp.to_sh()),
        };
        Ok(FileShare { mounts, tag, plan })
    }

    /// `--lower DIR --upper DIR|memfs:SIZE --policy NAME`: a DualFs overlay.
    fn build_overlay(
        args: &Args,
        lower: &Path,
        upper: &spec::Upper,
        limits: &spec::Limits,
    ) -> Result<Arc<dyn DynFileSystem>, String> {
        use boxfs::dualfs::{policy_by_name, DualFs};
        check_shared_dir(lower)?;
        let b = PassthroughFs::builder(lower)
            .readonly(true)
            .cache_policy(args.cache)
            .default_owner(args.default_owner.0, args.default_owner.1)
            .symlinks(args.symlinks)
            .build()
            .map_err(|e| format!("lower directory {}: {e}", lower.display()))?;
        let a: Arc<dyn DynFileSystem> = match upper {
            spec::Upper::Memfs(size) => {
                Arc::new(memfs(args, size.bytes(), limits).map_err(|e| format!("upper: {e}"))?)
            }
            spec::Upper::Dir(dir) => {
                Arc::new(passthrough(args, dir, "upper directory", false, limits)?)
            }
        };
        let policy = policy_by_name(&args.policy)
            .ok_or_else(|| format!("--policy {}: unknown policy", args.policy))?;
        let fs = DualFs::builder()
            .backend_a(a)
            .backend_b(Arc::new(b))
            .boxed_policy(policy)
            .cache_policy(args.cache)
            .writeback(args.writeback)
            .build()
            .map_err(|e| format!("overlay: {e}"))?;
        Ok(Arc::new(fs))
    }

    /// A PassthroughFs over `dir` with the command line's options; a volume's own `limits`
    /// take the place of `--quota`, `--max-inodes` and `--max-handles`.
    fn passthrough(
        args: &Args,
        dir: &Path,
        what: &str,
        readonly: bool,
        limits: &spec::Limits,
    ) -> Result<PassthroughFs, String> {
        check_shared_dir(dir)?;
        let quota = limits.quota.or(args.quota);
        let mut b = PassthroughFs::builder(dir)
            .readonly(readonly)
            .cache_policy(args.cache)
            .writeback(args.writeback)
            .quota_bytes(quota.map(Size::bytes))
            .default_owner(args.default_owner.0, args.default_owner.1)
            .symlinks(args.symlinks)
            .host_permissions(args.host_permissions);
        if let Some(n) = limits
            .fd_cache_size
            .or(args.fd_cache_size.map(|n| n as u64))
        {
            b = b.fd_cache_size(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(n) = limits.max_inodes.or(args.max_inodes.map(|n| n as u64)) {
            b = b.max_inodes(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if let Some(n) = limits.max_handles.or(args.max_handles.map(|n| n as u64)) {
            b = b.max_handles(usize::try_from(n).unwrap_or(usize::MAX));
        }
        b.build()
            .map_err(|e| format!("{what} {}: {e}", dir.display()))
    }

    /// The descriptor cache of the one host directory a single device serves, unless
    /// `--fd-cache-size` says otherwise: a quarter of the open-file limit (as raised at start),
    /// at least the library's 1024 and at most 65,536. An inode whose descriptor is evicted
    /// costs its next request a re-open (and, for a lookup, a file-handle check), so a guest
    /// walking more files than the cache holds pays three syscalls per request instead of one.
    /// Devices of a fleet, volumes and overlay layers keep the library default (they can be
    /// many in one process); each can set its own `fd-cache-size`.
    fn default_fd_cache_size() -> u64 {
        const MIN: u64 = 1024;
        const MAX: u64 = 65_536;
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(MAX * 4);
        (limit / 4).clamp(MIN, MAX)
    }

    fn build_fs(args: &Args) -> Result<Arc<dyn DynFileSystem>, String> {
        if let Some(lower) = &args.lower {
            let upper = args.upper.as_deref().ok_or("--lower needs --upper")?;
            let upper = spec::parse_upper(upper).map_err(|e| format!("--upper: {e}"))?;
            return build_overlay(args, lower, &upper, &spec::Limits::default());
        }
        if let Some(dir) = &args.shared_dir {
            let limits = spec::Limits {
                fd_cache_size: Some(
                    args.fd_cache_size
                        .map_or_else(default_fd_cache_size, |n| n as u64),
                ),
                ..Default::default()
            };
            return Ok(Arc::new(passthrough(
                args,
                dir,
                "shared directory",
                args.readonly,
                &limits,
            )?));
        }
        let size = args.memfs_size.ok_or("no backend given")?;
        let fs = memfs(args, size.bytes(), &spec::Limits::default())?;
        if let Some(from) = &args.memfs_from {
            snapshot::restore(&fs, from)?;
        }
        Ok(Arc::new(fs))
    }

    /// Capacity of the default root of a volume table: an in-memory filesystem holding only
    /// the mount points' parent directories (and whatever the guest creates there).
    const DEFAULT_ROOT_SIZE: u64 = 16 << 20;

    /// A MemFs of `size` bytes with the command line's options.
    fn memfs(args: &Args, size: u64, limits: &spec::Limits) -> Result<MemFs, String> {
        let mut b = MemFs::builder().capacity(size).cache_policy(args.cache);
        if let Some(n) = limits.max_inodes.or(args.memfs_max_inodes) {
            b = b.max_inodes(n);
        }
        if let Some(n) = limits.max_handles {
            b = b.max_handles(n);
        }
        b.build().map_err(|e| format!("in-memory filesystem: {e}"))
    }

    /// The volume table being served, and what must live as long as it does.
    pub(crate) struct Table {
        pub(crate) vfs: Arc<VolumeFs>,
        /// The root backend, where mount points' missing parents are made.
        root: Arc<dyn DynFileSystem>,
        /// The root is a host directory: nothing is created in it.
        host_root: bool,
        /// Staged file volumes (dropping one removes its staging directory).
        pub(crate) files: Vec<FileMount>,
        /// Runtime directory for file volumes.
        pub(crate) runtime_dir: PathBuf,
    }

    use crate::api::Built;

    /// Builds the backend of a volume spec.
    fn build_backend(
        args: &Args,
        v: &spec::VolumeSpec,
        runtime_dir: &Path,
    ) -> Result<Built, String> {
        let at = &v.path;
        Ok(match &v.kind {
            spec::Kind::Dir(dir) => (
                Arc::new(passthrough(
                    args,
                    dir,
                    "volume directory",
                    v.readonly,
                    &v.limits,
                )?),
                None,
                None,
            ),
            spec::Kind::Memfs(size) => (
                Arc::new(
                    memfs(args, size.bytes(), &v.limits)
                        .map_err(|e| format!("volume {at}: {e}"))?,
                ),
                None,
                None,
            ),
            spec::Kind::Overlay { lower, upper } => (
                build_overlay(args, lower, upper, &v.limits)
                    .map_err(|e| format!("volume {at}: {e}"))?,
                None,
                None,
            ),
            spec::Kind::File(file) => {
                let mut opts = FileMountOptions::new()
                    .runtime_dir(runtime_dir)
                    .readonly(v.readonly)
                    .cache_policy(args.cache)
                    .owner(args.default_owner.0, args.default_owner.1);
                if let Some(m) = v.mode {
                    opts = opts.mode(m);
                }
                let m = FileMount::stage(file, at, &opts)
                    .map_err(|e| format!("volume {at}: file {}: {e}", file.display()))?;
                let name = CString::new(m.guest_mount().file_name.as_bytes())
                    .map_err(|_| format!("volume {at}: file name with a NUL byte"))?;
                (m.fs(), Some(name), Some(m))
            }
            spec::Kind::Virtual(file) => {
                let mut f = VirtualFile::from_host_file(file)
                    .map_err(|e| format!("volume {at}: virtual file {}: {e}", file.display()))?;
                if let Some(m) = v.mode {
                    f = f.mode(m);
                }
                if let Some((u, g)) = v.owner {
                    f = f.owner(u, g);
                }
                (Arc::new(f), None, None)
            }
        })
    }

    /// The volume options of a spec.
    fn volume_options(v: &spec::VolumeSpec, root_name: Option<&CString>) -> VolumeOptions {
        let mut o = VolumeOptions::new().readonly(v.readonly);
        if let Some(m) = v.mode {
            o = o.mode(m);
        }
        if let Some((u, g)) = v.owner {
            o = o.owner(u, g);
        }
        for h in &v.hide {
            o = o.hide(h.clone());
        }
        if let Some(n) = root_name {
            o = o.root_name(n);
        }
        o
    }

    /// Creates the missing parent directories of the volumes' mount points in the root
    /// backend (not in a host directory root, whose tree is the host's), leaving out paths
    /// inside another volume.
    fn make_parents(
        root: &dyn DynFileSystem,
        paths: &[&str],
        is_volume: &dyn Fn(&str) -> bool,
        host_root: bool,
    ) -> Result<(), String> {
        use boxfs::{Context, ROOT_ID};
        let ctx = Context::new();
        for path in paths.iter().filter(|p| **p != "/") {
            let comps: Vec<&str> = path[1..].split('/').collect();
            let mut dir = ROOT_ID;
            let mut prefix = String::new();
            let mut held = Vec::new();
            for c in &comps[..comps.len() - 1] {
                prefix.push('/');
                prefix.push_str(c);
                if is_volume(&prefix) {
                    break;
                }
                let name = CString::new(*c).map_err(|_| format!("volume {}: NUL", path))?;
                let e = match root.lookup(&ctx, dir, &name) {
                    Ok(e) => e,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !host_root => {
                        root.mkdir(&ctx, dir, &name, 0o755, 0).map_err(|e| {
                            format!("volume {}: creating {prefix} in the root: {e}", path)
                        })?
                    }
                    Err(e) => {
                        return Err(format!(
                            "volume {}: mount point parent {prefix} in the root: {e}",
                            path
                        ))
                    }
                };
                dir = e.inode;
                held.push(e.inode);
            }
            for ino in held {
                root.forget(&ctx, ino, 1);
            }
        }
        Ok(())
    }

    /// `--volume`s (and the shorthands as the root): one VolumeFs.
    fn build_table(args: &Args) -> Result<Table, String> {
        let shorthand =
            args.shared_dir.is_some() || args.memfs_size.is_some() || args.lower.is_some();
        build_table_of(args, &args.volume, shorthand)
    }

    /// A VolumeFs of `volumes`; `shorthand`: the root is the command line's backend.
    fn build_table_of(
        args: &Args,
        volumes: &[spec::VolumeSpec],
        shorthand: bool,
    ) -> Result<Table, String> {
        let runtime_dir = args.runtime_dir.clone().unwrap_or_else(default_runtime_dir);
        let root_spec = volumes.iter().find(|v| v.path == "/");
        let (root, host_root): (Arc<dyn DynFileSystem>, bool) = match root_spec {
            Some(_) if shorthand => {
                return Err(
                    "--volume /=... and --shared-dir, --memfs-size or --lower both \
                            give the root backend; give one"
                        .into(),
                )
            }
            Some(v) => {
                if v.mode.is_some() || v.owner.is_some() || !v.hide.is_empty() {
                    return Err(
                        "--volume /=...: mode=, owner= and hide= do not apply to the \
                                root backend"
                            .into(),
                    );
                }
                if v.readonly && !matches!(v.kind, spec::Kind::Dir(_)) {
                    return Err("--volume /=...: ro applies only to a dir root".into());
                }
                let (fs, _, _) = build_backend(args, v, &runtime_dir)?;
                (fs, matches!(v.kind, spec::Kind::Dir(_)))
            }
            None if shorthand => (build_fs(args)?, args.shared_dir.is_some()),
            None => (
                Arc::new(memfs(args, DEFAULT_ROOT_SIZE, &spec::Limits::default())?),
                false,
            ),
        };
        let mut seen = std::collections::HashSet::new();
        for v in volumes {
            if !seen.insert(v.path.as_str()) {
                return Err(format!("--volume {}: given twice", v.path));
            }
        }
        let paths: Vec<&str> = volumes.iter().map(|v| v.path.as_str()).collect();
        make_parents(&*root, &paths, &|p| paths.contains(&p), host_root)?;
        let vfs = Arc::new(VolumeFs::new(root.clone()));
        let mut vols: Vec<&spec::VolumeSpec> = volumes.iter().filter(|v| v.path != "/").collect();
        // Parents before the volumes mounted inside them.
        vols.sort_by_key(|v| v.path.matches('/').count());
        let mut files = Vec::new();
        for v in vols {
            let (fs, root_name, file) = build_backend(args, v, &runtime_dir)?;
            vfs.attach(&v.path, fs, volume_options(v, root_name.as_ref()))
                .map_err(|e| format!("volume {}: {e}", v.path))?;
            tracing::info!("volume {} = {}", v.path, v.kind.name());
            files.extend(file);
        }
        Ok(Table {
            vfs,
            root,
            host_root,
            files,
            runtime_dir,
        })
    }

    fn inherited_listener(fd: RawFd) -> Result<UnixListener, String> {
        // SAFETY: fstat only writes into `st`; an invalid fd is reported as an error.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid, writable stat buffer.
        if fd < 0 || unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(format!("--fd {fd}: not an open file descriptor"));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(format!("--fd {fd}: not a socket"));
        }
        // SAFETY: the fd is open and a socket; the daemon takes ownership of it, as virtiofsd
        // does, and nothing else in this process uses it.
        Ok(unsafe { UnixListener::from_raw_fd(fd) })
    }

    /// What `start` hands back: the running device, the file share or volume table it serves.
    type Started = (DeviceHandle, Option<FileShare>, Option<Table>);

    fn start(args: &Arc<Args>) -> Result<Started, String> {
        let sandbox = match args.sandbox.as_str() {
            "none" => false,
            "namespace" => true,
            other => {
                return Err(format!(
                    "--sandbox {other}: not supported; use none or namespace (PassthroughFs \
                     confines lookups to the shared directory with openat2 RESOLVE_BENEATH \
                     in any case)"
                ))
            }
        };
        if args.inode_file_handles.is_some() || args.announce_submounts || args.xattr {
            tracing::debug!("ignoring virtiofsd compatibility flags");
        }
        raise_nofile(args.rlimit_nofile);
        if let Some(path) = &args.socket_path {
            // Fail on a busy socket before touching the shared directory.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.file_type().is_socket() && boxfs::vhost::socket_in_use(path) {
                    return Err(format!(
                        "{}: socket path in use: another process is listening on it",
                        path.display()
                    ));
                }
            }
        }
        let file_share = match &args.shared_file {
            Some(f) => Some(stage_file(args, f)?),
            None => None,
        };
        let mut table = if !args.volume.is_empty() || args.api_socket.is_some() {
            Some(build_table(args)?)
        } else {
            None
        };
        let fs = match (&file_share, &table) {
            (Some(share), _) => share
                .mounts
                .mounts()
                .first()
                .map(|m| m.fs())
                .ok_or("no file staged")?,
            (None, Some(t)) => t.vfs.clone() as Arc<dyn DynFileSystem>,
            (None, None) => build_fs(args)?,
        };
        let mut builder = FsDevice::builder(fs.clone())
            .request_queues(args.request_queues)
            .thread_pool_size(args.thread_pool_size)
            .dispatch(args.dispatch)
            .keep_serving(args.keep_serving)
            .poll(std::time::Duration::from_micros(args.poll_us))
            .metrics(counts::counters());
        if let Some(tag) = &args.tag {
            builder = builder.tag(tag.clone());
        }
        if let Some(share) = &file_share {
            builder = builder.tag(share.tag.clone());
        }
        // The API socket is bound first: once the device socket exists, so does the API's (a
        // runtime waits for the device socket only).
        let api_listener = match &args.api_socket {
            Some(path) => Some(api::bind(path)?),
            None => None,
        };
        // The socket is bound (and its group set) while its path is reachable; the sandbox,
        // if any, comes before the device starts its threads.
        let bound = match &args.socket_path {
            Some(path) => Some(BoundSocket::bind(path).map_err(|e| e.to_string())?),
            None => None,
        };
        if let (Some(group), Some(path)) = (&args.socket_group, &args.socket_path) {
            set_socket_group(path, group)?;
        }
        if let Some(file) = &args.snapshot_file {
            let target = table
                .as_ref()
                .map_or_else(|| fs.clone(), |t| t.root.clone());
            snapshot::install(file, target)?;
        }
        if sandbox {
            boxfs::sandbox::enter_namespace().map_err(|e| match e {
                boxfs::Error::Unsupported(why) => format!(
                    "--sandbox namespace (the default): {why}. This kernel does not let the \
                     daemon confine itself; run it with --sandbox none to serve unconfined"
                ),
                e => format!("--sandbox namespace: {e}"),
            })?;
            tracing::info!("sandboxed: private mount namespace with only /proc, no_new_privs");
        }
        boxfs::sandbox::install_seccomp(args.seccomp).map_err(|e| format!("--seccomp: {e}"))?;
        if let (Some(listener), Some(t)) = (api_listener, table.as_mut()) {
            let a = Arc::clone(args);
            let rt = t.runtime_dir.clone();
            let (vfs, root, host_root) = (t.vfs.clone(), t.root.clone(), t.host_root);
            let build: api::Builder = Box::new(move |v| build_backend(&a, v, &rt));
            let parents: api::Parents = Box::new(move |path| {
                let attached: Vec<String> = vfs.volumes().into_iter().map(|i| i.path).collect();
                let is_volume = |p: &str| attached.iter().any(|a| a == p);
                make_parents(&*root, &[path], &is_volume, host_root)
            });
            let files = std::mem::take(&mut t.files);
            api::Api::new(t.vfs.clone(), build, parents, sandbox, &args.volume, files)
                .serve(listener)?;
        }
        let device = builder.build().map_err(|e| e.to_string())?;
        let handle = match (bound, args.fd) {
            (Some(bound), _) => device.serve_bound(bound).map_err(|e| e.to_string())?,
            (None, Some(fd)) => device
                .serve_listener(inherited_listener(fd)?)
                .map_err(|e| e.to_string())?,
            (None, None) => return Err("one of --socket-path or --fd is required".into()),
        };
        Ok((handle, file_share, table))
    }

    /// Builds a fleet device's backend with the command line's options.
    fn build_device(args: &Args, d: &devices::DeviceSpec) -> Result<devices::Built, String> {
        use devices::{BackendKind, Usage};
        let limits = spec::Limits {
            quota: d
                .limits
                .quota
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| format!("device {}: quota: {e}", d.id))?,
            max_inodes: d.limits.max_inodes.filter(|n| *n > 0),
            max_handles: d.limits.max_handles.filter(|n| *n > 0),
            fd_cache_size: d.limits.fd_cache_size.filter(|n| *n > 0),
        };
        let at = |e: String| format!("device {}: {e}", d.id);
        Ok(match d.backend()? {
            BackendKind::Dir(dir) => {
                let fs = Arc::new(
                    passthrough(args, dir, "shared directory", d.readonly, &limits).map_err(at)?,
                );
                let probe = Arc::clone(&fs);
                devices::Built {
                    fs,
                    usage: Box::new(move || Usage {
                        inodes: Some(probe.inode_count() as u64),
                        open_handles: Some(probe.open_handles() as u64),
                        memfs_bytes: None,
                        quota_bytes: probe.quota_used(),
                    }),
                }
            }
            BackendKind::Memfs(size) => {
                let fs = Arc::new(memfs(args, size, &limits).map_err(at)?);
                let probe = Arc::clone(&fs);
                devices::Built {
                    fs,
                    usage: Box::new(move || {
                        let u = probe.usage();
                        Usage {
                            inodes: Some(u.inodes_used),
                            open_handles: Some(u.open_handles),
                            memfs_bytes: Some(u.bytes_used),
                            quota_bytes: None,
                        }
                    }),
                }
            }
            BackendKind::Volumes(list) => {
                let specs = list
                    .iter()
                    .map(|v| spec::parse_volume(v))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| at(format!("volumes: {e}")))?;
                let table = build_table_of(args, &specs, false).map_err(at)?;
                let vfs = Arc::clone(&table.vfs);
                devices::Built {
                    fs: vfs,
                    // The table (its staged file volumes) lives as long as the device.
                    usage: Box::new(move || {
                        let _ = &table;
                        Usage {
                            open_handles: Some(
                                table.vfs.volumes().iter().map(|v| v.open_handles).sum(),
                            ),
                            ..Usage::default()
                        }
                    }),
                }
            }
            BackendKind::Overlay(lower, upper) => {
                let upper = spec::parse_upper(upper).map_err(|e| at(format!("upper: {e}")))?;
                devices::Built {
                    fs: build_overlay(args, lower, &upper, &limits).map_err(at)?,
                    usage: Box::new(Usage::default),
                }
            }
        })
    }

    /// Fleet mode: the devices of --device, --config and the API, until a signal.
    fn run_fleet(args: &Arc<Args>) -> i32 {
        if let Err(e) = init_logging(&args.log_level) {
            eprintln!("boxfsd: error: --log-level: {e}");
            return 1;
        }
        let signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ]);
        let registry = match start_fleet(args) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("boxfsd: error: {e}");
                return 1;
            }
        };
        tracing::info!("fleet: serving {} devices", registry.list().len());
        match signals {
            Ok(mut signals) => {
                if let Some(sig) = signals.forever().next() {
                    tracing::info!("signal {sig}: shutting down");
                }
            }
            Err(e) => {
                eprintln!("boxfsd: error: cannot install signal handlers: {e}");
                registry.stop_all();
                return 1;
            }
        }
        registry.stop_all();
        if let Some(path) = &args.api_socket {
            use std::os::unix::ffi::OsStrExt;
            if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
                // SAFETY: `c` is a valid C string; unlinkat only reads it.
                unsafe { libc::unlinkat(libc::AT_FDCWD, c.as_ptr(), 0) };
            }
        }
        tracing::info!("exiting");
        0
    }

    fn start_fleet(args: &Arc<Args>) -> Result<Arc<devices::Registry>, String> {
        let sandbox = match args.sandbox.as_str() {
            "none" => false,
            "namespace" => true,
            other => return Err(format!("--sandbox {other}: use none or namespace")),
        };
        raise_nofile(args.rlimit_nofile);
        let mut specs = args.device.clone();
        if let Some(file) = &args.config {
            specs.extend(devices::read_config(file)?);
        }
        let a = Arc::clone(args);
        let build: devices::BuildFn = Box::new(move |d| build_device(&a, d));
        let defaults = devices::Defaults {
            request_queues: args.request_queues,
            thread_pool_size: args.thread_pool_size,
            dispatch: args.dispatch,
            poll: std::time::Duration::from_micros(args.poll_us),
        };
        let registry = Arc::new(devices::Registry::new(
            build,
            defaults,
            args.socket_dir.as_deref(),
        )?);
        // The API socket first: once a device socket exists, so does the API's.
        let api_listener = match &args.api_socket {
            Some(path) => Some(api::bind(path)?),
            None => None,
        };
        // Backends and sockets are opened before the sandbox; the devices' threads start
        // after it and the seccomp filter (which binds only the threads started later).
        let mut prepared = Vec::with_capacity(specs.len());
        for d in specs {
            prepared.push(registry.prepare(d).map_err(|devices::Failure(_, e)| e)?);
        }
        if sandbox {
            boxfs::sandbox::enter_namespace().map_err(|e| match e {
                boxfs::Error::Unsupported(why) => format!(
                    "--sandbox namespace (the default): {why}. Run with --sandbox none to \
                     serve unconfined"
                ),
                e => format!("--sandbox namespace: {e}"),
            })?;
            registry.set_sandboxed();
            tracing::info!("sandboxed: private mount namespace with only /proc, no_new_privs");
        }
        boxfs::sandbox::install_seccomp(args.seccomp).map_err(|e| format!("--seccomp: {e}"))?;
        let loops = args
            .fleet_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if loops > 0 {
            let fleet = boxfs::vhost::Fleet::builder()
                .threads(loops)
                .pool_size(args.thread_pool_size)
                .build()
                .map_err(|e| format!("fleet: {e}"))?;
            registry.use_fleet(fleet);
        }
        for p in prepared {
            registry.start(p).map_err(|devices::Failure(_, e)| e)?;
        }
        if let Some(listener) = api_listener {
            api::serve(listener, None, Some(Arc::clone(&registry)))?;
        }
        Ok(registry)
    }

    pub(crate) fn main() -> i32 {
        let args = Arc::new(Args::parse());
        if args.print_capabilities {
            println!(
                "{{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}}"
            );
            return 0;
        }
        if !args.device.is_empty() || args.config.is_some() || args.fleet {
            return run_fleet(&args);
        }
        let table = !args.volume.is_empty() || args.api_socket.is_some();
        let missing = if args.shared_dir.is_none()
            && args.memfs_size.is_none()
            && args.shared_file.is_none()
            && args.lower.is_none()
            && !table
        {
            Some(
                "one of --shared-dir, --shared-file, --memfs-size, --lower/--upper, --volume or \
                 --api-socket is required",
            )
        } else if args.socket_path.is_none() && args.fd.is_none() {
            Some("one of --socket-path or --fd is required")
        } else if args.memfs_max_inodes.is_some()
            && args.memfs_size.is_none()
            && !args
                .upper
                .as_deref()
                .is_some_and(|u| u.starts_with("memfs:"))
        {
            Some("--memfs-max-inodes needs --memfs-size or --upper memfs:SIZE")
        } else if args.memfs_from.is_some() && args.memfs_size.is_none() {
            Some("--memfs-from needs --memfs-size (the capacity of the restored share)")
        } else if args.shared_file.is_none() && args.guest_path.is_some() {
            // (clap's `requires` does not catch this once another backend is given.)
            Some("--guest-path needs --shared-file")
        } else if args.shared_file.is_none()
            && args.runtime_dir.is_some()
            && !args
                .volume
                .iter()
                .any(|v| matches!(v.kind, spec::Kind::File(_)))
            && args.api_socket.is_none()
        {
            Some("--runtime-dir needs --shared-file, a file volume or --api-socket")
        } else {
            None
        };
        if let Some(msg) = missing {
            use clap::CommandFactory;
            Args::command()
                .error(clap::error::ErrorKind::MissingRequiredArgument, msg)
                .exit();
        }
        if let Err(e) = init_logging(&args.log_level) {
            eprintln!("boxfsd: error: --log-level: {e}");
            return 1;
        }
        // Handlers first: a signal that arrives once the socket exists must stop the daemon
        // cleanly, not kill it (and they must exist before the sandbox's seccomp filter).
        let signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
        ]);
        let usr1 = snapshot::signals(args.snapshot_file.is_some());
        let usr2 = counts::signals();
        let (handle, file_share, table) = match start(&args) {
            Ok((h, share, table)) => (Arc::new(h), share, table),
            Err(e) => {
                eprintln!("boxfsd: error: {e}");
                return 1;
            }
        };
        let what = match (&args.shared_dir, args.memfs_size, &file_share) {
            _ if table.is_some() => format!(
                "{} volumes",
                table.as_ref().map_or(0, |t| t.vfs.volumes().len())
            ),
            _ if args.lower.is_some() => format!(
                "overlay of {} over {} ({})",
                args.upper.as_deref().unwrap_or_default(),
                args.lower
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                args.policy
            ),
            (Some(d), _, _) => format!("directory {}", d.display()),
            (None, Some(s), _) => format!("in-memory filesystem of {s} bytes"),
            (None, None, Some(share)) => format!(
                "file {} (tag {})",
                args.shared_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                share.tag
            ),
            _ => String::new(),
        };
        let device_plan = match (&file_share, args.plan) {
            (None, Some(format)) => {
                let volumes = args
                    .volume
                    .iter()
                    .filter(|v| v.path != "/")
                    .map(|v| plan::PlanVolume {
                        path: v.path.clone(),
                        kind: v.kind.name().into(),
                        readonly: v.readonly,
                    })
                    .collect();
                let root_ro =
                    args.readonly || args.volume.iter().any(|v| v.path == "/" && v.readonly);
                let d = plan::Device {
                    tag: args.tag.as_deref(),
                    mount_point: args.mount_point.as_deref().unwrap_or("/"),
                    readonly: root_ro,
                    volumes,
                };
                Some(match format {
                    plan::Format::Json => format!("{}\n", d.json()),
                    plan::Format::Sh => d.sh(),
                })
            }
            _ => None,
        };
        let printed_plan = file_share
            .as_ref()
            .map(|s| &s.plan)
            .or(device_plan.as_ref());
        if let Some(plan) = printed_plan {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let printed = out.write_all(plan.as_bytes()).and_then(|()| out.flush());
            if let Err(e) = printed {
                tracing::warn!("cannot print the tag and guest plan: {e}");
            }
        }
        match handle.socket_path() {
            Some(p) => tracing::info!("serving {what} on {}", p.display()),
            None => tracing::info!("serving {what} on inherited fd"),
        }

        snapshot::serve_signals(usr1);
        counts::serve_signals(usr2);
        match signals {
            Ok(mut signals) => {
                let h = Arc::clone(&handle);
                let socket = args.socket_path.clone();
                let spawned = std::thread::Builder::new()
                    .name("boxfsd-signals".into())
                    .spawn(move || {
                        if let Some(sig) = signals.forever().next() {
                            tracing::info!("signal {sig}: shutting down");
                            h.request_stop();
                            // The device normally ends at once. If it cannot (it found no
                            // connection to shut down, or a request is stuck in the host
                            // filesystem), exit anyway rather than ignore the signal.
                            std::thread::sleep(std::time::Duration::from_secs(10));
                            tracing::warn!("device did not stop within 10 s; exiting");
                            if let Some(path) = socket {
                                let _ = std::fs::remove_file(path);
                            }
                            std::process::exit(0);
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("cannot start the signal thread: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot install signal handlers: {e}"),
        }

        let res = handle.wait();
        // Which virtqueues the guest used (q0 is the hiprio queue): with several request
        // queues and vCPUs, a guest spreads its requests over them.
        let per_queue: Vec<String> = handle
            .queue_requests()
            .iter()
            .enumerate()
            .map(|(i, n)| format!("q{i}={n}"))
            .collect();
        tracing::info!(
            "requests served per queue: {} (total {})",
            per_queue.join(" "),
            handle.stats().requests
        );
        // Removes the file share's (and file volumes') staging directories.
        drop(file_share);
        drop(table);
        if let Some(path) = &args.api_socket {
            // Unreachable (and left for the next start to replace) once sandboxed. unlinkat,
            // not unlink: the seccomp allow-list has only the former.
            use std::os::unix::ffi::OsStrExt;
            if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
                // SAFETY: `c` is a valid C string; unlinkat only reads it.
                unsafe { libc::unlinkat(libc::AT_FDCWD, c.as_ptr(), 0) };
            }
        }
        match res {
            Ok(()) => {
                tracing::info!("exiting");
                0
            }
            Err(e) => {
                eprintln!("boxfsd: error: {e}");
                1
            }
        }
    }
}
