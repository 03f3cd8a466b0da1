//! The conformance suite on PassthroughFs, in each symlink mode, with the test process
//! unprivileged.

#[macro_use]
mod conformance;
mod passthrough_common;

use boxfs::passthrough::{HostPermissions, PassthroughFs, SymlinkMode};

fn fixture(symlinks: SymlinkMode, perms: HostPermissions) -> conformance::Fixture {
    let dir = passthrough_common::tempdir();
    let fs = PassthroughFs::builder(dir.path())
        .symlinks(symlinks)
        .host_permissions(perms)
        .build()
        .expect("PassthroughFs builds");
    conformance::Fixture::with_guard(fs, dir)
}

mod virtualized {
    use super::*;
    conformance_suite!(|| fixture(SymlinkMode::Virtualized, HostPermissions::Private));
}

mod host_symlinks {
    use super::*;
    conformance_suite!(|| fixture(SymlinkMode::Host, HostPermissions::Mirror));
}
