//! Verify: read chunks, check each against its id, and name what a bad one damages.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use cairn_store::tree::children;
use cairn_store::{
    BadMark, ChunkId, ChunkRef, Location, OpenMode, RecoveryPoint, Store, StoreRead, Walk,
};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::Result;

/// Chunks read and checked at a time (16 MiB at 256 KiB chunks).
const VERIFY_BATCH: usize = 64;

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only chunks referenced by the points this filter selects.
    pub filter: cairn_store::select::Filter,
    /// Only chunks referenced by points made at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Read only this share of the chosen chunks (0.0 to 1.0), picked at random each run;
    /// tree chunks and chunks already marked bad are always read.
    pub sample: Option<f64>,
    /// Read only the data chunks of part N of M (1-based; [`crate::checked::in_subset`]):
    /// runs 1/M to M/M read every chunk once. Tree chunks and marked chunks always.
    pub subset: Option<(u32, u32)>,
    /// Read only the chunks no complete run has read since they were written
    /// ([`crate::checked::Checked`]); marked chunks always.
    pub since_last: bool,
    /// Metadata only: the catalogue, the packs' state and the tree chunks, no data chunk.
    pub quick: bool,
}

impl VerifyOptions {
    /// Whether the run reads every chunk of every point (a record for `--since-last`); a
    /// `--since-last` run with no other limit completes what earlier runs read.
    fn complete(&self) -> bool {
        self.filter.is_empty()
            && self.since.is_none()
            && self.sample.is_none()
            && self.subset.is_none()
            && !self.quick
    }

    /// What the run covered, as the report's last verify says it.
    fn scope(&self) -> String {
        let mut parts = Vec::new();
        if !self.filter.is_empty() {
            parts.push("the points chosen".to_owned());
        }
        if let Some(t) = self.since {
            parts.push(format!("points since {}", t.to_rfc3339()));
        }
        if self.quick {
            parts.push("metadata only (tree chunks)".to_owned());
        }
        if self.since_last {
            parts.push("chunks unread since they were written".to_owned());
        }
        if let Some((n, m)) = self.subset {
            parts.push(format!("part {n} of {m} of the data chunks"));
        }
        if let Some(s) = self.sample {
            parts.push(format!("a sample of {:.0} % of the chunks", s * 100.0));
        }
        if parts.is_empty() {
            "every point".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// One point a bad chunk damages, and where.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// The point.
    pub point: cairn_store::PointId,
    /// Its VM.
    pub vm: String,
    /// Its disk.
    pub disk: String,
    /// Its time.
    pub time: DateTime<Utc>,
    /// Disk offsets of the chunk in the point (for a tree chunk: the start of the stretch
    /// of disk it describes).
    pub offsets: Vec<u64>,
}

/// What a damaged chunk held (shown and serialized as `data` or `tree`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DamagedPart {
    /// Disk data: the bytes at the chunk's offsets are lost.
    Data,
    /// A tree chunk: the refs under it cannot be reached from the points that name it.
    Tree,
}

/// How a chunk is damaged (shown and serialized as `bad` or `missing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DamageState {
    /// Its frame could not be read, or its bytes are not the chunk its id names.
    Bad,
    /// No index entry says where it is.
    Missing,
}

impl std::fmt::Display for DamagedPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Data => "data",
            Self::Tree => "tree",
        })
    }
}

impl std::fmt::Display for DamageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bad => "bad",
            Self::Missing => "missing",
        })
    }
}

/// What one read found wrong with a chunk, before its blast radius is known.
struct Finding {
    state: DamageState,
    what: String,
    location: Option<String>,
}

/// The findings of a run, by chunk.
type Findings = HashMap<ChunkId, Finding>;

/// A bad or missing chunk and its blast radius.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    /// The chunk.
    pub chunk: String,
    /// What it held.
    pub kind: DamagedPart,
    /// How it is damaged.
    pub state: DamageState,
    /// What was found.
    pub what: String,
    /// Where it was looked for.
    pub location: Option<String>,
    /// Every point it damages.
    pub points: Vec<Hit>,
}

/// What verify found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Points whose chunks were chosen.
    pub points_in_scope: u64,
    /// Distinct chunks chosen (data and tree).
    pub chunks_in_scope: u64,
    /// Chunks read and checked.
    pub chunks_checked: u64,
    /// Chunks in scope not read because a complete run read them since they were written
    /// (`--since-last`).
    pub chunks_skipped: u64,
    /// Stored bytes read.
    pub bytes_read: u64,
    /// Bad or missing chunks with the points they damage.
    pub damaged: Vec<Damage>,
    /// Points damaged, all told.
    pub points_damaged: u64,
    /// VMs damaged.
    pub vms_damaged: Vec<String>,
    /// Marks of chunks that now read well (healed), cleared.
    pub marks_cleared: u64,
    /// Indexed chunks still counted as referenced that no readable tree chunk names: they
    /// sit under a tree chunk that cannot be read (listed in `damaged`, with its points).
    pub unknown_but_referenced: u64,
    /// Bad or missing marks recorded in the index by this run.
    pub marks_recorded: u64,
    /// Disagreements between the root files and the catalogue (a root file gone, unreadable,
    /// or saying otherwise than the index).
    pub catalogue: Vec<String>,
    /// Points that name a data chunk of another length than its place on the disk (a short
    /// chunk in the middle of a disk, or a last chunk of another size): such a point does not
    /// restore there.
    pub misplaced: Vec<String>,
    /// Packs whose file is gone, cut short, or has a damaged header, and packs in quarantine
    /// (the chunks this damages are in `damaged`).
    pub packs: Vec<String>,
    /// Findings that turned out not to be damage (a collection moved or dropped the chunk
    /// while this run read it); not recorded.
    pub not_damage: Vec<String>,
    /// Seconds.
    pub seconds: f64,
}

impl VerifyReport {
    /// Whether everything checked is well.
    #[must_use]
    pub fn clean(&self) -> bool {
        self.damaged.is_empty() && self.catalogue.is_empty() && self.misplaced.is_empty()
    }
}

/// The tree chunks met so far, each read once however many points share it: the distinct
/// children of each (`true` for a node's, `false` for a leaf's data chunks), or why it cannot be
/// read.
#[derive(Default)]
struct Trees {
    kids: HashMap<ChunkId, std::result::Result<(bool, Vec<ChunkId>), String>>,
}

impl Trees {
    /// Every tree chunk and data chunk reachable from `points`, each once, tree chunks first in
    /// the order met.
    fn reach<'p>(
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

    /// The tree chunks (of those met) under which a chunk of `bad` lies, or that are in it.
    fn dirty(&self, bad: &Findings) -> HashSet<ChunkId> {
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

/// The offsets in `p` of each chunk of `bad`: only subtrees in `dirty` are walked.
fn hits_in(
    store: &Store,
    p: &RecoveryPoint,
    dirty: &HashSet<ChunkId>,
    bad: &Findings,
) -> Result<HashMap<ChunkId, Vec<u64>>> {
    let cs = u64::from(p.chunk_size);
    let mut out: HashMap<ChunkId, Vec<u64>> = HashMap::new();
    let mut walk = Walk::new(store, p)?;
    while let Some(e) = walk.peek()? {
        if !dirty.contains(&e.id) {
            walk.skip();
            continue;
        }
        if bad.contains_key(&e.id) {
            out.entry(e.id).or_default().push(e.first * cs);
            walk.skip();
            continue;
        }
        // A node becomes the walk's list (`Ok(None)`); one that cannot be read is a finding
        // already (it is in `bad`).
        if let Ok(Some((e, refs))) = walk.enter() {
            for (k, r) in refs.iter().enumerate() {
                if let ChunkRef::Data(id) = r
                    && bad.contains_key(id)
                {
                    out.entry(*id).or_default().push((e.first + k as u64) * cs);
                }
            }
        }
    }
    Ok(out)
}

/// The places where a point names a data chunk of another length than the place holds: a
/// chunk shorter than the chunk size may only be a disk's last, as long as what is left of it.
/// Only subtrees holding such a chunk are walked (they are few: one a point at most).
fn misplaced(
    store: &Store,
    points: &[&RecoveryPoint],
    trees: &Trees,
    read: &[(ChunkId, Location, Option<String>)],
) -> Result<Vec<String>> {
    let cs = u64::from(store.config().chunk_size);
    let short: HashMap<ChunkId, u32> = read
        .iter()
        .filter(|(_, l, e)| {
            e.is_none() && l.kind == cairn_store::ChunkKind::Data && u64::from(l.plain_len) < cs
        })
        .map(|(id, l, _)| (*id, l.plain_len))
        .collect();
    let mut out = Vec::new();
    if short.is_empty() {
        return Ok(out);
    }
    let suspects: Findings = short
        .keys()
        .map(|id| {
            let f = Finding {
                state: DamageState::Bad,
                what: String::new(),
                location: None,
            };
            (*id, f)
        })
        .collect();
    let dirty = trees.dirty(&suspects);
    for p in points {
        for (id, offsets) in hits_in(store, p, &dirty, &suspects)? {
            let len = u64::from(short.get(&id).copied().unwrap_or_default());
            for at in offsets {
                let place = p.size.saturating_sub(at).min(cs);
                if len != place {
                    out.push(format!(
                        "point {} ({}/{}) names data chunk {id} of {len} bytes at disk offset \
                         {at}, where the disk holds {place}: that stretch does not restore; back \
                         the disk up again",
                        p.short_id(),
                        p.vm,
                        p.disk
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// How long a disagreement between the root files and the catalogue is looked at again while a
/// writer runs: a commit writes its root files, then its catalogue batch, milliseconds apart.
const IN_FLIGHT_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// The disagreements between the root files and the catalogue that are not a commit, forget or
/// protect in flight: while a writer holds the store, each comparison that finds some is made
/// again on a fresh view of the index (for up to [`IN_FLIGHT_FOR`]), and only what stays is
/// reported.
fn catalogue_disagreements(root: &Path, store: &Store) -> Result<Vec<String>> {
    let mut found = store.compare_root_files()?;
    let started = Instant::now();
    while !found.is_empty() && started.elapsed() < IN_FLIGHT_FOR {
        let writing = cairn_store::lock::writer_active(root);
        if writing {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        found = Store::open(root, OpenMode::Read)?.compare_root_files()?;
        if !writing {
            break;
        }
    }
    Ok(found)
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

/// Verifies the store at `root`; marks bad chunks in the index (waiting for the write lock
/// only when there is something to record).
///
/// # Errors
/// Index and I/O errors (bad chunks are findings, not errors).
pub fn verify(
    root: &Path,
    opts: &VerifyOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<VerifyReport> {
    let started = Instant::now();
    let store = Store::open(root, OpenMode::Read)?;
    // The packs as the run starts, before the points are read: every frame in them belongs to
    // a point committed by now (or is garbage).
    let packs_at_start = store.pack_infos()?;
    let checked = if opts.since_last {
        crate::checked::Checked::load(root)
    } else {
        crate::checked::Checked::default()
    };
    let mut report = VerifyReport {
        catalogue: catalogue_disagreements(root, &store)?,
        packs: store.pack_damage()?,
        ..VerifyReport::default()
    };
    let all_points = store.points()?;
    let chosen: Vec<&RecoveryPoint> = all_points
        .iter()
        .filter(|p| opts.filter.matches(p))
        .filter(|p| opts.since.is_none_or(|s| p.time >= s))
        .collect();
    report.points_in_scope = chosen.len() as u64;
    // A record whose size disagrees with its tree (a root file edited into other valid JSON,
    // then rebuilt from) does not restore.
    for p in &chosen {
        if let Some(what) = store.shape_disagreement(p)? {
            report.catalogue.push(format!(
                "point {} ({}/{}): its record disagrees with its tree: {what}; `cairn repair \
                 --rebuild-index` sets its root file aside",
                p.short_id(),
                p.vm,
                p.disk
            ));
        }
    }
    // Walk the chosen points' trees: every distinct tree chunk once.
    let mut trees = Trees::default();
    let (tree_ids, mut data_ids) = trees.reach(&store, chosen.iter().copied())?;
    // A tree chunk that cannot be read hides the chunks under it: those the index holds and
    // still counts, but that no readable tree chunk of any point names, are reported as unknown
    // but referenced (their bytes may be whole; no point reaches them until the tree chunk is
    // stored again, by a key backup of the disk).
    // Those are read too: the ones that do not read back are named (under the tree chunk's
    // points), so that a key backup stores them afresh.
    let mut hidden: HashSet<ChunkId> = HashSet::new();
    if trees.kids.values().any(std::result::Result::is_err) {
        let (t, d) = trees.reach(&store, all_points.iter())?;
        let named: HashSet<ChunkId> = t.into_iter().chain(d).collect();
        let unnamed: Vec<ChunkId> = store
            .chunk_entries()?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !named.contains(id))
            .collect();
        let counts = store.refcounts(&unnamed)?;
        hidden = unnamed
            .into_iter()
            .zip(counts)
            .filter(|(_, c)| *c > 0)
            .map(|(id, _)| id)
            .collect();
        report.unknown_but_referenced = hidden.len() as u64;
    }
    report.chunks_in_scope = (tree_ids.len() + data_ids.len()) as u64;
    let marked: HashMap<ChunkId, BadMark> = store.bad_chunks()?.into_iter().collect();
    let scope: HashSet<ChunkId> = tree_ids
        .iter()
        .chain(&data_ids)
        .chain(&hidden)
        .copied()
        .collect();
    if opts.quick {
        data_ids.clear();
    }
    if let Some((n, m)) = opts.subset {
        data_ids.retain(|id| crate::checked::in_subset(id, n, m));
    }
    if let Some(share) = opts.sample {
        data_ids = sample(data_ids, share);
    }
    let mut to_read: Vec<ChunkId> = tree_ids.clone();
    to_read.extend(data_ids);
    to_read.extend(hidden.iter().copied());
    // Chunks marked bad are read again to clear the marks of those that read well now (healed);
    // one outside the scope (another VM's, or no longer referenced) is not this run's finding.
    let in_list: HashSet<ChunkId> = to_read.iter().copied().collect();
    to_read.extend(marked.keys().filter(|id| !in_list.contains(id)).copied());
    // Read in pack order, in parallel.
    let locs = store.locations(&to_read)?;
    let mut findings: Findings = HashMap::new();
    let mut jobs: Vec<(ChunkId, Location)> = Vec::new();
    for (id, loc) in to_read.iter().zip(locs) {
        match loc {
            // Read whole by a complete run since it was written (`--since-last`).
            Some(l) if checked.covers(&l) && !marked.contains_key(id) => {
                report.chunks_skipped += 1;
            }
            Some(l) => jobs.push((*id, l)),
            None if scope.contains(id) => {
                findings.insert(
                    *id,
                    Finding {
                        state: DamageState::Missing,
                        what: "not in the index".into(),
                        location: None,
                    },
                );
            }
            None => {}
        }
    }
    jobs.sort_by_key(|(_, l)| (l.pack, l.offset));
    let total = jobs.len() as u64;
    // In batches (the progress moves, the buffers stay small), each read as the store reads
    // best: a bucket's batch reader has the GETs of later batches in flight (adjacent frames in
    // one ranged GET) while one is checked. A failure of the bucket itself stops the verify: it
    // says nothing of the chunks.
    let mut results: Vec<(ChunkId, Location, Option<String>)> = Vec::with_capacity(jobs.len());
    let cs = store.config().chunk_size as usize;
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let batches: Vec<&[(ChunkId, Location)]> = jobs.chunks(VERIFY_BATCH).collect();
    let mut reader = store.batches();
    let mut said = 0;
    for (k, batch) in batches.iter().enumerate() {
        while said < batches.len() && said <= k + reader.ahead() {
            reader.expect(batches[said].iter().map(|(id, _)| *id).collect())?;
            said += 1;
        }
        bufs.resize_with(batch.len(), || vec![0u8; cs]);
        let slots: Vec<&mut [u8]> = batch
            .iter()
            .zip(bufs.iter_mut())
            .map(|((_, loc), buf)| {
                buf.resize(loc.plain_len as usize, 0);
                buf.as_mut_slice()
            })
            .collect();
        let errs = reader.read_next(slots)?.into_iter().map(|e| {
            e.map(|e| match e {
                cairn_store::Error::BadChunk { what, .. } => what,
                other => other.to_string(),
            })
        });
        results.extend(batch.iter().zip(errs).map(|((id, loc), e)| (*id, *loc, e)));
        let n = results.len() as u64;
        progress(n, total);
    }
    drop(reader);
    report.chunks_checked = results.len() as u64;
    report.misplaced = misplaced(&store, &chosen, &trees, &results)?;
    let mut healed = Vec::new();
    for (id, loc, err) in results {
        report.bytes_read += cairn_store::pack::FRAME_HEADER_SIZE + u64::from(loc.stored_len);
        let location = format!("pack {} offset {}", loc.pack.to_hex(), loc.offset);
        match err {
            Some(e) if scope.contains(&id) => {
                findings.insert(
                    id,
                    Finding {
                        state: DamageState::Bad,
                        what: e,
                        location: Some(location),
                    },
                );
            }
            Some(_) => {}
            None if marked.contains_key(&id) => healed.push(id),
            None => {}
        }
    }
    // Blast radius: every point (not only those in scope) that references a bad chunk.
    if !findings.is_empty() {
        let tree_set: HashSet<ChunkId> = tree_ids.iter().copied().collect();
        let mut hits: HashMap<ChunkId, Vec<Hit>> = HashMap::new();
        trees.reach(&store, all_points.iter())?;
        let dirty = trees.dirty(&findings);
        for p in &all_points {
            for (id, offsets) in hits_in(&store, p, &dirty, &findings)? {
                hits.entry(id).or_default().push(Hit {
                    point: p.id.clone(),
                    vm: p.vm.clone(),
                    disk: p.disk.clone(),
                    time: p.time,
                    offsets,
                });
            }
        }
        // A hidden chunk lies under an unreadable tree chunk of one of these points.
        let under_lost_trees: Vec<Hit> = {
            let mut seen = HashSet::new();
            hits.iter()
                .filter(|(id, _)| tree_set.contains(id) && findings.contains_key(id))
                .flat_map(|(_, h)| h.iter())
                .filter(|h| seen.insert(h.point.clone()))
                .map(|h| Hit {
                    offsets: Vec::new(),
                    ..h.clone()
                })
                .collect()
        };
        let mut points = HashSet::new();
        let mut vms = std::collections::BTreeSet::new();
        let mut damaged: Vec<Damage> = findings
            .iter()
            .map(|(id, f)| {
                let h = if hidden.contains(id) {
                    under_lost_trees.clone()
                } else {
                    hits.remove(id).unwrap_or_default()
                };
                for x in &h {
                    points.insert(x.point.clone());
                    vms.insert(x.vm.clone());
                }
                Damage {
                    chunk: id.to_hex(),
                    kind: if tree_set.contains(id) {
                        DamagedPart::Tree
                    } else {
                        DamagedPart::Data
                    },
                    state: f.state,
                    what: if hidden.contains(id) {
                        format!(
                            "{} (under a tree chunk that cannot be read: its place on the disk is \
                             not known)",
                            f.what
                        )
                    } else {
                        f.what.clone()
                    },
                    location: f.location.clone(),
                    points: h,
                }
            })
            .collect();
        damaged.sort_by(|a, b| a.chunk.cmp(&b.chunk));
        report.points_damaged = points.len() as u64;
        report.vms_damaged = vms.into_iter().collect();
        report.damaged = damaged;
    }
    drop(store);
    // Record what changed: new marks, and marks of chunks that read well now.
    let now = Utc::now().to_rfc3339();
    let mut marks: Vec<(ChunkId, Option<BadMark>)> = Vec::new();
    for (id, f) in &findings {
        let mark = BadMark {
            what: f.what.clone(),
            location: f.location.clone(),
            found: now.clone(),
        };
        if marked.get(id).is_none_or(|m| m.what != mark.what) {
            marks.push((*id, Some(mark)));
        }
    }
    for id in &healed {
        marks.push((*id, None));
    }
    report.marks_cleared = healed.len() as u64;
    // Under the write lock, against the index as it is now: a finding whose chunk a collection
    // moved or dropped since this run read the index is not damage; a mark whose chunk is
    // neither indexed nor referenced any more names nothing and goes.
    let stale: Vec<ChunkId> = marked
        .keys()
        .filter(|id| !findings.contains_key(id) && !healed.contains(id))
        .copied()
        .collect();
    if !marks.is_empty() || !stale.is_empty() {
        let w = Store::open(root, OpenMode::Write { wait: true })?;
        let ids: Vec<ChunkId> = marks
            .iter()
            .map(|(id, _)| *id)
            .chain(stale.iter().copied())
            .collect();
        let now_at = w.locations(&ids)?;
        let counts = w.refcounts(&ids)?;
        let here = |i: usize| -> (Option<String>, u64) {
            (
                now_at
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|l| format!("pack {} offset {}", l.pack.to_hex(), l.offset)),
                counts.get(i).copied().unwrap_or(0),
            )
        };
        let mut kept = Vec::new();
        for (i, (id, mark)) in marks.into_iter().enumerate() {
            let (at, count) = here(i);
            let still = match &mark {
                // Cleared marks are always recorded.
                None => true,
                // Bad where it was read, and still indexed there.
                Some(m) if m.location.is_some() => at == m.location,
                // Missing from the index, and still referenced.
                Some(_) => at.is_none() && count > 0,
            };
            if still {
                kept.push((id, mark));
            } else if let Some(f) = findings.get(&id) {
                let hex = id.to_hex();
                report.damaged.retain(|d| d.chunk != hex);
                report.not_damage.push(format!(
                    "chunk {id} ({}): moved or dropped by a garbage collection while this \
                     verify ran",
                    f.what
                ));
            }
        }
        for (k, id) in stale.iter().enumerate() {
            let (at, count) = here(k + ids.len() - stale.len());
            if at.is_none() && count == 0 {
                kept.push((*id, None));
                report.marks_cleared += 1;
            }
        }
        report.marks_recorded = kept.iter().filter(|(_, m)| m.is_some()).count() as u64;
        if !report.not_damage.is_empty() {
            let hits = || report.damaged.iter().flat_map(|d| d.points.iter());
            report.points_damaged = hits().map(|h| &h.point).collect::<HashSet<_>>().len() as u64;
            let vms: std::collections::BTreeSet<String> = hits().map(|h| h.vm.clone()).collect();
            report.vms_damaged = vms.into_iter().collect();
        }
        if !kept.is_empty() {
            w.mark_bad(&kept)?;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    // Remembered for the report page; a verify whose record cannot be written still stands.
    let scope = opts.scope();
    if opts.complete() {
        let _ = crate::checked::Checked::record(root, &packs_at_start);
    }
    let _ = crate::history::record_verify(root, &report, &scope);
    Ok(report)
}
