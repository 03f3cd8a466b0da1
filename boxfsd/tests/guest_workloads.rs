//! Real workloads in a real guest: a Linux guest under QEMU (TCG) boots a Debian userland from a
//! boxfs overlay root and runs git, tar, cp -a, Python, SQLite, mmap and big-directory workloads
//! (`scripts/guest/guest/workloads.sh`) on three targets: the overlay root itself, a
//! PassthroughFs share and a MemFs share (the second and third virtio-fs devices). Every daemon
//! runs unprivileged (uid/gid 65534 when the test runs as root).
//!
//! `#[ignore]`d like `guest_e2e` (QEMU, minutes under TCG); `scripts/test.sh` runs it:
//!
//! ```text
//! cargo test -p boxfsd --test guest_workloads -- --ignored --nocapture
//! ```
//!
//! 1. `scripts/guest/build-userland.sh` (cached under `target/guest/`) gives the root directory;
//! 2. three `boxfsd`: `--lower ROOTFS --upper memfs:1G` (the root, tag `root`), `--shared-dir`
//!    (tag `pt`; on a private tmpfs when the test runs as root, so statfs is exact) and
//!    `--memfs-size 1G` (tag `mf`);
//! 3. `scripts/guest/run-guest.sh --rootfs ROOTFS` boots with `root=root rootfstype=virtiofs`;
//! 4. asserts every step of every target printed `PASS`, none `FAIL`, the guest reported its boot
//!    time, the daemons exited cleanly when QEMU went away, and the lower layer is unchanged.
//!
//! Sizes (environment, default the CI sizes): `BOXFS_WL_FILES` (500), `BOXFS_WL_TX` (20),
//! `BOXFS_WL_BIGDIR` (2000), `BOXFS_WL_PYMODS` (100); `BOXFS_E2E_TIMEOUT` (seconds, 2400).
//! Logs: `target/guest/logs/workloads-{console,root,pt,mf}.log`.
#![cfg(target_os = "linux")]

mod guest_common;
use guest_common::*;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Steps every target runs, in order (`workloads.sh`).
const STEPS: &[&str] = &[
    "py_stdlib",
    "create",
    "git_commit",
    "git_status",
    "git_edit",
    "git_checkout",
    "git_fsck",
    "tar",
    "cp_a",
    "py_compile",
    "sqlite_wal",
    "sqlite_journal",
    "sqlite_kill",
    "mmap",
    "bigdir",
    "rm_rf",
];
/// Steps only the shares run (the root imports its own stdlib in place).
const SHARE_STEPS: &[&str] = &["stdlib_copy"];
const TARGETS: &[&str] = &["root", "passthrough", "memfs"];

/// What the console says about the workloads.
#[derive(Default, Debug)]
struct WorkloadReport {
    passed: Vec<String>,
    failed: Vec<String>,
    /// (target, step, seconds, interrupts)
    times: Vec<(String, String, f64, u64)>,
    boot_to_shell: Option<String>,
    done: Option<String>,
    guest_done: bool,
    infos: Vec<String>,
}

fn parse_workloads(log: &str) -> WorkloadReport {
    let mut r = WorkloadReport::default();
    for line in log.lines() {
        let line = line.trim_end_matches('\r').trim_end();
        if let Some(rest) = line.strip_prefix("PASS ") {
            r.passed
                .push(rest.split_whitespace().next().unwrap_or("").to_owned());
        } else if let Some(rest) = line.strip_prefix("FAIL ") {
            r.failed.push(rest.to_owned());
        } else if let Some(rest) = line.strip_prefix("WL-TIME ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let [t, s, secs, irq] = f[..] {
                r.times.push((
                    t.to_owned(),
                    s.to_owned(),
                    secs.parse().unwrap_or(f64::NAN),
                    irq.parse().unwrap_or(0),
                ));
            }
        } else if let Some(rest) = line.strip_prefix("BOXFS-GUEST: boot-to-shell ") {
            r.boot_to_shell = Some(rest.to_owned());
        } else if line.starts_with("WORKLOADS-DONE") {
            r.done = Some(line.to_owned());
        } else if line.starts_with("BOXFS-GUEST-DONE") {
            r.guest_done = true;
        } else if let Some(rest) = line.strip_prefix("INFO ") {
            r.infos.push(rest.to_owned());
        }
    }
    r
}

/// What a run must show: each target's steps passed, nothing failed, the script finished.
fn check_report(r: &WorkloadReport) -> Vec<String> {
    let mut problems = Vec::new();
    if !r.guest_done {
        problems.push("guest did not reach BOXFS-GUEST-DONE".to_owned());
    }
    match &r.done {
        Some(d) if d.ends_with(" fail=0") => {}
        Some(d) => problems.push(format!("workloads ended with failures: {d}")),
        None => problems.push("no WORKLOADS-DONE line".to_owned()),
    }
    if r.boot_to_shell.is_none() {
        problems.push("the guest did not report its boot time (no boot-to-shell line)".to_owned());
    }
    for f in &r.failed {
        problems.push(format!("FAIL {f}"));
    }
    for t in TARGETS {
        let shares = if *t == "root" { &[][..] } else { SHARE_STEPS };
        for s in shares.iter().chain(STEPS) {
            let name = format!("wl/{t}/{s}");
            if !r.passed.contains(&name) && !r.failed.iter().any(|f| f.starts_with(&name)) {
                problems.push(format!("step {name} never ran"));
            }
        }
    }
    problems
}

#[test]
fn workloads_console_parser() {
    let mut log = String::from("BOXFS-GUEST: boot-to-shell 6.1s\r\n");
    for t in TARGETS {
        let shares = if *t == "root" { &[][..] } else { SHARE_STEPS };
        for s in shares.iter().chain(STEPS) {
            log.push_str(&format!(
                "WL-TIME {t} {s} 1.50 42\nPASS wl/{t}/{s} seconds=1.50\n"
            ));
        }
    }
    log.push_str("WORKLOADS-DONE pass=50 fail=0\nBOXFS-GUEST-DONE ok\n");
    let r = parse_workloads(&log);
    assert_eq!(r.boot_to_shell.as_deref(), Some("6.1s"));
    assert_eq!(r.times.len(), STEPS.len() * 3 + 2);
    assert_eq!(r.times[0], ("root".into(), "py_stdlib".into(), 1.5, 42));
    assert!(check_report(&r).is_empty(), "{:?}", check_report(&r));
    // A failed step, a missing step and failures in the summary are all reported.
    let bad = log
        .replace(
            "PASS wl/memfs/tar seconds=1.50",
            "FAIL wl/memfs/tar rc=1 differs",
        )
        .replace("PASS wl/root/mmap seconds=1.50\n", "")
        .replace("fail=0", "fail=1");
    let problems = check_report(&parse_workloads(&bad));
    assert!(
        problems.iter().any(|p| p.contains("FAIL wl/memfs/tar")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("wl/root/mmap never ran")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("fail=1")),
        "{problems:?}"
    );
}

/// One running daemon.
struct Daemon {
    label: &'static str,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

fn start_boxfsd(
    label: &'static str,
    program: &Path,
    work: &Path,
    args: Vec<OsString>,
    unprivileged: bool,
) -> Daemon {
    let socket = work.join(format!("{label}.sock"));
    let log = work.join(format!("{label}-daemon.log"));
    let log_file = fs::File::create(&log).expect("daemon log");
    let mut cmd = Command::new(program);
    cmd.arg("--socket-path")
        .arg(&socket)
        .args(&args)
        .args(["--cache", "auto", "--tag", label])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("dup log"))
        .stderr(log_file);
    if unprivileged {
        cmd.uid(DAEMON_ID).gid(DAEMON_ID);
    }
    say(&format!(
        "[workloads] {label}: boxfsd --socket-path {} {} --cache auto --tag {label}{}",
        socket.display(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        if unprivileged {
            " (as uid/gid 65534)"
        } else {
            ""
        }
    ));
    let mut child = cmd.spawn().expect("start boxfsd");
    if let Err(e) = wait_for_socket(&mut child, &socket, Duration::from_secs(30)) {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "[workloads] {label}: {e}\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Daemon {
        label,
        child,
        socket,
        log,
    }
}

/// A tmpfs mounted for the PassthroughFs share (exact statfs, user xattrs), unmounted on drop.
struct TmpfsMount(PathBuf);

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every entry under `root` by path, type, mode, size and mtime (not contents: the tree is
/// large, and a write would change size or mtime).
fn tree_metadata(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir").flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push(format!(
                "{} {:o} {} {}.{}",
                p.strip_prefix(root).unwrap_or(&p).display(),
                m.mode(),
                if m.is_dir() { 0 } else { m.size() },
                m.mtime(),
                m.mtime_nsec()
            ));
        }
    }
    out.sort();
    out
}

/// Waits for the guest; stops QEMU if a daemon dies (a dead daemon would leave the guest waiting
/// on its requests until the hard timeout).
fn watch(guest: &mut Child, daemons: &mut [Daemon]) -> (ExitStatus, Vec<String>) {
    let mut died: Vec<String> = Vec::new();
    let mut exited: Vec<&'static str> = Vec::new();
    let mut first_death: Option<Instant> = None;
    loop {
        if let Some(status) = guest.try_wait().expect("wait run-guest.sh") {
            return (status, died);
        }
        for d in daemons.iter_mut() {
            if exited.contains(&d.label) {
                continue;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                // A clean exit is the daemon seeing QEMU go away as the guest powers off;
                // anything else is a crash. Either way a guest still running after a minute
                // is waiting on a daemon that is gone.
                if !status.success() {
                    died.push(format!("{} exited while the guest ran: {status}", d.label));
                }
                first_death.get_or_insert_with(Instant::now);
                exited.push(d.label);
            }
        }
        if first_death.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
            say("[workloads] a daemon died: stopping QEMU");
            let pgid = guest.id() as libc::pid_t;
            // SAFETY: signalling the process group of our own child.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            return (guest.wait().expect("wait run-guest.sh"), died);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs QEMU; run by scripts/test.sh"]
fn guest_workloads() {
    ensure_guest_deps().unwrap_or_else(|e| panic!("{e}"));
    let rootfs = built_path("build-userland.sh", &[]).unwrap_or_else(|e| panic!("{e}"));
    let unprivileged = is_root() && env_nonempty("BOXFS_E2E_PRIVILEGED").is_none();

    let work = tempfile::Builder::new()
        .prefix("boxfs-wl-")
        .tempdir()
        .expect("tempdir");
    let share = work.path().join("share");
    fs::create_dir(&share).expect("mkdir share");
    // The PassthroughFs share on a tmpfs of its own when we may mount one: its statfs then
    // changes only with the workload, and the "back to the baseline" check is exact.
    let mut approx_statfs = true;
    let _tmpfs = if is_root()
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2G,mode=0755", "boxfs-wl"])
            .arg(&share)
            .status()
            .is_ok_and(|s| s.success())
    {
        approx_statfs = !supports_user_xattrs(&share);
        Some(TmpfsMount(share.clone()))
    } else {
        None
    };
    if !supports_user_xattrs(&share) {
        panic!(
            "{}: no user xattrs (PassthroughFs keeps ownership in them)",
            share.display()
        );
    }
    if unprivileged {
        chown(work.path(), Some(DAEMON_ID), Some(DAEMON_ID)).expect("chown work");
        chown(&share, Some(DAEMON_ID), Some(DAEMON_ID)).expect("chown share");
    }
    let lower_before = tree_metadata(&rootfs);

    // The unprivileged daemon may not reach the build tree: run a copy it can read.
    let program = work.path().join("boxfsd");
    fs::copy(env!("CARGO_BIN_EXE_boxfsd"), &program).expect("copy boxfsd");
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).expect("chmod");

    let mut daemons = vec![
        start_boxfsd(
            "root",
            &program,
            work.path(),
            vec![
                "--lower".into(),
                rootfs.clone().into(),
                "--upper".into(),
                "memfs:1G".into(),
            ],
            unprivileged,
        ),
        start_boxfsd(
            "pt",
            &program,
            work.path(),
            vec!["--shared-dir".into(), share.clone().into()],
            unprivileged,
        ),
        start_boxfsd(
            "mf",
            &program,
            work.path(),
            vec!["--memfs-size".into(), "1G".into()],
            unprivileged,
        ),
    ];

    let console = work.path().join("console.log");
    let timeout = env_nonempty("BOXFS_E2E_TIMEOUT").unwrap_or_else(|| "2400".to_owned());
    let mut run = script_command("run-guest.sh");
    run.arg("--rootfs")
        .arg(&rootfs)
        .arg("--socket")
        .arg(&daemons[0].socket)
        .args(["--tag", "root", "--scripts", "workloads", "--mem", "1536M"])
        .arg("--extra-share")
        .arg(format!("{},pt", daemons[1].socket.display()))
        .arg("--extra-share")
        .arg(format!("{},mf", daemons[2].socket.display()))
        .args([
            "--param",
            "wl_targets=root,passthrough:pt,memfs:mf",
            "--timeout",
            &timeout,
            "--quiet",
        ])
        .arg("--log")
        .arg(&console)
        .stdin(Stdio::null());
    for (env, param) in [
        ("BOXFS_WL_FILES", "wl_files"),
        ("BOXFS_WL_TX", "wl_tx"),
        ("BOXFS_WL_BIGDIR", "wl_bigdir"),
        ("BOXFS_WL_PYMODS", "wl_pymods"),
    ] {
        if let Some(v) = env_nonempty(env) {
            run.arg("--param").arg(format!("{param}={v}"));
        }
    }
    if approx_statfs {
        run.args(["--param", "wl_approx_statfs=passthrough"]);
    }
    run.process_group(0);
    let started = Instant::now();
    let mut guest = run.spawn().expect("run-guest.sh");
    let (status, died) = watch(&mut guest, &mut daemons);
    let secs = started.elapsed().as_secs_f64();

    let mut problems: Vec<String> = died;
    let mut daemon_logs = String::new();
    for d in daemons.iter_mut() {
        let (st, how) = stop_daemon(&mut d.child);
        match st {
            Some(s) if s.success() && how == EXITED_ON_DISCONNECT => {}
            other => problems.push(format!("{} daemon: {other:?}, {how}", d.label)),
        }
        if fs::symlink_metadata(&d.socket).is_ok() {
            problems.push(format!("{} daemon left its socket behind", d.label));
        }
        let text = fs::read_to_string(&d.log).unwrap_or_default();
        daemon_logs.push_str(&format!("--- {} ---\n{}\n", d.label, tail(&text, 15)));
        copy_log(&d.log, &format!("workloads-{}.log", d.label));
    }
    let text = fs::read_to_string(&console).unwrap_or_default();
    let console_copy = copy_log(&console, "workloads-console.log");
    let report = parse_workloads(&text);

    let mut out = format!(
        "[workloads] guest run {secs:.1}s, run-guest.sh {status}, boot to shell {}\n",
        report.boot_to_shell.as_deref().unwrap_or("?")
    );
    for i in &report.infos {
        out.push_str(&format!("[workloads] {i}\n"));
    }
    out.push_str(&format!(
        "[workloads] {:<16} {:>10} {:>10} {:>10}   (seconds; irqs in the guest)\n",
        "step", "root", "passthru", "memfs"
    ));
    let mut names: Vec<&str> = SHARE_STEPS.to_vec();
    names.extend_from_slice(STEPS);
    for s in names {
        let cell = |t: &str| {
            report
                .times
                .iter()
                .find(|(tt, ss, _, _)| tt == t && ss == s)
                .map(|(_, _, secs, irq)| format!("{secs:.1}/{irq}"))
                .unwrap_or_else(|| "-".to_owned())
        };
        out.push_str(&format!(
            "[workloads] {s:<16} {:>10} {:>10} {:>10}\n",
            cell("root"),
            cell("passthrough"),
            cell("memfs")
        ));
    }
    out.push_str(&format!(
        "[workloads] console log {}\n",
        console_copy.display()
    ));
    say(&out);

    problems.extend(check_report(&report));
    let lower_after = tree_metadata(&rootfs);
    if lower_after != lower_before {
        let changed: Vec<&String> = lower_after
            .iter()
            .filter(|a| !lower_before.contains(a))
            .chain(lower_before.iter().filter(|b| !lower_after.contains(b)))
            .take(8)
            .collect();
        problems.push(format!("the overlay's lower layer changed: {changed:?}"));
    }
    if !problems.is_empty() {
        panic!(
            "[workloads] {} problem(s):\n- {}\n--- last console lines ---\n{}\n{daemon_logs}",
            problems.len(),
            problems.join("\n- "),
            tail(&text, 30)
        );
    }
}
