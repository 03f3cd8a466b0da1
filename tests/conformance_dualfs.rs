//! The conformance suite on DualFs, per policy, over two backend configurations:
//! A = MemFs over B = a read-only PassthroughFs with prepared content, and A = PassthroughFs
//! over B = PassthroughFs. The prepared B content uses names no conformance test uses, so the
//! suite's expectations (which only ever create new names) hold unchanged; B's tree is
//! verified untouched after each test.
//!
//! Every test of the suite applies to every built-in policy: the suite only creates fresh
//! names, and all policies put new names in A with full POSIX semantics.

#[allow(
    clippy::unnecessary_cast,
    clippy::wrong_self_convention,
    clippy::unnecessary_to_owned
)]
#[macro_use]
mod conformance;
mod passthrough_common;

use std::path::Path;
use std::sync::Arc;

use boxfs::dualfs::{
    BackendAFallbackToBackendBRead, BackendAOnly, DualFs, MergeReadsBackendAPrecedence, Policy,
    ReadBackendBWriteBackendA,
};
use boxfs::memfs::MemFs;
use boxfs::passthrough::PassthroughFs;
use boxfs::{DynFileSystem, SizeExt};

/// Fills a lower directory with content the suite never names.
fn prepare_lower(dir: &Path) {
    std::fs::write(dir.join("lower-file"), b"from B").expect("write");
    std::fs::create_dir(dir.join("lower-dir")).expect("mkdir");
    std::fs::write(dir.join("lower-dir/inner"), b"inner").expect("write");
    std::os::unix::fs::symlink("lower-file", dir.join("lower-link")).expect("symlink");
}

/// A snapshot of a host tree: (relative path, kind, content or link target).
type Snapshot = Vec<(String, String, Vec<u8>)>;

fn snapshot(dir: &Path) -> Snapshot {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            let rel = p.strip_prefix(dir).expect("prefix").display().to_string();
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                out.push((rel, "dir".into(), Vec::new()));
                stack.push(p);
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&p).expect("readlink");
                out.push((rel, "link".into(), t.display().to_string().into_bytes()));
            } else {
                out.push((rel, "file".into(), std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

/// Keeps the temp dirs alive and checks on drop that B's tree did not change.
struct Guard {
    lower: tempfile::TempDir,
    before: Snapshot,
    _upper: Option<tempfile::TempDir>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(snapshot(self.lower.path()), self.before, "B was modified");
        }
    }
}

fn lower() -> (Arc<dyn DynFileSystem>, tempfile::TempDir, Snapshot) {
    let dir = passthrough_common::tempdir();
    prepare_lower(dir.path());
    let before = snapshot(dir.path());
    let fs = PassthroughFs::builder(dir.path())
        .readonly(true)
        .build()
        .expect("PassthroughFs builds");
    (Arc::new(fs), dir, before)
}

fn memfs_over_passthrough(policy: impl Policy + 'static) -> conformance::Fixture {
    let (b, dir, before) = lower();
    let a: Arc<dyn DynFileSystem> = Arc::new(
        MemFs::builder()
            .capacity(2.gib())
            .build()
            .expect("MemFs builds"),
    );
    let fs = DualFs::builder()
        .backend_a(a)
        .backend_b(b)
        .policy(policy)
        .build()
        .expect("DualFs builds");
    conformance::Fixture::with_guard(
        fs,
        Guard {
            lower: dir,
            before,
            _upper: None,
        },
    )
}

fn passthrough_over_passthrough(policy: impl Policy + 'static) -> conformance::Fixture {
    let (b, dir, before) = lower();
    let up = passthrough_common::tempdir();
    let a: Arc<dyn DynFileSystem> = Arc::new(
        PassthroughFs::builder(up.path())
            .build()
            .expect("PassthroughFs builds"),
    );
    let fs = DualFs::builder()
        .backend_a(a)
        .backend_b(b)
        .policy(policy)
        .build()
        .expect("DualFs builds");
    conformance::Fixture::with_guard(
        fs,
        Guard {
            lower: dir,
            before,
            _upper: Some(up),
        },
    )
}

mod memfs_default {
    use super::*;
    conformance_suite!(|| memfs_over_passthrough(ReadBackendBWriteBackendA));
}

mod memfs_a_only {
    use super::*;
    conformance_suite!(|| memfs_over_passthrough(BackendAOnly));
}

mod memfs_fallback {
    use super::*;
    conformance_suite!(|| memfs_over_passthrough(BackendAFallbackToBackendBRead));
}

mod memfs_merge_reads {
    use super::*;
    conformance_suite!(|| memfs_over_passthrough(MergeReadsBackendAPrecedence));
}

mod passthrough_default {
    use super::*;
    conformance_suite!(|| passthrough_over_passthrough(ReadBackendBWriteBackendA));
}

mod passthrough_a_only {
    use super::*;
    conformance_suite!(|| passthrough_over_passthrough(BackendAOnly));
}

mod passthrough_fallback {
    use super::*;
    conformance_suite!(|| passthrough_over_passthrough(BackendAFallbackToBackendBRead));
}

mod passthrough_merge_reads {
    use super::*;
    conformance_suite!(|| passthrough_over_passthrough(MergeReadsBackendAPrecedence));
}

/// Three layers: DualFs(MemFs, DualFs(MemFs, read-only PassthroughFs)).
fn nested() -> conformance::Fixture {
    let (c, dir, before) = lower();
    let mid: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().build().expect("MemFs builds"));
    let inner: Arc<dyn DynFileSystem> = Arc::new(
        DualFs::builder()
            .backend_a(mid)
            .backend_b(c)
            .build()
            .expect("DualFs builds"),
    );
    let top: Arc<dyn DynFileSystem> = Arc::new(
        MemFs::builder()
            .capacity(2.gib())
            .build()
            .expect("MemFs builds"),
    );
    let fs = DualFs::builder()
        .backend_a(top)
        .backend_b(inner)
        .build()
        .expect("DualFs builds");
    conformance::Fixture::with_guard(
        fs,
        Guard {
            lower: dir,
            before,
            _upper: None,
        },
    )
}

mod nested_default {
    use super::*;
    conformance_suite!(nested);
}
