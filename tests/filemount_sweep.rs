//! The crash sweep of file-mount staging directories, with real processes: a living owner's
//! directory is never removed, a crashed (SIGKILLed, aborted) owner's directory is.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use boxfs::filemount::{sweep, FileMount, FileMountOptions, FileMounts};

const CHILD_ENV: &str = "BOXFS_FM_SWEEP_CHILD";

/// Not a test on its own: the body of the child processes below. With `BOXFS_FM_SWEEP_CHILD`
/// set to `RUNTIME_DIR:MODE` it stages a mount, prints its staging directory, then either
/// waits for a line on stdin and exits normally (`wait`), or aborts at once (`abort`).
#[test]
fn child_process_body() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (rt, mode) = spec.rsplit_once(':').expect("RUNTIME_DIR:MODE");
    let rt = PathBuf::from(rt);
    let file = rt.parent().expect("parent").join("file.txt");
    let m = FileMount::stage(&file, "/f.txt", &FileMountOptions::new().runtime_dir(&rt))
        .expect("stage");
    // Straight to fd 1: libtest captures `println!` even in a child.
    let mut out = std::io::stdout().lock();
    writeln!(out, "STAGED {}", m.staging_dir().display()).expect("write");
    out.flush().expect("flush");
    drop(out);
    match mode {
        "abort" => std::process::abort(),
        _ => {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
    }
    drop(m);
}

/// Starts a child that stages a mount under `rt`; returns it and its staging directory.
fn spawn_owner(rt: &Path, mode: &str) -> (Child, PathBuf) {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "--exact",
            "child_process_body",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}:{mode}", rt.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    while let Some(line) = lines.next() {
        let line = line.expect("read child");
        // libtest's "test child_process_body ... " may precede it on the same line.
        if let Some(at) = line.find("STAGED ") {
            // Keep reading, so the child's later output does not fail with EPIPE.
            std::thread::spawn(move || lines.for_each(drop));
            return (child, PathBuf::from(&line[at + "STAGED ".len()..]));
        }
    }
    panic!("child exited without staging: {:?}", child.wait());
}

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("file.txt"), "x").expect("file");
    let rt = dir.path().join("run");
    (dir, rt)
}

#[test]
fn a_living_owners_directory_is_never_swept() {
    let (_dir, rt) = setup();
    let (mut child, staged) = spawn_owner(&rt, "wait");
    assert!(staged.join("share/file.txt").exists());
    let report = sweep(&rt).expect("sweep");
    assert_eq!(report.in_use, vec![staged.clone()]);
    assert!(report.removed.is_empty());
    let mounts = FileMounts::new(&rt).expect("a new user of the runtime dir");
    assert_eq!(mounts.swept().in_use, vec![staged.clone()]);
    assert!(staged.exists(), "still there while its owner lives");
    // The owner exits normally: it removes its own directory.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"done\n")
        .expect("write");
    assert!(child.wait().expect("wait").success());
    assert!(!staged.exists());
}

#[test]
fn a_killed_owners_directory_is_swept_on_the_next_start() {
    let (_dir, rt) = setup();
    let (mut child, staged) = spawn_owner(&rt, "wait");
    let (mut other, other_staged) = spawn_owner(&rt, "wait");
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert!(staged.exists(), "a crash leaves the directory behind");
    let mounts = FileMounts::new(&rt).expect("next start");
    assert_eq!(mounts.swept().removed, vec![staged.clone()]);
    assert_eq!(mounts.swept().in_use, vec![other_staged.clone()]);
    assert!(!staged.exists());
    assert!(
        other_staged.join("share/file.txt").exists(),
        "the living one is intact"
    );
    drop(other.stdin.take());
    assert!(other.wait().expect("wait").success());
    assert!(!other_staged.exists());
}

#[test]
fn an_aborted_owners_directory_is_swept_and_debris_too() {
    let (_dir, rt) = setup();
    let (mut child, staged) = spawn_owner(&rt, "abort");
    assert!(!child.wait().expect("wait").success());
    // Debris without an owner lock (a crash between mkdir and lock cannot happen, but a
    // half-removed directory can), and entries that are not staging directories.
    let debris = rt.join("fm_00000000000000ff");
    std::fs::create_dir_all(debris.join("share")).expect("debris");
    std::fs::write(rt.join("unrelated"), "keep").expect("unrelated");
    std::fs::create_dir(rt.join("other-dir")).expect("other dir");
    let report = sweep(&rt).expect("sweep");
    let mut want = vec![staged.clone(), debris.clone()];
    want.sort();
    assert_eq!(report.removed, want);
    assert!(!staged.exists() && !debris.exists());
    assert!(rt.join("unrelated").exists() && rt.join("other-dir").exists());
}
