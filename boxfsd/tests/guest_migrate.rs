//! Real-guest snapshot/restore and live migration (issue 18): QEMU 10 with a Linux 6.12 guest
//! (TCG), the device served by an unprivileged `boxfsd`, migrated with the vhost-user
//! device-state protocol.
//!
//! `#[ignore]`d like `guest_e2e` (they need QEMU and take minutes); `scripts/test.sh` runs them:
//!
//! ```text
//! cargo test -p boxfsd --test guest_migrate -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Snapshot to a file, for MemFs, PassthroughFs and the overlay (host lower, `memfs:` upper):
//! 1. `boxfsd` + QEMU (with a QMP socket) boot the guest, which runs
//!    `scripts/guest/guest/migrate.sh`: it holds files and a directory (its working
//!    directory), opens `data` and keeps it open, writes lines (fsynced, then not), reads
//!    part of it through a second descriptor, prints `BOXFS-MIGRATE: ready` and waits for a
//!    line on its console;
//! 2. QMP `migrate` to `exec:cat > FILE`; QEMU asks boxfsd for the device state
//!    (`SET_DEVICE_STATE_FD`), then the source QEMU quits and the source boxfsd exits;
//! 3. a new boxfsd (same flags, nothing carried over on the host for MemFs) and a new QEMU
//!    with `-incoming "exec:cat FILE"` restore; the host sends the line to the new console;
//! 4. the guest reads on from its descriptor's position, writes through the kept-open
//!    descriptor, lists its working directory and checks every byte (`PASS` lines).
//!
//! Live migration: the same between two boxfsd processes and two QEMUs over
//! `tcp:127.0.0.1:PORT` while a guest loop appends and reads back a line, over and over; the
//! loop must see no error and lose no line.
//!
//! Every test prints a `FIGURE` line: the device-state size and save/load times from the
//! daemons' logs and the downtime QEMU reports. Console and daemon logs go to
//! `target/guest/logs/migrate-*`.
#![cfg(target_os = "linux")]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The uid/gid the daemon runs as when the tests run as root ("nobody").
const DAEMON_ID: u32 = 65534;
/// Guest RAM.
const MEM: &str = "1024M";
/// Hang guard for one guest phase (TCG on a loaded 2-core host is slow).
const PHASE: Duration = Duration::from_secs(900);

/// TCG guests are CPU-heavy: one at a time.
static GUEST_LOCK: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    MemFs,
    Passthrough,
    /// DualFs: read-only host lower, in-memory upper.
    Overlay,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `migrate exec:cat > FILE`, both processes exit, restore with `-incoming`.
    Snapshot,
    /// `migrate tcp:127.0.0.1:PORT` between two running QEMUs and daemons.
    Live,
}

struct Case {
    backend: Backend,
    mode: Mode,
    /// Files the guest creates and keeps in its dentry cache (held lookups).
    held: u32,
    /// MiB of random data the guest writes into `fill`.
    fill_mib: u32,
    /// Between save and restore the host deletes `other`, which the guest holds open: that
    /// inode must fail, and nothing else (PassthroughFs snapshots only).
    host_change: bool,
}

#[test]
#[ignore = "needs QEMU; run by scripts/test.sh"]
fn guest_migrate_snapshot_memfs() {
    run(Case {
        backend: Backend::MemFs,
        mode: Mode::Snapshot,
        held: 100,
        fill_mib: 256,
        host_change: false,
    });
}

#[test]
#[ignore = "needs QEMU; run by scripts/test.sh"]
fn guest_migrate_snapshot_passthrough() {
    run(Case {
        backend: Backend::Passthrough,
        mode: Mode::Snapshot,
        held: 10_000,
        fill_mib: 0,
        host_change: false,
    });
}

#[test]
#[ignore = "needs QEMU; run by scripts/test.sh"]
fn guest_migrate_snapshot_passthrough_host_changed() {
    run(Case {
        backend: Backend::Passthrough,
        mode: Mode::Snapshot,
        held: 10,
        fill_mib: 0,
        host_change: true,
    });
}

#[test]
#[ignore = "needs QEMU; run by scripts/test.sh"]
fn guest_migrate_snapshot_overlay() {
    run(Case {
        backend: Backend::Overlay,
        mode: Mode::Snapshot,
        held: 100,
        fill_mib: 16,
        host_change: false,
    });
}

#[test]
#[ignore = "needs QEMU; run by scripts/test.sh"]
fn guest_migrate_live_memfs() {
    run(Case {
        backend: Backend::MemFs,
        mode: Mode::Live,
        held: 10,
        fill_mib: 0,
        host_change: false,
    });
}

#[test]
#[ignore = "needs QEMU; run by scripts/test.sh"]
fn guest_migrate_live_passthrough() {
    run(Case {
        backend: Backend::Passthrough,
        mode: Mode::Live,
        held: 10,
        fill_mib: 0,
        host_change: false,
    });
}

#[test]
#[ignore = "needs QEMU; run by scripts/test.sh"]
fn guest_migrate_live_overlay() {
    run(Case {
        backend: Backend::Overlay,
        mode: Mode::Live,
        held: 10,
        fill_mib: 4,
        host_change: false,
    });
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn repo() -> PathBuf {
    let daemon = Path::new(env!("CARGO_MANIFEST_DIR"));
    daemon.parent().unwrap_or(daemon).to_path_buf()
}

fn guest_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    if target.is_relative() {
        repo().join(target).join("guest")
    } else {
        target.join("guest")
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The initramfs (built or cached by build-initramfs.sh) and its kernel.
fn guest_image() -> (PathBuf, PathBuf) {
    static IMAGE: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let mut path: Vec<PathBuf> = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default();
            if let Some(home) = std::env::var_os("HOME") {
                path.push(PathBuf::from(home).join(".cargo/bin"));
            }
            let out = Command::new(repo().join("scripts/guest/build-initramfs.sh"))
                .env(
                    "PATH",
                    std::env::join_paths(path).map_err(|e| e.to_string())?,
                )
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run build-initramfs.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!("build-initramfs.sh failed: {}", out.status));
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            let initrd = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
            let kernel = fs::read_to_string(format!("{}.kernel", initrd.display()))
                .map_err(|e| format!("{}.kernel: {e}", initrd.display()))?;
            Ok((initrd, PathBuf::from(kernel.trim())))
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A running boxfsd.
struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(args: &[String], dir: &Path, name: &str) -> Daemon {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let log_file = fs::File::create(&log).expect("daemon log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_boxfsd"));
        cmd.arg("--socket-path")
            .arg(&socket)
            .args(args)
            .args(["--tag", "boxfs", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        if is_root() {
            cmd.uid(DAEMON_ID).gid(DAEMON_ID);
        }
        say(&format!("[migrate] {name}: boxfsd {}", args.join(" ")));
        let mut child = cmd.spawn().expect("start boxfsd");
        let start = Instant::now();
        while fs::symlink_metadata(&socket).is_err() {
            if let Ok(Some(s)) = child.try_wait() {
                panic!(
                    "{name} exited before creating its socket: {s}\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name}: no socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, socket, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the daemon to exit (it does once its VMM disconnects), SIGTERM after a hang
    /// guard; returns whether it exited by itself with status 0.
    fn finish(mut self) -> (bool, String) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            if let Ok(Some(s)) = self.child.try_wait() {
                return (s.success(), self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        (false, self.log())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running QEMU with its console log, stdin and QMP socket.
struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    qmp: PathBuf,
}

impl Vm {
    fn start(
        daemon: &Daemon,
        dir: &Path,
        name: &str,
        params: &[String],
        incoming: Option<&str>,
    ) -> Vm {
        let (initrd, kernel) = guest_image();
        let log = dir.join(format!("{name}.console"));
        let qmp = dir.join(format!("{name}.qmp"));
        let log_file = fs::File::create(&log).expect("console log");
        let append = format!(
            "console=ttyS0 quiet panic=-1 no_timer_check reboot=t boxfs.tag=boxfs \
             boxfs.scripts=migrate {}",
            params.join(" ")
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", MEM])
            .arg("-object")
            .arg(format!("memory-backend-memfd,id=mem,size={MEM},share=on"))
            .args(["-numa", "node,memdev=mem", "-chardev"])
            .arg(format!("socket,id=c0,path={}", daemon.socket.display()))
            .args([
                "-device",
                "vhost-user-fs-pci,chardev=c0,tag=boxfs,queue-size=1024",
            ])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-nic", "none", "-nographic", "-no-reboot", "-qmp"])
            .arg(format!("unix:{},server,wait=off", qmp.display()))
            .arg("-append")
            .arg(append);
        if let Some(uri) = incoming {
            cmd.args(["-incoming", uri]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(log_file.try_clone().expect("dup log"))
            .stderr(log_file);
        let mut child = cmd.spawn().expect("start qemu-system-x86_64");
        let stdin = child.stdin.take();
        Vm {
            child,
            stdin,
            log,
            qmp,
        }
    }

    fn console(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .replace('\r', "")
    }

    /// Waits until the console shows a line starting with `needle`.
    fn wait_line(&mut self, needle: &str, what: &str) {
        let start = Instant::now();
        loop {
            if self.console().lines().any(|l| l.starts_with(needle)) {
                return;
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!(
                    "QEMU exited ({s}) before {what}\n--- console ---\n{}",
                    tail(&self.console(), 40)
                );
            }
            assert!(
                start.elapsed() < PHASE,
                "{what}: not seen within {PHASE:?}\n--- console ---\n{}",
                tail(&self.console(), 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("QEMU stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the guest console");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        while start.elapsed() < PHASE {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("QEMU did not exit\n{}", tail(&self.console(), 40));
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A QMP session.
struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let start = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "QMP {}: {e}",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let mut q = Qmp {
            r: BufReader::new(s.try_clone().expect("dup QMP")),
            w: s,
        };
        q.read(); // greeting
        q.cmd("qmp_capabilities", None);
        q
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("QMP read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP: {e}: {line:?}"))
    }

    fn cmd(&mut self, name: &str, args: Option<Value>) -> Value {
        self.try_cmd(name, args)
            .unwrap_or_else(|e| panic!("QMP {name}: {e}"))
    }

    /// A command; `Err` if QEMU closed the connection (it exited).
    fn try_cmd(&mut self, name: &str, args: Option<Value>) -> std::io::Result<Value> {
        let mut m = json!({ "execute": name });
        if let Some(a) = args {
            m["arguments"] = a;
        }
        writeln!(self.w, "{m}")?;
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let r: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("QMP {name}: {e}: {line:?}"));
            if r.get("event").is_some() {
                continue;
            }
            if let Some(e) = r.get("error") {
                panic!("QMP {name}: {e}");
            }
            return Ok(r["return"].clone());
        }
    }

    /// Polls `query-migrate` until the migration ends; returns its last answer. A QEMU that
    /// exits meanwhile is reported (with its status and console) as the answer's `status`.
    fn wait_migration(&mut self, vm: &mut Vm) -> Value {
        let start = Instant::now();
        loop {
            let r = match self.try_cmd("query-migrate", None) {
                Ok(r) => r,
                Err(e) => {
                    let status = vm.child.wait().map(|s| s.to_string());
                    return json!({
                        "status": format!("QEMU gone ({e}), exit status {status:?}"),
                        "console": tail(&vm.console(), 10),
                    });
                }
            };
            if let Some("completed" | "failed" | "cancelled") = r["status"].as_str() {
                return r;
            }
            assert!(start.elapsed() < PHASE, "migration did not end: {r}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `(bytes, ms)` of the daemon's log line "device state saved|loaded bytes=N ms=M".
fn state_figure(log: &str, what: &str) -> Option<(u64, f64)> {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("device state {what}")))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_owned)
    };
    Some((field("bytes=")?.parse().ok()?, field("ms=")?.parse().ok()?))
}

fn lines(from: u32, to: u32, tag: &str) -> String {
    (from..to).map(|i| format!("line-{i}-{tag}\n")).collect()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn run(case: Case) {
    let _serial = GUEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let label = format!("{:?}-{:?}", case.backend, case.mode).to_lowercase();
    let tmp = tempfile::Builder::new()
        .prefix("boxfs-migrate-")
        .tempdir()
        .expect("tempdir");
    let dir = tmp.path();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let share = dir.join("share");
    let lower = dir.join("lower");
    let run_dir = dir.join("run");
    for d in [&share, &lower, &run_dir] {
        fs::create_dir(d).expect("mkdir");
        if is_root() {
            chown(d, Some(DAEMON_ID), Some(DAEMON_ID)).expect("chown");
        }
    }
    let _logs = KeepLogs {
        dir: run_dir.clone(),
        label: label.clone(),
    };
    fs::write(lower.join("from-lower.txt"), "lower layer\n").expect("lower file");
    let args: Vec<String> = match case.backend {
        Backend::MemFs => vec!["--memfs-size".into(), "1G".into()],
        Backend::Passthrough => vec!["--shared-dir".into(), share.display().to_string()],
        Backend::Overlay => vec![
            "--lower".into(),
            lower.display().to_string(),
            "--upper".into(),
            "memfs:512M".into(),
        ],
    };
    let mut params = vec![
        format!("boxfs.held={}", case.held),
        format!("boxfs.fill_mib={}", case.fill_mib),
    ];
    if case.mode == Mode::Live {
        params.push("boxfs.mode=live".into());
    }
    if case.host_change {
        assert_eq!(case.backend, Backend::Passthrough);
        params.push("boxfs.changed=1".into());
    }

    let d1 = Daemon::start(&args, &run_dir, "src-boxfsd");
    let mut vm1 = Vm::start(&d1, &run_dir, "src-qemu", &params, None);
    vm1.wait_line("BOXFS-MIGRATE: ready", "the guest's ready line");
    for l in vm1.console().lines().filter(|l| l.starts_with("INFO")) {
        say(&format!("[{label}] source: {l}"));
    }
    let mut q1 = Qmp::connect(&vm1.qmp);

    let state_file = run_dir.join("vm.state");
    let (d2, mut vm2, result) = match case.mode {
        Mode::Snapshot => {
            let uri = format!("exec:cat > {}", state_file.display());
            q1.cmd("migrate", Some(json!({ "uri": uri })));
            let r = q1.wait_migration(&mut vm1);
            (None, None, r)
        }
        Mode::Live => {
            let port = free_port();
            let d2 = Daemon::start(&args, &run_dir, "dst-boxfsd");
            let uri = format!("tcp:127.0.0.1:{port}");
            let vm2 = Vm::start(&d2, &run_dir, "dst-qemu", &params, Some(&uri));
            // The destination listens once its QMP socket is up.
            let _ = Qmp::connect(&vm2.qmp);
            q1.cmd("migrate", Some(json!({ "uri": uri })));
            let r = q1.wait_migration(&mut vm1);
            (Some(d2), Some(vm2), r)
        }
    };
    if result["status"] != "completed" {
        let log = d1.log();
        let hint = if log.contains("Operation not supported") {
            "\nThe filesystem cannot save its state (EOPNOTSUPP): this backend's \
             DynFileSystem::save_state is not implemented."
        } else {
            ""
        };
        panic!(
            "[{label}] migration failed: {result}{hint}\n--- source daemon log ---\n{}",
            tail(&log, 30)
        );
    }
    let downtime = result["downtime"].as_u64().unwrap_or_default();
    let total = result["total-time"].as_u64().unwrap_or_default();
    // QEMU sometimes closes its monitor by itself right after a completed migration; then
    // its exit status must say it ended well.
    let quit = q1.try_cmd("quit", None);
    let status = vm1.wait_exit();
    if let Err(e) = quit {
        say(&format!(
            "[{label}] the source QEMU went away before `quit` ({e}): {status}"
        ));
        assert!(
            status.success(),
            "[{label}] the source QEMU failed after the migration: {status}\n{}",
            tail(&vm1.console(), 20)
        );
    }
    let (d1_clean, d1_log) = d1.finish();
    let _ = fs::copy(
        d1_log_path(&run_dir, "src-boxfsd"),
        guest_log(&label, "src-boxfsd.log"),
    );
    let _ = fs::copy(&vm1.log, guest_log(&label, "src-console.log"));
    assert!(
        d1_clean,
        "[{label}] source daemon did not exit cleanly:\n{}",
        tail(&d1_log, 20)
    );
    let saved = state_figure(&d1_log, "saved")
        .unwrap_or_else(|| panic!("[{label}] no 'device state saved' in the source log"));

    if case.host_change {
        fs::remove_file(share.join("mig/other")).expect("delete mig/other on the host");
    }
    let (d2, mut vm2) = match (d2, vm2.take()) {
        (Some(d), Some(v)) => (d, v),
        _ => {
            let d2 = Daemon::start(&args, &run_dir, "dst-boxfsd");
            let uri = format!("exec:cat {}", state_file.display());
            let vm2 = Vm::start(&d2, &run_dir, "dst-qemu", &params, Some(&uri));
            (d2, vm2)
        }
    };
    let mut q2 = Qmp::connect(&vm2.qmp);
    let start = Instant::now();
    loop {
        let s = q2.cmd("query-status", None);
        if s["status"] == "running" {
            break;
        }
        let m = q2.cmd("query-migrate", None);
        assert!(
            m["status"] != "failed",
            "[{label}] incoming migration failed: {m}\n--- destination daemon ---\n{}\n--- console ---\n{}",
            tail(&d2.log(), 20),
            tail(&vm2.console(), 20)
        );
        assert!(
            start.elapsed() < PHASE,
            "[{label}] destination never ran: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    vm2.send_line("go");
    vm2.wait_line("BOXFS-GUEST-DONE", "the end of the guest run");
    vm2.wait_exit();
    let console = vm2.console();
    let (d2_clean, d2_log) = d2.finish();
    let _ = fs::copy(&vm2.log, guest_log(&label, "dst-console.log"));
    let _ = fs::write(guest_log(&label, "dst-boxfsd.log"), &d2_log);
    let loaded = state_figure(&d2_log, "loaded").unwrap_or_else(|| {
        panic!(
            "[{label}] no 'device state loaded' in the destination log:\n{}",
            tail(&d2_log, 20)
        )
    });

    let fails: Vec<&str> = console.lines().filter(|l| l.starts_with("FAIL")).collect();
    let passes: Vec<&str> = console.lines().filter(|l| l.starts_with("PASS")).collect();
    for l in console.lines().filter(|l| l.starts_with("INFO")) {
        say(&format!("[{label}] {l}"));
    }
    say(&format!(
        "FIGURE [{label}] held={} fill_mib={} state_bytes={} save_ms={:.1} load_ms={:.1} \
         qemu_downtime_ms={downtime} qemu_total_ms={total} state_file_bytes={}",
        case.held,
        case.fill_mib,
        saved.0,
        saved.1,
        loaded.1,
        fs::metadata(&state_file).map(|m| m.len()).unwrap_or(0)
    ));
    assert_eq!(
        saved.0, loaded.0,
        "[{label}] saved and loaded state sizes differ"
    );
    assert!(
        fails.is_empty(),
        "[{label}] guest checks failed:\n{}\n--- console ---\n{}",
        fails.join("\n"),
        tail(&console, 40)
    );
    let mut want = vec![
        "read_from_position",
        "list_held_dir",
        "all_bytes",
        "held_files",
    ];
    if case.fill_mib > 0 {
        want.push("fill_content");
    }
    if case.mode == Mode::Live {
        want.push("live_lines");
    }
    want.push(if case.host_change {
        "changed_file_error"
    } else {
        "other_file"
    });
    for w in want {
        assert!(
            passes
                .iter()
                .any(|p| p.split_whitespace().nth(1) == Some(w)),
            "[{label}] no PASS {w}\n--- console ---\n{}",
            tail(&console, 40)
        );
    }
    assert!(
        d2_clean,
        "[{label}] destination daemon did not exit cleanly:\n{}",
        tail(&d2_log, 20)
    );
    if case.backend == Backend::Passthrough {
        // Every byte reached the host directory, in order.
        let mut expect = lines(0, 200, "synced") + &lines(200, 400, "unsynced");
        expect.push_str("written-after-restore\n");
        let got = fs::read_to_string(share.join("mig/data")).expect("host copy of data");
        assert!(
            got == expect,
            "[{label}] host file differs from what the guest wrote"
        );
    }
}

/// A VM saved to a file whose boxfs device state is then damaged (one bit flipped inside the
/// stream, found by its magic): the destination's `CHECK_DEVICE_STATE` fails, QEMU abandons
/// the incoming migration, and the destination daemon reports the bad stream.
#[test]
#[ignore = "needs QEMU; run by scripts/test.sh"]
fn guest_migrate_corrupt_state_is_rejected() {
    let _serial = GUEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::Builder::new()
        .prefix("boxfs-migrate-")
        .tempdir()
        .expect("tempdir");
    let run_dir = tmp.path().join("run");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::create_dir(&run_dir).expect("mkdir");
    if is_root() {
        chown(&run_dir, Some(DAEMON_ID), Some(DAEMON_ID)).expect("chown");
    }
    let args = vec!["--memfs-size".to_string(), "256M".to_string()];
    let params = vec!["boxfs.held=10".to_string(), "boxfs.fill_mib=1".to_string()];
    let d1 = Daemon::start(&args, &run_dir, "src-boxfsd");
    let mut vm1 = Vm::start(&d1, &run_dir, "src-qemu", &params, None);
    vm1.wait_line("BOXFS-MIGRATE: ready", "the guest's ready line");
    let mut q1 = Qmp::connect(&vm1.qmp);
    let state_file = run_dir.join("vm.state");
    let uri = format!("exec:cat > {}", state_file.display());
    q1.cmd("migrate", Some(json!({ "uri": uri })));
    let r = q1.wait_migration(&mut vm1);
    assert_eq!(r["status"], "completed", "{r}");
    q1.cmd("quit", None);
    vm1.wait_exit();
    let _ = d1.finish();

    let mut bytes = fs::read(&state_file).expect("state file");
    let at = bytes
        .windows(8)
        .position(|w| w == b"BOXFSDEV")
        .expect("the boxfs device state inside QEMU's stream");
    // Past the preamble and the first frame's length: inside the checksummed payload.
    bytes[at + 40] ^= 0x04;
    fs::write(&state_file, bytes).expect("write damaged state");

    let d2 = Daemon::start(&args, &run_dir, "dst-boxfsd");
    let uri = format!("exec:cat {}", state_file.display());
    let mut vm2 = Vm::start(&d2, &run_dir, "dst-qemu", &params, Some(&uri));
    // QEMU exits when an incoming migration fails; the guest never runs.
    vm2.wait_exit();
    let console = vm2.console();
    assert!(
        !console.contains("BOXFS-MIGRATE: resumed"),
        "the guest ran on a damaged state"
    );
    assert!(
        console.contains("back-end state"),
        "QEMU did not report the device's load error:\n{}",
        tail(&console, 20)
    );
    let (_, log) = d2.finish();
    assert!(
        log.contains("loading the device state failed") && log.contains("checksum"),
        "destination daemon log:\n{}",
        tail(&log, 20)
    );
}

/// Copies the daemons' and consoles' logs to `target/guest/logs/` when the test ends, also
/// when it fails (before the temporary directory goes).
struct KeepLogs {
    dir: PathBuf,
    label: String,
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") || name.ends_with(".console") {
                let _ = fs::copy(e.path(), guest_log(&self.label, &name));
            }
        }
    }
}

fn d1_log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

fn guest_log(label: &str, name: &str) -> PathBuf {
    let dir = guest_dir().join("logs");
    let _ = fs::create_dir_all(&dir);
    dir.join(format!("migrate-{label}-{name}"))
}

#[test]
fn state_figure_parses_the_daemon_log_line() {
    let log = "2026-12-01T06:59:33Z  INFO device state saved bytes=15531 ms=3.81\n";
    assert_eq!(state_figure(log, "saved"), Some((15531, 3.81)));
    assert_eq!(state_figure(log, "loaded"), None);
}
