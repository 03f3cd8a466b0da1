//! The DualFs inode table: guest inode -> (backend A inode, backend B inode).
//!
//! * A [`Node`] holds **one lookup reference** on each backend inode it names and gives it
//!   back (`forget(ino, 1)`) when the last `Arc` goes: when the guest has forgotten it and no
//!   open handle or child node still needs it. Memory is therefore bounded by what the guest
//!   holds (plus their ancestors).
//! * Guest ids are derived from the first backend inode a node was found through:
//!   `ino << 1` for A and `ino << 1 | 1` for B (ids below 2^63, distinct across backends,
//!   never `ROOT_ID`), or allocated from 2^63 up for backend inodes of 2^62 and more. A node
//!   keeps its id across a copy-up, and the copy keeps it for the life of the mount (the
//!   `origins` map), also after the guest forgets it.
//! * `index` maps `(layer, backend inode)` to the node (weakly), so hard links inside one
//!   backend share one guest inode and a copied-up file is found again through its copy.
//! * `nodes` maps guest ids to nodes the guest may name (lookup count > 0). Both maps are
//!   sharded; no lock is held across a backend call.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use crate::DynFileSystem;

const SHARDS: usize = 16;

/// One shard of the (layer, backend inode) -> node index.
type IndexShard = HashMap<(Layer, u64), Weak<Node>>;

/// Which backend an inode or entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Layer {
    A,
    B,
}

/// The backends and the index, shared by the filesystem and every node (for `Drop`).
pub(crate) struct Shared {
    pub a: Arc<dyn DynFileSystem>,
    pub b: Arc<dyn DynFileSystem>,
    index: Vec<Mutex<IndexShard>>,
    next_big: AtomicU64,
    /// Guest ids of copied-up inodes, by their A inode: a copy keeps the id its B original
    /// had for the life of the mount, also after the guest forgets it (one entry per copy-up,
    /// bounded by the size of B; dropped when the copy is removed).
    origins: Mutex<HashMap<u64, u64>>,
}

impl Shared {
    pub fn new(a: Arc<dyn DynFileSystem>, b: Arc<dyn DynFileSystem>) -> Self {
        Shared {
            a,
            b,
            index: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_big: AtomicU64::new(1 << 63),
            origins: Mutex::new(HashMap::new()),
        }
    }

    pub fn fs(&self, layer: Layer) -> &dyn DynFileSystem {
        match layer {
            Layer::A => &*self.a,
            Layer::B => &*self.b,
        }
    }

    fn shard(&self, key: (Layer, u64)) -> &Mutex<IndexShard> {
        let h = key.1.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 59;
        &self.index[(h as usize ^ (key.0 == Layer::B) as usize) % SHARDS]
    }

    /// The live node for `key`, if any.
    pub fn find(&self, key: (Layer, u64)) -> Option<Arc<Node>> {
        self.shard(key).lock().get(&key).and_then(Weak::upgrade)
    }

    /// The live node for `key`, or a new one made by `make(id)`; `true` if it was new.
    pub fn find_or_insert(
        &self,
        key: (Layer, u64),
        make: impl FnOnce(u64) -> Node,
    ) -> (Arc<Node>, bool) {
        let mut shard = self.shard(key).lock();
        if let Some(n) = shard.get(&key).and_then(Weak::upgrade) {
            return (n, false);
        }
        let id = self.derive_id(key);
        let node = Arc::new(make(id));
        shard.insert(key, Arc::downgrade(&node));
        (node, true)
    }

    /// Registers `node` under an additional key (its copy in A).
    pub fn alias(&self, key: (Layer, u64), node: &Arc<Node>) {
        self.shard(key).lock().insert(key, Arc::downgrade(node));
    }

    fn unindex(&self, key: (Layer, u64), node: *const Node) {
        let mut shard = self.shard(key).lock();
        if let Some(w) = shard.get(&key) {
            if std::ptr::eq(w.as_ptr(), node) || w.strong_count() == 0 {
                shard.remove(&key);
            }
        }
    }

    /// The guest id a backend inode gets when it is first seen: its copy-up origin's id for
    /// a copied-up A inode, else derived from the inode number.
    pub fn derive_id(&self, key: (Layer, u64)) -> u64 {
        if key.0 == Layer::A {
            if let Some(id) = self.origins.lock().get(&key.1) {
                return *id;
            }
        }
        derived_id(key).unwrap_or_else(|| self.next_big.fetch_add(1, Ordering::Relaxed))
    }

    /// Records that A inode `a` is the copy of the guest inode `id`.
    pub fn set_origin(&self, a: u64, id: u64) {
        self.origins.lock().insert(a, id);
    }

    /// Forgets the origin of A inode `a` (its last name in A is gone).
    pub fn clear_origin(&self, a: u64) {
        self.origins.lock().remove(&a);
    }

    /// Every copy-up origin (A inode, guest id) and the next large id (for a state snapshot).
    pub fn origins_snapshot(&self) -> (Vec<(u64, u64)>, u64) {
        let mut v: Vec<_> = self
            .origins
            .lock()
            .iter()
            .map(|(a, id)| (*a, *id))
            .collect();
        v.sort_unstable();
        (v, self.next_big.load(Ordering::Relaxed))
    }

    /// Installs restored origins and the next large id, and re-indexes `nodes` by their
    /// layers (the index is rebuilt from scratch).
    pub fn restore(&self, origins: Vec<(u64, u64)>, next_big: u64, nodes: &[Arc<Node>]) {
        *self.origins.lock() = origins.into_iter().collect();
        self.next_big.store(next_big, Ordering::Relaxed);
        for shard in &self.index {
            shard.lock().clear();
        }
        for n in nodes {
            let l = n.layers();
            if let Some(a) = l.a {
                self.alias((Layer::A, a), n);
            }
            if let Some(b) = l.b {
                self.alias((Layer::B, b), n);
            }
        }
    }

    /// Forgets every origin (see `DualFs::destroy`).
    pub fn clear_origins(&self) {
        self.origins.lock().clear();
    }
}

/// The deterministic guest id of a backend inode, if it has one.
pub(crate) fn derived_id(key: (Layer, u64)) -> Option<u64> {
    if key.1 < (1 << 62) {
        Some((key.1 << 1) | (key.0 == Layer::B) as u64)
    } else {
        None
    }
}

/// The backend inodes behind one guest inode.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Layers {
    /// The inode in A (the upper copy), if any.
    pub a: Option<u64>,
    /// The inode in B: the lower entry (non-directories: kept as the copy-up origin), or
    /// the lower directory merged under `a` (never set for opaque directories).
    pub b: Option<u64>,
}

impl Layers {
    /// The layer and inode that answers reads and attributes.
    pub fn top(&self) -> Option<(Layer, u64)> {
        match (self.a, self.b) {
            (Some(a), _) => Some((Layer::A, a)),
            (None, Some(b)) => Some((Layer::B, b)),
            (None, None) => None,
        }
    }
}

/// Translation of backend directory cookies too large to be tagged in place.
#[derive(Default)]
pub(crate) struct CookieTable {
    pub by_index: Vec<(Layer, u64)>,
    pub by_cookie: HashMap<(Layer, u64), u64>,
}

/// One guest inode.
pub(crate) struct Node {
    pub id: u64,
    /// `S_IFMT` bits of the guest type.
    pub kind: u32,
    shared: Arc<Shared>,
    pub layers: RwLock<Layers>,
    /// Guest lookup count; the node is in the id table while it is > 0.
    pub lookups: Mutex<u64>,
    /// Serialises copy-up of this node.
    pub copy_lock: Mutex<()>,
    /// Where the guest last saw it: parent node and name (`None` for the root).
    pub parent: Mutex<Option<(Arc<Node>, CString)>>,
    /// Large-cookie translations for listings of this directory.
    pub cookies: Mutex<Option<Box<CookieTable>>>,
}

impl Node {
    pub fn new(
        id: u64,
        kind: u32,
        shared: Arc<Shared>,
        layers: Layers,
        parent: Option<(Arc<Node>, CString)>,
    ) -> Self {
        Node {
            id,
            kind,
            shared,
            layers: RwLock::new(layers),
            lookups: Mutex::new(0),
            copy_lock: Mutex::new(()),
            parent: Mutex::new(parent),
            cookies: Mutex::new(None),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR as u32
    }

    pub fn layers(&self) -> Layers {
        *self.layers.read()
    }

    /// Pushes this node's name and its ancestors' (innermost first).
    pub fn push_path(&self, parts: &mut Vec<Vec<u8>>) {
        let mut cur = self.parent.lock().clone();
        let mut depth = 0;
        while let Some((p, name)) = cur {
            parts.push(name.to_bytes().to_vec());
            depth += 1;
            if depth > 4096 {
                break;
            }
            cur = p.parent.lock().clone();
        }
    }

    pub fn parent_and_name(&self) -> Option<(Arc<Node>, CString)> {
        self.parent.lock().clone()
    }

    pub fn set_parent(&self, parent: Arc<Node>, name: CString) {
        *self.parent.lock() = Some((parent, name));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let l = *self.layers.get_mut();
        let ctx = crate::Context::new();
        let me = self as *const Node;
        // The backends' roots are never forgotten.
        let root = self.id == crate::ROOT_ID;
        if let Some(a) = l.a {
            self.shared.unindex((Layer::A, a), me);
            if !root {
                self.shared.a.forget(&ctx, a, 1);
            }
        }
        if let Some(b) = l.b {
            self.shared.unindex((Layer::B, b), me);
            if !root {
                self.shared.b.forget(&ctx, b, 1);
            }
        }
    }
}

/// Guest id -> node, for nodes the guest holds.
pub(crate) struct NodeTable {
    shards: Vec<RwLock<HashMap<u64, Arc<Node>>>>,
}

impl NodeTable {
    pub fn new() -> Self {
        NodeTable {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard_index(id: u64) -> usize {
        (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % SHARDS
    }

    fn shard(&self, id: u64) -> &RwLock<HashMap<u64, Arc<Node>>> {
        &self.shards[Self::shard_index(id)]
    }

    pub fn get(&self, id: u64) -> Option<Arc<Node>> {
        self.shard(id).read().get(&id).cloned()
    }

    /// Counts `n` guest references on `node`, making it reachable by id.
    pub fn inc(&self, node: &Arc<Node>, n: u64) {
        let mut l = node.lookups.lock();
        if *l == 0 {
            self.shard(node.id).write().insert(node.id, node.clone());
        }
        *l = l.saturating_add(n);
    }

    /// Drops `n` guest references; at zero the id stops naming the node. The root is
    /// never dropped.
    pub fn dec(&self, node: &Arc<Node>, n: u64) {
        let mut l = node.lookups.lock();
        if *l == 0 {
            return;
        }
        *l = l.saturating_sub(n);
        if *l == 0 && node.id != crate::ROOT_ID {
            let mut shard = self.shard(node.id).write();
            if shard.get(&node.id).is_some_and(|n| Arc::ptr_eq(n, node)) {
                shard.remove(&node.id);
            }
        }
    }

    /// Drops every node but the root, whose guest count goes back to the one it has when
    /// the filesystem is built. The nodes are dropped outside the table's locks.
    pub fn clear_except_root(&self) {
        let mut dropped = Vec::new();
        for shard in &self.shards {
            let mut s = shard.write();
            s.retain(|id, n| {
                let keep = *id == crate::ROOT_ID;
                if !keep {
                    dropped.push(n.clone());
                }
                keep
            });
        }
        for n in &dropped {
            *n.lookups.lock() = 0;
            // Listing state and the parent link go with the session.
            *n.cookies.lock() = None;
        }
        drop(dropped);
        if let Some(root) = self.get(crate::ROOT_ID) {
            *root.lookups.lock() = 1;
            *root.cookies.lock() = None;
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Every node the guest holds (for a state snapshot).
    pub fn all(&self) -> Vec<Arc<Node>> {
        self.shards
            .iter()
            .flat_map(|s| s.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Replaces every node with `nodes` (their lookup counts already set), returning the
    /// old ones.
    pub fn replace_all(&self, nodes: Vec<Arc<Node>>) -> Vec<Arc<Node>> {
        let mut old = Vec::new();
        let mut guards: Vec<_> = self.shards.iter().map(|s| s.write()).collect();
        for g in guards.iter_mut() {
            old.extend(g.drain().map(|(_, n)| n));
        }
        for n in nodes {
            guards[Self::shard_index(n.id)].insert(n.id, n);
        }
        old
    }
}
