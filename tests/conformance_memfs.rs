//! The conformance suite on MemFs.

#[macro_use]
mod conformance;

use boxfs::memfs::MemFs;
use boxfs::SizeExt;

conformance_suite!(|| conformance::Fixture::new(
    MemFs::builder()
        .capacity(2.gib())
        .build()
        .expect("MemFs builds")
));
