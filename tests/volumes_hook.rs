//! HookFs: observing, denying and answering requests, alone, as a DualFs layer and as a volume.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use boxfs::dualfs::DualFs;
use boxfs::memfs::MemFs;
use boxfs::volumes::{Answer, Hook, HookFs, Op, Request, Verdict, VolumeFs, VolumeOptions};
use boxfs::zero_copy::{MemReader, MemWriter};
use boxfs::{Context, CreateIn, DynFileSystem, FileSystem, ROOT_ID};

fn c(s: &str) -> CString {
    CString::new(s).expect("name")
}

fn memfs() -> Arc<dyn DynFileSystem> {
    Arc::new(MemFs::builder().build().expect("MemFs builds"))
}

/// Counts operations and their failures; denies unlink of "keep"; answers getattr of inode
/// 4242 and reads of inode 4243 itself.
#[derive(Default)]
struct Audit {
    ops: Mutex<HashMap<Op, (u64, u64)>>,
    log: Mutex<Vec<String>>,
}

impl Hook for Audit {
    fn before(&self, req: &Request<'_>) -> Verdict {
        match req.op {
            Op::Unlink if req.name.map(|n| n.to_bytes()) == Some(b"keep") => {
                Verdict::Deny(libc::EPERM)
            }
            Op::Getattr if req.inode == 4242 => {
                // SAFETY: stat64 is a plain C struct; all-zero is valid.
                let mut st: boxfs::stat64 = unsafe { std::mem::zeroed() };
                st.st_ino = 4242;
                st.st_mode = libc::S_IFREG | 0o600;
                Verdict::Answer(Answer::Attr(st, Duration::ZERO))
            }
            Op::Read if req.inode == 4243 => {
                Verdict::Answer(Answer::Data(b"from the hook".to_vec()))
            }
            Op::Lookup if req.inode == 4244 => Verdict::Answer(Answer::Done),
            _ => Verdict::Continue,
        }
    }

    fn after(&self, req: &Request<'_>, result: Result<(), i32>) {
        let mut ops = self.ops.lock();
        let e = ops.entry(req.op).or_default();
        e.0 += 1;
        if result.is_err() {
            e.1 += 1;
        }
        if let Some(n) = req.name {
            self.log
                .lock()
                .push(format!("{:?} {} {:?}", req.op, n.to_string_lossy(), result));
        }
    }
}

fn create(fs: &dyn DynFileSystem, dir: u64, name: &str, data: &[u8]) -> u64 {
    let ctx = Context::new();
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = fs.create(&ctx, dir, &c(name), args).expect("create");
    let mut r = MemReader::copied(data);
    fs.write(
        &ctx,
        e.inode,
        fh.unwrap_or(0),
        &mut r,
        data.len() as u32,
        0,
        None,
        false,
        0,
        0,
    )
    .expect("write");
    fs.release(&ctx, e.inode, 0, fh.unwrap_or(0), false, false, None)
        .expect("release");
    e.inode
}

#[test]
fn hook_observes_denies_and_answers() {
    let audit = Arc::new(Audit::default());
    let fs = HookFs::new(memfs()).with_hook(audit.clone());
    let ctx = Context::new();
    create(&fs, ROOT_ID, "keep", b"k");
    create(&fs, ROOT_ID, "drop", b"d");
    assert_eq!(
        fs.unlink(&ctx, ROOT_ID, &c("keep"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EPERM)
    );
    fs.unlink(&ctx, ROOT_ID, &c("drop")).expect("unlink");
    assert!(
        fs.lookup(&ctx, ROOT_ID, &c("keep")).is_ok(),
        "denied: never reached the backend"
    );
    let _ = fs.lookup(&ctx, ROOT_ID, &c("drop"));
    // Answered by the hook: the backend has no inode 4242.
    let (st, _) = fs.getattr(&ctx, 4242, None).expect("answered");
    assert_eq!(st.st_mode, libc::S_IFREG | 0o600);
    let mut w = MemWriter::new(64);
    let n = fs
        .read(&ctx, 4243, 0, &mut w, 4, 0, None, 0)
        .expect("answered read");
    assert_eq!(
        (n, w.into_inner()),
        (4, b"from".to_vec()),
        "limited to the read size"
    );
    // An answer of the wrong kind is EIO.
    assert_eq!(
        fs.lookup(&ctx, 4244, &c("x")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    let ops = audit.ops.lock();
    assert_eq!(ops[&Op::Create], (2, 0));
    assert_eq!(ops[&Op::Write], (2, 0));
    assert_eq!(ops[&Op::Unlink], (2, 1));
    assert_eq!(ops[&Op::Lookup], (3, 2));
    let log = audit.log.lock();
    assert!(log.contains(&"Unlink keep Err(1)".to_string()), "{log:?}");
    assert!(log.contains(&"Lookup drop Err(2)".to_string()), "{log:?}");
}

#[test]
fn without_a_hook_every_call_is_forwarded() {
    let inner = memfs();
    let fs = HookFs::new(inner.clone());
    let ino = create(&fs, ROOT_ID, "f", b"data");
    let ctx = Context::new();
    assert_eq!(
        inner.lookup(&ctx, ROOT_ID, &c("f")).expect("inner").inode,
        ino
    );
    assert_eq!(fs.getattr(&ctx, ino, None).expect("getattr").0.st_size, 4);
}

#[test]
fn hooks_wrap_a_dualfs_layer_and_a_volume() {
    let upper_audit = Arc::new(Audit::default());
    let upper: Arc<dyn DynFileSystem> =
        Arc::new(HookFs::new(memfs()).with_hook(upper_audit.clone()));
    let lower = memfs();
    create(&*lower, ROOT_ID, "lower", b"L");
    let dual: Arc<dyn DynFileSystem> = Arc::new(
        DualFs::builder()
            .backend_a(upper)
            .backend_b(lower)
            .build()
            .expect("DualFs builds"),
    );
    let vol_audit = Arc::new(Audit::default());
    let vfs = VolumeFs::new(memfs());
    vfs.attach(
        "/o",
        Arc::new(HookFs::new(dual).with_hook(vol_audit.clone())),
        VolumeOptions::new(),
    )
    .expect("attach");
    let ctx = Context::new();
    let o = vfs.lookup(&ctx, ROOT_ID, &c("o")).expect("o").inode;
    create(&vfs, o, "new", b"N");
    assert_eq!(vol_audit.ops.lock()[&Op::Create].0, 1);
    assert!(
        upper_audit.ops.lock()[&Op::Create].0 >= 1,
        "the upper layer saw the create"
    );
    // The volume hook denies unlink of "keep" inside the volume only.
    create(&vfs, o, "keep", b"k");
    assert_eq!(
        vfs.unlink(&ctx, o, &c("keep")).unwrap_err().raw_os_error(),
        Some(libc::EPERM)
    );
    create(&vfs, ROOT_ID, "keep", b"k");
    vfs.unlink(&ctx, ROOT_ID, &c("keep"))
        .expect("root volume has no hook");
}
