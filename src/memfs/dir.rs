//! Directory entries with stable readdir cookies.
//!
//! Each entry gets a cookie from a per-directory counter when it is linked; listings walk the
//! cookies in order, so a listing resumed from any offset never repeats or skips an entry that
//! stayed in the directory, whatever was added or removed meanwhile. Cookies 1 and 2 are `.`
//! and `..`.
//!
//! Memory: every name is stored once. Entries live in a vector in cookie order (cookies only
//! grow, so appending keeps it sorted and a resumed listing finds its place by binary search);
//! removal leaves a tombstone that is compacted away once tombstones outnumber both the live
//! entries and a small floor (`TOMBSTONES`), so names cost at most a few slots each.
//! Lookup by name goes through a hash table of 4-byte positions into that vector, hashed with
//! a randomly keyed SipHash (names come from the guest). About 45 bytes per entry plus the
//! name, against ~135 for a `HashMap` by name plus a `BTreeMap` by cookie.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use hashbrown::HashTable;

/// First cookie of a real entry.
pub(crate) const FIRST_COOKIE: u64 = 3;

/// Removed entries a directory may keep before compacting, however few live ones it has (so
/// a small directory whose entries come and go does not compact every other removal).
const TOMBSTONES: usize = 8;

/// Slots a directory may keep beyond two per live entry before compaction gives them back
/// (charged with the directory inode, see `cost::DIR_INODE`).
const SLACK: usize = 16;

/// Most names one directory holds (positions are 32-bit).
const MAX_ENTRIES: usize = u32::MAX as usize - 1;

/// One linked name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Link {
    pub(crate) ino: u64,
}

/// One slot of the cookie-ordered vector; `ino == 0` marks a removed entry (no inode has
/// number 0).
struct Slot {
    cookie: u64,
    ino: u64,
    name: Box<[u8]>,
}

/// The entries of one directory.
pub(crate) struct Dir {
    slots: Vec<Slot>,
    index: HashTable<u32>,
    live: usize,
    next_cookie: u64,
}

impl Default for Dir {
    fn default() -> Self {
        Dir {
            slots: Vec::new(),
            index: HashTable::new(),
            live: 0,
            next_cookie: FIRST_COOKIE,
        }
    }
}

/// One random key for every directory's name hashes.
fn hasher() -> &'static RandomState {
    static H: OnceLock<RandomState> = OnceLock::new();
    H.get_or_init(RandomState::new)
}

fn hash(name: &[u8]) -> u64 {
    hasher().hash_one(name)
}

impl Dir {
    fn find(&self, name: &[u8]) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash(name), |&pos| *slots[pos as usize].name == *name)
            .map(|&pos| pos as usize)
    }

    pub(crate) fn get(&self, name: &[u8]) -> Option<Link> {
        self.find(name).map(|pos| Link {
            ino: self.slots[pos].ino,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether another name fits (callers answer `ENOSPC` otherwise).
    pub(crate) fn has_room(&self) -> bool {
        self.live < MAX_ENTRIES
    }

    /// Links `name` to `ino`; the caller has checked that the name is free and that
    /// [`has_room`](Self::has_room).
    pub(crate) fn insert(&mut self, name: &[u8], ino: u64) {
        if self.slots.len() >= MAX_ENTRIES {
            self.compact();
        }
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let pos = self.slots.len() as u32;
        self.slots.push(Slot {
            cookie,
            ino,
            name: name.into(),
        });
        let slots = &self.slots;
        self.index
            .insert_unique(hash(name), pos, |&p| hash(&slots[p as usize].name));
        self.live += 1;
    }

    /// Points an existing name at another inode, keeping its cookie (rename over a name).
    pub(crate) fn replace(&mut self, name: &[u8], ino: u64) -> Option<u64> {
        let pos = self.find(name)?;
        Some(std::mem::replace(&mut self.slots[pos].ino, ino))
    }

    pub(crate) fn remove(&mut self, name: &[u8]) -> Option<Link> {
        let slots = &self.slots;
        let entry = self
            .index
            .find_entry(hash(name), |&pos| *slots[pos as usize].name == *name)
            .ok()?;
        let (pos, _) = entry.remove();
        let slot = &mut self.slots[pos as usize];
        let link = Link {
            ino: std::mem::replace(&mut slot.ino, 0),
        };
        slot.name = Box::default();
        self.live -= 1;
        // Compacting once tombstones outnumber live entries keeps the vector within twice
        // the live entries (what a name is charged for) at amortised constant cost.
        let dead = self.slots.len() - self.live;
        if dead > self.live.max(TOMBSTONES) {
            self.compact();
        }
        Some(link)
    }

    /// Drops tombstones and rebuilds the index (cookies are kept, so listings resume
    /// correctly across a compaction).
    fn compact(&mut self) {
        self.slots.retain(|s| s.ino != 0);
        // Tables are only given back when well oversized: a small directory whose entries
        // come and go keeps its few slots instead of reallocating on every compaction.
        let len = self.slots.len();
        if self.slots.capacity() > 2 * len + SLACK {
            self.slots.shrink_to(len * 2);
        }
        self.index.clear();
        if self.index.capacity() > 2 * len + SLACK {
            self.index.shrink_to(len, |_| 0);
        }
        for (pos, s) in self.slots.iter().enumerate() {
            let slots = &self.slots;
            self.index.insert_unique(hash(&s.name), pos as u32, |&p| {
                hash(&slots[p as usize].name)
            });
        }
    }

    /// The cookie the next linked name gets (for a state snapshot).
    pub(crate) fn next_cookie(&self) -> u64 {
        self.next_cookie
    }

    /// Restores one entry of a snapshot with its cookie. Entries come in cookie order;
    /// `false` if the cookie is out of order or the name is taken.
    pub(crate) fn restore_entry(&mut self, cookie: u64, name: &[u8], ino: u64) -> bool {
        if cookie < self.next_cookie || ino == 0 || !self.has_room() || self.get(name).is_some() {
            return false;
        }
        self.next_cookie = cookie;
        self.insert(name, ino);
        true
    }

    /// Restores a snapshot's next cookie (after its entries); `false` if it would go back.
    pub(crate) fn restore_next_cookie(&mut self, next: u64) -> bool {
        if next < self.next_cookie {
            return false;
        }
        self.next_cookie = next;
        true
    }

    /// Entries with a cookie greater than `after`, in cookie order.
    pub(crate) fn iter_from(&self, after: u64) -> impl Iterator<Item = (u64, &[u8], u64)> + '_ {
        let from = after.saturating_add(1).max(FIRST_COOKIE);
        let start = self.slots.partition_point(|s| s.cookie < from);
        self.slots[start..]
            .iter()
            .filter(|s| s.ino != 0)
            .map(|s| (s.cookie, &s.name[..], s.ino))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_survive_removal_and_compaction() {
        let mut d = Dir::default();
        for i in 0..1000u64 {
            d.insert(format!("n{i}").as_bytes(), i + 10);
        }
        let cookie_of = |d: &Dir, name: &[u8]| {
            d.iter_from(0)
                .find(|(_, n, _)| *n == name)
                .map(|(c, _, _)| c)
        };
        let c500 = cookie_of(&d, b"n500");
        for i in (0..1000u64).filter(|i| i % 4 != 0) {
            assert_eq!(
                d.remove(format!("n{i}").as_bytes()).map(|l| l.ino),
                Some(i + 10)
            );
        }
        // Compaction happened (tombstones outnumbered live entries).
        assert!(d.slots.len() < 1000);
        assert_eq!(cookie_of(&d, b"n500"), c500);
        assert!(d.get(b"n501").is_none());
        let listed: Vec<u64> = d.iter_from(0).map(|(_, _, ino)| ino).collect();
        let want: Vec<u64> = (0..1000u64)
            .filter(|i| i % 4 == 0)
            .map(|i| i + 10)
            .collect();
        assert_eq!(listed, want);
        // Resume after n500's cookie: exactly the later survivors.
        let after = d.iter_from(c500.unwrap_or(0)).count();
        assert_eq!(after, (501..1000).filter(|i| i % 4 == 0).count());
        assert_eq!(d.replace(b"n500", 7), Some(510));
        assert_eq!(d.get(b"n500").map(|l| l.ino), Some(7));
        assert!(!d.is_empty() && d.has_room());
    }
}
