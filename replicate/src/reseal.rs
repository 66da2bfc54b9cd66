//! Copying points between stores that name and seal chunks differently: an unencrypted store
//! into an encrypted one (how a store moves to encryption), or an encrypted store into one of
//! another key. A chunk's id depends on the store's keys, so nothing can be copied as stored:
//! every data chunk is read as plain bytes (checked against its source id), named and sealed
//! with the destination's keys, and every tree chunk is built again over the new ids, the
//! tree's shape unchanged. Points keep their ids, times and labels.
//!
//! A subtree two points share is translated once per replication (the source's tree ids map to
//! the destination's: one entry per leaf of 256 chunks, a few MB for a TiB of disk); a chunk
//! the destination holds already (by its new id) is read and hashed but not sent. So this copy
//! reads each point's changed leaves whole, where a copy between stores sealed alike reads only
//! the chunks the destination lacks: it is the one replication that is not incremental across
//! runs (a rerun translates again what it reads, and sends only what is missing).

use std::collections::HashMap;

use cairn_store::tree::{self, Node};
use cairn_store::{ChunkId, ChunkKind, ChunkRef, Keys, RecoveryPoint, StoreRead, chunk};

use crate::into::CopyInto;
use crate::{Error, Result, Sent};

/// Data chunks read, named and sealed at once (at most this many chunks held).
const GROUP: usize = 32;

/// The destination's keys and zstd level, and the trees translated so far.
pub(crate) struct Resealer {
    keys: Keys,
    level: i32,
    trees: HashMap<ChunkId, ChunkId>,
}

impl Resealer {
    /// A resealer writing chunks named and sealed with `keys`, compressed at `level`.
    pub(crate) fn new(keys: Keys, level: i32) -> Self {
        Self {
            keys,
            level,
            trees: HashMap::new(),
        }
    }

    /// Copies point `p`'s chunks into `dst`, named and sealed anew: the point as the
    /// destination is to hold it (its tree's top ids replaced).
    pub(crate) fn point(
        &mut self,
        src: &dyn StoreRead,
        dst: &mut dyn CopyInto,
        sent: &mut Sent,
        p: &RecoveryPoint,
    ) -> Result<RecoveryPoint> {
        let mut q = p.clone();
        q.segments = tree::top(p)?
            .into_iter()
            .map(|id| self.subtree(src, dst, sent, id, p))
            .collect::<Result<_>>()?;
        Ok(q)
    }

    /// The destination's id of the source's subtree `id` (translated and sent when not yet).
    fn subtree(
        &mut self,
        src: &dyn StoreRead,
        dst: &mut dyn CopyInto,
        sent: &mut Sent,
        id: ChunkId,
        p: &RecoveryPoint,
    ) -> Result<ChunkId> {
        if let Some(t) = self.trees.get(&id) {
            return Ok(*t);
        }
        let node = tree::decode(&src.read_chunk(&id)?).map_err(|what| {
            Error::Store(cairn_store::Error::Point(format!(
                "{}: tree chunk {id}: {what}",
                p.short_id()
            )))
        })?;
        let bytes = match node {
            Node::Inner(level, children) => {
                let ids = children
                    .iter()
                    .map(|c| self.subtree(src, dst, sent, *c, p))
                    .collect::<Result<Vec<_>>>()?;
                tree::encode_node(level, &ids)
            }
            Node::Leaf(refs) => tree::encode_leaf(&self.leaf(src, dst, sent, &refs)?),
        };
        let enc = self.encode(&bytes, ChunkKind::Tree)?;
        if dst.put(&enc)? {
            sent.add(enc.bytes.len() as u64);
        }
        self.trees.insert(id, enc.id);
        Ok(enc.id)
    }

    /// A leaf's refs with the destination's ids, its data chunks the destination lacks sent.
    fn leaf(
        &mut self,
        src: &dyn StoreRead,
        dst: &mut dyn CopyInto,
        sent: &mut Sent,
        refs: &[ChunkRef],
    ) -> Result<Vec<ChunkRef>> {
        use rayon::prelude::*;
        let mut ids: Vec<ChunkId> = refs
            .iter()
            .filter_map(|r| match r {
                ChunkRef::Data(d) => Some(*d),
                ChunkRef::Zero => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut new_id: HashMap<ChunkId, ChunkId> = HashMap::with_capacity(ids.len());
        for group in ids.chunks(GROUP) {
            // Read (checked against the source's id) and named on both cores.
            let plains: Vec<(ChunkId, Vec<u8>, ChunkId)> = group
                .par_iter()
                .map(|id| {
                    let plain = src.read_chunk(id)?;
                    let named = self.keys.id_of(&plain);
                    Ok((*id, plain, named))
                })
                .collect::<Result<_>>()?;
            let named: Vec<ChunkId> = plains.iter().map(|(_, _, n)| *n).collect();
            let lacks = dst.missing(&named)?;
            let encoded: Vec<Option<cairn_store::EncodedChunk>> = plains
                .par_iter()
                .zip(lacks.par_iter())
                .map(|((_, plain, named), lacks)| {
                    if *lacks {
                        let enc = chunk::encode_with_id(
                            &self.keys,
                            *named,
                            plain,
                            ChunkKind::Data,
                            self.level,
                        )
                        .map_err(|e| Error::Refused(format!("sealing chunk {named}: {e}")))?;
                        Ok(Some(enc))
                    } else {
                        Ok(None)
                    }
                })
                .collect::<Result<_>>()?;
            for enc in encoded.into_iter().flatten() {
                if dst.put(&enc)? {
                    sent.add(enc.bytes.len() as u64);
                }
            }
            new_id.extend(plains.into_iter().map(|(old, _, named)| (old, named)));
        }
        Ok(refs
            .iter()
            .map(|r| match r {
                ChunkRef::Data(d) => ChunkRef::Data(new_id.get(d).copied().unwrap_or(*d)),
                ChunkRef::Zero => ChunkRef::Zero,
            })
            .collect())
    }

    fn encode(&self, bytes: &[u8], kind: ChunkKind) -> Result<cairn_store::EncodedChunk> {
        chunk::encode(&self.keys, bytes, kind, self.level)
            .map_err(|e| Error::Refused(format!("encoding a tree chunk: {e}")))
    }
}
