//! Process confinement for a process that serves boxfs backends (feature `sandbox`, Linux).
//!
//! Once the backends hold descriptors of their directories and the vhost-user socket is bound,
//! serving needs no path any more except `/proc/self/fd` (PassthroughFs re-opens inodes and reads
//! their xattrs through it). [`enter_namespace`] therefore
//!
//! 1. enters a new mount namespace, and a new user namespace first when the process is not
//!    root (it keeps its own uid and gid, mapped to themselves, so host files see the same
//!    owner);
//! 2. makes every mount private, mounts a tiny read-only tmpfs as the new root holding only
//!    `/proc` (a bind of the host's), `pivot_root`s into it and detaches the old root: the host's
//!    file system, the shared directories included, is no longer reachable by any path, only
//!    through the descriptors already open;
//! 3. sets `no_new_privs`.
//!
//! Independently, [`install_seccomp`] installs an allow-list of the system calls a serving
//! process makes ([`allowed_syscalls`]), with the arguments of the dangerous ones filtered:
//! `clone` only without namespace flags (`clone3`, whose flags seccomp cannot read, answers
//! `ENOSYS`, so the C library falls back to `clone`), `ioctl` only for the requests the
//! backends use, `prctl` only for the options the thread runtime uses, and `mknodat` only for
//! regular files and FIFOs, and `socket` only for Unix-domain sockets. Call it before any serving thread exists, so every thread inherits
//! it.
//!
//! Both need a single-threaded caller (namespaces are per process; a filter is inherited by the
//! threads started after it). [`enter_namespace`] needs unprivileged user namespaces when not run
//! as root (Debian and most distributions allow them; `kernel.unprivileged_userns_clone=0` or an
//! AppArmor policy can forbid them): [`Error::Unsupported`] says so.
//!
//! ```no_run
//! use boxfs::sandbox::{self, Seccomp};
//! // ... open the backends and bind the socket first ...
//! sandbox::enter_namespace()?;
//! sandbox::install_seccomp(Seccomp::Kill)?;
//! assert!(sandbox::allowed_syscalls().any(|c| c.name == "openat2"));
//! // ... start the device ...
//! # Ok::<(), boxfs::Error>(())
//! ```

use std::io;
use std::str::FromStr;

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::{Error, Result};

fn ctx(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| Error::io(what, io::Error::from(e))
}

/// Confines the calling, single-threaded process; see the [module documentation](self).
///
/// # Errors
/// [`Error::Unsupported`] when the kernel refuses a user or mount namespace (unprivileged user
/// namespaces disabled, or already inside a restricted sandbox); [`Error::Io`] when a later
/// step fails. After an error the process may be partly confined: exit rather than serve.
pub fn enter_namespace() -> Result<()> {
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    let mut flags = rustix::thread::UnshareFlags::NEWNS;
    if !uid.is_root() {
        flags |= rustix::thread::UnshareFlags::NEWUSER;
    }
    // SAFETY: the flags hold no `CLONE_FILES`, so no thread can end up with a different
    // descriptor table; unsharing namespaces only changes what paths resolve to.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(|e| {
        Error::Unsupported(format!(
            "cannot enter a private {} namespace: {}",
            if uid.is_root() {
                "mount"
            } else {
                "user and mount"
            },
            io::Error::from(e)
        ))
    })?;
    if !uid.is_root() {
        let write =
            |file: &str, text: String| std::fs::write(file, text).map_err(|e| Error::path(file, e));
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("{0} {0} 1", uid.as_raw()))?;
        write("/proc/self/gid_map", format!("{0} {0} 1", gid.as_raw()))?;
    }
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(ctx("make mounts private"))?;
    // The new root: a small tmpfs over /tmp (in this namespace only) with just /proc in it.
    let root = "/tmp";
    rustix::mount::mount(
        "tmpfs",
        root,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        c"size=16k,mode=0755",
    )
    .map_err(ctx("mount the new root"))?;
    std::fs::create_dir("/tmp/proc").map_err(|e| Error::path("/tmp/proc", e))?;
    rustix::mount::mount_bind_recursive("/proc", "/tmp/proc").map_err(ctx("bind /proc"))?;
    rustix::process::chdir(root).map_err(ctx("chdir to the new root"))?;
    rustix::process::pivot_root(".", ".").map_err(ctx("pivot_root"))?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).map_err(ctx("detach the old root"))?;
    rustix::process::chdir("/").map_err(ctx("chdir /"))?;
    // Nothing but /proc is left; make the root itself read-only.
    rustix::mount::mount_remount(
        "/",
        MountFlags::BIND
            | MountFlags::RDONLY
            | MountFlags::NOSUID
            | MountFlags::NODEV
            | MountFlags::NOEXEC,
        "",
    )
    .map_err(ctx("remount the root read-only"))?;
    rustix::thread::set_no_new_privs(true).map_err(ctx("no_new_privs"))?;
    Ok(())
}

/// What the seccomp filter of [`install_seccomp`] does with a system call outside the
/// allow-list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Seccomp {
    /// No filter.
    None,
    /// Log it (to the kernel audit log) and let it run: for finding what a new code path needs.
    Log,
    /// Kill the process (`SIGSYS`).
    #[default]
    Kill,
}

impl FromStr for Seccomp {
    type Err = Error;

    /// Parses `none`, `log` or `kill`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Seccomp::None),
            "log" => Ok(Seccomp::Log),
            "kill" => Ok(Seccomp::Kill),
            other => Err(Error::InvalidConfig(format!(
                "`{other}`: expected none, log or kill"
            ))),
        }
    }
}

/// One entry of the allow-list: a system call, and whether its arguments are filtered too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowedCall {
    /// The call's name, as in `man 2`.
    pub name: &'static str,
    /// Its number on this architecture.
    pub number: i64,
    /// `true` when only some argument values are allowed (see the module documentation).
    pub filtered: bool,
}

/// How an allowed call's arguments are checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Args {
    /// Any arguments.
    Any,
    /// `clone`: the flags argument carries no namespace flag.
    CloneNoNamespaces,
    /// `ioctl`: only the request numbers the backends and the Rust runtime use.
    IoctlRequests,
    /// `prctl`: only the options the thread runtime uses.
    PrctlOptions,
    /// `mknodat`: only regular files and FIFOs.
    MknodRegularOrFifo,
    /// `socket`: only Unix-domain sockets (the device wakes its own listener to stop).
    UnixSocket,
}

/// The allow-list: `(SYS_ name, number, argument rule)`, collected with `strace -f` over the
/// real-guest tests and the benchmark smoke run, plus close relatives of what was seen.
macro_rules! allow {
    ($($sys:ident $(: $args:ident)?),* $(,)?) => {
        &[$((stringify!($sys), libc::$sys as i64, allow!(@args $($args)?))),*]
    };
    (@args) => { Args::Any };
    (@args $a:ident) => { Args::$a };
}

const COMMON: &[(&str, i64, Args)] = allow![
    SYS_accept4, SYS_bind, SYS_brk, SYS_clock_gettime, SYS_clock_nanosleep,
    SYS_clone: CloneNoNamespaces, SYS_clone3, SYS_close, SYS_connect, SYS_copy_file_range, SYS_dup, SYS_dup3, SYS_epoll_create1,
    SYS_epoll_ctl, SYS_epoll_pwait, SYS_eventfd2, SYS_exit, SYS_exit_group, SYS_faccessat,
    SYS_faccessat2, SYS_fallocate, SYS_fchmod, SYS_fchmodat, SYS_fcntl, SYS_fdatasync,
    SYS_fgetxattr, SYS_flistxattr, SYS_flock, SYS_fremovexattr, SYS_fsetxattr, SYS_fstat,
    SYS_fstatfs, SYS_fsync, SYS_ftruncate, SYS_futex, SYS_getdents64, SYS_getegid, SYS_geteuid,
    SYS_getgid, SYS_getpid, SYS_getrandom, SYS_getsockname, SYS_getsockopt, SYS_gettid,
    SYS_getuid, SYS_getxattr, SYS_ioctl: IoctlRequests, SYS_lgetxattr, SYS_linkat,
    SYS_listen, SYS_listxattr, SYS_llistxattr, SYS_lseek, SYS_lsetxattr, SYS_madvise, SYS_mkdirat,
    SYS_mknodat: MknodRegularOrFifo, SYS_mmap, SYS_name_to_handle_at, SYS_mprotect, SYS_mremap, SYS_munmap,
    SYS_nanosleep, SYS_newfstatat, SYS_openat, SYS_openat2, SYS_pipe2, SYS_ppoll,
    SYS_prctl: PrctlOptions, SYS_pread64, SYS_preadv, SYS_preadv2, SYS_prlimit64, SYS_pwrite64,
    SYS_pwritev, SYS_pwritev2, SYS_read, SYS_readlinkat, SYS_readv, SYS_recvfrom, SYS_recvmsg,
    SYS_removexattr, SYS_renameat2, SYS_restart_syscall, SYS_rseq, SYS_rt_sigaction,
    SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_sched_getaffinity, SYS_sched_yield, SYS_sendmsg,
    SYS_sendfile, SYS_sendto, SYS_set_robust_list, SYS_setsockopt, SYS_setxattr, SYS_shutdown, SYS_sigaltstack, SYS_socket: UnixSocket,
    SYS_socketpair, SYS_splice, SYS_statfs, SYS_statx, SYS_symlinkat, SYS_sync_file_range, SYS_tgkill,
    SYS_timerfd_create, SYS_timerfd_settime,
    SYS_truncate, SYS_unlinkat, SYS_utimensat, SYS_write, SYS_writev,
];

#[cfg(target_arch = "x86_64")]
const ARCH: &[(&str, i64, Args)] = allow![
    SYS_access,
    SYS_arch_prctl,
    SYS_epoll_wait,
    SYS_lstat,
    SYS_open,
    SYS_poll,
    SYS_readlink,
    SYS_renameat,
    SYS_stat,
];
#[cfg(not(target_arch = "x86_64"))]
const ARCH: &[(&str, i64, Args)] = &[];

/// The `*xattrat` calls of Linux 6.13 (the same numbers on every architecture): PassthroughFs
/// tries them first and falls back when the kernel lacks them.
const XATTRAT: &[(&str, i64, Args)] = &[
    ("SYS_setxattrat", 463, Args::Any),
    ("SYS_getxattrat", 464, Args::Any),
    ("SYS_listxattrat", 465, Args::Any),
    ("SYS_removexattrat", 466, Args::Any),
];

/// `ioctl` requests allowed: `FIONBIO`, `FIOCLEX`, `FIONCLEX` (the Rust runtime), `TCGETS`
/// (terminal checks), `FS_IOC_GETFLAGS` and `FS_IOC_GETVERSION` (inode identity).
const IOCTLS: &[u64] = &[
    libc::FIONBIO,
    libc::FIOCLEX,
    libc::FIONCLEX,
    libc::TCGETS,
    libc::FS_IOC_GETFLAGS,
    libc::FS_IOC_GETVERSION,
];

/// `prctl` options allowed: thread names (the thread runtime) and anonymous-mapping names
/// (the C library's allocator may name its arenas).
const PRCTLS: &[u64] = &[
    libc::PR_SET_NAME as u64,
    libc::PR_GET_NAME as u64,
    libc::PR_SET_VMA as u64,
];

/// Namespace flags a `clone` must not carry.
const CLONE_NAMESPACES: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u64;

fn table() -> impl Iterator<Item = &'static (&'static str, i64, Args)> {
    COMMON.iter().chain(ARCH).chain(XATTRAT)
}

/// The system calls [`install_seccomp`] allows, in no particular order.
pub fn allowed_syscalls() -> impl Iterator<Item = AllowedCall> {
    table().map(|&(name, number, args)| AllowedCall {
        name: name.trim_start_matches("SYS_"),
        number,
        filtered: args != Args::Any,
    })
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> Result<SeccompRule> {
    SeccompCondition::new(arg, len, op, value)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| Error::InvalidConfig(format!("seccomp rule: {e}")))
}

fn rules(args: Args) -> Result<Vec<SeccompRule>> {
    use SeccompCmpArgLen::{Dword, Qword};
    match args {
        Args::Any => Ok(Vec::new()),
        Args::CloneNoNamespaces => Ok(vec![cond(
            0,
            Qword,
            SeccompCmpOp::MaskedEq(CLONE_NAMESPACES),
            0,
        )?]),
        Args::IoctlRequests => IOCTLS
            .iter()
            .map(|&r| cond(1, Dword, SeccompCmpOp::Eq, r & 0xffff_ffff))
            .collect(),
        Args::PrctlOptions => PRCTLS
            .iter()
            .map(|&o| cond(0, Dword, SeccompCmpOp::Eq, o))
            .collect(),
        Args::MknodRegularOrFifo => [0, libc::S_IFREG, libc::S_IFIFO]
            .iter()
            .map(|&t| {
                cond(
                    2,
                    Dword,
                    SeccompCmpOp::MaskedEq(u64::from(libc::S_IFMT)),
                    u64::from(t),
                )
            })
            .collect(),
        Args::UnixSocket => Ok(vec![cond(
            0,
            Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?]),
    }
}

fn compile(
    rules: std::collections::BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| Error::Unsupported(format!("seccomp: {e}")))?;
    let filter = SeccompFilter::new(rules, mismatch, matched, arch)
        .map_err(|e| Error::InvalidConfig(format!("seccomp filter: {e}")))?;
    filter
        .try_into()
        .map_err(|e| Error::InvalidConfig(format!("seccomp program: {e}")))
}

/// Installs the allow-list of [`allowed_syscalls`] for the calling thread and every thread it
/// starts later (so call it before the device starts its threads); `mode` says what happens to
/// any other call. Also sets `no_new_privs`, which a filter needs.
///
/// # Errors
/// [`Error::Unsupported`] on an architecture seccompiler does not know, [`Error::Io`] when the
/// kernel refuses the filter.
pub fn install_seccomp(mode: Seccomp) -> Result<()> {
    let mismatch = match mode {
        Seccomp::None => return Ok(()),
        Seccomp::Log => SeccompAction::Log,
        Seccomp::Kill => SeccompAction::KillProcess,
    };
    // First (it must be allowed to install the second): `clone3` answers ENOSYS, so the C
    // library uses `clone`, whose flags the allow-list can check. Every filter runs on every
    // call and the strictest answer wins, so the allow-list below still decides the rest.
    let enosys = compile(
        [(libc::SYS_clone3, Vec::new())].into(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    let mut allow = std::collections::BTreeMap::new();
    for &(_, number, args) in table() {
        allow.insert(number, rules(args)?);
    }
    let allow = compile(allow, mismatch, SeccompAction::Allow)?;
    for program in [&enosys, &allow] {
        seccompiler::apply_filter(program)
            .map_err(|e| Error::io("install the seccomp filter", io::Error::other(e)))?;
    }
    Ok(())
}
