//! Packs a rebuild could not read whole, kept until their owner lets them go.
//!
//! A pack with bytes no frame accounts for (a damaged frame header whose chunk could not be
//! read back, a pack cut short, a bucket pack whose frame list does not decode) may hold chunks
//! no index entry names any more. Deleting it could lose them for good: a copy of the pack put
//! back, a better tool, or the admin's eye may still recover them. So a rebuild records each
//! such pack in `STORE/quarantine/<pack>.json` (what it could not read, and when), and garbage
//! collection neither deletes nor rewrites a quarantined pack, indexed or not, until
//! `cairn gc --drop-quarantined` (which first copies out every chunk of it still referenced
//! and readable).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pack::{PackId, PackScan};

/// The folder of quarantine records, in the store's root.
pub const QUARANTINE_DIR: &str = "quarantine";

/// A stretch of a quarantined pack that could not be read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unread {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What was found there.
    pub why: String,
}

/// One quarantined pack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quarantined {
    /// The pack (hex).
    pub pack: String,
    /// Bytes of the pack file (or object) when it was quarantined.
    pub size: u64,
    /// Frames read from it (indexed where no better copy exists).
    pub frames_read: u64,
    /// What could not be read.
    pub unread: Vec<Unread>,
    /// When (RFC 3339).
    pub found: String,
}

impl Quarantined {
    /// The record of a pack whose scan found bytes no frame accounts for.
    #[must_use]
    pub fn of(scan: &PackScan) -> Self {
        Self {
            pack: scan.id.to_hex(),
            size: scan.len,
            frames_read: scan.frames.len() as u64,
            unread: scan
                .gaps
                .iter()
                .map(|g| Unread {
                    start: g.start,
                    end: g.end,
                    why: g.why.clone(),
                })
                .collect(),
            found: chrono::Utc::now().to_rfc3339(),
        }
    }

    /// The record of a pack that could not be read at all (`size` bytes, `why`).
    #[must_use]
    pub fn whole(pack: PackId, size: u64, why: String) -> Self {
        Self {
            pack: pack.to_hex(),
            size,
            frames_read: 0,
            unread: vec![Unread {
                start: 0,
                end: size,
                why,
            }],
            found: chrono::Utc::now().to_rfc3339(),
        }
    }

    /// Bytes that could not be read.
    #[must_use]
    pub fn unread_bytes(&self) -> u64 {
        self.unread
            .iter()
            .map(|u| u.end.saturating_sub(u.start))
            .sum()
    }

    /// One line for an admin.
    #[must_use]
    pub fn describe(&self) -> String {
        let first = self.unread.first().map(|u| u.why.as_str()).unwrap_or("");
        format!(
            "pack {}: {} of {} bytes unread in {} stretch(es) (first: {first}); {} frame(s) read",
            self.pack,
            self.unread_bytes(),
            self.size,
            self.unread.len(),
            self.frames_read
        )
    }
}

fn record_path(root: &Path, pack: &PackId) -> PathBuf {
    root.join(QUARANTINE_DIR)
        .join(format!("{}.json", pack.to_hex()))
}

/// Records `q` (replacing an earlier record of its pack).
///
/// # Errors
/// I/O errors.
pub fn put(root: &Path, q: &Quarantined) -> Result<()> {
    let id = PackId::from_hex(&q.pack)
        .ok_or_else(|| Error::Usage(format!("{} is not a pack id", q.pack)))?;
    let dir = root.join(QUARANTINE_DIR);
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir, "making the quarantine folder"))?;
    let json = serde_json::to_vec_pretty(q)
        .map_err(|e| Error::Internal(format!("writing a quarantine record: {e}")))?;
    crate::files::write_atomic(&record_path(root, &id), &json)
}

/// Removes the record of `pack` (nothing when there is none).
///
/// # Errors
/// I/O errors.
pub fn release(root: &Path, pack: &PackId) -> Result<()> {
    let path = record_path(root, pack);
    match std::fs::remove_file(&path) {
        Ok(()) => crate::pack::sync_dir(&root.join(QUARANTINE_DIR)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&path, "releasing a quarantined pack")(e)),
    }
}

/// Every quarantined pack of the store at `root`. A record that cannot be read still
/// quarantines the pack its name gives (its details say why).
///
/// # Errors
/// I/O errors listing the folder.
pub fn list(root: &Path) -> Result<HashMap<PackId, Quarantined>> {
    let dir = root.join(QUARANTINE_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(Error::io(&dir, "listing quarantined packs")(e)),
    };
    let mut out = HashMap::new();
    for e in entries {
        let e = e.map_err(Error::io(&dir, "listing quarantined packs"))?;
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(PackId::from_hex)
        else {
            continue;
        };
        let q = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Quarantined>(&b).ok())
            .unwrap_or_else(|| {
                Quarantined::whole(id, 0, "its quarantine record cannot be read".into())
            });
        out.insert(id, q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_garbled_one_still_quarantines() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(list(dir.path()).expect("list").is_empty());
        let (a, b) = (PackId::random(), PackId::random());
        let q = Quarantined::whole(a, 100, "bad".into());
        put(dir.path(), &q).expect("put");
        put(dir.path(), &Quarantined::whole(b, 7, "worse".into())).expect("put");
        std::fs::write(record_path(dir.path(), &b), b"{not json").expect("garble");
        let got = list(dir.path()).expect("list");
        assert_eq!(got.get(&a), Some(&q));
        assert!(got.contains_key(&b));
        release(dir.path(), &a).expect("release");
        release(dir.path(), &a).expect("twice");
        assert_eq!(list(dir.path()).expect("list").len(), 1);
    }
}
