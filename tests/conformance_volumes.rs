//! The conformance suite inside volumes of a `VolumeFs`: a dir volume (PassthroughFs), a
//! memfs volume and an overlay volume (DualFs: PassthroughFs lower, MemFs upper), each at a
//! path below the root backend, the suite's root being the volume's root.

#[macro_use]
mod conformance;
mod passthrough_common;
mod volumes_common;

use std::ffi::CString;
use std::sync::Arc;

use boxfs::dualfs::DualFs;
use boxfs::memfs::MemFs;
use boxfs::passthrough::PassthroughFs;
use boxfs::volumes::{VolumeFs, VolumeOptions};
use boxfs::{Context, DynFileSystem, FileSystem, SizeExt, ROOT_ID};
use volumes_common::Rerooted;

/// A `VolumeFs` over a MemFs root with `vol` at `path` (its parent directories created in the
/// root), served rerooted at the volume.
fn inside(
    path: &str,
    opts: VolumeOptions,
    vol: Arc<dyn DynFileSystem>,
    guard: Box<dyn std::any::Any + Send + Sync>,
) -> conformance::Fixture {
    let root: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().build().expect("MemFs builds"));
    let ctx = Context::new();
    let comps: Vec<&str> = path[1..].split('/').collect();
    let mut dir = ROOT_ID;
    for c in &comps[..comps.len() - 1] {
        dir = root
            .mkdir(&ctx, dir, &CString::new(*c).expect("name"), 0o755, 0)
            .expect("mkdir")
            .inode;
    }
    let vfs = Arc::new(VolumeFs::new(root));
    vfs.attach(path, vol, opts).expect("attach");
    let mut dir = ROOT_ID;
    for c in &comps {
        dir = vfs
            .lookup(&ctx, dir, &CString::new(*c).expect("name"))
            .expect("lookup")
            .inode;
    }
    assert_ne!(dir >> 40, 0, "the volume root is namespaced");
    conformance::Fixture::new(Rerooted {
        fs: vfs,
        root: dir,
        _guard: guard,
    })
}

fn dir_volume() -> conformance::Fixture {
    let dir = passthrough_common::tempdir();
    let fs = PassthroughFs::builder(dir.path())
        .build()
        .expect("PassthroughFs builds");
    inside("/work", VolumeOptions::new(), Arc::new(fs), Box::new(dir))
}

fn memfs_volume() -> conformance::Fixture {
    let fs = MemFs::builder()
        .capacity(2.gib())
        .build()
        .expect("MemFs builds");
    inside("/tmp", VolumeOptions::new(), Arc::new(fs), Box::new(()))
}

fn overlay_volume() -> conformance::Fixture {
    let dir = passthrough_common::tempdir();
    std::fs::write(dir.path().join("lower-file"), b"from lower").expect("write");
    let lower: Arc<dyn DynFileSystem> = Arc::new(
        PassthroughFs::builder(dir.path())
            .readonly(true)
            .build()
            .expect("PassthroughFs builds"),
    );
    let upper: Arc<dyn DynFileSystem> = Arc::new(
        MemFs::builder()
            .capacity(2.gib())
            .build()
            .expect("MemFs builds"),
    );
    let fs = DualFs::builder()
        .backend_a(upper)
        .backend_b(lower)
        .build()
        .expect("DualFs builds");
    inside(
        "/srv/data/overlay",
        VolumeOptions::new(),
        Arc::new(fs),
        Box::new(dir),
    )
}

/// A memfs volume with hide patterns (names the suite never uses): every node id then goes
/// through the volume's map of handed-out ids.
fn memfs_volume_with_hidden_names() -> conformance::Fixture {
    let fs = MemFs::builder()
        .capacity(2.gib())
        .build()
        .expect("MemFs builds");
    let opts = VolumeOptions::new().hide("*.pem").hide(".ssh/");
    inside("/home", opts, Arc::new(fs), Box::new(()))
}

mod dir {
    use super::*;
    conformance_suite!(dir_volume);
}

mod memfs {
    use super::*;
    conformance_suite!(memfs_volume);
}

mod overlay {
    use super::*;
    conformance_suite!(overlay_volume);
}

mod memfs_hidden {
    use super::*;
    conformance_suite!(memfs_volume_with_hidden_names);
}
