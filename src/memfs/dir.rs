//! Directory entries with stable readdir cookies.
//!
//! Each entry gets a cookie from a per-directory counter when it is linked; listings walk the
//! cookies in order, so a listing resumed from any offset never repeats or skips an entry that
//! stayed in the directory, whatever was added or removed meanwhile. Cookies 1 and 2 are `.`
//! and `..`.

use std::collections::{BTreeMap, HashMap};

/// First cookie of a real entry.
pub(crate) const FIRST_COOKIE: u64 = 3;

/// One linked name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    pub(crate) ino: u64,
    pub(crate) cookie: u64,
}

/// The entries of one directory.
pub(crate) struct Dir {
    by_name: HashMap<Box<[u8]>, Link>,
    by_cookie: BTreeMap<u64, Box<[u8]>>,
    next_cookie: u64,
}

impl Default for Dir {
    fn default() -> Self {
        Dir {
            by_name: HashMap::new(),
            by_cookie: BTreeMap::new(),
            next_cookie: FIRST_COOKIE,
        }
    }
}

impl Dir {
    pub(crate) fn get(&self, name: &[u8]) -> Option<Link> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Links `name` to `ino`; the caller has checked the name is free.
    pub(crate) fn insert(&mut self, name: &[u8], ino: u64) {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.by_cookie.insert(cookie, name.into());
        self.by_name.insert(name.into(), Link { ino, cookie });
    }

    /// Points an existing name at another inode, keeping its cookie (rename over a name).
    pub(crate) fn replace(&mut self, name: &[u8], ino: u64) -> Option<u64> {
        self.by_name
            .get_mut(name)
            .map(|l| std::mem::replace(&mut l.ino, ino))
    }

    pub(crate) fn remove(&mut self, name: &[u8]) -> Option<Link> {
        let link = self.by_name.remove(name)?;
        self.by_cookie.remove(&link.cookie);
        Some(link)
    }

    /// Entries with a cookie greater than `after`, in cookie order.
    pub(crate) fn iter_from(&self, after: u64) -> impl Iterator<Item = (u64, &[u8], u64)> + '_ {
        self.by_cookie
            .range(after.saturating_add(1).max(FIRST_COOKIE)..)
            .filter_map(move |(c, name)| self.by_name.get(name).map(|l| (*c, &name[..], l.ino)))
    }
}
