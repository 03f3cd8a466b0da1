//! Fleet mode: one boxfsd serving many virtio-fs devices, each with its own vhost-user socket,
//! backend, tag, limits and counters.
//!
//! Devices come from `--device id=..,socket=..,shared-dir=..|memfs-size=..|lower=..,upper=..`
//! (repeatable), `--config FILE` (JSON or TOML, `{"devices": [...]}` / `[[devices]]`), and
//! the API (`PUT /devices`, `GET /devices[/{id}]`, `DELETE /devices/{id}`; see `api`).

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use boxfs::vhost::{
    BoundSocket, DeviceHandle, DeviceStats, Dispatch, Fleet, FleetDeviceHandle, FleetDeviceOptions,
    FsDevice, RequestMetrics,
};
use boxfs::DynFileSystem;
use serde::{Deserialize, Serialize};

/// Largest device id, in bytes.
const MAX_ID: usize = 64;

/// A device's own limits (in place of the command line's `--quota`, `--max-inodes`,
/// `--max-handles`, `--memfs-max-inodes`, `--fd-cache-size`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceLimits {
    /// Bytes of regular files and symlink targets (`"10G"`; host directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    /// Most inodes (held by the guest for a host directory; in the filesystem for MemFs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inodes: Option<u64>,
    /// Most files and directories open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_handles: Option<u64>,
    /// Most inode descriptors a host directory keeps cached (default 1024 per device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd_cache_size: Option<u64>,
}

/// One device's configuration: a `--device`, an entry of `--config`, a `PUT /devices` body.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceSpec {
    /// Unique name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub id: String,
    /// vhost-user socket path the device's VMM connects to.
    pub socket: PathBuf,
    /// Backend: a host directory (PassthroughFs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_dir: Option<PathBuf>,
    /// Backend: an in-memory filesystem of this capacity (`"512M"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memfs_size: Option<String>,
    /// Backend: an overlay's read-only lower host directory (with `upper`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<PathBuf>,
    /// Backend: a table of volumes, each `GUEST_PATH=KIND:SPEC[,OPTION...]` as `--volume`
    /// takes them (`["/=memfs:64M", "/work=dir:/srv/w"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<String>>,
    /// The overlay's writable upper: a host directory or `memfs:SIZE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<String>,
    /// Tag in the config space (default: the VMM's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Serve the host directory read-only.
    #[serde(default)]
    pub readonly: bool,
    /// The device's own limits.
    #[serde(default)]
    pub limits: DeviceLimits,
    /// Most requests per second (a token bucket; fleet event loops only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_per_sec: Option<u64>,
    /// Most data bytes read and written per second (`"10M"`; fleet event loops only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<String>,
}

/// What kind of backend a spec asks for.
pub(crate) enum BackendKind<'a> {
    /// A host directory.
    Dir(&'a Path),
    /// A MemFs of this many bytes.
    Memfs(u64),
    /// An overlay (lower, upper spec).
    Overlay(&'a Path, &'a str),
    /// A table of volumes (`--volume` specs).
    Volumes(&'a [String]),
}

impl DeviceSpec {
    /// Checks the fields that do not need the host: the id, the tag, exactly one backend.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_ID
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !id_ok {
            return Err(format!(
                "device id `{}`: 1 to {MAX_ID} of A-Z a-z 0-9 . _ -",
                self.id
            ));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(format!("device {}: `socket` is required", self.id));
        }
        if let Some(tag) = &self.tag {
            if tag.is_empty() || tag.len() > boxfs::vhost::MAX_TAG_LEN || tag.contains('\0') {
                return Err(format!(
                    "device {}: tag must be 1 to {} bytes without NUL",
                    self.id,
                    boxfs::vhost::MAX_TAG_LEN
                ));
            }
        }
        self.bytes_rate()?;
        if self.lower.is_some() != self.upper.is_some() {
            return Err(format!(
                "device {}: an overlay needs both `lower` and `upper`",
                self.id
            ));
        }
        self.backend().map(|_| ())
    }

    /// The backend the spec names (exactly one of them).
    pub(crate) fn backend(&self) -> Result<BackendKind<'_>, String> {
        let n = usize::from(self.shared_dir.is_some())
            + usize::from(self.memfs_size.is_some())
            + usize::from(self.lower.is_some())
            + usize::from(self.volumes.is_some());
        if n != 1 {
            return Err(format!(
                "device {}: give exactly one backend: `shared_dir`, `memfs_size`, \
                 `lower`+`upper` or `volumes`",
                self.id
            ));
        }
        if let Some(v) = &self.volumes {
            return Ok(BackendKind::Volumes(v));
        }
        if let Some(d) = &self.shared_dir {
            return Ok(BackendKind::Dir(d));
        }
        if let Some(s) = &self.memfs_size {
            let size: boxfs::Size = s
                .parse()
                .map_err(|e| format!("device {}: memfs_size `{s}`: {e}", self.id))?;
            return Ok(BackendKind::Memfs(size.bytes()));
        }
        match (&self.lower, &self.upper) {
            (Some(l), Some(u)) => Ok(BackendKind::Overlay(l, u)),
            _ => Err(format!("device {}: no backend", self.id)),
        }
    }

    /// The byte rate limit, parsed.
    pub(crate) fn bytes_rate(&self) -> Result<Option<u64>, String> {
        self.bytes_per_sec
            .as_deref()
            .map(|b| {
                b.parse::<boxfs::Size>()
                    .map(boxfs::Size::bytes)
                    .map_err(|e| format!("device {}: bytes_per_sec `{b}`: {e}", self.id))
            })
            .transpose()
    }

    /// Whether building the backend opens host paths (impossible once sandboxed).
    fn needs_host(&self) -> bool {
        self.shared_dir.is_some()
            || self.lower.is_some()
            || self
                .upper
                .as_deref()
                .is_some_and(|u| !u.starts_with("memfs:"))
            || self.volumes.iter().flatten().any(|v| {
                // Only memfs volumes are made without opening a host path.
                v.split_once('=')
                    .is_none_or(|(_, spec)| !spec.starts_with("memfs:"))
            })
    }
}

/// Parses a `--device id=..,socket=..,shared-dir=..` (keys with `-` or `_`; `readonly` or
/// `ro` alone; limits as `quota=`, `max-inodes=`, `max-handles=`, `fd-cache-size=`).
pub(crate) fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    let mut spec = DeviceSpec {
        id: String::new(),
        socket: PathBuf::new(),
        shared_dir: None,
        memfs_size: None,
        lower: None,
        upper: None,
        volumes: None,
        tag: None,
        readonly: false,
        limits: DeviceLimits::default(),
        ops_per_sec: None,
        bytes_per_sec: None,
    };
    for field in s.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        let k = k.replace('-', "_");
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("--device: {k}=`{v}`: not a number"))
        };
        match k.as_str() {
            "id" => spec.id = v.into(),
            "socket" | "socket_path" => spec.socket = v.into(),
            "shared_dir" => spec.shared_dir = Some(v.into()),
            "memfs_size" => spec.memfs_size = Some(v.into()),
            "lower" => spec.lower = Some(v.into()),
            "upper" => spec.upper = Some(v.into()),
            "tag" => spec.tag = Some(v.into()),
            "readonly" | "ro" if v.is_empty() || v == "true" => spec.readonly = true,
            "quota" => spec.limits.quota = Some(v.into()),
            "max_inodes" => spec.limits.max_inodes = Some(num(v)?),
            "max_handles" => spec.limits.max_handles = Some(num(v)?),
            "fd_cache_size" => spec.limits.fd_cache_size = Some(num(v)?),
            "ops_per_sec" => spec.ops_per_sec = Some(num(v)?.max(1)),
            "bytes_per_sec" => spec.bytes_per_sec = Some(v.into()),
            _ => return Err(format!("--device: unknown field `{field}`")),
        }
    }
    spec.validate()?;
    Ok(spec)
}

/// The file of `--config`: `{"devices": [...]}` in JSON, or `[[devices]]` tables in TOML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    devices: Vec<DeviceSpec>,
}

/// Reads the devices of a `--config` file (TOML if it ends in `.toml`, JSON otherwise).
pub(crate) fn read_config(path: &Path) -> Result<Vec<DeviceSpec>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let file: ConfigFile = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?
    } else {
        serde_json::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?
    };
    for d in &file.devices {
        d.validate()?;
    }
    Ok(file.devices)
}

/// A backend's usage now, for the metrics and `GET /devices`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Usage {
    /// Inodes the guest holds (host directory) or the filesystem has (MemFs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    /// Files and directories open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_handles: Option<u64>,
    /// Bytes a MemFs holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memfs_bytes: Option<u64>,
    /// Bytes charged against the quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

/// Reads a backend's usage.
pub(crate) type UsageFn = Box<dyn Fn() -> Usage + Send + Sync>;

/// A built backend and how to read its usage.
pub(crate) struct Built {
    pub fs: Arc<dyn DynFileSystem>,
    pub usage: UsageFn,
}

/// Builds a device's backend (the daemon's command-line options applied).
pub(crate) type BuildFn = Box<dyn Fn(&DeviceSpec) -> Result<Built, String> + Send + Sync>;

/// Device options that come from the command line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    pub request_queues: usize,
    pub thread_pool_size: usize,
    pub dispatch: Dispatch,
    pub poll: std::time::Duration,
}

/// How a device is served: its own threads, or the fleet's event loops.
pub(crate) enum Handle {
    /// `FsDevice::serve`: an accept thread and vring threads of its own.
    Own(DeviceHandle),
    /// One device of the fleet.
    Fleet(FleetDeviceHandle),
}

impl Handle {
    pub(crate) fn stats(&self) -> DeviceStats {
        match self {
            Handle::Own(h) => h.stats(),
            Handle::Fleet(h) => h.stats(),
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        match self {
            Handle::Own(h) => h.is_finished(),
            Handle::Fleet(h) => h.is_finished(),
        }
    }

    fn request_stop(&self) {
        match self {
            Handle::Own(h) => h.request_stop(),
            Handle::Fleet(h) => h.stop(),
        }
    }

    fn stop(&self) -> Result<(), String> {
        match self {
            Handle::Own(h) => h.stop().map_err(|e| e.to_string()),
            Handle::Fleet(h) => {
                h.stop();
                Ok(())
            }
        }
    }
}

/// One running device.
pub(crate) struct Device {
    pub spec: DeviceSpec,
    pub handle: Handle,
    pub metrics: Arc<RequestMetrics>,
    pub usage: UsageFn,
}

/// A device whose backend and socket are ready, not yet served.
pub(crate) struct Prepared {
    spec: DeviceSpec,
    built: Built,
    socket: BoundSocket,
}

/// The devices of the process.
pub(crate) struct Registry {
    devices: Mutex<BTreeMap<String, Arc<Device>>>,
    build: BuildFn,
    defaults: Defaults,
    /// The daemon confined itself: host paths cannot be opened any more.
    sandboxed: AtomicBool,
    /// `--socket-dir`, held open so sockets can be bound in it once sandboxed.
    socket_dir: Option<(PathBuf, OwnedFd)>,
    /// The event loops serving the devices (unless each has threads of its own).
    fleet: std::sync::OnceLock<Fleet>,
}

/// An API or start-up error: an HTTP status and a message.
#[derive(Debug)]
pub(crate) struct Failure(pub u16, pub String);

impl Registry {
    /// An empty registry; `socket_dir` is `--socket-dir`.
    pub(crate) fn new(
        build: BuildFn,
        defaults: Defaults,
        socket_dir: Option<&Path>,
    ) -> Result<Registry, String> {
        let socket_dir = match socket_dir {
            Some(d) => {
                use std::os::unix::fs::OpenOptionsExt;
                let fd = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
                    .open(d)
                    .map_err(|e| format!("--socket-dir {}: {e}", d.display()))?;
                Some((d.to_owned(), OwnedFd::from(fd)))
            }
            None => None,
        };
        Ok(Registry {
            devices: Mutex::new(BTreeMap::new()),
            build,
            defaults,
            sandboxed: AtomicBool::new(false),
            socket_dir,
            fleet: std::sync::OnceLock::new(),
        })
    }

    /// Serves the devices started from now on with `fleet`'s event loops.
    pub(crate) fn use_fleet(&self, fleet: Fleet) {
        let _ = self.fleet.set(fleet);
    }

    /// From now on host paths cannot be opened (the daemon entered its sandbox).
    pub(crate) fn set_sandboxed(&self) {
        self.sandboxed.store(true, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Device>>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The path to bind a device's socket at: its own, or (sandboxed) its name in the
    /// `--socket-dir` reached through the directory descriptor.
    fn bind_path(&self, spec: &DeviceSpec) -> Result<PathBuf, Failure> {
        if !self.sandboxed.load(Ordering::Acquire) {
            return Ok(spec.socket.clone());
        }
        let Some((dir, fd)) = &self.socket_dir else {
            return Err(Failure(
                403,
                "the sandboxed daemon cannot reach host paths: give boxfsd --socket-dir DIR \
                 and put the sockets of API-added devices in it (or run with --sandbox none)"
                    .into(),
            ));
        };
        match (spec.socket.parent(), spec.socket.file_name()) {
            (Some(parent), Some(name)) if parent == dir => {
                Ok(Path::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name))
            }
            _ => Err(Failure(
                403,
                format!(
                    "the sandboxed daemon creates device sockets only in --socket-dir {}",
                    dir.display()
                ),
            )),
        }
    }

    /// Creates and starts a device.
    pub(crate) fn add(&self, spec: DeviceSpec) -> Result<Arc<Device>, Failure> {
        let p = self.prepare(spec)?;
        self.start(p)
    }

    /// Checks a device and opens what it needs on the host (its backend, its socket), starting
    /// no thread: this part runs before the daemon sandboxes itself.
    pub(crate) fn prepare(&self, spec: DeviceSpec) -> Result<Prepared, Failure> {
        spec.validate().map_err(|e| Failure(400, e))?;
        self.check_free(&self.lock(), &spec)?;
        if spec.needs_host() && self.sandboxed.load(Ordering::Acquire) {
            return Err(Failure(
                403,
                format!(
                    "device {}: the sandboxed daemon cannot open host directories; devices \
                     on host directories are given at start (--device, --config) or need \
                     boxfsd --sandbox none (memfs devices work in the sandbox)",
                    spec.id
                ),
            ));
        }
        let bind_at = self.bind_path(&spec)?;
        let built = (self.build)(&spec).map_err(|e| Failure(422, e))?;
        let socket = BoundSocket::bind(&bind_at)
            .map_err(|e| Failure(422, format!("socket {}: {e}", spec.socket.display())))?;
        Ok(Prepared {
            spec,
            built,
            socket,
        })
    }

    fn check_free(
        &self,
        devices: &BTreeMap<String, Arc<Device>>,
        spec: &DeviceSpec,
    ) -> Result<(), Failure> {
        if devices.contains_key(&spec.id) {
            return Err(Failure(409, format!("device {} exists", spec.id)));
        }
        if let Some(other) = devices.values().find(|d| d.spec.socket == spec.socket) {
            return Err(Failure(
                409,
                format!(
                    "socket {} is device {}'s",
                    spec.socket.display(),
                    other.spec.id
                ),
            ));
        }
        Ok(())
    }

    /// Starts serving a prepared device.
    pub(crate) fn start(&self, p: Prepared) -> Result<Arc<Device>, Failure> {
        let Prepared {
            spec,
            built,
            socket,
        } = p;
        let mut devices = self.lock();
        self.check_free(&devices, &spec)?;
        let metrics = Arc::new(RequestMetrics::new());
        let d = self.defaults;
        let fleet = self.fleet.get();
        let mut builder = FsDevice::builder(built.fs)
            .request_queues(d.request_queues)
            .thread_pool_size(if fleet.is_some() {
                0
            } else {
                d.thread_pool_size
            })
            .dispatch(d.dispatch)
            .poll(d.poll)
            .keep_serving(true)
            .metrics(Arc::clone(&metrics));
        if let Some(tag) = &spec.tag {
            builder = builder.tag(tag.clone());
        }
        let device = builder
            .build()
            .map_err(|e| Failure(422, format!("device {}: {e}", spec.id)))?;
        let handle = match fleet {
            Some(fleet) => {
                let mut o = FleetDeviceOptions::new();
                if let Some(n) = spec.ops_per_sec {
                    o = o.ops_per_sec(n);
                }
                if let Ok(Some(n)) = spec.bytes_rate() {
                    o = o.bytes_per_sec(n);
                }
                fleet.add(device, socket, o).map(Handle::Fleet)
            }
            None => device.serve_bound(socket).map(Handle::Own),
        }
        .map_err(|e| Failure(500, format!("device {}: {e}", spec.id)))?;
        tracing::info!("device {} serving on {}", spec.id, spec.socket.display());
        let dev = Arc::new(Device {
            spec,
            handle,
            metrics,
            usage: built.usage,
        });
        devices.insert(dev.spec.id.clone(), Arc::clone(&dev));
        Ok(dev)
    }

    /// Stops and removes a device: its VMM is disconnected, its backend released, its socket
    /// file removed.
    pub(crate) fn remove(&self, id: &str) -> Result<(), Failure> {
        let dev = self
            .lock()
            .remove(id)
            .ok_or_else(|| Failure(404, format!("no device {id}")))?;
        if let Err(e) = dev.handle.stop() {
            tracing::warn!("device {id} ended with an error: {e}");
        }
        tracing::info!("device {id} removed");
        drop(dev);
        trim_heap();
        Ok(())
    }

    /// Stops every device (the daemon exits).
    pub(crate) fn stop_all(&self) {
        let all: Vec<Arc<Device>> = std::mem::take(&mut *self.lock()).into_values().collect();
        for d in &all {
            d.handle.request_stop();
        }
        for d in all {
            let _ = d.handle.stop();
        }
    }

    /// The devices, by id.
    pub(crate) fn list(&self) -> Vec<Arc<Device>> {
        self.lock().values().cloned().collect()
    }

    /// One device.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<Device>> {
        self.lock().get(id).cloned()
    }
}

/// Hands the heap memory freed by a removed device back to the system (glibc keeps it
/// otherwise, and a fleet that added and removed many devices would keep its peak RSS).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A device as `GET /devices` shows it: the configuration, state and counters.
#[derive(Serialize)]
struct View<'a> {
    #[serde(flatten)]
    spec: &'a DeviceSpec,
    running: bool,
    requests: u64,
    error_replies: u64,
    dropped: u64,
    connections: u64,
    bytes_read: u64,
    bytes_written: u64,
    usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_granted: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_granted: Option<u64>,
}

fn view(d: &Device) -> serde_json::Value {
    let s = d.handle.stats();
    let v = View {
        spec: &d.spec,
        running: !d.handle.is_finished(),
        requests: s.requests,
        error_replies: s.error_replies,
        dropped: s.dropped,
        connections: s.connections,
        bytes_read: d.metrics.bytes_read(),
        bytes_written: d.metrics.bytes_written(),
        usage: (d.usage)(),
        tokens_granted: match &d.handle {
            Handle::Fleet(h) => h.tokens_granted(),
            Handle::Own(_) => None,
        },
        bytes_granted: match &d.handle {
            Handle::Fleet(h) => h.bytes_granted(),
            Handle::Own(_) => None,
        },
    };
    serde_json::to_value(v).unwrap_or_default()
}

impl Registry {
    /// Serves `/devices` and `/devices/{id}`: `(status, JSON body)`.
    pub(crate) fn route(
        &self,
        method: &tiny_http::Method,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, String), Failure> {
        use tiny_http::Method;
        let id = path
            .strip_prefix("/devices")
            .map(|rest| rest.trim_start_matches('/'))
            .unwrap_or_default();
        match (method, id) {
            (Method::Get, "") => {
                let all: Vec<serde_json::Value> = self.list().iter().map(|d| view(d)).collect();
                Ok((200, serde_json::Value::Array(all).to_string()))
            }
            (Method::Put, "") | (Method::Post, "") => {
                let spec: DeviceSpec =
                    serde_json::from_slice(body).map_err(|e| Failure(400, format!("body: {e}")))?;
                let d = self.add(spec)?;
                Ok((201, view(&d).to_string()))
            }
            (_, "") => Err(Failure(405, "use GET or PUT".into())),
            (Method::Get, id) => self
                .get(id)
                .map(|d| (200, view(&d).to_string()))
                .ok_or_else(|| Failure(404, format!("no device {id}"))),
            (Method::Delete, id) => self.remove(id).map(|()| (204, String::new())),
            _ => Err(Failure(405, "use GET or DELETE".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse() {
        let d = parse_device(
            "id=vm-1,socket=/run/a.sock,shared-dir=/srv/a,tag=root,readonly,quota=1G,\
             max-inodes=10,max_handles=5,fd-cache-size=64,ops-per-sec=100,bytes-per-sec=10M",
        )
        .expect("valid");
        assert_eq!(d.id, "vm-1");
        assert_eq!(d.socket, PathBuf::from("/run/a.sock"));
        assert_eq!(d.shared_dir, Some(PathBuf::from("/srv/a")));
        assert!(d.readonly);
        assert_eq!(d.limits.quota.as_deref(), Some("1G"));
        assert_eq!(
            (
                d.limits.max_inodes,
                d.limits.max_handles,
                d.limits.fd_cache_size
            ),
            (Some(10), Some(5), Some(64))
        );
        assert_eq!(d.ops_per_sec, Some(100));
        assert_eq!(d.bytes_rate(), Ok(Some(10 << 20)));
        assert!(matches!(d.backend(), Ok(BackendKind::Dir(_))));
        let m = parse_device("id=m,socket=s,memfs-size=2M").expect("memfs");
        assert!(matches!(m.backend(), Ok(BackendKind::Memfs(n)) if n == 2 << 20));
        for bad in [
            "id=a,socket=s",                                                         // no backend
            "id=a,socket=s,memfs-size=1M,shared-dir=/x",                             // two backends
            "id=a b,socket=s,memfs-size=1M",                                         // bad id
            "id=,socket=s,memfs-size=1M",                                            // empty id
            "id=a,memfs-size=1M",                                                    // no socket
            "id=a,socket=s,memfs-size=lots",                                         // bad size
            "id=a,socket=s,lower=/l", // overlay without upper
            "id=a,socket=s,memfs-size=1M,colour=blue", // unknown field
            "id=a,socket=s,memfs-size=1M,max-inodes=x", // not a number
            "id=a,socket=s,memfs-size=1M,bytes-per-sec=fast", // not a size
            "id=a,socket=s,memfs-size=1M,tag=0123456789012345678901234567890123456", // tag > 36
        ] {
            assert!(parse_device(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sandboxed_specs_that_need_host_paths() {
        let spec = |json: &str| -> DeviceSpec { serde_json::from_str(json).expect("json") };
        assert!(!spec(r#"{"id":"a","socket":"s","memfs_size":"1M"}"#).needs_host());
        assert!(spec(r#"{"id":"a","socket":"s","shared_dir":"/x"}"#).needs_host());
        assert!(!spec(r#"{"id":"a","socket":"s","volumes":["/t=memfs:1M"]}"#).needs_host());
        assert!(
            spec(r#"{"id":"a","socket":"s","volumes":["/t=memfs:1M","/w=dir:/x"]}"#).needs_host()
        );
        // An overlay's lower layer is always a host directory.
        assert!(spec(r#"{"id":"a","socket":"s","lower":"/l","upper":"memfs:1M"}"#).needs_host());
    }
}
