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
