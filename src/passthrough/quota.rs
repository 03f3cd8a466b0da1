//! Byte quota: the apparent size of regular files in the share may not grow past a limit.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::errno;

/// Usage counter against a fixed limit.
pub(crate) struct Quota {
    pub limit: u64,
    used: AtomicU64,
}

impl Quota {
    pub fn new(limit: u64, used: u64) -> Self {
        Quota {
            limit,
            used: AtomicU64::new(used),
        }
    }

    /// Bytes currently charged.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges `bytes`, or fails with `ENOSPC` if that would exceed the limit.
    pub fn reserve(&self, bytes: u64) -> io::Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let new = cur.checked_add(bytes).ok_or_else(|| errno(libc::ENOSPC))?;
            if new > self.limit {
                return Err(errno(libc::ENOSPC));
            }
            match self
                .used
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }

    /// Returns `bytes` to the pool.
    pub fn release(&self, bytes: u64) {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let new = cur.saturating_sub(bytes);
            match self
                .used
                .compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(v) => cur = v,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_and_release() {
        let q = Quota::new(100, 40);
        assert!(q.reserve(60).is_ok());
        assert_eq!(
            q.reserve(1).err().and_then(|e| e.raw_os_error()),
            Some(libc::ENOSPC)
        );
        q.release(10);
        assert!(q.reserve(10).is_ok());
        q.release(1000);
        assert_eq!(q.used(), 0);
    }
}
