//! Device state through the vhost-user device-state protocol (issue 18): a guest session
//! saved from one device (`SET_DEVICE_STATE_FD` SAVE, `CHECK_DEVICE_STATE`) and loaded into
//! a second device continues without a new INIT, with its node ids and handles; corrupt,
//! truncated and newer-version streams are rejected at `CHECK_DEVICE_STATE` and leave the
//! destination refusing requests; a filesystem without state support makes the save fail
//! cleanly and the source keeps serving.
//!
//! The filesystem is `MapFs`, a flat in-memory filesystem defined here whose state hooks
//! carry everything (files, lookups, handles), so the device side is tested independently of
//! the library backends' own state formats.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use boxfs::memfs::MemFs;
use boxfs::vhost::{DeviceHandle, FsDevice};
use boxfs::{
    stat64, Context, CreateIn, DirEntry, DynFileSystem, Entry, FileSystem, FsOptions, OpenOptions,
    ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use vmm::testfs::TestFs;
use vmm::{FuseClient, Vmm, VmmConfig};

fn err(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

#[derive(Default, Clone, PartialEq, Debug)]
struct Node {
    name: Vec<u8>,
    data: Vec<u8>,
    nlookup: u64,
}

#[derive(Default, Clone, PartialEq, Debug)]
struct Inner {
    /// Regular files of the root directory, by inode.
    files: BTreeMap<u64, Node>,
    /// handle -> inode (ROOT_ID for directory handles).
    handles: BTreeMap<u64, u64>,
    next_ino: u64,
    next_fh: u64,
}

/// A flat in-memory filesystem whose state hooks carry all of it.
struct MapFs {
    inner: Mutex<Inner>,
    loads: AtomicUsize,
    inits: AtomicUsize,
}

impl MapFs {
    fn new() -> MapFs {
        MapFs {
            inner: Mutex::new(Inner {
                next_ino: 2,
                next_fh: 1,
                ..Default::default()
            }),
            loads: AtomicUsize::new(0),
            inits: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> Inner {
        self.lock().clone()
    }
}

fn attr(ino: u64, node: Option<&Node>) -> stat64 {
    // SAFETY: stat64 is plain data; all zeroes is a valid value.
    let mut st: stat64 = unsafe { std::mem::zeroed() };
    st.st_ino = ino;
    match node {
        None => {
            st.st_mode = libc::S_IFDIR | 0o755;
            st.st_nlink = 2;
        }
        Some(n) => {
            st.st_mode = libc::S_IFREG | 0o644;
            st.st_nlink = 1;
            st.st_size = n.data.len() as i64;
        }
    }
    st
}

fn entry(ino: u64, node: &Node) -> Entry {
    Entry {
        inode: ino,
        generation: 0,
        attr: attr(ino, Some(node)),
        attr_flags: 0,
        attr_timeout: Duration::ZERO,
        entry_timeout: Duration::ZERO,
    }
}

impl FileSystem for MapFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inits.fetch_add(1, Ordering::SeqCst);
        Ok(capable & FsOptions::ASYNC_READ)
    }

    fn destroy(&self) {
        let mut i = self.lock();
        i.handles.clear();
        for n in i.files.values_mut() {
            n.nlookup = 0;
        }
    }

    fn lookup(&self, _: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        if parent != ROOT_ID {
            return Err(err(libc::ENOENT));
        }
        let mut i = self.lock();
        let (ino, node) = i
            .files
            .iter_mut()
            .find(|(_, n)| n.name == name.to_bytes())
            .ok_or_else(|| err(libc::ENOENT))?;
        node.nlookup += 1;
        Ok(entry(*ino, node))
    }

    fn forget(&self, _: &Context, inode: u64, count: u64) {
        if let Some(n) = self.lock().files.get_mut(&inode) {
            n.nlookup = n.nlookup.saturating_sub(count);
        }
    }

    fn getattr(&self, _: &Context, inode: u64, _: Option<u64>) -> io::Result<(stat64, Duration)> {
        let i = self.lock();
        if inode == ROOT_ID {
            return Ok((attr(ROOT_ID, None), Duration::ZERO));
        }
        let n = i.files.get(&inode).ok_or_else(|| err(libc::ENOENT))?;
        Ok((attr(inode, Some(n)), Duration::ZERO))
    }

    fn create(
        &self,
        _: &Context,
        parent: u64,
        name: &CStr,
        _: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        if parent != ROOT_ID {
            return Err(err(libc::ENOENT));
        }
        let mut i = self.lock();
        if i.files.values().any(|n| n.name == name.to_bytes()) {
            return Err(err(libc::EEXIST));
        }
        let ino = i.next_ino;
        i.next_ino += 1;
        let node = Node {
            name: name.to_bytes().to_vec(),
            data: Vec::new(),
            nlookup: 1,
        };
        let e = entry(ino, &node);
        i.files.insert(ino, node);
        let fh = i.next_fh;
        i.next_fh += 1;
        i.handles.insert(fh, ino);
        Ok((e, Some(fh), OpenOptions::empty(), None))
    }

    fn open(
        &self,
        _: &Context,
        inode: u64,
        _: u32,
        _: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let mut i = self.lock();
        if !i.files.contains_key(&inode) {
            return Err(err(libc::ENOENT));
        }
        let fh = i.next_fh;
        i.next_fh += 1;
        i.handles.insert(fh, inode);
        Ok((Some(fh), OpenOptions::empty(), None))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _: Option<u64>,
        _: u32,
    ) -> io::Result<usize> {
        let data = {
            let i = self.lock();
            if i.handles.get(&handle) != Some(&inode) {
                return Err(err(libc::EBADF));
            }
            let n = i.files.get(&inode).ok_or_else(|| err(libc::EBADF))?;
            let start = (offset as usize).min(n.data.len());
            let end = start.saturating_add(size as usize).min(n.data.len());
            n.data[start..end].to_vec()
        };
        w.write_all(&data)?;
        Ok(data.len())
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _: Option<u64>,
        _: bool,
        _: u32,
        _: u32,
    ) -> io::Result<usize> {
        let mut buf = vec![0u8; size as usize];
        r.read_exact(&mut buf)?;
        let mut i = self.lock();
        if i.handles.get(&handle) != Some(&inode) {
            return Err(err(libc::EBADF));
        }
        let n = i.files.get_mut(&inode).ok_or_else(|| err(libc::EBADF))?;
        let end = offset as usize + buf.len();
        if n.data.len() < end {
            n.data.resize(end, 0);
        }
        n.data[offset as usize..end].copy_from_slice(&buf);
        Ok(buf.len())
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        _: &Context,
        _: u64,
        _: u32,
        handle: u64,
        _: bool,
        _: bool,
        _: Option<u64>,
    ) -> io::Result<()> {
        self.lock()
            .handles
            .remove(&handle)
            .map(|_| ())
            .ok_or_else(|| err(libc::EBADF))
    }

    fn opendir(&self, _: &Context, inode: u64, _: u32) -> io::Result<(Option<u64>, OpenOptions)> {
        if inode != ROOT_ID {
            return Err(err(libc::ENOTDIR));
        }
        let mut i = self.lock();
        let fh = i.next_fh;
        i.next_fh += 1;
        i.handles.insert(fh, ROOT_ID);
        Ok((Some(fh), OpenOptions::empty()))
    }

    fn readdirplus(
        &self,
        _: &Context,
        inode: u64,
        handle: u64,
        _: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut i = self.lock();
        if inode != ROOT_ID || i.handles.get(&handle) != Some(&ROOT_ID) {
            return Err(err(libc::EBADF));
        }
        for (k, (ino, node)) in i.files.iter_mut().enumerate().skip(offset as usize) {
            let e = entry(*ino, node);
            let d = DirEntry {
                ino: *ino,
                offset: k as u64 + 1,
                type_: libc::DT_REG as u32,
                name: &node.name,
            };
            if add_entry(d, e)? == 0 {
                break;
            }
            node.nlookup += 1;
        }
        Ok(())
    }

    fn releasedir(&self, _: &Context, _: u64, _: u32, handle: u64) -> io::Result<()> {
        self.lock()
            .handles
            .remove(&handle)
            .map(|_| ())
            .ok_or_else(|| err(libc::EBADF))
    }
}

fn put_u64(out: &mut dyn Write, v: u64) -> io::Result<()> {
    out.write_all(&v.to_le_bytes())
}

fn get_u64(input: &mut dyn Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    input.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn get_bytes(input: &mut dyn Read) -> io::Result<Vec<u8>> {
    let n = get_u64(input)?;
    if n > 1 << 30 {
        return Err(err(libc::EINVAL));
    }
    let mut v = vec![0u8; n as usize];
    input.read_exact(&mut v)?;
    Ok(v)
}

impl DynFileSystem for MapFs {
    fn save_state(&self, out: &mut dyn Write) -> io::Result<()> {
        let i = self.snapshot();
        put_u64(out, i.next_ino)?;
        put_u64(out, i.next_fh)?;
        put_u64(out, i.files.len() as u64)?;
        for (ino, n) in &i.files {
            put_u64(out, *ino)?;
            put_u64(out, n.nlookup)?;
            put_u64(out, n.name.len() as u64)?;
            out.write_all(&n.name)?;
            put_u64(out, n.data.len() as u64)?;
            out.write_all(&n.data)?;
        }
        put_u64(out, i.handles.len() as u64)?;
        for (fh, ino) in &i.handles {
            put_u64(out, *fh)?;
            put_u64(out, *ino)?;
        }
        Ok(())
    }

    fn load_state(&self, input: &mut dyn Read) -> io::Result<()> {
        // Parsed completely before anything changes: all or nothing.
        let mut i = Inner {
            next_ino: get_u64(input)?,
            next_fh: get_u64(input)?,
            ..Default::default()
        };
        for _ in 0..get_u64(input)? {
            let ino = get_u64(input)?;
            let nlookup = get_u64(input)?;
            let name = get_bytes(input)?;
            let data = get_bytes(input)?;
            i.files.insert(
                ino,
                Node {
                    name,
                    data,
                    nlookup,
                },
            );
        }
        for _ in 0..get_u64(input)? {
            let fh = get_u64(input)?;
            i.handles.insert(fh, get_u64(input)?);
        }
        *self.lock() = i;
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Device {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    handle: DeviceHandle,
}

fn device(fs: Arc<dyn DynFileSystem>) -> Device {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .tag("state")
        .build()
        .expect("device")
        .serve(&sock)
        .expect("serve");
    Device {
        _dir: dir,
        sock,
        handle,
    }
}

fn client(path: &Path) -> FuseClient {
    let cfg = VmmConfig {
        mem_size: 16 << 20,
        queue_size: 64,
        ..Default::default()
    };
    FuseClient::new(Vmm::connect(path, cfg).expect("connect"))
}

/// What a guest holds at the moment of the snapshot.
struct Held {
    file: u64,
    fh: u64,
    other: u64,
    dir_fh: u64,
}

/// INIT, two files (one written and kept open), a lookup, an open directory.
fn guest_before(c: &mut FuseClient) -> Held {
    c.init().expect("init");
    let (e, o) = c
        .create(ROOT_ID, "a", 0o644, libc::O_RDWR as u32)
        .expect("create a");
    c.write(e.nodeid, o.fh, 0, b"hello, ").expect("write");
    let (e2, o2) = c.create(ROOT_ID, "b", 0o644, 0).expect("create b");
    c.release(e2.nodeid, o2.fh).expect("release b");
    let b = c.lookup(ROOT_ID, "b").expect("lookup b");
    assert_eq!(b.nodeid, e2.nodeid);
    let dir = c.opendir(ROOT_ID).expect("opendir");
    Held {
        file: e.nodeid,
        fh: o.fh,
        other: e2.nodeid,
        dir_fh: dir.fh,
    }
}

/// The guest goes on where it was, without INIT.
fn guest_after(c: &mut FuseClient, h: &Held) {
    assert_eq!(c.read(h.file, h.fh, 0, 100).expect("read"), b"hello, ");
    c.write(h.file, h.fh, 7, b"world")
        .expect("write after restore");
    assert_eq!(c.read(h.file, h.fh, 0, 100).expect("read"), b"hello, world");
    assert_eq!(c.getattr(h.other).expect("getattr b").attr.ino, h.other);
    let names: Vec<Vec<u8>> = c
        .readdirplus(ROOT_ID, h.dir_fh, 0, 4096)
        .expect("readdirplus on the held directory handle")
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, vec![b"a".to_vec(), b"b".to_vec()]);
    c.releasedir(ROOT_ID, h.dir_fh).expect("releasedir");
    c.release(h.file, h.fh).expect("release");
}

#[test]
fn session_continues_on_a_second_device_without_init() {
    let src_fs = Arc::new(MapFs::new());
    let src = device(src_fs.clone());
    let mut c = client(&src.sock);
    let held = guest_before(&mut c);
    c.vmm.stop_queues().expect("stop queues");
    let state = c.vmm.save_state().expect("save");
    let saved = src_fs.snapshot();
    assert!(!saved.files.is_empty() && saved.handles.len() == 2);

    // The source VMM and device go away.
    drop(c);
    src.handle.stop().expect("stop source");

    let dst_fs = Arc::new(MapFs::new());
    let dst = device(dst_fs.clone());
    let mut c = client(&dst.sock);
    c.vmm.load_state(&state).expect("load");
    assert_eq!(
        dst_fs.snapshot(),
        saved,
        "the filesystem got the saved state"
    );
    assert_eq!(dst_fs.loads.load(Ordering::SeqCst), 1);
    // The filesystem negotiated the guest's options again (its `init` ran on the
    // destination), but the guest sent no INIT.
    assert_eq!(dst_fs.inits.load(Ordering::SeqCst), 1);
    guest_after(&mut c, &held);
    let t = dst.handle.last_state_transfer().expect("transfer recorded");
    assert!(!t.save);
    assert_eq!(t.bytes, state.len() as u64);
}

#[test]
fn state_saved_before_init_restores_an_uninitialised_session() {
    let src = device(Arc::new(MapFs::new()));
    let mut c = client(&src.sock);
    c.vmm.stop_queues().expect("stop");
    let state = c.vmm.save_state().expect("save");
    drop(c);

    let dst_fs = Arc::new(MapFs::new());
    let dst = device(dst_fs.clone());
    let mut c = client(&dst.sock);
    c.vmm.load_state(&state).expect("load");
    assert_eq!(dst_fs.inits.load(Ordering::SeqCst), 0);
    assert_eq!(
        c.getattr(ROOT_ID).map(|_| ()),
        Err(libc::EIO),
        "no INIT yet"
    );
    c.init().expect("init");
    c.getattr(ROOT_ID).expect("getattr after INIT");
}

/// Saves a session with a held file, for the negative cases.
fn saved_state() -> Vec<u8> {
    let src = device(Arc::new(MapFs::new()));
    let mut c = client(&src.sock);
    guest_before(&mut c);
    c.vmm.stop_queues().expect("stop");
    c.vmm.save_state().expect("save")
}

/// Loads `bad` into a fresh device: CHECK_DEVICE_STATE must fail, the filesystem must be
/// untouched, and the device must refuse requests (INIT included).
fn rejected(bad: &[u8], what: &str) {
    let dst_fs = Arc::new(MapFs::new());
    let before = dst_fs.snapshot();
    let dst = device(dst_fs.clone());
    let mut c = client(&dst.sock);
    assert!(
        c.vmm.load_state(bad).is_err(),
        "{what}: CHECK_DEVICE_STATE succeeded"
    );
    assert_eq!(dst_fs.snapshot(), before, "{what}: filesystem changed");
    assert_eq!(dst_fs.loads.load(Ordering::SeqCst), 0, "{what}");
    assert_eq!(c.getattr(ROOT_ID).map(|_| ()), Err(libc::EIO), "{what}");
    assert_eq!(c.init().map(|_| ()), Err(libc::EIO), "{what}: INIT served");
    assert_eq!(c.getattr(ROOT_ID).map(|_| ()), Err(libc::EIO), "{what}");
    assert!(dst.handle.last_state_transfer().is_none());
}

#[test]
fn corrupt_stream_is_rejected_and_the_device_stays_unusable() {
    let state = saved_state();
    // A flipped bit in the file data, in the device header, and in the magic.
    for at in [state.len() - 40, 20, 3] {
        let mut bad = state.clone();
        bad[at] ^= 0x01;
        rejected(&bad, &format!("bit flipped at {at}"));
    }
}

#[test]
fn truncated_stream_is_rejected() {
    let state = saved_state();
    for cut in [0, 11, 30, state.len() / 2, state.len() - 1] {
        rejected(&state[..cut], &format!("cut at {cut} of {}", state.len()));
    }
}

#[test]
fn newer_format_version_is_rejected() {
    let mut state = saved_state();
    state[8..12].copy_from_slice(&99u32.to_le_bytes());
    rejected(&state, "version 99");
}

#[test]
fn loading_into_a_device_already_in_use_fails() {
    let state = saved_state();
    let dst_fs = Arc::new(MapFs::new());
    let dst = device(dst_fs.clone());
    let mut c = client(&dst.sock);
    c.init().expect("init");
    assert!(c.vmm.load_state(&state).is_err());
    assert_eq!(dst_fs.loads.load(Ordering::SeqCst), 0);
    // The running session is not disturbed.
    c.getattr(ROOT_ID).expect("getattr");
}

#[test]
fn save_without_filesystem_support_fails_cleanly() {
    // TestFs keeps DynFileSystem's default hooks: EOPNOTSUPP.
    let fs = Arc::new(TestFs {
        inner: Arc::new(MemFs::builder().build().expect("memfs")),
        fsync_gate: None,
    });
    let src = device(fs);
    let mut c = client(&src.sock);
    c.init().expect("init");
    let (e, o) = c
        .create(ROOT_ID, "f", 0o644, libc::O_RDWR as u32)
        .expect("create");
    let bases = c.vmm.stop_queues().expect("stop");
    assert!(c.vmm.save_state().is_err(), "save must fail");
    assert!(src.handle.last_state_transfer().is_none());
    // The migration is abandoned: the VMM restarts the queues and the guest goes on with
    // its session.
    c.vmm.restart_queues(&bases).expect("restart");
    c.write(e.nodeid, o.fh, 0, b"still here").expect("write");
    assert_eq!(c.read(e.nodeid, o.fh, 0, 64).expect("read"), b"still here");
}

#[test]
fn save_waits_for_requests_in_flight() {
    // Writes published before the VMM stops the queues: those the device took are answered
    // before the state is written, and are in it; the rest stay in the queue.
    let fs = Arc::new(MapFs::new());
    let src = device(fs.clone());
    let mut c = client(&src.sock);
    let held = guest_before(&mut c);
    let heads: Vec<u16> = (0..32u64)
        .map(|k| submit_write(&mut c, &held, 100 + k, b"x"))
        .collect();
    c.vmm.stop_queues().expect("stop");
    let state = c.vmm.save_state().expect("save");
    // No waiting: whatever the device answered is in the used ring by now.
    let answered: Vec<u64> = heads
        .iter()
        .zip(100u64..)
        .filter(|(h, _)| c.vmm.wait(1, **h, Duration::ZERO).is_some())
        .map(|(_, off)| off)
        .collect();
    let dst_fs = Arc::new(MapFs::new());
    let dst = device(dst_fs.clone());
    let mut c2 = client(&dst.sock);
    c2.vmm.load_state(&state).expect("load");
    let data = c2.read(held.file, held.fh, 0, 4096).expect("read");
    let saved: Vec<u64> = (100u64..132)
        .filter(|off| data.get(*off as usize) == Some(&b'x'))
        .collect();
    assert_eq!(saved, answered, "answered writes and saved bytes differ");
}

fn submit_write(c: &mut FuseClient, h: &Held, offset: u64, data: &[u8]) -> u16 {
    use vm_memory::ByteValued;
    let w = fuse_backend_rs::abi::fuse_abi::WriteIn {
        fh: h.fh,
        offset,
        size: data.len() as u32,
        ..Default::default()
    };
    let unique = c.next_unique();
    let req = vmm::request(16, unique, h.file, &[w.as_slice(), data]);
    c.vmm.submit(1, &[vmm::Seg::R(req), vmm::Seg::W(256)])
}

/// `GET_VRING_BASE` (the VMM stopping a queue before it saves the device) waits for the
/// requests already taken from that queue: when it returns, their replies are in the used
/// ring. Otherwise a request in flight at the stop would be answered after the VMM's last pass
/// over guest memory, and the migrated guest would wait for it forever.
///
/// An fsync is held in the filesystem; a thread stops the queues. Without the wait the stop
/// returns at once, with the fsync unanswered, and the test fails. With it the stop blocks:
/// the gate is opened once the stop has been pending a while (2 s, only so the test ends;
/// on a machine too slow to even send the stop by then the check passes without testing).
#[test]
fn queue_stop_waits_for_requests_in_flight() {
    use vmm::testfs::Gate;
    let gate = Arc::new(Gate::default());
    let fs = Arc::new(TestFs {
        inner: Arc::new(MemFs::builder().build().expect("memfs")),
        fsync_gate: Some(gate.clone()),
    });
    let src = device(fs);
    let mut c = client(&src.sock);
    c.init().expect("init");
    let (e, o) = c
        .create(ROOT_ID, "f", 0o644, libc::O_RDWR as u32)
        .expect("create");
    let f = fuse_backend_rs::abi::fuse_abi::FsyncIn {
        fh: o.fh,
        fsync_flags: 0,
        padding: 0,
    };
    let unique = c.next_unique();
    let req = {
        use vm_memory::ByteValued;
        vmm::request(20, unique, e.nodeid, &[f.as_slice()])
    };
    let head = c.vmm.submit(1, &[vmm::Seg::R(req), vmm::Seg::W(64)]);
    gate.wait_entered(1, Duration::from_secs(60));
    let stopper = std::thread::spawn(move || {
        c.vmm.stop_queues().expect("stop");
        // Looked at right after the stop returned, without waiting.
        let answered = c.vmm.wait(1, head, Duration::ZERO).is_some();
        (c, answered)
    });
    let started = std::time::Instant::now();
    while !stopper.is_finished() && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    gate.open();
    let (_c, answered) = stopper.join().expect("stopper");
    assert!(
        answered,
        "GET_VRING_BASE returned with a request of the queue still unanswered"
    );
}
