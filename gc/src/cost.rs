//! What a store's points cost, and what they would cost elsewhere: for each point, disk, VM and
//! the whole store, the bytes of the disks, of their data, stored (once however many points hold
//! a chunk), held by that group alone, and as full backups or as Xen Orchestra's VHD deltas.
//! `cairn report` prints it.
//!
//! Every point's tree is walked a leaf at a time (holes cost nothing); a VHD delta's blocks are
//! found by comparing a point's tree with the one before it, shared leaves and nodes unread.

use std::collections::{HashMap, HashSet};

use cairn_store::point::VmKey;
use cairn_store::{ChunkId, ChunkRef, RecoveryPoint, Store};

use crate::Result;

/// The block of the VHDs Xen Orchestra writes (and the VHD default): a delta stores each block
/// that changed whole.
const XO_BLOCK: u64 = 2 << 20;

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The figures of every group of points.
#[derive(Debug, Default)]
pub struct Costs<'p> {
    /// The whole store.
    pub total: Cost,
    /// Each point, in the order given.
    pub per_point: Vec<(&'p RecoveryPoint, Cost)>,
    /// Each disk of each VM.
    pub per_disk: HashMap<(VmKey, String), Cost>,
    /// Each VM.
    pub per_vm: HashMap<VmKey, Cost>,
    /// The newest point of each VM (a VM is shown by its name and labels: it keeps its UUID
    /// when it is renamed).
    pub vm_names: HashMap<VmKey, &'p RecoveryPoint>,
    /// Points whose tree cannot be read, and why: their figures leave out what is lost.
    pub damaged: Vec<(&'p RecoveryPoint, String)>,
}

/// Which points, disks and VMs reference a chunk.
#[derive(Default)]
struct Holders {
    /// How many points hold the chunk, and the last one counted (points are visited in order).
    points: u32,
    last_point: Option<usize>,
    /// The first point (in the order given, oldest first) that holds it: the one whose backup
    /// stored it.
    first_point: usize,
    disks: HashSet<(VmKey, String)>,
    vms: HashSet<VmKey>,
}

/// Calls `f(chunk index, id)` for each data chunk of a point, in disk order, walking its tree a
/// leaf at a time (holes cost nothing).
fn each_data_ref(store: &Store, p: &RecoveryPoint, mut f: impl FnMut(u64, ChunkId)) -> Result<()> {
    let mut walk = cairn_store::Walk::new(store, p)?;
    while let Some(x) = walk.next_extent()? {
        match x.body {
            cairn_store::Body::Refs(refs) => {
                for (k, r) in refs.iter().enumerate() {
                    if let ChunkRef::Data(id) = r {
                        f(x.first + k as u64, *id);
                    }
                }
            }
            cairn_store::Body::Zero => {}
            cairn_store::Body::Unreadable(what) => {
                return Err(cairn_store::Error::Point(what).into());
            }
        }
    }
    Ok(())
}

/// How many distinct blocks the ranges `[from, to)` cover together.
fn blocks_in(mut ranges: Vec<(u64, u64)>) -> u64 {
    ranges.sort_unstable();
    let mut total = 0u64;
    let mut reached = 0u64;
    for (from, to) in ranges {
        let from = from.max(reached);
        if to > from {
            total = total.saturating_add(to - from);
            reached = to;
        }
    }
    total
}

/// Figures for one group of points (a point, a disk, a VM, the store).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Cost {
    /// Points in the group.
    pub points: u64,
    /// Bytes of their disks.
    pub logical: u64,
    /// Bytes of their data chunks (what full backups of them would read).
    pub allocated: u64,
    /// Bytes the group's distinct chunks take in packs.
    pub stored: u64,
    /// Plain bytes of the group's distinct chunks.
    pub plain: u64,
    /// Stored bytes of the chunks no other group holds (what dropping the group frees).
    pub unique: u64,
    /// Stored bytes of the chunks its points were the first to hold (what their backups
    /// added to the store).
    pub new: u64,
    /// Bytes a chain of full backups of the group would store.
    pub full_chain: u64,
    /// Bytes Xen Orchestra's VHD deltas (whole 2 MiB blocks) of the group would store.
    pub vhd_deltas: u64,
}

impl Cost {
    /// Adds one point's own figures to a group's (its chunks are counted apart, once each).
    fn add_point(&mut self, c: &Cost) {
        self.points += 1;
        self.logical = self.logical.saturating_add(c.logical);
        self.allocated = self.allocated.saturating_add(c.allocated);
        self.full_chain = self.full_chain.saturating_add(c.full_chain);
        self.vhd_deltas = self.vhd_deltas.saturating_add(c.vhd_deltas);
        self.new = self.new.saturating_add(c.new);
    }

    /// Counts one distinct chunk of the group: `stored` bytes in packs, `plain` bytes of data,
    /// and whether no other group holds it.
    fn add_chunk(&mut self, stored: u64, plain: u64, unique: bool) {
        self.stored += stored;
        self.plain += plain;
        if unique {
            self.unique += stored;
        }
    }

    /// Allocated bytes over the plain bytes they take once: what dedup saves.
    #[must_use]
    pub fn dedup_ratio(&self) -> f64 {
        ratio(self.allocated, self.plain)
    }

    /// Plain bytes over stored bytes: what compression saves.
    #[must_use]
    pub fn compression_ratio(&self) -> f64 {
        ratio(self.plain, self.stored)
    }
}

/// The figures of `points` (all the store's, oldest first: what is unique is counted over them).
///
/// # Errors
/// Index errors (a tree that cannot be read is listed in [`Costs::damaged`], not an error).
pub fn costs<'p>(store: &Store, points: &'p [RecoveryPoint]) -> Result<Costs<'p>> {
    costs_within(store, points, None)
}

/// The figures of some of the store's points (a VM's, oldest first), reading their trees
/// only: a chunk counts as unique to a point, disk or VM when no other of `points` holds it
/// and, as the reference counts say, no point outside them either
/// ([`Store::held_only_by`]). New bytes are those each point was the first of `points` to
/// hold (a chunk another VM's older point also holds counts as new to the first of these).
///
/// # Errors
/// As [`costs`].
pub fn costs_of_some<'p>(store: &Store, points: &'p [RecoveryPoint]) -> Result<Costs<'p>> {
    let refs: Vec<&RecoveryPoint> = points.iter().collect();
    let alone = store.held_only_by(&refs)?;
    costs_within(store, points, Some(&alone))
}

/// [`costs`] of `points`; `alone`, when they are not every point of the store, the data chunks
/// no point outside them holds.
fn costs_within<'p>(
    store: &Store,
    points: &'p [RecoveryPoint],
    alone: Option<&HashSet<ChunkId>>,
) -> Result<Costs<'p>> {
    let only_here = |id: &ChunkId| alone.is_none_or(|a| a.contains(id));
    let cs = u64::from(store.config().chunk_size);
    let held = Held::find(store, points);
    let size = chunk_sizes(store, &held.holders)?;
    let per_block = (XO_BLOCK / cs).max(1);
    let mut out = Costs {
        total: Cost::default(),
        per_point: Vec::new(),
        per_disk: HashMap::new(),
        per_vm: HashMap::new(),
        vm_names: HashMap::new(),
        damaged: held.damaged,
    };
    let mut prev_of_disk: HashMap<(VmKey, String), usize> = HashMap::new();
    for (i, p) in points.iter().enumerate() {
        let key = (p.vm_key(), p.disk.clone());
        // A VM is shown by the name and labels of its newest point (a VM keeps its UUID when
        // it is renamed).
        out.vm_names.insert(p.vm_key(), p);
        let (mut c, blocks) = if held.readable[i] {
            point_cost(store, p, i, (&held.holders, &only_here), &size, per_block)?
        } else {
            (
                Cost {
                    points: 1,
                    logical: p.size,
                    ..Cost::default()
                },
                0,
            )
        };
        c.full_chain = c.allocated;
        c.vhd_deltas = match prev_of_disk.get(&key) {
            Some(&j) if held.readable[i] && held.readable[j] => {
                // Ranges of blocks, one per stretch that differs (as many as the trees have
                // nodes that differ), counted merged: the cost follows the stored tree, never
                // the size a point claims.
                let mut changed: Vec<(u64, u64)> = Vec::new();
                cairn_store::tree::differences(store, &points[j], p, false, |from, to| {
                    changed.push((from / per_block, to.div_ceil(per_block)));
                })?;
                blocks_in(changed).saturating_mul(XO_BLOCK)
            }
            _ => blocks * XO_BLOCK,
        };
        prev_of_disk.insert(key.clone(), i);
        for agg in [
            out.per_disk.entry(key).or_default(),
            out.per_vm.entry(p.vm_key()).or_default(),
            &mut out.total,
        ] {
            agg.add_point(&c);
        }
        out.per_point.push((p, c));
    }
    // Stored, plain and unique bytes of groups count each chunk once.
    for (id, Holders { disks, vms, .. }) in &held.holders {
        let (st, pl) = size.get(id).copied().unwrap_or_default();
        let here = only_here(id);
        out.total.add_chunk(st, pl, here);
        for d in disks {
            out.per_disk
                .entry(d.clone())
                .or_default()
                .add_chunk(st, pl, here && disks.len() == 1);
        }
        for v in vms {
            out.per_vm
                .entry(v.clone())
                .or_default()
                .add_chunk(st, pl, here && vms.len() == 1);
        }
    }
    Ok(out)
}

/// Which points, disks and VMs hold each chunk; the points whose tree cannot be read (reported,
/// not fatal: the rest is still counted).
struct Held<'p> {
    holders: HashMap<ChunkId, Holders>,
    damaged: Vec<(&'p RecoveryPoint, String)>,
    readable: Vec<bool>,
}

impl<'p> Held<'p> {
    fn find(store: &Store, points: &'p [RecoveryPoint]) -> Self {
        let mut held = Self {
            holders: HashMap::new(),
            damaged: Vec::new(),
            readable: vec![true; points.len()],
        };
        for (i, p) in points.iter().enumerate() {
            let key = (p.vm_key(), p.disk.clone());
            let walked = each_data_ref(store, p, |_, id| {
                let h = held.holders.entry(id).or_insert_with(|| Holders {
                    first_point: i,
                    ..Holders::default()
                });
                if h.last_point != Some(i) {
                    h.points += 1;
                    h.last_point = Some(i);
                    if !h.disks.contains(&key) {
                        h.disks.insert(key.clone());
                        h.vms.insert(p.vm_key());
                    }
                }
            });
            if let Err(e) = walked {
                held.damaged.push((p, format!("{e:#}")));
                held.readable[i] = false;
            }
        }
        held
    }
}

/// The stored bytes (frame included) and plain bytes of each chunk the index holds.
fn chunk_sizes(
    store: &Store,
    holders: &HashMap<ChunkId, Holders>,
) -> Result<HashMap<ChunkId, (u64, u64)>> {
    let ids: Vec<ChunkId> = holders.keys().copied().collect();
    let mut size = HashMap::new();
    for (id, loc) in ids.iter().zip(store.locations(&ids)?) {
        if let Some(l) = loc {
            let stored = u64::from(l.stored_len) + cairn_store::pack::FRAME_HEADER_SIZE;
            size.insert(*id, (stored, u64::from(l.plain_len)));
        }
    }
    Ok(size)
}

/// Whether no point outside those counted holds a chunk.
type OnlyHere<'a> = dyn Fn(&ChunkId) -> bool + 'a;

/// One point's own figures, and how many XO blocks (of `per_block` chunks) it allocates.
fn point_cost(
    store: &Store,
    p: &RecoveryPoint,
    i: usize,
    (holders, only_here): (&HashMap<ChunkId, Holders>, &OnlyHere<'_>),
    size: &HashMap<ChunkId, (u64, u64)>,
    per_block: u64,
) -> Result<(Cost, u64)> {
    let cs = u64::from(store.config().chunk_size);
    let mut c = Cost {
        points: 1,
        logical: p.size,
        ..Cost::default()
    };
    let mut seen = HashSet::new();
    // An XO delta holds every 2 MiB block that changed (the key: every allocated block).
    let mut blocks: HashSet<u64> = HashSet::new();
    each_data_ref(store, p, |k, id| {
        c.allocated += size.get(&id).map_or(cs, |s| s.1);
        if seen.insert(id) {
            let (st, pl) = size.get(&id).copied().unwrap_or_default();
            c.stored += st;
            c.plain += pl;
            if let Some(h) = holders.get(&id) {
                if h.points == 1 && only_here(&id) {
                    c.unique += st;
                }
                if h.first_point == i {
                    c.new += st;
                }
            }
        }
        blocks.insert(k / per_block);
    })?;
    Ok((c, blocks.len() as u64))
}

#[cfg(test)]
mod blocks_tests {
    use super::blocks_in;

    #[test]
    fn ranges_are_counted_merged() {
        assert_eq!(blocks_in(vec![]), 0);
        assert_eq!(blocks_in(vec![(0, 4), (2, 6), (10, 11)]), 7);
        assert_eq!(blocks_in(vec![(10, 11), (0, 4), (4, 4), (3, 5)]), 6);
        // A claimed exabyte is two numbers, not a set of its blocks.
        assert_eq!(blocks_in(vec![(0, 1 << 42), (1 << 41, 1 << 43)]), 1 << 43);
    }
}
