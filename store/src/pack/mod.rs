//! Pack files: append-only files of self-describing chunk frames.
//!
//! ```text
//! pack header (32 bytes, frozen):
//!   0  8  magic "CAIRNPAK"
//!   8  4  format version (1), big-endian
//!  12  4  reserved, zero
//!  16 16  pack id
//! frame (56-byte header, then the stored bytes):
//!   0  4  magic "CFRM"
//!   4  4  CRC-32 of header bytes 8..56, big-endian
//!   8 32  chunk id (BLAKE3 of the plain bytes)
//!  40  4  plain length
//!  44  4  stored length
//!  48  1  codec (0 plain, 1 zstd)
//!  49  1  kind (0 data, 1 tree)
//!  50  6  reserved, zero
//! ```
//! A frame says everything the index says of its chunk, so the index can be rebuilt from the
//! packs. A pack cut short by a killed writer ends in a partial frame that [`scan`] reports and
//! stops at; nothing committed ever points there.
//!
//! Frames are [`frame`], writing a pack [`writer`], a pack's list of frames (kept beside it
//! in a bucket) [`frame_list`].

mod frame;
mod frame_list;
mod writer;

use crate::error::{Error, Result};
pub use crate::scan::{Gap, PackScan, Recovered, ScannedFrame, scan};
use std::fs::File;
use std::path::{Path, PathBuf};

pub use frame::{
    FrameHeader, decode_frames, encode_frame, frame_in, frames_in, parse_frame, read_frame,
    read_frame_into,
};
pub use frame_list::{decode_frame_list, encode_frame_list};
pub use writer::PackWriter;

/// Pack file magic (frozen).
pub const PACK_MAGIC: [u8; 8] = *b"CAIRNPAK";

/// Pack format version written by this code.
pub const PACK_VERSION: u32 = crate::format::PACK.current();

/// Size of the pack header.
pub const PACK_HEADER_SIZE: u64 = 32;

/// Frame magic (frozen).
pub const FRAME_MAGIC: [u8; 4] = *b"CFRM";

/// Size of a frame header.
pub const FRAME_HEADER_SIZE: u64 = 56;

/// Largest stored length a frame may claim (a chunk is at most 2 MiB; trees are smaller).
pub const MAX_FRAME_PAYLOAD: u32 = 4 << 20;

/// A pack's id: 16 random bytes, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    /// A new random id.
    #[must_use]
    pub fn random() -> Self {
        Self(*uuid::Uuid::new_v4().as_bytes())
    }

    /// Hex form, the pack's file name.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex digits.
    #[must_use]
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    /// `STORE/packs/ab/abcdef....pack`.
    #[must_use]
    pub fn path(&self, packs_dir: &Path) -> PathBuf {
        let h = self.to_hex();
        packs_dir.join(&h[..2]).join(format!("{h}.pack"))
    }
}

/// Fsyncs a folder so that a new or renamed entry in it is durable.
///
/// # Errors
/// I/O errors.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir, "syncing the folder"))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::chunk::encode;
    use crate::chunk::{ChunkKind, Codec, EncodedChunk};

    fn chunk(seed: u8, len: usize, kind: ChunkKind) -> EncodedChunk {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(seed) ^ (i / 251) as u8)
            .collect();
        encode(&crate::Keys::Clear, &data, kind, 1).expect("encode")
    }

    /// A pack of a few frames of every codec and kind; returns its path, the chunks and the
    /// offset each frame starts at.
    fn sample_pack(dir: &Path) -> (PathBuf, Vec<EncodedChunk>, Vec<u64>) {
        let chunks = vec![
            chunk(3, 70_000, ChunkKind::Data),
            chunk(0, 4096, ChunkKind::Data), // compresses well: zstd
            chunk(7, 1000, ChunkKind::Tree),
            encode(&crate::Keys::Clear, &[0xAB; 1][..], ChunkKind::Data, 1).expect("encode"), // too small to compress: plain
        ];
        let mut w = PackWriter::create(dir).expect("create");
        let offsets: Vec<u64> = chunks
            .iter()
            .map(|c| w.append(c).expect("append"))
            .collect();
        w.sync().expect("sync");
        (w.path().to_path_buf(), chunks, offsets)
    }

    #[test]
    fn frames_round_trip_through_scan_and_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, chunks, offsets) = sample_pack(dir.path());
        assert!(chunks.iter().any(|c| c.codec == Codec::Plain));
        assert!(chunks.iter().any(|c| c.codec == Codec::Zstd));
        let scan = scan(&path).expect("scan");
        assert!(scan.is_whole());
        assert_eq!(scan.frames.len(), chunks.len());
        let file = File::open(&path).expect("open");
        for ((f, c), at) in scan.frames.iter().zip(&chunks).zip(&offsets) {
            assert_eq!(f.offset, *at);
            assert_eq!(
                (
                    f.header.id,
                    f.header.plain_len,
                    f.header.codec,
                    f.header.kind
                ),
                (c.id, c.plain_len, c.codec, c.kind)
            );
            let (h, stored) = read_frame(&file, &path, *at).expect("read");
            assert_eq!(h, f.header);
            assert_eq!(stored, c.bytes);
            crate::chunk::decode(Some(&crate::Keys::Clear), &h.stored(&stored))
                .expect("decodes to its id");
        }
    }

    #[test]
    fn a_frame_list_says_what_a_scan_of_its_pack_finds_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chunks = [
            chunk(3, 70_000, ChunkKind::Data),
            chunk(7, 1000, ChunkKind::Tree),
        ];
        let mut w = PackWriter::create(dir.path()).expect("create");
        for c in &chunks {
            w.append(c).expect("append");
        }
        w.sync().expect("sync");
        let list = w.frame_list();
        let scanned = scan(w.path()).expect("scan");
        let listed = decode_frame_list(&list).expect("decodes");
        assert_eq!((listed.id, listed.len), (scanned.id, scanned.len));
        let key = |s: &PackScan| -> Vec<(u64, FrameHeader)> {
            s.frames.iter().map(|f| (f.offset, f.header)).collect()
        };
        assert_eq!(key(&listed), key(&scanned));
        for i in 0..list.len() {
            let mut bad = list.clone();
            bad[i] ^= 0x04;
            assert!(decode_frame_list(&bad).is_err(), "byte {i} flipped");
        }
        assert!(decode_frame_list(&list[..list.len() - 1]).is_err());
        let bytes = std::fs::read(w.path()).expect("read");
        let mut stored = Vec::new();
        let at = listed.frames[1].offset as usize;
        let h = parse_frame(&bytes[at..], &mut stored).expect("parses");
        assert_eq!(
            (h.id, stored.as_slice()),
            (chunks[1].id, &chunks[1].bytes[..])
        );
        assert!(parse_frame(&bytes[at..bytes.len() - 1], &mut stored).is_err());
    }

    #[test]
    fn frames_on_the_wire_round_trip_and_bad_ones_are_named() {
        let a = crate::chunk::encode(&crate::Keys::Clear, &[7u8; 5000], ChunkKind::Data, 3)
            .expect("encode");
        let b = crate::chunk::encode(&crate::Keys::Clear, b"tree-ish bytes", ChunkKind::Tree, 3)
            .expect("encode");
        let mut body = Vec::new();
        encode_frame(&a, &mut body);
        encode_frame(&b, &mut body);
        let got = decode_frames(&body, 10).expect("decodes");
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id, got[0].bytes.clone()), (a.id, a.bytes.clone()));
        assert_eq!((got[1].id, got[1].kind), (b.id, ChunkKind::Tree));
        assert!(
            decode_frames(&body, 1)
                .expect_err("too many")
                .contains("more than 1")
        );
        let cut = decode_frames(&body[..body.len() - 1], 10).expect_err("cut");
        assert!(cut.contains("stored bytes"), "{cut}");
        let mut bad = body.clone();
        bad[10] ^= 1;
        assert!(decode_frames(&bad, 10).expect_err("crc").contains("CRC"));
    }

    proptest::proptest! {
        #[test]
        fn any_body_decodes_or_is_refused(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = decode_frames(&body, 8);
        }

        #[test]
        fn mutated_bodies_never_panic(at in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut body = Vec::new();
            encode_frame(&crate::chunk::encode(&crate::Keys::Clear, &[1u8; 100], ChunkKind::Data, 1).expect("encode"), &mut body);
            encode_frame(&crate::chunk::encode(&crate::Keys::Clear, &[2u8; 30], ChunkKind::Data, 1).expect("encode"), &mut body);
            let i = at % body.len();
            body[i] = byte;
            let _ = decode_frames(&body, 8);
        }
    }
}
