//! `--plan sh|json`: what the guest must mount, and where.
//!
//! * `--shared-file`: the file mount's steps (see `boxfs::filemount::GuestPlan`); `sh` is the
//!   tag line and the script through `# end of plan`, `json` one line:
//!   `{"kind":"file","tag":…,"mounts":[…],"steps":[{"op":"mount_share",…},…]}`.
//! * Any other backend (a directory, an overlay, a volume table): one `virtiofs` mount of the
//!   device's tag; `json` one line:
//!   `{"kind":"device","tag":…,"fstype":"virtiofs","mount_point":"/","options":["rw"],
//!   "kernel_cmdline":"rootfstype=virtiofs root=TAG rw","volumes":[…]}`.

use boxfs::filemount::{GuestPlan, Step};
use serde_json::{json, Value};

/// A plan format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// A POSIX `sh` script (ending with `# end of plan`).
    Sh,
    /// One line of JSON.
    Json,
}

fn step(s: &Step) -> Value {
    match s {
        Step::MountShare {
            tag,
            staging,
            flags,
        } => json!({"op": "mount_share", "tag": tag.as_str(), "fstype": "virtiofs",
                    "mount_point": staging, "options": flags}),
        Step::CreateParent { dir } => json!({"op": "create_dir", "path": dir}),
        Step::CreateFile { path } => json!({"op": "create_file", "path": path}),
        Step::BindMount { source, target } => {
            json!({"op": "bind_mount", "source": source, "target": target})
        }
        Step::Remount { target, flags } => {
            json!({"op": "remount_bind", "target": target, "options": flags})
        }
        Step::DetachShare { staging } => json!({"op": "detach_share", "mount_point": staging}),
        other => json!({"op": "unknown", "sh": other.to_sh()}),
    }
}

/// The JSON plan of a file mount.
pub(crate) fn file_json(plan: &GuestPlan) -> String {
    let mounts: Vec<Value> = plan
        .mounts()
        .iter()
        .map(|m| {
            json!({
                "tag": m.tag.as_str(),
                "file_name": m.file_name,
                "destination": m.destination,
                "readonly": m.readonly,
                "nosuid": m.nosuid,
                "nodev": m.nodev,
                "noexec": m.noexec,
            })
        })
        .collect();
    let tag = plan.mounts().first().map(|m| m.tag.as_str().to_owned());
    json!({
        "kind": "file",
        "tag": tag,
        "mounts": mounts,
        "steps": plan.steps().iter().map(step).collect::<Vec<_>>(),
    })
    .to_string()
}

/// One volume in a device plan.
pub(crate) struct PlanVolume {
    pub path: String,
    pub kind: String,
    pub readonly: bool,
}

/// The device's mount.
pub(crate) struct Device<'a> {
    /// The tag (None: the VMM's own, unknown to the daemon).
    pub tag: Option<&'a str>,
    pub mount_point: &'a str,
    pub readonly: bool,
    pub volumes: Vec<PlanVolume>,
}

impl Device<'_> {
    fn options(&self) -> Vec<&'static str> {
        vec![if self.readonly { "ro" } else { "rw" }]
    }

    /// The kernel command line for a root filesystem on the device (mount point `/`).
    fn cmdline(&self) -> Option<String> {
        (self.mount_point == "/").then(|| {
            format!(
                "rootfstype=virtiofs root={} {}",
                self.tag.unwrap_or("TAG"),
                self.options().join(" ")
            )
        })
    }

    /// One line of JSON.
    pub(crate) fn json(&self) -> String {
        let vols: Vec<Value> = self
            .volumes
            .iter()
            .map(|v| json!({"path": v.path, "kind": v.kind, "readonly": v.readonly}))
            .collect();
        json!({
            "kind": "device",
            "tag": self.tag,
            "fstype": "virtiofs",
            "mount_point": self.mount_point,
            "options": self.options(),
            "kernel_cmdline": self.cmdline(),
            "volumes": vols,
        })
        .to_string()
    }

    /// A `sh` script through `# end of plan`.
    pub(crate) fn sh(&self) -> String {
        let tag = match self.tag {
            Some(t) => quote(t),
            None => "\"${BOXFS_TAG:?the VMM's tag for this device}\"".into(),
        };
        let mut s = String::from("#!/bin/sh\n# boxfs device mount; run as root in the guest.\n");
        for v in &self.volumes {
            s.push_str(&format!(
                "# volume {} ({}, {})\n",
                v.path,
                v.kind,
                if v.readonly { "ro" } else { "rw" }
            ));
        }
        match self.cmdline() {
            Some(c) => {
                s.push_str("# the root filesystem: boot the guest kernel with\n");
                s.push_str(&format!("#   {c}\n"));
            }
            None => {
                s.push_str("set -eu\n");
                let mp = quote(self.mount_point);
                s.push_str(&format!("mkdir -p {mp}\n"));
                s.push_str(&format!(
                    "mount -t virtiofs -o {} {tag} {mp}\n",
                    self.options().join(",")
                ));
            }
        }
        s.push_str("# end of plan\n");
        s
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_plan() {
        let d = Device {
            tag: Some("sandbox"),
            mount_point: "/",
            readonly: false,
            volumes: vec![PlanVolume {
                path: "/work".into(),
                kind: "dir".into(),
                readonly: true,
            }],
        };
        let v: Value = serde_json::from_str(&d.json()).unwrap();
        assert_eq!(v["kernel_cmdline"], "rootfstype=virtiofs root=sandbox rw");
        assert_eq!(v["volumes"][0]["path"], "/work");
        assert!(d.sh().contains("rootfstype=virtiofs root=sandbox rw"));
        let d = Device {
            tag: None,
            mount_point: "/mnt/it's",
            readonly: true,
            volumes: vec![],
        };
        let v: Value = serde_json::from_str(&d.json()).unwrap();
        assert_eq!(v["kernel_cmdline"], Value::Null);
        assert_eq!(v["tag"], Value::Null);
        assert_eq!(v["options"][0], "ro");
        assert!(d.sh().contains(r"mount -t virtiofs -o ro "), "{}", d.sh());
        assert!(d.sh().contains(r"'/mnt/it'\''s'"), "{}", d.sh());
    }
}
