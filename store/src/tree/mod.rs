//! A point's reference list as a tree, written and read as a stream.
//!
//! One [`ChunkRef`] per chunk of the disk is too much to hold for a big disk (8 M refs for
//! 2 TiB at 256 KiB chunks, 64 M for 16 TiB). The list is cut into *leaves* (tree segments) of
//! [`SEGMENT_REFS`] refs; above them, *nodes* of level 1, 2, ... each name up to [`FANOUT`]
//! children of the level below. The point names the ids of its top level (at most
//! [`FANOUT`] - 1 of them) and the tree's depth. Every leaf and node is a content-addressed
//! chunk of kind [`ChunkKind::Tree`](crate::ChunkKind), so:
//! - a stretch of disk that did not change since the previous point keeps its leaf, and a
//!   stretch of 16 GiB keeps its level-1 node, without being read or written again;
//! - a stretch of zeros is one shared leaf (and one shared node per level), however long;
//! - committing or dropping a point touches only the nodes it does not share (`refs` module).
//!
//! # Format (version 2)
//! A leaf or node is a 16-byte header, `cairn-tree`, the format version (2), the level (0 for a
//! leaf), the entry count (u32, little-endian), then the entries: 32-byte refs in a leaf (all
//! zeros for a zero chunk), 32-byte child ids in a node. A leaf of format 1 (points written
//! before trees existed) is the bare refs, without a header; it reads as a leaf of level 0.
//!
//! [`TreeWriter`] builds a tree as refs arrive, keeping one leaf and one node per level in
//! memory. [`Walk`] reads one forward, a path of nodes at a time: it can skip a subtree without
//! reading it, and reports a leaf or node that cannot be read as an extent of its own (the
//! caller decides whether that is fatal), so every reader of trees (restore, verify, report,
//! diff, a delta's parent) shares one walk.
//!
//! The format is [`format`], building a tree [`writer`], reading one [`walk`], comparing two
//! [`diff`].

mod diff;
mod format;
mod walk;
mod writer;

pub use diff::{RefLookup, differences};
pub use format::{
    FANOUT, Node, SEGMENT_REFS, TREE_FORMAT, children, decode, decode_leaf, encode_leaf,
    encode_node, span,
};
pub(crate) use format::{MAX_DEPTH, TREE_MAGIC};
pub use walk::{Body, Entry, Extent, Walk};
pub use writer::{TreeRoot, TreeWriter, top};
