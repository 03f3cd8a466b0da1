//! The ownership override stored in `user.containers.override_stat`.
//!
//! # Formats read
//!
//! * `uid:gid:0<octal mode>`, as libkrun and podman machine write it. The mode may include
//!   the file-type bits (`S_IFMT`); without them the host file's type is used. This form
//!   cannot carry device numbers (they read as 0).
//! * `uid:gid:<octal mode>:<type>`, as containers/storage writes it, with `<type>` one of
//!   `file`, `dir`, `symlink`, `pipe`, `socket`, `block-<major>-<minor>`,
//!   `char-<major>-<minor>`.
//!
//! # Format written
//!
//! Always the containers/storage form with a leading `0` on the mode and only the permission
//! bits (`07777`) in it, so device numbers survive:
//! `1000:1000:0644:file`, `0:0:04755:file`, `0:6:0660:block-8-0`, `0:0:0777:symlink`.
//!
//! Anything else (wrong field count, non-numeric ids, non-octal mode, unknown type, a type that
//! contradicts the host object) is malformed and makes the file fail with `EIO`; it is never
//! rewritten behind the owner's back.

use std::ffi::CStr;
use std::fmt;
use std::io;

use crate::errno;

/// The extended attribute holding guest ownership, mode, type and device number.
pub const OVERRIDE_KEY: &CStr = c"user.containers.override_stat";

use crate::abi::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK};

/// Guest-visible ownership and type of one host object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverrideStat {
    /// Guest owner.
    pub uid: u32,
    /// Guest group.
    pub gid: u32,
    /// Guest mode: Linux file-type bits (`S_IFMT`) plus permission bits (`07777`).
    pub mode: u32,
    /// Guest device number in the kernel's 32-bit encoding (`new_encode_dev`), 0 unless the
    /// type is a character or block device.
    pub rdev: u32,
}

/// Kernel 32-bit device encoding (`new_encode_dev`), which FUSE uses on the wire.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Inverse of [`encode_dev`]: `(major, minor)`.
pub fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

fn eio() -> io::Error {
    errno(libc::EIO)
}

fn parse_u32(s: &str) -> io::Result<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(eio());
    }
    s.parse().map_err(|_| eio())
}

fn parse_octal(s: &str) -> io::Result<u32> {
    if s.is_empty() || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(eio());
    }
    let v = u32::from_str_radix(s, 8).map_err(|_| eio())?;
    if v > 0o177777 {
        return Err(eio());
    }
    Ok(v)
}

fn valid_type(t: u32) -> bool {
    matches!(
        t,
        S_IFREG | S_IFDIR | S_IFLNK | S_IFIFO | S_IFSOCK | S_IFCHR | S_IFBLK
    )
}

fn parse_dev(s: &str) -> io::Result<u32> {
    let (ma, mi) = s.split_once('-').ok_or_else(eio)?;
    let (ma, mi) = (parse_u32(ma)?, parse_u32(mi)?);
    if ma > 0xfff || mi > 0xfffff {
        return Err(eio());
    }
    Ok(encode_dev(ma, mi))
}

impl OverrideStat {
    /// Parses an xattr value. `host_type` (the `S_IFMT` bits of the host object) supplies
    /// the type when the value has none, and is checked for consistency: a guest directory
    /// must be a host directory and a host directory a guest directory.
    pub fn parse(value: &[u8], host_type: u32) -> io::Result<OverrideStat> {
        // Some writers include the terminating NUL.
        let value = value.strip_suffix(b"\0").unwrap_or(value);
        let s = std::str::from_utf8(value).map_err(|_| eio())?;
        let fields: Vec<&str> = s.split(':').collect();
        let (uid, gid, mode, rdev) = match fields.as_slice() {
            [uid, gid, mode] => {
                let mode = parse_octal(mode)?;
                let t = mode & S_IFMT;
                let mode = if t == 0 {
                    mode | (host_type & S_IFMT)
                } else {
                    mode
                };
                (parse_u32(uid)?, parse_u32(gid)?, mode, 0)
            }
            [uid, gid, mode, typ] => {
                let perm = parse_octal(mode)?;
                let (t, rdev) = match *typ {
                    "file" => (S_IFREG, 0),
                    "dir" => (S_IFDIR, 0),
                    "symlink" => (S_IFLNK, 0),
                    "pipe" => (S_IFIFO, 0),
                    "socket" => (S_IFSOCK, 0),
                    other => {
                        if let Some(d) = other.strip_prefix("block-") {
                            (S_IFBLK, parse_dev(d)?)
                        } else if let Some(d) = other.strip_prefix("char-") {
                            (S_IFCHR, parse_dev(d)?)
                        } else {
                            return Err(eio());
                        }
                    }
                };
                // Type bits in the mode field are tolerated only when they agree.
                if perm & S_IFMT != 0 && perm & S_IFMT != t {
                    return Err(eio());
                }
                (parse_u32(uid)?, parse_u32(gid)?, (perm & 0o7777) | t, rdev)
            }
            _ => return Err(eio()),
        };
        if !valid_type(mode & S_IFMT) {
            return Err(eio());
        }
        let guest_dir = mode & S_IFMT == S_IFDIR;
        let host_dir = host_type & S_IFMT == S_IFDIR;
        if guest_dir != host_dir {
            return Err(eio());
        }
        Ok(OverrideStat {
            uid,
            gid,
            mode,
            rdev,
        })
    }

    /// The `S_IFMT` bits.
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }

    /// The value written to the xattr (see the module documentation).
    pub fn to_value(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for OverrideStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let typ = match self.mode & S_IFMT {
            S_IFDIR => "dir".to_string(),
            S_IFLNK => "symlink".to_string(),
            S_IFIFO => "pipe".to_string(),
            S_IFSOCK => "socket".to_string(),
            S_IFBLK => {
                let (ma, mi) = decode_dev(self.rdev);
                format!("block-{ma}-{mi}")
            }
            S_IFCHR => {
                let (ma, mi) = decode_dev(self.rdev);
                format!("char-{ma}-{mi}")
            }
            _ => "file".to_string(),
        };
        write!(
            f,
            "{}:{}:0{:o}:{}",
            self.uid,
            self.gid,
            self.mode & 0o7777,
            typ
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, host: u32) -> Option<OverrideStat> {
        OverrideStat::parse(s.as_bytes(), host).ok()
    }

    #[test]
    fn libkrun_form() {
        let o = p("1000:1000:0644", S_IFREG).expect("valid");
        assert_eq!(
            (o.uid, o.gid, o.mode, o.rdev),
            (1000, 1000, S_IFREG | 0o644, 0)
        );
        let o = p("0:0:040755", S_IFDIR).expect("valid");
        assert_eq!(o.mode, S_IFDIR | 0o755);
        let o = p("0:0:0100755", S_IFREG).expect("valid");
        assert_eq!(o.mode, S_IFREG | 0o755);
        let o = p("5:6:0120777", S_IFREG).expect("virtualized symlink");
        assert_eq!(o.file_type(), S_IFLNK);
        let o = p("1000:2000:02770", S_IFDIR).expect("valid");
        assert_eq!(o.mode, S_IFDIR | 0o2770);
        // Without the leading zero it is still octal.
        assert_eq!(p("0:0:755", S_IFDIR).map(|o| o.mode), Some(S_IFDIR | 0o755));
        // Trailing NUL from C writers.
        assert!(OverrideStat::parse(b"0:0:0644\0", S_IFREG).is_ok());
    }

    #[test]
    fn containers_storage_form() {
        let o = p("1:2:0644:file", S_IFREG).expect("valid");
        assert_eq!((o.uid, o.gid, o.mode), (1, 2, S_IFREG | 0o644));
        assert_eq!(
            p("0:0:0755:dir", S_IFDIR).map(|o| o.mode),
            Some(S_IFDIR | 0o755)
        );
        assert_eq!(
            p("0:0:0777:symlink", S_IFREG).map(|o| o.mode),
            Some(S_IFLNK | 0o777)
        );
        assert_eq!(
            p("0:0:0600:pipe", S_IFREG).map(|o| o.file_type()),
            Some(S_IFIFO)
        );
        assert_eq!(
            p("0:0:0600:socket", S_IFREG).map(|o| o.file_type()),
            Some(S_IFSOCK)
        );
        let o = p("0:6:0660:block-8-1", S_IFREG).expect("valid");
        assert_eq!(o.file_type(), S_IFBLK);
        assert_eq!(decode_dev(o.rdev), (8, 1));
        let o = p("0:5:0620:char-136-300", S_IFREG).expect("valid");
        assert_eq!(o.file_type(), S_IFCHR);
        assert_eq!(decode_dev(o.rdev), (136, 300));
        assert_eq!(
            p("0:0:04755:file", S_IFREG).map(|o| o.mode),
            Some(S_IFREG | 0o4755)
        );
    }

    #[test]
    fn malformed_is_eio() {
        for bad in [
            "",
            "0",
            "0:0",
            "a:0:0644",
            "0:b:0644",
            "-1:0:0644",
            "0:0:0899",
            "0:0:",
            "0:0:0644:",
            "0:0:0644:door",
            "0:0:0644:block-8",
            "0:0:0644:block-x-1",
            "0:0:0644:file:extra",
            "99999999999:0:0644",
            "0:0:0170644",
            "0:0:0200000",
            "0:0:040755:file",
            " 0:0:0644",
        ] {
            let e = OverrideStat::parse(bad.as_bytes(), S_IFREG).expect_err(bad);
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{bad}");
        }
        assert!(OverrideStat::parse(&[0xff, b':', b'0'], S_IFREG).is_err());
        // Type contradicting the host object.
        assert!(p("0:0:0755:dir", S_IFREG).is_none());
        assert!(p("0:0:0644:file", S_IFDIR).is_none());
        assert!(p("0:0:0100644", S_IFDIR).is_none());
    }

    #[test]
    fn written_form_round_trips() {
        for (mode, rdev, host) in [
            (S_IFREG | 0o644, 0, S_IFREG),
            (S_IFREG | 0o4755, 0, S_IFREG),
            (S_IFDIR | 0o1777, 0, S_IFDIR),
            (S_IFLNK | 0o777, 0, S_IFREG),
            (S_IFIFO | 0o600, 0, S_IFREG),
            (S_IFSOCK | 0o755, 0, S_IFREG),
            (S_IFBLK | 0o660, encode_dev(8, 0), S_IFREG),
            (S_IFCHR | 0o620, encode_dev(4095, 1_048_575), S_IFREG),
            (S_IFREG, 0, S_IFREG),
        ] {
            let o = OverrideStat {
                uid: 65534,
                gid: 7,
                mode,
                rdev,
            };
            let v = o.to_value();
            assert_eq!(OverrideStat::parse(v.as_bytes(), host).ok(), Some(o), "{v}");
        }
        let o = OverrideStat {
            uid: 0,
            gid: 6,
            mode: S_IFBLK | 0o660,
            rdev: encode_dev(8, 1),
        };
        assert_eq!(o.to_value(), "0:6:0660:block-8-1");
        let o = OverrideStat {
            uid: 1000,
            gid: 1000,
            mode: S_IFREG | 0o644,
            rdev: 0,
        };
        assert_eq!(o.to_value(), "1000:1000:0644:file");
    }
}
