//! Replication: the points a destination store lacks, copied from a source store.
//!
//! - **What is copied.** Every point of the source that the destination neither holds nor
//!   has forgotten (its `forgotten` list: retention stays each store's own, so a point pruned
//!   on the destination is never brought back), oldest first, as it is: id, time, source,
//!   labels, run and protection.
//! - **Runs stay whole.** The disks of one backup run are copied in one session and published
//!   together, as on the source.
//! - **Chunks first, the point last.** A point's tree is walked from its top: a tree chunk
//!   the destination holds and references (its count is above zero) has its whole subtree
//!   there already and is not read; any other tree chunk, and every data chunk the destination
//!   lacks, is copied as the source's pack holds it (compressed), checked against its id on the
//!   way (decoded and hashed: a bad chunk stops the copy, naming it). Then the point is
//!   published through the destination's own commit: its chunks durable, then its root file,
//!   then its catalogue entry, so it appears only when everything it references is durable.
//! - **Incremental and resumable.** A second run copies only what is new; a killed run leaves
//!   chunks without a point (the destination's `gc` reclaims them, or the rerun reuses them
//!   once indexed) and the points it published; a rerun sends what is still missing.
//! - The source is opened read-only (a registered reader: backups and gc run beside it), the
//!   destination for writing (one writer, as for a backup).

use std::collections::HashSet;
use std::path::Path;

use cairn_store::tree::{self, Node};
use cairn_store::{ChunkId, ChunkRef, OpenMode, RecoveryPoint, Store};
use rayon::prelude::*;

/// Data chunks read and checked at once (at most 32 x 4 MiB held).
const VERIFY_GROUP: usize = 32;

/// What went wrong in a replication.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A store failed, or a chunk could not be read or checked.
    #[error(transparent)]
    Store(#[from] cairn_store::Error),
    /// The two stores cannot be replicated into one another.
    #[error("{0}")]
    Refused(String),
}

/// Result of replication.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which points to copy.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only points of VMs whose name or UUID matches this glob (`*` and `?`).
    pub vm: Option<String>,
    /// Only this disk.
    pub disk: Option<String>,
    /// Say what would be copied, copy nothing.
    pub dry_run: bool,
    /// Wait for the destination's writer instead of failing.
    pub wait: bool,
}

/// What a replication did (or would do, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Points copied.
    pub points: Vec<String>,
    /// Points the destination had already.
    pub present: u64,
    /// Points the destination forgot, not copied again.
    pub forgotten: u64,
    /// Chunks copied (data and tree).
    pub chunks: u64,
    /// Their stored bytes (what crossed from one store to the other).
    pub bytes: u64,
}

/// `*` any run, `?` any one character.
fn glob(pattern: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

fn selected(p: &RecoveryPoint, o: &Options) -> bool {
    let vm = o
        .vm
        .as_ref()
        .is_none_or(|g| glob(g, &p.vm) || p.labels.vm_uuid.as_ref().is_some_and(|u| glob(g, u)));
    vm && o.disk.as_ref().is_none_or(|d| *d == p.disk)
}

/// Copies into `to` the points of `from` it lacks (see the module); `progress` is told of each
/// point as it starts (index, count, point).
///
/// # Errors
/// A store that cannot be opened, stores of different chunk sizes, a chunk that cannot be read
/// or does not match its id (the points published before it stay).
pub fn replicate(
    from: &Path,
    to: &Path,
    options: &Options,
    progress: &dyn Fn(usize, usize, &RecoveryPoint),
) -> Result<Report> {
    // A folder copied with `cp -a` is a replica of the same store (same id): a seed to carry
    // away and fill on. Only the same folder is refused.
    let same = match (std::fs::canonicalize(from), std::fs::canonicalize(to)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(Error::Refused(format!(
            "{} and {} are the same store folder: nothing to replicate",
            from.display(),
            to.display()
        )));
    }
    let src = Store::open(from, OpenMode::Read)?;
    let dst = if options.dry_run {
        Store::open(to, OpenMode::Read)?
    } else {
        Store::open(to, OpenMode::Write { wait: options.wait })?
    };
    if src.config().chunk_size != dst.config().chunk_size {
        return Err(Error::Refused(format!(
            "{} has chunks of {} bytes and {} of {}: a replica needs the same chunk size \
             (`cairn init --chunk-size`)",
            from.display(),
            src.config().chunk_size,
            to.display(),
            dst.config().chunk_size
        )));
    }
    let forgotten = dst.forgotten_ids()?;
    let mut report = Report::default();
    let mut todo = Vec::new();
    for p in src.points()?.into_iter().filter(|p| selected(p, options)) {
        if forgotten.contains(&p.id) {
            report.forgotten += 1;
        } else if dst.point_by_id(&p.id)?.is_some() {
            report.present += 1;
        } else {
            todo.push(p);
        }
    }
    // The disks of one backup run are published together on the destination too, as on the
    // source: a reader never sees one disk of a VM's run without the others.
    let mut runs: Vec<Vec<&RecoveryPoint>> = Vec::new();
    for p in &todo {
        match runs
            .iter_mut()
            .find(|g| p.run.is_some() && g.first().is_some_and(|q| q.run == p.run))
        {
            Some(g) => g.push(p),
            None => runs.push(vec![p]),
        }
    }
    let mut i = 0;
    for group in runs {
        for p in &group {
            progress(i, todo.len(), p);
            i += 1;
        }
        if !options.dry_run {
            let (chunks, bytes) = copy_run(&src, &dst, &group)?;
            report.chunks += chunks;
            report.bytes += bytes;
        }
        report.points.extend(group.iter().map(|p| p.id.clone()));
    }
    Ok(report)
}

/// Copies the points of one run: the chunks `dst` lacks, then the points, published together.
/// Returns chunks and bytes sent.
fn copy_run(src: &Store, dst: &Store, points: &[&RecoveryPoint]) -> Result<(u64, u64)> {
    let mut session = dst.session()?;
    let mut sent = (0u64, 0u64);
    let mut done: HashSet<ChunkId> = HashSet::new();
    let mut staged = Vec::with_capacity(points.len());
    for p in points {
        copy_chunks(src, dst, &mut session, &mut done, &mut sent, p)?;
        staged.push(session.stage_copy(p)?);
    }
    session.commit_run(staged)?;
    Ok(sent)
}

/// Puts into `session` the chunks of `p` that `dst` lacks.
fn copy_chunks(
    src: &Store,
    dst: &Store,
    session: &mut cairn_store::Session<'_>,
    done: &mut HashSet<ChunkId>,
    sent: &mut (u64, u64),
    p: &RecoveryPoint,
) -> Result<()> {
    // Depth first from the top; a subtree the destination references is complete there.
    let mut stack: Vec<ChunkId> = tree::top(p)?;
    while let Some(id) = stack.pop() {
        if !done.insert(id) {
            continue;
        }
        if dst.refcounts(&[id])?.first().copied().unwrap_or(0) > 0 {
            continue;
        }
        let bytes = src.read_chunk(&id)?;
        let node = tree::decode(&bytes).map_err(|what| {
            Error::Store(cairn_store::Error::Point(format!(
                "{}: tree chunk {id}: {what}",
                p.short_id()
            )))
        })?;
        match node {
            Node::Inner(_, children) => stack.extend(children.iter().copied()),
            Node::Leaf(refs) => {
                let mut wanted: Vec<ChunkId> = refs
                    .iter()
                    .filter_map(|r| match r {
                        ChunkRef::Data(d) if done.insert(*d) => Some(*d),
                        _ => None,
                    })
                    .collect();
                let have = dst.locations(&wanted)?;
                let mut have = have.iter();
                wanted.retain(|_| have.next().is_some_and(Option::is_none));
                // Read and checked (decoded, hashed) on both cores, a few at a time so that
                // memory stays bounded; put in order.
                for group in wanted.chunks(VERIFY_GROUP) {
                    let encoded: Vec<cairn_store::EncodedChunk> = group
                        .par_iter()
                        .map(|d| src.read_encoded(d))
                        .collect::<std::result::Result<_, _>>()?;
                    for enc in &encoded {
                        if session.put(enc)? {
                            sent.0 += 1;
                            sent.1 += enc.bytes.len() as u64;
                        }
                    }
                }
            }
        }
        if dst.location(&id)?.is_none() {
            let enc = src.read_encoded(&id)?;
            if session.put(&enc)? {
                sent.0 += 1;
                sent.1 += enc.bytes.len() as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("web*", "web01"));
        assert!(glob("*", ""));
        assert!(glob("w?b0*", "web01 (prod)"));
        assert!(!glob("web", "web01"));
        assert!(glob("*01*", "web01 (prod)"));
        assert!(!glob("db*", "web01"));
    }
}
