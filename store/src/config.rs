//! `STORE/cairn.toml`: what kind of store this is.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Store format version written by this code. Version 1: packs of [`crate::pack`] frames, a
/// RocksDB index, JSON root files.
pub const FORMAT_VERSION: u32 = 1;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
/// Largest chunk size accepted (the VHD block size, which every chunk size must divide).
pub const MAX_CHUNK_SIZE: u32 = 2 << 20;
/// The default chunk size, chosen by measurement on the shared workload (see the README).
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;
/// Name of the config file.
pub const CONFIG_FILE: &str = "cairn.toml";

/// The contents of `cairn.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreConfig {
    /// Store format version; a store with a newer one is refused.
    pub format_version: u32,
    /// The store's id.
    pub store_id: String,
    /// Bytes per chunk: a power of two from 64 KiB to 2 MiB.
    pub chunk_size: u32,
    /// Compression of chunks ("zstd").
    pub compression: String,
    /// zstd level.
    pub zstd_level: i32,
    /// A pack is sealed and a new one started past this many bytes.
    pub pack_target_size: u64,
}

impl StoreConfig {
    /// A config for a new store.
    ///
    /// # Errors
    /// A chunk size that is not a power of two from 64 KiB to 2 MiB.
    pub fn new(chunk_size: u32) -> Result<Self> {
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(Error::Usage(format!(
                "chunk size {chunk_size} is not a power of two from 64 KiB to 2 MiB"
            )));
        }
        Ok(Self {
            format_version: FORMAT_VERSION,
            store_id: uuid::Uuid::new_v4().to_string(),
            chunk_size,
            compression: "zstd".into(),
            // Level 1: on the shared workload it compresses as well as 3 (3% smaller, even) at
            // 1.6 times the speed (benches/run.sh).
            zstd_level: 1,
            pack_target_size: 128 << 20,
        })
    }

    /// Reads and checks `root/cairn.toml`.
    ///
    /// # Errors
    /// A missing or unreadable file, or a format version this code does not know.
    pub fn load(root: &Path) -> Result<Self> {
        let path = root.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Config {
            path: path.clone(),
            what: format!("not a cairn store ({e}); create one with `cairn init`"),
        })?;
        let cfg: Self = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            what: e.to_string(),
        })?;
        if cfg.format_version != FORMAT_VERSION {
            return Err(Error::Config {
                path,
                what: format!(
                    "store format version {}, this cairn reads {FORMAT_VERSION}",
                    cfg.format_version
                ),
            });
        }
        if Self::new(cfg.chunk_size).is_err() {
            return Err(Error::Config {
                path,
                what: format!("chunk size {} is not valid", cfg.chunk_size),
            });
        }
        Ok(cfg)
    }

    /// The TOML text.
    ///
    /// # Errors
    /// [`Error::Encode`] if the config cannot be written as TOML (never an empty text).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Encode {
            what: "the store config".into(),
            source: Box::new(e),
        })
    }
}
