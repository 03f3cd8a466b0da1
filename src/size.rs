//! Byte-size helpers for builders.

/// Readable byte sizes: `64.mib()`, `1.gib()`.
///
/// ```
/// use boxfs::SizeExt;
/// assert_eq!(4.kib(), 4096);
/// assert_eq!(64.mib(), 64 << 20);
/// assert_eq!(1.gib(), 1 << 30);
/// ```
pub trait SizeExt {
    /// This many KiB (2^10 bytes), saturating.
    fn kib(self) -> u64;
    /// This many MiB (2^20 bytes), saturating.
    fn mib(self) -> u64;
    /// This many GiB (2^30 bytes), saturating.
    fn gib(self) -> u64;
}

impl SizeExt for u64 {
    fn kib(self) -> u64 {
        self.saturating_mul(1 << 10)
    }
    fn mib(self) -> u64 {
        self.saturating_mul(1 << 20)
    }
    fn gib(self) -> u64 {
        self.saturating_mul(1 << 30)
    }
}

/// A byte size, as written on a command line or in a configuration: `1048576`, `64K`, `512M`,
/// `2G`, `1T`, with an optional `B` or `iB` suffix (units are binary: `1K` is 1024 bytes), case
/// insensitive. Zero is refused: every size boxfs takes is a capacity or a limit.
///
/// ```
/// use boxfs::Size;
/// let s: Size = "512M".parse()?;
/// assert_eq!(s.bytes(), 512 << 20);
/// assert_eq!(u64::from("2GiB".parse::<Size>()?), 2 << 30);
/// assert!("0".parse::<Size>().is_err());
/// assert!("lots".parse::<Size>().is_err());
/// assert_eq!(s.to_string(), "512M");
/// # Ok::<(), boxfs::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size(u64);

impl Size {
    /// A size of `bytes` bytes (`None` for zero).
    pub const fn new(bytes: u64) -> Option<Self> {
        if bytes == 0 {
            None
        } else {
            Some(Size(bytes))
        }
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl From<Size> for u64 {
    fn from(s: Size) -> u64 {
        s.0
    }
}

impl std::str::FromStr for Size {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            crate::Error::InvalidConfig(format!(
                "`{s}` is not a size (examples: 1048576, 64K, 512M, 2G)"
            ))
        };
        let lower = s.trim().to_ascii_lowercase();
        let lower = lower
            .strip_suffix("ib")
            .or_else(|| lower.strip_suffix('b'))
            .unwrap_or(&lower);
        let (num, shift) = match lower.as_bytes().last() {
            Some(b'k') => (&lower[..lower.len() - 1], 10),
            Some(b'm') => (&lower[..lower.len() - 1], 20),
            Some(b'g') => (&lower[..lower.len() - 1], 30),
            Some(b't') => (&lower[..lower.len() - 1], 40),
            _ => (lower, 0),
        };
        let n: u64 = num.trim().parse().map_err(|_| bad())?;
        let v = n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| crate::Error::InvalidConfig(format!("`{s}` is too large")))?;
        Size::new(v)
            .ok_or_else(|| crate::Error::InvalidConfig("a size must be larger than 0".into()))
    }
}

impl std::fmt::Display for Size {
    /// The largest binary unit that divides the size exactly: `512M`, `1536K`, `1000`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if self.0.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Size;

    fn parse(s: &str) -> Option<u64> {
        s.parse::<Size>().ok().map(Size::bytes)
    }

    #[test]
    fn sizes() {
        assert_eq!(parse("1024"), Some(1024));
        assert_eq!(parse("64K"), Some(64 << 10));
        assert_eq!(parse("512M"), Some(512 << 20));
        assert_eq!(parse("512MiB"), Some(512 << 20));
        assert_eq!(parse(" 2g "), Some(2 << 30));
        assert_eq!(parse("1TB"), Some(1 << 40));
        assert_eq!(parse("0"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("lots"), None);
        assert_eq!(parse("-1K"), None);
        assert_eq!(parse("99999999999T"), None);
        for s in ["1", "1000", "1K", "1536K", "3G", "7T"] {
            assert_eq!(
                s.parse::<Size>().ok().map(|v| v.to_string()).as_deref(),
                Some(s)
            );
        }
    }
}
