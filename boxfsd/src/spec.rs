//! `--volume GUEST_PATH=KIND:SPEC[,OPTION...]`: the volume spec parser.
//!
//! ```text
//! /=overlay:lower=/img/rootfs,upper=memfs:1G
//! /work=dir:/home/u/proj,hide=.git/,hide=*.pem
//! /tmp=memfs:256M,mode=01777
//! /etc/app.conf=file:/srv/app.conf,ro
//! /init.krun=virtual:/usr/lib/boxfs/init,mode=0755
//! ```
//!
//! Fields are separated by commas, so a host path given in a spec cannot contain one.

use std::path::PathBuf;

use boxfs::Size;

/// The writable layer of an overlay volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Upper {
    /// A host directory.
    Dir(PathBuf),
    /// An in-memory filesystem of this capacity.
    Memfs(Size),
}

/// What a volume serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A host directory (PassthroughFs).
    Dir(PathBuf),
    /// An in-memory filesystem (MemFs) of this capacity.
    Memfs(Size),
    /// A DualFs overlay: read-only lower host directory, writable upper.
    Overlay {
        /// Read-only lower layer.
        lower: PathBuf,
        /// Writable upper layer.
        upper: Upper,
    },
    /// One host file (a file mount).
    File(PathBuf),
    /// Read-only bytes read from a host file at start.
    Virtual(PathBuf),
}

impl Kind {
    /// The kind's name as written in a spec.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Kind::Dir(_) => "dir",
            Kind::Memfs(_) => "memfs",
            Kind::Overlay { .. } => "overlay",
            Kind::File(_) => "file",
            Kind::Virtual(_) => "virtual",
        }
    }
}

/// A volume's own limits (`quota=`, `max-inodes=`, `max-handles=`, `fd-cache-size=`), in place
/// of the global `--quota`, `--max-inodes`/`--memfs-max-inodes`, `--max-handles` and
/// `--fd-cache-size`. For an overlay they
/// apply to its writable upper layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Bytes of regular files and symlink targets (`dir` volumes and directory uppers).
    pub quota: Option<Size>,
    /// Most inodes the guest may hold (`dir`), or the volume may have (`memfs`).
    pub max_inodes: Option<u64>,
    /// Most files and directories open at once.
    pub max_handles: Option<u64>,
    /// Most inode descriptors a host directory keeps cached (`dir` volumes and directory
    /// uppers; in place of `--fd-cache-size`).
    pub fd_cache_size: Option<u64>,
}

/// One parsed `--volume`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VolumeSpec {
    /// Absolute guest path (`/` for the root backend).
    pub path: String,
    /// What is served there.
    pub kind: Kind,
    /// `ro`.
    pub readonly: bool,
    /// `mode=OCTAL`: permission bits of the mount point (of the file for `virtual`).
    pub mode: Option<u32>,
    /// `owner=UID:GID` of the mount point.
    pub owner: Option<(u32, u32)>,
    /// `hide=PATTERN`, repeatable.
    pub hide: Vec<String>,
    /// The volume's own limits.
    pub limits: Limits,
}

/// Checks a guest path: absolute, no empty, `.` or `..` components (a trailing `/` is
/// dropped). Returns it normalized.
pub(crate) fn guest_path(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("guest path `{p}` must be absolute"));
    }
    if p == "/" {
        return Ok("/".into());
    }
    let trimmed = p.strip_suffix('/').unwrap_or(p);
    for c in trimmed[1..].split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(format!(
                "guest path `{p}`: empty, `.` or `..` components are not allowed"
            ));
        }
        if c.len() > 255 {
            return Err(format!("guest path `{p}`: a component is over 255 bytes"));
        }
    }
    Ok(trimmed.to_owned())
}

/// Parses `OCTAL` permission bits (`0755`, `755`, `01777`).
pub(crate) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "mode `{s}`: expected octal permission bits such as 0755"
        )),
    }
}

/// Parses `UID:GID`.
pub(crate) fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("owner `{s}`: expected UID:GID"))?;
    let u = u
        .parse()
        .map_err(|_| format!("owner `{s}`: `{u}` is not a uid"))?;
    let g = g
        .parse()
        .map_err(|_| format!("owner `{s}`: `{g}` is not a gid"))?;
    Ok((u, g))
}

fn size(s: &str, what: &str) -> Result<Size, String> {
    s.parse::<Size>().map_err(|e| format!("{what} `{s}`: {e}"))
}

fn count(s: &str, what: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{what} `{s}`: expected a positive number")),
    }
}

fn host_path(s: &str, kind: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err(format!("{kind}: expected a host path after `{kind}:`"));
    }
    Ok(PathBuf::from(s))
}

/// Parses the `--upper`-style value `DIR` or `memfs:SIZE`.
pub(crate) fn parse_upper(s: &str) -> Result<Upper, String> {
    match s.strip_prefix("memfs:") {
        Some(sz) => Ok(Upper::Memfs(size(sz, "upper memfs size")?)),
        None if s.is_empty() => Err("upper: expected DIR or memfs:SIZE".into()),
        None => Ok(Upper::Dir(PathBuf::from(s))),
    }
}

/// Parses `GUEST_PATH=KIND:SPEC[,OPTION...]`.
pub(crate) fn parse_volume(arg: &str) -> Result<VolumeSpec, String> {
    let (path, rest) = arg
        .split_once('=')
        .ok_or("expected GUEST_PATH=KIND:SPEC[,OPTION...], e.g. /work=dir:/srv/work")?;
    let path = guest_path(path)?;
    let (kind, rest) = rest.split_once(':').ok_or_else(|| {
        format!("`{rest}`: expected KIND:SPEC with KIND one of dir, memfs, overlay, file, virtual")
    })?;
    let mut fields = rest.split(',');
    let first = fields.next().unwrap_or_default();
    let mut options: Vec<&str> = Vec::new();
    let kind = match kind {
        "dir" => Kind::Dir(host_path(first, "dir")?),
        "file" => Kind::File(host_path(first, "file")?),
        "virtual" => Kind::Virtual(host_path(first, "virtual")?),
        "memfs" => {
            if first.is_empty() {
                return Err("memfs: expected a size after `memfs:`, e.g. memfs:256M".into());
            }
            Kind::Memfs(size(first, "memfs size")?)
        }
        "overlay" => {
            let (mut lower, mut upper) = (None, None);
            for f in std::iter::once(first).chain(fields.by_ref()) {
                if let Some(l) = f.strip_prefix("lower=") {
                    if lower.replace(host_path(l, "overlay lower")?).is_some() {
                        return Err("overlay: `lower=` given twice".into());
                    }
                } else if let Some(u) = f.strip_prefix("upper=") {
                    if upper.replace(parse_upper(u)?).is_some() {
                        return Err("overlay: `upper=` given twice".into());
                    }
                } else {
                    options.push(f);
                }
            }
            match (lower, upper) {
                (Some(lower), Some(upper)) => Kind::Overlay { lower, upper },
                _ => {
                    return Err(
                        "overlay: expected overlay:lower=DIR,upper=DIR|memfs:SIZE".to_string()
                    )
                }
            }
        }
        other => {
            return Err(format!(
                "unknown volume kind `{other}`: expected dir, memfs, overlay, file or virtual"
            ))
        }
    };
    options.extend(fields);
    let mut spec = VolumeSpec {
        path,
        kind,
        readonly: false,
        mode: None,
        owner: None,
        hide: Vec::new(),
        limits: Limits::default(),
    };
    for opt in options {
        match opt.split_once('=') {
            None if opt == "ro" => spec.readonly = true,
            None if opt == "rw" => spec.readonly = false,
            Some(("mode", m)) => spec.mode = Some(parse_mode(m)?),
            Some(("owner", o)) => spec.owner = Some(parse_owner(o)?),
            Some(("hide", h)) if !h.is_empty() => spec.hide.push(h.to_owned()),
            Some(("quota", q)) => spec.limits.quota = Some(size(q, "quota")?),
            Some(("max-inodes", n)) => spec.limits.max_inodes = Some(count(n, "max-inodes")?),
            Some(("max-handles", n)) => spec.limits.max_handles = Some(count(n, "max-handles")?),
            Some(("fd-cache-size", n)) => {
                spec.limits.fd_cache_size = Some(count(n, "fd-cache-size")?)
            }
            _ => {
                return Err(format!(
                    "unknown volume option `{opt}`: expected ro, mode=OCTAL, owner=UID:GID, \
                     hide=PATTERN, quota=SIZE, max-inodes=N, max-handles=N or fd-cache-size=N"
                ))
            }
        }
    }
    if matches!(spec.kind, Kind::File(_) | Kind::Virtual(_)) && spec.path == "/" {
        return Err(format!(
            "a {} volume cannot be the root `/`",
            spec.kind.name()
        ));
    }
    if matches!(spec.kind, Kind::File(_) | Kind::Virtual(_)) && spec.limits != Limits::default() {
        return Err(format!(
            "{}: quota=, max-inodes=, max-handles= and fd-cache-size= apply to dir, memfs and \
             overlay volumes",
            spec.kind.name()
        ));
    }
    let memfs_quota = match &spec.kind {
        Kind::Memfs(_) => true,
        Kind::Overlay { upper, .. } => matches!(upper, Upper::Memfs(_)),
        _ => false,
    };
    if memfs_quota && spec.limits.quota.is_some() {
        return Err("quota=: an in-memory volume is bounded by its size already".into());
    }
    if matches!(spec.kind, Kind::Virtual(_)) && !spec.hide.is_empty() {
        return Err("virtual: hide= does not apply to a file".into());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_issue_examples() {
        let v = parse_volume("/=overlay:lower=/img/rootfs,upper=memfs:1G").unwrap();
        assert_eq!(v.path, "/");
        assert_eq!(
            v.kind,
            Kind::Overlay {
                lower: "/img/rootfs".into(),
                upper: Upper::Memfs("1G".parse().unwrap())
            }
        );
        let v =
            parse_volume("/work=dir:/home/u/proj,hide=.git/,hide=*.pem,owner=1000:100").unwrap();
        assert_eq!(v.kind, Kind::Dir("/home/u/proj".into()));
        assert_eq!(v.hide, [".git/", "*.pem"]);
        assert_eq!(v.owner, Some((1000, 100)));
        let v = parse_volume("/tmp/=memfs:256M,mode=01777").unwrap();
        assert_eq!(v.path, "/tmp");
        assert_eq!(v.mode, Some(0o1777));
        let v = parse_volume("/etc/app.conf=file:/srv/app.conf,ro").unwrap();
        assert!(v.readonly);
        assert_eq!(v.kind, Kind::File("/srv/app.conf".into()));
        let v = parse_volume("/init.krun=virtual:/usr/lib/boxfs/init,mode=0755").unwrap();
        assert_eq!(v.mode, Some(0o755));
        let v = parse_volume("/x=overlay:upper=/u,ro,lower=/l").unwrap();
        assert!(v.readonly);
        assert_eq!(
            v.kind,
            Kind::Overlay {
                lower: "/l".into(),
                upper: Upper::Dir("/u".into())
            }
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |s: &str| parse_volume(s).unwrap_err();
        assert!(err("work=dir:/x").contains("absolute"));
        assert!(err("/a/../b=dir:/x").contains("`..`"));
        assert!(err("/work").contains("GUEST_PATH=KIND:SPEC"));
        assert!(err("/work=dir").contains("KIND:SPEC"));
        assert!(err("/work=nfs:/x").contains("unknown volume kind `nfs`"));
        assert!(err("/work=dir:").contains("host path"));
        assert!(err("/tmp=memfs:lots").contains("memfs size `lots`"));
        assert!(err("/tmp=memfs:").contains("expected a size"));
        assert!(err("/x=overlay:lower=/l").contains("upper="));
        assert!(err("/x=overlay:lower=/l,upper=memfs:big").contains("upper memfs size"));
        assert!(err("/x=dir:/d,rx").contains("unknown volume option `rx`"));
        assert!(err("/x=dir:/d,mode=999").contains("octal"));
        assert!(err("/x=dir:/d,owner=1").contains("UID:GID"));
        assert!(err("/=file:/f").contains("cannot be the root"));
    }
}
