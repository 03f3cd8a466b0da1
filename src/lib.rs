//! # boxfs
//!
//! Host filesystems for Linux guests of microVMs, served over virtio-fs.
//!
//! Every backend implements one object-safe trait, [`DynFileSystem`]: the FUSE operation set of
//! [`fuse_backend_rs`] with inodes and handles as `u64`. Backends therefore nest and compose
//! freely, and any of them can be served to a guest by the vhost-user device in [`vhost`]
//! (feature `vhost`, Linux only).
//!
//! | backend | what it serves |
//! |---|---|
//! | [`passthrough::PassthroughFs`] | a confined host directory; guest ownership and modes kept in an xattr, so the daemon runs unprivileged |
//! | [`memfs::MemFs`] | a complete in-memory filesystem with hard byte and inode limits |
//! | [`dualfs::DualFs`] | two backends under one mount: an overlay with copy-up and whiteouts, or another dispatch policy |
//! | [`filemount::FileMount`] | a single host file, staged under a random tag, with the guest's plan to mount it in place |
//!
//! ```
//! use boxfs::memfs::MemFs;
//! use boxfs::{Context, DynFileSystem, SizeExt, ROOT_ID};
//! use std::ffi::CString;
//! use std::sync::Arc;
//!
//! let fs: Arc<dyn DynFileSystem> = Arc::new(MemFs::builder().capacity(64.mib()).build()?);
//! let ctx = Context::new();
//! let entry = fs.mkdir(&ctx, ROOT_ID, &CString::new("work")?, 0o755, 0o022)?;
//! assert_eq!(fs.lookup(&ctx, ROOT_ID, &CString::new("work")?)?.inode, entry.inode);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(clippy::unwrap_used)]

mod abi;
mod cache;
mod error;
mod fs;
pub mod name;
mod size;
pub mod state;
pub mod zero_copy;

pub mod dualfs;
pub mod filemount;
pub mod memfs;
pub mod passthrough;
pub mod volumes;

#[cfg(all(feature = "vhost", target_os = "linux"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "vhost", target_os = "linux"))))]
pub mod vhost;

#[cfg(all(feature = "sandbox", target_os = "linux"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "sandbox", target_os = "linux"))))]
pub mod sandbox;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use cache::CachePolicy;
pub use error::{Error, Result};
pub use fs::{DynFileSystem, SharedFs};
pub use size::{Size, SizeExt};

/// The FUSE types every backend speaks, re-exported from [`fuse_backend_rs`].
pub use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
pub use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData,
    ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
pub use fuse_backend_rs::file_buf::FileVolatileSlice;
pub use fuse_backend_rs::file_traits::FileReadWriteVolatile;

/// Builds an [`std::io::Error`] from a raw errno value.
#[inline]
pub(crate) fn errno(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}
