//! Keeping the guest's page cache of an unchanged file or directory across opens under
//! [`CachePolicy::Auto`](crate::CachePolicy::Auto) (the consistency rule is in
//! [`crate::cache`]).
//!
//! Each open records the host's (mtime, ctime, size) of the inode, and whether that ctime was
//! at least [`SETTLE`] older than the host clock then ("settled"). The next open answers
//! `FOPEN_KEEP_CACHE` (plus `FOPEN_CACHE_DIR` for a directory) only if the recorded stamp was
//! settled and equals the current one: then the file did not change since the previous open,
//! so whatever the guest cached since that open (or kept, by induction, from before) is still
//! the file's content. Any host change after a settled stamp was taken moves the ctime past
//! it, even on filesystems with timestamps as coarse as 2 s. A changed or unsettled stamp
//! answers the policy's flags (the guest drops its cache, as without this).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::stat64;

/// How much older than the host clock a ctime must be for a later change to be certain to
/// show as a different ctime (covers timestamp granularities up to 2 s).
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// What an open saw of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    mtime: (i64, i64),
    ctime: (i64, i64),
    size: i64,
    settled: bool,
}

impl Stamp {
    /// The stamp of host attributes `st` taken at host time `now` (since the epoch).
    pub(crate) fn new(st: &stat64, now: Duration) -> Stamp {
        let ctime = (st.st_ctime as i64, st.st_ctime_nsec as i64);
        let settled = u64::try_from(ctime.0).is_ok_and(|secs| {
            let c = Duration::new(secs, ctime.1.clamp(0, 999_999_999) as u32);
            c.checked_add(SETTLE).is_some_and(|c| c < now)
        });
        Stamp {
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime,
            size: st.st_size as i64,
            settled,
        }
    }

    fn same_file_state(&self, other: &Stamp) -> bool {
        self.mtime == other.mtime && self.ctime == other.ctime && self.size == other.size
    }
}

/// Records the stamp of `st` in `slot` and tells whether the guest may keep its cache: the
/// previous open's stamp was settled and equals this one.
pub(crate) fn keep(slot: &Mutex<Option<Stamp>>, st: &stat64) -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    keep_at(slot, st, now)
}

fn keep_at(slot: &Mutex<Option<Stamp>>, st: &stat64, now: Duration) -> bool {
    let cur = Stamp::new(st, now);
    let mut prev = slot.lock();
    let keep = prev.is_some_and(|p| p.settled && p.same_file_state(&cur));
    *prev = Some(cur);
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(mtime: i64, ctime: i64, size: i64) -> stat64 {
        // SAFETY: `stat64` is a plain C struct for which all-zero bytes are valid.
        let mut s: stat64 = unsafe { std::mem::zeroed() };
        s.st_mtime = mtime as _;
        s.st_ctime = ctime as _;
        s.st_size = size as _;
        s
    }

    #[test]
    fn keeps_only_after_a_settled_equal_stamp() {
        let slot = Mutex::new(None);
        let secs = Duration::from_secs;
        // First open: nothing recorded.
        assert!(!keep_at(&slot, &st(100, 100, 5), secs(200)));
        // Unchanged and the recorded ctime settled: keep.
        assert!(keep_at(&slot, &st(100, 100, 5), secs(201)));
        // ctime moved (host chmod, write, ...): drop.
        assert!(!keep_at(&slot, &st(100, 150, 5), secs(202)));
        assert!(keep_at(&slot, &st(100, 150, 5), secs(203)));
        // size or mtime moved: drop.
        assert!(!keep_at(&slot, &st(100, 150, 6), secs(204)));
        assert!(!keep_at(&slot, &st(160, 150, 6), secs(205)));
        assert!(keep_at(&slot, &st(160, 150, 6), secs(206)));
        // A stamp taken within SETTLE of its ctime is not trusted, even if unchanged later.
        assert!(!keep_at(&slot, &st(300, 300, 1), secs(301)));
        assert!(!keep_at(&slot, &st(300, 300, 1), secs(310)));
        assert!(keep_at(&slot, &st(300, 300, 1), secs(311)));
    }
}
