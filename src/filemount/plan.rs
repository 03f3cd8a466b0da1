//! The guest mount plan: the ordered steps a guest agent runs to put staged files in place,
//! and their rendering as a POSIX `sh` script.
//!
//! For each file mount, in order:
//!
//! 1. mount the share (its tag) on a unique staging path, `/run/boxfs-filemount/<tag>`;
//! 2. create the destination's parent directory;
//! 3. create the destination file if it is missing, without truncating an existing one;
//! 4. bind-mount the staged file onto the destination;
//! 5. remount the bind with `ro`/`nosuid`/`nodev`/`noexec` as requested;
//! 6. detach (`umount -l`) and remove the staging path.
//!
//! After step 6 the share is reachable only through the bind mount: the bind pins the share's
//! superblock, so the virtio-fs connection stays up, while nothing else of the share (its root
//! directory) is reachable by path. Mounts are ordered parents first (by destination depth),
//! and two mounts on one destination — or a destination inside another file mount's
//! destination — are rejected.
//!
//! ```
//! use boxfs::filemount::{GuestMount, GuestPlan, Tag};
//!
//! let plan = GuestPlan::new(&[GuestMount {
//!     tag: Tag::parse("fm_0123456789abcdef").unwrap(),
//!     file_name: "app.conf".into(),
//!     destination: "/etc/app/app.conf".into(),
//!     readonly: true,
//!     nosuid: true,
//!     nodev: true,
//!     noexec: false,
//! }])?;
//! let sh = plan.to_sh();
//! assert!(sh.contains("mount --bind '/run/boxfs-filemount/fm_0123456789abcdef/app.conf' '/etc/app/app.conf'"));
//! assert!(sh.contains("mount -o remount,bind,ro,nosuid,nodev '/etc/app/app.conf'"));
//! assert!(sh.contains("umount -l '/run/boxfs-filemount/fm_0123456789abcdef'"));
//! # Ok::<(), boxfs::filemount::PlanError>(())
//! ```

use std::fmt::Write as _;

use super::tag::Tag;

/// Guest directory under which shares are mounted while a plan runs.
pub const STAGING_BASE: &str = "/run/boxfs-filemount";

/// One file mount as the guest sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestMount {
    /// The share's virtio-fs tag.
    pub tag: Tag,
    /// The file's name inside the share.
    pub file_name: String,
    /// Absolute guest path the file appears at.
    pub destination: String,
    /// Mount read-only.
    pub readonly: bool,
    /// Mount `nosuid`.
    pub nosuid: bool,
    /// Mount `nodev`.
    pub nodev: bool,
    /// Mount `noexec`.
    pub noexec: bool,
}

impl GuestMount {
    fn flags(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.readonly {
            f.push("ro");
        }
        if self.nosuid {
            f.push("nosuid");
        }
        if self.nodev {
            f.push("nodev");
        }
        if self.noexec {
            f.push("noexec");
        }
        f
    }
}

/// One step of a [`GuestPlan`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// `mkdir -p STAGING; mount -t virtiofs [-o FLAGS] TAG STAGING`.
    MountShare {
        /// The share's tag.
        tag: Tag,
        /// Where to mount it.
        staging: String,
        /// Mount options (`ro`, `nosuid`, ...), possibly empty.
        flags: Vec<&'static str>,
    },
    /// `mkdir -p DIR`.
    CreateParent {
        /// The directory.
        dir: String,
    },
    /// Create `PATH` as an empty file if nothing is there; never truncates.
    CreateFile {
        /// The destination.
        path: String,
    },
    /// `mount --bind SOURCE TARGET`.
    BindMount {
        /// The staged file.
        source: String,
        /// The destination.
        target: String,
    },
    /// `mount -o remount,bind,FLAGS TARGET`.
    Remount {
        /// The destination.
        target: String,
        /// `ro`, `nosuid`, `nodev`, `noexec` (never empty).
        flags: Vec<&'static str>,
    },
    /// `umount -l STAGING; rmdir STAGING`.
    DetachShare {
        /// The staging path.
        staging: String,
    },
}

impl Step {
    /// The step as `sh` commands (one or two lines, no trailing newline).
    pub fn to_sh(&self) -> String {
        match self {
            Step::MountShare {
                tag,
                staging,
                flags,
            } => {
                let opts = if flags.is_empty() {
                    String::new()
                } else {
                    format!("-o {} ", flags.join(","))
                };
                format!(
                    "mkdir -p {s}\nmount -t virtiofs {opts}{t} {s}",
                    s = quote(staging),
                    t = quote(tag.as_str())
                )
            }
            Step::CreateParent { dir } => format!("mkdir -p {}", quote(dir)),
            Step::CreateFile { path } => {
                let p = quote(path);
                format!("[ -e {p} ] || : >> {p}")
            }
            Step::BindMount { source, target } => {
                format!("mount --bind {} {}", quote(source), quote(target))
            }
            Step::Remount { target, flags } => {
                format!(
                    "mount -o remount,bind,{} {}",
                    flags.join(","),
                    quote(target)
                )
            }
            Step::DetachShare { staging } => {
                let s = quote(staging);
                format!("umount -l {s}\nrmdir {s}")
            }
        }
    }
}

/// Why a plan was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A destination is not a usable absolute guest path.
    #[error("guest path {0:?}: {1}")]
    BadPath(String, &'static str),
    /// A staged file name cannot be used in a guest path.
    #[error("file name {0:?}: {1}")]
    BadFileName(String, &'static str),
    /// Two mounts on one destination.
    #[error("two file mounts on {0}")]
    DuplicateDestination(String),
    /// A destination inside another file mount's destination.
    #[error("{inner} is inside the file mount {outer}")]
    NestedDestination {
        /// The file mount's destination.
        outer: String,
        /// The destination below it.
        inner: String,
    },
}

/// Normalizes an absolute guest path: single slashes, no trailing slash; rejects relative
/// paths, `.`/`..` components, the root itself, and NUL or newline bytes.
pub fn normalize_guest_path(p: &str) -> Result<String, PlanError> {
    let bad = |why| Err(PlanError::BadPath(p.to_owned(), why));
    if !p.starts_with('/') {
        return bad("not absolute");
    }
    if p.contains('\0') || p.contains('\n') {
        return bad("contains a NUL or newline");
    }
    if p.ends_with('/') {
        return bad("ends with a slash (a file mount needs a file path)");
    }
    let mut out = String::with_capacity(p.len());
    for comp in p.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." {
            return bad("contains . or ..");
        }
        out.push('/');
        out.push_str(comp);
    }
    if out.is_empty() {
        return bad("is the root directory");
    }
    Ok(out)
}

/// Checks a staged file name: one non-empty component without NUL or newline.
pub(crate) fn check_file_name(name: &str) -> Result<(), PlanError> {
    let bad = |why| Err(PlanError::BadFileName(name.to_owned(), why));
    if name.is_empty() || name == "." || name == ".." {
        return bad("empty, . or ..");
    }
    if name.contains('/') || name.contains('\0') || name.contains('\n') {
        return bad("contains a slash, NUL or newline");
    }
    Ok(())
}

/// The steps that mount a set of staged files in the guest; see the [module docs](crate::filemount).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPlan {
    mounts: Vec<GuestMount>,
    steps: Vec<Step>,
}

impl GuestPlan {
    /// Plans `mounts`, ordered parents first.
    pub fn new(mounts: &[GuestMount]) -> Result<GuestPlan, PlanError> {
        let mut ms: Vec<GuestMount> = Vec::with_capacity(mounts.len());
        for m in mounts {
            check_file_name(&m.file_name)?;
            let mut m = m.clone();
            m.destination = normalize_guest_path(&m.destination)?;
            ms.push(m);
        }
        ms.sort_by(|a, b| {
            let depth = |m: &GuestMount| m.destination.matches('/').count();
            depth(a)
                .cmp(&depth(b))
                .then_with(|| a.destination.cmp(&b.destination))
        });
        for (i, a) in ms.iter().enumerate() {
            for b in &ms[i + 1..] {
                if a.destination == b.destination {
                    return Err(PlanError::DuplicateDestination(a.destination.clone()));
                }
                // Sorted by depth: only a shallower `a` can contain `b`.
                if b.destination.starts_with(&format!("{}/", a.destination)) {
                    return Err(PlanError::NestedDestination {
                        outer: a.destination.clone(),
                        inner: b.destination.clone(),
                    });
                }
            }
        }
        Ok(GuestPlan::from_checked(ms))
    }

    /// Builds the steps of mounts that are already validated and ordered.
    pub(crate) fn from_checked(ms: Vec<GuestMount>) -> GuestPlan {
        let mut steps = Vec::new();
        for m in &ms {
            let staging = format!("{STAGING_BASE}/{}", m.tag);
            let flags = m.flags();
            steps.push(Step::MountShare {
                tag: m.tag.clone(),
                staging: staging.clone(),
                flags: flags.clone(),
            });
            let parent = match m.destination.rfind('/') {
                Some(0) | None => "/".to_owned(),
                Some(i) => m.destination[..i].to_owned(),
            };
            steps.push(Step::CreateParent { dir: parent });
            steps.push(Step::CreateFile {
                path: m.destination.clone(),
            });
            steps.push(Step::BindMount {
                source: format!("{staging}/{}", m.file_name),
                target: m.destination.clone(),
            });
            if !flags.is_empty() {
                steps.push(Step::Remount {
                    target: m.destination.clone(),
                    flags,
                });
            }
            steps.push(Step::DetachShare { staging });
        }
        GuestPlan { mounts: ms, steps }
    }

    /// The mounts, in plan order.
    pub fn mounts(&self) -> &[GuestMount] {
        &self.mounts
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The plan as a POSIX `sh` script (busybox sh works), to run as root in the guest. It
    /// stops at the first failing command (`set -eu`) and its last line is `# end of plan`.
    pub fn to_sh(&self) -> String {
        let mut s = String::from("#!/bin/sh\n");
        let _ = writeln!(
            s,
            "# boxfs file mounts: {} file(s); run as root in the guest.",
            self.mounts.len()
        );
        s.push_str("set -eu\n");
        let mut i = 0;
        for step in &self.steps {
            if let Step::MountShare { tag, .. } = step {
                let m = &self.mounts[i];
                i += 1;
                let _ = writeln!(
                    s,
                    "# {tag} -> {} ({})",
                    m.destination,
                    if m.readonly { "ro" } else { "rw" }
                );
            }
            s.push_str(&step.to_sh());
            s.push('\n');
        }
        s.push_str("# end of plan\n");
        s
    }
}

/// Quotes `s` for `sh` with single quotes.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(tag: u64, dest: &str) -> GuestMount {
        GuestMount {
            tag: Tag::parse(&format!("fm_{tag:016x}")).expect("tag"),
            file_name: "f.txt".into(),
            destination: dest.into(),
            readonly: false,
            nosuid: false,
            nodev: false,
            noexec: false,
        }
    }

    #[test]
    fn steps_of_one_mount_in_order() {
        let plan = GuestPlan::new(&[m(1, "/root//test.txt")]).expect("plan");
        let kinds: Vec<&str> = plan
            .steps()
            .iter()
            .map(|s| match s {
                Step::MountShare { .. } => "mount",
                Step::CreateParent { .. } => "parent",
                Step::CreateFile { .. } => "file",
                Step::BindMount { .. } => "bind",
                Step::Remount { .. } => "remount",
                Step::DetachShare { .. } => "detach",
            })
            .collect();
        // Read-write without flags: no remount step.
        assert_eq!(kinds, ["mount", "parent", "file", "bind", "detach"]);
        assert_eq!(
            plan.steps()[3],
            Step::BindMount {
                source: "/run/boxfs-filemount/fm_0000000000000001/f.txt".into(),
                target: "/root/test.txt".into()
            }
        );
        let sh = plan.to_sh();
        assert!(sh.contains("[ -e '/root/test.txt' ] || : >> '/root/test.txt'\n"));
        assert!(sh.contains("mkdir -p '/root'\n"));
        assert!(sh.ends_with("# end of plan\n"));
    }

    #[test]
    fn parents_first_and_conflicts_rejected() {
        let plan = GuestPlan::new(&[m(1, "/a/b/c.conf"), m(2, "/a.conf"), m(3, "/a/b.conf")])
            .expect("plan");
        let order: Vec<&str> = plan
            .mounts()
            .iter()
            .map(|m| m.destination.as_str())
            .collect();
        assert_eq!(order, ["/a.conf", "/a/b.conf", "/a/b/c.conf"]);
        assert_eq!(
            GuestPlan::new(&[m(1, "/etc/x"), m(2, "/etc//x")]),
            Err(PlanError::DuplicateDestination("/etc/x".into()))
        );
        assert!(matches!(
            GuestPlan::new(&[m(1, "/etc/x/y"), m(2, "/etc/x")]),
            Err(PlanError::NestedDestination { .. })
        ));
        for bad in ["etc/x", "/", "/etc/../x", "/etc/x/", "/a\nb"] {
            assert!(
                matches!(GuestPlan::new(&[m(1, bad)]), Err(PlanError::BadPath(..))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn quoting_survives_hostile_names() {
        let mut x = m(1, "/tmp/it's $(reboot) `x`.conf");
        x.file_name = "a'b".into();
        x.readonly = true;
        x.noexec = true;
        let sh = GuestPlan::new(&[x]).expect("plan").to_sh();
        assert!(sh.contains(r"'/tmp/it'\''s $(reboot) `x`.conf'"), "{sh}");
        assert!(sh.contains(r"/a'\''b' "), "{sh}");
        assert!(sh.contains("mount -t virtiofs -o ro,noexec "), "{sh}");
        assert!(sh.contains("mount -o remount,bind,ro,noexec "), "{sh}");
    }
}
