//! DualFs takes the guest-caching settings every backend has (policy, timeouts, writeback)
//! and imposes them on its layers' answers; unset, the layers' own settings pass through.

use std::ffi::CString;
use std::sync::Arc;
use std::time::Duration;

use boxfs::dualfs::DualFs;
use boxfs::memfs::MemFs;
use boxfs::{CachePolicy, Context, DynFileSystem, FileSystem, FsOptions, OpenOptions, ROOT_ID};

fn layer(policy: CachePolicy) -> Arc<dyn DynFileSystem> {
    Arc::new(
        MemFs::builder()
            .capacity(1 << 20)
            .cache_policy(policy)
            .build()
            .expect("memfs"),
    )
}

fn with_file(b: &Arc<dyn DynFileSystem>) {
    let ctx = Context::new();
    let name = CString::new("f").unwrap();
    let args = boxfs::CreateIn {
        flags: libc::O_RDWR as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (e, fh, _, _) = b.create(&ctx, ROOT_ID, &name, args).expect("create");
    b.release(&ctx, e.inode, 0, fh.unwrap_or(0), false, false, None)
        .expect("release");
}

/// Lookup timeouts, getattr timeout, open flags of a file and of the root directory.
fn observe(fs: &DualFs) -> (Duration, Duration, Duration, OpenOptions, OpenOptions) {
    let ctx = Context::new();
    let e = fs
        .lookup(&ctx, ROOT_ID, &CString::new("f").unwrap())
        .expect("lookup");
    let (_, attr) = fs.getattr(&ctx, e.inode, None).expect("getattr");
    let (fh, file_opts, _) = fs
        .open(&ctx, e.inode, libc::O_RDONLY as u32, 0)
        .expect("open");
    fs.release(&ctx, e.inode, 0, fh.unwrap_or(0), false, false, None)
        .expect("release");
    let (dh, dir_opts) = fs.opendir(&ctx, ROOT_ID, 0).expect("opendir");
    fs.releasedir(&ctx, ROOT_ID, 0, dh.unwrap_or(0))
        .expect("releasedir");
    (e.entry_timeout, e.attr_timeout, attr, file_opts, dir_opts)
}

#[test]
fn layers_settings_pass_through_by_default() {
    let (a, b) = (layer(CachePolicy::Always), layer(CachePolicy::Always));
    with_file(&b);
    let fs = DualFs::builder().backend_a(a).backend_b(b).build().unwrap();
    let (entry, attr, getattr, file, _) = observe(&fs);
    let day = CachePolicy::Always.timeout();
    assert_eq!((entry, attr, getattr), (day, day, day));
    assert!(file.contains(OpenOptions::KEEP_CACHE));
}

#[test]
fn cache_policy_replaces_the_layers_answers() {
    let (a, b) = (layer(CachePolicy::Always), layer(CachePolicy::Always));
    with_file(&b);
    let fs = DualFs::builder()
        .backend_a(a)
        .backend_b(b)
        .cache_policy(CachePolicy::Never)
        .build()
        .unwrap();
    let (entry, attr, getattr, file, dir) = observe(&fs);
    assert_eq!(
        (entry, attr, getattr),
        (Duration::ZERO, Duration::ZERO, Duration::ZERO)
    );
    assert!(file.contains(OpenOptions::DIRECT_IO), "{file:?}");
    assert!(!file.contains(OpenOptions::KEEP_CACHE), "{file:?}");
    assert!(!dir.contains(OpenOptions::KEEP_CACHE), "{dir:?}");
}

#[test]
fn explicit_timeouts_win_over_the_policy() {
    let (a, b) = (layer(CachePolicy::Auto), layer(CachePolicy::Auto));
    with_file(&b);
    let fs = DualFs::builder()
        .backend_a(a)
        .backend_b(b)
        .cache_policy(CachePolicy::Always)
        .timeouts(Duration::from_secs(7), Duration::from_secs(3))
        .build()
        .unwrap();
    let (entry, attr, getattr, file, _) = observe(&fs);
    assert_eq!(entry, Duration::from_secs(7));
    assert_eq!(
        (attr, getattr),
        (Duration::from_secs(3), Duration::from_secs(3))
    );
    assert!(file.contains(OpenOptions::KEEP_CACHE));
}

#[test]
fn writeback_is_offered_or_refused_as_set() {
    let capable = FsOptions::all();
    let plain = DualFs::builder()
        .backend_a(layer(CachePolicy::Auto))
        .backend_b(layer(CachePolicy::Auto))
        .build()
        .unwrap();
    let layers = plain.init(capable).expect("init");
    let on = DualFs::builder()
        .backend_a(layer(CachePolicy::Auto))
        .backend_b(layer(CachePolicy::Auto))
        .writeback(true)
        .build()
        .unwrap();
    let got = on.init(capable).expect("init");
    assert!(got.contains(FsOptions::WRITEBACK_CACHE));
    assert_eq!(
        got - FsOptions::WRITEBACK_CACHE,
        layers - FsOptions::WRITEBACK_CACHE
    );
    let off = DualFs::builder()
        .backend_a(layer(CachePolicy::Auto))
        .backend_b(layer(CachePolicy::Auto))
        .writeback(false)
        .build()
        .unwrap();
    assert!(!off
        .init(capable)
        .expect("init")
        .contains(FsOptions::WRITEBACK_CACHE));
    // Not offered when the guest cannot take it.
    let got = on.init(capable - FsOptions::WRITEBACK_CACHE).expect("init");
    assert!(!got.contains(FsOptions::WRITEBACK_CACHE));
}

/// A miss in the overlay may be cached by the guest for the imposed entry timeout, else for
/// the shorter of the layers' negative timeouts (zero under `Never`: every miss asks again).
#[test]
fn negative_timeout_follows_the_entry_timeout() {
    let secs = Duration::from_secs;
    let overlay = |a: CachePolicy, b: CachePolicy, imposed: Option<CachePolicy>| {
        let mut builder = DualFs::builder().backend_a(layer(a)).backend_b(layer(b));
        if let Some(p) = imposed {
            builder = builder.cache_policy(p);
        }
        builder.build().unwrap().negative_timeout()
    };
    assert_eq!(
        overlay(CachePolicy::Auto, CachePolicy::Always, None),
        secs(1)
    );
    assert_eq!(
        overlay(CachePolicy::Always, CachePolicy::Never, None),
        Duration::ZERO
    );
    assert_eq!(
        overlay(
            CachePolicy::Always,
            CachePolicy::Always,
            Some(CachePolicy::Auto)
        ),
        secs(1)
    );
    assert_eq!(
        overlay(
            CachePolicy::Always,
            CachePolicy::Always,
            Some(CachePolicy::Never)
        ),
        Duration::ZERO
    );
    let fs = DualFs::builder()
        .backend_a(layer(CachePolicy::Auto))
        .backend_b(layer(CachePolicy::Auto))
        .timeouts(secs(7), secs(3))
        .build()
        .unwrap();
    assert_eq!(fs.negative_timeout(), secs(7));
}
