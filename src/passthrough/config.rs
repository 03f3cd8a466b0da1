//! Options of a [`PassthroughFs`](super::PassthroughFs).

use std::time::Duration;

use crate::CachePolicy;

/// How guest symlinks are stored on the host.
///
/// Linux cannot attach `user.*` extended attributes to symlinks, so the ownership of a real
/// host symlink cannot be virtualized. The two modes trade host-side fidelity against guest
/// fidelity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SymlinkMode {
    /// **Default.** A guest symlink is a host *regular file* holding the link target, with the
    /// type, owner and mode in `user.containers.override_stat`. The guest sees a normal
    /// symlink whose owner `lchown` can change; host tools see a small file instead of a link.
    /// Real symlinks already on the host are still served as symlinks (owned by the default
    /// owner; `lchown` of those fails with `EPERM`).
    ///
    /// This is the default because it is the only way an unprivileged daemon can give the
    /// guest full POSIX semantics (pjdfstest passes with 0 failures).
    #[default]
    Virtualized,
    /// A guest symlink is a real host symlink, so host tools can follow it. Its guest owner is
    /// always the default owner and its mode `0777`; `lchown` to any other owner fails with
    /// `EPERM`.
    Host,
}

/// What happens to the permission bits of host files the guest creates or `chmod`s.
///
/// The guest's permission bits always live in `user.containers.override_stat`; this only
/// decides what the *host* sees. Either way the daemon user keeps read and write access to
/// its own files (and search access to its directories), because it runs unprivileged and
/// cannot bypass host permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HostPermissions {
    /// **Default.** Host files are created `0600` and directories `0700` and never `chmod`ed:
    /// guest data stays private to the daemon user on the host.
    #[default]
    Private,
    /// The guest's permission bits (without setuid/setgid/sticky) are mirrored onto the host,
    /// always adding owner read/write (and search for directories).
    Mirror,
}

/// Complete configuration; built by [`PassthroughFsBuilder`](super::PassthroughFsBuilder).
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub readonly: bool,
    pub cache_policy: CachePolicy,
    pub quota_bytes: Option<u64>,
    pub default_uid: u32,
    pub default_gid: u32,
    pub symlinks: SymlinkMode,
    pub host_permissions: HostPermissions,
    pub entry_timeout: Duration,
    pub attr_timeout: Duration,
    pub writeback: bool,
    pub fd_cache_size: usize,
    pub max_inodes: usize,
    pub max_handles: usize,
}

impl Config {
    /// Host permission bits for a new node of guest type `kind` with guest mode `mode`.
    pub fn host_create_mode(&self, is_dir: bool, mode: u32) -> u32 {
        match (self.host_permissions, is_dir) {
            (HostPermissions::Private, false) => 0o600,
            (HostPermissions::Private, true) => 0o700,
            (HostPermissions::Mirror, false) => (mode & 0o777) | 0o600,
            (HostPermissions::Mirror, true) => (mode & 0o777) | 0o700,
        }
    }
}
