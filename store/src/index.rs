//! The RocksDB index: column families and the encoding of their values.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `chunks` | chunk id (32 bytes) | [`Location`] (34 bytes) |
//! | `packs`  | pack id (16 bytes)  | JSON [`PackInfo`] |
//! | `points` | point id (16 bytes) | JSON [`crate::RecoveryPoint`] |
//! | `meta`   | text key            | text value |
//! | `refs`   | chunk id            | reference count, u64 big-endian (absent = 0) |
//! | `garbage`| pack id + frame offset (24 bytes) | chunk id of an unreferenced frame |
//! | `bad`    | chunk id            | JSON [`BadMark`]: why verify found it bad or missing |
//!
//! A tree segment's count is the number of points naming it; a data chunk's count is the number
//! of live segments naming it (each counted once per segment). Every indexed frame whose chunk
//! has count 0, or that a fresh copy superseded, has a `garbage` entry: garbage collection reads
//! that list instead of walking every point.
//!
//! Everything here can be rebuilt from the packs and the root files (`cairn repair
//! --rebuild-index`).
//!
//! Every value is decoded strictly: a key or value of the wrong length, an unknown codec or kind,
//! JSON that does not parse, is [`crate::Error::CorruptIndex`] naming the family and key, never a
//! default. (A skipped `packs` entry would make its pack look unindexed, and garbage collection
//! would delete it; a `chunks` entry read as absent would be stored again or reported missing; a
//! count read as 0 would be garbage.) Only an absent `refs` entry means 0.

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkKind, Codec};
use crate::pack::PackId;

/// Column family of chunk locations.
pub const CF_CHUNKS: &str = "chunks";
/// Column family of packs.
pub const CF_PACKS: &str = "packs";
/// Column family of the recovery point catalogue.
pub const CF_POINTS: &str = "points";
/// Column family of store-wide facts.
pub const CF_META: &str = "meta";
/// Column family of reference counts.
pub const CF_REFS: &str = "refs";
/// Column family of unreferenced frames, keyed by pack and offset.
pub const CF_GARBAGE: &str = "garbage";
/// Column family of chunks verify found bad or missing.
pub const CF_BAD: &str = "bad";
/// Column family of every point in the catalogue's order (see [`crate::orders`]).
pub const CF_TIMELINE: &str = "timeline";
/// Column family of each VM's points, by name and by UUID (see [`crate::orders`]).
pub const CF_BY_VM: &str = "by_vm";
/// Every column family.
pub const COLUMN_FAMILIES: [&str; 9] = [
    CF_CHUNKS,
    CF_PACKS,
    CF_POINTS,
    CF_META,
    CF_REFS,
    CF_GARBAGE,
    CF_BAD,
    CF_TIMELINE,
    CF_BY_VM,
];
/// `meta` key set once the catalogue's orders cover every point (see [`crate::orders`]).
pub const META_ORDERS: &str = "orders";
/// `meta` key set once the reference counts cover every point.
pub const META_REFCOUNTS: &str = "refcounts";

/// Key of a `garbage` entry: the pack, then the frame offset (big-endian, so a pack's frames
/// are adjacent and in order).
#[must_use]
pub fn garbage_key(pack: PackId, offset: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&pack.0);
    k[16..].copy_from_slice(&offset.to_be_bytes());
    k
}

/// Why a chunk is marked bad.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BadMark {
    /// What verify found.
    pub what: String,
    /// Where it looked (pack and offset), if the index had a location.
    pub location: Option<String>,
    /// When (RFC 3339).
    pub found: String,
}

/// Where a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The pack.
    pub pack: PackId,
    /// Offset of the frame header in the pack.
    pub offset: u64,
    /// Stored bytes after the frame header.
    pub stored_len: u32,
    /// Plain bytes.
    pub plain_len: u32,
    /// How the bytes are stored.
    pub codec: Codec,
    /// What the chunk holds.
    pub kind: ChunkKind,
}

impl Location {
    /// Encoded size.
    pub const SIZE: usize = 34;

    /// Where `chunk` is once appended to `pack` at `offset`.
    #[must_use]
    pub fn appended(pack: PackId, offset: u64, chunk: &crate::chunk::EncodedChunk) -> Self {
        Self {
            pack,
            offset,
            stored_len: chunk.bytes.len() as u32,
            plain_len: chunk.plain_len,
            codec: chunk.codec,
            kind: chunk.kind,
        }
    }

    /// Where the frame of `header` is once appended to `pack` at `offset`.
    #[must_use]
    pub fn of_frame(pack: PackId, offset: u64, header: &crate::pack::FrameHeader) -> Self {
        Self {
            pack,
            offset,
            stored_len: header.stored_len,
            plain_len: header.plain_len,
            codec: header.codec,
            kind: header.kind,
        }
    }

    /// The index value.
    #[must_use]
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..16].copy_from_slice(&self.pack.0);
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.stored_len.to_be_bytes());
        b[28..32].copy_from_slice(&self.plain_len.to_be_bytes());
        b[32] = self.codec.code();
        b[33] = self.kind.code();
        b
    }

    /// Parses an index value.
    ///
    /// # Errors
    /// What is wrong with the value: its length, codec or kind.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() != Self::SIZE {
            return Err(format!(
                "location of {} bytes, expected {}",
                b.len(),
                Self::SIZE
            ));
        }
        let mut pack = [0u8; 16];
        pack.copy_from_slice(&b[0..16]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[16..24]);
        Ok(Self {
            pack: PackId(pack),
            offset: u64::from_be_bytes(off),
            stored_len: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
            plain_len: u32::from_be_bytes([b[28], b[29], b[30], b[31]]),
            codec: Codec::from_code(b[32]).ok_or_else(|| format!("unknown codec {}", b[32]))?,
            kind: ChunkKind::from_code(b[33])
                .ok_or_else(|| format!("unknown chunk kind {}", b[33]))?,
        })
    }
}

/// Decodes a reference count; an absent entry is 0.
///
/// # Errors
/// A value that is not 8 bytes.
pub fn decode_count(v: Option<&[u8]>) -> Result<u64, String> {
    match v {
        None => Ok(0),
        Some(b) => <[u8; 8]>::try_from(b)
            .map(u64::from_be_bytes)
            .map_err(|_| format!("reference count of {} bytes, expected 8", b.len())),
    }
}

/// Decodes a key of a fixed length.
///
/// # Errors
/// A key of another length.
pub fn fixed_key<const N: usize>(k: &[u8]) -> Result<[u8; N], String> {
    <[u8; N]>::try_from(k).map_err(|_| format!("key of {} bytes, expected {N}", k.len()))
}

/// Encodes a value as JSON for the index or a root file.
///
/// # Errors
/// [`crate::Error::Encode`]: nothing is written in its place.
pub fn to_json<T: Serialize>(v: &T, what: &str) -> crate::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| crate::Error::Encode {
        what: what.into(),
        source: Box::new(e),
    })
}

/// What the index knows of a pack.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackInfo {
    /// Bytes of the pack file when last synced.
    pub size: u64,
    /// Frames in it.
    pub chunks: u64,
}

/// An index folder opened read-only as it is (an index moved aside by a rebuild, or one whose
/// config is lost), without a store around it; `None` when it cannot be read (damage is often
/// why it is looked at).
pub(crate) fn open_as_it_is(path: &std::path::Path) -> Option<rocksdb::DB> {
    let options = rocksdb::Options::default();
    rocksdb::DB::open_cf_for_read_only(&options, path, families_in(&options, path), false).ok()
}

/// The column families of the index at `path` that cairn knows: an index written by an older
/// cairn lacks the newer ones until a writer opens it (read-only opens name only these).
pub(crate) fn families_in(options: &rocksdb::Options, path: &std::path::Path) -> Vec<&'static str> {
    let have = rocksdb::DB::list_cf(options, path).unwrap_or_default();
    COLUMN_FAMILIES
        .into_iter()
        .filter(|f| have.is_empty() || have.iter().any(|h| h == f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_round_trip() {
        let l = Location {
            pack: PackId([7; 16]),
            offset: 123_456_789,
            stored_len: 1000,
            plain_len: 4096,
            codec: Codec::Zstd,
            kind: ChunkKind::Tree,
        };
        assert_eq!(Location::decode(&l.encode()), Ok(l));
        assert!(Location::decode(&[0; 5]).is_err());
        let mut bad = l.encode();
        bad[32] = 99;
        assert_eq!(Location::decode(&bad), Err("unknown codec 99".into()));
        bad = l.encode();
        bad[33] = 77;
        assert_eq!(Location::decode(&bad), Err("unknown chunk kind 77".into()));
    }

    #[test]
    fn counts_decode_strictly() {
        assert_eq!(decode_count(None), Ok(0));
        assert_eq!(decode_count(Some(&7u64.to_be_bytes())), Ok(7));
        assert!(decode_count(Some(&[1, 2, 3])).is_err());
        assert!(decode_count(Some(&[])).is_err());
    }
}
