//! Encryption at rest for cairn stores: a store whose server, bucket and replicas never see a
//! plaintext byte or a usable chunk id.
//!
//! # Keys
//! A store has one **master key** (32 random bytes), never written in the clear: a **key file**
//! ([`KeyFile`]) holds it sealed under a key derived from a passphrase with Argon2id, the
//! derivation's parameters and salt recorded beside it. Changing the passphrase seals the same
//! master key again: nothing in the store is rewritten. From the master key, one-way
//! derivations (BLAKE3's `derive_key`, each with its own context string) give:
//! - the **id key**: chunk ids are BLAKE3 keyed by it ([`MasterKey::chunk_id`]), so equal data
//!   dedups within the store while ids say nothing without the key (two stores with different
//!   keys give different ids to the same data);
//! - the **seal key**: each chunk's stored bytes are sealed with XChaCha20-Poly1305
//!   ([`MasterKey::seal`]), the chunk id as associated data, so that a chunk moved or swapped
//!   under another id fails to open;
//! - the **fingerprint**, shown to tell keys apart ([`MasterKey::fingerprint`]).
//!
//! # Why XChaCha20-Poly1305
//! Measured on this project's machine (`benches`: `aead-speed`, one core, 256 KiB chunks, the
//! crates as the workspace builds them): XChaCha20-Poly1305 seals at 873 MB/s and opens at
//! 868 MB/s, AES-256-GCM seals at 459 MB/s and opens at 481 MB/s. Speed aside, GCM's 96-bit
//! nonce cannot be drawn at random for billions of chunks, and one taken from the chunk id
//! would collide in its first 96 bits long before a store is large. XChaCha20-Poly1305's
//! 192-bit nonce is taken from the (keyed) chunk id: sealing is deterministic (the same chunk
//! seals to the same bytes, as dedup wants), and two different chunks never share a nonce
//! unless their 256-bit ids agree in 192 bits.
//!
//! The store's chunk codec is meant to be this crate's one caller (the chunk seal lives in the
//! store, below every reader and writer): nothing above the store sees a sealed byte or a key.
//! Not wired in yet (issue 33): this crate is the keys, ids and seal, with their tests.
//!
//! Secrets are zeroized when dropped, and no type here prints one (`Debug` shows only the
//! fingerprint).

mod keyfile;

pub use keyfile::{KdfParams, KeyFile};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of a master key.
pub const KEY_BYTES: usize = 32;
/// Bytes the seal adds to a chunk (the Poly1305 tag).
pub const SEAL_OVERHEAD: usize = 16;

/// Context strings of the derivations from the master key (frozen: changing one changes every
/// id or seal of every encrypted store).
const ID_CONTEXT: &str = "cairn 2026-12 chunk id key";
const SEAL_CONTEXT: &str = "cairn 2026-12 chunk seal key";
const FINGERPRINT_CONTEXT: &str = "cairn 2026-12 key fingerprint";

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase does not open the key file (or the file was altered).
    #[error("the passphrase does not open this key file (or the key file was altered)")]
    WrongPassphrase,
    /// A sealed chunk does not open under its id: damaged, moved, or sealed with another key.
    #[error("chunk {id} does not open: damaged, put under another id, or sealed with another key")]
    Unsealed {
        /// The chunk id it was opened under, hex.
        id: String,
    },
    /// A key file that cannot be read as one.
    #[error("not a cairn key file: {0}")]
    KeyFile(String),
    /// The system gave no randomness.
    #[error("no randomness from the system: {0}")]
    Random(String),
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A store's master key, and the keys derived from it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    key: [u8; KEY_BYTES],
    id_key: [u8; KEY_BYTES],
    seal_key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A new random master key.
    ///
    /// # Errors
    /// The system gave no randomness.
    pub fn generate() -> Result<Self> {
        let mut key = [0u8; KEY_BYTES];
        random(&mut key)?;
        let k = Self::from_bytes(&key);
        key.zeroize();
        Ok(k)
    }

    /// The master key of these bytes (from a key file, a recovery).
    #[must_use]
    pub fn from_bytes(key: &[u8; KEY_BYTES]) -> Self {
        Self {
            key: *key,
            id_key: blake3::derive_key(ID_CONTEXT, key),
            seal_key: blake3::derive_key(SEAL_CONTEXT, key),
        }
    }

    /// The key's bytes, to seal into a key file.
    pub(crate) fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.key
    }

    /// A short, one-way name of the key (32 hex digits): equal for one key wherever it is, and
    /// telling nothing of it.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let d = blake3::derive_key(FINGERPRINT_CONTEXT, &self.key);
        hex::encode(&d[..16])
    }

    /// The id of a chunk of `plain` bytes: BLAKE3 keyed by the id key.
    #[must_use]
    pub fn chunk_id(&self, plain: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.id_key, plain).as_bytes()
    }

    /// Seals `stored` (a chunk's bytes as the store keeps them, compressed or not) under its id
    /// `id`: the ciphertext with its tag ([`SEAL_OVERHEAD`] more bytes). Deterministic: the
    /// nonce is the id's first 24 bytes.
    #[must_use]
    pub fn seal(&self, id: &[u8; 32], stored: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.seal_key).into());
        let payload = Payload {
            msg: stored,
            aad: id,
        };
        // Encryption into a Vec only fails on a length past what the cipher takes (2^38
        // bytes); a chunk is at most a few MiB.
        cipher
            .encrypt(nonce_of(id), payload)
            .unwrap_or_else(|_| Vec::new())
    }

    /// Opens what [`MasterKey::seal`] sealed under `id`.
    ///
    /// # Errors
    /// [`Error::Unsealed`]: the bytes were altered, sealed under another id, or with another
    /// key.
    pub fn open(&self, id: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>> {
        let cipher = XChaCha20Poly1305::new((&self.seal_key).into());
        let payload = Payload {
            msg: sealed,
            aad: id,
        };
        cipher
            .decrypt(nonce_of(id), payload)
            .map_err(|_| Error::Unsealed {
                id: hex::encode(id),
            })
    }
}

/// The nonce of a chunk: its id's first 24 bytes.
fn nonce_of(id: &[u8; 32]) -> &XNonce {
    XNonce::from_slice(&id[..24])
}

/// Fills `buf` from the system's randomness.
pub(crate) fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> MasterKey {
        MasterKey::from_bytes(&[seed; KEY_BYTES])
    }

    #[test]
    fn a_sealed_chunk_opens_under_its_id_only() {
        let k = key(1);
        let plain = b"a chunk of a guest's disk".repeat(100);
        let id = k.chunk_id(&plain);
        let sealed = k.seal(&id, &plain);
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert_ne!(&sealed[..plain.len()], &plain[..]);
        assert_eq!(k.open(&id, &sealed).expect("opens"), plain);
        // Deterministic: the same chunk seals to the same bytes (dedup keeps working).
        assert_eq!(k.seal(&id, &plain), sealed);
        // Under another id (a chunk moved or swapped): refused.
        let other = k.chunk_id(b"another chunk");
        assert!(matches!(
            k.open(&other, &sealed),
            Err(Error::Unsealed { .. })
        ));
        // One bit flipped anywhere: refused.
        for at in [0, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(
                matches!(k.open(&id, &bad), Err(Error::Unsealed { .. })),
                "{at}"
            );
        }
        // Another key: refused.
        assert!(matches!(
            key(2).open(&id, &sealed),
            Err(Error::Unsealed { .. })
        ));
    }

    #[test]
    fn ids_are_keyed_and_tell_nothing_without_the_key() {
        let plain = vec![7u8; 4096];
        let (a, b) = (key(1), key(2));
        assert_eq!(a.chunk_id(&plain), a.chunk_id(&plain));
        assert_ne!(a.chunk_id(&plain), b.chunk_id(&plain));
        assert_ne!(a.chunk_id(&plain), *blake3::hash(&plain).as_bytes());
    }

    #[test]
    fn the_fingerprint_names_the_key_and_debug_shows_nothing_else() {
        let k = key(3);
        assert_eq!(k.fingerprint().len(), 32);
        assert_eq!(k.fingerprint(), key(3).fingerprint());
        assert_ne!(k.fingerprint(), key(4).fingerprint());
        let shown = format!("{k:?}");
        assert!(shown.contains(&k.fingerprint()), "{shown}");
        assert!(!shown.contains(&hex::encode([3u8; KEY_BYTES])), "{shown}");
    }
}
