//! Recovery points: what one backup of one disk of one VM at one time holds.
//!
//! A point's reference list (one [`ChunkRef`](crate::ChunkRef) per chunk of the disk) is a
//! tree of content-addressed chunks (the `tree` module), so a stretch of the disk that did not
//! change since the previous point shares its leaf or node instead of copying it. The point
//! itself is a small JSON record naming the top of its tree: the root file
//! `STORE/points/<vm>/<disk>/<time>-<id>.json` and the catalogue entry in the index.
//!
//! The names a point may carry (VM, disk, labels) and how they become paths are [`names`].

mod names;

use crate::chunk::ChunkId;
pub use crate::tree::SEGMENT_REFS;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use names::{check_name, check_point_name, path_component};

/// The format of root files written now: 2 adds `format` and `depth` (a tree over the
/// segments); a root file without `format` is of format 1 (its `segments` are leaves).
pub const POINT_FORMAT: u32 = crate::format::POINT.current();

fn format_1() -> u32 {
    1
}

/// A recovery point's id: 32 lower-case hex digits (a random UUID's bytes), unique in a store
/// and kept by replication. Read from root files and the catalogue strictly: anything else is
/// refused there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PointId(String);

impl PointId {
    /// Digits of an id.
    pub const LEN: usize = 32;

    /// A new random id.
    #[must_use]
    pub fn random() -> Self {
        Self(hex::encode(uuid::Uuid::new_v4().as_bytes()))
    }

    /// Reads an id: 32 hex digits (upper-case ones are taken and lowered).
    ///
    /// # Errors
    /// Anything else, described.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() == Self::LEN && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(format!("{s:?} is not a point id (32 hex digits)"))
        }
    }

    /// The id's digits.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, as lists show it.
    #[must_use]
    pub fn short(&self) -> &str {
        short_id(&self.0)
    }
}

/// The first 12 digits of a point id given as text (what lists show), or all of a shorter one.
#[must_use]
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl TryFrom<String> for PointId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<PointId> for String {
    fn from(id: PointId) -> Self {
        id.0
    }
}

impl std::ops::Deref for PointId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for PointId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for PointId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for PointId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PointId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for PointId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl std::fmt::Display for PointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of source a point was read from, as root files name it (`raw`, `vhd-fixed`,
/// `vhd-dynamic`, `vhd-differencing`, `nbd`). A name this cairn does not know (written by a
/// newer one) is kept as it is, so such a point still reads and is shown as it was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum SourceKind {
    /// A raw image: a file, a block device or a stream.
    Raw,
    /// A fixed VHD.
    VhdFixed,
    /// A dynamic VHD (or a chain read whole for a key backup).
    VhdDynamic,
    /// A differencing VHD applied to its parent point.
    VhdDifferencing,
    /// An NBD export (read whole, or its changed blocks applied to a parent point).
    Nbd,
    /// A kind this cairn does not know.
    Other(String),
}

impl SourceKind {
    /// The name root files and outputs use.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Raw => "raw",
            Self::VhdFixed => "vhd-fixed",
            Self::VhdDynamic => "vhd-dynamic",
            Self::VhdDifferencing => "vhd-differencing",
            Self::Nbd => "nbd",
            Self::Other(s) => s,
        }
    }
}

impl From<String> for SourceKind {
    fn from(s: String) -> Self {
        match s.as_str() {
            "raw" => Self::Raw,
            "vhd-fixed" => Self::VhdFixed,
            "vhd-dynamic" => Self::VhdDynamic,
            "vhd-differencing" => Self::VhdDifferencing,
            "nbd" => Self::Nbd,
            _ => Self::Other(s),
        }
    }
}

impl From<SourceKind> for String {
    fn from(k: SourceKind) -> Self {
        match k {
            SourceKind::Other(s) => s,
            k => k.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backup was read from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceInfo {
    /// What kind of source.
    pub kind: SourceKind,
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
    /// The point's id.
    pub id: PointId,
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
    pub parent: Option<PointId>,
    /// Format of this record and its tree ([`POINT_FORMAT`] for new points).
    #[serde(default = "format_1")]
    pub format: u32,
    /// Level of the tree entries in `segments`: 0 when they are leaves of [`SEGMENT_REFS`] refs,
    /// 1 when they are nodes naming up to 256 leaves, and so on.
    #[serde(default)]
    pub depth: u8,
    /// The top of the point's tree: chunk ids of level `depth`, in disk order (64 hex digits
    /// each in the root file).
    #[serde(with = "hex_ids")]
    pub segments: Vec<ChunkId>,
    /// What the backup did.
    pub stats: BackupStats,
    /// When the point was committed.
    pub committed: DateTime<Utc>,
    /// A protected point is never pruned or forgotten.
    #[serde(default)]
    pub protected: bool,
    /// Protected until then, whatever `protected` says: no command lifts it before (`protect
    /// --until`); time does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_until: Option<DateTime<Utc>>,
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
    /// The time the client said the backup stands for, when the store set the point's time
    /// itself (`cairn serve` times every point a backup token commits: see the `claims` module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_time: Option<DateTime<Utc>>,
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
    /// The flags a backup gives this identity: ` --vm-uuid U --pool P` (empty for a name
    /// alone), to tell two VMs of one name apart in messages.
    #[must_use]
    pub fn as_flags(&self) -> String {
        let mut s = String::new();
        if let Some(u) = &self.uuid {
            s.push_str(&format!(" --vm-uuid {u}"));
        }
        if let Some(p) = &self.pool {
            s.push_str(&format!(" --pool {p}"));
        }
        s
    }

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

    /// Whether the point is protected at `now` (by `protect`, or by `protect --until` a later
    /// time).
    #[must_use]
    pub fn protected_at(&self, now: DateTime<Utc>) -> bool {
        self.protected || self.protected_until.is_some_and(|u| u > now)
    }

    /// Number of chunks covering the disk.
    #[must_use]
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// The first 12 hex digits, enough to name a point in practice.
    #[must_use]
    pub fn short_id(&self) -> &str {
        self.id.short()
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

    /// The distinct segment ids, in first-seen order.
    #[must_use]
    pub fn distinct_segments(&self) -> Vec<ChunkId> {
        let mut seen = std::collections::HashSet::new();
        self.segments
            .iter()
            .copied()
            .filter(|id| seen.insert(*id))
            .collect()
    }
}

/// Chunk ids written as 64 hex digits each (a root file's `segments`); anything else makes the
/// root file unreadable, named as such by its reader.
mod hex_ids {
    use super::ChunkId;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(ids: &[ChunkId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ids.iter().map(ChunkId::to_hex))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ChunkId>, D::Error> {
        let hex: Vec<String> = Vec::deserialize(d)?;
        hex.iter()
            .enumerate()
            .map(|(i, h)| {
                ChunkId::from_hex(h).ok_or_else(|| {
                    D::Error::custom(format!("segment {i} ({h:?}) is not a chunk id"))
                })
            })
            .collect()
    }
}

/// A point of `vm`/xvda at `time` (RFC 3339), 1 MiB of 64 KiB chunks, for tests.
#[cfg(test)]
pub(crate) fn test_point(id: &str, vm: &str, time: &str) -> RecoveryPoint {
    let t = chrono::DateTime::parse_from_rfc3339(time)
        .expect("time")
        .with_timezone(&Utc);
    RecoveryPoint {
        id: crate::point::PointId::parse(id).expect("id"),
        vm: vm.into(),
        disk: "xvda".into(),
        time: t,
        size: 1 << 20,
        chunk_size: 1 << 16,
        source: SourceInfo {
            kind: SourceKind::Raw,
            vhd_uuid: None,
            path: "x".into(),
        },
        parent: None,
        format: crate::point::POINT_FORMAT,
        depth: 0,
        segments: Vec::new(),
        stats: BackupStats::default(),
        committed: t,
        protected: false,
        protected_until: None,
        run: None,
        labels: crate::point::Labels::default(),
    }
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

    fn root_json() -> serde_json::Value {
        serde_json::json!({
            "id": "0123456789abcdef0123456789abcdef",
            "vm": "web01", "disk": "xvda",
            "time": "2026-11-22T02:00:00Z", "size": 262144, "chunk_size": 262144,
            "source": {"kind": "vhd-dynamic", "vhd_uuid": null, "path": "web01.vhd"},
            "parent": null, "format": 2, "depth": 0,
            "segments": [ChunkId::of(b"leaf").to_hex()],
            "stats": {"logical_bytes": 262144, "bytes_read": 0, "chunks": 1, "zero_chunks": 0,
                      "parent_chunks": 0, "known_chunks": 0, "new_chunks": 1,
                      "new_plain_bytes": 0, "new_stored_bytes": 0, "seconds": 0.1},
            "committed": "2026-11-22T02:00:05Z",
        })
    }

    #[test]
    fn a_root_file_reads_into_types_and_writes_back_as_it_was() {
        let v = root_json();
        let p: RecoveryPoint = serde_json::from_value(v.clone()).expect("root file");
        assert_eq!(p.id, "0123456789abcdef0123456789abcdef");
        assert_eq!(p.short_id(), "0123456789ab");
        assert_eq!(p.source.kind, SourceKind::VhdDynamic);
        assert_eq!(p.segments, vec![ChunkId::of(b"leaf")]);
        let back = serde_json::to_value(&p).expect("json");
        for field in ["id", "source", "segments", "parent"] {
            assert_eq!(back[field], v[field], "{field}");
        }
        // A kind written by a newer cairn is kept as it is.
        let mut newer = v.clone();
        newer["source"]["kind"] = "iscsi".into();
        let p: RecoveryPoint = serde_json::from_value(newer).expect("root file");
        assert_eq!(p.source.kind, SourceKind::Other("iscsi".into()));
        assert_eq!(
            serde_json::to_value(&p).expect("json")["source"]["kind"],
            "iscsi"
        );
    }

    #[test]
    fn a_root_file_with_a_bad_id_or_segment_is_refused_naming_it() {
        for (field, value, says) in [
            ("id", serde_json::json!("0123"), "not a point id"),
            (
                "id",
                serde_json::json!("zz23456789abcdef0123456789abcdef"),
                "not a point id",
            ),
            ("parent", serde_json::json!("../etc"), "not a point id"),
            ("segments", serde_json::json!(["abc"]), "segment 0"),
            (
                "segments",
                serde_json::json!([ChunkId::of(b"a").to_hex(), 7]),
                "expected a string",
            ),
        ] {
            let mut v = root_json();
            v[field] = value;
            let e = serde_json::from_value::<RecoveryPoint>(v).expect_err(field);
            assert!(e.to_string().contains(says), "{field}: {e}");
        }
        assert_eq!(
            PointId::parse("0123456789ABCDEF0123456789ABCDEF").map(String::from),
            Ok("0123456789abcdef0123456789abcdef".to_owned())
        );
        let a = PointId::random();
        assert_eq!(PointId::parse(&a), Ok(a.clone()));
        assert_ne!(a, PointId::random());
    }
}
