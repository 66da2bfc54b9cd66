//! What a token limited to some VMs may read: the chunks (tree and data) of its VMs' points,
//! and no other. A chunk id is a hash of content, so a client that learned another VM's chunk
//! id elsewhere could otherwise read the chunk through `POST /chunks/read`.
//!
//! The set of each token is built on its first read, from every point its glob matches (each
//! tree chunk read once however many points share it), kept sorted (32 bytes a chunk), and
//! built again when a read names a chunk outside it and the set is older than a second (a point
//! committed since).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_store::tree::{Node, decode};
use cairn_store::{ChunkId, ChunkRef, Store};

use crate::token::Token;

/// A set is built again at most this often.
const REBUILD_AFTER: Duration = Duration::from_secs(1);

/// A token's readable chunks (sorted), and when they were gathered.
type Readable = (Instant, Arc<Vec<ChunkId>>);

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
        let (built, set) = self.set_of(store, t, false)?;
        let mut out: Vec<bool> = ids.iter().map(|id| set.binary_search(id).is_ok()).collect();
        if out.contains(&false) && built.elapsed() >= REBUILD_AFTER {
            let (_, set) = self.set_of(store, t, true)?;
            out = ids.iter().map(|id| set.binary_search(id).is_ok()).collect();
        }
        Ok(out)
    }

    fn set_of(
        &self,
        store: &Store,
        t: &Token,
        fresh: bool,
    ) -> Result<Readable, cairn_store::Error> {
        if !fresh
            && let Some((at, set)) = self
                .by_token
                .lock()
                .ok()
                .and_then(|m| m.get(&t.id).cloned())
        {
            return Ok((at, set));
        }
        let set = Arc::new(chunks_of(store, t)?);
        let at = Instant::now();
        if let Ok(mut m) = self.by_token.lock() {
            m.insert(t.id.clone(), (at, Arc::clone(&set)));
        }
        Ok((at, set))
    }
}

/// Every chunk of the points `t` reaches, sorted. A tree chunk that cannot be read hides what
/// it names (those chunks do not read for the token either).
fn chunks_of(store: &Store, t: &Token) -> Result<Vec<ChunkId>, cairn_store::Error> {
    let mut trees: HashSet<ChunkId> = HashSet::new();
    let mut out: Vec<ChunkId> = Vec::new();
    let mut stack: Vec<ChunkId> = Vec::new();
    for p in store.points()?.iter().filter(|p| t.allows_vm(&p.vm)) {
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
