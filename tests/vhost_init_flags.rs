//! FUSE_INIT through the device: the flags the backends accept from a guest.
//!
//! No backend accepts `FUSE_ATOMIC_O_TRUNC`. With it, the guest kernel sends `O_TRUNC` inside
//! FUSE_OPEN and the daemon truncates the host file *before* the guest's VFS has made its own
//! checks of that open: an `open(O_RDONLY | O_TRUNC)` of a file a guest process is executing
//! gets `ETXTBSY` from the guest kernel, yet the file was already emptied on the host, and the
//! running program dies of SIGBUS at its next page fault (pjdfstest's `open::etxtbsy` failed
//! this way in a 2-vCPU guest). Without the flag the guest truncates with SETATTR after its
//! checks, as virtiofsd has it.
#![cfg(all(feature = "vhost", target_os = "linux"))]

mod vmm;

use std::sync::Arc;

use boxfs::memfs::MemFs;
use boxfs::passthrough::PassthroughFs;
use boxfs::vhost::FsDevice;
use boxfs::{DynFileSystem, SizeExt};
use vmm::{FuseClient, Vmm, VmmConfig, GUEST_INIT_FLAGS};

/// `FUSE_ATOMIC_O_TRUNC` (include/uapi/linux/fuse.h).
const ATOMIC_O_TRUNC: u32 = 1 << 3;

fn init_flags(fs: Arc<dyn DynFileSystem>) -> u32 {
    let sock = tempfile::tempdir().expect("socket dir");
    let path = sock.path().join("fs.sock");
    let handle = FsDevice::builder(fs)
        .build()
        .expect("build")
        .serve(&path)
        .expect("serve");
    let vmm = Vmm::connect(&path, VmmConfig::default()).expect("connect");
    let mut c = FuseClient::new(vmm);
    // The guest offers the flag (a Linux guest does).
    assert_ne!(GUEST_INIT_FLAGS & ATOMIC_O_TRUNC, 0);
    let out = c.init().expect("INIT");
    drop(c);
    handle.stop().expect("stop");
    out.flags
}

#[test]
fn passthrough_leaves_o_trunc_to_the_guest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = Arc::new(
        PassthroughFs::builder(dir.path())
            .build()
            .expect("passthrough"),
    );
    let flags = init_flags(fs);
    assert_eq!(flags & ATOMIC_O_TRUNC, 0, "INIT flags {flags:#x}");
}

#[test]
fn memfs_leaves_o_trunc_to_the_guest() {
    let fs = Arc::new(MemFs::builder().capacity(64.mib()).build().expect("memfs"));
    let flags = init_flags(fs);
    assert_eq!(flags & ATOMIC_O_TRUNC, 0, "INIT flags {flags:#x}");
}
