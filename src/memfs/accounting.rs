//! Hard limits on bytes and inodes, enforced by reservation before any state changes.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::errno;

/// One limited counter: `used` never exceeds `limit`, whatever threads race on it.
pub(crate) struct Counter {
    used: AtomicU64,
    limit: u64,
}

impl Counter {
    pub(crate) fn new(limit: u64) -> Self {
        Counter {
            used: AtomicU64::new(0),
            limit,
        }
    }

    /// Reserves `n` units or fails with `ENOSPC`, leaving the counter unchanged.
    pub(crate) fn reserve(&self, n: u64) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| errno(libc::ENOSPC))
    }

    /// Returns `n` previously reserved units.
    pub(crate) fn release(&self, n: u64) {
        if n > 0 {
            let prev = self.used.fetch_sub(n, Ordering::AcqRel);
            debug_assert!(prev >= n, "accounting underflow");
        }
    }

    /// Adds `n` units without checking the limit: a state being restored is charged as it is
    /// built (so dropping it on failure returns exactly that), and checked against the limit
    /// separately.
    pub(crate) fn add_unchecked(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// Sets the count: a restored state's exact charge, once the state it replaced is gone.
    pub(crate) fn set(&self, n: u64) {
        self.used.store(n, Ordering::Release);
    }

    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }
}

/// Everything MemFs charges: bytes (file data, symlink targets, xattr names and values,
/// directory entry names) and inodes.
pub(crate) struct Usage {
    pub(crate) bytes: Counter,
    pub(crate) inodes: Counter,
}

impl Usage {
    pub(crate) fn new(capacity: u64, max_inodes: u64) -> Self {
        Usage {
            bytes: Counter::new(capacity),
            inodes: Counter::new(max_inodes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn never_exceeds_limit_under_races() {
        let c = Arc::new(Counter::new(1000));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).filter(|_| c.reserve(7).is_ok()).count())
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(granted as u64 * 7, c.used());
        assert_eq!(c.used(), 1000 / 7 * 7);
        assert_eq!(
            c.reserve(7).err().and_then(|e| e.raw_os_error()),
            Some(libc::ENOSPC)
        );
    }
}
