//! What a run reads: the chosen points' tree chunks and data chunks, each once, the chunks
//! hidden under a tree chunk that cannot be read, and the chunks marked bad; narrowed by the
//! options (`--quick`, `--subset`, `--sample`, `--since-last`).

use std::collections::{HashMap, HashSet};

use cairn_store::tree::children;
use cairn_store::{BadMark, ChunkId, Location, RecoveryPoint, Store};

use super::{DamageState, Finding, Findings, VerifyOptions};
use crate::Result;

/// The tree chunks met so far, each read once however many points share it: the distinct
/// children of each (`true` for a node's, `false` for a leaf's data chunks), or why it cannot be
/// read.
#[derive(Default)]
pub(super) struct Trees {
    kids: HashMap<ChunkId, std::result::Result<(bool, Vec<ChunkId>), String>>,
}

impl Trees {
    /// Every tree chunk and data chunk reachable from `points`, each once, tree chunks first in
    /// the order met.
    pub(super) fn reach<'p>(
        &mut self,
        store: &Store,
        points: impl Iterator<Item = &'p RecoveryPoint>,
    ) -> Result<(Vec<ChunkId>, Vec<ChunkId>)> {
        let (mut tree, mut data) = (Vec::new(), Vec::new());
        let (mut seen, mut seen_data) = (HashSet::new(), HashSet::new());
        for p in points {
            for id in p.distinct_segments() {
                if seen.insert(id) {
                    tree.push(id);
                }
            }
        }
        let mut k = 0;
        while k < tree.len() {
            let id = tree[k];
            k += 1;
            let kids = self.kids.entry(id).or_insert_with(|| {
                store
                    .read_chunk(&id)
                    .map_err(|e| e.to_string())
                    .and_then(|b| children(&b))
            });
            if let Ok((nodes, ids)) = kids {
                for c in ids.iter() {
                    if *nodes {
                        if seen.insert(*c) {
                            tree.push(*c);
                        }
                    } else if seen_data.insert(*c) {
                        data.push(*c);
                    }
                }
            }
        }
        Ok((tree, data))
    }

    /// Whether a tree chunk met so far could not be read.
    fn any_unreadable(&self) -> bool {
        self.kids.values().any(std::result::Result::is_err)
    }

    /// The tree chunks (of those met) under which a chunk of `bad` lies, or that are in it.
    pub(super) fn dirty(&self, bad: &Findings) -> HashSet<ChunkId> {
        let mut memo: HashMap<ChunkId, bool> = HashMap::new();
        fn visit(
            id: ChunkId,
            trees: &Trees,
            bad: &Findings,
            memo: &mut HashMap<ChunkId, bool>,
        ) -> bool {
            if let Some(d) = memo.get(&id) {
                return *d;
            }
            let d = bad.contains_key(&id)
                || match trees.kids.get(&id) {
                    Some(Ok((true, ids))) => ids.iter().any(|c| visit(*c, trees, bad, memo)),
                    Some(Ok((false, ids))) => ids.iter().any(|c| bad.contains_key(c)),
                    _ => false,
                };
            memo.insert(id, d);
            d
        }
        for id in self.kids.keys() {
            visit(*id, self, bad, &mut memo);
        }
        memo.into_iter()
            .filter(|(_, d)| *d)
            .map(|(id, _)| id)
            .collect()
    }
}

/// The chunks a run is about: those its findings may name.
pub(super) struct Scope {
    /// The tree chunks met walking the chosen points (and, for the blast radius, all points).
    pub trees: Trees,
    /// The chosen points' distinct tree chunks.
    pub tree_ids: Vec<ChunkId>,
    /// Their distinct data chunks.
    pub data_ids: Vec<ChunkId>,
    /// Chunks the index holds and still counts that no readable tree chunk names.
    pub hidden: HashSet<ChunkId>,
    /// The marks of chunks found bad by earlier runs.
    pub marked: HashMap<ChunkId, BadMark>,
    /// Every chunk in scope (tree, data, hidden).
    pub all: HashSet<ChunkId>,
}

impl Scope {
    /// Walks the chosen points' trees, every distinct tree chunk once.
    pub(super) fn find(
        store: &Store,
        all_points: &[RecoveryPoint],
        chosen: &[&RecoveryPoint],
    ) -> Result<Self> {
        let mut trees = Trees::default();
        let (tree_ids, data_ids) = trees.reach(store, chosen.iter().copied())?;
        let hidden = if trees.any_unreadable() {
            hidden_chunks(store, &mut trees, all_points)?
        } else {
            HashSet::new()
        };
        let all = tree_ids
            .iter()
            .chain(&data_ids)
            .chain(&hidden)
            .copied()
            .collect();
        Ok(Self {
            trees,
            tree_ids,
            data_ids,
            hidden,
            marked: store.bad_chunks()?.into_iter().collect(),
            all,
        })
    }

    /// The chunks to read, by the options: tree chunks, the chosen share of the data chunks,
    /// the hidden ones, and every marked one (read again to clear the marks of those that read
    /// well now; one outside the scope is not this run's finding).
    pub(super) fn to_read(&self, opts: &VerifyOptions) -> Vec<ChunkId> {
        let mut data_ids = if opts.quick {
            Vec::new()
        } else {
            self.data_ids.clone()
        };
        if let Some((n, m)) = opts.subset {
            data_ids.retain(|id| crate::checked::in_subset(id, n, m));
        }
        if let Some(share) = opts.sample {
            data_ids = sample(data_ids, share);
        }
        let mut to_read: Vec<ChunkId> = self.tree_ids.clone();
        to_read.extend(data_ids);
        to_read.extend(self.hidden.iter().copied());
        let in_list: HashSet<ChunkId> = to_read.iter().copied().collect();
        to_read.extend(
            self.marked
                .keys()
                .filter(|id| !in_list.contains(id))
                .copied(),
        );
        to_read
    }

    /// Where each chunk of `to_read` is, in pack order, leaving out the chunks a complete run
    /// read since they were written (`--since-last`; returned as a count) and recording the
    /// chunks in scope the index does not hold as missing.
    pub(super) fn locate(
        &self,
        store: &Store,
        to_read: &[ChunkId],
        checked: &crate::checked::Checked,
        findings: &mut Findings,
    ) -> Result<(Vec<(ChunkId, Location)>, u64)> {
        let locs = store.locations(to_read)?;
        let mut jobs = Vec::new();
        let mut skipped = 0;
        for (id, loc) in to_read.iter().zip(locs) {
            match loc {
                Some(l) if checked.covers(&l) && !self.marked.contains_key(id) => skipped += 1,
                Some(l) => jobs.push((*id, l)),
                None if self.all.contains(id) => {
                    let f = Finding {
                        state: DamageState::Missing,
                        what: "not in the index".into(),
                        location: None,
                    };
                    findings.insert(*id, f);
                }
                None => {}
            }
        }
        jobs.sort_by_key(|(_, l)| (l.pack, l.offset));
        Ok((jobs, skipped))
    }
}

/// A tree chunk that cannot be read hides the chunks under it: those the index holds and still
/// counts, but that no readable tree chunk of any point names, are reported as unknown but
/// referenced (their bytes may be whole; no point reaches them until the tree chunk is stored
/// again, by a key backup of the disk). They are read too: the ones that do not read back are
/// named (under the tree chunk's points), so that a key backup stores them afresh.
fn hidden_chunks(
    store: &Store,
    trees: &mut Trees,
    all_points: &[RecoveryPoint],
) -> Result<HashSet<ChunkId>> {
    let (t, d) = trees.reach(store, all_points.iter())?;
    let named: HashSet<ChunkId> = t.into_iter().chain(d).collect();
    let unnamed: Vec<ChunkId> = store
        .chunk_entries()?
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| !named.contains(id))
        .collect();
    let counts = store.refcounts(&unnamed)?;
    Ok(unnamed
        .into_iter()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .map(|(id, _)| id)
        .collect())
}

/// Picks about `share` of the ids, differently each run.
fn sample(ids: Vec<ChunkId>, share: f64) -> Vec<ChunkId> {
    let salt = uuid::Uuid::new_v4();
    let limit = (share.clamp(0.0, 1.0) * f64::from(u32::MAX)) as u32;
    ids.into_iter()
        .filter(|id| {
            let mut h = blake3::Hasher::new();
            h.update(salt.as_bytes());
            h.update(&id.0);
            let b = h.finalize();
            let x = u32::from_le_bytes([
                b.as_bytes()[0],
                b.as_bytes()[1],
                b.as_bytes()[2],
                b.as_bytes()[3],
            ]);
            x <= limit
        })
        .collect()
}
