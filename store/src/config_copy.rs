//! A copy of `cairn.toml` in the index, and `cairn repair --rebuild-config` from it (or, when
//! the index holds none, from the root files and packs).
//!
//! `cairn.toml` is a small text file an admin can delete or a disk can garble; without it no
//! command opens the store. Every writer keeps a copy of it in the index's metadata (a
//! checksummed RocksDB entry). A rebuild writes the file again from that copy; an index without
//! one (older stores, or an index lost as well) gives what the store's own files say: the
//! chunk size from the root files (else the packs' largest data chunk), a new store id, the
//! time zone given (else UTC), no minimum retention (said, to be set again).

use std::path::Path;

use crate::catalogue::read_root_file;
use crate::config::{CONFIG_FILE, StoreConfig};
use crate::error::{Error, Result};
use crate::files::{files_under, write_atomic};
use crate::index::CF_META;
use crate::store::Store;

/// The metadata key of the copy.
const META_CONFIG: &str = "config";

impl Store {
    /// Keeps the index's copy of the config current (a writer, at open).
    pub(crate) fn copy_config(&self) -> Result<()> {
        let text = self.config.to_toml()?;
        let meta = self.cf(CF_META)?;
        let have = self
            .db
            .get_cf(meta, META_CONFIG)
            .map_err(self.index_err())?;
        if have.as_deref() != Some(text.as_bytes()) {
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(meta, META_CONFIG, text.as_bytes());
            self.write_synced(batch)?;
        }
        Ok(())
    }

    /// Writes `cairn.toml` of the store at `root` again (see the module doc); refuses when the
    /// one there reads well. `timezone` is used when no copy is found. Returns the config and
    /// where it came from.
    ///
    /// # Errors
    /// A config that reads well, a folder that holds no store, I/O errors.
    pub fn rebuild_config(root: &Path, timezone: Option<&str>) -> Result<(StoreConfig, String)> {
        let path = root.join(CONFIG_FILE);
        if let Ok(text) = std::fs::read_to_string(&path)
            && StoreConfig::parse(&text, &path).is_ok()
        {
            return Err(Error::Usage(format!(
                "{} reads well: nothing to rebuild",
                path.display()
            )));
        }
        let index = root.join("index");
        if !index.is_dir() && !root.join("packs").is_dir() && !root.join("points").is_dir() {
            return Err(Error::Usage(format!(
                "{} holds no store (no index, packs or points): nothing to rebuild",
                root.display()
            )));
        }
        let _lock = crate::lock::WriteLock::acquire(root, false)?;
        let copied = crate::index::open_as_it_is(&index)
            .and_then(|db| {
                let cf = db.cf_handle(CF_META)?;
                let bytes = db.get_cf(cf, META_CONFIG).ok()??;
                String::from_utf8(bytes).ok()
            })
            .and_then(|text| StoreConfig::parse(&text, &index).ok());
        let (config, source) = match copied {
            Some(c) => (c, "the copy in the index".to_owned()),
            None => derive(root, timezone)?,
        };
        write_atomic(&path, config.to_toml()?.as_bytes())?;
        Ok((config, source))
    }
}

/// A config from what the store's files say (no copy in the index).
fn derive(root: &Path, timezone: Option<&str>) -> Result<(StoreConfig, String)> {
    let mut sizes: std::collections::BTreeMap<u32, u64> = Default::default();
    for p in files_under(&root.join("points"), "json")? {
        if let Ok(point) = read_root_file(&p) {
            *sizes.entry(point.chunk_size).or_default() += 1;
        }
    }
    let (chunk_size, from) = match sizes.iter().max_by_key(|(_, n)| **n) {
        Some((size, n)) => (*size, format!("the chunk size of {n} root file(s)")),
        None => {
            let mut largest = 0u32;
            for p in files_under(&root.join("packs"), "pack")? {
                if let Ok(scan) = crate::pack::scan(&p) {
                    for f in &scan.frames {
                        if f.header.kind == crate::chunk::ChunkKind::Data {
                            largest = largest.max(f.header.plain_len);
                        }
                    }
                }
            }
            if largest == 0 {
                return Err(Error::Usage(format!(
                    "{}: no root file and no data chunk say the store's chunk size: make a new \
                     store with `cairn init`",
                    root.display()
                )));
            }
            (
                largest.next_power_of_two(),
                "the packs' largest data chunk".to_owned(),
            )
        }
    };
    let mut config = StoreConfig::new(chunk_size)?;
    let zone = timezone.unwrap_or("UTC");
    crate::config::parse_timezone(zone)?;
    config.timezone = zone.to_owned();
    Ok((
        config,
        format!(
            "{from} (no copy in the index): a new store id, time zone {zone}, the default \
             compression and pack size, no minimum retention and the default largest disk; set \
             again what the old file said otherwise (`cairn policy min-retention`)"
        ),
    ))
}
