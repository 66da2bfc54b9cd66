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
//! - **Into a server** ([`Side::Server`] as the destination): the same protocol through `cairn serve`'s
//!   API, one session per run: the server's "which of these are missing" stands for the
//!   destination's index (a tree chunk it holds has its subtree there), its forgotten ids come
//!   from `GET /api/v1/forgotten`, and its commit checks every chunk the points name. A backup
//!   token for the VMs is enough (replication only adds: a source taken over cannot delete the
//!   replica); points keep their protection only when sent with an admin token.
//! - **From a server** ([`Side::Server`] as the source): points listed and chunks read through the API,
//!   as stored (compressed), several requests in flight, each checked against its id here
//!   before it is written; a restore token for the VMs is enough. Server to server works too
//!   (one token each).
//!
//! Where copied chunks and points go (a folder's session, a server's upload, a dry run's
//! count) is [`into`].

mod into;
mod reseal;

use cairn_store::select::glob_match;
use cairn_store::tree::{self, Node};
use cairn_store::{ChunkId, ChunkRef, OpenMode, RecoveryPoint, Store, StoreRead, StoreWrite};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use into::{CopyInto, DryRun, FolderProbe, IntoFolder, IntoServer};

/// Data chunks read and checked at once (at most 32 x 4 MiB held), on both cores or as
/// several requests in flight.
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
    /// Say what would be copied, copy nothing: the same walk as a copy, asking the destination
    /// what it lacks and reading (and checking) what would be sent, to count it.
    pub dry_run: bool,
    /// Wait for the destination's writer instead of failing.
    pub wait: bool,
    /// Only points made at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many bytes a second sent (a shared uplink kept usable).
    pub limit_rate: Option<u64>,
    /// The source folder's keys, when it is encrypted and a copy must read its data (into a
    /// store sealed otherwise).
    pub from_keys: Option<cairn_store::Keys>,
    /// The destination folder's keys, when chunks must be named and sealed for it.
    pub to_keys: Option<cairn_store::Keys>,
}

/// Chunks and bytes sent so far, and the pace they may go at.
struct Sent {
    chunks: u64,
    bytes: u64,
    /// Bytes a second, and when the first byte went.
    limit: Option<(u64, std::time::Instant)>,
}

impl Sent {
    fn new(limit: Option<u64>) -> Self {
        Self {
            chunks: 0,
            bytes: 0,
            limit: limit
                .filter(|r| *r > 0)
                .map(|r| (r, std::time::Instant::now())),
        }
    }

    /// Counts a chunk sent, then sleeps as long as the bytes sent so far are ahead of the rate.
    fn add(&mut self, bytes: u64) {
        self.chunks += 1;
        self.bytes += bytes;
        if let Some((rate, start)) = self.limit {
            let due = std::time::Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
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

/// One side of a replication: a store folder, or a store behind `cairn serve`.
pub enum Side<'a> {
    /// A store folder (the source's opened read-only, the destination's for writing).
    Folder(&'a Path),
    /// A server (a restore token for the VMs copied is enough to read from it, a backup token
    /// to copy into it: replication only adds).
    Server(Arc<cairn_remote::Remote>),
}

impl Side<'_> {
    /// The store as messages name it: its folder, or its server's URL.
    fn name(&self) -> String {
        match self {
            Self::Folder(p) => p.display().to_string(),
            Self::Server(r) => r.url().to_owned(),
        }
    }
}

/// Where a replica goes.
pub type Destination<'a> = Side<'a>;

/// Where the points come from.
pub type Source<'a> = Side<'a>;

fn selected(p: &RecoveryPoint, o: &Options) -> bool {
    let vm = o.vm.as_ref().is_none_or(|g| {
        glob_match(g, &p.vm) || p.labels.vm_uuid.as_ref().is_some_and(|u| glob_match(g, u))
    });
    vm && o.disk.as_ref().is_none_or(|d| *d == p.disk) && o.since.is_none_or(|t| p.time >= t)
}

/// The source, opened.
enum Opened {
    Folder(Box<Store>),
    Server(Arc<cairn_remote::Remote>),
}

impl Opened {
    fn read(&self) -> &dyn StoreRead {
        match self {
            Self::Folder(s) => &**s,
            Self::Server(r) => &**r,
        }
    }
}

/// Copies into `to` the points of `from` it lacks (see the module); `progress` is told of each
/// point as it starts (index, count, point).
///
/// # Errors
/// A store that cannot be opened or reached, the same store on both sides, stores of
/// different chunk sizes, a chunk that cannot be read or does not match its id (the points
/// published before it stay).
pub fn replicate(
    from: &Source<'_>,
    to: &Destination<'_>,
    options: &Options,
    progress: &dyn Fn(usize, usize, &RecoveryPoint),
) -> Result<Report> {
    // A folder copied with `cp -a` is a replica of the same store (same id): a seed to carry
    // away and fill on. Only the same folder (or server) is refused.
    let same = match (from, to) {
        (Source::Folder(a), Destination::Folder(b)) => {
            match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        }
        (Source::Server(a), Destination::Server(b)) => a.url() == b.url(),
        _ => false,
    };
    if same {
        return Err(Error::Refused(format!(
            "{} and {} are the same store: nothing to replicate",
            from.name(),
            to.name()
        )));
    }
    let src = match from {
        Source::Folder(p) => {
            let mut s = Store::open(p, OpenMode::Read)?;
            if let Some(k) = &options.from_keys {
                s.unlock_with(k)?;
            }
            Opened::Folder(Box::new(s))
        }
        Source::Server(r) => Opened::Server(Arc::clone(r)),
    };
    let src_config = src.read().config().clone();
    let check = |dst: &cairn_store::StoreConfig, dst_keys: Option<&cairn_store::Keys>| {
        let (src_size, dst_size) = (src_config.chunk_size, dst.chunk_size);
        if src_size != dst_size {
            return Err(Error::Refused(format!(
                "{} has chunks of {src_size} bytes and {} of {dst_size}: a replica needs the same \
                 chunk size (`cairn init --chunk-size`)",
                from.name(),
                to.name(),
            )));
        }
        resealer(src.read(), dst, dst_keys, &from.name(), &to.name())
    };
    match to {
        Destination::Folder(path) => into_folder(src.read(), path, options, progress, &check),
        Destination::Server(remote) => into_server(src.read(), remote, options, progress, &check),
    }
}

/// The check both destinations make (the chunk size), and how chunks are copied (as stored,
/// or sealed anew).
type Check<'c> = dyn Fn(&cairn_store::StoreConfig, Option<&cairn_store::Keys>) -> Result<Option<reseal::Resealer>>
    + 'c;

/// How a replication copies chunks: as the source stores them (stores sealed alike: both
/// unencrypted, or encrypted with one key; a replica then needs no key to be kept), or named
/// and sealed anew with the destination's keys ([`reseal`]: it reads the source's data, so
/// it needs the source's key when that is encrypted, and the destination's keys).
fn resealer(
    src: &dyn StoreRead,
    dst_config: &cairn_store::StoreConfig,
    dst_keys: Option<&cairn_store::Keys>,
    from: &str,
    to: &str,
) -> Result<Option<reseal::Resealer>> {
    if src.config().key_fingerprint() == dst_config.key_fingerprint() {
        return Ok(None);
    }
    if src.chunk_keys().is_none() {
        return Err(Error::Refused(format!(
            "{from} and {to} seal chunks differently: every chunk is read and sealed anew on \
             the way, which needs {from}'s key (--from-key-file, or its key file kept under its \
             id)"
        )));
    }
    let Some(keys) = dst_keys else {
        return Err(Error::Refused(format!(
            "{from} and {to} seal chunks differently: every chunk is named and sealed anew for \
             {to}, which needs {to}'s key (--key-file, or its key file kept under its id)"
        )));
    };
    Ok(Some(reseal::Resealer::new(
        keys.clone(),
        dst_config.zstd_level,
    )))
}

/// Copies into a store folder: a session of its own (a dry run asks it what it lacks).
fn into_folder(
    src: &dyn StoreRead,
    path: &std::path::Path,
    options: &Options,
    progress: &dyn Fn(usize, usize, &RecoveryPoint),
    check: &Check<'_>,
) -> Result<Report> {
    let mut dst = if options.dry_run {
        Store::open(path, OpenMode::Read)?
    } else {
        Store::open(path, OpenMode::Write { wait: options.wait })?
    };
    if let Some(k) = &options.to_keys {
        dst.unlock_with(k)?;
    }
    let mut reseal = check(dst.config(), dst.chunk_keys())?;
    let dst = dst;
    let forgotten = dst.forgotten_ids()?;
    let held = |id: &str| -> Result<bool> { Ok(dst.point_by_id(id)?.is_some()) };
    let sent = std::rc::Rc::default();
    copy_all(
        src,
        &forgotten,
        &held,
        options,
        progress,
        &mut reseal,
        &mut |_| {
            if options.dry_run {
                return Ok(Box::new(DryRun {
                    probe: Box::new(FolderProbe { dst: &dst }),
                    sent: std::rc::Rc::clone(&sent),
                }));
            }
            // A replica copies a store's history as it is, renamed VMs included.
            let mut session = dst.session()?;
            session.allow_adopt();
            Ok(Box::new(IntoFolder {
                dst: FolderProbe { dst: &dst },
                session,
                staged: Vec::new(),
            }))
        },
    )
}

/// Copies through a server: an upload session per group (a dry run asks the server what it
/// lacks).
fn into_server(
    src: &dyn StoreRead,
    remote: &Arc<cairn_remote::Remote>,
    options: &Options,
    progress: &dyn Fn(usize, usize, &RecoveryPoint),
    check: &Check<'_>,
) -> Result<Report> {
    let mut reseal = check(remote.config(), remote.chunk_keys())?;
    let forgotten = remote.forgotten()?;
    let there: HashSet<cairn_store::PointId> = remote.points()?.into_iter().map(|p| p.id).collect();
    let held = |id: &str| -> Result<bool> { Ok(there.contains(id)) };
    let sent = std::rc::Rc::default();
    copy_all(
        src,
        &forgotten,
        &held,
        options,
        progress,
        &mut reseal,
        &mut |group| {
            let upload = open_upload(remote, group, options)?;
            if options.dry_run {
                return Ok(Box::new(DryRun {
                    probe: upload,
                    sent: std::rc::Rc::clone(&sent),
                }));
            }
            Ok(upload)
        },
    )
}

/// Into a server: one session for the points of a run.
fn open_upload(
    remote: &Arc<cairn_remote::Remote>,
    group: &[&RecoveryPoint],
    options: &Options,
) -> Result<Box<dyn CopyInto + 'static>> {
    let vm = group.first().map(|p| p.vm.clone()).unwrap_or_default();
    let uuid = group.first().and_then(|p| p.labels.vm_uuid.clone());
    let disks: Vec<String> = group.iter().map(|p| p.disk.clone()).collect();
    // A replica copies a store's history as it is, renamed VMs included: an admin token says
    // so (another token's commits are checked, and timed by the server).
    let adopt = remote.info().role.name() == "admin";
    let upload = remote.upload(
        &vm,
        uuid.as_deref(),
        &disks,
        options
            .wait
            .then_some(std::time::Duration::from_secs(24 * 3600)),
        adopt,
    )?;
    let filter = upload.filter();
    Ok(Box::new(IntoServer {
        upload,
        filter,
        points: Vec::new(),
    }))
}

/// Opens the destination's session for the points of one run.
type OpenRun<'f, 'd> = dyn FnMut(&[&RecoveryPoint]) -> Result<Box<dyn CopyInto + 'd>> + 'f;

/// Plans what to copy from `src` (not forgotten, not `held`), groups runs, and copies each run
/// through a session `open` makes for it.
fn copy_all<'d>(
    src: &dyn StoreRead,
    forgotten: &HashSet<String>,
    held: &dyn Fn(&str) -> Result<bool>,
    options: &Options,
    progress: &dyn Fn(usize, usize, &RecoveryPoint),
    reseal: &mut Option<reseal::Resealer>,
    open: &mut OpenRun<'_, 'd>,
) -> Result<Report> {
    let mut report = Report::default();
    let mut todo = Vec::new();
    for p in src.points()?.into_iter().filter(|p| selected(p, options)) {
        if forgotten.contains(p.id.as_str()) {
            report.forgotten += 1;
        } else if held(&p.id)? {
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
    // A dry run sends nothing: no pace to keep.
    let mut sent = Sent::new(options.limit_rate.filter(|_| !options.dry_run));
    for group in runs {
        for p in &group {
            progress(i, todo.len(), p);
            i += 1;
        }
        copy_run(src, open(&group)?, &group, &mut sent, reseal)?;
        report.points.extend(group.iter().map(|p| p.id.to_string()));
    }
    report.chunks = sent.chunks;
    report.bytes = sent.bytes;
    Ok(report)
}

/// Copies the points of one run: the chunks the destination lacks, then the points,
/// published together; `sent` counts what went.
fn copy_run(
    src: &dyn StoreRead,
    mut dst: Box<dyn CopyInto + '_>,
    points: &[&RecoveryPoint],
    sent: &mut Sent,
    reseal: &mut Option<reseal::Resealer>,
) -> Result<()> {
    let mut done: HashSet<ChunkId> = HashSet::new();
    for p in points {
        match reseal {
            Some(r) => {
                let q = r.point(src, &mut *dst, sent, p)?;
                dst.stage(&q)?;
            }
            None => {
                copy_chunks(src, &mut *dst, &mut done, sent, p)?;
                dst.stage(p)?;
            }
        }
    }
    dst.commit()?;
    Ok(())
}

/// Sends the chunks of `p` that the destination lacks.
fn copy_chunks(
    src: &dyn StoreRead,
    dst: &mut dyn CopyInto,
    done: &mut HashSet<ChunkId>,
    sent: &mut Sent,
    p: &RecoveryPoint,
) -> Result<()> {
    // Depth first from the top; a subtree the destination references is complete there.
    let mut stack: Vec<ChunkId> = tree::top(p)?;
    while let Some(id) = stack.pop() {
        if !done.insert(id) {
            continue;
        }
        if dst.has_tree(&id)? {
            continue;
        }
        // Read once, as stored (and checked): decoded here to walk it, sent as it is.
        let enc = one_encoded(src, &id)?;
        // Trees are never sealed: read without the key (checked against their ids with it).
        let bytes =
            cairn_store::chunk::decode(src.chunk_keys(), &enc.stored()).map_err(|what| {
                cairn_store::Error::BadChunk {
                    id,
                    where_: "as read for replication".into(),
                    what: what.to_string(),
                }
            })?;
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
                let lacks = dst.missing(&wanted)?;
                let mut lacks = lacks.iter();
                wanted.retain(|_| lacks.next().copied().unwrap_or(true));
                // Read and checked (decoded, hashed) a group at a time by a thread of their
                // own while the group before is put, in order; two groups wait at most, so
                // memory stays bounded.
                std::thread::scope(|scope| -> Result<()> {
                    let (tx, rx) = std::sync::mpsc::sync_channel(2);
                    let wanted = &wanted;
                    scope.spawn(move || {
                        for group in wanted.chunks(VERIFY_GROUP) {
                            let read = src.read_encoded(group);
                            let failed = read.is_err();
                            if tx.send(read).is_err() || failed {
                                return;
                            }
                        }
                    });
                    // Dropping `rx` on an error ends the reader at its next send.
                    for read in rx {
                        for enc in &read? {
                            if dst.put(enc)? {
                                sent.add(enc.bytes.len() as u64);
                            }
                        }
                    }
                    Ok(())
                })?;
            }
        }
        if dst.missing(&[id])?.first().copied().unwrap_or(true) && dst.put(&enc)? {
            sent.add(enc.bytes.len() as u64);
        }
    }
    Ok(())
}

/// One chunk as stored, checked.
fn one_encoded(src: &dyn StoreRead, id: &ChunkId) -> Result<cairn_store::EncodedChunk> {
    src.read_encoded(std::slice::from_ref(id))?
        .pop()
        .ok_or_else(|| Error::Store(cairn_store::Error::MissingChunk(*id)))
}
