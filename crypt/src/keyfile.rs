//! A key file: the master key sealed under a key derived from a passphrase with Argon2id, the
//! derivation's parameters and salt recorded beside it, and the key's fingerprint (to tell key
//! files apart without a passphrase). JSON, so that an admin can read what it says.

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Error, KEY_BYTES, MasterKey, Result, random, unwrap_master, wrap_master};

/// The key file's format (frozen: a reader refuses another).
const FORMAT: u32 = 1;
/// What the sealed key is bound to (associated data): a key file's seal opens only as one.
const KEY_FILE_AAD: &[u8] = b"cairn key file, format 1";

/// Argon2id's parameters, recorded in the key file that used them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over it.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: about a second on a server core, costly to guess at scale.
    fn default() -> Self {
        Self {
            memory_kib: 64 << 10,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Refuses parameters past what any machine should spend on one passphrase (a key file
    /// altered to exhaust memory or time is refused, not obeyed): at most 4 GiB, 64 passes,
    /// 16 lanes, and at least Argon2's minimum of 8 KiB per lane.
    ///
    /// # Errors
    /// [`Error::KeyFile`] naming the parameter.
    pub fn check(&self) -> Result<()> {
        if !(8 * self.parallelism.max(1)..=4 << 20).contains(&self.memory_kib) {
            return Err(Error::KeyFile(format!(
                "Argon2id memory {} KiB is outside 8 KiB per lane to 4 GiB",
                self.memory_kib
            )));
        }
        if !(1..=64).contains(&self.iterations) || !(1..=16).contains(&self.parallelism) {
            return Err(Error::KeyFile(format!(
                "Argon2id passes {} or lanes {} are outside 1 to 64 and 1 to 16",
                self.iterations, self.parallelism
            )));
        }
        Ok(())
    }
}

/// A key file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// Its format.
    pub format: u32,
    /// The derivation: always `argon2id`.
    pub kdf: String,
    /// Its parameters.
    pub params: KdfParams,
    /// The salt, hex.
    pub salt: String,
    /// The seal of the master key: always `xchacha20poly1305`.
    pub cipher: String,
    /// The nonce, hex.
    pub nonce: String,
    /// The sealed master key, hex.
    pub sealed_key: String,
    /// The master key's fingerprint ([`MasterKey::fingerprint`]).
    pub fingerprint: String,
}

impl KeyFile {
    /// Seals `key` under `passphrase`, with a fresh salt and nonce.
    ///
    /// # Errors
    /// Parameters Argon2 refuses, no randomness.
    pub fn seal(key: &MasterKey, passphrase: &[u8], params: KdfParams) -> Result<Self> {
        let mut salt = [0u8; 16];
        random(&mut salt)?;
        let mut nonce = [0u8; 24];
        random(&mut nonce)?;
        let kek = derive(passphrase, &salt, params)?;
        let sealed = wrap_master(key, &kek, &nonce, KEY_FILE_AAD)?;
        Ok(Self {
            format: FORMAT,
            kdf: "argon2id".into(),
            params,
            salt: hex::encode(salt),
            cipher: "xchacha20poly1305".into(),
            nonce: hex::encode(nonce),
            sealed_key: hex::encode(sealed),
            fingerprint: key.fingerprint(),
        })
    }

    /// A key file of `params` with empty fields: the shape the paper form fills.
    pub(crate) fn seal_shape(params: KdfParams) -> Self {
        Self {
            format: FORMAT,
            kdf: "argon2id".into(),
            params,
            salt: String::new(),
            cipher: "xchacha20poly1305".into(),
            nonce: String::new(),
            sealed_key: String::new(),
            fingerprint: String::new(),
        }
    }

    /// The master key this file seals, opened with `passphrase`.
    ///
    /// # Errors
    /// [`Error::WrongPassphrase`]; [`Error::KeyFile`] for a file that is not one.
    pub fn open(&self, passphrase: &[u8]) -> Result<MasterKey> {
        if self.format != FORMAT || self.kdf != "argon2id" || self.cipher != "xchacha20poly1305" {
            return Err(Error::KeyFile(format!(
                "format {} with {} and {}: this cairn reads format {FORMAT} with argon2id and \
                 xchacha20poly1305",
                self.format, self.kdf, self.cipher
            )));
        }
        self.params.check()?;
        let salt = unhex(&self.salt, "salt")?;
        let nonce: [u8; 24] = unhex(&self.nonce, "nonce")?
            .try_into()
            .map_err(|_| Error::KeyFile("a nonce that is not 24 bytes".into()))?;
        let sealed = unhex(&self.sealed_key, "sealed key")?;
        let kek = derive(passphrase, &salt, self.params)?;
        unwrap_master(&kek, &nonce, &sealed, KEY_FILE_AAD, &self.fingerprint)
    }

    /// The same master key sealed under `new` (a fresh salt and nonce): nothing in the store
    /// changes.
    ///
    /// # Errors
    /// As [`KeyFile::open`] with `old`, and [`KeyFile::seal`].
    pub fn change_passphrase(&self, old: &[u8], new: &[u8], params: KdfParams) -> Result<Self> {
        let key = self.open(old)?;
        Self::seal(&key, new, params)
    }

    /// The file's text.
    ///
    /// # Errors
    /// None in practice (the fields are plain text).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::KeyFile(e.to_string()))
    }

    /// A key file read from its text.
    ///
    /// # Errors
    /// Text that is not a key file.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::KeyFile(e.to_string()))
    }
}

/// The key-encryption key of `passphrase` with `salt`.
fn derive(passphrase: &[u8], salt: &[u8], p: KdfParams) -> Result<Zeroizing<[u8; KEY_BYTES]>> {
    let params = Params::new(p.memory_kib, p.iterations, p.parallelism, Some(KEY_BYTES))
        .map_err(|e| Error::KeyFile(format!("Argon2id parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; KEY_BYTES]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, out.as_mut_slice())
        .map_err(|e| Error::KeyFile(format!("Argon2id: {e}")))?;
    Ok(out)
}

fn unhex(s: &str, what: &str) -> Result<Vec<u8>> {
    hex::decode(s).map_err(|_| Error::KeyFile(format!("its {what} is not hex")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Light parameters: the tests' speed, not a key's strength.
    pub(crate) const LIGHT: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn a_key_file_asking_too_much_memory_or_time_is_refused_before_argon2_runs() {
        let key = MasterKey::generate().expect("key");
        let file = KeyFile::seal(&key, b"pw", LIGHT).expect("seal");
        for (memory_kib, iterations, parallelism) in [
            (u32::MAX, 1, 1),
            (64, 1_000_000, 1),
            (64, 1, 255),
            (0, 1, 1),
        ] {
            let mut bad = file.clone();
            bad.params = KdfParams {
                memory_kib,
                iterations,
                parallelism,
            };
            let started = std::time::Instant::now();
            assert!(
                matches!(bad.open(b"pw"), Err(Error::KeyFile(_))),
                "{:?}",
                bad.params
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
    }

    #[test]
    fn a_key_file_opens_with_its_passphrase_only_and_names_its_key() {
        let key = MasterKey::generate().expect("key");
        let file = KeyFile::seal(&key, b"correct horse", LIGHT).expect("seal");
        assert_eq!(file.fingerprint, key.fingerprint());
        let text = file.to_json().expect("json");
        assert!(!text.contains(&hex::encode(key.bytes())), "{text}");
        let back = KeyFile::from_json(&text).expect("parse");
        assert_eq!(
            back.open(b"correct horse").expect("opens").fingerprint(),
            key.fingerprint()
        );
        assert!(matches!(
            back.open(b"wrong horse"),
            Err(Error::WrongPassphrase)
        ));
    }

    #[test]
    fn a_new_passphrase_seals_the_same_key() {
        let key = MasterKey::generate().expect("key");
        let file = KeyFile::seal(&key, b"old", LIGHT).expect("seal");
        let moved = file
            .change_passphrase(b"old", b"new", LIGHT)
            .expect("change");
        assert_ne!(moved.sealed_key, file.sealed_key);
        assert_eq!(moved.fingerprint, file.fingerprint);
        let opened = moved.open(b"new").expect("opens");
        let id = opened.chunk_id(b"data");
        assert_eq!(id, key.chunk_id(b"data"));
        assert!(matches!(moved.open(b"old"), Err(Error::WrongPassphrase)));
        assert!(matches!(
            file.change_passphrase(b"not it", b"new", LIGHT),
            Err(Error::WrongPassphrase)
        ));
    }

    #[test]
    fn an_altered_key_file_does_not_open() {
        let key = MasterKey::generate().expect("key");
        let file = KeyFile::seal(&key, b"pw", LIGHT).expect("seal");
        // Its parameters lowered (to make guessing cheap): the derived key differs, no open.
        let mut weaker = file.clone();
        weaker.params.iterations = 2;
        assert!(matches!(weaker.open(b"pw"), Err(Error::WrongPassphrase)));
        // Its sealed key or fingerprint changed: refused.
        let mut flipped = file.clone();
        let mut b = hex::decode(&flipped.sealed_key).expect("hex");
        b[0] ^= 1;
        flipped.sealed_key = hex::encode(b);
        assert!(matches!(flipped.open(b"pw"), Err(Error::WrongPassphrase)));
        let mut renamed = file.clone();
        renamed.fingerprint = "0".repeat(32);
        assert!(matches!(renamed.open(b"pw"), Err(Error::KeyFile(_))));
        // An unknown field or format: refused.
        let text = file
            .to_json()
            .expect("json")
            .replace("\"format\": 1", "\"format\": 2");
        let other = KeyFile::from_json(&text).expect("parse");
        assert!(matches!(other.open(b"pw"), Err(Error::KeyFile(_))));
        let text = file
            .to_json()
            .expect("json")
            .replacen('{', "{\"extra\": 0,", 1);
        let e = KeyFile::from_json(&text).expect_err("refused");
        assert!(
            matches!(&e, Error::KeyFile(m) if m.contains("unknown field")),
            "{e:?}"
        );
    }
}
