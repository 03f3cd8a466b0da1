//! MemFs memory is bounded by its capacity: a guest filling a MemFs every way it can keeps the
//! process RSS under [`MemFs::memory_ceiling`].
//!
//! RSS is process-wide, so every fill runs alone in a child process (this test binary re-run
//! with one ignored test selected); the parent checks that each child ran its fill and stayed
//! under the ceiling.

use std::ffi::CString;
use std::io;
use std::process::Command;

use boxfs::memfs::{cost, MemFs};
use boxfs::zero_copy::MemReader;
use boxfs::{Context, CreateIn, FileSystem, ROOT_ID};

/// Capacity of every fill.
const CAP: u64 = 16 << 20;
/// Inode limit of every fill: what the default derives for `CAP`, rounded; set explicitly so
/// that an implementation charging less than it allocates stops at a bounded size.
const MAX_INODES: u64 = 60_000;
const MAX_HANDLES: u64 = 1024;
/// Selects the fill a child process runs.
const ENV: &str = "BOXFS_MEMFS_FILL";

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page as u64
}

fn enospc<T>(r: &io::Result<T>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::ENOSPC))
}

fn args() -> CreateIn {
    CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    }
}

/// Creates `name` in `dir` with `data`, releasing its handle and the guest's reference.
fn put(fs: &MemFs, dir: u64, name: &str, data: &[u8]) -> io::Result<u64> {
    let ctx = Context::new();
    let (e, fh, _, _) = fs.create(&ctx, dir, &c(name), args())?;
    let fh = fh.expect("MemFs returns handles");
    let res = if data.is_empty() {
        Ok(0)
    } else {
        let mut r = MemReader::copied(data);
        fs.write(
            &ctx,
            e.inode,
            fh,
            &mut r,
            data.len() as u32,
            0,
            None,
            false,
            0,
            0,
        )
    };
    fs.release(&ctx, e.inode, 0, fh, false, false, None)?;
    fs.forget(&ctx, e.inode, 1);
    res.map(|_| e.inode)
}

fn tiny_files(fs: &MemFs) -> u64 {
    let mut n = 0;
    let mut dir = ROOT_ID;
    loop {
        if n % 10_000 == 0 {
            match fs.mkdir(&Context::new(), ROOT_ID, &c(&format!("d{n}")), 0o755, 0) {
                Ok(e) => dir = e.inode,
                Err(_) => return n,
            }
        }
        let r = put(fs, dir, &format!("f{n:08}"), b"x");
        if r.is_err() {
            return n;
        }
        n += 1;
    }
}

fn many_names(fs: &MemFs) -> u64 {
    let ctx = Context::new();
    let ino = put(fs, ROOT_ID, "target", b"data").expect("create");
    let long = "n".repeat(240);
    for n in 0.. {
        match fs.link(&ctx, ino, ROOT_ID, &c(&format!("{long}{n:010}"))) {
            Ok(e) => fs.forget(&ctx, e.inode, 1),
            Err(_) => return n,
        }
    }
    unreachable!()
}

fn many_xattrs(fs: &MemFs) -> u64 {
    let ctx = Context::new();
    let mut n = 0;
    for f in 0.. {
        let Ok(ino) = put(fs, ROOT_ID, &format!("x{f}"), b"") else {
            return n;
        };
        for i in 0..200 {
            let name = c(&format!("user.a{i}"));
            if fs.setxattr(&ctx, ino, &name, &[], 0).is_err() {
                return n;
            }
            n += 1;
        }
    }
    unreachable!()
}

fn symlinks(fs: &MemFs) -> u64 {
    let ctx = Context::new();
    for n in 0u64.. {
        let target = "t".repeat((n % 64) as usize + 1);
        if fs
            .symlink(&ctx, &c(&target), ROOT_ID, &c(&format!("l{n}")))
            .is_err()
        {
            return n;
        }
    }
    unreachable!()
}

fn sparse_writes(fs: &MemFs) -> u64 {
    let ctx = Context::new();
    let (e, fh, _, _) = fs
        .create(&ctx, ROOT_ID, &c("sparse"), args())
        .expect("create");
    let fh = fh.expect("handle");
    // One byte per page, far apart. Bounded so that an implementation charging the byte
    // rather than the page stops at a few times the capacity.
    let limit = 4 * CAP / cost::PAGE;
    for n in 0..limit {
        let mut r = MemReader::copied(b"s");
        let r = fs.write(
            &ctx,
            e.inode,
            fh,
            &mut r,
            1,
            n * 3 * cost::PAGE + 7,
            None,
            false,
            0,
            0,
        );
        if enospc(&r) {
            return n;
        }
        r.expect("write");
    }
    limit
}

/// Fills with tiny files, deletes them all, then fills with one big file: memory freed by
/// small objects must be reusable for pages.
fn churn(fs: &MemFs) -> u64 {
    let ctx = Context::new();
    let n = tiny_files(fs);
    for d in (0..n).step_by(10_000) {
        let dir = fs.lookup(&ctx, ROOT_ID, &c(&format!("d{d}"))).expect("dir");
        for i in d..(d + 10_000).min(n) {
            fs.unlink(&ctx, dir.inode, &c(&format!("f{i:08}")))
                .expect("unlink");
        }
        fs.forget(&ctx, dir.inode, 1);
    }
    let (e, fh, _, _) = fs.create(&ctx, ROOT_ID, &c("big"), args()).expect("create");
    let fh = fh.expect("handle");
    let chunk = vec![9u8; 1 << 16];
    let mut off = 0;
    loop {
        let mut r = MemReader::copied(&chunk);
        let w = fs.write(&ctx, e.inode, fh, &mut r, 1 << 16, off, None, false, 0, 0);
        if enospc(&w) {
            return n + off / cost::PAGE;
        }
        w.expect("write");
        off += 1 << 16;
    }
}

fn deep_dirs(fs: &MemFs) -> u64 {
    let ctx = Context::new();
    let mut dir = ROOT_ID;
    for n in 0.. {
        match fs.mkdir(&ctx, dir, &c(&format!("deep{n}")), 0o755, 0) {
            Ok(e) => dir = e.inode,
            Err(_) => return n,
        }
    }
    unreachable!()
}

/// Runs one fill in this process and prints its figures; panics past the ceiling.
fn run_fill(which: &str) {
    let before = rss_bytes();
    let fs = MemFs::builder()
        .capacity(CAP)
        .max_inodes(MAX_INODES)
        .max_handles(MAX_HANDLES)
        .build()
        .expect("build");
    let fill: fn(&MemFs) -> u64 = match which {
        "tiny_files" => tiny_files,
        "many_names" => many_names,
        "many_xattrs" => many_xattrs,
        "symlinks" => symlinks,
        "sparse_writes" => sparse_writes,
        "deep_dirs" => deep_dirs,
        "churn" => churn,
        other => panic!("unknown fill {other}"),
    };
    let n = fill(&fs);
    let u = fs.usage();
    let grown = rss_bytes().saturating_sub(before);
    let ceiling = fs.memory_ceiling();
    println!(
        "FILL {which}: {n} objects, {} bytes charged of {}, {} inodes, RSS grew {} KiB, \
         ceiling {} KiB",
        u.bytes_used,
        u.capacity,
        u.inodes_used,
        grown >> 10,
        ceiling >> 10
    );
    assert!(n > 0, "{which}: the fill made something");
    assert!(
        u.bytes_used + 4096 >= u.capacity / 2,
        "{which}: the fill used the capacity ({} of {})",
        u.bytes_used,
        u.capacity
    );
    assert!(
        grown <= ceiling,
        "{which}: RSS grew {grown} bytes, over the ceiling of {ceiling}"
    );
    drop(fs);
}

/// The child side: runs the fill `BOXFS_MEMFS_FILL` names. Ignored in normal runs; the parent
/// selects it explicitly.
#[test]
#[ignore = "run by rss_stays_under_the_memory_ceiling in a child process"]
fn fill_child() {
    let which = std::env::var(ENV).expect("the parent names the fill");
    run_fill(&which);
}

#[test]
fn memory_ceiling_is_the_documented_formula() {
    let fs = MemFs::builder()
        .capacity(CAP)
        .max_handles(MAX_HANDLES)
        .build()
        .expect("build");
    assert_eq!(
        fs.memory_ceiling(),
        CAP + CAP / 32 + 128 * MAX_HANDLES + (256 << 10)
    );
    // The default inode limit follows the capacity.
    assert_eq!(fs.usage().max_inodes, CAP / cost::INODE);
}

#[test]
fn rss_stays_under_the_memory_ceiling() {
    let exe = std::env::current_exe().expect("test binary");
    let mut failures = Vec::new();
    for which in [
        "tiny_files",
        "many_names",
        "many_xattrs",
        "symlinks",
        "sparse_writes",
        "deep_dirs",
        "churn",
    ] {
        let out = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "fill_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV, which)
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tag = format!("FILL {which}:");
        let line = stdout
            .lines()
            .find_map(|l| l.find(&tag).map(|at| l[at..].to_owned()));
        println!("{}", line.as_deref().unwrap_or("(no figures)"));
        // The child must have run the fill (its figures printed) and passed.
        if !out.status.success() || line.is_none() {
            failures.push(format!(
                "{which}: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
