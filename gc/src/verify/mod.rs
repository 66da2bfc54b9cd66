//! Verify: read chunks, check each against its id, and name what a bad one damages.
//!
//! A run is a sequence of phases, one module each: the checks that read no chunk
//! ([`metadata`]), what to read ([`scope`]), reading it ([`read`]), what the bad chunks damage
//! ([`blast`]) and recording the findings in the index ([`record`]).

mod blast;
mod metadata;
mod read;
mod record;
mod scope;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use cairn_store::{ChunkId, OpenMode, RecoveryPoint, Store};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::Result;
use scope::{Scope, Trees};

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
    /// An encrypted store's keys (`verify --key`): sealed chunks are opened and checked
    /// against their keyed ids. Without them, an encrypted store's sealed chunks are checked
    /// as far as their frames' CRCs go, and its trees' ids are not checked.
    pub keys: Option<cairn_store::Keys>,
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
    let mut store = Store::open(root, OpenMode::Read)?;
    if let Some(keys) = &opts.keys {
        store.unlock_with(keys)?;
    }
    // The packs as the run starts, before the points are read: every frame in them belongs to
    // a point committed by now (or is garbage).
    let packs_at_start = store.pack_infos()?;
    let checked = if opts.since_last {
        crate::checked::Checked::load(root)
    } else {
        crate::checked::Checked::default()
    };
    let mut report = VerifyReport {
        catalogue: metadata::catalogue_disagreements(root, &store)?,
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
    report
        .catalogue
        .extend(metadata::shape_disagreements(&store, &chosen)?);

    let mut scope = Scope::find(&store, &all_points, &chosen)?;
    report.unknown_but_referenced = scope.hidden.len() as u64;
    report.chunks_in_scope = (scope.tree_ids.len() + scope.data_ids.len()) as u64;
    let mut findings: Findings = HashMap::new();
    let to_read = scope.to_read(opts);
    let (jobs, skipped) = scope.locate(&store, &to_read, &checked, &mut findings)?;
    report.chunks_skipped = skipped;

    let results = read::read_all(&store, &jobs, progress)?;
    report.chunks_checked = results.len() as u64;
    report.misplaced = blast::misplaced(&store, &chosen, &scope.trees, &results)?;
    let (healed, bytes_read) = read::tally(results, &scope, &mut findings);
    report.bytes_read = bytes_read;

    if !findings.is_empty() {
        let radius = blast::radius(&store, &all_points, &mut scope, &findings)?;
        report.damaged = radius.damaged;
        report.points_damaged = radius.points;
        report.vms_damaged = radius.vms;
    }
    drop(store);
    record::record(root, &findings, &healed, &scope.marked, &mut report)?;
    report.seconds = started.elapsed().as_secs_f64();
    // Remembered for the report page; a verify whose record cannot be written still stands.
    if opts.complete() {
        let _ = crate::checked::Checked::record(root, &packs_at_start);
    }
    let _ = crate::history::record_verify(root, &report, &opts.scope());
    Ok(report)
}
