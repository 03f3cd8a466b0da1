//! Device state of a [`DualFs`]: its own tables, then both layers' states as nested streams.
//!
//! Carried: the guest inode table (guest id, type, lookup count, the A and B inodes behind
//! it, where the guest last saw it, listing cookie translations), the nodes those hang from,
//! open files and directories (with the layer handles behind them), the copy-up map (guest
//! ids inherited by copies), the B -> A map of copied-up hard links, the staging directory,
//! and the counters. Then B's state and A's state, each written by that layer's own
//! [`DynFileSystem::save_state`] as a nested section (so an in-memory upper layer carries
//! its content, a PassthroughFs lower its held inodes).
//!
//! Loading parses and checks DualFs's own tables aside, loads B, then A (each layer's load
//! is all-or-nothing by itself; A's section is read with [`StateReader::nested_final`], so the
//! stream's end record is verified before A commits), and only then installs the tables.
//! A stream refused in the header, in DualFs's tables, in B's section, or anywhere from A's
//! section to the end (a truncation included) leaves DualFs and both layers as they were,
//! except that a B already loaded has its session ended (`destroy`: its restored lookups and
//! handles are dropped, which returns a PassthroughFs lower to its fresh state). Only a B that
//! carries content (a MemFs lower) keeps the content it loaded when A's section is refused;
//! a device whose load failed is not served (the vhost device keeps it stopped).
//!
//! [`DynFileSystem::save_state`]: crate::DynFileSystem::save_state

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::node::{CookieTable, Layer, Layers, Node};
use super::{DualFs, Handle};
use crate::state::{
    invalid, Decoder, Encoder, StateError, StateErrorKind, StateReader, StateWriter,
};
use crate::ROOT_ID;

/// Backend kind in the stream header.
pub(crate) const KIND: &str = "dualfs";

const T_COUNTERS: u16 = 1;
const T_ORIGIN: u16 = 2;
const T_HARDLINK: u16 = 3;
const T_NODE: u16 = 4;
const T_COOKIE: u16 = 5;
const T_FILE: u16 = 6;
const T_DIR: u16 = 7;
/// The layers' nested states follow (B, then A).
const T_LAYERS: u16 = 8;

const NO_PARENT: u64 = u64::MAX;

fn put_opt(e: &mut Encoder, v: Option<u64>) {
    match v {
        Some(x) => e.u8(1).u64(x),
        None => e.u8(0).u64(0),
    };
}

fn get_opt(d: &mut Decoder<'_>) -> io::Result<Option<u64>> {
    let flag = d.u8()?;
    let v = d.u64()?;
    Ok((flag != 0).then_some(v))
}

fn put_layer(l: Layer) -> u8 {
    match l {
        Layer::A => 0,
        Layer::B => 1,
    }
}

fn get_layer(d: &mut Decoder<'_>) -> io::Result<Layer> {
    match d.u8()? {
        0 => Ok(Layer::A),
        1 => Ok(Layer::B),
        x => Err(invalid(format!("unknown layer {x}"))),
    }
}

fn ptr(n: &Arc<Node>) -> usize {
    Arc::as_ptr(n) as usize
}

/// A node being restored, with what is installed at commit.
struct Pending {
    node: Arc<Node>,
    layers: Layers,
    lookups: u64,
    in_table: bool,
    cookies: Option<Box<CookieTable>>,
}

/// DualFs's own tables, parsed and checked.
#[derive(Default)]
struct Tables {
    nodes: Vec<Pending>,
    handles: Vec<(u64, Handle)>,
    origins: Vec<(u64, u64)>,
    hardlinks: HashMap<u64, u64>,
    next_fh: u64,
    next_big: u64,
    work: Option<u64>,
}

impl DualFs {
    /// Writes the tables and both layers' states; see the [module documentation](self).
    pub(crate) fn save_state_impl(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut w = StateWriter::new(out, KIND)?;
        let mut e = Encoder::new();
        let (origins, next_big) = self.shared.origins_snapshot();
        e.u64(self.next_fh.load(Ordering::Acquire)).u64(next_big);
        put_opt(&mut e, *self.work.lock());
        w.record(T_COUNTERS, e.as_slice())?;
        for (a, id) in origins {
            e.clear().u64(a).u64(id);
            w.record(T_ORIGIN, e.as_slice())?;
        }
        let mut links: Vec<(u64, u64)> = self
            .hardlinks
            .lock()
            .iter()
            .map(|(b, a)| (*b, *a))
            .collect();
        links.sort_unstable();
        for (b, a) in links {
            e.clear().u64(b).u64(a);
            w.record(T_HARDLINK, e.as_slice())?;
        }

        let mut handles: Vec<(u64, Arc<Handle>)> = self
            .handles
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .map(|(k, h)| (*k, h.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        handles.sort_unstable_by_key(|(k, _)| *k);
        // Held nodes, nodes of open handles, and every ancestor, parents first.
        let mut order: Vec<(Arc<Node>, bool)> = Vec::new();
        let mut index: HashMap<usize, usize> = HashMap::new();
        let mut todo: Vec<(Arc<Node>, bool)> =
            self.nodes.all().into_iter().map(|n| (n, true)).collect();
        todo.extend(handles.iter().map(|(_, h)| match &**h {
            Handle::File { _node, .. } => (_node.clone(), false),
            Handle::Dir { node, .. } => (node.clone(), false),
        }));
        while let Some((n, held)) = todo.pop() {
            if let Some(&i) = index.get(&ptr(&n)) {
                order[i].1 |= held;
                continue;
            }
            index.insert(ptr(&n), order.len());
            if let Some((p, _)) = n.parent_and_name() {
                todo.push((p, false));
            }
            order.push((n, held));
        }
        // Parents first: by depth (the root has none).
        let depth = |n: &Arc<Node>| {
            let mut d = 0usize;
            let mut cur = n.parent_and_name();
            while let Some((p, _)) = cur {
                d += 1;
                if d > order.len() {
                    break;
                }
                cur = p.parent_and_name();
            }
            (n.id != ROOT_ID, d, n.id)
        };
        let mut sorted: Vec<usize> = (0..order.len()).collect();
        sorted.sort_by_cached_key(|&i| depth(&order[i].0));
        if sorted.first().is_none_or(|&i| order[i].0.id != ROOT_ID) {
            return Err(io::Error::other("dualfs state: the root is not held"));
        }
        let mut refs: HashMap<usize, u64> = HashMap::new();
        for i in sorted {
            let (n, held) = &order[i];
            let parent = n.parent_and_name();
            let parent_ref = parent
                .as_ref()
                .and_then(|(p, _)| refs.get(&ptr(p)).copied());
            refs.insert(ptr(n), refs.len() as u64);
            let l = n.layers();
            e.clear()
                .u64(n.id)
                .u32(n.kind)
                .u8(*held as u8)
                .u64(*n.lookups.lock());
            put_opt(&mut e, l.a);
            put_opt(&mut e, l.b);
            e.u64(parent_ref.unwrap_or(NO_PARENT));
            e.bytes(
                parent
                    .as_ref()
                    .filter(|_| parent_ref.is_some())
                    .map_or(&[][..], |(_, name)| name.as_bytes()),
            );
            w.record(T_NODE, e.as_slice())?;
            if let Some(t) = n.cookies.lock().as_ref() {
                for (layer, cookie) in &t.by_index {
                    e.clear().u8(put_layer(*layer)).u64(*cookie);
                    w.record(T_COOKIE, e.as_slice())?;
                }
            }
        }
        for (fh, h) in &handles {
            match &**h {
                Handle::File {
                    _node,
                    layer,
                    ino,
                    fh: lfh,
                    flags,
                } => {
                    let r = refs.get(&ptr(_node)).copied().unwrap_or(NO_PARENT);
                    e.clear()
                        .u64(*fh)
                        .u64(r)
                        .u8(put_layer(*layer))
                        .u64(*ino)
                        .u64(*lfh)
                        .u32(*flags);
                    w.record(T_FILE, e.as_slice())?;
                }
                Handle::Dir { node, a, b } => {
                    let r = refs.get(&ptr(node)).copied().unwrap_or(NO_PARENT);
                    e.clear().u64(*fh).u64(r);
                    for side in [a, b] {
                        put_opt(&mut e, side.map(|(ino, _)| ino));
                        e.u64(side.map_or(0, |(_, fh)| fh));
                    }
                    w.record(T_DIR, e.as_slice())?;
                }
            }
        }
        w.record(T_LAYERS, &[])?;
        for layer in [&self.shared.b, &self.shared.a] {
            let mut nested = w.nested();
            layer.save_state(&mut nested)?;
            nested.finish()?;
        }
        w.finish()?;
        Ok(())
    }

    /// Restores a saved state; see the [module documentation](self).
    pub(crate) fn load_state_impl(&self, input: &mut dyn io::Read) -> io::Result<()> {
        let mut r = StateReader::new(input, KIND)?;
        let tables = match r.version() {
            1 => self.read_tables(&mut r)?,
            v => {
                return Err(StateError::io(
                    StateErrorKind::Version,
                    format!("DualFs cannot read format version {v}"),
                ))
            }
        };
        {
            let mut nested = r.nested();
            let res = self
                .shared
                .b
                .load_state(&mut nested)
                .and_then(|()| nested.finish().inspect_err(|_| self.shared.b.destroy()));
            res?;
        }
        {
            let mut nested = r.nested_final();
            let res = self
                .shared
                .a
                .load_state(&mut nested)
                .and_then(|()| nested.finish().inspect_err(|_| self.shared.a.destroy()));
            if let Err(e) = res {
                self.shared.b.destroy();
                return Err(e);
            }
        }
        if let Err(e) = r.expect_end() {
            self.shared.a.destroy();
            self.shared.b.destroy();
            return Err(e);
        }
        self.commit(tables);
        Ok(())
    }

    fn read_tables(&self, r: &mut StateReader<'_>) -> io::Result<Tables> {
        let root = self.node(ROOT_ID)?;
        let mut t = Tables::default();
        let mut counters = false;
        let mut ids: HashMap<u64, ()> = HashMap::new();
        let mut fhs: HashMap<u64, ()> = HashMap::new();
        loop {
            let rec = r.expect_record("the layers")?;
            let mut d = rec.decoder();
            match rec.tag {
                T_LAYERS => break,
                T_COUNTERS => {
                    if std::mem::replace(&mut counters, true) {
                        return Err(invalid("counters twice"));
                    }
                    t.next_fh = d.u64()?;
                    t.next_big = d.u64()?;
                    t.work = get_opt(&mut d)?;
                }
                T_ORIGIN => t.origins.push((d.u64()?, d.u64()?)),
                T_HARDLINK => {
                    let (b, a) = (d.u64()?, d.u64()?);
                    t.hardlinks.insert(b, a);
                }
                T_NODE => {
                    let id = d.u64()?;
                    let kind = d.u32()?;
                    let held = d.u8()? != 0;
                    let lookups = d.u64()?;
                    let layers = Layers {
                        a: get_opt(&mut d)?,
                        b: get_opt(&mut d)?,
                    };
                    let parent = d.u64()?;
                    let name = d.bytes()?;
                    let me = t.nodes.len() as u64;
                    if kind & !(libc::S_IFMT as u32) != 0 || kind == 0 {
                        return Err(invalid(format!("node {id}: bad type {kind:o}")));
                    }
                    if held && (id == 0 || ids.insert(id, ()).is_some()) {
                        return Err(invalid(format!("node id {id} invalid or repeated")));
                    }
                    let node = if me == 0 {
                        if id != ROOT_ID || parent != NO_PARENT || !held {
                            return Err(invalid("the first node is not the root"));
                        }
                        root.clone()
                    } else {
                        if id == ROOT_ID {
                            return Err(invalid("a second root"));
                        }
                        let parent = if parent == NO_PARENT {
                            None
                        } else {
                            let p = t
                                .nodes
                                .get(parent as usize)
                                .filter(|p| p.node.is_dir())
                                .ok_or_else(|| invalid(format!("node {id}: bad parent")))?;
                            let name = CString::new(name)
                                .ok()
                                .filter(|n| crate::name::validate(n).is_ok())
                                .ok_or_else(|| invalid(format!("node {id}: bad name")))?;
                            Some((p.node.clone(), name))
                        };
                        // No layers until the commit: a node dropped before it gives nothing
                        // back to the layers.
                        Arc::new(Node::new(
                            id,
                            kind,
                            self.shared.clone(),
                            Layers::default(),
                            parent,
                        ))
                    };
                    t.nodes.push(Pending {
                        node,
                        layers,
                        lookups,
                        in_table: held,
                        cookies: None,
                    });
                }
                T_COOKIE => {
                    let layer = get_layer(&mut d)?;
                    let cookie = d.u64()?;
                    let p = t
                        .nodes
                        .last_mut()
                        .ok_or_else(|| invalid("cookie before any node"))?;
                    let c = p.cookies.get_or_insert_with(Box::default);
                    let i = c.by_index.len() as u64;
                    c.by_index.push((layer, cookie));
                    c.by_cookie.insert((layer, cookie), i);
                }
                T_FILE | T_DIR => {
                    let fh = d.u64()?;
                    let r = d.u64()?;
                    if fh == 0 || fhs.insert(fh, ()).is_some() {
                        return Err(invalid(format!("handle {fh} invalid or repeated")));
                    }
                    let node = t
                        .nodes
                        .get(r as usize)
                        .map(|p| p.node.clone())
                        .ok_or_else(|| invalid(format!("handle {fh}: unknown node")))?;
                    let h = if rec.tag == T_FILE {
                        Handle::File {
                            _node: node,
                            layer: get_layer(&mut d)?,
                            ino: d.u64()?,
                            fh: d.u64()?,
                            flags: d.u32()?,
                        }
                    } else {
                        if !node.is_dir() {
                            return Err(invalid(format!("handle {fh}: not a directory")));
                        }
                        let a = get_opt(&mut d)?;
                        let afh = d.u64()?;
                        let b = get_opt(&mut d)?;
                        let bfh = d.u64()?;
                        Handle::Dir {
                            node,
                            a: a.map(|ino| (ino, afh)),
                            b: b.map(|ino| (ino, bfh)),
                        }
                    };
                    t.handles.push((fh, h));
                }
                tag => return Err(invalid(format!("unknown DualFs record tag {tag}"))),
            }
            d.end()?;
        }
        if !counters || t.nodes.is_empty() {
            return Err(invalid("no counters or no root"));
        }
        if fhs.keys().any(|&fh| fh >= t.next_fh) {
            return Err(invalid("a handle number lies beyond its counter"));
        }
        Ok(t)
    }

    /// Installs checked tables over the layers just loaded.
    fn commit(&self, t: Tables) {
        // The old session's nodes refer to the layers' old state: they give nothing back.
        let mut old: Vec<Arc<Node>> = self.nodes.all();
        for shard in &self.handles {
            for (_, h) in shard.write().drain() {
                match &*h {
                    Handle::File { _node, .. } => old.push(_node.clone()),
                    Handle::Dir { node, .. } => old.push(node.clone()),
                }
            }
        }
        let mut seen: HashMap<usize, ()> = HashMap::new();
        while let Some(n) = old.pop() {
            if seen.insert(ptr(&n), ()).is_some() || n.id == ROOT_ID {
                continue;
            }
            *n.layers.write() = Layers::default();
            if let Some((p, _)) = n.parent_and_name() {
                old.push(p);
            }
        }
        let mut table = Vec::new();
        let mut all = Vec::with_capacity(t.nodes.len());
        for p in t.nodes {
            *p.node.layers.write() = p.layers;
            *p.node.lookups.lock() = p.lookups;
            *p.node.cookies.lock() = p.cookies;
            if p.in_table {
                table.push(p.node.clone());
            }
            all.push(p.node);
        }
        let old_table = self.nodes.replace_all(table);
        self.shared.restore(t.origins, t.next_big, &all);
        for (fh, h) in t.handles {
            self.handle_shard(fh).write().insert(fh, Arc::new(h));
        }
        self.next_fh.store(t.next_fh, Ordering::Release);
        *self.hardlinks.lock() = t.hardlinks;
        *self.work.lock() = t.work;
        drop(old_table);
    }
}

impl crate::DynFileSystem for DualFs {
    /// Writes DualFs's tables, then B's and A's states as nested sections.
    fn save_state(&self, out: &mut dyn io::Write) -> io::Result<()> {
        self.save_state_impl(out)
    }

    /// Restores DualFs's tables and both layers' states; see `dualfs/state.rs` for what a
    /// refused stream leaves behind.
    fn load_state(&self, input: &mut dyn io::Read) -> io::Result<()> {
        self.load_state_impl(input)
    }

    /// A miss is a miss in both layers (or a whiteout): cached for the imposed entry timeout
    /// if the overlay sets one, else for the shorter of the layers' own.
    fn negative_timeout(&self) -> std::time::Duration {
        self.negative_timeout_impl()
    }
}
