//! Hide patterns: names a volume makes invisible and unreachable.

use std::io;

/// One compiled hide pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Pattern {
    /// Matches only directly in the volume's root (the pattern started with `/`).
    anchored: bool,
    glob: Vec<u8>,
}

impl Pattern {
    /// Parses `.git/`, `.ssh`, `*.pem`, `/secret`: one name component, `*` and `?` as
    /// wildcards, a leading `/` anchors it at the volume root, a trailing `/` is accepted and
    /// hides the name whatever its type.
    pub(super) fn parse(s: &str) -> io::Result<Pattern> {
        let anchored = s.starts_with('/');
        let body = s.trim_start_matches('/').trim_end_matches('/');
        if body.is_empty() || body.contains('/') || body == "." || body == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("hide pattern {s:?}: one name component (optionally /name or name/)"),
            ));
        }
        Ok(Pattern {
            anchored,
            glob: body.as_bytes().to_vec(),
        })
    }

    /// Whether `name`, in a directory that is (`at_root`) or is not the volume root, is hidden.
    pub(super) fn hides(&self, name: &[u8], at_root: bool) -> bool {
        (at_root || !self.anchored) && glob_match(&self.glob, name)
    }
}

/// `*` matches any run of bytes, `?` one byte, everything else itself.
fn glob_match(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pat.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"*.pem", b"key.pem"));
        assert!(glob_match(b"*.pem", b".pem"));
        assert!(!glob_match(b"*.pem", b"key.pem.txt"));
        assert!(glob_match(b".git", b".git"));
        assert!(!glob_match(b".git", b".github"));
        assert!(glob_match(b"a?c*", b"abcdef"));
        assert!(glob_match(b"*a*b", b"xxaxxb"));
        assert!(!glob_match(b"*a*b", b"xxaxxbc"));
    }

    #[test]
    fn parse_and_anchor() {
        let p = Pattern::parse(".ssh/").expect("parse");
        assert!(p.hides(b".ssh", false));
        let a = Pattern::parse("/secret").expect("parse");
        assert!(a.hides(b"secret", true));
        assert!(!a.hides(b"secret", false));
        assert!(Pattern::parse("a/b").is_err());
        assert!(Pattern::parse("/").is_err());
    }
}
