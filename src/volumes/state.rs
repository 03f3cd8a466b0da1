//! Device state of a [`VolumeFs`]: its mount table, the per-volume id maps and open counts,
//! then every volume's own state as a nested section.
//!
//! Node ids and handles carry their volume's slot and generation, so the guest's ids stay
//! valid only if the destination's table is the same: the same volumes at the same paths, in
//! the same slots and generations, with the same kind of root (directory or file), root node
//! and read-only flag. The destination attaches its volumes as the source did (same paths,
//! same order, before the guest connects) and then loads; a different table is refused
//! ([`StateErrorKind::Mismatch`]) before anything changes.
//!
//! A volume whose backend cannot carry state (`save_state` answers `EOPNOTSUPP` without
//! writing anything: a [`VirtualFile`](super::VirtualFile), a single-file mount) is saved as
//! an empty section; on load it keeps the destination's own backend as attached.
//!
//! Loading checks the table first, then loads each volume's state in table order (each
//! all-or-nothing by itself; the last section is read with
//! [`StateReader::nested_final`](crate::state::StateReader::nested_final), so the stream's end
//! is verified before the last volume commits), and only then installs the id maps and
//! rebuilds the mount table over the restored backends. If a volume's section is refused
//! after earlier volumes were loaded, their sessions are ended (`destroy`), as DualFs does
//! for its layers; the device must not be served then.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{release_held, Volume, VolumeFs};
use crate::state::{
    invalid, Decoder, Encoder, StateError, StateErrorKind, StateReader, StateWriter,
};

/// Backend kind in the stream header.
pub(crate) const KIND: &str = "volumes";

/// One volume of the table: slot, generation, path, flags, root node.
const T_VOLUME: u16 = 1;
/// One id map entry of the last volume: nodes (0) or handles (1), local, backend id, refs.
const T_MAP: u16 = 2;
/// A lookup the mount table holds: slot, backend id.
const T_HELD: u16 = 3;
/// The volumes' nested states follow, in table order.
const T_LAYERS: u16 = 4;

/// What the table says of one volume, compared between source and destination.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    slot: u64,
    gen: u16,
    path: String,
    readonly: bool,
    root_is_dir: bool,
    root: u64,
}

fn shape(v: &Volume) -> Shape {
    Shape {
        slot: v.slot as u64,
        gen: v.gen,
        path: v.path.clone(),
        readonly: v.opts.readonly,
        root_is_dir: v.root_is_dir,
        root: v.root,
    }
}

/// A volume's saved id maps and open count.
#[derive(Default)]
struct Maps {
    nodes: (Vec<(u64, u64, u64)>, u64),
    handles: (Vec<(u64, u64, u64)>, u64),
    open: u64,
}

impl VolumeFs {
    /// The volumes in table order: the root, then by path.
    fn ordered(&self) -> Vec<Arc<Volume>> {
        let c = self.control.lock();
        let mut v = vec![self.root.clone()];
        v.extend(c.volumes.values().cloned());
        v
    }

    /// Writes the table and every volume's state; see the [module documentation](self).
    pub(crate) fn save_state_impl(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut w = StateWriter::new(out, KIND)?;
        let mut e = Encoder::new();
        let vols = self.ordered();
        for v in &vols {
            let s = shape(v);
            e.clear()
                .u64(s.slot)
                .u32(s.gen as u32)
                .bytes(s.path.as_bytes())
                .u8(s.readonly as u8)
                .u8(s.root_is_dir as u8)
                .u64(s.root)
                .u64(v.open.load(Ordering::Acquire));
            let (nodes, nnext) = v.nodes.snapshot();
            let (handles, hnext) = v.handles.snapshot();
            e.u64(nnext).u64(hnext);
            w.record(T_VOLUME, e.as_slice())?;
            for (kind, list) in [(0u8, nodes), (1u8, handles)] {
                for (local, inner, refs) in list {
                    e.clear().u8(kind).u64(local).u64(inner).u64(refs);
                    w.record(T_MAP, e.as_slice())?;
                }
            }
        }
        for (v, ino) in self.control.lock().held.iter() {
            e.clear().u64(v.slot as u64).u64(*ino);
            w.record(T_HELD, e.as_slice())?;
        }
        w.record(T_LAYERS, &[])?;
        for v in &vols {
            let mut nested = w.nested();
            match v.fs.save_state(&mut nested) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && nested.bytes() == 0 => {}
                r => r?,
            }
            nested.finish()?;
        }
        w.finish()?;
        Ok(())
    }

    /// Restores a saved state into a VolumeFs with the same table; see the
    /// [module documentation](self).
    pub(crate) fn load_state_impl(&self, input: &mut dyn io::Read) -> io::Result<()> {
        let mut r = StateReader::new(input, KIND)?;
        if r.version() != 1 {
            return Err(StateError::io(
                StateErrorKind::Version,
                format!("VolumeFs cannot read format version {}", r.version()),
            ));
        }
        let vols = self.ordered();
        let mut maps: Vec<Maps> = Vec::new();
        let mut held: Vec<(u64, u64)> = Vec::new();
        loop {
            let rec = r.expect_record("the volumes' states")?;
            let mut d = rec.decoder();
            match rec.tag {
                T_LAYERS => break,
                T_VOLUME => {
                    let got = read_shape(&mut d)?;
                    let open = d.u64()?;
                    let nnext = d.u64()?;
                    let hnext = d.u64()?;
                    let here = vols.get(maps.len()).map(|v| shape(v));
                    if here.as_ref() != Some(&got) {
                        return Err(StateError::io(
                            StateErrorKind::Mismatch,
                            format!(
                                "the saved volume table has {got:?} where this one has {here:?}"
                            ),
                        ));
                    }
                    maps.push(Maps {
                        nodes: (Vec::new(), nnext),
                        handles: (Vec::new(), hnext),
                        open,
                    });
                }
                T_MAP => {
                    let kind = d.u8()?;
                    let entry = (d.u64()?, d.u64()?, d.u64()?);
                    let m = maps
                        .last_mut()
                        .ok_or_else(|| invalid("map before a volume"))?;
                    match kind {
                        0 => m.nodes.0.push(entry),
                        1 => m.handles.0.push(entry),
                        _ => return Err(invalid("unknown map kind")),
                    }
                }
                T_HELD => held.push((d.u64()?, d.u64()?)),
                t => return Err(invalid(format!("unknown VolumeFs record tag {t}"))),
            }
            d.end()?;
        }
        if maps.len() != vols.len() {
            return Err(StateError::io(
                StateErrorKind::Mismatch,
                format!(
                    "the saved volume table has {} volumes, this one {}",
                    maps.len(),
                    vols.len()
                ),
            ));
        }
        // The maps must be valid before any volume is loaded.
        for m in &maps {
            let probe = super::ids::Overflow::default();
            if !probe.restore(&m.nodes.0, m.nodes.1) || !probe.restore(&m.handles.0, m.handles.1) {
                return Err(invalid("a volume's id map is invalid"));
            }
        }
        let by_slot: BTreeMap<u64, Arc<Volume>> =
            vols.iter().map(|v| (v.slot as u64, v.clone())).collect();
        if held.iter().any(|(s, _)| !by_slot.contains_key(s)) {
            return Err(invalid("a held lookup names no volume"));
        }
        let mut loaded: Vec<Arc<Volume>> = Vec::new();
        let undo = |loaded: &[Arc<Volume>]| {
            for v in loaded {
                v.fs.destroy();
            }
        };
        for (i, v) in vols.iter().enumerate() {
            // The last section also verifies the stream's end before its volume commits.
            let mut nested = if i + 1 == vols.len() {
                r.nested_final()
            } else {
                r.nested()
            };
            let res = match nested.is_empty() {
                Ok(true) => Ok(false),
                Ok(false) => v.fs.load_state(&mut nested).map(|()| true),
                Err(e) => Err(e),
            };
            let res = res.and_then(|did| nested.finish().map(|()| did));
            match res {
                Ok(true) => loaded.push(v.clone()),
                Ok(false) => {}
                Err(e) => {
                    undo(&loaded);
                    return Err(e);
                }
            }
        }
        if let Err(e) = r.expect_end() {
            undo(&loaded);
            return Err(e);
        }
        // Install: id maps and open counts, then the mount table over the restored
        // backends. The lookups the old table held belonged to the replaced sessions; the
        // source table's lookups are part of the restored states and are given back once
        // the new table holds its own.
        for (v, m) in vols.iter().zip(maps) {
            v.nodes.restore(&m.nodes.0, m.nodes.1);
            v.handles.restore(&m.handles.0, m.handles.1);
            v.open.store(m.open, Ordering::Release);
        }
        let mut c = self.control.lock();
        let (table, new_held, _) = self.build(&c.volumes);
        let _stale = std::mem::replace(&mut c.held, new_held);
        self.publish(table);
        self.listings.lock().clear();
        drop(c);
        let source_held = held
            .into_iter()
            .filter_map(|(s, ino)| by_slot.get(&s).map(|v| (v.clone(), ino)))
            .collect();
        release_held(source_held);
        Ok(())
    }
}

fn read_shape(d: &mut Decoder<'_>) -> io::Result<Shape> {
    let slot = d.u64()?;
    let gen = u16::try_from(d.u32()?).map_err(|_| invalid("generation out of range"))?;
    let path = String::from_utf8(d.bytes()?.to_vec()).map_err(|_| invalid("path not UTF-8"))?;
    Ok(Shape {
        slot,
        gen,
        path,
        readonly: d.u8()? != 0,
        root_is_dir: d.u8()? != 0,
        root: d.u64()?,
    })
}
