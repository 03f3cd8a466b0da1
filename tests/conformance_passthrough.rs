//! The conformance suite on PassthroughFs, in each symlink mode, with the test process
//! unprivileged.

// The shared suite is linted in its own file; only PassthroughFs is under test here.
#[allow(
    clippy::unnecessary_cast,
    clippy::wrong_self_convention,
    clippy::unnecessary_to_owned
)]
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
