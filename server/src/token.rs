//! Tokens: who may do what through `cairn serve`.
//!
//! `STORE/tokens.json` lists every token: its id, name, role, the VMs it reaches (a glob), when
//! it expires or was revoked, and the BLAKE3 hash of its secret (derived with a context of its
//! own). The secret itself is shown once, when the token is created, and kept nowhere: a copy of
//! the store does not hand out its tokens. A secret reads `cairn_<id>_<64 hex digits>`; the
//! server finds the token by its id and compares hashes in constant time
//! ([`blake3::Hash`]'s equality). The file is rewritten atomically under `STORE/tokens.lock`, and
//! the server reads it again when it changes, so a revoke takes effect at the next request.
//!
//! Roles (as PBS's Datastore.Backup / Read / Modify, restic's rest-server `--append-only`):
//! - `backup`: append only. Upload chunks, commit new points of its VMs, read its VMs' points
//!   (to find a parent) and the chunks they name. Never forget, prune, protect, collect
//!   garbage, set a policy, overwrite anything, or see another VM's points.
//! - `restore`: read its VMs' points and chunks; no writes.
//! - `admin`: everything, on the whole store (an admin token is never limited to some VMs:
//!   prune, gc, policies and the report act on the store). Even an admin cannot remove a point
//!   the store's minimum retention holds (`min_retention_days` in `cairn.toml`, set only on the
//!   store's machine).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The token file, in the store's folder.
pub const TOKENS_FILE: &str = "tokens.json";
const TOKENS_LOCK: &str = "tokens.lock";
/// The token file's format.
const TOKENS: cairn_store::format::FormatVersion =
    cairn_store::format::FormatVersion::new("token file format", 1, 1);
/// Format of the token file this code writes.
const TOKENS_VERSION: u32 = TOKENS.current();
/// BLAKE3 key-derivation context of secrets' hashes (frozen).
const HASH_CONTEXT: &str = "cairn 2026-12 token secret v1";

pub use cairn_api::Role;

/// One token as the file keeps it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Short random id, part of the secret.
    pub id: String,
    /// The admin's name for it (a host, say).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Which VMs it reaches: a glob over VM names (`*` any run, `?` one character).
    pub vms: String,
    /// When it was made.
    pub created: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked: Option<DateTime<Utc>>,
    /// Which chunks its "which of these do you have" questions are answered for.
    #[serde(default)]
    pub lookups: Lookups,
    /// BLAKE3 of the secret (hex, derived with [`HASH_CONTEXT`]).
    hash: String,
}

impl Token {
    /// Whether the token reaches VM `vm`.
    #[must_use]
    pub fn allows_vm(&self, vm: &str) -> bool {
        cairn_store::select::glob_match(&self.vms, vm)
    }
}

/// Which chunks a backup token's lookups see.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lookups {
    /// Every chunk of the store: a clone of another VM's template sends only its own data, and
    /// the token can tell whether the store holds a block it knows the bytes of.
    #[default]
    All,
    /// Only the chunks of the latest points of the disks its session backs up (as PBS offers
    /// only the previous snapshot's chunks): the answers say nothing of other VMs, at the cost
    /// of sending the blocks it shares with them (the store still keeps each block once).
    /// Its chunk reads are bounded the same way.
    Own,
}

impl Lookups {
    /// Parses `all` or `own`.
    ///
    /// # Errors
    /// Any other word.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Self::All),
            "own" => Ok(Self::Own),
            _ => Err(Error::Usage(format!(
                "--lookups {s:?}: expected all or own"
            ))),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    tokens: Vec<Token>,
}

/// The tokens of the store at a folder.
#[derive(Debug, Clone)]
pub struct Tokens {
    path: PathBuf,
    lock: PathBuf,
}

fn hash_secret(secret: &str) -> blake3::Hash {
    blake3::derive_key(HASH_CONTEXT, secret.as_bytes()).into()
}

impl Tokens {
    /// The tokens of the store at `root`.
    #[must_use]
    pub fn of_store(root: &Path) -> Self {
        Self {
            path: root.join(TOKENS_FILE),
            lock: root.join(TOKENS_LOCK),
        }
    }

    /// The file they are kept in.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every token, revoked and expired ones included; none when the file does not exist.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or of a newer format.
    pub fn load(&self) -> Result<Vec<Token>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.path, "reading the tokens", e)),
        };
        let file: TokenFile = serde_json::from_str(&text)
            .map_err(|e| Error::Usage(format!("{}: not a token file: {e}", self.path.display())))?;
        if let Err(what) = TOKENS.check(file.version) {
            return Err(Error::Usage(format!("{}: {what}", self.path.display())));
        }
        Ok(file.tokens)
    }

    fn change<T>(&self, f: impl FnOnce(&mut Vec<Token>) -> Result<T>) -> Result<T> {
        use fs2::FileExt;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|e| Error::io(&self.lock, "opening the tokens lock", e))?;
        lock.lock_exclusive()
            .map_err(|e| Error::io(&self.lock, "locking the tokens", e))?;
        let mut tokens = self.load()?;
        let out = f(&mut tokens)?;
        let file = TokenFile {
            version: TOKENS_VERSION,
            tokens,
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Usage(format!("encoding the tokens: {e}")))?;
        cairn_store::write_atomic(&self.path, &json)?;
        Ok(out)
    }

    /// Makes a token; returns it and its secret, which is kept nowhere.
    ///
    /// # Errors
    /// A name in use by a live token, an empty glob, I/O errors.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        vms: &str,
        expires: Option<DateTime<Utc>>,
        lookups: Lookups,
    ) -> Result<(Token, String)> {
        if lookups == Lookups::Own && role != Role::Backup {
            return Err(Error::Usage("--lookups own is for backup tokens".into()));
        }
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::Usage(format!(
                "token name {name:?}: 1 to 128 printable characters"
            )));
        }
        if vms.is_empty() {
            return Err(Error::Usage("--vm: an empty glob matches no VM".into()));
        }
        if role == Role::Admin && vms != "*" {
            return Err(Error::Usage(format!(
                "--role admin --vm {vms:?}: an admin token reaches the whole store (prune, gc, \
                 policies and the report are store-wide); give a VM glob to backup and restore \
                 tokens only"
            )));
        }
        let mut bytes = [0u8; 36];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| Error::Usage("the system's random source failed".into()))?;
        let id = hex::encode(&bytes[..4]);
        let secret = format!("cairn_{id}_{}", hex::encode(&bytes[4..]));
        let token = Token {
            id: id.clone(),
            name: name.to_owned(),
            role,
            vms: vms.to_owned(),
            created: Utc::now(),
            expires,
            revoked: None,
            lookups,
            hash: hash_secret(&secret).to_hex().to_string(),
        };
        let made = token.clone();
        self.change(move |tokens| {
            let now = Utc::now();
            if tokens.iter().any(|t| t.id == id) {
                return Err(Error::Usage("token id collision: run it again".into()));
            }
            if tokens.iter().any(|t| t.name == name && live(t, now)) {
                return Err(Error::Usage(format!(
                    "a live token is named {name:?} already (`cairn token revoke {name}` first)"
                )));
            }
            tokens.push(token);
            Ok(())
        })?;
        Ok((made, secret))
    }

    /// Revokes the live token whose id or name is `which` (`id:ID` or `name:NAME` says which
    /// one is meant).
    ///
    /// # Errors
    /// No such live token, or a word that is one live token's id and another's name; I/O
    /// errors.
    pub fn revoke(&self, which: &str) -> Result<Token> {
        let (by_id, by_name) = match which.split_once(':') {
            Some(("id", id)) => (Some(id), None),
            Some(("name", name)) => (None, Some(name)),
            _ => (Some(which), Some(which)),
        };
        self.change(|tokens| {
            let now = Utc::now();
            let matching: Vec<usize> = (0..tokens.len())
                .filter(|&i| {
                    let t = &tokens[i];
                    live(t, now)
                        && (by_id == Some(t.id.as_str()) || by_name == Some(t.name.as_str()))
                })
                .collect();
            let i = match matching[..] {
                [i] => i,
                [] => {
                    return Err(Error::Usage(format!(
                        "no live token has id or name {which:?}"
                    )));
                }
                _ => {
                    let named: Vec<String> = matching
                        .iter()
                        .map(|&i| format!("{:?} (id {})", tokens[i].name, tokens[i].id))
                        .collect();
                    return Err(Error::Usage(format!(
                        "{which:?} names {}: say `id:ID` or `name:NAME`; nothing was revoked",
                        named.join(" and ")
                    )));
                }
            };
            let t = &mut tokens[i];
            t.revoked = Some(now);
            Ok(t.clone())
        })
    }
}

fn live(t: &Token, now: DateTime<Utc>) -> bool {
    t.revoked.is_none() && t.expires.is_none_or(|e| e > now)
}

/// Why a request's token was refused (the server answers 401 with this text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header, or not a cairn secret.
    Malformed,
    /// No token has that id, or the secret does not match it.
    Unknown,
    /// Revoked at that time.
    Revoked(DateTime<Utc>),
    /// Expired at that time.
    Expired(DateTime<Utc>),
    /// An admin token limited to some VMs (made by an older cairn): no longer honoured.
    ScopedAdmin,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed => write!(
                f,
                "no token: send `Authorization: Bearer cairn_...` (cairn reads CAIRN_TOKEN or --token-file)"
            ),
            Self::Unknown => write!(f, "unknown token"),
            Self::Revoked(t) => write!(f, "the token was revoked at {}", t.to_rfc3339()),
            Self::Expired(t) => write!(f, "the token expired at {}", t.to_rfc3339()),
            Self::ScopedAdmin => write!(
                f,
                "an admin token limited to some VMs is no longer honoured (admin acts on the \
                 whole store): revoke it and make a backup or restore token for those VMs"
            ),
        }
    }
}

/// The token whose secret is `secret`, if it is live at `now`.
///
/// # Errors
/// Why not.
pub fn authenticate<'t>(
    tokens: &'t [Token],
    secret: &str,
    now: DateTime<Utc>,
) -> Result<&'t Token, Refusal> {
    let mut parts = secret.splitn(3, '_');
    let (Some("cairn"), Some(id), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Refusal::Malformed);
    };
    if id.len() != 8 || rest.len() != 64 {
        return Err(Refusal::Malformed);
    }
    let presented = hash_secret(secret);
    let token = tokens
        .iter()
        .find(|t| t.id == id && blake3::Hash::from_hex(&t.hash).is_ok_and(|h| h == presented))
        .ok_or(Refusal::Unknown)?;
    if let Some(r) = token.revoked {
        return Err(Refusal::Revoked(r));
    }
    if let Some(e) = token.expires
        && e <= now
    {
        return Err(Refusal::Expired(e));
    }
    if token.role == Role::Admin && token.vms != "*" {
        return Err(Refusal::ScopedAdmin);
    }
    Ok(token)
}

/// Parses a duration as `--expires` takes it: a number and a unit (`90m`, `12h`, `30d`, `8w`,
/// `1y`).
///
/// # Errors
/// Anything else.
pub fn parse_duration(s: &str) -> Result<chrono::Duration> {
    let bad = || {
        Error::Usage(format!(
            "--expires {s:?}: expected a number and m, h, d, w or y (30d)"
        ))
    };
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        "w" => chrono::Duration::try_weeks(n),
        "y" => chrono::Duration::try_days(n.saturating_mul(365)),
        _ => None,
    };
    d.filter(|d| *d > chrono::Duration::zero()).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_kept_hashed_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::of_store(dir.path());
        let (t, secret) = tokens
            .create("host1", Role::Backup, "web-*", None, Lookups::All)
            .expect("create");
        let text = std::fs::read_to_string(tokens.path()).expect("file");
        assert!(
            !text.contains(&secret[15..]),
            "the secret is not in the file"
        );
        let all = tokens.load().expect("load");
        let now = Utc::now();
        assert_eq!(authenticate(&all, &secret, now).expect("ok").id, t.id);
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push(if secret.ends_with('0') { '1' } else { '0' });
        assert_eq!(authenticate(&all, &wrong, now), Err(Refusal::Unknown));
        assert_eq!(authenticate(&all, "Bearer x", now), Err(Refusal::Malformed));
        tokens.revoke("host1").expect("revoke");
        let all = tokens.load().expect("load");
        assert!(matches!(
            authenticate(&all, &secret, now),
            Err(Refusal::Revoked(_))
        ));
        let (_, s2) = tokens
            .create(
                "old",
                Role::Restore,
                "*",
                Some(now - chrono::Duration::seconds(1)),
                Lookups::All,
            )
            .expect("create");
        let all = tokens.load().expect("load");
        assert!(matches!(
            authenticate(&all, &s2, now),
            Err(Refusal::Expired(_))
        ));
    }

    #[test]
    fn a_word_that_is_one_tokens_id_and_anothers_name_revokes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::of_store(dir.path());
        let (a, _) = tokens
            .create("host-a", Role::Backup, "*", None, Lookups::All)
            .expect("create");
        let (b, _) = tokens
            .create(&a.id, Role::Backup, "*", None, Lookups::All)
            .expect("create");
        let err = tokens.revoke(&a.id).expect_err("ambiguous");
        assert!(err.to_string().contains("id:ID"), "{err}");
        assert!(
            tokens
                .load()
                .expect("load")
                .iter()
                .all(|t| t.revoked.is_none())
        );
        assert_eq!(
            tokens
                .revoke(&format!("name:{}", a.id))
                .expect("by name")
                .id,
            b.id
        );
        assert_eq!(
            tokens.revoke(&format!("id:{}", a.id)).expect("by id").id,
            a.id
        );
    }

    #[test]
    fn an_admin_token_is_never_scoped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::of_store(dir.path());
        assert!(
            tokens
                .create("half", Role::Admin, "web*", None, Lookups::All)
                .is_err()
        );
        let (mut t, secret) = tokens
            .create("whole", Role::Admin, "*", None, Lookups::All)
            .expect("create");
        // One made by an older cairn, scoped: refused at every request.
        t.vms = "web*".into();
        assert_eq!(
            authenticate(&[t], &secret, Utc::now()),
            Err(Refusal::ScopedAdmin)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30d").expect("30d"),
            chrono::Duration::days(30)
        );
        assert_eq!(
            parse_duration("12h").expect("12h"),
            chrono::Duration::hours(12)
        );
        assert!(parse_duration("0d").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("5x").is_err());
    }
}
