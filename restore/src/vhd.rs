//! A point restored as one VHD (dynamic, or differencing against a base point), or as a chain
//! of VHDs (the chain's first point dynamic, each later one differencing on the one before).

use std::io::{BufWriter, Write};
use std::path::Path;

use cairn_store::{RecoveryPoint, StoreRead};
use cairn_vhd::format::DEFAULT_BLOCK_SIZE;
use cairn_vhd::{DiskSpec, ParentSpec, vhd_timestamp, write_sparse};

use crate::output::{self, Output, io_err};
use crate::reader::{self, Needed, PointReader};
use crate::{Damaged, Error, Options, Restored, Result};

/// The file name cairn gives the VHD of a point: `<vm>-<disk>-<time>-<id12>.vhd`, the time in
/// UTC. The names are made readable and safe on any file system (each run of characters other
/// than ASCII letters, digits, `.`, `_` and `-` becomes one `_`, at most 48 kept); the id keeps the
/// name unique.
#[must_use]
pub fn vhd_file_name(p: &RecoveryPoint) -> String {
    format!(
        "{}-{}-{}-{}.vhd",
        file_label(&p.vm),
        file_label(&p.disk),
        p.time.format("%Y%m%dT%H%M%SZ"),
        p.short_id()
    )
}

/// A name as a readable piece of a file name (see [`vhd_file_name`]).
fn file_label(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out: String = out
        .trim_matches(|c| c == '_' || c == '.')
        .chars()
        .take(48)
        .collect();
    if out.is_empty() { "disk".into() } else { out }
}

/// The file name of the `index`-th VHD of a chain: the index first, so that name order is chain
/// order whatever the points' times.
#[must_use]
pub fn chain_file_name(index: usize, p: &RecoveryPoint) -> String {
    format!("{index:03}-{}", vhd_file_name(p))
}

fn point_uuid(p: &RecoveryPoint) -> uuid::Uuid {
    let mut b = [0u8; 16];
    if hex::decode_to_slice(p.id.as_str(), &mut b).is_err() {
        b = *blake3::hash(p.id.as_bytes())
            .as_bytes()
            .first_chunk::<16>()
            .unwrap_or(&[0; 16]);
    }
    uuid::Uuid::from_bytes(b)
}

/// What the VHD of a point holds, known before its first byte: its spec, its parent's and
/// which blocks it stores.
pub(crate) struct VhdPlan {
    spec: DiskSpec,
    parent: Option<ParentSpec>,
    allocated: Vec<bool>,
    per_block: u64,
}

impl VhdPlan {
    /// The VHD of `point`: dynamic, or differencing against `base` (with the file name the
    /// differencing VHD gives as its parent's) when given.
    ///
    /// # Errors
    /// A point that is not whole sectors or too large for a VHD, a base of another size, the
    /// store's errors.
    pub(crate) fn new(
        store: &dyn StoreRead,
        point: &RecoveryPoint,
        base: Option<(&RecoveryPoint, String)>,
        ignore_errors: bool,
    ) -> Result<Self> {
        if !point.size.is_multiple_of(512) {
            return Err(Error::Refused(format!(
                "point {} is {} bytes, not whole sectors: restore it as raw",
                point.short_id(),
                point.size
            )));
        }
        if point.size > cairn_vhd::format::MAX_DISK_SIZE {
            return Err(Error::Refused(format!(
                "point {} is a disk of {} bytes, larger than a VHD holds (2040 GiB): restore it \
                 as raw (--format raw)",
                point.short_id(),
                point.size
            )));
        }
        let cs = u64::from(point.chunk_size);
        let per_block = (u64::from(DEFAULT_BLOCK_SIZE) / cs).max(1);
        if let Some((bp, _)) = &base
            && (bp.size != point.size || bp.chunk_size != point.chunk_size)
        {
            return Err(Error::Refused(format!(
                "base point {} is not of the same disk size",
                bp.short_id()
            )));
        }
        let allocated = reader::blocks_with_data(
            store,
            point,
            base.as_ref().map(|b| b.0),
            per_block,
            ignore_errors,
        )?;
        Ok(Self {
            spec: DiskSpec {
                size: point.size,
                block_size: DEFAULT_BLOCK_SIZE,
                uuid: point_uuid(point),
                timestamp: vhd_timestamp(point.time.timestamp()),
            },
            parent: base.map(|(bp, name)| ParentSpec {
                uuid: point_uuid(bp),
                timestamp: vhd_timestamp(bp.time.timestamp()),
                relative_path: name,
                absolute_path: String::new(),
            }),
            allocated,
            per_block,
        })
    }

    /// The bytes the VHD will take.
    ///
    /// # Errors
    /// A spec the VHD writer refuses.
    pub(crate) fn size(&self) -> Result<u64> {
        Ok(cairn_vhd::sparse_size(
            &self.spec,
            self.parent.as_ref(),
            &self.allocated,
        )?)
    }

    /// Chunks of the point in one block of the VHD.
    pub(crate) fn chunks_per_block(&self) -> u64 {
        self.per_block
    }

    /// The blocks the VHD stores.
    pub(crate) fn blocks(&self) -> u64 {
        self.allocated.iter().filter(|a| **a).count() as u64
    }

    /// Writes the VHD to `target` (`out` names it in errors). Returns the bytes written and
    /// the ranges written as zeros (with errors ignored).
    pub(crate) fn write<'scope, 'env>(
        self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        store: &'env dyn StoreRead,
        point: &RecoveryPoint,
        (out, target): (&Path, &mut dyn Write),
        ignore_errors: bool,
        progress: &dyn Fn(u64),
    ) -> Result<(u64, Vec<Damaged>)> {
        let per_block = self.per_block;
        // Only the chunks of blocks the VHD holds are read.
        let needed = Needed {
            blocks: self.allocated.clone(),
            per_block,
        };
        let mut reader = PointReader::start(scope, store, point, Some(needed), ignore_errors)?;
        let mut sink = BufWriter::with_capacity(1 << 20, target);
        let bs = u64::from(DEFAULT_BLOCK_SIZE);
        let mut failure: Option<Error> = None;
        let written = write_sparse(
            &mut sink,
            &self.spec,
            self.parent.as_ref(),
            &self.allocated,
            |b, buf| {
                let first = u64::from(b) * per_block;
                let start = u64::from(b) * bs;
                let len = (point.size - start).min(bs) as usize;
                buf.fill(0);
                if let Err(e) = reader.read_chunks(first, &mut buf[..len]) {
                    let text = e.to_string();
                    failure = Some(e);
                    return Err(std::io::Error::other(text));
                }
                progress(start + len as u64);
                Ok(())
            },
        );
        if let Some(e) = failure {
            return Err(e);
        }
        let written = written.map_err(|e| e.in_file(out))?;
        sink.flush().map_err(io_err(out, "flushing"))?;
        Ok((written, reader.finish()?))
    }
}

/// Writes the VHD of `point` to `out` (see [`VhdPlan`]).
fn write_point_vhd<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    store: &'env dyn StoreRead,
    point: &RecoveryPoint,
    base: Option<(&RecoveryPoint, String)>,
    out: (&Path, &mut dyn Write),
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<(u64, Vec<Damaged>)> {
    VhdPlan::new(store, point, base, ignore_errors)?.write(
        scope,
        store,
        point,
        out,
        ignore_errors,
        progress,
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "the one VHD restore, beside restore_raw and restore_chain"
)]
pub(crate) fn restore_vhd<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    store: &'env dyn StoreRead,
    point: &RecoveryPoint,
    base: Option<&RecoveryPoint>,
    out: &Path,
    target: &Output,
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<Restored> {
    let base = match base {
        Some(b) => {
            if b.vm != point.vm || b.disk != point.disk {
                return Err(Error::Refused(format!(
                    "base point {} is of {}/{}, not of {}/{}",
                    b.short_id(),
                    b.vm,
                    b.disk,
                    point.vm,
                    point.disk
                )));
            }
            // The base's file as the first of a chain restored from it (`--format vhd-chain
            // --from BASE`), in the same folder.
            Some((b, chain_file_name(0, b)))
        }
        None => None,
    };
    let mut w = target.writer()?;
    let (bytes, damaged) = write_point_vhd(
        scope,
        store,
        point,
        base,
        (out, &mut w),
        ignore_errors,
        progress,
    )?;
    Ok(Restored {
        files: vec![out.to_path_buf()],
        bytes,
        damaged,
    })
}

/// The points a chain ending at `point` holds, oldest first: from `from` (checked to be an
/// earlier point of the same disk), else from the newest key backup at or before `point`, else
/// from the disk's oldest point.
fn chain_points(
    store: &dyn StoreRead,
    point: &RecoveryPoint,
    from: Option<&RecoveryPoint>,
) -> Result<Vec<RecoveryPoint>> {
    let order = |p: &RecoveryPoint| (p.time, p.committed);
    let mut points: Vec<RecoveryPoint> = store
        .points()?
        .into_iter()
        .filter(|p| p.same_disk(point) && order(p) <= order(point))
        .collect();
    points.sort_by_key(order);
    let start = match from {
        Some(f) => points.iter().position(|p| p.id == f.id).ok_or_else(|| {
            Error::Refused(format!(
                "--from {} is not a point of {}/{} at or before {}",
                f.short_id(),
                point.vm,
                point.disk,
                point.short_id()
            ))
        })?,
        None => points.iter().rposition(|p| p.stats.key).unwrap_or(0),
    };
    Ok(points.split_off(start))
}

pub(crate) fn restore_chain<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    store: &'env dyn StoreRead,
    point: &RecoveryPoint,
    out: &Path,
    opts: &Options<'_>,
    progress: &dyn Fn(u64),
) -> Result<Restored> {
    let points = chain_points(store, point, opts.chain_from)?;
    let created = output::chain_folder(out, opts.force)?;
    let written = write_chain(scope, store, &points, out, opts.ignore_errors, progress);
    match written {
        Ok((restored, staged)) => {
            for s in staged {
                s.commit()?;
            }
            Ok(restored)
        }
        Err(e) => {
            if created {
                // The temporary files are gone with `staged`: the folder is empty again.
                let _ = std::fs::remove_dir(out);
            }
            Err(e)
        }
    }
}

/// Writes each VHD of a chain under a temporary name; returns them for renaming.
fn write_chain<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    store: &'env dyn StoreRead,
    points: &[RecoveryPoint],
    out: &Path,
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<(Restored, Vec<output::Staged>)> {
    let mut restored = Restored::default();
    let mut staged = Vec::new();
    let mut prev: Option<(RecoveryPoint, String)> = None;
    for (i, p) in points.iter().enumerate() {
        let name = chain_file_name(i, p);
        let path = out.join(&name);
        let file = output::Staged::new(&path);
        let f = file.create()?;
        let base = match &prev {
            Some((bp, bname)) if bp.size == p.size && bp.chunk_size == p.chunk_size => {
                Some((bp, bname.clone()))
            }
            _ => None,
        };
        let tmp = file.tmp().to_path_buf();
        let mut f = output::in_order(&f, &tmp)?;
        staged.push(file);
        let (bytes, mut damaged) = write_point_vhd(
            scope,
            store,
            p,
            base,
            (&tmp, &mut f),
            ignore_errors,
            progress,
        )?;
        restored.bytes += bytes;
        restored.damaged.append(&mut damaged);
        restored.files.push(path);
        prev = Some((p.clone(), name));
    }
    Ok((restored, staged))
}
