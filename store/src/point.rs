//! Recovery points: what one backup of one disk of one VM at one time holds.
//!
//! A point's reference list (one [`ChunkRef`](crate::ChunkRef) per chunk of the disk) is a
//! tree of content-addressed chunks (the `tree` module), so a stretch of the disk that did not
//! change since the previous point shares its leaf or node instead of copying it. The point
//! itself is a small JSON record naming the top of its tree: the root file
//! `STORE/points/<vm>/<disk>/<time>-<id>.json` and the catalogue entry in the index.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
pub use crate::tree::SEGMENT_REFS;

/// The format of root files written now: 2 adds `format` and `depth` (a tree over the
/// segments); a root file without `format` is of format 1 (its `segments` are leaves).
pub const POINT_FORMAT: u32 = 2;

fn format_1() -> u32 {
    1
}

/// What a backup was read from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceInfo {
    /// `raw`, `vhd-fixed`, `vhd-dynamic` or `vhd-differencing`.
    pub kind: String,
    /// The footer UUID of the VHD it was read from.
    pub vhd_uuid: Option<String>,
    /// The path it was read from (`-` for stdin).
    pub path: String,
}

/// What a backup did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BackupStats {
    /// Bytes of the disk.
    pub logical_bytes: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Chunks of the disk.
    pub chunks: u64,
    /// Chunks that are all zeros.
    pub zero_chunks: u64,
    /// Chunks taken from the parent point without reading them.
    pub parent_chunks: u64,
    /// Chunks read that the store already held.
    pub known_chunks: u64,
    /// Chunks the store did not hold.
    pub new_chunks: u64,
    /// Plain bytes of the new chunks.
    pub new_plain_bytes: u64,
    /// Bytes the new chunks (and new tree segments) take in packs.
    pub new_stored_bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Whether the backup read the whole disk (a key backup): every chunk was hashed, and
    /// chunks marked bad or missing were stored afresh.
    #[serde(default)]
    pub key: bool,
    /// Chunks marked bad or missing that this backup stored afresh.
    #[serde(default)]
    pub healed_chunks: u64,
    /// Known chunks stored again to keep the disk's chunks in few packs (the layout policy).
    #[serde(default)]
    pub rewritten_chunks: u64,
}

/// A committed recovery point. Never changes once committed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecoveryPoint {
    /// 32 hex digits.
    pub id: String,
    /// The VM's name.
    pub vm: String,
    /// The disk's name within the VM (`xvda`, `scsi0`...).
    pub disk: String,
    /// The time the backup stands for.
    pub time: DateTime<Utc>,
    /// Size of the disk in bytes.
    pub size: u64,
    /// Chunk size of the reference list.
    pub chunk_size: u32,
    /// Where the data came from.
    pub source: SourceInfo,
    /// The point a differencing source was applied to.
    pub parent: Option<String>,
    /// Format of this record and its tree ([`POINT_FORMAT`] for new points).
    #[serde(default = "format_1")]
    pub format: u32,
    /// Level of the tree entries in `segments`: 0 when they are leaves of [`SEGMENT_REFS`] refs,
    /// 1 when they are nodes naming up to 256 leaves, and so on.
    #[serde(default)]
    pub depth: u8,
    /// The top of the point's tree: chunk ids (hex) of level `depth`, in disk order.
    pub segments: Vec<String>,
    /// What the backup did.
    pub stats: BackupStats,
    /// When the point was committed.
    pub committed: DateTime<Utc>,
    /// A protected point is never pruned or forgotten.
    #[serde(default)]
    pub protected: bool,
    /// The backup run this point was made in (the disks of one VM backed up together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The VM's identity beyond its name, and the admin's tags and note.
    #[serde(flatten)]
    pub labels: Labels,
}

/// Who a point belongs to beyond its VM's name, and what the admin said about it.
///
/// A disk's history (what `@latest`, retention and differencing VHDs follow) is that of one
/// VM: the VM's UUID within its pool when the backup gave one, else its name within its pool
/// ([`RecoveryPoint::vm_key`]). The host is a label only: VMs move between the hosts of a pool.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Labels {
    /// The VM's identity in its hypervisor (a XAPI VM UUID, a Proxmox VMID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_uuid: Option<String>,
    /// The host the VM ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The pool or cluster the VM belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Tags, in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Which VM a point belongs to: see [`Labels`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmKey {
    /// The pool, if given.
    pub pool: Option<String>,
    /// The VM's UUID if given.
    pub uuid: Option<String>,
    /// The VM's name when no UUID was given.
    pub name: Option<String>,
}

impl VmKey {
    /// The key of a VM as a backup names it.
    #[must_use]
    pub fn of(vm: &str, labels: &Labels) -> Self {
        Self {
            pool: labels.pool.clone(),
            uuid: labels.vm_uuid.clone(),
            name: labels.vm_uuid.is_none().then(|| vm.to_owned()),
        }
    }
}

impl RecoveryPoint {
    /// The VM this point belongs to (see [`Labels`]).
    #[must_use]
    pub fn vm_key(&self) -> VmKey {
        VmKey::of(&self.vm, &self.labels)
    }

    /// Whether `other` is a point of the same disk of the same VM (one history).
    #[must_use]
    pub fn same_disk(&self, other: &Self) -> bool {
        self.disk == other.disk && self.vm_key() == other.vm_key()
    }

    /// Number of chunks covering the disk.
    #[must_use]
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// The first 12 hex digits, enough to name a point in practice.
    #[must_use]
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    /// The root file's path relative to the store: `points/<vm>/<disk>/<time>-<id>.json`.
    #[must_use]
    pub fn root_file(&self) -> String {
        format!(
            "points/{}/{}/{}-{}.json",
            path_component(&self.vm),
            path_component(&self.disk),
            self.time.format("%Y%m%dT%H%M%SZ"),
            self.id
        )
    }

    /// Segment ids parsed.
    #[must_use]
    pub fn segment_ids(&self) -> Vec<Option<ChunkId>> {
        self.segments.iter().map(|s| ChunkId::from_hex(s)).collect()
    }

    /// The distinct segment ids, in first-seen order.
    ///
    /// # Errors
    /// A segment that is not a chunk id.
    pub fn distinct_segments(&self) -> Result<Vec<ChunkId>, String> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (i, s) in self.segments.iter().enumerate() {
            let id = ChunkId::from_hex(s)
                .ok_or_else(|| format!("{}: segment {i} is not a chunk id", self.id))?;
            if seen.insert(id) {
                out.push(id);
            }
        }
        Ok(out)
    }
}

/// Checks a VM or disk name: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with `.` (it becomes
/// a folder name).
///
/// # Errors
/// What is wrong with it.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= 128
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} must be 1 to 128 printable characters (any script, spaces \
             allowed, not only spaces)"
        ))
    }
}

/// A VM or disk name as one file name component: ASCII letters, digits, `.`, `_` and `-` stay as
/// they are (so such names keep the folders they always had), every other byte of the name's
/// UTF-8 becomes `%XX`, as does a leading `.`; a name is stored whole in its root file, the path
/// only files it.
#[must_use]
pub fn path_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("VM", "web-01.prod").is_ok());
        assert!(check_name("VM", "").is_err());
        // Any text is a name; none can leave its folder.
        assert!(check_name("VM", "../etc").is_ok());
        assert_eq!(path_component("../etc"), "%2E.%2Fetc");
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    #[test]
    fn names_are_any_printable_text_and_their_paths_are_safe() {
        for name in [
            "web01",
            "Windows Server 2022 (prod)",
            "wéb-01",
            "数据库",
            "disk 0",
            "a/b",
        ] {
            check_name("VM", name).unwrap_or_else(|e| panic!("{e}"));
        }
        for bad in ["", "   ", "tab\there", "new\nline", &"x".repeat(129)] {
            assert!(check_name("VM", bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(path_component("web01.prod_2-a"), "web01.prod_2-a");
        assert_eq!(path_component("disk 0"), "disk%200");
        assert_eq!(path_component("a/b"), "a%2Fb");
        assert_eq!(path_component(".."), "%2E.");
        assert_eq!(path_component("wé"), "w%C3%A9");
        assert_eq!(path_component("50%"), "50%25");
        // Distinct names stay distinct paths.
        assert_ne!(path_component("a b"), path_component("a%20b"));
    }
}
