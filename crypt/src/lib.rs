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
//!   ([`MasterKey::seal`]), the chunk id (with its kind, codec and length) as associated data,
//!   so that a chunk moved or swapped under another id fails to open;
//! - the **fingerprint**, shown to tell keys apart ([`MasterKey::fingerprint`]).
//!
//! A key file also prints on paper (numbered lines of hex, check digits per line:
//! [`KeyFile::to_paper`]) and the master key can be sealed for a recovery key, an X25519 public
//! key whose private half lives offline ([`RecoverySeal`]).
//!
//! # Why XChaCha20-Poly1305
//! Measured on this project's machine (`benches`: `aead-speed`, the release build, one core,
//! 256 KiB chunks; an AMD EPYC with AES-NI and AVX2): XChaCha20-Poly1305 seals at 1158 MB/s and
//! opens at 1143 MB/s, AES-256-GCM seals at 1309 MB/s and opens at 1297 MB/s: GCM is 13 %
//! faster here, and would be slower on a CPU without AES instructions. What decides is the
//! nonce: GCM's 96 bits cannot be drawn at random for the billions of chunks of a store's life
//! (2^32 seals per key is NIST's bound), and one taken from the chunk id would collide in its
//! first 96 bits long before a store is large. XChaCha20-Poly1305's
//! 192-bit nonce is drawn at random for every seal (and stored after the ciphertext and tag):
//! at 2^-192 per pair, no two seals in the life of any store share one. A nonce taken from the
//! chunk id would save its 24 bytes but repeat whenever one chunk is sealed twice with different
//! bytes (a zstd level or version changed, a chunk stored plain once and compressed once):
//! under a stream cipher, that gives away the XOR of the two.
//!
//! The store's chunk codec is meant to be this crate's one caller (the chunk seal lives in the
//! store, below every reader and writer): nothing above the store sees a sealed byte or a key.
//!
//! Secrets are zeroized when dropped, and no type here prints one (`Debug` shows only the
//! fingerprint).

mod keyfile;
mod paper;
mod recovery;

pub use keyfile::{KdfParams, KeyFile};
pub use recovery::{RecoveryPublic, RecoverySeal, RecoverySecret};

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of a master key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a seal's nonce.
const NONCE_BYTES: usize = 24;
/// Bytes of a seal's Poly1305 tag.
const TAG_BYTES: usize = 16;
/// Bytes the seal adds to a chunk: the Poly1305 tag (16) and its random nonce (24).
pub const SEAL_OVERHEAD: usize = TAG_BYTES + NONCE_BYTES;

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
    /// Sealed bytes do not open: damaged, moved under another id, or sealed with another key.
    #[error("failed authentication: altered, put under another id, or sealed with another key")]
    Unsealed,
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

    /// The key's bytes, to seal into a key file or a recovery seal.
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

    /// Seals `stored` (a chunk's bytes as the store keeps them, compressed or not), binding
    /// `aad` to them (the store passes the chunk's id, kind, codec and length): the ciphertext,
    /// its tag, then the fresh random nonce ([`SEAL_OVERHEAD`] bytes more than `stored`).
    ///
    /// # Errors
    /// The system gave no randomness.
    pub fn seal(&self, aad: &[u8], stored: &[u8]) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(stored.len() + SEAL_OVERHEAD);
        buf.extend_from_slice(stored);
        self.seal_in_place(aad, &mut buf)?;
        Ok(buf)
    }

    /// As [`MasterKey::seal`], in `buf`: its bytes are encrypted where they are and the tag and
    /// nonce appended (nothing copied; the store seals each chunk this way).
    ///
    /// # Errors
    /// The system gave no randomness.
    pub fn seal_in_place(&self, aad: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        let mut nonce = [0u8; NONCE_BYTES];
        random(&mut nonce)?;
        let tag = XChaCha20Poly1305::new((&self.seal_key).into())
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), aad, buf)
            // Only a length past what the cipher takes (2^38 bytes) fails; a chunk is MiBs.
            .map_err(|_| Error::Unsealed)?;
        buf.extend_from_slice(&tag);
        buf.extend_from_slice(&nonce);
        Ok(())
    }

    /// Opens what [`MasterKey::seal`] sealed with the same `aad`.
    ///
    /// # Errors
    /// [`Error::Unsealed`]: the bytes were altered, sealed with other associated data (a chunk
    /// under another id), or with another key.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let mut buf = sealed.to_vec();
        self.open_in_place(aad, &mut buf)?;
        Ok(buf)
    }

    /// As [`MasterKey::open`], in `buf`: left holding the plain bytes.
    ///
    /// # Errors
    /// As [`MasterKey::open`].
    pub fn open_in_place(&self, aad: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        let body = buf
            .len()
            .checked_sub(SEAL_OVERHEAD)
            .ok_or(Error::Unsealed)?;
        let (text, rest) = buf.split_at_mut(body);
        let (tag, nonce) = rest.split_at(TAG_BYTES);
        XChaCha20Poly1305::new((&self.seal_key).into())
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                aad,
                text,
                chacha20poly1305::Tag::from_slice(tag),
            )
            .map_err(|_| Error::Unsealed)?;
        buf.truncate(body);
        Ok(())
    }
}

/// Seals `key`'s bytes under `wrap` (a key derived from a passphrase, an agreed secret) with
/// `nonce`, bound to `aad`: what key files and recovery seals hold.
pub(crate) fn wrap_master(
    key: &MasterKey,
    wrap: &[u8; KEY_BYTES],
    nonce: &[u8; 24],
    aad: &[u8],
) -> Result<Vec<u8>> {
    XChaCha20Poly1305::new(wrap.into())
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: key.bytes(),
                aad,
            },
        )
        .map_err(|_| Error::KeyFile("sealing the key failed".into()))
}

/// Opens what [`wrap_master`] sealed, and checks that it is the key `fingerprint` names.
///
/// # Errors
/// [`Error::WrongPassphrase`] when `wrap` does not open it (or it was altered);
/// [`Error::KeyFile`] when it opens to something else than the key named.
pub(crate) fn unwrap_master(
    wrap: &[u8; KEY_BYTES],
    nonce: &[u8; 24],
    sealed: &[u8],
    aad: &[u8],
    fingerprint: &str,
) -> Result<MasterKey> {
    let plain = zeroize::Zeroizing::new(
        XChaCha20Poly1305::new(wrap.into())
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| Error::WrongPassphrase)?,
    );
    let bytes: &[u8; KEY_BYTES] = plain
        .as_slice()
        .try_into()
        .map_err(|_| Error::KeyFile("a sealed key that is not 32 bytes".into()))?;
    let key = MasterKey::from_bytes(bytes);
    if key.fingerprint() != fingerprint {
        return Err(Error::KeyFile(
            "the key opens but is not the one its fingerprint names".into(),
        ));
    }
    Ok(key)
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
        let sealed = k.seal(&id, &plain).expect("seals");
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert!(
            !sealed
                .windows(16)
                .any(|w| plain.windows(16).any(|p| p == w))
        );
        assert_eq!(k.open(&id, &sealed).expect("opens"), plain);
        // A fresh nonce each time (the last 24 bytes): sealing twice never repeats a nonce (nor
        // the bytes).
        let again = k.seal(&id, &plain).expect("seals");
        let n = sealed.len() - 24;
        assert_ne!(again[n..], sealed[n..]);
        assert_eq!(k.open(&id, &again).expect("opens"), plain);
        // Too short to hold a nonce and a tag: refused, not a panic.
        assert!(matches!(k.open(&id, &sealed[..30]), Err(Error::Unsealed)));
        // Under another id (a chunk moved or swapped): refused.
        let other = k.chunk_id(b"another chunk");
        assert!(matches!(k.open(&other, &sealed), Err(Error::Unsealed)));
        // One bit flipped anywhere: refused.
        for at in [0, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(matches!(k.open(&id, &bad), Err(Error::Unsealed)), "{at}");
        }
        // Another key: refused.
        assert!(matches!(key(2).open(&id, &sealed), Err(Error::Unsealed)));
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
