//! The index database: RocksDB's options (memory bounded whatever the index's size), opening
//! it, synced writes, and keeping its table files few.

use std::collections::HashMap;
use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};

use crate::error::{Error, Result};
use crate::index::{CF_CHUNKS, COLUMN_FAMILIES, Location};
use crate::store::Store;

/// Table files of a column family from which a writer, as it closes, merges them when they are
/// small (see [`Store::settle_index`]).
const SETTLE_FILES: usize = 16;
/// Table files of the whole index from which a writer, as it closes, merges each family's small
/// files (see [`Store::settle_index`]).
const SETTLE_ALL_FILES: usize = 32;
/// Average bytes of a table file under which they count as small.
const SETTLE_SMALL_FILE: usize = 1 << 20;

/// Bytes of write-ahead log above which a writer writes its memtables into table files as it
/// closes (see [`Store::settle_index`]).
const FLUSH_AT_CLOSE: u64 = 4 << 20;
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

pub(crate) fn open_db(root: &Path, read_only: bool) -> Result<(DB, Option<String>)> {
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
    pub(crate) fn settle_index(&self) {
        // What the write-ahead log holds, every reader's open replays into memory: a writer
        // that leaves more than a little there (a fleet's catalogue, a large backup's chunk
        // entries) writes it into table files as it closes. (A short writer leaves it to the
        // next writer's open, as before: one set of small files, not two.)
        let logged: u64 = std::fs::read_dir(self.root.join("index"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        if logged > FLUSH_AT_CLOSE {
            for cf in COLUMN_FAMILIES.iter().filter_map(|n| self.db.cf_handle(n)) {
                let _ = self.db.flush_cf(cf);
            }
        }
        // Each family's small files are merged when they are many, or when the whole index's
        // are (nine families gain one each per writer: together they reach a bound sooner).
        let families = self.index_files();
        let all: usize = families.iter().map(|(_, files, _)| files).sum();
        for (name, files, bytes) in families {
            let many = files >= SETTLE_FILES || (all >= SETTLE_ALL_FILES && files >= 2);
            let small = many && bytes / files < SETTLE_SMALL_FILE;
            if let (true, Some(cf)) = (small, self.db.cf_handle(&name)) {
                // The last level too: that is where the small files sit.
                let mut o = rocksdb::CompactOptions::default();
                o.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
                self.db
                    .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &o);
            }
        }
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
}

pub(crate) fn sync_write() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl Store {
    /// Indexes `chunks` as held in packs that need not exist, each counted once, without
    /// syncing: a synthetic index for the large-index benchmark (`benches/src/bin/fill-index.rs`:
    /// a store of 10 TB holds 40 M chunks, out of reach of backups in a benchmark run). Nothing
    /// reads the packs: never on a store that matters.
    ///
    /// # Errors
    /// A store opened read-only, index errors.
    #[doc(hidden)]
    pub fn index_synthetic(&self, chunks: &[(crate::ChunkId, Location)]) -> Result<()> {
        self.require_writer()?;
        let (chunks_cf, refs_cf) = (self.cf(CF_CHUNKS)?, self.cf(crate::index::CF_REFS)?);
        let mut batch = WriteBatch::default();
        for (id, loc) in chunks {
            batch.put_cf(chunks_cf, id.0, loc.encode());
            batch.put_cf(refs_cf, id.0, 1u64.to_be_bytes());
        }
        let mut write = WriteOptions::default();
        write.disable_wal(true);
        self.db.write_opt(batch, &write).map_err(self.index_err())
    }

    /// Flushes and compacts the chunks' and references' column families (after
    /// [`Store::index_synthetic`]), as a store that grew over years holds them.
    ///
    /// # Errors
    /// Index errors.
    #[doc(hidden)]
    pub fn compact_chunk_index(&self) -> Result<()> {
        for name in [CF_CHUNKS, crate::index::CF_REFS] {
            let cf = self.cf(name)?;
            self.db.flush_cf(cf).map_err(self.index_err())?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }
}
