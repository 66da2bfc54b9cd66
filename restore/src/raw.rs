//! A point restored as a raw image: sparse in a regular file (holes stay holes), every byte in
//! order to a pipe or a block device.

use std::io::{BufWriter, Write};
use std::path::Path;

use cairn_store::{RecoveryPoint, StoreRead};

use crate::output::{Output, io_err};
use crate::{PointReader, Restored, Result};

/// Bytes per write of a raw restore to a pipe or standard output.
const BOUNCE_BYTES: usize = 1 << 20;

pub(crate) fn restore_raw<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    store: &'env dyn StoreRead,
    point: &RecoveryPoint,
    out: &Path,
    target: &Output,
    ignore_errors: bool,
    progress: &dyn Fn(u64),
) -> Result<Restored> {
    let mut reader = PointReader::start(scope, store, point, None, ignore_errors)?;
    // A regular file is written sparse; stdout, a block device (an LV, an iSCSI disk) or a
    // pipe get every byte, zeros included, in order.
    if let Some(mut w) = target.at_offsets()? {
        // Sized first, so that every write lands inside the file: measured faster here than
        // writes that extend it past holes (4 of 4 interleaved runs, by 0.4-0.8 s on 4 GiB).
        w.set_len(point.size)
            .map_err(io_err(out, "setting the length"))?;
        // Holes stay holes; runs of data chunks are written in pieces, past the page cache
        // where the file system allows (see `direct`).
        while let Some((at, run)) = reader.next_data()? {
            w.write_at(at, run).map_err(io_err(out, "writing"))?;
            progress(at + run.len() as u64);
        }
        w.finish().map_err(io_err(out, "writing"))?;
    } else {
        let mut sink = BufWriter::with_capacity(BOUNCE_BYTES, target.writer()?);
        let zeros = vec![0u8; BOUNCE_BYTES];
        let mut done = 0u64;
        let fill = |sink: &mut BufWriter<_>, done: &mut u64, to: u64| -> Result<()> {
            while *done < to {
                let n = (to - *done).min(BOUNCE_BYTES as u64) as usize;
                sink.write_all(&zeros[..n])
                    .map_err(io_err(out, &format!("writing at offset {done}")))?;
                *done += n as u64;
                progress(*done);
            }
            Ok(())
        };
        while let Some((at, run)) = reader.next_data()? {
            fill(&mut sink, &mut done, at)?;
            sink.write_all(run)
                .map_err(io_err(out, &format!("writing at offset {at}")))?;
            done = at + run.len() as u64;
            progress(done);
        }
        fill(&mut sink, &mut done, point.size)?;
        sink.flush().map_err(io_err(out, "flushing"))?;
    }
    // No fsync, as cp, borg and restic: what went past the page cache is on the device, the
    // rest (the file's metadata, a last piece) the kernel writes back; `sync` the file when it
    // must be on disk before going on.
    Ok(Restored {
        files: vec![out.to_path_buf()],
        bytes: point.size,
        damaged: reader.finish()?,
    })
}
