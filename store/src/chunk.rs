//! Chunk ids and the encoding of one chunk: BLAKE3 of the plain bytes; zstd when it is smaller.

use std::fmt;

/// The id of a chunk: the BLAKE3 hash of its plain (uncompressed) bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    #[must_use]
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    #[must_use]
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// One entry of a recovery point's reference list: a stored chunk, or a run of zeros that is
/// never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ChunkRef {
    /// The chunk is all zeros.
    Zero,
    /// The chunk with this id.
    Data(ChunkId),
}

impl ChunkRef {
    /// The all-zero id stands for [`ChunkRef::Zero`] in encoded lists (BLAKE3 never yields it
    /// in practice).
    pub const ZERO_ID: [u8; 32] = [0; 32];

    /// The 32 bytes of this ref in an encoded list.
    #[must_use]
    pub fn to_bytes(self) -> [u8; 32] {
        match self {
            Self::Zero => Self::ZERO_ID,
            Self::Data(id) => id.0,
        }
    }

    /// The ref stored as these 32 bytes.
    #[must_use]
    pub fn from_bytes(b: [u8; 32]) -> Self {
        if b == Self::ZERO_ID {
            Self::Zero
        } else {
            Self::Data(ChunkId(b))
        }
    }
}

/// How a chunk's bytes are stored in a pack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Codec {
    /// As they are.
    Plain,
    /// zstd-compressed.
    Zstd,
}

impl Codec {
    /// On-disk code (frozen).
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Plain => 0,
            Self::Zstd => 1,
        }
    }

    /// The codec of an on-disk code.
    #[must_use]
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Self::Plain),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// What a chunk holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChunkKind {
    /// Disk data.
    Data,
    /// A segment of a recovery point's reference list (a "tree" chunk).
    Tree,
}

impl ChunkKind {
    /// On-disk code (frozen).
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::Tree => 1,
        }
    }

    /// The kind of an on-disk code.
    #[must_use]
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Self::Data),
            1 => Some(Self::Tree),
            _ => None,
        }
    }
}

/// A chunk ready to be appended to a pack.
#[derive(Clone, Debug)]
pub struct EncodedChunk {
    /// Its id.
    pub id: ChunkId,
    /// What it holds.
    pub kind: ChunkKind,
    /// How `bytes` are stored.
    pub codec: Codec,
    /// Length of the plain chunk.
    pub plain_len: u32,
    /// The stored bytes.
    pub bytes: Vec<u8>,
}

/// Hashes and compresses a chunk; keeps it plain when zstd does not make it smaller.
#[must_use]
pub fn encode(data: &[u8], kind: ChunkKind, level: i32) -> EncodedChunk {
    let id = ChunkId::of(data);
    encode_with_id(id, data, kind, level)
}

/// As [`encode`], for a chunk whose id is already known.
#[must_use]
pub fn encode_with_id(id: ChunkId, data: &[u8], kind: ChunkKind, level: i32) -> EncodedChunk {
    thread_local! {
        // One compression context per thread and level: making one per chunk costs more
        // than compressing a small chunk.
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let compressed = COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(data),
            None => zstd::bulk::compress(data, level),
        }
    });
    let (codec, bytes) = match compressed {
        Ok(c) if c.len() < data.len() => (Codec::Zstd, c),
        _ => (Codec::Plain, data.to_vec()),
    };
    EncodedChunk {
        id,
        kind,
        codec,
        plain_len: data.len() as u32,
        bytes,
    }
}

/// What is wrong with a chunk's stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The chunk's length is not its place's on the disk.
    #[error("the chunk is {len} bytes where its place on the disk holds {place}")]
    NotItsPlace {
        /// The chunk's length.
        len: usize,
        /// Its place's.
        place: usize,
    },
    /// The stored bytes do not decompress.
    #[error("zstd: {0}")]
    Zstd(String),
    /// They decode to another length than the frame says.
    #[error("decodes to {got} bytes, expected {expected}")]
    Length {
        /// Bytes decoded.
        got: usize,
        /// Bytes the frame says.
        expected: u32,
    },
    /// They hash to another id.
    #[error("content hashes to {hashed}, not to its id")]
    Hash {
        /// What they hash to.
        hashed: ChunkId,
    },
}

/// Decodes stored bytes and checks them against `id`.
///
/// # Errors
/// What is wrong (decompression failure, wrong length, hash mismatch).
pub fn decode(
    id: &ChunkId,
    codec: Codec,
    plain_len: u32,
    stored: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    let mut plain = vec![0u8; plain_len as usize];
    decode_into(id, codec, plain_len, stored, &mut plain)?;
    Ok(plain)
}

/// Decodes stored bytes into `out`, which the chunk must fill exactly (`plain_len` bytes: a
/// chunk's place on a disk is the chunk size, or what is left of the disk for its last chunk),
/// and checks them against `id`: the allocation-free form of [`decode`]. A chunk shorter than
/// its place is an error, never a place left holding what a buffer held before.
///
/// # Errors
/// What is wrong (a length that is not its place's, decompression failure, wrong decoded
/// length, hash mismatch).
pub fn decode_into(
    id: &ChunkId,
    codec: Codec,
    plain_len: u32,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), ChunkError> {
    let want = plain_len as usize;
    if out.len() != want {
        return Err(ChunkError::NotItsPlace {
            len: want,
            place: out.len(),
        });
    }
    let got = match codec {
        Codec::Plain => {
            if stored.len() == want {
                out.copy_from_slice(stored);
            }
            stored.len()
        }
        Codec::Zstd => {
            thread_local! {
                static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            DECOMPRESSOR
                .with_borrow_mut(|slot| {
                    if slot.is_none() {
                        *slot = Some(zstd::bulk::Decompressor::new()?);
                    }
                    match slot.as_mut() {
                        Some(d) => d.decompress_to_buffer(stored, out),
                        None => zstd::bulk::decompress_to_buffer(stored, out),
                    }
                })
                .map_err(|e| ChunkError::Zstd(e.to_string()))?
        }
    };
    if got != want {
        return Err(ChunkError::Length {
            got,
            expected: plain_len,
        });
    }
    let hashed = ChunkId::of(out);
    if &hashed != id {
        return Err(ChunkError::Hash { hashed });
    }
    Ok(())
}

/// Whether every byte is zero.
#[must_use]
pub fn is_zero(data: &[u8]) -> bool {
    let words = data.chunks_exact(8);
    let rest = words.remainder();
    words.into_iter().all(|w| w == [0u8; 8]) && rest.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_detect_corruption() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 7) as u8).collect();
        let e = encode(&data, ChunkKind::Data, 3);
        assert_eq!(e.codec, Codec::Zstd);
        assert!(e.bytes.len() < data.len());
        assert_eq!(
            decode(&e.id, e.codec, e.plain_len, &e.bytes).expect("decode"),
            data
        );
        let mut bad = e.bytes.clone();
        let n = bad.len();
        bad[n / 2] ^= 1;
        assert!(decode(&e.id, e.codec, e.plain_len, &bad).is_err());
    }

    #[test]
    fn incompressible_chunks_stay_plain() {
        let mut x = 1u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let e = encode(&data, ChunkKind::Data, 3);
        assert_eq!(e.codec, Codec::Plain);
        assert_eq!(e.bytes, data);
    }

    #[test]
    fn zero_test() {
        assert!(is_zero(&[0; 1000]));
        let mut v = vec![0u8; 1001];
        v[1000] = 1;
        assert!(!is_zero(&v));
        v[1000] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
