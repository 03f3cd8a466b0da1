//! A thin typed layer over the FUSE operation API, so conformance tests read like POSIX code.

use std::any::Any;
use std::ffi::CString;
use std::io;
use std::sync::Arc;

use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{stat64, Context, CreateIn, DirEntry, DynFileSystem, Entry, SetattrValid, ROOT_ID};

/// A backend under test, with whatever must live as long as it (temp dirs).
pub struct Fixture {
    pub fs: Arc<dyn DynFileSystem>,
    _guard: Option<Box<dyn Any>>,
}

impl Fixture {
    pub fn new(fs: impl DynFileSystem + 'static) -> Self {
        Fixture {
            fs: Arc::new(fs),
            _guard: None,
        }
    }

    #[allow(dead_code)]
    pub fn with_guard(fs: impl DynFileSystem + 'static, guard: impl Any) -> Self {
        Fixture {
            fs: Arc::new(fs),
            _guard: Some(Box::new(guard)),
        }
    }

    pub fn h(&self) -> H<'_> {
        H {
            fs: &*self.fs,
            ctx: Context::new(),
        }
    }
}

pub fn c(s: &str) -> CString {
    CString::new(s).expect("test names have no NUL")
}

pub fn errno<T>(r: io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

pub fn mode_of(st: &stat64) -> u32 {
    st.st_mode
}

pub const ROOT: u64 = ROOT_ID;

/// One listed directory entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub name: Vec<u8>,
    pub ino: u64,
    pub offset: u64,
    pub dtype: u32,
}

pub struct H<'a> {
    pub fs: &'a dyn DynFileSystem,
    pub ctx: Context,
}

impl H<'_> {
    pub fn with_user(mut self, uid: u32, gid: u32) -> Self {
        self.ctx.uid = uid;
        self.ctx.gid = gid;
        self
    }

    pub fn lookup(&self, parent: u64, name: &str) -> io::Result<Entry> {
        self.fs.lookup(&self.ctx, parent, &c(name))
    }

    pub fn ino(&self, parent: u64, name: &str) -> u64 {
        self.lookup(parent, name).expect("lookup").inode
    }

    pub fn create(&self, parent: u64, name: &str, mode: u32) -> io::Result<(Entry, u64)> {
        self.create_flags(parent, name, mode, libc::O_RDWR | libc::O_EXCL)
    }

    /// `create` with explicit open flags.
    pub fn create_flags(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        flags: i32,
    ) -> io::Result<(Entry, u64)> {
        let args = CreateIn {
            flags: flags as u32,
            mode,
            umask: 0,
            fuse_flags: 0,
        };
        let (e, fh, _, _) = self.fs.create(&self.ctx, parent, &c(name), args)?;
        Ok((e, fh.unwrap_or(0)))
    }

    pub fn open(&self, ino: u64, flags: i32) -> io::Result<u64> {
        let (fh, _, _) = self.fs.open(&self.ctx, ino, flags as u32, 0)?;
        Ok(fh.unwrap_or(0))
    }

    pub fn release(&self, ino: u64, fh: u64) {
        self.fs
            .release(&self.ctx, ino, 0, fh, false, false, None)
            .expect("release");
    }

    pub fn write(&self, ino: u64, fh: u64, off: u64, data: &[u8]) -> io::Result<usize> {
        let mut r = MemReader::copied(data);
        self.fs.write(
            &self.ctx,
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

    pub fn read(&self, ino: u64, fh: u64, off: u64, size: u32) -> io::Result<Vec<u8>> {
        let mut w = MemWriter::new(size as usize);
        let n = self
            .fs
            .read(&self.ctx, ino, fh, &mut w, size, off, None, 0)?;
        let v = w.into_inner();
        assert_eq!(n, v.len(), "read() count matches bytes delivered");
        Ok(v)
    }

    /// Creates `name` with `data`, returning its inode (the handle is released).
    pub fn put(&self, parent: u64, name: &str, data: &[u8]) -> u64 {
        let (e, fh) = self.create(parent, name, 0o644).expect("create");
        if !data.is_empty() {
            assert_eq!(self.write(e.inode, fh, 0, data).expect("write"), data.len());
        }
        self.release(e.inode, fh);
        e.inode
    }

    /// Reads a whole file by inode.
    pub fn get(&self, ino: u64) -> Vec<u8> {
        let fh = self.open(ino, libc::O_RDONLY).expect("open");
        let size = self.getattr(ino).st_size as u64;
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let chunk = self.read(ino, fh, out.len() as u64, 1 << 20).expect("read");
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        self.release(ino, fh);
        out
    }

    pub fn getattr(&self, ino: u64) -> stat64 {
        self.try_getattr(ino).expect("getattr")
    }

    pub fn try_getattr(&self, ino: u64) -> io::Result<stat64> {
        self.fs.getattr(&self.ctx, ino, None).map(|(st, _)| st)
    }

    pub fn setattr(
        &self,
        ino: u64,
        f: impl FnOnce(&mut stat64),
        valid: SetattrValid,
    ) -> io::Result<stat64> {
        // SAFETY: stat64 is a plain C struct; all-zero is valid.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        f(&mut st);
        self.fs
            .setattr(&self.ctx, ino, st, None, valid)
            .map(|(st, _)| st)
    }

    pub fn chmod(&self, ino: u64, mode: u32) -> io::Result<stat64> {
        self.setattr(ino, |st| st.st_mode = mode as _, SetattrValid::MODE)
    }

    pub fn chown(&self, ino: u64, uid: u32, gid: u32) -> io::Result<stat64> {
        self.setattr(
            ino,
            |st| {
                st.st_uid = uid;
                st.st_gid = gid;
            },
            SetattrValid::UID | SetattrValid::GID,
        )
    }

    pub fn truncate(&self, ino: u64, size: u64) -> io::Result<stat64> {
        self.setattr(ino, |st| st.st_size = size as _, SetattrValid::SIZE)
    }

    pub fn mkdir(&self, parent: u64, name: &str, mode: u32) -> io::Result<Entry> {
        self.fs.mkdir(&self.ctx, parent, &c(name), mode, 0)
    }

    pub fn unlink(&self, parent: u64, name: &str) -> io::Result<()> {
        self.fs.unlink(&self.ctx, parent, &c(name))
    }

    pub fn rmdir(&self, parent: u64, name: &str) -> io::Result<()> {
        self.fs.rmdir(&self.ctx, parent, &c(name))
    }

    pub fn rename(&self, p1: u64, n1: &str, p2: u64, n2: &str, flags: u32) -> io::Result<()> {
        self.fs.rename(&self.ctx, p1, &c(n1), p2, &c(n2), flags)
    }

    pub fn link(&self, ino: u64, parent: u64, name: &str) -> io::Result<Entry> {
        self.fs.link(&self.ctx, ino, parent, &c(name))
    }

    pub fn symlink(&self, target: &str, parent: u64, name: &str) -> io::Result<Entry> {
        self.fs.symlink(&self.ctx, &c(target), parent, &c(name))
    }

    pub fn mknod(&self, parent: u64, name: &str, mode: u32, rdev: u32) -> io::Result<Entry> {
        self.fs.mknod(&self.ctx, parent, &c(name), mode, rdev, 0)
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.fs.forget(&self.ctx, ino, n)
    }

    /// Lists a directory through READDIR with a `budget`-byte buffer per call, resuming
    /// from the last offset each time, as the kernel does.
    pub fn list(&self, dir: u64, budget: usize) -> Vec<Listed> {
        self.list_from(dir, budget, 0, usize::MAX).0
    }

    /// Lists at most `max_calls` buffers starting at `offset`; returns entries and the offset
    /// to resume from.
    pub fn list_from(
        &self,
        dir: u64,
        budget: usize,
        mut offset: u64,
        max_calls: usize,
    ) -> (Vec<Listed>, u64) {
        let (fh, _) = self.fs.opendir(&self.ctx, dir, 0).expect("opendir");
        let fh = fh.unwrap_or(0);
        let mut out = Vec::new();
        for _ in 0..max_calls {
            let mut used = 0usize;
            let mut batch = Vec::new();
            self.fs
                .readdir(
                    &self.ctx,
                    dir,
                    fh,
                    budget as u32,
                    offset,
                    &mut |d: DirEntry| {
                        let len = (24 + d.name.len() + 7) & !7;
                        if used + len > budget {
                            return Ok(0);
                        }
                        used += len;
                        batch.push(Listed {
                            name: d.name.to_vec(),
                            ino: d.ino,
                            offset: d.offset,
                            dtype: d.type_,
                        });
                        Ok(len)
                    },
                )
                .expect("readdir");
            if batch.is_empty() {
                break;
            }
            offset = batch.last().map(|l| l.offset).unwrap_or(offset);
            out.extend(batch);
        }
        self.fs
            .releasedir(&self.ctx, dir, 0, fh)
            .expect("releasedir");
        (out, offset)
    }

    /// READDIRPLUS with a budget; forgets the lookups it received once checked.
    pub fn list_plus(&self, dir: u64, budget: usize) -> Vec<(Listed, Entry)> {
        let (fh, _) = self.fs.opendir(&self.ctx, dir, 0).expect("opendir");
        let fh = fh.unwrap_or(0);
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let mut used = 0usize;
            let mut batch = Vec::new();
            self.fs
                .readdirplus(
                    &self.ctx,
                    dir,
                    fh,
                    budget as u32,
                    offset,
                    &mut |d: DirEntry, e: Entry| {
                        let len = ((24 + d.name.len() + 7) & !7) + 128;
                        if used + len > budget {
                            return Ok(0);
                        }
                        used += len;
                        batch.push((
                            Listed {
                                name: d.name.to_vec(),
                                ino: d.ino,
                                offset: d.offset,
                                dtype: d.type_,
                            },
                            e,
                        ));
                        Ok(len)
                    },
                )
                .expect("readdirplus");
            if batch.is_empty() {
                break;
            }
            offset = batch.last().map(|(l, _)| l.offset).unwrap_or(offset);
            out.extend(batch);
        }
        self.fs
            .releasedir(&self.ctx, dir, 0, fh)
            .expect("releasedir");
        out
    }

    /// Names in a directory other than `.` and `..`, sorted.
    pub fn names(&self, dir: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .list(dir, 4096)
            .into_iter()
            .filter(|l| l.name != b"." && l.name != b"..")
            .map(|l| String::from_utf8_lossy(&l.name).into_owned())
            .collect();
        v.sort();
        v
    }
}
