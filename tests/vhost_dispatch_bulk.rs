//! The default dispatch ([`Dispatch::SlowToPool`]) hands bulk data requests (READ or WRITE of
//! 64 KiB or more) to the worker pool while the guest keeps several in flight, so the copies
//! run in parallel; a lone one, and small ones, stay on the vring thread.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::sync::Arc;
use std::time::Duration;

use boxfs::memfs::MemFs;
use boxfs::vhost::{Dispatch, FsDevice};
use boxfs::{DynFileSystem, SizeExt, ROOT_ID};
use fuse_backend_rs::abi::fuse_abi::ReadIn;
use vm_memory::ByteValued;
use vmm::{op, request, FuseClient, Reply, Seg, OUT_HEADER};

const MIB: u32 = 1 << 20;

#[test]
fn bulk_reads_in_flight_go_to_the_pool() {
    let fs: Arc<dyn DynFileSystem> =
        Arc::new(MemFs::builder().capacity(256.mib()).build().expect("memfs"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .thread_pool_size(2)
        .dispatch(Dispatch::SlowToPool)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let mut c = FuseClient::connect(&path).expect("connect");
    let (f, o) = c
        .create(ROOT_ID, "big", 0o644 | libc::S_IFREG, libc::O_RDWR as u32)
        .expect("create");
    let data: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
    for (i, chunk) in data.chunks(MIB as usize).enumerate() {
        c.write(f.nodeid, o.fh, i as u64 * u64::from(MIB), chunk)
            .expect("write");
    }
    // One request at a time, large or small: all on the vring thread.
    for i in 0..4u64 {
        let got = c
            .read(f.nodeid, o.fh, i * u64::from(MIB), MIB)
            .expect("read");
        assert_eq!(got, data[(i * u64::from(MIB)) as usize..][..MIB as usize]);
    }
    assert_eq!(
        handle.stats().offloaded,
        0,
        "lone requests are served inline"
    );

    // Eight 1 MiB reads in flight at once (published together, as a guest batch): the vring
    // thread hands them to free workers.
    let q = c.queue;
    let reqs: Vec<Vec<Seg>> = (0..8u64)
        .map(|i| {
            let r = ReadIn {
                fh: o.fh,
                offset: (i % 4) * u64::from(MIB),
                size: MIB,
                ..Default::default()
            };
            let u = c.next_unique();
            vec![
                Seg::R(request(op::READ, u, f.nodeid, &[r.as_slice()])),
                Seg::W(OUT_HEADER + MIB),
            ]
        })
        .collect();
    let heads = c.vmm.submit_many(q, &reqs);
    for (i, head) in heads.into_iter().enumerate() {
        let comp = c
            .vmm
            .wait(q, head, Duration::from_secs(30))
            .expect("read completed");
        let reply = Reply::parse(&comp).expect("reply");
        assert_eq!(reply.header.error, 0);
        let off = (i as u64 % 4) * u64::from(MIB);
        assert!(
            reply.body == data[off as usize..][..MIB as usize],
            "read {i}: wrong data"
        );
    }
    assert!(
        handle.stats().offloaded >= 1,
        "bulk reads in flight go to the pool: {:?}",
        handle.stats()
    );
    // Small requests in flight stay inline.
    let before = handle.stats().offloaded;
    let reqs: Vec<Vec<Seg>> = (0..8u64)
        .map(|i| {
            let r = ReadIn {
                fh: o.fh,
                offset: i * 4096,
                size: 4096,
                ..Default::default()
            };
            let u = c.next_unique();
            vec![
                Seg::R(request(op::READ, u, f.nodeid, &[r.as_slice()])),
                Seg::W(OUT_HEADER + 4096),
            ]
        })
        .collect();
    for head in c.vmm.submit_many(q, &reqs) {
        c.vmm
            .wait(q, head, Duration::from_secs(30))
            .expect("read completed");
    }
    assert_eq!(handle.stats().offloaded, before, "4 KiB reads stay inline");
    c.release(f.nodeid, o.fh).expect("release");
    drop(c);
    handle.stop().expect("stop");
}
