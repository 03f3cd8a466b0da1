//! An in-memory filesystem (in progress).
/// placeholder
pub struct MemFs;
