//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`). Not a stable API.
//!
//! [`RequestHarness::process_queue`] runs the device's own request path on a split virtqueue
//! laid out by the caller in guest memory: pop every available chain (as the vring thread
//! does), classify it (`request::may_block`), serve it with `request::process`, and add it
//! to the used ring.

use std::sync::Arc;

use super::request::{self, Outcome};
use super::session::Session;
use crate::{DynFileSystem, SharedFs};
use fuse_backend_rs::api::server::Server;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

/// Guest memory as the device maps it (with the dirty-page log of live migration, unset).
pub type FuzzMemory = request::Mem;

/// What happened to one descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuzzOutcome {
    /// The FUSE server answered (or the request needs no answer) with `used` bytes.
    Served {
        /// Bytes written into the chain's writable buffers.
        used: u32,
    },
    /// The device answered with `errno` itself.
    ErrorReply {
        /// Bytes written into the chain's writable buffers.
        used: u32,
        /// The errno of the reply.
        errno: i32,
    },
    /// The chain was returned unanswered.
    Dropped,
}

/// The FUSE server of a device over one filesystem, without the vhost-user connection.
pub struct RequestHarness {
    server: Server<SharedFs>,
    session: Session,
}

/// A split virtqueue laid out in guest memory (addresses of the three parts and the size).
#[derive(Debug, Clone, Copy)]
pub struct QueueLayout {
    /// Guest address of the descriptor table.
    pub desc: u64,
    /// Guest address of the available ring.
    pub avail: u64,
    /// Guest address of the used ring.
    pub used: u64,
    /// Queue size (a power of two).
    pub size: u16,
    /// Whether `VIRTIO_RING_F_EVENT_IDX` is negotiated.
    pub event_idx: bool,
}

impl RequestHarness {
    /// A server over `fs`, as [`super::FsDevice`] builds it, in a session that starts as
    /// if FUSE_INIT had been answered (so every input reaches the filesystem; an INIT in the
    /// input resets the session as it would on the device).
    pub fn new(fs: Arc<dyn DynFileSystem>) -> Self {
        RequestHarness {
            server: Server::new(SharedFs::new(Arc::clone(&fs))),
            session: Session::new(fs, true),
        }
    }

    /// Serves every chain the available ring of `layout` offers, like the vring thread, and
    /// returns what happened to each (in order). `None` if the queue itself is invalid (the
    /// device would not start it).
    pub fn process_queue(
        &self,
        mem: &Arc<FuzzMemory>,
        layout: QueueLayout,
    ) -> Option<Vec<FuzzOutcome>> {
        let mut q = Queue::new(layout.size).ok()?;
        q.set_size(layout.size);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (l, h) = split(layout.desc);
        q.set_desc_table_address(l, h);
        let (l, h) = split(layout.avail);
        q.set_avail_ring_address(l, h);
        let (l, h) = split(layout.used);
        q.set_used_ring_address(l, h);
        q.set_event_idx(layout.event_idx);
        q.set_ready(true);
        if !q.is_valid(mem.as_ref()) {
            return None;
        }
        let chains: Vec<request::Chain> = q.iter(Arc::clone(mem)).ok()?.collect();
        let mut out = Vec::with_capacity(chains.len());
        for chain in chains {
            let head = chain.head_index();
            let _ = request::may_block(&chain, mem);
            let outcome = request::process(&self.server, &self.session, mem, chain);
            let _ = q.add_used(mem.as_ref(), head, outcome.used_len());
            out.push(match outcome {
                Outcome::Served { used } => FuzzOutcome::Served { used },
                Outcome::ErrorReply { used, errno } => FuzzOutcome::ErrorReply { used, errno },
                Outcome::Dropped { .. } => FuzzOutcome::Dropped,
            });
        }
        Some(out)
    }
}
