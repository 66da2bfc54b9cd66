//! Rebuilding the index from what the packs and root files hold, when it is lost or damaged.
//!
//! A rebuild is a sequence of steps over one [`Rebuild`]: begin (the write lock, a marker that
//! makes every other open refuse the half-built index, the old index moved aside), index the
//! packs ([`packs`]: scanned here, or their frame lists in the bucket), store afresh the chunks
//! read back from under damaged frame headers, catalogue the points from their root files
//! ([`points`]), and finish (the marker removed; a writer's open counts the references).

mod packs;
mod points;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use rocksdb::{ColumnFamily, DB};

use crate::chunk::{ChunkId, EncodedChunk};
use crate::config::StoreConfig;
use crate::db::{REBUILD_MARKER, open_index};
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::index::{CF_CHUNKS, Location};
use crate::lock::WriteLock;
use crate::objects::Objects;
use crate::pack::sync_dir;
use crate::quarantine::Quarantined;
use crate::store::{OpenMode, Store};

impl Store {
    /// Makes a store folder in `root` (missing or empty) for the store whose packs are in
    /// `packs`' bucket, from the bucket's copy of its config, with an empty index: on a new
    /// machine, before the index is rebuilt from the bucket ([`Store::rebuild_index`]).
    ///
    /// # Errors
    /// A folder that is not empty, no store in the bucket, the bucket's failures.
    pub fn attach(root: &Path, packs: &crate::config::PacksConfig) -> Result<StoreConfig> {
        crate::files::utf8_path(root)?;
        if std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_some()) {
            return Err(Error::Usage(format!(
                "{} exists and is not empty: the store of {} is made in an empty folder",
                root.display(),
                packs.url
            )));
        }
        let config = crate::bucket::fetch_config(packs)?;
        Self::make_folder(root, &config)?;
        Ok(config)
    }

    /// Rebuilds the index from the packs and root files: the old index is moved aside to
    /// `index.old-<time>` and a new one is filled. Needs the write lock.
    ///
    /// # Errors
    /// A lock held by another writer, I/O and index errors.
    pub fn rebuild_index(root: &Path, wait: bool) -> Result<RebuildReport> {
        let config = StoreConfig::load(root)?;
        let bucket = config
            .packs
            .as_ref()
            .map(crate::bucket::connect)
            .transpose()?;
        let lock = WriteLock::acquire(root, wait)?;
        let mut r = Rebuild::begin(root, bucket)?;
        // No key is asked: an encrypted store's sealed chunks are taken on their frames' CRCs.
        r.keys = config.encryption.is_none().then_some(crate::Keys::Clear);
        r.index_packs()?;
        r.store_salvage()?;
        r.record_quarantine()?;
        r.catalogue_points()?;
        let (mut report, old_index) = r.finish()?;
        drop(lock);
        // Opening for writing counts the references of every point afresh (the new index has
        // no counts yet); then a root file that disagrees with its tree is refused.
        let store = Self::open(root, OpenMode::Write { wait })?;
        let (settled, left_out) = store.settle_shapes(old_index.as_deref())?;
        report.old_index = old_index;
        report.points_left_out += left_out;
        report.points -= left_out;
        report.problems.extend(settled);
        Ok(report)
    }
}

/// A rebuild under way: the new index, and what the steps found so far.
struct Rebuild<'r> {
    root: &'r Path,
    /// The index folder.
    index: PathBuf,
    db: DB,
    /// The store's bucket, when its packs are in one.
    bucket: Option<Arc<dyn Objects>>,
    /// Where the old index was moved aside.
    old_index: Option<PathBuf>,
    report: RebuildReport,
    /// Tree chunks indexed (their copies fetched at once for a store in a bucket: the recount
    /// that follows walks every point's tree).
    trees: Vec<(ChunkId, Location)>,
    /// Packs with bytes no frame accounts for.
    quarantined: Vec<Quarantined>,
    /// Chunks read back from under damaged frame headers.
    salvage: Vec<EncodedChunk>,
    /// How chunks are checked: `None` for an encrypted store (rebuilt without its key).
    keys: Option<crate::Keys>,
}

impl<'r> Rebuild<'r> {
    /// Marks the rebuild (until it is done, the index is incomplete: every other open refuses
    /// it), moves the old index aside and opens a new, empty one.
    fn begin(root: &'r Path, bucket: Option<Arc<dyn Objects>>) -> Result<Self> {
        let index = root.join("index");
        write_atomic(&root.join(REBUILD_MARKER), b"rebuilding the index\n")?;
        let mut old_index = None;
        if index.exists() {
            let aside = root.join(format!(
                "index.old-{}",
                Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
            ));
            std::fs::rename(&index, &aside)
                .map_err(Error::io(&index, "moving the old index aside"))?;
            old_index = Some(aside);
        }
        let (db, _) = open_index(root, false, true)?;
        Ok(Self {
            root,
            index,
            db,
            bucket,
            old_index,
            report: RebuildReport::default(),
            trees: Vec::new(),
            quarantined: Vec::new(),
            salvage: Vec::new(),
            keys: None,
        })
    }

    /// A column family of the new index.
    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Internal(format!("no {name} column family")))
    }

    /// The index's error, naming its folder.
    fn err(&self) -> impl Fn(rocksdb::Error) -> Error + '_ {
        |source| Error::Index {
            path: self.index.clone(),
            source,
        }
    }

    /// Where the new index says chunk `id` is, if it holds it yet.
    fn indexed(&self, id: &ChunkId) -> Result<Option<Location>> {
        self.db
            .get_cf(self.cf(CF_CHUNKS)?, id.0)
            .map_err(self.err())?
            .map(|v| {
                Location::decode(&v).map_err(|what| Error::CorruptIndex {
                    path: self.index.clone(),
                    family: CF_CHUNKS,
                    key: id.to_hex(),
                    what,
                })
            })
            .transpose()
    }

    /// Puts the quarantined packs on record.
    fn record_quarantine(&mut self) -> Result<()> {
        for q in &self.quarantined {
            crate::quarantine::put(self.root, q)?;
            self.report.quarantined.push(q.describe());
        }
        Ok(())
    }

    /// Closes the new index and removes the marker: other opens may use it now.
    fn finish(self) -> Result<(RebuildReport, Option<PathBuf>)> {
        drop(self.db);
        let marker = self.root.join(REBUILD_MARKER);
        std::fs::remove_file(&marker).map_err(Error::io(&marker, "ending the rebuild"))?;
        sync_dir(self.root)?;
        Ok((self.report, self.old_index))
    }
}

/// What [`Store::rebuild_index`] found.
#[derive(Debug, Default, Clone)]
pub struct RebuildReport {
    /// Chunks found more than once: a copy that reads back as its id is indexed, the others
    /// are listed as garbage.
    pub duplicates: u64,
    /// Packs scanned.
    pub packs: u64,
    /// Chunk frames indexed.
    pub chunks: u64,
    /// Recovery points catalogued.
    pub points: u64,
    /// Root files that could not be read: their points are not in the index (listed in
    /// `problems`).
    pub points_left_out: u64,
    /// Torn or damaged packs (reported, not fatal).
    pub problems: Vec<String>,
    /// Chunks read back from under damaged frame headers and stored afresh.
    pub recovered: u64,
    /// Where the old index was moved aside (kept for a look: nothing removes it).
    pub old_index: Option<std::path::PathBuf>,
    /// Packs put in quarantine (bytes no frame accounts for): garbage collection keeps them
    /// until `gc --drop-quarantined`.
    pub quarantined: Vec<String>,
}
