//! The store: open, read chunks and points, and write new ones in a [`Session`].
//!
//! This file makes and opens a store; the rest of [`Store`] lives by idea: its index database
//! (`db`), its files (`files`), reading chunks (`read`), the catalogue (`catalogue`), and
//! the modules named in the crate documentation.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::DB;

use crate::config::{CONFIG_FILE, StoreConfig};
use crate::db::{open_db, open_index, sync_write};
use crate::error::{Error, Result};
use crate::files::{files_under, remove_stale_tmp, utf8_path, write_atomic};
use crate::index::{CF_META, META_REFCOUNTS};
use crate::lock::WriteLock;
use crate::pack::PackId;
use crate::session::Session;

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
    pub(crate) files: Mutex<HashMap<PackId, Arc<File>>>,
    /// The bucket the packs live in, if not in `STORE/packs` (the `bucket` module).
    pub(crate) bucket: Option<Arc<dyn crate::objects::Objects>>,
    warnings: Vec<String>,
    /// How its chunks are named and sealed; `None`: an encrypted store not given its key
    /// (the `keys` module).
    pub(crate) keys: Option<crate::keys::Keys>,
    /// Held by each commit, forget, protect and collection of this process (see
    /// [`Store::commit_lock`]).
    commits: Mutex<()>,
}

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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("config", &self.config)
            .finish_non_exhaustive()
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
        let config_keys = config
            .encryption
            .is_none()
            .then_some(crate::keys::Keys::Clear);
        let mut store = Self {
            root: root.to_path_buf(),
            config,
            db,
            lock,
            _reader: reader,
            files: Mutex::new(HashMap::new()),
            bucket,
            warnings: Vec::new(),
            keys: config_keys,
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
            // An index written by an older cairn: its catalogue's orders are built once.
            store.build_orders()?;
            crate::run::abandon_unfinished(&store.root)?;
            // Temporary files of root files whose write was killed before its rename.
            for tmp in files_under(&store.root.join("points"), "tmp")? {
                std::fs::remove_file(&tmp).map_err(Error::io(&tmp, "removing a temporary file"))?;
            }
            // ... and of the store's other files, written by writers and readers alike (the
            // retention, verify and boot-check records, policies, standby journals, quarantine
            // records):
            // those of processes that are gone.
            for dir in [
                "",
                "standby",
                "boot-checks",
                crate::quarantine::QUARANTINE_DIR,
            ] {
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

    /// The folder of pack files.
    #[must_use]
    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    /// The store's spool folder (`tmp/`): VHD streams that cannot be read in one pass, a
    /// bucket pack being scanned, `serve-nbd`'s overlays. What is there belongs to no point.
    #[must_use]
    pub fn spool_dir(&self) -> PathBuf {
        crate::files::spool_dir(&self.root)
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
            .map_err(|_| Error::Internal("a commit panicked in this process".into()))
    }

    /// Fails unless the store was opened for writing.
    pub(crate) fn require_writer(&self) -> Result<()> {
        if self.lock.is_none() {
            return Err(Error::Internal("the store was opened read-only".into()));
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
