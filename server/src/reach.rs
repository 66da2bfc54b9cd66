//! What a token limited to some VMs may read: the chunks (tree and data) of its VMs' points,
//! and no other. A chunk id is a hash of content, so a client that learned another VM's chunk
//! id elsewhere could otherwise read the chunk through `POST /chunks/read`.
//!
//! The set of each token is built on its first read, from every point its glob matches (each
//! tree chunk read once however many points share it), kept sorted (32 bytes a chunk), and
//! built again when a read names a chunk outside it and the token's points are no longer those
//! it was built from (a point committed or forgotten since).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use cairn_store::tree::{Node, decode};
use cairn_store::{ChunkId, ChunkRef, Store};

use crate::token::Token;

/// A token's readable chunks (sorted), and the points they were gathered from (a hash of
/// their ids).
type Readable = (blake3::Hash, Arc<Vec<ChunkId>>);

/// The chunks each scoped token may read, by token id.
#[derive(Default)]
pub(crate) struct Reach {
    by_token: Mutex<HashMap<String, Readable>>,
}

impl Reach {
    /// For each of `ids`, whether token `t` may read it (`true` for every id when the token
    /// reaches every VM).
    pub(crate) fn may_read(
        &self,
        store: &Store,
        t: &Token,
        ids: &[ChunkId],
    ) -> Result<Vec<bool>, cairn_store::Error> {
        if t.vms == "*" {
            return Ok(vec![true; ids.len()]);
        }
        let cached = self
            .by_token
            .lock()
            .ok()
            .and_then(|m| m.get(&t.id).cloned());
        let answer = |set: &[ChunkId]| -> Vec<bool> {
            ids.iter().map(|id| set.binary_search(id).is_ok()).collect()
        };
        if let Some((_, set)) = &cached {
            let out = answer(set);
            if !out.contains(&false) {
                return Ok(out);
            }
        }
        // A chunk outside the set (or no set yet): gathered again if the points changed.
        let points: Vec<cairn_store::RecoveryPoint> = store
            .points()?
            .into_iter()
            .filter(|p| t.allows_vm(&p.vm))
            .collect();
        let mut ids_now: Vec<&str> = points.iter().map(|p| p.id.as_str()).collect();
        ids_now.sort_unstable();
        let now = blake3::hash(ids_now.join(",").as_bytes());
        if let Some((from, set)) = &cached
            && *from == now
        {
            return Ok(answer(set));
        }
        let set = Arc::new(chunks_of(store, &points)?);
        if let Ok(mut m) = self.by_token.lock() {
            m.insert(t.id.clone(), (now, Arc::clone(&set)));
        }
        Ok(answer(&set))
    }
}

/// Every chunk of `points`, sorted. A tree chunk that cannot be read hides what it names
/// (those chunks do not read for the token either).
fn chunks_of(
    store: &Store,
    points: &[cairn_store::RecoveryPoint],
) -> Result<Vec<ChunkId>, cairn_store::Error> {
    let mut trees: HashSet<ChunkId> = HashSet::new();
    let mut out: Vec<ChunkId> = Vec::new();
    let mut stack: Vec<ChunkId> = Vec::new();
    for p in points {
        stack.extend(cairn_store::tree::top(p)?);
        while let Some(id) = stack.pop() {
            if !trees.insert(id) {
                continue;
            }
            out.push(id);
            let Ok(node) = store.read_chunk(&id).map(|b| decode(&b)) else {
                continue;
            };
            match node {
                Ok(Node::Inner(_, children)) => stack.extend(children.iter().copied()),
                Ok(Node::Leaf(refs)) => out.extend(refs.iter().filter_map(|r| match r {
                    ChunkRef::Data(d) => Some(*d),
                    ChunkRef::Zero => None,
                })),
                Err(_) => {}
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}
