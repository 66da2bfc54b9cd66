//! The RocksDB index: column families and the encoding of their values.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `chunks` | chunk id (32 bytes) | [`Location`] (34 bytes) |
//! | `packs`  | pack id (16 bytes)  | JSON [`PackInfo`] |
//! | `points` | point id (16 bytes) | JSON [`crate::RecoveryPoint`] |
//! | `meta`   | text key            | text value |
//!
//! Everything here can be rebuilt from the packs and the root files (`cairn repair
//! --rebuild-index`).

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
/// Every column family.
pub const COLUMN_FAMILIES: [&str; 4] = [CF_CHUNKS, CF_PACKS, CF_POINTS, CF_META];

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
    #[must_use]
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::SIZE {
            return None;
        }
        let mut pack = [0u8; 16];
        pack.copy_from_slice(&b[0..16]);
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[16..24]);
        Some(Self {
            pack: PackId(pack),
            offset: u64::from_be_bytes(off),
            stored_len: u32::from_be_bytes([b[24], b[25], b[26], b[27]]),
            plain_len: u32::from_be_bytes([b[28], b[29], b[30], b[31]]),
            codec: Codec::from_code(b[32])?,
            kind: ChunkKind::from_code(b[33])?,
        })
    }
}

/// What the index knows of a pack.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PackInfo {
    /// Bytes of the pack file when last synced.
    pub size: u64,
    /// Frames in it.
    pub chunks: u64,
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
        assert_eq!(Location::decode(&l.encode()), Some(l));
        assert_eq!(Location::decode(&[0; 5]), None);
    }
}
