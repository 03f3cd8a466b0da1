//! Helpers shared by the device-state tests: guest-like operations on any backend, and a
//! dump of everything a guest can observe of a tree.
#![allow(dead_code, clippy::unnecessary_cast)]

use std::ffi::CString;
use std::io;

use boxfs::state::{StateError, StateErrorKind};
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{Context, CreateIn, DynFileSystem, GetxattrReply, ListxattrReply, ROOT_ID};

pub fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

pub fn ctx() -> Context {
    Context::new()
}

pub fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

pub fn state_kind<T>(r: io::Result<T>) -> Option<StateErrorKind> {
    r.err().and_then(|e| StateError::of(&e).map(|s| s.kind))
}

/// Creates `name` in `parent` opened read-write: (inode, handle).
pub fn create(fs: &dyn DynFileSystem, parent: u64, name: &str) -> (u64, u64) {
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = fs.create(&ctx(), parent, &c(name), args).expect("create");
    (e.inode, fh.expect("handle"))
}

pub fn mkdir(fs: &dyn DynFileSystem, parent: u64, name: &str) -> u64 {
    fs.mkdir(&ctx(), parent, &c(name), 0o755, 0)
        .expect("mkdir")
        .inode
}

pub fn lookup(fs: &dyn DynFileSystem, parent: u64, name: &str) -> io::Result<u64> {
    fs.lookup(&ctx(), parent, &c(name)).map(|e| e.inode)
}

pub fn write_at(
    fs: &dyn DynFileSystem,
    ino: u64,
    fh: u64,
    off: u64,
    data: &[u8],
) -> io::Result<usize> {
    let mut r = MemReader::copied(data);
    fs.write(
        &ctx(),
        ino,
        fh,
        &mut r,
        data.len() as u32,
        off,
        None,
        false,
        0,
        0,
    )
}

pub fn read_at(
    fs: &dyn DynFileSystem,
    ino: u64,
    fh: u64,
    off: u64,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut w = MemWriter::new(len);
    fs.read(&ctx(), ino, fh, &mut w, len as u32, off, None, 0)?;
    Ok(w.into_inner())
}

/// Lists a directory through an open handle from `offset`: (offset, name, inode).
pub fn list_from(
    fs: &dyn DynFileSystem,
    ino: u64,
    fh: u64,
    offset: u64,
) -> io::Result<Vec<(u64, String, u64)>> {
    let mut out = Vec::new();
    fs.readdir(&ctx(), ino, fh, 65536, offset, &mut |d| {
        out.push((
            d.offset,
            String::from_utf8_lossy(d.name).into_owned(),
            d.ino,
        ));
        Ok(1)
    })?;
    Ok(out)
}

/// Names in a directory listing, without `.` and `..`, sorted.
pub fn names(fs: &dyn DynFileSystem, ino: u64, fh: u64) -> io::Result<Vec<String>> {
    let mut v: Vec<String> = list_from(fs, ino, fh, 0)?
        .into_iter()
        .map(|(_, n, _)| n)
        .filter(|n| n != "." && n != "..")
        .collect();
    v.sort();
    Ok(v)
}

/// Attributes a guest sees, as a comparable tuple (all but the access time, which reading
/// the tree changes).
pub fn attrs(fs: &dyn DynFileSystem, ino: u64) -> io::Result<Vec<i128>> {
    let (st, _) = fs.getattr(&ctx(), ino, None)?;
    Ok(vec![
        st.st_ino as i128,
        st.st_mode as i128,
        st.st_nlink as i128,
        st.st_uid as i128,
        st.st_gid as i128,
        st.st_size as i128,
        st.st_blocks as i128,
        st.st_mtime as i128,
        st.st_mtime_nsec as i128,
        st.st_ctime as i128,
        st.st_ctime_nsec as i128,
        st.st_rdev as i128,
    ])
}

/// One object as a guest observes it: path, attributes, xattrs, content.
pub type Observed = (String, Vec<i128>, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>);

/// Everything a guest observes of the tree under `dir`: per path, attributes, xattrs, and
/// content (file bytes, link target or the sorted names of a directory). Takes and gives
/// back lookups, so the filesystem's own counts are unchanged.
pub fn dump(fs: &dyn DynFileSystem) -> Vec<Observed> {
    let mut out = Vec::new();
    walk(fs, ROOT_ID, "", &mut out);
    out
}

fn xattrs(fs: &dyn DynFileSystem, ino: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::new();
    if let Ok(ListxattrReply::Names(list)) = fs.listxattr(&ctx(), ino, 65536) {
        for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let cn = CString::new(name).expect("xattr name");
            if let Ok(GetxattrReply::Value(val)) = fs.getxattr(&ctx(), ino, &cn, 65536) {
                v.push((name.to_vec(), val));
            }
        }
    }
    v.sort();
    v
}

fn walk(fs: &dyn DynFileSystem, ino: u64, path: &str, out: &mut Vec<Observed>) {
    let a = attrs(fs, ino).expect("getattr");
    let kind = a[1] as u32 & libc::S_IFMT as u32;
    let xa = xattrs(fs, ino);
    if kind == libc::S_IFDIR as u32 {
        let (fh, _) = fs.opendir(&ctx(), ino, 0).expect("opendir");
        let fh = fh.expect("dir handle");
        let ns = names(fs, ino, fh).expect("readdir");
        fs.releasedir(&ctx(), ino, 0, fh).expect("releasedir");
        out.push((path.to_string(), a, xa, ns.join("/").into_bytes()));
        for n in ns {
            let child = lookup(fs, ino, &n).expect("lookup");
            walk(fs, child, &format!("{path}/{n}"), out);
            fs.forget(&ctx(), child, 1);
        }
    } else if kind == libc::S_IFREG as u32 {
        let (fh, _, _) = fs
            .open(&ctx(), ino, libc::O_RDONLY as u32, 0)
            .expect("open");
        let fh = fh.expect("handle");
        let mut data = Vec::new();
        loop {
            let part = read_at(fs, ino, fh, data.len() as u64, 1 << 20).expect("read");
            if part.is_empty() {
                break;
            }
            data.extend_from_slice(&part);
        }
        fs.release(&ctx(), ino, 0, fh, false, false, None)
            .expect("release");
        out.push((path.to_string(), a, xa, data));
    } else if kind == libc::S_IFLNK as u32 {
        let t = fs.readlink(&ctx(), ino).expect("readlink");
        out.push((path.to_string(), a, xa, t));
    } else {
        out.push((path.to_string(), a, xa, Vec::new()));
    }
}

/// The state of `fs` as bytes.
pub fn save(fs: &dyn DynFileSystem) -> Vec<u8> {
    let mut out = Vec::new();
    fs.save_state(&mut out).expect("save_state");
    out
}

/// A `Write` that keeps nothing: counts bytes and the largest single write.
#[derive(Default)]
pub struct Counting {
    pub bytes: u64,
    pub largest_write: usize,
    pub writes: u64,
}

impl io::Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes += buf.len() as u64;
        self.largest_write = self.largest_write.max(buf.len());
        self.writes += 1;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
