//! A store whose packs live in a bucket (`cairn init STORE --packs s3://BUCKET/PREFIX`).
//!
//! ```text
//! PREFIX/cairn.toml                          a copy of the store's config: claims the prefix
//! PREFIX/packs/ab/<pack id>.pack             a pack, as a local store keeps it
//! PREFIX/packs/ab/<pack id>.frames           its frame list (pack::encode_frame_list)
//! PREFIX/points/<vm>/<disk>/<time>-<id>.json every point's root file
//! PREFIX/forgotten                           ids of forgotten points
//! ```
//! `STORE` keeps the config and the index, which is a cache of what the bucket holds: `cairn
//! repair --rebuild-index` makes it again from the frame lists and root files alone, on any
//! machine.
//!
//! A pack is written in `STORE/packs` as in a local store; once full (sealed) it is uploaded,
//! then its frame list, then the local copy is removed, by the thread that seals it while the
//! next pack fills. A frame list is written only after its pack is whole in the bucket, and a
//! commit waits for every pack and frame list of its session before it indexes a chunk, then
//! puts the root files in the bucket before it writes them here: nothing is committed that
//! the bucket does not hold. Objects are written once and never renamed; their names are
//! random (pack ids), so no conditional put is needed. An upload that fails or is killed
//! leaves objects no index entry names: garbage collection deletes them once they are older
//! than its grace period (another process may be uploading the packs it will commit).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::chunk::{self, ChunkId, EncodedChunk};
use crate::config::{CONFIG_FILE, PacksConfig, StoreConfig};
use crate::error::{Error, Result};
use crate::index::Location;
use crate::objects::{Bucket, BucketConfig, ObjectInfo, Objects};
use crate::pack::{self, FRAME_HEADER_SIZE, FrameHeader, PackId, PackScan, PackWriter};
use crate::store::Store;

/// The bucket's copy of the store's config. It is written first, by `init`: a second `init`
/// on the same prefix finds it and refuses (two stores never share a prefix).
pub const CONFIG_OBJECT: &str = CONFIG_FILE;
/// The bucket's copy of `STORE/forgotten`.
pub const FORGOTTEN_OBJECT: &str = crate::catalogue::FORGOTTEN_FILE;

/// Frames read by one ranged GET at most (adjacent frames are read together).
const MAX_RANGE: u64 = 4 << 20;
/// Bytes between two wanted frames that are read rather than asked for apart.
const MAX_GAP: u64 = 256 << 10;
/// Requests in flight for one batch of reads, a rebuild or a listing of root files.
const IN_FLIGHT: usize = 16;

/// The object of pack `id`.
#[must_use]
pub fn pack_object(id: &PackId) -> String {
    let h = id.to_hex();
    format!("packs/{}/{h}.pack", &h[..2])
}

/// The object of pack `id`'s frame list.
#[must_use]
pub fn frames_object(id: &PackId) -> String {
    let h = id.to_hex();
    format!("packs/{}/{h}.frames", &h[..2])
}

/// The pack an object under `packs/` belongs to (its `.pack` or its `.frames`).
#[must_use]
pub fn object_pack(name: &str) -> Option<PackId> {
    let file = name.rsplit('/').next()?;
    let stem = file
        .strip_suffix(".pack")
        .or_else(|| file.strip_suffix(".frames"))?;
    PackId::from_hex(stem)
}

/// Connects to the bucket of `packs` (credentials from the environment).
///
/// # Errors
/// A URL that is not `s3://BUCKET/PREFIX`, credentials missing, a plain-http endpoint off this
/// machine.
pub fn connect(packs: &PacksConfig) -> Result<Arc<dyn Objects>> {
    let config = BucketConfig::from_url(
        &packs.url,
        packs.endpoint.as_deref(),
        packs.region.as_deref(),
    )?;
    Ok(Arc::new(Bucket::open(&config)?))
}

/// The bucket of `packs`, connected on first use: a command that reads only the index (`list`,
/// `report`) needs no credentials, and one that needs the bucket fails at its first request
/// with what [`connect`] says.
#[must_use]
pub fn connect_lazily(packs: &PacksConfig) -> Arc<dyn Objects> {
    Arc::new(Lazy {
        packs: packs.clone(),
        bucket: std::sync::OnceLock::new(),
    })
}

#[derive(Debug)]
struct Lazy {
    packs: PacksConfig,
    bucket: std::sync::OnceLock<std::result::Result<Arc<dyn Objects>, String>>,
}

impl Lazy {
    fn bucket(&self) -> Result<&Arc<dyn Objects>> {
        self.bucket
            .get_or_init(|| connect(&self.packs).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Usage(e.clone()))
    }
}

impl Objects for Lazy {
    fn describe(&self) -> String {
        match &self.packs.endpoint {
            Some(e) => format!("{} at {e}", self.packs.url),
            None => self.packs.url.clone(),
        }
    }

    fn put_file(&self, name: &str, path: &Path) -> Result<()> {
        self.bucket()?.put_file(name, path)
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.bucket()?.put(name, bytes)
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.bucket()?.get_range(name, offset, len)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.bucket()?.get(name)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.bucket()?.list(prefix)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.bucket()?.delete(name)
    }
}

/// Makes a full pack durable where the store keeps its packs: synced here, and for a store in
/// a bucket uploaded with its frame list, then removed here. Cheap to clone into the thread
/// that seals.
#[derive(Clone, Debug)]
pub struct Sealer {
    bucket: Option<Arc<dyn Objects>>,
    trees: TreeCache,
}

impl Sealer {
    /// Seals `w`; returns the bytes it takes where it is kept (a pack in a bucket: with its
    /// frame list).
    ///
    /// # Errors
    /// I/O errors, the bucket's failures (after its retries).
    pub fn seal(&self, mut w: PackWriter) -> Result<u64> {
        let Some(bucket) = &self.bucket else {
            w.sync()?;
            return Ok(w.len());
        };
        // Made durable by the bucket, not here: the copy here only has to be read back whole.
        w.flush()?;
        let list = w.frame_list();
        bucket.put_file(&pack_object(&w.id()), w.path())?;
        // Only after the pack is whole: a frame list says its pack is there.
        bucket.put(&frames_object(&w.id()), &list)?;
        // Its tree chunks stay readable here (the next backup walks them).
        if let Ok(file) = std::fs::File::open(w.path()) {
            let mut stored = Vec::new();
            for f in w
                .frames()
                .iter()
                .filter(|f| f.header.kind == chunk::ChunkKind::Tree)
            {
                if pack::read_frame_into(&file, w.path(), f.offset, &mut stored).is_ok() {
                    self.trees.put(&f.header, &stored);
                }
            }
        }
        // The bucket holds it now; reads of it go there.
        match std::fs::remove_file(w.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(w.path(), "removing an uploaded pack")(e)),
        }
        Ok(w.len() + list.len() as u64)
    }
}

/// Where a store in a bucket keeps copies of its tree chunks (`STORE/cache/trees/ab/ID`).
pub const TREE_CACHE: &str = "cache/trees";

/// Copies of tree chunks' frames on this machine, for a store in a bucket: a walk of a point's
/// tree (every backup reads its parent's, every restore its point's) reads them one after the
/// other, and each would otherwise be a round trip. Only a cache: an entry is checked against
/// its id (decoded and hashed) each time it is read, one that is not what it says is dropped
/// and read from the bucket again, and gc drops the entries of chunks it removes. Entries are
/// written without fsync (a torn one fails its check).
#[derive(Clone, Debug)]
pub struct TreeCache(std::path::PathBuf);

impl TreeCache {
    fn path(&self, id: &ChunkId) -> std::path::PathBuf {
        let h = id.to_hex();
        self.0.join(&h[..2]).join(h)
    }

    /// The cached frame of `id`: its header, its stored bytes into `stored`.
    pub(crate) fn get(&self, id: &ChunkId, stored: &mut Vec<u8>) -> Option<FrameHeader> {
        let path = self.path(id);
        let bytes = std::fs::read(&path).ok()?;
        let good = pack::parse_frame(&bytes, stored)
            .ok()
            .filter(|h| h.id == *id && chunk::decode(id, h.codec, h.plain_len, stored).is_ok());
        if good.is_none() {
            let _ = std::fs::remove_file(&path);
        }
        good
    }

    /// Keeps a copy of a tree chunk's frame (best effort: a cache).
    pub(crate) fn put(&self, header: &FrameHeader, stored: &[u8]) {
        let path = self.path(&header.id);
        if path.exists() {
            return;
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER_SIZE as usize + stored.len());
        pack::encode_frame(
            &EncodedChunk {
                id: header.id,
                kind: header.kind,
                codec: header.codec,
                plain_len: header.plain_len,
                bytes: stored.to_vec(),
            },
            &mut frame,
        );
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&tmp, &frame))
            .and_then(|()| std::fs::rename(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
    }

    /// Drops the entry of `id`, if any.
    pub(crate) fn drop_entry(&self, id: &ChunkId) {
        let _ = std::fs::remove_file(self.path(id));
    }
}

/// One read of a batch: the chunk, where it is, and where its plain bytes go.
pub type ReadJob<'b> = (usize, ChunkId, Location, &'b mut [u8]);

impl Store {
    /// The bucket this store's packs live in, if they are not in `STORE/packs`.
    #[must_use]
    pub fn bucket(&self) -> Option<&Arc<dyn Objects>> {
        self.bucket.as_ref()
    }

    /// Where packs are kept, for messages: `STORE/packs` or the bucket.
    #[must_use]
    pub fn packs_shown(&self) -> String {
        match &self.bucket {
            Some(b) => b.describe(),
            None => self.packs_dir().display().to_string(),
        }
    }

    /// What seals this store's full packs (see [`Sealer`]).
    #[must_use]
    pub fn sealer(&self) -> Sealer {
        Sealer {
            bucket: self.bucket.clone(),
            trees: self.tree_cache(),
        }
    }

    /// This machine's cache of the tree chunks of a store in a bucket.
    pub(crate) fn tree_cache(&self) -> TreeCache {
        TreeCache(self.root.join(TREE_CACHE))
    }

    /// Deletes pack `id` wherever it is (here, in the bucket, or both): its frame list first,
    /// so that a pack object left by a failure is one no index entry names, deleted later.
    ///
    /// # Errors
    /// I/O errors, the bucket's failures.
    pub fn remove_pack(&self, id: PackId) -> Result<()> {
        let path = id.path(&self.packs_dir());
        match std::fs::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    pack::sync_dir(dir)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, "deleting a pack")(e)),
        }
        if let Some(b) = &self.bucket {
            b.delete(&frames_object(&id))?;
            b.delete(&pack_object(&id))?;
        }
        Ok(())
    }

    /// Every frame of pack `id`: a scan of the file here, or its frame list in the bucket.
    ///
    /// # Errors
    /// A pack that is nowhere, I/O errors, a frame list that does not decode.
    pub fn pack_scan(&self, id: PackId) -> Result<PackScan> {
        let path = id.path(&self.packs_dir());
        match (&self.bucket, path.exists()) {
            (Some(b), false) => {
                let name = frames_object(&id);
                let bytes = b.get(&name)?;
                pack::decode_frame_list(&bytes).map_err(|what| Error::Objects {
                    storage: b.describe(),
                    name,
                    what,
                })
            }
            _ => pack::scan(&path),
        }
    }

    /// The headers of the frames of pack `id` at `offsets` (`None` where none can be read).
    ///
    /// # Errors
    /// The bucket's failures.
    pub fn frame_headers(&self, id: PackId, offsets: &[u64]) -> Result<Vec<Option<FrameHeader>>> {
        let path = id.path(&self.packs_dir());
        if self.bucket.is_some() && !path.exists() {
            let scan = match self.pack_scan(id) {
                Ok(s) => s,
                Err(Error::ObjectMissing { .. }) => return Ok(vec![None; offsets.len()]),
                Err(e) => return Err(e),
            };
            let at: HashMap<u64, FrameHeader> =
                scan.frames.iter().map(|f| (f.offset, f.header)).collect();
            return Ok(offsets.iter().map(|o| at.get(o).copied()).collect());
        }
        let Ok(file) = std::fs::File::open(&path) else {
            return Ok(vec![None; offsets.len()]);
        };
        Ok(offsets
            .iter()
            .map(|o| {
                use std::os::unix::fs::FileExt;
                let mut hb = [0u8; FRAME_HEADER_SIZE as usize];
                file.read_exact_at(&mut hb, *o)
                    .ok()
                    .and_then(|()| FrameHeader::decode(&hb).ok())
            })
            .collect())
    }

    /// The packs whose data is there to read: files here, and packs whose frame list is in the
    /// bucket (a pack is whole there once its frame list is).
    ///
    /// # Errors
    /// The bucket's failures.
    pub(crate) fn stored_packs(&self) -> Result<HashSet<PackId>> {
        let mut out: HashSet<PackId> = crate::store::files_under(&self.packs_dir(), "pack")?
            .iter()
            .filter_map(|p| p.file_stem()?.to_str().and_then(PackId::from_hex))
            .collect();
        if let Some(b) = &self.bucket {
            out.extend(
                b.list("packs/")?
                    .iter()
                    .filter(|o| o.name.ends_with(".frames"))
                    .filter_map(|o| object_pack(&o.name)),
            );
        }
        Ok(out)
    }

    /// Objects under `packs/` in the bucket whose pack the index does not know: left by a
    /// killed upload or collection, or being uploaded now by a backup that has not committed.
    ///
    /// # Errors
    /// Index errors, the bucket's failures.
    pub fn unindexed_objects(&self) -> Result<Vec<ObjectInfo>> {
        let Some(b) = &self.bucket else {
            return Ok(Vec::new());
        };
        let known = self.pack_infos()?;
        Ok(b.list("packs/")?
            .into_iter()
            .filter(|o| object_pack(&o.name).is_none_or(|p| !known.contains_key(&p)))
            .collect())
    }

    /// Sizes of the objects of each pack in the bucket (pack and frame list together).
    ///
    /// # Errors
    /// The bucket's failures.
    pub fn pack_object_sizes(&self) -> Result<HashMap<PackId, u64>> {
        let mut out: HashMap<PackId, u64> = HashMap::new();
        if let Some(b) = &self.bucket {
            for o in b.list("packs/")? {
                if let Some(p) = object_pack(&o.name) {
                    *out.entry(p).or_default() += o.size;
                }
            }
        }
        Ok(out)
    }

    /// The frame at `loc` (its header and stored bytes, not checked against an id).
    ///
    /// # Errors
    /// A pack that is gone or a malformed frame ([`Error::BadPack`], [`Error::ObjectMissing`]),
    /// I/O errors, the bucket's failures.
    pub fn read_frame_at(&self, loc: &Location) -> Result<(FrameHeader, Vec<u8>)> {
        let mut stored = Vec::new();
        let header = self.frame_into(loc, &mut stored)?;
        Ok((header, stored))
    }

    /// Reads the frame at `loc` into `stored` from wherever its pack is.
    pub(crate) fn frame_into(&self, loc: &Location, stored: &mut Vec<u8>) -> Result<FrameHeader> {
        let path = loc.pack.path(&self.packs_dir());
        match self.pack_file(loc.pack)? {
            Some(file) => pack::read_frame_into(&file, &path, loc.offset, stored),
            None => {
                let Some(b) = &self.bucket else {
                    return Err(Error::Usage("no bucket".into()));
                };
                let name = pack_object(&loc.pack);
                let len = FRAME_HEADER_SIZE + u64::from(loc.stored_len);
                let buf = b.get_range(&name, loc.offset, len)?;
                pack::parse_frame(&buf, stored).map_err(|what| Error::BadPack {
                    path: name.into(),
                    offset: loc.offset,
                    what,
                })
            }
        }
    }

    /// Reads many chunks at known locations into their slots, each checked against its id;
    /// returns the error of each that could not be read. A store in a bucket reads adjacent
    /// frames of a pack with one ranged GET and has several in flight.
    ///
    /// # Errors
    /// Only failures of the bucket itself (after its retries), which stop the batch: a chunk
    /// whose pack is gone or whose frame is bad is that chunk's error.
    pub fn read_located(&self, mut jobs: Vec<ReadJob<'_>>) -> Result<Vec<(usize, Error)>> {
        use rayon::prelude::*;
        jobs.sort_by_key(|(_, _, l, _)| (l.pack, l.offset));
        let Some(bucket) = &self.bucket else {
            return Ok(jobs
                .into_par_iter()
                .filter_map(|(i, id, loc, slot)| {
                    self.read_into(&id, &loc, slot).err().map(|e| (i, e))
                })
                .collect());
        };
        // Frames of packs still here (a session's own) are read from their files.
        let (here, there): (Vec<_>, Vec<_>) = jobs
            .into_iter()
            .partition(|(_, _, l, _)| l.pack.path(&self.packs_dir()).exists());
        let mut failed: Vec<(usize, Error)> = here
            .into_iter()
            .filter_map(|(i, id, loc, slot)| self.read_into(&id, &loc, slot).err().map(|e| (i, e)))
            .collect();
        failed.extend(in_flight(coalesce(there), |r| {
            read_range(bucket.as_ref(), r)
        })?);
        Ok(failed)
    }

    /// The chunks `ids` as stored (compressed or plain), each checked against its id, in
    /// order (see [`Store::read_encoded_at`]).
    ///
    /// # Errors
    /// The first chunk missing or damaged, index errors, the bucket's failures.
    pub(crate) fn read_encoded_many(&self, ids: &[ChunkId]) -> Result<Vec<EncodedChunk>> {
        let mut jobs = Vec::with_capacity(ids.len());
        for (id, loc) in ids.iter().zip(self.locations(ids)?) {
            jobs.push((*id, loc.ok_or(Error::MissingChunk(*id))?));
        }
        self.read_encoded_at(&jobs)?.into_iter().collect()
    }

    /// The chunks at the locations `jobs` name, as stored (compressed or plain), each checked
    /// against its id (decoded and hashed), in order, each chunk's damage in its place; from a
    /// bucket, adjacent frames in one ranged GET and several in flight.
    ///
    /// # Errors
    /// The bucket's own failures (after its retries).
    pub fn read_encoded_at(
        &self,
        jobs: &[(ChunkId, Location)],
    ) -> Result<Vec<Result<EncodedChunk>>> {
        let mut order: Vec<(usize, ChunkId, Location, ())> = jobs
            .iter()
            .enumerate()
            .map(|(i, (id, loc))| (i, *id, *loc, ()))
            .collect();
        order.sort_by_key(|(_, _, l, _)| (l.pack, l.offset));
        let local = |l: &Location| self.bucket.is_none() || l.pack.path(&self.packs_dir()).exists();
        let (here, there): (Vec<_>, Vec<_>) = order.into_iter().partition(|j| local(&j.2));
        let mut got: Vec<(usize, Result<EncodedChunk>)> = {
            use rayon::prelude::*;
            here.into_par_iter()
                .map(|(i, id, loc, ())| (i, self.encoded_at(&id, &loc)))
                .collect()
        };
        if let Some(bucket) = &self.bucket {
            got.extend(in_flight(coalesce(there), |r| {
                encoded_range(bucket.as_ref(), r)
            })?);
        }
        got.sort_by_key(|(i, _)| *i);
        Ok(got.into_iter().map(|(_, c)| c).collect())
    }

    /// Puts a root file (`points/...`) in the bucket, if the packs are in one.
    pub(crate) fn put_root(&self, file: &str, json: &[u8]) -> Result<()> {
        match &self.bucket {
            Some(b) => b.put(file, json),
            None => Ok(()),
        }
    }

    /// Deletes a root file from the bucket, if the packs are in one.
    pub(crate) fn delete_root(&self, file: &str) -> Result<()> {
        match &self.bucket {
            Some(b) => b.delete(file),
            None => Ok(()),
        }
    }

    /// Copies `STORE/forgotten` to the bucket, if the packs are in one.
    pub(crate) fn put_forgotten(&self) -> Result<()> {
        let Some(b) = &self.bucket else {
            return Ok(());
        };
        let path = self.root.join(crate::catalogue::FORGOTTEN_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => b.put(FORGOTTEN_OBJECT, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, "reading the forgotten points")(e)),
        }
    }

    /// Makes the bucket's root files say what the catalogue says (a writer's open, after the
    /// catalogue has been reconciled with the root files here): a root file a killed commit,
    /// forget or protect left behind or missing is put or deleted.
    pub(crate) fn sync_roots(&self) -> Result<()> {
        let Some(b) = &self.bucket else {
            return Ok(());
        };
        let listed: HashMap<String, u64> = b
            .list("points/")?
            .into_iter()
            .filter(|o| o.name.ends_with(".json"))
            .map(|o| (o.name, o.size))
            .collect();
        let mut wanted: HashSet<String> = HashSet::new();
        for p in self.points()? {
            let file = p.root_file();
            let json = serde_json::to_vec_pretty(&p).map_err(|e| Error::Point(e.to_string()))?;
            let here = std::fs::read(self.root.join(&file)).unwrap_or(json);
            if listed.get(&file) != Some(&(here.len() as u64)) {
                b.put(&file, &here)?;
            }
            wanted.insert(file);
        }
        for name in listed.keys() {
            if !wanted.contains(name) {
                b.delete(name)?;
            }
        }
        Ok(())
    }
}

/// Adjacent frames of one pack, read with one GET; `T` is what each read carries (where its
/// plain bytes go).
struct Range<T> {
    pack: PackId,
    start: u64,
    end: u64,
    jobs: Vec<(usize, ChunkId, Location, T)>,
}

/// Groups reads sorted by pack and offset into ranges (see [`MAX_RANGE`], [`MAX_GAP`]).
fn coalesce<T>(jobs: Vec<(usize, ChunkId, Location, T)>) -> Vec<Range<T>> {
    let mut out: Vec<Range<T>> = Vec::new();
    for job in jobs {
        let (start, end) = (
            job.2.offset,
            job.2.offset + FRAME_HEADER_SIZE + u64::from(job.2.stored_len),
        );
        match out.last_mut() {
            Some(r)
                if r.pack == job.2.pack
                    && start >= r.start
                    && start <= r.end + MAX_GAP
                    && end.max(r.end) - r.start <= MAX_RANGE =>
            {
                r.end = r.end.max(end);
                r.jobs.push(job);
            }
            _ => out.push(Range {
                pack: job.2.pack,
                start,
                end,
                jobs: vec![job],
            }),
        }
    }
    out
}

/// Runs `f` on every range, [`IN_FLIGHT`] at a time: what they all return, or the first
/// failure (the ranges not yet started are then left).
fn in_flight<T: Send, R: Send>(
    ranges: Vec<Range<T>>,
    f: impl Fn(Range<T>) -> Result<Vec<R>> + Sync,
) -> Result<Vec<R>> {
    let ranges = Mutex::new(ranges.into_iter());
    let out = Mutex::new(Vec::new());
    let stop: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..IN_FLIGHT {
            s.spawn(|| {
                loop {
                    if stop.lock().is_ok_and(|s| s.is_some()) {
                        break;
                    }
                    let next = ranges.lock().ok().and_then(|mut r| r.next());
                    let Some(range) = next else { break };
                    match f(range) {
                        Ok(mut got) => {
                            if let Ok(mut o) = out.lock() {
                                o.append(&mut got);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut s) = stop.lock() {
                                s.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = stop.into_inner().ok().flatten() {
        return Err(e);
    }
    out.into_inner()
        .map_err(|_| Error::Usage("a read of the bucket panicked".into()))
}

/// The bytes of a range; `Ok(Err(what))` when its pack object is gone (each chunk's damage,
/// not a failure of the bucket).
fn fetch_range<T>(bucket: &dyn Objects, range: &Range<T>) -> Result<Result<Vec<u8>, String>> {
    let name = pack_object(&range.pack);
    match bucket.get_range(&name, range.start, range.end - range.start) {
        Ok(b) => Ok(Ok(b)),
        Err(Error::ObjectMissing { storage, name }) => {
            Ok(Err(format!("{storage}: the pack object {name} is gone")))
        }
        Err(e) => Err(e),
    }
}

/// The frame of `id` at `at` of `buf`: its header, its stored bytes into `stored`.
fn frame_in(
    buf: &[u8],
    at: u64,
    id: &ChunkId,
    stored: &mut Vec<u8>,
) -> Result<FrameHeader, String> {
    let h = pack::parse_frame(buf.get(at as usize..).unwrap_or_default(), stored)?;
    if h.id != *id {
        return Err(format!("the frame there holds chunk {}", h.id));
    }
    Ok(h)
}

/// Reads one range and decodes its chunks into their slots: the chunks that failed, or the
/// bucket's own failure.
fn read_range(bucket: &dyn Objects, range: Range<&mut [u8]>) -> Result<Vec<(usize, Error)>> {
    let buf = fetch_range(bucket, &range)?;
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    for (i, id, loc, slot) in range.jobs {
        let r = buf.as_ref().map_err(Clone::clone).and_then(|buf| {
            let h = frame_in(buf, loc.offset - range.start, &id, &mut stored)?;
            chunk::decode_into(&id, h.codec, h.plain_len, &stored, slot)
        });
        if let Err(what) = r {
            failed.push((i, crate::store::bad_chunk(&id, &loc, what)));
        }
    }
    Ok(failed)
}

/// Reads one range's chunks as stored, each checked against its id (decoded and hashed).
fn encoded_range(
    bucket: &dyn Objects,
    range: Range<()>,
) -> Result<Vec<(usize, Result<EncodedChunk>)>> {
    let buf = fetch_range(bucket, &range)?;
    let mut plain = Vec::new();
    let mut out = Vec::with_capacity(range.jobs.len());
    for (i, id, loc, ()) in range.jobs {
        let mut stored = Vec::new();
        let r = buf.as_ref().map_err(Clone::clone).and_then(|buf| {
            let h = frame_in(buf, loc.offset - range.start, &id, &mut stored)?;
            plain.resize(h.plain_len as usize, 0);
            chunk::decode_into(&id, h.codec, h.plain_len, &stored, &mut plain)?;
            Ok(EncodedChunk {
                id,
                kind: h.kind,
                codec: h.codec,
                plain_len: h.plain_len,
                bytes: std::mem::take(&mut stored),
            })
        });
        out.push((
            i,
            r.map_err(|what| crate::store::bad_chunk(&id, &loc, what)),
        ));
    }
    Ok(out)
}

/// Claims `packs`' prefix for a new store of config `config`: refuses a prefix that holds a
/// store already, then puts the config there. Called by `init` before anything is made here.
///
/// # Errors
/// A prefix that holds a store, the bucket's failures (a wrong key, a missing bucket).
pub(crate) fn claim(packs: &PacksConfig, config: &StoreConfig) -> Result<()> {
    let bucket = connect(packs)?;
    match bucket.get(CONFIG_OBJECT) {
        Ok(bytes) => {
            let id = StoreConfig::parse(
                &String::from_utf8_lossy(&bytes),
                Path::new(&format!("{}/{CONFIG_OBJECT}", packs.url)),
            )
            .map(|c| c.store_id)
            .unwrap_or_else(|_| "(unreadable config)".into());
            return Err(Error::Usage(format!(
                "{} holds store {id} already: two stores never share a prefix (give another \
                 prefix); to use that store from this machine, rebuild its index from the \
                 bucket: `cairn repair --store STORE --rebuild-index --packs {}`",
                bucket.describe(),
                packs.url
            )));
        }
        Err(Error::ObjectMissing { .. }) => {}
        Err(e) => return Err(e),
    }
    bucket.put(CONFIG_OBJECT, config.to_toml()?.as_bytes())
}

/// The config of the store in `packs`' prefix (for a rebuild on a new machine): the
/// endpoint and region given here win over those it was made with.
///
/// # Errors
/// No store there, the bucket's failures.
pub fn fetch_config(packs: &PacksConfig) -> Result<StoreConfig> {
    let bucket = connect(packs)?;
    let bytes = bucket.get(CONFIG_OBJECT).map_err(|e| match e {
        Error::ObjectMissing { storage, .. } => Error::Usage(format!(
            "{storage}: no store there (no {CONFIG_OBJECT}); create one with `cairn init STORE \
             --packs {}`",
            packs.url
        )),
        e => e,
    })?;
    let mut config = StoreConfig::parse(
        &String::from_utf8_lossy(&bytes),
        Path::new(&format!("{}/{CONFIG_OBJECT}", packs.url)),
    )?;
    config.packs = Some(packs.clone());
    Ok(config)
}

/// Every pack in the bucket with a frame list, each list fetched and decoded (several at a
/// time), and the objects of packs without one (a killed upload: no commit names them).
///
/// # Errors
/// The bucket's failures.
pub(crate) fn frame_lists(bucket: &dyn Objects) -> Result<(Vec<Result<PackScan>>, u64)> {
    let listed = bucket.list("packs/")?;
    let lists: Vec<String> = listed
        .iter()
        .filter(|o| o.name.ends_with(".frames"))
        .map(|o| o.name.clone())
        .collect();
    let with_list: HashSet<PackId> = lists.iter().filter_map(|n| object_pack(n)).collect();
    let unlisted = listed
        .iter()
        .filter(|o| o.name.ends_with(".pack"))
        .filter(|o| object_pack(&o.name).is_none_or(|p| !with_list.contains(&p)))
        .count() as u64;
    let got = fetch_all(bucket, &lists)?;
    let scans = lists
        .iter()
        .zip(got)
        .map(|(name, bytes)| {
            pack::decode_frame_list(&bytes).map_err(|what| Error::Objects {
                storage: bucket.describe(),
                name: name.clone(),
                what,
            })
        })
        .collect();
    Ok((scans, unlisted))
}

/// Fetches every object of `names`, several at a time, in order.
///
/// # Errors
/// The first failure.
pub(crate) fn fetch_all(bucket: &dyn Objects, names: &[String]) -> Result<Vec<Vec<u8>>> {
    let next = Mutex::new(0usize);
    let got: Mutex<Vec<Option<Result<Vec<u8>>>>> =
        Mutex::new((0..names.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..IN_FLIGHT.min(names.len()) {
            s.spawn(|| {
                loop {
                    let i = {
                        let Ok(mut n) = next.lock() else { break };
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(name) = names.get(i) else { break };
                    let r = bucket.get(name);
                    let failed = r.is_err();
                    if let Ok(mut g) = got.lock() {
                        g[i] = Some(r);
                    }
                    if failed {
                        break;
                    }
                }
            });
        }
    });
    got.into_inner()
        .map_err(|_| Error::Usage("a fetch panicked".into()))?
        .into_iter()
        .zip(names)
        .map(|(r, name)| {
            r.unwrap_or_else(|| {
                Err(Error::Objects {
                    storage: bucket.describe(),
                    name: name.clone(),
                    what: "not fetched: an earlier fetch failed".into(),
                })
            })
        })
        .collect()
}

/// Fills the tree cache of the store at `root` with the tree chunks `trees` (a rebuild from
/// the bucket: the recount after it walks every point's tree), adjacent frames in one GET and
/// several in flight. A frame that does not read back as its id is left out (a walk reads it
/// from the bucket and names its damage).
///
/// # Errors
/// The bucket's failures.
pub(crate) fn prefetch_trees(
    bucket: &dyn Objects,
    root: &Path,
    mut trees: Vec<(ChunkId, Location)>,
) -> Result<()> {
    trees.sort_by_key(|(_, l)| (l.pack, l.offset));
    let cache = TreeCache(root.join(TREE_CACHE));
    let jobs = trees.into_iter().map(|(id, l)| (0, id, l, ())).collect();
    for (_, chunk) in in_flight(coalesce(jobs), |r| encoded_range(bucket, r))? {
        if let Ok(c) = chunk {
            cache.put(
                &FrameHeader {
                    id: c.id,
                    plain_len: c.plain_len,
                    stored_len: c.bytes.len() as u32,
                    codec: c.codec,
                    kind: c.kind,
                },
                &c.bytes,
            );
        }
    }
    Ok(())
}

/// Brings the bucket's root files and forgotten list into `root` (a rebuild from the bucket):
/// the bucket's are the truth, so a root file here that the bucket lacks is removed.
///
/// # Errors
/// I/O errors, the bucket's failures.
pub(crate) fn fetch_roots(bucket: &dyn Objects, root: &Path) -> Result<u64> {
    let names: Vec<String> = bucket
        .list("points/")?
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.ends_with(".json"))
        .collect();
    let got = fetch_all(bucket, &names)?;
    let keep: HashSet<std::path::PathBuf> = names.iter().map(|n| root.join(n)).collect();
    for old in crate::store::files_under(&root.join("points"), "json")? {
        if !keep.contains(&old) {
            std::fs::remove_file(&old).map_err(Error::io(&old, "removing a root file"))?;
        }
    }
    for (name, bytes) in names.iter().zip(got) {
        crate::store::write_atomic(&root.join(name), &bytes)?;
    }
    match bucket.get(FORGOTTEN_OBJECT) {
        Ok(bytes) => {
            crate::store::write_atomic(&root.join(crate::catalogue::FORGOTTEN_FILE), &bytes)?;
        }
        Err(Error::ObjectMissing { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(names.len() as u64)
}
