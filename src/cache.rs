//! Guest page-cache policy shared by every backend.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::OpenOptions;

/// How much the guest kernel may cache of what a backend serves.
///
/// | policy | open flags | entry/attr timeout |
/// |---|---|---|
/// | `Never`  | `DIRECT_IO` on files: every read and write reaches the backend | 0 |
/// | `Auto`   | none: the page cache is dropped on open when the file changed | 1 s |
/// | `Always` | `KEEP_CACHE` on files, `CACHE_DIR` on directories | 1 day |
///
/// Use `Never` when the host changes files behind the guest's back, `Always` when the backend
/// is the only writer (MemFs, an overlay's private upper layer).
///
/// # What `Auto` promises, and the round trips it saves
///
/// A change made on the host (not through the guest) is seen by the guest within the entry
/// and attribute timeout (1 s) for names and attributes, and at the next `open` for file
/// data (close-to-open). Within that promise the served filesystem saves these round trips:
///
/// * **Negative entries.** A `LOOKUP` of a missing name is answered with a negative entry
///   (node id 0) valid for the entry timeout instead of `ENOENT`, so the guest kernel caches
///   the miss (the many probes of git, Python's import path, shells' `PATH` search). Rule: a
///   name the host creates shows within the entry timeout, as a name it removes disappears
///   within it; what the guest creates itself replaces its cached miss at once. Applies to
///   what a device serves ([`crate::SharedFs`]) for backends whose
///   [`negative_timeout`](crate::DynFileSystem::negative_timeout) is not zero (PassthroughFs
///   and MemFs: their entry timeout, so none under `Never`; DualFs: its imposed entry
///   timeout, else the shorter of its layers'; VolumeFs: none); layers nested in another
///   backend still answer `ENOENT`.
/// * **Kept page cache of unchanged files** (PassthroughFs). `open` answers `KEEP_CACHE`
///   (`opendir`: `KEEP_CACHE | CACHE_DIR`) when the host file's mtime, ctime and size are
///   those the guest's previous open of the same inode saw, and that ctime was at least 2 s
///   older than the host clock at that open (so any later change moves it, even with
///   timestamps as coarse as 2 s). Otherwise the guest drops its cache on open as before.
///   Rule: unchanged close-to-open consistency: a host-modified file is never read from a kept
///   cache at the next open. Not covered: a host filesystem whose ctime does not move on
///   writes, or whose clock is not the daemon's (network filesystems with clock skew); use
///   `Never` there.
/// * **Kept caches of a MemFs.** A MemFs answers `KEEP_CACHE` (`CACHE_DIR` for
///   directories) under `Auto` as under `Always`: the guest is its only writer, so nothing it
///   cached can be stale. Its timeouts stay 1 s.
///
/// Independent of the policy, PassthroughFs also saves a FLUSH at every `close` of a file
/// (`FOPEN_NOFLUSH` unless the writeback cache is on: writes are written through, and POSIX
/// locks stay in the guest kernel) and the guest's `security.capability` GETXATTR before
/// every write (`FUSE_HANDLE_KILLPRIV_V2`: the daemon clears setuid/setgid itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CachePolicy {
    /// No caching: direct I/O and zero timeouts.
    Never,
    /// Close-to-open consistency with short timeouts.
    #[default]
    Auto,
    /// Cache everything for a long time.
    Always,
}

impl CachePolicy {
    /// Open flags to return from `open` (`is_dir = false`) or `opendir` (`is_dir = true`).
    pub fn open_options(self, is_dir: bool) -> OpenOptions {
        match (self, is_dir) {
            (CachePolicy::Never, false) => OpenOptions::DIRECT_IO,
            (CachePolicy::Never, true) | (CachePolicy::Auto, _) => OpenOptions::empty(),
            (CachePolicy::Always, false) => OpenOptions::KEEP_CACHE,
            #[cfg(target_os = "linux")]
            (CachePolicy::Always, true) => OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR,
            // Other platforms' FUSE has no directory cache flag.
            #[cfg(not(target_os = "linux"))]
            (CachePolicy::Always, true) => OpenOptions::KEEP_CACHE,
        }
    }

    /// Entry and attribute timeout handed to the guest with every reply.
    pub fn timeout(self) -> Duration {
        match self {
            CachePolicy::Never => Duration::ZERO,
            CachePolicy::Auto => Duration::from_secs(1),
            CachePolicy::Always => Duration::from_secs(86_400),
        }
    }
}

impl FromStr for CachePolicy {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "never" | "none" => Ok(CachePolicy::Never),
            "auto" => Ok(CachePolicy::Auto),
            "always" => Ok(CachePolicy::Always),
            other => Err(crate::Error::InvalidConfig(format!(
                "unknown cache policy `{other}` (expected never, auto or always)"
            ))),
        }
    }
}

impl fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CachePolicy::Never => "never",
            CachePolicy::Auto => "auto",
            CachePolicy::Always => "always",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_matches_documentation() {
        assert_eq!(
            CachePolicy::Never.open_options(false),
            OpenOptions::DIRECT_IO
        );
        assert_eq!(CachePolicy::Auto.open_options(false), OpenOptions::empty());
        assert!(CachePolicy::Always
            .open_options(true)
            .contains(OpenOptions::CACHE_DIR));
        assert_eq!(CachePolicy::Never.timeout(), Duration::ZERO);
        assert!(CachePolicy::Always.timeout() > CachePolicy::Auto.timeout());
        for p in [CachePolicy::Never, CachePolicy::Auto, CachePolicy::Always] {
            assert_eq!(p.to_string().parse::<CachePolicy>().ok(), Some(p));
        }
        assert!("sometimes".parse::<CachePolicy>().is_err());
    }
}

/// Caching settings a composing backend (DualFs, VolumeFs) imposes on what its layers answer;
/// a field left `None` keeps the layer's own value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheOverride {
    pub(crate) policy: Option<CachePolicy>,
    pub(crate) timeouts: Option<(Duration, Duration)>,
    pub(crate) writeback: Option<bool>,
}

impl CacheOverride {
    /// `(entry, attr)` timeouts to impose, if any: explicit ones, else the policy's.
    pub(crate) fn imposed_timeouts(&self) -> Option<(Duration, Duration)> {
        self.timeouts
            .or_else(|| self.policy.map(|p| (p.timeout(), p.timeout())))
    }

    /// An entry as the guest gets it.
    pub(crate) fn entry(&self, mut e: crate::Entry) -> crate::Entry {
        if let Some((entry, attr)) = self.imposed_timeouts() {
            e.entry_timeout = entry;
            e.attr_timeout = attr;
        }
        e
    }

    /// An attribute timeout as the guest gets it.
    pub(crate) fn attr(&self, layer: Duration) -> Duration {
        self.imposed_timeouts().map_or(layer, |(_, attr)| attr)
    }

    /// Open flags as the guest gets them: the policy's caching flags replace the layer's.
    pub(crate) fn open(&self, layer: OpenOptions, is_dir: bool) -> OpenOptions {
        let Some(policy) = self.policy else {
            return layer;
        };
        #[cfg(target_os = "linux")]
        let caching = OpenOptions::DIRECT_IO | OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR;
        #[cfg(not(target_os = "linux"))]
        let caching = OpenOptions::DIRECT_IO | OpenOptions::KEEP_CACHE;
        (layer - caching) | policy.open_options(is_dir)
    }

    /// INIT flags as the guest gets them: the writeback cache on or off as set.
    #[cfg(target_os = "linux")]
    pub(crate) fn init(
        &self,
        layers: crate::FsOptions,
        capable: crate::FsOptions,
    ) -> crate::FsOptions {
        use crate::FsOptions;
        match self.writeback {
            Some(true) => layers | (capable & FsOptions::WRITEBACK_CACHE),
            Some(false) => layers - FsOptions::WRITEBACK_CACHE,
            None => layers,
        }
    }

    /// INIT flags as the guest gets them (no writeback cache outside Linux).
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn init(
        &self,
        layers: crate::FsOptions,
        _capable: crate::FsOptions,
    ) -> crate::FsOptions {
        layers
    }
}
