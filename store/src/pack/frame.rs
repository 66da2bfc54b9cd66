//! A frame: the header (magic, id, kind, codec, lengths, CRCs) and the stored bytes of one chunk.
//!
//! The header's bytes: magic (0..4), the CRC32 of bytes 8..56 (4..8), the chunk id (8..40), the
//! plain and stored lengths (40..44, 44..48), codec (48), kind (49), flags (50), zero (51), and
//! when flag [`FLAG_PAYLOAD_CRC`] is set the CRC32 of the stored bytes (52..56). Frames written
//! before the flag existed have zeros there; every frame written now carries the payload CRC,
//! which is all a reader without an encrypted store's key can check of a sealed chunk (bit rot
//! on the server's machine or in a bucket).

use crate::chunk::{ChunkId, ChunkKind, Codec, EncodedChunk, Stored};
use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{FRAME_HEADER_SIZE, FRAME_MAGIC, MAX_FRAME_PAYLOAD};

/// What is wrong with a frame header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Not a frame's magic.
    #[error("frame magic is {0:02x?}, expected \"CFRM\"")]
    Magic([u8; 4]),
    /// The header's CRC does not match its bytes.
    #[error("frame header CRC is {stored:#010x}, the bytes give {computed:#010x}")]
    Crc {
        /// The CRC stored.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// An unknown codec.
    #[error("unknown codec {0}")]
    Codec(u8),
    /// An unknown chunk kind.
    #[error("unknown chunk kind {0}")]
    Kind(u8),
    /// Unknown flags (a frame written by a newer cairn).
    #[error("unknown frame flags {0:#04x}")]
    Flags(u8),
    /// The stored bytes do not match the header's CRC of them.
    #[error("stored bytes' CRC is {computed:#010x}, the frame header says {stored:#010x}")]
    PayloadCrc {
        /// The CRC the header holds.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// A length over the most a frame holds.
    #[error("frame lengths {plain_len}/{stored_len} exceed {MAX_FRAME_PAYLOAD}")]
    Lengths {
        /// The plain length.
        plain_len: u32,
        /// The stored length.
        stored_len: u32,
    },
}

/// The header of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The chunk's id.
    pub id: ChunkId,
    /// Length of the plain chunk.
    pub plain_len: u32,
    /// Length of the stored bytes that follow.
    pub stored_len: u32,
    /// How they are stored.
    pub codec: Codec,
    /// What the chunk holds.
    pub kind: ChunkKind,
    /// The CRC32 of the stored bytes (none in frames written before it was kept).
    pub payload_crc: Option<u32>,
}

/// Flag: bytes 52..56 of the header hold the CRC32 of the stored bytes.
pub const FLAG_PAYLOAD_CRC: u8 = 1;

impl FrameHeader {
    /// The header of `chunk`'s frame.
    #[must_use]
    pub fn of(chunk: &EncodedChunk) -> Self {
        Self {
            id: chunk.id,
            plain_len: chunk.plain_len,
            stored_len: chunk.bytes.len() as u32,
            codec: chunk.codec,
            kind: chunk.kind,
            payload_crc: Some(crc32fast::hash(&chunk.bytes)),
        }
    }

    /// Checks `stored` against the header's CRC of them, when it holds one.
    ///
    /// # Errors
    /// [`FrameError::PayloadCrc`].
    pub fn check_payload(&self, stored: &[u8]) -> Result<(), FrameError> {
        match self.payload_crc {
            Some(want) => {
                let computed = crc32fast::hash(stored);
                if computed == want {
                    Ok(())
                } else {
                    Err(FrameError::PayloadCrc {
                        stored: want,
                        computed,
                    })
                }
            }
            None => Ok(()),
        }
    }

    /// The chunk this header and its `stored` bytes hold, as [`crate::chunk::decode`] reads it.
    #[must_use]
    pub fn stored<'a>(&'a self, stored: &'a [u8]) -> Stored<'a> {
        Stored {
            id: &self.id,
            kind: self.kind,
            codec: self.codec,
            plain_len: self.plain_len,
            bytes: stored,
        }
    }

    /// The header's bytes, as a frame starts with them.
    #[must_use]
    pub fn encode(&self) -> [u8; FRAME_HEADER_SIZE as usize] {
        let mut b = [0u8; FRAME_HEADER_SIZE as usize];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        b[8..40].copy_from_slice(&self.id.0);
        b[40..44].copy_from_slice(&self.plain_len.to_be_bytes());
        b[44..48].copy_from_slice(&self.stored_len.to_be_bytes());
        b[48] = self.codec.code();
        b[49] = self.kind.code();
        if let Some(crc) = self.payload_crc {
            b[50] = FLAG_PAYLOAD_CRC;
            b[52..56].copy_from_slice(&crc.to_be_bytes());
        }
        let crc = crc32fast::hash(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Parses a frame header; `None`-like errors say what is wrong.
    ///
    /// # Errors
    /// Wrong magic, CRC mismatch, unknown codec or kind, or a length out of range.
    pub fn decode(b: &[u8; FRAME_HEADER_SIZE as usize]) -> Result<Self, FrameError> {
        if b[0..4] != FRAME_MAGIC {
            return Err(FrameError::Magic([b[0], b[1], b[2], b[3]]));
        }
        let stored = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let computed = crc32fast::hash(&b[8..]);
        if stored != computed {
            return Err(FrameError::Crc { stored, computed });
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[8..40]);
        let plain_len = u32::from_be_bytes([b[40], b[41], b[42], b[43]]);
        let stored_len = u32::from_be_bytes([b[44], b[45], b[46], b[47]]);
        let codec = Codec::from_code(b[48]).ok_or(FrameError::Codec(b[48]))?;
        let kind = ChunkKind::from_code(b[49]).ok_or(FrameError::Kind(b[49]))?;
        if b[50] & !FLAG_PAYLOAD_CRC != 0 {
            return Err(FrameError::Flags(b[50]));
        }
        let payload_crc = (b[50] & FLAG_PAYLOAD_CRC != 0)
            .then(|| u32::from_be_bytes([b[52], b[53], b[54], b[55]]));
        if plain_len > MAX_FRAME_PAYLOAD || stored_len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::Lengths {
                plain_len,
                stored_len,
            });
        }
        Ok(Self {
            id: ChunkId(id),
            plain_len,
            stored_len,
            codec,
            kind,
            payload_crc,
        })
    }
}

/// The frame at the front of `buf` (read from `name` at `offset`): its header and stored
/// bytes, which `buf` must hold whole.
///
/// # Errors
/// A malformed frame or a buffer too short for it.
pub fn parse_frame(buf: &[u8], stored: &mut Vec<u8>) -> Result<FrameHeader, String> {
    let (header, bytes) = frame_in(buf)?;
    stored.clear();
    stored.extend_from_slice(bytes);
    Ok(header)
}

/// As [`parse_frame`], the stored bytes borrowed from `buf`.
///
/// # Errors
/// A malformed frame or a buffer too short for it.
pub fn frame_in(buf: &[u8]) -> Result<(FrameHeader, &[u8]), String> {
    let hb: &[u8; FRAME_HEADER_SIZE as usize] = buf
        .get(..FRAME_HEADER_SIZE as usize)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{} bytes, a frame header is {FRAME_HEADER_SIZE}", buf.len()))?;
    let header = FrameHeader::decode(hb).map_err(|e| e.to_string())?;
    let start = FRAME_HEADER_SIZE as usize;
    let bytes = buf
        .get(start..start + header.stored_len as usize)
        .ok_or_else(|| {
            format!(
                "the frame says {} stored bytes, {} were read",
                header.stored_len,
                buf.len() - start
            )
        })?;
    header.check_payload(bytes).map_err(|e| e.to_string())?;
    Ok((header, bytes))
}

/// Reads one frame at `offset` of an open pack: its header and stored bytes.
///
/// # Errors
/// I/O errors and malformed frames, naming the pack and offset.
pub fn read_frame(file: &File, path: &Path, offset: u64) -> Result<(FrameHeader, Vec<u8>)> {
    let mut bytes = Vec::new();
    let header = read_frame_into(file, path, offset, &mut bytes)?;
    Ok((header, bytes))
}

/// As [`read_frame`], into a buffer the caller reuses (resized to the stored length).
///
/// # Errors
/// I/O errors and malformed frames, naming the pack and offset.
pub fn read_frame_into(
    file: &File,
    path: &Path,
    offset: u64,
    bytes: &mut Vec<u8>,
) -> Result<FrameHeader> {
    let mut hb = [0u8; FRAME_HEADER_SIZE as usize];
    file.read_exact_at(&mut hb, offset).map_err(Error::io(
        path,
        format!("reading the frame at offset {offset}"),
    ))?;
    let header = FrameHeader::decode(&hb).map_err(|what| Error::BadPack {
        path: path.to_path_buf(),
        offset,
        what: what.to_string(),
    })?;
    bytes.resize(header.stored_len as usize, 0);
    file.read_exact_at(bytes, offset + FRAME_HEADER_SIZE)
        .map_err(Error::io(
            path,
            format!("reading the frame at offset {offset}"),
        ))?;
    header.check_payload(bytes).map_err(|what| Error::BadPack {
        path: path.to_path_buf(),
        offset,
        what: what.to_string(),
    })?;
    Ok(header)
}

/// Appends `chunk` to `out` as a frame (header and stored bytes), the form chunks take in a
/// pack and on the wire of `cairn serve`.
pub fn encode_frame(chunk: &EncodedChunk, out: &mut Vec<u8>) {
    out.extend_from_slice(&FrameHeader::of(chunk).encode());
    out.extend_from_slice(&chunk.bytes);
}

/// Splits `body` into the frames it holds, at most `max` of them. Only the framing is checked
/// here (magic, header CRC, lengths within bounds and within the body); the caller checks each
/// chunk against its id.
///
/// # Errors
/// What is wrong, and at which byte offset of the body.
pub fn decode_frames(body: &[u8], max: usize) -> Result<Vec<EncodedChunk>, String> {
    Ok(frames_in(body, max)?
        .into_iter()
        .map(|(h, bytes)| EncodedChunk {
            id: h.id,
            kind: h.kind,
            codec: h.codec,
            plain_len: h.plain_len,
            bytes: bytes.to_vec(),
        })
        .collect())
}

/// As [`decode_frames`], each frame's header and its stored bytes borrowed from `body`.
///
/// # Errors
/// What is wrong, and at which byte offset of the body.
pub fn frames_in(body: &[u8], max: usize) -> Result<Vec<(FrameHeader, &[u8])>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        if out.len() == max {
            return Err(format!("more than {max} chunks in one body"));
        }
        let Some(hb) = body
            .get(at..at + FRAME_HEADER_SIZE as usize)
            .and_then(|b| <&[u8; FRAME_HEADER_SIZE as usize]>::try_from(b).ok())
        else {
            return Err(format!(
                "offset {at}: {} bytes left, a frame header is {FRAME_HEADER_SIZE}",
                body.len() - at
            ));
        };
        let h = FrameHeader::decode(hb).map_err(|e| format!("offset {at}: {e}"))?;
        let start = at + FRAME_HEADER_SIZE as usize;
        let Some(bytes) = body.get(start..start + h.stored_len as usize) else {
            return Err(format!(
                "offset {at}: the frame says {} stored bytes, the body holds {}",
                h.stored_len,
                body.len() - start
            ));
        };
        h.check_payload(bytes)
            .map_err(|e| format!("offset {at}: {e}"))?;
        out.push((h, bytes));
        at = start + h.stored_len as usize;
    }
    Ok(out)
}
