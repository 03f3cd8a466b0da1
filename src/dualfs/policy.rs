//! Dispatch policies: which backend a request sees, and what happens when a guest mutates an
//! entry that lives only in backend B.

use std::fmt;
use std::io;

use super::node::Node;

/// The operation a policy is asked about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Resolving a name (`lookup`).
    Lookup,
    /// Listing a directory (`opendir`, `readdir`).
    ReadDir,
    /// Opening a file for reading, reading attributes, links or xattrs.
    Read,
    /// Opening for write or with `O_TRUNC`, writing, truncating.
    Write,
    /// Changing attributes (`setattr`).
    SetAttr,
    /// Setting or removing an extended attribute.
    Xattr,
    /// Creating a name (`create`, `mkdir`, `mknod`, `symlink`).
    Create,
    /// Adding a hard link.
    Link,
    /// Removing a name (`unlink`, `rmdir`).
    Remove,
    /// Renaming.
    Rename,
}

impl Op {
    /// Whether the operation changes the filesystem.
    pub fn is_mutation(self) -> bool {
        !matches!(self, Op::Lookup | Op::ReadDir | Op::Read)
    }
}

/// Which backends a lookup consults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Visibility {
    /// Only backend A; B is invisible.
    AOnly,
    /// Backend A first, then backend B (B entries shadowed by A's and by whiteouts).
    AThenB,
}

/// How a directory present in both backends is listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Listing {
    /// Every name once: A's entries, then B's entries that A neither has nor whites out.
    Merged,
    /// Only the topmost backend that has the directory (A if it has it, else B).
    Topmost,
}

/// What a mutation of an entry that lives only in backend B does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LowerWrite {
    /// Copy the entry up to A first, then apply the mutation to the copy (deletions of B
    /// entries become whiteouts in A).
    CopyUp,
    /// Refuse with this errno (B entries are read-only to the guest).
    Refuse(i32),
}

/// The guest path of a request, computed only if a policy asks for it.
///
/// Paths are absolute guest paths (`/dir/name`), as the DualFs last saw them: a name the
/// guest looked up, renamed or created. For hard-linked files it is one of the names.
pub struct GuestPath<'a> {
    pub(super) node: &'a Node,
    pub(super) name: Option<&'a [u8]>,
}

impl GuestPath<'_> {
    /// The path as bytes, `/` for the root.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        if let Some(n) = self.name {
            parts.push(n.to_vec());
        }
        self.node.push_path(&mut parts);
        if parts.is_empty() {
            return b"/".to_vec();
        }
        let mut out = Vec::new();
        for p in parts.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(p);
        }
        out
    }

    /// Whether the path is `prefix` or lies below it (`prefix` absolute, no trailing `/`).
    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        let p = self.to_bytes();
        let prefix = prefix.strip_suffix(b"/").unwrap_or(prefix);
        p.starts_with(prefix) && (p.len() == prefix.len() || p.get(prefix.len()) == Some(&b'/'))
            || prefix.is_empty()
    }
}

impl fmt::Debug for GuestPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// Decides, per request, how the two backends of a [`DualFs`](super::DualFs) are combined.
///
/// Every method has a default (the overlay behaviour of
/// [`ReadBackendBWriteBackendA`]), so a policy overrides only what it changes. Policies are
/// consulted on every request and must be cheap; `path` is computed lazily (only if
/// [`GuestPath::to_bytes`] is called).
///
/// A policy that routes by subtree and denies an operation:
///
/// ```
/// use boxfs::dualfs::{GuestPath, Op, Policy, Visibility};
///
/// #[derive(Debug)]
/// struct ScratchOnlyUnderTmp;
///
/// impl Policy for ScratchOnlyUnderTmp {
///     fn name(&self) -> &str {
///         "scratch-only-under-tmp"
///     }
///     fn visibility(&self, path: &GuestPath<'_>) -> Visibility {
///         // B (the image) is invisible under /tmp.
///         if path.starts_with(b"/tmp") { Visibility::AOnly } else { Visibility::AThenB }
///     }
///     fn check(&self, op: Op, path: &GuestPath<'_>) -> std::io::Result<()> {
///         if op == Op::Remove && path.starts_with(b"/etc") {
///             return Err(std::io::Error::from_raw_os_error(libc::EPERM));
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Policy: Send + Sync + fmt::Debug {
    /// A short name for logs.
    fn name(&self) -> &str;

    /// Which backends a lookup of `path` consults (asked per name).
    fn visibility(&self, _path: &GuestPath<'_>) -> Visibility {
        Visibility::AThenB
    }

    /// How the directory at `path` is listed.
    fn listing(&self, _path: &GuestPath<'_>) -> Listing {
        Listing::Merged
    }

    /// What `op` on the B-only entry at `path` does.
    fn lower_write(&self, _op: Op, _path: &GuestPath<'_>) -> LowerWrite {
        LowerWrite::CopyUp
    }

    /// Allows or denies `op` on `path` before anything else happens (an `Err` reaches the
    /// guest unchanged).
    fn check(&self, _op: Op, _path: &GuestPath<'_>) -> io::Result<()> {
        Ok(())
    }

    /// Whether [`check`](Self::check) is anything but `Ok(())`; when `false` (the default)
    /// the DualFs skips the call on the hot path.
    fn has_checks(&self) -> bool {
        false
    }
}

/// **Default.** Overlay semantics: lookups and listings see both backends (B's entries
/// shadowed by A's), mutations of B entries copy them up to A first, creations go to A,
/// deletions of B entries are recorded as whiteouts in A.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadBackendBWriteBackendA;

impl Policy for ReadBackendBWriteBackendA {
    fn name(&self) -> &str {
        "read-b-write-a"
    }
}

/// Everything goes to A; B is invisible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendAOnly;

impl Policy for BackendAOnly {
    fn name(&self) -> &str {
        "a-only"
    }
    fn visibility(&self, _path: &GuestPath<'_>) -> Visibility {
        Visibility::AOnly
    }
}

/// Lookups try A first, then B; reads of B entries come from B; every mutation goes to A
/// (with copy-up). Directories are not merged for listing: a directory lists the entries of
/// the topmost backend that has it (names only in B under a directory that also exists in A
/// can still be looked up by name).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendAFallbackToBackendBRead;

impl Policy for BackendAFallbackToBackendBRead {
    fn name(&self) -> &str {
        "a-fallback-b"
    }
    fn listing(&self, _path: &GuestPath<'_>) -> Listing {
        Listing::Topmost
    }
}

/// Merged lookups and listings, A wins on name conflicts; B is reference data the guest
/// cannot change: mutations of B entries (writes, attribute and xattr changes, renames,
/// deletions, links) fail with `EROFS` instead of copying up. New names go to A.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeReadsBackendAPrecedence;

impl Policy for MergeReadsBackendAPrecedence {
    fn name(&self) -> &str {
        "merge-reads-a-precedence"
    }
    fn lower_write(&self, _op: Op, _path: &GuestPath<'_>) -> LowerWrite {
        LowerWrite::Refuse(libc::EROFS)
    }
}

/// Looks a built-in policy up by its [`Policy::name`] (as `boxfsd --policy` does).
///
/// ```
/// assert_eq!(boxfs::dualfs::policy_by_name("a-only").map(|p| p.name().to_owned()),
///            Some("a-only".to_owned()));
/// ```
pub fn policy_by_name(name: &str) -> Option<Box<dyn Policy>> {
    let p: Box<dyn Policy> = match name {
        "read-b-write-a" | "ReadBackendBWriteBackendA" => Box::new(ReadBackendBWriteBackendA),
        "a-only" | "BackendAOnly" => Box::new(BackendAOnly),
        "a-fallback-b" | "BackendAFallbackToBackendBRead" => {
            Box::new(BackendAFallbackToBackendBRead)
        }
        "merge-reads-a-precedence" | "MergeReadsBackendAPrecedence" => {
            Box::new(MergeReadsBackendAPrecedence)
        }
        _ => return None,
    };
    Some(p)
}
