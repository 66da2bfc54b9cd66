//! The store: open, read chunks and points, and write new ones in a [`Session`].

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::chunk::{self, ChunkId, ChunkRef};
use crate::config::{CONFIG_FILE, StoreConfig};
use crate::error::{Error, Result};
use crate::index::{CF_CHUNKS, CF_META, CF_POINTS, COLUMN_FAMILIES, Location, META_REFCOUNTS};
use crate::lock::WriteLock;
use crate::pack::{self, PackId, sync_dir};
use crate::point::{RecoveryPoint, VmKey};
use crate::session::Session;
use crate::tree::{Body, Walk};

/// How to open a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only: never waits for or blocks a writer; sees the index as it was when opened.
    Read,
    /// Read and write: takes the write lock (waiting for it when `wait`).
    Write {
        /// Wait for another writer to finish instead of failing.
        wait: bool,
    },
}

/// An open store.
pub struct Store {
    pub(crate) root: PathBuf,
    pub(crate) config: StoreConfig,
    pub(crate) db: DB,
    lock: Option<WriteLock>,
    /// A read-only open is a registered reader for as long as it lives (`readers`).
    _reader: Option<crate::readers::ReaderGuard>,
    files: Mutex<HashMap<PackId, Arc<File>>>,
    /// The bucket the packs live in, if not in `STORE/packs` (the `bucket` module).
    pub(crate) bucket: Option<Arc<dyn crate::objects::Objects>>,
    warnings: Vec<String>,
    /// Held by each commit, forget, protect and collection of this process (see
    /// [`Store::commit_lock`]).
    commits: Mutex<()>,
}

/// Table files of a column family from which a writer, as it closes, merges them when they are
/// small (see [`Store::settle_index`]).
const SETTLE_FILES: usize = 16;
/// Average bytes of a table file under which they count as small.
const SETTLE_SMALL_FILE: usize = 1 << 20;

impl Drop for Store {
    fn drop(&mut self) {
        if self.lock.is_some() {
            self.settle_index();
        }
    }
}

impl Store {
    /// Ends writing for a store that lives as long as its process (`cairn serve`, which
    /// leaks it): the index is settled as a writer's close settles it, and the lock file says
    /// its holder finished. Nothing may be written after it; the process then exits.
    pub fn finish_writing(&self) {
        if let Some(lock) = &self.lock {
            self.settle_index();
            // Every commit synced its batch already: this is only tidiness.
            let _ = self.db.flush_wal(true);
            lock.mark_finished();
        }
    }

    /// Table files of each column family of the index, and their bytes.
    #[must_use]
    pub(crate) fn index_files(&self) -> Vec<(String, usize, usize)> {
        let mut by: HashMap<String, (usize, usize)> = HashMap::new();
        for f in self.db.live_files().unwrap_or_default() {
            let e = by.entry(f.column_family_name).or_default();
            e.0 += 1;
            e.1 += f.size;
        }
        let mut out: Vec<(String, usize, usize)> = by
            .into_iter()
            .map(|(cf, (n, bytes))| (cf, n, bytes))
            .collect();
        out.sort();
        out
    }

    /// Merges a column family's table files before a writer closes when there are many small
    /// ones. Each writer's open writes the log of the last into a new small file per column
    /// family it wrote; where those do not overlap what is stored (the packs' and points' keys)
    /// RocksDB moves them down as they are and never merges them: after a few hundred backups
    /// every open opened hundreds of files of a few kilobytes. Such a family is a few hundred
    /// kilobytes, so merging it whole costs milliseconds; the chunks' family, whose files
    /// overlap, RocksDB's own compactions keep in few large files.
    fn settle_index(&self) {
        for (name, files, bytes) in self.index_files() {
            let small = files >= SETTLE_FILES && bytes / files < SETTLE_SMALL_FILE;
            if let (true, Some(cf)) = (small, self.db.cf_handle(&name)) {
                // The last level too: that is where the small files sit.
                let mut o = rocksdb::CompactOptions::default();
                o.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
                self.db
                    .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &o);
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Bytes of index blocks (and their bloom filters) cached, for all column families together.
const BLOCK_CACHE_BYTES: usize = 32 << 20;
/// Bytes of one memtable, and of all of them together.
const MEMTABLE_BYTES: usize = 16 << 20;
const ALL_MEMTABLES_BYTES: usize = 48 << 20;

/// Options of every column family: memory bounded whatever the index's size (a store of 10 TB
/// holds 40 M chunks), and bloom filters on keys, so that looking up a chunk the store does not
/// hold (every chunk of a new disk) mostly costs no read.
fn cf_options(cache: &rocksdb::Cache) -> Options {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut o = Options::default();
    o.set_block_based_table_factory(&table);
    o.set_write_buffer_size(MEMTABLE_BYTES);
    o.set_max_write_buffer_number(2);
    o.set_compression_type(rocksdb::DBCompressionType::Zstd);
    o
}

fn db_options() -> Options {
    db_options_with(&rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES))
}

/// The database's options, its column families' blocks cached in `cache`.
fn db_options_with(cache: &rocksdb::Cache) -> Options {
    let mut o = cf_options(cache);
    o.set_db_write_buffer_size(ALL_MEMTABLES_BYTES);
    // Table files are opened by this many threads (16 by default, per column family: over a
    // hundred threads started and stopped by every open of a small index).
    o.set_max_file_opening_threads(2);
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_compression_type(rocksdb::DBCompressionType::Zstd);
    o.set_max_open_files(256);
    // RocksDB's info log: one file per open otherwise (36 MB after 300 opens).
    o.set_keep_log_file_num(4);
    o.set_max_log_file_size(1 << 20);
    o.set_log_level(rocksdb::LogLevel::Warn);
    o
}

fn open_db(root: &Path, read_only: bool) -> Result<(DB, Option<String>)> {
    open_index(root, read_only, false)
}

/// Opens the index; only `init` and a rebuild create one (`create`): a writer that found the
/// folder gone would otherwise start an empty index and the store would pass for empty.
pub(crate) fn open_index(
    root: &Path,
    read_only: bool,
    create: bool,
) -> Result<(DB, Option<String>)> {
    let path = root.join("index");
    let rebuilding = root.join(REBUILD_MARKER);
    if !create && rebuilding.exists() {
        return Err(Error::Config {
            path: rebuilding,
            what: "an index rebuild did not finish: the index is incomplete; run `cairn repair \
                   --rebuild-index` again"
                .into(),
        });
    }
    if read_only {
        return crate::view::open_read_only(root, &db_options());
    }
    if !create && !path.join("CURRENT").exists() {
        return Err(Error::Config {
            path,
            what: "the index is missing: rebuild it from the packs and root files with `cairn \
                   repair --rebuild-index`"
                .into(),
        });
    }
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    let cfs = COLUMN_FAMILIES
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(*n, cf_options(&cache)));
    DB::open_cf_descriptors(&db_options_with(&cache), &path, cfs)
        .map(|db| (db, None))
        .map_err(|source| Error::Index { path, source })
}

/// Present while an index rebuild runs: nothing else opens the index then.
pub const REBUILD_MARKER: &str = "index.rebuilding";

impl Store {
    /// Writes `batch` synced and notes the commit for readers (see [`crate::view`]).
    pub(crate) fn write_synced(&self, batch: WriteBatch) -> Result<()> {
        self.db
            .write_opt(batch, &sync_write())
            .map_err(self.index_err())?;
        crate::view::note_commit(&self.root, &self.db);
        Ok(())
    }
}

pub(crate) fn sync_write() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

/// The index library takes paths as text: a store path that is not UTF-8 is refused before
/// anything is created.
pub(crate) fn utf8_path(root: &Path) -> Result<()> {
    if root.to_str().is_none() {
        return Err(Error::Usage(format!(
            "{}: a store path must be valid UTF-8 (rename the folder)",
            root.display()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the folder.
///
/// # Errors
/// I/O errors.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// As [`write_atomic`], the file made with permissions `mode` (a page others may read: 0644).
///
/// # Errors
/// I/O errors.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir_durable(dir)?;
    let tmp = tmp_name(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(Error::io(&tmp, "creating"))?;
    f.write_all(bytes).map_err(Error::io(&tmp, "writing"))?;
    f.sync_all().map_err(Error::io(&tmp, "syncing"))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path, "renaming into place"))?;
    sync_dir(dir)
}

/// The temporary name [`write_atomic`] writes `path` under before its rename: hidden, and
/// naming the process, so that writers never share one and a leftover of a dead process is
/// known as such ([`remove_stale_tmp`]).
fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Whether `path` is a temporary file of [`write_atomic`] that no live process is writing (a
/// name of the older form, without a process id, counts as stale).
fn stale_tmp(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(stem) = name.strip_suffix(".tmp") else {
        return false;
    };
    match stem.rsplit_once('.').map(|(_, pid)| pid.parse::<u32>()) {
        Some(Ok(pid)) if stem.starts_with('.') => !crate::lock::process_alive(pid),
        _ => true,
    }
}

/// Removes the temporary files of [`write_atomic`] that killed processes left in `dir` (not
/// below it); returns how many.
///
/// # Errors
/// I/O errors.
pub(crate) fn remove_stale_tmp(dir: &Path) -> Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, "listing a folder")(e)),
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "tmp") && path.is_file() && stale_tmp(&path) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, "removing a temporary file")(e)),
            }
        }
    }
    Ok(removed)
}

/// Creates `dir` and any missing parents, syncing the folder each new one is created in, so
/// that a file renamed into it survives a crash with its path.
fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    create_dir_durable(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        }),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(dir, "creating a folder")(e)),
    }
}

impl Store {
    /// Creates a new store in `root` (an empty or missing folder), private to its owner: the
    /// folder is 0700 and the files cairn writes are 0600.
    ///
    /// # Errors
    /// A folder that is not empty, an invalid chunk size, I/O and index errors.
    pub fn init(root: &Path, chunk_size: u32) -> Result<StoreConfig> {
        Self::init_with(root, StoreConfig::new(chunk_size)?)
    }

    /// Creates a new store in `root` with `config`; when its packs are to live in a bucket
    /// (`config.packs`), the bucket's prefix is claimed first (a prefix that holds a store is
    /// refused, and nothing is made here when the bucket cannot be reached).
    ///
    /// # Errors
    /// As [`Store::init`], a prefix that holds a store, the bucket's failures.
    pub fn init_with(root: &Path, config: StoreConfig) -> Result<StoreConfig> {
        utf8_path(root)?;
        if root.exists() {
            let mut entries =
                std::fs::read_dir(root).map_err(Error::io(root, "reading the folder"))?;
            if entries.next().is_some() {
                return Err(Error::Usage(format!(
                    "{} exists and is not empty",
                    root.display()
                )));
            }
        }
        if let Some(packs) = &config.packs {
            crate::bucket::claim(packs, &config)?;
        }
        Self::make_folder(root, &config)?;
        Ok(config)
    }

    /// Makes the store's folder for `config`: its subfolders, an empty index, the config last.
    pub(crate) fn make_folder(root: &Path, config: &StoreConfig) -> Result<()> {
        // Private: the store holds the guests' disks. The root folder is 0700, so nobody else
        // reaches anything below it whatever its mode; files cairn writes are 0600 too.
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(Error::io(root, "creating the store"))?;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
                .map_err(Error::io(root, "making the store private"))?;
            for sub in ["packs", "points"] {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(root.join(sub))
                    .map_err(Error::io(root, "creating the store"))?;
            }
        }
        let (db, _) = open_index(root, false, true)?;
        if let Some(meta) = db.cf_handle(CF_META) {
            db.put_cf_opt(meta, META_REFCOUNTS, b"1", &sync_write())
                .map_err(|source| Error::Index {
                    path: root.join("index"),
                    source,
                })?;
        }
        drop(db);
        // The config goes last: a folder without it is not (yet) a store.
        write_atomic(&root.join(CONFIG_FILE), config.to_toml()?.as_bytes())
    }

    /// Opens the store at `root`.
    ///
    /// # Errors
    /// Not a store, a newer format, a lock held by another writer, index errors.
    pub fn open(root: &Path, mode: OpenMode) -> Result<Self> {
        utf8_path(root)?;
        let config = StoreConfig::load(root)?;
        let (lock, reader) = match mode {
            // Registered before the index is opened: see `readers`.
            OpenMode::Read => (None, Some(crate::readers::register(root)?)),
            OpenMode::Write { wait } => (Some(WriteLock::acquire(root, wait)?), None),
        };
        let bucket = config.packs.as_ref().map(crate::bucket::connect_lazily);
        let (db, behind) = open_db(root, lock.is_none())?;
        let mut store = Self {
            root: root.to_path_buf(),
            config,
            db,
            lock,
            _reader: reader,
            files: Mutex::new(HashMap::new()),
            bucket,
            warnings: Vec::new(),
            commits: Mutex::new(()),
        };
        if store.lock.is_none() {
            store.warnings = store.reconcile(false)?;
            store.warnings.extend(behind);
        }
        if store.lock.is_some() {
            if store.config.format_version < crate::config::FORMAT_VERSION {
                // Trees of format 2 may be written from now on: cairns that read only the
                // older format must refuse the store, not misread it.
                let mut config = store.config.clone();
                config.format_version = crate::config::FORMAT_VERSION;
                store.write_config(config)?;
            }
            if !store.refcounts_ready()? || store.recount_due()? {
                store.recount()?;
            }
            crate::run::abandon_unfinished(&store.root)?;
            // Temporary files of root files whose write was killed before its rename.
            for tmp in files_under(&store.root.join("points"), "tmp")? {
                std::fs::remove_file(&tmp).map_err(Error::io(&tmp, "removing a temporary file"))?;
            }
            // ... and of the store's other files, written by writers and readers alike (the
            // retention and verify records, policies, standby journals, quarantine records):
            // those of processes that are gone.
            for dir in ["", "standby", crate::quarantine::QUARANTINE_DIR] {
                remove_stale_tmp(&store.root.join(dir))?;
            }
            store.finish_adopts()?;
            store.warnings = store.reconcile(true)?;
            store.finish_protects()?;
            store.sync_roots()?;
            store.copy_config()?;
            crate::reserve::keep(&store.root);
            // This index is the truth now (whatever an earlier note says).
            crate::view::note_commit(&store.root, &store.db);
        }
        Ok(store)
    }

    /// Replaces the store's config: the bucket's copy first (a store in a bucket), then
    /// `cairn.toml`.
    pub(crate) fn write_config(&mut self, config: StoreConfig) -> Result<()> {
        let text = config.to_toml()?;
        if let Some(b) = &self.bucket {
            b.put(crate::bucket::CONFIG_OBJECT, text.as_bytes())?;
        }
        write_atomic(&self.root.join(CONFIG_FILE), text.as_bytes())?;
        self.config = config;
        Ok(())
    }

    /// The store's folder.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its configuration.
    #[must_use]
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// What the lock file said of a previous writer that died holding the lock, if this open
    /// took over a stale lock.
    #[must_use]
    pub fn stale_lock(&self) -> Option<&str> {
        self.lock.as_ref().and_then(|l| l.stale.as_deref())
    }

    pub(crate) fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| Error::Config {
            path: self.root.join("index"),
            what: format!("column family {name} is missing"),
        })
    }

    pub(crate) fn index_err(&self) -> impl FnOnce(rocksdb::Error) -> Error + '_ {
        move |source| Error::Index {
            path: self.root.join("index"),
            source,
        }
    }

    /// An entry of column family `family` under `key` that does not decode.
    pub(crate) fn corrupt(&self, family: &'static str, key: &[u8]) -> impl FnOnce(String) -> Error {
        let (path, key) = (self.root.join("index"), hex::encode(key));
        move |what| Error::CorruptIndex {
            path,
            family,
            key,
            what,
        }
    }

    /// Decodes a `chunks` value.
    pub(crate) fn decode_location(&self, key: &[u8], v: &[u8]) -> Result<Location> {
        Location::decode(v).map_err(self.corrupt(CF_CHUNKS, key))
    }

    /// Where a chunk is stored, if the store holds it.
    ///
    /// # Errors
    /// Index errors.
    pub fn location(&self, id: &ChunkId) -> Result<Option<Location>> {
        let v = self
            .db
            .get_cf(self.cf(CF_CHUNKS)?, id.0)
            .map_err(self.index_err())?;
        v.map(|b| self.decode_location(&id.0, &b)).transpose()
    }

    /// Where many chunks are stored (one batched lookup).
    ///
    /// # Errors
    /// Index errors.
    pub fn locations(&self, ids: &[ChunkId]) -> Result<Vec<Option<Location>>> {
        let cf = self.cf(CF_CHUNKS)?;
        self.db
            .multi_get_cf(ids.iter().map(|id| (cf, id.0)))
            .into_iter()
            .zip(ids)
            .map(|(r, id)| {
                r.map_err(self.index_err())?
                    .map(|b| self.decode_location(&id.0, &b))
                    .transpose()
            })
            .collect()
    }

    /// The open file of pack `pack`; `None` when the pack is not here but in the bucket.
    pub(crate) fn pack_file(&self, pack: PackId) -> Result<Option<Arc<File>>> {
        let mut files = self
            .files
            .lock()
            .map_err(|_| Error::Usage("pack file cache poisoned".into()))?;
        if let Some(f) = files.get(&pack) {
            return Ok(Some(Arc::clone(f)));
        }
        let path = pack.path(&self.packs_dir());
        let opened = File::open(&path);
        if self.bucket.is_some()
            && matches!(&opened, Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            return Ok(None);
        }
        let f = Arc::new(opened.map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::NotFound {
                "opening a pack: the pack file is gone (removed or lost); `cairn verify` lists \
                 what it damages, and a key backup (`cairn backup --key`) stores its chunks \
                 afresh"
            } else {
                "opening a pack"
            };
            Error::io(&path, what)(e)
        })?);
        if files.len() > 512 {
            files.clear();
        }
        files.insert(pack, Arc::clone(&f));
        Ok(Some(f))
    }

    /// The folder of pack files.
    #[must_use]
    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    /// The store's spool folder (`tmp/`): VHD streams that cannot be read in one pass, a
    /// bucket pack being scanned, `serve-nbd`'s overlays. What is there belongs to no point.
    #[must_use]
    pub fn spool_dir(&self) -> PathBuf {
        spool_dir(&self.root)
    }

    /// Reads a chunk at a known location and checks it against its id.
    ///
    /// # Errors
    /// [`Error::BadChunk`] when it cannot be read, decoded, or does not hash to its id.
    pub fn read_at(&self, id: &ChunkId, loc: &Location) -> Result<Vec<u8>> {
        let mut plain = vec![0u8; loc.plain_len as usize];
        self.read_into(id, loc, &mut plain)?;
        Ok(plain)
    }

    /// Reads a chunk at a known location into the front of `out` and checks it against its
    /// id; the stored bytes pass through a buffer each thread keeps, so nothing is allocated.
    ///
    /// # Errors
    /// [`Error::BadChunk`] when it cannot be read, decoded, or does not hash to its id.
    pub fn read_into(&self, id: &ChunkId, loc: &Location, out: &mut [u8]) -> Result<()> {
        thread_local! {
            static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        STORED.with_borrow_mut(|stored| {
            let header = self.read_frame(id, loc, stored)?;
            chunk::decode_into(id, header.codec, header.plain_len, stored, out)
                .map_err(|what| bad_chunk(id, loc, what))
        })
    }

    /// The frame of chunk `id` at `loc`: its header, its stored bytes into `stored`.
    fn read_frame(
        &self,
        id: &ChunkId,
        loc: &Location,
        stored: &mut Vec<u8>,
    ) -> Result<pack::FrameHeader> {
        // A tree chunk of a store in a bucket: from this machine's cache when it holds it (a
        // walk reads its tree chunks one after the other: a round trip each otherwise).
        let cached = loc.kind == chunk::ChunkKind::Tree && self.bucket.is_some();
        if cached && let Some(h) = self.tree_cache().get(id, stored) {
            return Ok(h);
        }
        // The bucket's own failures (after its retries) are not damage: they stop the reader.
        let header = self.frame_into(loc, stored).map_err(|e| match e {
            e @ Error::Objects { .. } => e,
            e => bad_chunk(id, loc, e.to_string()),
        })?;
        if header.id != *id {
            return Err(bad_chunk(
                id,
                loc,
                format!("the frame there holds chunk {}", header.id),
            ));
        }
        if cached {
            self.tree_cache().put(&header, stored);
        }
        Ok(header)
    }

    /// A chunk as its pack holds it (compressed or plain, as stored), checked against its id
    /// (decoded and hashed): what a copy of the chunk to another store sends, without
    /// compressing it again.
    ///
    /// # Errors
    /// [`Error::MissingChunk`] or [`Error::BadChunk`].
    pub fn read_encoded(&self, id: &ChunkId) -> Result<crate::EncodedChunk> {
        let loc = self.location(id)?.ok_or(Error::MissingChunk(*id))?;
        self.encoded_at(id, &loc)
    }

    /// As [`Store::read_encoded`], from the frame at `loc`.
    pub(crate) fn encoded_at(&self, id: &ChunkId, loc: &Location) -> Result<crate::EncodedChunk> {
        let (stored, loc) = (self.stored_at(id, loc)?, *loc);
        // Checked into a buffer each thread keeps: a fresh 256 KiB one per chunk costs an mmap,
        // its page faults and an munmap.
        thread_local! {
            static PLAIN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        PLAIN
            .with_borrow_mut(|plain| {
                plain.resize(stored.plain_len as usize, 0);
                chunk::decode_into(id, stored.codec, stored.plain_len, &stored.bytes, plain)
            })
            .map_err(|what| bad_chunk(id, &loc, what))?;
        Ok(stored)
    }

    /// A chunk as its pack holds it, its frame checked (magic, CRC, id) but its bytes not
    /// decoded: for a reader that checks the chunk against its id itself (a client of `cairn
    /// serve` does), so that the bytes are not decoded and hashed twice.
    ///
    /// # Errors
    /// [`Error::MissingChunk`], or [`Error::BadChunk`] when the frame cannot be read.
    pub fn read_stored(&self, id: &ChunkId) -> Result<crate::EncodedChunk> {
        Ok(self.read_stored_at(id)?.0)
    }

    fn read_stored_at(&self, id: &ChunkId) -> Result<(crate::EncodedChunk, Location)> {
        let loc = self.location(id)?.ok_or(Error::MissingChunk(*id))?;
        Ok((self.stored_at(id, &loc)?, loc))
    }

    /// The frame of `id` at `loc`, as stored (its frame checked, its bytes not decoded).
    fn stored_at(&self, id: &ChunkId, loc: &Location) -> Result<crate::EncodedChunk> {
        let mut bytes = Vec::new();
        let header = self.read_frame(id, loc, &mut bytes)?;
        Ok(crate::EncodedChunk {
            id: *id,
            kind: header.kind,
            codec: header.codec,
            plain_len: header.plain_len,
            bytes,
        })
    }

    /// Reads a chunk by id and checks it.
    ///
    /// # Errors
    /// [`Error::MissingChunk`] or [`Error::BadChunk`].
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.location(id)?.ok_or(Error::MissingChunk(*id))?;
        self.read_at(id, &loc)
    }

    /// Every recovery point, oldest first.
    ///
    /// # Errors
    /// Index errors or an unreadable catalogue entry.
    pub fn points(&self) -> Result<Vec<RecoveryPoint>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_POINTS)?, IteratorMode::Start)
        {
            let (k, v) = item.map_err(self.index_err())?;
            let p: RecoveryPoint = serde_json::from_slice(&v).map_err(|e| {
                Error::Point(format!(
                    "{}: unreadable catalogue entry: {e}",
                    hex::encode(k)
                ))
            })?;
            out.push(p);
        }
        out.sort_by(|a, b| {
            (a.time, &a.vm, &a.disk, a.committed).cmp(&(b.time, &b.vm, &b.disk, b.committed))
        });
        Ok(out)
    }

    /// The point of id `id` (32 hex digits), if the catalogue holds it.
    ///
    /// # Errors
    /// Not a point id, index errors, an unreadable entry.
    pub fn point_by_id(&self, id: &str) -> Result<Option<RecoveryPoint>> {
        let v = self
            .db
            .get_cf(self.cf(CF_POINTS)?, point_key(id)?)
            .map_err(self.index_err())?;
        v.map(|v| {
            serde_json::from_slice(&v)
                .map_err(|e| Error::Point(format!("{id}: unreadable catalogue entry: {e}")))
        })
        .transpose()
    }

    /// The ids of the points forgotten from this store (`STORE/forgotten`): a replica never
    /// brings one back.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn forgotten_ids(&self) -> Result<std::collections::HashSet<String>> {
        let path = self.root.join(crate::catalogue::FORGOTTEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .filter(|l| l.len() == 32 && l.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_owned)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(Error::io(&path, "reading the forgotten points")(e)),
        }
    }

    /// The newest point of a VM's disk.
    ///
    /// # Errors
    /// Index errors.
    pub fn latest(&self, vm: &VmKey, disk: &str) -> Result<Option<RecoveryPoint>> {
        Ok(self
            .points()?
            .into_iter()
            .filter(|p| p.disk == disk && &p.vm_key() == vm)
            .max_by_key(|p| (p.time, p.committed)))
    }

    /// Finds a point as [`crate::select`] reads a name: an id (with or without the dashes of
    /// the UUID cairn writes into VHDs), a unique id prefix, or `VM/DISK@latest`,
    /// `VM/DISK@latest~N`, `VM/DISK@DATE`, `VM/DISK@DATETIME`.
    ///
    /// # Errors
    /// [`Error::Point`] when nothing or more than one point matches (the candidates listed).
    pub fn resolve(&self, spec: &str) -> Result<RecoveryPoint> {
        let points = self.points()?;
        crate::select::resolve(&points, spec, self.config.tz()).map_err(Error::Point)
    }

    /// The reference list of a point, one ref per chunk of its disk. It grows with the disk
    /// (32 bytes a chunk): a reader of big disks walks the tree instead ([`Walk`]).
    ///
    /// # Errors
    /// A missing or bad tree chunk.
    pub fn chunk_refs(&self, point: &RecoveryPoint) -> Result<Vec<ChunkRef>> {
        let mut refs = Vec::new();
        let mut walk = Walk::new(self, point)?;
        while let Some(x) = walk.next_extent()? {
            match x.body {
                Body::Refs(r) => refs.extend_from_slice(&r),
                Body::Zero => refs.extend(std::iter::repeat_n(ChunkRef::Zero, x.count as usize)),
                Body::Unreadable(what) => return Err(Error::Point(what)),
            }
        }
        Ok(refs)
    }

    /// Starts writing: new chunks go to packs, nothing is visible until [`Session::commit`].
    ///
    /// # Errors
    /// [`Error::Usage`] when the store was opened read-only.
    pub fn session(&self) -> Result<Session<'_>> {
        self.require_writer()?;
        let bad = self.bad_chunks()?.into_iter().map(|(id, _)| id).collect();
        // One stat per pack: a pack file removed by hand (or lost), or cut short, must not be
        // reused where it is gone.
        let lost = crate::lost::LostPacks::find(&self.pack_infos()?, &self.stored_pack_lengths()?);
        Ok(Session::new(self, bad, lost))
    }

    /// The store's commit lock: within the process that holds the write lock, commits, forgets,
    /// protects and a collection's final step take it, so that each reads and changes the
    /// reference counts alone. Many sessions write packs at once; their commits queue here
    /// (briefly: a commit's batches, not its chunks).
    ///
    /// # Errors
    /// A holder panicked.
    pub fn commit_lock(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.commits
            .lock()
            .map_err(|_| Error::Usage("a commit panicked in this process".into()))
    }

    /// Fails unless the store was opened for writing.
    pub(crate) fn require_writer(&self) -> Result<()> {
        if self.lock.is_none() {
            return Err(Error::Usage("the store was opened read-only".into()));
        }
        Ok(())
    }

    /// What the last open found amiss between root files and catalogue (see `agree`), and
    /// root files it could not read.
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Every file under `dir` (recursively) whose extension is `ext`; a missing folder has none.
pub(crate) fn files_under(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.map_err(Error::io(&dir, "listing the folder"))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn read_root_file(path: &Path) -> Result<RecoveryPoint> {
    let bytes = std::fs::read(path).map_err(Error::io(path, "reading a root file"))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Point(format!("{}: unreadable root file: {e}", path.display())))
}

/// A chunk at `loc` that cannot be read or is not what its id says.
pub(crate) fn bad_chunk(id: &ChunkId, loc: &Location, what: String) -> Error {
    Error::BadChunk {
        id: *id,
        where_: format!("pack {} offset {}", loc.pack.to_hex(), loc.offset),
        what,
    }
}

/// The spool folder of the store at `root` (see [`Store::spool_dir`]).
#[must_use]
pub fn spool_dir(root: &Path) -> PathBuf {
    root.join("tmp")
}

pub(crate) fn point_key(id: &str) -> Result<[u8; 16]> {
    let mut k = [0u8; 16];
    hex::decode_to_slice(id, &mut k)
        .map_err(|_| Error::Point(format!("{id:?} is not a point id")))?;
    Ok(k)
}
