//! A restore onto a disk that already holds a copy of the disk (an older state, a copy that
//! was booted, a damaged one): the target is read in order, each chunk's bytes hashed and
//! compared with the point's chunk id (a chunk id is the BLAKE3 of its bytes), and only the
//! chunks that differ are read from the store and written, in place. On a large disk that
//! changed little, it reads the target once and writes what changed; the store sends only
//! those chunks (through a server too).
//!
//! It writes in place: a run stopped halfway leaves a target that is part old, part new, and
//! the next run finishes it (it compares again). The target is flushed (fsync) before the run
//! says it is done. Nothing is written before every check passed: the target exists, is a file
//! or block device at least as large as the point (a file of another size is set to the
//! point's), and `force` says it may be written over.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use cairn_store::tree::{Body, Walk};
use cairn_store::{ChunkId, ChunkRef, RecoveryPoint, StoreRead};

use crate::output::io_err;
use crate::{Error, Result};

/// What a changed-only restore read and wrote (in a dry run: would write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// Bytes of the target read and hashed.
    pub bytes_read: u64,
    /// Chunks compared.
    pub chunks_compared: u64,
    /// Chunks that differed, written.
    pub chunks_written: u64,
    /// Their bytes.
    pub bytes_written: u64,
}

/// Chunks compared (read from the target) at once, and fetched from the store at once.
const BATCH: usize = 64;

/// Restores `point` onto the existing file or block device `out`, writing only the chunks
/// whose bytes differ (see the module). With `dry_run` the target is read and compared, and
/// what would be written counted, but nothing is written (nor `force` needed). `progress` gets
/// the bytes compared so far.
///
/// # Errors
/// A target that is missing, not a file or device, smaller than the point (a device), or
/// given without `force`; a tree or data chunk that cannot be read (nothing after it is
/// written); I/O errors.
pub fn restore_changed(
    store: &dyn StoreRead,
    point: &RecoveryPoint,
    out: &Path,
    force: bool,
    dry_run: bool,
    progress: &dyn Fn(u64),
) -> Result<Changed> {
    let (file, len) = open_target(out, force, dry_run, point.size)?;
    let cs = u64::from(point.chunk_size);
    let mut run = Run {
        store,
        point,
        file: &file,
        target_len: len,
        dry_run,
        out,
        cs,
        done: Changed::default(),
        differing: Vec::new(),
        have: vec![0u8; BATCH * cs as usize],
        fetched: vec![0u8; BATCH * cs as usize],
    };
    let mut walk = Walk::new(store, point)?;
    while let Some(extent) = walk.next_extent()? {
        let end = (extent.first + extent.count).min(point.chunk_count());
        match extent.body {
            Body::Unreadable(what) => {
                return Err(Error::Chunk {
                    point: point.id.clone(),
                    offset: extent.first * cs,
                    source: cairn_store::Error::Point(format!(
                        "tree chunk {}: {what}; nothing past this offset was written",
                        extent.id
                    )),
                });
            }
            Body::Zero => {
                let mut i = extent.first;
                while i < end {
                    let n = (end - i).min(BATCH as u64);
                    let wants = vec![ChunkRef::Zero; n as usize];
                    run.compare(i, &wants)?;
                    progress((i + n).min(point.chunk_count()) * cs);
                    i += n;
                }
            }
            Body::Refs(refs) => {
                let refs = &refs[..(end - extent.first) as usize];
                for (k, part) in refs.chunks(BATCH).enumerate() {
                    let first = extent.first + (k * BATCH) as u64;
                    run.compare(first, part)?;
                    progress((first + part.len() as u64) * cs);
                }
            }
        }
    }
    run.write_differing()?;
    file.sync_all()
        .map_err(io_err(out, "flushing the target"))?;
    Ok(run.done)
}

/// Opens the target: it must exist, be a file or a block device, hold at least the point
/// (a file is sized to it), and `force` must be given (unless `dry_run`: then it is only
/// read). Returns it and the bytes it holds, as read.
fn open_target(out: &Path, force: bool, dry_run: bool, size: u64) -> Result<(File, u64)> {
    use std::os::unix::fs::FileTypeExt;
    let m = std::fs::metadata(out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Refused(format!(
                "{} does not exist: --changed-only writes onto an existing disk (without it, \
                 restore writes a new file)",
                out.display()
            ))
        } else {
            io_err(out, "reading the target's metadata")(e)
        }
    })?;
    let device = m.file_type().is_block_device();
    if !device && !m.is_file() {
        return Err(Error::Refused(format!(
            "{} is neither a file nor a block device: --changed-only reads the target back",
            out.display()
        )));
    }
    if !force && !dry_run {
        return Err(Error::Refused(format!(
            "{} holds data; --changed-only rewrites in place what differs from the point: pass \
             --force too to say it may be written over",
            out.display()
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(!dry_run)
        .open(out)
        .map_err(io_err(out, "opening the target"))?;
    let have = if device {
        use std::io::Seek;
        (&file)
            .seek(std::io::SeekFrom::End(0))
            .map_err(io_err(out, "reading the device's size"))?
    } else {
        m.len()
    };
    if device && have < size {
        return Err(Error::Refused(format!(
            "{} holds {have} bytes and the point {size}: nothing was written",
            out.display()
        )));
    }
    if !device && have != size && !dry_run {
        file.set_len(size)
            .map_err(io_err(out, "setting the file to the point's size"))?;
        return Ok((file, size));
    }
    Ok((file, have))
}

/// One changed-only restore under way.
struct Run<'a> {
    store: &'a dyn StoreRead,
    point: &'a RecoveryPoint,
    file: &'a File,
    /// The target's length as read: bytes past it read as zeros (a dry run on a shorter file).
    target_len: u64,
    dry_run: bool,
    out: &'a Path,
    cs: u64,
    done: Changed,
    /// Chunks found to differ, not written yet: (index, what the point holds there).
    differing: Vec<(u64, ChunkRef)>,
    /// The target's bytes of a batch.
    have: Vec<u8>,
    /// Chunks fetched from the store.
    fetched: Vec<u8>,
}

impl Run<'_> {
    /// The length of chunk `i` (the disk's last chunk may be short).
    fn len(&self, i: u64) -> usize {
        self.cs.min(self.point.size - i * self.cs) as usize
    }

    /// Reads the target's chunks `first..first + wants.len()` and notes those that differ.
    fn compare(&mut self, first: u64, wants: &[ChunkRef]) -> Result<()> {
        let at = first * self.cs;
        let last = first + wants.len() as u64 - 1;
        let bytes = (last * self.cs + self.len(last) as u64 - at) as usize;
        let have = &mut self.have[..bytes];
        // Past the end of a file a dry run did not size: what the sized file would hold.
        let there = (self.target_len.saturating_sub(at) as usize).min(bytes);
        self.file
            .read_exact_at(&mut have[..there], at)
            .map_err(io_err(
                self.out,
                &format!("reading the target at offset {at}"),
            ))?;
        have[there..].fill(0);
        self.done.bytes_read += bytes as u64;
        // Callers ask for the key before a restore starts; this is the last guard.
        let keys = self.store.chunk_keys().ok_or_else(|| {
            Error::Store(cairn_store::Error::Internal(
                "a restore onto a copy of an encrypted store given no key".into(),
            ))
        })?;
        for (k, want) in wants.iter().enumerate() {
            let i = first + k as u64;
            let start = k * self.cs as usize;
            let got = &self.have[start..start + self.len(i)];
            let same = match want {
                ChunkRef::Zero => cairn_store::chunk::is_zero(got),
                ChunkRef::Data(id) => keys.id_of(got) == *id,
            };
            self.done.chunks_compared += 1;
            if !same {
                self.differing.push((i, *want));
            }
        }
        if self.differing.len() >= BATCH {
            self.write_differing()?;
        }
        Ok(())
    }

    /// Fetches the differing chunks from the store (zeros need none) and writes them (a dry
    /// run counts them only).
    fn write_differing(&mut self) -> Result<()> {
        let differing = std::mem::take(&mut self.differing);
        if self.dry_run {
            for (i, _) in &differing {
                self.done.chunks_written += 1;
                self.done.bytes_written += self.len(*i) as u64;
            }
            return Ok(());
        }
        for batch in differing.chunks(BATCH) {
            let ids: Vec<ChunkId> = batch
                .iter()
                .filter_map(|(_, r)| match r {
                    ChunkRef::Data(id) => Some(*id),
                    ChunkRef::Zero => None,
                })
                .collect();
            let places: Vec<usize> = batch
                .iter()
                .filter(|(_, r)| matches!(r, ChunkRef::Data(_)))
                .map(|(i, _)| self.len(*i))
                .collect();
            let slots: Vec<&mut [u8]> = self
                .fetched
                .chunks_mut(self.cs as usize)
                .zip(&places)
                .map(|(slot, place)| &mut slot[..*place])
                .collect();
            let errors = self.store.read_chunks(&ids, slots)?;
            let mut data = self.fetched.chunks(self.cs as usize).zip(errors);
            let zeros = vec![0u8; self.cs as usize];
            for (i, r) in batch {
                let (at, len) = (i * self.cs, self.len(*i));
                let bytes: &[u8] = match r {
                    ChunkRef::Zero => &zeros[..len],
                    ChunkRef::Data(_) => match data.next() {
                        Some((bytes, None)) => &bytes[..len],
                        Some((_, Some(e))) => {
                            return Err(Error::Chunk {
                                point: self.point.id.clone(),
                                offset: at,
                                source: e,
                            });
                        }
                        None => return Err(Error::Refused("a chunk read went missing".into())),
                    },
                };
                self.file
                    .write_all_at(bytes, at)
                    .map_err(io_err(self.out, &format!("writing at offset {at}")))?;
                self.done.chunks_written += 1;
                self.done.bytes_written += len as u64;
            }
        }
        Ok(())
    }
}
