//! How a store names and seals its chunks.
//!
//! An unencrypted store names a chunk by the BLAKE3 hash of its plain bytes and keeps those
//! bytes as they are or compressed. An encrypted store (`cairn init --encrypt`, store format 3)
//! names a chunk by BLAKE3 keyed with its master key's id key, and seals a data chunk's stored
//! bytes (compressed first) with XChaCha20-Poly1305 ([`cairn_crypt`]), the chunk's id, kind,
//! codec and length bound to them as associated data.
//!
//! # What stays readable, and why
//! Tree chunks are not sealed. They hold only keyed chunk ids and zero marks, and everything
//! that keeps a store without its key walks them: gc and prune (which chunks are held), verify
//! on the server's machine, a server checking that a commit is complete, replication. Their
//! keyed id authenticates them to whoever holds the key (a tree changed, moved or forged
//! without the key does not hash to its id). What a tree tells without the key: which of a
//! disk's chunk-sized places hold zeros, which hold the same chunk as another place, and which
//! changed between two points (PBS's index files tell a PBS server as much). Root files stay
//! readable too (VM name, UUID, disk, times, sizes, labels, notes): the server needs them for
//! retention, reports and tokens' scopes. No data byte and no unkeyed id is ever written.
//!
//! A reader without the key ([`None`] where a `keys` is asked for) reads trees, checked by the
//! frames' CRCs only, and is refused every data chunk ([`crate::chunk::ChunkError::Locked`]).

use std::sync::Arc;

use cairn_crypt::MasterKey;

use crate::chunk::{ChunkId, ChunkKind, Codec};
use crate::error::{Error, Result};

/// How chunks are named and sealed: the keys of a store that can write and fully read.
#[derive(Clone, Debug)]
pub enum Keys {
    /// An unencrypted store: BLAKE3 ids, nothing sealed.
    Clear,
    /// An encrypted store, with its master key.
    Sealed(Arc<MasterKey>),
}

impl Keys {
    /// The id of a chunk of `data`.
    #[must_use]
    pub fn id_of(&self, data: &[u8]) -> ChunkId {
        match self {
            Self::Clear => ChunkId(*blake3::hash(data).as_bytes()),
            Self::Sealed(k) => ChunkId(k.chunk_id(data)),
        }
    }

    /// Whether data chunks are sealed.
    #[must_use]
    pub fn seals(&self) -> bool {
        matches!(self, Self::Sealed(_))
    }
}

/// The associated data a chunk's seal binds: its id, kind, codec (the sealed one) and plain
/// length, so that a sealed chunk put under another id, or its frame header changed, fails to
/// open.
#[must_use]
pub fn seal_aad(id: &ChunkId, kind: ChunkKind, codec: Codec, plain_len: u32) -> [u8; 38] {
    let mut aad = [0u8; 38];
    aad[..32].copy_from_slice(&id.0);
    aad[32] = kind.code();
    aad[33] = codec.code();
    aad[34..].copy_from_slice(&plain_len.to_be_bytes());
    aad
}

/// The keys of the store of `config` (`what` names it) made of `key`: refused, before any
/// work, for an unencrypted store or another store's key (told apart by fingerprint).
///
/// # Errors
/// [`Error::Usage`] naming both fingerprints.
pub fn keys_of(config: &crate::StoreConfig, key: MasterKey, what: &str) -> Result<Keys> {
    let Some(want) = config.key_fingerprint() else {
        return Err(Error::Usage(format!(
            "{what} is not encrypted: it takes no key"
        )));
    };
    let got = key.fingerprint();
    if got != want {
        return Err(Error::Usage(format!(
            "the key given (fingerprint {got}) is not the key of {what} (fingerprint {want})"
        )));
    }
    Ok(Keys::Sealed(Arc::new(key)))
}

impl crate::store::Store {
    /// Gives an encrypted store its key (read by the caller from a key file): refused, before
    /// any work, when it is not the store's key.
    ///
    /// # Errors
    /// [`Error::Usage`] for an unencrypted store or another store's key.
    pub fn unlock(&mut self, key: MasterKey) -> Result<()> {
        let what = self.root.display().to_string();
        self.keys = Some(keys_of(&self.config, key, &what)?);
        Ok(())
    }

    /// Gives the store `keys` (another handle's, [`crate::store::Store::chunk_keys`]): an
    /// encrypted store's key, checked as [`crate::store::Store::unlock`] does; an unencrypted
    /// store takes [`Keys::Clear`] only.
    ///
    /// # Errors
    /// Keys that are not the store's.
    pub fn unlock_with(&mut self, keys: &Keys) -> Result<()> {
        match keys {
            Keys::Sealed(k) => self.unlock(MasterKey::clone(k)),
            Keys::Clear if self.config.encryption.is_none() => Ok(()),
            Keys::Clear => Err(Error::Usage(format!(
                "{} is encrypted: unencrypted keys do not open it",
                self.root.display()
            ))),
        }
    }

    /// Whether the store is encrypted.
    #[must_use]
    pub fn is_encrypted(&self) -> bool {
        self.config.encryption.is_some()
    }

    /// The store's keys, when it can name and open chunks: an unencrypted store, or an
    /// encrypted one given its key ([`crate::store::Store::unlock`]).
    #[must_use]
    pub fn chunk_keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    /// The store's keys, for work that names or opens chunks (a backup, a restore).
    ///
    /// # Errors
    /// [`Error::NoKey`]: an encrypted store opened without its key.
    pub fn keys(&self) -> Result<&Keys> {
        self.keys.as_ref().ok_or_else(|| Error::NoKey {
            store: self.root.clone(),
        })
    }
}

/// The folder (and bucket prefix) of an encrypted store's recovery seals.
pub const KEYS_DIR: &str = "keys";

impl crate::store::Store {
    /// Keeps a recovery seal (`cairn key add-recovery`) as `keys/recovery-NAME.json`, in the
    /// bucket too for a store in one (a store rebuilt from its bucket keeps its seals): the
    /// master key sealed for a recovery key, which tells nothing without its private half.
    ///
    /// # Errors
    /// A store opened read-only, I/O and bucket errors.
    pub fn put_recovery_seal(&self, name: &str, text: &str) -> Result<std::path::PathBuf> {
        self.require_writer()?;
        let rel = format!("{KEYS_DIR}/recovery-{name}.json");
        if let Some(b) = &self.bucket {
            b.put(&rel, text.as_bytes())?;
        }
        let path = self.root.join(&rel);
        crate::files::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// The store's recovery seals: their names and texts, from its folder and its bucket.
    ///
    /// # Errors
    /// I/O and bucket errors.
    pub fn recovery_seals(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let dir = self.root.join(KEYS_DIR);
        for path in crate::files::files_under(&dir, "json")? {
            let text = std::fs::read_to_string(&path)
                .map_err(Error::io(&path, "reading a recovery seal"))?;
            out.push((path.display().to_string(), text));
        }
        if let Some(b) = &self.bucket {
            for o in b.list(&format!("{KEYS_DIR}/"))? {
                let here = self.root.join(&o.name);
                if !here.exists() {
                    let text = String::from_utf8_lossy(&b.get(&o.name)?).into_owned();
                    out.push((o.name.clone(), text));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_binds_id_kind_codec_and_length() {
        let id = ChunkId([7; 32]);
        let a = seal_aad(&id, ChunkKind::Data, Codec::SealedZstd, 4096);
        assert_ne!(
            a,
            seal_aad(&ChunkId([8; 32]), ChunkKind::Data, Codec::SealedZstd, 4096)
        );
        assert_ne!(a, seal_aad(&id, ChunkKind::Tree, Codec::SealedZstd, 4096));
        assert_ne!(a, seal_aad(&id, ChunkKind::Data, Codec::SealedPlain, 4096));
        assert_ne!(a, seal_aad(&id, ChunkKind::Data, Codec::SealedZstd, 4097));
    }
}
