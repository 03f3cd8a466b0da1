//! MemFs device state: save from a used filesystem, load into a fresh one, and the guest
//! continues where it was; damaged or oversized states are refused and change nothing.

#![allow(clippy::unnecessary_cast)]

mod state_common;

use std::time::Instant;

use boxfs::memfs::MemFs;
use boxfs::state::StateErrorKind;
use boxfs::{DynFileSystem, FileSystem, ROOT_ID};
use state_common::*;

fn memfs(capacity: u64) -> MemFs {
    MemFs::builder()
        .capacity(capacity)
        .max_inodes(10_000)
        .build()
        .expect("build")
}

/// What a used filesystem holds, for the checks after a load.
struct Used {
    dir: u64,
    dir_fh: u64,
    /// Cookie after the first two real entries of `dir`.
    cookie: u64,
    file: u64,
    file_fh: u64,
    big: u64,
    tmp: u64,
    tmp_fh: u64,
}

/// A filesystem a guest has used: a directory held open mid-listing, files with small,
/// paged and sparse data, a hard link, a symlink, a FIFO, xattrs, ownership, and a file
/// unlinked while open.
fn use_fs(fs: &MemFs) -> Used {
    let dir = mkdir(fs, ROOT_ID, "d");
    let (file, file_fh) = create(fs, dir, "f");
    write_at(fs, file, file_fh, 0, b"hello, state").expect("write");
    let (big, big_fh) = create(fs, ROOT_ID, "big");
    let pattern: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i * 7 % 251) as u8).collect();
    write_at(fs, big, big_fh, 0, &pattern).expect("write");
    write_at(fs, big, big_fh, 10 << 20, b"far away").expect("sparse write");
    fs.release(&ctx(), big, 0, big_fh, false, false, None)
        .expect("release");
    fs.link(&ctx(), big, dir, &c("big-link")).expect("link");
    fs.symlink(&ctx(), &c("../big"), dir, &c("sym"))
        .expect("symlink");
    fs.mknod(&ctx(), dir, &c("fifo"), libc::S_IFIFO as u32 | 0o600, 0, 0)
        .expect("mknod");
    fs.setxattr(&ctx(), file, &c("user.k"), b"v\0binary", 0)
        .expect("setxattr");
    fs.setxattr(&ctx(), dir, &c("user.dir"), b"", 0)
        .expect("setxattr");
    for i in 0..5 {
        let (ino, fh) = create(fs, dir, &format!("n{i}"));
        fs.release(&ctx(), ino, 0, fh, false, false, None)
            .expect("release");
    }
    let (mut st, _) = fs.getattr(&ctx(), file, None).expect("getattr");
    st.st_uid = 1234;
    st.st_gid = 99;
    fs.setattr(
        &ctx(),
        file,
        st,
        None,
        boxfs::SetattrValid::UID | boxfs::SetattrValid::GID,
    )
    .expect("chown");
    let (tmp, tmp_fh) = create(fs, ROOT_ID, "tmp");
    write_at(fs, tmp, tmp_fh, 0, b"only in an open handle").expect("write");
    fs.unlink(&ctx(), ROOT_ID, &c("tmp")).expect("unlink");
    fs.forget(&ctx(), tmp, 1);
    let (dir_fh, _) = fs.opendir(&ctx(), dir, 0).expect("opendir");
    let dir_fh = dir_fh.expect("dir handle");
    let first = list_from(fs, dir, dir_fh, 0).expect("readdir");
    let cookie = first[3].0;
    Used {
        dir,
        dir_fh,
        cookie,
        file,
        file_fh,
        big,
        tmp,
        tmp_fh,
    }
}

#[test]
fn a_fresh_memfs_continues_where_the_saved_one_was() {
    let src = memfs(64 << 20);
    let u = use_fs(&src);
    let state = save(&src);
    let dst = memfs(64 << 20);
    dst.load_state(&mut &state[..]).expect("load_state");

    // Content, attributes, xattrs, hard links: identical.
    assert_eq!(dump(&dst), dump(&src));
    // Node ids the guest holds answer with the same attributes.
    for ino in [ROOT_ID, u.dir, u.file, u.big] {
        assert_eq!(attrs(&dst, ino).ok(), attrs(&src, ino).ok(), "inode {ino}");
    }
    assert_eq!(attrs(&dst, u.big).expect("big")[2], 2, "hard link count");
    assert_eq!(
        attrs(&dst, u.file).expect("file")[3..5],
        [1234, 99],
        "ownership"
    );
    // The open file handle reads and writes.
    assert_eq!(
        read_at(&dst, u.file, u.file_fh, 0, 64).ok(),
        Some(b"hello, state".to_vec())
    );
    write_at(&dst, u.file, u.file_fh, 7, b"STATE").expect("write through the handle");
    assert_eq!(
        read_at(&dst, u.file, u.file_fh, 0, 64).ok(),
        Some(b"hello, STATE".to_vec())
    );
    // The directory handle resumes its listing from the guest's cookie.
    assert_eq!(
        list_from(&dst, u.dir, u.dir_fh, u.cookie).ok(),
        list_from(&src, u.dir, u.dir_fh, u.cookie).ok()
    );
    assert!(names(&dst, u.dir, u.dir_fh)
        .expect("list")
        .contains(&"big-link".to_string()));
    // The file only a handle kept alive is still there.
    assert_eq!(
        read_at(&dst, u.tmp, u.tmp_fh, 0, 64).ok(),
        Some(b"only in an open handle".to_vec())
    );
    assert_eq!(errno(attrs(&dst, u.tmp)), Some(libc::EBADF));
    // Accounting matches, and new objects get fresh ids and handle numbers.
    let (s, d) = (src.usage(), dst.usage());
    assert_eq!(
        (s.bytes_used, s.inodes_used, s.open_handles),
        (d.bytes_used, d.inodes_used, d.open_handles)
    );
    let (n_src, fh_src) = create(&src, ROOT_ID, "new");
    let (n_dst, fh_dst) = create(&dst, ROOT_ID, "new");
    assert_eq!((n_src, fh_src), (n_dst, fh_dst));
    // Releasing everything returns every charge: the unlinked file goes.
    for fs in [&src, &dst] {
        fs.release(&ctx(), u.tmp, 0, u.tmp_fh, false, false, None)
            .expect("release tmp");
    }
    assert_eq!(src.usage(), dst.usage());
}

fn sample_state() -> Vec<u8> {
    let src = memfs(64 << 20);
    use_fs(&src);
    save(&src)
}

/// Loads `state` into a filesystem that already has content, expecting `kind`, and checks
/// that nothing changed and it still works.
fn refused(state: &[u8], capacity: u64, kind: StateErrorKind) {
    let dst = memfs(capacity);
    let (ino, fh) = create(&dst, ROOT_ID, "mine");
    write_at(&dst, ino, fh, 0, b"kept").expect("write");
    let before = (dump(&dst), dst.usage());
    let r = dst.load_state(&mut &state[..]);
    assert_eq!(state_kind(r), Some(kind));
    assert_eq!(
        (dump(&dst), dst.usage()),
        before,
        "refused load changed the fs"
    );
    assert_eq!(read_at(&dst, ino, fh, 0, 8).ok(), Some(b"kept".to_vec()));
    let (n, nfh) = create(&dst, ROOT_ID, "after");
    write_at(&dst, n, nfh, 0, b"usable").expect("still usable");
}

#[test]
fn a_corrupt_byte_is_refused_and_changes_nothing() {
    let state = sample_state();
    for at in [20, state.len() / 3, state.len() / 2, state.len() - 3] {
        let mut bad = state.clone();
        bad[at] ^= 0x01;
        let dst = memfs(64 << 20);
        let before = dump(&dst);
        assert!(dst.load_state(&mut &bad[..]).is_err(), "flip at {at}");
        assert_eq!(dump(&dst), before);
    }
    let mut bad = state.clone();
    let mid = state.len() / 2;
    bad[mid] ^= 0x80;
    refused(&bad, 64 << 20, StateErrorKind::Corrupt);
}

#[test]
fn a_truncated_stream_is_refused_and_changes_nothing() {
    let state = sample_state();
    refused(
        &state[..state.len() / 2],
        64 << 20,
        StateErrorKind::Truncated,
    );
    refused(
        &state[..state.len() - 1],
        64 << 20,
        StateErrorKind::Truncated,
    );
}

#[test]
fn another_version_is_refused() {
    let mut state = sample_state();
    state[8..10].copy_from_slice(&(boxfs::state::FORMAT_VERSION + 1).to_le_bytes());
    let klen = state[10] as usize;
    let crc = crc32fast::hash(&state[..11 + klen]);
    state[11 + klen..15 + klen].copy_from_slice(&crc.to_le_bytes());
    refused(&state, 64 << 20, StateErrorKind::Version);
}

#[test]
fn a_state_larger_than_the_capacity_is_refused() {
    let src = memfs(16 << 20);
    let (ino, fh) = create(&src, ROOT_ID, "f");
    write_at(&src, ino, fh, 0, &vec![7u8; 4 << 20]).expect("write");
    let state = save(&src);
    refused(&state, 2 << 20, StateErrorKind::Limit);
    // Fewer inodes than the state has is refused too.
    let small = MemFs::builder()
        .capacity(64 << 20)
        .max_inodes(2)
        .build()
        .expect("build");
    let many = sample_state();
    assert_eq!(
        state_kind(small.load_state(&mut &many[..])),
        Some(StateErrorKind::Limit)
    );
    assert_eq!(small.usage().inodes_used, 1);
}

#[test]
fn a_passthrough_state_is_not_a_memfs_state() {
    let mut out = Vec::new();
    let w = boxfs::state::StateWriter::new(&mut out, "passthrough").expect("header");
    w.finish().expect("end");
    refused(&out, 1 << 20, StateErrorKind::Mismatch);
}

/// Virtual memory high-water mark of this process, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Saving a 256 MiB MemFs streams it: no write is bigger than a page record, and the
/// process's memory peak does not grow by anything like the state's size.
#[test]
fn a_256_mib_memfs_streams_without_a_whole_state_buffer() {
    const SIZE: u64 = 256 << 20;
    let fs = memfs(SIZE + (16 << 20));
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    for f in 0..4u64 {
        let (ino, fh) = create(&fs, ROOT_ID, &format!("f{f}"));
        for i in 0..SIZE / 4 / chunk.len() as u64 {
            write_at(&fs, ino, fh, i * chunk.len() as u64, &chunk).expect("fill");
        }
    }
    let before = peak_rss();
    let mut out = Counting::default();
    let t = Instant::now();
    fs.save_state(&mut out).expect("save");
    let took = t.elapsed();
    let after = peak_rss();
    assert!(out.bytes > SIZE, "state holds the data: {}", out.bytes);
    assert!(
        out.largest_write <= 2 * 4096,
        "largest single write {} bytes",
        out.largest_write
    );
    if let (Some(b), Some(a)) = (before, after) {
        assert!(
            a.saturating_sub(b) < 32 << 20,
            "saving grew the memory peak by {} bytes",
            a - b
        );
    }
    eprintln!(
        "state of a 256 MiB MemFs: {} bytes in {} writes, largest {} bytes, saved in {:?}",
        out.bytes, out.writes, out.largest_write, took
    );
}

/// Figures for the closing note (run with `--ignored --nocapture`, preferably `--release`):
/// state size and save/load time of a 256 MiB MemFs.
#[test]
#[ignore = "measurement"]
fn measure_256_mib_memfs() {
    const SIZE: u64 = 256 << 20;
    let fs = memfs(SIZE + (16 << 20));
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    let (ino, fh) = create(&fs, ROOT_ID, "f");
    for i in 0..SIZE / chunk.len() as u64 {
        write_at(&fs, ino, fh, i * chunk.len() as u64, &chunk).expect("fill");
    }
    let path = std::env::temp_dir().join(format!("boxfs-state-{}", std::process::id()));
    let t = Instant::now();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        fs.save_state(&mut f).expect("save");
    }
    let save = t.elapsed();
    let size = std::fs::metadata(&path).expect("stat").len();
    let dst = memfs(SIZE + (16 << 20));
    let t = Instant::now();
    {
        let mut f = std::io::BufReader::new(std::fs::File::open(&path).expect("open"));
        dst.load_state(&mut f).expect("load");
    }
    let load = t.elapsed();
    std::fs::remove_file(&path).expect("cleanup");
    assert_eq!(dst.usage().bytes_used, fs.usage().bytes_used);
    eprintln!("FIGURE memfs 256 MiB: state {size} bytes, save {save:?}, load {load:?}");
}

/// A hand-made MemFs stream: directories `(ino, parent)` and root entries `(name, ino)`.
fn crafted(dirs: &[(u64, u64)], entries: &[(&[u8], u64)]) -> Vec<u8> {
    use boxfs::state::{Encoder, StateWriter};
    let mut out = Vec::new();
    let mut w = StateWriter::new(&mut out, "memfs").expect("header");
    let mut e = Encoder::new();
    e.u64(100).u64(1);
    w.record(1, e.as_slice()).expect("counters");
    for &(ino, parent) in dirs {
        e.clear()
            .u64(ino)
            .u8(1)
            .u64(1)
            .u32(libc::S_IFDIR as u32 | 0o755)
            .u32(0)
            .u32(0)
            .u32(2)
            .u32(0);
        for _ in 0..3 {
            e.i64(0).u32(0);
        }
        e.u8(1).u64(parent).u64(3 + entries.len() as u64);
        w.record(2, e.as_slice()).expect("node");
        if ino == ROOT_ID {
            for (i, (name, target)) in entries.iter().enumerate() {
                e.clear().u64(3 + i as u64).u64(*target).bytes(name);
                w.record(6, e.as_slice()).expect("dirent");
            }
        }
    }
    w.finish().expect("end");
    out
}

#[test]
fn crafted_inconsistent_trees_are_refused() {
    // The well-formed baseline loads.
    let good = crafted(&[(ROOT_ID, ROOT_ID), (2, ROOT_ID)], &[(b"d", 2)]);
    let fs = memfs(1 << 20);
    fs.load_state(&mut &good[..])
        .expect("a consistent crafted tree loads");
    assert_eq!(lookup(&fs, ROOT_ID, "d").ok(), Some(2));
    for (what, bad) in [
        // Directories whose parents form a cycle never reach the root.
        ("cycle", crafted(&[(ROOT_ID, ROOT_ID), (2, 3), (3, 2)], &[])),
        (
            "dangling entry",
            crafted(&[(ROOT_ID, ROOT_ID)], &[(b"x", 42)]),
        ),
        (
            "dot-dot name",
            crafted(&[(ROOT_ID, ROOT_ID), (2, ROOT_ID)], &[(b"..", 2)]),
        ),
        (
            "slash name",
            crafted(&[(ROOT_ID, ROOT_ID), (2, ROOT_ID)], &[(b"a/b", 2)]),
        ),
        ("no root", crafted(&[(2, 2)], &[])),
    ] {
        let fs = memfs(1 << 20);
        let before = dump(&fs);
        assert_eq!(
            state_kind(fs.load_state(&mut &bad[..])),
            Some(StateErrorKind::Invalid),
            "{what}"
        );
        assert_eq!(dump(&fs), before, "{what}");
    }
}
