//! Byte quota: the apparent size of regular files in the share may not grow past a limit.
//!
//! Exactness rests on two rules kept by the callers: every change of a file's size is
//! measured, charged and made under the inode's exclusive `resize` lock (so two extending
//! writes cannot both charge the same growth), and a file the guest unlinks while it still
//! holds it stays charged until the last reference goes ([`OrphanCharge`]), because its
//! bytes stay on disk until then and it may still grow.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::fd_cache::SharedFd;
use super::platform;
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

    /// Replaces a reservation of `reserved` bytes by what a size change really did (the
    /// file went from `before` to `after` bytes).
    pub fn settle(&self, reserved: u64, before: u64, after: u64) {
        if after >= before {
            let grown = after - before;
            if grown >= reserved {
                self.add(grown - reserved);
            } else {
                self.release(reserved - grown);
            }
        } else {
            self.release(reserved.saturating_add(before - after));
        }
    }

    /// Charges `bytes` whatever the limit (growth that already happened).
    fn add(&self, bytes: u64) {
        if bytes > 0 {
            let _ = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    Some(c.saturating_add(bytes))
                });
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

/// The charge of a file unlinked while the guest had it open: its size when the charge is
/// dropped (with the inode, after the guest's last lookup and handle) is credited back.
pub(crate) struct OrphanCharge {
    quota: Arc<Quota>,
    /// Keeps the file measurable; it is gone from the host once this closes.
    fd: SharedFd,
}

impl OrphanCharge {
    pub fn new(quota: Arc<Quota>, fd: SharedFd) -> Self {
        OrphanCharge { quota, fd }
    }
}

impl Drop for OrphanCharge {
    fn drop(&mut self) {
        match platform::fstat(self.fd.as_raw_fd()) {
            Ok(hs) => self.quota.release(hs.st.st_size as u64),
            Err(e) => tracing::warn!("cannot measure an unlinked file to credit its quota: {e}"),
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
        q.reserve(50).expect("fits");
        q.settle(50, 10, 40);
        assert_eq!(q.used(), 30);
        q.reserve(20).expect("fits");
        q.settle(20, 40, 70);
        assert_eq!(q.used(), 60);
        q.settle(0, 70, 20);
        assert_eq!(q.used(), 10);
    }
}
