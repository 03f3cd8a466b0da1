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
