//! What MemFs charges to its byte capacity for each thing a guest can make.
//!
//! Every charge is an upper bound of the heap memory the thing really occupies, allocator
//! bookkeeping included, so the capacity bounds memory (see [`MemFs::memory_ceiling`]):
//!
//! | thing | charge |
//! |---|---|
//! | inode (file, symlink, device, FIFO, socket) | [`INODE`] bytes |
//! | directory inode | [`DIR_INODE`] bytes |
//! | name (each hard link, each directory entry) | [`NAME`] + [`heap`]`(name length)` |
//! | extended attribute | [`XATTR`] + [`heap`]`(name length)` + [`heap`]`(value length)` |
//! | symlink target | [`heap`]`(target length)` |
//! | file data up to [`SMALL_FILE_MAX`] bytes, no page yet | [`heap`]`(bytes held)` |
//! | file data beyond that | [`PAGE`] per allocated 4 KiB page |
//!
//! A small file is held in one exact-size buffer covering its written prefix (what lies
//! beyond, up to its size, reads as zeroes); it moves to pages when a write or allocation
//! reaches past [`SMALL_FILE_MAX`]. Pages are allocated on first write, so sparse regions cost
//! nothing. The root directory is not charged (it is part of the fixed base).
//!
//! [`MemFs::memory_ceiling`]: super::MemFs::memory_ceiling

/// Size of a data page; every allocated page is charged this much.
pub const PAGE: u64 = 4096;

/// Largest file prefix kept in an exact-size buffer instead of pages.
pub const SMALL_FILE_MAX: u64 = PAGE;

/// Charge of a non-directory inode: the node with its metadata, locks and data header
/// (~210 bytes with allocator header), its inode-table slot (at most ~36 bytes: tables grow
/// by doubling and shrink when a quarter full) and the header of its xattr list once it has
/// one (up to 64 bytes).
pub const INODE: u64 = 320;

/// Charge of a directory inode: an inode, its directory record (~100 bytes), and the slack
/// its entry table and index may keep beyond what is charged per [`NAME`] (16 slots of
/// 32 bytes, and their index positions).
pub const DIR_INODE: u64 = INODE + 768;

/// Charge of a directory entry besides its name: its slot in the directory's entry vector
/// (32 bytes, up to four times over for growth slack and not yet compacted removals) and
/// its index position (~12 bytes with slack).
pub const NAME: u64 = 160;

/// Charge of an extended attribute besides its name and value: its slot (32 bytes) in the
/// inode's xattr list, with growth slack.
pub const XATTR: u64 = 96;

/// Heap bytes an allocation of `n` bytes occupies, allocator header and rounding included:
/// 0 for nothing, else `n + 16` rounded up to 16, at least 32.
pub const fn heap(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        let r = (n + 16 + 15) & !15;
        if r < 32 {
            32
        } else {
            r
        }
    }
}

/// Charge of one name of `len` bytes in a directory.
pub const fn name(len: u64) -> u64 {
    NAME + heap(len)
}

/// Charge of one extended attribute.
pub const fn xattr(name_len: u64, value_len: u64) -> u64 {
    XATTR + heap(name_len) + heap(value_len)
}

/// Charge of a file whose data is a small buffer of `held` bytes and `pages` pages.
pub const fn data(held: u64, pages: u64) -> u64 {
    heap(held) + pages * PAGE
}

/// Heap bytes per charged data byte that page bookkeeping (page map nodes, allocator
/// headers) may add on top: up to 128 bytes per 4 KiB page, 1/32.
pub const PAGE_OVERHEAD_DIVISOR: u64 = 32;

/// Heap bytes one open handle may occupy (handle record, table slot); handles are limited by
/// `max_handles`, not charged.
pub const HANDLE: u64 = 128;

/// Fixed heap of an empty MemFs (tables of its shards, root directory, counters) plus
/// allocator slack.
pub const BASE: u64 = 256 << 10;
