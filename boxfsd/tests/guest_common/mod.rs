//! Harness code shared by the real-guest tests (`guest_e2e.rs`, `guest_workloads.rs`): paths,
//! the guest's dependencies, starting and stopping daemons, logs.
#![allow(dead_code)] // each test binary uses its own subset

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The uid/gid the daemon runs as when the tests run as root ("nobody").
pub const DAEMON_ID: u32 = 65534;

/// Writes to the stdout fd directly, not with `print!`: libtest captures `print!` output of
/// passing tests, and CI logs must show the summaries even without `--nocapture`.
pub fn say(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
}

/// The workspace root (the `boxfs` repository; this test lives in its `boxfsd` crate).
pub fn repo() -> PathBuf {
    let daemon = Path::new(env!("CARGO_MANIFEST_DIR"));
    daemon.parent().unwrap_or(daemon).to_path_buf()
}

pub fn guest_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let target = if target.is_relative() {
        repo().join(target)
    } else {
        target
    };
    target.join("guest")
}

pub fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn on_path(tool: &str) -> bool {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.iter().any(|d| d.join(tool).is_file())
}

/// The scripts find `pjdfstest` under `~/.cargo/bin` even when PATH lacks it.
pub fn script_command(script: &str) -> Command {
    let mut cmd = Command::new(repo().join("scripts/guest").join(script));
    let mut path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        path.push(PathBuf::from(home).join(".cargo/bin"));
    }
    cmd.env("PATH", std::env::join_paths(path).expect("PATH"));
    cmd
}

/// Whether `dir`'s filesystem accepts `user.*` extended attributes.
pub fn supports_user_xattrs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let name = c"user.boxfs-e2e-probe";
    // SAFETY: valid NUL-terminated strings and a 1-byte value buffer.
    let set = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    if set != 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    true
}

pub fn unique_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", nanos, std::process::id())
}

pub fn wait_for_socket(daemon: &mut Child, socket: &Path, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if boxfs::vhost::socket_listening(socket) {
            return Ok(());
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            return Err(format!(
                "daemon exited before creating its socket: {status}"
            ));
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "daemon did not create {} within {timeout:?}",
                socket.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub const EXITED_ON_DISCONNECT: &str = "exited when the VMM disconnected";

/// Waits for the daemon to exit by itself (it should, once the VMM disconnects), then SIGTERM,
/// then SIGKILL. Returns its status and how it ended. The waits are hang guards, long enough for
/// a loaded machine: how the daemon ended is what is checked, not how fast.
pub fn stop_daemon(daemon: &mut Child) -> (Option<ExitStatus>, &'static str) {
    let wait = |daemon: &mut Child, d: Duration| -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < d {
            if let Ok(Some(s)) = daemon.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    };
    if let Some(s) = wait(daemon, Duration::from_secs(120)) {
        return (Some(s), EXITED_ON_DISCONNECT);
    }
    let pid = daemon.id() as libc::pid_t;
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    if let Some(s) = wait(daemon, Duration::from_secs(60)) {
        return (Some(s), "exited on SIGTERM");
    }
    let _ = daemon.kill();
    (daemon.wait().ok(), "had to be killed (SIGKILL)")
}

pub fn copy_log(from: &Path, name: &str) -> PathBuf {
    let dir = guest_dir().join("logs");
    let _ = fs::create_dir_all(&dir);
    let to = dir.join(name);
    let _ = fs::copy(from, &to);
    to
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `scripts/guest/install-deps.sh` when a tool the guest tests need is missing (QEMU,
/// pjdfstest, the xattr tools, cpio or a kernel under /boot).
pub fn ensure_guest_deps() -> Result<(), String> {
    let tools = ["qemu-system-x86_64", "pjdfstest", "setfattr", "cpio"];
    if tools.iter().any(|t| !on_path(t))
        || !Path::new("/boot").read_dir().is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-")))
        })
    {
        install_deps()?;
    }
    Ok(())
}

/// Runs `scripts/guest/install-deps.sh` as CI does (no stdin, `CI=true`).
pub fn install_deps() -> Result<(), String> {
    say("guest tests: installing guest dependencies (scripts/guest/install-deps.sh)");
    let status = script_command("install-deps.sh")
        .env("CI", "true")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run install-deps.sh: {e}"))?;
    if !status.success() {
        return Err(format!("scripts/guest/install-deps.sh failed: {status}"));
    }
    Ok(())
}

/// Runs a `scripts/guest/` build script with `args` that prints a path as its last stdout
/// line, and returns that path (which must exist).
pub fn built_path(script: &str, args: &[&str]) -> Result<PathBuf, String> {
    let out = script_command(script)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !out.status.success() {
        return Err(format!("scripts/guest/{script} failed: {}", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().unwrap_or_default().trim().to_owned();
    if path.is_empty() || !Path::new(&path).exists() {
        return Err(format!("{script} printed no path: {stdout:?}"));
    }
    Ok(PathBuf::from(path))
}
