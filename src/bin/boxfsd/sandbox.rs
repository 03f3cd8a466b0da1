//! `--sandbox namespace`: the daemon confines itself once its shares are open.
//!
//! After the filesystems hold descriptors of their directories and the vhost-user socket is
//! bound, nothing the daemon does needs a path any more, except `/proc/self/fd` (PassthroughFs
//! re-opens and reads xattrs of its inodes through it). So the daemon
//!
//! 1. enters a new mount namespace, and a new user namespace first when it is not root (it
//!    keeps its own uid and gid, mapped to themselves, so host files see the same owner);
//! 2. makes every mount private, mounts a tiny read-only tmpfs as the new root holding only
//!    `/proc` (a bind of the host's), `pivot_root`s into it and detaches the old root: the
//!    host's file system, the shared directories included, is no longer reachable by any
//!    path, only through the descriptors already open;
//! 3. sets `no_new_privs`.
//!
//! Independently, `--seccomp log|kill` installs an allow-list of the system calls the daemon
//! makes while serving ([`apply_seccomp`]), before any thread exists, so every thread
//! inherits it.
//!
//! What it needs: unprivileged user namespaces (Debian and most distributions allow them;
//! `kernel.unprivileged_userns_clone=0` or an AppArmor policy can forbid them) when not run
//! as root, and no threads yet (namespaces are per process). Single-file shares are refused:
//! their staging directory is cleaned up by path.

use std::ffi::CString;
use std::io;

fn cvt(r: libc::c_int, what: &str) -> Result<(), String> {
    if r < 0 {
        Err(format!("{what}: {}", io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn mount(
    src: &str,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let (src_c, target_c) = (c(src), c(target));
    let fstype_c = fstype.map(c);
    let data_c = data.map(c);
    // SAFETY: every pointer is a NUL-terminated string or null, valid for the call.
    let r = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            data_c
                .as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    cvt(r, &format!("mount {target}"))
}

/// Confines the calling (single-threaded) process; see the module documentation.
pub(crate) fn enter_namespace() -> Result<(), String> {
    // SAFETY: plain credential queries.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut flags = libc::CLONE_NEWNS;
    if uid != 0 {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare only changes this process's namespaces.
    cvt(
        unsafe { libc::unshare(flags) },
        "unshare (user/mount namespace)",
    )?;
    if uid != 0 {
        let write = |file: &str, text: String| {
            std::fs::write(file, text).map_err(|e| format!("{file}: {e}"))
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
        write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    }
    mount("none", "/", None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    // The new root: a small tmpfs over /tmp (in this namespace only) with just /proc in it.
    let root = "/tmp";
    mount(
        "tmpfs",
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("size=16k,mode=0755"),
    )?;
    std::fs::create_dir(format!("{root}/proc")).map_err(|e| format!("mkdir proc: {e}"))?;
    mount(
        "/proc",
        &format!("{root}/proc"),
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let root_c = c(root);
    // SAFETY: changing directory to the new root, then pivoting into it (the old root is put
    // on top of it and detached right after).
    unsafe {
        cvt(libc::chdir(root_c.as_ptr()), "chdir new root")?;
        let dot = c(".");
        cvt(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int,
            "pivot_root",
        )?;
        cvt(
            libc::umount2(dot.as_ptr(), libc::MNT_DETACH),
            "detach old root",
        )?;
        let slash = c("/");
        cvt(libc::chdir(slash.as_ptr()), "chdir /")?;
    }
    // Nothing but /proc is left; make the root itself read-only.
    mount(
        "none",
        "/",
        None,
        libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        None,
    )?;
    // SAFETY: plain prctl.
    cvt(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        "no_new_privs",
    )?;
    Ok(())
}

/// What a seccomp filter does with a system call outside the allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seccomp {
    /// No filter.
    None,
    /// Log it (to the kernel audit log) and let it run: for finding what a new code path needs.
    Log,
    /// Kill the daemon.
    Kill,
}

/// System calls the daemon makes once it serves (collected with `strace -f` over the
/// real-guest tests and the benchmark smoke run, plus their close relatives).
#[cfg(target_arch = "x86_64")]
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_access,
    libc::SYS_epoll_wait,
    libc::SYS_poll,
    libc::SYS_readlink,
    libc::SYS_renameat,
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_arch_prctl,
];
#[cfg(target_arch = "aarch64")]
const ALLOWED: &[libc::c_long] = &[libc::SYS_fstat, libc::SYS_newfstatat];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ALLOWED: &[libc::c_long] = &[];

/// Calls every architecture has.
const ALLOWED_COMMON: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_fallocate,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_flock,
    libc::SYS_fremovexattr,
    libc::SYS_fsetxattr,
    libc::SYS_fstatfs,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_getuid,
    libc::SYS_getxattr,
    libc::SYS_ioctl,
    libc::SYS_lgetxattr,
    libc::SYS_linkat,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_lseek,
    libc::SYS_madvise,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    // PassthroughFs fingerprints inodes by file handle (reused inode numbers).
    libc::SYS_name_to_handle_at,
    libc::SYS_nanosleep,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_pipe2,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_prlimit64,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_read,
    libc::SYS_readlinkat,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_removexattr,
    libc::SYS_renameat2,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_set_robust_list,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_socketpair,
    libc::SYS_statfs,
    libc::SYS_statx,
    libc::SYS_symlinkat,
    libc::SYS_sync_file_range,
    libc::SYS_tgkill,
    libc::SYS_truncate,
    libc::SYS_unlinkat,
    libc::SYS_utimensat,
    libc::SYS_write,
    libc::SYS_writev,
];

/// The `*xattrat` calls of Linux 6.13 (same numbers on x86_64, aarch64 and riscv64):
/// PassthroughFs tries `getxattrat` first and falls back when the kernel lacks it.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
const XATTRAT: &[libc::c_long] = &[463, 464, 465, 466];
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
const XATTRAT: &[libc::c_long] = &[];

/// Installs the seccomp allow-list for this thread and every thread it starts later (call it
/// before the device starts its threads).
// `c_long` is `i64` on 64-bit targets only; the conversion is real elsewhere.
#[allow(clippy::useless_conversion)]
pub(crate) fn apply_seccomp(mode: Seccomp) -> Result<(), String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let mismatch = match mode {
        Seccomp::None => return Ok(()),
        Seccomp::Log => SeccompAction::Log,
        Seccomp::Kill => SeccompAction::KillProcess,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("seccomp: {e}"))?;
    let rules = ALLOWED
        .iter()
        .chain(ALLOWED_COMMON)
        .chain(XATTRAT)
        .map(|&nr| (i64::from(nr), Vec::new()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("seccomp program: {e}"))?;
    seccompiler::apply_filter(&program).map_err(|e| format!("seccomp: {e}"))
}
