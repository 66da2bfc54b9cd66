//! Standby disks: a raw file or block device kept equal to a point, each run writing only the
//! chunks that differ between the point the target holds and the new one.
//!
//! - **State.** The store records, per target, the point it holds and what the target looked
//!   like after the run (size, modification time, inode): `STORE/standby/<hash>.json`, with
//!   `<hash>.lock` keeping two runs on one target apart.
//! - **Atomic.** Before the first byte is written, a journal (`<hash>.journal`: the point held
//!   and the point being written) is made durable; the target is fsynced before the state says
//!   it holds the new point, and the journal goes last. A run killed at any moment leaves a
//!   journal, and the next run first finishes it: it rewrites every chunk where the two points
//!   differ, which brings the target from any mix of them to the journal's point. A target is
//!   never reported as holding a point it does not hold.
//! - **Protected.** A target changed since the last run (someone booted the copy: its size,
//!   modification time or inode differ) is refused unless `force`, which reads the whole
//!   target and rewrites every chunk that differs from the point (`verify` does the same read
//!   without being asked twice).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use cairn_store::{ChunkRef, Found, PointLookup, RecoveryPoint, Store};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What the store remembers of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    target: String,
    point: String,
    size: u64,
    mtime_ns: i128,
    inode: u64,
}

/// A run in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Journal {
    from: Option<String>,
    to: String,
}

/// How to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandbyOptions {
    /// Take a target that changed behind cairn's back (or that holds something else): read it
    /// all and rewrite what differs.
    pub force: bool,
    /// Read the whole target and compare, even when it looks unchanged.
    pub verify: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StandbyReport {
    /// The point the target held before (if cairn knew one).
    pub from: Option<String>,
    /// The point it holds now.
    pub to: String,
    /// Chunks written.
    pub chunks_written: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Whether an interrupted run was finished first.
    pub finished_interrupted: bool,
    /// Whether the whole target was read and compared.
    pub compared: bool,
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        path,
        what: what.to_owned(),
        source,
    }
}

fn refused(what: String) -> Error {
    Error::Refused(what)
}

struct Files {
    state: PathBuf,
    journal: PathBuf,
    _lock: File,
}

fn files(store: &Store, target: &Path) -> Result<(Files, String)> {
    let shown = std::fs::canonicalize(target)
        .unwrap_or_else(|_| target.to_path_buf())
        .display()
        .to_string();
    let dir = store.root().join("standby");
    std::fs::create_dir_all(&dir).map_err(io(&dir, "creating the standby folder"))?;
    let key = blake3::hash(shown.as_bytes()).to_hex()[..32].to_owned();
    let lock_path = dir.join(format!("{key}.lock"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io(&lock_path, "opening the standby lock"))?;
    fs2::FileExt::try_lock_exclusive(&lock).map_err(|_| {
        refused(format!(
            "{shown}: another `cairn standby` is writing this target now"
        ))
    })?;
    Ok((
        Files {
            state: dir.join(format!("{key}.json")),
            journal: dir.join(format!("{key}.journal")),
            _lock: lock,
        },
        shown,
    ))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| refused(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, "reading")(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| refused(e.to_string()))?;
    cairn_store::write_atomic(path, &bytes)?;
    Ok(())
}

fn looks(file: &File, target: &Path) -> Result<(u64, i128, u64)> {
    let m = file
        .metadata()
        .map_err(io(target, "reading the target's metadata"))?;
    let size = if m.file_type().is_file() {
        m.len()
    } else {
        // A block device: its size is where its end is.
        use std::io::Seek;
        let mut f = file;
        f.seek(std::io::SeekFrom::End(0))
            .map_err(io(target, "finding the device's size"))?
    };
    let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    Ok((size, mtime, m.ino()))
}

/// Where a point's chunks go.
struct Writer<'a> {
    store: &'a Store,
    lookup: PointLookup,
    point: &'a RecoveryPoint,
    file: &'a File,
    target: &'a Path,
}

impl Writer<'_> {
    /// Writes chunks `first..end` of the point as the store holds them; with `compare` only
    /// those that differ; with `fresh` (a new file, zeros already) no zero chunk. Returns
    /// (chunks, bytes) written.
    fn write(&self, (first, end): (u64, u64), compare: bool, fresh: bool) -> Result<(u64, u64)> {
        let (store, point, file, target) = (self.store, self.point, self.file, self.target);
        let cs = u64::from(point.chunk_size);
        let mut written = (0u64, 0u64);
        let mut have = vec![0u8; cs as usize];
        let zeros = vec![0u8; cs as usize];
        let mut i = first;
        while i < end {
            let (bytes, next): (Option<Vec<u8>>, u64) = match self.lookup.find(store, i)? {
                Found::Zeros { end: z } => (None, z.min(end)),
                Found::Ref(ChunkRef::Zero) => (None, i + 1),
                Found::Ref(ChunkRef::Data(id)) => (
                    Some(store.read_chunk(&id).map_err(|e| Error::Chunk {
                        point: point.short_id().to_owned(),
                        offset: i * cs,
                        source: e,
                    })?),
                    i + 1,
                ),
            };
            if bytes.is_none() && fresh {
                // A new file reads as zeros already: its holes stay holes.
                i = next;
                continue;
            }
            for c in i..next {
                let at = c * cs;
                let len = cs.min(point.size - at) as usize;
                let want: &[u8] = bytes.as_deref().unwrap_or(&zeros[..len]);
                if compare {
                    let got = &mut have[..len];
                    file.read_exact_at(got, at)
                        .map_err(io(target, "reading the target"))?;
                    if got == want {
                        continue;
                    }
                }
                file.write_all_at(want, at)
                    .map_err(io(target, "writing the target"))?;
                written.0 += 1;
                written.1 += len as u64;
            }
            i = next;
        }
        Ok(written)
    }
}

/// Brings `target` from `from` (what it holds, `None`: unknown or nothing) to `to`.
fn bring(
    store: &Store,
    file: &File,
    target: &Path,
    from: Option<&RecoveryPoint>,
    to: &RecoveryPoint,
    compare: bool,
    fresh: bool,
) -> Result<(u64, u64)> {
    let writer = Writer {
        store,
        lookup: PointLookup::new(to)?,
        point: to,
        file,
        target,
    };
    let mut written = (0u64, 0u64);
    match from {
        Some(old) if !compare && old.chunk_size == to.chunk_size && old.size == to.size => {
            let mut ranges = Vec::new();
            cairn_store::tree::differences(store, old, to, false, |a, b| ranges.push((a, b)))?;
            for r in ranges {
                let w = writer.write(r, false, false)?;
                written = (written.0 + w.0, written.1 + w.1);
            }
        }
        _ => {
            let all = (0, to.chunk_count());
            written = writer.write(all, compare, fresh)?;
        }
    }
    file.sync_all().map_err(io(target, "flushing the target"))?;
    Ok(written)
}

/// Keeps `target` equal to `point` (see the module).
///
/// # Errors
/// A target changed behind cairn's back (without `force`), a target of another size, a
/// chunk that cannot be read, I/O errors. The target then holds the point it held, or is
/// left for the next run to finish (the journal says so).
pub fn standby(
    store: &Store,
    point: &RecoveryPoint,
    target: &Path,
    options: StandbyOptions,
) -> Result<StandbyReport> {
    let (f, shown) = files(store, target)?;
    let existed = target.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
        .map_err(io(target, "opening the target"))?;
    let find = |id: &str| -> Result<Option<RecoveryPoint>> { Ok(store.point_by_id(id)?) };
    let mut report = StandbyReport {
        to: point.id.clone(),
        ..StandbyReport::default()
    };
    let mut state: Option<State> = read_json(&f.state)?;
    // 1. An interrupted run is finished first.
    if let Some(j) = read_json::<Journal>(&f.journal)? {
        let to = find(&j.to)?.ok_or_else(|| {
            refused(format!(
                "{shown}: an interrupted run was writing point {}, which the store no longer \
                 holds: run again with --force to rewrite the target from {}",
                j.to,
                point.short_id()
            ))
        })?;
        let from = j.from.as_deref().map(find).transpose()?.flatten();
        let w = bring(
            store,
            &file,
            target,
            from.as_ref(),
            &to,
            from.is_none(),
            false,
        )?;
        state = Some(record(&file, target, &shown, &to)?);
        write_json(&f.state, &state)?;
        remove(&f.journal)?;
        report.finished_interrupted = true;
        report.chunks_written += w.0;
        report.bytes_written += w.1;
    }
    // 2. What the target holds, checked.
    let (size, mtime, inode) = looks(&file, target)?;
    let held = match &state {
        Some(s) if (s.size, s.mtime_ns, s.inode) == (size, mtime, inode) => find(&s.point)?,
        Some(s) if !options.force => {
            return Err(refused(format!(
                "{shown} changed since cairn wrote point {} to it (size, time or inode differ: \
                 was the copy started?); nothing was written. --force reads it all and \
                 rewrites what differs",
                &s.point[..12.min(s.point.len())]
            )));
        }
        Some(_) => None,
        None if existed && size > 0 && !options.force => {
            return Err(refused(format!(
                "{shown} exists and cairn never wrote it; nothing was written. --force makes it \
                 a standby disk (what differs is rewritten)"
            )));
        }
        None => None,
    };
    report.from = held.as_ref().map(|p| p.id.clone());
    if held.as_ref().is_some_and(|h| h.id == point.id) && !options.verify {
        return Ok(report);
    }
    if size != point.size {
        if file
            .metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false)
        {
            file.set_len(point.size)
                .map_err(io(target, "sizing the target"))?;
        } else {
            return Err(refused(format!(
                "{shown} is {size} bytes and the point {} bytes",
                point.size
            )));
        }
    }
    // 3. The journal, then the writes, the flush, the state; the journal goes last.
    let compare = held.is_none() && (existed && size > 0) || options.verify;
    write_json(
        &f.journal,
        &Journal {
            from: held.as_ref().map(|p| p.id.clone()),
            to: point.id.clone(),
        },
    )?;
    let fresh = !existed || size == 0;
    let w = bring(store, &file, target, held.as_ref(), point, compare, fresh)?;
    report.chunks_written += w.0;
    report.bytes_written += w.1;
    report.compared = compare;
    write_json(&f.state, &record(&file, target, &shown, point)?)?;
    remove(&f.journal)?;
    Ok(report)
}

fn record(file: &File, target: &Path, shown: &str, point: &RecoveryPoint) -> Result<State> {
    let (size, mtime_ns, inode) = looks(file, target)?;
    Ok(State {
        target: shown.to_owned(),
        point: point.id.clone(),
        size,
        mtime_ns,
        inode,
    })
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path, "removing the journal")(e)),
    }
}
