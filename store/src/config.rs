//! `STORE/cairn.toml`: what kind of store this is.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Store format version of an unencrypted store written by this code. Version 1: packs of
/// [`crate::pack`] frames, a RocksDB index, JSON root files whose segments are leaves of refs.
/// Version 2: points' refs may be trees of leaves and nodes ([`crate::tree`]). This code reads
/// both; a writer upgrades a store of version 1 when it opens it, so that a cairn that reads
/// only version 1 refuses the store instead of misreading its trees.
pub const FORMAT_VERSION: u32 = 2;
/// Store format version of an encrypted store ([`crate::keys`]): made so, never upgraded to,
/// so that a cairn that does not know encryption refuses it instead of misreading it.
pub const ENCRYPTED_FORMAT_VERSION: u32 = crate::format::STORE.current();
/// The oldest store format version this code reads.
pub const OLDEST_FORMAT_VERSION: u32 = crate::format::STORE.oldest();
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
    /// Compression of chunks.
    pub compression: Compression,
    /// zstd level.
    pub zstd_level: i32,
    /// A pack is sealed and a new one started past this many bytes.
    pub pack_target_size: u64,
    /// The store's time zone (an IANA name): times are shown in it, times written without a
    /// zone are read in it, and retention counts its days, weeks and months in it, whatever
    /// the `TZ` of the shell. Stores made before it existed are UTC.
    #[serde(default = "utc")]
    pub timezone: String,
    /// Where the packs live when not in `STORE/packs` (an S3-compatible bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs: Option<PacksConfig>,
    /// The minimum retention, in days: no forget, prune or gc, local or through a server,
    /// removes a point committed fewer days ago, nor a chunk such a point holds. Set only on
    /// the store's machine (`cairn policy min-retention`), never through the API; 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_retention_days: u32,
    /// The largest disk a point may claim, in bytes: a commit of a larger one is refused (a
    /// client cannot make every report and verify walk an exabyte of claimed zeros).
    #[serde(
        default = "default_max_disk",
        skip_serializing_if = "is_default_max_disk"
    )]
    pub max_disk_bytes: u64,
    /// How the store is encrypted (`cairn init --encrypt`); none: it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// An encrypted store's `[encryption]`: what a reader needs to know to use its key, and
/// nothing of the key itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// How chunks are sealed: `xchacha20poly1305`.
    pub cipher: String,
    /// How chunks are named: `blake3-keyed`.
    pub chunk_ids: String,
    /// The fingerprint of the store's master key ([`cairn_crypt::MasterKey::fingerprint`]):
    /// a key that is not this one is refused before any work.
    pub key_fingerprint: String,
}

impl EncryptionConfig {
    /// The cipher this code seals with.
    pub const CIPHER: &str = "xchacha20poly1305";
    /// The ids this code computes.
    pub const CHUNK_IDS: &str = "blake3-keyed";

    /// The `[encryption]` of a store made with `key`.
    #[must_use]
    pub fn for_key(key: &cairn_crypt::MasterKey) -> Self {
        Self {
            cipher: Self::CIPHER.into(),
            chunk_ids: Self::CHUNK_IDS.into(),
            key_fingerprint: key.fingerprint(),
        }
    }
}

/// The default of [`StoreConfig::max_disk_bytes`]: 256 TiB, four times the largest disk of the
/// formats cairn reads (a 64 TiB VHDX), far above any VM disk seen.
pub const DEFAULT_MAX_DISK_BYTES: u64 = 256 << 40;

fn default_max_disk() -> u64 {
    DEFAULT_MAX_DISK_BYTES
}

fn is_default_max_disk(n: &u64) -> bool {
    *n == DEFAULT_MAX_DISK_BYTES
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How a store compresses its chunks (`compression = "zstd"` in `cairn.toml`); a store naming
/// one this code does not know is refused when its config is read.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd at the config's `zstd_level` (chunks that do not shrink are stored as they are).
    Zstd,
}

/// A bucket that holds a store's packs, root files and a copy of its config (`cairn init
/// --packs s3://BUCKET/PREFIX`). The credentials are not kept: they come from the usual
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` of each command's environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PacksConfig {
    /// `s3://BUCKET/PREFIX`.
    pub url: String,
    /// The S3 endpoint (`https://s3.example`); none: AWS's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region (none: `AWS_REGION`, else `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

fn utc() -> String {
    "UTC".into()
}

/// Reads an IANA time zone name (`Europe/Paris`, `UTC`).
///
/// # Errors
/// A name the time zone database does not hold.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz> {
    name.parse().map_err(|_| {
        Error::Usage(format!(
            "{name:?} is not a time zone name (IANA names such as Europe/Paris, America/New_York, \
             UTC)"
        ))
    })
}

/// The time zone of this machine: `TZ` when it names a zone, else the zone `/etc/localtime`
/// links to, else UTC.
#[must_use]
pub fn local_timezone() -> String {
    let from_env = std::env::var("TZ")
        .ok()
        .map(|t| t.trim_start_matches(':').to_owned());
    let from_link = std::fs::read_link("/etc/localtime").ok().and_then(|l| {
        let l = l.to_string_lossy().into_owned();
        l.split_once("zoneinfo/").map(|(_, z)| z.to_owned())
    });
    [from_env, from_link]
        .into_iter()
        .flatten()
        .find(|z| parse_timezone(z).is_ok())
        .unwrap_or_else(utc)
}

impl StoreConfig {
    /// Points committed after this instant are held by the minimum retention at `now` (none
    /// when the store has none).
    #[must_use]
    pub fn retention_cutoff(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        (self.min_retention_days > 0)
            .then(|| now - chrono::Duration::days(i64::from(self.min_retention_days)))
    }

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
            compression: Compression::Zstd,
            // Level 1: on the shared workload it compresses as well as 3 (3% smaller, even) at
            // 1.6 times the speed (benches/run.sh).
            zstd_level: 1,
            pack_target_size: 128 << 20,
            timezone: utc(),
            packs: None,
            min_retention_days: 0,
            max_disk_bytes: DEFAULT_MAX_DISK_BYTES,
            encryption: None,
        })
    }

    /// The fingerprint of an encrypted store's key; `None` for an unencrypted store (two stores
    /// with the same answer name and seal chunks alike).
    #[must_use]
    pub fn key_fingerprint(&self) -> Option<&str> {
        self.encryption.as_ref().map(|e| e.key_fingerprint.as_str())
    }

    /// This config, for a store encrypted with `key`.
    #[must_use]
    pub fn encrypted(mut self, key: &cairn_crypt::MasterKey) -> Self {
        self.format_version = ENCRYPTED_FORMAT_VERSION;
        self.encryption = Some(EncryptionConfig::for_key(key));
        self
    }

    /// Reads and checks `root/cairn.toml`.
    ///
    /// # Errors
    /// A missing or unreadable file, or a format version this code does not know.
    pub fn load(root: &Path) -> Result<Self> {
        let path = root.join(CONFIG_FILE);
        // A folder that holds a store's index or packs lost only its config: say how back.
        let held = root.join("index").is_dir() || root.join("packs").is_dir();
        let back = "the folder holds a store's index and packs: `cairn repair --rebuild-config` \
                    writes the config again";
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Config {
            path: path.clone(),
            what: if held {
                format!("cannot read the store's config ({e}); {back}")
            } else {
                format!("not a cairn store ({e}); create one with `cairn init`")
            },
        })?;
        Self::parse(&text, &path).map_err(|e| match e {
            Error::Config { path, what } if held => Error::Config {
                path,
                what: format!("{what}; {back}"),
            },
            other => other,
        })
    }

    /// Reads and checks a config's text (`path` names where it came from).
    ///
    /// # Errors
    /// Text that is not a config, or a format version this code does not know.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        let cfg: Self = toml::from_str(text).map_err(|e| Error::Config {
            path: path.clone(),
            what: e.to_string(),
        })?;
        if let Err(what) = crate::format::STORE.check(cfg.format_version) {
            return Err(Error::Config { path, what });
        }
        if parse_timezone(&cfg.timezone).is_err() {
            return Err(Error::Config {
                path,
                what: format!("timezone {:?} is not a time zone name", cfg.timezone),
            });
        }
        if Self::new(cfg.chunk_size).is_err() {
            return Err(Error::Config {
                path,
                what: format!("chunk size {} is not valid", cfg.chunk_size),
            });
        }
        // What a hand edit could make wrong, refused here rather than met mid-backup.
        let problem = if !(-7..=22).contains(&cfg.zstd_level) {
            Some(format!(
                "zstd_level {} is not a zstd level (-7 to 22)",
                cfg.zstd_level
            ))
        } else if !(1 << 20..=4 << 30).contains(&cfg.pack_target_size)
            || cfg.pack_target_size < u64::from(cfg.chunk_size)
        {
            Some(format!(
                "pack_target_size {} is not between 1 MiB and 4 GiB (and at least a chunk)",
                cfg.pack_target_size
            ))
        } else if cfg.max_disk_bytes == 0 {
            Some("max_disk_bytes 0 would refuse every disk".to_owned())
        } else {
            cfg.encryption_problem()
        };
        if let Some(what) = problem {
            return Err(Error::Config { path, what });
        }
        Ok(cfg)
    }

    /// What is wrong with the store's encryption settings: an encrypted store of another
    /// format than [`ENCRYPTED_FORMAT_VERSION`] (or the reverse), a cipher or id scheme this
    /// code does not know.
    fn encryption_problem(&self) -> Option<String> {
        let encrypted_format = self.format_version == ENCRYPTED_FORMAT_VERSION;
        match &self.encryption {
            None if encrypted_format => Some(format!(
                "format_version {} is an encrypted store's, and [encryption] is missing",
                self.format_version
            )),
            Some(_) if !encrypted_format => Some(format!(
                "[encryption] in a store of format_version {} (an encrypted store is of {})",
                self.format_version, ENCRYPTED_FORMAT_VERSION
            )),
            Some(e) if e.cipher != EncryptionConfig::CIPHER => Some(format!(
                "encryption cipher {:?} is not known (this cairn seals with {:?})",
                e.cipher,
                EncryptionConfig::CIPHER
            )),
            Some(e) if e.chunk_ids != EncryptionConfig::CHUNK_IDS => Some(format!(
                "encryption chunk_ids {:?} is not known (this cairn computes {:?})",
                e.chunk_ids,
                EncryptionConfig::CHUNK_IDS
            )),
            Some(e)
                if !(e.key_fingerprint.len() == 32 && hex::decode(&e.key_fingerprint).is_ok()) =>
            {
                Some(format!(
                    "encryption key_fingerprint {:?} is not 32 hex digits",
                    e.key_fingerprint
                ))
            }
            _ => None,
        }
    }

    /// The store's time zone.
    #[must_use]
    pub fn tz(&self) -> chrono_tz::Tz {
        parse_timezone(&self.timezone).unwrap_or(chrono_tz::Tz::UTC)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_round_trips_and_an_unknown_compression_is_refused_naming_the_file() {
        let cfg = StoreConfig::new(DEFAULT_CHUNK_SIZE).expect("config");
        let text = cfg.to_toml().expect("toml");
        assert!(text.contains("compression = \"zstd\""), "{text}");
        let path = Path::new("/backups/store/cairn.toml");
        assert_eq!(StoreConfig::parse(&text, path).expect("parse"), cfg);
        let lz4 = text.replace("compression = \"zstd\"", "compression = \"lz4\"");
        let e = StoreConfig::parse(&lz4, path).expect_err("lz4").to_string();
        assert!(
            e.contains("/backups/store/cairn.toml") && e.contains("lz4"),
            "{e}"
        );
    }

    #[test]
    fn values_a_hand_edit_could_break_are_refused_when_read() {
        let cfg = StoreConfig::new(DEFAULT_CHUNK_SIZE).expect("config");
        let text = cfg.to_toml().expect("toml");
        let path = Path::new("/backups/store/cairn.toml");
        for (from, to, says) in [
            ("zstd_level = 1", "zstd_level = 99", "zstd_level 99"),
            ("zstd_level = 1", "zstd_level = -100", "zstd_level -100"),
            (
                "pack_target_size = 134217728",
                "pack_target_size = 0",
                "pack_target_size 0",
            ),
            (
                "pack_target_size = 134217728",
                "pack_target_size = 1099511627776",
                "pack_target_size 1099511627776",
            ),
        ] {
            assert!(text.contains(from), "{text}");
            let e = StoreConfig::parse(&text.replace(from, to), path)
                .expect_err(to)
                .to_string();
            assert!(e.contains(says) && e.contains("cairn.toml"), "{e}");
        }
        let zero = format!("{text}max_disk_bytes = 0\n");
        assert!(StoreConfig::parse(&zero, path).is_err());
    }
}
