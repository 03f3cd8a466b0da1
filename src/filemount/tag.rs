//! Random virtio-fs tags for file mounts.

use std::fmt;

/// Prefix of every file-mount tag.
pub const TAG_PREFIX: &str = "fm_";

/// A file mount's virtio-fs tag: `fm_` followed by 16 lowercase hex digits holding 64 random
/// bits from the operating system's generator (via `rand`).
///
/// A tag is never derived from a path, so it reveals nothing about the host file and two mounts
/// of one file get unrelated tags. It is 19 bytes, well within the 36-byte limit of the
/// virtio-fs config space.
///
/// ```
/// use boxfs::filemount::Tag;
///
/// let tag = Tag::random();
/// assert!(tag.as_str().starts_with("fm_"));
/// assert_eq!(tag.as_str().len(), 19);
/// assert_eq!(Tag::parse(tag.as_str()), Some(tag));
/// assert_eq!(Tag::parse("fm_XYZ"), None);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// A fresh tag with 64 random bits.
    pub fn random() -> Tag {
        Tag(format!("{TAG_PREFIX}{:016x}", rand::random::<u64>()))
    }

    /// Parses a tag in the exact `fm_<16 lowercase hex digits>` form.
    pub fn parse(s: &str) -> Option<Tag> {
        let hex = s.strip_prefix(TAG_PREFIX)?;
        let ok = hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Tag(s.to_owned()))
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

impl AsRef<str> for Tag {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn no_collisions_across_100_000_tags() {
        let tags: HashSet<Tag> = (0..100_000).map(|_| Tag::random()).collect();
        assert_eq!(tags.len(), 100_000);
        for t in tags.iter().take(100) {
            assert_eq!(Tag::parse(t.as_str()).as_ref(), Some(t));
        }
    }

    #[test]
    fn parse_rejects_other_forms() {
        for bad in [
            "",
            "fm_",
            "fm_0123456789abcde",
            "fm_0123456789abcdef0",
            "fm_0123456789ABCDEF",
            "xx_0123456789abcdef",
            "fm_0123456789abcdeg",
        ] {
            assert_eq!(Tag::parse(bad), None, "{bad}");
        }
        assert!(Tag::parse("fm_0123456789abcdef").is_some());
    }
}
