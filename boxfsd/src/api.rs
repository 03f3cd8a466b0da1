//! `--api-socket`: the runtime's control channel, HTTP/1.1 with JSON bodies over a Unix socket
//! (the convention of cloud-hypervisor's and Firecracker's APIs; `curl --unix-socket` drives
//! it). Never expose it to the guest.
//!
//! * `GET /volumes`: the table, `[{"path","kind","source","readonly","open_handles","reachable"}]`.
//! * `PUT /volumes`: attach, body `{"path":"/data","kind":"dir","source":"/srv/data","readonly":true}`
//!   (see [`AttachBody`]); `201 Created`.
//! * `DELETE /volumes?path=/data[&force=true]`: detach; `204 No Content`, `409 Conflict` while
//!   the guest has files open in the volume (unless forced).
//!
//! * Fleet mode (`devices`): `PUT /devices` (a [`DeviceSpec`](crate::devices::DeviceSpec) body;
//!   `201 Created`), `GET /devices`, `GET /devices/{id}` (configuration, state, counters),
//!   `DELETE /devices/{id}` (`204`); `GET /metrics` (Prometheus text, see `metrics`).
//!
//! Errors are an HTTP status with `{"error": "..."}`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use boxfs::filemount::FileMount;
use boxfs::volumes::{DetachMode, VirtualFile, VolumeError, VolumeFs, VolumeOptions};
use boxfs::DynFileSystem;
use serde::{Deserialize, Serialize};
use tiny_http::{Header, Method, Response, Server};

use crate::devices::{Failure, Registry};
use crate::metrics;
use crate::spec::{self, Kind, VolumeSpec};

/// Largest request body accepted (a `virtual` volume's `content` included).
const MAX_BODY: u64 = 16 << 20;

/// A built backend: the filesystem, the root name of a file volume, the staged file mount.
pub(crate) type Built = (
    Arc<dyn DynFileSystem>,
    Option<std::ffi::CString>,
    Option<FileMount>,
);

/// Builds a volume's backend from a spec (the daemon's command-line options applied).
pub(crate) type Builder = Box<dyn Fn(&VolumeSpec) -> Result<Built, String> + Send + Sync>;

/// Creates the missing parent directories of a mount point in the root backend (where the
/// daemon may: not in a host directory root).
pub(crate) type Parents = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// A `PUT /volumes` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttachBody {
    /// Absolute guest path.
    path: String,
    /// `dir`, `memfs`, `overlay`, `file` or `virtual`.
    kind: String,
    /// Host path: the directory (`dir`), the file (`file`, `virtual`).
    #[serde(default)]
    source: Option<PathBuf>,
    /// Capacity of a `memfs` volume (`"256M"`).
    #[serde(default)]
    size: Option<String>,
    /// `overlay`: read-only lower host directory.
    #[serde(default)]
    lower: Option<PathBuf>,
    /// `overlay`: upper, a host directory or `memfs:SIZE`.
    #[serde(default)]
    upper: Option<String>,
    /// `virtual`: the file's bytes as text (instead of `source`).
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    readonly: bool,
    /// Octal permission bits as a string (`"0755"`).
    #[serde(default)]
    mode: Option<String>,
    /// `"UID:GID"`.
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    hide: Vec<String>,
    /// The volume's own quota (`"10G"`; `dir` volumes and directory uppers).
    #[serde(default)]
    quota: Option<String>,
    /// Most inodes (`dir`: held by the guest; `memfs`: in the volume).
    #[serde(default)]
    max_inodes: Option<u64>,
    /// Most files and directories open at once.
    #[serde(default)]
    max_handles: Option<u64>,
    /// Most inode descriptors kept cached (`dir` volumes and directory uppers).
    #[serde(default)]
    fd_cache_size: Option<u64>,
}

/// One row of `GET /volumes`.
#[derive(Debug, Serialize)]
struct Row {
    path: String,
    kind: String,
    source: Option<String>,
    readonly: bool,
    open_handles: u64,
    reachable: bool,
}

/// What the table remembers of each volume besides the VolumeFs.
struct Entry {
    kind: String,
    source: Option<String>,
    _file: Option<FileMount>,
}

/// The API's state.
pub(crate) struct Api {
    vfs: Arc<VolumeFs>,
    build: Builder,
    parents: Parents,
    /// The daemon is sandboxed: host paths cannot be opened any more.
    sandboxed: bool,
    entries: Mutex<BTreeMap<String, Entry>>,
}

struct Error(u16, String);

impl From<VolumeError> for Error {
    fn from(e: VolumeError) -> Error {
        let status = match &e {
            VolumeError::InvalidPath(_) | VolumeError::InvalidOption(_) => 400,
            VolumeError::NotFound(_) => 404,
            VolumeError::Exists(_) | VolumeError::Busy { .. } | VolumeError::HasChildren { .. } => {
                409
            }
            VolumeError::TableFull => 507,
            _ => 422,
        };
        Error(status, e.to_string())
    }
}

fn source_of(kind: &Kind) -> Option<String> {
    match kind {
        Kind::Dir(p) | Kind::File(p) | Kind::Virtual(p) => Some(p.display().to_string()),
        Kind::Memfs(s) => Some(s.to_string()),
        Kind::Overlay { lower, upper } => Some(format!(
            "lower={},upper={}",
            lower.display(),
            match upper {
                spec::Upper::Dir(d) => d.display().to_string(),
                spec::Upper::Memfs(s) => format!("memfs:{s}"),
            }
        )),
    }
}

impl Api {
    /// The API over `vfs`, knowing the volumes attached from the command line.
    pub(crate) fn new(
        vfs: Arc<VolumeFs>,
        build: Builder,
        parents: Parents,
        sandboxed: bool,
        initial: &[VolumeSpec],
        files: Vec<FileMount>,
    ) -> Api {
        let mut files: BTreeMap<String, FileMount> = files
            .into_iter()
            .map(|f| (f.guest_mount().destination.clone(), f))
            .collect();
        let entries = initial
            .iter()
            .filter(|v| v.path != "/")
            .map(|v| {
                (
                    v.path.clone(),
                    Entry {
                        kind: v.kind.name().into(),
                        source: source_of(&v.kind),
                        _file: files.remove(&v.path),
                    },
                )
            })
            .collect();
        Api {
            vfs,
            build,
            parents,
            sandboxed,
            entries: Mutex::new(entries),
        }
    }

    /// Serves requests on `listener` on a thread of its own, until the process ends.
    pub(crate) fn serve(self, listener: UnixListener) -> Result<(), String> {
        serve(listener, Some(self), None)
    }

    /// Serves `/volumes`.
    fn route(&self, method: &Method, path: &str, query: &str, body: &[u8]) -> Reply {
        match (method, path) {
            (Method::Get, "/volumes") => Ok((200, self.rows(None))),
            (Method::Put, "/volumes") => {
                self.attach(body).map(|path| (201, self.rows(Some(&path))))
            }
            (Method::Delete, "/volumes") => self.detach(query).map(|()| (204, String::new())),
            _ => Err(Error(405, "use GET, PUT or DELETE".into())),
        }
    }

    /// The table as JSON, or the row of one volume.
    fn rows(&self, only: Option<&str>) -> String {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let rows: Vec<Row> = self
            .vfs
            .volumes()
            .into_iter()
            .filter(|v| only.is_none_or(|p| p == v.path))
            .map(|v| {
                let e = entries.get(&v.path);
                Row {
                    kind: e.map_or_else(|| "unknown".into(), |e| e.kind.clone()),
                    source: e.and_then(|e| e.source.clone()),
                    path: v.path,
                    readonly: v.readonly,
                    open_handles: v.open_handles,
                    reachable: v.reachable,
                }
            })
            .collect();
        let json = match only {
            Some(_) => rows.first().map(serde_json::to_string),
            None => Some(serde_json::to_string(&rows)),
        };
        json.and_then(Result::ok).unwrap_or_else(|| "{}".into())
    }

    /// Attaches the volume a body describes; returns its path.
    fn attach(&self, body: &[u8]) -> Result<String, Error> {
        let b: AttachBody =
            serde_json::from_slice(body).map_err(|e| Error(400, format!("body: {e}")))?;
        let path = spec::guest_path(&b.path).map_err(|e| Error(400, e))?;
        if path == "/" {
            return Err(Error(
                400,
                "the root `/` cannot be attached at runtime".into(),
            ));
        }
        let need = |v: Option<PathBuf>, what: &str| {
            v.ok_or_else(|| Error(400, format!("kind {}: `{what}` is required", b.kind)))
        };
        let mut virtual_bytes = None;
        let kind = match b.kind.as_str() {
            "dir" => Kind::Dir(need(b.source.clone(), "source")?),
            "file" => Kind::File(need(b.source.clone(), "source")?),
            "memfs" => {
                let s = b.size.as_deref().ok_or_else(|| {
                    Error(400, "kind memfs: `size` is required (\"256M\")".into())
                })?;
                Kind::Memfs(
                    s.parse()
                        .map_err(|e| Error(400, format!("size `{s}`: {e}")))?,
                )
            }
            "overlay" => Kind::Overlay {
                lower: need(b.lower.clone(), "lower")?,
                upper: spec::parse_upper(b.upper.as_deref().unwrap_or_default())
                    .map_err(|e| Error(400, format!("kind overlay: {e}")))?,
            },
            "virtual" => match (&b.content, &b.source) {
                (Some(c), None) => {
                    virtual_bytes = Some(c.clone().into_bytes());
                    Kind::Virtual(PathBuf::new())
                }
                (None, Some(s)) => Kind::Virtual(s.clone()),
                _ => {
                    return Err(Error(
                        400,
                        "kind virtual: give one of `content` or `source`".into(),
                    ))
                }
            },
            other => {
                return Err(Error(
                    400,
                    format!("unknown kind `{other}`: dir, memfs, overlay, file or virtual"),
                ))
            }
        };
        let host = match &kind {
            Kind::Dir(_) | Kind::File(_) => true,
            Kind::Overlay { .. } => true,
            Kind::Virtual(_) => virtual_bytes.is_none(),
            Kind::Memfs(_) => false,
        };
        if host && self.sandboxed {
            return Err(Error(
                403,
                format!(
                    "kind {}: the sandboxed daemon cannot open host paths; attaching host \
                     directories or files at runtime needs boxfsd --sandbox none (memfs and \
                     virtual volumes with `content` work in the sandbox)",
                    b.kind
                ),
            ));
        }
        let spec = VolumeSpec {
            path: path.clone(),
            kind,
            readonly: b.readonly,
            mode: b
                .mode
                .as_deref()
                .map(spec::parse_mode)
                .transpose()
                .map_err(|e| Error(400, e))?,
            owner: b
                .owner
                .as_deref()
                .map(spec::parse_owner)
                .transpose()
                .map_err(|e| Error(400, e))?,
            hide: b.hide,
            limits: spec::Limits {
                quota: b
                    .quota
                    .as_deref()
                    .map(|q| q.parse())
                    .transpose()
                    .map_err(|e| Error(400, format!("quota: {e}")))?,
                max_inodes: b.max_inodes.filter(|n| *n > 0),
                max_handles: b.max_handles.filter(|n| *n > 0),
                fd_cache_size: b.fd_cache_size.filter(|n| *n > 0),
            },
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.contains_key(&path) {
            return Err(Error(
                409,
                format!("a volume is already attached at {path}"),
            ));
        }
        (self.parents)(&path).map_err(|e| Error(422, e))?;
        let (fs, root_name, file) = match virtual_bytes {
            Some(bytes) => {
                let mut f = VirtualFile::from_bytes(bytes);
                if let Some(m) = spec.mode {
                    f = f.mode(m);
                }
                if let Some((u, g)) = spec.owner {
                    f = f.owner(u, g);
                }
                (Arc::new(f) as Arc<dyn DynFileSystem>, None, None)
            }
            None => (self.build)(&spec).map_err(|e| Error(422, e))?,
        };
        let mut opts = VolumeOptions::new().readonly(spec.readonly);
        if let Some(m) = spec.mode {
            opts = opts.mode(m);
        }
        if let Some((u, g)) = spec.owner {
            opts = opts.owner(u, g);
        }
        for h in &spec.hide {
            opts = opts.hide(h.clone());
        }
        if let Some(n) = &root_name {
            opts = opts.root_name(n);
        }
        self.vfs.attach(&path, fs, opts)?;
        tracing::info!("api: attached {} volume at {path}", b.kind);
        entries.insert(
            path.clone(),
            Entry {
                kind: b.kind,
                source: if virtual_bytes_is_inline(&spec.kind) {
                    None
                } else {
                    source_of(&spec.kind)
                },
                _file: file,
            },
        );
        Ok(path)
    }

    fn detach(&self, query: &str) -> Result<(), Error> {
        let mut path = None;
        let mut force = false;
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = percent_decode(v).ok_or_else(|| Error(400, format!("bad query `{kv}`")))?;
            match k {
                "path" => path = Some(v),
                "force" => {
                    force = match v.as_str() {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => return Err(Error(400, format!("force={v}: true or false"))),
                    }
                }
                _ => return Err(Error(400, format!("unknown parameter `{k}`"))),
            }
        }
        let path = path.ok_or_else(|| Error(400, "`path` is required".into()))?;
        let path = spec::guest_path(&path).map_err(|e| Error(400, e))?;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mode = if force {
            DetachMode::Force
        } else {
            DetachMode::Normal
        };
        self.vfs.detach(&path, mode)?;
        tracing::info!(
            "api: detached {path}{}",
            if force { " (forced)" } else { "" }
        );
        // Drops a file volume's staging directory.
        entries.remove(&path);
        Ok(())
    }
}

type Reply = Result<(u16, String), Error>;

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        Error(f.0, f.1)
    }
}

/// Serves the API on `listener` on a thread of its own, until the process ends: `/volumes`
/// when the device serves a volume table, `/devices` and `/metrics` in fleet mode.
pub(crate) fn serve(
    listener: UnixListener,
    volumes: Option<Api>,
    fleet: Option<Arc<Registry>>,
) -> Result<(), String> {
    let server = Server::from_listener(listener, None).map_err(|e| format!("--api-socket: {e}"))?;
    std::thread::Builder::new()
        .name("boxfsd-api".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                handle(volumes.as_ref(), fleet.as_ref(), req);
            }
        })
        .map_err(|e| format!("--api-socket: cannot start its thread: {e}"))?;
    Ok(())
}

fn handle(volumes: Option<&Api>, fleet: Option<&Arc<Registry>>, mut req: tiny_http::Request) {
    let url = req.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let method = req.method().clone();
    let mut body = Vec::new();
    let mut content_type = "application/json";
    let res = match req.as_reader().take(MAX_BODY + 1).read_to_end(&mut body) {
        Ok(n) if n as u64 > MAX_BODY => Err(Error(413, "body too large".into())),
        Err(e) => Err(Error(400, format!("reading the body: {e}"))),
        Ok(_) => match (volumes, fleet, path) {
            (Some(api), _, "/volumes") => api.route(&method, path, query, &body),
            (_, Some(reg), "/metrics") if method == Method::Get => {
                content_type = metrics::CONTENT_TYPE;
                metrics::render(reg)
                    .map(|m| (200, m))
                    .map_err(|e| Error(500, e))
            }
            (_, Some(_), "/metrics") => Err(Error(405, "use GET".into())),
            (_, _, "/snapshot") if method == Method::Put => crate::snapshot::api_put(&body)
                .map(|json| (200, json))
                .map_err(|(status, msg)| Error(status, msg)),
            (_, _, "/snapshot") => Err(Error(405, "use PUT".into())),
            (_, Some(reg), p) if p == "/devices" || p.starts_with("/devices/") => {
                reg.route(&method, p, &body).map_err(Error::from)
            }
            _ => Err(Error(404, format!("no such endpoint: {path}"))),
        },
    };
    let (status, body) = match res {
        Ok(r) => r,
        Err(Error(status, msg)) => {
            tracing::info!("api: {method} {url}: {status} {msg}");
            content_type = "application/json";
            (status, serde_json::json!({ "error": msg }).to_string())
        }
    };
    let mut resp = Response::from_string(body).with_status_code(status);
    if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        resp = resp.with_header(h);
    }
    if let Err(e) = req.respond(resp) {
        tracing::debug!("api: cannot answer: {e}");
    }
}

/// A `virtual` volume given inline has no host source.
fn virtual_bytes_is_inline(kind: &Kind) -> bool {
    matches!(kind, Kind::Virtual(p) if p.as_os_str().is_empty())
}

/// Decodes the `%XX` escapes of a query value (`+` stays a plus: paths may hold one).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Binds the API socket with mode 0600 (created so, never wider): before the sandbox.
pub(crate) fn bind(path: &std::path::Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "--api-socket {}: exists and is not a socket",
                path.display()
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "--api-socket {}: socket path in use: another process is listening on it",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| {
            format!(
                "--api-socket {}: removing the stale socket: {e}",
                path.display()
            )
        })?;
    }
    // The process is still single-threaded here: the umask change affects only this bind.
    // SAFETY: umask only swaps the process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    l.map_err(|e| format!("--api-socket {}: {e}", path.display()))
}
