//! Points served as block devices (`cairn serve-nbd`): each client of an export gets a
//! [`PointDevice`] that reads the point's chunks at random offsets, and, when the export is
//! writable, keeps the client's writes in a copy-on-write overlay of its own.
//!
//! - **Reads** look chunk refs up in the point's tree ([`PointLookup`], shared by the
//!   export's clients) and read each chunk from its pack, checked against its id: a chunk that
//!   is missing or bad fails that read with `EIO` (naming the chunk, its pack and the disk
//!   offset) and never returns wrong bytes; the other ranges read on.
//! - **Holes.** `base:allocation` reports zero chunks (and subtrees of zeros) as
//!   hole and zero, so `nbdcopy`, `qemu-img convert` and `nbdinfo --map` skip them.
//! - **Overlay.** A write copies each chunk it touches, whole, into an unnamed temporary file
//!   (made in the store's `tmp/` folder and unlinked at once: it vanishes when the client
//!   disconnects or the server dies), and later reads of that chunk come from there. The store
//!   never sees a write, nor does another client.
//! - **Beside gc.** The server opens the store read-only: it is a registered reader for as
//!   long as it runs, its index is the one it opened, and garbage collection leaves in place
//!   every pack its swap drops while such a reader runs (the next collection after the server
//!   stops deletes them). So an exported point keeps reading the bytes it was exported with,
//!   even when gc rewrites or drops the packs under it, or the point is forgotten.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_nbd::server::{Device, DeviceError, Exports};
use cairn_nbd::{Extent, proto};
use cairn_store::{ChunkRef, Found, PointLookup, RecoveryPoint, Store};

use crate::SharedStore;

/// The most extents one block status answer describes.
const MAX_EXTENTS: usize = 4096;

/// One exported point.
struct Exported {
    point: RecoveryPoint,
    names: Vec<String>,
    description: String,
    lookup: Arc<PointLookup>,
}

/// The points a server exports.
pub struct PointExports {
    store: SharedStore,
    exports: Vec<Exported>,
    writable: bool,
    overlay_dir: PathBuf,
    /// Bytes every client's overlay may still take, together.
    overlay_room: Arc<std::sync::atomic::AtomicU64>,
}

/// The default bound on all overlays together (see [`PointExports::limit_overlays`]).
pub const DEFAULT_OVERLAY_BYTES: u64 = 64 << 30;

impl PointExports {
    /// Exports of points of the store folder `store`; with `writable`, each client gets an
    /// overlay in the store's `tmp/` folder.
    #[must_use]
    pub fn new(store: Arc<Store>, writable: bool) -> Self {
        let overlay_dir = store.spool_dir();
        Self::of(store, overlay_dir, writable)
    }

    /// Exports of points of any store (a folder, a server, a bucket); with `writable`, each
    /// client gets an overlay in `overlay_dir`.
    #[must_use]
    pub fn of(store: SharedStore, overlay_dir: PathBuf, writable: bool) -> Self {
        Self {
            store,
            exports: Vec::new(),
            writable,
            overlay_dir,
            overlay_room: Arc::new(std::sync::atomic::AtomicU64::new(DEFAULT_OVERLAY_BYTES)),
        }
    }

    /// Bounds the bytes all clients' overlays hold together: a write that would take more is
    /// refused with `ENOSPC` and a message saying so (what a client wrote before stays).
    pub fn limit_overlays(&mut self, bytes: u64) {
        self.overlay_room = Arc::new(std::sync::atomic::AtomicU64::new(bytes));
    }

    /// Exports `point` under each of `names` (the first is listed as its canonical name).
    ///
    /// # Errors
    /// A point whose tree's top is not valid.
    pub fn add(
        &mut self,
        point: RecoveryPoint,
        names: Vec<String>,
        description: String,
    ) -> crate::Result<()> {
        let lookup = Arc::new(PointLookup::new(&point)?);
        self.exports.push(Exported {
            point,
            names,
            description,
            lookup,
        });
        Ok(())
    }

    /// Whether clients get a copy-on-write overlay.
    #[must_use]
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Number of points exported.
    #[must_use]
    pub fn len(&self) -> usize {
        self.exports.len()
    }

    /// Whether nothing is exported.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.exports.is_empty()
    }

    fn by_name(&self, name: &str) -> Option<&Exported> {
        self.exports
            .iter()
            .find(|e| e.names.iter().any(|n| n == name))
    }
}

impl Exports for PointExports {
    fn list(&self) -> Vec<(String, String)> {
        self.exports
            .iter()
            .flat_map(|e| e.names.iter().map(|n| (n.clone(), e.description.clone())))
            .collect()
    }

    fn find(&self, name: &str) -> Option<(String, String)> {
        self.by_name(name)
            .and_then(|e| Some((e.names.first()?.clone(), e.description.clone())))
    }

    fn open(&self, name: &str) -> Result<Box<dyn Device>, String> {
        let e = self
            .by_name(name)
            .ok_or_else(|| format!("no export {name:?}"))?;
        let overlay = if self.writable {
            std::fs::create_dir_all(&self.overlay_dir)
                .map_err(|err| format!("{}: {err}", self.overlay_dir.display()))?;
            let file = tempfile::tempfile_in(&self.overlay_dir).map_err(|err| {
                format!(
                    "making a copy-on-write overlay in {}: {err}",
                    self.overlay_dir.display()
                )
            })?;
            Some(Overlay {
                file,
                chunks: HashSet::new(),
                room: Arc::clone(&self.overlay_room),
                taken: 0,
            })
        } else {
            None
        };
        Ok(Box::new(PointDevice {
            store: Arc::clone(&self.store),
            point: e.point.clone(),
            lookup: Arc::clone(&e.lookup),
            chunk: u64::from(e.point.chunk_size),
            overlay,
            buf: Vec::new(),
            buffered: None,
        }))
    }
}

/// A client's writes: whole chunks, at their disk offsets in a sparse temporary file.
struct Overlay {
    file: File,
    chunks: HashSet<u64>,
    /// The room left to every overlay of the server, and what this one took of it.
    room: Arc<std::sync::atomic::AtomicU64>,
    taken: u64,
}

impl Overlay {
    /// Takes `bytes` of the server's room for overlays.
    fn take(&mut self, bytes: u64) -> Result<(), DeviceError> {
        use std::sync::atomic::Ordering;
        self.room
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(bytes))
            .map_err(|left| {
                DeviceError::new(
                    proto::ENOSPC,
                    format!(
                        "the copy-on-write overlays of this server are full ({left} bytes left, \
                         {bytes} needed): serve-nbd --overlay-limit bounds them"
                    ),
                )
            })?;
        self.taken += bytes;
        Ok(())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        self.room
            .fetch_add(self.taken, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One client's view of a point (see the module).
pub struct PointDevice {
    store: SharedStore,
    point: RecoveryPoint,
    lookup: Arc<PointLookup>,
    chunk: u64,
    overlay: Option<Overlay>,
    /// The stored chunk a read took only part of, decoded (`buffered` says which): the next
    /// read of the same chunk (a client reading in pieces smaller than a chunk) takes it from
    /// here. A stored chunk never changes; the overlay is looked at first.
    buf: Vec<u8>,
    buffered: Option<u64>,
}

fn eio(message: String, offset: u64) -> DeviceError {
    DeviceError {
        errno: proto::EIO,
        message,
        offset: Some(offset),
    }
}

impl PointDevice {
    /// Chunk `i` as the store holds it, into `out` (a chunk's length).
    fn stored_chunk(&mut self, i: u64, out: &mut [u8]) -> Result<(), DeviceError> {
        let at = i * self.chunk;
        let shown = self.point.short_id().to_owned();
        let found = self
            .lookup
            .find(&*self.store, i)
            .map_err(|e| eio(format!("point {shown}: {e}"), at))?;
        let id = match found {
            Found::Zeros { .. } | Found::Ref(ChunkRef::Zero) => {
                out.fill(0);
                return Ok(());
            }
            Found::Ref(ChunkRef::Data(id)) => id,
        };
        let failed = self
            .store
            .read_chunks(std::slice::from_ref(&id), vec![&mut *out])
            .map_err(|e| eio(format!("point {shown}, chunk {id}: {e}"), at))?
            .pop()
            .flatten();
        match failed {
            None => Ok(()),
            Some(e) => Err(eio(format!("point {shown} at disk offset {at}: {e}"), at)),
        }
    }

    /// The length of chunk `i` (the last one may be short).
    fn chunk_len(&self, i: u64) -> usize {
        (self.chunk.min(self.point.size - i * self.chunk)) as usize
    }

    /// Copies chunk `i` into the overlay if it is not there yet.
    fn own(&mut self, i: u64) -> Result<(), DeviceError> {
        if self.overlay.as_ref().is_some_and(|o| o.chunks.contains(&i)) {
            return Ok(());
        }
        let len = self.chunk_len(i);
        let mut data = vec![0u8; len];
        self.stored_chunk(i, &mut data)?;
        let Some(o) = self.overlay.as_mut() else {
            return Err(DeviceError::new(proto::EPERM, "the export is read-only"));
        };
        o.take(len as u64)?;
        o.file
            .write_all_at(&data, i * self.chunk)
            .map_err(|e| DeviceError::new(proto::ENOSPC, format!("writing the overlay: {e}")))?;
        o.chunks.insert(i);
        Ok(())
    }

    fn write_bytes(
        &mut self,
        offset: u64,
        data: Option<&[u8]>,
        len: u64,
    ) -> Result<(), DeviceError> {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let i = at / self.chunk;
            let stop = end.min((i + 1) * self.chunk);
            self.own(i)?;
            let n = (stop - at) as usize;
            let zeros;
            let part = match data {
                Some(d) => &d[(at - offset) as usize..(at - offset) as usize + n],
                None => {
                    zeros = vec![0u8; n];
                    &zeros[..]
                }
            };
            if let Some(o) = self.overlay.as_mut() {
                o.file.write_all_at(part, at).map_err(|e| {
                    DeviceError::new(proto::ENOSPC, format!("writing the overlay: {e}"))
                })?;
            }
            at = stop;
        }
        Ok(())
    }
}

impl Device for PointDevice {
    fn size(&self) -> u64 {
        self.point.size
    }

    fn read_only(&self) -> bool {
        self.overlay.is_none()
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let end = offset + buf.len() as u64;
        let mut at = offset;
        let mut chunk_buf = std::mem::take(&mut self.buf);
        let result = (|| {
            while at < end {
                let i = at / self.chunk;
                let start = i * self.chunk;
                let stop = end.min(start + self.chunk);
                let dst = &mut buf[(at - offset) as usize..(stop - offset) as usize];
                if let Some(o) = self.overlay.as_ref()
                    && o.chunks.contains(&i)
                {
                    o.file
                        .read_exact_at(dst, at)
                        .map_err(|e| eio(format!("reading the overlay: {e}"), at))?;
                } else if at == start && stop - start == self.chunk_len(i) as u64 {
                    self.stored_chunk(i, dst)?;
                } else {
                    if self.buffered != Some(i) {
                        self.buffered = None;
                        chunk_buf.resize(self.chunk_len(i), 0);
                        self.stored_chunk(i, &mut chunk_buf)?;
                        self.buffered = Some(i);
                    }
                    dst.copy_from_slice(&chunk_buf[(at - start) as usize..(stop - start) as usize]);
                }
                at = stop;
            }
            Ok(())
        })();
        self.buf = chunk_buf;
        result
    }

    fn allocation(&mut self, offset: u64, length: u32) -> Result<Vec<Extent>, DeviceError> {
        let end = (offset + u64::from(length)).min(self.point.size);
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end && out.len() < MAX_EXTENTS {
            let i = at / self.chunk;
            let owned = self.overlay.as_ref().is_some_and(|o| o.chunks.contains(&i));
            let (zero, stop) = if owned {
                (false, (i + 1) * self.chunk)
            } else {
                match self
                    .lookup
                    .find(&*self.store, i)
                    .map_err(|e| eio(format!("point {}: {e}", self.point.short_id()), at))?
                {
                    Found::Zeros { end } => (true, end.saturating_mul(self.chunk)),
                    Found::Ref(ChunkRef::Zero) => (true, (i + 1) * self.chunk),
                    Found::Ref(ChunkRef::Data(_)) => (false, (i + 1) * self.chunk),
                }
            };
            // A stretch of zeros may run a little past the request (the protocol allows it),
            // never past the disk.
            let stop = stop.min(self.point.size).min(at + u64::from(u32::MAX >> 1));
            let flags = if zero {
                proto::STATE_HOLE | proto::STATE_ZERO
            } else {
                0
            };
            let len = (stop - at) as u32;
            match out.last_mut() {
                Some(e) if e.flags == flags && e.length.checked_add(len).is_some() => {
                    e.length += len;
                }
                _ => out.push(Extent { length: len, flags }),
            }
            at = stop;
        }
        Ok(out)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.write_bytes(offset, Some(data), data.len() as u64)
    }

    fn write_zeroes(&mut self, offset: u64, length: u32) -> Result<(), DeviceError> {
        self.write_bytes(offset, None, u64::from(length))
    }
}
