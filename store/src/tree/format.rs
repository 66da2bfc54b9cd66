//! The format of leaves and nodes (version 2, and the bare leaves of version 1).

use std::collections::HashSet;
use std::sync::Arc;

use crate::chunk::{ChunkId, ChunkRef};
use crate::error::Result;

/// Refs per leaf: 256 refs of 32 bytes = 8 KiB per leaf.
pub const SEGMENT_REFS: usize = 256;

/// Children per node.
pub const FANOUT: usize = 256;

/// The format of leaves and nodes written now.
pub const TREE_FORMAT: u8 = crate::format::TREE.current() as u8;

/// Deepest tree read (level 4 spans 2^40 chunks, far past any disk).
pub(crate) const MAX_DEPTH: u8 = 4;

/// The first bytes of every leaf and node of format 2.
pub(crate) const TREE_MAGIC: &[u8; 10] = b"cairn-tree";

pub(super) const MAGIC: &[u8; 10] = TREE_MAGIC;

pub(super) const HEADER: usize = 16;

/// Chunks of disk one entry of `level` covers when full (a leaf at level 0).
#[must_use]
pub fn span(level: u8) -> u64 {
    SEGMENT_REFS as u64 * (FANOUT as u64).pow(u32::from(level))
}

/// A decoded leaf or node.
#[derive(Debug, Clone)]
pub enum Node {
    /// Level 0: refs, one per chunk.
    Leaf(Arc<[ChunkRef]>),
    /// Level 1 or more: the ids of the children, one level down.
    Inner(u8, Arc<[ChunkId]>),
}

impl Node {
    /// The level: 0 for a leaf.
    #[must_use]
    pub fn level(&self) -> u8 {
        match self {
            Self::Leaf(_) => 0,
            Self::Inner(l, _) => *l,
        }
    }
}

pub(super) fn header(level: u8, count: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..10].copy_from_slice(MAGIC);
    h[10] = TREE_FORMAT;
    h[11] = level;
    h[12..16].copy_from_slice(&(count as u32).to_le_bytes());
    h
}

/// The bytes of a leaf holding `refs`.
#[must_use]
pub fn encode_leaf(refs: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + refs.len() * 32);
    out.extend_from_slice(&header(0, refs.len()));
    for r in refs {
        out.extend_from_slice(&r.to_bytes());
    }
    out
}

/// The bytes of a node of `level` (1 or more) naming `children`.
#[must_use]
pub fn encode_node(level: u8, children: &[ChunkId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + children.len() * 32);
    out.extend_from_slice(&header(level, children.len()));
    for c in children {
        out.extend_from_slice(&c.0);
    }
    out
}

pub(super) fn entries(bytes: &[u8]) -> impl Iterator<Item = [u8; 32]> + '_ {
    bytes.chunks_exact(32).map(|c| {
        let mut b = [0u8; 32];
        b.copy_from_slice(c);
        b
    })
}

/// Decodes a leaf or node (format 2, or a bare format-1 leaf).
///
/// # Errors
/// What is wrong with the bytes.
pub fn decode(bytes: &[u8]) -> Result<Node, String> {
    if bytes.len() >= HEADER && bytes.starts_with(MAGIC) {
        let (version, level) = (bytes[10], bytes[11]);
        crate::format::TREE.check(u32::from(version))?;
        let count = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        let body = &bytes[HEADER..];
        if body.len() != count * 32 || count == 0 {
            return Err(format!(
                "tree chunk says {count} entries but holds {} bytes of them",
                body.len()
            ));
        }
        if level > MAX_DEPTH || (level == 0 && count > SEGMENT_REFS) || count > FANOUT {
            return Err(format!("tree chunk of level {level} with {count} entries"));
        }
        if level == 0 {
            return Ok(Node::Leaf(
                entries(body).map(ChunkRef::from_bytes).collect(),
            ));
        }
        return Ok(Node::Inner(level, entries(body).map(ChunkId).collect()));
    }
    if bytes.is_empty() || !bytes.len().is_multiple_of(32) || bytes.len() / 32 > SEGMENT_REFS {
        return Err(format!(
            "tree segment of {} bytes is neither a format-2 tree chunk nor whole 32-byte refs",
            bytes.len()
        ));
    }
    Ok(Node::Leaf(
        entries(bytes).map(ChunkRef::from_bytes).collect(),
    ))
}

/// The refs of a leaf (format 1 or 2).
///
/// # Errors
/// Bytes that are not a leaf.
pub fn decode_leaf(bytes: &[u8]) -> Result<Vec<ChunkRef>, String> {
    match decode(bytes)? {
        Node::Leaf(r) => Ok(r.to_vec()),
        Node::Inner(l, _) => Err(format!("a node of level {l} where a leaf was expected")),
    }
}

/// The distinct children of a tree chunk's bytes: `(true, nodes or leaves)` for a node,
/// `(false, data chunks)` for a leaf.
///
/// # Errors
/// Bytes that are not a tree chunk.
pub fn children(bytes: &[u8]) -> Result<(bool, Vec<ChunkId>), String> {
    let mut seen = HashSet::new();
    Ok(match decode(bytes)? {
        Node::Leaf(refs) => (
            false,
            refs.iter()
                .filter_map(|r| match r {
                    ChunkRef::Data(id) if seen.insert(*id) => Some(*id),
                    _ => None,
                })
                .collect(),
        ),
        Node::Inner(_, ids) => (
            true,
            ids.iter().filter(|id| seen.insert(**id)).copied().collect(),
        ),
    })
}
