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

mod ahead;
mod connect;
mod read;
mod rebuild;
mod tree_cache;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::chunk;
use crate::config::{CONFIG_FILE, PacksConfig, StoreConfig};
use crate::error::{Error, Result};
use crate::objects::{ObjectInfo, Objects};
use crate::pack::{self, FRAME_HEADER_SIZE, FrameHeader, PackId, PackScan, PackWriter};
use crate::store::Store;

pub(crate) use ahead::{BUFFERS as READ_BUFFERS, ReadAhead};
pub use connect::{connect, connect_lazily};
pub use read::ReadJob;
pub(crate) use rebuild::{fetch_roots, frame_lists, prefetch_trees};
pub use tree_cache::{TREE_CACHE, TreeCache};

/// The bucket's copy of the store's config. It is written first, by `init`: a second `init`
/// on the same prefix finds it and refuses (two stores never share a prefix).
pub const CONFIG_OBJECT: &str = CONFIG_FILE;
/// The bucket's copy of `STORE/forgotten`.
pub const FORGOTTEN_OBJECT: &str = crate::catalogue::FORGOTTEN_FILE;

/// Requests in flight for one batch of reads, a rebuild or a listing of root files.
pub(crate) const IN_FLIGHT: usize = 16;

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

/// Makes a full pack durable where the store keeps its packs: synced here, and for a store in
/// a bucket uploaded with its frame list, then removed here; and removes a pack wherever it
/// is. Cheap to clone into the thread that seals, and free of the store's lifetime (a
/// collection drops the packs it wrote after its read-only store is closed).
#[derive(Clone, Debug)]
pub struct Sealer {
    packs_dir: std::path::PathBuf,
    bucket: Option<Arc<dyn Objects>>,
    trees: TreeCache,
}

impl Sealer {
    /// Removes pack `id` wherever it is (here, in the bucket, or both): its frame list first,
    /// so that a pack object left by a failure is one no index entry names, deleted later.
    ///
    /// # Errors
    /// I/O errors, the bucket's failures.
    pub fn remove(&self, id: PackId) -> Result<()> {
        let path = id.path(&self.packs_dir);
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
            packs_dir: self.packs_dir(),
            bucket: self.bucket.clone(),
            trees: self.tree_cache(),
        }
    }

    /// This machine's cache of the tree chunks of a store in a bucket.
    pub(crate) fn tree_cache(&self) -> TreeCache {
        TreeCache::of(&self.root)
    }

    /// Deletes pack `id` wherever it is (here, in the bucket, or both): its frame list first,
    /// so that a pack object left by a failure is one no index entry names, deleted later.
    ///
    /// # Errors
    /// I/O errors, the bucket's failures.
    pub fn remove_pack(&self, id: PackId) -> Result<()> {
        self.sealer().remove(id)
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
    pub(crate) fn stored_pack_lengths(&self) -> Result<HashMap<PackId, u64>> {
        let mut out: HashMap<PackId, u64> = HashMap::new();
        if let Some(b) = &self.bucket {
            // A pack object is whole once its frame list is there (uploaded after it).
            let listed = b.list("packs/")?;
            let framed: HashSet<PackId> = listed
                .iter()
                .filter(|o| o.name.ends_with(".frames"))
                .filter_map(|o| object_pack(&o.name))
                .collect();
            for o in listed.iter().filter(|o| o.name.ends_with(".pack")) {
                if let Some(p) = object_pack(&o.name).filter(|p| framed.contains(p)) {
                    out.insert(p, o.size);
                }
            }
        }
        for path in crate::files::files_under(&self.packs_dir(), "pack")? {
            if let Some(p) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(PackId::from_hex)
                && let Ok(m) = std::fs::metadata(&path)
            {
                let have = out.entry(p).or_default();
                *have = (*have).max(m.len());
            }
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
