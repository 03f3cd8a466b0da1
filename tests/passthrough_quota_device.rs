//! The PassthroughFs quota stays exact through the device: writes racing on four request
//! queues (one vring thread each) and a file unlinked while open.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod passthrough_common;
mod vmm;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use boxfs::passthrough::PassthroughFs;
use boxfs::vhost::{Dispatch, FsDevice};
use boxfs::{DynFileSystem, ROOT_ID};
use fuse_backend_rs::abi::fuse_abi::WriteIn;
use vm_memory::ByteValued;
use vmm::{op, request, FuseClient, Reply, Seg};

const QUEUES: usize = 4;
const T: Duration = Duration::from_secs(30);

fn bytes_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let md = std::fs::symlink_metadata(e.expect("entry").path()).expect("stat");
        if md.is_file() {
            total += md.len();
        }
    }
    total
}

#[test]
fn racing_writes_on_several_queues_and_an_open_orphan_are_charged_exactly() {
    let share = passthrough_common::tempdir();
    let sock = passthrough_common::tempdir();
    let fs = Arc::new(
        PassthroughFs::builder(share.path())
            .quota_bytes(Some(1 << 30))
            .build()
            .expect("build"),
    );
    let path = sock.path().join("fs.sock");
    let handle = FsDevice::builder(fs.clone() as Arc<dyn DynFileSystem>)
        .tag("quota")
        .request_queues(QUEUES)
        .thread_pool_size(0)
        .dispatch(Dispatch::VringThread)
        .build()
        .expect("device")
        .serve(&path)
        .expect("serve");
    let mut c = FuseClient::connect(&path).expect("connect");
    let (f, o) = c
        .create(
            ROOT_ID,
            "shared",
            0o644 | libc::S_IFREG,
            libc::O_RDWR as u32,
        )
        .expect("create");

    // 8 writers: writer w's k-th chunk lands at (k * 8 + w) * CHUNK, so nearly every write
    // extends the file; their requests are spread over every queue, many in flight at once.
    const WRITERS: u64 = 8;
    const ROUNDS: u64 = 40;
    const CHUNK: usize = 32 * 1024;
    for k in 0..ROUNDS {
        let mut heads = Vec::new();
        for w in 0..WRITERS {
            let data = vec![w as u8; CHUNK];
            let wi = WriteIn {
                fh: o.fh,
                offset: (k * WRITERS + w) * CHUNK as u64,
                size: CHUNK as u32,
                ..Default::default()
            };
            let unique = c.next_unique();
            let req = request(op::WRITE, unique, f.nodeid, &[wi.as_slice(), &data]);
            let q = 1 + (w as usize % QUEUES);
            heads.push((q, c.vmm.submit(q, &[Seg::R(req), Seg::W(64)])));
        }
        for (q, head) in heads {
            let done = c.vmm.wait(q, head, T).expect("completion");
            let r = Reply::parse(&done).expect("reply");
            assert_eq!(r.header.error, 0, "write failed");
        }
    }
    let size = WRITERS * ROUNDS * CHUNK as u64;
    assert_eq!(c.getattr(f.nodeid).expect("getattr").attr.size, size);
    assert_eq!(fs.quota_used(), Some(bytes_on_disk(share.path())));

    // Unlinked while open, written after the unlink, then released and forgotten.
    let mut name = b"shared".to_vec();
    name.push(0);
    c.call(op::UNLINK, ROOT_ID, &[&name], 64).expect("unlink");
    c.write(f.nodeid, o.fh, size, &[1u8; 1000])
        .expect("write after unlink");
    assert_eq!(
        fs.quota_used(),
        Some(size + 1000),
        "still on disk while open"
    );
    c.release(f.nodeid, o.fh).expect("release");
    c.forget(f.nodeid, 1);
    assert_eq!(c.getattr(ROOT_ID).expect("root").attr.ino, ROOT_ID);
    assert_eq!(fs.quota_used(), Some(0));
    assert_eq!(bytes_on_disk(share.path()), 0);
    drop(c);
    handle.wait().expect("device ends");
}
