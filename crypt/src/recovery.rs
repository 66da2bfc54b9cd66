//! Recovery keys: the master key sealed for an X25519 public key whose private half lives
//! offline (a safe, a password manager, paper), so that a store whose passphrase is lost, or
//! whose key file is gone, can be opened again.
//!
//! A [`RecoverySeal`] holds the master key sealed with XChaCha20-Poly1305 under a key agreed
//! (X25519) between a fresh ephemeral key pair and the recovery public key, then derived with
//! BLAKE3 over the agreed secret and both public keys. It tells nothing without the private
//! key, and sits in the store beside the data it opens (`STORE/keys/`). Only whoever holds
//! the private half can open it ([`RecoverySeal::open`]); adding one needs the master key
//! (a passphrase that opens the key file), never the private half.

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{Error, MasterKey, Result, random, unwrap_master, wrap_master};

/// The recovery seal's format (frozen).
const FORMAT: u32 = 1;
/// What the sealed key is bound to.
const RECOVERY_AAD: &[u8] = b"cairn recovery seal, format 1";
/// The derivation of the wrapping key from the agreed secret.
const WRAP_CONTEXT: &str = "cairn 2026-12 recovery wrap key";
/// How a public recovery key is written: this prefix, then 64 hex digits.
pub const PUBLIC_PREFIX: &str = "cairn-recovery-public-";
/// How a private recovery key is written.
pub const SECRET_PREFIX: &str = "cairn-recovery-secret-";

/// The private half of a recovery key (kept offline).
pub struct RecoverySecret(StaticSecret);

impl std::fmt::Debug for RecoverySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoverySecret")
            .field("public", &self.public().to_text())
            .finish_non_exhaustive()
    }
}

/// The public half of a recovery key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryPublic(PublicKey);

impl RecoverySecret {
    /// A new random recovery key.
    ///
    /// # Errors
    /// No randomness.
    pub fn generate() -> Result<Self> {
        let mut b = Zeroizing::new([0u8; 32]);
        random(b.as_mut_slice())?;
        Ok(Self(StaticSecret::from(*b)))
    }

    /// Its public half.
    #[must_use]
    pub fn public(&self) -> RecoveryPublic {
        RecoveryPublic(PublicKey::from(&self.0))
    }

    /// Its text form (`cairn-recovery-secret-` and 64 hex digits), to be kept offline.
    #[must_use]
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{SECRET_PREFIX}{}", hex::encode(self.0.as_bytes())))
    }

    /// Reads the text form (surrounding white space ignored).
    ///
    /// # Errors
    /// [`Error::KeyFile`] for text that is not one.
    pub fn from_text(text: &str) -> Result<Self> {
        let b = key_bytes(text, SECRET_PREFIX, "a private recovery key")?;
        Ok(Self(StaticSecret::from(*b)))
    }
}

impl RecoveryPublic {
    /// Its text form (`cairn-recovery-public-` and 64 hex digits).
    #[must_use]
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }

    /// Reads the text form.
    ///
    /// # Errors
    /// [`Error::KeyFile`] for text that is not one.
    pub fn from_text(text: &str) -> Result<Self> {
        let b = key_bytes(text, PUBLIC_PREFIX, "a public recovery key")?;
        Ok(Self(PublicKey::from(*b)))
    }

    /// A short name of the key (its first 8 bytes, hex): the seal's file name.
    #[must_use]
    pub fn short(&self) -> String {
        hex::encode(&self.0.as_bytes()[..8])
    }
}

fn key_bytes(text: &str, prefix: &str, what: &str) -> Result<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    text.trim()
        .strip_prefix(prefix)
        .and_then(|h| hex::decode_to_slice(h, out.as_mut_slice()).ok())
        .ok_or_else(|| Error::KeyFile(format!("not {what} ({prefix} and 64 hex digits)")))?;
    Ok(out)
}

/// The master key sealed for a recovery key (JSON in `STORE/keys/recovery-SHORT.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverySeal {
    /// Its format.
    pub format: u32,
    /// The recovery public key it is for.
    pub recipient: String,
    /// The ephemeral public key, hex.
    pub ephemeral: String,
    /// The nonce, hex.
    pub nonce: String,
    /// The sealed master key, hex.
    pub sealed_key: String,
    /// The master key's fingerprint.
    pub fingerprint: String,
}

impl RecoverySeal {
    /// Seals `key` for `recipient`.
    ///
    /// # Errors
    /// No randomness.
    pub fn seal(key: &MasterKey, recipient: &RecoveryPublic) -> Result<Self> {
        let ephemeral = RecoverySecret::generate()?;
        let eph_public = ephemeral.public();
        let wrap = wrap_key(&ephemeral.0, &recipient.0, &eph_public.0, &recipient.0);
        let mut nonce = [0u8; 24];
        random(&mut nonce)?;
        let sealed = wrap_master(key, &wrap, &nonce, RECOVERY_AAD)?;
        Ok(Self {
            format: FORMAT,
            recipient: recipient.to_text(),
            ephemeral: hex::encode(eph_public.0.as_bytes()),
            nonce: hex::encode(nonce),
            sealed_key: hex::encode(sealed),
            fingerprint: key.fingerprint(),
        })
    }

    /// The master key, opened with the recovery key's private half.
    ///
    /// # Errors
    /// [`Error::WrongPassphrase`] when `secret` is not the recipient's (or the seal was
    /// altered); [`Error::KeyFile`] for a seal that is not one.
    pub fn open(&self, secret: &RecoverySecret) -> Result<MasterKey> {
        if self.format != FORMAT {
            return Err(Error::KeyFile(format!(
                "recovery seal format {}, this cairn reads {FORMAT}",
                self.format
            )));
        }
        let recipient = RecoveryPublic::from_text(&self.recipient)?;
        if recipient != secret.public() {
            return Err(Error::WrongPassphrase);
        }
        let bad = |what: &str| Error::KeyFile(format!("a recovery seal whose {what} is not hex"));
        let mut eph = [0u8; 32];
        hex::decode_to_slice(&self.ephemeral, &mut eph).map_err(|_| bad("ephemeral key"))?;
        let eph = PublicKey::from(eph);
        let mut nonce = [0u8; 24];
        hex::decode_to_slice(&self.nonce, &mut nonce).map_err(|_| bad("nonce"))?;
        let sealed = hex::decode(&self.sealed_key).map_err(|_| bad("sealed key"))?;
        let wrap = wrap_key(&secret.0, &eph, &eph, &recipient.0);
        unwrap_master(&wrap, &nonce, &sealed, RECOVERY_AAD, &self.fingerprint)
    }

    /// The seal's text.
    ///
    /// # Errors
    /// None in practice.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::KeyFile(e.to_string()))
    }

    /// A seal read from its text.
    ///
    /// # Errors
    /// Text that is not one.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::KeyFile(e.to_string()))
    }
}

/// The wrapping key: BLAKE3 (derive_key) of the agreed secret of `mine` and `theirs`, the
/// ephemeral public key and the recipient's.
fn wrap_key(
    mine: &StaticSecret,
    theirs: &PublicKey,
    ephemeral: &PublicKey,
    recipient: &PublicKey,
) -> Zeroizing<[u8; 32]> {
    let shared = mine.diffie_hellman(theirs);
    let mut material = Zeroizing::new([0u8; 96]);
    material[..32].copy_from_slice(shared.as_bytes());
    material[32..64].copy_from_slice(ephemeral.as_bytes());
    material[64..].copy_from_slice(recipient.as_bytes());
    Zeroizing::new(blake3::derive_key(WRAP_CONTEXT, material.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_seal_opens_with_its_private_key_only() {
        let key = MasterKey::generate().expect("key");
        let secret = RecoverySecret::generate().expect("secret");
        let public = RecoveryPublic::from_text(&secret.public().to_text()).expect("text");
        let seal = RecoverySeal::seal(&key, &public).expect("seal");
        let text = seal.to_json().expect("json");
        assert!(!text.contains(&hex::encode(key.bytes())));
        let back = RecoverySeal::from_json(&text).expect("parse");
        let again = RecoverySecret::from_text(&secret.to_text()).expect("secret text");
        assert_eq!(
            back.open(&again).expect("opens").fingerprint(),
            key.fingerprint()
        );
        // Another private key: refused.
        let other = RecoverySecret::generate().expect("other");
        assert!(matches!(back.open(&other), Err(Error::WrongPassphrase)));
        // An altered seal: refused.
        let mut altered = back.clone();
        let first = if altered.sealed_key.starts_with('0') {
            "1"
        } else {
            "0"
        };
        altered.sealed_key.replace_range(0..1, first);
        assert!(matches!(altered.open(&again), Err(Error::WrongPassphrase)));
        // Debug shows the public half only.
        let shown = format!("{again:?}");
        assert!(
            !shown.contains(&again.to_text()[SECRET_PREFIX.len()..]),
            "{shown}"
        );
    }
}
