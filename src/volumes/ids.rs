//! Node id and handle namespacing.
//!
//! A guest-visible id is `slot (12 bits) | generation (12 bits) | local (40 bits)`:
//!
//! * `slot` indexes the mount table; slot 0 is the root backend (generation 0), so the root
//!   backend's ids below 2^39 are served unchanged (its root stays [`ROOT_ID`](crate::ROOT_ID)).
//! * `generation` counts the attaches of the slot; a slot is never given the same generation
//!   twice (it is retired after 4095 attaches), so an id of a detached volume never names its
//!   successor's nodes.
//! * `local` is the volume's own id when it is below 2^39 (no table, no lock), or, with bit 39
//!   set, an index into the volume's [`Overflow`] map for backends whose ids are larger (a
//!   nested `VolumeFs`, DualFs's derived ids). An index that was never handed out is `ESTALE`.

use std::io;

use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use crate::errno;

/// Bits of the local part.
pub(super) const LOCAL_BITS: u32 = 40;
/// Bits of the generation.
pub(super) const GEN_BITS: u32 = 12;
/// Number of slots (including the root's slot 0).
pub(super) const SLOTS: usize = 1 << (64 - LOCAL_BITS - GEN_BITS);
/// Largest generation a slot gets before it is retired.
pub(super) const MAX_GEN: u16 = (1 << GEN_BITS) - 1;
/// Mask of the local part.
pub(super) const LOCAL_MASK: u64 = (1 << LOCAL_BITS) - 1;
/// Local ids with this bit set are indices into the overflow map.
pub(super) const INDIRECT: u64 = 1 << (LOCAL_BITS - 1);

/// The high bits that name a slot and generation.
#[inline]
pub(super) fn tag(slot: usize, gen: u16) -> u64 {
    ((slot as u64) << (LOCAL_BITS + GEN_BITS)) | ((gen as u64) << LOCAL_BITS)
}

/// Splits an id into slot, generation and local part.
#[inline]
pub(super) fn split(id: u64) -> (usize, u16, u64) {
    (
        (id >> (LOCAL_BITS + GEN_BITS)) as usize,
        ((id >> LOCAL_BITS) & ((1 << GEN_BITS) - 1)) as u16,
        id & LOCAL_MASK,
    )
}

#[derive(Default)]
struct Maps {
    /// local index → (backend id, references handed out).
    fwd: FxHashMap<u64, (u64, u64)>,
    /// backend id → local index.
    rev: FxHashMap<u64, u64>,
    next: u64,
}

/// Ids of one volume's backend that do not fit the local part, mapped to small indices.
#[derive(Default)]
pub(super) struct Overflow {
    maps: RwLock<Maps>,
}

impl Overflow {
    /// The local id standing for backend id `inner` (`inner >= INDIRECT`); `refs` references
    /// are counted (the mapping lives until they are all returned by [`Overflow::put`]).
    pub(super) fn local(&self, inner: u64, refs: u64) -> io::Result<u64> {
        let mut m = self.maps.write();
        if let Some(&local) = m.rev.get(&inner) {
            if let Some(e) = m.fwd.get_mut(&local) {
                e.1 = e.1.saturating_add(refs);
            }
            return Ok(local);
        }
        if m.next >= INDIRECT - 1 {
            return Err(errno(libc::ENFILE));
        }
        m.next += 1;
        let local = INDIRECT | m.next;
        m.fwd.insert(local, (inner, refs));
        m.rev.insert(inner, local);
        Ok(local)
    }

    /// The backend id of a local index handed out earlier.
    pub(super) fn inner(&self, local: u64) -> io::Result<u64> {
        self.maps
            .read()
            .fwd
            .get(&local)
            .map(|e| e.0)
            .ok_or_else(|| errno(libc::ESTALE))
    }

    /// Returns `refs` references; the mapping goes when none is left.
    pub(super) fn put(&self, local: u64, refs: u64) {
        let mut m = self.maps.write();
        let gone = match m.fwd.get_mut(&local) {
            Some(e) => {
                e.1 = e.1.saturating_sub(refs);
                (e.1 == 0).then_some(e.0)
            }
            None => None,
        };
        if let Some(inner) = gone {
            m.fwd.remove(&local);
            m.rev.remove(&inner);
        }
    }

    /// Every mapping (local index, backend id, references) and the last index handed out
    /// (for a state snapshot).
    pub(super) fn snapshot(&self) -> (Vec<(u64, u64, u64)>, u64) {
        let m = self.maps.read();
        let mut v: Vec<_> = m.fwd.iter().map(|(l, (i, r))| (*l, *i, *r)).collect();
        v.sort_unstable();
        (v, m.next)
    }

    /// Replaces every mapping with restored ones; `false` (nothing changed) if they are not
    /// a valid map (indices out of range or repeated, ids repeated).
    pub(super) fn restore(&self, entries: &[(u64, u64, u64)], next: u64) -> bool {
        let mut fresh = Maps {
            next,
            ..Maps::default()
        };
        if next >= INDIRECT {
            return false;
        }
        for &(local, inner, refs) in entries {
            let idx = local & !INDIRECT;
            if local & INDIRECT == 0
                || local > LOCAL_MASK
                || idx == 0
                || idx > next
                || fresh.fwd.insert(local, (inner, refs)).is_some()
                || fresh.rev.insert(inner, local).is_some()
            {
                return false;
            }
        }
        *self.maps.write() = fresh;
        true
    }

    /// Number of mapped ids.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.maps.read().fwd.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_inverts_tag() {
        let id = tag(4095, 4095) | 12345;
        assert_eq!(split(id), (4095, 4095, 12345));
        assert_eq!(split(1), (0, 0, 1));
    }

    #[test]
    fn overflow_counts_references() {
        let o = Overflow::default();
        let a = o.local(1 << 62, 2).expect("map");
        assert_eq!(o.local(1 << 62, 1).expect("map"), a);
        assert_eq!(o.inner(a).expect("inner"), 1 << 62);
        o.put(a, 2);
        assert!(o.inner(a).is_ok());
        o.put(a, 1);
        assert_eq!(
            o.inner(a).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ESTALE))
        );
        assert_eq!(o.len(), 0);
    }
}
